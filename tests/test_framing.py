"""The crop around a face must frame it as the model's training images did: the margin comes
from the model's metadata, and the runtime really uses it."""

import numpy as np
import pytest

from agetool.contract import FACE_MARGIN, Challenge25Policy, ModelMetadata
from agetool.edge_runtime.detect import FaceBox, crop_face_rgb
from agetool.edge_runtime.face_pipeline import FaceAgePipeline
from agetool.edge_runtime.infer import OnnxAgeModel
from agetool.edge_runtime.pipeline import analyse_frame
from conftest import build_tiny_age_onnx


class OneBoxDetector:
    """A detector that always finds the same box (the margin logic is what is under test)."""

    def detect(self, bgr):
        return [FaceBox(100.0, 100.0, 50.0, 50.0, 0.99)]


def bright_square_on_black() -> np.ndarray:
    frame = np.zeros((300, 300, 3), np.uint8)
    frame[100:150, 100:150] = 255
    return frame


def test_metadata_margin_defaults_to_appa_style():
    meta = ModelMetadata(agetool_version="x", input_size=32)
    assert meta.face_margin == FACE_MARGIN == 0.4
    back = ModelMetadata.from_props(ModelMetadata(agetool_version="x", input_size=32, face_margin=0.015).to_props())
    assert back.face_margin == pytest.approx(0.015)


def test_crop_grows_with_margin():
    frame = bright_square_on_black()
    tight = crop_face_rgb(frame, FaceBox(100, 100, 50, 50, 1.0), margin=0.0)
    wide = crop_face_rgb(frame, FaceBox(100, 100, 50, 50, 1.0), margin=0.4)
    assert tight.shape == (50, 50, 3) and tight.min() == 255
    assert wide.shape == (90, 90, 3) and wide.mean() == pytest.approx(255 * (50 / 90) ** 2, rel=0.01)


@pytest.mark.parametrize("margin,expected_mean", [(0.0, 255.0), (0.4, 255 * (50 / 90) ** 2)])
def test_runtime_crops_with_the_models_margin(tmp_path, margin, expected_mean):
    path = build_tiny_age_onnx(tmp_path / f"m{margin}.onnx", face_margin=margin)
    model = OnnxAgeModel(path, providers="cpu")
    pipeline = FaceAgePipeline(OneBoxDetector(), model)
    results = analyse_frame(bright_square_on_black(), "test", 0, pipeline, Challenge25Policy())
    # tiny model: age = 5 + 60 * mean / 255, so the age tells which pixels the crop held
    assert results[0].age_years == pytest.approx(5 + 60 * expected_mean / 255, abs=0.6)
