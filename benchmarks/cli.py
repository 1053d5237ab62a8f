"""Placeholder; the bench issue fills this in."""
import typer


def bench() -> None:
    """Benchmark model variants (not yet implemented)."""
    raise typer.Exit(1)
