"""Placeholder; the daemon issue fills this in."""
import typer


def run() -> None:
    """Estimate ages on an image, folder, video or camera (not yet implemented)."""
    raise typer.Exit(1)


def serve() -> None:
    """Run the register daemon (not yet implemented)."""
    raise typer.Exit(1)
