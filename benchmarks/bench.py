"""`agetool bench`: MAE and latency of each model variant on each runtime, against the hardware.

`run_bench(config)` is the one entry point (the CLI and the tests call it). It reads the
labelled faces, measures the machine's floor, runs every (model, runtime) in a fresh worker
process one after the other (never two at once: they would share the cores), scores the ages
with trainer.evaluate, and writes report.json, report.md and the plots via `report`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agetool.benchmarks.e2e import DEMO_SOURCE
from agetool.benchmarks.floor import OpCount, PeakThroughput, count_ops, floor_ms, measure_peaks, merge_peaks
from agetool.benchmarks.machine import MachineInfo, load_average, machine_info
from agetool.benchmarks.runtimes import (
    OPENVINO,
    ORT,
    RUNTIME_LABELS,
    TENSORFLOW,
    missing_provider,
    missing_runtime,
)
from agetool.benchmarks.timing import TimingPlan
from agetool.benchmarks.worker import WorkerJob, WorkerResult
from agetool.contract import ModelMetadata
from agetool.errors import AgetoolError
from agetool.trainer.data import DEFAULT_SEED

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

OPENVINO_VARIANTS = ("fp32", "int8")
POOL_SIZE = 64
EVAL_BATCH = 32
MIB = 1024 * 1024


class BenchConfig(BaseModel):
    """Everything `agetool bench` can be asked; the CLI fills it, tests build it directly."""

    model_config = ConfigDict(extra="forbid")

    models: list[Path] = Field(min_length=1)
    keras: Path | None = None
    images: list[Path] | None = None
    labels: Path | None = None
    split: Path | None = None
    subset: str | None = None
    limit: int | None = Field(None, ge=1, description="seeded subset of the labelled faces")
    seed: int = DEFAULT_SEED
    batches: list[int] = Field(default_factory=lambda: [1, 8])
    providers: list[str] = Field(default_factory=lambda: ["cpu"])
    openvino: bool = True
    timing: TimingPlan = Field(default_factory=TimingPlan)
    threads: int | None = Field(None, ge=1)
    e2e: str | None = "demo"
    daemon_seconds: float = Field(20.0, ge=0, le=600, description="per daemon-lane row; 0 = no daemon rows")
    detector: Path | None = None
    floor: bool = True
    floor_matmul_size: int = Field(2048, ge=16, description="side of the square matmuls that measure the peak")
    floor_windows: int = Field(6, ge=1)
    floor_window_s: float = Field(0.3, gt=0)
    out: Path = Path("bench-report")
    worker_timeout_s: float = Field(900.0, gt=0)

    @field_validator("images", mode="before")
    @classmethod
    def _folders_as_list(cls, value):
        """One data folder or several (read and split as one set)."""
        if value is None or isinstance(value, (list, tuple)):
            return list(value) if value else None
        return [value]


class ModelFile(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    path: str
    name: str
    format: str
    variant: str
    input_size: int
    size_mib: float
    backbone: str | None = None
    ops: dict[int, OpCount] = Field(default_factory=dict)


class BenchRow(BaseModel):
    model: str
    variant: str
    runtime: str
    provider: str
    precision: str | None = Field(None, description="what OpenVINO computed in; None = the file's own precision")
    device: str | None = None
    batch: int
    status: str
    size_mib: float
    mae: float | None = None
    delta_mae: float | None = None
    n_scored: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    runs: int | None = None
    images_per_s: float | None = None
    speedup: float | None = None
    peak_rss_mib: float | None = None
    runtime_rss_mib: float | None = Field(None, description="peak minus the worker's RSS before the runtime loaded")
    load_s: float | None = None
    cpu_per_wall: float | None = Field(None, description="worker CPU s / wall s while timing (~threads if alone)")
    load_average: float | None = Field(None, description="1-minute load average right after the row")
    gops: float | None = None
    floor_ms: float | None = None
    x_floor: float | None = None


class AccuracyEntry(BaseModel):
    model: str
    variant: str
    runtime: str
    provider: str
    metrics: dict


class E2ERow(BaseModel):
    model: str
    variant: str
    status: str
    result: dict | None = None


class BenchReport(BaseModel):
    machine: MachineInfo
    config: dict
    labelled_set: dict
    floor: PeakThroughput | None = Field(description="the best of floor_measurements, field by field")
    floor_measurements: list[PeakThroughput] = Field(default_factory=list, description="at the start and at the end")
    models: list[ModelFile]
    rows: list[BenchRow]
    accuracy: list[AccuracyEntry]
    e2e: list[E2ERow]
    daemon: list[E2ERow] = Field(default_factory=list, description="the daemon's lane cost, per_frame vs budget")
    wall_time_s: float
    notes: list[str]


# --- Inputs -----------------------------------------------------------------------------------
def read_onnx_model(path: Path) -> ModelFile:
    import onnx

    if path.suffix != ".onnx":
        raise AgetoolError(f"--models {path}: expected an .onnx file from `agetool export`")
    if not path.is_file():
        raise AgetoolError(f"--models {path}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a bad file
        raise AgetoolError(f"--models {path}: not a readable ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_props(props, source=f"--models {path}")
    return ModelFile(
        path=str(path), name=path.name, format="onnx", variant=meta.variant, input_size=meta.input_size,
        size_mib=round(path.stat().st_size / MIB, 2), backbone=meta.backbone,
    )


def read_keras_file(path: Path, input_size: int) -> ModelFile:
    if path.suffix != ".keras":
        raise AgetoolError(f"--keras {path}: expected a .keras file")
    if not path.is_file():
        raise AgetoolError(f"--keras {path}: file not found")
    return ModelFile(
        path=str(path), name=path.name, format="keras", variant="keras fp32", input_size=input_size,
        size_mib=round(path.stat().st_size / MIB, 2),
    )


def labelled_rows(config: BenchConfig) -> "tuple[pd.DataFrame | None, dict]":
    """(rows with path and real_age, a description) or (None, {}) without --images."""
    from agetool.trainer.evaluate import load_eval_rows

    if config.images is None:
        if config.labels or config.split or config.subset:
            raise AgetoolError("--labels/--split/--subset: need --images")
        return None, {}
    rows, problems = load_eval_rows(config.images, config.labels, config.split, config.subset)
    total = len(rows)
    if config.limit is not None and config.limit < len(rows):
        rows = rows.sample(n=config.limit, random_state=config.seed).reset_index(drop=True)
    description = {
        "images": ", ".join(str(f) for f in config.images),
        "labels": str(config.labels) if config.labels else None,
        "split": str(config.split) if config.split else None,
        "subset": config.subset or ("test" if config.split else None),
        "faces_available": total,
        "faces_used": len(rows),
        "seeded_subset": config.limit is not None and config.limit < total,
        "seed": config.seed,
        "rows_skipped_reading": len(problems),
    }
    return rows, description


def unique_names(models: list[ModelFile]) -> list[ModelFile]:
    """Rows are keyed by file name: two files both called model.onnx become dir_a/model.onnx, dir_b/model.onnx."""
    names = [m.name for m in models]
    for model in models:
        if names.count(model.name) > 1:
            model.name = f"{Path(model.path).parent.name}/{model.name}"
    return models


def pool_paths(rows: "pd.DataFrame | None", seed: int) -> list[str]:
    if rows is None:
        return []
    order = np.random.default_rng(seed).permutation(len(rows))[:POOL_SIZE]
    return [str(rows["path"].iloc[i]) for i in order]


# --- Jobs ---------------------------------------------------------------------------------------
def run_worker(job: WorkerJob, timeout_s: float) -> WorkerResult:
    """Run one job in a fresh interpreter; its crash or timeout becomes a failed result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agetool.benchmarks.worker"],
            input=job.model_dump_json(), capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        return WorkerResult(status=f"failed: timed out after {timeout_s:g} s")
    result_path = Path(job.result_path)
    if done.returncode != 0 or not result_path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1][:300] if lines else f"worker exited with status {done.returncode}"
        return WorkerResult(status=f"failed: {reason}")
    return WorkerResult.model_validate_json(result_path.read_text())


