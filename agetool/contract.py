"""The contract every stage reads: preprocessing, model metadata keys, age bands, Challenge 25.

Data flows one way (dataset -> trainer -> .keras -> export -> .onnx -> runtime / bench); this
module is the only thing all of them share. It imports numpy only, so the till PC can read it
without TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agetool.errors import AgetoolError
from agetool.validation import describe, dotted

# --- Preprocessing --------------------------------------------------------------------------
# A model takes NHWC float32 RGB pixels in 0..255; the backbone's own normalisation is a layer
# inside the model, so nothing outside it needs to know which backbone it is.
DEFAULT_INPUT_SIZE = 224
COLOUR_ORDER = "RGB"
VALUE_RANGE = "0..255"
LAYOUT = "NHWC"
INPUT_NAME = "image"
OUTPUT_NAME = "age_years"
# The crop around a detected face must frame it as the training images did, or the estimates
# shift by years. APPA-REAL-style crops grow the detector's box by ~40 % of its size on every
# side; a model states its own margin in its metadata (face_margin), and this is the default.
FACE_MARGIN = 0.4
AGE_MIN_YEARS = 0.0
AGE_MAX_YEARS = 120.0


def preprocess_rgb(rgb: np.ndarray, input_size: int) -> np.ndarray:
    """Resize an RGB uint8 face crop (H, W, 3) to the model input: float32 (size, size, 3), 0..255."""
    import cv2  # local: keeps `import agetool.contract` free of OpenCV for light readers

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise AgetoolError(f"face crop: expected an (H, W, 3) image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if min(h, w) >= input_size else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (input_size, input_size), interpolation=interpolation)
    return resized.astype(np.float32)


def preprocess_bgr(bgr: np.ndarray, input_size: int) -> np.ndarray:
    """Same as preprocess_rgb for an OpenCV (BGR) crop."""
    return preprocess_rgb(np.ascontiguousarray(bgr[..., ::-1]), input_size)


def expand_box(
    x: float, y: float, w: float, h: float, frame_w: int, frame_h: int, margin: float = FACE_MARGIN
) -> tuple[int, int, int, int]:
    """Grow a face box by `margin` of its size on each side, make it square, clip to the frame.

    Returns integer (x0, y0, x1, y1)."""
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = max(0, int(round(cx - side / 2.0)))
    y0 = max(0, int(round(cy - side / 2.0)))
    x1 = min(frame_w, int(round(cx + side / 2.0)))
    y1 = min(frame_h, int(round(cy + side / 2.0)))
    return x0, y0, x1, y1


# --- Aligned crop (crop "aligned_v1") -------------------------------------------------------
# Five landmarks in YuNet's order (image-left eye, image-right eye, nose tip, image-left mouth
# corner, image-right mouth corner) are mapped by a similarity transform onto one canonical
# template, in training and at the till alike, so the framing no longer depends on the detector's
# box. The template is the ArcFace 112 px template in unit coordinates; `coverage` widens the
# crop about the template's centre (1.0 = ArcFace framing, eyebrows to chin; 1.5 shows forehead,
# hair and chin).
CROP_BOX_MARGIN = "box_margin"
CROP_ALIGNED_V1 = "aligned_v1"
CROP_KINDS = (CROP_BOX_MARGIN, CROP_ALIGNED_V1)
ALIGN_TEMPLATE_UNIT = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
) / 112.0
DEFAULT_ALIGN_COVERAGE = 1.3  # chosen by tools/choose_coverage.py (README)


@dataclass(frozen=True)
class AlignTemplate:
    """Where the five landmarks land in a `size` x `size` crop framed with `coverage`."""

    size: int = DEFAULT_INPUT_SIZE
    coverage: float = DEFAULT_ALIGN_COVERAGE

    def __post_init__(self) -> None:
        if self.size < 8 or not (0.5 <= self.coverage <= 4.0):
            raise AgetoolError(
                f"align template: size must be >= 8 and coverage 0.5..4, got {self.size}, {self.coverage}"
            )

    def points(self) -> np.ndarray:
        """(5, 2) template landmarks in crop pixels."""
        return ((ALIGN_TEMPLATE_UNIT - 0.5) / self.coverage + 0.5) * self.size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + shift mapping src points onto dst (Umeyama 1991).

    Returns the 2x3 matrix for cv2.warpAffine. Closed form and deterministic, unlike the RANSAC
    of cv2.estimateAffinePartial2D, which five points do not need."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2 or not np.isfinite(src).all():
        raise AgetoolError(f"landmarks: expected {len(dst)} finite (x, y) points, got shape {src.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-9:
        raise AgetoolError("landmarks: all points coincide; cannot align")
    cov = dst_c.T @ src_c / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / src_var)
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, template: AlignTemplate) -> np.ndarray:
    """The face warped onto the template: (size, size, channels), same dtype and colour order
    as `image`; pixels outside the frame repeat its border."""
    import cv2

    matrix = similarity_transform(landmarks, template.points())
    interpolation = cv2.INTER_AREA if matrix_scale(matrix) < 0.5 else cv2.INTER_LINEAR
    return cv2.warpAffine(
        image, matrix, (template.size, template.size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
    )


def matrix_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity matrix."""
    return float(np.hypot(matrix[0, 0], matrix[1, 0]))


# --- Age bands -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgeBand:
    name: str
    low_years: int
    high_years: int | None  # inclusive; None = open-ended

    def contains(self, age_years: float) -> bool:
        return age_years >= self.low_years and (
            self.high_years is None or age_years < self.high_years + 1
        )


