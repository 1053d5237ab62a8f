"""`agetool compliance report`: outcomes per lane, cashier pseudonym and day out of the daemon's
analytics file, as compliance.json, report.md and two PNG charts.

The report is for the store's compliance lead, not for the floor: it names cashiers only by their
pseudonyms, and only the holder of compliance.cashier_key can say who is behind one. Cashiers are
ranked by the lower end of a 95 % Wilson interval of their violation rate, shown with their number of
restricted sales; only cashiers with at least `min_sales` restricted sales (default 10) are ranked, so
a cashier with one unlucky sale is never on top. Sales without a cashier code are shown, not ranked. Files are written to a
temporary name and renamed. pandas and matplotlib load inside the functions."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agetool.edge_runtime.analytics_report import (
    Period,
    _bounds,
    _save_png,
    atomic_write_text,
    make_period,
    markdown_table,
    resolve_db,
)
from agetool.edge_runtime.compliance import (
    NOT_RESTRICTED,
    OUTCOMES,
    RESTRICTED_OUTCOMES,
    VIOLATION,
    ChainReport,
    verify_chain,
)
from agetool.edge_runtime.migrations import connect_readonly, has_table
from agetool.errors import AgetoolError

if TYPE_CHECKING:
    import pandas as pd

NO_CASHIER = "(not recorded)"
DEFAULT_MIN_SALES = 10
WILSON_Z = 1.96
COLUMNS = ("seq", "lane", "receipt_id", "recorded_at_utc", "day", "outcome", "cashier", "check_called")
OUTCOME_COLOURS = {"checked": "#2e7d32", "not_required": "#90caf9", "violation": "#c62828",
                   "no_face": "#9e9e9e", "not_restricted": "#e0e0e0"}


@dataclass(frozen=True)
class ComplianceReportResult:
    out_dir: Path
    totals: dict[str, int]
    chain: ChainReport


def read_compliance_frame(db: sqlite3.Connection, period: Period) -> "pd.DataFrame":
    """Compliance rows recorded in the period, oldest first."""
    import pandas as pd

    if not has_table(db, "compliance"):
        return pd.DataFrame(columns=list(COLUMNS))
    low, high = _bounds(period, "%Y-%m-%dT%H:%M:%SZ")
    return pd.read_sql_query(
        f"SELECT {', '.join(COLUMNS)} FROM compliance WHERE recorded_at_utc >= ? AND recorded_at_utc < ? ORDER BY seq",
        db, params=(low, high),
    )


def wilson_lower(violations: int, n: int, z: float = WILSON_Z) -> float:
    """Lower end of the Wilson score interval of violations / n (0 for no sales)."""
    if n == 0:
        return 0.0
    p = violations / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def summarize(rows: "pd.DataFrame") -> dict[str, Any]:
    """Counts per outcome (every outcome, 0 when none), restricted sales, violation rates and the
    restricted sales the POS never called /check for."""
    counts = rows["outcome"].value_counts()
    totals = {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES}
    restricted = sum(totals[o] for o in RESTRICTED_OUTCOMES)
    required = totals["checked"] + totals[VIOLATION]
    restricted_rows = rows[rows["outcome"] != NOT_RESTRICTED]
    return {
        "totals": totals,
        "restricted_sales": restricted,
        "violation_rate": round(totals[VIOLATION] / restricted, 4) if restricted else None,
        "required_checks_skipped_rate": round(totals[VIOLATION] / required, 4) if required else None,
        "check_not_called": int((restricted_rows["check_called"] == 0).sum()),
    }


def group_summaries(rows: "pd.DataFrame", column: str) -> dict[str, dict[str, Any]]:
    return {str(key): summarize(group) for key, group in rows.groupby(column, sort=True)}


def cashier_ranking(per_cashier: dict[str, dict[str, Any]], min_sales: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ranked, unranked): cashiers with at least min_sales restricted sales, worst first by the Wilson
    lower bound of their violation rate; the others (and sales without a cashier code) by name."""
    rows = [
        {"cashier": cashier, "restricted_sales": s["restricted_sales"], "violations": s["totals"][VIOLATION],
         "violation_rate": s["violation_rate"],
         "violation_rate_lower_95": round(wilson_lower(s["totals"][VIOLATION], s["restricted_sales"]), 4)}
        for cashier, s in per_cashier.items() if s["restricted_sales"]
    ]
    ranked = [r for r in rows if r["cashier"] != NO_CASHIER and r["restricted_sales"] >= min_sales]
    unranked = [r for r in rows if r not in ranked]
    ranked.sort(key=lambda r: (-r["violation_rate_lower_95"], -r["restricted_sales"], r["cashier"]))
    return ranked, unranked


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _outcome_rows(groups: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [[key, *(str(s["totals"][o]) for o in OUTCOMES), str(s["restricted_sales"]), _rate(s["violation_rate"]),
             str(s["check_not_called"])] for key, s in groups.items()]


def _cashier_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["cashier"], str(r["restricted_sales"]), str(r["violations"]), _rate(r["violation_rate"]),
             _rate(r["violation_rate_lower_95"])] for r in rows]