def provider_name(alias: str) -> str:
    from agetool.edge_runtime.infer import PROVIDER_ALIASES

    name = PROVIDER_ALIASES.get(alias.lower(), alias)
    if name not in PROVIDER_ALIASES.values():
        raise AgetoolError(f"--providers {alias}: expected one of {', '.join(PROVIDER_ALIASES)}")
    return name


PROVIDER_LABELS = {
    "CPUExecutionProvider": "CPU",
    "CUDAExecutionProvider": "CUDA",
    "TensorrtExecutionProvider": "TensorRT",
    "OpenVINOExecutionProvider": "OpenVINO EP",
}


def short_provider(provider: str) -> str:
    return PROVIDER_LABELS.get(provider, provider.replace("ExecutionProvider", ""))


class Target(BaseModel):
    """One (model, runtime, provider) to measure, or a reason it cannot be."""

    model: ModelFile
    runtime: str
    provider: str
    precision: str | None = Field(None, description="OpenVINO precision hint; None = the runtime's default")
    skip_reason: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model.name, self.runtime, short_provider(self.provider) + (f" {self.precision}" if self.precision else ""))


def openvino_default_precision() -> str:
    """What OpenVINO's CPU plugin computes float models in here unless told (bf16 / f32)."""
    import openvino as ov

    return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name())


