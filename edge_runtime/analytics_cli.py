"""`agetool analytics export` and `agetool analytics report`: parse options, call one library
function each. Nothing heavy is imported here (pandas and matplotlib load inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DB_HELP = "The daemon's analytics SQLite file (analytics.sqlite_path; default ~/.local/state/agetool/analytics.sqlite)."
SINCE_HELP = "From this date (YYYY-MM-DD, from its start) or ISO time (UTC unless it says otherwise)."
UNTIL_HELP = "Up to this date (YYYY-MM-DD: that whole day included) or ISO time (excluded)."

analytics_app = typer.Typer(
    help="Purchases by age group: export the receipts tagged with age bands, write the report.",
    no_args_is_help=True,
)


@analytics_app.command("export")
def export(
    since: str = typer.Option(..., "--since", help=SINCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .csv, or .parquet (needs pyarrow)."),
    until: Optional[str] = typer.Option(None, "--until", help=UNTIL_HELP),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """One row per receipt: lane, time, age band (+ confidence), total and its item lines as JSON."""
    from agetool.edge_runtime.analytics_report import export_receipts

    rows = export_receipts(db, out, since, until)
    typer.echo(f"{rows} receipt(s) -> {out}", err=True)


@analytics_app.command("report")
def report(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.md and its PNG charts."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    since: Optional[str] = typer.Option(None, "--since", help=SINCE_HELP),
    until: Optional[str] = typer.Option(None, "--until", help=UNTIL_HELP),
    k: int = typer.Option(5, "--k", help="Cells with fewer shoppers / receipts than this show as '<k'."),
) -> None:
    """Shoppers per band, hour and lane; receipts, basket value and top categories per band."""
    from agetool.edge_runtime.analytics_report import build_report

    result = build_report(db, out, since, until, k=k)
    typer.echo(f"report: {result.out_dir / 'report.md'} ({result.receipts_shown} receipt(s) and "
               f"{result.shoppers_shown} shopper(s) in the cells shown)", err=True)
