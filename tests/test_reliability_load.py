"""The short version of benchmarks/loadtest.py: the real daemon in its own process, 50 requests/s
for 3 s of mixed GET current / POST check / GET metrics from this process. Zero errors, every
kind answered, the daemon still ready and exiting cleanly. No timing is asserted (the figures
are in benchmarks/results/loadtest.json)."""

from __future__ import annotations

from agetool.benchmarks.loadtest import run_loadtest
from conftest import YUNET


def test_short_load_has_no_errors(tmp_path, tiny_onnx_model):
    result = run_loadtest(tiny_onnx_model, YUNET, rate_per_s=50, duration_s=3, work=tmp_path)
    assert result["requests"] == 150 and result["errors"] == 0, result["error_kinds"]
    assert {kind: block["requests"] for kind, block in result["by_kind"].items()} == {
        "check": 30, "current": 90, "metrics": 30}
    assert all(block["p50_ms"] is not None for block in result["by_kind"].values())
    assert result["daemon_ready_after"] is True and result["daemon_exit_code"] == 0
    assert result["daemon_rss_mb"]["before"] > 0 and len(result["daemon_rss_mb"]["samples"]) >= 3
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log and "SIGTERM received" in log
