"""Pack seeds'-layout face folders small enough to carry to a GPU machine (64 MiB limit).

Each image is resized to the training input size with the contract's preprocessing
(INTER_AREA) and stored as WebP (quality 85, mean abs error ~2 grey levels) under its ORIGINAL
file name, so labels.csv and a split file keyed by (folder name, file_name) still match. OpenCV
decodes by content, not by extension. Research-only data: the pack lives in an ignored folder
(.gpu/) and is never committed.

    python tools/pack_faces.py --size 128 --out .gpu/data ../shared/data/utkface ../shared/data/utkface_aligned
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from agetool.contract import preprocess_bgr


def pack_folder(src: Path, dst: Path, size: int, quality: int) -> int:
    (dst / "final_files").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "labels.csv", dst / "labels.csv")
    names = list(pd.read_csv(src / "labels.csv")["file_name"])

    def one(name: str) -> int:
        bgr = cv2.imread(str(src / "final_files" / name), cv2.IMREAD_COLOR)
        if bgr is None:
            return 0
        small = np.clip(np.rint(preprocess_bgr(bgr, size)[..., ::-1]), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".webp", small, [cv2.IMWRITE_WEBP_QUALITY, quality])
        (dst / "final_files" / name).write_bytes(buf.tobytes())
        return len(buf)

    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(one, names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args()
    for folder in args.folders:
        n_bytes = pack_folder(folder, args.out / folder.name, args.size, args.quality)
        print(f"{folder.name}: {n_bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
