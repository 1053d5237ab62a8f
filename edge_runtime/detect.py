"""Face detection (OpenCV YuNet, shipped in the package; the Haar cascade only when asked for by
name), choosing the shopper's face, and cutting the box crop older models expect."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.contract import FACE_MARGIN, expand_box
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

HAAR_FILE = "haarcascade_frontalface_default.xml"
# `--detector haar` / `detector.path: haar`: OpenCV's Haar cascade, an explicit choice only.
HAAR = "haar"


@dataclass(frozen=True)
class FaceBox:
    """A detected face in frame pixels (x, y = top-left), with YuNet's five landmarks as a (5, 2)
    array (image-left eye, image-right eye, nose tip, left and right mouth corner); None for Haar."""

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def area(self) -> float:
        return self.w * self.h

    def as_xywh(self) -> list[int]:
        return [int(round(self.x)), int(round(self.y)), int(round(self.w)), int(round(self.h))]

    def landmarks_list(self) -> list[list[float]] | None:
        if self.landmarks is None:
            return None
        return [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]

    def scaled(self, factor: float) -> "FaceBox":
        """The same face in a frame `factor` times as large (boxes and landmarks alike)."""
        points = None if self.landmarks is None else self.landmarks * factor
        return FaceBox(self.x * factor, self.y * factor, self.w * factor, self.h * factor, self.score, points)


def is_haar(spec: str | Path | None) -> bool:
    return spec is not None and str(spec).strip().lower() == HAAR


# YuNet's smallest reliable face side, in the pixels it sees (measured on the bench scene: a
# 41 x 50 px face was found at full size and at 1.25x smaller, lost at 2x smaller).
SMALLEST_DETECTABLE_PX = 32


class FaceDetector:
    """One detector instance per thread: cv2 detectors and runtime sessions used this way are not
    safe to share across threads.

    `yunet_path`: a YuNet .onnx, or "haar" for OpenCV's Haar cascade. `detect_max_side`: detect on
    the frame shrunk so its longer side is at most this many pixels (a face at a till is large),
    and map boxes and landmarks back to the full frame; None detects at full size. `backend`: what
    runs YuNet (opencv, onnxruntime, openvino: the same faces within 1e-4 px, see yunet.py)."""

    def __init__(
        self,
        yunet_path: Path | str | None,
        score_threshold: float = 0.7,
        min_face_px: int = 40,
        detect_max_side: int | None = None,
        backend: str = "opencv",
        threads: int | None = None,
    ) -> None:
        import cv2

        from agetool.edge_runtime.yunet import YuNet
        from agetool.paths import default_detector_path

        self.min_face_px = min_face_px
        self.score_threshold = score_threshold
        self.detect_max_side = detect_max_side
        self.passes_run = 0  # detection passes of the last detect() call (1 coarse, 2 coarse + fine)
        if yunet_path is None:
            yunet_path = default_detector_path()
        if not is_haar(yunet_path):
            yunet_path = Path(yunet_path)
            if not Path(yunet_path).is_file():
                raise AgetoolError(f"detector {yunet_path}: file not found (a YuNet .onnx was expected)")
            self._yunet = YuNet(yunet_path, backend, score_threshold, threads)
            self._haar = None
            self.kind = "yunet"
            self.source = str(yunet_path)
            self.backend = backend
        else:
            cascade = Path(cv2.data.haarcascades) / HAAR_FILE
            self._haar = cv2.CascadeClassifier(str(cascade))
            if self._haar.empty():
                raise AgetoolError(
                    f"detector haar: OpenCV's Haar cascade {cascade} is missing; "
                    "use the shipped YuNet (leave --detector / detector.path unset)"
                )
            self._yunet = None
            self.kind = HAAR
            self.source = HAAR
            self.backend = "opencv"

    def detect(self, bgr: np.ndarray) -> list[FaceBox]:
        """Faces in a BGR frame (full-frame pixels), at least min_face_px on the shorter side.

        Coarse to fine: first on the frame shrunk to detect_max_side (a shopper at the till is a
        large face, found there at a quarter of the cost); only when that finds no face of
        min_face_px, again at the smallest shrink that keeps a min_face_px face at
        SMALLEST_DETECTABLE_PX, so a face the configuration asks for is never lost."""
        h, w = bgr.shape[:2]
        coarse = max(1.0, max(h, w) / self.detect_max_side) if self.detect_max_side is not None else 1.0
        # Never shrink a face of min_face_px below what YuNet still finds (a 41 px face at 320 px was missed).
        fine = min(coarse, max(1.0, self.min_face_px / SMALLEST_DETECTABLE_PX))
        self.passes_run = 1
        faces = self._detect_at(bgr, coarse)
        if faces or fine >= coarse:
            return faces
        self.passes_run = 2
        return self._detect_at(bgr, fine)

    def _detect_at(self, bgr: np.ndarray, factor: float) -> list[FaceBox]:
        """Detect on the frame shrunk `factor` times; boxes and landmarks in full-frame pixels."""
        import cv2

        h, w = bgr.shape[:2]
        if factor > 1.0:
            small = (max(1, int(round(w / factor))), max(1, int(round(h / factor))))
            bgr = cv2.resize(bgr, small, interpolation=cv2.INTER_AREA)
            factor = w / small[0]
        if self._yunet is not None:
            faces = self._detect_yunet(bgr)
        else:
            faces = self._detect_haar(bgr, max(8, int(self.min_face_px / factor)))
        if factor != 1.0:
            faces = [f.scaled(factor) for f in faces]
        return [f for f in faces if min(f.w, f.h) >= self.min_face_px]

    def _detect_yunet(self, bgr: np.ndarray) -> list[FaceBox]:
        found = self._yunet.detect(bgr)
        # YuNet rows: x, y, w, h, five (x, y) landmarks, score
        return [
            FaceBox(float(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[-1]),
                    np.asarray(r[4:14], dtype=np.float64).reshape(5, 2))
            for r in found
        ]

    def _detect_haar(self, bgr: np.ndarray, min_px: int) -> list[FaceBox]:
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        found = self._haar.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_px, min_px))
        # Models state their crop margin relative to YuNet's box; Haar's box is smaller (YuNet
        # side / Haar side: median 1.09 over 278 UTKFace chips), so grow it about its centre.
        s = HAAR_TO_YUNET_SIDE
        return [
            FaceBox(float(x + w * (1 - s) / 2), float(y + h * (1 - s) / 2), float(w * s), float(h * s), 1.0)
            for (x, y, w, h) in found
        ]


HAAR_TO_YUNET_SIDE = 1.09


def detector_backend(requested: str, model_runtime: str | None) -> str:
    """`auto`: YuNet on ONNX Runtime when the age model runs there (2.3x faster than OpenCV's DNN
    module, one library fewer in memory), else on OpenCV. Not on OpenVINO: in the daemon beside an
    OpenVINO age model it took more CPU and ~10 MB more memory than OpenCV's DNN module (one lane,
    5 fps, 2026-12-02: CPU 4.9 / 5.8 % vs 4.4 / 4.7 %, RSS 212 / 221 vs 202 / 204 MB)."""
    if requested != "auto":
        return requested
    return "onnxruntime" if model_runtime == "onnxruntime" else "opencv"


def make_detector(
    yunet_path: Path | str | None,
    score_threshold: float = 0.7,
    min_face_px: int = 40,
    detect_max_side: int | None = None,
    backend: str = "opencv",
    threads: int | None = None,
) -> FaceDetector:
    """YuNet (the given file, else $AGETOOL_DETECTOR, else the shipped one), or Haar when asked for
    by name; the choice is logged once."""
    detector = FaceDetector(yunet_path, score_threshold, min_face_px, detect_max_side, backend, threads)
    if detector.kind == HAAR:
        log.info("face detector: OpenCV's Haar cascade (asked for; it misses turned and small faces)")
    else:
        log.info("face detector: YuNet %s on %s", detector.source, detector.backend)
    return detector


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


class FrameChangeGate:
    """Says whether a frame differs from the last one it let through (a still scene, a paused
    camera): detection on an unchanged frame would find the same faces again.

    Frames are compared as small grey thumbnails, whose pixels average hundreds of camera pixels,
    so sensor noise does not count as change; a shopper stepping in or moving their head does.
    Each frame is compared with the last frame let through, not the previous one, so slow drift
    adds up and is caught."""

    THUMB_SIZE = (32, 24)

    def __init__(self, max_diff: int = 12) -> None:
        # Largest difference of one thumbnail pixel (~20 x 20 camera pixels), grey levels 0..255:
        # averaged sensor noise stays ~2 levels; a face entering moves dozens of them by 30+.
        self.max_diff = max_diff
        self._reference: np.ndarray | None = None

    def changed(self, bgr: np.ndarray) -> bool:
        import cv2

        thumb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), self.THUMB_SIZE, interpolation=cv2.INTER_AREA)
        thumb = thumb.astype(np.int16)
        if self._reference is not None and self._reference.shape == thumb.shape:
            if int(np.abs(thumb - self._reference).max()) < self.max_diff:
                return False
        self._reference = thumb
        return True
