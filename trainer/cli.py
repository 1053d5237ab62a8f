"""`agetool data inspect|split`, `agetool train`, `agetool evaluate`: parse options, call one
library function, print the result. Everything heavy (pandas, OpenCV, TensorFlow, ONNX Runtime)
is imported inside the commands so `agetool --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

data_app = typer.Typer(help="Inspect and split face data sets.", no_args_is_help=True)

DATA_DIRS_HELP = "Face data folders: seeds' layout (labels.csv + final_files/) or APPA-REAL."


def _console():
    from rich.console import Console

    return Console()


@data_app.command("inspect")
def inspect(
    data_dirs: List[Path] = typer.Argument(..., help=DATA_DIRS_HELP),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Write summary.json, age_histogram.png and sample_faces.png here."
    ),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Decoding threads."),
) -> None:
    """Count images, find missing / duplicate / corrupt files, summarise the ages."""
    from agetool.trainer.inspect import inspect_data, summary_table

    summary = inspect_data(data_dirs, out_dir=out, workers=workers, show_progress=True)
    console = _console()
    console.print(summary_table(summary))
    for path in summary.outputs.values():
        console.print(f"wrote {path}")


@data_app.command("split")
def split(
    data_dirs: List[Path] = typer.Argument(..., help=DATA_DIRS_HELP),
    out: Path = typer.Option(..., "--out", help="Split file to write (CSV: dataset,file_name,real_age,split)."),
    seed: int = typer.Option(42, "--seed", help="Same seed + same folders = same split, on any machine."),
    val: float = typer.Option(0.15, "--val", help="Share of each age band for validation."),
    test: float = typer.Option(0.15, "--test", help="Share of each age band for test."),
) -> None:
    """Write a deterministic train/val/test split, stratified by age band."""
    from rich.table import Table

    from agetool.contract import BAND_NAMES, age_band
    from agetool.trainer.data import SPLITS, split_datasets

    rows = split_datasets(data_dirs, out, seed, val, test)
    bands = rows["real_age"].map(age_band)
    table = Table(title=f"split of {len(rows)} images (seed {seed}) -> {out}")
    table.add_column("band")
    for name in SPLITS:
        table.add_column(name, justify="right")
    for band in (*BAND_NAMES, "all"):
        members = rows if band == "all" else rows[bands == band]
        table.add_row(band, *(str(int((members["split"] == name).sum())) for name in SPLITS))
    _console().print(table)


@data_app.command("align")
def align(
    data_dirs: List[Path] = typer.Argument(..., help=DATA_DIRS_HELP),
    out: Path = typer.Option(..., "--out", help="Writes one aligned data folder per source: OUT/<source name>/."),
    detector: Optional[Path] = typer.Option(
        None, "--detector", help="YuNet face detector (.onnx); default $AGETOOL_DETECTOR or the shipped one."
    ),
    size: int = typer.Option(224, "--size", min=32, max=1024, help="Side of the aligned crops, px."),
    coverage: Optional[float] = typer.Option(
        None, "--coverage", min=0.5, max=4.0, help="Template coverage (1.0 = eyebrows to chin); default the contract's."
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Keep crops written by an earlier run with the same settings."),
    workers: int = typer.Option(2, "--workers", min=1, max=64, help="Threads, one detector each."),
) -> None:
    """Detect each image's face and warp it onto the canonical template (crop aligned_v1)."""
    from rich.table import Table

    from agetool.contract import DEFAULT_ALIGN_COVERAGE
    from agetool.paths import default_detector_path
    from agetool.trainer.align import AlignConfig, align_folders

    config = AlignConfig(
        src_dirs=data_dirs, out_dir=out, detector=detector or default_detector_path(), size=size,
        coverage=coverage if coverage is not None else DEFAULT_ALIGN_COVERAGE, resume=resume,
        workers=workers,
    )
    reports = align_folders(config, show_progress=True)
    table = Table(title=f"aligned faces -> {out} (size {config.size}, coverage {config.coverage:g})")
    for column in ("folder", "images", "written", "no face", "ambiguous", "kept largest", "unreadable", "s"):
        table.add_column(column, justify="left" if column == "folder" else "right")
    for report in reports:
        s = report.summary()
        table.add_row(s["dataset"], *(str(s[k]) for k in ("images", "written", "no_face", "several_faces_ambiguous",
                                                          "several_faces_kept_largest", "unreadable", "seconds")))
    _console().print(table)
    _console().print(f"reasons per image: {out}/<folder>/align_report.csv")


