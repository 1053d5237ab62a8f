"""The shipped default model: present, self-describing, and still estimating ages."""

import json

import numpy as np
import pandas as pd
import pytest

from agetool.edge_runtime.infer import OnnxAgeModel
from agetool.paths import DEFAULT_MODEL_DIR, DEFAULT_MODEL_FILE, default_model_path
from agetool.trainer.data import load_faces

SHIPPED = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE
CARD = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE.replace(".onnx", ".card.json")


def test_default_path_is_the_shipped_file(monkeypatch):
    monkeypatch.delenv("AGETOOL_MODEL", raising=False)
    assert default_model_path() == SHIPPED
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 30 * 1024 * 1024


def test_shipped_model_metadata_matches_its_card():
    model = OnnxAgeModel(SHIPPED, providers="cpu")
    card = json.loads(CARD.read_text())
    meta = model.metadata
    assert meta.variant == "int8" and meta.input_size == 128 and meta.backbone == "resnet50"
    assert meta.weights == "none"
    assert meta.id_check_buffer_years == card["challenge25"]["chosen_on_val"]["buffer_years"]
    assert meta.face_margin == card["framing"]["face_margin"] < 0.1
    assert meta.mae_uncertainty_years == pytest.approx(card["evaluation"]["val"]["mae"], abs=0.01)
    assert "research" in card["warning"]


def test_shipped_model_estimates_real_faces(shared_faces):
    """On 60 real faces spread over ages the shipped model's error stays near its reported MAE
    (5.3 years on 3,156 validation faces); a broken export or preprocessing would be far off."""
    labels = pd.read_csv(shared_faces / "labels.csv").sort_values("file_name")
    picked = labels.iloc[np.linspace(0, len(labels) - 1, 60).astype(int)]
    images, ok, _ = load_faces([shared_faces / "final_files" / n for n in picked["file_name"]], 128)
    model = OnnxAgeModel(SHIPPED, providers="cpu")
    ages = model.predict(images.astype(np.float32))
    mae = float(np.abs(ages - picked["real_age"].to_numpy()[ok]).mean())
    assert mae < 9.0
    assert np.corrcoef(ages, picked["real_age"].to_numpy()[ok])[0, 1] > 0.8
