"""The daemon's one writer of the analytics file, and the receipts it stores.

The file is written by ONE thread over ONE connection (AnalyticsStore): receipts (with their
compliance outcome) from the API and the band counts the flusher adds all go through it, each in its
own transaction. WAL lets reports read while the daemon writes. Every receipt's primary key is its
receipt_id, so a POS retry, a crash or a restart can never count a receipt twice. Stored: bands,
counts, a coarse band confidence, the receipt's own data and its compliance outcome; never an image,
a crop or an exact age (docs/privacy.md).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from agetool.edge_runtime import compliance
from agetool.edge_runtime.analytics import UPSERT as BAND_COUNTS_UPSERT
from agetool.edge_runtime.analytics import hour_bucket
from agetool.edge_runtime.band_tag import BandTag
from agetool.edge_runtime.compliance import ComplianceDraft, ComplianceRecord
from agetool.edge_runtime.migrations import connect_readonly, has_table, migrate, open_db, utc_seconds_iso
from agetool.edge_runtime.pos_schema import ReceiptIn
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_TIMEOUT_S = 10.0


def purge_older_than(db: sqlite3.Connection, cutoff_wall_s: float) -> dict[str, int]:
    """Delete receipts (with their items) recorded before the cutoff and band counts of hours that
    began before the cutoff's hour; on a till that syncs to a central database, only rows the centre
    already has (sync_specs.retention_guard). The caller holds the transaction."""
    from agetool.edge_runtime.sync_specs import forget_purged, retention_guard

    cutoff = utc_seconds_iso(cutoff_wall_s)
    receipts_kept = retention_guard(db, "receipts")
    items = db.execute(
        "DELETE FROM receipt_items WHERE receipt_id IN "
        f"(SELECT receipt_id FROM receipts WHERE recorded_at_utc < ?{receipts_kept})",
        (cutoff,),
    ).rowcount
    receipts = db.execute(f"DELETE FROM receipts WHERE recorded_at_utc < ?{receipts_kept}", (cutoff,)).rowcount
    counts = db.execute(f"DELETE FROM band_counts WHERE hour_utc < ?{retention_guard(db, 'band_counts')}",
                        (hour_bucket(cutoff_wall_s),)).rowcount
    forget_purged(db)
    return {"receipts": receipts, "receipt_items": items, "band_counts": counts}


# --- Stored receipts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredReceipt:
    receipt_id: str
    lane: str
    recorded_at_utc: str
    hour_utc: str
    band: str
    band_confidence: float | None
    band_basis: str
    total_cents: int
    n_items: int
    body_sha256: str

    def to_api(self) -> dict[str, Any]:
        answer = asdict(self)
        del answer["body_sha256"], answer["total_cents"]
        answer["total"] = self.total_cents / 100
        return answer


RECEIPT_COLUMNS = tuple(StoredReceipt.__dataclass_fields__)


@dataclass(frozen=True)
class StoredSale:
    """A receipt as stored, whether this call stored it, and its compliance outcome (None for a
    receipt stored without one: compliance off, or before it existed)."""

    receipt: StoredReceipt
    created: bool
    compliance: ComplianceRecord | None


class ReceiptConflict(AgetoolError):
    """Same receipt_id, different body: the API answers 409 with the stored record."""

    def __init__(self, stored: StoredReceipt) -> None:
        super().__init__(
            f"receipt_id {stored.receipt_id!r} was already recorded (lane {stored.lane}, "
            f"{stored.recorded_at_utc}) with a different lane, total or items"
        )
        self.stored = stored


class StoreUnavailable(sqlite3.OperationalError):
    """The writer is stopped or too slow; the API answers 503 and the POS may retry."""


def _select_receipt(db: sqlite3.Connection, receipt_id: str) -> StoredReceipt | None:
    row = db.execute(
        f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts WHERE receipt_id = ?", (receipt_id,)
    ).fetchone()
    return StoredReceipt(*row) if row else None


class AnalyticsStore:
    """The one writer of the analytics file: a thread that owns the only write connection, runs
    each job in its own transaction and purges old rows at start and on a schedule."""

    def __init__(
        self,
        sqlite_path: Path,
        retention_days: int,
        purge_interval_s: float,
        clock: Callable[[], float] = time.time,
        compliance_retention_days: int | None = None,
    ) -> None:
        self.sqlite_path = Path(sqlite_path)
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
        # None: compliance rows are not purged by this store (it is not the daemon's)
        self.compliance_retention_days = compliance_retention_days
        self._clock = clock
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Future[Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        # Opened here so a bad path or a too-new file stops the daemon before it serves; used only
        # by the writer thread once started.
        self._db = open_db(self.sqlite_path, check_same_thread=False)
        migrate(self._db, str(self.sqlite_path))
        self.purge()

    # --- the writer thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="analytics-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_purge = time.monotonic() + self.purge_interval_s
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, next_purge - time.monotonic()))
            except queue.Empty:
                self._purge_logged()
                next_purge = time.monotonic() + self.purge_interval_s
                continue
            if job is None:
                return
            work, future = job
            if future.set_running_or_notify_cancel():
                self._execute(work, future)

    def _execute(self, work: Callable[[sqlite3.Connection], T], future: Future[T]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            result = work(self._db)
            self._db.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the caller gets it; the writer lives on
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _purge_logged(self) -> None:
        """The scheduled purge, run on the writer thread itself (submit() would wait on itself)."""
        future: Future[dict[str, int]] = Future()
        future.set_running_or_notify_cancel()
        self._execute(self._purge_work(), future)
        try:
            self._log_purged(future.result())
        except sqlite3.Error as exc:
            log.error("analytics purge of %s failed (%s); trying again later", self.sqlite_path, exc)

    def submit(self, work: Callable[[sqlite3.Connection], T], timeout_s: float = WRITE_TIMEOUT_S) -> T:
        """Run `work(connection)` in one transaction on the writer (in the caller's thread before
        start()); its result, or the exception it raised."""
        if self._stopped.is_set():
            raise StoreUnavailable(f"analytics store {self.sqlite_path} is stopped")
        future: Future[T] = Future()
        if self._thread is None:
            future.set_running_or_notify_cancel()
            self._execute(work, future)
            return future.result()
        self._jobs.put((work, future))
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise StoreUnavailable(f"analytics store {self.sqlite_path}: no answer within {timeout_s:.0f} s") from None

    def stop(self) -> None:
        """Finish the queued writes, then close the connection."""
        if self._stopped.is_set():
            return
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(WRITE_TIMEOUT_S)
        self._stopped.set()
        self._db.close()

    # --- jobs -------------------------------------------------------------------------------------
    def _purge_work(self) -> Callable[[sqlite3.Connection], dict[str, int]]:
        now_wall_s = self._clock()
        cutoff_wall_s = now_wall_s - self.retention_days * 86400.0
        compliance_days = self.compliance_retention_days

        def purge(db: sqlite3.Connection) -> dict[str, int]:
            deleted = purge_older_than(db, cutoff_wall_s)
            if compliance_days is not None:
                deleted["compliance"] = compliance.purge_days(db, now_wall_s, compliance_days)
            return deleted

        return purge

    def _log_purged(self, deleted: dict[str, int]) -> None:
        if any(deleted.values()):
            log.info("analytics retention (%d days; compliance %s): deleted %s", self.retention_days,
                     self.compliance_retention_days, deleted)

    def purge(self) -> dict[str, int]:
        """Delete everything older than the retention period; the rows deleted per table."""
        deleted = self.submit(self._purge_work())
        self._log_purged(deleted)
        return deleted

    def add_band_counts(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Add (hour_utc, lane, band, shoppers) to the counts, all or nothing."""
        batch = list(rows)
        self.submit(lambda db: db.executemany(BAND_COUNTS_UPSERT, batch))

    def record_receipt(self, lane: str, receipt: ReceiptIn, tag: BandTag, wall_s: float | None = None) -> tuple[StoredReceipt, bool]:
        """Store a receipt once. (stored, True) when new; (stored, False) for a retry of the same
        body; ReceiptConflict when the id was stored with a different body."""
        sale = self.record_sale(lane, receipt, tag, None, wall_s)
        return sale.receipt, sale.created

    def record_sale(self, lane: str, receipt: ReceiptIn, tag: BandTag, draft: ComplianceDraft | None,
                    wall_s: float | None = None) -> "StoredSale":
        """Store a receipt and its compliance outcome (when given) once, in one transaction. A retry
        of the same body gets what was stored the first time; ReceiptConflict for a different body."""
        wall_s = self._clock() if wall_s is None else wall_s
        digest = receipt.body_sha256(lane)
        new = StoredReceipt(
            receipt_id=receipt.receipt_id, lane=lane, recorded_at_utc=utc_seconds_iso(wall_s),
            hour_utc=hour_bucket(wall_s), band=tag.band, band_confidence=tag.confidence, band_basis=tag.basis,
            total_cents=receipt.total_cents, n_items=len(receipt.items or []), body_sha256=digest,
        )

        def insert_once(db: sqlite3.Connection) -> StoredSale:
            stored = _select_receipt(db, receipt.receipt_id)
            if stored is not None:
                return StoredSale(stored, False, compliance.select_record(db, stored.lane, stored.receipt_id))
            db.execute(
                f"INSERT INTO receipts ({', '.join(RECEIPT_COLUMNS)}) VALUES ({', '.join('?' * len(RECEIPT_COLUMNS))})",
                tuple(asdict(new).values()),
            )
            db.executemany(
                "INSERT INTO receipt_items (receipt_id, line, sku, category, quantity) VALUES (?, ?, ?, ?, ?)",
                [(receipt.receipt_id, line, i.sku, i.category, i.quantity)
                 for line, i in enumerate(receipt.items or [], start=1)],
            )
            return StoredSale(new, True, compliance.append(db, draft) if draft is not None else None)

        sale = self.submit(insert_once)
        if not sale.created and sale.receipt.body_sha256 != digest:
            raise ReceiptConflict(sale.receipt)
        return sale

# --- Reading (reports, tests) -------------------------------------------------------------------
def read_receipts(path: Path) -> list[StoredReceipt]:
    """Every stored receipt, oldest first."""
    db = connect_readonly(path)
    try:
        if not has_table(db, "receipts"):
            return []
        rows = db.execute(f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM receipts ORDER BY recorded_at_utc, receipt_id")
        return [StoredReceipt(*row) for row in rows]
    finally:
        db.close()
