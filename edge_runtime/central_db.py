"""The chain's central PostgreSQL database: connecting (TLS options, passwords masked in every
message) and its versioned schema.

psycopg 3 is an optional extra (`pip install 'agetool[central]'`): it is imported inside the
functions that talk to the server, so a till without it runs everything else."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agetool.errors import AgetoolError, ConfigError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
URL_SCHEMES = ("postgresql://", "postgres://")
# Hash partitions per table: by store, so one store's rows sit together and a chain's worth of
# stores spreads over a few tables of manageable size (see README, "Chain-wide analytics").
STORE_PARTITIONS = 8

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(text: str) -> str:
    """`text` with every password in a postgresql:// URL or a `password=` keyword replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group('head')}***", text)


def is_central_url(text: str) -> bool:
    return text.startswith(URL_SCHEMES)


@dataclass(frozen=True)
class CentralTarget:
    """Where the central database is and how to check its certificate."""

    url: str
    sslmode: SslMode | None = None  # None: what the URL says, else libpq's default (prefer)
    sslrootcert: str | None = None  # CA bundle that signed the server's certificate (verify-ca / verify-full)
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        if not is_central_url(self.url):
            raise AgetoolError(f"central database {mask_dsn(self.url)!r}: expected a postgresql:// URL")

    @property
    def masked(self) -> str:
        return mask_dsn(self.url)

    def password(self) -> str | None:
        match = _URL_PASSWORD.search(self.url)
        return match.group("password") if match and match.group("password") else None

    def scrub(self, message: str) -> str:
        """An error message safe to log, on one line (libpq's run over several): URLs masked and the
        password itself nowhere in it."""
        message = mask_dsn(" ".join(message.split()))
        password = self.password()
        if password and len(password) >= 3:
            message = message.replace(password, "***")
        return message

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"connect_timeout": self.connect_timeout_s, "application_name": "agetool"}
        if self.sslmode is not None:
            kwargs["sslmode"] = self.sslmode
        if self.sslrootcert is not None:
            kwargs["sslrootcert"] = self.sslrootcert
        return kwargs


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "the central database needs psycopg 3: pip install 'agetool[central]' (or 'psycopg[binary]>=3.1')"
        ) from None
    return psycopg


def connect(target: CentralTarget) -> "psycopg.Connection[Any]":
    """A connection in UTC with explicit transactions; psycopg.OperationalError when the server
    cannot be reached (callers retry), with the password kept out of the message."""
    psycopg = import_psycopg()
    try:
        conn = psycopg.connect(target.url, **target.connect_kwargs())
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(target.scrub(str(exc).strip())) from None
    except psycopg.ProgrammingError as exc:  # a malformed URL or option
        raise AgetoolError(f"central database {target.masked}: {target.scrub(str(exc).strip())}") from None
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