AGE_BANDS: tuple[AgeBand, ...] = (
    AgeBand("0-12", 0, 12),
    AgeBand("13-17", 13, 17),
    AgeBand("18-24", 18, 24),
    AgeBand("25-34", 25, 34),
    AgeBand("35-49", 35, 49),
    AgeBand("50-64", 50, 64),
    AgeBand("65+", 65, None),
)
BAND_NAMES: tuple[str, ...] = tuple(b.name for b in AGE_BANDS)
UNKNOWN_BAND = "unknown"


def age_band(age_years: float) -> str:
    """The band name for an age in years (fractions allowed: 12.6 is in 0-12)."""
    if not math.isfinite(age_years):
        return UNKNOWN_BAND
    for band in AGE_BANDS:
        if band.contains(age_years):
            return band.name
    return AGE_BANDS[0].name if age_years < 0 else AGE_BANDS[-1].name


# --- Challenge 25 ----------------------------------------------------------------------------
LEGAL_AGE_YEARS = 18
DEFAULT_POLICY_AGE_YEARS = 25


class Challenge25Policy(BaseModel):
    """Ask for ID unless the shopper clearly looks older than the policy age.

    `buffer_years` is subtracted from the estimate before the comparison: a larger buffer asks
    more adults for ID and lets fewer minors through."""

    model_config = ConfigDict(extra="forbid")

    policy_age_years: float = Field(DEFAULT_POLICY_AGE_YEARS, ge=18, le=40)
    buffer_years: float = Field(0.0, ge=0, le=20)

    @property
    def threshold_years(self) -> float:
        return self.policy_age_years + self.buffer_years

    def id_check_required(self, age_years: float | None) -> bool:
        """True when the estimate is missing or below policy age + buffer."""
        if age_years is None or not math.isfinite(age_years):
            return True
        return age_years < self.threshold_years


def challenge25_rates(
    true_age_years: np.ndarray, estimated_age_years: np.ndarray, threshold_years: float
) -> dict[str, float]:
    """Share of true minors (< 18) estimated at or above the threshold (sold alcohol unchecked),
    and share of true 25+ estimated below it (asked for ID needlessly)."""
    true_age_years = np.asarray(true_age_years, dtype=np.float64)
    estimated_age_years = np.asarray(estimated_age_years, dtype=np.float64)
    minors = true_age_years < LEGAL_AGE_YEARS
    adults = true_age_years >= DEFAULT_POLICY_AGE_YEARS
    passed = estimated_age_years >= threshold_years
    return {
        "minors_passed_rate": float(passed[minors].mean()) if minors.any() else float("nan"),
        "adults_checked_rate": float((~passed)[adults].mean()) if adults.any() else float("nan"),
        "n_minors": int(minors.sum()),
        "n_adults_25_plus": int(adults.sum()),
    }


# --- Model metadata (ONNX metadata_props) ---------------------------------------------------
METADATA_PREFIX = "agetool."


class ModelMetadata(BaseModel):
    """What an exported ONNX model says about itself. Runtime and bench read these back instead
    of guessing; a model without them is refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    agetool_version: str
    input_size: int = Field(gt=0)
    colour_order: str = COLOUR_ORDER
    value_range: str = VALUE_RANGE
    layout: str = LAYOUT
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    preprocessing: str = "resize to input_size x input_size (INTER_AREA), RGB, float32 0..255; backbone normalisation inside the graph"
    backbone: str = "unknown"
    weights: str = "unknown"
    training_data: str = "unknown"
    val_mae: float | None = None
    variant: str = "fp32"
    export_date: str = ""
    calibration_size: int | None = None
    calibration_method: str | None = None
    # Challenge-25 buffer chosen on the validation set (years above policy age), when known.
    id_check_buffer_years: float | None = None
    mae_uncertainty_years: float | None = None
    # Share of the detector's face box added on each side when cropping (see FACE_MARGIN).
    face_margin: float = Field(FACE_MARGIN, ge=0, le=2)
    # How the runtime cuts the face: "box_margin" (the detector's box grown by face_margin; every
    # model exported before alignment) or "aligned_v1" (AlignTemplate at align_coverage).
    crop: str = Field(CROP_BOX_MARGIN, pattern="^(box_margin|aligned_v1)$")
    align_coverage: float | None = Field(None, ge=0.5, le=4)
    # A second output with each face's own spread (std of the predicted age distribution, years),
    # and the factor that makes `age +/- interval_scale * std` hold `interval_level` of validation faces.
    std_output_name: str | None = None
    interval_scale: float | None = Field(None, gt=0)
    interval_level: float | None = Field(None, gt=0, lt=1)

    def align_template(self) -> AlignTemplate | None:
        """The template an aligned_v1 model asks for (None for box_margin models)."""
        if self.crop != CROP_ALIGNED_V1:
            return None
        return AlignTemplate(self.input_size, self.align_coverage or DEFAULT_ALIGN_COVERAGE)

    def to_props(self) -> dict[str, str]:
        """Flat string map for onnx metadata_props (None values are left out)."""
        return {
            METADATA_PREFIX + key: str(value)
            for key, value in self.model_dump().items()
            if value is not None
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse metadata_props; raises AgetoolError naming the source when ours are missing."""
        ours = {
            key[len(METADATA_PREFIX) :]: value
            for key, value in props.items()
            if key.startswith(METADATA_PREFIX)
        }
        if "input_size" not in ours or "agetool_version" not in ours:
            raise AgetoolError(
                f"{source}: not an agetool model (no agetool.* metadata); export it with `agetool export`"
            )
        known = set(cls.model_fields)
        try:
            return cls.model_validate({k: v for k, v in ours.items() if k in known})
        except ValidationError as exc:
            raise AgetoolError(describe(exc, lambda loc: f"{source}: agetool metadata {METADATA_PREFIX}{dotted(loc)}")) from None
