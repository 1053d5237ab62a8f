"""Where agetool finds files it does not ship: flags first, then env vars, then defaults.

Nothing is downloaded at run time; every path here is local."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models"
DEFAULT_MODEL_FILE = "age_default.onnx"
# OpenCV zoo's YuNet (MIT; licence text beside it in the package), the default face detector.
SHIPPED_DETECTOR = DEFAULT_MODEL_DIR / "face_detection_yunet_2023mar.onnx"

ENV_MODEL = "AGETOOL_MODEL"
ENV_DETECTOR = "AGETOOL_DETECTOR"
ENV_IMAGENET_WEIGHTS = "AGETOOL_IMAGENET_WEIGHTS"
ENV_RUNS_DIR = "AGETOOL_RUNS_DIR"


def default_model_path() -> Path:
    """$AGETOOL_MODEL, else the model shipped in the package."""
    env = os.environ.get(ENV_MODEL)
    return Path(env) if env else DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE


def default_detector_path() -> Path:
    """$AGETOOL_DETECTOR (a YuNet .onnx), else the YuNet shipped in the package."""
    env = os.environ.get(ENV_DETECTOR)
    return Path(env) if env else SHIPPED_DETECTOR


def runs_dir() -> Path:
    """Training runs (checkpoints, logs) live outside the work tree so --resume finds them."""
    env = os.environ.get(ENV_RUNS_DIR)
    return Path(env) if env else Path.home() / ".cache" / "agetool" / "runs"
