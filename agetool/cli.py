"""The `agetool` command. Thin: each command lives in its room's `cli` module, parses options and
calls one library function. Heavy imports (TensorFlow, ONNX Runtime) happen inside commands so
`agetool --help` stays fast."""

from __future__ import annotations

import logging
import sys

import typer

from agetool import __version__
from agetool.benchmarks import cli as bench_cli
from agetool.edge_runtime import cli as runtime_cli
from agetool.edge_runtime.analytics_cli import analytics_app
from agetool.edge_runtime.central_cli import central_app
from agetool.edge_runtime.compliance_cli import compliance_app
from agetool.errors import AgetoolError
from agetool.export import cli as export_cli
from agetool.trainer import cli as trainer_cli

app = typer.Typer(
    name="agetool",
    help="Estimate shoppers' ages at the till: train, export, run the register daemon, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"agetool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


app.add_typer(trainer_cli.data_app, name="data")
app.command("train")(trainer_cli.train)
app.command("evaluate")(trainer_cli.evaluate)
app.command("export")(export_cli.export)
app.command("run")(runtime_cli.run)
app.command("serve")(runtime_cli.serve)
app.command("bench")(bench_cli.bench)
app.add_typer(analytics_app, name="analytics")
app.add_typer(compliance_app, name="compliance")
app.add_typer(central_app, name="central")


def main() -> None:
    """Entry point: user errors become one red line on stderr and a non-zero exit."""
    try:
        app()
    except AgetoolError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
