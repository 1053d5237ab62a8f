"""The Challenge 25 decision the POS receives when alcohol is scanned."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, Field

from agetool.contract import UNKNOWN_BAND, Challenge25Policy, age_band
from agetool.edge_runtime.track import AgeEstimate

REASON_NO_FACE = "no_face_seen"
REASON_BELOW = "lower_bound_below_threshold"
REASON_ABOVE = "lower_bound_at_or_above_threshold"


class Decision(BaseModel):
    """Whether to ask for ID, and the estimate it rests on (ages and bounds in years)."""

    lane: str = Field(description="Lane name.")
    age_years: float | None = Field(description="Smoothed (median) age estimate; null when no face was seen.")
    lower_years: float | None = Field(description="Estimate minus its uncertainty.")
    upper_years: float | None = Field(description="Estimate plus its uncertainty.")
    band: str = Field(description="Age band of the estimate ('unknown' without a face).")
    id_check_required: bool = Field(description="True: ask the shopper for ID.")
    reason: str = Field(description=f"{REASON_NO_FACE}, {REASON_BELOW} or {REASON_ABOVE}.")
    threshold_years: float = Field(description="Policy age plus buffer the lower bound is compared with.")
    track_id: int | None = Field(description="The shopper's track in this lane; null when no face was seen.")
    n_estimates: int = Field(description="Frames the smoothed estimate is the median of.")
    timestamp: str = Field(description="When the decision was made (UTC, ISO 8601).")


def utc_iso(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, tz=timezone.utc).isoformat(timespec="milliseconds")


def decide(
    lane: str,
    estimate: AgeEstimate | None,
    track_id: int | None,
    policy: Challenge25Policy,
    wall_s: float,
) -> Decision:
    """ID check when no face was seen, or when the lower bound is under policy age + buffer."""
    threshold = policy.threshold_years
    if estimate is None:
        return Decision(
            lane=lane, age_years=None, lower_years=None, upper_years=None, band=UNKNOWN_BAND,
            id_check_required=True, reason=REASON_NO_FACE, threshold_years=threshold, track_id=None,
            n_estimates=0, timestamp=utc_iso(wall_s),
        )
    required = policy.id_check_required(estimate.lower_years)
    return Decision(
        lane=lane,
        age_years=round(estimate.age_years, 2),
        lower_years=round(estimate.lower_years, 2),
        upper_years=round(estimate.upper_years, 2),
        band=age_band(estimate.age_years),
        id_check_required=required,
        reason=REASON_BELOW if required else REASON_ABOVE,
        threshold_years=threshold,
        track_id=track_id,
        n_estimates=estimate.n_estimates,
        timestamp=utc_iso(wall_s),
    )
