"""What the till sends to the central database, table by table, and how far it has got.

One `TableSpec` per till table. Two kinds:

- append: rows are only ever inserted (receipts, compliance outcomes). The till keeps a
  high-water mark, the last rowid sent; the centre inserts on the natural key and ignores a row it
  already has, so a batch sent twice (a sync killed between the server's commit and the till's) is
  stored once. Child tables (receipt items) travel in their parent's batch and transaction.
- latest: rows whose value grows in place (band counts of an hour still being counted). The till
  keeps, per row, the value last sent; rows whose value differs are sent again and the centre
  replaces its value, so an hour that grew is updated, never added twice.

The state lives in the till's own analytics file (tables `central_sync_state` and
`central_sent_<table>`), created on first use; SQLite only here, no PostgreSQL import. Adding a
table to the sync = adding a spec (and its central table in a new central migration)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal

STATE_TABLE = "central_sync_state"
STATE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    table_name TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,           -- the store these rows were sent as; another one is refused
    high_water INTEGER NOT NULL,      -- append tables: the last rowid the centre has committed
    rows_sent INTEGER NOT NULL,
    synced_at_utc TEXT,
    central_instance TEXT             -- the central database the marks are for (central_db.central_instance)
)
"""


@dataclass(frozen=True)
class ChildSpec:
    """Rows of another table that belong to the parent's rows and go in the same batch."""

    name: str
    columns: tuple[str, ...]  # central columns after store_id, in the order `select` gives them
    key: tuple[str, ...]  # natural key after store_id
    select: str  # the rows whose parent rowid is in (?, ?]
    derive: Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]] | None = None  # columns computed here


@dataclass(frozen=True)
class TableSpec:
    name: str  # the till table, and the central table of the same name
    kind: Literal["append", "latest"]
    columns: tuple[str, ...]  # central columns after store_id, in the order `select` gives them
    key: tuple[str, ...]  # natural key after store_id (the central primary key)
    # append: rows after a rowid (?), oldest first, at most ? of them, with the rowid as the LAST column.
    # latest: rows whose value differs from the one last sent, oldest first, at most ?, with as the LAST
    # column whether a value of the row was sent before.
    select: str
    value_columns: tuple[str, ...] = ()  # latest: what the centre replaces on a key it has
    high_water: str = "rowid"  # append: a column that only grows (rowid, or an AUTOINCREMENT key)
    children: tuple[ChildSpec, ...] = field(default_factory=tuple)

    @property
    def sent_table(self) -> str:
        return f"central_sent_{self.name}"

    def sent_schema(self) -> str:
        columns = ", ".join(f"{c} NOT NULL" for c in self.key + self.value_columns)
        return f"CREATE TABLE IF NOT EXISTS {self.sent_table} ({columns}, PRIMARY KEY ({', '.join(self.key)}))"


