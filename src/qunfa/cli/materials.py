"""``qunfa materials …``: the material library (素材库). Thin: calls ``container.materials``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.content.check import ContentCheck
from qunfa.services.accounts import AccountError
from qunfa.services.materials import KINDS, MaterialError

materials_app = typer.Typer(
    help="Material library: texts, articles, images, videos, cards, files (docs/content.md).",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)
ERRORS = (MaterialError, AccountError, ValueError)
_COLOUR = {"block": "bold red", "warn": "yellow"}
_VERDICT = {"block": "bold red", "review": "yellow", "pass_with_warnings": "cyan", "pass": "green"}


def _body(kind: str, text: str | None, body: str | None, url: str | None) -> dict[str, Any] | None:
    """The version body from the options: ``--body`` JSON (or ``@file.json``) wins."""
    if body is not None:
        raw = Path(body[1:]).read_text(encoding="utf-8") if body.startswith("@") else body
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise _fail(f"--body is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise _fail('--body must be an object: {"default": {...}, "<channel>": {...}}')
        return parsed
    default: dict[str, Any] = {}
    if text is not None:
        default["text"] = text
    if url is not None:
        default["url"] = url
    if default or kind in ("image", "video", "file"):
        return {"default": default}
    return None


def _version_row(v: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_at": v.created_at,
        "created_by": v.created_by,
        "body": v.body,
        "file": v.file_path,
        "sha256": v.sha256,
        "size": v.size,
        "mime": v.mime,
        "width": v.width,
        "height": v.height,
        "duration": v.duration,
    }


Text_ = Annotated[str | None, typer.Option("--text", help="the text (default variant)")]
File_ = Annotated[Path | None, typer.Option("--file", help="image/video/file to store")]
Body_ = Annotated[
    str | None, typer.Option("--body", help='JSON {"default": {…}, "<channel>": {…}} or @file')
]
Url_ = Annotated[str | None, typer.Option("--url", help="link card: the URL")]
AsJson = Annotated[bool, typer.Option("--json")]


@materials_app.command("add")
def add(
    kind: Annotated[str, typer.Argument(help=" | ".join(KINDS))],
    title: Annotated[str, typer.Argument(help="a title people recognise")],
    text: Text_ = None,
    file: File_ = None,
    body: Body_ = None,
    url: Url_ = None,
    actor: Annotated[str, typer.Option("--as", help="who adds it")] = "",
) -> None:
    """Add a material (version 1)."""
    c = _container()
    try:
        data = file.read_bytes() if file else None
        v = c.materials.create(
            kind=kind, title=title, body=_body(kind, text, body, url), data=data,
            filename=file.name if file else "", created_by=actor,
        )  # fmt: skip
    except (*ERRORS, OSError) as exc:
        raise _fail(exc) from None
    facts = f" — {v.mime}, {v.size:,} bytes" if v.size is not None else ""
    if v.width:
        facts += f", {v.width}×{v.height}"
    if v.duration:
        facts += f", {v.duration:g} s"
    console.print(f"material {v.material_id} v{v.version} added{facts}")


@materials_app.command("version")
def version(
    material_id: int,
    text: Text_ = None,
    file: File_ = None,
    body: Body_ = None,
    url: Url_ = None,
    actor: Annotated[str, typer.Option("--as", help="who edits it")] = "",
) -> None:
    """Add a new version (old versions never change; campaigns keep the one they checked)."""
    c = _container()
    try:
        kind = c.materials.get(material_id).kind
        v = c.materials.new_version(
            material_id, body=_body(kind, text, body, url),
            data=file.read_bytes() if file else None, filename=file.name if file else "",
            created_by=actor,
        )  # fmt: skip
    except (*ERRORS, OSError) as exc:
        raise _fail(exc) from None
    console.print(f"material {material_id} v{v.version} added")


@materials_app.command("list")
def list_(
    include_archived: Annotated[bool, typer.Option("--all", help="archived too")] = False,
    as_json: AsJson = False,
) -> None:
    """List the library."""
    c = _container()
    rows = [
        {"id": m.id, "kind": m.kind, "title": m.title, "version": m.current_version,
         "archived": m.archived, "updated_at": m.updated_at}
        for m in c.materials.all(include_archived)
    ]  # fmt: skip
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("id", "kind", "title", "version")
    for r in rows:
        table.add_row(str(r["id"]), r["kind"], r["title"], f"v{r['version']}")
    console.print(table)


@materials_app.command("show")
def show(
    material_id: int,
    version_: Annotated[int | None, typer.Option("--version", help="default: current")] = None,
    as_json: AsJson = False,
) -> None:
    """One material: a version's body and file facts, and where it was uploaded."""
    c = _container()
    try:
        m = c.materials.get(material_id)
        v = c.materials.version(material_id, version_)
    except ERRORS as exc:
        raise _fail(exc) from None
    uploads = [
        {"account_id": u.account_id, "channel": u.channel, "kind": u.kind,
         "media_id": u.media_id, "uploaded_at": u.uploaded_at, "expires_at": u.expires_at}
        for u in c.materials.uploads(v.id)
    ]  # fmt: skip
    out = {"id": m.id, "kind": m.kind, "title": m.title, "current_version": m.current_version,
           **_version_row(v), "uploads": uploads}  # fmt: skip
    if as_json:
        print(json.dumps(out, ensure_ascii=False))
        return
    console.print(f"[bold]#{m.id} {m.title}[/] — {m.kind} — v{v.version} of {m.current_version}")
    if v.file_path:
        console.print(f"  file {v.file_path} ({v.mime}, {v.size:,} bytes)")
    console.print_json(json.dumps(v.body, ensure_ascii=False))
    for u in uploads:
        where = f"account {u['account_id']} ({u['channel']}, {u['kind']})"
        console.print(f"  uploaded to {where}: {u['media_id']}")


