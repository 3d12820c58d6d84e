"""``qunfa campaign check|submit|approve|reject|comment|review-log|schedule|edit`` (docs/review.md).

Registered on the ``campaign`` sub-app by ``cli/main.py`` (``campaign_app.add_typer(review_app)``
merges these commands into it). Every command takes ``--as USER``, the person doing the step
(default: the operating-system user), because the review log and the audit log name who did
what, and the author of a campaign may not approve it.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.domain.review import ReviewError
from qunfa.services.campaigns import CampaignError

review_app = typer.Typer()
console = Console()
err = Console(stderr=True)
CHINA = ZoneInfo("Asia/Shanghai")


def default_actor() -> str:
    """The OS user: who runs the command is who did the step, unless ``--as`` says otherwise."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER", "")


AsUser = Annotated[
    str | None,
    typer.Option("--as", help="who does this step (default: the OS user); recorded in the logs"),
]


def _when(ts: float | None) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, CHINA).strftime("%Y-%m-%d %H:%M:%S")


def parse_when(text: str, tz: str = "Asia/Shanghai") -> float:
    """``2026-12-01 20:00`` (or ISO 8601, with or without seconds/offset) → epoch seconds.

    A time without an offset is China time unless ``tz`` names another zone.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _fail(
            f"--at {text!r} is not a date and time: use 'YYYY-MM-DD HH:MM' (China time) "
            "or ISO 8601 with an offset"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz))
    return moment.timestamp()


@review_app.command("check")
def campaign_check(
    campaign_id: int,
    actor: AsUser = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check every text field of the campaign: findings underlined, verdict, lint.

    Exits 1 when the verdict is block (unsendable) or review (needs approval).
    """
    from qunfa.compliance import render

    c = _container()
    try:
        result = c.review.check(campaign_id, actor or default_actor())
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(result.summary, ensure_ascii=False))
    else:
        # Built per call, not at import: NO_COLOR / FORCE_COLOR / TERM are read as it runs.
        out = Console()
        plain = out.color_system is None  # no underline shows: mark spans with a ^ line
        for path, report in result.reports:
            if report.findings:
                out.print(f"[bold]{path}[/]")
                out.print(render(report))
        # What the templates insert per person (services/value_check.py): a value's own
        # findings, then the terms a value forms with the template's text beside it.
        entries = [f for f in result.summary["fields"] if str(f["path"]).startswith("values.")]
        values = result.summary.get("values")
        if values:
            out.print(values_line(values, entries))
        channel = str(result.summary["channel"])
        for entry in sorted(entries, key=lambda e: "joined" in e):  # stable: own, then joins
            out.print(render_value_entry(entry, channel, plain=plain))
        for lf in result.lint:
            colour = "red" if lf["action"] == "block" else "yellow"
            out.print(f"[{colour}]{lf['action']}[/] {lf['rule']} {lf['path']}: {lf['message']}")
        counts = result.summary["counts"]
        colour = {"block": "bold red", "review": "bold yellow"}.get(result.verdict, "bold green")
        joins = sum(1 for e in entries if "joined" in e)
        flagged = (
            f", {len(entries)} value finding(s) ({joins} joined to the template)" if values else ""
        )
        out.print(
            f"campaign {campaign_id}: [{colour}]{result.verdict}[/] — "
            f"{len(result.reports)} text field(s){flagged}, {counts['block']} block, "
            f"{counts['review']} review, {counts['warn']} warn"
        )
        summary = c.review.summary(campaign_id)
        if summary["gate"]:
            out.print(f"[yellow]next:[/] {summary['gate']['message']}")
        else:
            out.print(f"[green]next:[/] qunfa campaign send {campaign_id}")
    if result.verdict in ("block", "review"):
        raise typer.Exit(1)


# -- rendering the personalised values' findings --------------------------------------------------
def _severity_colour(severity: str) -> str:
    """The colours of ``compliance.report.render`` (the fields' findings above them); imported
    when rendering, so the CLI does not load the compliance engine to start."""
    from qunfa.compliance.report import SEVERITY_COLOUR

    return SEVERITY_COLOUR.get(severity, "magenta")


def _verdict_colour(verdict: str) -> str:
    from qunfa.compliance.report import VERDICT_COLOUR

    return VERDICT_COLOUR.get(verdict, "bold")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def values_line(values: Mapping[str, Any], entries: list[dict[str, Any]]) -> Text:
    """What the value check covered: every variable with its distinct values, the audience."""
    distinct = values.get("distinct", {})
    checked = ", ".join(f"{v} ({distinct.get(v, 0):,} distinct)" for v in values["variables"])
    return Text.assemble(
        ("personalised values: ", "bold"),
        f"{checked} over {_plural(int(values['contacts']), 'contact')}, "
        f"{_plural(int(values.get('joins', 0)), 'slot')} joined to the template's text — ",
        (f"{len(entries)} flagged", "bold" if entries else "green"),
    )


