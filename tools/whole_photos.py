"""Make whole "till photos" from labelled face chips: each chip scaled (0.7-1.3x), rotated
(+/-15 degrees) and pasted at a random place on a 640x480 frame of noise and colour, so that
`agetool evaluate --detect` measures detection + crop + model end to end, as the till runs it.

    python tools/whole_photos.py DATA_DIR --split split.csv --subset test --n 400 --out photos/DIR_NAME

Writes OUT/final_files/*.jpg and OUT/labels.csv. The chips are research data: keep OUT outside
the repository."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from agetool.trainer.data import apply_split, read_usable


def paste(chip: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    w, h = size
    frame = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    frame = cv2.resize(cv2.GaussianBlur(frame, (0, 0), 2.0), (w, h), interpolation=cv2.INTER_CUBIC)
    scale = rng.uniform(0.7, 1.3) * 200.0 / max(chip.shape[:2])
    angle = rng.uniform(-15, 15)
    ch, cw = chip.shape[:2]
    matrix = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, scale)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h
    matrix[:, 2] += (cx - cw / 2, cy - ch / 2)
    warped = cv2.warpAffine(chip, matrix, (w, h))
    mask = cv2.warpAffine(np.full((ch, cw), 255, np.uint8), matrix, (w, h)) > 127
    frame[mask] = warped[mask]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--subset", default="test")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = apply_split(read_usable(args.folders), args.split)
    rows = rows[rows["split"] == args.subset]
    rows = rows.sample(n=min(args.n, len(rows)), random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    (args.out / "final_files").mkdir(parents=True, exist_ok=True)
    labels = []
    for index, row in enumerate(rows.itertuples(index=False)):
        chip = cv2.imread(str(row.path))
        name = f"{index:05d}.jpg"
        cv2.imwrite(str(args.out / "final_files" / name), paste(chip, rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        labels.append((name, int(row.real_age)))
    pd.DataFrame(labels, columns=["file_name", "real_age"]).to_csv(args.out / "labels.csv", index=False)
    print(f"wrote {len(labels)} photos to {args.out}")


if __name__ == "__main__":
    main()
