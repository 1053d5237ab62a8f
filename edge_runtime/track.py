"""Following the shopper across frames of one lane: IoU association, median-smoothed age.

One shopper = one track. A face that overlaps no live track, or appears after the timeout,
starts a new track, so the next shopper never inherits the previous one's age."""

from __future__ import annotations

import itertools
import logging
import statistics
from collections import deque
from dataclasses import dataclass, field

from agetool.contract import ModelMetadata
from agetool.edge_runtime.detect import FaceBox, iou

log = logging.getLogger(__name__)

# When a model states no error figure, assume this many years rather than pretend to be exact.
UNKNOWN_MODEL_MAE_YEARS = 5.0


def model_uncertainty_years(metadata: ModelMetadata) -> float:
    """The model's own error figure: mae_uncertainty_years, else val_mae, else a cautious default."""
    for value in (metadata.mae_uncertainty_years, metadata.val_mae):
        if value is not None and value >= 0:
            return float(value)
    log.warning(
        "model states no val_mae / mae_uncertainty_years: assuming +/- %.1f years", UNKNOWN_MODEL_MAE_YEARS
    )
    return UNKNOWN_MODEL_MAE_YEARS


@dataclass(frozen=True)
class AgeEstimate:
    """A smoothed age with its bounds."""

    age_years: float
    lower_years: float
    upper_years: float
    n_estimates: int


def smooth(estimates: list[float], model_mae_years: float) -> AgeEstimate:
    """Median of the estimates; uncertainty = max(model MAE, largest distance from the median)."""
    if not estimates:
        raise ValueError("smooth() needs at least one estimate")
    median = float(statistics.median(estimates))
    spread = max(abs(e - median) for e in estimates)
    uncertainty = max(model_mae_years, spread)
    return AgeEstimate(median, max(0.0, median - uncertainty), median + uncertainty, len(estimates))


@dataclass
class Track:
    track_id: int
    box: FaceBox
    first_seen_s: float
    last_seen_s: float
    first_seen_wall_s: float
    estimates: deque[float] = field(default_factory=deque)

    def estimate(self, model_mae_years: float) -> AgeEstimate:
        return smooth(list(self.estimates), model_mae_years)


class LaneTracker:
    """Tracks for one lane. Not thread-safe: the caller holds the lane's lock."""

    def __init__(
        self, iou_threshold: float, window: int, timeout_s: float, model_mae_years: float
    ) -> None:
        self.iou_threshold = iou_threshold
        self.window = window
        self.timeout_s = timeout_s
        self.model_mae_years = model_mae_years
        self._live: dict[int, Track] = {}
        self._ids = itertools.count(1)
        self._latest: Track | None = None

    def update(self, box: FaceBox, age_years: float, now_s: float, now_wall_s: float) -> Track:
        """Add one face's estimate: to the best-overlapping live track, else to a new track."""
        best: Track | None = None
        best_iou = 0.0
        for track in self._live.values():
            if now_s - track.last_seen_s > self.timeout_s:
                continue
            overlap = iou(track.box, box)
            if overlap >= self.iou_threshold and overlap > best_iou:
                best, best_iou = track, overlap
        if best is None:
            best = Track(next(self._ids), box, now_s, now_s, now_wall_s, deque(maxlen=self.window))
            self._live[best.track_id] = best
        best.box = box
        best.last_seen_s = now_s
        best.estimates.append(float(age_years))
        self._latest = best
        return best

    def expire(self, now_s: float) -> list[Track]:
        """Remove and return tracks unseen for longer than the timeout (shoppers who left)."""
        gone = [t for t in self._live.values() if now_s - t.last_seen_s > self.timeout_s]
        for track in gone:
            del self._live[track.track_id]
        if self._latest is not None and self._latest.track_id not in self._live:
            self._latest = None
        return gone

    def close_all(self) -> list[Track]:
        """Remove and return every live track (at shutdown)."""
        gone = list(self._live.values())
        self._live.clear()
        self._latest = None
        return gone

    def current(self, now_s: float) -> Track | None:
        """The most recently seen shopper, if seen within the timeout."""
        track = self._latest
        if track is None or now_s - track.last_seen_s > self.timeout_s:
            return None
        return track

    @property
    def live_count(self) -> int:
        return len(self._live)
