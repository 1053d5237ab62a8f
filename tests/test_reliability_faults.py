"""Faults the till PC meets unattended, on real components: sources that never open, send garbage or
junk over TCP, a model file deleted while serving, a full disk under the analytics flush, and
SIGTERM / SIGKILL in the middle of `agetool export` and `agetool serve`. Complements
test_runtime_daemon.py (a source vanishing and returning, SIGTERM exit code) and
test_runtime_units.py (a stalled source reopened by the watchdog)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from agetool.edge_runtime import daemon as daemon_module
from agetool.edge_runtime.analytics import BandAnalytics, read_counts
from agetool.edge_runtime.config import parse_config
from agetool.edge_runtime.sources import DropOldestQueue, LaneReader, SourceError
from conftest import YUNET, build_tiny_age_onnx
from test_runtime_daemon import AGETOOL, daemon_yaml, free_port, wait_for
from test_runtime_units import astronaut_bgr, make_face_canvas_folder


# --- sources ----------------------------------------------------------------------------------
class _NeverOpens:
    attempts: list[float] = []

    def __init__(self, _spec: object) -> None:
        self.description = "never"

    def open(self) -> None:
        type(self).attempts.append(time.monotonic())
        raise SourceError("rtsp://***@10.0.0.9/stream: cannot open")

    def read(self):  # pragma: no cover - never reached
        raise AssertionError("read without open")

    def close(self) -> None:
        pass


def test_source_that_never_opens_is_retried_with_capped_backoff():
    _NeverOpens.attempts = []
    statuses: list[bool] = []
    reader = LaneReader("till", "x", 10.0, DropOldestQueue(2), backoff_initial_s=0.05, backoff_max_s=0.2,
                        on_status=lambda _lane, online, _err: statuses.append(online), source_factory=_NeverOpens)
    reader.start()
    time.sleep(1.2)
    stopped_at = time.monotonic()
    reader.stop()
    assert time.monotonic() - stopped_at < 1.0 and not reader.alive  # stop is not stuck behind a backoff
    gaps = np.diff(_NeverOpens.attempts)
    assert len(_NeverOpens.attempts) >= 5
    assert gaps[0] < 0.15 and gaps[1] > gaps[0] and max(gaps) < 0.35  # 0.05, 0.1, 0.2, 0.2 ... (capped)
    assert reader.state.online is False and reader.state.frames_read == 0
    assert reader.state.last_error == "rtsp://***@10.0.0.9/stream: cannot open"
    assert statuses == []  # never online, so no online/offline flapping events


GARBAGE_FRAMES = [
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((1, 1, 3), np.uint8),
    np.full((48, 64), 90, np.uint8),  # grey, 2-D
    np.full((48, 64, 4), 90, np.uint8),  # BGRA
    np.full((48, 64, 3), np.nan, np.float64),
    np.zeros((3, 5000, 3), np.uint8),  # a sliver
]


class _GarbageThenFaces:
    """Every other frame is garbage; the others are the astronaut portrait."""

    def __init__(self, _spec: object) -> None:
        self.description = "garbage"
        self._count = 0
        self._face = astronaut_bgr()

    def open(self) -> None:
        pass

    def read(self):
        self._count += 1
        if self._count % 2:
            return GARBAGE_FRAMES[(self._count // 2) % len(GARBAGE_FRAMES)], "garbage"
        return self._face, "astronaut"

    def close(self) -> None:
        pass


def in_process_daemon(tmp_path: Path, model: Path, lanes: list[dict], **sections) -> object:
    data = {
        "lanes": lanes,
        "model": {"path": str(model), "providers": "cpu"},
        "detector": {"path": str(YUNET)},
        "tracking": {"track_timeout_s": 0.3},
        "capture": {"reopen_backoff_initial_s": 0.1, "reopen_backoff_max_s": 0.3},
        "api": {"port": free_port()},
        "events": {"jsonl": "off"},
        "analytics": {"sqlite_path": str(tmp_path / "state" / "a.sqlite"), "flush_interval_s": 0.2},
        **sections,
    }
    return daemon_module.Daemon(parse_config(data))


def test_garbage_frames_do_not_stop_the_daemon(tmp_path, tiny_onnx_model, monkeypatch, caplog):
    real_reader = daemon_module.LaneReader

    def reader_with_garbage(*args, **kwargs):
        return real_reader(*args, **kwargs, source_factory=_GarbageThenFaces)

    monkeypatch.setattr(daemon_module, "LaneReader", reader_with_garbage)
    caplog.set_level(logging.ERROR)
    daemon = in_process_daemon(tmp_path, tiny_onnx_model, [{"name": "till-1", "source": "garbage", "fps": 30}])
    daemon.start()
    try:
        lane = daemon.lanes["till-1"]
        wait_for(lambda: lane.frames_with_face >= 5 and lane.reader.state.frames_read >= 2 * len(GARBAGE_FRAMES),
                 30, "faces between garbage frames")
        ready, details = daemon.readiness()
        decision = daemon.current("till-1")
    finally:
        daemon.stop()
    assert ready and details["processing"] is True
    assert decision.track_id is not None and decision.age_years is not None
    assert any("frame batch skipped" in r.message for r in caplog.records)  # logged, not fatal


class JunkServer:
    """A TCP server on 127.0.0.1 that answers every connection with junk bytes and closes it.
    Stops itself after `lifetime_s` so a failing test cannot leave it behind."""

    def __init__(self, lifetime_s: float = 30.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._deadline = time.monotonic() + lifetime_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "JunkServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1.0)
                try:
                    self.requests.append(conn.recv(4096))
                    conn.sendall(b"RTSP/9.9 ???\r\n\x00\xff" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
                except OSError:
                    pass


def test_rtsp_to_a_junk_server(tmp_path, tiny_onnx_model, caplog):
    caplog.set_level(logging.INFO)
    with JunkServer() as server:
        url = f"rtsp://cashier:s3cr3t-pw@127.0.0.1:{server.port}/stream1"
        run = subprocess.run(AGETOOL + ["run", url, "--model", str(tiny_onnx_model)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "AGETOOL_DETECTOR": ""})
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert [line for line in run.stderr.splitlines() if line.startswith("error:")] == [
            f"error: source rtsp://***@127.0.0.1:{server.port}/stream1: cannot open"]

        still = tmp_path / "astronaut.png"
        cv2.imwrite(str(still), astronaut_bgr())
        daemon = in_process_daemon(tmp_path, tiny_onnx_model, [{"name": "cam", "source": url, "fps": 5},
                                                                {"name": "still", "source": str(still), "fps": 5}])
        daemon.start()
        try:
            wait_for(lambda: server.connections >= 2, 30, "two connection attempts to the junk server")
            wait_for(lambda: daemon.lanes["still"].frames_with_face > 0, 20, "the other lane working")
            ready, details = daemon.readiness()
            cam = daemon.lane_status("cam")
        finally:
            daemon.stop()
    assert not ready and details["lanes"] == {"cam": False, "still": True} and details["processing"]
    assert cam["online"] is False and cam["source"] == f"rtsp://***@127.0.0.1:{server.port}/stream1"
    assert "s3cr3t-pw" not in json.dumps(cam) + caplog.text + run.stderr + run.stdout
    assert any(b"OPTIONS" in r or b"DESCRIBE" in r for r in server.requests)  # it really spoke RTSP to us


# --- analytics under a full disk ------------------------------------------------------------
def test_a_really_full_sqlite_file_keeps_the_counts(tmp_path):
    """SQLite's own SQLITE_FULL (max_page_count stands in for the disk) and a read-only file."""
    analytics = BandAnalytics(tmp_path / "a.sqlite", flush_interval_s=3600)
    real_connect = analytics._connect

    def capped(pragma: str) -> sqlite3.Connection:
        connection = real_connect()
        connection.execute(pragma)
        return connection

    for lane in range(300):  # enough rows to need pages the capped file cannot have
        analytics.record(f"till-{lane}", "25-34", 1_700_000_000.0)
    for pragma in ("PRAGMA max_page_count = 1", "PRAGMA query_only = 1"):
        analytics._connect = lambda pragma=pragma: capped(pragma)
        assert analytics.flush() == 0 and sum(analytics.pending().values()) == 300
    del analytics._connect
    assert analytics.flush() == 300 and analytics.pending() == {}
    assert sum(n for *_, n in read_counts(tmp_path / "a.sqlite")) == 300


