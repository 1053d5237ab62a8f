"""`agetool evaluate`'s core on known toy models: age = 5 + 60 * mean(pixels) / 255."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest

from agetool.contract import AGE_BANDS, BAND_NAMES, challenge25_rates
from agetool.errors import AgetoolError
from agetool.trainer.data import read_dataset
from agetool.trainer.evaluate import (
    choose_buffer,
    evaluate_folder,
    evaluate_model,
    evaluate_predictions,
    predict_rows,
)
from conftest import build_tiny_age_onnx


def expected_toy_ages(paths: list[str], input_size: int = 32) -> np.ndarray:
    """What the toy model must say, computed here with plain OpenCV."""
    ages = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        small = cv2.resize(bgr, (input_size, input_size), interpolation=cv2.INTER_AREA)
        ages.append(5.0 + 60.0 * small.astype(np.float64).mean() / 255.0)
    return np.array(ages)


def test_onnx_report_matches_the_toy_model_exactly(small_face_folder, tiny_onnx_model, tmp_path):
    rows, _ = read_dataset(small_face_folder)
    true = rows["real_age"].to_numpy(float)
    est = expected_toy_ages(list(rows["path"]))
    out = tmp_path / "eval.json"
    report = evaluate_folder(tiny_onnx_model, small_face_folder, json_out=out, buffer_years=2.0, workers=2)

    error = est - true
    assert report.n == 24 and report.n_skipped == 0
    assert report.mae == pytest.approx(np.abs(error).mean(), abs=1e-3)
    assert report.rmse == pytest.approx(np.sqrt((error**2).mean()), abs=1e-3)
    assert report.mean_bias == pytest.approx(error.mean(), abs=1e-3)
    rates = challenge25_rates(true, est, 27.0)
    assert report.threshold_years == 27.0
    assert report.minors_passed_rate == pytest.approx(rates["minors_passed_rate"], abs=1e-4)
    assert report.adults_checked_rate == pytest.approx(rates["adults_checked_rate"], abs=1e-4)
    for band in AGE_BANDS:
        members = np.array([band.contains(a) for a in true])
        assert report.count_by_band[band.name] == members.sum()
        if members.any():
            assert report.mae_by_band[band.name] == pytest.approx(np.abs(error[members]).mean(), abs=1e-3)
            assert report.bias_by_band[band.name] == pytest.approx(error[members].mean(), abs=1e-3)

    saved = json.loads(out.read_text())
    for key in ("n", "mae", "rmse", "mean_bias", "mae_by_band", "bias_by_band", "count_by_band",
                "minors_passed_rate", "adults_checked_rate", "n_skipped"):
        assert key in saved, key
    assert set(saved["mae_by_band"]) == set(BAND_NAMES)
    assert saved["model"]["model_format"] == "onnx" and saved["model"]["input_size"] == 32
    assert "predictions" not in saved


def test_corrupt_and_missing_images_are_skipped_and_counted(small_face_folder, tiny_onnx_model, tmp_path):
    images = small_face_folder / "final_files"
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    labels = pd.read_csv(small_face_folder / "labels.csv")
    extra = pd.DataFrame({"file_name": ["broken.jpg", "gone.jpg"], "real_age": [30, 40]})
    labels_file = tmp_path / "my_labels.csv"
    pd.concat([labels, extra]).to_csv(labels_file, index=False)
    predictions = tmp_path / "pred.csv"
    report = evaluate_folder(
        tiny_onnx_model, images, labels_file, predictions_out=predictions, json_out=tmp_path / "e.json"
    )
    assert report.n == 24 and report.n_skipped == 2
    assert any("broken.jpg" in line for line in report.skipped)
    assert any("gone.jpg" in line for line in report.skipped)
    per_image = pd.read_csv(predictions)
    assert list(per_image.columns) == ["dataset", "file_name", "real_age", "estimated_age"]
    assert len(per_image) == 24 and set(per_image["dataset"]) == {"faces"}
    expected = expected_toy_ages([str(images / n) for n in per_image["file_name"]])
    np.testing.assert_allclose(per_image["estimated_age"], expected, atol=1e-2)


def test_split_subset_and_metadata_buffer(small_face_folder, tmp_path):
    from agetool.trainer.data import split_datasets

    model_path = build_tiny_age_onnx(tmp_path / "buffered.onnx")
    model = onnx.load(str(model_path))
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, "agetool.id_check_buffer_years": "4.5"}
    )
    onnx.save(model, str(model_path))
    split = split_datasets([small_face_folder], tmp_path / "split.csv", seed=1, val_fraction=0.25, test_fraction=0.25)
    report = evaluate_folder(model_path, small_face_folder, split_file=tmp_path / "split.csv", subset="val")
    val = split[split["split"] == "val"]
    assert report.n == len(val) and report.subset == "val"
    true = val["real_age"].to_numpy(float)
    est = expected_toy_ages(list(val["path"]))
    assert report.mae == pytest.approx(np.abs(est - true).mean(), abs=1e-3)
    assert report.metadata_buffer_years == 4.5
    at = report.rates_at_metadata_buffer
    assert at is not None and at.threshold_years == 29.5
    expected = challenge25_rates(true, est, 29.5)
    if at.minors_passed_rate is not None:
        assert at.minors_passed_rate == pytest.approx(expected["minors_passed_rate"], abs=1e-4)
    assert at.adults_checked_rate == pytest.approx(expected["adults_checked_rate"], abs=1e-4)


class LeftColumnModel:
    """Age = mean of the left-most pixel column: mirroring the face changes the answer."""

    input_size = 32

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return batch[:, :, 0, :].mean(axis=(1, 2))


def test_flip_averages_each_face_with_its_mirror(small_face_folder):
    rows, _ = read_dataset(small_face_folder)
    plain, ok, _ = predict_rows(LeftColumnModel(), rows, batch_size=5)
    flipped, _, _ = predict_rows(LeftColumnModel(), rows, batch_size=5, flip=True)
    assert ok.all()
    expected = []
    for path in rows["path"]:
        rgb = cv2.imread(str(path))[..., ::-1]
        small = cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
        expected.append((small[:, 0, :].mean() + small[:, -1, :].mean()) / 2)
    np.testing.assert_allclose(flipped, expected, atol=1e-3)
    assert np.abs(flipped - plain).max() > 0.5


def test_keras_model_gives_the_same_report_as_onnx(small_face_folder, tiny_onnx_model, tmp_path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((32, 32, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    age = keras.layers.Dense(1, name="age_years")(pooled)
    model = keras.Model(inputs, age)
    model.get_layer("age_years").set_weights(
        [np.full((3, 1), 60.0 / 255.0 / 3.0, np.float32), np.array([5.0], np.float32)]
    )
    keras_path = tmp_path / "toy.keras"
    model.save(keras_path)
    rows, _ = read_dataset(small_face_folder)
    from_keras = evaluate_model(keras_path, rows, batch_size=7, workers=2)
    from_onnx = evaluate_model(tiny_onnx_model, rows, workers=2)
    assert from_keras.model.model_format == "keras" and from_keras.model.input_size == 32
    assert from_keras.n == from_onnx.n == 24
    assert from_keras.mae == pytest.approx(from_onnx.mae, abs=1e-3)
    assert from_keras.mae_by_band == pytest.approx(from_onnx.mae_by_band, abs=1e-3)


def test_bad_models_and_options_are_one_line_errors(small_face_folder, tiny_onnx_model, tmp_path):
    rows, _ = read_dataset(small_face_folder)
    with pytest.raises(AgetoolError, match="file not found"):
        evaluate_model(tmp_path / "none.onnx", rows)
    with pytest.raises(AgetoolError, match=r"expected a \.onnx or \.keras file"):
        evaluate_model(small_face_folder / "labels.csv", rows)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(AgetoolError, match="not a loadable ONNX model"):
        evaluate_model(junk, rows)
    with pytest.raises(AgetoolError, match="--buffer"):
        evaluate_model(tiny_onnx_model, rows, buffer_years=-1)
    with pytest.raises(AgetoolError, match="--subset test: needs --split"):
        evaluate_folder(tiny_onnx_model, small_face_folder, subset="test")
    with pytest.raises(AgetoolError, match="no labels.csv inside"):
        evaluate_folder(tiny_onnx_model, small_face_folder / "final_files")


def test_metrics_on_hand_made_ages():
    true = np.array([10, 16, 20, 30, 40, 70], float)
    est = np.array([12, 26, 20, 24, 44, 60], float)
    metrics = evaluate_predictions(true, est)
    assert metrics.mae == pytest.approx((2 + 10 + 0 + 6 + 4 + 10) / 6, abs=1e-4)
    assert metrics.mean_bias == pytest.approx((2 + 10 + 0 - 6 + 4 - 10) / 6, abs=1e-4)
    assert metrics.minors_passed_rate == 0.5  # 16 -> 26
    assert metrics.adults_checked_rate == pytest.approx(1 / 3, abs=1e-4)  # 30 -> 24
    assert metrics.mae_by_band["18-24"] == 0.0 and metrics.mae_by_band["50-64"] is None
    assert metrics.count_by_band == {"0-12": 1, "13-17": 1, "18-24": 1, "25-34": 1, "35-49": 1, "50-64": 0, "65+": 1}
    with pytest.raises(AgetoolError, match="no image"):
        evaluate_predictions([], [])


def test_choose_buffer_finds_the_smallest_safe_step():
    true = np.array([15, 16, 17, 12, 30, 35, 40, 28], float)
    est = np.array([20, 26.2, 27.9, 10, 26, 31, 45, 29], float)
    choice = choose_buffer(true, est, max_minor_pass_rate=0.0)
    # minors at 26.2 and 27.9 must fall below 25 + buffer: buffer 3.0 (threshold 28.0)
    assert choice.buffer_years == 3.0 and choice.met_target
    assert choice.minors_passed_rate == 0.0
    assert choice.adults_checked_rate == pytest.approx(1 / 4)  # of 26, 31, 45, 29 only 26 < 28
    loose = choose_buffer(true, est, max_minor_pass_rate=0.25)
    assert loose.buffer_years == 1.5  # one of four minors (27.9) still passes at 26.5
    with pytest.raises(AgetoolError, match="no true minor"):
        choose_buffer([30, 40], [31, 41])
    hopeless = choose_buffer([10, 40], [90, 50], max_minor_pass_rate=0.0)
    assert not hopeless.met_target and hopeless.buffer_years == 20.0


def test_model_buffer_rates_follow_the_daemons_lower_bound_rule():
    """The daemon passes a shopper only when estimate - uncertainty >= 25 + buffer; evaluate's
    'model buffer' rates must score that rule, not the bare estimate."""
    true = np.array([16.0, 17.0, 30.0, 40.0, 28.0])
    est = np.array([29.0, 33.0, 30.0, 40.0, 31.0])
    metrics = evaluate_predictions(true, est, metadata_buffer_years=1.0, metadata_uncertainty_years=5.0)
    at = metrics.rates_at_metadata_buffer
    assert at.threshold_years == 26.0 and metrics.metadata_uncertainty_years == 5.0
    # lower bounds 24, 28, 25, 35, 26: one of two minors passes, one of three adults is checked
    assert at.minors_passed_rate == pytest.approx(0.5)
    assert at.adults_checked_rate == pytest.approx(1 / 3, abs=1e-4)
    assert metrics.minors_passed_rate == pytest.approx(1.0)  # bare estimates vs 25
