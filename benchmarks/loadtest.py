"""A bounded load test of the register daemon's HTTP API on 127.0.0.1.

The daemon runs as `agetool serve` in its own process (a real lane on a still image, the real
detector and age model); this process is the load generator: an open-loop schedule of
`rate_per_s` requests per second for `duration_s` seconds, mixed like a busy till
(60 % GET current, 20 % POST check, 20 % GET metrics). It reports errors, latency percentiles
per kind, requests that started late (the generator itself falling behind) and the daemon's
memory (RSS) before and after.

    python -m agetool.benchmarks.loadtest --model agetool/models/age_default.onnx \
        --detector ../shared/models/face_detection_yunet_2023mar.onnx --rate 200 --duration 60 \
        --out benchmarks/results/loadtest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agetool.benchmarks.procfs import free_port, process_status_mb

# One cycle of the request mix: 3 x current, 1 x check, 1 x metrics.
MIX = ("current", "current", "check", "current", "metrics")
LATE_START_MS = 50.0
REQUEST_TIMEOUT_S = 5.0
LANE = "till-1"


@dataclass
class Sample:
    kind: str
    latency_ms: float
    late_ms: float
    status: int | None  # None: no answer (connection error or timeout)
    error: str | None = None


@dataclass
class DaemonUnderTest:
    process: subprocess.Popen
    base_url: str
    work: Path
    log_path: Path
    rss_samples_mb: list[tuple[float, float]] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    """Resident set size of a process from /proc (Linux), in MB."""
    rss = process_status_mb(pid, "VmRSS")
    if rss is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return rss


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1], 2)


def start_daemon(model: Path, detector: Path | None, work: Path, fps: float = 5.0, timeout_s: float = 90.0) -> DaemonUnderTest:
    """`agetool serve` on a still portrait (a shopper standing at the till) in its own process."""
    import cv2
    import httpx
    from skimage import data

    still = work / "shopper.png"
    cv2.imwrite(str(still), data.astronaut()[..., ::-1])
    port = free_port()
    detector_line = f"detector:\n  path: {detector}\n" if detector else ""
    config = work / "agetool.yaml"
    config.write_text(
        f"lanes:\n  - name: {LANE}\n    source: {still}\n    fps: {fps}\n"
        f"model:\n  path: {model}\n{detector_line}api:\n  port: {port}\n"
        f"events:\n  jsonl: {work / 'events.jsonl'}\n"
        f"analytics:\n  sqlite_path: {work / 'analytics.sqlite'}\n  flush_interval_s: 5\n"
    )
    for sub in ("home", "tmp"):
        (work / sub).mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "AGETOOL_DETECTOR": ""}
    log_path = work / "daemon.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "agetool.cli", "serve", "--config", str(config)],
                                   cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    daemon = DaemonUnderTest(process, f"http://127.0.0.1:{port}", work, log_path)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=daemon.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return daemon
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    stop_daemon(daemon)
    raise RuntimeError(f"daemon not ready after {timeout_s} s: {log_path.read_text()[-2000:]}")


def stop_daemon(daemon: DaemonUnderTest) -> int:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    try:
        return daemon.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        return daemon.process.wait(timeout=10)


def _request_bytes(kind: str) -> bytes:
    method, path = {"current": ("GET", f"/v1/lanes/{LANE}/current"), "check": ("POST", f"/v1/lanes/{LANE}/check"),
                    "metrics": ("GET", "/metrics")}[kind]
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status code and whether the server closes the connection after this answer."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)
    await reader.readexactly(length)
    return status, "connection: close" in head


async def _worker(host: str, port: int, queue: asyncio.Queue, samples: list[Sample]) -> None:
    """One keep-alive connection taking requests off the schedule. A tiny HTTP/1.1 client: httpx's
    own overhead (~3 ms CPU a request) made the generator, not the daemon, the bottleneck on 2 cores."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (item := await queue.get()) is not None:
        kind, scheduled_s = item
        started_s = time.perf_counter()
        late_ms = (started_s - scheduled_s) * 1000.0
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(_request_bytes(kind))
            status, closing = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
            latency_ms = (time.perf_counter() - started_s) * 1000.0
            samples.append(Sample(kind, latency_ms, late_ms, status, None if status == 200 else f"HTTP {status}"))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            samples.append(Sample(kind, (time.perf_counter() - started_s) * 1000.0, late_ms, None, type(exc).__name__))
            closing = True
        if closing and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _generate(base_url: str, rate_per_s: float, duration_s: float, daemon_pid: int,
                    rss_samples_mb: list[tuple[float, float]], connections: int = 32) -> list[Sample]:
    """Open loop: request i is due at t0 + i / rate whatever the answers before it are doing; a
    request that finds every connection busy starts late (counted in late_starts)."""
    host, port = base_url.removeprefix("http://").split(":")
    queue: asyncio.Queue = asyncio.Queue()
    samples: list[Sample] = []
    workers = [asyncio.create_task(_worker(host, int(port), queue, samples)) for _ in range(connections)]
    n_requests = int(round(rate_per_s * duration_s))
    t0 = time.perf_counter() + 0.05
    next_rss_s = 0.0
    for i in range(n_requests):
        scheduled_s = t0 + i / rate_per_s
        await asyncio.sleep(max(0.0, scheduled_s - time.perf_counter()))
        if scheduled_s - t0 >= next_rss_s:
            rss_samples_mb.append((round(scheduled_s - t0, 1), round(rss_mb(daemon_pid), 1)))
            next_rss_s += 1.0
        queue.put_nowait((MIX[i % len(MIX)], scheduled_s))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return samples