def plan_targets(config: BenchConfig, onnx_models: list[ModelFile], keras: ModelFile | None) -> list[Target]:
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    targets: list[Target] = []
    providers = [provider_name(p) for p in config.providers]
    openvino_missing = missing_runtime(OPENVINO)
    for model in onnx_models:
        for provider in providers:
            targets.append(Target(model=model, runtime=ORT, provider=provider,
                                  skip_reason=missing_provider(provider, available)))
        if config.openvino and model.variant in OPENVINO_VARIANTS:
            targets.append(Target(model=model, runtime=OPENVINO, provider="CPU", skip_reason=openvino_missing))
            if model.variant == "fp32" and openvino_missing is None and openvino_default_precision() != "f32":
                # OpenVINO computes an FP32 file in bf16 on CPUs with AVX512-BF16/AMX: time true FP32 too.
                targets.append(Target(model=model, runtime=OPENVINO, provider="CPU", precision="f32",
                                      skip_reason=openvino_missing))
    if keras is not None:
        targets.append(Target(model=keras, runtime=TENSORFLOW, provider="CPU",
                              skip_reason=missing_runtime(TENSORFLOW)))
    return targets


# --- Rows -------------------------------------------------------------------------------------
def provider_label(target: Target, result: WorkerResult) -> str:
    """CPU, CUDA, TensorRT; OpenVINO adds the precision it computed in (bf16 / f32)."""
    precision = result.precision or target.precision
    return short_provider(target.provider) + (f" {precision}" if precision else "")


def rows_for(target: Target, result: WorkerResult, batches: list[int]) -> list[BenchRow]:
    base = dict(
        model=target.model.name, variant=target.model.variant, runtime=RUNTIME_LABELS[target.runtime],
        provider=provider_label(target, result), precision=result.precision, size_mib=target.model.size_mib,
    )
    if result.status != "ok":
        return [BenchRow(**base, batch=b, status=result.status) for b in batches]
    rows = []
    timings = {t.batch: t for t in result.timings}
    for batch in batches:
        timing = timings.get(batch)
        if timing is None or timing.latency is None:
            rows.append(BenchRow(**base, batch=batch, status=timing.status if timing else "failed: not run",
                                 device=result.device))
            continue
        lat = timing.latency
        rows.append(BenchRow(
            **base, device=result.device, batch=batch, status="ok", p50_ms=lat.p50_ms, p95_ms=lat.p95_ms,
            p99_ms=lat.p99_ms, mean_ms=lat.mean_ms, runs=lat.runs, images_per_s=timing.images_per_s,
            peak_rss_mib=timing.peak_rss_mb, load_s=result.load_s, cpu_per_wall=timing.cpu_per_wall,
            load_average=timing.load_average,
            runtime_rss_mib=round(timing.peak_rss_mb - result.base_rss_mb, 1)
            if timing.peak_rss_mb is not None and result.base_rss_mb is not None else None,
        ))
    return rows


def score(target: Target, result: WorkerResult, rows: "pd.DataFrame | None") -> AccuracyEntry | None:
    from agetool.trainer.evaluate import evaluate_predictions

    if rows is None or result.estimates is None or result.readable is None:
        return None
    true = rows["real_age"].to_numpy(dtype=np.float64)[np.asarray(result.readable, dtype=bool)]
    metrics = evaluate_predictions(true, np.asarray(result.estimates))
    return AccuracyEntry(
        model=target.model.name, variant=target.model.variant, runtime=RUNTIME_LABELS[target.runtime],
        provider=provider_label(target, result), metrics=metrics.model_dump(),
    )


