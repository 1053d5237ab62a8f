"""Send the till's analytics to the chain's central PostgreSQL: incrementally, idempotently, in
batches, and again after a failure.

One batch = one central transaction: the rows go to a temporary table by COPY and from there into
the real table with an upsert on the natural key; only after the server's COMMIT does the till
record the batch as sent (sync_specs.mark_sent). A sync killed between the two sends that batch
again on the next run, and the upsert stores it once. A lost connection is retried with backoff and
the sync resumes at the till's high-water marks, oldest rows first."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, TypeVar

from agetool.edge_runtime.central_db import (
    ROLLUPS, CentralTarget, central_instance, connect, import_psycopg, require_latest,
)
from agetool.edge_runtime.sync_specs import (
    SPECS, Batch, StoreMismatch, TableSpec, bind_central, mark_sent, prepare_state, read_batch, reset_marks,
)
from agetool.errors import AgetoolError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")
# Runs work(connection) in one write transaction on the till's file: the daemon's single writer
# (AnalyticsStore.submit) or, from the command line, a connection of the sync's own.
TillWriter = Callable[[Callable[[sqlite3.Connection], T]], T]

DEFAULT_BATCH_ROWS = 10000  # a catch-up batch: about 30 MB of rows on the till, two with the read-ahead
STORE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def default_store_id() -> str:
    return socket.gethostname().split(".")[0] or "till"


@dataclass
class SyncResult:
    """What one sync sent."""

    store_id: str
    rows: dict[str, int] = field(default_factory=dict)  # per table, children included
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# --- Central side ---------------------------------------------------------------------------------
def _stage(conn: "psycopg.Connection[Any]", table: str, columns: tuple[str, ...]) -> str:
    """A temporary table (no WAL, emptied at each commit) for `columns` of `table`, the store id left
    out: the insert adds it, so the till does not send it with every row."""
    stage = f"agetool_stage_{table}"
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                 f"SELECT {', '.join(columns)} FROM {table} WITH NO DATA")
    return stage


def _upsert(conn: "psycopg.Connection[Any]", table: str, columns: tuple[str, ...], key: tuple[str, ...],
            rows: list[tuple[Any, ...]], store_id: str, replace: tuple[str, ...] = (), all_new: bool = True) -> None:
    """COPY `rows` (without store_id) into a staging table, then insert them into `table`: rows
    whose key is there already are ignored, or have their `replace` columns overwritten; the
    table's sums (central_db.ROLLUPS) grow by the rows really inserted.

    When the till has sent none of the rows before (`all_new`: always for appends, and band counts
    of hours not sent yet) a plain INSERT goes first, under a savepoint: the rows are new unless a
    sync died between the centre's COMMIT and the till's mark, and a plain insert costs half to two
    thirds of an ON CONFLICT one, which checks each key before inserting. A duplicate key (one
    ERROR line in the server's log) rolls the savepoint back and the upsert runs instead. Rows sent
    before (an hour still growing) go straight to the upsert."""
    if not rows:
        return
    psycopg = import_psycopg()
    stage = _stage(conn, table, columns)
    names = ", ".join(columns)
    returning, rollup = ROLLUPS.get(table, ("", ""))
    insert = f"INSERT INTO {table} (store_id, {names}) SELECT %(store_id)s, {names} FROM {stage}"
    params = {"store_id": store_id}
    with conn.cursor() as cur:
        with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if all_new:
            try:
                with conn.transaction():
                    cur.execute(f"WITH new AS ({insert} RETURNING {returning}) {rollup}" if rollup else insert,
                                params)
                return
            except psycopg.errors.UniqueViolation:
                log.debug("central table %s: some of these rows are there already; upserting", table)
        action = ("DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in replace)) if replace else "DO NOTHING"
        upsert = f"{insert} ON CONFLICT (store_id, {', '.join(key)}) {action}"
        cur.execute(f"WITH new AS ({upsert} RETURNING {returning}) {rollup}" if rollup else upsert, params)


def send_batch(conn: "psycopg.Connection[Any]", batch: Batch, store_id: str) -> None:
    """One central transaction: the batch's rows, its children, and the store's last-sync time."""
    spec = batch.spec
    with conn.transaction():
        replace = spec.value_columns if spec.kind == "latest" else ()
        _upsert(conn, spec.name, spec.columns, spec.key, batch.rows, store_id, replace, batch.all_new)
        for child in spec.children:
            _upsert(conn, child.name, child.columns, child.key, batch.children[child.name], store_id)
        conn.execute("INSERT INTO stores (store_id) VALUES (%s) "
                     "ON CONFLICT (store_id) DO UPDATE SET last_synced_at = now()", (store_id,))


# --- One pass ---------------------------------------------------------------------------------------
def local_writer(sqlite_path: Path) -> tuple[TillWriter[Any], Callable[[], None]]:
    """A TillWriter over a connection of its own (the command line), and its close()."""
    from agetool.edge_runtime.receipts import migrate, open_db

    db = open_db(Path(sqlite_path))
    migrate(db, str(sqlite_path))

    def write(work: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    return write, db.close


def open_reader(sqlite_path: Path) -> sqlite3.Connection:
    """A read connection (WAL: it never blocks the daemon's writer); used by one thread at a time,
    not always the one that opened it (_batches reads ahead in a worker)."""
    db = sqlite3.connect(str(sqlite_path), timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA query_only=ON")
    return db


def _batches(reader: sqlite3.Connection, spec: TableSpec, batch_rows: int) -> Generator[Batch, None, None]:
    """The spec's batches, oldest first. For append tables the next batch is read from the till (in
    a worker thread) while the caller sends this one: the till's reading and the server's inserting
    overlap instead of taking turns. It starts after this batch's rows, so nothing depends on the
    caller marking it sent first; a batch the caller never sends is simply read again next pass.
    "Latest" tables are read after each mark, which decides what is still to send."""
    if spec.kind != "append":
        while (batch := _read(reader, spec, batch_rows)) is not None:
            yield batch
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="till-read") as pool:
        ahead = pool.submit(_read, reader, spec, batch_rows)
        while (batch := ahead.result()) is not None:
            ahead = pool.submit(_read, reader, spec, batch_rows, batch.new_high_water)
            yield batch


def sync_pass(
    target: CentralTarget,
    sqlite_path: Path,
    store_id: str,
    write: TillWriter[Any],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_batch: Callable[[str, int], None] | None = None,
    result: SyncResult | None = None,
) -> SyncResult:
    """Send everything the centre lacks, batch by batch, table by table; psycopg.OperationalError
    when the server goes away (the caller retries: what was committed stays committed)."""
    result = result or SyncResult(store_id)
    try:
        write(lambda db: prepare_state(db, store_id))
    except StoreMismatch as exc:
        raise AgetoolError(f"{sqlite_path}: {exc}") from None
    reader = open_reader(sqlite_path)
    try:
        conn = connect(target)
        try:
            require_latest(conn, target)
            instance = central_instance(conn)
            if write(lambda db: bind_central(db, instance)):
                log.warning("central database %s is not the one %s was last synced to: sending every row "
                            "again (rows it has already are kept once)", target.masked, sqlite_path)
            for spec in SPECS:
                with closing(_batches(reader, spec, batch_rows)) as batches:  # its read-ahead ends here
                    for batch in batches:
                        send_batch(conn, batch, store_id)
                        write(lambda db, b=batch: mark_sent(db, b))
                        result.rows[spec.name] = result.rows.get(spec.name, 0) + batch.size
                        result.batches += 1
                        if on_batch is not None:
                            on_batch(spec.name, batch.size)
        finally:
            conn.close()
    finally:
        reader.close()
    return result


def _read(reader: sqlite3.Connection, spec: TableSpec, batch_rows: int, after: int | None = None) -> Batch | None:
    # One read transaction per batch: the rows and their children come from one snapshot.
    reader.execute("BEGIN")
    try:
        return read_batch(reader, spec, batch_rows, after)
    finally:
        reader.execute("COMMIT")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0

    def wait_s(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


def sync_with_retry(
    target: CentralTarget,
    sqlite_path: Path,
    store_id: str,
    write: TillWriter[Any],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    retries: int = 8,
    backoff: Backoff = Backoff(),
    stop: threading.Event | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> SyncResult:
    """sync_pass, again after a lost connection (waiting 1, 2, 4 ... s) until it completes; an
    AgetoolError after `retries` failures in a row, or when `stop` is set while waiting."""
    psycopg = import_psycopg()
    stop = stop or threading.Event()
    result = SyncResult(store_id)
    started = time.perf_counter()
    failures = 0
    while True:
        before = result.batches
        try:
            sync_pass(target, sqlite_path, store_id, write, batch_rows, on_batch, result)
        except psycopg.OperationalError as exc:
            failures = 1 if result.batches > before else failures + 1  # progress resets the count
            message = target.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            if failures > retries:
                raise AgetoolError(f"central sync to {target.masked}: gave up after {failures} failed "
                                   f"attempt(s) ({message}); rows not sent stay on the till") from None
            wait_s = backoff.wait_s(failures)
            log.warning("central sync to %s failed (%s); retry %d/%d in %.1f s",
                        target.masked, message, failures, retries, wait_s)
            result.retries += 1
            if stop.wait(wait_s):
                raise AgetoolError(f"central sync to {target.masked}: stopped while waiting to retry") from None
            continue
        except psycopg.Error as exc:  # data the server refuses: retrying would fail the same way
            raise AgetoolError(f"central sync to {target.masked}: {target.scrub(str(exc).strip())}") from None
        result.seconds = time.perf_counter() - started
        return result


def sync_till(
    target: CentralTarget,
    sqlite_path: Path,
    store_id: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    retries: int = 8,
    backoff: Backoff = Backoff(),
    on_batch: Callable[[str, int], None] | None = None,
    resend: bool = False,
) -> SyncResult:
    """`agetool analytics sync`: one complete sync of an analytics file; with `resend`, every row
    again (after restoring the central database from a backup, say)."""
    import re

    store_id = store_id or default_store_id()
    if not re.match(STORE_ID_PATTERN, store_id):
        raise AgetoolError(f"--store-id {store_id!r}: expected 1-64 of A-Z a-z 0-9 _ . : - (starting with a letter or digit)")
    if batch_rows < 1:
        raise AgetoolError(f"--batch-rows {batch_rows}: expected 1 or more")
    if not Path(sqlite_path).is_file():
        raise AgetoolError(f"--db {sqlite_path}: file not found")
    write, close = local_writer(Path(sqlite_path))
    try:
        if resend:
            try:
                write(lambda db: (prepare_state(db, store_id), reset_marks(db)))
            except StoreMismatch as exc:
                raise AgetoolError(f"{sqlite_path}: {exc}") from None
        return sync_with_retry(target, Path(sqlite_path), store_id, write, batch_rows, retries, backoff,
                               on_batch=on_batch)
    except sqlite3.Error as exc:  # e.g. the file locked for longer than the busy timeout
        raise AgetoolError(f"--db {sqlite_path}: {exc}; nothing is lost, run the sync again") from None
    finally:
        close()


class CentralSyncer:
    """The daemon's background sync: every interval_s, and sooner again after a failure (with
    backoff), through the daemon's one writer of the analytics file."""

    def __init__(self, target: CentralTarget, sqlite_path: Path, store_id: str, write: TillWriter[Any],
                 interval_s: float, batch_rows: int = DEFAULT_BATCH_ROWS, backoff: Backoff = Backoff()) -> None:
        import_psycopg()  # fail at start, with the install hint, not in the thread
        self.target = target
        self.sqlite_path = Path(sqlite_path)
        self.store_id = store_id
        self.write = write
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.backoff = backoff
        self.last: SyncResult | None = None
        self.rows_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="central-sync", daemon=True)
        self._thread.start()
        log.info("central sync: store %s to %s every %.0f s", self.store_id, self.target.masked, self.interval_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # retries=large: inside the daemon a server that is down is waited for, not given up on.
                self.last = sync_with_retry(self.target, self.sqlite_path, self.store_id, self.write,
                                            self.batch_rows, retries=1_000_000, backoff=self.backoff, stop=self._stop)
                self.rows_total += self.last.total_rows
                if self.last.total_rows:
                    log.info("central sync: %d row(s) in %.2f s", self.last.total_rows, self.last.seconds)
            except AgetoolError as exc:
                if self._stop.is_set():
                    return
                log.error("%s; trying again in %.0f s", exc, self.interval_s)
            except Exception:  # noqa: BLE001 - the sync thread must outlive one bad pass
                log.exception("central sync pass failed; trying again in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15.0)
