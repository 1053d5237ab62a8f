"""The export's preprocessing pass: the trainer's channel ops moved behind the NHWC->NCHW
transpose, checked on real tf2onnx exports and hand-built graphs in real ONNX Runtime sessions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agetool.contract import INPUT_NAME, OUTPUT_NAME
from agetool.export import graph_passes
from agetool.export.graph_passes import move_input_preprocessing_behind_layout

REPO = Path(__file__).resolve().parents[1]
INPUT_SIZE = 32
CAFFE_MEAN_BGR = [103.939, 116.779, 123.68]


def _ort_outputs(proto: Any, batch: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: batch})


def _random_batch(size: int = INPUT_SIZE, n: int = 4) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _readers_of(proto: Any, tensor: str) -> list[Any]:
    return [node for node in proto.graph.node if tensor in node.input]


def _trainer_style_keras(mode: str) -> Any:
    """The trainer's own BackbonePreprocess layer in front of a tiny conv net, as build_model
    puts it in front of a backbone."""
    import keras

    from agetool.trainer.model import BackbonePreprocess

    keras.utils.set_random_seed(0)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name=INPUT_NAME)
    x = BackbonePreprocess(mode, name="backbone_preprocess", dtype="float32")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    age = keras.layers.Dense(
        1, activation="relu", kernel_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=1),
        bias_initializer=keras.initializers.Constant(30.0),
    )(x)
    return keras.Model(inputs, age)


def _ops_from(proto: Any, tensor: str, count: int) -> tuple[list[str], str]:
    """The op types of the `count` nodes in a single-reader chain from `tensor`, and its end."""
    ops = []
    for _ in range(count):
        (node,) = _readers_of(proto, tensor)
        ops.append(node.op_type)
        tensor = node.output[0]
    return ops, tensor


def _convert_keeping_a_copy(mode: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """convert_keras on a trainer-style model: (the graph as tf2onnx wrote it, the exported graph)."""
    from agetool.export import fp32

    as_converted: list[Any] = []
    real_pass = graph_passes.move_input_preprocessing_behind_layout

    def keep_a_copy(proto: Any) -> int:
        copy = type(proto)()
        copy.CopyFrom(proto)
        as_converted.append(copy)
        return real_pass(proto)

    monkeypatch.setattr(graph_passes, "move_input_preprocessing_behind_layout", keep_a_copy)
    proto = fp32.convert_keras(_trainer_style_keras(mode), INPUT_SIZE, 17)
    assert len(as_converted) == 1
    return as_converted[0], proto


def test_export_moves_the_caffe_preprocessing_behind_the_transpose(monkeypatch: pytest.MonkeyPatch) -> None:
    """caffe (ResNet50, the FaceRes MobileNet): tf2onnx writes Gather(-1, BGR) + Sub([3] means)
    on the NHWC image; exported, the image goes straight into the Transpose, the two ops follow
    on axis 1, and the outputs equal those of the graph tf2onnx wrote, bit for bit."""
    before, proto = _convert_keeping_a_copy("caffe", monkeypatch)

    assert _ops_from(before, INPUT_NAME, 3)[0] == ["Gather", "Sub", "Transpose"]
    (transpose,) = _readers_of(proto, INPUT_NAME)
    assert transpose.op_type == "Transpose" and list(transpose.attribute[0].ints) == [0, 3, 1, 2]
    ops, end = _ops_from(proto, transpose.output[0], 3)
    assert ops == ["Gather", "Sub", "Conv"]
    assert not [n for n in proto.graph.node if n.op_type == "Gather" and any(a.i in (-1, 3) for a in n.attribute)]
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] and [o.name for o in proto.graph.output] == [OUTPUT_NAME]

    batch = _random_batch()
    (ages_before,), (ages_after,) = _ort_outputs(before, batch), _ort_outputs(proto, batch)
    assert ages_before.min() > 1.0  # a live ReLU head: the comparison means something
    assert np.array_equal(ages_before, ages_after)


def test_export_leaves_scalar_preprocessing_where_tf2onnx_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """tf (Xception): x * (1/127.5) - 1 costs the same in either layout: left alone."""
    before, proto = _convert_keeping_a_copy("tf", monkeypatch)
    assert _ops_from(proto, INPUT_NAME, 3)[0] == ["Mul", "Sub", "Transpose"]
    assert proto.SerializeToString() == before.SerializeToString()


def _graph(
    mean: np.ndarray | None = None,
    mean_is_input: bool = False,
    perm: tuple[int, ...] = (0, 3, 1, 2),
    gather_also_read: bool = False,
    mean_first: bool = False,
    scale: float | None = None,
    gather: bool = True,
) -> Any:
    """image (N, 8, 8, 3) -> Gather(-1, [2,1,0]) -> Sub(mean) [-> Mul(scale)] -> Transpose -> Conv
    -> mean -> pooled (N, 1), with the variations the pass must refuse or handle."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean = np.array(CAFFE_MEAN_BGR, np.float32) if mean is None else mean
    pixels = "bgr" if gather else INPUT_NAME
    nodes = [helper.make_node("Gather", [INPUT_NAME, "order"], ["bgr"], axis=-1)] if gather else []
    nodes.append(helper.make_node("Sub", ["mean", pixels] if mean_first else [pixels, "mean"], ["centred"]))
    last = "centred"
    initializers = [
        numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.05, (2, 3, 3, 3)).astype(np.float32), "kernel"),
    ]
    if gather:
        initializers.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "order"))
    if scale is not None:
        nodes.append(helper.make_node("Mul", ["centred", "scale"], ["scaled"]))
        initializers.append(numpy_helper.from_array(np.array(scale, np.float32), "scale"))
        last = "scaled"
    nodes += [
        helper.make_node("Transpose", [last], ["nchw"], perm=list(perm)),
        helper.make_node("Conv", ["nchw", "kernel"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["pooled_all"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["pooled_all"], ["pooled"], axes=[1], keepdims=1),
    ]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 1])]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 8, 8, 3])]
    if gather_also_read:
        outputs.append(helper.make_tensor_value_info("bgr", TensorProto.FLOAT, ["N", 8, 8, 3]))
    initializers.append(numpy_helper.from_array(mean, "mean"))
    if mean_is_input:  # an initializer the caller may override
        inputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, list(mean.shape)))
    graph = helper.make_graph(nodes, "preprocessing", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"agetool.note": "kept"})
    # With shape info for every tensor, as ORT's quantization preprocessing leaves it.
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    "variation",
    [
        {"perm": (0, 3, 2, 1)},  # not NHWC -> NCHW
        {"gather_also_read": True},  # an intermediate tensor read twice (here: a graph output)
        {"mean_is_input": True},  # the mean is a graph input (overridable), not a constant
        {"mean": np.full((8, 1, 3), 100.0, np.float32)},  # a per-row, not per-channel, constant
        {"mean": np.array([1.0, 2.0], np.float32)},  # does not match the 3 channels
        {"gather": False, "mean": np.array([127.5], np.float32), "scale": 0.5},  # nothing per channel
    ],
)
def test_graphs_the_pass_does_not_recognise_are_left_untouched(variation: dict) -> None:
    proto = _graph(**variation)
    serialized = proto.SerializeToString()
    assert move_input_preprocessing_behind_layout(proto) == 0
    assert proto.SerializeToString() == serialized


