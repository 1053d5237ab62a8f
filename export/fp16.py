"""FP32 -> FP16 ONNX (onnxconverter-common), float32 input and output kept.

FP16 is for GPUs (TensorRT / CUDA): on CPU ONNX Runtime computes most FP16 kernels through
casts and is not faster (the guide measured ~41 ms vs ~38 ms FP32 for ResNet50 at 224 px)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

CPU_NOTE = "for GPUs*"
CPU_FOOTNOTE = "* FP16 is not faster on CPU (guide: ~41 ms vs ~38 ms FP32, ResNet50 224 px)"


def convert_fp16(fp32_proto: Any) -> Any:
    """A half-precision copy of an FP32 model whose `image` input and `age_years` output stay float32."""
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = float16.convert_float_to_float16(fp32_proto, keep_io_types=True)
    truncated = sum("will be truncated" in str(w.message) for w in caught)
    if truncated:
        # Weights below FP16's range become ±1e-7; harmless for the output, so one line instead of hundreds.
        log.info("fp16: %d tiny weight values clamped to the FP16 range", truncated)
    return proto
