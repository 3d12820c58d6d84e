"""What every CLI module shares: the consoles, a ready container, the one error format."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from qunfa.bootstrap import Container

console = Console()
err = Console(stderr=True)


def container() -> Container:
    """The container of this installation (``QUNFA_*`` settings), logging set up, schema current."""
    c = Container()
    logging.basicConfig(level=c.settings.log_level, format="%(asctime)s %(name)s %(message)s")
    c.migrate()
    return c


def fail(message: str | Exception) -> typer.Exit:
    """Print ``error: …`` on stderr; the caller raises the returned exit (status 2)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)
