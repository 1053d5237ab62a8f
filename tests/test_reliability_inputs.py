"""Bad input through the CLI as a user meets it: one `error:` line naming the file, field or option,
a non-zero exit, no traceback, and nothing written before lost. Complements test_data.py,
test_inspect.py, test_trainer_cli.py, test_export_cli.py and test_runtime_config.py (not repeated here).

The CLI runs in this process (agetool.cli.main with sys.argv): an exception that is not an
AgetoolError would escape main() and fail the test with its traceback."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest

from agetool.cli import main
from agetool.errors import EXIT_CONFIG, EXIT_USAGE
from agetool.trainer.data import MAX_IMAGE_BYTES
from agetool.trainer.inspect import inspect_data
from conftest import YUNET, build_tiny_age_onnx
from test_runtime_units import astronaut_bgr


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """`agetool ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("AGETOOL_DETECTOR", "")
    monkeypatch.setattr(sys, "argv", ["agetool", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else (0 if code is None else 1)), captured.out, captured.err


def one_error_line(code: int, err: str, expected_code: int = EXIT_USAGE) -> str:
    """The single `error:` line of a failed command (asserts the exit code and no traceback)."""
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- image files: `agetool run` -------------------------------------------------------------
def jpeg_bytes() -> bytes:
    ok, encoded = cv2.imencode(".jpg", astronaut_bgr())
    assert ok
    return encoded.tobytes()


BAD_IMAGE_FILES = {
    "zero.jpg": lambda: b"",
    "header_only.jpg": lambda: jpeg_bytes()[:300],
    "text.png": lambda: b"this is a shopping list, not a picture\n",
    "random.webp": lambda: os.urandom(5000),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGE_FILES))
def test_run_on_one_undecodable_file_is_one_line(name, tmp_path, tiny_onnx_model, monkeypatch, capsys):
    path = tmp_path / name
    path.write_bytes(BAD_IMAGE_FILES[name]())
    code, out, err = cli(monkeypatch, capsys, "run", path, "--model", tiny_onnx_model)
    line = one_error_line(code, err)
    assert str(path) in line and "not a decodable image" in line
    assert out == ""


def test_run_on_a_file_of_unknown_type_is_one_line(tmp_path, tiny_onnx_model, monkeypatch, capsys):
    path = tmp_path / "till.dat"
    path.write_bytes(b"\x00\x01 not a video either" * 100)
    code, _out, err = cli(monkeypatch, capsys, "run", path, "--model", tiny_onnx_model)
    assert "till.dat: cannot open" in one_error_line(code, err)


def test_run_on_a_folder_skips_bad_files_and_reads_the_rest(tmp_path, tiny_onnx_model, monkeypatch, capsys, caplog):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_good.png"), astronaut_bgr())
    (folder / "b_jpeg_named.png").write_bytes(jpeg_bytes())  # wrong extension: decoded by content
    for name, make in BAD_IMAGE_FILES.items():
        (folder / f"c_{name}").write_bytes(make())
    with (folder / "d_huge.jpg").open("wb") as huge:  # 21 MB of zeros
        huge.truncate(MAX_IMAGE_BYTES + 1024 * 1024)
    caplog.set_level(logging.WARNING)
    code, out, err = cli(monkeypatch, capsys, "run", folder, "--model", tiny_onnx_model, "--detector", YUNET)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["source"]).name for r in rows] == ["a_good.png", "b_jpeg_named.png"]
    skipped = [r.message for r in caplog.records if r.message.startswith("skipped:")]
    for name in [*(f"c_{n}" for n in BAD_IMAGE_FILES), "d_huge.jpg"]:
        assert sum(name in message for message in skipped) == 1, (name, skipped)


def test_run_on_a_folder_of_only_bad_files_fails(tmp_path, tiny_onnx_model, monkeypatch, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name, make in BAD_IMAGE_FILES.items():
        (folder / name).write_bytes(make())
    code, out, err = cli(monkeypatch, capsys, "run", folder, "--model", tiny_onnx_model)
    assert f"source {folder}: no decodable image" in one_error_line(code, err)
    assert out == ""


# --- data folders: inspect and evaluate -----------------------------------------------------
def test_inspect_counts_huge_and_wrong_extension_files(small_face_folder, tmp_path):
    images = small_face_folder / "final_files"
    first = sorted(images.glob("*.jpg"))[0]
    ok, encoded = cv2.imencode(".jpg", cv2.imread(str(first)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    (images / "renamed.png").write_bytes(encoded.tobytes())  # a JPEG with a .png name
    with (images / "huge.jpg").open("wb") as huge:
        huge.truncate(MAX_IMAGE_BYTES + 1)
    (images / "notes.jpg").write_text("file_name,real_age\n")  # a CSV saved as .jpg
    labels = pd.read_csv(small_face_folder / "labels.csv")
    extra = pd.DataFrame({"file_name": ["renamed.png", "huge.jpg", "notes.jpg"], "real_age": [40, 41, 42]})
    pd.concat([labels, extra]).to_csv(small_face_folder / "labels.csv", index=False)
    summary = inspect_data([small_face_folder], out_dir=None, workers=2)
    assert summary.n_images == 25  # the 24 faces and the renamed JPEG
    corrupt = {p.file_name: p.reason for p in summary.problems if p.kind == "corrupt"}
    assert set(corrupt) >= {"huge.jpg", "notes.jpg"}
    assert "larger than" in corrupt["huge.jpg"] and "not a decodable image" in corrupt["notes.jpg"]
    assert "renamed.png" not in {p.file_name for p in summary.problems}


LABEL_FILES = {
    "zero_byte": ("", "not a readable CSV"),
    "binary": ("\x00\xff\xfe garbage", "not a readable CSV"),
    "no_age_column": ("file_name,age\nx.jpg,3\n", "missing column(s) real_age"),
    "every_row_bad": (
        "file_name,real_age\n{first},-4\n{first},abc\n{second},200\nnot_there.jpg,30\n"
        "../../../etc/passwd,30\n/etc/hostname,30\n",
        "no usable labelled image",
    ),
}


@pytest.mark.parametrize("case", sorted(LABEL_FILES))
def test_evaluate_with_unusable_labels_keeps_the_old_report(case, small_face_folder, tiny_onnx_model, tmp_path,
                                                            monkeypatch, capsys):
    names = sorted(p.name for p in (small_face_folder / "final_files").iterdir())
    body, message = LABEL_FILES[case]
    labels = tmp_path / "labels.csv"
    labels.write_text(body.format(first=names[0], second=names[1]), encoding="latin-1")
    report = tmp_path / "report.json"
    report.write_text('{"from": "yesterday"}')
    code, _out, err = cli(monkeypatch, capsys, "evaluate", "--model", tiny_onnx_model, "--images",
                          small_face_folder / "final_files", "--labels", labels, "--json", report)
    line = one_error_line(code, err)
    assert message in line
    assert str(labels) in line or "--images" in line
    assert report.read_text() == '{"from": "yesterday"}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_evaluate_skips_bad_rows_and_scores_the_good_ones(small_face_folder, tiny_onnx_model, tmp_path,
                                                          monkeypatch, capsys):
    labels = pd.read_csv(small_face_folder / "labels.csv")
    first = labels["file_name"].iloc[0]
    bad = pd.DataFrame({
        "file_name": [first, "missing.jpg", labels["file_name"].iloc[1], "../labels.csv"],
        "real_age": ["33", "30", "-1", "20"],
    })
    mixed = tmp_path / "mixed.csv"
    pd.concat([labels.astype(str), bad]).to_csv(mixed, index=False)
    (small_face_folder / "final_files" / "zero.jpg").write_bytes(b"")
    with mixed.open("a") as handle:
        handle.write("zero.jpg,44\n")
    report = tmp_path / "report.json"
    code, _out, err = cli(monkeypatch, capsys, "evaluate", "--model", tiny_onnx_model, "--images",
                          small_face_folder / "final_files", "--labels", mixed, "--json", report)
    assert code == 0, err
    # 24 good rows; the duplicate, missing, negative, escaping and zero-byte ones are left out
    # (row 1's negative duplicate is refused on its age, so row 1 itself still counts)
    assert json.loads(report.read_text())["n"] == 24


# --- model files that are not agetool ONNX ---------------------------------------------------
def bad_model(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.onnx"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("definitely not a protobuf")
    elif kind == "truncated":
        good = build_tiny_age_onnx(folder / "good.onnx").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif kind == "no_metadata":
        build_tiny_age_onnx(path, with_metadata=False)
    return path


def serve_config(tmp_path: Path, model: Path, source: Path) -> Path:
    config = tmp_path / "agetool.yaml"
    config.write_text(
        f"lanes:\n  - name: till-1\n    source: {source}\nmodel:\n  path: {model}\n  providers: cpu\n"
        f"events:\n  jsonl: off\nanalytics:\n  sqlite_path: {tmp_path / 'state' / 'a.sqlite'}\n"
        "api:\n  port: 1\n"  # never reached: the model is refused first
    )
    return config


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "no_metadata"])
@pytest.mark.parametrize("command", ["run", "evaluate", "serve"])
def test_models_that_are_not_agetool_onnx(command, kind, tmp_path, small_face_folder, monkeypatch, capsys):
    model = bad_model(kind, tmp_path)
    image = sorted((small_face_folder / "final_files").iterdir())[0]
    args = {
        "run": ["run", image, "--model", model],
        "evaluate": ["evaluate", "--model", model, "--images", small_face_folder],
        "serve": ["serve", "--config", serve_config(tmp_path, model, small_face_folder / "final_files")],
    }[command]
    code, out, err = cli(monkeypatch, capsys, *args)
    line = one_error_line(code, err)
    expected = "not an agetool model" if kind == "no_metadata" else "not a loadable ONNX model"
    assert f"model {model}" in line and expected in line
    assert out == ""


# --- configs ------------------------------------------------------------------------------
CONFIGS = {
    "lanes_not_a_list": ("lanes: till-1\n", "lanes: Input should be a valid list"),
    "fps_a_word": ("lanes:\n  - name: a\n    source: 0\n    fps: fast\n", "line 4: lanes.0.fps"),
    "port_a_word": ("lanes: [{name: a, source: 0}]\napi:\n  port: http\n", "line 3: api.port"),
    "port_out_of_range": ("lanes: [{name: a, source: 0}]\napi:\n  port: 70000\n", "line 3: api.port"),
    "section_a_list": ("lanes: [{name: a, source: 0}]\ntracking: [1, 2]\n", "line 2: tracking"),
    "webhook_ftp": ("lanes: [{name: a, source: 0}]\nevents:\n  webhook_url: ftp://pos/hook\n",
                    "line 3: events.webhook_url: expected an http:// or https:// URL"),
    "webhook_no_scheme": ("lanes: [{name: a, source: 0}]\nevents:\n  webhook_url: pos.local/hook\n",
                          "events.webhook_url"),
    "source_a_list": ("lanes:\n  - name: a\n    source: [0]\n", "line 3: lanes.0.source"),
    "negative_camera": ("lanes:\n  - name: a\n    source: -1\n", "lanes.0.source"),
    "top_level_list": ("- lanes\n", "expected a mapping of sections"),
    "empty_file": ("", "expected a mapping of sections"),
    "boolean_as_flag": ("lanes: [{name: a, source: 0}]\ndebug_save_crops: maybe\n", "line 2: debug_save_crops"),
    "lane_name_traversal": ("lanes:\n  - name: ../../etc\n    source: 0\n", "line 2: lanes.0.name"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_wrong_types_and_bad_urls(case, tmp_path, tiny_onnx_model, monkeypatch, capsys):
    body, message = CONFIGS[case]
    config = tmp_path / "agetool.yaml"
    config.write_text(body + (f"model:\n  path: {tiny_onnx_model}\n" if body.startswith("lanes") else ""))
    code, _out, err = cli(monkeypatch, capsys, "serve", "--validate-config", "--config", config)
    line = one_error_line(code, err, EXIT_CONFIG)
    assert str(config) in line and message in line


def test_config_that_is_not_text(tmp_path, monkeypatch, capsys):
    config = tmp_path / "agetool.yaml"
    config.write_bytes(b"\xff\xfe\x00lanes")
    code, _out, err = cli(monkeypatch, capsys, "serve", "--validate-config", "--config", config)
    assert "cannot read" in one_error_line(code, err, EXIT_CONFIG)


# --- options out of range -------------------------------------------------------------------
OPTIONS = [
    (["run", "{image}", "--max-frames", "0"], "--max-frames"),
    (["run", "{image}", "--policy-age", "12"], "--policy-age"),
    (["run", "{image}", "--buffer", "-1"], "--buffer"),
    (["run", "{image}", "--providers", "quantum"], "providers"),
    (["serve", "--source", "{folder}", "--port", "0", "--validate-config"], "--port"),
    (["serve", "--source", "{folder}", "--port", "65536", "--validate-config"], "--port"),
    (["serve", "--source", "{folder}", "--providers", "gpu", "--validate-config"], "--providers"),
    (["serve", "--source", "{folder}", "--host", "10.1.2.3", "--token", "short", "--validate-config"],
     "--token"),
    (["data", "inspect", "{data}", "--workers", "0"], "--workers"),
    (["data", "split", "{data}", "--out", "{out}/split.csv", "--test", "-0.1"], "fractions"),
    (["evaluate", "--images", "{data}", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--images", "{data}", "--workers", "65"], "--workers"),
    (["evaluate", "--images", "{data}", "--subset", "holdout"], "--subset"),
    (["evaluate", "--images", "{data}", "--buffer", "-3"], "--buffer"),
]


@pytest.mark.parametrize(("args", "option"), OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OPTIONS])
def test_cli_options_out_of_range(args, option, small_face_folder, tiny_onnx_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    values = {"image": sorted((small_face_folder / "final_files").iterdir())[0], "folder": small_face_folder / "final_files",
              "data": small_face_folder, "out": out}
    args = [a.format(**values) for a in args]
    if args[0] in ("run", "evaluate"):
        args += ["--model", str(tiny_onnx_model)]
    elif args[0] == "serve":
        args += ["--model", str(tiny_onnx_model)]
    before = snapshot(small_face_folder)
    code, stdout, err = cli(monkeypatch, capsys, *args)
    # a bad option value is bad usage, whichever layer notices it (typer, a pydantic model, a
    # config built from the options): one line, exit 2
    line = one_error_line(code, err, EXIT_USAGE)
    assert "Traceback" not in err and option in line
    assert stdout == "" and list(out.iterdir()) == []
    assert snapshot(small_face_folder) == before
