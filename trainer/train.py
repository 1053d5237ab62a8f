"""Fit an age model: data folders -> split -> decoded faces -> Keras fit -> model.keras + card.

Backend-agnostic Keras 3: TensorFlow here (a tf.data pipeline over the decoded faces), JAX or
TensorFlow on a GPU box. Run state (last checkpoint, best model, log, state.json) lives in a run
folder outside the work tree, so `--resume` continues after a kill."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from agetool import __version__
from agetool.errors import AgetoolError
from agetool.paths import runs_dir
from agetool.trainer import data as data_mod
from agetool.trainer.backbones import BACKBONES, MIN_INPUT_SIZE

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dirs: list[Path] = Field(min_length=1, description="Data folders, read and split as one set.")
    out_dir: Path = Field(description="Where model.keras, model_card.json and split.csv go.")
    backbone: str = "resnet50"
    weights: str = Field("none", description="imagenet | none | path to a notop .h5 file")
    input_size: int = Field(224, ge=32, le=640)
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    loss: Literal["mse", "mae", "huber"] = "mae"
    split_file: Path | None = Field(None, description="Reuse this split instead of making one.")
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: bool = True
    resume: bool = False
    run_dir: Path | None = Field(None, description="Checkpoints and logs; default ~/.cache/agetool/runs/<out name>.")
    max_images: int | None = Field(None, ge=2, description="Use at most this many training images (quick runs).")
    head_epochs: int = Field(3, ge=0, description="Frozen-backbone epochs before fine-tuning (pretrained weights only).")
    early_stop_patience: int = Field(10, ge=1)
    reduce_lr_patience: int = Field(4, ge=1)
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    checkpoint_every: int = Field(1, ge=1, description="Save the resumable last.keras every N epochs.")
    max_train_seconds: float | None = Field(None, gt=0, description="Stop after the epoch that crosses this wall time.")
    workers: int = Field(4, ge=1, le=64)
    verbose: int = Field(2, ge=0, le=2)
    head: Literal["regression", "distribution"] = Field(
        "regression", description="One age output, or a distribution over one-year bins (+ age_std_years).")
    head_init: str | None = Field(None, description=".npz head to start from (the FaceRes age head).")
    cache_features: bool = Field(False, description="Freeze below trainable_from, cache its features, fit the top.")
    trainable_from: str = Field("conv_dw_13", description="First backbone layer trained with --cache-features.")
    views: int = Field(2, ge=1, le=16, description="Cached views per training face (1 clean + augmented).")

    # Checked here, before Keras and TensorFlow load, so a typo fails in a fraction of a second.
    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"{value!r} is not one of {', '.join(BACKBONES)}")
        return value

    @field_validator("weights", "head_init")
    @classmethod
    def _weights_file_exists(cls, value: str | None) -> str | None:
        if value is not None and value not in ("imagenet", "none") and not Path(value).is_file():
            raise ValueError(f"{value}: file not found (expected imagenet, none or a weights file)")
        return value

    @field_validator("input_size")
    @classmethod
    def _big_enough_for_backbone(cls, value: int, info: ValidationInfo) -> int:
        backbone = info.data.get("backbone")
        if backbone in MIN_INPUT_SIZE and value < MIN_INPUT_SIZE[backbone]:
            raise ValueError(f"{backbone} needs at least {MIN_INPUT_SIZE[backbone]} px, got {value}")
        return value


# A model whose val MAE is within this share of the constant guess's has learned nothing useful.
NO_BETTER_MARGIN = 0.05


class TrainResult(BaseModel):
    model_path: Path
    card_path: Path
    split_path: Path
    best_val_mae: float
    epochs_run: int
    wall_time_s: float
    baseline_val_mae: float = Field(description="Val MAE of answering one age (the training median) to everyone.")

    @property
    def learned_nothing(self) -> bool:
        """Not clearly better than the constant guess (or no finite val MAE at all): a model that
        tells every shopper about the same age, so the daemon would ask for ID across the board.
        A margin, because such a model's constant is the head's bias, the training median, and
        lands a hair under the baseline by chance (measured: 19.417 against 19.420)."""
        if not np.isfinite(self.best_val_mae):
            return True
        return self.best_val_mae > (1.0 - NO_BETTER_MARGIN) * self.baseline_val_mae


def constant_baseline_mae(train_ages: np.ndarray, val_ages: np.ndarray) -> float:
    """The validation MAE of answering the median training age for every face: the best any
    constant does under MAE (a bit better than the mean), so the bar a model must clear."""
    return float(np.mean(np.abs(val_ages - float(np.median(train_ages)))))


def card_basics(config: TrainConfig, split_path: Path, n_train: int, n_val: int) -> dict[str, Any]:
    """What every model card says first: version, backbone, data, split (both trainers)."""
    return {
        "agetool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "backbone": config.backbone,
        "weights": config.weights,
        "input_size": config.input_size,
        "training_data": ", ".join(Path(d).name for d in config.data_dirs),
        "data_dirs": [str(d) for d in config.data_dirs],
        "n_train": int(n_train),
        "n_val": int(n_val),
        "split_file": str(split_path),
        "seed": config.seed,
    }


# --- Environment -------------------------------------------------------------------------------
def accelerators() -> list[str]:
    """GPUs the active Keras backend sees (empty on CPU)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def machine_description() -> dict[str, Any]:
    import keras

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": accelerators(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }


