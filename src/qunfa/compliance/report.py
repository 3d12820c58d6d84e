"""Findings, the per-channel policy and verdicts, and the report (JSON for the API, rich for CLI).

Verdict on a channel: ``block`` if any finding's action there is block, else ``review`` if any is
review, else ``pass_with_warnings`` if there are findings, else ``pass``. The action of a finding is
looked up in ``data/policy.toml`` by (channel, category).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

Action = Literal["block", "review", "warn"]
Verdict = Literal["block", "review", "pass_with_warnings", "pass"]
ACTIONS: tuple[Action, ...] = ("warn", "review", "block")
_VERDICT_OF: dict[Action, Verdict] = {
    "block": "block",
    "review": "review",
    "warn": "pass_with_warnings",
}
SEVERITY_COLOUR = {"high": "red", "medium": "yellow", "low": "cyan"}
VERDICT_COLOUR = {
    "block": "bold red",
    "review": "bold yellow",
    "pass_with_warnings": "yellow",
    "pass": "bold green",
}


def _action(value: object, where: str) -> Action:
    for a in ACTIONS:
        if value == a:
            return a
    raise ValueError(f"{where}: unknown action {value!r} (expected block, review or warn)")


@dataclass(frozen=True)
class Policy:
    """Action per (channel, category); ``default`` covers unlisted pairs, ``*`` any category."""

    default: dict[str, Action]
    channels: dict[str, dict[str, Action]]
    checked: str = ""

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        data = tomllib.loads(text)
        default = {k: _action(v, f"default.{k}") for k, v in data["default"].items()}
        channels = {
            ch: {k: _action(v, f"channels.{ch}.{k}") for k, v in cats.items()}
            for ch, cats in data.get("channels", {}).items()
        }
        return cls(default, channels, str(data.get("checked", "")))

    @staticmethod
    @cache
    def builtin() -> Policy:
        root = resources.files(__package__).joinpath("data")
        return Policy.from_toml(root.joinpath("policy.toml").read_text(encoding="utf-8"))

    def check_channel(self, channel: str) -> None:
        if channel not in self.channels:
            known = ", ".join(sorted(self.channels))
            raise ValueError(f"unknown channel {channel!r} (known: {known})")

    def action(self, channel: str, category: str) -> Action:
        self.check_channel(channel)
        own = self.channels[channel]
        if category in own:
            return own[category]
        return self.default.get(category) or self.default.get("*", "review")

    def verdict(self, channel: str, categories: Iterable[str]) -> Verdict:
        worst = -1
        for c in categories:
            worst = max(worst, ACTIONS.index(self.action(channel, c)))
        return "pass" if worst < 0 else _VERDICT_OF[ACTIONS[worst]]


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str  # "<category>:<entry>" for lexicon hits, "<link kind>:<host>" for links
    category: str
    severity: str
    action: Action  # on the report's channel
    text: str  # the matched text as it appears in the ORIGINAL message
    start: int  # span in the original message: text == message[start:end]
    end: int
    entry: str  # the lexicon entry (or URL) it matched
    matched_as: str  # term / pinyin / initials / link
    suggestion: str
    lexicon: str = ""
    detail: str = ""


@dataclass(slots=True)
class Report:
    text: str
    channel: str
    findings: tuple[Finding, ...] = ()
    verdict: Verdict = "pass"
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # every channel of the policy

    @property
    def passed(self) -> bool:
        return self.verdict in ("pass", "pass_with_warnings")

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "verdict": self.verdict,
            "verdicts": dict(self.verdicts),
            "findings": [asdict(f) for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def render(self, console: Console) -> None:
        console.print(render(self))


def render(report: Report, text: str | None = None) -> RenderableType:
    """The message with each finding's span underlined in its severity colour, then a table."""
    text = report.text if text is None else text
    body = Text(text)
    for f in report.findings:
        body.stylize(f"underline bold {SEVERITY_COLOUR.get(f.severity, 'magenta')}", f.start, f.end)
    verdict = Text.assemble(
        ("verdict ", "dim"),
        (report.verdict, VERDICT_COLOUR[report.verdict]),
        (f" on {report.channel}", "dim"),
    )
    if not report.findings:
        return Group(body, verdict)
    table = Table(show_header=True, header_style="bold", expand=False)
    for col in ("where", "matched", "rule", "severity", "action", "suggestion"):
        table.add_column(col)
    for f in report.findings:
        colour = SEVERITY_COLOUR.get(f.severity, "magenta")
        table.add_row(
            f"{f.start}–{f.end}",
            Text(f.text, style=f"underline {colour}"),
            f.rule_id + ("" if f.matched_as in ("term", "link") else f" ({f.matched_as})"),
            Text(f.severity, style=colour),
            f.action,
            f.suggestion,
        )
    return Group(body, table, verdict)
