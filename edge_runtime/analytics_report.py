"""Purchases by age group, out of the daemon's analytics file: a receipt export (CSV / Parquet) and
a markdown report with PNG charts.

The report only shows cells of at least k shoppers / receipts (default 5); smaller ones read "<k"
and are left out of charts, so no single shopper's visit or basket can be picked out. Every file is
written to a temporary name and renamed. pandas and matplotlib load inside the functions."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from agetool.contract import BAND_NAMES, UNKNOWN_BAND
from agetool.edge_runtime.receipts import connect_readonly, has_table
from agetool.errors import AgetoolError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_K = 5
DEFAULT_TOP_CATEGORIES = 5
REPORT_BANDS: tuple[str, ...] = BAND_NAMES + (UNKNOWN_BAND,)
EXPORT_COLUMNS = ("receipt_id", "lane", "recorded_at_utc", "hour_utc", "band", "band_confidence",
                  "band_basis", "total", "n_items", "items")


# --- Time range ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """[since, until) in UTC; either end may be open."""

    since: datetime | None
    until: datetime | None

    def describe(self) -> str:
        start = self.since.strftime("%Y-%m-%d %H:%M") if self.since else "the first record"
        end = self.until.strftime("%Y-%m-%d %H:%M") if self.until else "the last record"
        return f"{start} to {end} (UTC, end excluded)"


def parse_when(text: str, option: str, end_of_day: bool = False) -> datetime:
    """A date (YYYY-MM-DD: that day's start, or with end_of_day the next day's) or an ISO time;
    a time without a zone is UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            return day + timedelta(days=1) if end_of_day else day
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise AgetoolError(
            f"{option} {text!r}: expected a date YYYY-MM-DD or an ISO time like 2025-01-31T14:00Z"
        ) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def make_period(since: str | None, until: str | None) -> Period:
    """--since is inclusive; --until DATE includes that whole day, --until TIME is exclusive."""
    period = Period(
        parse_when(since, "--since") if since else None,
        parse_when(until, "--until", end_of_day=True) if until else None,
    )
    if period.since and period.until and period.until <= period.since:
        raise AgetoolError(f"--until {until}: must be after --since {since}")
    return period


def _bounds(period: Period, fmt: str) -> tuple[str, str]:
    low = period.since.strftime(fmt) if period.since else ""
    high = period.until.strftime(fmt) if period.until else "~"  # '~' sorts after every digit
    return low, high


# --- Reading ------------------------------------------------------------------------------------
def resolve_db(db_path: Path | None) -> Path:
    if db_path is not None:
        return Path(db_path)
    from agetool.edge_runtime.config import DEFAULT_ANALYTICS_PATH

    return DEFAULT_ANALYTICS_PATH


def read_receipt_frame(db: sqlite3.Connection, period: Period) -> "pd.DataFrame":
    """Receipts recorded in the period, with their item lines as a JSON list in `items`."""
    import pandas as pd

    if not has_table(db, "receipts"):
        return pd.DataFrame(columns=list(EXPORT_COLUMNS))
    low, high = _bounds(period, "%Y-%m-%dT%H:%M:%SZ")
    receipts = pd.read_sql_query(
        "SELECT receipt_id, lane, recorded_at_utc, hour_utc, band, band_confidence, band_basis, "
        "total_cents / 100.0 AS total, n_items FROM receipts "
        "WHERE recorded_at_utc >= ? AND recorded_at_utc < ? ORDER BY recorded_at_utc, receipt_id",
        db, params=(low, high),
    )
    items = pd.read_sql_query(
        "SELECT i.receipt_id, i.sku, i.category, i.quantity FROM receipt_items i "
        "JOIN receipts r ON r.receipt_id = i.receipt_id "
        "WHERE r.recorded_at_utc >= ? AND r.recorded_at_utc < ? ORDER BY i.receipt_id, i.line",
        db, params=(low, high),
    )
    lines: dict[str, list[dict[str, object]]] = {}
    for row in items.itertuples(index=False):
        lines.setdefault(row.receipt_id, []).append(
            {"sku": row.sku, "category": row.category, "quantity": row.quantity})
    receipts["items"] = [json.dumps(lines.get(rid, [])) for rid in receipts["receipt_id"]]
    return receipts