def render_value_entry(entry: Mapping[str, Any], channel: str, *, plain: bool) -> RenderableType:
    """One ``values.<variable>`` entry of a check report, in the style of the fields' findings.

    A heading (variable, value as the report gives it — names masked —, recipients; for a join
    the slot and where it is), the text with each finding's span underlined — for a join the
    template's text with the value in dim brackets —, the findings, the verdict on the channel.
    ``plain`` (no colour) adds a line of ``^`` under the spans, since no underline shows.
    """
    text = str(entry["text"])
    findings: list[dict[str, Any]] = list(entry["findings"])
    joined: Mapping[str, Any] | None = entry.get("joined")
    who = _plural(int(entry["recipients"]), "recipient")
    if joined is None:
        heading = Text.assemble((str(entry["path"]), "bold"), "  value ", text, f" · {who}")
    else:
        where = ", ".join(
            str(w["field"]) + ("" if w.get("position") is None else f" at {w['position']}")
            for w in joined["at"]
        )
        value = (
            f"its default {joined['value']!r} (no value)"
            if joined.get("default")
            else str(joined["value"])
        )
        heading = Text.assemble(
            (str(entry["path"]), "bold"),
            "  ",
            (str(joined["slot"]), "cyan"),
            f" = {value} · {who} · joined to the template's text in {where}",
        )
    # The value's place in a joined text: shown in brackets, so spans shift past them.
    span = joined.get("span") if joined is not None else None
    a, b = (int(span[0]), int(span[1])) if span else (len(text), len(text))

    def shift(i: int, *, end: bool) -> int:
        if not span:
            return i
        return i + int(i > a if end else i >= a) + int(i > b if end else i >= b)

    body = Text()
    if span:
        body.append(text[:a])
        body.append("[", style="dim")
        body.append(text[a:b], style="italic cyan")
        body.append("]", style="dim")
        body.append(text[b:])
    else:
        body.append(text)
    marked: list[tuple[int, int]] = []
    for f in findings:
        start, end = min(int(f["start"]), len(text)), min(int(f["end"]), len(text))
        lo, hi = shift(start, end=False), shift(end, end=True)
        body.stylize(f"underline bold {_severity_colour(f['severity'])}", lo, hi)
        marked.append((lo, hi))
    parts: list[RenderableType] = [heading, body]
    if plain and "\n" not in body.plain:
        carets = "".join(
            ("^" if any(lo <= i < hi for lo, hi in marked) else " ") * cell_len(ch)
            for i, ch in enumerate(body.plain)
        )
        parts.append(Text(carets.rstrip()))
    table = Table(show_header=True, header_style="bold", expand=False)
    for col in ("matched", "entry", "category", "severity", "action", "suggestion"):
        table.add_column(col)
    for f in findings:
        colour = _severity_colour(f["severity"])
        how = "" if f.get("matched_as") in ("term", "link", None) else f" ({f['matched_as']})"
        table.add_row(
            Text(str(f["text"]), style=f"underline {colour}"),
            str(f["entry"]) + how,
            str(f["category"]),
            Text(str(f["severity"]), style=colour),
            str(f["action"]),
            str(f["suggestion"]),
        )
    verdict = str(entry["verdict"])
    parts += [
        table,
        Text.assemble(
            ("verdict ", "dim"), (verdict, _verdict_colour(verdict)), (f" on {channel}", "dim")
        ),
    ]
    return Group(*parts)


@review_app.command("submit")
def campaign_submit(
    campaign_id: int,
    actor: AsUser = None,
    comment: Annotated[str, typer.Option(help="a note for the reviewer")] = "",
) -> None:
    """Ask for approval (checks the content first if needed)."""
    c = _container()
    try:
        c.review.submit(campaign_id, actor or default_actor(), comment)
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"campaign {campaign_id} submitted; someone else approves it with: "
        f"qunfa campaign approve {campaign_id}"
    )


@review_app.command("approve")
def campaign_approve(
    campaign_id: int,
    actor: AsUser = None,
    comment: Annotated[str, typer.Option(help="optional note")] = "",
) -> None:
    """Approve the campaign's current content (not its author)."""
    c = _container()
    try:
        camp = c.review.approve(campaign_id, actor or default_actor(), comment)
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"campaign {campaign_id} approved by {camp.approved_by}; send it with: "
        f"qunfa campaign send {campaign_id} (or schedule it)"
    )


