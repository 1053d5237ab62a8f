"""The runtimes a till PC could run the age model on, behind one small interface.

Each runner is opened inside a bench worker (a fresh process per runtime and model), so its
imports and memory are its own. Availability checks run in the parent and never import the
heavy runtimes."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

ORT = "onnxruntime"
OPENVINO = "openvino"
TENSORFLOW = "tensorflow"
RUNTIMES = (ORT, OPENVINO, TENSORFLOW)
RUNTIME_LABELS = {ORT: "ONNX Runtime", OPENVINO: "OpenVINO", TENSORFLOW: "TensorFlow (Keras)"}


class Runner(Protocol):
    input_size: int
    device: str
    precision: str | None  # what the runtime computes in, when it differs from the file's (OpenVINO bf16)

    def prepare(self, batch_size: int) -> None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class OrtRunner:
    """The till's own path: agetool's OnnxAgeModel on one execution provider, no silent fallback."""

    def __init__(self, path: Path, provider: str, threads: int | None) -> None:
        from agetool.edge_runtime.infer import OnnxAgeModel

        self.model = OnnxAgeModel(path, providers=[provider], intra_op_threads=threads)
        if self.model.provider != provider:
            raise AgetoolError(f"{provider} could not take the model; ONNX Runtime fell back to {self.model.provider}")
        self.input_size = self.model.input_size
        self.device = self.model.provider
        self.precision = None

    def prepare(self, batch_size: int) -> None:
        return None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.model.predict(batch)


class OpenVinoRunner:
    """OpenVINO Runtime reading the same .onnx file, through the runtime's own OpenVinoAgeModel
    (the daemon's `--runtime openvino`): one compiled model per static batch size."""

    def __init__(self, path: Path, input_size: int, threads: int | None, precision: str | None = None) -> None:
        from agetool.edge_runtime.infer import OpenVinoAgeModel

        self.model = OpenVinoAgeModel(path, threads, precision)
        self.input_size = self.model.input_size
        self.device = self.model.device

    @property
    def precision(self) -> str | None:
        return self.model.precision

    def prepare(self, batch_size: int) -> None:
        self.model.prepare(batch_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.model.predict(batch)


class KerasRunner:
    """The training-side baseline: the .keras model on TensorFlow, as `agetool evaluate` runs it."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        from agetool.trainer.evaluate import open_model

        self.predictor, info = open_model(path)
        self.input_size = info.input_size
        self.precision = None
        self.device = ", ".join(d.device_type for d in tf.config.list_logical_devices()) or "CPU"

    def prepare(self, batch_size: int) -> None:
        return None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor.predict(batch)


def open_runner(
    runtime: str, path: Path, provider: str | None, input_size: int, threads: int | None, precision: str | None = None
) -> Runner:
    if runtime == ORT:
        return OrtRunner(path, provider or "CPUExecutionProvider", threads)
    if runtime == OPENVINO:
        return OpenVinoRunner(path, input_size, threads, precision)
    if runtime == TENSORFLOW:
        return KerasRunner(path, threads)
    raise AgetoolError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")


# --- Availability (parent process, no heavy imports) ------------------------------------------
def missing_runtime(runtime: str) -> str | None:
    """Why `runtime` cannot run here, or None when its package is installed."""
    package = {ORT: "onnxruntime", OPENVINO: "openvino", TENSORFLOW: "tensorflow"}[runtime]
    if importlib.util.find_spec(package) is None:
        hint = " (pip install 'agetool[openvino]')" if runtime == OPENVINO else ""
        return f"{package} not installed{hint}"
    return None


def missing_provider(provider: str, available: list[str]) -> str | None:
    if provider in available:
        return None
    return f"{provider} not available in this onnxruntime build"
