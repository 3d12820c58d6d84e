"""``qunfa events`` (import behaviour events and orders) and ``qunfa facts`` (refresh, show).

Thin: each command calls :class:`~qunfa.services.behaviour.BehaviourService` from the
container and renders what it returns.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.services.behaviour import BehaviourError

events_app = typer.Typer(
    help="Behaviour events: orders, interactions, messages.", no_args_is_help=True
)
facts_app = typer.Typer(help="Per-person facts, RFM scores and layers.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _when(value: Any) -> str:
    if not isinstance(value, float):
        return "" if value is None else str(value)
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@events_app.command("import")
def events_import(
    file: Annotated[Path, typer.Argument(help="CSV file with a header line")],
    kind: Annotated[
        str | None, typer.Option(help="event kind when the file has no 'kind' column")
    ] = None,
    account: Annotated[
        str | None, typer.Option(help="account (id or app id) for openid/userid columns")
    ] = None,
) -> None:
    """Import events or orders (order_id, phone|email|openid|contact_id, amount, at, device)."""
    from qunfa.cli.main import progress_bar

    c = _container()
    try:
        with progress_bar() as bar:
            r = c.behaviour.import_csv(file, kind, account, bar)
    except BehaviourError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"{r.rows:,} rows: {r.inserted:,} stored, {r.duplicates:,} already there, "
        f"{r.unknown:,} unknown people, {r.invalid:,} invalid in {r.seconds:.1f}s"
    )
    if r.errors_file:
        console.print(f"rejected rows (row, column, value, reason): {r.errors_file}")
    console.print("facts update on the next refresh (`qunfa facts refresh`, or the worker's)")


@facts_app.command("refresh")
def facts_refresh(
    rebuild: Annotated[bool, typer.Option(help="recompute everyone from scratch")] = False,
) -> None:
    """Bring per-person facts and RFM up to date (incremental unless --rebuild)."""
    c = _container()
    with console.status("refreshing facts…"):
        r = c.behaviour.rebuild() if rebuild else c.behaviour.refresh()
    console.print(
        f"{r.mode}: facts of {r.contacts:,} people changed, {r.rfm:,} RFM scores rewritten "
        f"in {r.seconds:.2f}s"
    )


@facts_app.command("show")
def facts_show(
    contact: Annotated[int, typer.Argument(help="contact id")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """One person's facts, RFM scores and built-in layers."""
    c = _container()
    facts = c.behaviour.facts(contact)
    layers = c.behaviour.layers(contact)
    if as_json:
        console.print_json(json.dumps({"contact_id": contact, "facts": facts, "layers": layers}))
        return
    if facts is None:
        console.print(f"contact {contact} has no events yet; layers: {', '.join(layers) or '-'}")
        return
    table = Table(title=f"contact {contact}", show_header=False)
    for name, value in facts.items():
        shown = _when(value) if name.endswith("_at") else str(value)
        table.add_row(name, shown)
    table.add_row("layers", ", ".join(layers) or "-")
    console.print(table)
