"""The bench report: report.json (everything), report.md (the tables) and three PNG plots.

Every file is written to a temp name and renamed, so a reader never sees half a report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from agetool.contract import BAND_NAMES
from agetool.trainer.data import atomic_write_bytes

if TYPE_CHECKING:
    from agetool.benchmarks.bench import AccuracyEntry, BenchReport, BenchRow

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LATENCY_PNG = "latency.png"
MAE_PNG = "mae.png"
MAE_BANDS_PNG = "mae_by_band.png"
PLOTS = (LATENCY_PNG, MAE_PNG, MAE_BANDS_PNG)

ROW_COLUMNS = (
    "variant", "runtime", "provider", "batch", "status", "size MiB", "MAE", "ΔMAE", "p50 ms",
    "p95 ms", "p99 ms", "img/s", "speedup", "peak RSS MiB", "× floor", "CPU/wall",
)
E2E_STAGES = ("decode", "detect", "crop", "infer", "decide")


def _fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and signed and round(value, digits) == 0:
        return f"{0:.{digits}f}"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _ms(value: float | None) -> str:
    """Milliseconds with the digits that matter: 0.042, 6.22, 69.8."""
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}%"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    aligns = ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def row_cells(row: "BenchRow") -> list[str]:
    return [
        row.variant, row.runtime, row.provider, str(row.batch), row.status, _fmt(row.size_mib, 1),
        _fmt(row.mae, 3), _fmt(row.delta_mae, 3, signed=True), _ms(row.p50_ms), _ms(row.p95_ms),
        _ms(row.p99_ms), _fmt(row.images_per_s, 1), _fmt(row.speedup), _fmt(row.peak_rss_mib, 0),
        _fmt(row.x_floor, 1), _fmt(row.cpu_per_wall, 2),
    ]


def results_table(report: "BenchReport") -> str:
    """One line per row; the batches of a (model, runtime, provider) that failed for one reason share a line."""
    lines: list[list[str]] = []
    previous: "BenchRow | None" = None
    for row in report.rows:
        same_failure = (
            previous is not None and row.status != "ok" and previous.status == row.status
            and (previous.model, previous.runtime, previous.provider) == (row.model, row.runtime, row.provider)
        )
        if same_failure:
            lines[-1][3] += f", {row.batch}"
        else:
            lines.append(row_cells(row))
        previous = row
    return md_table(ROW_COLUMNS, lines)


def _label(entry: Any) -> str:
    return f"{entry.variant} · {entry.runtime} {entry.provider}"


def accuracy_table(accuracy: Sequence["AccuracyEntry"]) -> str:
    header = ["variant · runtime", "n", "MAE", "RMSE", "bias", *BAND_NAMES, "minors passed @25", "25+ checked @25"]
    rows = []
    for entry in accuracy:
        m = entry.metrics
        rows.append([
            _label(entry), str(m["n"]), _fmt(m["mae"], 3), _fmt(m["rmse"], 3), _fmt(m["mean_bias"], 2, signed=True),
            *[_fmt(m["mae_by_band"][b], 2) for b in BAND_NAMES],
            _pct(m["minors_passed_rate"]), _pct(m["adults_checked_rate"]),
        ])
    if accuracy:
        counts = accuracy[0].metrics["count_by_band"]
        rows.append(["faces per band", "", "", "", "", *[str(counts[b]) for b in BAND_NAMES], "", ""])
    return md_table(header, rows)


def e2e_table(report: "BenchReport") -> str:
    header = ["variant", "model", "status", "frames", "faces found", "frames/s", "p50 ms", "p95 ms",
              *[f"{s} %" for s in E2E_STAGES], "ORT threads"]
    rows = []
    for e2e in report.e2e:
        r = e2e.result
        if r is None:
            rows.append([e2e.variant, e2e.model, e2e.status, *["–"] * (len(header) - 3)])
            continue
        rows.append([
            e2e.variant, e2e.model, e2e.status, str(r["frames"]), _pct(r["frames_with_face_share"]),
            _fmt(r["frames_per_s"], 1), _ms(r["latency"]["p50_ms"]), _ms(r["latency"]["p95_ms"]),
            *[_pct(r["stage_share"][s]) for s in E2E_STAGES], str(r["intra_op_threads"]),
        ])
    return md_table(header, rows)


def daemon_table(report: "BenchReport") -> str:
    header = ["mode", "model", "status", "runtime", "inference ms", "CPU % of one core", "p50 ms", "p95 ms", "frames", "detections",
              "inferences", "RSS MB (peak)", "decisions differing"]
    rows = []
    for row in report.daemon:
        r = row.result
        if r is None:
            rows.append([row.variant, row.model, row.status, *["–"] * (len(header) - 3)])
            continue
        rows.append([
            row.variant, row.model, row.status, r["runtime"], _ms(r.get("inference_ms_mean")),
            _fmt(r["cpu_percent_of_one_core"], 1),
            _ms(r["frame_to_decision_ms"]["p50"]), _ms(r["frame_to_decision_ms"]["p95"]), str(r["frames_processed"]),
            str(r["detections_run"]), str(r["faces_inferred"]),
            f'{_fmt(r["rss_mb"], 0)} ({_fmt(r.get("peak_rss_mb"), 0)})', _pct(r["decisions_differ_share"]),
        ])
    return md_table(header, rows)


def header_lines(report: "BenchReport") -> list[str]:
    m = report.machine
    libs = ", ".join(f"{k} {v}" for k, v in m.libraries.items() if v) or "–"
    missing = ", ".join(k for k, v in m.libraries.items() if not v)
    cores = f"{m.logical_cpus} logical CPUs" + (f" / {m.physical_cores} physical cores" if m.physical_cores else "")
    timing = report.config["timing"]
    lines = [
        f"- **Date**: {m.date_utc} (bench wall time {report.wall_time_s:.0f} s)",
        f"- **CPU**: {m.cpu_model}, {cores}",
        f"- **ISA flags**: {', '.join(m.isa_flags) or '–'} (VNNI: {'yes' if m.has_vnni else 'no'})",
        f"- **GPU**: {', '.join(m.gpus) or 'none'}; ONNX Runtime providers: {', '.join(m.onnxruntime_providers)}",
        f"- **Libraries**: {libs}" + (f" (not installed: {missing})" if missing else ""),
        f"- **Platform**: {m.platform}, Python {m.python}",
        f"- **Load average** (1/5/15 min) at start: {' / '.join(map(str, m.load_average_start)) or '–'}; "
        f"at end: {' / '.join(map(str, m.load_average_end or [])) or '–'}",
        f"- **Timing**: {timing['warmup_runs']} warm-up calls, then at least {timing['min_runs']} calls and "
        f"{timing['min_seconds']:g} s per row, inputs rotated over up to 64 real preprocessed faces; "
        f"threads: {report.config['threads'] or 'each runtime’s default'}",
    ]
    labelled = report.labelled_set
    if labelled:
        subset = f", subset {labelled['subset']} of {labelled['split']}" if labelled.get("split") else ""
        seeded = f", seeded sample (seed {labelled['seed']}) of {labelled['faces_available']}" if labelled["seeded_subset"] else ""
        lines.append(f"- **Labelled set**: {labelled['images']}{subset}: {labelled['faces_used']} faces{seeded}")
    return lines


def floor_lines(report: "BenchReport") -> list[str]:
    peak = report.floor
    if peak is None:
        return ["Not measured (--no-floor)."]
    int8 = f"{peak.int8_gops_onnxruntime:.0f} GOP/s" if peak.int8_gops_onnxruntime else "not measured"
    bf16 = f"{peak.bf16_gflops_openvino:.1f} GFLOP/s" if peak.bf16_gflops_openvino else "not measured"
    lines = [
        f"Best of {peak.windows} windows of {peak.window_s:g} s of {peak.matmul_size}² matmuls on every core:",
        "",
        f"- FP32: {peak.fp32_gflops:.1f} GFLOP/s (numpy {_fmt(peak.fp32_gflops_numpy, 1)}, ONNX Runtime "
        f"{_fmt(peak.fp32_gflops_onnxruntime, 1)}, OpenVINO {_fmt(peak.fp32_gflops_openvino, 1)})",
        f"- BF16: {bf16} (OpenVINO, INFERENCE_PRECISION_HINT bf16): the floor of OpenVINO rows that ran in bf16",
        f"- INT8: {int8} (ONNX Runtime MatMulInteger u8×s8; CPU {'has' if peak.has_vnni else 'lacks'} VNNI)",
        "",
        "Work = 2 × multiply-accumulates of every Conv/MatMul/Gemm (shapes from onnx.shape_inference at the "
        "batch); floor = FP32 work ÷ FP32 peak + INT8 work ÷ INT8 peak. Element-wise ops and memory traffic are "
        "not counted, so × floor is how far a row is from a bound it cannot beat, not an efficiency.",
        "",
        md_table(
            ["model", "variant", "batch", "float GFLOP", "INT8 GOP", "floor ms"],
            [
                [m.name, m.variant, str(b), _fmt(ops.float_flops / 1e9, 2), _fmt(ops.int8_ops / 1e9, 2),
                 _fmt(_floor(ops, peak), 3)]
                for m in report.models for b, ops in sorted(m.ops.items())
            ],
        ),
    ]
    return lines


def _floor(ops: Any, peak: Any) -> float | None:
    from agetool.benchmarks.floor import floor_ms

    return floor_ms(ops, peak)


def render_markdown(report: "BenchReport") -> str:
    parts = [
        "# agetool bench report",
        "",
        *header_lines(report),
        "",
    ]
    if report.notes:
        parts += [f"> {note}" for note in report.notes] + [""]
    parts += [
        "## Models",
        "",
        md_table(
            ["file", "format", "variant", "input px", "backbone", "size MiB"],
            [[m.name, m.format, m.variant, str(m.input_size), m.backbone or "–", _fmt(m.size_mib, 1)]
             for m in report.models],
        ),
        "",
        "## Results",
        "",
        "Latency is per call (one batch); img/s = batch × calls / time; speedup = img/s ÷ img/s of ONNX "
        "Runtime FP32 batch 1; ΔMAE vs the ONNX Runtime FP32 row; × floor = p50 ÷ (work ÷ measured peak). "
        "Column meanings: benchmarks/README.md.",
        "",
        results_table(report),
        "",
        "## Accuracy on the labelled set",
        "",
        accuracy_table(report.accuracy) if report.accuracy else "No labelled set given (--images).",
        "",
        "## Physical floor",
        "",
        *floor_lines(report),
        "",
        "## End to end (register pipeline)",
        "",
        "Frame (JPEG bytes in hand) → decode → detect (YuNet unless noted) → crop+resize → infer (ONNX Runtime CPU, "
        "batch 1) → track + decide, one frame at a time with the daemon's defaults; "
        "% = share of the time in each stage.",
        "",
        e2e_table(report) if report.e2e else "Not run (--e2e none).",
        "",
        "## The daemon's lane cost",
        "",
        "A real `agetool serve` process with one lane at 5 fps (its camera a folder of the demo scene's frames): "
        "its CPU as a share of one core and its resident memory over a window after /readyz, frame → decision as "
        "its /v1/lanes reports it. per_frame = full-size detection and the model on every "
        "frame (the daemon before its CPU budget); budget = today's defaults. Decisions differing: share of frames "
        "whose ID decision differs from per_frame's on the same frames.",
        "",
        daemon_table(report) if report.daemon else "Not run (--e2e none or --daemon-seconds 0).",
        "",
    ]
    if report.e2e and report.e2e[0].result:
        r = report.e2e[0].result
        parts += [f"Sample: {r['source']}, {r['distinct_frames']} distinct frames; detector: {r['detector']}.", ""]
    parts += [
        "## Plots",
        "",
        f"![latency per variant]({LATENCY_PNG})",
        "",
        f"![MAE per variant]({MAE_PNG})",
        "",
        f"![MAE by age band]({MAE_BANDS_PNG})",
        "",
    ]
    return "\n".join(parts)


# --- Plots -------------------------------------------------------------------------------------
def _figure_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def latency_plot(report: "BenchReport") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report.rows if r.status == "ok" and r.p50_ms is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(ok), 2) + 1.2))
    labels = [f"{r.variant} · {r.runtime} {r.provider} · b{r.batch}" for r in ok]
    per_image = [r.p50_ms / r.batch for r in ok]
    p95_extra = [(r.p95_ms - r.p50_ms) / r.batch for r in ok]
    y = range(len(ok))
    ax.barh(list(y), per_image, xerr=[[0] * len(ok), p95_extra], color="#4C72B0", capsize=3, label="p50 (whisker: p95)")
    floors = [(i, r.floor_ms / r.batch) for i, r in enumerate(ok) if r.floor_ms]
    if floors:
        ax.scatter([f for _, f in floors], [i for i, _ in floors], marker="|", s=200, color="#C44E52", zorder=3,
                   label="floor (work / peak)")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms per image")
    ax.set_title("Latency per image")
    ax.legend(loc="lower right", fontsize=8)
    return _figure_bytes(fig)


def mae_plot(report: "BenchReport") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(report.accuracy), 2) + 1.2))
    labels = [_label(a) for a in report.accuracy]
    values = [a.metrics["mae"] for a in report.accuracy]
    ax.barh(range(len(values)), values, color="#55A868")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("MAE (years)")
    ax.set_title("MAE on the labelled set" if values else "MAE: no labelled set given")
    return _figure_bytes(fig)


def mae_band_plot(report: "BenchReport") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4))
    entries = report.accuracy
    width = 0.8 / max(len(entries), 1)
    x = np.arange(len(BAND_NAMES))
    for i, entry in enumerate(entries):
        values = [entry.metrics["mae_by_band"][b] or 0.0 for b in BAND_NAMES]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, values, width, label=_label(entry))
    ax.set_xticks(x, BAND_NAMES)
    ax.set_xlabel("true age band")
    ax.set_ylabel("MAE (years)")
    ax.set_title("MAE by age band")
    if entries:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _figure_bytes(fig)


def write_report(report: "BenchReport", out: Path) -> list[Path]:
    """report.json, report.md and the PNGs into `out` (created if needed)."""
    out = Path(out)
    written = [
        atomic_write_bytes(out / REPORT_JSON, report.model_dump_json(indent=2).encode()),
        atomic_write_bytes(out / LATENCY_PNG, latency_plot(report)),
        atomic_write_bytes(out / MAE_PNG, mae_plot(report)),
        atomic_write_bytes(out / MAE_BANDS_PNG, mae_band_plot(report)),
        atomic_write_bytes(out / REPORT_MD, render_markdown(report).encode()),
    ]
    return written
