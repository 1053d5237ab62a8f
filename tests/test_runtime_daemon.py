"""The register daemon for real: `agetool serve` in a subprocess on 127.0.0.1 with an image-folder
lane and an image-file lane, the YuNet detector and a real ONNX model. Every endpoint, the source
vanishing and returning, SIGTERM with analytics flushed, and no image written anywhere."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import httpx
import pytest

from agetool.contract import BAND_NAMES
from agetool.edge_runtime.analytics import read_counts
from agetool.edge_runtime.config import parse_config
from conftest import YUNET
from test_runtime_units import astronaut_bgr, make_face_canvas_folder

AGETOOL = [sys.executable, "-m", "agetool.cli"]
IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"\x93NUMPY",
    b"P5", b"P6",  # PGM / PPM
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def looks_like_image(path: Path) -> bool:
    head = path.read_bytes()[:16]
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


FAST_WATCHDOG = """\
capture:
  stall_timeout_s: 2.0
  watchdog_interval_s: 0.2
  reopen_backoff_initial_s: 0.1
  reopen_backoff_max_s: 0.4
"""


def daemon_yaml(
    folder: Path,
    still: Path,
    model: Path,
    port: int,
    work: Path,
    extra_lanes: str = "",
    track_timeout_s: float = 0.6,
    capture: str = FAST_WATCHDOG,
) -> str:
    """Lanes lane-a (face folder) and lane-b (still portrait), plus `extra_lanes` (YAML items)."""
    return f"""\
lanes:
  - name: lane-a
    source: {folder}
    fps: 8
  - name: lane-b
    source: {still}
    fps: 4
{extra_lanes}model:
  path: {model}
  providers: cpu
detector:
  path: {YUNET}
tracking:
  track_timeout_s: {track_timeout_s}
{capture}api:
  port: {port}
events:
  jsonl: {work}/events.jsonl
analytics:
  sqlite_path: {work}/state/analytics.sqlite
  flush_interval_s: 1
