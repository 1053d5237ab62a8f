"""`agetool central migrate`: parse options, call one library function (psycopg loads inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agetool.edge_runtime.analytics_cli import SSLMODE_HELP, SSLROOTCERT_HELP, central_target

central_app = typer.Typer(help="The chain's central PostgreSQL database the tills sync to.", no_args_is_help=True)


@central_app.command("migrate")
def migrate(
    db: str = typer.Option(..., "--db", envvar="AGETOOL_CENTRAL_URL", show_envvar=True,
                           help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (a role that may create tables)."),
    sslmode: Optional[str] = typer.Option(None, "--sslmode", help=SSLMODE_HELP),
    sslrootcert: Optional[Path] = typer.Option(None, "--sslrootcert", help=SSLROOTCERT_HELP),
) -> None:
    """Create or upgrade the central tables (versioned steps, each in one transaction)."""
    from agetool.edge_runtime.central_db import migrate_central

    target = central_target(db, sslmode, sslrootcert)
    before, after = migrate_central(target)
    typer.echo(f"central database {target.masked}: schema version {before} -> {after}", err=True)
