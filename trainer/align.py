"""`agetool data align`: detect the face in every image of a data folder and write it warped onto
the contract's canonical template, as a new data folder in the seeds' layout.

Training then sees faces framed exactly as the runtime will cut them from a till frame (crop
`aligned_v1`), whatever the source folder's own framing. Images are never dropped silently: each
one not written gets a reason in `align_report.csv`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from agetool.contract import CROP_ALIGNED_V1, DEFAULT_ALIGN_COVERAGE, AlignTemplate, align_face
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

ALIGN_INFO_FILE = "align.json"
REPORT_FILE = "align_report.csv"
# A second face at least this share of the largest one's area makes the label ambiguous.
AMBIGUOUS_AREA_SHARE = 0.5
JPEG_QUALITY = 95


class AlignConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    src_dirs: list[Path] = Field(min_length=1)
    out_dir: Path
    detector: Path
    size: int = Field(224, ge=32, le=1024)
    coverage: float = Field(DEFAULT_ALIGN_COVERAGE, ge=0.5, le=4.0)
    # Share of the image side added on each side before detection: tight chips (UTKFace) cut the
    # face at the chin and forehead, and YuNet misses faces that fill the whole image.
    pad: float = Field(0.5, ge=0.0, le=2.0)
    score_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    resume: bool = True
    workers: int = Field(2, ge=1, le=64, description="Threads (OpenCV releases the GIL); one detector each.")


@dataclass
class FolderReport:
    dataset: str
    out_dir: Path
    n_images: int = 0
    n_written: int = 0
    n_reused: int = 0
    n_no_face: int = 0
    n_ambiguous: int = 0
    n_several_kept: int = 0
    n_unreadable: int = 0
    seconds: float = 0.0
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # file, status, reason

    def summary(self) -> dict:
        return {
            "dataset": self.dataset,
            "out_dir": str(self.out_dir),
            "images": self.n_images,
            "written": self.n_written + self.n_reused,
            "reused_from_earlier_run": self.n_reused,
            "no_face": self.n_no_face,
            "several_faces_ambiguous": self.n_ambiguous,
            "several_faces_kept_largest": self.n_several_kept,
            "unreadable": self.n_unreadable,
            "seconds": round(self.seconds, 1),
        }


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray  # (5, 2)
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


def detect_faces(detector, image_bgr: np.ndarray, pad: float) -> list[Detection]:
    """YuNet detections on the image padded by `pad` of its side (grey border), in image
    coordinates, largest first."""
    import cv2

    h, w = image_bgr.shape[:2]
    py, px = int(round(h * pad)), int(round(w * pad))
    padded = cv2.copyMakeBorder(image_bgr, py, py, px, px, cv2.BORDER_CONSTANT, value=(127, 127, 127))
    detector.setInputSize((padded.shape[1], padded.shape[0]))
    _, found = detector.detect(padded)
    if found is None:
        return []
    detections = []
    for row in found:
        landmarks = row[4:14].reshape(5, 2).astype(np.float64) - (px, py)
        detections.append(
            Detection((float(row[0] - px), float(row[1] - py), float(row[2]), float(row[3])), landmarks, float(row[14]))
        )
    return sorted(detections, key=lambda d: d.area, reverse=True)


def choose_detection(detections: list[Detection]) -> tuple[Detection | None, str]:
    """The labelled face, and a status: ok | several_kept | no_face | ambiguous."""
    if not detections:
        return None, "no_face"
    if len(detections) == 1:
        return detections[0], "ok"
    if detections[1].area >= AMBIGUOUS_AREA_SHARE * detections[0].area:
        return None, "ambiguous"
    return detections[0], "several_kept"


def _source_rows(src: Path) -> pd.DataFrame:
    from agetool.trainer.data import read_dataset

    rows, problems = read_dataset(src)
    for problem in problems[:20]:
        log.warning("%s/%s skipped: %s", problem.dataset, problem.file_name, problem.reason)
    return rows


def _write_atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def align_folder(
    src: Path,
    out_dir: Path,
    config: AlignConfig,
    progress: Callable[[int], None] | None = None,
) -> FolderReport:
    """Align one data folder into `out_dir` (final_files/ + labels.csv + align_report.csv +
    align.json; source_names.csv rows carried over for the files written)."""
    import cv2

    template = AlignTemplate(config.size, config.coverage)
    rows = _source_rows(src)
    report = FolderReport(dataset=Path(os.path.abspath(src)).name, out_dir=out_dir, n_images=len(rows))
    files_dir = out_dir / "final_files"
    files_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / ALIGN_INFO_FILE
    wanted_info = {"crop": CROP_ALIGNED_V1, "size": config.size, "coverage": config.coverage, "pad": config.pad,
                   "score_threshold": config.score_threshold, "detector": Path(config.detector).name}
    reuse = config.resume and info_path.is_file() and _same_settings(info_path, wanted_info)
    # Settings first, so a killed run is resumed only with the same template and detector.
    _write_info(info_path, {**wanted_info, "source": str(src), "complete": False})
    local = threading.local()

    def one(row) -> tuple[str, str, int, str]:
        out_name = Path(row.file_name).with_suffix(".jpg").name
        target = files_dir / out_name
        if reuse and target.is_file():
            return row.file_name, out_name, int(row.real_age), "reused"
        if not hasattr(local, "detector"):
            local.detector = cv2.FaceDetectorYN.create(
                str(config.detector), "", (320, 320), config.score_threshold, 0.3, 50)
        status = _align_one(Path(row.path), target, local.detector, template, config.pad)
        return row.file_name, out_name, int(row.real_age), status

    labels: list[tuple[str, int]] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for file_name, out_name, age, status in pool.map(one, rows.itertuples(index=False)):
            if status in ("ok", "several_kept", "reused"):
                labels.append((out_name, age))
                report.n_written += status != "reused"
                report.n_reused += status == "reused"
                report.n_several_kept += status == "several_kept"
            else:
                report.problems.append((file_name, status, _REASONS[status]))
                report.n_no_face += status == "no_face"
                report.n_ambiguous += status == "ambiguous"
                report.n_unreadable += status == "unreadable"
            if progress is not None:
                progress(1)
    report.seconds = time.perf_counter() - started
    _write_atomic_csv(pd.DataFrame(labels, columns=["file_name", "real_age"]), out_dir / "labels.csv")
    _write_atomic_csv(pd.DataFrame(report.problems, columns=["file_name", "status", "reason"]), out_dir / REPORT_FILE)
    _carry_source_names(src, out_dir, {name for name, _ in labels})
    _write_info(info_path, {**wanted_info, "source": str(src), "complete": True, **report.summary()})
    return report


def _write_info(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


_REASONS = {
    "no_face": "the detector found no face",
    "ambiguous": "several faces of similar size: which one the age belongs to is unknown",
    "unreadable": "the image could not be decoded",
}


def _same_settings(info_path: Path, wanted: dict) -> bool:
    try:
        earlier = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False
    return all(earlier.get(key) == value for key, value in wanted.items())


def _align_one(path: Path, target: Path, detector, template: AlignTemplate, pad: float) -> str:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable"
    detection, status = choose_detection(detect_faces(detector, image, pad))
    if detection is None:
        return status
    crop = align_face(image, detection.landmarks, template)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return "unreadable"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, target)
    return status


def _carry_source_names(src: Path, out_dir: Path, written: set[str]) -> None:
    """Keep source_names.csv (gender and ethnicity live in UTKFace's original names) for the
    files written, under their new names."""
    names = src / "source_names.csv"
    if not names.is_file():
        return
    df = pd.read_csv(names)
    df["file_name"] = df["file_name"].map(lambda n: Path(str(n)).with_suffix(".jpg").name)
    _write_atomic_csv(df[df["file_name"].isin(written)], out_dir / "source_names.csv")


def align_folders(config: AlignConfig, show_progress: bool = False) -> list[FolderReport]:
    """`agetool data align SRC... --out DIR`: one aligned data folder per source, DIR/<source name>."""
    detector = Path(config.detector)
    if not detector.is_file():
        raise AgetoolError(f"--detector {detector}: YuNet .onnx file not found")
    names = [Path(os.path.abspath(s)).name for s in config.src_dirs]
    if len(set(names)) != len(names):
        raise AgetoolError(f"data folders: names must differ (each becomes DIR/<name>), got {names}")
    for src in config.src_dirs:
        if Path(os.path.abspath(src)) == Path(os.path.abspath(config.out_dir)) / Path(os.path.abspath(src)).name:
            raise AgetoolError(f"--out {config.out_dir}: would overwrite the source folder {src}")
    reports = []
    for src, name in zip(config.src_dirs, names):
        out_dir = Path(config.out_dir) / name
        if show_progress:
            from rich.progress import Progress

            total = len(_source_rows(src))
            with Progress(transient=False) as bar:
                task = bar.add_task(f"align {name}", total=total)
                reports.append(align_folder(src, out_dir, config, lambda n: bar.advance(task, n)))
        else:
            reports.append(align_folder(src, out_dir, config))
    return reports


def sample_aligned_crops(
    paths: Sequence[str | Path], detector_path: Path, template: AlignTemplate, pad: float = 0.5
) -> tuple[list[np.ndarray], list[int]]:
    """Aligned BGR crops of the images where one face is found, and their indices (for choosing
    the template's coverage on a validation sample)."""
    import cv2

    detector = cv2.FaceDetectorYN.create(str(detector_path), "", (320, 320), 0.5, 0.3, 50)
    crops, kept = [], []
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        detection, _ = choose_detection(detect_faces(detector, image, pad))
        if detection is not None:
            crops.append(align_face(image, detection.landmarks, template))
            kept.append(index)
    return crops, kept
