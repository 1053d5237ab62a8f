"""The seeds' four functions over the real trainer, on a few real faces at 32 px."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from agetool.errors import AgetoolError
from agetool.trainer.data import make_split, read_dataset

pytest.importorskip("keras")


def test_importing_the_trainer_does_not_import_tensorflow():
    code = (
        "import sys, agetool.cli, agetool.trainer; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_loaders_follow_the_deterministic_split(small_face_folder):
    from agetool.trainer import load_test, load_train

    train = load_train(small_face_folder, input_size=32, batch_size=5, seed=3)
    val = load_test(small_face_folder, input_size=32, batch_size=5, seed=3)
    rows, _ = read_dataset(small_face_folder)
    split = make_split(rows, seed=3)
    assert sorted(train.paths) == sorted(split.loc[split["split"] == "train", "path"])
    assert sorted(val.paths) == sorted(split.loc[split["split"] == "val", "path"])
    assert not set(train.paths) & set(val.paths)
    assert len(train) == -(-len(train.paths) // 5)

    ages_by_path = rows.set_index("path")["real_age"]
    x, y = val[0]
    assert x.dtype == np.float32 and x.shape == (min(5, len(val.paths)), 32, 32, 3)
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 100
    assert y.dtype == np.float32 and y.shape == (len(x), 1)
    np.testing.assert_array_equal(y[:, 0], ages_by_path.loc[list(val.paths[: len(x)])].to_numpy(np.float32))
    again = load_test(small_face_folder, input_size=32, batch_size=5, seed=3)[0]
    np.testing.assert_array_equal(again[0], x)  # validation batches are fixed, not augmented


def test_unreadable_faces_are_dropped_from_their_batch(small_face_folder):
    from agetool.trainer import load_train

    labels = pd.read_csv(small_face_folder / "labels.csv")
    train = load_train(small_face_folder, input_size=32, batch_size=64, augment=False)
    victim = train.paths[0]
    open(victim, "wb").close()  # zero bytes
    x, y = train[0]
    assert len(x) == len(y) == len(train.paths) - 1
    assert len(labels) == 24


def test_create_model_and_train_model(small_face_folder):
    import keras

    from agetool.trainer import create_model, load_test, load_train, train_model

    model = create_model((32, 32, 3))
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 1)
    assert model.optimizer is not None  # compiled
    assert any("resnet50" in layer.name for layer in model.layers)
    # Eager mode: tracing ResNet50's graph costs ~20 s on 2 cores; the steps are the same.
    model.run_eagerly = True
    before = [w.copy() for w in model.get_weights()]
    train = load_train(small_face_folder, input_size=32, batch_size=4)
    val = load_test(small_face_folder, input_size=32, batch_size=4)
    trained = train_model(model, train, val, epochs=1, steps_per_epoch=2, validation_steps=1)
    assert trained is model
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert changed > 10
    ages = model.predict(val[0][0], verbose=0)
    assert ages.shape == (len(val[0][0]), 1) and np.isfinite(ages).all()
    assert isinstance(model, keras.Model)


def test_imagenet_weights_from_a_missing_env_path_is_a_clear_error(monkeypatch, tmp_path):
    from agetool.trainer import create_model

    monkeypatch.setenv("AGETOOL_IMAGENET_WEIGHTS", str(tmp_path / "missing_notop.h5"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(AgetoolError, match="not found"):
        create_model((32, 32, 3))
    with pytest.raises(AgetoolError, match="input_shape"):
        create_model((32, 48, 3))
