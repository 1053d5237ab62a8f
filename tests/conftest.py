"""Shared test fixtures: real files, tiny real models, the shared face data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AGETOOL_SHARED", REPO.parent / "shared"))
FIXTURES = REPO / "tests" / "fixtures"
YUNET = SHARED / "models" / "face_detection_yunet_2023mar.onnx"


def build_tiny_age_onnx(
    path: Path,
    input_size: int = 32,
    scale: float = 60.0,
    offset: float = 5.0,
    with_metadata: bool = True,
    std_scale: float | None = None,
    **metadata_fields,
) -> Path:
    """A real ONNX age model: age = offset + scale * mean(pixels) / 255, shape (N, 1).

    Brighter images look older: enough to check that pixels flow through the runtime. With
    `std_scale`, a second output "age_std_years" = 1 + std_scale * mean(pixels) / 255 comes
    FIRST in the graph's outputs (the runtime must find the age by name) and the metadata names it."""
    import onnx
    from onnx import TensorProto, helper

    from agetool import __version__
    from agetool.contract import INPUT_NAME, OUTPUT_NAME, ModelMetadata

    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=[1, 2, 3], keepdims=1),  # (N,1,1,1)
        helper.make_node("Reshape", ["m", "shape"], ["m2"]),
        helper.make_node("Mul", ["m2", "scale"], ["s"]),
        helper.make_node("Add", ["s", "offset"], [OUTPUT_NAME]),
    ]
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale / 255.0]),
        helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]),
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])]
    if std_scale is not None:
        nodes += [
            helper.make_node("Mul", ["m2", "std_scale"], ["std_s"]),
            helper.make_node("Add", ["std_s", "std_offset"], ["age_std_years"]),
        ]
        inits += [
            helper.make_tensor("std_scale", TensorProto.FLOAT, [], [std_scale / 255.0]),
            helper.make_tensor("std_offset", TensorProto.FLOAT, [], [1.0]),
        ]
        outputs.insert(0, helper.make_tensor_value_info("age_std_years", TensorProto.FLOAT, ["N", 1]))
        metadata_fields.setdefault("std_output_name", "age_std_years")
    graph = helper.make_graph(
        nodes,
        "tiny_age",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", input_size, input_size, 3])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        meta = ModelMetadata(
            agetool_version=__version__, input_size=input_size, backbone="tiny-test", variant="fp32",
            **metadata_fields,
        )
        onnx.helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx_model(tmp_path: Path) -> Path:
    return build_tiny_age_onnx(tmp_path / "tiny_age.onnx")


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The seeds'-layout UTKFace folder beside the checkout (CI has it)."""
    folder = SHARED / "data" / "utkface"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"shared face data not found at {folder}")
    return folder


@pytest.fixture
def small_face_folder(tmp_path: Path, shared_faces: Path) -> Path:
    """A seeds'-layout folder with 24 real faces copied from the shared data (ages spread out)."""
    import shutil

    import pandas as pd

    labels = pd.read_csv(shared_faces / "labels.csv")
    picked = labels.sort_values("real_age").iloc[np.linspace(0, len(labels) - 1, 24).astype(int)]
    out = tmp_path / "faces"
    (out / "final_files").mkdir(parents=True)
    for name in picked["file_name"]:
        shutil.copy(shared_faces / "final_files" / name, out / "final_files" / name)
    picked.to_csv(out / "labels.csv", index=False)
    return out
