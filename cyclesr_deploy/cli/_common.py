"""Helpers shared by the CLI commands: a stderr console and uniform error reporting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

#: Logs and progress go to stderr; results go to stdout or files.
err = Console(stderr=True)
out = Console()

EXIT_INPUT = 2  # bad input (same code typer/click use for usage errors)
EXIT_PARTIAL = 1  # some items failed, the others were processed


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library input errors into one red line on stderr and exit code 2 (no traceback)."""
    from pydantic import ValidationError

    from cyclesr_deploy.errors import InputError, MissingExtraError

    try:
        yield
    except (InputError, MissingExtraError, FileExistsError, ValidationError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from exc
    except OSError as exc:  # e.g. the target is open in another program (Windows), disk full
        err.print(f"[bold red]I/O error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_PARTIAL) from exc
