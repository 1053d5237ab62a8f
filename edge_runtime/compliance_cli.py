"""`agetool compliance verify` and `agetool compliance report`: parse options, call one library
function each. Nothing heavy is imported here (pandas and matplotlib load inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agetool.edge_runtime.analytics_cli import DB_HELP, SINCE_HELP, UNTIL_HELP

# Exit status of `verify` when the chain is broken: a finding, not a usage (2) or config (78) error.
EXIT_CHAIN_BROKEN = 1

compliance_app = typer.Typer(
    help="Cashier compliance: verify the tamper-evident audit trail, write the compliance report.",
    no_args_is_help=True,
)


@compliance_app.command("verify")
def verify(db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Check the hash chain of the compliance rows; name the first row where it breaks (exit 1)."""
    from agetool.edge_runtime.analytics_report import resolve_db
    from agetool.edge_runtime.compliance import verify_file

    result = verify_file(resolve_db(db))
    typer.echo(result.describe())
    if not result.ok:
        raise typer.Exit(EXIT_CHAIN_BROKEN)


@compliance_app.command("report")
def report(
    since: str = typer.Option(..., "--since", help=SINCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for compliance.json, report.md and the PNG charts."),
    until: Optional[str] = typer.Option(None, "--until", help=UNTIL_HELP),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    min_sales: int = typer.Option(10, "--min-sales", help="Rank only cashiers with at least this many restricted sales."),
) -> None:
    """Outcomes per lane, cashier pseudonym and day; violation rates; cashiers ranked."""
    from agetool.edge_runtime.compliance_report import build_compliance_report

    result = build_compliance_report(db, out, since, until, min_sales)
    typer.echo(f"report: {result.out_dir / 'report.md'} ({sum(result.totals.values())} receipt(s), "
               f"{result.totals['violation']} violation(s); chain {'intact' if result.chain.ok else 'BROKEN'})",
               err=True)
