"""Frame -> faces -> ages: shared by the daemon and the one-shot `agetool run`.

Pixels stay in memory; only boxes, ages and decisions come out."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from agetool.contract import Challenge25Policy, age_band
from agetool.errors import AgetoolError
from agetool.paths import ENV_MODEL, default_model_path

log = logging.getLogger(__name__)

DEMO_ORIGIN = "skimage.data.astronaut (NASA, public domain)"


def load_model(path: Path | None, providers: str = "auto", intra_op_threads: int | None = None):
    """The age model in an ONNX Runtime session, warmed up, its provider logged.

    `path` None means $AGETOOL_MODEL or the shipped default; a missing default says to pass --model."""
    from agetool.edge_runtime.infer import OnnxAgeModel

    resolved = Path(path) if path is not None else default_model_path()
    if not resolved.is_file():
        if path is None:
            raise AgetoolError(
                f"model: no model given and the default {resolved} does not exist; "
                f"pass --model PATH (an .onnx from `agetool export`) or set ${ENV_MODEL}"
            )
        raise AgetoolError(f"model {resolved}: file not found")
    if resolved.suffix != ".onnx":
        raise AgetoolError(f"model {resolved}: the runtime needs an exported .onnx (agetool export {resolved.name})")
    model = OnnxAgeModel(resolved, providers=providers, intra_op_threads=intra_op_threads)
    started = time.perf_counter()
    model.warm_up()
    log.info(
        "age model %s ready on %s (input %dpx, warm-up %.0f ms)",
        resolved.name, model.provider, model.input_size, (time.perf_counter() - started) * 1000.0,
    )
    return model


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame, as `agetool run` prints it."""

    source: str
    frame: int
    box: list[int]  # x, y, w, h in frame pixels
    age_years: float
    lower_years: float
    upper_years: float
    band: str
    id_check_required: bool

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))


def demo_image_bgr() -> np.ndarray:
    """The public-domain NASA astronaut portrait (Eileen Collins) bundled with scikit-image."""
    try:
        from skimage import data
    except ImportError:
        raise AgetoolError(
            "--demo needs scikit-image for its public-domain sample portrait: "
            "pip install 'agetool[demo]'"
        ) from None
    return np.ascontiguousarray(data.astronaut()[..., ::-1])


def analyse_frame(
    image_bgr: np.ndarray,
    origin: str,
    frame_index: int,
    detector,
    model,
    policy: Challenge25Policy,
    uncertainty_years: float,
) -> list[FaceResult]:
    """Every face in one frame with its age (single-frame estimate +/- the model's uncertainty)."""
    from agetool.edge_runtime.detect import crop_face_rgb

    faces = detector.detect(image_bgr)
    if not faces:
        return []
    margin = model.metadata.face_margin
    ages = model.predict_rgb([crop_face_rgb(image_bgr, face, margin) for face in faces])
    results = []
    for face, age in zip(faces, ages):
        age = float(age)
        lower = max(0.0, age - uncertainty_years)
        results.append(
            FaceResult(
                source=origin,
                frame=frame_index,
                box=face.as_xywh(),
                age_years=round(age, 2),
                lower_years=round(lower, 2),
                upper_years=round(age + uncertainty_years, 2),
                band=age_band(age),
                id_check_required=policy.id_check_required(lower),
            )
        )
    return results


def _policy(policy_age_years: float | None, buffer_years: float | None):
    from pydantic import ValidationError

    from agetool.edge_runtime.config import PolicyConfig
    from agetool.validation import option_error

    fields = {"policy_age_years": policy_age_years} if policy_age_years is not None else {}
    try:
        return PolicyConfig(buffer_years=buffer_years, **fields)
    except ValidationError as exc:
        raise option_error(exc, {"policy_age_years": "--policy-age", "buffer_years": "--buffer"}) from None


def run_source(
    source: str | int | None,
    out: TextIO,
    model_path: Path | None = None,
    detector_path: Path | None = None,
    providers: str = "auto",
    demo: bool = False,
    max_frames: int | None = None,
    policy_age_years: float | None = None,
    buffer_years: float | None = None,
) -> int:
    """`agetool run`: one JSON line per face to `out` for an image, folder, video or camera
    (read once through), or for the demo portrait. Returns the number of faces written."""
    from agetool.edge_runtime.detect import make_detector
    from agetool.edge_runtime.sources import iter_frames, mask_url
    from agetool.edge_runtime.track import model_uncertainty_years

    if demo == (source is not None):
        raise AgetoolError("run: give either a SOURCE or --demo")
    policy_config = _policy(policy_age_years, buffer_years)
    model = load_model(model_path, providers)
    detector = make_detector(detector_path)
    policy = policy_config.to_policy(model.metadata.id_check_buffer_years)
    uncertainty = model_uncertainty_years(model.metadata)
    frames: Iterable[tuple[int, str, np.ndarray]]
    if demo:
        frames = [(0, DEMO_ORIGIN, demo_image_bgr())]
    else:
        assert source is not None
        spec: int | str = int(source) if str(source).isdigit() else str(source)
        if isinstance(spec, str) and "://" not in spec and not Path(spec).expanduser().exists():
            raise AgetoolError(f"source {mask_url(spec)}: no such file or folder")
        frames = iter_frames(spec, max_frames)
    written = 0
    n_frames = 0
    for index, origin, image in frames:
        n_frames += 1
        results = analyse_frame(image, origin, index, detector, model, policy, uncertainty)
        if not results:
            log.info("%s frame %d: no face found", origin, index)
        for result in results:
            out.write(result.to_json() + "\n")
            written += 1
        out.flush()
    if n_frames == 0:
        raise AgetoolError(f"source {mask_url(str(source))}: no decodable image or frame in it")
    return written
