"""Helpers shared by the CLI commands: error translation, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from medsynth.errors import MedsynthError

F = TypeVar("F", bound=Callable[..., Any])


class CleanError(click.ClickException):
    """A MedsynthError shown as one line ("Error: <file>: <problem>") with its exit code."""

    def __init__(self, err: MedsynthError) -> None:
        super().__init__(str(err).replace("\n", " "))
        self.exit_code = err.exit_code  # type: ignore[misc]  # click declares it on the class


def handle_errors(func: F) -> F:
    """Turn medsynth's own exceptions (and Ctrl-C) into a clean one-line message, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedsynthError as err:
            raise CleanError(err) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: only complete files were kept.", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (for --json)."""
    click.echo(json.dumps(obj, indent=2, default=str))
