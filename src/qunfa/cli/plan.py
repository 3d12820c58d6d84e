"""``qunfa campaign plan ID [--dry-run]`` and ``qunfa quota show ACCOUNT`` (docs/quotas.md).

``plan_app`` is merged into the ``campaign`` sub-app and ``quota_app`` registered as ``quota``
by ``cli/main.py``. Both render what a service returns; nothing is computed here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qunfa.cli.common import container as _container
from qunfa.cli.common import fail as _fail
from qunfa.domain.quota import CHINA, QuotaError
from qunfa.services.campaigns import CampaignError

plan_app = typer.Typer()
quota_app = typer.Typer(help="Platform quotas: usage, reservations, what is left.")
console = Console()
err = Console(stderr=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, CHINA).strftime("%Y-%m-%d %H:%M")


def render_dry_run(r: dict[str, Any]) -> None:
    console.print(
        f"[bold]campaign {r['campaign_id']}[/] dry run: {r['recipients']} of {r['audience']} "
        f"recipient(s) in {r['batches']} batch(es), {r['channel']} ({r['mode']}); "
        f"policy over caps/quotas: [bold]{r['policy']}[/]"
    )
    reach = Table("channel", "total", "now", "later", title="reach")
    for ch, v in r["reach"].items():
        reach.add_row(ch, str(v.get("total")), str(v.get("now", "-")), str(v.get("later", "-")))
    console.print(reach)
    if r["dropped"] or r["deferred"]:
        why = Table("reason", "dropped", "deferred", title="who was held back, and why")
        for reason in sorted(set(r["dropped"]) | set(r["deferred"])):
            why.add_row(reason, str(r["dropped"].get(reason, 0)), str(r["deferred"].get(reason, 0)))
        console.print(why)
    if r.get("fallback"):
        fb = r["fallback"]
        console.print(f"fallback: {fb['recipients']} recipient(s) on {fb['channel']}")
    if r.get("sms_cost"):
        c = r["sms_cost"]
        price = c["price_per_segment"]
        est = f"≈ {c['estimate']}" if c["estimate"] is not None else "(set sms_price_per_segment)"
        console.print(
            f"SMS: {c['segments_per_message']} segment(s) a message, {c['segments']} in all "
            f"× {price if price is not None else '?'} {est}"
        )
    per_day = r["timeline"]["per_day"]
    if per_day:
        tl = Table("day (China time)", "recipients", title="timeline")
        for day, n in per_day.items():
            tl.add_row(day, str(n))
        console.print(tl)
    risk = r["risk"]
    colour = "red" if risk["score"] >= 50 else "yellow" if risk["score"] >= 20 else "green"
    console.print(f"risk: [bold {colour}]{risk['score']}[/]/100")
    for reason in risk["reasons"]:
        console.print(f"  +{reason['points']} {reason['reason']}")
    if r.get("note"):
        console.print(f"note: {r['note']}")


@plan_app.command("plan")
def plan(
    campaign_id: int,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what planning would do, change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Plan a draft (materialise recipients and batches), or with --dry-run report what
    planning would do: reach, who is dropped and why, cost, timeline, risk."""
    c = _container()
    try:
        if dry_run:
            report = c.dryrun.run(campaign_id)
        else:
            done = c.campaigns.plan(campaign_id)
            report = {"campaign_id": campaign_id, "recipients": done.recipients,
                      "batches": done.batches, "seconds": round(done.seconds, 3)}  # fmt: skip
    except (CampaignError, QuotaError) as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:  # the review gate and other refusals name their rule
        raise _fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(report, default=str))
    elif dry_run:
        render_dry_run(report)
    else:
        console.print(
            f"campaign {campaign_id}: planned {report['recipients']} recipient(s) in "
            f"{report['batches']} batch(es)"
        )


@quota_app.command("show")
def show(
    account: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per rule and period: limit, sent (qunfa), reported (platform), reserved, remaining."""
    c = _container()
    try:
        rows = c.quota.show(account)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    t = Table("channel", "rule", "scope", "period", "limit", "sent", "reported", "reserved",
              "remaining", "resets", title=f"quotas of {account}")  # fmt: skip
    for r in rows:
        t.add_row(
            r["channel"], r["rule"], r["scope"], r["period_key"], str(r["limit"]),
            str(r.get("sent", "per recipient")), str(r.get("reported", "-")),
            str(r.get("reserved", "-")), str(r.get("remaining", "-")), _when(r["resets_at"]),
        )  # fmt: skip
    console.print(t)
