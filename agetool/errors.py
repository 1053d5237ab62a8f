"""One exception type for every error a user can cause; the CLI prints it as one line."""

from __future__ import annotations

# sysexits.h: EX_USAGE-like data/option errors exit 2, configuration errors EX_CONFIG (78).
EXIT_USAGE = 2
EXIT_CONFIG = 78


class AgetoolError(Exception):
    """A problem with the user's input (file, field, option), not a bug.

    The message names the file or field and what was expected; the CLI prints it without a
    traceback and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(AgetoolError):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_CONFIG)