# --- Schema ----------------------------------------------------------------------------------------
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS agetool_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    description text NOT NULL
)
"""


def _hash_partitions(table: str) -> tuple[str, ...]:
    return tuple(
        f"CREATE TABLE {table}_p{r} PARTITION OF {table} FOR VALUES WITH (MODULUS {STORE_PARTITIONS}, REMAINDER {r})"
        for r in range(STORE_PARTITIONS)
    )


# Ordered steps, each applied in one transaction with its version row. Never edit a released step:
# add the next one. Column names follow the till's tables so a sync spec maps one to one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "stores, receipts, their items and band counts, hash-partitioned by store",
        (
            # Which database this is: a till that finds another one (a new server, a rebuilt
            # database) sends everything again instead of trusting marks made for the old one.
            "CREATE TABLE agetool_instance (instance_id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())",
            "INSERT INTO agetool_instance (instance_id) VALUES (md5(random()::text || clock_timestamp()::text))",
            """
            CREATE TABLE stores (
                store_id text PRIMARY KEY,
                first_synced_at timestamptz NOT NULL DEFAULT now(),
                last_synced_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE receipts (
                store_id text NOT NULL,
                receipt_id text NOT NULL,
                lane text NOT NULL,
                recorded_at_utc timestamptz NOT NULL,
                hour_utc timestamptz NOT NULL,
                band text NOT NULL,
                band_confidence real,
                band_basis text NOT NULL,
                total_cents bigint NOT NULL,
                n_items integer NOT NULL,
                body_sha256 text NOT NULL,
                PRIMARY KEY (store_id, receipt_id)
            ) PARTITION BY HASH (store_id)
            """,
            *_hash_partitions("receipts"),
            "CREATE INDEX receipts_store_day ON receipts (store_id, recorded_at_utc)",
            "CREATE INDEX receipts_day ON receipts (recorded_at_utc)",
            # recorded_at_utc and band are the receipt's, copied so a report never joins 4 M item lines
            # to their receipts; first_in_category marks the first line of each category in its
            # receipt, so "receipts per category" is a plain count instead of a distinct over millions.
            """
            CREATE TABLE receipt_items (
                store_id text NOT NULL,
                receipt_id text NOT NULL,
                line integer NOT NULL,
                sku text NOT NULL,
                category text NOT NULL,
                quantity double precision NOT NULL,
                recorded_at_utc timestamptz NOT NULL,
                band text NOT NULL,
                first_in_category boolean NOT NULL,
                PRIMARY KEY (store_id, receipt_id, line)
            ) PARTITION BY HASH (store_id)
            """,
            *_hash_partitions("receipt_items"),
            "CREATE INDEX receipt_items_store_day ON receipt_items (store_id, recorded_at_utc)",
            "CREATE INDEX receipt_items_day ON receipt_items (recorded_at_utc)",
            """
            CREATE TABLE band_counts (
                store_id text NOT NULL,
                hour_utc timestamptz NOT NULL,
                lane text NOT NULL,
                band text NOT NULL,
                shoppers integer NOT NULL,
                PRIMARY KEY (store_id, hour_utc, lane, band)
            ) PARTITION BY HASH (store_id)
            """,
            *_hash_partitions("band_counts"),
            "CREATE INDEX band_counts_day ON band_counts (hour_utc)",
        ),
    ),
    (
        2,
        "compliance outcomes; item sums per store, day, band and category kept at sync time; BRIN time indexes",
        (
            # The till's audit rows as they are, seq and hashes included, so a store's chain can be
            # verified here too; check_called / id_check_required stay 0/1 as the hashes cover them.
            """
            CREATE TABLE compliance (
                store_id text NOT NULL,
                lane text NOT NULL,
                receipt_id text NOT NULL,
                seq bigint NOT NULL,
                recorded_at_utc timestamptz NOT NULL,
                day date NOT NULL,
                outcome text NOT NULL,
                restricted text NOT NULL,
                cashier text,
                id_check text NOT NULL,
                id_check_required smallint NOT NULL,
                band text NOT NULL,
                decision_reason text NOT NULL,
                decision_source text NOT NULL,
                check_called smallint NOT NULL,
                rule text NOT NULL,
                prev_hash text NOT NULL,
                row_hash text NOT NULL,
                PRIMARY KEY (store_id, lane, receipt_id)
            ) PARTITION BY HASH (store_id)
            """,
            *_hash_partitions("compliance"),
            "CREATE INDEX compliance_store_day ON compliance (store_id, day)",
            # What the report's category table reads instead of every item line (4.5 M lines per
            # million receipts, 195 k sums): maintained by the sync, in the batch's transaction, from
            # the lines that batch really inserted (ITEM_SUMS_FROM_NEW), so a resent batch adds nothing.
            """
            CREATE TABLE receipt_items_daily (
                store_id text NOT NULL,
                day date NOT NULL,
                band text NOT NULL,
                category text NOT NULL,
                receipts bigint NOT NULL,
                units double precision NOT NULL,
                PRIMARY KEY (store_id, day, band, category)
            ) PARTITION BY HASH (store_id)
            """,
            *_hash_partitions("receipt_items_daily"),
            """
            INSERT INTO receipt_items_daily (store_id, day, band, category, receipts, units)
            SELECT store_id, (recorded_at_utc AT TIME ZONE 'UTC')::date, band, category,
                   COUNT(*) FILTER (WHERE first_in_category), SUM(quantity)
            FROM receipt_items GROUP BY 1, 2, 3, 4
            """,
            # B-trees on time took two thirds of the insert time of a catch-up (each batch lands all
            # over them); no report reads item lines by (store, time) any more. BRIN: a few pages,
            # nearly free to keep, and selective where rows arrive in time order (tills syncing
            # every few minutes).
            "DROP INDEX receipt_items_store_day",
            "DROP INDEX receipt_items_day",
            "CREATE INDEX receipt_items_time_brin ON receipt_items USING brin (recorded_at_utc)",
            "DROP INDEX receipts_day",
            "CREATE INDEX receipts_time_brin ON receipts USING brin (recorded_at_utc)",
            "DROP INDEX band_counts_day",
            "CREATE INDEX band_counts_time_brin ON band_counts USING brin (hour_utc)",
        ),
    ),
)
LATEST_CENTRAL_VERSION = MIGRATIONS[-1][0]
# Kept in the same statement as the insert into receipt_items: `new` is what that insert RETURNING
# gave, i.e. the lines it really added (ON CONFLICT DO NOTHING skips the ones already there).
ITEM_SUMS_FROM_NEW = """
INSERT INTO receipt_items_daily AS d (store_id, day, band, category, receipts, units)
SELECT store_id, (recorded_at_utc AT TIME ZONE 'UTC')::date, band, category,
       COUNT(*) FILTER (WHERE first_in_category), SUM(quantity)
FROM new GROUP BY 1, 2, 3, 4
ON CONFLICT (store_id, day, band, category)
DO UPDATE SET receipts = d.receipts + EXCLUDED.receipts, units = d.units + EXCLUDED.units
"""
# Central tables with a table of sums kept from their new rows: {table: (RETURNING columns, SQL on `new`)}.
ROLLUPS: dict[str, tuple[str, str]] = {
    "receipt_items": ("store_id, recorded_at_utc, band, category, quantity, first_in_category", ITEM_SUMS_FROM_NEW),
}


def central_version(conn: "psycopg.Connection[Any]") -> int:
    """The highest applied migration; 0 for an empty database."""
    exists = conn.execute("SELECT to_regclass('agetool_schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM agetool_schema_version").fetchone()[0])


def migrate_central(target: CentralTarget) -> tuple[int, int]:
    """Apply the missing steps in order, one transaction each; (version before, version after).
    Two migrators at once are serialised by an advisory lock."""
    psycopg = import_psycopg()
    try:
        conn = connect(target)
    except psycopg.OperationalError as exc:
        raise AgetoolError(f"--db {target.masked}: cannot connect ({exc})") from None
    with conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('agetool central migrate'))")
        conn.execute(VERSION_TABLE)
        before = central_version(conn)
        conn.commit()
        if before > LATEST_CENTRAL_VERSION:
            raise AgetoolError(f"--db {target.masked}: schema version {before} is newer than this agetool "
                               f"understands ({LATEST_CENTRAL_VERSION}); upgrade agetool")
        for version, description, statements in MIGRATIONS:
            if version <= before:
                continue
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('agetool central migrate'))")
                    if central_version(conn) >= version:  # another migrator got there first
                        continue
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO agetool_schema_version (version, description) VALUES (%s, %s)",
                                 (version, description))
            except psycopg.Error as exc:
                raise AgetoolError(f"--db {target.masked}: migration {version} ({description}) failed: "
                                   f"{target.scrub(str(exc).strip())}") from None
            log.info("central database %s: schema version %d (%s)", target.masked, version, description)
        return before, central_version(conn)


def require_latest(conn: "psycopg.Connection[Any]", target: CentralTarget) -> None:
    version = central_version(conn)
    conn.commit()
    if version != LATEST_CENTRAL_VERSION:
        raise AgetoolError(f"central database {target.masked}: schema version {version}, this agetool needs "
                           f"{LATEST_CENTRAL_VERSION}; run `agetool central migrate --db URL` first")


def central_instance(conn: "psycopg.Connection[Any]") -> str:
    """The id migration 1 gave this database (the same on every connection to it)."""
    instance = str(conn.execute("SELECT instance_id FROM agetool_instance").fetchone()[0])
    conn.commit()
    return instance
