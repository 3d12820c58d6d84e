"""``qunfa contacts``: import and export people, show one, list and undo merges.

Thin: every command calls :class:`~qunfa.services.contacts.ContactService` or
:class:`~qunfa.services.people.PeopleService` from the container.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.services.accounts import AccountError

contacts_app = typer.Typer(
    help="People: import, export (audited), identities and merges.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)


class Format(StrEnum):
    csv = "csv"
    xlsx = "xlsx"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (containers)
        return "cli"


@contextmanager
def _progress() -> Iterator[Any]:
    """Rows done so far (the total of a streamed file is not known up front)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


def _mapping(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep:
            raise _fail(f"--map {pair!r}: write COLUMN=FIELD (FIELD '-' skips the column)")
        out[column] = target
    return out


@contacts_app.command("import")
def contacts_import(
    file: Annotated[Path, typer.Argument(help="CSV or XLSX file with a header line")],
    account: Annotated[
        str | None, typer.Option(help="account id or app id the platform ids belong to")
    ] = None,
    column: Annotated[
        str | None,
        typer.Option(help="with --account: the column holding its ids (default: the kind's name)"),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="COLUMN=FIELD, e.g. 手机号码=phone or 备注=- (repeatable)"),
    ] = None,
    no_merge: Annotated[bool, typer.Option("--no-merge", help="skip the merge pass")] = False,
) -> None:
    """Import people (phones, e-mails, names, attributes, tags, platform ids)."""
    from qunfa.services.contacts import ImportError_

    c = _container()
    mapping = _mapping(map_ or [])
    try:
        with _progress() as bar:
            if account is not None and not mapping:
                r = c.contacts.import_csv(account, file, column, bar)
            else:
                if column is not None:
                    raise _fail("--column needs --account (or use --map COLUMN=FIELD)")
                r = c.contacts.import_file(
                    file, account=account, mapping=mapping, progress=bar, merge=not no_merge,
                    actor=_actor(),
                )  # fmt: skip
    except (ImportError_, AccountError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"{r.rows:,} rows: {r.imported:,} imported ({r.new:,} new people, {r.updated:,} "
        f"updated), {r.rejected:,} rejected, {r.field_errors:,} fields left out, "
        f"{r.merged:,} merges in {r.seconds:.1f}s" + (" (bulk load)" if r.bulk_load else "")
    )
    if r.errors_file:
        console.print(f"problems (row, column, value, reason): {r.errors_file}")


@contacts_app.command("export")
def contacts_export(
    out: Annotated[Path, typer.Option("--out", help="file to write")],
    reason: Annotated[str, typer.Option(help="why the data leaves qunfa (audited)")],
    segment: Annotated[str | None, typer.Option(help="segment expression")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every live person")] = False,
    fmt: Annotated[Format | None, typer.Option("--format", help="csv or xlsx")] = None,
) -> None:
    """Export people (decrypted) to CSV/XLSX; the export is written to the audit log."""
    from qunfa.services.contacts import ExportError

    if (segment is None) == (not all_):
        raise _fail("give either --segment EXPR or --all")
    c = _container()
    try:
        with _progress() as bar:
            r = c.contacts.export(
                out, reason=reason, segment=segment, fmt=fmt.value if fmt else None,
                actor=_actor(), progress=bar,
            )  # fmt: skip
    except ExportError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{r.rows:,} people written to {r.path} in {r.seconds:.1f}s (audit {r.audit_id})")


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at else ""


@contacts_app.command("show")
def contacts_show(
    contact_id: Annotated[int, typer.Argument(help="contact id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One person with their identities (decrypted), tags and merges."""
    from qunfa.services.people import PeopleError

    try:
        p = _container().people.get(contact_id)
    except PeopleError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(asdict(p), ensure_ascii=False))
        return
    merged = f" (merged into {p.merged_into})" if p.merged_into else ""
    console.print(f"[bold]contact {p.id}[/] {p.name or ''}{merged}")
    for label, value in (
        ("city", p.city), ("province", p.province), ("gender", p.gender),
        ("birthday", p.birthday), ("timezone", p.timezone),
        ("registered", _when(p.registered_at)), ("tags", ", ".join(p.tags)),
        ("attrs", json.dumps(p.attrs, ensure_ascii=False) if p.attrs else ""),
    ):  # fmt: skip
        if value:
            console.print(f"  {label:<11}{value}")
    table = Table("id", "kind", "value", "account", "subscribed")
    for i in p.identities:
        table.add_row(str(i.id), i.kind, i.value, i.account or "—", "yes" if i.subscribed else "no")
    console.print(table)
    if p.merges:
        _merge_table(p.merges)


def _merge_table(merges: list[Any]) -> None:
    table = Table("merge", "survivor", "absorbed", "by", "identities", "filled", "at", "undone")
    for m in merges:
        table.add_row(
            str(m.id), str(m.survivor_id), str(m.absorbed_id), m.matched_kind,
            str(len(m.identity_ids)), ", ".join(sorted(m.filled)), _when(m.merged_at),
            _when(m.undone_at),
        )  # fmt: skip
    console.print(table)


@contacts_app.command("merges")
def contacts_merges(
    contact: Annotated[int | None, typer.Option(help="only merges involving this contact")] = None,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent merges of people (newest first)."""
    merges = _container().people.merges(limit=limit, contact_id=contact)
    if as_json:
        console.print_json(json.dumps([asdict(m) for m in merges]))
        return
    _merge_table(merges)


@contacts_app.command("unmerge")
def contacts_unmerge(merge_id: Annotated[int, typer.Argument(help="merge id")]) -> None:
    """Undo a merge: the absorbed person gets exactly their identities back."""
    from qunfa.services.people import PeopleError

    try:
        m = _container().people.unmerge(merge_id, actor=_actor())
    except PeopleError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"merge {m.id} undone: contact {m.absorbed_id} has its {len(m.identity_ids)} "
        f"identities back from {m.survivor_id}"
    )


@contacts_app.command("merge-run")
def contacts_merge_run() -> None:
    """Merge every group of people sharing a unionid, phone or e-mail now."""
    done = _container().people.merge_pending(actor=_actor())
    console.print(f"{len(done):,} merges")
    if done:
        _merge_table(done)
