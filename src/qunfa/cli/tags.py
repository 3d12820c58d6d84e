"""``qunfa tags``: tag groups, tags (manual, synced, rule), membership and the platform outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from qunfa.bootstrap import Container
from qunfa.services.accounts import AccountError
from qunfa.services.tags import TagError

tags_app = typer.Typer(help="Tags: groups, platform and qunfa tags, rule tags, push.",
                       no_args_is_help=True)  # fmt: skip
console = Console()
err = Console(stderr=True)
T = TypeVar("T")
Account = Annotated[str | None, typer.Option("--account", help="appid/corpid; none: qunfa tag")]


def _c() -> Container:
    c = Container()
    c.migrate()
    return c


def _do(call: Callable[[], T]) -> T:
    """Call a synchronous service method; refusals become the same one-line error."""
    try:
        return call()
    except (TagError, AccountError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _run(value: T | Awaitable[T]) -> T:
    """Run a service call; refusals become a one-line error naming the rule."""
    try:
        if isinstance(value, Awaitable):
            return asyncio.run(value)  # type: ignore[arg-type]
        return value
    except (TagError, AccountError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@tags_app.command("list")
def list_tags(
    account: Account = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Tags of an account (or qunfa's own) with source, members and rule."""
    c = _c()
    rows = [{"id": t.id, "name": t.name, "source": t.source, "members": t.member_count,
             "group_id": t.group_id, "rule": t.rule,
             "platform": t.platform_tag_id or t.platform_ref}
            for t in _do(lambda: c.tags.list_tags(account))]  # fmt: skip
    if as_json:
        console.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("id", "name", "source", "members", "platform id", "rule")
    for r in rows:
        table.add_row(str(r["id"]), str(r["name"]), str(r["source"]), f"{r['members']:,}",
                      str(r["platform"] or ""), str(r["rule"] or ""))  # fmt: skip
    console.print(table)


@tags_app.command("create")
def create(
    name: str,
    account: Account = None,
    group: Annotated[str | None, typer.Option(help="group name or id")] = None,
    rule: Annotated[str | None, typer.Option(help="segment expression: a rule tag")] = None,
    every: Annotated[int, typer.Option(help="minutes between rule evaluations")] = 60,
) -> None:
    """Create a tag (on the platform too when --account is given)."""
    tag = _run(_c().tags.create(name, account=account, group=group, rule=rule,
                                every_minutes=every if rule else None))  # fmt: skip
    console.print(f"tag {tag.id} {tag.name!r} ({tag.source}), {tag.member_count:,} members")


@tags_app.command("delete")
def delete(tag: str, account: Account = None) -> None:
    """Delete a tag here and on its platform."""
    c = _c()
    _run(c.tags.delete(_do(lambda: c.tags.get(tag, account)).id))
    console.print(f"tag {tag!r} deleted")


@tags_app.command("apply")
def apply(
    tag: str,
    ids: Annotated[
        list[int], typer.Argument(help="contact ids (or identity ids with --identities)")
    ],
    account: Account = None,
    identities: Annotated[bool, typer.Option("--identities")] = False,
    remove: Annotated[bool, typer.Option("--remove")] = False,
) -> None:
    """Put a tag on (or --remove it from) people; account tags are queued for the platform."""
    c = _c()
    t = _do(lambda: c.tags.get(tag, account))
    kw: dict[str, Any] = {"identity_ids": ids} if identities else {"contact_ids": ids}
    done = _do(lambda: c.tags.apply(t.id, remove=remove, **kw))
    console.print(f"{done.added:,} added, {done.removed:,} removed")


@tags_app.command("evaluate")
def evaluate(tag: Annotated[str | None, typer.Argument()] = None, account: Account = None) -> None:
    """Re-evaluate one rule tag now (or every due rule tag)."""
    c = _c()
    if tag is None:
        console.print(f"{_do(c.tags.evaluate_due)} rule tags evaluated")
        return
    done = _do(lambda: c.tags.evaluate(_do(lambda: c.tags.get(tag, account)).id))
    console.print(f"{done.added:,} joined, {done.removed:,} left, {done.skipped:,} over the limit")


@tags_app.command("push")
def push() -> None:
    """Send pending tag changes to the platforms now (the sweeper does it too)."""
    c = _c()
    sent = _run(c.tags.push())
    console.print(f"{sent:,} tag changes accepted; outbox: {c.tags.pending()}")


@tags_app.command("group-add")
def group_add(name: str, account: Account = None) -> None:
    """Create a tag group (WeCom or qunfa; Official Accounts have no groups)."""
    g = _do(lambda: _c().tags.create_group(name, account))
    console.print(f"group {g.id} {g.name!r}")


@tags_app.command("groups")
def groups(account: Account = None) -> None:
    table = Table("id", "name", "platform id")
    for g in _do(lambda: _c().tags.groups(account)):
        table.add_row(str(g.id), g.name, g.platform_group_id or "")
    console.print(table)


@tags_app.command("group-delete")
def group_delete(group_id: int) -> None:
    """Delete a group and its tags (on the platform too)."""
    console.print(f"{_run(_c().tags.delete_group(group_id))} tags deleted")
