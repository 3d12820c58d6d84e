"""Audience expressions: who a campaign addresses on its account.

``all`` · ``tag:<name>`` · ``openids:<comma-separated>`` (``ids:`` is the same for any
channel's recipient ids) · ``segment:<saved segment name>`` · ``expr:<segment expression>``
(the segment language, ``docs/segments.md``; e.g. ``expr:tag("VIP") and city == "上海"``).

Segment audiences are evaluated set-based by the planner; the Official Account sends them as
openid lists. ``expr:`` is parsed here, so a bad expression is refused with its column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qunfa.domain.segments import SegmentError, parse_segment

AudienceKind = Literal["all", "tag", "openids", "segment", "expr"]
FORMS = "'all', 'tag:<name>', 'openids:a,b,…', 'segment:<saved name>' or 'expr:<expression>'"


class AudienceError(ValueError):
    pass


@dataclass(frozen=True)
class Audience:
    kind: AudienceKind
    tag: str | None = None
    openids: tuple[str, ...] = ()
    segment: str | None = None  # saved segment name (segment:)
    expression: str | None = None  # segment expression text (expr:)

    @property
    def is_segment(self) -> bool:
        """Evaluated by the segment compiler (``segment:`` or ``expr:``)."""
        return self.kind in ("segment", "expr")

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag:{self.tag}"
        if self.kind == "openids":
            return "openids:" + ",".join(self.openids)
        if self.kind == "segment":
            return f"segment:{self.segment}"
        if self.kind == "expr":
            return f"expr:{self.expression}"
        return "all"


def parse_audience(text: str) -> Audience:
    """Parse an audience expression; errors say what was expected (and where, for ``expr:``)."""
    raw = text.strip()
    if raw == "all":
        return Audience("all")
    kind, sep, rest = raw.partition(":")
    if not sep:
        raise AudienceError(f"audience {text!r} is not understood: use {FORMS}")
    if kind == "tag":
        if not rest.strip():
            raise AudienceError("audience 'tag:' needs a tag name, e.g. tag:VIP")
        return Audience("tag", tag=rest.strip())
    if kind in ("openids", "ids"):  # ids: the generic spelling for any channel
        ids = tuple(x.strip() for x in rest.split(",") if x.strip())
        if not ids:
            raise AudienceError("audience 'openids:' needs at least one openid")
        return Audience("openids", openids=ids)
    if kind == "segment":
        if not rest.strip():
            raise AudienceError(
                "audience 'segment:' needs a saved segment's name, e.g. segment:活跃VIP"
            )
        return Audience("segment", segment=rest.strip())
    if kind == "expr":
        expression = rest.strip()
        try:
            parse_segment(expression)
        except SegmentError as exc:
            # The column counts in the expression (after 'expr:'); str() shows it with a caret.
            raise AudienceError(f"audience 'expr:' is not a valid segment: {exc}") from exc
        return Audience("expr", expression=expression)
    raise AudienceError(f"unknown audience kind {kind!r}: use {FORMS}")
