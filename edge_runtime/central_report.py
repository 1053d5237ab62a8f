"""Purchases by age group for the whole chain (rows per store) or one store (rows per lane), out of
the central PostgreSQL database.

The server does the sums (a few thousand aggregated rows come back, never the receipts); the
rendering and the small-cell suppression are the till report's own (analytics_report.write_report),
applied to the sums, so a cell of 3 shoppers in each of two stores shows as 6 chain-wide."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
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

# Grouped on the hour as an integer and formatted after: to_char on every row took half the query.
SHOPPERS_SQL = f"""
SELECT lane, lpad(hour::text, 2, '0') || ':00' AS hour_of_day, band, shoppers
FROM (SELECT {{unit}} AS lane, EXTRACT(HOUR FROM hour_utc)::int AS hour, band, SUM(shoppers)::bigint AS shoppers
      FROM band_counts
      WHERE {HOURS} AND {STORE}
      GROUP BY 1, 2, 3) AS sums
"""
RECEIPTS_SQL = f"""
SELECT band, COUNT(*) AS receipts, (SUM(total_cents) / 100.0)::float8 AS value, (AVG(total_cents) / 100.0)::float8 AS mean_basket,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_cents) / 100.0 AS median_basket
FROM receipts
WHERE {PERIOD.format(col="recorded_at_utc")} AND {STORE}
GROUP BY band
"""
# Receipts per category count each receipt once, however many lines of the category it has: its
# first line of the category (marked when it was synced) is the one counted. Whole days come from
# the sums the sync keeps (receipt_items_daily); the item lines are read only for the part of a
# day a bound cuts (--since / --until at a time, not a date).
CATEGORIES_DAYS_SQL = f"""
SELECT band, category, receipts, units FROM receipt_items_daily
WHERE (day >= %(first_day)s::date OR %(first_day)s::date IS NULL)
  AND (day < %(end_day)s::date OR %(end_day)s::date IS NULL) AND {STORE}
"""
CATEGORIES_LINES_SQL = f"""
SELECT band, category, COUNT(*) FILTER (WHERE first_in_category), SUM(quantity) FROM receipt_items
WHERE recorded_at_utc >= %(start)s::timestamptz AND recorded_at_utc < %(stop)s::timestamptz AND {STORE}
GROUP BY band, category
"""
# Sorting a million baskets for the median needs more than the default 4 MB of memory per sort.
REPORT_WORK_MEM = "64MB"


@dataclass(frozen=True)
class DaySplit:
    """A period as whole UTC days [first_day, end_day) (either end open) and the pieces of cut days."""

    first_day: date | None
    end_day: date | None
    cut: tuple[tuple[datetime, datetime], ...]
    whole_days: bool  # False: the period lies inside one day, only `cut` counts


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _first_whole_day(since: datetime) -> date:
    return since.date() if since == _midnight(since.date()) else since.date() + timedelta(days=1)


def split_days(period: Period) -> DaySplit:
    since, until = period.since, period.until
    if since is not None and until is not None and _first_whole_day(since) >= until.date():
        return DaySplit(None, None, ((since, until),), whole_days=False)
    first_day = _first_whole_day(since) if since is not None else None
    end_day = until.date() if until is not None else None
    cut = []
    if since is not None and first_day is not None and _midnight(first_day) > since:
        cut.append((since, _midnight(first_day)))
    if until is not None and end_day is not None and until > _midnight(end_day):
        cut.append((_midnight(end_day), until))
    return DaySplit(first_day, end_day, tuple(cut), whole_days=True)


def category_sums(conn: "psycopg.Connection[Any]", period: Period, store: str | None) -> "pd.DataFrame":
    """Receipts and units per band x category in the period (whole days from the daily sums)."""
    import pandas as pd

    split = split_days(period)
    columns = ["band", "category", "receipts", "units"]
    parts = []
    if split.whole_days:
        parts.append(_frame(conn, CATEGORIES_DAYS_SQL,
                            {"first_day": split.first_day, "end_day": split.end_day, "store": store}, columns))
    for start, stop in split.cut:
        parts.append(_frame(conn, CATEGORIES_LINES_SQL, {"start": start, "stop": stop, "store": store}, columns))
    parts = [part for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(parts, ignore_index=True)
    return frame.groupby(["band", "category"], as_index=False)[["receipts", "units"]].sum()


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
    conn.execute(f"SET work_mem = '{REPORT_WORK_MEM}'")
    params = {"since": period.since, "until": period.until, "store": store}
    shoppers_sql = SHOPPERS_SQL.replace("{unit}", "lane" if store else "store_id")
    counts = _frame(conn, shoppers_sql, params, ["lane", "hour_of_day", "band", "shoppers"])
    receipts = _frame(conn, RECEIPTS_SQL, params, ["band", "receipts", "value", "mean_basket", "median_basket"])
    categories = category_sums(conn, period, store)
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
