"""Which optional extra a command needs, checked before it imports anything heavy.

`pip install -e '.[cpu,demo]'` (the README's main job) has no Keras: `agetool train` there must
say which extra to install, in one line, not end in a 40-line ModuleNotFoundError."""

from __future__ import annotations

import importlib.util
import os

from agetool.errors import AgetoolError

TRAIN_EXTRA = "pip install 'agetool[train]'"


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or half-installed
        return False


def require_modules(what: str, modules: tuple[str, ...], install: str = TRAIN_EXTRA) -> None:
    """AgetoolError (exit 2) naming the extra when any of `modules` is not importable."""
    missing = [name for name in modules if not is_installed(name)]
    if missing:
        raise AgetoolError(f"{what} needs the train extra ({', '.join(missing)} not installed): {install}")


def keras_modules() -> tuple[str, ...]:
    """Keras and the backend it will load (TensorFlow unless $KERAS_BACKEND says otherwise)."""
    return ("keras", os.environ.get("KERAS_BACKEND", "tensorflow"))
