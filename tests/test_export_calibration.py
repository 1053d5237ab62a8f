"""INT8 calibration in memory-bounded chunks: a tiny real ONNX graph quantized by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agetool.contract import INPUT_NAME, OUTPUT_NAME
from agetool.export import int8

SIZE = 8
FILTERS = 4
N_FACES = 12


def _tiny_graph() -> "onnx.ModelProto":  # noqa: F821
    """image (N, 8, 8, 3) NHWC -> Transpose -> Conv 3x3 (4) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.1, (FILTERS, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(FILTERS, np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 1, (FILTERS, 1)).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array([30.0], np.float32), "head_b"),
    ]
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
        helper.make_node("Gemm", ["features", "head_w", "head_b"], [OUTPUT_NAME], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(proto)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    folder = tmp_path_factory.mktemp("calib")
    onnx.save(_tiny_graph(), str(folder / "tiny.onnx"))
    int8.preprocess_for_quantization(folder / "tiny.onnx", folder / "prepared.onnx")
    return folder / "prepared.onnx"


def _faces() -> np.ndarray:
    """Faces whose brightest one comes last, so a calibration that stops after its first chunk
    gets a narrower input range."""
    rng = np.random.default_rng(1)
    faces = rng.uniform(0, 100, (N_FACES, SIZE, SIZE, 3)).astype(np.float32)
    faces[-1] *= 2.5
    return faces


def _activation_ranges(path: Path) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every activation QuantizeLinear in a QDQ model."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    return {
        node.input[0]: (float(constants[node.input[1]]), int(constants[node.input[2]]))
        for node in proto.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants
    }


def test_activation_bytes_counts_every_float_activation_per_image() -> None:
    # image + transposed 3*8*8 each, conv + relu 4*8*8 each, pooled + flattened 4 each, output 1.
    per_image = 2 * 3 * SIZE * SIZE + 2 * FILTERS * SIZE * SIZE + 2 * FILTERS + 1
    assert int8.activation_bytes_per_image(_tiny_graph()) == per_image * 4


@pytest.mark.parametrize(
    ("n_images", "bytes_per_image", "chunk_bytes", "batch", "chunk_batches"),
    [
        (300, 102 * 2**20, 256 * 2**20, 2, 1),  # ResNet50 at 224 px: two faces a chunk
        (300, 2**20, 256 * 2**20, 6, 25),  # a small model: full batches, 150 faces a chunk
        (300, 400 * 2**20, 256 * 2**20, 1, 1),  # one face over the budget: one at a time
        (7, 2**20, 256 * 2**20, 7, 1),  # fewer faces than a batch
    ],
)
def test_calibration_plan_stays_within_the_chunk_budget(
    n_images: int, bytes_per_image: int, chunk_bytes: int, batch: int, chunk_batches: int
) -> None:
    plan = int8.calibration_plan(n_images, bytes_per_image, chunk_bytes)
    assert (plan.batch_size, plan.chunk_batches) == (batch, chunk_batches)
    assert n_images % plan.batch_size == 0 and (n_images // plan.batch_size) % plan.chunk_batches == 0
    assert plan.chunk_bytes <= max(chunk_bytes, bytes_per_image)


def test_chunked_calibration_sees_every_face(prepared: Path, tmp_path: Path) -> None:
    """MinMax folds chunks exactly, so one face per chunk must give the one-chunk ranges. (ORT's
    histogram merge drops values outside the first chunk's range edges, so percentile ranges move
    a little with the chunking: on tiny tensors a lot, on ResNet50 at 224 px by <= 0.04%.)"""
    import onnx

    faces = _faces()
    one_chunk, one_face_chunks = tmp_path / "one_chunk.onnx", tmp_path / "one_face_chunks.onnx"
    bytes_per_image = int8.activation_bytes_per_image(onnx.load(str(prepared)))
    assert int8.calibration_plan(N_FACES, bytes_per_image, 1).chunk_bytes == bytes_per_image
    int8.quantize_static_int8(prepared, one_chunk, faces, "minmax", chunk_bytes=2**30)
    int8.quantize_static_int8(prepared, one_face_chunks, faces, "minmax", chunk_bytes=1)

    whole, chunked = _activation_ranges(one_chunk), _activation_ranges(one_face_chunks)
    assert set(whole) == set(chunked) and "nchw" in whole
    assert chunked == whole
    # The transposed input, uint8 over 0..max: the last (brightest) face set its range.
    assert whole["nchw"][0] == pytest.approx(float(faces.max()) / 255, rel=1e-6)
