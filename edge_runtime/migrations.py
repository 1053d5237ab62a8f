"""The analytics SQLite file's schema: ordered migration steps, opening a file for the writer or
read-only for reports.

A file at version N gets steps N+1.. applied in one transaction each. Version 1 is the band-count
table the daemon wrote before receipts existed, so old files upgrade in place."""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

from agetool.edge_runtime.analytics import SCHEMA as BAND_COUNTS_SCHEMA
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

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
    (
        3,
        "cashier compliance outcomes (hash-chained) and the record of their retention purges",
        (
            # No foreign key to receipts: the audit trail may be kept longer than the receipts.
            """
            CREATE TABLE compliance (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- chain order; never reused (a sync's high-water mark)
                lane TEXT NOT NULL,
                receipt_id TEXT NOT NULL,
                recorded_at_utc TEXT NOT NULL,          -- e.g. 2025-01-31T14:05:07Z
                day TEXT NOT NULL,                      -- e.g. 2025-01-31 (UTC): retention and reports work on days
                outcome TEXT NOT NULL,                  -- checked | not_required | violation | no_face | not_restricted
                restricted TEXT NOT NULL,               -- restricted categories on the receipt, comma-separated
                cashier TEXT,                           -- HMAC pseudonym of the POS cashier code, never the code
                id_check TEXT NOT NULL,                 -- performed | not_performed | not_recorded
                id_check_required INTEGER NOT NULL,     -- 1 when the rule asked for ID
                band TEXT NOT NULL,                     -- band of the decision used, or 'unknown'
                decision_reason TEXT NOT NULL,          -- the decision's reason (no_face_seen, ...)
                decision_source TEXT NOT NULL,          -- check (the POS's /check answer) | receipt (at the receipt)
                check_called INTEGER NOT NULL,          -- 1 when /check was called for that shopper
                rule TEXT NOT NULL,                     -- the rule applied, e.g. 'ID below 26.0 years'
                prev_hash TEXT NOT NULL,                -- row_hash of the row before (or the purge anchor)
                row_hash TEXT NOT NULL,                 -- sha256 over prev_hash and this row
                UNIQUE (lane, receipt_id)
            )
            """,
            "CREATE INDEX compliance_day ON compliance (day)",
            """
            CREATE TABLE compliance_purges (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                purged_at_utc TEXT NOT NULL,
                before_day TEXT NOT NULL,               -- rows of days before this one were deleted
                retention_days INTEGER NOT NULL,
                rows_deleted INTEGER NOT NULL,
                through_seq INTEGER NOT NULL,           -- the last row deleted
                through_hash TEXT NOT NULL              -- its row_hash: the chain goes on from it
            )
            """,
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
    if not has_table(db, "schema_version"):
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
