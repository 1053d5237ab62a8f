"""Which age band a receipt is recorded under, and how sure that is (coarse on purpose)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from agetool.contract import AGE_BANDS, UNKNOWN_BAND, age_band

BASIS_ESTIMATED = "estimated"
BASIS_UNSURE = "unsure"
BASIS_NO_FACE = "no_face"
# The stored confidence is rounded down to this step: a finer figure, with the band and the model's
# error, would let one work the exact age back out.
CONFIDENCE_STEP = 0.25


@dataclass(frozen=True)
class BandTag:
    """The band a receipt is recorded under and how sure it is."""

    band: str
    confidence: float | None  # coarse share of the estimate's interval inside the band
    basis: str


def band_share(band_name: str, lower_years: float, upper_years: float) -> float:
    """Share of the interval [lower, upper] that lies inside the band (1.0 for a point inside)."""
    band = next(b for b in AGE_BANDS if b.name == band_name)
    band_low = float(band.low_years)
    band_high = math.inf if band.high_years is None else float(band.high_years + 1)
    if upper_years <= lower_years:
        return 1.0 if band_low <= lower_years < band_high else 0.0
    inside = max(0.0, min(upper_years, band_high) - max(lower_years, band_low))
    return inside / (upper_years - lower_years)


def tag_band(
    age_years: float | None, lower_years: float | None, upper_years: float | None, min_confidence: float
) -> BandTag:
    """The shopper's band for a receipt: the band of the smoothed age when at least `min_confidence`
    of the uncertainty interval lies in it; 'unknown' with no face or a less certain estimate.

    Why not "both bounds in one band": with a +/-5-year model and bands 5-15 years wide almost no
    shopper would qualify, and the analytics would be mostly 'unknown'."""
    if age_years is None or lower_years is None or upper_years is None or not math.isfinite(age_years):
        return BandTag(UNKNOWN_BAND, None, BASIS_NO_FACE)
    band = age_band(age_years)
    share = band_share(band, lower_years, upper_years)
    coarse = math.floor(round(share, 6) / CONFIDENCE_STEP) * CONFIDENCE_STEP
    if round(share, 6) < min_confidence:
        return BandTag(UNKNOWN_BAND, coarse, BASIS_UNSURE)
    return BandTag(band, coarse, BASIS_ESTIMATED)
