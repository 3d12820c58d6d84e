"""The content half of ``qunfa check`` / ``POST /api/check``: lint and template findings.

The compliance engine judges *words*; this judges the *message*: the channel's hard limits and
the seeds' advice (:mod:`qunfa.content.lint`) and whether every template variable will render
(:mod:`qunfa.content.templating`). :func:`check_message` returns both as plain dicts and the
verdict they imply; :func:`combine` folds that into the compliance report's verdict, so a
broken hard limit or an unknown variable blocks exactly as a blocked term does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qunfa.content.lint import BLOCK, CHANNEL_RULES, LintFinding, MediaFacts, lint
from qunfa.content.templating import TemplateIssue, check_content
from qunfa.rules import RuleSet

# The strictest first; the compliance report's verdicts, in the same order as domain.review.
VERDICTS = ("pass", "pass_with_warnings", "review", "block")


def text_content(text: str, channel: str) -> dict[str, Any]:
    """A plain text as the content ``channel`` takes (what a text campaign would store)."""
    if channel in ("sms_tencent", "sms_aliyun", "personal_wechat", "email"):
        return {"text": text}
    if channel == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    return {"msgtype": "text", "text": {"content": text}}


@dataclass(frozen=True)
class ContentCheck:
    """Lint findings and template issues of one message on one channel."""

    channel: str
    lint: list[LintFinding] = field(default_factory=list)
    template: list[TemplateIssue] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``block`` for a hard limit or any template issue (it would be an error or a blank
        in a sent message), ``pass_with_warnings`` for advice only, else ``pass``."""
        if self.template or any(f.severity == BLOCK for f in self.lint):
            return "block"
        return "pass_with_warnings" if self.lint else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "lint": [f.to_dict() for f in self.lint],
            "template": [i.to_dict() for i in self.template],
        }


def check_message(
    content: Mapping[str, Any],
    channel: str,
    *,
    rules: RuleSet | None = None,
    variables: Iterable[str] = (),
    attr_keys: Iterable[str] | None = None,
    media: Iterable[MediaFacts] = (),
    sign_name: str = "",
) -> ContentCheck:
    """Lint ``content`` for ``channel`` and check its templates.

    Raises :class:`ValueError` naming the known channels when ``channel`` has no rule file.
    """
    if rules is None and channel not in CHANNEL_RULES:
        raise ValueError(
            f"unknown channel {channel!r}: use one of {', '.join(sorted(CHANNEL_RULES))}"
        )
    findings = lint(content, channel, rules, media=media, sign_name=sign_name)
    issues = check_content(content, channel, variables=variables, attr_keys=attr_keys)
    return ContentCheck(channel, findings, issues)


def combine(compliance_verdict: str, content: ContentCheck) -> str:
    """The overall verdict: the stricter of the compliance report's and the content check's."""
    return max(compliance_verdict, content.verdict, key=VERDICTS.index)
