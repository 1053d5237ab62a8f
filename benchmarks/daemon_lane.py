"""The daemon's own cost on this machine: a real `agetool serve` process with one lane at 5 fps,
its CPU as a share of one core (from /proc, over a fixed window after /readyz), its resident
memory, and frame -> decision p50/p95 as its own `GET /v1/lanes` reports them.

Frames are the bench's public-domain demo portrait held still for a few seconds at each of a few
places (a shopper stepping up, standing, leaving), with fresh sensor-like noise on every frame,
written as JPEGs to a temporary folder that the lane reads as its camera (looping) and deleted
afterwards; no shopper's face is involved.

Two modes on the same frames: `per_frame` is the daemon before its CPU budget (full-size
detection on every frame, the age model on every face, ONNX Runtime); `budget` is today's
default (downscaled detection, unchanged frames skipped, inference until a track settles,
runtime auto). A synchronous pass over the same frames counts how many per-frame decisions differ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from agetool.benchmarks.procfs import free_port, process_cpu_s, process_status_mb

MODES = ("per_frame", "budget")
FRAMES_PER_PLACEMENT = 15  # three seconds at 5 fps
NOISE_STD = 3.0


class DaemonLaneResult(BaseModel):
    mode: str
    runtime: str
    detector_backend: str | None = Field(None, description="what ran YuNet, from its /readyz")
    fps: float
    seconds: float
    frames_offered: int
    frames_processed: int
    detections_run: int
    faces_inferred: int
    cpu_percent_of_one_core: float = Field(description="the serve process's CPU seconds / wall seconds x 100 over the window")
    frame_to_decision_ms: dict[str, float | None] = Field(description="p50 / p95, as its /v1/lanes reports them")
    rss_mb: float | None = Field(description="the serve process's resident memory at the end of the window")
    peak_rss_mb: float | None = Field(None, description="its peak resident memory (VmHWM), start-up included")
    inference_ms_mean: float | None = Field(
        None, description="mean age-model batch latency in the daemon since start, from its /metrics")
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


def _config_dict(model_path: Path, detector_path: Path | str | None, mode: str, fps: float, threads: int | None,
                 state: Path, source: str = "bench://in-memory", port: int = 8080, runtime: str | None = None,
                 detector_backend: str | None = None) -> dict:
    detector: dict = {"path": str(detector_path)} if detector_path is not None else {}
    model: dict = {"path": str(model_path), "providers": "cpu"}
    tracking: dict = {}
    if threads:
        model["intra_op_threads"] = threads
    if mode == "per_frame":  # the daemon before its CPU budget, whatever is asked for the budget mode
        model["runtime"] = "onnxruntime"
        detector.update(detect_max_side=None, skip_unchanged_frames=False, backend="opencv")
        tracking["settled_estimates"] = 0
    else:
        if runtime:
            model["runtime"] = runtime
        if detector_backend:
            detector["backend"] = detector_backend
    return {
        "lanes": [{"name": "bench", "source": source, "fps": fps}],
        "model": model, "detector": detector, "tracking": tracking, "api": {"host": "127.0.0.1", "port": port},
        "events": {"jsonl": "off"}, "analytics": {"sqlite_path": str(state / "analytics.sqlite")},
    }


def _config(model_path: Path, detector_path: Path | str | None, mode: str, fps: float, threads: int | None, state: Path,
            runtime: str | None = None, detector_backend: str | None = None):
    from agetool.edge_runtime.config import parse_config

    return parse_config(_config_dict(model_path, detector_path, mode, fps, threads, state,
                                     runtime=runtime, detector_backend=detector_backend))


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _mean_inference_ms(base: str) -> float | None:
    """Mean age-model batch latency since start, from the daemon's own /metrics histogram."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("agetool_inference_seconds_sum", "agetool_inference_seconds_count"):
            values[name] = float(value)
    count = values.get("agetool_inference_seconds_count", 0.0)
    return round(1000.0 * values["agetool_inference_seconds_sum"] / count, 2) if count else None


