"""The table printed at the end of `agetool export`."""

from __future__ import annotations

from typing import Any

from agetool.export.api import ExportReport
from agetool.export.fp16 import CPU_FOOTNOTE


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def summary_table(report: ExportReport) -> Any:
    """variant, file, size MB, max |Δ|, MAE, ΔMAE, CPU ms/img, notes, as a rich Table."""
    from rich.table import Table

    lines = [
        f"{report.model.name}: {report.input_size} px, backbone {report.backbone}; max |Δ| vs Keras on "
        f"{report.fixed_batch_source}; MAE on {report.n_validation_faces} labelled validation faces"
        + (f"; INT8 calibrated on {report.n_calibration_faces} faces" if report.n_calibration_faces else "")
    ]
    ms = {r.variant: r.verification.cpu_ms_per_image for r in report.results}
    if "fp16" in ms and "fp32" in ms:
        lines.append(f"{CPU_FOOTNOTE}; here {_ms(ms['fp16'])} vs {_ms(ms['fp32'])} ms")
    table = Table(title="agetool export", caption="\n".join(lines), caption_justify="left")
    for name, justify in (
        ("variant", "left"), ("file", "left"), ("size MB", "right"), ("max |Δ|", "right"),
        ("MAE", "right"), ("ΔMAE", "right"), ("CPU ms/img", "right"), ("notes", "left"),
    ):
        wraps = name in ("notes", "file")
        table.add_column(  # type: ignore[arg-type]
            name, justify=justify, no_wrap=not wraps, overflow="fold", min_width=16 if name == "notes" else None
        )
    for result in report.results:
        v = result.verification
        table.add_row(
            result.variant,
            result.path.name,
            f"{result.size_mb:.2f}",
            f"{v.max_abs_diff_years:.2g}",
            _num(v.variant_mae_years, ".3f"),
            _num(v.delta_mae_years, "+.3f"),
            _ms(v.cpu_ms_per_image),
            result.note,
        )
    return table
