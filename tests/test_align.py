"""The canonical aligned crop (contract) and `agetool data align` on real faces and real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from agetool.contract import AlignTemplate, align_face, matrix_scale, similarity_transform
from agetool.errors import AgetoolError
from agetool.paths import SHIPPED_DETECTOR
from agetool.trainer.align import choose_detection, detect_faces


def _rotation(deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]], [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_known_landmarks_give_the_known_transform_and_its_inverse_maps_back() -> None:
    template = AlignTemplate(224, 1.3)
    dst = template.points()
    # Landmarks in a frame: the template rotated by 20 degrees, scaled 0.5 and shifted.
    truth = _rotation(20.0, 0.5, (300.0, 120.0))
    src = np.c_[dst, np.ones(5)] @ truth.T
    matrix = similarity_transform(src, dst)
    expected = cv2.invertAffineTransform(truth)
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    assert matrix_scale(matrix) == pytest.approx(2.0)
    back = np.c_[dst, np.ones(5)] @ cv2.invertAffineTransform(matrix).T
    np.testing.assert_allclose(back, src, atol=1e-9)


def test_coverage_widens_the_crop_about_its_centre() -> None:
    tight, wide = AlignTemplate(100, 1.0).points(), AlignTemplate(100, 2.0).points()
    np.testing.assert_allclose(wide - 50.0, (tight - 50.0) / 2.0)
    with pytest.raises(AgetoolError, match="coverage"):
        AlignTemplate(100, 9.0)


def test_degenerate_landmarks_are_a_clear_error() -> None:
    with pytest.raises(AgetoolError, match="coincide"):
        similarity_transform(np.ones((5, 2)), AlignTemplate().points())
    with pytest.raises(AgetoolError, match="finite"):
        similarity_transform(np.full((5, 2), np.nan), AlignTemplate().points())


def _landmarks(detector, image: np.ndarray) -> np.ndarray:
    detection, status = choose_detection(detect_faces(detector, image, 0.5))
    assert detection is not None, status
    return detection.landmarks


def test_aligned_crop_of_a_rotated_face_equals_the_upright_one(shared_faces: Path) -> None:
    detector = cv2.FaceDetectorYN.create(str(SHIPPED_DETECTOR), "", (320, 320), 0.5, 0.3, 50)
    image = cv2.imread(str(shared_faces / "final_files" / "000010.jpg"))
    canvas = cv2.copyMakeBorder(image, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(90, 120, 60))
    template = AlignTemplate(112, 1.0)  # tight: no border of the original chip in view
    upright = align_face(canvas, _landmarks(detector, canvas), template).astype(np.float32)
    h, w = canvas.shape[:2]
    rotated = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((w / 2, h / 2), 25.0, 1.4), (w, h),
                             borderMode=cv2.BORDER_REPLICATE)
    realigned = align_face(rotated, _landmarks(detector, rotated), template).astype(np.float32)
    other = cv2.imread(str(shared_faces / "final_files" / "000011.jpg"))
    other_crop = align_face(other, _landmarks(detector, other), template).astype(np.float32)
    same = np.abs(upright - realigned).mean()
    different = np.abs(upright - other_crop).mean()
    # Landmark noise moves a few pixels (~16 grey levels on average here); another face ~80.
    assert same < 20.0, same
    assert same < different / 4, (same, different)


def _write_folder(root: Path, images: dict[str, np.ndarray], ages: dict[str, int]) -> Path:
    (root / "final_files").mkdir(parents=True)
    for name, image in images.items():
        cv2.imwrite(str(root / "final_files" / name), image)
    pd.DataFrame({"file_name": list(ages), "real_age": list(ages.values())}).to_csv(root / "labels.csv", index=False)
    return root


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agetool.cli", *args], capture_output=True, text=True, timeout=300)


def test_data_align_writes_aligned_faces_and_reports_faceless_and_two_face_images(
    tmp_path: Path, shared_faces: Path
) -> None:
    names = pd.read_csv(shared_faces / "labels.csv")["file_name"].iloc[10:13]
    chips = [cv2.imread(str(shared_faces / "final_files" / name)) for name in names]
    grey = np.full((200, 200, 3), 127, np.uint8)
    pair = np.full((300, 640, 3), 127, np.uint8)
    pair[50:250, 10:210], pair[50:250, 400:600] = chips[1], chips[2]
    src = _write_folder(
        tmp_path / "mixed",
        {"a.jpg": chips[0], "b.png": chips[1], "blank.jpg": grey, "pair.jpg": pair},
        {"a.jpg": 30, "b.png": 41, "blank.jpg": 50, "pair.jpg": 22},
    )
    (src / "final_files" / "broken.jpg").write_bytes(b"not a jpeg")
    labels = pd.read_csv(src / "labels.csv")
    pd.concat([labels, pd.DataFrame({"file_name": ["broken.jpg"], "real_age": [9]})]).to_csv(src / "labels.csv", index=False)

    out = tmp_path / "aligned"
    result = _run_cli("data", "align", str(src), "--out", str(out), "--size", "96")
    assert result.returncode == 0, result.stderr
    folder = out / "mixed"
    written = pd.read_csv(folder / "labels.csv")
    assert sorted(written["file_name"]) == ["a.jpg", "b.jpg"]
    assert dict(zip(written["file_name"], written["real_age"])) == {"a.jpg": 30, "b.jpg": 41}
    for name in written["file_name"]:
        crop = cv2.imread(str(folder / "final_files" / name))
        assert crop.shape == (96, 96, 3)
    report = pd.read_csv(folder / "align_report.csv").set_index("file_name")
    assert report.loc["blank.jpg", "status"] == "no_face"
    assert report.loc["pair.jpg", "status"] == "ambiguous"
    assert report.loc["broken.jpg", "status"] == "unreadable"
    info = json.loads((folder / "align.json").read_text())
    assert info["crop"] == "aligned_v1" and info["size"] == 96 and info["complete"] is True
    assert (info["written"], info["no_face"], info["several_faces_ambiguous"], info["unreadable"]) == (2, 1, 1, 1)
    # The aligned folder is an ordinary data folder: inspect reads it unchanged.
    inspected = _run_cli("data", "inspect", str(folder))
    assert inspected.returncode == 0, inspected.stderr

    again = _run_cli("data", "align", str(src), "--out", str(out), "--size", "96")
    assert again.returncode == 0, again.stderr
    assert json.loads((folder / "align.json").read_text())["reused_from_earlier_run"] == 2


def test_data_align_missing_detector_is_one_line(tmp_path: Path, small_face_folder: Path) -> None:
    result = _run_cli("data", "align", str(small_face_folder), "--out", str(tmp_path / "o"),
                      "--detector", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "nope.onnx" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_trained_on_aligned_folders_says_so_in_its_card(tmp_path: Path, shared_faces: Path) -> None:
    """The end-to-end trainer (not only --cache-features) records the crop of aligned folders, so
    export writes crop aligned_v1 and the runtime aligns; mixing aligned and raw folders is refused."""
    import shutil

    aligned = tmp_path / "aligned"
    labels = pd.read_csv(shared_faces / "labels.csv").iloc[:16]
    (aligned / "final_files").mkdir(parents=True)
    for name in labels["file_name"]:
        shutil.copy(shared_faces / "final_files" / name, aligned / "final_files" / name)
    labels.to_csv(aligned / "labels.csv", index=False)
    (aligned / "align.json").write_text(json.dumps({"crop": "aligned_v1", "size": 200, "coverage": 1.3}))
    out = tmp_path / "run"
    trained = _run_cli("train", str(aligned), "--out", str(out), "--run-dir", str(tmp_path / "state"),
                       "--backbone", "mobilenetv3small", "--input-size", "32", "--epochs", "1", "--batch-size", "8")
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["crop"] == "aligned_v1" and card["align_coverage"] == 1.3
    mixed = _run_cli("train", str(aligned), str(shared_faces), "--out", str(tmp_path / "m"),
                     "--run-dir", str(tmp_path / "state2"), "--backbone", "mobilenetv3small", "--input-size", "32")
    assert mixed.returncode == 2 and "align" in mixed.stderr and "Traceback" not in mixed.stderr
