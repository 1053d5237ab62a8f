"""Face data sets: layouts -> (dataset, file_name, path, real_age) rows, image decoding, split.

Layouts read:
- the seeds' layout: `DIR/labels.csv` (file_name,real_age) + `DIR/final_files/`
- the official APPA-REAL release: `DIR/{train,valid,test}/` + `DIR/gt_avg_{train,valid,test}.csv`

Rows that cannot be used (missing file, bad age, duplicate) are reported as `Problem`s and
skipped; nothing here raises for one bad row. Only an unusable folder raises AgetoolError.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from agetool.contract import AGE_BANDS, AGE_MAX_YEARS, age_band, preprocess_rgb
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "file_name", "path", "real_age"]
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 42
# A few MB is the most a 200x200 face crop can sensibly be; larger files are refused unread.
MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """A row or file that was skipped, and why."""

    dataset: str
    file_name: str
    reason: str
    # missing | duplicate | bad_label | corrupt | unlabelled | other: lets reports count by kind
    kind: str = "other"


# --- Layouts -----------------------------------------------------------------------------------
def detect_layout(folder: Path) -> str:
    if (folder / "labels.csv").is_file():
        return "seeds"
    if any(folder.glob("gt_avg_*.csv")):
        return "appa-real"
    raise AgetoolError(
        f"{folder}: not a face data folder; expected labels.csv + final_files/ "
        "(seeds' layout) or gt_avg_*.csv + train/ valid/ test/ (APPA-REAL)"
    )


def read_dataset(folder: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """Rows with columns dataset, file_name, path, real_age (+ `split` for APPA-REAL), and the
    problems found. `dataset` is the folder's name: it keys the split across machines."""
    # abspath, not resolve: `.` or `faces/` still get their real name, symlinks keep theirs
    folder = Path(os.path.abspath(folder))
    if not folder.is_dir():
        raise AgetoolError(f"{folder}: data folder not found")
    layout = detect_layout(folder)
    if layout == "seeds":
        return _read_seeds(folder)
    return _read_appa_real(folder)


def read_datasets(folders: Sequence[str | Path]) -> tuple[pd.DataFrame, list[Problem]]:
    """Several folders read as one set (their names must differ)."""
    frames, problems = [], []
    if not folders:
        raise AgetoolError("data folders: give at least one folder")
    names = [Path(os.path.abspath(f)).name for f in folders]
    if len(set(names)) != len(names):
        raise AgetoolError(f"data folders: names must differ to key the split, got {names}")
    for folder in folders:
        df, found = read_dataset(folder)
        frames.append(df)
        problems.extend(found)
    return pd.concat(frames, ignore_index=True), problems


def read_usable(folders: Sequence[str | Path], max_logged: int = 20) -> pd.DataFrame:
    """Rows of one or more data folders read as one set; skipped rows are logged (the first
    `max_logged`), and a set with no usable image is an error naming the folders."""
    rows, problems = read_datasets(folders)
    for problem in problems[:max_logged]:
        log.warning("skipped %s/%s: %s", problem.dataset, problem.file_name, problem.reason)
    if len(problems) > max_logged:
        log.warning("... and %d more skipped rows", len(problems) - max_logged)
    if rows.empty:
        raise AgetoolError(f"data folders {', '.join(map(str, folders))}: no usable labelled image")
    return rows


def _read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AgetoolError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise AgetoolError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'}"
        )
    return df