# --- Data --------------------------------------------------------------------------------------
def prepare_split(config: TrainConfig, run_dir: Path) -> pd.DataFrame:
    """Rows with a split column: from --split, else the run's own split (resume), else a new one."""
    rows = data_mod.read_usable(config.data_dirs)
    run_split = run_dir / "split.csv"
    if config.split_file:
        rows = data_mod.apply_split(rows, config.split_file)
    elif config.resume and run_split.is_file():
        rows = data_mod.apply_split(rows, run_split)
    else:
        rows = data_mod.make_split(rows, config.seed, config.val_fraction, config.test_fraction)
    data_mod.write_split(rows, run_split)
    return rows


def split_for_training(config: TrainConfig, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(all rows with their split, the training rows, the validation rows), each subsampled to
    --max-images (validation to a quarter of it); both trainers start from this."""
    rows = prepare_split(config, run_dir)
    train_rows = _subsample(rows[rows["split"] == "train"], config.max_images, config.seed)
    val_limit = None if config.max_images is None else max(2, config.max_images // 4)
    val_rows = _subsample(rows[rows["split"] == "val"], val_limit, config.seed)
    if train_rows.empty or val_rows.empty:
        raise AgetoolError("data folders: the split left no training or no validation image")
    return rows, train_rows, val_rows


def _subsample(rows: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(rows) <= limit:
        return rows
    return rows.sample(n=limit, random_state=seed).sort_index()


def decode_split(rows: pd.DataFrame, input_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode once into memory (uint8); corrupt files are skipped and logged."""
    images, ok, errors = data_mod.load_faces(list(rows["path"]), input_size, workers=workers)
    for err in errors[:10]:
        log.warning("skipped: %s", err)
    ages = rows["real_age"].to_numpy(np.float32)[ok]
    if len(images) == 0:
        raise AgetoolError("training data: no readable image in this part of the split")
    return images, ages


def augmentation(seed: int, input_size: int):
    """Flips, shifts (up to 8 %), brightness and contrast; active in training only. Cheap on
    every backend (see RandomShift for why no affine layers)."""
    import keras
    from keras import layers

    from agetool.trainer.model import RandomShift

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            RandomShift(max(1, round(0.08 * input_size)), seed=seed + 1),
            layers.RandomBrightness(0.15, value_range=(0.0, 255.0), seed=seed + 4),
            layers.RandomContrast(0.2, value_range=(0.0, 255.0), seed=seed + 5),
        ],
        name="augment",
    )