def _wait_ready(process: subprocess.Popen, base: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"agetool serve exited with {process.returncode} before it was ready")
        try:
            return _get_json(base + "/readyz")  # 200 only when ready
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"agetool serve was not ready after {timeout_s:.0f} s")


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
    ready_timeout_s: float = 180.0,
    runtime: str | None = None,
    detector_backend: str | None = None,
) -> DaemonLaneResult:
    """Start `agetool serve` on the scene, measure it for `seconds` after /readyz, stop it with SIGTERM.
    `runtime` / `detector_backend` override model.runtime / detector.backend in the budget mode."""
    import yaml

    jpegs = scene_jpegs()
    with tempfile.TemporaryDirectory(prefix="agetool-daemon-bench-") as tmp:
        state = Path(tmp)
        scene = state / "scene"
        scene.mkdir()
        for index, jpeg in enumerate(jpegs):
            (scene / f"frame{index:04d}.jpg").write_bytes(jpeg)
        port = free_port()
        config_path = state / "daemon.yaml"
        config_path.write_text(yaml.safe_dump(
            _config_dict(model_path, detector_path, mode, fps, threads, state, source=str(scene), port=port,
                         runtime=runtime, detector_backend=detector_backend)
        ))
        base = f"http://127.0.0.1:{port}"
        with open(state / "serve.log", "wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "agetool.cli", "serve", "--config", str(config_path)],
                                       stdout=log_file, stderr=subprocess.STDOUT)
            try:
                ready = _wait_ready(process, base, ready_timeout_s)
                cpu0, wall0 = process_cpu_s(process.pid), time.monotonic()
                time.sleep(seconds)
                cpu_s, wall_s = process_cpu_s(process.pid) - cpu0, time.monotonic() - wall0
                rss_mb = process_status_mb(process.pid, "VmRSS")
                peak_rss_mb = process_status_mb(process.pid, "VmHWM")
                lane = _get_json(base + "/v1/lanes/bench")
                inference_ms = _mean_inference_ms(base)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        result = DaemonLaneResult(
            mode=mode,
            runtime=ready["model"]["runtime"],
            detector_backend=(ready.get("detector") or {}).get("backend"),
            fps=fps,
            seconds=round(wall_s, 1),
            frames_offered=lane["frames_read"],
            frames_processed=lane["frames_processed"],
            detections_run=lane["detections_run"],
            faces_inferred=lane["faces_inferred"],
            cpu_percent_of_one_core=round(100.0 * cpu_s / wall_s, 1),
            frame_to_decision_ms=lane["frame_to_decision_ms"],
            rss_mb=rss_mb,
            peak_rss_mb=peak_rss_mb,
            inference_ms_mean=inference_ms,
        )
        # decisions of this mode and of per_frame over the same frames, one by one, in this process (not timed)
        ours = _decisions(_prepared(model_path, detector_path, mode, fps, threads, state, runtime, detector_backend),
                          jpegs, fps)
        reference = ours if mode == "per_frame" else _decisions(
            _prepared(model_path, detector_path, "per_frame", fps, threads, state), jpegs, fps
        )
        result.decisions_compared = len(reference)
        result.decisions_differ_share = round(sum(a != b for a, b in zip(reference, ours)) / len(reference), 4)
        return result


def _prepared(model_path, detector_path, mode, fps, threads, state: Path, runtime=None, detector_backend=None):
    from agetool.edge_runtime.daemon import Daemon

    daemon = Daemon(_config(model_path, detector_path, mode, fps, threads, state, runtime, detector_backend))
    daemon.prepare()
    return daemon


def main(argv: list[str] | None = None) -> None:
    import argparse

    from agetool.paths import default_model_path

    parser = argparse.ArgumentParser(prog="python -m agetool.benchmarks.daemon_lane", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, default=None, help="age model .onnx (default: the shipped one)")
    parser.add_argument("seconds", nargs="?", type=float, default=20.0, help="measuring window after /readyz")
    parser.add_argument("modes", nargs="*", metavar="MODE", help=f"{' / '.join(MODES)} (default: both)")
    parser.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino"], default=None,
                        help="model.runtime in the budget mode (default: the daemon's default, auto)")
    parser.add_argument("--detector-backend", choices=["auto", "opencv", "onnxruntime", "openvino"], default=None,
                        help="detector.backend in the budget mode (default: the daemon's default, auto)")
    args = parser.parse_args(argv)
    unknown = [mode for mode in args.modes if mode not in MODES]
    if unknown:
        parser.error(f"mode {unknown[0]!r}: expected one of {', '.join(MODES)}")
    for mode in args.modes or MODES:
        result = measure_daemon_lane(args.model or default_model_path(), None, mode, args.seconds,
                                     runtime=args.runtime, detector_backend=args.detector_backend)
        print(json.dumps(result.model_dump()), flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # skip interpreter teardown of the runtimes' thread pools