def test_disk_full_while_flushing_keeps_counts_and_the_daemon(tmp_path, tiny_onnx_model, shared_faces, caplog):
    folder = make_face_canvas_folder(tmp_path / "faces", shared_faces, n_images=4)
    daemon = in_process_daemon(tmp_path, tiny_onnx_model, [{"name": "till-1", "source": str(folder), "fps": 10}])
    daemon.start()
    analytics = daemon.analytics
    recorded: list[int] = []
    real_record = analytics.record

    def counting_record(*args):
        recorded.append(1)
        real_record(*args)

    # The daemon flushes through its one store writer when it has one, else its own connection.
    target, name = (analytics.writer, "add_band_counts") if analytics.writer is not None else (analytics, "_connect")
    faults = [sqlite3.OperationalError("attempt to write a readonly database"),
              sqlite3.OperationalError("database or disk is full"), OSError(28, "No space left on device")]
    caplog.set_level(logging.ERROR)
    analytics.record = counting_record
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{daemon.config.api.port}", timeout=5) as client:
            for fault in faults:
                attempts: list[int] = []

                def failing(*_args, fault=fault, attempts=attempts):
                    attempts.append(1)
                    raise fault

                setattr(target, name, failing)
                flushed_before = analytics.flushed_total
                held_before = sum(analytics.pending().values())
                wait_for(lambda: len(attempts) >= 2 and sum(analytics.pending().values()) >= held_before + 3, 30,
                         f"shoppers counted and flushes refused under {fault}")
                assert client.get("/healthz").status_code == 200
                assert client.post("/v1/lanes/till-1/check").status_code == 200
                assert analytics.flushed_total == flushed_before  # nothing could be written
            delattr(target, name)
            wait_for(lambda: analytics.pending() == {}, 10, "the held counts flushed once the disk has room")
    finally:
        daemon.stop()
    for fault in faults:
        assert any(str(fault) in r.message for r in caplog.records), fault
    db = tmp_path / "state" / "a.sqlite"
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sum(n for *_, n in read_counts(db)) == len(recorded) >= 9  # every shopper counted once


