"""`agetool bench`: options in, one call to benchmarks.bench.run_bench, a summary out."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agetool.errors import AgetoolError


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AgetoolError(f"--batch {text}: expected comma-separated positive integers like 1,8") from None
    if not batches or any(b < 1 or b > 1024 for b in batches):
        raise AgetoolError(f"--batch {text}: expected comma-separated batch sizes from 1 to 1024 like 1,8")
    return batches


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def bench(
    models: List[Path] = typer.Option(
        ..., "--models", help="ONNX files from `agetool export`: --models A.onnx B_fp16.onnx C_int8.onnx."
    ),
    # `--models a.onnx b.onnx`: the files after the first arrive here (typer options take one value)
    more_models: Optional[List[Path]] = typer.Argument(None, hidden=True, metavar="MODEL"),
    keras: Optional[Path] = typer.Option(None, "--keras", help="The .keras source model: TensorFlow baseline rows."),
    images: Optional[list[Path]] = typer.Option(
        None, "--images", help="Labelled faces for MAE: a data folder (labels.csv inside) or a folder with --labels; repeat for several data folders split as one set."
    ),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV file_name,real_age for --images."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file: score only --subset of it."),
    subset: Optional[str] = typer.Option(None, "--subset", help="train | val | test (default test with --split)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score a seeded random subset of this many faces."),
    seed: int = typer.Option(42, "--seed", help="Seed of --limit's subset and of the timing pool."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes to time, comma-separated."),
    providers: str = typer.Option(
        "cpu", "--providers", help="ONNX Runtime providers, comma-separated: cpu, cuda, tensorrt, openvino."
    ),
    openvino: bool = typer.Option(True, "--openvino/--no-openvino", help="OpenVINO Runtime rows (FP32, INT8 files)."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed calls before each row."),
    min_runs: int = typer.Option(50, "--min-runs", help="Timed calls per row, at least."),
    min_seconds: float = typer.Option(3.0, "--min-seconds", help="Seconds of timed calls per row, at least."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads for every runtime (default: each one's own)."),
    e2e: str = typer.Option(
        "demo", "--e2e", help="End-to-end source: demo (bundled public-domain sample), an image/folder/video, or none."
    ),
    daemon_seconds: float = typer.Option(
        20.0, "--daemon-seconds", help="Seconds per daemon-lane row (per_frame and budget; 0 = none)."
    ),
    detector: Optional[Path] = typer.Option(
        None, "--detector", help="YuNet .onnx for the end-to-end rows (default $AGETOOL_DETECTOR, else the shipped YuNet); 'haar' = Haar."
    ),
    floor: bool = typer.Option(True, "--floor/--no-floor", help="Measure the matmul peak and print × floor."),
    out: Path = typer.Option(Path("bench-report"), "--out", help="Folder for report.md, report.json and the PNGs."),
) -> None:
    """Benchmark model variants x runtimes x batch sizes: MAE, latency, memory, the hardware floor."""
    from pydantic import ValidationError

    from agetool.benchmarks.bench import BenchConfig, run_bench
    from agetool.benchmarks.report import results_table
    from agetool.benchmarks.timing import TimingPlan
    from agetool.validation import option_error

    try:
        timing = TimingPlan(warmup_runs=warmup, min_runs=min_runs, min_seconds=min_seconds)
        config = BenchConfig(
            models=list(models) + list(more_models or []), keras=keras, images=images, labels=labels,
            split=split, subset=subset, limit=limit, seed=seed, batches=parse_batches(batch),
            providers=parse_list(providers), openvino=openvino, timing=timing, threads=threads,
            e2e=None if e2e.lower() == "none" else e2e, detector=detector, floor=floor, out=out,
            daemon_seconds=daemon_seconds,
        )
    except ValidationError as exc:
        raise option_error(exc, {"warmup_runs": "--warmup", "batches": "--batch"}) from None
    if keras is not None:
        from agetool.extras import import_keras_quietly, keras_modules, require_modules

        require_modules("agetool bench --keras", keras_modules())
        import_keras_quietly()
    report = run_bench(config)
    typer.echo(results_table(report))
    typer.echo(f"report: {out / 'report.md'}")
