"""``qunfa advise``: which channels suit an audience, a frequency, content and a budget.

Registered in ``cli/main.py`` as a Typer group whose callback is the command, so it reads
``qunfa advise --audience 300 --per-week 3 --content marketing --per-person-data --budget low``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qunfa.domain.advisor import AdvisorError, Need
from qunfa.services.advisor import recommend

advise_app = typer.Typer(help="Recommend channels for an audience (the platform advisor).")
console = Console()
err = Console(stderr=True)


class ContentKind(StrEnum):
    marketing = "marketing"
    notification = "notification"
    education = "education"
    ecommerce = "ecommerce"


class BudgetLevel(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Kind(StrEnum):
    customers = "customers"
    employees = "employees"


@advise_app.callback(invoke_without_command=True)
def advise(
    audience: Annotated[int, typer.Option(help="number of people to reach")],
    per_week: Annotated[float, typer.Option(help="sends per person per week")] = 1.0,
    content: Annotated[
        ContentKind, typer.Option(help="what the messages are")
    ] = ContentKind.marketing,
    per_person_data: Annotated[
        bool, typer.Option("--per-person-data", help="per-person results are needed")
    ] = False,
    budget: Annotated[BudgetLevel, typer.Option(help="low, medium or high")] = BudgetLevel.medium,
    audience_kind: Annotated[Kind, typer.Option(help="customers or employees")] = Kind.customers,
    sms_price: Annotated[
        float | None, typer.Option(help="price per SMS segment, for a cost estimate")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Rank channels, best first, with the reasons (seeds' scenario table + rule files)."""
    need = Need(
        audience, per_week, content.value, per_person_data, budget.value, audience_kind.value
    )
    settings = {"sms_price_per_segment": sms_price} if sms_price is not None else {}
    try:
        advice = recommend(need, settings)
    except AdvisorError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        console.print_json(json.dumps(advice.as_dict(), ensure_ascii=False))
        return
    matched = ", ".join(advice.scenarios) or "none of the seeds' scenarios"
    console.print(f"scenarios: {matched}")
    table = Table("#", "channel", "score", "why", "watch out")
    for i, r in enumerate(advice.ranked, 1):
        name = r.channel if r.supported else f"{r.channel} (not supported by qunfa)"
        table.add_row(
            str(i),
            f"{name}\n{r.title}",
            f"{r.score:g}",
            "\n".join(r.reasons),
            "\n".join(r.warnings),
        )
    console.print(table)
