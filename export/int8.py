"""FP32 -> INT8 ONNX with ONNX Runtime: static QDQ quantization calibrated on real faces, or
dynamic (weights only) as a fallback."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from agetool.contract import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

# Images per calibration run, and runs per chunk: entropy/percentile keep every activation of a
# chunk in memory before folding it into their histograms (ResNet50 at 128 px: ~30 MB per face).
CALIB_BATCH = 8
CALIB_CHUNK_BATCHES = 4
HEAD_OP_TYPES = {"MatMul", "Gemm"}


class FaceCalibrationReader:
    """ONNX Runtime CalibrationDataReader over face crops, in batches; supports set_range so the
    calibrator can collect chunk by chunk."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIB_BATCH) -> None:
        self._batches = [
            np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
            for i in range(0, len(images), batch_size)
        ]
        self._start, self._end = 0, len(self._batches)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = self._start + self._next
        if index >= self._end:
            return None
        self._next += 1
        return {INPUT_NAME: self._batches[index]}

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> "FaceCalibrationReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end, self._next = start_index, min(end_index, len(self._batches)), 0

    def rewind(self) -> None:
        self.set_range(0, len(self._batches))


def largest_divisor(n: int, most: int) -> int:
    """The largest k <= most dividing n: ORT's chunked calibration needs an exact division, and
    its histogram calibrators stack a chunk's batches, so every batch must be the same size."""
    return max(k for k in range(1, max(1, min(most, n)) + 1) if n % k == 0)


POOL_OP_TYPES = {"GlobalAveragePool", "ReduceMean"}


def distribution_head_node_names(proto: Any) -> list[str]:
    """Every node between the pooled features and the outputs (both Dense layers, the softmax,
    the moments): a small share of the compute, and int8 softmax bins would blur the spread."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    names: list[str] = []
    pending = [o.name for o in proto.graph.output]
    seen: set[str] = set()
    while pending:
        tensor = pending.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen or node.op_type in POOL_OP_TYPES:
            continue
        seen.add(node.name)
        names.append(node.name)
        pending.extend(t for t in node.input if t in producers)
    return names


def head_node_names(proto: Any) -> list[str]:
    """Nodes from the last MatMul/Gemm (the age head's Dense) to the `age_years` output; for a
    distribution model (two outputs) the whole head after pooling."""
    if len(proto.graph.output) > 1:
        return distribution_head_node_names(proto)
    producers = {out: node for node in proto.graph.node for out in node.output}
    names: list[str] = []
    tensor = OUTPUT_NAME
    while tensor in producers:
        node = producers[tensor]
        names.append(node.name)
        if node.op_type in HEAD_OP_TYPES:
            return names
        data_inputs = [t for t in node.input if t in producers]
        if len(data_inputs) != 1:
            break
        tensor = data_inputs[0]
    return []


def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> None:
    """ORT's shape inference + graph optimisation that static quantization expects first."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)


def quantize_static_int8(
    prepared_path: Path,
    out_path: Path,
    calib_images: np.ndarray,
    method: str = "percentile",
    activation_type: str = "quint8",
    keep_head_float: bool = True,
) -> list[str]:
    """QDQ static quantization, per-channel int8 weights. Returns the nodes kept in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    activations = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}[activation_type]
    excluded = head_node_names(onnx.load(str(prepared_path))) if keep_head_float else []
    reader = FaceCalibrationReader(calib_images, largest_divisor(len(calib_images), CALIB_BATCH))
    # ORT's histogram calibrators print() a line per chunk; our progress bar says the same.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared_path),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            nodes_to_exclude=excluded,
            extra_options={"CalibStridedMinMax": largest_divisor(len(reader), CALIB_CHUNK_BATCHES)},
        )
    return excluded


def quantize_dynamic_int8(prepared_path: Path, out_path: Path, keep_head_float: bool = True) -> list[str]:
    """Int8 weights with activations quantized on the fly: no calibration, a fallback when
    static quantization costs too much accuracy."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = head_node_names(onnx.load(str(prepared_path))) if keep_head_float else []
    quantize_dynamic(
        str(prepared_path),
        str(out_path),
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )
    return excluded
