"""`agetool analytics export` and `agetool analytics report`: parse options, call one library
function each. Nothing heavy is imported here (pandas and matplotlib load inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agetool.errors import AgetoolError

DB_HELP = "The daemon's analytics SQLite file (analytics.sqlite_path; default ~/.local/state/agetool/analytics.sqlite)."
SINCE_HELP = "From this date (YYYY-MM-DD, from its start) or ISO time (UTC unless it says otherwise)."
UNTIL_HELP = "Up to this date (YYYY-MM-DD: that whole day included) or ISO time (excluded)."

SSLMODE_HELP = ("TLS to the central database: disable, allow, prefer, require, verify-ca or verify-full "
                "(checks the server's certificate and name; use it across any network). Default: the URL's "
                "sslmode, else prefer.")
SSLROOTCERT_HELP = "CA certificate(s) the central server's certificate must chain to (verify-ca / verify-full)."

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
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP + " Or a postgresql:// URL: the chain's "
                                     "central database (chain-wide, or one store with --store)."),
    since: Optional[str] = typer.Option(None, "--since", help=SINCE_HELP),
    until: Optional[str] = typer.Option(None, "--until", help=UNTIL_HELP),
    k: int = typer.Option(5, "--k", help="Cells with fewer shoppers / receipts than this show as '<k'."),
    store: Optional[str] = typer.Option(None, "--store", help="With a postgresql:// --db: this store only, per lane."),
    sslmode: Optional[str] = typer.Option(None, "--sslmode", help=SSLMODE_HELP),
    sslrootcert: Optional[Path] = typer.Option(None, "--sslrootcert", help=SSLROOTCERT_HELP),
) -> None:
    """Shoppers per band, hour and lane; receipts, basket value and top categories per band."""
    from agetool.edge_runtime.analytics_report import build_report
    from agetool.edge_runtime.central_db import is_central_url

    if db is not None and is_central_url(db):
        from agetool.edge_runtime.central_report import build_central_report

        result = build_central_report(central_target(db, sslmode, sslrootcert), out, store, since, until, k=k)
    elif store is not None:
        raise AgetoolError("--store: only with a postgresql:// --db (a till's file holds one store)")
    else:
        result = build_report(Path(db) if db is not None else None, out, since, until, k=k)
    typer.echo(f"report: {result.out_dir / 'report.md'} ({result.receipts_shown} receipt(s) and "
               f"{result.shoppers_shown} shopper(s) in the cells shown)", err=True)


def central_target(url: str, sslmode: str | None, sslrootcert: Path | None):  # -> CentralTarget
    from agetool.edge_runtime.central_db import SSL_MODES, CentralTarget

    if sslmode is not None and sslmode not in SSL_MODES:
        raise AgetoolError(f"--sslmode {sslmode}: expected one of {', '.join(SSL_MODES)}")
    if sslrootcert is not None and not sslrootcert.is_file():
        raise AgetoolError(f"--sslrootcert {sslrootcert}: file not found")
    return CentralTarget(url, sslmode, str(sslrootcert) if sslrootcert else None)  # type: ignore[arg-type]


@analytics_app.command("sync")
def sync(
    to: str = typer.Option(..., "--to", envvar="AGETOOL_CENTRAL_URL", show_envvar=True,
                           help="The central database, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (put the "
                           "password in $PGPASSWORD or ~/.pgpass rather than on the command line)."),
    store_id: Optional[str] = typer.Option(None, "--store-id", help="This till's store (default: the host name)."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    batch_rows: int = typer.Option(10000, "--batch-rows", help="Rows per central transaction."),
    retries: int = typer.Option(8, "--retries", help="Retries in a row (1, 2, 4 ... 60 s apart) before giving up."),
    sslmode: Optional[str] = typer.Option(None, "--sslmode", help=SSLMODE_HELP),
    sslrootcert: Optional[Path] = typer.Option(None, "--sslrootcert", help=SSLROOTCERT_HELP),
    resend: bool = typer.Option(False, "--resend", help="Send every row again (e.g. after the central database "
                                "was restored from a backup); rows it has are kept once."),
) -> None:
    """Send the receipts, their items and the band counts the central database lacks (oldest first)."""
    from agetool.edge_runtime.analytics_report import resolve_db
    from agetool.edge_runtime.central_sync import sync_till

    target = central_target(to, sslmode, sslrootcert)
    result = sync_till(target, resolve_db(db), store_id, batch_rows=batch_rows, retries=retries, resend=resend)
    sent = ", ".join(f"{n} {table}" for table, n in result.rows.items()) or "nothing new"
    typer.echo(f"sync: store {result.store_id} -> {target.masked}: {sent} in {result.seconds:.2f} s "
               f"({result.batches} batch(es), {result.retries} retry(ies))", err=True)
