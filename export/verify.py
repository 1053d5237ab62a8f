"""Proof that an exported file still estimates age like its Keras source: max |Δ| on a fixed
batch, MAE on labelled validation faces (ΔMAE), and a rough CPU latency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agetool.contract import AGE_MAX_YEARS, AGE_MIN_YEARS, OUTPUT_NAME
from agetool.errors import AgetoolError

FIXED_BATCH_SIZE = 16
RANDOM_BATCH_SEED = 0
PREDICT_BATCH = 32
# TensorFlow's heap keeps what a batch's activations took: 8 faces instead of 32 lowered a
# load-predict-convert run of ResNet50 at 224 px from 3.6 to 3.3 GB peak RSS.
KERAS_PREDICT_BATCH = 8
TIMING_RUNS = 7
TIMING_WARMUP = 2


@dataclass(frozen=True)
class Reference:
    """Inputs and the Keras model's outputs that every variant is compared with."""

    fixed_batch: np.ndarray
    fixed_batch_source: str  # "16 real faces" / "16 random images"
    fixed_keras_years: np.ndarray
    val_images: np.ndarray
    val_ages_years: np.ndarray
    val_keras_years: np.ndarray

    @property
    def keras_val_mae(self) -> float | None:
        return mae(self.val_keras_years, self.val_ages_years) if len(self.val_ages_years) else None


@dataclass(frozen=True)
class Verification:
    max_abs_diff_years: float
    keras_mae_years: float | None
    variant_mae_years: float | None
    cpu_ms_per_image: float
    # Mean |variant - Keras| over the validation faces: a steadier fidelity figure than ΔMAE,
    # whose sign is luck when errors are large.
    val_mean_abs_diff_years: float | None = None

    @property
    def delta_mae_years(self) -> float | None:
        if self.keras_mae_years is None or self.variant_mae_years is None:
            return None
        return self.variant_mae_years - self.keras_mae_years


def random_batch(input_size: int, count: int = FIXED_BATCH_SIZE) -> np.ndarray:
    rng = np.random.default_rng(RANDOM_BATCH_SEED)
    return rng.uniform(0.0, 255.0, size=(count, input_size, input_size, 3)).astype(np.float32)


def mae(estimates_years: np.ndarray, true_years: np.ndarray) -> float:
    """MAE of estimates clipped to the runtime's age range (what the till would show)."""
    clipped = np.clip(estimates_years, AGE_MIN_YEARS, AGE_MAX_YEARS)
    return float(np.mean(np.abs(clipped - true_years)))


def keras_predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Raw Keras outputs, shape (N,)."""
    if len(images) == 0:
        return np.zeros((0,), dtype=np.float32)
    parts = [
        np.asarray(_age_output(model.predict_on_batch(images[i : i + KERAS_PREDICT_BATCH]))).reshape(-1)
        for i in range(0, len(images), KERAS_PREDICT_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32)


def _age_output(outputs: Any) -> Any:
    """The age from a Keras model's outputs: the array itself, or `age_years` of a dict."""
    return outputs[OUTPUT_NAME] if isinstance(outputs, dict) else outputs


def onnx_predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Raw age outputs of a runtime model (unclipped, so parity sees every difference), shape (N,);
    the age output is found by name, whatever else the graph returns."""
    if len(images) == 0:
        return np.zeros((0,), dtype=np.float32)
    parts = [
        model.raw_outputs(images[i : i + PREDICT_BATCH]).ages_years for i in range(0, len(images), PREDICT_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32)


def cpu_ms_per_image(model: Any, image: np.ndarray) -> float:
    """Median of a few batch-1 runs after warm-up: a rough figure, not a benchmark."""
    return model.median_ms(TIMING_RUNS, TIMING_WARMUP, image)


def verify_file(path: Path, variant: str, input_size: int, reference: Reference) -> Verification:
    """Open the file the way the till does (the runtime's model opener, ONNX Runtime on CPU),
    check its metadata reads back, and compare its outputs with the Keras model's."""
    from agetool.edge_runtime.infer import open_age_model

    model = open_age_model(path, "onnxruntime", providers="cpu")
    if model.metadata.variant != variant or model.metadata.input_size != input_size:
        raise AgetoolError(
            f"{path.name}: metadata reads back as variant {model.metadata.variant}, input size "
            f"{model.metadata.input_size}; expected {variant}, {input_size}"
        )
    n = len(reference.fixed_batch)
    out_shape = model.session.run([model.output_name], {model.input_name: reference.fixed_batch})[0].shape
    if out_shape != (n, 1):
        raise AgetoolError(f"{path.name}: output shape {out_shape} for a batch of {n}; expected ({n}, 1)")
    fixed_years = onnx_predict(model, reference.fixed_batch)
    max_abs_diff = float(np.max(np.abs(fixed_years - reference.fixed_keras_years)))
    variant_mae = val_mean_abs_diff = None
    if len(reference.val_images):
        val_years = onnx_predict(model, reference.val_images)
        variant_mae = mae(val_years, reference.val_ages_years)
        val_mean_abs_diff = float(np.mean(np.abs(val_years - reference.val_keras_years)))
    return Verification(
        max_abs_diff_years=max_abs_diff,
        keras_mae_years=reference.keras_val_mae,
        variant_mae_years=variant_mae,
        cpu_ms_per_image=cpu_ms_per_image(model, reference.fixed_batch[0]),
        val_mean_abs_diff_years=val_mean_abs_diff,
    )