def render_markdown(summary: dict[str, Any], period: Period, chain: ChainReport, charts: list[str], min_sales: int) -> str:
    header = ["", *OUTCOMES, "restricted sales", "violation rate", "/check not called"]
    overall = summary["overall"]
    cashier_header = ["cashier", "restricted sales", "violations", "violation rate", "rate, lower 95 %"]
    parts = [
        "# Cashier compliance", "",
        f"Period: {period.describe()}. Source: the daemon's `compliance` table.", "",
        f"Audit chain: {chain.describe()}.", "",
        f"**Violation rate: {_rate(overall['violation_rate'])}** of {overall['restricted_sales']} restricted "
        f"sale(s) ({overall['totals'][VIOLATION]} violation(s)); of the sales where the rule required ID, "
        f"{_rate(overall['required_checks_skipped_rate'])} had no ID check recorded. "
        f"{overall['check_not_called']} restricted sale(s) had no /check call from the POS (an integration gap).", "",
        "## Totals", "", markdown_table(header, _outcome_rows({"all lanes": overall})), "",
        "## Per lane", "", markdown_table(header, _outcome_rows(summary["per_lane"])), "",
        "## Per day (UTC)", "", markdown_table(header, _outcome_rows(summary["per_day"])), "",
        "## Cashiers (pseudonyms), worst first", "",
        f"Cashiers with at least {min_sales} restricted sales, ranked by the lower end of the 95 % Wilson "
        "interval of their violation rate (a few sales say little about a cashier).", "",
        markdown_table(cashier_header, _cashier_rows(summary["cashier_ranking"])), "",
        f"Not ranked (fewer than {min_sales} restricted sales, or no cashier code sent by the POS):", "",
        markdown_table(cashier_header, _cashier_rows(summary["cashier_unranked"])), "",
    ]
    parts += [f"![{name}]({name})" for name in charts]
    return "\n".join(parts) + "\n"


def chart_outcomes_per_day(path: Path, rows: "pd.DataFrame") -> Path:
    import pandas as pd

    table = pd.crosstab(rows["day"], rows["outcome"]).reindex(columns=list(OUTCOMES), fill_value=0)

    def draw(figure: Any) -> None:
        axes = figure.subplots()
        bottom = [0] * len(table)
        for outcome in OUTCOMES:
            values = table[outcome].tolist()
            axes.bar(table.index.tolist(), values, bottom=bottom, label=outcome, color=OUTCOME_COLOURS[outcome])
            bottom = [b + v for b, v in zip(bottom, values)]
        axes.set_title("Compliance outcomes per day (UTC)")
        axes.set_ylabel("receipts")
        axes.legend(fontsize=8)
        axes.tick_params(axis="x", labelrotation=45)

    return _save_png(path, draw)


def chart_cashiers(path: Path, ranking: list[dict[str, Any]], top_n: int = 20) -> Path:
    shown = ranking[:top_n][::-1]  # worst at the top of a horizontal bar chart

    def draw(figure: Any) -> None:
        axes = figure.subplots()
        labels = [f"{r['cashier']} (n={r['restricted_sales']})" for r in shown]
        rates = [100 * (r["violation_rate"] or 0.0) for r in shown]
        lows = [100 * r["violation_rate_lower_95"] for r in shown]
        axes.barh(labels, rates, color="#ef9a9a", label="violation rate")
        axes.barh(labels, lows, color="#c62828", label="lower end of 95 % interval (ranking)")
        axes.set_xlabel("% of restricted sales")
        axes.set_xlim(0, 100)
        axes.set_title("Cashiers by violation rate (n = restricted sales)")
        axes.legend(fontsize=8)

    return _save_png(path, draw, size=(9.0, max(3.0, 0.35 * len(shown) + 1.5)))


def build_compliance_report(
    db_path: Path | None, out: Path, since: str, until: str | None = None, min_sales: int = DEFAULT_MIN_SALES
) -> ComplianceReportResult:
    """Write compliance.json, report.md and the charts for [since, until) into `out`."""
    if min_sales < 1:
        raise AgetoolError(f"--min-sales {min_sales}: expected 1 or more")
    period = make_period(since, until)
    db = connect_readonly(resolve_db(db_path))
    try:
        rows = read_compliance_frame(db, period)
        chain = verify_chain(db)
    finally:
        db.close()
    rows["cashier"] = rows["cashier"].fillna(NO_CASHIER)
    restricted = rows[rows["outcome"] != NOT_RESTRICTED]
    per_cashier = group_summaries(restricted, "cashier")
    ranked, unranked = cashier_ranking(per_cashier, min_sales)
    summary = {
        "overall": summarize(rows),
        "per_lane": group_summaries(rows, "lane"),
        "per_cashier": per_cashier,
        "per_day": group_summaries(rows, "day"),
        "cashier_ranking": ranked,
        "cashier_unranked": unranked,
    }
    out = Path(out)
    charts = []
    if len(rows):
        chart_outcomes_per_day(out / "outcomes_per_day.png", rows)
        charts.append("outcomes_per_day.png")
    if summary["cashier_ranking"]:
        chart_cashiers(out / "cashiers_by_violation_rate.png", summary["cashier_ranking"])
        charts.append("cashiers_by_violation_rate.png")
    document = {
        "period": {"since": period.since.isoformat() if period.since else None,
                   "until": period.until.isoformat() if period.until else None},
        **summary["overall"],
        "per_lane": summary["per_lane"],
        "per_cashier": per_cashier,
        "per_day": summary["per_day"],
        "ranking_min_sales": min_sales,
        "cashier_ranking": ranked,
        "cashier_unranked": unranked,
        "chain": {"ok": chain.ok, "rows": chain.rows, "last_seq": chain.last_seq, "head_hash": chain.head_hash,
                  "problem": chain.problem, "broken_seq": chain.broken_seq},
    }
    atomic_write_text(out / "compliance.json", json.dumps(document, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(summary, period, chain, charts, min_sales))
    return ComplianceReportResult(out, summary["overall"]["totals"], chain)