def summarise(samples: list[Sample], duration_s: float) -> dict[str, Any]:
    def block(group: list[Sample]) -> dict[str, Any]:
        answered = [s.latency_ms for s in group if s.status is not None]
        return {
            "requests": len(group),
            "errors": sum(s.error is not None for s in group),
            "p50_ms": percentile(answered, 50),
            "p99_ms": percentile(answered, 99),
            "max_ms": round(max(answered), 2) if answered else None,
        }

    errors: dict[str, int] = {}
    for sample in samples:
        if sample.error is not None:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    return {
        **block(samples),
        "achieved_rate_per_s": round(len(samples) / duration_s, 1),
        "late_starts": sum(s.late_ms > LATE_START_MS for s in samples),
        "error_kinds": errors,
        "by_kind": {kind: block([s for s in samples if s.kind == kind]) for kind in sorted(set(MIX))},
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()}


def run_loadtest(model: Path, detector: Path | None, rate_per_s: float = 200.0, duration_s: float = 60.0,
                 work: Path | None = None) -> dict[str, Any]:
    """Start the daemon, load it, stop it; the figures as a dict (see the module docstring)."""
    own_work = work is None
    work_dir = Path(tempfile.mkdtemp(prefix="agetool-load-")) if own_work else Path(work)
    daemon = start_daemon(Path(model), Path(detector) if detector else None, work_dir)
    try:
        time.sleep(1.0)  # let the lane settle: the first track, the first flush
        rss_before = rss_mb(daemon.process.pid)
        started = time.perf_counter()
        samples = asyncio.run(_generate(daemon.base_url, rate_per_s, duration_s, daemon.process.pid,
                                        daemon.rss_samples_mb))
        elapsed_s = time.perf_counter() - started
        rss_after = rss_mb(daemon.process.pid)
        import httpx

        still_ready = httpx.get(daemon.base_url + "/readyz", timeout=5.0).status_code == 200
    finally:
        exit_code = stop_daemon(daemon)
    result = {
        "what": "agetool serve HTTP API under an open-loop mixed load from a second process on 127.0.0.1",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": Path(model).name,
        "detector": Path(detector).name if detector else "haar",
        "rate_per_s": rate_per_s,
        "duration_s": duration_s,
        "mix": {kind: MIX.count(kind) / len(MIX) for kind in sorted(set(MIX))},
        "elapsed_s": round(elapsed_s, 2),
        **summarise(samples, elapsed_s),
        "daemon_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1),
                          "growth": round(rss_after - rss_before, 1), "samples": daemon.rss_samples_mb},
        "daemon_ready_after": still_ready,
        "daemon_exit_code": exit_code,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    from agetool.paths import default_detector_path, default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--detector", type=Path, default=default_detector_path())
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 5000 or not 0 < args.duration <= 3600:
        parser.error("--rate must be in (0, 5000] and --duration in (0, 3600]")
    result = run_loadtest(args.model, args.detector, args.rate, args.duration)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    print(text)
    return 0 if result["errors"] == 0 and result["daemon_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
