"""End to end: the register pipeline (decode, detect, crop, infer, decide) timed frame by frame.

The bundled sample is the public-domain NASA astronaut portrait from scikit-image, pasted at a
few positions and scales into 640x480 frames made in memory and JPEG-encoded in memory, so the
decode stage decodes what a camera would deliver. No face pixels are written anywhere. The
stages are the daemon's own: FaceAgePipeline (its detector, the crop the model's metadata asks
for, its model), choose_face, LaneTracker and decide, with the daemon's default settings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from agetool.benchmarks.timing import LatencySummary, TimingPlan, summarise_ms
from agetool.errors import AgetoolError

DEMO_SOURCE = "demo"
FRAME_W, FRAME_H = 640, 480
# (scale of the 512 px portrait, left edge share of the free width, top edge share of the free height)
DEMO_PLACEMENTS = (
    (0.45, 0.5, 0.5), (0.45, 0.0, 0.2), (0.6, 1.0, 0.0), (0.6, 0.3, 1.0),
    (0.75, 0.5, 0.3), (0.75, 0.1, 0.9), (0.9, 0.5, 0.5), (0.9, 0.9, 0.0),
)
STAGES = ("decode", "detect", "crop", "infer", "decide")
JPEG_QUALITY = 90


class E2EResult(BaseModel):
    source: str
    detector: str
    crop: str = Field("box_margin", description="the crop the model's metadata asks for (aligned_v1 / box_margin)")
    intra_op_threads: int
    distinct_frames: int
    frames: int
    frames_with_face_share: float
    frames_per_s: float
    latency: LatencySummary = Field(description="frame (JPEG bytes in hand) -> decision, per frame")
    stage_mean_ms: dict[str, float]
    stage_share: dict[str, float]


def demo_frames_bgr() -> list[np.ndarray]:
    """The astronaut pasted into grey, lightly textured 640x480 frames at a few places and sizes."""
    import cv2

    from agetool.edge_runtime.pipeline import demo_image_bgr

    portrait = demo_image_bgr()
    rng = np.random.default_rng(7)
    background = np.clip(rng.normal(118, 12, (FRAME_H, FRAME_W, 3)), 0, 255).astype(np.uint8)
    frames = []
    for scale, left_share, top_share in DEMO_PLACEMENTS:
        side = int(round(portrait.shape[0] * scale))
        pasted = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
        side_h = min(side, FRAME_H)
        x0 = int(round((FRAME_W - side) * left_share))
        y0 = int(round((FRAME_H - side_h) * top_share))
        frame = background.copy()
        frame[y0 : y0 + side_h, x0 : x0 + side] = pasted[:side_h]
        frames.append(frame)
    return frames


def source_frames_bgr(source: str, max_frames: int) -> list[np.ndarray]:
    """The bundled demo, or up to `max_frames` frames of an image, folder or video."""
    if source == DEMO_SOURCE:
        return demo_frames_bgr()
    from agetool.edge_runtime.sources import iter_frames

    if not Path(source).expanduser().exists():
        raise AgetoolError(f"--e2e {source}: no such file or folder (or use 'demo')")
    frames = [image for _, _, image in iter_frames(str(Path(source).expanduser()), max_frames)]
    if not frames:
        raise AgetoolError(f"--e2e {source}: no readable frame")
    return frames


def encode_jpeg(frames: list[np.ndarray]) -> list[bytes]:
    import cv2

    encoded = []
    for frame in frames:
        ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise AgetoolError("e2e: OpenCV could not JPEG-encode a sample frame")
        encoded.append(buffer.tobytes())
    return encoded


def demo_face_pool(count: int, input_size: int) -> np.ndarray:
    """Preprocessed crops of the astronaut's face at jittered boxes: a real-face timing pool for
    runs without a labelled set."""
    from agetool.contract import preprocess_rgb
    from agetool.edge_runtime.pipeline import demo_image_bgr

    rgb = np.ascontiguousarray(demo_image_bgr()[..., ::-1])
    rng = np.random.default_rng(3)
    pool = []
    for _ in range(count):
        side = int(rng.integers(150, 260))
        x0 = int(rng.integers(110, 170))
        y0 = int(rng.integers(0, 60))
        pool.append(preprocess_rgb(rgb[y0 : y0 + side, x0 : x0 + side], input_size))
    return np.stack(pool)


def run_pipeline(
    model_path: Path,
    detector_path: Path | str | None,
    source: str,
    plan: TimingPlan,
    threads: int | None,
    max_frames: int = 50,
) -> E2EResult:
    """Time every stage of the register pipeline over the sample frames, rotated."""
    import cv2

    from agetool.edge_runtime.config import DetectorConfig, ModelConfig, PolicyConfig, TrackingConfig
    from agetool.edge_runtime.decide import decide
    from agetool.edge_runtime.detect import choose_face, detector_backend, make_detector
    from agetool.edge_runtime.face_pipeline import FaceAgePipeline
    from agetool.edge_runtime.pipeline import load_model
    from agetool.edge_runtime.track import LaneTracker

    jpegs = encode_jpeg(source_frames_bgr(source, max_frames))
    model_config = ModelConfig(path=model_path, providers="cpu", intra_op_threads=threads)
    model = load_model(model_path, "cpu", model_config.resolved_threads(), runtime="onnxruntime")
    detector_config = DetectorConfig(path=detector_path)
    detector = make_detector(detector_path, detector_config.score_threshold, detector_config.min_face_px,
                             backend=detector_backend(detector_config.backend, model.runtime),
                             threads=model_config.resolved_threads())
    pipeline = FaceAgePipeline(detector, model)
    tracking = TrackingConfig()
    tracker = LaneTracker(
        tracking.iou_threshold, tracking.smoothing_window, tracking.track_timeout_s,
        pipeline.mae_uncertainty_years, pipeline.interval_scale,
    )
    policy = PolicyConfig().to_policy(model.metadata.id_check_buffer_years)
    stage_ms: dict[str, list[float]] = {name: [] for name in STAGES}
    totals_ms: list[float] = []
    with_face = 0

    def one_frame(jpeg: bytes) -> bool:
        t0 = time.perf_counter()
        bgr = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        face = choose_face(pipeline.detect(bgr), bgr.shape[1], bgr.shape[0])
        t2 = time.perf_counter()
        t3 = t4 = t2
        estimate, track_id = None, None
        if face is not None:
            batch = pipeline.to_batch([pipeline.crop_rgb(bgr, face)])
            t3 = time.perf_counter()
            [record] = pipeline.infer([face], batch)
            t4 = time.perf_counter()
            track = tracker.update(face, record.age_years, t4, time.time(), record.age_std_years)
            estimate, track_id = track.estimate(tracker.model_mae_years), track.track_id
        decide("bench", estimate, track_id, policy, time.time())
        t5 = time.perf_counter()
        for name, start, end in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            stage_ms[name].append((end - start) * 1000.0)
        totals_ms.append((t5 - t0) * 1000.0)
        return face is not None

    for i in range(plan.warmup_runs):
        one_frame(jpegs[i % len(jpegs)])
    for values in stage_ms.values():
        values.clear()
    totals_ms.clear()
    started = time.perf_counter()
    i = 0
    while True:
        elapsed = time.perf_counter() - started
        if (i >= plan.min_runs and elapsed >= plan.min_seconds) or (elapsed >= plan.max_seconds and i):
            break
        with_face += one_frame(jpegs[i % len(jpegs)])
        i += 1
    wall_s = time.perf_counter() - started
    total_stage_ms = sum(sum(v) for v in stage_ms.values()) or 1.0
    return E2EResult(
        source=source if source != DEMO_SOURCE else "demo: skimage.data.astronaut (NASA, public domain) in 640x480 frames",
        detector=detector.kind,
        crop=pipeline.crop_kind,
        intra_op_threads=model_config.resolved_threads(),
        distinct_frames=len(jpegs),
        frames=i,
        frames_with_face_share=round(with_face / i, 4),
        frames_per_s=round(i / wall_s, 2),
        latency=summarise_ms(totals_ms),
        stage_mean_ms={name: round(float(np.mean(v)), 4) for name, v in stage_ms.items()},
        stage_share={name: round(sum(v) / total_stage_ms, 4) for name, v in stage_ms.items()},
    )
