"""The API against clients nobody here wrote, on real sockets on 127.0.0.1: schemathesis over the
published OpenAPI document, idle / slow-head / slow-body sockets, hundreds of connections under a
low open-file limit, nested JSON, the wrong content type, a client that leaves mid-body; and the
start of `agetool serve` when its port is taken or a lane's source is missing."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import pytest

from agetool.edge_runtime.config import parse_config
from agetool.edge_runtime.daemon import Daemon
from agetool.edge_runtime.http_limits import RepeatLimiter
from conftest import YUNET, build_tiny_age_onnx
from test_runtime_daemon import AGETOOL, free_port, wait_for
from test_runtime_units import astronaut_bgr

TOKEN = "till-token-0123456789abcdef"
LANE = "till-1"


def write_still(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    still = folder / "astronaut.png"
    cv2.imwrite(str(still), astronaut_bgr())
    return still


def daemon_config(work: Path, model: Path, port: int, **api) -> dict:
    return {
        "lanes": [{"name": LANE, "source": str(write_still(work / "sources")), "fps": 2}],
        "model": {"path": str(model), "providers": "cpu"},
        "detector": {"path": str(YUNET)},
        "api": {"port": port, **api},
        "events": {"jsonl": "off"},
        "analytics": {"sqlite_path": str(work / "analytics.sqlite")},
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Daemon:
    """One in-process daemon with a token and short client timeouts (2 s) for the whole module."""
    work = tmp_path_factory.mktemp("http")
    model = build_tiny_age_onnx(work / "tiny_age.onnx")
    config = parse_config(daemon_config(work, model, free_port(), bearer_token=TOKEN,
                                        head_timeout_s=2, body_timeout_s=2, max_connections=64))
    running = Daemon(config)
    running.start()
    yield running
    running.stop()


def client(daemon: Daemon) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{daemon.config.api.port}", timeout=10,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def raw(daemon: Daemon, request: bytes, linger_s: float = 30.0) -> tuple[bytes, bool]:
    """Send bytes as they are; (what came back, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", daemon.config.api.port), timeout=linger_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            return b"".join(chunks), False
        except ConnectionResetError:
            pass
    return b"".join(chunks), True


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- 4: the published document resolves and schemathesis finds nothing --------------------------
def test_openapi_document_resolves_and_documents_real_answers(daemon):
    with client(daemon) as http:
        doc = http.get("/openapi.json").json()
    text = json.dumps(doc)
    assert "#/$defs/" not in text
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    receipts = doc["paths"]["/v1/lanes/{lane}/receipts"]["post"]
    assert {"201", "200", "404", "409", "411", "413", "415", "422", "503", "401"} <= set(receipts["responses"])
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) >= {"200", "503"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "api.bearer_token (every route but /healthz)"}
    total = doc["components"]["schemas"]["ReceiptIn"]["properties"]["total"]
    assert total["type"] == "number" and total["minimum"] == 0 and total["maximum"] == 10_000_000
    from openapi_spec_validator import validate

    validate(doc)


def test_schemathesis_finds_nothing_wrong(daemon, tmp_path):
    """`schemathesis run --checks all` against the running daemon, bounded and seeded."""
    port = daemon.config.api.port
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{port}/openapi.json",
         "--checks", "all", "--max-examples", "15", "--seed", "16", "--generation-deterministic",
         "--request-timeout", "10", "--no-color",
         "-H", f"Authorization: Bearer {TOKEN}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout and " 0 generated" not in result.stdout


