"""The seeds' four functions, kept working as a thin API over the trainer.

    train_data = load_train("data/utkface")
    test_data = load_test("data/utkface")
    model = create_model((224, 224, 3))
    model = train_model(model, train_data, test_data, epochs=10)

`load_train` / `load_test` read a seeds'-layout folder (labels.csv + final_files/), split it
deterministically (seeded, stratified by age band: the same split `agetool data split` writes)
and return the train / val part as batches Keras can fit on: float32 RGB 0..255 images at
`input_size` px and float32 ages of shape (N, 1). Faces are decoded per batch, so the whole set
never sits in memory; unreadable files are dropped from their batch and logged.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from agetool.contract import DEFAULT_INPUT_SIZE
from agetool.errors import AgetoolError
from agetool.paths import ENV_IMAGENET_WEIGHTS
from agetool.trainer.data import DEFAULT_SEED, load_faces, make_split, read_usable

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


class FaceBatches(keras.utils.PyDataset):
    """Batches of (images float32 (B, S, S, 3) RGB 0..255, ages float32 (B, 1)) from data rows."""

    def __init__(
        self,
        rows: pd.DataFrame,
        input_size: int = DEFAULT_INPUT_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        shuffle: bool = False,
        flip: bool = False,
        seed: int = DEFAULT_SEED,
        decode_workers: int = 4,
    ) -> None:
        super().__init__()
        if rows.empty:
            raise AgetoolError("seed API: no image in this part of the split")
        if batch_size < 1:
            raise AgetoolError(f"batch_size {batch_size}: expected at least 1")
        self.paths = rows["path"].to_numpy(dtype=object)
        self.ages = rows["real_age"].to_numpy(dtype=np.float32)
        self.input_size = input_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.flip = flip
        self.decode_workers = decode_workers
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(self.paths)) if shuffle else np.arange(len(self.paths))

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picked = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images, ok, errors = load_faces(list(self.paths[picked]), self.input_size, workers=self.decode_workers)
        for error in errors:
            log.warning("skipped: %s", error)
        if len(images) == 0:
            raise AgetoolError(f"seed API: batch {index} has no readable image ({errors[0]})")
        batch = images.astype(np.float32)
        if self.flip:
            mirror = self._rng.random(len(batch)) < 0.5
            batch[mirror] = batch[mirror][:, :, ::-1, :]
        return batch, self.ages[picked][ok].reshape(-1, 1)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.paths))


def _subset(
    path: str | Path, subset: str, seed: int, val_fraction: float, test_fraction: float, max_images: int | None
) -> pd.DataFrame:
    rows = make_split(read_usable([path]), seed, val_fraction, test_fraction)
    part = rows[rows["split"] == subset]
    if max_images is not None and len(part) > max_images:
        part = part.sample(n=max_images, random_state=seed).sort_index()
    return part.reset_index(drop=True)


def load_train(
    path: str | Path,
    input_size: int = DEFAULT_INPUT_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    augment: bool = True,
    max_images: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> FaceBatches:
    """The training part of a seeds'-layout folder, shuffled each epoch, random horizontal flips."""
    rows = _subset(path, "train", seed, val_fraction, test_fraction, max_images)
    return FaceBatches(rows, input_size, batch_size, shuffle=True, flip=augment, seed=seed)


def load_test(
    path: str | Path,
    input_size: int = DEFAULT_INPUT_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    max_images: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> FaceBatches:
    """The validation part of the same split (what the seeds validated on), in a fixed order."""
    rows = _subset(path, "val", seed, val_fraction, test_fraction, max_images)
    return FaceBatches(rows, input_size, batch_size, shuffle=False, flip=False, seed=seed)


def create_model(
    input_shape: tuple[int, int, int] = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE, 3),
    backbone: str = "resnet50",
    learning_rate: float = 1e-4,
    loss: str = "mae",
) -> keras.Model:
    """A compiled age model. ImageNet weights only when $AGETOOL_IMAGENET_WEIGHTS names the
    local notop file (nothing is downloaded); otherwise from scratch."""
    from agetool.trainer.model import build_model, compile_model

    if len(input_shape) != 3 or input_shape[0] != input_shape[1] or input_shape[2] != 3:
        raise AgetoolError(f"input_shape {tuple(input_shape)}: expected (size, size, 3)")
    weights = "imagenet" if os.environ.get(ENV_IMAGENET_WEIGHTS) else "none"
    model = build_model(backbone, int(input_shape[0]), weights)
    return compile_model(model, learning_rate=learning_rate, loss=loss)


def train_model(
    model: keras.Model,
    train_data,
    test_data,
    batch_size: int | None = None,
    epochs: int = 10,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
) -> keras.Model:
    """Fit with the trainer's callbacks (early stop on val MAE, LR on plateau); returns the model."""
    from agetool.trainer.train import fit_datasets

    # Batched data (our FaceBatches, a tf.data.Dataset) already fixes the batch size; Keras
    # refuses a second one.
    batched = not isinstance(train_data, np.ndarray)
    fit_datasets(
        model,
        train_data,
        test_data,
        epochs=epochs,
        batch_size=None if batched else batch_size,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
    )
    return model
