"""`agetool data framing`: how tightly real face images frame their faces, under real YuNet."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from agetool.errors import AgetoolError
from agetool.trainer.framing import measure_face_margin, measure_folders_margin
from conftest import YUNET


@pytest.fixture
def yunet():
    if not YUNET.is_file():
        pytest.skip("YuNet model not found beside the checkout")
    return YUNET


def test_utkface_chips_are_tight(small_face_folder, yunet):
    margin, n_faces = measure_folders_margin([small_face_folder], yunet)
    assert n_faces >= 15
    assert 0.0 <= margin < 0.1  # YuNet's box covers almost the whole chip


def test_padded_chips_measure_the_padding(small_face_folder, yunet, tmp_path):
    """Chips pasted with a border of half their size on each side frame their faces loosely.

    (Not exactly 0.5 more: inside a tight chip YuNet's box is clipped by the image edge, so the
    unclipped box is ~10 % larger than the chip's.)"""
    paths = []
    for i, chip in enumerate(sorted((small_face_folder / "final_files").iterdir())[:12]):
        image = cv2.imread(str(chip))
        pad = image.shape[0] // 2
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        paths.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(paths[-1]), padded)
    tight, _ = measure_face_margin(sorted((small_face_folder / "final_files").iterdir())[:12], yunet)
    loose, n_faces = measure_face_margin(paths, yunet)
    assert n_faces >= 8
    assert 0.3 < loose - tight < 0.6


def test_no_face_and_missing_detector_are_clear_errors(tmp_path, yunet):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(AgetoolError, match="no face"):
        measure_face_margin([blank], yunet)
    result = subprocess.run(
        [sys.executable, "-m", "agetool.cli", "data", "framing", str(tmp_path), "--detector", str(tmp_path / "x.onnx")],
        capture_output=True, text=True,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
