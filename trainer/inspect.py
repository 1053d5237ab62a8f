"""`agetool data inspect`: what is in a face data set, and what is wrong with it.

Every label row is checked (age readable, file present, listed once), every image decoded
(corrupt files are listed with the reason and skipped), byte-identical copies are found by
hash, and the usable images are summarised: age statistics, an age histogram and a grid of
sample faces with their ages. Nothing here raises for one bad file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from agetool.contract import BAND_NAMES, age_band
from agetool.errors import AgetoolError
from agetool.trainer.data import (
    Problem,
    atomic_write_bytes,
    detect_layout,
    load_face_rgb,
    read_datasets,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "age_histogram.png"
GRID_FILE = "sample_faces.png"
GRID_TILE_PX = 128
GRID_LABEL_PX = 24
PROBLEM_KINDS = ("missing", "duplicate", "corrupt", "bad_label", "unlabelled", "other")


class ProblemEntry(BaseModel):
    dataset: str
    file_name: str
    kind: str
    reason: str


class DataSummary(BaseModel):
    """What `agetool data inspect` found; written as summary.json."""

    folders: list[str]
    n_rows: int = Field(description="label rows read, usable or not")
    n_images: int = Field(description="usable images: labelled, present, decodable, not a copy")
    n_corrupt: int
    n_missing: int
    n_duplicate: int
    n_bad_label: int
    n_unlabelled: int = Field(description="image files with no label row (not used)")
    age_min: float | None
    age_median: float | None
    age_mean: float | None
    age_max: float | None
    age_std: float | None
    count_by_band: dict[str, int]
    image_sizes: dict[str, int] = Field(description="'WxH' -> number of usable images")
    problems: list[ProblemEntry]
    outputs: dict[str, str] = Field(default_factory=dict)


def inspect_data(
    folders: Sequence[str | Path],
    out_dir: str | Path | None = None,
    workers: int = 4,
    show_progress: bool = False,
    grid_faces: int = 16,
) -> DataSummary:
    """Check and summarise face data folders; with `out_dir`, write summary.json, the age
    histogram and the sample-face grid there."""
    rows, problems = read_datasets(folders)
    n_label_rows = len(rows) + len(problems)
    problems = problems + _unlabelled_files(folders, rows, problems)
    rows = rows.sort_values(["dataset", "file_name"], kind="stable").reset_index(drop=True)
    digests, sizes, scan_problems = _scan_images(rows, workers, show_progress)
    problems += scan_problems
    usable = np.array([d is not None for d in digests], dtype=bool)
    copies = _content_copies(rows, digests)
    problems += copies.values()
    usable[list(copies)] = False
    kept = rows[usable]
    summary = _summarise(folders, n_label_rows, kept, [sizes[i] for i in np.flatnonzero(usable)], problems)
    if out_dir is not None:
        summary.outputs = _write_outputs(Path(out_dir), summary, kept, grid_faces)
    return summary


# --- Checks --------------------------------------------------------------------------------
def _unlabelled_files(
    folders: Sequence[str | Path], rows: pd.DataFrame, label_problems: list[Problem]
) -> list[Problem]:
    """Seeds' layout only: files in final_files/ that no row of labels.csv names (rows
    refused for a bad age are reported already, so their files do not count here)."""
    found: list[Problem] = []
    for folder in folders:
        folder = Path(folder)
        if detect_layout(folder) != "seeds" or not (folder / "final_files").is_dir():
            continue
        dataset = folder.absolute().name
        listed = set(rows.loc[rows["dataset"] == dataset, "file_name"])
        listed |= {p.file_name for p in label_problems if p.dataset == dataset}
        for path in sorted((folder / "final_files").iterdir()):
            if path.is_file() and path.name not in listed:
                found.append(Problem(dataset, path.name, "image file has no row in labels.csv", "unlabelled"))
    return found


def _scan_images(
    rows: pd.DataFrame, workers: int, show_progress: bool
) -> tuple[list[str | None], list[str], list[Problem]]:
    """Decode every image; returns per row its content hash (None when unusable), its size
    'WxH', and the corrupt ones as problems."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    paths = list(rows["path"])

    def one(path: str) -> tuple[str | None, str, str | None]:
        try:
            rgb = load_face_rgb(path)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except AgetoolError as exc:
            return None, "", str(exc).removeprefix(f"{path}: ")
        except OSError as exc:
            return None, "", f"cannot read ({exc.strerror})"
        return digest, f"{rgb.shape[1]}x{rgb.shape[0]}", None

    digests: list[str | None] = []
    sizes: list[str] = []
    problems: list[Problem] = []
    progress = Progress(
        TextColumn("decoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    with progress, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        task = progress.add_task("decoding", total=len(paths))
        for (dataset, file_name), (digest, size, error) in zip(
            zip(rows["dataset"], rows["file_name"]), pool.map(one, paths)
        ):
            digests.append(digest)
            sizes.append(size)
            if error is not None:
                problems.append(Problem(dataset, file_name, error, "corrupt"))
            progress.advance(task)
    return digests, sizes, problems


def _content_copies(rows: pd.DataFrame, digests: list[str | None]) -> dict[int, Problem]:
    """Byte-identical files: the first (by dataset, file name) is kept, the others reported."""
    first_seen: dict[str, int] = {}
    copies: dict[int, Problem] = {}
    for i, digest in enumerate(digests):
        if digest is None:
            continue
        if digest not in first_seen:
            first_seen[digest] = i
            continue
        original = rows.iloc[first_seen[digest]]
        row = rows.iloc[i]
        reason = f"same bytes as {original['dataset']}/{original['file_name']}"
        if original["real_age"] != row["real_age"]:
            reason += f" (labelled {original['real_age']:g} there, {row['real_age']:g} here)"
        copies[i] = Problem(row["dataset"], row["file_name"], reason, "duplicate")
    return copies


# --- Summary -------------------------------------------------------------------------------
def _summarise(
    folders: Sequence[str | Path],
    n_label_rows: int,
    kept: pd.DataFrame,
    sizes: list[str],
    problems: list[Problem],
) -> DataSummary:
    ages = kept["real_age"].to_numpy(dtype=np.float64)
    by_kind = {kind: sum(p.kind == kind for p in problems) for kind in PROBLEM_KINDS}
    bands = pd.Series([age_band(a) for a in ages], dtype=object).value_counts()

    def stat(fn) -> float | None:
        return round(float(fn(ages)), 3) if len(ages) else None

    return DataSummary(
        folders=[str(f) for f in folders],
        n_rows=n_label_rows,
        n_images=len(kept),
        n_corrupt=by_kind["corrupt"],
        n_missing=by_kind["missing"],
        n_duplicate=by_kind["duplicate"],
        n_bad_label=by_kind["bad_label"],
        n_unlabelled=by_kind["unlabelled"],
        age_min=stat(np.min),
        age_median=stat(np.median),
        age_mean=stat(np.mean),
        age_max=stat(np.max),
        age_std=stat(np.std),
        count_by_band={name: int(bands.get(name, 0)) for name in BAND_NAMES},
        image_sizes=dict(pd.Series(sizes, dtype=object).value_counts().sort_index().items()),
        problems=[
            ProblemEntry(dataset=p.dataset, file_name=p.file_name, kind=p.kind, reason=p.reason)
            for p in problems
        ],
    )


def _write_outputs(out_dir: Path, summary: DataSummary, kept: pd.DataFrame, grid_faces: int) -> dict[str, str]:
    outputs: dict[str, str] = {}
    if len(kept):
        ages = kept["real_age"].to_numpy(dtype=np.float64)
        outputs["histogram_png"] = str(atomic_write_bytes(out_dir / HISTOGRAM_FILE, age_histogram_png(ages)))
        outputs["sample_faces_png"] = str(atomic_write_bytes(out_dir / GRID_FILE, sample_grid_png(kept, grid_faces)))
    outputs["summary_json"] = str(out_dir / SUMMARY_FILE)
    summary.outputs = outputs
    atomic_write_bytes(out_dir / SUMMARY_FILE, (summary.model_dump_json(indent=2) + "\n").encode())
    return outputs


def age_histogram_png(ages_years: np.ndarray) -> bytes:
    """One bar per year of age, with the age-band edges marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # Figure, not pyplot: no global figure state

    from agetool.contract import AGE_BANDS

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    top = int(math.ceil(float(np.max(ages_years)))) + 1
    ax.hist(ages_years, bins=np.arange(0, top + 1), color="#4477aa")
    for band in AGE_BANDS[1:]:
        ax.axvline(band.low_years, color="#cc6677", linewidth=0.8, linestyle="--")
    ax.set_xlabel("real age (years); dashed lines: age-band edges")
    ax.set_ylabel("images")
    ax.set_title(
        f"{len(ages_years)} images, age median {np.median(ages_years):.0f}, mean {np.mean(ages_years):.1f}"
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def sample_grid_png(rows: pd.DataFrame, n_faces: int = 16, columns: int = 4) -> bytes:
    """Faces spread evenly over the age range (youngest first), each captioned with its age."""
    import cv2

    ordered = rows.sort_values(["real_age", "dataset", "file_name"], kind="stable")
    picks = ordered.iloc[np.unique(np.linspace(0, len(ordered) - 1, min(n_faces, len(ordered))).astype(int))]
    columns = min(columns, len(picks))
    n_rows = int(math.ceil(len(picks) / columns))
    cell_h = GRID_TILE_PX + GRID_LABEL_PX
    canvas = np.full((n_rows * cell_h, columns * GRID_TILE_PX, 3), 255, dtype=np.uint8)
    for k, (_, row) in enumerate(picks.iterrows()):
        top, left = (k // columns) * cell_h, (k % columns) * GRID_TILE_PX
        bgr = load_face_rgb(row["path"])[..., ::-1]
        canvas[top : top + GRID_TILE_PX, left : left + GRID_TILE_PX] = cv2.resize(
            bgr, (GRID_TILE_PX, GRID_TILE_PX), interpolation=cv2.INTER_AREA
        )
        cv2.putText(
            canvas,
            f"age {row['real_age']:g}",
            (left + 6, top + GRID_TILE_PX + 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise AgetoolError("sample grid: OpenCV could not encode the PNG")
    return encoded.tobytes()


def summary_table(summary: DataSummary, max_problems: int = 10):
    """A rich renderable: counts, age statistics and the first problems."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title="face data", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in (
        ("label rows", summary.n_rows),
        ("usable images", summary.n_images),
        ("corrupt", summary.n_corrupt),
        ("missing", summary.n_missing),
        ("duplicate", summary.n_duplicate),
        ("bad label", summary.n_bad_label),
        ("unlabelled files", summary.n_unlabelled),
    ):
        table.add_row(label, str(value))
    for label, value in (
        ("age min", summary.age_min),
        ("age median", summary.age_median),
        ("age mean", summary.age_mean),
        ("age max", summary.age_max),
        ("age std", summary.age_std),
    ):
        table.add_row(label, "-" if value is None else f"{value:.1f}")
    for band, count in summary.count_by_band.items():
        table.add_row(f"band {band}", str(count))
    parts: list = [table]
    if summary.problems:
        problems = Table(title=f"problems ({len(summary.problems)}; skipped)", show_header=True)
        for column in ("dataset", "file", "kind", "reason"):
            problems.add_column(column)
        for p in summary.problems[:max_problems]:
            problems.add_row(p.dataset, p.file_name, p.kind, p.reason)
        if len(summary.problems) > max_problems:
            problems.caption = f"... and {len(summary.problems) - max_problems} more (all in summary.json with --out)"
        parts.append(problems)
    return Group(*parts)
