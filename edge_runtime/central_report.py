"""Purchases by age group for the whole chain (rows per store) or one store (rows per lane), out of
the central PostgreSQL database.

The server does the sums (a few thousand aggregated rows come back, never the receipts); the
rendering and the small-cell suppression are the till report's own (analytics_report.write_report),
applied to the sums, so a cell of 3 shoppers in each of two stores shows as 6 chain-wide."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agetool.edge_runtime.analytics_report import (
    DEFAULT_K, DEFAULT_TOP_CATEGORIES, Period, ReportResult, band_order, check_k, make_period,
    shopper_tables_by_hour_of_day, write_report,
)
from agetool.edge_runtime.central_db import CentralTarget, connect, import_psycopg, require_latest
from agetool.errors import AgetoolError

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

# %(since)s / %(until)s are timestamptz or NULL (open end); %(store)s is a store id or NULL (chain).
PERIOD = ("({col} >= %(since)s::timestamptz OR %(since)s::timestamptz IS NULL) "
          "AND ({col} < %(until)s::timestamptz OR %(until)s::timestamptz IS NULL)")
# Band counts are per hour: like the till's report, the hour a bound falls in decides.
HOURS = ("(hour_utc >= date_trunc('hour', %(since)s::timestamptz) OR %(since)s::timestamptz IS NULL) "
         "AND (hour_utc < date_trunc('hour', %(until)s::timestamptz) OR %(until)s::timestamptz IS NULL)")
STORE = "(store_id = %(store)s OR %(store)s::text IS NULL)"

SHOPPERS_SQL = f"""
SELECT {{unit}} AS lane, to_char(hour_utc, 'HH24') || ':00' AS hour_of_day, band, SUM(shoppers)::bigint AS shoppers
FROM band_counts
WHERE {HOURS} AND {STORE}
GROUP BY 1, 2, 3
"""
RECEIPTS_SQL = f"""
SELECT band, COUNT(*) AS receipts, (SUM(total_cents) / 100.0)::float8 AS value, (AVG(total_cents) / 100.0)::float8 AS mean_basket,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_cents) / 100.0 AS median_basket
FROM receipts
WHERE {PERIOD.format(col="recorded_at_utc")} AND {STORE}
GROUP BY band
"""
# Receipts per category count each receipt once, however many lines of the category it has: its
# first line of the category (marked when it was synced) is the one counted.
CATEGORIES_SQL = f"""
SELECT band, category, COUNT(*) FILTER (WHERE first_in_category) AS receipts, SUM(quantity) AS units
FROM receipt_items
WHERE {PERIOD.format(col="recorded_at_utc")} AND {STORE}
GROUP BY band, category
"""


def _frame(conn: "psycopg.Connection[Any]", sql: str, params: dict[str, Any], columns: list[str]) -> "pd.DataFrame":
    import pandas as pd

    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    return pd.DataFrame(rows, columns=columns)


def query_tables(conn: "psycopg.Connection[Any]", period: Period, store: str | None
                 ) -> tuple["pd.DataFrame", "pd.DataFrame", "pd.DataFrame"]:
    """(shoppers per unit x hour of day x band, receipts per band, receipts and units per band x
    category), summed on the server. The unit is the store chain-wide, the lane for one store."""
    params = {"since": period.since, "until": period.until, "store": store}
    shoppers_sql = SHOPPERS_SQL.replace("{unit}", "lane" if store else "store_id")
    counts = _frame(conn, shoppers_sql, params, ["lane", "hour_of_day", "band", "shoppers"])
    receipts = _frame(conn, RECEIPTS_SQL, params, ["band", "receipts", "value", "mean_basket", "median_basket"])
    categories = _frame(conn, CATEGORIES_SQL, params, ["band", "category", "receipts", "units"])
    return counts, band_order(receipts.set_index("band")), categories


def build_central_report(
    target: CentralTarget,
    out_dir: Path,
    store: str | None = None,
    since: str | None = None,
    until: str | None = None,
    k: int = DEFAULT_K,
    top_n: int = DEFAULT_TOP_CATEGORIES,
) -> ReportResult:
    """report.md and its charts in out_dir: chain-wide (rows per store), or for one store (rows per lane)."""
    psycopg = import_psycopg()
    check_k(k)
    period = make_period(since, until)
    try:
        conn = connect(target)
    except psycopg.OperationalError as exc:
        raise AgetoolError(f"--db {target.masked}: cannot connect ({exc})") from None
    try:
        require_latest(conn, target)
        if store is not None and conn.execute("SELECT 1 FROM stores WHERE store_id = %s", (store,)).fetchone() is None:
            raise AgetoolError(f"--store {store!r}: no such store in {target.masked} (not synced yet?)")
        counts, table, categories = query_tables(conn, period, store)
    except psycopg.Error as exc:
        raise AgetoolError(f"--db {target.masked}: {target.scrub(str(exc).strip())}") from None
    finally:
        conn.close()
    scope = f"store {store}, per lane" if store else "the whole chain, per store"
    return write_report(Path(out_dir), period, shopper_tables_by_hour_of_day(counts, k), table, categories, k,
                        top_n, unit="lane" if store else "store", scope=scope)
