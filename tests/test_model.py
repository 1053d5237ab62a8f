"""Model building: local ImageNet weights (a stand-in file the test writes), preprocessing
inside the graph, save/load round trip."""

import h5py
import keras
import numpy as np
import pytest

from agetool.errors import AgetoolError
from agetool.paths import ENV_IMAGENET_WEIGHTS
from agetool.trainer.model import IMAGENET_NOTOP_FILES, backbone_of, build_model, load_keras_model


def _write_standin_notop(path, input_size: int):
    """A notop weights file in the legacy Keras .h5 layout keras.applications reads."""
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    donor = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3), include_preprocessing=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, donor)
    return donor


def test_imagenet_weights_come_from_the_local_keras_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_IMAGENET_WEIGHTS, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    donor = _write_standin_notop(tmp_path / "keras" / "models" / IMAGENET_NOTOP_FILES["mobilenetv3small"], 64)
    model = build_model("mobilenetv3small", 64, "imagenet")
    loaded, wanted = backbone_of(model).get_weights(), donor.get_weights()
    assert len(loaded) == len(wanted) and all(np.array_equal(a, b) for a, b in zip(loaded, wanted))


def test_imagenet_weights_from_env_path_and_missing_file_message(tmp_path, monkeypatch):
    standin = tmp_path / "elsewhere" / "notop.h5"
    donor = _write_standin_notop(standin, 64)
    monkeypatch.setenv(ENV_IMAGENET_WEIGHTS, str(standin))
    model = build_model("mobilenetv3small", 64, "imagenet")
    assert np.array_equal(backbone_of(model).get_weights()[0], donor.get_weights()[0])
    monkeypatch.setenv(ENV_IMAGENET_WEIGHTS, str(tmp_path / "nope.h5"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(AgetoolError, match="not found; put it at .*never downloads"):
        build_model("mobilenetv3small", 64, "imagenet")


def test_resnet50_takes_rgb_0_255_and_round_trips(tmp_path):
    model = build_model("resnet50", 32, "none")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 1)
    assert model.inputs[0].name == "image" and model.layers[-1].name == "age_years"
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    model.save(tmp_path / "m.keras")
    after = keras.ops.convert_to_numpy(load_keras_model(tmp_path / "m.keras")(x))
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-4)
    # a fresh head starts near the default bias (30 years), not at 0 where a ReLU could die
    assert np.all(before > 5)
