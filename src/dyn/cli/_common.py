"""Shared CLI plumbing: expected errors become one line and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from dyn.errors import DynError, SpecError

__all__ = ["EXIT_ERROR", "EXIT_SPEC", "expected_errors", "print_error"]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 1
EXIT_SPEC = 2  # a bad graph file or override, like a usage error


def print_error(message: str) -> None:
    for line in message.splitlines() or [""]:
        sys.stderr.write(f"error: {line}\n")


def expected_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a :class:`DynError` as ``error: ...`` lines and exit non-zero; let bugs raise."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            # Problems already read "FILE:LINE: FIELD: message", like a compiler's.
            sys.stderr.write(f"{exc}\n")
            raise typer.Exit(EXIT_SPEC) from None
        except DynError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except BaseExceptionGroup as group:
            # Task groups wrap what their tasks raise; unwrap when every leaf is expected.
            leaves = _leaves(group)
            if not all(isinstance(leaf, DynError) for leaf in leaves):
                raise
            for leaf in leaves:
                print_error(str(leaf))
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