def fill_derived(
    rows: list[BenchRow], accuracy: list[AccuracyEntry], models: list[ModelFile], peak: PeakThroughput | None
) -> None:
    """MAE and ΔMAE vs ORT FP32, speedup vs ORT FP32 batch 1, work and the floor multiple."""
    scored = {(a.model, a.runtime, a.provider): a.metrics for a in accuracy}
    reference = next(
        (r for r in rows if r.runtime == RUNTIME_LABELS[ORT] and r.provider == "CPU" and r.variant == "fp32"), None
    )
    reference_metrics = scored.get((reference.model, reference.runtime, reference.provider)) if reference else None
    baseline = next((r for r in rows if reference and r.model == reference.model and r.runtime == reference.runtime
                     and r.provider == "CPU" and r.batch == 1 and r.status == "ok"), None)
    by_name = {m.name: m for m in models}
    fp32_onnx = next((m for m in models if m.format == "onnx" and m.variant == "fp32"), None)
    for row in rows:
        metrics = scored.get((row.model, row.runtime, row.provider))
        if metrics is not None:
            row.mae, row.n_scored = metrics["mae"], metrics["n"]
            if reference_metrics is not None:
                row.delta_mae = round(row.mae - reference_metrics["mae"], 4)
        if row.images_per_s and baseline is not None and baseline.images_per_s:
            row.speedup = round(row.images_per_s / baseline.images_per_s, 3)
        model = by_name[row.model]
        # The Keras model is the same network as the FP32 ONNX file: same work.
        ops_model = model if model.format == "onnx" else fp32_onnx
        ops = ops_model.ops.get(row.batch) if ops_model is not None else None
        if ops is None:
            continue
        row.gops = round(ops.total_gops, 3)
        least = floor_ms(ops, peak, "bf16" if row.precision == "bf16" else "fp32") if peak is not None else None
        if least and row.p50_ms is not None:
            row.floor_ms = round(least, 3)
            row.x_floor = round(row.p50_ms / least, 2)


# --- Entry point ------------------------------------------------------------------------------
def check_config(config: BenchConfig) -> None:
    if not config.batches or any(b < 1 for b in config.batches):
        raise AgetoolError(f"--batch {','.join(map(str, config.batches))}: expected positive batch sizes like 1,8")
    if not config.providers:
        raise AgetoolError("--providers: give at least one (cpu, cuda, tensorrt)")
    for alias in config.providers:
        provider_name(alias)
    if config.e2e is not None and config.e2e != DEMO_SOURCE and not Path(config.e2e).expanduser().exists():
        raise AgetoolError(f"--e2e {config.e2e}: no such image, folder or video (or use demo / none)")
    if config.detector is not None and str(config.detector) != "haar" and not config.detector.is_file():
        raise AgetoolError(f"--detector {config.detector}: file not found (a YuNet .onnx was expected)")
    if config.out.exists() and not config.out.is_dir():
        raise AgetoolError(f"--out {config.out}: exists and is not a folder")


