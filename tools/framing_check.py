"""What the runtime's crop margin costs: MAE of a model on validation chips pasted into larger
frames, detected with YuNet and cropped at several margins (the README's framing figures).

    python tools/framing_check.py --model agetool/models/age_default.onnx --split split.csv \
        --data ../shared/data --detector ../shared/models/face_detection_yunet_2023mar.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from agetool.contract import expand_box
from agetool.edge_runtime.infer import OnnxAgeModel

MARGINS = (-0.08, -0.044, 0.0, 0.015, 0.05, 0.1, 0.2, 0.4)
BORDER_PX = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Folder holding the data folders named in the split.")
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--n", type=int, default=600)
    args = parser.parse_args()

    split = pd.read_csv(args.split)
    val = split[split["split"] == "val"].sample(args.n, random_state=0)
    detector = cv2.FaceDetectorYN.create(str(args.detector), "", (400, 400), 0.6)
    model = OnnxAgeModel(args.model, "cpu")
    crops: dict[float, list[np.ndarray]] = {m: [] for m in MARGINS}
    chips, ages = [], []
    for dataset, name, age in zip(val["dataset"], val["file_name"], val["real_age"]):
        chip = cv2.imread(str(args.data / dataset / "final_files" / name))
        frame = cv2.copyMakeBorder(chip, *(BORDER_PX,) * 4, cv2.BORDER_CONSTANT, value=(110, 110, 110))
        detector.setInputSize((frame.shape[1], frame.shape[0]))
        _, faces = detector.detect(frame)
        if faces is None:
            continue
        x, y, w, h = faces[0][:4]
        ages.append(age)
        chips.append(chip[..., ::-1].copy())
        for margin in MARGINS:
            x0, y0, x1, y1 = expand_box(x, y, w, h, frame.shape[1], frame.shape[0], margin)
            crops[margin].append(frame[y0:y1, x0:x1][..., ::-1].copy())
    true = np.array(ages, dtype=float)
    print(f"{len(true)} faces; the chips themselves: MAE {np.abs(model.predict_rgb(chips) - true).mean():.2f}")
    for margin in MARGINS:
        error = model.predict_rgb(crops[margin]) - true
        print(f"margin {margin:+.3f}: MAE {np.abs(error).mean():.2f}, bias {error.mean():+.2f}")


if __name__ == "__main__":
    main()
