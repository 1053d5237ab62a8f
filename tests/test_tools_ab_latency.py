"""tools/ab_latency.py: two real ONNX files timed against each other on ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import build_tiny_age_onnx

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ab_latency.py"


def test_ab_latency_times_both_files_and_reports_the_ratio(tmp_path: Path) -> None:
    a, b = build_tiny_age_onnx(tmp_path / "a.onnx"), build_tiny_age_onnx(tmp_path / "b.onnx", scale=30.0)
    result = subprocess.run([sys.executable, str(TOOL), str(a), str(b), "--rounds", "2", "--threads", "1",
                             "--runtimes", "onnxruntime"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [line] = [row for row in result.stdout.splitlines() if row.startswith("onnxruntime")]
    assert "1 thread(s): A " in line and "median of 2 block means" in line and "A/B " in line


def test_ab_latency_names_a_missing_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "no.onnx"), str(tmp_path / "no.onnx")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'no.onnx'}: file not found (an .onnx model was expected)"
