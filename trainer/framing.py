"""How tightly a data set's images frame their faces, as a crop margin for the runtime.

The runtime crops a detected face with `face_margin` (a share of the detector's box added on each
side) before resizing; a model sees faces at the scale it was trained on only if that margin
matches its training images. APPA-REAL-style crops are loose (~40 %); UTKFace chips are tight
(YuNet's box covers ~97 % of the chip, margin ~1.5 %). A wrong margin shifts estimates by years."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from agetool.errors import AgetoolError


def measure_face_margin(image_paths: Sequence[str | Path], detector_path: str | Path | None = None) -> tuple[float, int]:
    """Median framing of the images under the runtime's own detector (YuNet, the shipped one by
    default): (margin, faces measured).

    margin = (image side / face box side - 1) / 2, the value expand_box needs to reproduce the
    training crops from a detection."""
    import cv2

    from agetool.edge_runtime.detect import FaceDetector

    if detector_path is not None and str(detector_path) != "haar" and not Path(detector_path).is_file():
        raise AgetoolError(f"--detector {detector_path}: YuNet .onnx file not found")
    detector = FaceDetector(detector_path, score_threshold=0.6, min_face_px=8)
    shares = []
    for path in image_paths:
        image = cv2.imread(str(path))
        if image is None:
            continue
        faces = detector.detect(image)
        if faces:
            shares.append(max(faces[0].w, faces[0].h) / max(image.shape[:2]))
    if not shares:
        raise AgetoolError("framing: the detector found no face in any image")
    side_share = float(np.median(shares))
    return round(max(0.0, (1.0 / side_share - 1.0) / 2.0), 3), len(shares)


def measure_folders_margin(
    folders: Sequence[str | Path], detector_path: str | Path | None, sample: int = 600, seed: int = 42
) -> tuple[float, int]:
    """`agetool data framing`: the margin measured on a seeded sample of the folders' images."""
    from agetool.trainer.data import read_usable

    rows = read_usable(folders)
    if len(rows) > sample:
        rows = rows.sample(n=sample, random_state=seed)
    return measure_face_margin(list(rows["path"]), detector_path)