def make_inputs(images: np.ndarray, ages: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """tf.data under TensorFlow (shuffle, batch, prefetch); plain arrays under other backends."""
    import keras

    if keras.backend.backend() != "tensorflow":
        # Plain arrays: Keras slices and prefetches them; float32 so every backend sees the
        # model's input dtype (memory is plentiful on the GPU boxes that run other backends).
        return {"x": images.astype(np.float32), "y": ages, "batch_size": batch_size, "shuffle": shuffle}
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, ages))
    if shuffle:
        ds = ds.shuffle(min(len(images), 20_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return {"x": ds.prefetch(tf.data.AUTOTUNE), "shuffle": False}


# --- Checkpoints and resume --------------------------------------------------------------------
def _atomic_save(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def _read_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise AgetoolError(f"{path}: unreadable run state; remove it to start afresh") from None


def _run_callbacks(
    run_dir: Path,
    inner_model,
    stage: str,
    best_so_far: float,
    wall_clock: tuple[float, float],
    config: TrainConfig,
):
    """Per-epoch: the inner age model as best.keras when val MAE improves; every
    `checkpoint_every` epochs the training model (with optimizer) as last.keras and state.json;
    stop once `max_train_seconds` of wall time are spent."""
    import keras

    class RunState(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = best_so_far

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            val_mae = float(logs.get("val_mae", np.inf))
            if val_mae < self.best:
                self.best = val_mae
                _atomic_save(inner_model, run_dir / BEST_CHECKPOINT)
                log.info("epoch %d: val MAE %.3f (best so far), saved %s", epoch + 1, val_mae, BEST_CHECKPOINT)
            wall_time_s = wall_clock[0] + time.monotonic() - wall_clock[1]
            if config.max_train_seconds and wall_time_s >= config.max_train_seconds:
                log.info("time budget of %.0f s spent after epoch %d: stopping", config.max_train_seconds, epoch + 1)
                self.model.stop_training = True
            elif (epoch + 1) % config.checkpoint_every:
                return
            _atomic_save(self.model, run_dir / LAST_CHECKPOINT)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            _write_json(
                run_dir / STATE_FILE,
                {"stage": stage, "epoch": epoch + 1, "best_val_mae": self.best, "learning_rate": lr,
                 "wall_time_s": wall_time_s,
                 "updated": datetime.now(timezone.utc).isoformat()},
            )

    return RunState()


def _fit_stage(
    config: TrainConfig,
    run_dir: Path,
    train_model,
    inner_model,
    train_inputs: dict,
    val_inputs: dict,
    stage: str,
    initial_epoch: int,
    epochs: int,
    best_so_far: float,
    wall_clock: tuple[float, float],
) -> tuple[int, float]:
    import keras

    state_cb = _run_callbacks(run_dir, inner_model, stage, best_so_far, wall_clock, config)
    # The log row is written before the run state, so a kill between them can repeat an epoch
    # after --resume but never leave one out of the log.
    callbacks = [
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_mae", factor=0.5, patience=config.reduce_lr_patience, min_lr=1e-6, mode="min"
        ),
        state_cb,
        keras.callbacks.EarlyStopping(monitor="val_mae", patience=config.early_stop_patience, mode="min"),
    ]
    val_data = (val_inputs["x"], val_inputs["y"]) if "y" in val_inputs else val_inputs["x"]
    fit_kwargs = dict(train_inputs)
    history = train_model.fit(
        **fit_kwargs,
        validation_data=val_data,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    return initial_epoch + len(history.history.get("loss", [])), state_cb.best


def fit_datasets(
    model,
    train_data,
    val_data,
    epochs: int = 10,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    callbacks: list | None = None,
    verbose: int = 2,
):
    """Low-level fit for the seeds' API: any data Keras accepts, best-val-MAE early stop + LR plateau."""
    import keras

    callbacks = list(callbacks or []) + [
        keras.callbacks.EarlyStopping(monitor="val_mae", patience=5, mode="min", restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_mae", factor=0.5, patience=3, mode="min"),
    ]
    return model.fit(
        train_data,
        validation_data=val_data,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        callbacks=callbacks,
        verbose=verbose,
    )


# --- The run -----------------------------------------------------------------------------------
def _training_model(inner_model, config: TrainConfig):
    import keras

    inputs = keras.Input(inner_model.input_shape[1:], name="image")
    x = augmentation(config.seed, config.input_size)(inputs) if config.augment else inputs
    return keras.Model(inputs, inner_model(x), name="age_training")


def _float32_copy(model, config: TrainConfig):
    """Mixed-precision training leaves float16/bfloat16 policies in the layers; the saved model
    must run in float32 on a CPU till, so rebuild it in float32 and copy the weights."""
    import keras

    from agetool.trainer.model import build_model

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    keras.config.set_dtype_policy("float32")
    clean = build_model(config.backbone, config.input_size, "none")
    clean.set_weights(model.get_weights())
    return clean


def distribution_scope(gpus: list[str]):
    """tf.distribute.MirroredStrategy's scope with several GPUs under TensorFlow, else a no-op.

    (Under JAX, one GPU is used; keras.distribution.DataParallel would be the equivalent.)"""
    import contextlib

    import keras

    if keras.backend.backend() == "tensorflow" and len(gpus) > 1:
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        log.info("training on %d GPUs with MirroredStrategy", strategy.num_replicas_in_sync)
        return strategy.scope()
    return contextlib.nullcontext()


def _use_mixed_precision(config: TrainConfig, gpus: list[str]) -> bool:
    return config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) an age model and write model.keras, model_card.json and split.csv."""
    if config.cache_features:
        from agetool.trainer.train_cached import train_on_cached_features

        return train_on_cached_features(config)
    if config.head == "distribution":
        raise AgetoolError("--head distribution trains on cached features here: add --cache-features")
    started = time.monotonic()
    import keras

    from agetool.trainer.model import backbone_of, build_model, compile_model, load_keras_model
    from agetool.trainer.train_cached import crop_of_folders

    crop = crop_of_folders(config.data_dirs)  # before any work: mixed folders are refused

    run_dir = config.run_dir or runs_dir() / config.out_dir.resolve().name
    run_dir.mkdir(parents=True, exist_ok=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(run_dir) if config.resume else {}
    if not config.resume and (run_dir / STATE_FILE).is_file():
        raise AgetoolError(
            f"{run_dir}: a run is already there; pass --resume to continue it, or --run-dir for a new one"
        )
    keras.utils.set_random_seed(config.seed)
    gpus = accelerators()
    mixed = _use_mixed_precision(config, gpus)
    if mixed:
        keras.config.set_dtype_policy("mixed_bfloat16" if keras.backend.backend() == "jax" else "mixed_float16")
    log.info("backend %s, GPUs %s, mixed precision %s, run dir %s", keras.backend.backend(), gpus or "none", mixed, run_dir)

    rows, train_rows, val_rows = split_for_training(config, run_dir)
    log.info("decoding %d train and %d val faces at %d px", len(train_rows), len(val_rows), config.input_size)
    x_train, y_train = decode_split(train_rows, config.input_size, config.workers)
    x_val, y_val = decode_split(val_rows, config.input_size, config.workers)
    train_inputs = make_inputs(x_train, y_train, config.batch_size, True, config.seed)
    val_inputs = make_inputs(x_val, y_val, config.batch_size, False, config.seed)

    # One replica per GPU when TensorFlow sees several; a no-op scope otherwise.
    with distribution_scope(gpus):
        last = run_dir / LAST_CHECKPOINT
        if config.resume and state and last.is_file():
            train_model = load_keras_model(last, compile=True)
            inner = train_model.get_layer("age_model")
            log.info("resuming %s at epoch %d (best val MAE %.3f)", run_dir, state["epoch"], state["best_val_mae"])
        else:
            inner = build_model(config.backbone, config.input_size, config.weights,
                                head_bias_years=float(np.median(y_train)), head=config.head,
                                head_init=config.head_init)
            train_model = _training_model(inner, config)
            state = {}
        epoch = int(state.get("epoch", 0))
        best = float(state.get("best_val_mae", np.inf))
        pretrained = config.weights != "none"
        # (wall time of earlier sessions of this run, when this session started)
        wall_clock = (float(state.get("wall_time_s", 0.0)), started)

        if pretrained and config.head_epochs and state.get("stage", "head") == "head" and epoch < config.head_epochs:
            backbone = backbone_of(inner)
            backbone.trainable = False
            compile_model(train_model, config.learning_rate * 10, config.loss)
            epoch, best = _fit_stage(config, run_dir, train_model, inner, train_inputs, val_inputs,
                                     "head", epoch, config.head_epochs, best, wall_clock)
            backbone.trainable = True
            compile_model(train_model, config.learning_rate, config.loss)
        elif not (config.resume and state):
            compile_model(train_model, config.learning_rate, config.loss)
        if epoch < config.epochs:
            epoch, best = _fit_stage(config, run_dir, train_model, inner, train_inputs, val_inputs,
                                     "fine-tune", epoch, config.epochs, best, wall_clock)

    baseline = constant_baseline_mae(y_train, y_val)
    best_path = run_dir / BEST_CHECKPOINT
    final = load_keras_model(best_path) if best_path.is_file() else inner
    final = _float32_copy(final, config)
    model_path = config.out_dir / "model.keras"
    _atomic_save(final, model_path)
    split_path = config.out_dir / "split.csv"
    data_mod.write_split(rows, split_path)
    wall_time_s = time.monotonic() - started + float(state.get("wall_time_s", 0.0))
    card = {
        **card_basics(config, split_path, len(x_train), len(x_val)),
        "epochs_run": epoch,
        "epochs_planned": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "loss": config.loss,
        "augment": config.augment,
        "mixed_precision": mixed,
        "best_val_mae": best if np.isfinite(best) else None,
        "baseline_val_mae": round(baseline, 3),
        "wall_time_s": round(wall_time_s, 1),
        "machine": machine_description(),
        "run_dir": str(run_dir),
        # aligned data folders (agetool data align) -> crop aligned_v1 in the exported metadata
        **crop,
    }
    card_path = config.out_dir / "model_card.json"
    _write_json(card_path, card)
    result = TrainResult(
        model_path=model_path,
        card_path=card_path,
        split_path=split_path,
        best_val_mae=best if np.isfinite(best) else float("nan"),
        epochs_run=epoch,
        wall_time_s=round(wall_time_s, 1),
        baseline_val_mae=baseline,
    )
    if result.learned_nothing:
        log.warning(
            "best val MAE %.2f is no better than answering the median training age to everyone (%.2f): "
            "this model has learned nothing useful; train longer, on more images or with a higher --lr",
            result.best_val_mae, baseline,
        )
    return result
