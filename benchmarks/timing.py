"""Timing loop and summary statistics shared by the bench and end-to-end workers.

Only numpy and the standard library: the workers import this before any runtime so the
baseline RSS they report is the interpreter's, not a runtime's."""

from __future__ import annotations

import resource
import sys
import time
from typing import Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field


class TimingPlan(BaseModel):
    """How long to measure: warm-up calls first, then at least `min_runs` calls AND `min_seconds`."""

    warmup_runs: int = Field(5, ge=0)
    min_runs: int = Field(50, ge=1)
    min_seconds: float = Field(3.0, ge=0)
    # A hard stop so a pathological runtime cannot hold the bench for ever.
    max_seconds: float = Field(120.0, gt=0)


class LatencySummary(BaseModel):
    runs: int
    seconds: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float


def summarise_ms(latencies_ms: Sequence[float]) -> LatencySummary:
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return LatencySummary(
        runs=len(values),
        seconds=round(float(values.sum()) / 1000.0, 4),
        mean_ms=round(float(values.mean()), 4),
        p50_ms=round(float(p50), 4),
        p95_ms=round(float(p95), 4),
        p99_ms=round(float(p99), 4),
        min_ms=round(float(values.min()), 4),
        max_ms=round(float(values.max()), 4),
    )


def time_calls(call: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray], plan: TimingPlan) -> list[float]:
    """Call `call` on `inputs` in rotation (so no one input stays cache-hot) and return each
    call's wall time in ms, warm-up calls excluded."""
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    for i in range(plan.warmup_runs):
        call(inputs[i % len(inputs)])
    latencies_ms: list[float] = []
    started = time.perf_counter()
    i = 0
    while True:
        elapsed = time.perf_counter() - started
        if len(latencies_ms) >= plan.min_runs and elapsed >= plan.min_seconds:
            break
        if elapsed >= plan.max_seconds and latencies_ms:
            break
        batch = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        call(batch)
        latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        i += 1
    return latencies_ms


def _proc_status_mb(key: str) -> float | None:
    """A `kB` field of /proc/self/status in MiB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a worker started from a big
    parent would report the parent's peak."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1.0 / (1024 * 1024) if sys.platform == "darwin" else 1.0 / 1024
    return round(peak * scale, 1)


def current_rss_mb() -> float:
    """Resident set size now (VmRSS); the peak where /proc is missing."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()
