"""POS receipts tagged with the shopper's age band, kept beside the band counts in one SQLite file.

The file is written by ONE thread over ONE connection (AnalyticsStore): receipts from the API and
the band counts the flusher adds both go through it, each in its own transaction. WAL lets reports
read while the daemon writes. Every receipt's primary key is its receipt_id, so a POS retry, a
crash or a restart can never count a receipt twice. Stored: bands, counts, a coarse band
confidence and the receipt's own data; never an image, a crop or an exact age (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, TypeVar

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema,
)

from agetool.contract import AGE_BANDS, UNKNOWN_BAND, age_band
from agetool.edge_runtime.analytics import SCHEMA as BAND_COUNTS_SCHEMA
from agetool.edge_runtime.analytics import UPSERT as BAND_COUNTS_UPSERT
from agetool.edge_runtime.analytics import hour_bucket
from agetool.errors import AgetoolError
from agetool.validation import describe, dotted

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- Schema and migrations ----------------------------------------------------------------------
# Ordered steps; a file at version N gets steps N+1.. applied in one transaction each. Version 1 is
# the band-count table the daemon wrote before receipts existed, so old files upgrade in place.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "band counts per hour, lane and band", (BAND_COUNTS_SCHEMA,)),
    (
        2,
        "receipts tagged with an age band, and their item lines",
        (
            """
            CREATE TABLE receipts (
                receipt_id TEXT PRIMARY KEY,      -- the POS's id; a second POST never adds a row
                lane TEXT NOT NULL,
                recorded_at_utc TEXT NOT NULL,    -- e.g. 2025-01-31T14:05:07Z
                hour_utc TEXT NOT NULL,           -- e.g. 2025-01-31T14:00Z
                band TEXT NOT NULL,               -- an agetool.contract band or 'unknown'
                band_confidence REAL,             -- coarse (steps of 0.25); NULL when no face was seen
                band_basis TEXT NOT NULL,         -- estimated | unsure | no_face
                total_cents INTEGER NOT NULL,
                n_items INTEGER NOT NULL,
                body_sha256 TEXT NOT NULL         -- tells a retry from a different receipt with the same id
            )
            """,
            """
            CREATE TABLE receipt_items (
                receipt_id TEXT NOT NULL REFERENCES receipts (receipt_id) ON DELETE CASCADE,
                line INTEGER NOT NULL,
                sku TEXT NOT NULL,
                category TEXT NOT NULL,
                quantity REAL NOT NULL,
                PRIMARY KEY (receipt_id, line)
            )
            """,
            "CREATE INDEX receipts_recorded_at ON receipts (recorded_at_utc)",
        ),
    ),
)
LATEST_SCHEMA_VERSION = MIGRATIONS[-1][0]
SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at_utc TEXT NOT NULL,
    description TEXT NOT NULL
)
"""

BASIS_ESTIMATED = "estimated"
BASIS_UNSURE = "unsure"
BASIS_NO_FACE = "no_face"
# The stored confidence is rounded down to this step: a finer figure, with the band and the model's
# error, would let one work the exact age back out.
CONFIDENCE_STEP = 0.25
WRITE_TIMEOUT_S = 10.0


