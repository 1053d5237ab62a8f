"""Which optional extra a command needs, checked before it imports anything heavy.

`pip install -e '.[cpu,demo]'` (the README's main job) has no Keras: `agetool train` there must
say which extra to install, in one line, not end in a 40-line ModuleNotFoundError."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from typing import Iterator

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


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration: TensorFlow's C++ start-up lines
    (absl's 'All log messages before absl::InitializeLog()', oneDNN, CPU features) are written
    there directly, before TF_CPP_MIN_LOG_LEVEL is read. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras_quietly() -> None:
    """Import Keras (and so its backend) once, without the backend's start-up chatter unless the
    command runs with --verbose (the root logger at DEBUG)."""
    if "keras" in sys.modules or logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    with native_stderr_silenced():
        import keras  # noqa: F401
