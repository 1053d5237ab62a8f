import numpy as np
import pytest

from agetool.edge_runtime.infer import OnnxAgeModel, resolve_providers
from agetool.errors import AgetoolError
from conftest import build_tiny_age_onnx


def test_tiny_model_runs_in_real_ort_session(tiny_onnx_model):
    model = OnnxAgeModel(tiny_onnx_model, providers="cpu")
    assert model.provider == "CPUExecutionProvider"
    assert model.input_size == 32
    dark = np.zeros((1, 32, 32, 3), np.float32)
    bright = np.full((1, 32, 32, 3), 255, np.float32)
    ages = model.predict(np.concatenate([dark, bright]))
    assert ages == pytest.approx([5.0, 65.0], abs=1e-4)
    crops = [np.full((100, 80, 3), 127, np.uint8)]
    assert model.predict_rgb(crops)[0] == pytest.approx(5 + 60 * 127 / 255, abs=1e-3)


def test_model_without_metadata_is_refused(tmp_path):
    path = build_tiny_age_onnx(tmp_path / "plain.onnx", with_metadata=False)
    with pytest.raises(AgetoolError, match="not an agetool model"):
        OnnxAgeModel(path)


def test_non_onnx_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(AgetoolError, match="not a loadable ONNX model"):
        OnnxAgeModel(junk)
    with pytest.raises(AgetoolError, match="file not found"):
        OnnxAgeModel(tmp_path / "nope.onnx")


def test_wrong_input_shape_is_refused(tiny_onnx_model):
    model = OnnxAgeModel(tiny_onnx_model)
    with pytest.raises(AgetoolError, match="expected"):
        model.predict(np.zeros((1, 16, 16, 3), np.float32))


def test_provider_resolution_ends_with_cpu():
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(AgetoolError, match="unknown execution provider"):
        resolve_providers("quantum")