"""


@pytest.fixture
def daemon_dirs(tmp_path, shared_faces):
    sources = tmp_path / "sources"
    folder = make_face_canvas_folder(sources / "lane-a", shared_faces, n_images=4)
    still = sources / "astronaut.png"
    cv2.imwrite(str(still), astronaut_bgr())
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    (work / "home").mkdir()
    return folder, still, work


def test_daemon_end_to_end(daemon_dirs, tiny_onnx_model):
    folder, still, work = daemon_dirs
    port = free_port()
    config = work / "agetool.yaml"
    config.write_text(daemon_yaml(folder, still, tiny_onnx_model, port, work))
    env = {**os.environ, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "AGETOOL_DETECTOR": ""}
    before = set(files_under(work))
    log_path = work / "daemon.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(AGETOOL + ["serve", "--config", str(config)], cwd=work, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5.0) as client:

            def get_ok(path: str) -> bool:
                try:
                    return client.get(path).status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, log_path.read_text()
                    return False

            wait_for(lambda: get_ok("/healthz"), 60, "/healthz")
            wait_for(lambda: get_ok("/readyz"), 30, "/readyz ready")
            ready = client.get("/readyz").json()
            assert ready["model"]["provider"] == "CPUExecutionProvider" and ready["lanes"] == {
                "lane-a": True, "lane-b": True}

            wait_for(lambda: client.get("/v1/lanes/lane-a/current").json()["track_id"] is not None, 20,
                     "a tracked face in lane-a")
            current = client.get("/v1/lanes/lane-a/current").json()
            assert 5.0 <= current["age_years"] <= 65.0  # the tiny model's range
            assert current["lower_years"] <= current["age_years"] <= current["upper_years"]
            # the API now answers as soon as the lanes start (the port is bound first), so lane-b's
            # first track can still be on its way when lane-a has one
            wait_for(lambda: client.get("/v1/lanes/lane-b/current").json()["track_id"] is not None, 20,
                     "a tracked face in lane-b")
            check = client.post("/v1/lanes/lane-b/check")
            assert check.status_code == 200
            decision = check.json()
            assert decision["lane"] == "lane-b" and isinstance(decision["track_id"], int)
            assert decision["id_check_required"] == (decision["lower_years"] < decision["threshold_years"])
            assert decision["band"] in BAND_NAMES and decision["timestamp"].endswith("+00:00")

            assert client.get("/v1/lanes/nope/current").status_code == 404
            assert client.post("/v1/lanes/nope/check").status_code == 404
            lanes = {lane["lane"]: lane for lane in client.get("/v1/lanes").json()}
            assert lanes["lane-a"]["online"] and lanes["lane-a"]["frames_processed"] > 0
            assert lanes["lane-a"]["frame_to_decision_ms"]["p50"] is not None

            metrics = client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert 'agetool_lane_online{lane="lane-a"} 1.0' in text
            assert 'agetool_lane_frames_dropped_total{lane="lane-a"}' in text
            assert 'agetool_lane_fps{lane="lane-b"}' in text
            assert "agetool_inference_seconds_bucket" in text
            assert 'agetool_decisions_total{lane="lane-b",outcome=' in text

            openapi = client.get("/openapi.json").json()
            assert {"/healthz", "/readyz", "/metrics", "/v1/lanes/{lane}/current",
                    "/v1/lanes/{lane}/check"} <= set(openapi["paths"])

            # The camera goes away: lane offline, not ready, and no face means "ask for ID".
            hidden = folder.with_name("lane-a-unplugged")
            folder.rename(hidden)
            wait_for(lambda: client.get("/readyz").status_code == 503, 15, "/readyz 503")
            assert client.get("/readyz").json()["lanes"]["lane-a"] is False
            wait_for(lambda: client.get("/v1/lanes/lane-a/current").json()["track_id"] is None, 10, "track gone")
            no_face = client.post("/v1/lanes/lane-a/check").json()
            assert no_face["id_check_required"] is True and no_face["reason"] == "no_face_seen"
            assert 'agetool_lane_online{lane="lane-a"} 0.0' in client.get("/metrics").text
            hidden.rename(folder)
            wait_for(lambda: client.get("/readyz").status_code == 200, 15, "/readyz back to 200")
            assert client.get("/v1/lanes/lane-a").json()["online"] is True
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    output = log_path.read_text()
    assert returncode == 0, output
    assert "SIGTERM received" in output and "Traceback" not in output

    counts = read_counts(work / "state" / "analytics.sqlite")
    assert counts, "no shopper counted"
    assert {lane for _, lane, _, _ in counts} == {"lane-a", "lane-b"}
    assert all(band in BAND_NAMES and shoppers >= 1 for _, _, band, shoppers in counts)

    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.index("lane_offline") < len(kinds) - 1 - kinds[::-1].index("lane_online")
    assert {"check", "shopper_left"} <= set(kinds)

    # Privacy: nothing the daemon wrote (work dir, HOME, TMPDIR) is an image.
    written = [p for p in files_under(work) if p not in before]
    assert work / "state" / "analytics.sqlite" in written
    images = [p for p in written if looks_like_image(p)]
    assert images == []
    assert sorted(p.name for p in files_under(folder)) == [f"frame{i:03d}.jpg" for i in range(4)]


# --- in-process: auth, masked credentials, debug switch -----------------------------------------
def in_process_config(folder: Path, model: Path, work: Path, **extra) -> object:
    data = {
        "lanes": [
            {"name": "till-1", "source": str(folder), "fps": 10},
            {"name": "till-2", "source": "rtsp://shopcam:hunter2-secret@127.0.0.1:9/stream1", "fps": 1},
        ],
        "model": {"path": str(model), "providers": "cpu"},
        "detector": {"path": str(YUNET)},
        "capture": {"reopen_backoff_initial_s": 0.2, "reopen_backoff_max_s": 0.5},
        "api": {"port": free_port(), "bearer_token": "test-token-0123456789"},
        "events": {"jsonl": "off"},
        "analytics": {"sqlite_path": str(work / "a.sqlite"), "flush_interval_s": 60},
        **extra,
    }
    return parse_config(data)


def test_in_process_daemon_auth_masking_and_debug_switch(daemon_dirs, tiny_onnx_model, caplog):
    from agetool.edge_runtime.daemon import Daemon

    folder, _still, work = daemon_dirs
    crops = work / "debug-crops"
    config = in_process_config(folder, tiny_onnx_model, work, debug_save_crops=True, debug_crops_dir=str(crops))
    caplog.set_level(logging.INFO)
    daemon = Daemon(config)
    daemon.start()
    try:
        base = f"http://127.0.0.1:{config.api.port}"
        auth = {"Authorization": "Bearer test-token-0123456789"}
        with httpx.Client(base_url=base, timeout=5.0) as client:
            assert client.get("/healthz").status_code == 200  # liveness needs no token
            assert client.get("/v1/lanes").status_code == 401
            assert client.post("/v1/lanes/till-1/check").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            wait_for(lambda: client.get("/v1/lanes/till-1/current", headers=auth).json()["track_id"] is not None,
                     20, "a tracked face")
            lanes = client.get("/v1/lanes", headers=auth)
            assert lanes.status_code == 200
            assert client.get("/readyz", headers=auth).status_code == 503  # the rtsp lane cannot connect
            body = lanes.text + client.get("/metrics", headers=auth).text + client.get("/readyz", headers=auth).text
            assert "***@127.0.0.1:9/stream1" in lanes.text
    finally:
        daemon.stop()
    assert "hunter2-secret" not in body
    assert "hunter2-secret" not in caplog.text
    assert any("debug_save_crops is ON" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    saved = sorted(crops.glob("*.jpg"))
    assert saved and all(looks_like_image(p) for p in saved)  # the switch does what it says, and only it


def test_debug_switch_is_off_by_default(daemon_dirs, tiny_onnx_model):
    from agetool.edge_runtime.daemon import Daemon

    folder, _still, work = daemon_dirs
    config = in_process_config(folder, tiny_onnx_model, work)
    assert config.debug_save_crops is False
    daemon = Daemon(config)
    daemon.start()
    try:
        wait_for(lambda: daemon.lanes["till-1"].frames_with_face > 3, 20, "faces processed")
    finally:
        daemon.stop()
    assert [p for p in files_under(work) if looks_like_image(p)] == []
