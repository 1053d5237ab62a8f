"""Choose the aligned crop's coverage: the face-pretrained FaceRes model (backbone + its IMDB-Wiki
age head, no training on our data) estimates seeded validation samples of each data folder,
aligned at each candidate coverage; the coverage with the lowest mean MAE across folders wins.

    python tools/choose_coverage.py ../shared/data/utkface ../shared/data/utkface_aligned \
        ../shared/data/all_age_faces --split split.csv --per-folder 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--per-folder", type=int, default=200)
    parser.add_argument("--coverages", default="1.0,1.15,1.3,1.5,1.75")
    parser.add_argument("--weights", default="../shared/models/faceres_mobilenet_notop.weights.h5")
    parser.add_argument("--head", default="../shared/models/faceres_age_head.npz")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import cv2

    from agetool.contract import AlignTemplate
    from agetool.paths import SHIPPED_DETECTOR
    from agetool.trainer.align import sample_aligned_crops
    from agetool.trainer.data import apply_split, read_usable
    from agetool.trainer.model import build_model

    model = build_model("mobilenet", 224, args.weights, head="distribution", head_init=args.head, dropout=0.0)
    rows = apply_split(read_usable(args.folders), args.split)
    results: dict[str, dict[str, float]] = {}
    for coverage in [float(c) for c in args.coverages.split(",")]:
        template = AlignTemplate(224, coverage)
        per_folder = {}
        for name, group in rows[rows["split"] == "val"].groupby("dataset"):
            sample = group.sample(n=min(args.per_folder, len(group)), random_state=0)
            crops, kept = sample_aligned_crops(list(sample["path"]), SHIPPED_DETECTOR, template)
            batch = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in crops]).astype(np.float32)
            ages = model.predict(batch, batch_size=32, verbose=0)["age_years"].reshape(-1)
            truth = sample["real_age"].to_numpy()[kept]
            per_folder[name] = round(float(np.abs(ages - truth).mean()), 3)
        per_folder["mean"] = round(float(np.mean(list(per_folder.values()))), 3)
        results[f"{coverage:g}"] = per_folder
        print(f"coverage {coverage:g}: {per_folder}", flush=True)
    best = min(results, key=lambda c: results[c]["mean"])
    print(f"best coverage {best}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "best": best}, indent=2))


if __name__ == "__main__":
    main()