def mark_first_in_category(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Item rows (receipt_id, line, sku, category, ...) with a last column: True on the lowest line
    of each category in its receipt. Done here rather than by a window function in SQLite, which
    sorted every batch and took three quarters of the till's read time."""
    first_line: dict[tuple[Any, Any], int] = {}
    for row in rows:
        key = (row[0], row[3])
        if key not in first_line or row[1] < first_line[key]:
            first_line[key] = row[1]
    return [(*row, first_line[(row[0], row[3])] == row[1]) for row in rows]


RECEIPTS = TableSpec(
    name="receipts",
    kind="append",
    columns=("receipt_id", "lane", "recorded_at_utc", "hour_utc", "band", "band_confidence", "band_basis",
             "total_cents", "n_items", "body_sha256"),
    key=("receipt_id",),
    select="SELECT receipt_id, lane, recorded_at_utc, hour_utc, band, band_confidence, band_basis, total_cents, "
           "n_items, body_sha256, rowid FROM receipts WHERE rowid > ? ORDER BY rowid LIMIT ?",
    children=(
        ChildSpec(
            name="receipt_items",
            columns=("receipt_id", "line", "sku", "category", "quantity", "recorded_at_utc", "band",
                     "first_in_category"),
            key=("receipt_id", "line"),
            select="SELECT i.receipt_id, i.line, i.sku, i.category, i.quantity, r.recorded_at_utc, r.band "
                   "FROM receipts r JOIN receipt_items i ON i.receipt_id = r.receipt_id "
                   "WHERE r.rowid > ? AND r.rowid <= ?",
            derive=mark_first_in_category,
        ),
    ),
)
BAND_COUNTS = TableSpec(
    name="band_counts",
    kind="latest",
    columns=("hour_utc", "lane", "band", "shoppers"),
    key=("hour_utc", "lane", "band"),
    value_columns=("shoppers",),
    select="SELECT b.hour_utc, b.lane, b.band, b.shoppers, s.shoppers IS NOT NULL FROM band_counts b "
           "LEFT JOIN central_sent_band_counts s ON s.hour_utc = b.hour_utc AND s.lane = b.lane AND s.band = b.band "
           "WHERE s.shoppers IS NULL OR s.shoppers != b.shoppers ORDER BY b.hour_utc, b.lane, b.band LIMIT ?",
)
# The hash chain's columns as the till has them (check_called and id_check_required stay 0/1), so the
# centre can recompute every row_hash (compliance.row_hash) and verify a store's chain.
COMPLIANCE_COLUMNS = ("lane", "receipt_id", "seq", "recorded_at_utc", "day", "outcome", "restricted", "cashier",
                      "id_check", "id_check_required", "band", "decision_reason", "decision_source", "check_called",
                      "rule", "prev_hash", "row_hash")
COMPLIANCE = TableSpec(
    name="compliance",
    kind="append",
    columns=COMPLIANCE_COLUMNS,
    key=("lane", "receipt_id"),
    select=f"SELECT {', '.join(COMPLIANCE_COLUMNS)}, seq FROM compliance WHERE seq > ? ORDER BY seq LIMIT ?",
    high_water="seq",  # AUTOINCREMENT: never reused, even after a purge
)
# In this order: a catch-up sends the oldest rows of each table first.
SPECS: tuple[TableSpec, ...] = (RECEIPTS, BAND_COUNTS, COMPLIANCE)


def table_exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def prepare_state(db: sqlite3.Connection, store_id: str) -> None:
    """Create the sync state (high-water marks at 0) for every spec; refuse a till that was synced
    under another store id. From here on the retention purge keeps rows the centre lacks. The
    caller holds the transaction."""
    db.execute(STATE_SCHEMA)
    for spec in SPECS:
        if spec.kind == "latest":
            db.execute(spec.sent_schema())
        db.execute(f"INSERT OR IGNORE INTO {STATE_TABLE} (table_name, store_id, high_water, rows_sent) "
                   "VALUES (?, ?, 0, 0)", (spec.name, store_id))
    other = db.execute(f"SELECT table_name, store_id FROM {STATE_TABLE} WHERE store_id != ?", (store_id,)).fetchone()
    if other is not None:
        raise StoreMismatch(other[1], store_id)


class StoreMismatch(Exception):
    def __init__(self, synced_as: str, asked: str) -> None:
        super().__init__(f"this analytics file was synced as store {synced_as!r}, not {asked!r}; "
                         "use the same --store-id (or start the new store from a fresh file)")


def reset_marks(db: sqlite3.Connection) -> None:
    """Forget what was sent: the next sync sends every row again (the centre's upserts keep one copy
    of each). The caller holds the transaction."""
    db.execute(f"UPDATE {STATE_TABLE} SET high_water = 0, central_instance = NULL")
    for spec in SPECS:
        if spec.kind == "latest":
            db.execute(f"DELETE FROM {spec.sent_table}")


def bind_central(db: sqlite3.Connection, instance: str) -> bool:
    """Tie the marks to the central database `instance`; when they were made for another one, reset
    them first (True). The caller holds the transaction."""
    other = db.execute(f"SELECT 1 FROM {STATE_TABLE} WHERE central_instance IS NOT NULL AND central_instance != ?",
                       (instance,)).fetchone()
    if other is not None:
        reset_marks(db)
    db.execute(f"UPDATE {STATE_TABLE} SET central_instance = ?", (instance,))
    return other is not None


def high_water(db: sqlite3.Connection, table: str) -> int:
    row = db.execute(f"SELECT high_water FROM {STATE_TABLE} WHERE table_name = ?", (table,)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Batch:
    """Rows read from the till for one central transaction."""

    spec: TableSpec
    rows: list[tuple[Any, ...]]
    children: dict[str, list[tuple[Any, ...]]]
    new_high_water: int | None  # append tables
    # No row of it was sent before (appends: always): the centre should have none of them, so a plain
    # insert is tried first (central_sync._upsert).
    all_new: bool = True

    @property
    def size(self) -> int:
        return len(self.rows) + sum(len(rows) for rows in self.children.values())


def read_batch(db: sqlite3.Connection, spec: TableSpec, limit: int, after: int | None = None) -> Batch | None:
    """The next rows the centre lacks, oldest first; None when there are none. Append tables: the
    rows after `after` (a batch read but not marked sent yet), else after the high-water mark."""
    if not table_exists(db, spec.name):
        return None
    if spec.kind == "append":
        low = high_water(db, spec.name) if after is None else after
        raw = db.execute(spec.select, (low, limit)).fetchall()
        if not raw:
            return None
        high = int(raw[-1][-1])
        children = {}
        for child in spec.children:
            rows = db.execute(child.select, (low, high)).fetchall()
            children[child.name] = child.derive(rows) if child.derive is not None else rows
        return Batch(spec, [row[:-1] for row in raw], children, high)
    raw = db.execute(spec.select, (limit,)).fetchall()
    if not raw:
        return None
    return Batch(spec, [row[:-1] for row in raw], {}, None, all_new=not any(row[-1] for row in raw))


def mark_sent(db: sqlite3.Connection, batch: Batch) -> None:
    """Record on the till that the centre has committed `batch`. The caller holds the transaction."""
    spec = batch.spec
    if spec.kind == "append":
        db.execute(f"UPDATE {STATE_TABLE} SET high_water = ? WHERE table_name = ?", (batch.new_high_water, spec.name))
    else:
        wanted = spec.key + spec.value_columns
        positions = [spec.columns.index(c) for c in wanted]
        db.executemany(
            f"INSERT OR REPLACE INTO {spec.sent_table} ({', '.join(wanted)}) VALUES ({', '.join('?' * len(wanted))})",
            [tuple(row[p] for p in positions) for row in batch.rows],
        )
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    db.execute(f"UPDATE {STATE_TABLE} SET rows_sent = rows_sent + ?, synced_at_utc = ? WHERE table_name = ?",
               (batch.size, now, spec.name))


# --- Retention --------------------------------------------------------------------------------------
def retention_guard(db: sqlite3.Connection, table: str) -> str:
    """An SQL condition (' AND ...', or '' when the till does not sync) that keeps the rows of
    `table` the centre does not have yet out of the retention purge.

    Append tables keep the row AT the high-water mark too: SQLite hands out max(rowid) + 1, so
    deleting every row up to the mark would let new rows reuse rowids below it and never be sent."""
    if not table_exists(db, STATE_TABLE):
        return ""
    spec = next((s for s in SPECS if s.name == table), None)
    if spec is None:
        return ""
    if spec.kind == "append":
        return f" AND {spec.high_water} < {high_water(db, table):d}"
    match = " AND ".join(f"s.{c} = {table}.{c}" for c in spec.key + spec.value_columns)
    return f" AND EXISTS (SELECT 1 FROM {spec.sent_table} s WHERE {match})"


def forget_purged(db: sqlite3.Connection) -> None:
    """Drop the 'last sent' rows of rows the purge deleted. The caller holds the transaction."""
    if not table_exists(db, STATE_TABLE):
        return
    for spec in SPECS:
        if spec.kind == "latest" and table_exists(db, spec.sent_table):
            match = " AND ".join(f"t.{c} = {spec.sent_table}.{c}" for c in spec.key)
            db.execute(f"DELETE FROM {spec.sent_table} WHERE NOT EXISTS (SELECT 1 FROM {spec.name} t WHERE {match})")
