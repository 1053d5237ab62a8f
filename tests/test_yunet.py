"""YuNet on OpenCV's DNN module, ONNX Runtime and OpenVINO: the same faces as OpenCV's own
FaceDetectorYN, on real photos, through the one numpy decoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from agetool.edge_runtime.detect import FaceDetector, detector_backend
from agetool.edge_runtime.yunet import OUTPUT_NAMES, YuNet, free_input_height_width
from agetool.errors import AgetoolError
from agetool.paths import default_detector_path
from test_runtime_units import astronaut_bgr

BACKENDS = ["opencv", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def reference_rows(bgr: np.ndarray, path: Path, score_threshold: float = 0.7) -> np.ndarray:
    size = (bgr.shape[1], bgr.shape[0])
    _, rows = cv2.FaceDetectorYN.create(str(path), "", size, score_threshold, 0.3, 50).detect(bgr)
    return np.zeros((0, 15), np.float32) if rows is None else rows


def two_faces() -> np.ndarray:
    """The astronaut twice on one canvas whose sides are not multiples of 32 (the padding path)."""
    face = cv2.resize(astronaut_bgr(), (260, 260), interpolation=cv2.INTER_AREA)
    canvas = np.full((301, 557, 3), 70, np.uint8)
    canvas[10:270, 5:265] = face
    canvas[30:290, 290:550] = face[:, ::-1]
    return canvas


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_finds_the_faces_opencv_finds(backend: str) -> None:
    yunet = YuNet(default_detector_path(), backend, 0.7, threads=1)
    for frame in (astronaut_bgr(), two_faces(), cv2.resize(two_faces(), (320, 173))):
        expected = reference_rows(frame, default_detector_path())
        found = yunet.detect(frame)
        assert len(expected) >= 1
        assert found.shape == expected.shape
        order = np.argsort(found[:, 0]), np.argsort(expected[:, 0])
        np.testing.assert_allclose(found[order[0]], expected[order[1]], atol=2e-3)
    assert len(yunet.detect(two_faces())) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_frame_has_no_face_on_any_backend(backend: str) -> None:
    assert YuNet(default_detector_path(), backend).detect(np.full((240, 320, 3), 90, np.uint8)).shape == (0, 15)


def test_coarse_to_fine_detection_is_the_same_on_onnxruntime_as_on_opencv() -> None:
    frame = cv2.resize(two_faces(), (1114, 602))
    on_opencv = FaceDetector(default_detector_path(), detect_max_side=320).detect(frame)
    on_ort = FaceDetector(default_detector_path(), detect_max_side=320, backend="onnxruntime").detect(frame)
    assert len(on_opencv) == len(on_ort) == 2
    for a, b in zip(sorted(on_opencv, key=lambda f: f.x), sorted(on_ort, key=lambda f: f.x)):
        assert abs(a.x - b.x) < 0.01 and abs(a.w - b.w) < 0.01
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.01)


def test_freeing_the_input_size_keeps_the_network_and_frees_only_the_shapes() -> None:
    original = onnx.load(str(default_detector_path()))
    edited = onnx.load_from_string(free_input_height_width(default_detector_path().read_bytes()))
    onnx.checker.check_model(edited)
    dims = [(d.dim_value, d.dim_param) for d in edited.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [(1, ""), (3, ""), (0, "height"), (0, "width")]
    assert [o.name for o in edited.graph.output] == list(OUTPUT_NAMES)
    assert all(o.type.tensor_type.shape.dim[1].dim_param for o in edited.graph.output)
    assert len(edited.graph.value_info) == 0 < len(original.graph.value_info)
    assert [n.SerializeToString() for n in edited.graph.node] == [n.SerializeToString() for n in original.graph.node]
    assert [i.SerializeToString() for i in edited.graph.initializer] == [
        i.SerializeToString() for i in original.graph.initializer]
    assert edited.opset_import == original.opset_import


def test_a_file_that_is_not_yunet_is_one_clear_error(tmp_path: Path, tiny_onnx_model: Path) -> None:
    with pytest.raises(AgetoolError, match=r"not a YuNet model \(no output cls_8\)"):
        YuNet(tiny_onnx_model, "onnxruntime")
    garbage = tmp_path / "yunet.onnx"
    garbage.write_bytes(b"not a network")
    for backend in BACKENDS:
        with pytest.raises(AgetoolError, match="not a loadable YuNet model") as caught:
            YuNet(garbage, backend)
        assert "\n" not in str(caught.value)
    with pytest.raises(AgetoolError, match="expected one of opencv, onnxruntime, openvino"):
        YuNet(default_detector_path(), "tensorflow")


def test_auto_runs_yunet_on_onnxruntime_beside_an_onnxruntime_model_else_on_opencv() -> None:
    assert detector_backend("auto", "onnxruntime") == "onnxruntime"
    assert detector_backend("auto", "openvino") == "opencv"
    assert detector_backend("openvino", "openvino") == "openvino"
    assert detector_backend("auto", "keras") == "opencv"
    assert detector_backend("opencv", "onnxruntime") == "opencv"


def test_onnxruntime_gives_the_same_faces_after_a_larger_input_shrank_its_arena() -> None:
    yunet = YuNet(default_detector_path(), "onnxruntime", threads=1)
    small, large = cv2.resize(two_faces(), (320, 173)), cv2.resize(two_faces(), (640, 346))
    first = yunet.detect(small)
    np.testing.assert_allclose(yunet.detect(large), reference_rows(large, default_detector_path()), atol=2e-3)
    np.testing.assert_array_equal(yunet.detect(small), first)
