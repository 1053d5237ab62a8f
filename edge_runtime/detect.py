"""Face detection (OpenCV YuNet, or the Haar cascade as a fallback), choosing the shopper's face,
and cutting the APPA-style crop the age model expects."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agetool.contract import FACE_MARGIN, expand_box
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

HAAR_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceBox:
    """A detected face in frame pixels (x, y = top-left)."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def area(self) -> float:
        return self.w * self.h

    def as_xywh(self) -> list[int]:
        return [int(round(self.x)), int(round(self.y)), int(round(self.w)), int(round(self.h))]


class FaceDetector:
    """One detector instance per thread: cv2 detectors are not safe to share across threads."""

    def __init__(self, yunet_path: Path | None, score_threshold: float = 0.7, min_face_px: int = 40) -> None:
        import cv2

        self.min_face_px = min_face_px
        self.score_threshold = score_threshold
        self._input_size: tuple[int, int] | None = None
        if yunet_path is not None:
            if not Path(yunet_path).is_file():
                raise AgetoolError(f"detector {yunet_path}: file not found (a YuNet .onnx was expected)")
            try:
                self._yunet = cv2.FaceDetectorYN.create(str(yunet_path), "", (320, 320), score_threshold, 0.3, 50)
            except cv2.error:
                raise AgetoolError(f"detector {yunet_path}: not a loadable YuNet model") from None
            self._haar = None
            self.kind = "yunet"
        else:
            cascade = Path(cv2.data.haarcascades) / HAAR_FILE
            self._haar = cv2.CascadeClassifier(str(cascade))
            if self._haar.empty():
                raise AgetoolError(
                    f"detector: no YuNet file configured and the Haar cascade {cascade} is missing; "
                    "set detector.path / --detector / $AGETOOL_DETECTOR to a YuNet .onnx"
                )
            self._yunet = None
            self.kind = "haar"

    def detect(self, bgr: np.ndarray) -> list[FaceBox]:
        """Faces in a BGR frame, at least min_face_px on the shorter side."""
        faces = self._detect_yunet(bgr) if self._yunet is not None else self._detect_haar(bgr)
        return [f for f in faces if min(f.w, f.h) >= self.min_face_px]

    def _detect_yunet(self, bgr: np.ndarray) -> list[FaceBox]:
        h, w = bgr.shape[:2]
        if self._input_size != (w, h):
            self._yunet.setInputSize((w, h))
            self._input_size = (w, h)
        _, found = self._yunet.detect(bgr)
        if found is None:
            return []
        return [FaceBox(float(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[-1])) for r in found]

    def _detect_haar(self, bgr: np.ndarray) -> list[FaceBox]:
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        found = self._haar.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                            minSize=(self.min_face_px, self.min_face_px))
        # Models state their crop margin relative to YuNet's box; Haar's box is smaller (YuNet
        # side / Haar side: median 1.09 over 278 UTKFace chips), so grow it about its centre.
        s = HAAR_TO_YUNET_SIDE
        return [
            FaceBox(float(x + w * (1 - s) / 2), float(y + h * (1 - s) / 2), float(w * s), float(h * s), 1.0)
            for (x, y, w, h) in found
        ]


HAAR_TO_YUNET_SIDE = 1.09


def make_detector(yunet_path: Path | None, score_threshold: float = 0.7, min_face_px: int = 40) -> FaceDetector:
    """YuNet when a file is given, else the Haar cascade with a warning."""
    if yunet_path is None:
        log.warning(
            "no YuNet detector configured: falling back to OpenCV's Haar cascade, which misses "
            "turned and small faces; set detector.path / --detector / $AGETOOL_DETECTOR"
        )
    return FaceDetector(yunet_path, score_threshold, min_face_px)


def choose_face(faces: list[FaceBox], frame_w: int, frame_h: int) -> FaceBox | None:
    """The shopper at the till: the largest face, favouring the centre of the frame.

    A face at a corner counts as half its area, so a bystander must be clearly bigger to win."""
    if not faces:
        return None
    half_diagonal = math.hypot(frame_w, frame_h) / 2.0

    def weight(face: FaceBox) -> float:
        cx, cy = face.x + face.w / 2.0, face.y + face.h / 2.0
        off_centre = math.hypot(cx - frame_w / 2.0, cy - frame_h / 2.0) / half_diagonal
        return face.area * (1.0 - 0.5 * min(off_centre, 1.0))

    return max(faces, key=weight)


def crop_face_rgb(bgr: np.ndarray, face: FaceBox, margin: float = FACE_MARGIN) -> np.ndarray:
    """The face grown by `margin` on each side, squared, clipped, as an RGB uint8 array."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = expand_box(face.x, face.y, face.w, face.h, w, h, margin)
    if x1 <= x0 or y1 <= y0:
        raise AgetoolError(f"face box {face.as_xywh()} lies outside the {w}x{h} frame")
    return np.ascontiguousarray(bgr[y0:y1, x0:x1, ::-1])


def iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes (0 when disjoint)."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0
