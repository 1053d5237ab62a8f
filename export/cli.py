"""Placeholder; the export issue fills this in."""
import typer


def export() -> None:
    """Export a .keras model to ONNX (not yet implemented)."""
    raise typer.Exit(1)
