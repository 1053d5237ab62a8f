"""agetool.trainer: face data, the age model, training and evaluation.

The seeds' four functions (`load_train`, `load_test`, `create_model`, `train_model`) are
exported here, loaded on first use so that importing the package (and `agetool --help`) does
not import TensorFlow."""

from __future__ import annotations

from typing import Any

SEED_API = ("load_train", "load_test", "create_model", "train_model")
__all__ = list(SEED_API)


def __getattr__(name: str) -> Any:
    if name in SEED_API:
        from agetool.trainer import seed_api

        return getattr(seed_api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
