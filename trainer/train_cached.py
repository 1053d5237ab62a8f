"""Fine-tune the top of a pretrained backbone on cached features: the CPU way to train on 30,000+
faces.

The frozen lower part of the network runs once per face and view (clean, and augmented views
from `TillAugment`); its feature maps are cached on disk as float16 in the run folder. Each epoch
then trains only the upper blocks (from `trainable_from`) and the head, picking one cached view
per face: on a 2-core CPU that is ~100x cheaper than end-to-end epochs. The cache and the run
state live outside the work tree and survive a kill; `--resume` continues the cache or the fit.

The saved model is the whole network (`image` -> age_years [, age_std_years]), exactly as
`train` saves it, so export and runtime do not know how it was trained."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from agetool.errors import AgetoolError

if TYPE_CHECKING:
    from agetool.trainer.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
TOP_BEST = "top_best.weights.h5"
TOP_LAST = "top_last.weights.h5"
CACHE_BATCH = 64


def split_network(model, trainable_from: str):
    """(bottom, top) sharing the full model's layers: bottom = image -> feature map before
    `trainable_from`; top = that feature map -> the model's outputs (and the age distribution)."""
    import keras

    from agetool.trainer.model import DISTRIBUTION_NAME, backbone_of

    backbone = backbone_of(model)
    names = [layer.name for layer in backbone.layers]
    if trainable_from not in names:
        raise AgetoolError(f"--trainable-from {trainable_from}: no such layer in {backbone.name}")
    cut = names.index(trainable_from)
    if any(len(layer._inbound_nodes) > 1 for layer in backbone.layers[cut:]):  # noqa: SLF001
        raise AgetoolError(f"--trainable-from {trainable_from}: only chain backbones (MobileNet-v1) can be split")
    preprocess = model.get_layer("backbone_preprocess")
    image = keras.Input(model.input_shape[1:], name="image")
    feature_model = keras.Model(backbone.input, backbone.layers[cut - 1].output)
    bottom = keras.Model(image, feature_model(preprocess(image), training=False), name="bottom")
    feat_in = keras.Input(backbone.layers[cut - 1].output.shape[1:], name="features")
    x = feat_in
    for layer in backbone.layers[cut:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # folded / pretrained statistics stay in inference mode
            x = layer(x, training=False)
        else:
            x = layer(x)
    for name in ("gap", "age_features", "head_dropout", "age_logits", DISTRIBUTION_NAME):
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        x = layer(x)
    top = keras.Model(feat_in, x, name="top")
    return bottom, top


def cache_features(
    bottom,
    paths: list[str],
    out_path: Path,
    input_size: int,
    augment=None,
    seed: int = 0,
    view: int = 0,
) -> np.memmap:
    """Feature maps of every image (float16, memmapped) for one view; resumes a partial cache."""
    from agetool.trainer.augment import view_rng
    from agetool.trainer.data import load_face_rgb
    from agetool.contract import preprocess_rgb

    shape = (len(paths), *bottom.output_shape[1:])
    done_path = out_path.with_suffix(".done")
    done = int(done_path.read_text()) if done_path.is_file() and out_path.is_file() else 0
    mode = "r+" if done and out_path.is_file() else "w+"
    store = np.lib.format.open_memmap(out_path, mode=mode, dtype=np.float16, shape=shape)
    if done >= len(paths):
        return store
    started = time.perf_counter()
    for start in range(done, len(paths), CACHE_BATCH):
        stop = min(len(paths), start + CACHE_BATCH)
        batch = np.zeros((stop - start, input_size, input_size, 3), dtype=np.float32)
        for i in range(start, stop):
            rgb = np.clip(np.rint(preprocess_rgb(load_face_rgb(paths[i]), input_size)), 0, 255).astype(np.uint8)
            if augment is not None:
                rgb = augment(rgb, view_rng(seed, i, view))
            batch[i - start] = rgb
        store[start:stop] = bottom.predict_on_batch(batch).astype(np.float16)
        if (stop // CACHE_BATCH) % 20 == 0 or stop == len(paths):
            store.flush()
            done_path.write_text(str(stop))
            rate = (stop - done) / (time.perf_counter() - started)
            log.info("%s: %d/%d faces cached (%.0f faces/s)", out_path.name, stop, len(paths), rate)
    return store


class FeatureBatches:
    """Keras PyDataset over cached views: each epoch draws one view per face."""

    def __new__(cls, *args, **kwargs):
        import keras

        class _Batches(keras.utils.PyDataset):
            def __init__(self, views, ages, batch_size, shuffle, seed):
                super().__init__()
                self.views, self.ages = views, ages.astype(np.float32)
                self.batch_size, self.shuffle = batch_size, shuffle
                self.rng = np.random.default_rng(seed)
                self.on_epoch_end()

            def __len__(self):
                return int(np.ceil(len(self.ages) / self.batch_size))

            def on_epoch_end(self):
                n = len(self.ages)
                self.order = self.rng.permutation(n) if self.shuffle else np.arange(n)
                self.view_of = self.rng.integers(0, len(self.views), n) if self.shuffle else np.zeros(n, int)

            def __getitem__(self, index):
                idx = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
                x = np.empty((len(idx), *self.views[0].shape[1:]), dtype=np.float32)
                for view in np.unique(self.view_of[idx]):
                    members = self.view_of[idx] == view
                    x[members] = self.views[view][idx[members]]
                return x, self.ages[idx]

        return _Batches(*args, **kwargs)


def age_class_loss(y_true, probs):
    """Cross-entropy of the age distribution against the true age's one-year bin."""
    import keras
    from keras import ops

    from agetool.trainer.model import FIRST_BIN_YEARS, NUM_AGE_BINS

    bins = ops.clip(ops.round(ops.reshape(y_true, (-1,)) - FIRST_BIN_YEARS), 0, NUM_AGE_BINS - 1)
    return keras.losses.sparse_categorical_crossentropy(ops.cast(bins, "int32"), probs)


def expected_age_mae(y_true, probs):
    from keras import ops

    from agetool.trainer.model import FIRST_BIN_YEARS

    ages = FIRST_BIN_YEARS + ops.cast(ops.arange(ops.shape(probs)[-1]), probs.dtype)
    expected = ops.sum(probs * ages, axis=-1)
    return ops.mean(ops.abs(expected - ops.reshape(ops.cast(y_true, probs.dtype), (-1,))))


def distribution_predictions(top, features: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(expected age, std) for cached features."""
    from agetool.trainer.model import FIRST_BIN_YEARS

    probs = top.predict(features, batch_size=batch_size, verbose=0)
    ages = FIRST_BIN_YEARS + np.arange(probs.shape[1])
    mean = probs @ ages
    std = np.sqrt(np.maximum((probs * (ages[None, :] - mean[:, None]) ** 2).sum(axis=1), 1e-6))
    return mean, std


def fit_top(
    top,
    train_views: list[np.ndarray],
    y_train: np.ndarray,
    val_features: np.ndarray,
    y_val: np.ndarray,
    run_dir: Path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    resume: bool,
    early_stop_patience: int = 6,
    max_train_seconds: float | None = None,
) -> tuple[float, int]:
    """Train the top on cached views; best weights (by val MAE) in run_dir/top_best.weights.h5.
    Returns (best val MAE, epochs run)."""
    import keras

    state_path = run_dir / "top_state.json"
    state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
    if state and (run_dir / TOP_LAST).is_file():
        top.load_weights(run_dir / TOP_LAST)
        log.info("resuming the top fit at epoch %d (best val MAE %.3f)", state["epoch"], state["best"])
    lr = float(state.get("learning_rate", learning_rate))
    top.compile(optimizer=keras.optimizers.Adam(lr), loss=age_class_loss, metrics=[expected_age_mae])
    best, epoch = float(state.get("best", np.inf)), int(state.get("epoch", 0))
    stale = int(state.get("stale", 0))
    train_data = FeatureBatches(train_views, y_train, batch_size, True, seed + epoch)
    started = time.monotonic()
    if not state:
        # A pretrained head (--head-init) may already beat what the first epochs reach.
        best = float(np.abs(distribution_predictions(top, val_features)[0] - y_val).mean())
        top.save_weights(run_dir / TOP_BEST)
        log.info("top before training: val MAE %.3f", best)
    while epoch < epochs and stale < early_stop_patience:
        history = top.fit(train_data, epochs=1, verbose=0)
        val_mae = float(np.abs(distribution_predictions(top, val_features)[0] - y_val).mean())
        epoch += 1
        if val_mae < best - 1e-3:
            best, stale = val_mae, 0
            top.save_weights(run_dir / TOP_BEST)
        else:
            stale += 1
            if stale % 2 == 0:  # LR on plateau
                lr *= 0.5
                top.optimizer.learning_rate.assign(lr)
        top.save_weights(run_dir / TOP_LAST)
        row = {"epoch": epoch, "loss": round(float(history.history["loss"][-1]), 4), "val_mae": round(val_mae, 4),
               "learning_rate": lr, "best": round(best, 4)}
        log.info("top epoch %d: loss %.4f, val MAE %.3f (best %.3f), lr %.2g", epoch, row["loss"], val_mae, best, lr)
        with open(run_dir / "log.csv", "a", encoding="utf-8") as fh:
            fh.write(",".join(str(v) for v in row.values()) + "\n")
        state_path.write_text(json.dumps({"epoch": epoch, "best": best, "stale": stale, "learning_rate": lr}))
        if max_train_seconds and time.monotonic() - started >= max_train_seconds:
            log.info("time budget spent after top epoch %d: stopping", epoch)
            break
    if (run_dir / TOP_BEST).is_file():
        top.load_weights(run_dir / TOP_BEST)
    return best, epoch


def interval_scale(y_true: np.ndarray, mean: np.ndarray, std: np.ndarray, level: float) -> float:
    """The factor k so that |age - estimate| <= k * std holds for `level` of the faces (a split
    conformal quantile on validation data, with its finite-sample correction)."""
    ratios = np.sort(np.abs(np.asarray(y_true) - mean) / np.maximum(std, 1e-6))
    rank = min(len(ratios) - 1, int(np.ceil((len(ratios) + 1) * level)) - 1)
    return float(ratios[rank])


def crop_of_folders(folders: list[Path]) -> dict:
    """The crop the data folders were made with (align.json from `agetool data align`), as card
    keys; folders without it are box crops."""
    from agetool.trainer.align import ALIGN_INFO_FILE

    infos = []
    for folder in folders:
        path = Path(folder) / ALIGN_INFO_FILE
        infos.append(json.loads(path.read_text()) if path.is_file() else None)
    if all(info is None for info in infos):
        return {}
    if any(info is None for info in infos) or len({(i["size"], i["coverage"]) for i in infos}) > 1:
        raise AgetoolError("data folders: mix aligned and unaligned (or differently aligned) folders; align them all alike")
    return {"crop": infos[0]["crop"], "align_coverage": infos[0]["coverage"]}


def predictions_frame(rows: pd.DataFrame, mean: np.ndarray, std: np.ndarray) -> pd.DataFrame:
    out = rows[["dataset", "file_name", "real_age"]].copy()
    out["age_years"], out["age_std_years"] = mean, std
    return out


def train_on_cached_features(config: "TrainConfig") -> "TrainResult":
    """`agetool train --cache-features`: cache the frozen bottom's features (clean + augmented
    views), fit the top, save the whole model + card (with the crop, the interval calibration and
    validation predictions)."""
    import keras

    from agetool.trainer import data as data_mod
    from agetool.trainer.augment import TillAugment
    from agetool.trainer.model import STD_OUTPUT_NAME, build_model
    from agetool.trainer.train import (
        TrainResult, _atomic_save, _write_json, card_basics, constant_baseline_mae, machine_description,
        split_for_training,
    )
    from agetool.paths import runs_dir

    started = time.monotonic()
    if config.head != "distribution":
        raise AgetoolError("--cache-features trains the distribution head: add --head distribution")
    crop = crop_of_folders(config.data_dirs)
    run_dir = config.run_dir or runs_dir() / config.out_dir.resolve().name
    run_dir.mkdir(parents=True, exist_ok=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    if not config.resume and (run_dir / "top_state.json").is_file():
        raise AgetoolError(f"{run_dir}: a run is already there; pass --resume to continue it, or --run-dir for a new one")
    keras.utils.set_random_seed(config.seed)
    rows, train_rows, val_rows = split_for_training(config, run_dir)

    model = build_model(config.backbone, config.input_size, config.weights, head="distribution",
                        head_init=config.head_init, dropout=0.2)
    bottom, top = split_network(model, config.trainable_from)
    features = run_dir / FEATURES_DIR
    features.mkdir(exist_ok=True)
    # The cache is keyed by what went into it: another split, size or cut needs a new one.
    key = {"n_train": len(train_rows), "n_val": len(val_rows), "input_size": config.input_size,
           "trainable_from": config.trainable_from, "weights": str(config.weights), "seed": config.seed,
           "first_train": str(train_rows["path"].iloc[0]), "last_val": str(val_rows["path"].iloc[-1])}
    key_path = features / "cache_key.json"
    if key_path.is_file() and json.loads(key_path.read_text()) != key:
        raise AgetoolError(f"{features}: a feature cache of other data is there; use another --run-dir")
    key_path.write_text(json.dumps(key))
    augment = TillAugment()
    log.info("caching features of %d train faces x %d views and %d val faces", len(train_rows), config.views, len(val_rows))
    train_paths = list(train_rows["path"])
    views = [
        cache_features(bottom, train_paths, features / f"train_v{v}.npy", config.input_size,
                       augment if v else None, config.seed, v)
        for v in range(config.views)
    ]
    val_features = cache_features(bottom, list(val_rows["path"]), features / "val_v0.npy", config.input_size)
    y_train = train_rows["real_age"].to_numpy(np.float32)
    y_val = val_rows["real_age"].to_numpy(np.float32)
    best, epochs_run = fit_top(top, views, y_train, np.asarray(val_features, dtype=np.float32), y_val, run_dir,
                               config.epochs, config.batch_size, config.learning_rate, config.seed, config.resume,
                               config.early_stop_patience, config.max_train_seconds)
    mean, std = distribution_predictions(top, np.asarray(val_features, dtype=np.float32))
    level = 0.9
    scale = interval_scale(y_val, mean, std, level)
    predictions_frame(val_rows, mean, std).to_csv(config.out_dir / "val_predictions.csv", index=False)

    model_path = config.out_dir / "model.keras"
    _atomic_save(model, model_path)
    split_path = config.out_dir / "split.csv"
    data_mod.write_split(rows, split_path)
    card = {
        **card_basics(config, split_path, len(train_rows), len(val_rows)),
        "head": "distribution",
        "head_init": config.head_init,
        "trainable_from": config.trainable_from,
        "views": config.views,
        "trained": f"top from {config.trainable_from} on cached features, {config.views} views "
                   f"(1 clean + {config.views - 1} TillAugment)",
        "epochs_run": epochs_run,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "loss": "cross-entropy over one-year bins",
        "best_val_mae": round(best, 4),
        "baseline_val_mae": round(constant_baseline_mae(y_train, y_val), 3),
        "std_output_name": STD_OUTPUT_NAME,
        "interval_scale": round(scale, 4),
        "interval_level": level,
        **crop,
        "wall_time_s": round(time.monotonic() - started, 1),
        "machine": machine_description(),
        "run_dir": str(run_dir),
    }
    card_path = config.out_dir / "model_card.json"
    _write_json(card_path, card)
    result = TrainResult(model_path=model_path, card_path=card_path, split_path=split_path,
                         best_val_mae=best, epochs_run=epochs_run, wall_time_s=card["wall_time_s"],
                         baseline_val_mae=card["baseline_val_mae"])
    if result.learned_nothing:
        log.warning("best val MAE %.2f is no better than answering the median training age to everyone (%.2f): "
                    "this model has learned nothing useful", result.best_val_mae, result.baseline_val_mae)
    return result
