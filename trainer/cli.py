"""Placeholder; the trainer issue fills this in."""
import typer

data_app = typer.Typer(help="Inspect and split face data sets.", no_args_is_help=True)


def train() -> None:
    """Train an age model (not yet implemented)."""
    raise typer.Exit(1)


def evaluate() -> None:
    """Evaluate an age model (not yet implemented)."""
    raise typer.Exit(1)
