"""Keras (.keras) -> ONNX FP32 with tf2onnx: input `image` NHWC float32, output `age_years` (N, 1)."""

from __future__ import annotations

import gc
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

from agetool.contract import INPUT_NAME, OUTPUT_NAME
from agetool.export import graph_passes

# The distribution head's second output: each face's own spread, in years.
STD_OUTPUT_NAME = "age_std_years"
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

BATCH_DIM = "N"
# QDQ per-channel quantization needs opset 13; tf2onnx 1.17 converts up to opset 18.
MIN_OPSET = 13
MAX_OPSET = 18


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def load_keras_model(path: Path) -> Any:
    """Load a Keras 3 `.keras` file (custom agetool layers registered first).

    Raises AgetoolError naming the file when it is missing or not a loadable Keras model."""
    if not path.is_file():
        raise AgetoolError(f"model {path}: file not found")
    if path.suffix != ".keras":
        raise AgetoolError(f"model {path}: expected a Keras 3 .keras file, got {path.suffix or 'no suffix'}")
    if not zipfile.is_zipfile(path):
        raise AgetoolError(f"model {path}: not a Keras 3 .keras file (not a zip archive)")
    _quiet_tensorflow()
    try:
        # Registers the trainer's custom layers (package "agetool") so load_model can rebuild them.
        import agetool.trainer.model  # noqa: F401
    except ImportError:
        log.debug("agetool.trainer.model not importable; loading without its custom layers")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile, AttributeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AgetoolError(f"model {path}: not a loadable Keras model ({first_line})") from None
    return model


def keras_input_size(model: Any, source: Path) -> int:
    """The square input size S of a model taking (None, S, S, 3) and returning (None, 1), or
    {age_years: (None, 1), age_std_years: (None, 1)} for a distribution head."""
    in_shape = model.input_shape
    out_shape = model.output_shape
    if sorted(getattr(model, "output_names", [])) == sorted([OUTPUT_NAME, STD_OUTPUT_NAME]):
        out_shape = out_shape[list(model.output_names).index(OUTPUT_NAME)]
    if not isinstance(in_shape, tuple) or len(in_shape) != 4 or in_shape[3] != 3 or in_shape[1] != in_shape[2] or not in_shape[1]:
        raise AgetoolError(f"model {source}: input shape {in_shape}; expected one (None, S, S, 3) image input")
    if not isinstance(out_shape, tuple) or tuple(out_shape[1:]) != (1,):
        raise AgetoolError(f"model {source}: output shape {out_shape}; expected one (None, 1) age output")
    return int(in_shape[1])


def convert_keras(model: Any, input_size: int, opset: int) -> Any:
    """tf2onnx conversion with a dynamic batch axis; returns an onnx.ModelProto."""
    _quiet_tensorflow()
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = (tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name=INPUT_NAME),)
    big = model.count_params() * 4 >= COLLECT_BETWEEN_PASSES_MIN_BYTES
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=opset, optimizers=optimizers_collecting_garbage() if big else None
    )
    # The TF graphs and tf2onnx's graph objects left behind are reference cycles too.
    gc.collect()
    proto = name_io(proto)
    # Here, so that the FP16 and INT8 files (built from this proto) get it too.
    graph_passes.move_input_preprocessing_behind_layout(proto)
    return proto


# A collection in a process holding TensorFlow takes ~0.17 s here and tf2onnx runs ~28 passes (~5 s
# a conversion): worth it where each discarded copy is large (ResNet50: 100 MB of weights), not for
# small models (MobileNet-v1 at 224 px: 17 MB; the tests' models: kilobytes).
COLLECT_BETWEEN_PASSES_MIN_BYTES = 64 * 2**20


def optimizers_collecting_garbage() -> dict[str, Callable[[], Any]] | None:
    """tf2onnx's default optimizers, each started after a full garbage collection.

    tf2onnx deep-copies its whole graph (weights included) before every optimizer pass so that a
    failing pass can be skipped; the copies it drops are reference cycles that Python's collector
    reaches only rarely, so they pile up: ResNet50 at 224 px peaked at 6.4 GB RSS in conversion
    instead of 2.7 GB. None (tf2onnx's own defaults, uncollected) where tf2onnx lacks the list."""
    from tf2onnx import optimizer

    defaults = getattr(optimizer, "_get_optimizers", None)
    if defaults is None:
        log.debug("tf2onnx.optimizer._get_optimizers missing: conversion garbage collected only at the end")
        return None

    def collected(factory: Callable[[], Any]) -> Callable[[], Any]:
        def make() -> Any:
            gc.collect()
            return factory()

        return make

    return {name: collected(factory) for name, factory in defaults().items()}


def name_io(proto: Any) -> Any:
    """Rename the graph output to `age_years` and name the batch axis `N` on input and output.

    A distribution model keeps its two named outputs, `age_years` first so that readers taking
    the first output still get the age."""
    graph = proto.graph
    names = [o.name for o in graph.output]
    if len(graph.input) == 1 and sorted(names) == sorted([OUTPUT_NAME, STD_OUTPUT_NAME]):
        outputs = sorted(graph.output, key=lambda o: o.name != OUTPUT_NAME)
        copies = [type(o)() for o in outputs]
        for copy, original in zip(copies, outputs):
            copy.CopyFrom(original)
        del graph.output[:]
        graph.output.extend(copies)
        for info in (graph.input[0], *graph.output):
            info.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
        return proto
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise AgetoolError(
            f"converted graph has {len(graph.input)} inputs and {len(graph.output)} outputs; expected 1 and 1"
        )
    if graph.input[0].name != INPUT_NAME:
        raise AgetoolError(f"converted graph input is {graph.input[0].name!r}; expected {INPUT_NAME!r}")
    old = graph.output[0].name
    if old != OUTPUT_NAME:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
            node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        for info in graph.value_info:
            if info.name == old:
                info.name = OUTPUT_NAME
        graph.output[0].name = OUTPUT_NAME
    for info in (graph.input[0], graph.output[0]):
        info.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    return proto
