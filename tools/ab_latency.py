"""Batch-1 latency of two .onnx files, A against B, on ONNX Runtime and OpenVINO, robust to load
drifting on a shared machine: both files stay loaded and are timed in alternating short blocks
(10 warm-up + 50 timed calls each), ROUNDS blocks per file and configuration; prints the median
block mean and A/B.

    python tools/ab_latency.py BEFORE.onnx AFTER.onnx [--rounds 30] [--threads 1 2]

The input is one real face crop when --face is given (any image; resized like the runtime does),
else a fixed random image: latency does not depend on the pixels for these models."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _face_batch(face: Path | None, size: int) -> np.ndarray:
    if face is None:
        return np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    from agetool.trainer.data import load_faces

    images, readable, _ = load_faces([face], size)
    if not readable[0]:
        raise SystemExit(f"error: --face {face}: not a readable image")
    return images[:1].astype(np.float32)


def _open(path: Path, runtime: str, threads: int):
    from agetool.edge_runtime.infer import OnnxAgeModel, OpenVinoAgeModel

    return OnnxAgeModel(path, "cpu", threads) if runtime == "onnxruntime" else OpenVinoAgeModel(path, threads)


def block_ms(model, batch: np.ndarray, calls: int = 50, warm: int = 10) -> float:
    for _ in range(warm):
        model.raw_outputs(batch)
    started = time.perf_counter()
    for _ in range(calls):
        model.raw_outputs(batch)
    return (time.perf_counter() - started) / calls * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"],
                        choices=["onnxruntime", "openvino"])
    parser.add_argument("--face", type=Path, default=None)
    args = parser.parse_args(argv)
    for path in (args.a, args.b):
        if not path.is_file():
            print(f"error: {path}: file not found (an .onnx model was expected)", file=sys.stderr)
            return 2
    print(f"load average at start {os.getloadavg()[0]:.2f}; A = {args.a}, B = {args.b}")
    for runtime in args.runtimes:
        for threads in args.threads:
            models = {"A": _open(args.a, runtime, threads), "B": _open(args.b, runtime, threads)}
            batch = _face_batch(args.face, models["A"].input_size)
            blocks: dict[str, list[float]] = {"A": [], "B": []}
            for index in range(args.rounds):
                order = ("A", "B") if index % 2 == 0 else ("B", "A")
                for tag in order:
                    blocks[tag].append(block_ms(models[tag], batch))
            a_ms, b_ms = statistics.median(blocks["A"]), statistics.median(blocks["B"])
            print(f"{runtime:11s} {threads} thread(s): A {a_ms:.2f} ms, B {b_ms:.2f} ms (median of {args.rounds} "
                  f"block means), A/B {a_ms / b_ms:.2f}x, load {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
