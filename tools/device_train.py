"""Train on a lent GPU machine (Keras on JAX) and send the weights back within its file limits.

The device returns at most 16 MiB per file, 64 MiB per call, so the trained weights travel as
float16 chunks; tools/restore_weights.py rebuilds model.keras here and the evaluation that we
report is run here, on the original images, with those exact weights.

    KERAS_BACKEND=jax python tools/device_train.py --data .gpu/data/utkface .gpu/data/utkface_aligned \
        --split .gpu/split.csv --backbone resnet50 --input-size 128 --epochs 60 --budget-s 420 --out "$OUT"
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np

CHUNK_BYTES = 15 * 1024 * 1024


def save_weight_chunks(model, out: Path, stem: str) -> list[str]:
    weights = [w.astype(np.float16) for w in model.get_weights()]
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    blob = buffer.getvalue()
    names = []
    for i in range(0, len(blob), CHUNK_BYTES):
        name = f"{stem}.npz.part{i // CHUNK_BYTES:02d}"
        (out / name).write_bytes(blob[i : i + CHUNK_BYTES])
        names.append(name)
    return names


def main() -> None:
    from agetool.trainer.model import load_keras_model
    from agetool.trainer.train import TrainConfig, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--loss", default="mae")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    work = Path("/tmp/agetool_device") / args.tag
    shutil.rmtree(work, ignore_errors=True)
    config = TrainConfig(
        data_dirs=args.data, out_dir=work / "out", run_dir=work / "run", split_file=args.split,
        backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, loss=args.loss,
        checkpoint_every=1000, max_train_seconds=args.budget_s, workers=16,
        early_stop_patience=12, reduce_lr_patience=4, max_images=args.max_images,
    )
    result = train(config)
    model = load_keras_model(result.model_path)
    parts = save_weight_chunks(model, args.out, args.tag)
    card = json.loads(result.card_path.read_text())
    card["transfer"] = {"weights_dtype": "float16", "parts": parts, "n_arrays": len(model.get_weights())}
    (args.out / f"{args.tag}_card.json").write_text(json.dumps(card, indent=2))
    shutil.copy(work / "run" / "log.csv", args.out / f"{args.tag}_log.csv")
    print(json.dumps({"best_val_mae": result.best_val_mae, "epochs": result.epochs_run,
                      "wall_time_s": result.wall_time_s, "parts": parts}))


if __name__ == "__main__":
    main()
