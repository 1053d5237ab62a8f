"""`agetool run`: a source read once through FaceAgePipeline, one JSON line per face; and the
model loading the daemon shares.

Pixels stay in memory; only boxes, landmarks, ages and decisions come out."""

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


def load_model(
    path: Path | None, providers: str = "auto", intra_op_threads: int | None = None, runtime: str = "auto"
):
    """The age model on its runtime (auto: the faster of ONNX Runtime and OpenVINO here), warmed
    up, its runtime and device logged.

    `path` None means $AGETOOL_MODEL or the shipped default; a missing default says to pass --model."""
    from agetool.edge_runtime.infer import open_age_model

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
    model = open_age_model(resolved, runtime, providers, intra_op_threads)
    started = time.perf_counter()
    model.warm_up()
    log.info(
        "age model %s ready on %s %s (input %dpx, crop %s, warm-up %.0f ms)",
        resolved.name, model.runtime, model.device, model.input_size, model.metadata.crop,
        (time.perf_counter() - started) * 1000.0,
    )
    return model


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame, as `agetool run` prints it."""

    source: str
    frame: int
    box: list[int]  # x, y, w, h in frame pixels
    landmarks: list[list[float]] | None  # YuNet's five (x, y) points; null with Haar
    age_years: float
    age_std_years: float | None  # the model's own spread for this face, when it gives one
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
    image_bgr: np.ndarray, origin: str, frame_index: int, pipeline, policy: Challenge25Policy
) -> list[FaceResult]:
    """Every face in one frame with its age (single-frame estimate +/- its uncertainty: the
    face's own spread times interval_scale when the model gives one, else the model's MAE)."""
    results = []
    for record in pipeline.analyse(image_bgr):
        results.append(
            FaceResult(
                source=origin,
                frame=frame_index,
                box=record.face.as_xywh(),
                landmarks=record.face.landmarks_list(),
                age_years=round(record.age_years, 2),
                age_std_years=None if record.age_std_years is None else round(record.age_std_years, 2),
                lower_years=round(record.lower_years, 2),
                upper_years=round(record.upper_years, 2),
                band=age_band(record.age_years),
                id_check_required=policy.id_check_required(record.lower_years),
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
    detector_path: Path | str | None = None,
    providers: str = "auto",
    demo: bool = False,
    max_frames: int | None = None,
    policy_age_years: float | None = None,
    buffer_years: float | None = None,
    runtime: str = "auto",
) -> int:
    """`agetool run`: one JSON line per face to `out` for an image, folder, video or camera
    (read once through), or for the demo portrait. Returns the number of faces written."""
    from agetool.edge_runtime.detect import detector_backend, make_detector
    from agetool.edge_runtime.face_pipeline import FaceAgePipeline
    from agetool.edge_runtime.sources import iter_frames, mask_url

    if demo == (source is not None):
        raise AgetoolError("run: give either a SOURCE or --demo")
    policy_config = _policy(policy_age_years, buffer_years)
    model = load_model(model_path, providers, runtime=runtime)
    pipeline = FaceAgePipeline(make_detector(detector_path, backend=detector_backend("auto", model.runtime)), model)
    policy = policy_config.to_policy(model.metadata.id_check_buffer_years)
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
        results = analyse_frame(image, origin, index, pipeline, policy)
        if not results:
            log.info("%s frame %d: no face found", origin, index)
        for result in results:
            out.write(result.to_json() + "\n")
            written += 1
        out.flush()
    if n_frames == 0:
        raise AgetoolError(f"source {mask_url(str(source))}: no decodable image or frame in it")
    return written
