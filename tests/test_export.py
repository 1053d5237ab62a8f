"""Export: a tiny real Keras model -> ONNX fp32 / fp16 / int8, opened in real ONNX Runtime sessions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agetool.contract import INPUT_NAME, OUTPUT_NAME
from agetool.errors import AgetoolError
from agetool.export.api import ExportOptions, export_model, make_options, selected_variants

INPUT_SIZE = 32
HEAD_BIAS_YEARS = 30.0


def _tiny_keras(path: Path, outputs: int = 1) -> Path:
    """Conv -> GAP -> Dense(relu), seeded; the bias keeps outputs positive so ReLU does not hide
    differences. Weights are large enough that pixels move the age by years."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name=INPUT_NAME)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    age = keras.layers.Dense(
        outputs,
        activation="relu",
        kernel_initializer=keras.initializers.RandomNormal(stddev=40.0, seed=1),
        bias_initializer=keras.initializers.Constant(HEAD_BIAS_YEARS),
    )(x)
    model = keras.Model(inputs, age)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_keras(tmp_path_factory.mktemp("keras") / "tiny_age.keras")


@pytest.fixture
def model_dir(tmp_path: Path, tiny_keras: Path) -> Path:
    """The tiny model with a trainer-style model card beside it, in a fresh folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tiny_age.keras").write_bytes(tiny_keras.read_bytes())
    card = {
        "backbone": "tiny-conv",
        "weights": "none",
        "input_size": INPUT_SIZE,
        "training_data": "utkface-sample",
        "best_val_mae": 7.5,
        "split_file": "split.csv",
    }
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def _write_split(faces: Path, path: Path, n_val: int = 4) -> Path:
    """20 train / 4 val rows over the 24 fixture faces (the trainer's write_split format)."""
    labels = pd.read_csv(faces / "labels.csv")
    order = np.random.default_rng(0).permutation(len(labels))
    split = np.where(np.isin(np.arange(len(labels)), order[:n_val]), "val", "train")
    table = labels.assign(dataset=faces.name, split=split)
    table[["dataset", "file_name", "real_age", "split"]].to_csv(path, index=False)
    return path


def _onnx_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _keras_ages(model_path: Path, batch: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.saving.load_model(model_path, compile=False).predict_on_batch(batch)).reshape(-1)


def test_exports_three_verified_variants(model_dir: Path, small_face_folder: Path, tmp_path: Path) -> None:
    import onnx

    from agetool.edge_runtime.infer import OnnxAgeModel

    split = _write_split(small_face_folder, model_dir / "split.csv")
    out = tmp_path / "onnx"
    report = export_model(
        ExportOptions(
            model=model_dir / "tiny_age.keras", out=out, fp16=True, int8=True, calib=small_face_folder,
            calib_size=300, max_delta_mae=5.0,
        )
    )

    assert _onnx_files(out) == ["tiny_age.onnx", "tiny_age_fp16.onnx", "tiny_age_int8.onnx"]
    assert report.n_calibration_faces == 20 and report.n_validation_faces == 4  # split from the card
    assert report.fixed_batch_source == "16 real faces"
    fresh = np.random.default_rng(7).uniform(0, 255, (5, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    keras_years = _keras_ages(model_dir / "tiny_age.keras", fresh)
    assert keras_years.min() > 1.0  # a live ReLU head, so parity means something

    tolerance = {"fp32": 1e-3, "fp16": 0.1, "int8": 3.0}
    for variant, name in (("fp32", "tiny_age.onnx"), ("fp16", "tiny_age_fp16.onnx"), ("int8", "tiny_age_int8.onnx")):
        runtime = OnnxAgeModel(out / name, providers="cpu")
        meta = runtime.metadata
        assert (meta.variant, meta.input_size, meta.backbone, meta.training_data) == (
            variant, INPUT_SIZE, "tiny-conv", "utkface-sample",
        )
        assert meta.val_mae == 7.5 and meta.weights == "none" and meta.export_date.endswith("Z")
        raw = runtime.session.run(None, {INPUT_NAME: fresh})[0]
        assert raw.shape == (5, 1) and raw.dtype == np.float32
        assert np.max(np.abs(raw.reshape(-1) - keras_years)) < tolerance[variant]
        proto = onnx.load(str(out / name))
        assert [i.name for i in proto.graph.input] == [INPUT_NAME]
        assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        result = report.result(variant)
        assert result.path == out / name and result.size_mb > 0
        assert result.verification.delta_mae_years is not None
        assert result.verification.cpu_ms_per_image > 0

    assert report.result("fp32").verification.max_abs_diff_years < 1e-3
    int8_meta = OnnxAgeModel(out / "tiny_age_int8.onnx", providers="cpu").metadata
    assert (int8_meta.calibration_size, int8_meta.calibration_method) == (20, "percentile")
    assert OnnxAgeModel(out / "tiny_age.onnx", providers="cpu").metadata.calibration_size is None
    int8_ops = {n.op_type for n in onnx.load(str(out / "tiny_age_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops


def test_int8_refused_when_delta_mae_exceeds_threshold(
    model_dir: Path, small_face_folder: Path, tmp_path: Path
) -> None:
    """Labels set to the Keras model's own estimates make its MAE ~0, so any INT8 error is a
    positive ΔMAE; with --max-delta-mae 0 the export must fail and write nothing."""
    from agetool.trainer.data import load_faces

    labels = pd.read_csv(small_face_folder / "labels.csv")
    faces, ok, _ = load_faces([small_face_folder / "final_files" / n for n in labels["file_name"]], INPUT_SIZE)
    assert ok.all()
    labels["real_age"] = _keras_ages(model_dir / "tiny_age.keras", faces.astype(np.float32))
    labels.to_csv(small_face_folder / "labels.csv", index=False)
    _write_split(small_face_folder, model_dir / "split.csv")
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "tiny_age.onnx").write_bytes(b"previous export")

    options = dict(model=model_dir / "tiny_age.keras", out=out, int8=True, calib=small_face_folder, max_delta_mae=0.0)
    with pytest.raises(AgetoolError, match=r"tiny_age_int8.onnx: ΔMAE \+\d.*exceeds --max-delta-mae 0") as err:
        export_model(ExportOptions(**options))
    assert "\n" not in str(err.value)
    assert _onnx_files(out) == ["tiny_age.onnx"]  # no temp folder, no new file
    assert (out / "tiny_age.onnx").read_bytes() == b"previous export"

    report = export_model(ExportOptions(**options, force=True))
    assert report.result("int8").verification.delta_mae_years > 0
    assert report.result("int8").note.startswith("FAILED CHECK, forced")
    assert _onnx_files(out) == ["tiny_age.onnx", "tiny_age_int8.onnx"]


def test_interrupted_export_leaves_no_model(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agetool.export import api

    real_verify = api.verify_file

    def interrupt_on_fp16(path: Path, variant: str, *args: object):
        if variant == "fp16":
            assert path.is_file() and path.parent.parent == tmp_path / "onnx"  # temp name in the out dir
            raise KeyboardInterrupt
        return real_verify(path, variant, *args)

    monkeypatch.setattr(api, "verify_file", interrupt_on_fp16)
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportOptions(model=model_dir / "tiny_age.keras", out=tmp_path / "onnx", fp16=True))
    assert _onnx_files(tmp_path / "onnx") == []


def test_dynamic_int8_and_random_reference_without_card(tiny_keras: Path, small_face_folder: Path, tmp_path: Path) -> None:
    from agetool.edge_runtime.infer import OnnxAgeModel

    model = tmp_path / "bare" / "tiny_age.keras"
    model.parent.mkdir()
    model.write_bytes(tiny_keras.read_bytes())
    report = export_model(ExportOptions(model=model))  # no card, no data: random pixels, no MAE
    assert report.fixed_batch_source == "16 random images" and report.n_validation_faces == 0
    assert report.result("fp32").verification.delta_mae_years is None
    meta = OnnxAgeModel(model.parent / "tiny_age.onnx", providers="cpu").metadata
    assert (meta.backbone, meta.input_size, meta.val_mae) == ("unknown", INPUT_SIZE, None)

    report = export_model(
        ExportOptions(model=model, int8=True, int8_mode="dynamic", calib=small_face_folder, max_delta_mae=5.0)
    )
    meta = OnnxAgeModel(model.parent / "tiny_age_int8.onnx", providers="cpu").metadata
    assert meta.variant == "int8" and meta.calibration_method == "dynamic"
    assert report.result("int8").verification.max_abs_diff_years < 3.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"int8": True}, "--int8 needs --calib"),
        ({"calib": Path("faces")}, "--calib is only used with --int8"),
        ({"calib_size": 50}, "--calib-size is only used with --int8"),
        ({"max_delta_mae": 1.0, "fp16": True}, "--max-delta-mae is only used with --int8"),
        ({"int8": True, "calib": Path("f"), "int8_mode": "dynamic", "calib_method": "minmax"}, "static INT8 only"),
        ({"split": Path("split.csv")}, "--split needs --calib DIR or --val DIR"),
        ({"opset": 12}, "--opset: 12 not supported"),
        ({"opset": 30}, "--opset: 30 not supported"),
    ],
)
def test_contradictory_or_missing_options_are_one_line(values: dict, message: str) -> None:
    with pytest.raises(AgetoolError, match=message) as err:
        selected_variants(make_options(model=Path("m.keras"), **values))
    assert "\n" not in str(err.value)


def test_option_values_are_checked() -> None:
    with pytest.raises(AgetoolError, match="--calib-method: Input should be 'minmax', 'entropy' or 'percentile'"):
        make_options(model=Path("m.keras"), calib_method="kl")
    with pytest.raises(AgetoolError, match="--calib-size: Input should be greater than or equal to 1"):
        make_options(model=Path("m.keras"), calib_size=0)
    names = [v.name for v in selected_variants(make_options(model=Path("m.keras"), int8=True, calib=Path("f")))]
    assert names == ["fp32", "int8"]


def test_unusable_models_are_refused(tmp_path: Path, tiny_keras: Path) -> None:
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    no_config = tmp_path / "empty.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("readme.txt", "no config.json")
    two_outputs = _tiny_keras(tmp_path / "two.keras", outputs=2)
    h5 = tmp_path / "old.h5"
    h5.write_bytes(b"x")
    for path, message in (
        (tmp_path / "missing.keras", "file not found"),
        (h5, "expected a Keras 3 .keras file"),
        (text, "not a Keras 3 .keras file"),
        (no_config, "not a loadable Keras model"),
        (two_outputs, r"output shape \(None, 2\)"),
    ):
        with pytest.raises(AgetoolError, match=message) as err:
            export_model(ExportOptions(model=path, out=tmp_path / "out"))
        assert str(path.name) in str(err.value) and "\n" not in str(err.value)

    card_dir = tmp_path / "card"
    card_dir.mkdir()
    (card_dir / "m.keras").write_bytes(tiny_keras.read_bytes())
    (card_dir / "model_card.json").write_text(json.dumps({"input_size": 64}))
    with pytest.raises(AgetoolError, match="input_size 64 but m.keras takes 32 px"):
        export_model(ExportOptions(model=card_dir / "m.keras"))
    assert not any(card_dir.glob("*.onnx"))


def test_face_margin_reaches_the_metadata(tiny_keras: Path, tmp_path: Path) -> None:
    """The runtime crops with the margin the model states; export writes the one it is given."""
    from agetool.contract import FACE_MARGIN
    from agetool.edge_runtime.infer import OnnxAgeModel

    model = tmp_path / "m" / "tiny_age.keras"
    model.parent.mkdir()
    model.write_bytes(tiny_keras.read_bytes())
    export_model(ExportOptions(model=model))
    assert OnnxAgeModel(model.parent / "tiny_age.onnx", providers="cpu").metadata.face_margin == FACE_MARGIN
    export_model(ExportOptions(model=model, face_margin=0.02))
    assert OnnxAgeModel(model.parent / "tiny_age.onnx", providers="cpu").metadata.face_margin == pytest.approx(0.02)


def test_a_big_model_is_converted_with_a_collection_before_each_tf2onnx_pass(tiny_keras: Path, monkeypatch) -> None:
    """Models over COLLECT_BETWEEN_PASSES_MIN_BYTES get tf2onnx's own passes, each started after a
    garbage collection (counted here instead of run); the converted graph still matches Keras."""
    import onnxruntime as ort
    from tf2onnx import optimizer

    from agetool.export import fp32

    collections: list[int] = []
    monkeypatch.setattr(fp32.gc, "collect", lambda *args: collections.append(1) or 0)
    monkeypatch.setattr(fp32, "COLLECT_BETWEEN_PASSES_MIN_BYTES", 0)  # the tiny model counts as big
    model = fp32.load_keras_model(tiny_keras)
    size = fp32.keras_input_size(model, tiny_keras)
    proto = fp32.convert_keras(model, size, 17)
    assert len(collections) >= len(optimizer._get_optimizers())  # one per pass, one at the end
    batch = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_ages = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].reshape(-1)
    assert onnx_ages == pytest.approx(_keras_ages(tiny_keras, batch), abs=1e-3)
