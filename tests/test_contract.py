import numpy as np
import pytest

from agetool.contract import (
    BAND_NAMES,
    Challenge25Policy,
    ModelMetadata,
    age_band,
    challenge25_rates,
    expand_box,
    preprocess_rgb,
)
from agetool.errors import AgetoolError


@pytest.mark.parametrize(
    "age,band",
    [(0, "0-12"), (12.9, "0-12"), (13, "13-17"), (17.5, "17" and "13-17"), (18, "18-24"), (24.99, "18-24"),
     (25, "25-34"), (49, "35-49"), (64.5, "50-64"), (65, "65+"), (110, "65+")],
)
def test_age_band_edges(age, band):
    assert age_band(age) == band


def test_age_band_unknown_for_nan():
    assert age_band(float("nan")) == "unknown"
    assert len(BAND_NAMES) == 7


def test_policy_asks_for_id_below_threshold_and_without_face():
    policy = Challenge25Policy(buffer_years=3)
    assert policy.threshold_years == 28
    assert policy.id_check_required(27.9)
    assert not policy.id_check_required(28.0)
    assert policy.id_check_required(None)
    with pytest.raises(ValueError):
        Challenge25Policy(policy_age_years=25, unknown_key=1)


def test_challenge25_rates():
    true = np.array([10, 16, 30, 40, 26, 20])
    est = np.array([26, 14, 24, 40, 30, 30])
    rates = challenge25_rates(true, est, 25)
    assert rates["minors_passed_rate"] == 0.5
    assert rates["adults_checked_rate"] == pytest.approx(1 / 3)


def test_metadata_round_trip_and_refusal():
    meta = ModelMetadata(agetool_version="1.0", input_size=128, val_mae=5.5, variant="int8")
    props = meta.to_props()
    assert props["agetool.input_size"] == "128"
    back = ModelMetadata.from_props({**props, "other": "x"})
    assert back == meta
    with pytest.raises(AgetoolError, match="not an agetool model"):
        ModelMetadata.from_props({"producer": "x"}, source="m.onnx")


def test_preprocess_shapes_and_range():
    rgb = np.full((200, 150, 3), 200, dtype=np.uint8)
    out = preprocess_rgb(rgb, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert out.min() == pytest.approx(200) and out.max() == pytest.approx(200)
    with pytest.raises(AgetoolError):
        preprocess_rgb(np.zeros((10, 10)), 64)


def test_expand_box_is_square_and_clipped():
    x0, y0, x1, y1 = expand_box(100, 100, 50, 60, 640, 480)
    assert (x1 - x0) == (y1 - y0) == 108
    assert expand_box(0, 0, 100, 100, 120, 120) == (0, 0, 120, 120)
