"""How a model travels: train the register model's top on UTKFace only and on AAF only (reusing the
main run's feature cache), and score those and the main (both) model on every test set.

    python tools/cross_dataset.py --run-dir RUN_STATE --card OUT/model_card.json --json cross.json

Each model's Challenge-25 rule is calibrated on its own training group's validation part (interval
scale at --level, buffer for <= 1 % minors passed); the test parts are only scored."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from agetool.contract import challenge25_rates
from agetool.trainer.data import apply_split, read_usable
from agetool.trainer.evaluate import choose_buffer
from agetool.trainer.model import build_model
from agetool.trainer.train_cached import (
    FEATURES_DIR, TOP_BEST, cache_features, distribution_predictions, fit_top, interval_scale, split_network,
)

GROUPS = {"utkface": "UTKFace", "utkface_aligned": "UTKFace", "all_age_faces": "AAF"}


class Subset:
    """Rows `index` of a cached feature array, indexable like the array."""

    def __init__(self, array: np.ndarray, index: np.ndarray) -> None:
        self.array, self.index = array, index
        self.shape = (len(index), *array.shape[1:])

    def __getitem__(self, rows):
        order = self.index[rows]
        sort = np.argsort(order)
        out = np.empty((len(order), *self.array.shape[1:]), dtype=self.array.dtype)
        out[sort] = self.array[order[sort]]
        return out

    def __len__(self) -> int:
        return len(self.index)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--card", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    card = json.loads(args.card.read_text())
    rows = apply_split(read_usable([Path(d) for d in card["data_dirs"]]), args.run_dir / "split.csv")
    rows["group"] = rows["dataset"].map(GROUPS)
    train_rows, val_rows, test_rows = (rows[rows.split == s].reset_index(drop=True) for s in ("train", "val", "test"))
    features = args.run_dir / FEATURES_DIR
    views = [np.load(p, mmap_mode="r") for p in sorted(features.glob("train_v*.npy"))]
    val_features = np.load(features / "val_v0.npy", mmap_mode="r")

    def fresh_model():
        model = build_model(card["backbone"], card["input_size"], card["weights"], head="distribution",
                            head_init=card.get("head_init"), dropout=0.2)
        return split_network(model, card["trainable_from"])

    bottom, main_top = fresh_model()
    test_features = cache_features(bottom, list(test_rows["path"]), features / "test_v0.npy", card["input_size"])
    main_top.load_weights(args.run_dir / TOP_BEST)
    tops = {"UTKFace + AAF": main_top}
    for group in ("UTKFace", "AAF"):
        state = args.run_dir / f"cross_{group}"
        state.mkdir(exist_ok=True)
        _, top = fresh_model()
        tr = np.flatnonzero(train_rows.group == group)
        va = np.flatnonzero(val_rows.group == group)
        fit_top(top, [Subset(v, tr) for v in views], train_rows.real_age.to_numpy(np.float32)[tr],
                np.asarray(Subset(val_features, va)[np.arange(len(va))], dtype=np.float32),
                val_rows.real_age.to_numpy(np.float32)[va], state, args.epochs, card["batch_size"],
                card["learning_rate"], card["seed"], resume=True)
        tops[f"{group} only"] = top
    results = []
    for name, top in tops.items():
        trained_on = ["UTKFace", "AAF"] if "+" in name else [name.split()[0]]
        own_val = np.flatnonzero(val_rows.group.isin(trained_on))
        v_age, v_std = distribution_predictions(top, np.asarray(Subset(val_features, own_val)[np.arange(len(own_val))], np.float32))
        v_true = val_rows.real_age.to_numpy()[own_val]
        k = interval_scale(v_true, v_age, v_std, args.level)
        buffer = choose_buffer(v_true, v_age - k * v_std).buffer_years
        t_age, t_std = distribution_predictions(top, np.asarray(test_features, np.float32))
        for group in ("UTKFace", "AAF"):
            members = (test_rows.group == group).to_numpy()
            truth = test_rows.real_age.to_numpy()[members]
            rates = challenge25_rates(truth, (t_age - k * t_std)[members], 25 + buffer)
            results.append({"trained_on": name, "tested_on": group, "n": int(members.sum()),
                            "mae": round(float(np.abs(t_age[members] - truth).mean()), 2),
                            "bias": round(float((t_age[members] - truth).mean()), 2),
                            "buffer_years": buffer, "interval_scale": round(k, 3),
                            "minors_passed_rate": round(rates["minors_passed_rate"], 4),
                            "adults_checked_rate": round(rates["adults_checked_rate"], 4)})
            print(results[-1], flush=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(pd.DataFrame(results).to_string(index=False))


if __name__ == "__main__":
    main()
