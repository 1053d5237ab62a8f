"""`agetool evaluate`: how far off a model's ages are, overall, per age band, and for Challenge 25.

One core, `evaluate_model(model_path, rows)`, for a `.keras` or an `.onnx` model; the CLI, the
benchmarks and the default-model work all call it. `evaluate_predictions` scores ages that were
estimated elsewhere, and `choose_buffer` picks the Challenge-25 buffer on a validation set.
Images here are already face crops: no detector runs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from agetool.contract import (
    BAND_NAMES,
    DEFAULT_POLICY_AGE_YEARS,
    age_band,
    challenge25_rates,
)
from agetool.errors import AgetoolError
from agetool.trainer.data import (
    Problem,
    apply_split,
    atomic_write_bytes,
    load_faces,
    read_dataset,
    read_datasets,
    read_labelled_images,
)

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".onnx", ".keras")
DECODE_CHUNK = 256
BUFFER_STEP_YEARS = 0.5
MAX_BUFFER_YEARS = 20.0


# --- Metrics -----------------------------------------------------------------------------------
class Challenge25Rates(BaseModel):
    buffer_years: float
    threshold_years: float
    minors_passed_rate: float | None = Field(description="true age < 18 estimated >= threshold")
    adults_checked_rate: float | None = Field(description="true age >= 25 estimated < threshold")


class AgeMetrics(BaseModel):
    """Error of estimated against real ages. Rates are None when the set has no minors / adults."""

    n: int
    mae: float
    rmse: float
    mean_bias: float = Field(description="mean of estimated - real age (positive: looks older)")
    median_abs_error: float
    mae_by_band: dict[str, float | None]
    bias_by_band: dict[str, float | None]
    count_by_band: dict[str, int]
    policy_age_years: float
    buffer_years: float
    threshold_years: float
    minors_passed_rate: float | None
    adults_checked_rate: float | None
    n_minors: int
    n_adults_25_plus: int
    metadata_buffer_years: float | None = None
    metadata_uncertainty_years: float | None = Field(
        None, description="The model's stated uncertainty; the daemon compares estimate minus this with the threshold."
    )
    rates_at_metadata_buffer: Challenge25Rates | None = Field(
        None, description="Rates under the daemon's rule: estimate - uncertainty >= policy age + the model's buffer."
    )


def _none_if_nan(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 4)


def _rates(true: np.ndarray, est: np.ndarray, policy_age: float, buffer_years: float) -> Challenge25Rates:
    rates = challenge25_rates(true, est, policy_age + buffer_years)
    return Challenge25Rates(
        buffer_years=buffer_years,
        threshold_years=policy_age + buffer_years,
        minors_passed_rate=_none_if_nan(rates["minors_passed_rate"]),
        adults_checked_rate=_none_if_nan(rates["adults_checked_rate"]),
    )


def evaluate_predictions(
    true_ages_years: Sequence[float] | np.ndarray,
    estimated_ages_years: Sequence[float] | np.ndarray,
    buffer_years: float = 0.0,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    metadata_buffer_years: float | None = None,
    metadata_uncertainty_years: float | np.ndarray | None = None,
) -> AgeMetrics:
    """Score estimates against real ages (same order). With the model's own buffer, the rates
    are also given under the daemon's rule (estimate - uncertainty vs policy age + buffer); the
    uncertainty is one figure, or one per face for models with a spread output (reported as its mean)."""
    true = np.asarray(true_ages_years, dtype=np.float64).reshape(-1)
    est = np.asarray(estimated_ages_years, dtype=np.float64).reshape(-1)
    if true.shape != est.shape:
        raise AgetoolError(f"ages: {len(true)} real ages but {len(est)} estimates")
    if len(true) == 0:
        raise AgetoolError("evaluation: no image to score (every one was missing or unreadable)")
    error = est - true
    bands = np.array([age_band(a) for a in true], dtype=object)
    mae_by_band: dict[str, float | None] = {}
    bias_by_band: dict[str, float | None] = {}
    count_by_band: dict[str, int] = {}
    for name in BAND_NAMES:
        members = bands == name
        count_by_band[name] = int(members.sum())
        mae_by_band[name] = round(float(np.abs(error[members]).mean()), 4) if members.any() else None
        bias_by_band[name] = round(float(error[members].mean()), 4) if members.any() else None
    counts = challenge25_rates(true, est, policy_age_years + buffer_years)
    at_buffer = _rates(true, est, policy_age_years, buffer_years)
    at_metadata = (
        _rates(
            true, est - (0.0 if metadata_uncertainty_years is None else metadata_uncertainty_years),
            policy_age_years, metadata_buffer_years,
        )
        if metadata_buffer_years is not None
        else None
    )
    return AgeMetrics(
        n=len(true),
        mae=round(float(np.abs(error).mean()), 4),
        rmse=round(float(np.sqrt((error**2).mean())), 4),
        mean_bias=round(float(error.mean()), 4),
        median_abs_error=round(float(np.median(np.abs(error))), 4),
        mae_by_band=mae_by_band,
        bias_by_band=bias_by_band,
        count_by_band=count_by_band,
        policy_age_years=policy_age_years,
        buffer_years=buffer_years,
        threshold_years=policy_age_years + buffer_years,
        minors_passed_rate=at_buffer.minors_passed_rate,
        adults_checked_rate=at_buffer.adults_checked_rate,
        n_minors=counts["n_minors"],
        n_adults_25_plus=counts["n_adults_25_plus"],
        metadata_buffer_years=metadata_buffer_years,
        metadata_uncertainty_years=(
            None if metadata_buffer_years is None or metadata_uncertainty_years is None
            else round(float(np.mean(metadata_uncertainty_years)), 4)
        ),
        rates_at_metadata_buffer=at_metadata,
    )


class BufferChoice(BaseModel):
    buffer_years: float
    threshold_years: float
    minors_passed_rate: float
    adults_checked_rate: float | None
    max_minor_pass_rate: float
    met_target: bool = Field(description="False when even the largest buffer lets too many minors through")
    n_minors: int
    n_adults_25_plus: int


def choose_buffer(
    true_ages_years: Sequence[float] | np.ndarray,
    estimated_ages_years: Sequence[float] | np.ndarray,
    max_minor_pass_rate: float = 0.01,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    step_years: float = BUFFER_STEP_YEARS,
    max_buffer_years: float = MAX_BUFFER_YEARS,
) -> BufferChoice:
    """The smallest buffer (in `step_years` steps) at which at most `max_minor_pass_rate` of the
    true minors are estimated at or above policy age + buffer, and the share of 25+ adults who
    are then asked for ID. Choose it on validation data, never on the test set."""
    true = np.asarray(true_ages_years, dtype=np.float64).reshape(-1)
    est = np.asarray(estimated_ages_years, dtype=np.float64).reshape(-1)
    if true.shape != est.shape:
        raise AgetoolError(f"ages: {len(true)} real ages but {len(est)} estimates")
    if not 0 <= max_minor_pass_rate < 1:
        raise AgetoolError(f"max_minor_pass_rate {max_minor_pass_rate}: expected a share in [0, 1)")
    buffers = np.arange(0.0, max_buffer_years + step_years / 2, step_years)
    rates: dict[str, float] = {}
    for buffer_years in buffers:
        rates = challenge25_rates(true, est, policy_age_years + buffer_years)
        if rates["n_minors"] == 0:
            raise AgetoolError("choose buffer: no true minor (age < 18) in the data; cannot measure the pass rate")
        if rates["minors_passed_rate"] <= max_minor_pass_rate:
            break
    return BufferChoice(
        buffer_years=float(buffer_years),
        threshold_years=float(policy_age_years + buffer_years),
        minors_passed_rate=float(rates["minors_passed_rate"]),
        adults_checked_rate=_none_if_nan(rates["adults_checked_rate"]),
        max_minor_pass_rate=max_minor_pass_rate,
        met_target=rates["minors_passed_rate"] <= max_minor_pass_rate,
        n_minors=rates["n_minors"],
        n_adults_25_plus=rates["n_adults_25_plus"],
    )


class MultiSetBufferChoice(BaseModel):
    buffer_years: float
    threshold_years: float
    met_target: bool
    per_set: dict[str, BufferChoice] = Field(description="Each validation set's rates at the common buffer.")
    smallest_per_set: dict[str, float] = Field(description="The buffer each set alone would need.")


def choose_buffer_across(
    sets: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    max_minor_pass_rate: float = 0.01,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    step_years: float = BUFFER_STEP_YEARS,
    max_buffer_years: float = MAX_BUFFER_YEARS,
) -> MultiSetBufferChoice:
    """The smallest buffer at which at most `max_minor_pass_rate` of the minors of EVERY set
    (name -> (real ages, the rule's lower bounds)) pass: the minors' pass rate only falls as the
    buffer grows, so it is the largest of the buffers each set needs alone."""
    if not sets:
        raise AgetoolError("choose buffer: no validation set given")
    alone = {name: choose_buffer(true, est, max_minor_pass_rate, policy_age_years, step_years, max_buffer_years)
             for name, (true, est) in sets.items()}
    buffer_years = max(choice.buffer_years for choice in alone.values())
    per_set = {}
    for name, (true, est) in sets.items():
        rates = challenge25_rates(np.asarray(true, float), np.asarray(est, float), policy_age_years + buffer_years)
        per_set[name] = BufferChoice(
            buffer_years=buffer_years, threshold_years=policy_age_years + buffer_years,
            minors_passed_rate=float(rates["minors_passed_rate"]),
            adults_checked_rate=_none_if_nan(rates["adults_checked_rate"]),
            max_minor_pass_rate=max_minor_pass_rate,
            met_target=rates["minors_passed_rate"] <= max_minor_pass_rate,
            n_minors=rates["n_minors"], n_adults_25_plus=rates["n_adults_25_plus"],
        )
    return MultiSetBufferChoice(
        buffer_years=buffer_years, threshold_years=policy_age_years + buffer_years,
        met_target=all(choice.met_target for choice in per_set.values()),
        per_set=per_set, smallest_per_set={name: c.buffer_years for name, c in alone.items()},
    )


# --- Models ------------------------------------------------------------------------------------
class AgePredictor(Protocol):
    input_size: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_path: str
    model_format: str
    input_size: int
    backbone: str | None = None
    variant: str | None = None
    id_check_buffer_years: float | None = None
    uncertainty_years: float | None = None
    crop: str | None = None
    std_output_name: str | None = None
    interval_scale: float | None = None


def open_model(path: str | Path, providers: str = "auto", runtime: str = "onnxruntime") -> tuple[AgePredictor, ModelInfo]:
    """A `.onnx` (ONNX Runtime or OpenVINO, input size from its metadata) or `.keras` model,
    opened by the runtime's one model opener."""
    from agetool.edge_runtime.infer import open_age_model

    path = Path(path)
    if path.suffix not in MODEL_SUFFIXES:
        raise AgetoolError(f"model {path}: expected a .onnx or .keras file")
    model = open_age_model(path, runtime, providers)
    meta = model.metadata
    if meta is None:
        return model, ModelInfo(model_path=str(path), model_format="keras", input_size=model.input_size)
    return model, ModelInfo(
        model_path=str(path),
        model_format="onnx",
        input_size=meta.input_size,
        backbone=meta.backbone,
        variant=meta.variant,
        id_check_buffer_years=meta.id_check_buffer_years,
        uncertainty_years=meta.mae_uncertainty_years if meta.mae_uncertainty_years is not None else meta.val_mae,
        crop=meta.crop,
        std_output_name=meta.std_output_name,
        interval_scale=meta.interval_scale,
    )


# --- Evaluation --------------------------------------------------------------------------------
class PredictionRow(BaseModel):
    dataset: str
    file_name: str
    real_age: float
    estimated_age: float


class EvaluationReport(AgeMetrics):
    """What `agetool evaluate` prints and writes as JSON."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelInfo
    data: str = ""
    subset: str | None = None
    flip: bool = False
    n_skipped: int = Field(0, description="rows or images left out: missing, corrupt, bad label")
    skipped: list[str] = Field(default_factory=list, description="why, one line each (first 100)")
    wall_time_s: float = 0.0
    predictions: list[PredictionRow] | None = None


def predict_rows(
    model: AgePredictor,
    rows: pd.DataFrame,
    batch_size: int = 64,
    flip: bool = False,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Estimated ages for rows with a `path` column: (ages of the readable rows, bool mask over
    rows of which were readable, error lines of the others). `flip` averages each face with its
    mirror image (test-time augmentation)."""
    estimates, _, readable, errors = predict_rows_with_std(model, rows, batch_size, flip, workers, progress)
    return estimates, readable, errors


def _predict(model: AgePredictor, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(model, "predict_with_std"):
        prediction = model.predict_with_std(batch)
        return prediction.ages_years, prediction.std_years
    return model.predict(batch), None


def predict_rows_with_std(
    model: AgePredictor,
    rows: pd.DataFrame,
    batch_size: int = 64,
    flip: bool = False,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """predict_rows plus each face's own spread (None for models with one output)."""
    paths = list(rows["path"])
    estimates = np.zeros(len(paths), dtype=np.float64)
    spreads = np.zeros(len(paths), dtype=np.float64)
    has_spread = True
    readable = np.zeros(len(paths), dtype=bool)
    errors: list[str] = []
    for start in range(0, len(paths), DECODE_CHUNK):
        chunk = paths[start : start + DECODE_CHUNK]
        images, ok, chunk_errors = load_faces(chunk, model.input_size, workers=workers, progress=progress)
        errors += chunk_errors
        ages = np.zeros(len(images), dtype=np.float64)
        stds = np.zeros(len(images), dtype=np.float64)
        for b in range(0, len(images), batch_size):
            batch = images[b : b + batch_size].astype(np.float32)
            ages[b : b + batch_size], std = _predict(model, batch)
            if flip:
                mirrored = np.ascontiguousarray(batch[:, :, ::-1, :])
                mirrored_ages, mirrored_std = _predict(model, mirrored)
                ages[b : b + batch_size] = (ages[b : b + batch_size] + mirrored_ages) / 2.0
                std = None if std is None or mirrored_std is None else (std + mirrored_std) / 2.0
            if std is None:
                has_spread = False
            else:
                stds[b : b + batch_size] = std
        idx = np.flatnonzero(ok) + start
        estimates[idx] = ages
        spreads[idx] = stds
        readable[idx] = True
    return estimates[readable], (spreads[readable] if has_spread else None), readable, errors


def daemon_uncertainty(info: ModelInfo, stds: np.ndarray | None) -> float | np.ndarray | None:
    """What the daemon subtracts before comparing with the threshold: interval_scale times each
    face's own spread for models that give one, else the model's stated uncertainty."""
    if stds is not None and info.std_output_name:
        return (info.interval_scale or 1.0) * stds
    return info.uncertainty_years


def evaluate_model(
    model_path: str | Path,
    rows: pd.DataFrame,
    batch_size: int = 64,
    flip: bool = False,
    buffer_years: float = 0.0,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    providers: str = "auto",
    workers: int = 4,
    keep_predictions: bool = False,
    show_progress: bool = False,
) -> EvaluationReport:
    """Run a `.onnx` or `.keras` model over face crops (`rows`: columns path, real_age, and
    optionally dataset, file_name) and score it. Unreadable images are skipped and counted."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if batch_size < 1:
        raise AgetoolError(f"--batch-size {batch_size}: expected at least 1")
    if not 0 <= buffer_years <= MAX_BUFFER_YEARS:
        raise AgetoolError(f"--buffer {buffer_years:g}: expected 0..{MAX_BUFFER_YEARS:g} years")
    started = time.monotonic()
    model, info = open_model(model_path, providers)
    progress = Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task("evaluating", total=len(rows))
        estimates, stds, readable, errors = predict_rows_with_std(
            model, rows, batch_size, flip, workers, progress=lambda n: progress.advance(task, n)
        )
    true = rows["real_age"].to_numpy(dtype=np.float64)[readable]
    metrics = evaluate_predictions(
        true, estimates, buffer_years, policy_age_years, info.id_check_buffer_years, daemon_uncertainty(info, stds)
    )
    predictions = None
    if keep_predictions:
        kept = rows[readable]
        predictions = [
            PredictionRow(dataset=str(d), file_name=str(f), real_age=float(a), estimated_age=round(float(e), 3))
            for d, f, a, e in zip(
                kept.get("dataset", pd.Series([""] * len(kept))),
                kept.get("file_name", kept["path"]),
                kept["real_age"],
                estimates,
            )
        ]
    return EvaluationReport(
        **metrics.model_dump(),
        model=info,
        flip=flip,
        n_skipped=len(errors),
        skipped=errors[:100],
        wall_time_s=round(time.monotonic() - started, 2),
        predictions=predictions,
    )


def load_eval_rows(
    images: str | Path | Sequence[str | Path],
    labels: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Rows to evaluate: a folder of crops + a file_name,real_age CSV, or one or more data folders
    (seeds' layout with labels.csv inside, or APPA-REAL; several are read as one set, like the
    trainer's). With a split file, only `subset` (default test) of it; with APPA-REAL's own
    split, `subset` picks from that."""
    folders = [Path(images)] if isinstance(images, (str, Path)) else [Path(f) for f in images]
    if not folders:
        raise AgetoolError("--images: give at least one folder")
    if labels is not None:
        if len(folders) > 1:
            raise AgetoolError("--labels: goes with one --images folder, not several")
        rows, problems = read_labelled_images(folders[0], labels)
    else:
        for folder in folders:
            if folder.is_dir() and not (folder / "labels.csv").is_file() and not any(folder.glob("gt_avg_*.csv")):
                raise AgetoolError(f"--images {folder}: no labels.csv inside; pass --labels FILE.csv (file_name,real_age)")
        rows, problems = read_datasets(folders) if len(folders) > 1 else read_dataset(folders[0])
    images = ", ".join(str(f) for f in folders)
    if subset is not None and subset not in ("train", "val", "test"):
        raise AgetoolError(f"--subset {subset}: expected train, val or test")
    if split_file is not None:
        rows = apply_split(rows, split_file)
        subset = subset or "test"
    if subset is not None:
        if "split" not in rows.columns:
            raise AgetoolError(f"--subset {subset}: needs --split FILE (these images carry no split)")
        rows = rows[rows["split"] == subset].reset_index(drop=True)
        if rows.empty:
            raise AgetoolError(f"--subset {subset}: no image of {images} is in that part of the split")
    return rows, problems


def evaluate_folder(
    model_path: str | Path,
    images: str | Path | Sequence[str | Path],
    labels: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str | None = None,
    json_out: str | Path | None = None,
    predictions_out: str | Path | None = None,
    batch_size: int = 64,
    flip: bool = False,
    buffer_years: float = 0.0,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    providers: str = "auto",
    workers: int = 4,
    show_progress: bool = False,
    detect: bool = False,
    detector: str | Path | None = None,
    jitter: float = 0.0,
    seed: int = 0,
) -> EvaluationReport:
    """`agetool evaluate`: read the rows, evaluate (face crops; or whole photos through the
    detector with `detect`), write the JSON (and per-image CSV) atomically."""
    if not detect and (detector is not None or jitter):
        raise AgetoolError("--detector / --jitter: go with --detect (whole photos)")
    if detect and flip:
        raise AgetoolError("--flip: not with --detect")
    rows, problems = load_eval_rows(images, labels, split_file, subset)
    if rows.empty:
        raise AgetoolError(f"--images {images}: no usable labelled image (see the skipped rows in the log)")
    for problem in problems[:10]:
        log.warning("skipped %s/%s: %s", problem.dataset, problem.file_name, problem.reason)
    if detect:
        report: EvaluationReport = evaluate_detect(
            model_path, rows, detector, jitter, seed, buffer_years, policy_age_years, providers,
            keep_predictions=predictions_out is not None, show_progress=show_progress,
        )
    else:
        report = evaluate_model(
            model_path,
            rows,
            batch_size=batch_size,
            flip=flip,
            buffer_years=buffer_years,
            policy_age_years=policy_age_years,
            providers=providers,
            workers=workers,
            keep_predictions=predictions_out is not None,
            show_progress=show_progress,
        )
    label_lines = [f"{p.dataset}/{p.file_name}: {p.reason}" for p in problems]
    report.n_skipped += len(problems)
    report.skipped = (label_lines + report.skipped)[:100]
    report.data = str(images) if isinstance(images, (str, Path)) else ", ".join(str(f) for f in images)
    if split_file is not None or subset is not None:
        report.subset = subset or "test"
    if predictions_out is not None and report.predictions is not None:
        table = pd.DataFrame([p.model_dump() for p in report.predictions])
        atomic_write_bytes(predictions_out, table.to_csv(index=False).encode())
    if json_out is not None:
        payload = report.model_dump_json(indent=2, exclude={"predictions"})
        atomic_write_bytes(json_out, (payload + "\n").encode())
    return report


# --- Whole photos (evaluate --detect) ----------------------------------------------------------
class DetectEvaluationReport(EvaluationReport):
    """`agetool evaluate --detect`: the pipeline the till runs (detector, the model's own crop,
    the model) on whole photos. MAE and per-band keys are over the photos with a face found (`n`);
    a photo with no face counts as "ID required" in the Challenge-25 rates, as at the till, so
    `n_minors` and `n_adults_25_plus` include those photos."""

    detector: str = ""
    n_no_face: int = 0
    jitter_fraction: float | None = None
    jitter_seed: int | None = None
    jittered_mae: float | None = Field(None, description="MAE with the landmarks / box moved by up to jitter_fraction")
    jitter_mae_shift_years: float | None = Field(None, description="jittered_mae - mae")
    jitter_mean_abs_estimate_shift_years: float | None = Field(
        None, description="mean |estimate with jitter - estimate without| over the faces found"
    )


def _read_photo(path: str) -> np.ndarray | None:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def evaluate_detect(
    model_path: str | Path,
    rows: pd.DataFrame,
    detector: str | Path | None = None,
    jitter: float = 0.0,
    seed: int = 0,
    buffer_years: float = 0.0,
    policy_age_years: float = DEFAULT_POLICY_AGE_YEARS,
    providers: str = "auto",
    runtime: str = "onnxruntime",
    keep_predictions: bool = False,
    show_progress: bool = False,
) -> DetectEvaluationReport:
    """Run FaceAgePipeline on whole photos (`rows`: path, real_age): the shopper's face as the
    daemon picks it (largest, most central), cropped as the model's metadata says, and score it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from agetool.edge_runtime.detect import choose_face, detector_backend, make_detector
    from agetool.edge_runtime.face_pipeline import FaceAgePipeline, jitter_face

    if not 0 <= jitter <= 0.5:
        raise AgetoolError(f"--jitter {jitter:g}: expected a share of the face size in 0..0.5")
    if not 0 <= buffer_years <= MAX_BUFFER_YEARS:
        raise AgetoolError(f"--buffer {buffer_years:g}: expected 0..{MAX_BUFFER_YEARS:g} years")
    if Path(model_path).suffix != ".onnx":
        raise AgetoolError(f"--detect: model {model_path}: needs an .onnx (its metadata says how to crop)")
    started = time.monotonic()
    model, info = open_model(model_path, providers, runtime)
    # The detector runs where the daemon would run it beside this model, so the figures are the till's.
    pipeline = FaceAgePipeline(make_detector(detector, backend=detector_backend("auto", model.runtime)), model)
    rng = np.random.default_rng(seed)
    n_rows = len(rows)
    estimates = np.full(n_rows, np.nan)
    lowers = np.full(n_rows, np.nan)
    jittered = np.full(n_rows, np.nan)
    readable = np.zeros(n_rows, dtype=bool)
    errors: list[str] = []
    progress = Progress(
        TextColumn("evaluating photos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show_progress,
    )
    with progress:
        task = progress.add_task("evaluating", total=n_rows)
        for i, path in enumerate(rows["path"]):
            progress.advance(task)
            image = _read_photo(path)
            if image is None:
                errors.append(f"{path}: not a readable image")
                continue
            readable[i] = True
            face = choose_face(pipeline.detect(image), image.shape[1], image.shape[0])
            if face is None:
                continue
            faces = [face] + ([jitter_face(face, jitter, rng)] if jitter > 0 else [])
            records = pipeline.estimate(image, faces)
            estimates[i], lowers[i] = records[0].age_years, records[0].lower_years
            if jitter > 0:
                jittered[i] = records[1].age_years
    true_all = rows["real_age"].to_numpy(dtype=np.float64)
    found = readable & np.isfinite(estimates)
    if not found.any():
        raise AgetoolError(f"evaluate --detect: the detector found no face in any of the {int(readable.sum())} readable photos")
    uncertainty = estimates[found] - lowers[found]
    metrics = evaluate_predictions(
        true_all[found], estimates[found], buffer_years, policy_age_years, info.id_check_buffer_years,
        uncertainty if info.id_check_buffer_years is not None else None,
    )
    # Photos without a face: the till asks for ID, so they count as checked / not passed.
    true_read = true_all[readable]
    est_read = np.where(np.isfinite(estimates[readable]), estimates[readable], -np.inf)
    lower_read = np.where(np.isfinite(lowers[readable]), lowers[readable], -np.inf)
    counts = challenge25_rates(true_read, est_read, policy_age_years + buffer_years)
    at_buffer = _rates(true_read, est_read, policy_age_years, buffer_years)
    values = metrics.model_dump()
    values.update(
        minors_passed_rate=at_buffer.minors_passed_rate,
        adults_checked_rate=at_buffer.adults_checked_rate,
        n_minors=counts["n_minors"],
        n_adults_25_plus=counts["n_adults_25_plus"],
        rates_at_metadata_buffer=(
            _rates(true_read, lower_read, policy_age_years, info.id_check_buffer_years)
            if info.id_check_buffer_years is not None else None
        ),
    )
    report = DetectEvaluationReport(
        **values,
        model=info,
        n_skipped=len(errors),
        skipped=errors[:100],
        detector=pipeline.detector.source,
        n_no_face=int((readable & ~found).sum()),
    )
    if jitter > 0:
        jittered_mae = float(np.abs(jittered[found] - true_all[found]).mean())
        report.jitter_fraction = jitter
        report.jitter_seed = seed
        report.jittered_mae = round(jittered_mae, 4)
        report.jitter_mae_shift_years = round(jittered_mae - metrics.mae, 4)
        report.jitter_mean_abs_estimate_shift_years = round(float(np.abs(jittered[found] - estimates[found]).mean()), 4)
    if keep_predictions:
        kept = rows[found]
        report.predictions = [
            PredictionRow(dataset=str(d), file_name=str(f), real_age=float(a), estimated_age=round(float(e), 3))
            for d, f, a, e in zip(
                kept.get("dataset", pd.Series([""] * len(kept))), kept.get("file_name", kept["path"]),
                kept["real_age"], estimates[found],
            )
        ]
    report.wall_time_s = round(time.monotonic() - started, 2)
    return report


def default_model_or_error() -> Path:
    from agetool.paths import ENV_MODEL, default_model_path

    path = default_model_path()
    if not path.is_file():
        raise AgetoolError(
            f"default model {path}: not found (none ships yet); pass --model FILE.onnx|FILE.keras or set {ENV_MODEL}"
        )
    return path


def report_table(report: EvaluationReport):
    """A rich renderable: headline numbers and the per-band table."""
    from rich.console import Group
    from rich.table import Table

    def fmt(value: float | None, pct: bool = False) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if pct else f"{value:.2f}"

    head = Table(title=f"{Path(report.model.model_path).name} on {report.n} faces", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("MAE (years)", fmt(report.mae))
    head.add_row("RMSE (years)", fmt(report.rmse))
    head.add_row("mean bias (years)", fmt(report.mean_bias))
    head.add_row(f"minors passed at {report.threshold_years:g}", fmt(report.minors_passed_rate, pct=True))
    head.add_row(f"adults 25+ checked at {report.threshold_years:g}", fmt(report.adults_checked_rate, pct=True))
    if report.rates_at_metadata_buffer is not None:
        at = report.rates_at_metadata_buffer
        rule = f"daemon rule: estimate - {report.metadata_uncertainty_years or 0:g} >= {at.threshold_years:g}"
        head.add_row(f"minors passed ({rule})", fmt(at.minors_passed_rate, pct=True))
        head.add_row(f"adults 25+ checked ({rule})", fmt(at.adults_checked_rate, pct=True))
    head.add_row("skipped", str(report.n_skipped))
    if isinstance(report, DetectEvaluationReport):
        head.add_row("photos with no face found (ID required)", str(report.n_no_face))
        if report.jitter_fraction is not None:
            head.add_row(f"MAE with jitter {report.jitter_fraction:g} (shift)",
                         f"{fmt(report.jittered_mae)} ({report.jitter_mae_shift_years:+.2f})")
    bands = Table(title="by age band", show_header=True)
    for column in ("band", "n", "MAE", "bias"):
        bands.add_column(column, justify="right")
    for name in BAND_NAMES:
        bands.add_row(name, str(report.count_by_band[name]), fmt(report.mae_by_band[name]), fmt(report.bias_by_band[name]))
    return Group(head, bands)
