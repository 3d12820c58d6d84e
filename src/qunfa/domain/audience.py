"""Audience expressions of the walking skeleton: everyone, one tag, or an explicit list.

``all`` · ``tag:<name>`` · ``openids:<comma-separated>`` (``ids:`` is the same for any
channel's recipient ids). The full segment language arrives
with the audience work; this parser keeps the same entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class AudienceError(ValueError):
    pass


@dataclass(frozen=True)
class Audience:
    kind: Literal["all", "tag", "openids"]
    tag: str | None = None
    openids: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag:{self.tag}"
        if self.kind == "openids":
            return "openids:" + ",".join(self.openids)
        return "all"


def parse_audience(text: str) -> Audience:
    """Parse an audience expression; errors say what was expected."""
    raw = text.strip()
    if raw == "all":
        return Audience("all")
    kind, sep, rest = raw.partition(":")
    if not sep:
        raise AudienceError(
            f"audience {text!r} is not understood: use 'all', 'tag:<name>' or 'openids:a,b,…'"
        )
    if kind == "tag":
        if not rest.strip():
            raise AudienceError("audience 'tag:' needs a tag name, e.g. tag:VIP")
        return Audience("tag", tag=rest.strip())
    if kind in ("openids", "ids"):  # ids: the generic spelling for any channel
        ids = tuple(x.strip() for x in rest.split(",") if x.strip())
        if not ids:
            raise AudienceError("audience 'openids:' needs at least one openid")
        return Audience("openids", openids=ids)
    raise AudienceError(f"unknown audience kind {kind!r}: use 'all', 'tag:' or 'openids:'")