@materials_app.command("versions")
def versions(material_id: int, as_json: AsJson = False) -> None:
    """Every version of a material."""
    c = _container()
    rows = [_version_row(v) for v in c.materials.versions(material_id)]
    if not rows:
        raise _fail(f"no material {material_id}; see `qunfa materials list`")
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("version", "by", "file", "body")
    for r in rows:
        table.add_row(f"v{r['version']}", r["created_by"], r["mime"] or "—",
                      json.dumps(r["body"], ensure_ascii=False)[:80])  # fmt: skip
    console.print(table)


@materials_app.command("upload")
def upload(
    material_id: int,
    account: Annotated[str, typer.Option(help="account id or appid")],
    channel: Annotated[str | None, typer.Option(help="default: the account's channel")] = None,
    version_: Annotated[int | None, typer.Option("--version", help="default: current")] = None,
    kind: Annotated[
        str | None, typer.Option(help="temporary | permanent (OA default permanent)")
    ] = None,
) -> None:
    """Upload a media material to a platform account now (sends also do it, once)."""
    from qunfa.channels.http import HttpClient

    c = _container()
    try:
        acc = c.accounts.get(account)
        v = c.materials.version(material_id, version_)

        async def go() -> str:
            async with HttpClient() as http:
                got: str = await c.materials.media_id(
                    v.id, acc, channel or acc.channel, http, kind=kind
                )
                return got

        media_id = asyncio.run(go())
    except ERRORS as exc:
        raise _fail(exc) from None
    console.print(f"material {material_id} v{v.version} on {acc.app_id}: media_id {media_id}")


@materials_app.command("uses")
def uses(material_id: int, as_json: AsJson = False) -> None:
    """The campaigns that used a material, and which version."""
    c = _container()
    rows = [
        {"version": u.version, "campaign_id": u.campaign_id, "used_at": u.used_at}
        for u in c.materials.uses(material_id)
    ]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print(f"material {material_id} has not been used")
    for r in rows:
        console.print(f"  v{r['version']} in campaign {r['campaign_id']}")


@materials_app.command("preview")
def preview(
    contact: Annotated[int, typer.Option(help="contact id")],
    channel: Annotated[str, typer.Option(help="channel to render for")],
    material: Annotated[int | None, typer.Option(help="material id")] = None,
    version_: Annotated[int | None, typer.Option("--version", help="default: current")] = None,
    text: Annotated[str | None, typer.Option(help="a template text instead")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="campaign variable k=v")] = None,
    as_json: AsJson = False,
) -> None:
    """Render a material (or a text) as one contact would receive it."""
    from qunfa.content.check import text_content

    values: dict[str, str] = {}
    for item in var or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--var {item!r} must look like key=value")
        values[key] = value
    if material is not None:
        content: dict[str, Any] = {"material_id": material}
        if version_ is not None:
            content["version"] = version_
    elif text is not None:
        content = text_content(text, channel)
    else:
        raise _fail("give --material ID or --text '…'")
    if values:
        content["variables"] = values
    c = _container()
    try:
        out = c.materials.preview(content, contact, channel)
    except ERRORS as exc:
        raise _fail(exc) from None
    print_preview(out, as_json)


def print_preview(out: dict[str, Any], as_json: bool) -> None:
    """A preview as JSON, or its text fields one per line."""
    if as_json:
        print(json.dumps(out, ensure_ascii=False))
        return
    from qunfa.content.templating import template_fields

    console.print(f"[dim]contact {out['contact_id']} on {out['channel']}[/]")
    for field, value in template_fields(out["content"]):
        console.print(Text.assemble((f"{field}: ", "dim"), value))


def render_content_check(check: ContentCheck, verdict: str) -> RenderableType:
    """Lint findings and template issues as a coloured table, then the overall verdict."""
    parts: list[RenderableType] = []
    if check.lint or check.template:
        table = Table("field", "rule", "severity", "what", "fix", title=f"{check.channel} lint")
        for i in check.template:
            table.add_row(i.field, i.rule_id, Text("block", style=_COLOUR["block"]),
                          i.message, i.suggestion or "")  # fmt: skip
        for f in check.lint:
            table.add_row(f.field, f.rule_id, Text(f.severity, style=_COLOUR[f.severity]),
                          f.message, f.suggestion)  # fmt: skip
        parts.append(table)
    parts.append(
        Text.assemble(
            ("overall ", "dim"),
            (verdict, _VERDICT.get(verdict, "magenta")),
            (" (compliance, lint and templates)", "dim"),
        )
    )
    return Group(*parts)
