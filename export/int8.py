"""FP32 -> INT8 ONNX with ONNX Runtime: static QDQ quantization calibrated on real faces, or
dynamic (weights only) as a fallback."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agetool.contract import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

# Most images per calibration run.
CALIB_BATCH = 8
# Most bytes of activations one calibration chunk may hold: ORT's calibrators keep every output of
# every run in a chunk before folding them into ranges or histograms (ResNet50 at 224 px: 102 MB
# per face; a chunk of 12 faces peaked the whole export at 4.4 GB RSS).
CALIB_CHUNK_BYTES = 256 * 2**20
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


@dataclass(frozen=True)
class CalibrationPlan:
    """How the calibration faces are cut: `batch_size` faces per ORT run, `chunk_batches` runs
    collected before the calibrator folds them into its ranges and drops them."""

    batch_size: int
    chunk_batches: int
    activation_bytes_per_image: int

    @property
    def chunk_bytes(self) -> int:
        return self.batch_size * self.chunk_batches * self.activation_bytes_per_image


def activation_bytes_per_image(proto: Any) -> int:
    """Bytes of the float tensors a calibrator collects for one image (every float activation
    with a shape; the graph outputs and input included), from the shapes in the graph."""
    import onnx

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    initializers = {init.name for init in proto.graph.initializer}
    infos = {info.name: info for info in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output)}
    total = 0
    for name, info in infos.items():
        tensor_type = info.type.tensor_type
        if name in initializers or tensor_type.elem_type not in float_types:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
        # Unknown dims (the batch axis, anything shape inference left open) count as 1.
        per_image = 1
        for dim in tensor_type.shape.dim[1:]:
            per_image *= dim.dim_value if dim.HasField("dim_value") else 1
        total += per_image * itemsize
    return total


def calibration_plan(n_images: int, bytes_per_image: int, chunk_bytes: int = CALIB_CHUNK_BYTES) -> CalibrationPlan:
    """The largest equal batches and chunks whose activations fit in `chunk_bytes` (at least one
    image per chunk, however large)."""
    images_per_chunk = max(1, chunk_bytes // max(1, bytes_per_image))
    batch_size = largest_divisor(n_images, min(CALIB_BATCH, images_per_chunk))
    n_batches = max(1, n_images // batch_size)
    chunk_batches = largest_divisor(n_batches, max(1, images_per_chunk // batch_size))
    return CalibrationPlan(batch_size, chunk_batches, bytes_per_image)


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
    chunk_bytes: int = CALIB_CHUNK_BYTES,
) -> list[str]:
    """QDQ static quantization, per-channel int8 weights, calibrated chunk by chunk so that at
    most about `chunk_bytes` of activations are held at once. Returns the nodes kept in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    activations = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}[activation_type]
    prepared = onnx.load(str(prepared_path))
    excluded = head_node_names(prepared) if keep_head_float else []
    plan = calibration_plan(len(calib_images), activation_bytes_per_image(prepared), chunk_bytes)
    del prepared
    log.info(
        "int8: calibrating %d faces in batches of %d, %d batches (%.0f MB of activations) per chunk",
        len(calib_images), plan.batch_size, plan.chunk_batches, plan.chunk_bytes / 2**20,
    )
    reader = FaceCalibrationReader(calib_images, plan.batch_size)
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
            extra_options={"CalibStridedMinMax": plan.chunk_batches},
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