def test_a_non_image_graph_is_left_untouched(tiny_onnx_model: Path) -> None:
    import onnx

    proto = onnx.load(str(tiny_onnx_model))
    serialized = proto.SerializeToString()
    assert move_input_preprocessing_behind_layout(proto) == 0
    assert proto.SerializeToString() == serialized


@pytest.mark.parametrize(
    "variation",
    [
        {},
        {"mean": np.array(CAFFE_MEAN_BGR, np.float32).reshape(1, 1, 1, 3), "mean_first": True, "scale": 0.017},
        {"mean": np.array([127.5], np.float32)},
        {"gather": False},
    ],
)
def test_rewritten_graph_gives_identical_outputs_and_leaves_nothing_stale(variation: dict) -> None:
    import onnx

    proto = _graph(**variation)
    original = type(proto)()
    original.CopyFrom(proto)
    assert move_input_preprocessing_behind_layout(proto) == 1

    (transpose,) = _readers_of(proto, INPUT_NAME)
    assert transpose.op_type == "Transpose"
    (first_op,) = _readers_of(proto, transpose.output[0])
    assert first_op.op_type == ("Gather" if variation.get("gather", True) else "Sub")
    assert all(n.attribute[0].i == 1 for n in proto.graph.node if n.op_type == "Gather")
    assert [n.op_type for n in _readers_of(proto, "nchw")] == ["Conv"]  # downstream names unchanged
    names = {t for n in proto.graph.node for t in (*n.input, *n.output)}
    assert {"bgr", "centred", "scaled"}.isdisjoint(names)
    assert {v.name for v in proto.graph.value_info} <= names  # no shape info for tensors that are gone
    assert {"image_nchw", "nchw"} <= {v.name for v in proto.graph.value_info}
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # the new shape info agrees with the ops
    assert {i.name for i in proto.graph.initializer} <= names  # the NHWC-shaped mean is gone
    assert proto.graph.input == original.graph.input and proto.graph.output == original.graph.output
    assert proto.metadata_props == original.metadata_props and proto.opset_import == original.opset_import

    batch = _random_batch(size=8)
    for before, after in zip(_ort_outputs(original, batch), _ort_outputs(proto, batch)):
        assert np.array_equal(before, after)
    assert move_input_preprocessing_behind_layout(proto) == 0  # nothing left to move


def _tool(monkeypatch: pytest.MonkeyPatch) -> Any:
    """tools/optimize_onnx_preprocessing.py as a module (tools/ is not a package)."""
    path = REPO / "tools" / "optimize_onnx_preprocessing.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tool_rewrites_a_model_file_after_comparing_it_on_real_faces(
    tmp_path: Path, small_face_folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import helper

    from agetool import __version__
    from agetool.contract import ModelMetadata

    proto = _graph()
    proto.graph.output[0].name = OUTPUT_NAME
    proto.graph.node[-1].output[0] = OUTPUT_NAME
    del proto.metadata_props[:]
    meta = ModelMetadata(agetool_version=__version__, input_size=8, backbone="tiny-test", variant="fp32")
    helper.set_model_props(proto, meta.to_props())
    folder = tmp_path / "models"
    folder.mkdir()
    source = folder / "model.onnx"
    onnx.save(proto, str(source))
    tool = _tool(monkeypatch)

    assert tool.main([str(source), str(folder / "out.onnx"), "--faces", str(small_face_folder), "--n-faces", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "onnxruntime: 28 images, max |before - after| age_years 0" in lines  # 8 + 8 + 2 random, 10 faces
    written = onnx.load(str(folder / "out.onnx"))
    assert [n.op_type for n in _readers_of(written, INPUT_NAME)] == ["Transpose"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "out.onnx"]  # no temp file left

    assert tool.main([str(folder / "out.onnx"), "--faces", str(small_face_folder)]) == 0
    assert "nothing written" in capsys.readouterr().out
    (folder / "broken.onnx").write_bytes(b"not a model")
    assert tool.main([str(folder / "broken.onnx"), "--faces", str(small_face_folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.onnx: not an ONNX model" in err[0]