def utc_seconds_iso(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_db(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """A read-write connection in WAL mode, in autocommit (transactions are explicit)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=check_same_thread)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a receipt answered with 201 survives a power cut too, not only a crash.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise AgetoolError(f"analytics.sqlite_path {path}: cannot open ({exc})") from None
    return db


def schema_version(db: sqlite3.Connection) -> int:
    """The highest applied migration; 0 for a file without a schema_version table."""
    has_table = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def migrate(db: sqlite3.Connection, where: str = "analytics database") -> int:
    """Apply the missing migration steps in order, one transaction each; the version reached."""
    try:
        current = schema_version(db)
    except sqlite3.DatabaseError as exc:
        raise AgetoolError(f"{where}: not an SQLite database ({exc})") from None
    if current > LATEST_SCHEMA_VERSION:
        raise AgetoolError(
            f"{where}: schema version {current} is newer than this agetool understands "
            f"({LATEST_SCHEMA_VERSION}); upgrade agetool"
        )
    for version, description, statements in MIGRATIONS:
        if version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(SCHEMA_VERSION_TABLE)
            for statement in statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, applied_at_utc, description) VALUES (?, ?, ?)",
                (version, utc_seconds_iso(time.time()), description),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise AgetoolError(f"{where}: migration to schema version {version} failed ({exc})") from None
        log.info("analytics database %s: schema version %d (%s)", where, version, description)
    return LATEST_SCHEMA_VERSION


def purge_older_than(db: sqlite3.Connection, cutoff_wall_s: float) -> dict[str, int]:
    """Delete receipts (with their items) recorded before the cutoff and band counts of hours that
    began before the cutoff's hour. The caller holds the transaction."""
    cutoff = utc_seconds_iso(cutoff_wall_s)
    items = db.execute(
        "DELETE FROM receipt_items WHERE receipt_id IN (SELECT receipt_id FROM receipts WHERE recorded_at_utc < ?)",
        (cutoff,),
    ).rowcount
    receipts = db.execute("DELETE FROM receipts WHERE recorded_at_utc < ?", (cutoff,)).rowcount
    counts = db.execute("DELETE FROM band_counts WHERE hour_utc < ?", (hour_bucket(cutoff_wall_s),)).rowcount
    return {"receipts": receipts, "receipt_items": items, "band_counts": counts}


# --- The receipt the POS sends ------------------------------------------------------------------
# The schema /openapi.json publishes and the validation below must agree (schemathesis checks it):
# names are 1-64 characters with at least one that is not ASCII whitespace, trimmed of ASCII
# whitespace when stored; a number is a JSON number, never a string or a boolean.
ASCII_WHITESPACE = " \t\n\r\f\v"
NOT_BLANK_PATTERN = r"[^ \t\n\r\f\v]"
TOTAL_SCHEMA = {"type": "number", "minimum": 0, "maximum": 10_000_000, "multipleOf": 0.01}


def _trimmed_not_blank(value: str) -> str:
    trimmed = value.strip(ASCII_WHITESPACE)
    if not trimmed:
        raise ValueError("expected some text, got only whitespace")
    return trimmed


def _json_number(value: Any) -> Any:
    if isinstance(value, (str, bool)):
        raise ValueError("expected a JSON number")
    # repr is the shortest text that reads back as this float: 12.3 stays 12.3, not 12.2999...
    return Decimal(repr(value)) if isinstance(value, float) else value


ItemName = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_trimmed_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": NOT_BLANK_PATTERN}),
]
Total = Annotated[Decimal, BeforeValidator(_json_number), WithJsonSchema(TOTAL_SCHEMA)]


class ReceiptItem(BaseModel):
    """One line of the receipt."""

    model_config = ConfigDict(extra="forbid")

    sku: ItemName = Field(description="The POS's article number.")
    category: ItemName = Field(description="Product category (reports group by it).")
    quantity: float = Field(gt=0, le=100000, allow_inf_nan=False, strict=True, description="Units (or kg) bought.")


class ReceiptIn(BaseModel):
    """POST /v1/lanes/{lane}/receipts body."""

    model_config = ConfigDict(extra="forbid")

    receipt_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/#-]{0,127}$",
        description="The POS's unique receipt id (1-128 of A-Z a-z 0-9 _ . : / # -); posting it again is a no-op.",
    )
    total: Total = Field(ge=0, le=10_000_000, max_digits=12, decimal_places=2,
                         description="Receipt total in the till's currency: a JSON number with at most 2 decimals.")
    items: list[ReceiptItem] | None = Field(None, max_length=2000, description="Item lines (optional).")

    @property
    def total_cents(self) -> int:
        return int(self.total * 100)

    def body_sha256(self, lane: str) -> str:
        """A digest of what this receipt says, to tell a retry (same) from a clash (different)."""
        canonical = {
            "lane": lane,
            "receipt_id": self.receipt_id,
            "total_cents": self.total_cents,
            "items": [[i.sku, i.category, i.quantity] for i in self.items or []],
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class InvalidReceipt(AgetoolError):
    """The API turns this into 422."""


def parse_receipt(body: bytes) -> ReceiptIn:
    """Validate a request body; InvalidReceipt names the first bad field in one line."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() of a 5,000-digit number
        raise InvalidReceipt(f"body: not valid JSON ({exc})") from None
    except RecursionError:  # '[' * 1000: a receipt nests 3 deep, nothing legitimate gets near this
        raise InvalidReceipt("body: JSON nested too deeply to be a receipt") from None
    if not isinstance(data, dict):
        raise InvalidReceipt("body: expected a JSON object with receipt_id, total and optional items")
    try:
        return ReceiptIn.model_validate(data)
    except ValidationError as exc:
        raise InvalidReceipt(describe(exc, lambda loc: dotted(loc) or "body")) from None


# --- Which band a receipt gets ------------------------------------------------------------------
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
    ) -> None:
        self.sqlite_path = Path(sqlite_path)
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
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
        cutoff_wall_s = self._clock() - self.retention_days * 86400.0
        return lambda db: purge_older_than(db, cutoff_wall_s)

    def _log_purged(self, deleted: dict[str, int]) -> None:
        if any(deleted.values()):
            log.info("analytics retention (%d days): deleted %s", self.retention_days, deleted)

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
        wall_s = self._clock() if wall_s is None else wall_s
        digest = receipt.body_sha256(lane)
        new = StoredReceipt(
            receipt_id=receipt.receipt_id, lane=lane, recorded_at_utc=utc_seconds_iso(wall_s),
            hour_utc=hour_bucket(wall_s), band=tag.band, band_confidence=tag.confidence, band_basis=tag.basis,
            total_cents=receipt.total_cents, n_items=len(receipt.items or []), body_sha256=digest,
        )

        def insert_once(db: sqlite3.Connection) -> tuple[StoredReceipt, bool]:
            stored = _select_receipt(db, receipt.receipt_id)
            if stored is not None:
                return stored, False
            db.execute(
                f"INSERT INTO receipts ({', '.join(RECEIPT_COLUMNS)}) VALUES ({', '.join('?' * len(RECEIPT_COLUMNS))})",
                tuple(asdict(new).values()),
            )
            db.executemany(
                "INSERT INTO receipt_items (receipt_id, line, sku, category, quantity) VALUES (?, ?, ?, ?, ?)",
                [(receipt.receipt_id, line, i.sku, i.category, i.quantity)
                 for line, i in enumerate(receipt.items or [], start=1)],
            )
            return new, True

        stored, created = self.submit(insert_once)
        if not created and stored.body_sha256 != digest:
            raise ReceiptConflict(stored)
        return stored, created


# --- Reading (reports, tests) -------------------------------------------------------------------
def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an analytics file; AgetoolError naming it when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise AgetoolError(f"--db {path}: file not found")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise AgetoolError(f"--db {path}: not an SQLite database ({exc})") from None
    return db


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


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
