"""Security and privacy of the daemon and the CLI, on real sockets and real processes:

- the API listens on 127.0.0.1 unless told otherwise, and any other bind needs a bearer token that
  every route but /healthz then enforces (routes are enumerated from the app, so new ones are covered);
- camera credentials, the API token and webhook credentials never reach logs, events, answers or errors;
- request bodies over api.max_body_bytes get 413 before they are read, and the daemon carries on;
- no path traversal through a lane name in any endpoint, nor through file names in data folders;
- `agetool run` and `agetool evaluate` end to end write no image anywhere (cwd, HOME, TMPDIR).
Complements test_runtime_daemon.py (401 on loopback with a token, masked RTSP URL, serve writes no
image, the debug switch) and test_runtime_config.py (config refuses 0.0.0.0 without a token)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import pandas as pd
import pytest

from agetool.edge_runtime.api import ApiServer
from agetool.edge_runtime.config import parse_config
from agetool.edge_runtime.daemon import Daemon
from agetool.errors import AgetoolError
from agetool.trainer.data import read_dataset
from conftest import YUNET
from test_runtime_daemon import AGETOOL, files_under, free_port, looks_like_image, wait_for
from test_runtime_units import astronaut_bgr, make_face_canvas_folder

TOKEN = "till-token-0123456789abcdef"


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state for `port`, from /proc/net/tcp (what the kernel really bound)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def still_folder(tmp_path: Path) -> Path:
    still = tmp_path / "astronaut.png"
    cv2.imwrite(str(still), astronaut_bgr())
    return still


def start_daemon(tmp_path: Path, model: Path, **api) -> Daemon:
    config = parse_config({
        "lanes": [{"name": "till-1", "source": str(still_folder(tmp_path)), "fps": 5}],
        "model": {"path": str(model), "providers": "cpu"},
        "detector": {"path": str(YUNET)},
        "api": {"port": free_port(), **api},
        "events": {"jsonl": "off"},
        "analytics": {"sqlite_path": str(tmp_path / "a.sqlite")},
    })
    daemon = Daemon(config)
    daemon.start()
    return daemon


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side path normalisation); the status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def api_routes(daemon: Daemon) -> list[tuple[str, str]]:
    from fastapi.routing import APIRoute

    app = daemon.api_server._server.config.app
    return [(method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods]


# --- bind and token -------------------------------------------------------------------------
def test_default_bind_is_loopback_only(tmp_path, tiny_onnx_model):
    daemon = start_daemon(tmp_path, tiny_onnx_model)
    try:
        port = daemon.config.api.port
        assert daemon.config.api.host == "127.0.0.1" and daemon.config.api.bearer_token is None
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        daemon.stop()


def test_any_other_bind_needs_a_token_and_every_route_enforces_it(tmp_path, tiny_onnx_model):
    with pytest.raises(AgetoolError, match="0.0.0.0: not loopback, so api.bearer_token is required"):
        ApiServer(object(), "0.0.0.0", free_port(), None)  # a second guard behind the config check
    daemon = start_daemon(tmp_path, tiny_onnx_model, host="0.0.0.0", bearer_token=TOKEN)
    try:
        port = daemon.config.api.port
        assert listening_addresses(port) == {"0.0.0.0"}
        routes = api_routes(daemon)
        assert ("POST", "/v1/lanes/{lane}/check") in routes and len(routes) >= 7
        refusals = {"none": {}, "wrong": {"Authorization": "Bearer " + "x" * len(TOKEN)},
                    "basic": {"Authorization": f"Basic {TOKEN}"}, "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"}}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for method, path in routes:
                url = path.replace("{lane}", "till-1")
                if path in ("/healthz", "/openapi.json"):
                    assert client.request(method, url).status_code == 200
                    continue
                for name, headers in refusals.items():
                    answer = client.request(method, url, headers=headers, json={})
                    assert answer.status_code == 401, (method, path, name, answer.text)
                    assert TOKEN not in answer.text
                good = client.request(method, url, headers={"Authorization": f"Bearer {TOKEN}"}, json={})
                assert good.status_code != 401, (method, path)
            assert TOKEN not in client.get("/openapi.json").text
    finally:
        daemon.stop()


# --- secrets ----------------------------------------------------------------------------------
def test_secrets_stay_out_of_logs_events_answers_and_errors(tmp_path, tiny_onnx_model):
    work = tmp_path / "work"
    work.mkdir()
    port, closed = free_port(), free_port()
    config = work / "agetool.yaml"
    config.write_text(
        "lanes:\n"
        f"  - name: cam\n    source: rtsp://cashier:${{CAM_PASS}}@127.0.0.1:{closed}/stream1\n    fps: 2\n"
        f"  - name: still\n    source: {still_folder(tmp_path)}\n"
        f"model:\n  path: {tiny_onnx_model}\n  providers: cpu\n"
        f"api:\n  host: 0.0.0.0\n  port: {port}\n  bearer_token: ${{API_TOKEN}}\n"
        f"events:\n  jsonl: {work / 'events.jsonl'}\n"
        f"  webhook_url: http://hook:hook-pw-5678@127.0.0.1:{closed}/hook\n  webhook_max_retries: 1\n"
        "  webhook_backoff_s: 0.05\n"
        f"capture:\n  reopen_backoff_initial_s: 0.1\n  reopen_backoff_max_s: 0.2\n"
        f"analytics:\n  sqlite_path: {work / 'a.sqlite'}\n"
    )
    secrets_used = {"CAM_PASS": "cam-pw-1234", "API_TOKEN": TOKEN}
    env = {**os.environ, **secrets_used, "HOME": str(work), "AGETOOL_DETECTOR": "", "PYTHONUNBUFFERED": "1"}
    log_path = work / "serve.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(AGETOOL + ["--verbose", "serve", "--config", str(config)], env=env, cwd=work,
                                stdout=log_file, stderr=subprocess.STDOUT)
    answers = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:

            def up() -> bool:
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, log_path.read_text()
                    return False

            wait_for(up, 60, "daemon up")
            wait_for(lambda: client.get("/v1/lanes/cam").json()["last_error"] is not None, 20, "cam lane error")
            client.post("/v1/lanes/still/check")  # an event for the (unreachable) webhook
            wait_for(lambda: "webhook" in log_path.read_text(), 20, "webhook failure logged")
            for path in ("/v1/lanes", "/v1/lanes/cam", "/readyz", "/metrics", "/openapi.json", "/v1/lanes/nope"):
                answers.append(client.get(path).text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    written = log_path.read_text() + (work / "events.jsonl").read_text() + "".join(answers)
    assert "rtsp://***@127.0.0.1" in written and "***@127.0.0.1" in log_path.read_text()
    for secret in (*secrets_used.values(), "hook-pw-5678"):
        assert secret not in written, secret
    # a config error next to a secret does not print it either
    config.write_text(config.read_text().replace("fps: 2", "fps: -2"))
    bad = subprocess.run(AGETOOL + ["serve", "--validate-config", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 78 and "lanes.0.fps" in bad.stderr
    short = subprocess.run(AGETOOL + ["serve", "--validate-config", "--config", str(config)],
                           env={**env, "API_TOKEN": "short-secret"}, capture_output=True, text=True, timeout=60)
    assert short.returncode == 78
    for secret in (*secrets_used.values(), "hook-pw-5678", "short-secret"):
        assert secret not in bad.stderr + short.stderr


def test_run_error_does_not_print_camera_credentials(tmp_path, tiny_onnx_model):
    url = f"rtsp://cashier:cam-pw-1234@127.0.0.1:{free_port()}/stream1"
    result = subprocess.run(AGETOOL + ["run", url, "--model", str(tiny_onnx_model)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "AGETOOL_DETECTOR": ""})
    assert result.returncode == 2 and "rtsp://***@127.0.0.1" in result.stderr
    assert "cam-pw-1234" not in result.stderr + result.stdout


# --- request size ------------------------------------------------------------------------------
def test_huge_bodies_get_413_before_being_read(tmp_path, tiny_onnx_model):
    daemon = start_daemon(tmp_path, tiny_onnx_model)
    try:
        port, limit = daemon.config.api.port, daemon.config.api.max_body_bytes
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.post("/v1/lanes/till-1/check", content=b"x" * limit).status_code == 200
            too_big = client.post("/v1/lanes/till-1/check", content=b"x" * (limit + 1))
            assert too_big.status_code == 413 and str(limit) in too_big.json()["detail"]
        # 2 GB announced, 64 KB sent: answered at once, nothing buffered
        status, _ = raw_request(port, b"POST /v1/lanes/till-1/check HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 2000000000\r\nConnection: close\r\n\r\n" + b"z" * 65536)
        assert status == 413
        status, _ = raw_request(port, b"POST /v1/lanes/till-1/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                      b"Connection: close\r\n\r\n10000\r\n" + b"z" * 65536 + b"\r\n")
        assert status in (411, 413)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:  # unaffected
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/lanes/till-1/check").status_code == 200
    finally:
        daemon.stop()


# --- path traversal --------------------------------------------------------------------------
TRAVERSALS = ["..", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "....//....//etc//passwd", "..\\..\\etc\\passwd", "%252e%252e%252fetc", "till-1/../../../etc/passwd",
              "/etc/passwd", "%00", "till-1%00.jpg"]


def test_no_path_traversal_through_any_endpoint(tmp_path, tiny_onnx_model):
    daemon = start_daemon(tmp_path, tiny_onnx_model)
    try:
        port = daemon.config.api.port
        lane_routes = [(m, p) for m, p in api_routes(daemon) if "{lane}" in p]
        assert len(lane_routes) >= 4
        tried = 0
        for method, path in lane_routes:
            for lane in TRAVERSALS:
                target = path.replace("{lane}", lane).encode()
                status, body = raw_request(port, method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                tried += 1
                assert status in (400, 404, 405, 422), (method, target, status, body[:200])
                assert b"root:" not in body
        for target in (b"/../../etc/passwd", b"//etc/passwd", b"/v1/../../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd"):
            status, body = raw_request(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status in (400, 404) and b"root:" not in body
        assert tried == len(lane_routes) * len(TRAVERSALS)
    finally:
        daemon.stop()


def test_labels_cannot_point_outside_the_image_folder(small_face_folder, tmp_path):
    secret = tmp_path / "secret.jpg"  # a real image beside the data folder, not in it
    cv2.imwrite(str(secret), astronaut_bgr())
    labels = pd.read_csv(small_face_folder / "labels.csv")
    escapes = ["../../secret.jpg", str(secret), "../labels.csv", "./../../secret.jpg"]
    extra = pd.DataFrame({"file_name": escapes, "real_age": [30] * len(escapes)})
    pd.concat([labels, extra]).to_csv(small_face_folder / "labels.csv", index=False)
    rows, problems = read_dataset(small_face_folder)
    assert len(rows) == 24 and not any("secret" in p or ".." in p for p in rows["path"])
    reasons = {p.file_name: p.reason for p in problems}
    assert all(reasons[name] == "file name escapes the image folder" for name in escapes)


# --- privacy end to end -----------------------------------------------------------------------
def test_run_and_evaluate_write_no_image_anywhere(tmp_path, tiny_onnx_model, shared_faces, small_face_folder):
    frames = make_face_canvas_folder(tmp_path / "frames", shared_faces, n_images=2)
    work, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for folder in (work, home, tmp):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "AGETOOL_DETECTOR": str(YUNET),
           "XDG_CACHE_HOME": str(home / ".cache")}
    inputs_before = {p: p.read_bytes() for p in files_under(frames, small_face_folder)}
    commands = [
        ["run", str(frames), "--model", str(tiny_onnx_model)],
        ["run", "--demo", "--model", str(tiny_onnx_model)],
        ["evaluate", "--model", str(tiny_onnx_model), "--images", str(small_face_folder),
         "--json", "report.json", "--predictions", "predictions.csv"],
        ["data", "split", str(small_face_folder), "--out", "split.csv"],
    ]
    for args in commands:
        result = subprocess.run(AGETOOL + args, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stderr)
        if args[0] == "run":
            assert [json.loads(line)["band"] for line in result.stdout.splitlines()]  # faces were seen
    written = files_under(work, home, tmp)
    assert {p.name for p in files_under(work)} == {"report.json", "predictions.csv", "split.csv"}
    assert [p for p in written if looks_like_image(p)] == []
    predictions = (work / "predictions.csv").read_text()
    assert "\\xff\\xd8" not in predictions and len(predictions) < 20_000  # ages per file name, no pixels
    assert {p: p.read_bytes() for p in files_under(frames, small_face_folder)} == inputs_before