def run_bench(config: BenchConfig) -> BenchReport:
    """Measure everything the config asks for and write the report into config.out."""
    from agetool.benchmarks.report import write_report
    from agetool.paths import default_detector_path

    started = time.monotonic()
    check_config(config)
    batches = sorted(set(config.batches))
    onnx_models = unique_names([read_onnx_model(Path(p)) for p in dict.fromkeys(config.models)])
    keras = read_keras_file(config.keras, onnx_models[0].input_size) if config.keras is not None else None
    rows_df, labelled = labelled_rows(config)
    pool = pool_paths(rows_df, config.seed)
    eval_paths = [str(p) for p in rows_df["path"]] if rows_df is not None else []
    machine = machine_info()
    log.info("bench: %s, %d cores, load %s", machine.cpu_model, machine.logical_cpus, machine.load_average_start)

    peaks: list[PeakThroughput] = []

    def measure_floor() -> None:
        if config.floor:
            log.info("bench: measuring this machine's matmul peak")
            peaks.append(measure_peaks(
                machine.has_vnni, config.floor_matmul_size, config.floor_windows, config.floor_window_s, config.threads
            ))

    measure_floor()
    if config.floor:
        for model in onnx_models:
            model.ops = count_ops(model.path, batches)

    all_models = onnx_models + ([keras] if keras else [])
    targets = plan_targets(config, onnx_models, keras)
    rows: list[BenchRow] = []
    accuracy: list[AccuracyEntry] = []
    e2e_rows: list[E2ERow] = []
    daemon_rows: list[E2ERow] = []
    detector = config.detector or default_detector_path()
    with tempfile.TemporaryDirectory(prefix="agetool-bench-") as scratch:
        for index, target in enumerate(targets, 1):
            label = f"{target.model.name} on {RUNTIME_LABELS[target.runtime]} {target.key[2]}"
            if target.skip_reason:
                log.info("bench: [%d/%d] %s: skipped (%s)", index, len(targets), label, target.skip_reason)
                result = WorkerResult(status=f"failed: {target.skip_reason}")
            else:
                log.info("bench: [%d/%d] %s", index, len(targets), label)
                job = WorkerJob(
                    kind="model", runtime=target.runtime, provider=target.provider if target.runtime == ORT else None,
                    precision=target.precision,
                    model_path=target.model.path, input_size=target.model.input_size, batches=batches,
                    threads=config.threads, timing=config.timing, pool_paths=pool, eval_paths=eval_paths,
                    eval_batch=EVAL_BATCH, result_path=str(Path(scratch) / f"job{index}.json"),
                )
                result = run_worker(job, config.worker_timeout_s)
                if result.status != "ok":
                    log.warning("bench: %s %s", label, result.status)
            rows += rows_for(target, result, batches)
            entry = score(target, result, rows_df)
            if entry is not None:
                accuracy.append(entry)
        if config.e2e is not None:
            for index, model in enumerate(onnx_models, 1):
                log.info("bench: end to end [%d/%d] %s", index, len(onnx_models), model.name)
                job = WorkerJob(
                    kind="e2e", model_path=model.path, input_size=model.input_size, threads=config.threads,
                    timing=config.timing, detector_path=str(detector) if detector else None,
                    e2e_source=config.e2e, result_path=str(Path(scratch) / f"e2e{index}.json"),
                )
                result = run_worker(job, config.worker_timeout_s)
                e2e_rows.append(E2ERow(model=model.name, variant=model.variant, status=result.status, result=result.e2e))
        if config.e2e is not None and config.daemon_seconds > 0 and onnx_models:
            from agetool.benchmarks.daemon_lane import MODES

            model = onnx_models[0]
            for mode in MODES:
                log.info("bench: daemon lane %s, %s, %.0f s", model.name, mode, config.daemon_seconds)
                job = WorkerJob(
                    kind="daemon", model_path=model.path, input_size=model.input_size, threads=config.threads,
                    detector_path=str(detector) if detector else None, daemon_mode=mode,
                    daemon_seconds=config.daemon_seconds, result_path=str(Path(scratch) / f"daemon-{mode}.json"),
                )
                result = run_worker(job, config.worker_timeout_s)
                daemon_rows.append(E2ERow(model=model.name, variant=mode, status=result.status, result=result.e2e))

    measure_floor()  # again at the end: a burst of other work during the first one cannot set the floor
    peak = merge_peaks(peaks) if peaks else None
    fill_derived(rows, accuracy, all_models, peak)
    machine.load_average_end = load_average()
    report = BenchReport(
        machine=machine,
        config=json.loads(config.model_dump_json()),
        labelled_set=labelled,
        floor=peak,
        floor_measurements=peaks,
        models=all_models,
        rows=rows,
        accuracy=accuracy,
        e2e=e2e_rows,
        daemon=daemon_rows,
        wall_time_s=round(time.monotonic() - started, 1),
        notes=report_notes(machine, labelled, rows),
    )
    write_report(report, config.out)
    return report


def report_notes(machine: MachineInfo, labelled: dict, rows: list[BenchRow]) -> list[str]:
    notes = []
    start = machine.load_average_start[0] if machine.load_average_start else None
    if start is not None and start > 0.5:
        notes.append(
            f"The 1-minute load average was {start:g} on {machine.logical_cpus} logical CPUs when the bench started: "
            "other work shared the cores, so latencies are higher and noisier than on an idle till PC."
        )
    starved = [r for r in rows if r.cpu_per_wall is not None and r.cpu_per_wall < 1.0]
    if starved and machine.logical_cpus > 1:
        notes.append(
            f"{len(starved)} row(s) got less than one full core on average while timed (CPU/wall < 1.0 although every "
            "runtime uses all cores by default): their latencies mostly measure other work on the machine."
        )
    below = [r for r in rows if r.x_floor is not None and r.x_floor < 1.0]
    if below:
        notes.append(
            f"{len(below)} row(s) ran faster than the floor (× floor < 1): the matmul peak was itself measured under "
            "load or the runtime's convolution kernels beat a plain matmul here, so read those floors as approximate."
        )
    if not labelled:
        notes.append("No labelled set (--images): MAE columns are empty and the timing pool is the demo face.")
    return notes

