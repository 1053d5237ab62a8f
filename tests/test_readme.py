"""The README as a new user follows it: the facts it states are the code's (issue 16 item 13)."""

from __future__ import annotations

import re
from pathlib import Path

from agetool.edge_runtime.config import DEFAULT_ANALYTICS_PATH
from agetool.edge_runtime.receipts import parse_receipt
from agetool.trainer.train import TrainConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_train_extra_is_installed_before_the_training_workflow():
    workflow = README.index("## Workflow")
    first_train = README.index("agetool train", workflow)
    install = README.index("pip install -q -e '.[cpu,train]'", workflow)
    assert install < first_train


def test_the_receipt_example_is_a_valid_receipt():
    example = re.search(r"-d '(\{.*?\})'", README, re.S)
    assert example, "no receipt body example"
    receipt = parse_receipt(example.group(1).encode())
    assert receipt.total_cents == 2350 and len(receipt.items or []) == 2
    assert "Content-Type: application/json" in README


def test_where_serve_keeps_its_database_and_where_the_detector_comes_from():
    assert str(DEFAULT_ANALYTICS_PATH).replace(str(Path.home()), "~") in README
    assert "opencv/opencv_zoo" in README and "face_detection_yunet_2023mar.onnx" in README


def test_default_input_size_is_stated():
    default = TrainConfig.model_fields["input_size"].default
    assert f"`--input-size {default}` by default" in README and "--input-size 128" in README
