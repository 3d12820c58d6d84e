"""``qunfa campaign runs ID`` (a recurring series' runs) and ``qunfa campaign sto-report ID``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qunfa.cli.common import container as _container
from qunfa.services import scheduling, sto
from qunfa.services.campaigns import CampaignError

timing_app = typer.Typer()
out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _when(ts: float | None) -> str:
    return "—" if ts is None else f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M} UTC"


@timing_app.command("runs")
def runs(campaign_id: int, as_json: JsonOpt = False) -> None:
    """List the runs of a recurring series (``options.recurrence``) and its next fire time."""
    try:
        info = scheduling.runs(_container(), campaign_id)
    except CampaignError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps(info, ensure_ascii=False))
        return
    out.print(
        f"series {info['id']} {info['name']!r}: {info['recurrence'] or 'not recurring'}; "
        f"{'approved' if info['approved'] else 'NOT approved (no runs until it is)'}; "
        f"next run {_when(info['next_run_at'])}"
    )
    table = Table("run", "name", "run at", "state", "planned", "last error")
    for r in info["runs"]:
        table.add_row(
            str(r["id"]), r["name"], _when(r["run_at"]), r["state"], str(r["planned"]),
            r["last_error"] or "",
        )  # fmt: skip
    out.print(table)


@timing_app.command("sto-report")
def sto_report(
    campaign_id: int,
    window_hours: Annotated[float, typer.Option(help="attribution window after each send")] = 72,
    as_json: JsonOpt = False,
) -> None:
    """Open and click rates per variant (send-time optimised vs holdout) and the lift."""
    try:
        rep = sto.report(_container(), campaign_id, window_hours)
    except CampaignError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps(rep, ensure_ascii=False))
        return
    table = Table("variant", "planned", "sent", "opened", "open rate", "clicked", "click rate")
    for name, count in sorted(rep["planned"].items()):
        v = rep["variants"].get(name, {})
        table.add_row(
            name, str(count), str(v.get("sent", 0)), str(v.get("opened", 0)),
            f"{v.get('open_rate', 0):.1%}", str(v.get("clicked", 0)),
            f"{v.get('click_rate', 0):.1%}",
        )  # fmt: skip
    out.print(table)
    lift = rep["lift"]
    fmt = {k: "n/a" if v is None else f"{v:+.1%}" for k, v in lift.items()}
    out.print(f"lift over holdout: opens {fmt['open']}, clicks {fmt['click']}")