# --- model file deleted, SIGKILL and SIGTERM while serving ----------------------------------
def start_serve(config: Path, work: Path, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "AGETOOL_DETECTOR": ""}
    with (work / log_name).open("w") as log_file:
        return subprocess.Popen(AGETOOL + ["serve", "--config", str(config)], cwd=work, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)


def counted(db: Path) -> int:
    """Shoppers in the file so far; 0 while the daemon is still creating it."""
    try:
        return sum(n for *_, n in read_counts(db)) if db.exists() else 0
    except sqlite3.OperationalError:  # the file exists a moment before its tables
        return 0


def shoppers_left(events: Path) -> int:
    if not events.exists():
        return 0
    return sum(json.loads(line)["event"] == "shopper_left" for line in events.read_text().splitlines() if line)


def test_sigkill_then_sigterm_while_serving_and_model_deleted(tmp_path, shared_faces):
    work = tmp_path / "work"
    for sub in ("home", "tmp"):
        (work / sub).mkdir(parents=True)
    folder = make_face_canvas_folder(tmp_path / "faces", shared_faces, n_images=4)
    still = tmp_path / "astronaut.png"
    cv2.imwrite(str(still), astronaut_bgr())
    model = build_tiny_age_onnx(tmp_path / "models" / "age.onnx")
    db = work / "state" / "analytics.sqlite"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def config_with(flush_interval_s: float, events: str) -> Path:
        body = daemon_yaml(folder, still, model, port, work).replace("flush_interval_s: 1", f"flush_interval_s: {flush_interval_s}")
        body = body.replace(f"{work}/events.jsonl", f"{work}/{events}")
        # shorter than the 0.5 s a face takes to come back to the same place: shoppers keep leaving
        body = body.replace("track_timeout_s: 0.6", "track_timeout_s: 0.2")
        path = work / f"{events}.yaml"
        path.write_text(body)
        return path

    # 1. SIGKILL while counts are being flushed five times a second: the file stays consistent.
    proc = start_serve(config_with(0.2, "events1.jsonl"), work, "serve1.log")
    try:
        wait_for(lambda: counted(db) >= 3, 60, "counts flushed")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    killed_total = sum(n for *_, n in read_counts(db))
    assert 3 <= killed_total <= shoppers_left(work / "events1.jsonl")  # at most the last 0.2 s is lost

    # 2. Restart on the same file with no periodic flush; delete the model while serving; SIGTERM.
    proc = start_serve(config_with(86400, "events2.jsonl"), work, "serve2.log")
    try:
        with httpx.Client(base_url=base, timeout=5) as client:

            def ready() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, (work / "serve2.log").read_text()
                    return False

            wait_for(ready, 60, "restarted daemon ready")
            model.unlink()
            wait_for(lambda: shoppers_left(work / "events2.jsonl") >= 2, 30, "shoppers leaving after the model is gone")
            # Tracks here time out faster than lane-b's frames come (to make shoppers leave), so a
            # check can fall between two tracks: wait for one that carries an estimate.
            decisions: list[dict] = []

            def estimated() -> bool:
                decisions.append(client.post("/v1/lanes/lane-b/check").json())
                return decisions[-1]["age_years"] is not None

            wait_for(estimated, 20, "an age estimate after the model file was deleted")
            decision = decisions[-1]
            readyz = client.get("/readyz")
            metrics = client.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    log = (work / "serve2.log").read_text()
    assert returncode == 0 and "Traceback" not in log, log
    assert decision["age_years"] is not None  # the loaded session keeps answering
    assert readyz.status_code == 200 and readyz.json()["model"]["ready"] is True
    assert "agetool_model_ready 1.0" in metrics
    assert sum(n for *_, n in read_counts(db)) - killed_total == shoppers_left(work / "events2.jsonl")  # flushed on SIGTERM
    # a restart now is refused with one line naming the missing file
    check = subprocess.run(AGETOOL + ["serve", "--validate-config", "--config", str(work / "events2.jsonl.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 78 and f"model.path: {model}: file not found" in check.stderr


# --- SIGTERM / SIGKILL during export ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path_factory.mktemp("keras") / "till_age.keras"
    keras.Model(inputs, keras.layers.Dense(1)(x)).save(path)
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_export_killed_mid_way_writes_nothing_and_loses_nothing(sig, tiny_keras, tmp_path):
    out = tmp_path / "out"
    existing = build_tiny_age_onnx(out / "till_age.onnx")  # yesterday's export of the same model
    before = existing.read_bytes()
    proc = subprocess.Popen(AGETOOL + ["export", str(tiny_keras), "--out", str(out), "--fp16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    while not list(out.glob(".till_age.export-*")):  # the variants are being built in here now
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "export never started building"
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == -sig, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.glob("till_age*.onnx")) == ["till_age.onnx"]  # no new variant
    assert existing.read_bytes() == before  # the old file was not replaced by a half-made one
    leftovers = [p for p in out.iterdir() if p.name.startswith(".till_age.export-")]
    assert all(p.is_dir() for p in leftovers)  # only the hidden build folder may stay (no cleanup on a kill)
