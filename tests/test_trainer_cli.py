"""`agetool data inspect|split`, `agetool evaluate`, `agetool train` as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agetool.trainer.data import read_dataset
from agetool.trainer.evaluate import evaluate_model

AGETOOL = Path(sys.executable).with_name("agetool")


def agetool(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [str(AGETOOL), *map(str, args)], capture_output=True, text=True, env=full_env, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, expected_code: int | None = None) -> str:
    assert result.returncode != 0, result.stdout
    if expected_code is not None:
        assert result.returncode == expected_code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_data_inspect_writes_the_report(small_face_folder, tmp_path):
    out = tmp_path / "inspect"
    result = agetool("data", "inspect", small_face_folder, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "usable images" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 24 and summary["n_corrupt"] == 0
    assert (out / "age_histogram.png").stat().st_size > 1000
    assert (out / "sample_faces.png").stat().st_size > 1000


def test_data_split_is_the_same_whatever_the_row_order(small_face_folder, tmp_path):
    shuffled = tmp_path / "elsewhere" / "faces"  # same folder name: the split is keyed by it
    shutil.copytree(small_face_folder, shuffled)
    labels = pd.read_csv(shuffled / "labels.csv").sample(frac=1.0, random_state=1)
    labels.to_csv(shuffled / "labels.csv", index=False)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert agetool("data", "split", small_face_folder, "--out", first, "--seed", "9").returncode == 0
    result = agetool("data", "split", shuffled, "--out", second, "--seed", "9", "--val", "0.15", "--test", "0.15")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "24" in result.stdout
    a = pd.read_csv(first).sort_values("file_name").reset_index(drop=True)
    b = pd.read_csv(second).sort_values("file_name").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["split"]) == {"train", "val", "test"}


def test_evaluate_onnx_both_input_layouts(small_face_folder, tiny_onnx_model, tmp_path):
    rows, _ = read_dataset(small_face_folder)
    expected = evaluate_model(tiny_onnx_model, rows)
    out = tmp_path / "eval.json"
    result = agetool("evaluate", "--model", tiny_onnx_model, "--images", small_face_folder, "--json", out, "--flip")
    assert result.returncode == 0, result.stderr
    assert "MAE" in result.stdout and "65+" in result.stdout
    report = json.loads(out.read_text())
    assert report["n"] == 24 and report["flip"] is True
    assert report["mae"] == pytest.approx(expected.mae, abs=1e-3)  # the toy model is mirror-symmetric

    out2 = tmp_path / "eval2.json"
    result = agetool(
        "evaluate", "--images", small_face_folder / "final_files", "--labels", small_face_folder / "labels.csv",
        "--json", out2, "--buffer", "2.5", env={"AGETOOL_MODEL": str(tiny_onnx_model)},
    )
    assert result.returncode == 0, result.stderr
    report2 = json.loads(out2.read_text())
    assert report2["mae"] == report["mae"] and report2["threshold_years"] == 27.5


def test_evaluate_a_keras_model_from_the_trainer(small_face_folder, tmp_path):
    pytest.importorskip("keras")
    from agetool.trainer.model import build_model

    from typer.testing import CliRunner

    from agetool.cli import app

    model_path = tmp_path / "untrained.keras"
    build_model("mobilenetv3small", input_size=32, weights="none").save(model_path)
    out = tmp_path / "eval.json"
    # In-process: a second TensorFlow import in a subprocess would double this test's time.
    args = ["evaluate", "--model", str(model_path), "--images", str(small_face_folder), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["model_format"] == "keras" and report["model"]["input_size"] == 32
    assert report["n"] == 24 and np.isfinite(report["mae"])


def test_bad_input_is_one_red_line(small_face_folder, tiny_onnx_model, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("name,age\nx.jpg,3\n")
    cases = [
        (("data", "inspect", tmp_path / "nope"), "data folder not found"),
        (("data", "split", small_face_folder, "--out", tmp_path / "s.csv", "--val", "0.9"), "fractions"),
        (("evaluate", "--model", junk, "--images", small_face_folder), "not a loadable ONNX model"),
        (("evaluate", "--model", tiny_onnx_model, "--images", small_face_folder, "--buffer", "25"), "--buffer"),
        (("evaluate", "--model", tiny_onnx_model, "--images", small_face_folder / "final_files"), "no labels.csv"),
        (("evaluate", "--model", tiny_onnx_model, "--images", small_face_folder, "--labels", bad_labels), "missing column"),
        (("evaluate", "--model", tmp_path / "m.h5", "--images", small_face_folder), ".onnx or .keras"),
    ]
    for args, message in cases:
        line = assert_one_line_error(agetool(*args), expected_code=2)
        assert message in line, (args, line)
    missing_default = agetool("evaluate", "--images", small_face_folder, env={"AGETOOL_MODEL": str(tmp_path / "x.onnx")})
    assert "default model" in assert_one_line_error(missing_default, expected_code=2)


def test_train_options_are_checked_before_training(small_face_folder, tmp_path):
    out = tmp_path / "run"
    line = assert_one_line_error(agetool("train", small_face_folder, "--out", out, "--epochs", "0"), expected_code=2)
    assert line.startswith("error: --epochs:")
    line = assert_one_line_error(agetool("train", small_face_folder, "--out", out, "--loss", "hinge"), expected_code=2)
    assert line.startswith("error: --loss:")
    line = assert_one_line_error(agetool("train", small_face_folder, "--out", out, "--lr", "-1"), expected_code=2)
    assert line.startswith("error: --lr:")
    assert not out.exists()


def test_train_options_map_onto_the_config(small_face_folder, tmp_path):
    from agetool.trainer.cli import make_train_config

    config = make_train_config(
        data_dirs=[small_face_folder], out_dir=tmp_path / "o", backbone="xception", weights="imagenet",
        input_size=128, epochs=3, batch_size=16, learning_rate=3e-4, loss="huber", split_file=None,
        seed=7, augment=False, resume=True, max_images=100, run_dir=None,
    )
    assert (config.backbone, config.weights, config.input_size, config.epochs) == ("xception", "imagenet", 128, 3)
    assert (config.learning_rate, config.loss, config.seed, config.augment) == (3e-4, "huber", 7, False)
    assert config.resume is True and config.max_images == 100 and config.split_file is None
