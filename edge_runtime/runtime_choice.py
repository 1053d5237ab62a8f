"""`--runtime auto` on a CPU: ONNX Runtime and OpenVINO are timed on the model's own input in a
short-lived child process, so the long-lived daemon loads only the runtime it keeps.

Measured on the 2-core till box: each runtime's libraries and compiled model stay resident once
loaded (ONNX Runtime ~45 MB, OpenVINO ~90 MB of RSS); timing both in the daemon itself kept both.

`python -m agetool.edge_runtime.runtime_choice MODEL [--providers P] [--threads N]` prints the
timings as one JSON line (what the parent reads)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from agetool.errors import AgetoolError

CHILD_TIMEOUT_S = 180.0


class RuntimeTimings(BaseModel):
    """Batch-1 medians on this machine; `gpu_provider` set means ONNX Runtime runs on a GPU and
    keeps priority (nothing was timed). `error`: the model could not be opened at all."""

    gpu_provider: str | None = None
    onnxruntime_ms: float | None = None
    openvino_ms: float | None = None
    openvino_error: str | None = None
    error: str | None = None


def time_runtimes(path: Path, providers: str, threads: int | None) -> RuntimeTimings:
    """Open the model in each installed runtime here and time it (this process keeps both)."""
    from agetool.edge_runtime.infer import OnnxAgeModel, OpenVinoAgeModel, openvino_missing

    try:
        ort_model = OnnxAgeModel(path, providers, threads)
    except AgetoolError as exc:
        return RuntimeTimings(error=str(exc))
    if ort_model.on_gpu:
        return RuntimeTimings(gpu_provider=ort_model.provider)
    timings = RuntimeTimings(onnxruntime_ms=round(ort_model.median_ms(), 3))
    if openvino_missing():
        return timings
    try:
        timings.openvino_ms = round(OpenVinoAgeModel(path, threads).median_ms(), 3)
    except (AgetoolError, RuntimeError) as exc:
        timings.openvino_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return timings


def time_runtimes_in_child(path: Path, providers: str, threads: int | None) -> RuntimeTimings:
    """time_runtimes in a child process of this Python; the caller then opens only the winner."""
    command = [sys.executable, "-m", "agetool.edge_runtime.runtime_choice", str(path), "--providers", providers]
    if threads:
        command += ["--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return RuntimeTimings(openvino_error=f"timing the runtimes took over {CHILD_TIMEOUT_S:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        # A runtime that crashed while timing (the child's exit code says so) leaves ONNX Runtime,
        # opened here, as the choice: a bad file is then reported by that open.
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return RuntimeTimings(openvino_error=f"timing the runtimes failed ({reason})")
    timings = RuntimeTimings.model_validate_json(lines[-1])
    if timings.error:
        raise AgetoolError(timings.error)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agetool.edge_runtime.runtime_choice")
    parser.add_argument("model", type=Path)
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print(time_runtimes(args.model, args.providers, args.threads).model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
