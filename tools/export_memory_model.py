"""Build the model `agetool export`'s memory benchmark exports: the trainer's ResNet50 at 224 px
(random backbone weights, nothing is downloaded) with its Dense age head fitted by ridge
regression on pooled features of training-split faces, so that ΔMAE compares real estimates.

    .venv/bin/python tools/export_memory_model.py --data ../shared/data/utkface --out /tmp/export-mem
    /usr/bin/time -v .venv/bin/agetool export /tmp/export-mem/model.keras --out /tmp/export-mem \
        --fp16 --int8 --calib ../shared/data/utkface --max-delta-mae 1   # "Maximum resident set size"

A random backbone quantizes badly (INT8 ΔMAE ~0.7 years), hence --max-delta-mae 1; the README's
"Export memory" section has the figures.

Writes OUT/model.keras and OUT/model_card.json (the split is the trainer's seeded one, so the
export's calibration faces come from the same training side the head was fitted on)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BACKBONE = "resnet50"
INPUT_SIZE = 224
HEAD_FIT_FACES = 256
RIDGE = 1.0
SEED = 0


def fit_head(model, images: np.ndarray, ages_years: np.ndarray) -> None:
    """Least-squares Dense head on the model's own pooled features (ridge, centred)."""
    import keras

    head = model.get_layer("age_years")
    features_model = keras.Model(model.input, head.input)
    features = np.concatenate(
        [np.asarray(features_model.predict_on_batch(images[i : i + 32])) for i in range(0, len(images), 32)]
    ).astype(np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    gram = centred.T @ centred + RIDGE * np.eye(centred.shape[1])
    kernel = np.linalg.solve(gram, centred.T @ (ages_years - ages_years.mean()))
    bias = ages_years.mean() - mean @ kernel
    head.set_weights([kernel.reshape(-1, 1).astype(np.float32), np.array([bias], dtype=np.float32)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Face data folder (labels.csv + final_files/).")
    parser.add_argument("--out", type=Path, required=True, help="Folder for model.keras and model_card.json.")
    args = parser.parse_args()

    import keras

    from agetool.export.samples import load_sample, pick_rows, split_rows
    from agetool.trainer.model import build_model

    keras.utils.set_random_seed(SEED)
    model = build_model(BACKBONE, INPUT_SIZE, "none")
    train = load_sample(pick_rows(split_rows([args.data], None), "train", HEAD_FIT_FACES), INPUT_SIZE, "head fit")
    fit_head(model, train.images, train.ages_years)
    args.out.mkdir(parents=True, exist_ok=True)
    temp = args.out / "model.tmp.keras"
    model.save(temp)
    temp.replace(args.out / "model.keras")
    card = {
        "backbone": BACKBONE,
        "weights": "none (random backbone, ridge-fitted head: tools/export_memory_model.py)",
        "input_size": INPUT_SIZE,
        "training_data": args.data.name,
    }
    (args.out / "model_card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    print(args.out / "model.keras")


if __name__ == "__main__":
    main()
