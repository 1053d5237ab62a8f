"""What a new user reads: no library chatter around agetool's own lines, no internal names in
them, help text that says what a command takes (real CLI, subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

from test_receipts_report import known_db  # noqa: F401 (fixture)

AGETOOL = [sys.executable, "-m", "agetool.cli"]


def agetool(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGETOOL, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **env})


def test_help_shows_no_bool_type_and_no_empty_argument():
    run_help = agetool("run", "--help")
    assert run_help.returncode == 0 and "--demo" in run_help.stdout
    assert "<bool>" not in run_help.stdout
    bench_help = agetool("bench", "--help")
    assert bench_help.returncode == 0
    usage = next(line for line in bench_help.stdout.splitlines() if "Usage:" in line)
    assert "[]" not in usage and usage.split("Usage:")[1].split() == ["agetool", "bench", "[OPTIONS]", "[MODEL]..."]


def test_inspect_names_the_files_it_wrote_not_its_keys(small_face_folder, tmp_path):
    result = agetool("data", "inspect", small_face_folder, "--out", tmp_path / "inspect")
    assert result.returncode == 0, result.stderr
    wrote = [line for line in result.stdout.splitlines() if line.startswith("wrote")]
    assert wrote and all("_png" not in line and "_json" not in line for line in wrote), wrote
    assert f"wrote {tmp_path / 'inspect' / 'age_histogram.png'}" in wrote, wrote


def test_tensorflow_commands_print_no_backend_start_up_lines(tmp_path):
    """`agetool export` loads Keras and TensorFlow, then fails on a junk file: one error line only."""
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    result = agetool("export", junk)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]


def test_analytics_report_prints_no_matplotlib_lines(known_db, tmp_path):  # noqa: F811
    fresh_font_cache = tmp_path / "mpl"  # a first run builds matplotlib's font cache and says so
    result = agetool("analytics", "report", "--db", known_db, "--out", tmp_path / "rep", "--since", "2025-03-10",
                     MPLCONFIGDIR=str(fresh_font_cache))
    assert result.returncode == 0, result.stderr
    assert "matplotlib" not in result.stderr and "fontManager" not in result.stderr, result.stderr
