"""Run the export's preprocessing pass (agetool.export.graph_passes) on an already exported age
model, without re-exporting from Keras: check in ONNX Runtime that every output is unchanged on
random images and real face crops, compare OpenVINO before and after, then write the file (temp
file, then rename; IN is replaced when OUT is not given).

    python tools/optimize_onnx_preprocessing.py agetool/models/age_default.onnx \
        --faces /work/data_aligned/utkface_aligned --n-faces 200
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from agetool.errors import AgetoolError

if TYPE_CHECKING:
    from agetool.edge_runtime.infer import AgeModel

# ONNX Runtime runs the same kernels on the same values: outputs should match exactly.
ORT_TOLERANCE_YEARS = 1e-5
# OpenVINO computes in bf16 on AMX CPUs, and its own fusions may group the moved ops differently.
OPENVINO_TOLERANCE_YEARS = 0.05
RANDOM_BATCHES = 2
BATCH_SIZE = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class OutputDiff:
    """Largest |before - after| over all images, for each output of the model."""

    runtime: str
    n_images: int
    age_years: float
    std_years: float | None

    def worst(self) -> float:
        return max(self.age_years, self.std_years or 0.0)

    def line(self) -> str:
        std = "" if self.std_years is None else f", age_std_years {self.std_years:.3g}"
        return f"{self.runtime}: {self.n_images} images, max |before - after| age_years {self.age_years:.3g}{std}"


def face_paths(folder: Path, count: int) -> list[Path]:
    """`count` image files spread evenly over a data folder (its final_files/, or the folder itself)."""
    images_dir = folder / "final_files" if (folder / "final_files").is_dir() else folder
    if not images_dir.is_dir():
        raise AgetoolError(f"--faces {folder}: not a folder")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AgetoolError(f"--faces {folder}: no image files (expected {', '.join(IMAGE_SUFFIXES)})")
    picked = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int))
    return [files[i] for i in picked]


def comparison_batches(input_size: int, faces: Sequence[Path]) -> list[np.ndarray]:
    """Random 0..255 images, an all-black and an all-white one, and the face crops as the
    trainer resizes them."""
    from agetool.trainer.data import load_faces

    rng = np.random.default_rng(0)
    shape = (BATCH_SIZE, input_size, input_size, 3)
    batches = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(RANDOM_BATCHES)]
    batches.append(np.stack([np.zeros(shape[1:]), np.full(shape[1:], 255.0)]).astype(np.float32))
    images, ok, errors = load_faces(list(faces), input_size)
    if errors:
        raise AgetoolError(f"--faces: {errors[0]}")
    face_batches = np.array_split(images[ok].astype(np.float32), max(1, int(np.ceil(ok.sum() / 25))))
    return batches + [b for b in face_batches if len(b)]


def compare(runtime: str, before: "AgeModel", after: "AgeModel", batches: Sequence[np.ndarray]) -> OutputDiff:
    """Both models' raw (unclipped) outputs on every batch, through the runtime's own opener."""
    age_diff, std_diff, has_std = 0.0, 0.0, False
    for batch in batches:
        old, new = before.raw_outputs(batch), after.raw_outputs(batch)
        age_diff = max(age_diff, float(np.max(np.abs(old.ages_years - new.ages_years))))
        if old.std_years is not None and new.std_years is not None:
            has_std = True
            std_diff = max(std_diff, float(np.max(np.abs(old.std_years - new.std_years))))
    return OutputDiff(runtime, sum(len(b) for b in batches), age_diff, std_diff if has_std else None)


def optimize(source: Path, target: Path, faces: Path, n_faces: int) -> int:
    """Rewrite, check and write; returns the number of chains moved (0: nothing written)."""
    import onnx
    from google.protobuf.message import DecodeError

    from agetool.edge_runtime.infer import OnnxAgeModel, OpenVinoAgeModel, openvino_missing
    from agetool.export.graph_passes import move_input_preprocessing_behind_layout

    if not source.is_file():
        raise AgetoolError(f"{source}: file not found")
    try:
        proto = onnx.load(str(source))
    except (DecodeError, OSError, ValueError) as exc:
        raise AgetoolError(f"{source}: not an ONNX model ({str(exc).splitlines()[0][:160]})") from None
    if not target.parent.is_dir():
        raise AgetoolError(f"{target}: folder {target.parent} not found")
    moved = move_input_preprocessing_behind_layout(proto)
    if not moved:
        print(f"{source}: no input preprocessing in front of an NHWC->NCHW transpose; nothing written")
        return 0
    temp = target.with_name(f".{target.name}.optimize-tmp")
    try:
        onnx.save(proto, str(temp))
        before = OnnxAgeModel(source, providers="cpu")
        batches = comparison_batches(before.input_size, face_paths(faces, n_faces))
        checks = [(compare("onnxruntime", before, OnnxAgeModel(temp, providers="cpu"), batches), ORT_TOLERANCE_YEARS)]
        if not openvino_missing():
            openvino_after = OpenVinoAgeModel(temp)
            openvino = compare("openvino", OpenVinoAgeModel(source), openvino_after, batches)
            # On AMX / AVX512-BF16 CPUs OpenVINO computes in bf16 unless told otherwise: say which.
            openvino = replace(openvino, runtime=f"openvino ({openvino_after.precision})")
            checks.append((openvino, OPENVINO_TOLERANCE_YEARS))
        for diff, tolerance in checks:
            print(diff.line())
            if not diff.worst() <= tolerance:
                raise AgetoolError(f"{source}: outputs changed by {diff.worst():.3g} years in {diff.runtime} "
                                   f"(allowed {tolerance:g}); nothing written", exit_code=1)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    print(f"wrote {target}: {moved} preprocessing chain(s) moved behind the NHWC->NCHW transpose")
    return moved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, metavar="IN", help="an exported agetool .onnx model")
    parser.add_argument("target", type=Path, metavar="OUT", nargs="?", help="where to write it (default: IN)")
    parser.add_argument("--faces", type=Path, required=True, help="a face data folder (final_files/ inside, or images)")
    parser.add_argument("--n-faces", type=int, default=200, help="face crops to compare on (default 200)")
    args = parser.parse_args(argv)
    if args.n_faces < 1:
        parser.error(f"--n-faces {args.n_faces}: expected at least 1")
    try:
        optimize(args.source, args.target or args.source, args.faces, args.n_faces)
    except AgetoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
