"""The daemon's own cost on this machine: one lane at 5 fps through the real Daemon processing
thread, its CPU as a share of one core, and frame -> decision p50/p95 exactly as `/v1/lanes`
reports them (LaneRuntime.latency_percentiles_ms).

Frames are the bench's public-domain demo portrait held still for a few seconds at each of a few
places (a shopper stepping up, standing, leaving), with fresh sensor-like noise on every frame,
JPEG-encoded in memory and decoded at capture time as a camera reader would; nothing is written.

Two modes on the same frames: `per_frame` is the daemon before its CPU budget (full-size
detection on every frame, the age model on every face, ONNX Runtime); `budget` is today's
default (downscaled detection, unchanged frames skipped, inference until a track settles,
runtime auto). A synchronous pass over the same frames counts how many per-frame decisions differ."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

MODES = ("per_frame", "budget")
FRAMES_PER_PLACEMENT = 15  # three seconds at 5 fps
NOISE_STD = 3.0


class DaemonLaneResult(BaseModel):
    mode: str
    runtime: str
    fps: float
    seconds: float
    frames_offered: int
    frames_processed: int
    detections_run: int
    faces_inferred: int
    cpu_percent_of_one_core: float = Field(description="process CPU seconds / wall seconds x 100 while the lane ran")
    frame_to_decision_ms: dict[str, float | None] = Field(description="p50 / p95, as /v1/lanes reports them")
    rss_mb: float | None
    decisions_compared: int = 0
    decisions_differ_share: float | None = Field(
        None, description="share of frames whose ID decision differs from the per_frame mode's (synchronous pass)"
    )


def scene_jpegs(seed: int = 11) -> list[bytes]:
    """The demo placements, each held for FRAMES_PER_PLACEMENT noisy frames, as JPEG bytes."""
    from agetool.benchmarks.e2e import demo_frames_bgr, encode_jpeg

    rng = np.random.default_rng(seed)
    frames = []
    for still in demo_frames_bgr():
        for _ in range(FRAMES_PER_PLACEMENT):
            noisy = np.clip(still + rng.normal(0, NOISE_STD, still.shape), 0, 255).astype(np.uint8)
            frames.append(noisy)
    return encode_jpeg(frames)


def _config(model_path: Path, detector_path: Path | str | None, mode: str, fps: float, threads: int | None, state: Path):
    from agetool.edge_runtime.config import parse_config

    detector: dict = {"path": str(detector_path)} if detector_path is not None else {}
    model: dict = {"path": str(model_path), "providers": "cpu"}
    tracking: dict = {}
    if threads:
        model["intra_op_threads"] = threads
    if mode == "per_frame":
        model["runtime"] = "onnxruntime"
        detector.update(detect_max_side=None, skip_unchanged_frames=False)
        tracking["settled_estimates"] = 0
    return parse_config({
        "lanes": [{"name": "bench", "source": "bench://in-memory", "fps": fps}],
        "model": model, "detector": detector, "tracking": tracking,
        "events": {"jsonl": "off"}, "analytics": {"sqlite_path": str(state / "analytics.sqlite")},
    })


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def _decisions(daemon, jpegs: list[bytes], fps: float) -> list[bool]:
    """ID decisions after each frame, frames 1/fps apart, processed one by one."""
    import cv2

    from agetool.edge_runtime.decide import decide
    from agetool.edge_runtime.sources import Frame

    lane = daemon.lanes["bench"]
    out = []
    for index, jpeg in enumerate(jpegs):
        captured_s = index / fps
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        daemon.process_batch([(lane, Frame("bench", index, image, captured_s, 0.0, "bench"))])
        track = lane.tracker.current(captured_s)
        estimate = track.estimate(daemon.model_mae_years) if track is not None else None
        out.append(decide("bench", estimate, None, daemon.policy, 0.0).id_check_required)
    return out


def measure_daemon_lane(
    model_path: Path,
    detector_path: Path | str | None,
    mode: Literal["per_frame", "budget"],
    seconds: float = 20.0,
    fps: float = 5.0,
    threads: int | None = None,
) -> DaemonLaneResult:
    """Run one lane through the daemon's processing thread for `seconds` at `fps`."""
    import cv2

    from agetool.edge_runtime.sources import Frame

    jpegs = scene_jpegs()
    with tempfile.TemporaryDirectory(prefix="agetool-daemon-bench-") as state:
        daemon = _prepared(model_path, detector_path, mode, fps, threads, Path(state))
        lane = daemon.lanes["bench"]
        stop = threading.Event()
        offered = 0

        def capture() -> None:
            nonlocal offered
            period = 1.0 / fps
            next_s = time.monotonic()
            while not stop.is_set():
                image = cv2.imdecode(np.frombuffer(jpegs[offered % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
                lane.queue.put(Frame("bench", offered, image, time.monotonic(), time.time(), "bench"))
                offered += 1
                next_s += period
                stop.wait(max(0.0, next_s - time.monotonic()))

        daemon.start_processing()
        reader = threading.Thread(target=capture, name="bench-capture", daemon=True)
        cpu0, wall0 = time.process_time(), time.monotonic()
        reader.start()
        stop.wait(seconds)
        stop.set()
        reader.join(5.0)
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        daemon.stop_processing()
        rss_mb = _rss_mb()
        result = DaemonLaneResult(
            mode=mode,
            runtime=getattr(daemon.model, "runtime", "onnxruntime"),
            fps=fps,
            seconds=round(wall_s, 1),
            frames_offered=offered,
            frames_processed=lane.frames_processed,
            detections_run=lane.detections_run,
            faces_inferred=lane.faces_inferred,
            cpu_percent_of_one_core=round(100.0 * cpu_s / wall_s, 1),
            frame_to_decision_ms=lane.latency_percentiles_ms(),
            rss_mb=rss_mb,
        )
        # decisions of this mode and of per_frame over the same frames, one by one (not timed)
        ours = _decisions(_prepared(model_path, detector_path, mode, fps, threads, Path(state)), jpegs, fps)
        reference = ours if mode == "per_frame" else _decisions(
            _prepared(model_path, detector_path, "per_frame", fps, threads, Path(state)), jpegs, fps
        )
        result.decisions_compared = len(reference)
        result.decisions_differ_share = round(sum(a != b for a, b in zip(reference, ours)) / len(reference), 4)
        return result


def _prepared(model_path, detector_path, mode, fps, threads, state: Path):
    from agetool.edge_runtime.daemon import Daemon

    daemon = Daemon(_config(model_path, detector_path, mode, fps, threads, state))
    daemon.prepare()
    return daemon


if __name__ == "__main__":  # python -m agetool.benchmarks.daemon_lane [MODEL] [SECONDS] [MODE]
    import json
    import sys

    from agetool.paths import default_model_path

    model = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_path()
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    for mode in sys.argv[3:] or MODES:
        print(json.dumps(measure_daemon_lane(model, None, mode, seconds).model_dump()), flush=True)
    os._exit(0)  # skip interpreter teardown of the runtimes' thread pools