@data_app.command("framing")
def framing(
    data_dirs: List[Path] = typer.Argument(..., help=DATA_DIRS_HELP),
    detector: Optional[Path] = typer.Option(
        None, "--detector", help="YuNet face detector (.onnx) the runtime will use (default: the shipped one)."
    ),
    sample: int = typer.Option(600, "--sample", min=1, help="Images to measure (seeded sample)."),
) -> None:
    """Measure how tightly the images frame their faces: the --face-margin to export with."""
    from agetool.trainer.framing import measure_folders_margin

    margin, n_faces = measure_folders_margin(data_dirs, detector, sample)
    _console().print(f"face margin {margin:g} (median over {n_faces} detected faces): "
                     f"agetool export MODEL --face-margin {margin:g}")


def train(
    data_dirs: List[Path] = typer.Argument(..., help=DATA_DIRS_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for model.keras, model_card.json and split.csv."),
    backbone: str = typer.Option(
        "resnet50", "--backbone", help="resnet50 | xception | mobilenetv3 | mobilenetv3small | mobilenet (MobileNet-v1: the face-pretrained FaceRes backbone with --weights PATH)"
    ),
    weights: str = typer.Option(
        "none", "--weights", help="imagenet (local Keras notop file) | none | PATH to a notop .h5"
    ),
    input_size: int = typer.Option(224, "--input-size", help="Square input in pixels (128 suits CPU runs)."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    learning_rate: float = typer.Option(1e-4, "--lr", help="Adam learning rate."),
    loss: str = typer.Option("mae", "--loss", help="mse | mae | huber"),
    split_file: Optional[Path] = typer.Option(None, "--split", help="Reuse this split file (from `agetool data split`)."),
    seed: int = typer.Option(42, "--seed"),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn off flips / shifts / brightness."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the run folder after a kill."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many training images."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Checkpoints and logs (default ~/.cache/agetool/runs/<out name>)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Stop after the epoch that crosses this many seconds of wall time."),
    checkpoint_every: int = typer.Option(1, "--checkpoint-every", help="Save the resumable checkpoint every N epochs."),
    early_stop_patience: int = typer.Option(10, "--early-stop-patience", help="Epochs without a better val MAE before stopping."),
    head: str = typer.Option("regression", "--head", help="regression (one age) | distribution (softmax over one-year bins: age_years + age_std_years)"),
    head_init: Optional[Path] = typer.Option(None, "--head-init", help="Start the distribution head from this .npz (e.g. faceres_age_head.npz)."),
    cache_features: bool = typer.Option(False, "--cache-features", help="Freeze the backbone below --trainable-from, cache its features once (clean + augmented views), train the top: the CPU way."),
    trainable_from: str = typer.Option("conv_dw_13", "--trainable-from", help="First backbone layer trained with --cache-features."),
    views: int = typer.Option(2, "--views", help="Cached views per training face with --cache-features (1 clean + augmented)."),
) -> None:
    """Train an age model (ResNet50 by default) and save model.keras + model_card.json."""
    from agetool.extras import import_keras_quietly, keras_modules, require_modules

    config = make_train_config(
        data_dirs=data_dirs,
        out_dir=out,
        backbone=backbone,
        weights=weights,
        input_size=input_size,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss=loss,
        split_file=split_file,
        seed=seed,
        augment=not no_augment,
        resume=resume,
        max_images=max_images,
        run_dir=run_dir,
        max_train_seconds=time_budget,
        checkpoint_every=checkpoint_every,
        early_stop_patience=early_stop_patience,
        head=head,
        head_init=str(head_init) if head_init else None,
        cache_features=cache_features,
        trainable_from=trainable_from,
        views=views,
    )
    require_modules("agetool train", keras_modules())
    import_keras_quietly()
    from agetool.trainer.train import train as run_training

    result = run_training(config)
    console = _console()
    console.print(f"model: {result.model_path}")
    console.print(f"card: {result.card_path}")
    console.print(
        f"best val MAE {result.best_val_mae:.2f} years after {result.epochs_run} epochs, {result.wall_time_s:.0f} s "
        f"(answering the median age to everyone: {result.baseline_val_mae:.2f})"
    )
    if result.learned_nothing:
        typer.secho("warning: no better than answering the median age to everyone: do not export this model",
                    fg=typer.colors.YELLOW, err=True)


# TrainConfig field -> the option that sets it, for one-line error messages.
TRAIN_OPTION_NAMES = {
    "data_dirs": "DATA_DIRS",
    "out_dir": "--out",
    "learning_rate": "--lr",
    "split_file": "--split",
    "augment": "--no-augment",
    "max_train_seconds": "--time-budget",
    "checkpoint_every": "--checkpoint-every",
    "early_stop_patience": "--early-stop-patience",
}


def make_train_config(**fields):
    """TrainConfig from CLI values; a bad value is bad usage: one line naming the option, exit 2."""
    from pydantic import ValidationError

    from agetool.trainer.train import TrainConfig
    from agetool.validation import option_error

    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        raise option_error(exc, TRAIN_OPTION_NAMES) from None


def evaluate(
    model: Optional[Path] = typer.Option(
        None, "--model", help=".onnx or .keras model (default: $AGETOOL_MODEL, else the shipped model)."
    ),
    images: list[Path] = typer.Option(
        ...,
        "--images",
        help="Folder of face crops; or a data folder with labels.csv inside (then no --labels). "
        "Repeat for several data folders read and split as one set.",
    ),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with file_name,real_age for --images."),
    split_file: Optional[Path] = typer.Option(None, "--split", help="Split file: evaluate only --subset of it."),
    subset: Optional[str] = typer.Option(
        None, "--subset", help="train | val | test of the split (default test with --split; train only to see overfitting)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    predictions_out: Optional[Path] = typer.Option(
        None, "--predictions", help="Write per-image real and estimated ages (CSV) here."
    ),
    flip: bool = typer.Option(False, "--flip", help="Average each face with its mirror image."),
    buffer: float = typer.Option(0.0, "--buffer", help="Challenge-25 buffer in years: threshold = 25 + buffer."),
    batch_size: int = typer.Option(64, "--batch-size"),
    providers: str = typer.Option("auto", "--providers", help="ONNX Runtime providers: auto, cpu, cuda, tensorrt."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Decoding threads."),
    detect: bool = typer.Option(
        False, "--detect", help="--images are whole photos: detect the face and crop it as the till does "
        "(a photo with no face counts as 'ID required')."
    ),
    detector: Optional[str] = typer.Option(
        None, "--detector", help="With --detect: YuNet .onnx (default: the shipped one) or 'haar'."
    ),
    jitter: float = typer.Option(
        0.0, "--jitter", help="With --detect: also move landmarks / box by up to this share of the face size "
        "and report the MAE shift (framing robustness)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of --jitter."),
) -> None:
    """Score a model's age estimates: MAE, RMSE, per-band error, Challenge-25 rates."""
    if model is not None and model.suffix == ".keras":
        from agetool.extras import import_keras_quietly, keras_modules, require_modules

        require_modules("agetool evaluate --model *.keras", keras_modules())
        import_keras_quietly()
    from agetool.trainer.evaluate import default_model_or_error, evaluate_folder, report_table

    report = evaluate_folder(
        model if model is not None else default_model_or_error(),
        images,
        labels,
        split_file=split_file,
        subset=subset,
        json_out=json_out,
        predictions_out=predictions_out,
        batch_size=batch_size,
        flip=flip,
        buffer_years=buffer,
        providers=providers,
        workers=workers,
        show_progress=True,
        detect=detect,
        detector=detector,
        jitter=jitter,
        seed=seed,
    )
    console = _console()
    console.print(report_table(report))
    if json_out is not None:
        console.print(f"wrote {json_out}")
