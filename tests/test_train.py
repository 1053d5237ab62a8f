"""A real (tiny) training run on real faces: killed mid-run, then resumed from its run folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

AGETOOL = [sys.executable, "-m", "agetool.cli"]


def _wait_for_epoch(state_file: Path, proc: subprocess.Popen, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state_file.is_file():
            try:
                return json.loads(state_file.read_text())["epoch"]
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:
            pytest.fail(f"training exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail("no epoch finished in time")


def test_train_is_killed_and_resumes(tmp_path, small_face_folder):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    args = [
        *AGETOOL, "train", str(small_face_folder), "--out", str(out), "--run-dir", str(run_dir),
        "--backbone", "mobilenetv3small", "--input-size", "32", "--batch-size", "8",
        "--early-stop-patience", "500",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([*args, "--epochs", "500"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        done = _wait_for_epoch(run_dir / "state.json", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads((run_dir / "state.json").read_text())["epoch"]  # it may have run on a little
    assert done >= 1 and not (out / "model.keras").exists() and (run_dir / "last.keras").is_file()

    # the run folder is kept: without --resume the trainer refuses to overwrite it
    refused = subprocess.run([*args, "--epochs", str(done + 1)], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "--resume" in refused.stderr and "Traceback" not in refused.stderr

    resumed = subprocess.run([*args, "--epochs", str(done + 1), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    log_rows = pd.read_csv(run_dir / "log.csv")
    assert state["epoch"] == card["epochs_run"] == done + 1
    # every epoch is in the log; at most the one cut short by the kill appears twice
    assert sorted(set(log_rows["epoch"])) == list(range(done + 1)) and len(log_rows) <= done + 2
    assert card["backbone"] == "mobilenetv3small" and card["input_size"] == 32 and card["weights"] == "none"
    assert (out / "model.keras").is_file() and (out / "split.csv").is_file()
    assert card["baseline_val_mae"] > 0
    assert "answering the median age to everyone" in " ".join(resumed.stdout.split())  # rich wraps at 80
    if card["best_val_mae"] >= card["baseline_val_mae"]:  # a 24-face, 32 px run may well learn nothing
        assert "warning: no better than answering the median age" in resumed.stderr
