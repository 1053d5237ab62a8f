"""`agetool export` as a user runs it: one line and a non-zero exit for every user mistake."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agetool.cli import main

AGETOOL = [sys.executable, "-c", "from agetool.cli import main; main()"]


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in this process (TensorFlow stays imported between tests)."""
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal width
    monkeypatch.setattr(sys, "argv", ["agetool", "export", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs --calib"),
        (["--calib", "faces"], "--calib is only used with --int8"),
        (["--opset", "11"], "--opset: 11 not supported"),
        (["--int8", "--calib", "faces", "--calib-method", "kl"], "--calib-method: Input should be"),
    ],
)
def test_bad_options_exit_with_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    model = tmp_path / "m.keras"
    model.write_text("options are checked before the model is read")
    proc = subprocess.run([*AGETOOL, "export", str(model), *extra], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in _error_line(proc.stderr)
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_and_non_model_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    for path, message in ((tmp_path / "nope.keras", "file not found"), (text, "not a Keras 3 .keras file")):
        proc = subprocess.run([*AGETOOL, "export", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        line = _error_line(proc.stderr)
        assert path.name in line and message in line
    assert not list(tmp_path.glob("*.onnx"))


def test_keras_archive_that_is_not_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fake.keras"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("metadata.json", "{}")
    code, _, err = run_main(monkeypatch, capsys, str(fake))
    assert code == 2
    assert "fake.keras: not a loadable Keras model" in _error_line(err)


def test_export_prints_summary_and_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="relu", bias_initializer=keras.initializers.Constant(30.0))(x)
    model = tmp_path / "cli_age.keras"
    keras.Model(inputs, outputs).save(model)

    code, out, err = run_main(monkeypatch, capsys, str(model), "--out", str(tmp_path / "out"), "--fp16")
    assert code == 0, err
    assert "fp32: max |Δ|" in err and "fp16: max |Δ|" in err
    assert "agetool export" in out and "size MB" in out and "FP16 is not faster on CPU" in out
    written = [line for line in out.splitlines() if line.endswith(".onnx")]
    assert written == [str(tmp_path / "out" / "cli_age.onnx"), str(tmp_path / "out" / "cli_age_fp16.onnx")]
    assert all(Path(p).is_file() for p in written)