# --- 2, 3: bodies that are not receipts -----------------------------------------------------
def test_nested_json_and_non_receipts_are_422_in_one_line(daemon):
    url = f"/v1/lanes/{LANE}/receipts"
    bodies = {
        "nested arrays": "[" * 1000 + "]" * 1000,
        "nested objects": '{"a":' * 5000 + "1" + "}" * 5000,
        "nested in items": '{"receipt_id":"R1","total":1,"items":' + "[" * 3000 + "]" * 3000 + "}",
        "huge number": '{"receipt_id":"R1","total":' + "9" * 5000 + "}",
        "total as text": '{"receipt_id":"R1","total":"12.30"}',
        "total as bool": '{"receipt_id":"R1","total":true}',
        "blank sku": '{"receipt_id":"R1","total":1,"items":[{"sku":"   ","category":"beer","quantity":1}]}',
        "padded id": '{"receipt_id":" R1 ","total":1}',
    }
    with client(daemon) as http:
        for name, body in bodies.items():
            answer = http.post(url, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 422, (name, answer.status_code, answer.text[:300])
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, (name, detail)
        # the agreed edges still pass: 64 characters with the spaces trimmed off, a total with 2 decimals
        item = {"sku": " " + "s" * 62 + " ", "category": "beer", "quantity": 1}
        good = http.post(url, json={"receipt_id": "EDGE-1", "total": 12.3, "items": [item]})
        assert good.status_code == 201, good.text
        assert good.json()["total"] == 12.3
        assert http.get("/healthz").status_code == 200


def test_receipts_need_application_json(daemon):
    url = f"/v1/lanes/{LANE}/receipts"
    body = json.dumps({"receipt_id": "CT-1", "total": 1})
    with client(daemon) as http:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": content_type} if content_type else {}
            answer = http.post(url, content=body.encode(), headers=headers)
            assert answer.status_code == 415, (content_type, answer.status_code, answer.text)
            assert "application/json" in answer.json()["detail"]
        assert http.post(url, content=body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 201
    header = f"Authorization: Bearer {TOKEN}\r\n"
    answer, _ = raw(daemon, (f"POST {url} HTTP/1.1\r\nHost: x\r\n{header}Content-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n{body}").encode())
    assert status_of(answer) == 415  # no Content-Type header at all


# --- 1, 5: connections that hold on ----------------------------------------------------------
def test_idle_slow_head_and_slow_body_connections_are_closed(daemon):
    """Each would stay open for ever today (head/body timeouts here: 2 s; the recv waits 30 s)."""
    port = daemon.config.api.port
    _, closed = raw(daemon, b"")
    assert closed, "an idle connection was kept open"
    _, closed = raw(daemon, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert closed, "a connection that never finished its request head was kept open"
    head = (f"POST /v1/lanes/{LANE}/receipts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    _, closed = raw(daemon, head.encode() + b'{"receipt')
    assert closed, "a body that stopped after 10 of 100 bytes kept its connection open"
    # a second request head on a kept-alive connection gets the same deadline
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and received.count(b"HTTP/1.1") == 1
    with client(daemon) as http:
        assert http.get("/healthz").status_code == 200


def test_a_client_leaving_mid_body_is_one_log_line(daemon, caplog):
    head = (f"POST /v1/lanes/{LANE}/receipts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)  # uvicorn's loggers do not propagate to the root
    try:
        with caplog.at_level(logging.INFO):
            with socket.create_connection(("127.0.0.1", daemon.config.api.port), timeout=10) as sock:
                sock.sendall(head.encode() + b'{"receipt')
                time.sleep(0.3)  # let the app start reading the body before the client goes
            with client(daemon) as http:
                wait_for(lambda: any("client left" in r.getMessage() for r in caplog.records), 10, "the log line")
                assert http.get("/healthz").status_code == 200
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_repeated_log_lines_are_limited_and_tracebacks_folded():
    limiter = RepeatLimiter(interval_s=3600)
    logger = logging.getLogger("agetool.test.repeats")
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    logger.addHandler(handler)
    logger.addFilter(limiter)
    logger.propagate = False
    try:
        for _ in range(1000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.error("socket.accept() out of system resource", exc_info=True)
        logger.error("another line")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(limiter)
    assert len(records) == 2 and "Traceback" not in "".join(records)
    assert "Too many open files" in records[0] and records[1] == "another line"


SERVE_WITH_FEW_FILES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from agetool.cli import main
sys.argv = ["agetool", "serve", "--config", sys.argv[1]]
main()
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hundreds_of_idle_connections_under_a_low_file_limit(tmp_path):
    """The systemd default of 1,024 descriptors, scaled down: with 256, 300 idle sockets used to
    take every descriptor (API and camera lane down, a traceback per accept in the log)."""
    model = build_tiny_age_onnx(tmp_path / "tiny_age.onnx")
    port = free_port()
    config = tmp_path / "agetool.yaml"
    import yaml

    config.write_text(yaml.safe_dump(daemon_config(tmp_path, model, port, max_connections=1000, head_timeout_s=60)))
    log_path = tmp_path / "daemon.log"
    env = {**os.environ, "HOME": str(tmp_path)}
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", SERVE_WITH_FEW_FILES, str(config)], env=env, cwd=tmp_path,
                                stdout=log_file, stderr=subprocess.STDOUT)
    sockets: list[socket.socket] = []

    def get(path: str) -> httpx.Response:
        # a new connection each time: under the flood an idle kept-alive one is the first evicted
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, headers={"Connection": "close"})

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 120, "/readyz")
        frames_before = get(f"/v1/lanes/{LANE}").json()["frames_read"]
        fds_before = open_fds(proc.pid)
        for _ in range(300):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)  # let the daemon accept them all
        assert get("/healthz").status_code == 200
        fds_during = open_fds(proc.pid)
        wait_for(lambda: get(f"/v1/lanes/{LANE}").json()["frames_read"] > frames_before + 2, 30,
                 "the lane still reading frames")
        assert get("/readyz").status_code == 200
        assert fds_during - fds_before <= 256 - 128 + 2, (fds_before, fds_during)
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)
    log = log_path.read_text()
    assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]
    assert "api.max_connections 1000" in log  # said once at start: the limit allows fewer
    assert log.count("closing the longest idle") <= 3 and len(log) < 50_000, log[-3000:]


# --- 8, 9: what `agetool serve` does at start ----------------------------------------------
def test_serve_with_its_port_taken_starts_nothing_and_writes_nothing(tmp_path):
    model = build_tiny_age_onnx(tmp_path / "tiny_age.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = daemon_config(tmp_path / "work", model, port)
        config["events"] = {"jsonl": str(tmp_path / "work" / "events.jsonl")}
        path = tmp_path / "agetool.yaml"
        import yaml

        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(AGETOOL + ["serve", "--config", str(path)], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    for never in ("lane till-1: source", "model", "analytics flushed", "shopper count"):
        assert never not in result.stderr.split("error:")[0], (never, result.stderr)
    assert not (tmp_path / "work" / "analytics.sqlite").exists()
    assert not (tmp_path / "work" / "events.jsonl").exists()


def test_serve_says_which_lanes_are_offline(tmp_path):
    model = build_tiny_age_onnx(tmp_path / "tiny_age.onnx")
    port = free_port()
    proc = subprocess.Popen(
        AGETOOL + ["serve", "--source", str(tmp_path / "no" / "such" / "folder"), "--model", str(model),
                   "--port", str(port)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "HOME": str(tmp_path),
                                                                            "AGETOOL_DETECTOR": ""},
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("offline at start" in line for line in lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(lines)
    assert "1 of 1 lane(s) offline at start: default (" in text, text
    assert "lane default offline:" in text and "not found" in text.split("lane default offline:")[1].splitlines()[0]


def test_the_systemd_unit_raises_the_file_limit():
    unit = (Path(__file__).resolve().parents[1] / "deploy" / "agetool.service").read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert values and int(values[0]) >= 8192
