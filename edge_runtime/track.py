"""Following the shopper across frames of one lane: IoU association, smoothed age.

Models with one output: the median of the latest estimates, +/- the model's stated error.
Models with a per-face spread (`std_output_name`): the estimates weighted by the inverse of
their variance, +/- interval_scale times their combined spread.

One shopper = one track. A face that overlaps no live track, or appears after the timeout,
starts a new track, so the next shopper never inherits the previous one's age."""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from agetool.contract import ModelMetadata
from agetool.edge_runtime.detect import FaceBox, iou

log = logging.getLogger(__name__)

# When a model states no error figure, assume this many years rather than pretend to be exact.
UNKNOWN_MODEL_MAE_YEARS = 5.0


def model_interval_scale(metadata: ModelMetadata | None) -> float:
    """How many of a face's own spreads make its interval (models with a spread output)."""
    if metadata is None or not metadata.std_output_name:
        return 1.0
    if metadata.interval_scale is None:
        log.warning("model has a spread output but states no interval_scale: using +/- 1 std")
        return 1.0
    return float(metadata.interval_scale)


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


# A spread below this is not believed (a collapsed std output would give one frame all the weight).
MIN_STD_YEARS = 0.5


def smooth(
    estimates: list[float],
    model_mae_years: float,
    stds_years: list[float] | None = None,
    interval_scale: float = 1.0,
) -> AgeEstimate:
    """Median of the estimates; uncertainty = max(model MAE, largest distance from the median).

    With per-estimate spreads: the inverse-variance weighted mean; uncertainty =
    max(interval_scale * combined spread, largest distance from the mean). The combined spread is
    sqrt(n / sum(1 / std^2)), not divided by sqrt(n): frames of one face are far from independent,
    so more frames must not shrink the interval below what one good frame claims."""
    if not estimates:
        raise ValueError("smooth() needs at least one estimate")
    if stds_years is not None and len(stds_years) == len(estimates):
        weights = [1.0 / max(std, MIN_STD_YEARS) ** 2 for std in stds_years]
        centre = sum(w * e for w, e in zip(weights, estimates)) / sum(weights)
        combined_std = math.sqrt(len(weights) / sum(weights))
        spread = max(abs(e - centre) for e in estimates)
        uncertainty = max(interval_scale * combined_std, spread)
        return AgeEstimate(centre, max(0.0, centre - uncertainty), centre + uncertainty, len(estimates))
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
    stds_years: deque[float | None] = field(default_factory=deque)
    interval_scale: float = 1.0
    last_estimate_s: float = -math.inf

    def estimate(self, model_mae_years: float) -> AgeEstimate:
        stds = list(self.stds_years)
        have_stds = bool(stds) and all(s is not None for s in stds)
        return smooth(list(self.estimates), model_mae_years, stds if have_stds else None, self.interval_scale)

    def settled(self, min_estimates: int, agree_years: float) -> bool:
        """Enough estimates that agree: the last `min_estimates` lie within `agree_years` of each other."""
        if len(self.estimates) < min_estimates:
            return False
        latest = list(self.estimates)[-min_estimates:]
        return max(latest) - min(latest) <= agree_years

    def needs_estimate(self, now_s: float, min_estimates: int, agree_years: float, refresh_s: float) -> bool:
        """Run the age model on this frame? Always until the track is settled, then every refresh_s."""
        if min_estimates <= 0 or not self.settled(min_estimates, agree_years):
            return True
        return now_s - self.last_estimate_s >= refresh_s


class LaneTracker:
    """Tracks for one lane. Not thread-safe: the caller holds the lane's lock."""

    def __init__(
        self,
        iou_threshold: float,
        window: int,
        timeout_s: float,
        model_mae_years: float,
        interval_scale: float = 1.0,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.window = window
        self.timeout_s = timeout_s
        self.model_mae_years = model_mae_years
        self.interval_scale = interval_scale
        self._live: dict[int, Track] = {}
        self._ids = itertools.count(1)
        self._latest: Track | None = None

    def match(self, box: FaceBox, now_s: float) -> Track | None:
        """The live track this face continues (best overlap above the threshold), if any."""
        best: Track | None = None
        best_iou = 0.0
        for track in self._live.values():
            if now_s - track.last_seen_s > self.timeout_s:
                continue
            overlap = iou(track.box, box)
            if overlap >= self.iou_threshold and overlap > best_iou:
                best, best_iou = track, overlap
        return best

    def update(
        self, box: FaceBox, age_years: float, now_s: float, now_wall_s: float, std_years: float | None = None
    ) -> Track:
        """Add one face's estimate: to the best-overlapping live track, else to a new track."""
        best = self.match(box, now_s)
        if best is None:
            best = Track(
                next(self._ids), box, now_s, now_s, now_wall_s, deque(maxlen=self.window),
                deque(maxlen=self.window), self.interval_scale,
            )
            self._live[best.track_id] = best
        best.box = box
        best.last_seen_s = now_s
        best.last_estimate_s = now_s
        best.estimates.append(float(age_years))
        best.stds_years.append(None if std_years is None else float(std_years))
        self._latest = best
        return best

    def touch(self, track: Track, box: FaceBox, now_s: float) -> None:
        """The shopper is still there, seen without a new age estimate (the model was not run)."""
        track.box = box
        track.last_seen_s = now_s
        self._latest = track

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