@review_app.command("reject")
def campaign_reject(
    campaign_id: int,
    comment: Annotated[str, typer.Option(help="what the author must change (required)")],
    actor: AsUser = None,
) -> None:
    """Send the campaign back to its author with a comment."""
    c = _container()
    try:
        c.review.reject(campaign_id, actor or default_actor(), comment)
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"campaign {campaign_id} rejected: {comment}")


@review_app.command("comment")
def campaign_comment(
    campaign_id: int,
    comment: Annotated[str, typer.Argument(help="the note")],
    actor: AsUser = None,
) -> None:
    """Add a note to the campaign's review log."""
    c = _container()
    try:
        c.review.comment(campaign_id, actor or default_actor(), comment)
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print("noted")


@review_app.command("review-log")
def campaign_review_log(
    campaign_id: int, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Review state, what the gate says now, and every review step."""
    c = _container()
    try:
        s = c.review.summary(campaign_id)
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(s, ensure_ascii=False))
        return
    console.print(
        f"[bold]campaign {campaign_id}[/] — {s['state']} · review [bold]{s['review_state']}[/] · "
        f"author {s['created_by'] or '—'} · audience ≈{s['audience_size']:,} "
        f"(threshold {s['threshold']:,}) · check "
        + (s["verdict"] if s["checked"] else "[yellow]not run for the current content[/]")
    )
    if s["scheduled_at"]:
        console.print(f"scheduled for {_when(s['scheduled_at'])} (China time)")
    gate = s["gate"]
    console.print(f"gate: [yellow]{gate['message']}[/]" if gate else "gate: [green]open[/]")
    table = Table("at (China time)", "action", "actor", "comment", "content")
    for r in s["log"]:
        table.add_row(
            _when(r["at"]), r["action"], r["actor"], r["comment"], (r["content_hash"] or "")[:12]
        )
    console.print(table)


@review_app.command("schedule")
def campaign_schedule(
    campaign_id: int,
    at: Annotated[str, typer.Option(help="'YYYY-MM-DD HH:MM' (China time unless --tz)")],
    tz: Annotated[str, typer.Option(help="time zone of --at")] = "Asia/Shanghai",
    actor: AsUser = None,
) -> None:
    """Start the campaign at a time (the worker's sweeper starts it); it must pass the gate now."""
    c = _container()
    when = parse_when(at, tz)
    try:
        c.review.schedule(campaign_id, when, actor or default_actor())
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"campaign {campaign_id} starts at {_when(when)} China time (a running worker starts it)"
    )


@review_app.command("edit")
def campaign_edit(
    campaign_id: int,
    text: Annotated[str | None, typer.Option(help="new text (text messages)")] = None,
    content_json: Annotated[
        str | None, typer.Option("--content", help="the whole new content as JSON")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="read the content JSON from a file")] = None,
    actor: AsUser = None,
) -> None:
    """Change the content. An approval of the old content is voided (submit it again)."""
    c = _container()
    try:
        camp = c.campaigns.get(campaign_id)
        content = _new_content(camp.channel, camp.content, text, content_json, file)
        before = camp.review_state
        camp = c.campaigns.edit_content(campaign_id, content, actor or default_actor())
    except (CampaignError, ReviewError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"campaign {campaign_id} content changed")
    if before == "approved" and camp.review_state != "approved":
        console.print(
            f"[yellow]the approval was voided:[/] run qunfa campaign submit {campaign_id} again"
        )


def _new_content(
    channel: str, old: dict[str, Any], text: str | None, raw: str | None, file: Path | None
) -> dict[str, Any]:
    if file is not None:
        raw = file.read_text(encoding="utf-8")
    if raw is not None:
        try:
            content = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _fail(f"--content is not JSON: {exc}") from None
        if not isinstance(content, dict):
            raise _fail("--content must be a JSON object")
        return content
    if text is None:
        raise _fail("give the new content: --text '…', --content JSON or --file content.json")
    new: dict[str, Any] = json.loads(json.dumps(old))  # a deep copy that keeps every other field
    if isinstance(new.get("text"), dict) and "content" in new["text"]:
        new["text"]["content"] = text
    elif isinstance(new.get("text"), str) or channel in ("personal_wechat",):
        new["text"] = text
    else:
        raise _fail(
            f"--text works for text messages; this {channel} content has no text field: "
            "use --content JSON"
        )
    return new
