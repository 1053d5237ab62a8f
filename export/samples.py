"""Real face crops for INT8 calibration (training side of the split) and for the ΔMAE check
(validation side), read with the trainer's data module so both see the same split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from agetool.errors import AgetoolError
from agetool.trainer.data import DEFAULT_SEED, apply_split, load_faces, make_split, read_datasets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceSample:
    """Face crops as float32 NHWC RGB 0..255 and their real ages (may be empty)."""

    images: np.ndarray
    ages_years: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)


def split_rows(folders: list[Path], split_file: Path | None, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Rows of data folders (one set) with a `split` column: from the split file when given,
    else the folder's own split (APPA-REAL), else the trainer's default seeded split."""
    folder = ", ".join(str(f) for f in folders)
    df, problems = read_datasets(folders)
    if problems:
        log.warning("%s: %d unusable rows skipped (first: %s: %s)", folder, len(problems), problems[0].file_name, problems[0].reason)
    if df.empty:
        raise AgetoolError(f"{folder}: no usable face images")
    if split_file is not None:
        return apply_split(df, split_file)
    if "split" in df.columns:
        return df
    return make_split(df, seed=seed)


def pick_rows(rows: pd.DataFrame, split: str, count: int, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Up to `count` rows of one split, a seeded random subset so any count spreads over ages."""
    chosen = rows[rows["split"] == split]
    if len(chosen) > count:
        chosen = chosen.sample(n=count, random_state=seed)
    return chosen.sort_values(["dataset", "file_name"]).reset_index(drop=True)


def load_sample(
    rows: pd.DataFrame, input_size: int, source: str, progress: Callable[[int], None] | None = None
) -> FaceSample:
    """Decode and resize the rows' images; unreadable ones are skipped with a warning."""
    images, ok, errors = load_faces(list(rows["path"]), input_size, progress=progress)
    if errors:
        log.warning("%s: %d images unreadable and skipped (first: %s)", source, len(errors), errors[0])
    ages = rows["real_age"].to_numpy(dtype=np.float64)[ok]
    return FaceSample(images.astype(np.float32), ages, source)
