"""The register model's pieces: the face-pretrained MobileNet backbone from a weights file, the
distribution head's two outputs through training, export and ONNX Runtime, the calibrated
interval, and the Challenge-25 buffer chosen across several validation sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED

from agetool.errors import AgetoolError
from agetool.trainer.evaluate import choose_buffer_across
from agetool.trainer.train_cached import interval_scale

keras = pytest.importorskip("keras")

SHARED_MODELS = SHARED / "models"


def _mobilenet_weights(path: Path, size: int = 32, seed: int = 3) -> Path:
    keras.utils.set_random_seed(seed)
    net = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=1.0, include_top=False, weights=None)
    net.save_weights(path)
    return path


def _head_npz(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, feats_kernel=rng.normal(0, 0.05, (1024, 256)).astype(np.float32),
             feats_bias=np.zeros(256, np.float32),
             age_kernel=rng.normal(0, 0.05, (256, 100)).astype(np.float32),
             age_bias=np.linspace(-2, 2, 100).astype(np.float32))
    return path


def test_mobilenet_backbone_loads_a_weights_file_and_the_head_starts_from_an_npz(tmp_path: Path) -> None:
    from agetool.trainer.model import backbone_of, build_model

    weights = _mobilenet_weights(tmp_path / "notop.weights.h5")
    head = _head_npz(tmp_path / "head.npz")
    model = build_model("mobilenet", 32, str(weights), head="distribution", head_init=str(head))
    saved = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=1.0, include_top=False, weights=None)
    saved.load_weights(weights)
    net = backbone_of(model)
    np.testing.assert_array_equal(net.get_layer("conv_pw_13").get_weights()[0],
                                  saved.get_layer("conv_pw_13").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("age_logits").get_weights()[1], np.load(head)["age_bias"])
    # The face-pretrained convention: BGR minus the caffe means, inside the graph.
    assert model.get_layer("backbone_preprocess").mode == "caffe"
    out = model.predict(np.full((2, 32, 32, 3), 128, np.float32), verbose=0)
    assert set(out) == {"age_years", "age_std_years"}
    assert out["age_years"].shape == (2, 1) and np.all(out["age_std_years"] > 0)
    assert np.all((out["age_years"] >= 1) & (out["age_years"] <= 100))


def test_bad_weights_and_head_files_are_one_line_errors(tmp_path: Path) -> None:
    from agetool.trainer.model import build_model

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(AgetoolError, match="junk.h5"):
        build_model("mobilenet", 32, str(junk), head="distribution")
    bad_head = tmp_path / "bad.npz"
    np.savez(bad_head, something=np.zeros(3))
    with pytest.raises(AgetoolError, match="--head-init"):
        build_model("mobilenet", 32, "none", head="distribution", head_init=str(bad_head))


def test_interval_scale_recovers_the_known_noise_of_a_toy_model() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    std = rng.uniform(1.0, 8.0, n)  # each face's own spread, as the model states it
    estimate = rng.uniform(1, 80, n)
    truth = estimate + rng.normal(0.0, 1.0, n) * std
    k90 = interval_scale(truth, estimate, std, 0.9)
    assert k90 == pytest.approx(1.645, abs=0.05)
    # The stated interval holds on fresh data from the same model.
    fresh = estimate + rng.normal(0.0, 1.0, n) * std
    assert np.mean(np.abs(fresh - estimate) <= k90 * std) == pytest.approx(0.9, abs=0.01)
    # A model that understates its spread by half gets a scale twice as large.
    assert interval_scale(truth, estimate, std / 2, 0.9) == pytest.approx(2 * k90, rel=1e-6)


def test_buffer_is_chosen_on_every_validation_set_at_once() -> None:
    rng = np.random.default_rng(1)
    minors = rng.uniform(5, 17.9, 400)
    adults = rng.uniform(25, 60, 400)
    true = np.r_[minors, adults]
    # Set "a" reads minors 9 years too old, set "b" reads them fine.
    est_a = np.r_[minors + 9 + rng.normal(0, 2, 400), adults + rng.normal(0, 3, 400)]
    est_b = np.r_[minors + rng.normal(0, 2, 400), adults + rng.normal(0, 3, 400)]
    choice = choose_buffer_across({"a": (true, est_a), "b": (true, est_b)})
    assert choice.met_target
    assert choice.buffer_years == max(choice.smallest_per_set.values())
    assert choice.smallest_per_set["a"] > choice.smallest_per_set["b"]
    for rates in choice.per_set.values():
        assert rates.minors_passed_rate <= 0.01
    # One step less lets more than 1 % of set a's minors through.
    less = choice.threshold_years - 0.5
    assert np.mean(est_a[:400] >= less) > 0.01
    with pytest.raises(AgetoolError):
        choose_buffer_across({})


def _aligned_like_folder(root: Path, shared_faces: Path, n: int = 40) -> Path:
    import shutil

    labels = pd.read_csv(shared_faces / "labels.csv").iloc[:n]
    (root / "final_files").mkdir(parents=True)
    for name in labels["file_name"]:
        shutil.copy(shared_faces / "final_files" / name, root / "final_files" / name)
    labels.to_csv(root / "labels.csv", index=False)
    (root / "align.json").write_text(json.dumps({"crop": "aligned_v1", "size": 64, "coverage": 1.3}))
    return root


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "agetool.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_distribution_model_trains_on_cached_features_and_exports_two_outputs(tmp_path: Path, shared_faces: Path) -> None:
    import onnxruntime as ort

    from agetool.contract import ModelMetadata

    data = _aligned_like_folder(tmp_path / "faces", shared_faces)
    weights = _mobilenet_weights(tmp_path / "notop.weights.h5", size=64)
    head = _head_npz(tmp_path / "head.npz")
    out = tmp_path / "run"
    trained = _cli("train", str(data), "--out", str(out), "--run-dir", str(tmp_path / "state"),
                   "--backbone", "mobilenet", "--weights", str(weights), "--head", "distribution",
                   "--head-init", str(head), "--cache-features", "--input-size", "64", "--epochs", "2",
                   "--batch-size", "8", "--lr", "1e-3")
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["crop"] == "aligned_v1" and card["align_coverage"] == 1.3
    assert card["std_output_name"] == "age_std_years" and card["interval_scale"] > 0
    assert (tmp_path / "state" / "features" / "train_v1.npy").is_file()  # the augmented view
    val = pd.read_csv(out / "val_predictions.csv")
    assert {"age_years", "age_std_years"} <= set(val.columns) and (val["age_std_years"] > 0).all()

    exported = _cli("export", str(out / "model.keras"), "--int8", "--calib", str(data),
                    "--calib-size", "8", "--val-size", "8", "--max-delta-mae", "100")
    assert exported.returncode == 0, exported.stderr[-2000:]
    for name in ("model.onnx", "model_int8.onnx"):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["age_years", "age_std_years"]
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        assert meta.crop == "aligned_v1" and meta.align_coverage == 1.3
        assert meta.std_output_name == "age_std_years" and meta.interval_scale == pytest.approx(card["interval_scale"])
        batch = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
        age, std = session.run(None, {"image": batch})
        assert age.shape == (3, 1) and std.shape == (3, 1) and np.all(std > 0)
    model = keras.saving.load_model(out / "model.keras")
    keras_out = model.predict(batch, verbose=0)
    fp32 = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_age, onnx_std = fp32.run(None, {"image": batch})
    np.testing.assert_allclose(onnx_age, keras_out["age_years"], atol=1e-3)
    np.testing.assert_allclose(onnx_std, keras_out["age_std_years"], atol=1e-3)


def test_distribution_head_without_cached_features_is_refused_before_any_work(tmp_path: Path, shared_faces: Path) -> None:
    result = _cli("train", str(shared_faces), "--out", str(tmp_path / "o"), "--backbone", "mobilenet",
                  "--head", "distribution", "--run-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "--cache-features" in result.stderr and "Traceback" not in result.stderr


def test_readme_quick_recipe_learns_something(tmp_path: Path, shared_faces: Path) -> None:
    """The README's quick training run (face-pretrained start, 300 faces, 2 epochs) beats the
    constant guess by far, where the from-scratch quick run answered one age for everyone."""
    weights = SHARED_MODELS / "faceres_mobilenet_notop.weights.h5"
    head = SHARED_MODELS / "faceres_age_head.npz"
    if not weights.is_file() or not head.is_file():
        pytest.skip(f"face-pretrained weights not found in {SHARED_MODELS}")
    out = tmp_path / "quick"
    result = _cli("train", str(shared_faces), "--out", str(out), "--run-dir", str(tmp_path / "state"),
                  "--backbone", "mobilenet", "--weights", str(weights), "--head", "distribution",
                  "--head-init", str(head), "--cache-features", "--input-size", "96", "--max-images", "300",
                  "--epochs", "2", "--lr", "1e-3")
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["best_val_mae"] < 0.6 * card["baseline_val_mae"], card
    assert "learned nothing" not in result.stderr


def test_missing_weights_and_head_files_fail_before_tensorflow_loads(tmp_path: Path, shared_faces: Path) -> None:
    for option, name in (("--weights", "nope.weights.h5"), ("--head-init", "nope.npz")):
        result = _cli("train", str(shared_faces), "--out", str(tmp_path / "o"), "--backbone", "mobilenet",
                      "--head", "distribution", option, str(tmp_path / name))
        assert result.returncode == 2 and name in result.stderr and "Traceback" not in result.stderr
        assert "tensorflow" not in result.stderr.lower()
