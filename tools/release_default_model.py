"""Make the package's default model from an exported ONNX file and its evaluations.

Chooses the Challenge-25 buffer on the VALIDATION predictions, for the rule the daemon applies
(no ID check only when estimate - uncertainty >= 25 + buffer, uncertainty = the validation MAE
written into the metadata), so that at most 1 % of true under-18s get id_check_required = false;
checks it on the test predictions; writes the buffer and the MAE into the model's metadata and
the model card beside it:

    python tools/release_default_model.py --onnx OUT/model_int8.onnx --card RUN/model_card.json \
        --val-predictions pred_val.csv --test-predictions pred_test.csv \
        --val-json eval_val.json --test-json eval_test.json --out agetool/models
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import onnx
import pandas as pd

from agetool.contract import DEFAULT_POLICY_AGE_YEARS, ModelMetadata, challenge25_rates
from agetool.paths import DEFAULT_MODEL_FILE
from agetool.trainer.evaluate import choose_buffer
from agetool.trainer.framing import measure_face_margin

MAX_MINOR_PASS_RATE = 0.01


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--card", type=Path, required=True)
    parser.add_argument("--val-predictions", type=Path, required=True)
    parser.add_argument("--test-predictions", type=Path, required=True)
    parser.add_argument("--val-json", type=Path, required=True)
    parser.add_argument("--test-json", type=Path, required=True)
    parser.add_argument("--extra-json", type=Path, nargs="*", default=[], help="More evaluations to quote (e.g. --flip).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--detector", type=Path, required=True, help="YuNet .onnx, to measure the training crops' framing.")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="The data folders the predictions came from.")
    args = parser.parse_args()

    val = pd.read_csv(args.val_predictions)
    test = pd.read_csv(args.test_predictions)
    val_report = json.loads(args.val_json.read_text())
    test_report = json.loads(args.test_json.read_text())
    uncertainty_years = round(val_report["mae"], 3)
    # The daemon compares the lower bound (estimate - uncertainty) with 25 + buffer.
    val_lower = val["estimated_age"] - uncertainty_years
    test_lower = test["estimated_age"] - uncertainty_years
    choice = choose_buffer(val["real_age"], val_lower, MAX_MINOR_PASS_RATE)
    folders = {folder.name: folder for folder in args.data}
    sample = val.sample(n=min(600, len(val)), random_state=0)
    face_margin, n_framed = measure_face_margin(
        [folders[d] / "final_files" / f for d, f in zip(sample["dataset"], sample["file_name"])], args.detector
    )
    test_rates = challenge25_rates(test["real_age"], test_lower, choice.threshold_years)

    proto = onnx.load(str(args.onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_props(props, source=str(args.onnx))
    meta = meta.model_copy(update={
        "val_mae": uncertainty_years,
        "mae_uncertainty_years": uncertainty_years,
        "id_check_buffer_years": choice.buffer_years,
        "face_margin": face_margin,
    })
    onnx.helper.set_model_props(proto, meta.to_props())
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / (DEFAULT_MODEL_FILE + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(args.out / DEFAULT_MODEL_FILE)

    training = json.loads(args.card.read_text())
    training.pop("transfer", None)
    card = {
        "name": "agetool default age model",
        "file": DEFAULT_MODEL_FILE,
        "released": date.today().isoformat(),
        "warning": (
            "Trained from scratch (no ImageNet weights) on UTKFace, a research-only (non-commercial) "
            "data set. Production use needs a model trained on data the user may use."
        ),
        "metadata": meta.model_dump(),
        "training": training,
        "evaluation": {
            "data": "UTKFace (shared/data/utkface + shared/data/utkface_aligned), the training split file's val and test parts, original 200 px JPEGs",
            "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
            "val": {k: val_report[k] for k in ("n", "mae", "rmse", "mean_bias", "mae_by_band", "bias_by_band", "count_by_band")},
            "test": {k: test_report[k] for k in ("n", "mae", "rmse", "mean_bias", "mae_by_band", "bias_by_band", "count_by_band")},
            "extra": [json.loads(p.read_text()) | {"file": p.name} for p in args.extra_json],
        },
        "framing": {
            "face_margin": face_margin,
            "how": f"YuNet box vs chip size, median over {n_framed} validation chips; the runtime crops with this margin",
        },
        "challenge25": {
            "policy_age_years": DEFAULT_POLICY_AGE_YEARS,
            "rule": (
                f"no ID check only when estimate - {uncertainty_years} (val MAE) >= 25 + buffer; buffer chosen "
                f"on val so that at most {MAX_MINOR_PASS_RATE:.0%} of true under-18s pass (single-frame estimates)"
            ),
            "uncertainty_years": uncertainty_years,
            "chosen_on_val": choice.model_dump(),
            "on_test": {"threshold_years": choice.threshold_years, **test_rates},
            "point_estimate_vs_25": {"val": challenge25_rates(val["real_age"], val["estimated_age"], DEFAULT_POLICY_AGE_YEARS),
                                     "test": challenge25_rates(test["real_age"], test["estimated_age"], DEFAULT_POLICY_AGE_YEARS)},
        },
    }
    card_path = args.out / DEFAULT_MODEL_FILE.replace(".onnx", ".card.json")
    tmp_card = card_path.with_name(card_path.name + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=2, default=float) + "\n")
    tmp_card.replace(card_path)
    print(json.dumps(card["challenge25"], indent=2, default=float))
    print(f"wrote {args.out / DEFAULT_MODEL_FILE} ({(args.out / DEFAULT_MODEL_FILE).stat().st_size / 1e6:.1f} MB) and {card_path}")


if __name__ == "__main__":
    main()
