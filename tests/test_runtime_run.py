"""`agetool run`: one JSON line per face on an image, a folder and the demo portrait, from a real
YuNet detector and a real ONNX Runtime session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agetool.contract import age_band, preprocess_rgb
from agetool.edge_runtime.detect import FaceBox, crop_face_rgb
from conftest import YUNET
from test_runtime_units import astronaut_bgr, make_face_canvas_folder

AGETOOL = [sys.executable, "-m", "agetool.cli"]
FIELDS = {"source", "frame", "box", "landmarks", "age_years", "age_std_years", "lower_years", "upper_years", "band",
          "id_check_required"}
TINY_MAE_DEFAULT = 5.0  # the tiny model states no MAE: the runtime assumes 5 years


def agetool_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(AGETOOL + ["run", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "AGETOOL_DETECTOR": ""})


def tiny_model_age(image_bgr: np.ndarray, box: list[int]) -> float:
    """What build_tiny_age_onnx's graph computes for this face: 5 + 60 * mean(pixels) / 255."""
    crop = crop_face_rgb(image_bgr, FaceBox(*map(float, box), 1.0))
    return 5.0 + 60.0 * float(preprocess_rgb(crop, 32).mean()) / 255.0


def parse_lines(stdout: str) -> list[dict]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    for row in rows:
        assert set(row) == FIELDS
    return rows


def test_run_on_one_image(tmp_path, tiny_onnx_model):
    image_path = tmp_path / "astronaut.png"
    cv2.imwrite(str(image_path), astronaut_bgr())
    result = agetool_run([str(image_path), "--model", str(tiny_onnx_model), "--detector", str(YUNET),
                          "--providers", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    [row] = parse_lines(result.stdout)
    assert row["source"] == str(image_path) and row["frame"] == 0
    assert row["age_years"] == pytest.approx(tiny_model_age(astronaut_bgr(), row["box"]), abs=0.3)  # the printed box is rounded to whole pixels
    assert row["lower_years"] == pytest.approx(row["age_years"] - TINY_MAE_DEFAULT, abs=0.02)
    assert row["upper_years"] == pytest.approx(row["age_years"] + TINY_MAE_DEFAULT, abs=0.02)
    assert row["band"] == age_band(row["age_years"])
    assert row["id_check_required"] == (row["lower_years"] < 25)
    assert "CPUExecutionProvider" in result.stderr  # the provider really used is logged


def test_run_on_a_folder_gives_a_line_per_face(tmp_path, tiny_onnx_model, shared_faces):
    folder = make_face_canvas_folder(tmp_path / "frames", shared_faces, n_images=3)
    cv2.imwrite(str(folder / "zz_empty.png"), np.full((480, 640, 3), 90, np.uint8))  # no face: no line
    result = agetool_run([str(folder), "--model", str(tiny_onnx_model), "--detector", str(YUNET),
                          "--policy-age", "40", "--buffer", "15"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = parse_lines(result.stdout)
    assert [Path(r["source"]).name for r in rows] == ["frame000.jpg", "frame001.jpg", "frame002.jpg"]
    for row in rows:
        image = cv2.imread(row["source"])
        assert row["age_years"] == pytest.approx(tiny_model_age(image, row["box"]), abs=0.3)  # the printed box is rounded to whole pixels
        assert row["id_check_required"] is True  # threshold 40 + 15 is above anything the tiny model says


def test_run_demo_and_usage_errors(tmp_path, tiny_onnx_model):
    result = agetool_run(["--demo", "--model", str(tiny_onnx_model), "--detector", str(YUNET)], tmp_path)
    assert result.returncode == 0, result.stderr
    [row] = parse_lines(result.stdout)
    assert "astronaut" in row["source"]
    shipped = agetool_run(["--demo", "--model", str(tiny_onnx_model)], tmp_path)  # no --detector: shipped YuNet
    assert shipped.returncode == 0, shipped.stderr
    assert "detector" not in "".join(l for l in shipped.stderr.splitlines(True) if "WARNING" in l)
    assert "Haar" not in shipped.stderr
    [shipped_row] = parse_lines(shipped.stdout)
    assert shipped_row["box"] == row["box"] and len(shipped_row["landmarks"]) == 5
    haar = agetool_run(["--demo", "--model", str(tiny_onnx_model), "--detector", "haar"], tmp_path)
    assert haar.returncode == 0 and "Haar" in haar.stderr and len(parse_lines(haar.stdout)) >= 1
    assert all(r["landmarks"] is None for r in parse_lines(haar.stdout))
    bad_buffer = agetool_run(["--demo", "--buffer", "99", "--model", str(tiny_onnx_model)], tmp_path)
    assert bad_buffer.returncode == 2 and "--buffer" in bad_buffer.stderr and "Traceback" not in bad_buffer.stderr
    missing = agetool_run([str(tmp_path / "nowhere"), "--model", str(tiny_onnx_model)], tmp_path)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    both = agetool_run(["--demo", "x.jpg", "--model", str(tiny_onnx_model)], tmp_path)
    assert both.returncode == 2 and "either a SOURCE or --demo" in both.stderr
