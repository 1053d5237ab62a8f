"""One error rule for every command, on the real CLI in subprocesses: bad option values exit 2 with
one `error:` line naming the option, bad configuration files exit 78, no traceback anywhere; cheap
options are checked before TensorFlow loads; a missing `train` extra is one line that names it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agetool.contract import ModelMetadata
from agetool.errors import AgetoolError

AGETOOL = [sys.executable, "-m", "agetool.cli"]
# The README's main-job install ('.[cpu,demo]') has no Keras, TensorFlow or tf2onnx: block them.
WITHOUT_TRAIN_EXTRA = """
import sys
class NoTrainExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"keras", "tensorflow", "tf2onnx"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTrainExtra())
from agetool.cli import main
main()
"""


def agetool(*args: str, without_train_extra: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_TRAIN_EXTRA] if without_train_extra else AGETOOL
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "faces"
    (folder / "final_files").mkdir(parents=True)
    (folder / "labels.csv").write_text("file_name,real_age\n")
    return folder


def test_bad_option_values_exit_2_on_every_command(tmp_path, data_dir, tiny_onnx_model):
    out = str(tmp_path / "out")
    assert_one_error_line(agetool("train", str(data_dir), "--out", out, "--loss", "l1"), 2, "--loss", "huber")
    assert_one_error_line(agetool("serve", "--source", str(data_dir), "--model", str(tiny_onnx_model),
                                  "--providers", "bogus"), 2, "--providers")
    assert_one_error_line(agetool("run", "--demo", "--model", str(tiny_onnx_model), "--providers", "bogus"),
                          2, "providers")
    # typer's own range check: the same one-line style, not a usage box
    assert_one_error_line(agetool("run", "--demo", "--max-frames", "0"), 2, "--max-frames")
    assert_one_error_line(agetool("run", "--demo", "--policy-age", "90"), 2, "--policy-age")
    assert_one_error_line(agetool("bogus-command"), 2, "bogus-command")
    assert_one_error_line(agetool("train"), 2, "data_dirs")


def test_a_bad_configuration_file_exits_78(tmp_path, tiny_onnx_model):
    config = tmp_path / "agetool.yaml"
    config.write_text(f"lanes:\n  - name: a\n    source: 0\nmodel:\n  path: {tiny_onnx_model}\n  providers: bogus\n")
    assert_one_error_line(agetool("serve", "--config", str(config), "--validate-config"), 78,
                          f"config {config} line 6: model.providers")


def test_cheap_options_are_checked_before_tensorflow_is_needed(tmp_path, data_dir):
    """With no Keras at all, a bad --backbone still names --backbone: it is checked first."""
    out = str(tmp_path / "out")
    bad = agetool("train", str(data_dir), "--out", out, "--backbone", "resnet18", without_train_extra=True)
    assert_one_error_line(bad, 2, "--backbone", "resnet18", "mobilenetv3small")
    small = agetool("train", str(data_dir), "--out", out, "--backbone", "xception", "--input-size", "64",
                    without_train_extra=True)
    assert_one_error_line(small, 2, "--input-size", "71")


def test_training_commands_without_the_train_extra_name_it(tmp_path, data_dir):
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"not really a model")
    for args in (("train", str(data_dir), "--out", str(tmp_path / "out")),
                 ("export", str(keras_file)),
                 ("evaluate", "--model", str(keras_file), "--images", str(data_dir))):
        result = agetool(*args, without_train_extra=True)
        assert_one_error_line(result, 2, f"agetool {args[0]}", "agetool[train]", "keras")


def test_run_with_a_keras_model_says_to_export_it(tmp_path):
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"PK")
    assert_one_error_line(agetool("run", "--demo", "--model", str(keras_file)), 2, "exported .onnx",
                          "agetool export")


def test_evaluate_help_lists_every_subset_it_accepts():
    result = agetool("evaluate", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "train | val | test" in help_text


def test_bad_model_metadata_is_one_line():
    props = {"agetool.agetool_version": "0.1.0", "agetool.input_size": "-4"}
    with pytest.raises(AgetoolError) as caught:
        ModelMetadata.from_props(props, source="m.onnx")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("m.onnx: agetool metadata agetool.input_size:")
