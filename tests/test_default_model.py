"""The shipped default model: present, self-describing, and still estimating ages end to end."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from agetool.contract import CROP_ALIGNED_V1
from agetool.edge_runtime.detect import FaceDetector
from agetool.edge_runtime.face_pipeline import FaceAgePipeline
from agetool.edge_runtime.infer import OnnxAgeModel
from agetool.paths import DEFAULT_MODEL_DIR, DEFAULT_MODEL_FILE, SHIPPED_DETECTOR, default_model_path

SHIPPED = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE
CARD = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE.replace(".onnx", ".card.json")


def test_default_path_is_the_shipped_file(monkeypatch):
    monkeypatch.delenv("AGETOOL_MODEL", raising=False)
    assert default_model_path() == SHIPPED
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 30 * 1024 * 1024
    assert SHIPPED_DETECTOR.is_file() and (DEFAULT_MODEL_DIR / "face_detection_yunet_LICENSE.txt").is_file()


def test_shipped_model_metadata_matches_its_card():
    model = OnnxAgeModel(SHIPPED, providers="cpu")
    card = json.loads(CARD.read_text())
    meta = model.metadata
    assert meta.variant == "int8" and meta.input_size == 224 and meta.backbone == "mobilenet"
    assert meta.crop == CROP_ALIGNED_V1 and meta.align_coverage == card["training"]["align_coverage"]
    assert meta.std_output_name == "age_std_years"
    assert meta.interval_scale == pytest.approx(card["evaluation"]["interval"]["interval_scale"])
    assert meta.interval_level == card["evaluation"]["interval"]["level"]
    assert meta.id_check_buffer_years == card["challenge25"]["buffer_years"]
    assert card["evaluation"]["buffer"]["met_target"] is True
    assert "research" in card["warning"].lower()
    assert [o.name for o in model.session.get_outputs()] == ["age_years", "age_std_years"]


def test_shipped_model_estimates_real_faces_end_to_end(shared_faces):
    """60 real faces spread over ages, each pasted into a larger frame, detected, aligned and
    estimated through the one pipeline the till runs: the error stays near the reported MAE
    (4.4 years on UTKFace test); a broken export, crop or preprocessing would be far off."""
    labels = pd.read_csv(shared_faces / "labels.csv").sort_values("file_name")
    picked = labels.iloc[np.linspace(0, len(labels) - 1, 60).astype(int)]
    pipeline = FaceAgePipeline(FaceDetector(SHIPPED_DETECTOR), OnnxAgeModel(SHIPPED, providers="cpu"))
    ages, truth, spreads = [], [], []
    for name, age in zip(picked["file_name"], picked["real_age"]):
        chip = cv2.imread(str(shared_faces / "final_files" / name))
        frame = cv2.copyMakeBorder(chip, 140, 140, 220, 220, cv2.BORDER_REPLICATE)
        faces = pipeline.analyse(frame)
        if faces:
            ages.append(faces[0].age_years)
            spreads.append(faces[0].age_std_years)
            truth.append(age)
    assert len(ages) >= 55
    ages, truth = np.array(ages), np.array(truth)
    assert float(np.abs(ages - truth).mean()) < 7.0
    assert np.corrcoef(ages, truth)[0, 1] > 0.85
    assert all(s is not None and s > 0 for s in spreads)


def test_shipped_model_runs_its_preprocessing_after_the_layout_transpose():
    """The BGR Gather and mean Sub come after the NHWC->NCHW Transpose (ORT runs them ~2x faster
    there; tools/optimize_onnx_preprocessing.py), and the pass finds nothing left to move."""
    import onnx

    from agetool.export.graph_passes import move_input_preprocessing_behind_layout

    proto = onnx.load(str(SHIPPED))
    readers = [node for node in proto.graph.node if "image" in node.input]
    assert [(n.op_type, list(n.attribute[0].ints)) for n in readers] == [("Transpose", [0, 3, 1, 2])]
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
    assert gathers and all(a.i == 1 for n in gathers for a in n.attribute if a.name == "axis")
    assert move_input_preprocessing_behind_layout(proto) == 0
