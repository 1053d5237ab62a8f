"""`agetool export`: parse options, call export_model, print the summary. No heavy imports here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def export(
    model: Path = typer.Argument(..., help="Trained Keras 3 model (.keras); a model_card.json beside it is read for metadata."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the model's folder)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write <stem>_fp16.onnx (for GPUs; not faster on CPU)."),
    int8: bool = typer.Option(False, "--int8", help="Also write <stem>_int8.onnx (needs --calib)."),
    calib: Optional[list[Path]] = typer.Option(None, "--calib", help="Face data folder for INT8 calibration (training split) and the ΔMAE check (validation split); repeat for several folders split as one set."),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Face data folder(s) for the ΔMAE check (default: --calib's)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file (dataset,file_name,real_age,split); default: the model card's, else the trainer's seeded split."),
    calib_size: int = typer.Option(300, "--calib-size", help="Calibration faces (warns when fewer are available)."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="percentile (measured closest to Keras), minmax or entropy."),
    int8_mode: str = typer.Option("static", "--int8-mode", help="static (calibrated QDQ) or dynamic (weights only, fallback)."),
    int8_activations: str = typer.Option("quint8", "--int8-activations", help="quint8 (default: ~2x faster on x86 CPUs) or qint8 activations (static)."),
    keep_head_float: bool = typer.Option(True, "--keep-head-float/--quantize-head", help="Keep the final Dense age head in float."),
    val_size: int = typer.Option(500, "--val-size", help="Labelled validation faces for the ΔMAE check."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13..18)."),
    max_delta_mae: float = typer.Option(0.3, "--max-delta-mae", help="INT8 fails when its MAE is worse than Keras by more (years)."),
    force: bool = typer.Option(False, "--force", help="Write variants that fail their checks anyway."),
    face_margin: Optional[float] = typer.Option(
        None, "--face-margin", help="Crop margin the runtime uses for this model (`agetool data framing` measures it); default: the model card's, else 0.4 (APPA-style)."
    ),
) -> None:
    """Export a .keras age model to verified ONNX files (FP32 always, FP16 / INT8 on request)."""
    from rich.console import Console

    from agetool.export.api import export_model, make_options
    from agetool.export.summary import summary_table
    from agetool.extras import import_keras_quietly, require_modules

    options = make_options(
        model=model, out=out, fp16=fp16, int8=int8, calib=calib, val=val, split=split,
        calib_size=calib_size, calib_method=calib_method, int8_mode=int8_mode,
        int8_activations=int8_activations, keep_head_float=keep_head_float, val_size=val_size,
        opset=opset, max_delta_mae=max_delta_mae, force=force, face_margin=face_margin,
    )
    require_modules("agetool export", ("keras", "tensorflow", "tf2onnx"))
    import_keras_quietly()
    report = export_model(options, console=Console(stderr=True))
    # Piped to a file or CI log, rich would wrap at 80 columns and fold the table.
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(report))
    for result in report.results:
        typer.echo(str(result.path))