def _clean_rows(
    df: pd.DataFrame, dataset: str, image_dir: Path, age_column: str
) -> tuple[pd.DataFrame, list[Problem]]:
    problems: list[Problem] = []
    keep: list[dict] = []
    seen: set[str] = set()
    for file_name, raw_age in zip(df["file_name"], df[age_column]):
        file_name = str(file_name).strip()
        try:
            age = float(raw_age)
        except ValueError:
            problems.append(Problem(dataset, file_name, f"age {raw_age!r} is not a number", "bad_label"))
            continue
        if not np.isfinite(age) or age < 0 or age > AGE_MAX_YEARS:
            problems.append(
                Problem(dataset, file_name, f"age {raw_age!r} outside 0..{AGE_MAX_YEARS:g}", "bad_label")
            )
            continue
        if file_name in seen:
            problems.append(Problem(dataset, file_name, "duplicate row in labels", "duplicate"))
            continue
        path = image_dir / file_name
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            problems.append(Problem(dataset, file_name, "file name escapes the image folder", "bad_label"))
            continue
        if not path.is_file():
            problems.append(Problem(dataset, file_name, "file missing on disk", "missing"))
            continue
        seen.add(file_name)
        keep.append({"dataset": dataset, "file_name": file_name, "path": str(path), "real_age": age})
    return pd.DataFrame(keep, columns=COLUMNS), problems


def _read_seeds(folder: Path) -> tuple[pd.DataFrame, list[Problem]]:
    labels = _read_csv(folder / "labels.csv", ["file_name", "real_age"])
    image_dir = folder / "final_files"
    if not image_dir.is_dir():
        raise AgetoolError(f"{folder}: final_files/ folder not found next to labels.csv")
    return _clean_rows(labels, folder.name, image_dir, "real_age")