def read_items_frame(db: sqlite3.Connection, period: Period) -> "pd.DataFrame":
    """Item lines of receipts in the period, with the receipt's band."""
    import pandas as pd

    if not has_table(db, "receipt_items"):
        return pd.DataFrame(columns=["receipt_id", "band", "category", "quantity"])
    low, high = _bounds(period, "%Y-%m-%dT%H:%M:%SZ")
    return pd.read_sql_query(
        "SELECT i.receipt_id, r.band, i.category, i.quantity FROM receipt_items i "
        "JOIN receipts r ON r.receipt_id = i.receipt_id WHERE r.recorded_at_utc >= ? AND r.recorded_at_utc < ?",
        db, params=(low, high),
    )


def read_counts_frame(db: sqlite3.Connection, period: Period) -> "pd.DataFrame":
    """Band counts (hour_utc, lane, band, shoppers) of the hours in the period."""
    import pandas as pd

    if not has_table(db, "band_counts"):
        return pd.DataFrame(columns=["hour_utc", "lane", "band", "shoppers"])
    low, high = _bounds(period, "%Y-%m-%dT%H:00Z")
    return pd.read_sql_query(
        "SELECT hour_utc, lane, band, shoppers FROM band_counts WHERE hour_utc >= ? AND hour_utc < ? "
        "ORDER BY hour_utc, lane, band",
        db, params=(low, high),
    )


