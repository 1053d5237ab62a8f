"""The physical floor: what this CPU can do at best, and how much work a model asks of it.

Peak: sustained GFLOP/s of a large FP32 matmul (numpy's BLAS, ONNX Runtime and OpenVINO, the
best of them), BF16 GFLOP/s of the same matmul in OpenVINO (what its CPU plugin computes in by
default on CPUs with AVX512-BF16 or AMX), and GOP/s of a large u8 x s8 MatMulInteger in ONNX
Runtime (MLAS uses VNNI where the CPU has it). Each rate is the best of a few windows of
repeated calls, so a burst of other work on a shared machine does not lower the peak. Work: 2 x the multiply-accumulates of every Conv, MatMul and Gemm in the ONNX graph,
shapes from onnx.shape_inference at the bench batch. Element-wise ops, pooling and memory traffic
are left out, so `latency / floor` is a lower bound on how far a row is from the hardware, never
an exact efficiency."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

FLOAT_CONV_OPS = {"Conv", "MatMul", "Gemm"}
INTEGER_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"}
# Which input of each op holds the weights (Conv) or the left matrix (MatMul, Gemm).
WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
LEFT_INPUT = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "Gemm": 0}


class OpCount(BaseModel):
    """Work of one forward pass at `batch`: 2 x MACs, split by the precision it runs in."""

    batch: int
    float_flops: float = Field(description="Conv/MatMul/Gemm computed in FP32 (or FP16 through casts)")
    int8_ops: float = Field(description="quantized Conv/MatMul (QDQ pairs or integer ops)")
    nodes_counted: int
    nodes_unknown_shape: int

    @property
    def total_gops(self) -> float:
        return (self.float_flops + self.int8_ops) / 1e9


class PeakThroughput(BaseModel):
    matmul_size: int
    fp32_gflops_numpy: float | None
    fp32_gflops_onnxruntime: float | None
    fp32_gflops_openvino: float | None = None
    fp32_gflops: float = Field(description="the best of the FP32 rates: the FP32 peak the floor uses")
    bf16_gflops_openvino: float | None = Field(None, description="OpenVINO matmul at INFERENCE_PRECISION_HINT bf16")
    int8_gops_onnxruntime: float | None = Field(description="u8 x s8 MatMulInteger; None when not measured")
    has_vnni: bool
    windows: int
    window_s: float


# --- Work --------------------------------------------------------------------------------------
def _shape_table(model: Any) -> dict[str, list[int | None]]:
    graph = model.graph
    shapes: dict[str, list[int | None]] = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _known(shape: list[int | None] | None) -> bool:
    return bool(shape) and all(d is not None and d > 0 for d in shape)


def _node_macs(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    out = shapes.get(node.output[0])
    if not _known(out):
        return None
    if node.op_type in WEIGHT_INPUT:
        weight = shapes.get(node.input[WEIGHT_INPUT[node.op_type]])
        if not _known(weight):
            return None
        return math.prod(out) * math.prod(weight[1:])
    left = shapes.get(node.input[LEFT_INPUT[node.op_type]])
    if not _known(left):
        return None
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = left[0] if trans_a else left[1]
    else:
        k = left[-1]
    return math.prod(out) * k


def _is_quantized(node: Any, producers: dict[str, Any]) -> bool:
    if node.op_type in INTEGER_OPS:
        return True
    # QDQ format: ORT (and OpenVINO) fuse DequantizeLinear -> Conv <- DequantizeLinear into an int8 kernel.
    inputs = [name for name in node.input[:2] if name]
    return len(inputs) == 2 and all(
        producers.get(name) is not None and producers[name].op_type == "DequantizeLinear" for name in inputs
    )


def count_ops_proto(model: Any, batch: int) -> OpCount:
    """Count the work of a loaded ONNX ModelProto at `batch` (the proto's batch dim is overwritten)."""
    import onnx

    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs or not inputs[0].type.tensor_type.shape.dim:
        raise AgetoolError("model: no shaped input to count operations on")
    first = inputs[0].type.tensor_type.shape.dim[0]
    first.Clear()
    first.dim_value = batch
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = _shape_table(inferred)
    producers = {out: node for node in inferred.graph.node for out in node.output}
    float_flops = int8_ops = 0.0
    counted = unknown = 0
    for node in inferred.graph.node:
        if node.op_type not in FLOAT_CONV_OPS and node.op_type not in INTEGER_OPS:
            continue
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown += 1
            continue
        counted += 1
        if _is_quantized(node, producers):
            int8_ops += 2.0 * macs
        else:
            float_flops += 2.0 * macs
    return OpCount(
        batch=batch, float_flops=float_flops, int8_ops=int8_ops, nodes_counted=counted, nodes_unknown_shape=unknown
    )


def count_ops(path: str | Path, batches: list[int]) -> dict[int, OpCount]:
    """Work of the ONNX file at each batch size."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for a bad file
        raise AgetoolError(f"model {path}: not a readable ONNX file ({type(exc).__name__})") from None
    return {batch: count_ops_proto(model, batch) for batch in batches}


def floor_ms(ops: OpCount, peak: PeakThroughput, float_precision: str = "fp32") -> float | None:
    """Least time the counted work can take at peak throughput, in ms (None when nothing counted).

    `float_precision` bf16: the float work runs at the BF16 peak (OpenVINO's CPU default here).
    FP16 files count as FP32: x86 CPUs without AVX512-FP16 convert them to FP32 to compute."""
    if ops.float_flops + ops.int8_ops <= 0:
        return None
    float_rate = peak.fp32_gflops
    if float_precision == "bf16" and peak.bf16_gflops_openvino:
        float_rate = max(float_rate, peak.bf16_gflops_openvino)
    seconds = ops.float_flops / (float_rate * 1e9)
    if ops.int8_ops:
        int8_rate = peak.int8_gops_onnxruntime or peak.fp32_gflops
        seconds += ops.int8_ops / (int8_rate * 1e9)
    return seconds * 1000.0


# --- Peak ---------------------------------------------------------------------------------------
def _best_rate(call: Any, ops_per_call: float, windows: int, window_s: float) -> float:
    """Ops/s of the best of `windows` windows, each at least `window_s` and 2 calls, after a warm-up call."""
    call()
    best = 0.0
    for _ in range(windows):
        calls = 0
        started = time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= window_s and calls >= 2:
                break
        best = max(best, ops_per_call * calls / elapsed)
    return best


def _ort_session(model: Any, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul_model(n: int, integer: bool, rng: np.random.Generator) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    if integer:
        weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
        zero_a = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")
        zero_b = numpy_helper.from_array(np.array(0, dtype=np.int8), "b_zero")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero", "b_zero"], ["C"])
        inits, a_type, c_type = [weight, zero_a, zero_b], TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["C"])
        inits, a_type, c_type = [weight], TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "peak", [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("C", c_type, [n, n])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _openvino_rate(a: np.ndarray, b: np.ndarray, precision: str, threads: int | None, windows: int, window_s: float) -> float:
    import openvino as ov
    from openvino import opset13 as ov_ops

    param = ov_ops.parameter(list(a.shape), np.float32)
    model = ov.Model([ov_ops.matmul(param, ov_ops.constant(b), False, False)], [param])
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    return _best_rate(lambda: request.infer({0: a}), 2.0 * a.shape[0] ** 3, windows, window_s)


def measure_peaks(
    has_vnni: bool, size: int = 2048, windows: int = 6, window_s: float = 0.3, threads: int | None = None
) -> PeakThroughput:
    """Matmul throughput on every core (each runtime's default thread count unless `threads`)."""
    rng = np.random.default_rng(0)
    ops = 2.0 * size**3
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    c = np.empty_like(a)
    rates: dict[str, float | None] = {"numpy": _best_rate(lambda: np.matmul(a, b, out=c), ops, windows, window_s)}
    rates["ort"] = rates["ort_int8"] = rates["ov"] = rates["ov_bf16"] = None
    try:
        session = _ort_session(_matmul_model(size, integer=False, rng=rng), threads)
        rates["ort"] = _best_rate(lambda: session.run(None, {"A": a}), ops, windows, window_s)
        session_int8 = _ort_session(_matmul_model(size, integer=True, rng=rng), threads)
        a_u8 = rng.integers(0, 256, (size, size), dtype=np.uint8)
        rates["ort_int8"] = _best_rate(lambda: session_int8.run(None, {"A": a_u8}), ops, windows, window_s)
    except ImportError:
        log.warning("onnxruntime not installed: no ONNX Runtime peak")
    try:
        rates["ov"] = _openvino_rate(a, b, "f32", threads, windows, window_s)
        rates["ov_bf16"] = _openvino_rate(a, b, "bf16", threads, windows, window_s)
    except ImportError:
        log.info("openvino not installed: no OpenVINO peak")

    def gops(key: str) -> float | None:
        value = rates[key]
        return round(value / 1e9, 1) if value else None

    return PeakThroughput(
        matmul_size=size,
        fp32_gflops_numpy=gops("numpy"),
        fp32_gflops_onnxruntime=gops("ort"),
        fp32_gflops_openvino=gops("ov"),
        fp32_gflops=max(v for v in (gops("numpy"), gops("ort"), gops("ov")) if v is not None),
        bf16_gflops_openvino=gops("ov_bf16"),
        int8_gops_onnxruntime=gops("ort_int8"),
        has_vnni=has_vnni,
        windows=windows,
        window_s=window_s,
    )


def merge_peaks(measurements: list[PeakThroughput]) -> PeakThroughput:
    """The best of several measurements of the same machine, field by field: other work on a
    shared machine can only lower a peak, never raise it."""
    if not measurements:
        raise ValueError("merge_peaks needs at least one measurement")
    fields = ("fp32_gflops_numpy", "fp32_gflops_onnxruntime", "fp32_gflops_openvino", "fp32_gflops",
              "bf16_gflops_openvino", "int8_gops_onnxruntime")
    best: dict[str, float | None] = {}
    for name in fields:
        values = [getattr(m, name) for m in measurements if getattr(m, name) is not None]
        best[name] = max(values) if values else None
    return measurements[0].model_copy(update=best)
