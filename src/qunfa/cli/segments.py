"""``qunfa segments …``: saved segments and count previews. Thin: calls the SegmentService."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.domain.segments import SegmentError
from qunfa.services.accounts import AccountError
from qunfa.services.segments import SegmentServiceError

segments_app = typer.Typer(
    help="Segments: saved audience expressions and count previews (docs/segments.md).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)
ERRORS = (SegmentError, SegmentServiceError, AccountError)


Account = Annotated[str | None, typer.Option(help="account id or appid (scopes tags)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@segments_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="segment name")],
    expression: Annotated[str, typer.Argument(help='e.g. tag("VIP") and last_active_within(30d)')],
    account: Account = None,
    description: Annotated[str, typer.Option(help="what it is for")] = "",
) -> None:
    """Save a segment (validated: errors show the column)."""
    c = _container()
    try:
        seg = c.segments.create(
            name=name, expression=expression, account=account, description=description
        )
    except ERRORS as exc:
        raise _fail(exc) from None
    console.print(f"segment {seg.id} {seg.name!r} saved; count it with `qunfa segments count`")


@segments_app.command("list")
def list_(account: Account = None, as_json: Json = False) -> None:
    """List saved segments."""
    c = _container()
    try:
        rows = [
            {
                "id": s.id,
                "name": s.name,
                "expression": s.expression,
                "account_id": s.account_id,
                "description": s.description,
            }
            for s in c.segments.all(account)
        ]
    except ERRORS as exc:
        raise _fail(exc) from None
    if as_json:
        console.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("id", "name", "account", "expression")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], str(r["account_id"] or "-"), r["expression"])
    console.print(table)


@segments_app.command("show")
def show(ref: Annotated[str, typer.Argument(help="segment id or name")]) -> None:
    """Show a saved segment with its current count."""
    c = _container()
    try:
        seg = c.segments.get(ref)
        p = c.segments.preview(segment=seg.id)
    except ERRORS as exc:
        raise _fail(exc) from None
    console.print_json(
        json.dumps(
            {
                "id": seg.id,
                "name": seg.name,
                "expression": seg.expression,
                "account_id": seg.account_id,
                "description": seg.description,
                "count": p.count,
                "sample": p.sample,
            },
            ensure_ascii=False,
        )
    )


@segments_app.command("count")
def count(
    target: Annotated[str, typer.Argument(help="a saved segment's id or name, or an expression")],
    account: Account = None,
    sample: Annotated[int, typer.Option(help="contact ids to show")] = 10,
    as_json: Json = False,
) -> None:
    """Count a saved segment or an expression (one SQL count) and show a sample."""
    c = _container()
    try:
        saved = c.segments.find(target)
        if saved is not None:
            p = c.segments.preview(segment=saved.id, account=account, sample=sample)
        else:
            p = c.segments.preview(target, account=account, sample=sample)
    except ERRORS as exc:
        raise _fail(exc) from None
    if as_json:
        console.print_json(
            json.dumps(
                {"expression": p.expression, "count": p.count, "sample": p.sample},
                ensure_ascii=False,
            )
        )
        return
    console.print(f"{p.count} contacts match {p.expression}")
    if p.sample:
        console.print(f"sample contact ids: {', '.join(map(str, p.sample))}")


@segments_app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="segment id or name")]) -> None:
    """Delete a saved segment (campaign snapshots keep their expression)."""
    c = _container()
    try:
        c.segments.delete(ref)
    except ERRORS as exc:
        raise _fail(exc) from None
    console.print(f"segment {ref!r} deleted")