def _read_appa_real(folder: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """APPA-REAL: gt_avg_{train,valid,test}.csv hold file_name, real_age (and apparent ages);
    crops are `<file_name>_face.jpg` in the matching folder when present, else the full image."""
    frames, problems = [], []
    for split_name, ours in (("train", "train"), ("valid", "val"), ("test", "test")):
        csv_path = folder / f"gt_avg_{split_name}.csv"
        if not csv_path.is_file():
            continue
        labels = _read_csv(csv_path, ["file_name", "real_age"])
        image_dir = folder / split_name
        face_names = [
            f"{name}_face.jpg" if (image_dir / f"{name}_face.jpg").is_file() else name
            for name in labels["file_name"]
        ]
        labels = labels.assign(file_name=face_names)
        df, found = _clean_rows(labels, folder.name, image_dir, "real_age")
        df["file_name"] = [f"{split_name}/{n}" for n in df["file_name"]]
        df["split"] = ours
        frames.append(df)
        problems.extend(found)
    if not frames:
        raise AgetoolError(f"{folder}: no gt_avg_train/valid/test.csv found (APPA-REAL layout)")
    return pd.concat(frames, ignore_index=True), problems


def read_labelled_images(
    image_dir: str | Path, labels_csv: str | Path, dataset: str | None = None
) -> tuple[pd.DataFrame, list[Problem]]:
    """A plain folder of face crops plus a file_name,real_age CSV (any names, any places).

    `dataset` defaults to the folder's name, or its parent's when the folder is `final_files/`,
    so the rows key the same split as reading the parent in the seeds' layout."""
    image_dir, labels_csv = Path(image_dir), Path(labels_csv)
    if not image_dir.is_dir():
        raise AgetoolError(f"{image_dir}: image folder not found")
    if not labels_csv.is_file():
        raise AgetoolError(f"{labels_csv}: labels file not found (CSV with file_name,real_age expected)")
    if dataset is None:
        resolved = image_dir.resolve()
        dataset = resolved.parent.name if resolved.name == "final_files" else resolved.name
    labels = _read_csv(labels_csv, ["file_name", "real_age"])
    return _clean_rows(labels, dataset, image_dir, "real_age")


# --- Images ------------------------------------------------------------------------------------
def load_face_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3). Raises AgetoolError naming the file."""
    import cv2

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AgetoolError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise AgetoolError(f"{path}: empty file, expected an image")
    if size > MAX_IMAGE_BYTES:
        raise AgetoolError(f"{path}: {size} bytes, larger than the {MAX_IMAGE_BYTES} bytes allowed for a face image")
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise AgetoolError(f"{path}: not a decodable image (JPEG, PNG, BMP or WebP expected)")
    return np.ascontiguousarray(bgr[..., ::-1])


def load_faces(
    paths: Sequence[str | Path],
    input_size: int,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode and resize many faces in parallel (OpenCV releases the GIL).

    Returns (uint8 array (N, S, S, 3) of the readable ones, bool mask over `paths` of which were
    readable, error messages of the others)."""
    out = np.zeros((len(paths), input_size, input_size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    errors: list[str] = []

    def one(i: int) -> str | None:
        try:
            rgb = load_face_rgb(paths[i])
        except AgetoolError as exc:
            return str(exc)
        out[i] = np.clip(np.rint(preprocess_rgb(rgb, input_size)), 0, 255).astype(np.uint8)
        ok[i] = True
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for err in pool.map(one, range(len(paths))):
            if err:
                errors.append(err)
            if progress:
                progress(1)
    return out[ok], ok, errors


# --- Split -------------------------------------------------------------------------------------
def _stable_key(dataset: str, file_name: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{dataset}/{file_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def make_split(
    df: pd.DataFrame, seed: int = DEFAULT_SEED, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> pd.DataFrame:
    """Assign train/val/test, stratified by age band, deterministic for a seed.

    Each image's place depends only on (seed, dataset, file_name) and its band, so the same
    folders give the same split on any machine and in any row order. Rows that already carry a
    `split` (APPA-REAL's official one) keep it."""
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise AgetoolError(
            f"split fractions: val {val_fraction} + test {test_fraction} must be in (0, 1)"
        )
    df = df.copy()
    preset = df["split"] if "split" in df.columns else pd.Series([None] * len(df), index=df.index)
    df["split"] = preset.where(preset.isin(SPLITS), None)
    todo = df[df["split"].isna()]
    bands = todo["real_age"].map(age_band)
    for band in AGE_BANDS:
        members = todo[bands == band.name]
        if members.empty:
            continue
        keys = [_stable_key(d, f, seed) for d, f in zip(members["dataset"], members["file_name"])]
        order = members.index[np.argsort(np.array(keys, dtype=np.uint64), kind="stable")]
        n = len(order)
        n_val = int(round(n * val_fraction))
        n_test = int(round(n * test_fraction))
        df.loc[order[:n_val], "split"] = "val"
        df.loc[order[n_val : n_val + n_test], "split"] = "test"
        df.loc[order[n_val + n_test :], "split"] = "train"
    return df


def split_datasets(
    folders: Sequence[str | Path],
    out_path: str | Path,
    seed: int = DEFAULT_SEED,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> pd.DataFrame:
    """`agetool data split`: read the folders, split them, write the split file; returns the rows."""
    rows = make_split(read_usable(folders), seed, val_fraction, test_fraction)
    write_split(rows, out_path)
    return rows


def write_split(df: pd.DataFrame, path: str | Path) -> Path:
    """Write dataset,file_name,real_age,split atomically (temp file, then rename)."""
    text = df[["dataset", "file_name", "real_age", "split"]].to_csv(index=False)
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp name beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AgetoolError(f"{path}: cannot write ({exc.strerror})") from None
    return path


def apply_split(df: pd.DataFrame, split_file: str | Path) -> pd.DataFrame:
    """Take the split from a file written by `write_split`; rows not in it are dropped (logged)."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise AgetoolError(f"{split_file}: split file not found")
    table = _read_csv(split_file, ["dataset", "file_name", "split"])
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise AgetoolError(f"{split_file}: column split has {bad}; expected train, val or test")
    merged = df.drop(columns=["split"], errors="ignore").merge(
        table[["dataset", "file_name", "split"]], on=["dataset", "file_name"], how="inner"
    )
    if len(merged) < len(df):
        log.warning("%d images are not in %s and are left out", len(df) - len(merged), split_file)
    if merged.empty:
        raise AgetoolError(f"{split_file}: no image of the data folders is listed in it")
    return merged
