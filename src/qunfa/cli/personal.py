"""``qunfa personal``: the person's side of the personal-WeChat channel (assisted-manual).

qunfa never drives the WeChat client. ``batches`` shows what to send by hand in 群发助手 (the
text to paste, the friends to pick, the tracked link); ``mark`` records how it went.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from qunfa.bootstrap import Container
from qunfa.channels.wechat_oa import CHINA
from qunfa.cli.common import fail as _fail
from qunfa.services.accounts import AccountError
from qunfa.services.personal import PersonalError, PersonalService

personal_app = typer.Typer(
    help="Personal WeChat (assisted-manual): batches to send by hand, and their marks.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


class Outcome(StrEnum):
    sent = "sent"
    failed = "failed"
    throttled = "throttled"


def _service() -> PersonalService:
    c = Container()
    logging.basicConfig(level=c.settings.log_level, format="%(asctime)s %(name)s %(message)s")
    c.migrate()
    return PersonalService(c)


@personal_app.command("batches")
def batches(
    account: Annotated[str, typer.Argument(help="the personal WeChat account (app id or id)")],
    campaign: Annotated[int | None, typer.Option(help="only this campaign")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The batches to send now: text to paste, friends to pick, the tracked link."""
    try:
        due = _service().due_batches(account, campaign)
    except (AccountError, PersonalError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        # Plain echo, not rich: rich would wrap long lines and break the JSON.
        typer.echo(json.dumps([asdict(b) for b in due], ensure_ascii=False, indent=2))
        return
    if not due:
        console.print("nothing to send now: no batch is waiting for this account")
        return
    for b in due:
        when = (
            datetime.fromtimestamp(b.handed_over_at, CHINA).strftime("%m-%d %H:%M")
            if b.handed_over_at
            else "-"
        )
        console.rule(
            f"[bold]batch {b.batch_id}[/] · {b.campaign} · #{b.batch_no} · "
            f"{len(b.remarks)} friends · since {when}"
        )
        console.print(Panel(b.text, title="paste this text", title_align="left"))
        console.print(f"[bold]friends ({len(b.remarks)}):[/] " + ", ".join(b.remarks))
        if b.link:
            console.print(f"[bold]tracked link:[/] {b.link}")
        for warning in b.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(
            f"then: qunfa personal mark {b.batch_id} sent   "
            "(or failed / throttled --note '…' if WeChat warned or limited the account)"
        )


@personal_app.command("mark")
def mark(
    batch_id: Annotated[int, typer.Argument(help="the batch id shown by `batches`")],
    outcome: Annotated[Outcome, typer.Argument(help="sent | failed | throttled")],
    note: Annotated[str | None, typer.Option(help="what happened (kept with the batch)")] = None,
) -> None:
    """Record how a batch went. ``throttled`` pauses the campaign and cancels the rest."""
    try:
        result = _service().mark(batch_id, outcome.value, note)
    except PersonalError as exc:
        raise _fail(str(exc)) from None
    if not result.changed:
        console.print(f"batch {batch_id} was already marked {outcome.value}; nothing changed")
        return
    console.print(
        f"batch {batch_id} marked [bold]{outcome.value}[/] → {result.batch_state}; "
        f"campaign {result.campaign_state}"
    )
    if result.cancelled or outcome is Outcome.throttled:
        err.print(
            f"[bold yellow]alert:[/] the account was throttled; {result.cancelled} remaining "
            "batches cancelled and the campaign paused. Let the account rest before sending again."
        )
