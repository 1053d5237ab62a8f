"""`agetool train` says when a model is no better than answering one age to everyone (the README's
old quick recipe answered 26.0 for every face and passed for a model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agetool.trainer.train import TrainResult, constant_baseline_mae


def result(best_val_mae: float, baseline: float) -> TrainResult:
    here = Path(".")
    return TrainResult(model_path=here, card_path=here, split_path=here, best_val_mae=best_val_mae,
                       epochs_run=2, wall_time_s=1.0, baseline_val_mae=baseline)


def test_the_bar_is_the_best_constant_answer():
    train_ages = np.array([20.0, 25.0, 30.0, 60.0, 70.0])
    val_ages = np.array([22.0, 31.0, 65.0])
    # median 30: |22-30| + |31-30| + |65-30| = 44 -> 14.67; the mean (41) would give 15.0
    assert abs(constant_baseline_mae(train_ages, val_ages) - 44 / 3) < 1e-9
    always_26 = float(np.mean(np.abs(val_ages - 26.0)))
    assert result(always_26, constant_baseline_mae(train_ages, val_ages)).learned_nothing


def test_learned_nothing_only_when_no_better_than_the_constant():
    assert result(19.6, 15.0).learned_nothing
    assert result(15.0, 15.0).learned_nothing
    assert result(float("nan"), 15.0).learned_nothing
    # the README's quick recipe with 1,000 images and 5 epochs: val predictions all but constant
    assert result(19.417, 19.420).learned_nothing
    assert not result(9.5, 15.0).learned_nothing and not result(14.0, 15.0).learned_nothing
