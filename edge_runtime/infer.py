"""ONNX Runtime age model: the one place that opens an agetool .onnx file.

Used by the daemon, `agetool run`, `agetool evaluate` (for .onnx) and the benchmarks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from agetool.contract import AGE_MAX_YEARS, AGE_MIN_YEARS, ModelMetadata, preprocess_rgb
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def resolve_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """Provider names ONNX Runtime understands, in priority order, always ending with CPU.

    "auto" picks TensorRT -> CUDA -> CPU from what this onnxruntime build offers. Names may be
    aliases (cpu, cuda, tensorrt) or full provider names; unknown names are an error."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    if not requested or list(requested) == ["auto"]:
        chosen = [p for p in AUTO_ORDER if p in available]
    else:
        chosen = []
        for name in requested:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in PROVIDER_ALIASES.values() and full not in available:
                raise AgetoolError(
                    f"providers: unknown execution provider {name!r}; expected one of "
                    f"{', '.join(PROVIDER_ALIASES)} or auto"
                )
            if full in available:
                chosen.append(full)
            else:
                log.warning("execution provider %s is not available in this onnxruntime build", full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxAgeModel:
    """An exported agetool model in an ONNX Runtime session, with its metadata read back."""

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise AgetoolError(f"model {self.path}: file not found")
        wanted = resolve_providers(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # ORT raises several private exception types for bad files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AgetoolError(f"model {self.path}: not a loadable ONNX model ({first_line})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, source=f"model {self.path}")
        self.provider = self.session.get_providers()[0]
        if any(p in GPU_PROVIDERS for p in wanted) and self.provider not in GPU_PROVIDERS:
            log.warning("a GPU provider was asked for but %s runs on %s", self.path.name, self.provider)
        log.info("model %s (%s) on %s", self.path.name, self.metadata.variant, self.provider)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Ages in years, shape (N,), for an NHWC float32 RGB 0..255 batch."""
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise AgetoolError(
                f"model input: expected (N, {self.input_size}, {self.input_size}, 3), got {batch.shape}"
            )
        out = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return np.clip(out.reshape(len(batch)), AGE_MIN_YEARS, AGE_MAX_YEARS)

    def predict_rgb(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Ages for RGB uint8 face crops of any size."""
        if not crops:
            return np.zeros((0,), dtype=np.float32)
        batch = np.stack([preprocess_rgb(c, self.input_size) for c in crops])
        return self.predict(batch)

    def warm_up(self, runs: int = 2) -> None:
        dummy = np.zeros((1, self.input_size, self.input_size, 3), dtype=np.float32)
        for _ in range(runs):
            self.predict(dummy)
