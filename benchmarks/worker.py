"""One bench job in a fresh process: `python -m agetool.benchmarks.worker < job.json`.

A fresh process per runtime and model keeps one runtime's imports, threads and memory out of
the next one's figures, so peak RSS is that runtime's own. The job arrives as JSON on stdin;
the result is written atomically to the job's `result_path`. Face pixels stay in memory."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from agetool.benchmarks.timing import (
    LatencySummary,
    TimingPlan,
    current_rss_mb,
    peak_rss_mb,
    summarise_ms,
    time_calls,
)

log = logging.getLogger(__name__)

POOL_MIN = 32


class WorkerJob(BaseModel):
    kind: Literal["model", "e2e", "daemon"]
    runtime: str = "onnxruntime"
    provider: str | None = None
    precision: str | None = Field(None, description="OpenVINO INFERENCE_PRECISION_HINT (f32); None = its default")
    model_path: str
    input_size: int
    batches: list[int] = Field(default_factory=lambda: [1])
    threads: int | None = None
    timing: TimingPlan = Field(default_factory=TimingPlan)
    pool_paths: list[str] = Field(default_factory=list, description="faces rotated through while timing")
    eval_paths: list[str] = Field(default_factory=list, description="labelled faces to estimate (MAE)")
    eval_batch: int = 8
    detector_path: str | None = None
    e2e_source: str = "demo"
    daemon_mode: str = "budget"
    daemon_seconds: float = 20.0
    result_path: str


class BatchTiming(BaseModel):
    batch: int
    status: str
    latency: LatencySummary | None = None
    images_per_s: float | None = None
    peak_rss_mb: float | None = None
    cpu_per_wall: float | None = Field(None, description="CPU seconds / wall seconds while timing: ~threads when no one else ran")
    load_average: float | None = None


class WorkerResult(BaseModel):
    status: str
    device: str | None = None
    precision: str | None = None
    load_s: float | None = None
    base_rss_mb: float | None = None
    timings: list[BatchTiming] = Field(default_factory=list)
    estimates: list[float] | None = None
    readable: list[bool] | None = None
    eval_errors: list[str] = Field(default_factory=list)
    eval_s: float | None = None
    e2e: dict | None = None


def failure(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"failed: {first[:300]}"


def timing_pool(job: WorkerJob) -> np.ndarray:
    """Preprocessed real faces (float32 NHWC) to rotate through: the labelled set's, else the demo's."""
    from agetool.contract import preprocess_rgb
    from agetool.trainer.data import load_face_rgb

    size = max(POOL_MIN, 4 * max(job.batches))
    if not job.pool_paths:
        from agetool.benchmarks.e2e import demo_face_pool

        return demo_face_pool(size, job.input_size)
    faces = [preprocess_rgb(load_face_rgb(p), job.input_size) for p in job.pool_paths[:size]]
    while len(faces) < size:  # a tiny labelled set: repeat it rather than time fewer distinct inputs
        faces.append(faces[len(faces) % len(job.pool_paths)])
    return np.stack(faces)


def process_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (ns clock, not 10 ms ticks)."""
    return time.process_time()


def batches_of(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """Distinct contiguous batches cut from the pool, so each call reads fresh input memory."""
    count = max(1, len(pool) // batch)
    return [np.ascontiguousarray(pool[i * batch : (i + 1) * batch]) for i in range(count)]


def run_model_job(job: WorkerJob) -> WorkerResult:
    from agetool.benchmarks.runtimes import open_runner

    pool = timing_pool(job)
    base_rss = current_rss_mb()
    started = time.perf_counter()
    try:
        runner = open_runner(
            job.runtime, Path(job.model_path), job.provider, job.input_size, job.threads, job.precision
        )
        for batch in job.batches:
            runner.prepare(batch)
    except Exception as exc:  # noqa: BLE001 - any runtime's load error becomes this row's status
        return WorkerResult(status=failure(exc), base_rss_mb=base_rss)
    if runner.input_size != job.input_size:  # a .keras file states its own input size only once loaded
        job = job.model_copy(update={"input_size": runner.input_size})
        pool = timing_pool(job)
    result = WorkerResult(
        status="ok", device=runner.device, precision=runner.precision,
        load_s=round(time.perf_counter() - started, 3), base_rss_mb=base_rss,
    )
    for batch in sorted(job.batches):  # ascending, so the peak after each is that batch's peak
        cpu_before, wall_before = process_cpu_s(), time.perf_counter()
        try:
            latencies = time_calls(runner.predict, batches_of(pool, batch), job.timing)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch; the others stand
            result.timings.append(BatchTiming(batch=batch, status=failure(exc)))
            continue
        cpu_per_wall = (process_cpu_s() - cpu_before) / max(time.perf_counter() - wall_before, 1e-9)
        summary = summarise_ms(latencies)
        result.timings.append(
            BatchTiming(
                batch=batch,
                status="ok",
                latency=summary,
                images_per_s=round(batch * summary.runs / summary.seconds, 2) if summary.seconds else None,
                peak_rss_mb=peak_rss_mb(),
                cpu_per_wall=round(cpu_per_wall, 2),
                load_average=round(os.getloadavg()[0], 2),
            )
        )
    if job.eval_paths:
        import pandas as pd

        from agetool.trainer.evaluate import predict_rows

        started = time.perf_counter()
        try:
            estimates, readable, errors = predict_rows(
                runner, pd.DataFrame({"path": job.eval_paths}), batch_size=job.eval_batch, workers=2
            )
        except Exception as exc:  # noqa: BLE001 - timings stand even when the MAE pass fails
            result.eval_errors = [failure(exc)]
        else:
            result.estimates = [round(float(e), 4) for e in estimates]
            result.readable = [bool(r) for r in readable]
            result.eval_errors = errors[:20]
        result.eval_s = round(time.perf_counter() - started, 2)
    return result


def run_daemon_job(job: WorkerJob) -> WorkerResult:
    from agetool.benchmarks.daemon_lane import measure_daemon_lane

    try:
        lane = measure_daemon_lane(
            Path(job.model_path), job.detector_path, job.daemon_mode, job.daemon_seconds, threads=job.threads
        )
    except Exception as exc:  # noqa: BLE001 - the daemon's failure becomes the row's status
        return WorkerResult(status=failure(exc))
    return WorkerResult(status="ok", e2e=lane.model_dump(), base_rss_mb=None)


def run_e2e_job(job: WorkerJob) -> WorkerResult:
    from agetool.benchmarks.e2e import run_pipeline

    try:
        e2e = run_pipeline(
            Path(job.model_path),
            Path(job.detector_path) if job.detector_path else None,
            job.e2e_source,
            job.timing,
            job.threads,
        )
    except Exception as exc:  # noqa: BLE001 - the pipeline's failure becomes the e2e row's status
        return WorkerResult(status=failure(exc))
    return WorkerResult(status="ok", e2e=e2e.model_dump(), base_rss_mb=None)


def write_result(result: WorkerResult, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(result.model_dump_json())
    tmp.replace(path)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    job = WorkerJob.model_validate(json.loads(sys.stdin.read()))
    runners = {"model": run_model_job, "e2e": run_e2e_job, "daemon": run_daemon_job}
    result = runners[job.kind](job)
    write_result(result, Path(job.result_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
