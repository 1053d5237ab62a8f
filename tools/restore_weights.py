"""Rebuild model.keras from the float16 weight chunks tools/device_train.py sent back.

    python tools/restore_weights.py --parts-dir DIR --tag run --out models/run
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from agetool.trainer.model import build_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--parts-dir", type=Path, required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    card = json.loads((args.parts_dir / f"{args.tag}_card.json").read_text())
    blob = b"".join((args.parts_dir / p).read_bytes() for p in card["transfer"]["parts"])
    arrays = np.load(io.BytesIO(blob))
    weights = [arrays[f"arr_{i}"].astype(np.float32) for i in range(card["transfer"]["n_arrays"])]
    model = build_model(card["backbone"], card["input_size"], "none")
    model.set_weights(weights)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "model.tmp.keras"
    model.save(tmp)
    tmp.replace(args.out / "model.keras")
    card["machine_note"] = "trained on the lent GPU machine; weights carried back as float16"
    (args.out / "model_card.json").write_text(json.dumps(card, indent=2))
    print(f"wrote {args.out / 'model.keras'}")


if __name__ == "__main__":
    main()
