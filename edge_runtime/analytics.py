"""Age-group analytics: how many shoppers per band, per hour, per lane. Counts only.

One count per track (shopper), taken when the track ends, never per frame. Kept in memory and
added to SQLite periodically and at shutdown; no image, crop or exact age is ever stored."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol

from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS band_counts (
    hour_utc TEXT NOT NULL,   -- e.g. 2025-01-31T14:00Z
    lane TEXT NOT NULL,
    band TEXT NOT NULL,
    shoppers INTEGER NOT NULL,
    PRIMARY KEY (hour_utc, lane, band)
)
"""
UPSERT = """
INSERT INTO band_counts (hour_utc, lane, band, shoppers) VALUES (?, ?, ?, ?)
ON CONFLICT (hour_utc, lane, band) DO UPDATE SET shoppers = shoppers + excluded.shoppers
"""


def hour_bucket(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:00Z")


class CountWriter(Protocol):
    """The daemon's single writer of the analytics file (receipts.AnalyticsStore)."""

    def add_band_counts(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Add the rows in one transaction; raises sqlite3.Error when it cannot."""


class BandAnalytics:
    """In-memory counts, flushed to SQLite by a background thread and by flush().

    With a `writer`, flushes go through it (the daemon's one writer, which also migrated the
    file); without one, through a connection of its own."""

    def __init__(self, sqlite_path: Path, flush_interval_s: float, writer: CountWriter | None = None) -> None:
        self.sqlite_path = Path(sqlite_path)
        self.writer = writer
        self.flush_interval_s = flush_interval_s
        self._pending: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushed_total = 0
        if writer is None:
            self._create()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.sqlite_path), timeout=10.0)

    def _create(self) -> None:
        try:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise AgetoolError(f"analytics.sqlite_path {self.sqlite_path}: cannot open ({exc})") from None

    def record(self, lane: str, band: str, wall_s: float) -> None:
        """Count one shopper in `band` for the hour of `wall_s`."""
        with self._lock:
            self._pending[(hour_bucket(wall_s), lane, band)] += 1

    def pending(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._pending)

    def flush(self) -> int:
        """Add pending counts to SQLite in one transaction; the number of shoppers written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, Counter()
            if not batch:
                return 0
            rows = [(h, lane, band, n) for (h, lane, band), n in batch.items()]
            try:
                if self.writer is not None:
                    self.writer.add_band_counts(rows)
                else:
                    with self._connect() as db:
                        db.executemany(UPSERT, rows)
            except (sqlite3.Error, OSError) as exc:  # OSError too: a lost batch is lost counts
                log.error("analytics flush to %s failed (%s); keeping counts for the next try", self.sqlite_path, exc)
                with self._lock:
                    self._pending.update(batch)
                return 0
            written = sum(batch.values())
            self.flushed_total += written
            log.debug("analytics: flushed %d shopper count(s)", written)
            return written

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="analytics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()

    def stop(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()


def read_counts(sqlite_path: Path) -> list[tuple[str, str, str, int]]:
    """All (hour_utc, lane, band, shoppers) rows, for reports and tests."""
    with sqlite3.connect(str(sqlite_path)) as db:
        return list(db.execute("SELECT hour_utc, lane, band, shoppers FROM band_counts ORDER BY 1, 2, 3"))