# --- Atomic writes ------------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --- Export -------------------------------------------------------------------------------------
def export_receipts(db_path: Path | None, out: Path, since: str, until: str | None = None) -> int:
    """Write the receipts recorded in [since, until) to a .csv or .parquet file; the rows written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise AgetoolError(f"--out {out}: expected a .csv or .parquet file name")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401 - only checking it is there
        except ImportError:
            raise AgetoolError(
                f"--out {out}: writing .parquet needs pyarrow (pip install pyarrow); or export to a .csv file"
            ) from None
    period = make_period(since, until)
    db = connect_readonly(resolve_db(db_path))
    try:
        frame = read_receipt_frame(db, period)
    finally:
        db.close()
    if suffix == ".csv":
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False, engine="pyarrow"))
    return len(frame)


# --- Small-cell suppression ---------------------------------------------------------------------
HIDDEN = "hidden"


def cell(count: int | float, k: int, hidden: bool | None = None) -> str:
    """A count as shown in the report: '<k' below k (0 stays 0: an empty cell says nothing), and
    'hidden' for a cell of k or more hidden so that a '<k' beside it cannot be worked out."""
    count = int(count)
    if hidden is None:
        hidden = 0 < count < k
    if not hidden:
        return str(count)
    return f"<{k}" if count < k else HIDDEN


def small_cells(counts: "pd.DataFrame", k: int) -> "pd.DataFrame":
    """True where a count is 1..k-1."""
    return (counts > 0) & (counts < k)


def hide_with_margins(counts: "pd.DataFrame", hidden: "pd.DataFrame", level: str) -> "pd.DataFrame":
    """Secondary suppression: in each group of `level` (a lane) and band, a single hidden cell would
    be the group's total (shown elsewhere) minus the shown cells, so the smallest other non-zero
    cell is hidden too."""
    import numpy as np
    import pandas as pd

    # On arrays, a group's rows at a time (per-cell .loc took over a second for 200 stores).
    values = counts.to_numpy(dtype=float)
    marks = hidden.loc[counts.index, counts.columns].to_numpy(dtype=bool)
    result = marks.copy()
    for rows in counts.groupby(level=level, sort=False).indices.values():
        block, block_marks = values[rows], marks[rows]
        candidates = np.where(~block_marks & (block > 0), block, np.inf)
        for column in np.flatnonzero(block_marks.sum(axis=0) == 1):
            if np.isfinite(candidates[:, column]).any():
                result[rows[np.argmin(candidates[:, column])], column] = True  # the first smallest, as idxmin
    return pd.DataFrame(result, index=counts.index, columns=counts.columns)


def shown(counts: "pd.DataFrame", hidden: "pd.DataFrame") -> "pd.DataFrame":
    """Counts with the hidden cells set to 0, for charts and the sums the report prints."""
    return counts.where(~hidden, 0)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def band_columns(frame: "pd.DataFrame") -> list[str]:
    """The bands in contract order, 'unknown' last, only those present (all known bands always)."""
    present = set(frame.columns)
    return [b for b in REPORT_BANDS if b in BAND_NAMES or b in present]


# --- Report -------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    receipts_shown: int = 0  # in the bands the report shows (at least k receipts)
    shoppers_shown: int = 0  # in the lane x band cells the report shows


def _pivot(frame: "pd.DataFrame", index: list[str], values: str, aggfunc: str) -> "pd.DataFrame":
    import pandas as pd

    if frame.empty:
        return pd.DataFrame(columns=list(BAND_NAMES))
    table = frame.pivot_table(index=index, columns="band", values=values, aggfunc=aggfunc, fill_value=0)
    return table.reindex(columns=band_columns(table), fill_value=0)


@dataclass
class ShopperTables:
    """Shoppers per lane x band, and per (lane, hour of day) x band, with what each hides."""

    by_lane: "pd.DataFrame"
    by_lane_hidden: "pd.DataFrame"
    by_hour: "pd.DataFrame"
    by_hour_hidden: "pd.DataFrame"

    @property
    def shown_total(self) -> int:
        return int(shown(self.by_lane, self.by_lane_hidden).to_numpy().sum())


def shopper_tables(counts: "pd.DataFrame", k: int) -> ShopperTables:
    """From band counts (hour_utc, lane, band, shoppers)."""
    return shopper_tables_by_hour_of_day(
        counts.assign(hour_of_day=counts["hour_utc"].str.slice(11, 13) + ":00"), k)


def shopper_tables_by_hour_of_day(counts: "pd.DataFrame", k: int) -> ShopperTables:
    """From counts already summed per (lane, hour_of_day 'HH:00', band): what the central report's
    SQL returns, with a store in `lane` for the chain-wide report. Suppression comes after the sums."""
    by_lane = _pivot(counts, ["lane"], "shoppers", "sum")
    by_hour = _pivot(counts, ["lane", "hour_of_day"], "shoppers", "sum")
    return ShopperTables(by_lane, small_cells(by_lane, k), by_hour,
                         hide_with_margins(by_hour, small_cells(by_hour, k), level="lane") if not by_hour.empty
                         else small_cells(by_hour, k))


def _rows_with_marks(counts: "pd.DataFrame", hidden: "pd.DataFrame") -> "zip[tuple[object, object, object]]":
    """(index label, counts row, hidden row) per row, as plain arrays."""
    marks = hidden.loc[counts.index, counts.columns].to_numpy(dtype=bool)
    return zip(counts.index, counts.to_numpy().tolist(), marks.tolist())


def shoppers_section(tables: ShopperTables, k: int, unit: str = "lane") -> list[str]:
    """Markdown for shoppers per band and lane, and per hour of day and lane (`unit` 'store' in the
    chain-wide report, whose rows are stores)."""
    parts = [f"## Shoppers per age band and {unit}", "",
             "One count per shopper (a face followed across frames), when they leave the till.", ""]
    if tables.by_lane.empty:
        return parts + ["No shoppers counted in this period.", ""]
    bands = list(tables.by_lane.columns)
    lane_rows = [[str(lane)] + [cell(v, k, h) for v, h in zip(row, hidden)]
                 for lane, row, hidden in _rows_with_marks(tables.by_lane, tables.by_lane_hidden)]
    hour_rows = [[str(lane), hour] + [cell(v, k, h) for v, h in zip(row, hidden)]
                 for (lane, hour), row, hidden in _rows_with_marks(tables.by_hour, tables.by_hour_hidden)]
    parts += [markdown_table([unit] + bands, lane_rows), ""]
    parts += [f"## Shoppers per age band, hour of day (UTC) and {unit}", "",
              "![shoppers by hour](shoppers_by_hour.png)", "",
              markdown_table([unit, "hour (UTC)"] + bands, hour_rows), ""]
    if (tables.by_hour_hidden & ~small_cells(tables.by_hour, k)).to_numpy().any():
        parts += [f"`{HIDDEN}`: k or more shoppers, hidden because with the {unit} totals above it would "
                  f"give away a `<{k}` cell.", ""]
    return parts


def receipts_by_band(receipts: "pd.DataFrame") -> "pd.DataFrame":
    """Receipts, total and mean / median basket per band (all bands, in order)."""
    import pandas as pd

    if receipts.empty:
        grouped = pd.DataFrame(columns=["receipts", "value", "mean_basket", "median_basket"])
    else:
        grouped = receipts.groupby("band")["total"].agg(
            receipts="count", value="sum", mean_basket="mean", median_basket="median")
    return band_order(grouped)


def band_order(grouped: "pd.DataFrame") -> "pd.DataFrame":
    """A per-band table (index band; receipts, value, mean_basket, median_basket) in report order."""
    bands = [b for b in REPORT_BANDS if b in BAND_NAMES or b in grouped.index]
    return grouped.reindex(bands).fillna({"receipts": 0, "value": 0.0})


def receipts_section(table: "pd.DataFrame", k: int) -> list[str]:
    rows = []
    # Shares of the receipts in shown bands: a share of all receipts would give the total away, and
    # with it a single '<k' band.
    total_receipts = int(table.loc[table["receipts"] >= k, "receipts"].sum())
    for band, row in table.iterrows():
        n = int(row["receipts"])
        if n < k:
            rows.append([band, cell(n, k), "—", "—", "—", "—"])
            continue
        rows.append([band, str(n), f"{row['value']:.2f}", f"{row['mean_basket']:.2f}",
                     f"{row['median_basket']:.2f}", f"{100.0 * n / total_receipts:.1f} %"])
    return ["## Receipts and basket value per age band", "", "![receipts by band](receipts_by_band.png)", "",
            markdown_table(["band", "receipts", "value", "mean basket", "median basket", "share of shown receipts"], rows),
            "", f"Bands with fewer than {k} receipts show `<{k}` and no value.", ""]


def categories_section(categories: "pd.DataFrame", table: "pd.DataFrame", k: int, top_n: int) -> list[str]:
    """Per band with at least k receipts: the categories on most receipts (each on at least k), from
    per (band, category) counts."""
    parts = ["## Top categories per age band", "",
             f"Categories ranked by the number of receipts they are on; only bands and categories with at "
             f"least {k} receipts are listed.", ""]
    return parts + ranked_categories_rows(categories, table, k, top_n)


def category_counts(items: "pd.DataFrame") -> "pd.DataFrame":
    """Per (band, category): the receipts it is on and the units bought."""
    import pandas as pd

    if items.empty:
        return pd.DataFrame(columns=["band", "category", "receipts", "units"])
    return (items.groupby(["band", "category"]).agg(receipts=("receipt_id", "nunique"), units=("quantity", "sum"))
            .reset_index())


def ranked_categories_rows(counts: "pd.DataFrame", table: "pd.DataFrame", k: int, top_n: int) -> list[str]:
    """The top-categories table from per (band, category) counts (`category_counts`, or the central
    report's SQL); only bands and categories on at least k receipts."""
    rows = []
    for band, band_row in table.iterrows():
        n_receipts = int(band_row["receipts"])
        if n_receipts < k:
            continue
        ranked = (counts[counts["band"] == band].set_index("category")[["receipts", "units"]]
                  .sort_values(["receipts", "units"], ascending=False))
        ranked = ranked[ranked["receipts"] >= k].head(top_n)
        for rank, (category, row) in enumerate(ranked.iterrows(), start=1):
            share = 100.0 * row["receipts"] / n_receipts
            rows.append([band, str(rank), str(category), str(int(row["receipts"])), f"{share:.0f} %",
                         f"{row['units']:g}"])
    if rows:
        return [markdown_table(["band", "rank", "category", "receipts", "of the band's receipts", "units"], rows), ""]
    return [f"No band has a category on {k} or more receipts in this period.", ""]


def _save_png(path: Path, draw: Callable[["object"], None], size: tuple[float, float] = (9.0, 4.5)) -> Path:
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed (Agg)

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    draw(figure)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def chart_shoppers_by_hour(path: Path, tables: ShopperTables, k: int) -> Path:
    by_hour = tables.by_hour
    hours_of_day = [f"{hour:02d}:00" for hour in range(24)]
    hourly = (shown(by_hour, tables.by_hour_hidden).groupby(level="hour_of_day").sum() if not by_hour.empty
              else by_hour).reindex(hours_of_day, fill_value=0)

    def draw(figure: "object") -> None:
        axes = figure.add_subplot()
        bottom = None
        hours = list(hourly.index)
        for band in hourly.columns:
            values = hourly[band].to_numpy()
            axes.bar(hours, values, bottom=bottom, label=band)
            bottom = values if bottom is None else bottom + values
        axes.set_xlabel("hour of day (UTC)")
        axes.set_ylabel("shoppers")
        axes.set_title(f"Shoppers per age band and hour, all lanes (cells < {k} left out)")
        if len(hourly.columns):
            axes.legend(fontsize="small", ncols=2)
        axes.tick_params(axis="x", labelrotation=90)

    return _save_png(path, draw)


def chart_receipts_by_band(path: Path, table: "pd.DataFrame", k: int) -> Path:
    visible = table[table["receipts"] >= k]

    def draw(figure: "object") -> None:
        left, right = figure.subplots(1, 2)
        bands = list(table.index)
        left.bar(bands, [int(table.loc[b, "receipts"]) if b in visible.index else 0 for b in bands])
        left.set_title("Receipts per age band")
        right.bar(bands, [float(visible.loc[b, "mean_basket"]) if b in visible.index else 0.0 for b in bands])
        right.set_title("Mean basket value per age band")
        for axes in (left, right):
            axes.tick_params(axis="x", labelrotation=45)
        figure.suptitle(f"Bands with fewer than {k} receipts left out")

    return _save_png(path, draw)


def check_k(k: int) -> None:
    if k < 2:
        raise AgetoolError(f"--k {k}: expected 2 or more (k = 1 would show single shoppers)")


def build_report(
    db_path: Path | None,
    out_dir: Path,
    since: str | None = None,
    until: str | None = None,
    k: int = DEFAULT_K,
    top_n: int = DEFAULT_TOP_CATEGORIES,
) -> ReportResult:
    """report.md and two PNG charts in out_dir, from the analytics file."""
    check_k(k)
    period = make_period(since, until)
    db = connect_readonly(resolve_db(db_path))
    try:
        counts = read_counts_frame(db, period)
        receipts = read_receipt_frame(db, period)
        items = read_items_frame(db, period)
    finally:
        db.close()
    return write_report(Path(out_dir), period, shopper_tables(counts, k), receipts_by_band(receipts),
                        category_counts(items), k, top_n)


def write_report(
    out_dir: Path,
    period: Period,
    tables: ShopperTables,
    table: "pd.DataFrame",
    categories: "pd.DataFrame",
    k: int,
    top_n: int,
    unit: str = "lane",
    scope: str | None = None,
) -> ReportResult:
    """report.md and its two charts from aggregated tables (suppression is applied here, after
    every sum); shared by the till's report and the central (chain-wide / per store) one."""
    import matplotlib

    matplotlib.use("Agg")
    shown_receipts = int(table.loc[table["receipts"] >= k, "receipts"].sum())
    result = ReportResult(out_dir, receipts_shown=shown_receipts, shoppers_shown=tables.shown_total)
    parts = [
        "# Purchases by age group", "",
        *([f"- Scope: {scope}"] if scope else []),
        f"- Period: {period.describe()}",
        f"- Shoppers counted, in the cells shown: {result.shoppers_shown}; receipts, in the bands shown: "
        f"{result.receipts_shown}",
        f"- Cells with fewer than {k} shoppers or receipts are shown as `<{k}` and left out of the charts "
        "and of every sum and share (so no small cell can be worked out from them).",
        "- Band `unknown`: no face at the till, or an estimate too uncertain to name one band (docs/privacy.md).",
        "",
        *shoppers_section(tables, k, unit),
        *receipts_section(table, k),
        *categories_section(categories, table, k, top_n),
    ]
    result.files.append(chart_shoppers_by_hour(out_dir / "shoppers_by_hour.png", tables, k))
    result.files.append(chart_receipts_by_band(out_dir / "receipts_by_band.png", table, k))
    # report.md last: a report that exists has its charts beside it.
    result.files.append(atomic_write_text(out_dir / "report.md", "\n".join(parts)))
    return result
