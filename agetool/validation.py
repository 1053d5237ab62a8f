"""The one adapter from a pydantic ValidationError to the one-line message a user reads.

Every place that validates user input (options, config files, model cards, metadata, POS request
bodies) reports the FIRST problem as `<what>: <expected>` and how many more there are; only
*what* differs (an option flag, a file's key and line, a body field), so callers pass `name_of`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pydantic import ValidationError

from agetool.errors import AgetoolError

Loc = tuple[Any, ...]
# pydantic adds the member type of a union to the location ("source", "int"); users never wrote it.
_UNION_TAGS = frozenset({"int", "str", "float", "bool", "list", "dict", "none", "function-after", "function-before"})


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a validated value, in user terms."""

    loc: Loc
    message: str
    n_more: int


def first_problem(exc: ValidationError, unknown_key: str = "unknown field") -> Problem:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and part in _UNION_TAGS))
    message = unknown_key if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return Problem(loc, message, len(errors) - 1)


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def describe(exc: ValidationError, name_of: Callable[[Loc], str] = dotted, unknown_key: str = "unknown field") -> str:
    """`<name_of(loc)>: <message>` plus `(and N more problem(s))`: one line, no input echoed
    (an input can be a token or a password)."""
    problem = first_problem(exc, unknown_key)
    more = f" (and {problem.n_more} more problem(s))" if problem.n_more else ""
    return f"{name_of(problem.loc)}: {problem.message}{more}"


def option_flag(loc: Loc, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag that set a field: `flags` for the ones not spelled --field-name."""
    field = str(loc[0]) if loc else "options"
    return (flags or {}).get(field) or "--" + field.replace("_", "-")


def option_error(exc: ValidationError, flags: Mapping[str, str] | None = None) -> AgetoolError:
    """A bad command-line option value: exit 2 (bad usage), naming the flag."""
    return AgetoolError(describe(exc, lambda loc: option_flag(loc, flags)))
