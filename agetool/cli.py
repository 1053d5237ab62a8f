"""The `agetool` command. Thin: each command lives in its room's `cli` module, parses options and
calls one library function. Heavy imports (TensorFlow, ONNX Runtime) happen inside commands so
`agetool --help` stays fast."""

from __future__ import annotations

import logging
import os
import sys

import typer

from agetool import __version__
from agetool.benchmarks import cli as bench_cli
from agetool.edge_runtime import cli as runtime_cli
from agetool.edge_runtime.analytics_cli import analytics_app
from agetool.edge_runtime.central_cli import central_app
from agetool.edge_runtime.compliance_cli import compliance_app
from agetool.errors import EXIT_USAGE, AgetoolError
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
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """Other libraries' chatter off unless --verbose: TensorFlow's C++ INFO/WARNING lines (oneDNN,
    absl, CPU features) on every TensorFlow command, matplotlib's font-cache INFO lines in reports."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("matplotlib", "PIL", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _no_type_beside_flags() -> None:
    """typer 0.2x prints `<bool>` beside every on/off flag in --help (`--demo <bool>`), which reads
    as if the flag took a value; flags show no type."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) and not getattr(self, "metavar", None) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


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


def _click_exceptions():
    """click's exception classes: vendored inside typer since typer 0.2x, the click package before."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    """Entry point, and the one exit-code rule: every user error is one `error:` line on stderr
    and no traceback; a bad option or argument (click's or ours) exits 2, a bad configuration
    file 78 (ConfigError)."""
    clicks = _click_exceptions()
    _no_type_beside_flags()
    try:
        outcome = app(prog_name="agetool", standalone_mode=False)
    except clicks.NoArgsIsHelpError as exc:
        exc.show()  # `agetool` or `agetool data` alone: the help, as before
        sys.exit(exc.exit_code)
    except clicks.ClickException as exc:  # a bad option, argument or command name
        command = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
        typer.secho(f"error: {command}{exc.format_message()}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, clicks.UsageError) else exc.exit_code)
    except (getattr(clicks, "Abort", typer.Abort), typer.Abort):
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except AgetoolError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    # without standalone mode click returns the code of a typer.Exit (serve's) instead of exiting
    sys.exit(outcome if isinstance(outcome, int) else 0)


if __name__ == "__main__":
    main()
