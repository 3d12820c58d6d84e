"""Console pages. Read-only so far: the campaign list with live counts and review state."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from qunfa.api.deps import ContainerDep
from qunfa.console.i18n import STATE_KEY, strings

router = APIRouter(tags=["console"], include_in_schema=False)
_env = Environment(
    loader=FileSystemLoader(str(resources.files("qunfa.console") / "templates")),
    autoescape=select_autoescape(["html"]),
)


def _row(status: dict[str, Any], t: dict[str, str]) -> dict[str, Any]:
    d = status["deliveries"]
    planned = max(1, status["planned"])
    done = d.get("sent", 0) + d.get("failed", 0) + d.get("unknown", 0) + d.get("suppressed", 0)
    return {
        **status,
        "state_label": t[STATE_KEY.get(status["state"], status["state"])],
        "sent": d.get("sent", 0),
        "failed": d.get("failed", 0),
        "unknown": d.get("unknown", 0),
        "skipped": d.get("skipped", 0),
        "review_label": t.get(f"review_{status['review']['state']}", status["review"]["state"]),
        "pct": round(100 * done / planned),
    }


@router.get("/", response_class=HTMLResponse)
def campaigns_page(c: ContainerDep, lang: str | None = None) -> HTMLResponse:
    code, t = strings(lang)  # zh-CN unless ?lang=en
    rows = [_row(s, t) for s in c.campaigns.all()]
    html = _env.get_template("campaigns.html").render(t=t, lang=code, rows=rows)
    return HTMLResponse(html)
