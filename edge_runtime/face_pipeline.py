"""Frame -> faces -> ages, in one place: the detector, the age model, and the crop the model's
metadata asks for.

`crop: aligned_v1` models get the face warped onto the contract's canonical template from YuNet's
five landmarks; `box_margin` models (every model exported before alignment) get the detector's
box grown by their `face_margin`. The daemon, `agetool run`, `agetool evaluate --detect`, the
bench's end-to-end rows and `agetool data framing` all go through FaceAgePipeline; none cuts a
crop itself. Pixels stay in memory; only boxes, landmarks and ages come out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from agetool.contract import CROP_ALIGNED_V1, age_band, align_face, preprocess_rgb
from agetool.edge_runtime.detect import FaceBox, FaceDetector, crop_face_rgb
from agetool.edge_runtime.infer import AgeModel, AgePrediction
from agetool.edge_runtime.track import model_interval_scale, model_uncertainty_years
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceRecord:
    """One face in one frame: where it is, its age, and the interval the ID decision uses."""

    face: FaceBox
    age_years: float
    age_std_years: float | None  # the model's own spread for this face; None for one-output models
    uncertainty_years: float  # interval_scale * std when the model gives a spread, else its stated MAE

    @property
    def lower_years(self) -> float:
        return max(0.0, self.age_years - self.uncertainty_years)

    @property
    def upper_years(self) -> float:
        return self.age_years + self.uncertainty_years

    @property
    def band(self) -> str:
        return age_band(self.age_years)


class FaceAgePipeline:
    """A detector and an age model joined by the crop the model was trained on."""

    def __init__(self, detector: FaceDetector, model: AgeModel) -> None:
        if model.metadata is None:
            raise AgetoolError(
                f"model {model.path}: a .keras file states no crop; export it (`agetool export`) to run it on frames"
            )
        self.detector = detector
        self.model = model
        self.metadata = model.metadata
        self.template = self.metadata.align_template()
        self.mae_uncertainty_years = model_uncertainty_years(self.metadata)
        self.interval_scale = model_interval_scale(self.metadata)
        self._warned_no_landmarks = False
        if self.template is not None and getattr(detector, "kind", None) == "haar":
            log.warning(
                "the model wants aligned crops (aligned_v1) but Haar gives no landmarks: faces are cut "
                "with the box margin instead, which frames them differently; use the shipped YuNet"
            )
            self._warned_no_landmarks = True

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def crop_kind(self) -> str:
        return self.metadata.crop

    def detect(self, frame_bgr: np.ndarray) -> list[FaceBox]:
        return self.detector.detect(frame_bgr)

    def crop_rgb(self, frame_bgr: np.ndarray, face: FaceBox) -> np.ndarray:
        """The RGB uint8 crop this model expects for one face."""
        if self.template is not None:
            if face.landmarks is not None:
                aligned_bgr = align_face(frame_bgr, face.landmarks, self.template)
                return np.ascontiguousarray(aligned_bgr[..., ::-1])
            if not self._warned_no_landmarks:
                log.warning("aligned_v1 model but the detector gave no landmarks: using the box crop")
                self._warned_no_landmarks = True
        return crop_face_rgb(frame_bgr, face, self.metadata.face_margin)

    def to_batch(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """The model input for crops: (N, size, size, 3) float32 RGB 0..255."""
        if not crops_rgb:
            return np.zeros((0, self.input_size, self.input_size, 3), dtype=np.float32)
        return np.stack([preprocess_rgb(crop, self.input_size) for crop in crops_rgb])

    def infer(self, faces: Sequence[FaceBox], batch: np.ndarray) -> list[FaceRecord]:
        """Run the model on a prepared batch (one row per face) and turn its outputs into records."""
        if len(faces) != len(batch):
            raise ValueError(f"{len(faces)} faces but {len(batch)} crops")
        if not len(faces):
            return []
        return self.records(faces, self.model.predict_with_std(batch))

    def records(self, faces: Sequence[FaceBox], prediction: AgePrediction) -> list[FaceRecord]:
        out = []
        for i, face in enumerate(faces):
            std = None if prediction.std_years is None else float(prediction.std_years[i])
            uncertainty = self.interval_scale * std if std is not None else self.mae_uncertainty_years
            out.append(FaceRecord(face, float(prediction.ages_years[i]), std, uncertainty))
        return out

    def estimate(self, frame_bgr: np.ndarray, faces: Sequence[FaceBox]) -> list[FaceRecord]:
        """Ages for faces already found in this frame (one batched inference)."""
        return self.infer(faces, self.to_batch([self.crop_rgb(frame_bgr, face) for face in faces]))

    def analyse(self, frame_bgr: np.ndarray) -> list[FaceRecord]:
        """Every face in a BGR frame with its age."""
        return self.estimate(frame_bgr, self.detect(frame_bgr))


def jitter_face(face: FaceBox, fraction: float, rng: np.random.Generator) -> FaceBox:
    """The face as a less steady detector might report it: box and landmarks shifted together by up
    to `fraction` of the face size, the box resized by up to that share, and each landmark moved
    on its own by up to half of it."""
    if fraction <= 0:
        return face
    size = max(face.w, face.h)
    dx, dy = rng.uniform(-fraction, fraction, 2) * size
    grow = 1.0 + rng.uniform(-fraction, fraction)
    cx, cy = face.x + face.w / 2 + dx, face.y + face.h / 2 + dy
    w, h = face.w * grow, face.h * grow
    landmarks = None
    if face.landmarks is not None:
        own = rng.uniform(-fraction / 2, fraction / 2, face.landmarks.shape) * size
        landmarks = face.landmarks + np.array([dx, dy]) + own
    return FaceBox(cx - w / 2, cy - h / 2, w, h, face.score, landmarks)
