"""`agetool bench` as a user runs it: bad options give one line and a non-zero exit, a good run
writes the report, and the CLI module stays light to import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agetool.cli import main
from conftest import build_tiny_age_onnx


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["agetool", "bench", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return build_tiny_age_onnx(tmp_path / "tiny.onnx")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch", "1,x"], "--batch 1,x: expected comma-separated positive integers"),
        (["--batch", "0"], "--batch 0: expected comma-separated batch sizes from 1"),
        (["--providers", "gpu9"], "--providers gpu9: expected one of cpu, cuda, tensorrt"),
        (["--min-runs", "0"], "--min-runs: Input should be greater than or equal to 1"),
        (["--min-seconds", "-1"], "--min-seconds: Input should be greater than or equal to 0"),
        (["--labels", "ages.csv"], "--labels/--split/--subset: need --images"),
        (["--e2e", "no_such_video.mp4"], "--e2e no_such_video.mp4: no such image, folder or video"),
        (["--detector", "missing_yunet.onnx"], "--detector missing_yunet.onnx: file not found"),
        (["--images", "no_such_folder"], "no_such_folder"),
    ],
)
def test_bad_options_exit_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path,
    extra: list[str], message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "--models", str(tiny), "--out", "report", *extra)
    assert code == 2
    assert message in error_line(err)
    assert not (tmp_path / "report").exists()


def test_bad_model_files_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    bare = build_tiny_age_onnx(tmp_path / "bare.onnx", with_metadata=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not protobuf")
    cases = [
        (tmp_path / "missing.onnx", "file not found"),
        (notes, "expected an .onnx file"),
        (bare, "not an agetool model"),
        (garbage, "not a readable ONNX file"),
    ]
    for path, message in cases:
        code, _, err = run_main(monkeypatch, capsys, "--models", str(path), "--out", str(tmp_path / "r"))
        line = error_line(err)
        assert code == 2 and path.name in line and message in line, line
    code, _, err = run_main(monkeypatch, capsys, "--models", str(bare.with_name("x.onnx")), "--keras", str(notes))
    assert code == 2 and "x.onnx" in error_line(err)


def test_a_small_run_writes_the_report_for_several_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: Path
) -> None:
    second = build_tiny_age_onnx(tmp_path / "tiny_b.onnx", scale=30.0)
    out = tmp_path / "report"
    code, stdout, err = run_main(
        monkeypatch, capsys, "--models", str(tiny), str(second), "--batch", "1,2", "--no-openvino", "--e2e", "none",
        "--no-floor", "--warmup", "1", "--min-runs", "3", "--min-seconds", "0", "--out", str(out),
    )
    assert code == 0, err
    assert "| variant | runtime |" in stdout and "report.md" in stdout
    data = json.loads((out / "report.json").read_text())
    assert [(r["model"], r["batch"], r["status"]) for r in data["rows"]] == [
        ("tiny.onnx", 1, "ok"), ("tiny.onnx", 2, "ok"), ("tiny_b.onnx", 1, "ok"), ("tiny_b.onnx", 2, "ok")
    ]
    assert data["floor"] is None and data["e2e"] == [] and data["accuracy"] == []
    assert all(r["mae"] is None for r in data["rows"])
    assert data["rows"][0]["speedup"] == 1.0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "latency.png", "mae.png", "mae_by_band.png"}


def test_the_cli_module_imports_no_runtime() -> None:
    code = (
        "import sys, agetool.cli; "
        "heavy = [m for m in ('onnxruntime', 'tensorflow', 'openvino') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == ""
