"""Review rules and the send gate: pure functions, no I/O.

A campaign's *content digest* names exactly what a check or an approval saw. The gate compares
it with ``checked_hash`` and ``approved_hash``: a check or approval of other content does not
count. The rules here decide who may approve, when approval is needed, and — given what the
service read from the database — whether a campaign may be planned or sent, and if not, what
the operator should do (every refusal names its rule and the next command).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ReviewError(ValueError):
    """A review step is not allowed; the message names the rule and what to do instead."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} [rule {rule}]")
        self.rule = rule


class ReviewState(StrEnum):
    NONE = "none"  # never submitted, or the approval was voided by an edit
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


class ReviewAction(StrEnum):
    """What a review-log row records (``campaign_reviews.action``)."""

    CHECK = "check"
    SUBMIT = "submit"
    APPROVE = "approve"
    REJECT = "reject"
    VOID = "void"
    COMMENT = "comment"
    SCHEDULE = "schedule"
    EDIT = "edit"


# -- the content digest ---------------------------------------------------------------------------
def content_digest(content: Mapping[str, Any], material_version: int | None = None) -> str:
    """SHA-256 (hex) of the content in a canonical JSON form (sorted keys, no spaces).

    Key order and whitespace never change the digest; any value change does. Content that
    references a library item (``{"material_id": N, ...}``) also depends on the material
    version it resolves to, so a new version of the material is new content even when the
    campaign's own dict did not change.
    """
    payload: dict[str, Any] = {"content": content}
    if material_version is not None:
        payload["material_version"] = material_version
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def material_ref(content: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """``(material_id, version or None)`` when the content references the material library."""
    mid = content.get("material_id")
    if isinstance(mid, int) and not isinstance(mid, bool):
        version = content.get("version")
        return mid, version if isinstance(version, int) and not isinstance(version, bool) else None
    return None


# -- what gets checked ----------------------------------------------------------------------------
# Keys whose values are identifiers, codes or addresses chosen by the operator's platform set-up,
# not words a recipient reads: checking them would only produce noise (a media_id is random
# letters that can spell a pinyin initialism). Everything else that is a string is checked, so a
# new content shape is checked by default instead of silently skipped.
IDENTIFIER_KEYS = frozenset(
    {
        "msgtype",
        "msg_type",
        "media_id",
        "thumb_media_id",
        "template_id",
        "template_code",
        "touser",
        "toparty",
        "totag",
        "appid",
        "app_id",
        "pagepath",
        "material_id",
        "version",
        "client_msg_id",
        "color",
        "attachments",  # file names and base64 bodies; media checks are separate
        "from_address",
        "unsubscribe_mailto",
        "unsubscribe_base",
        "sdk_app_id",
        "send_ignore_reprint",
    }
)


def text_fields(content: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(path, text)`` a recipient can read, in document order.

    Covers every channel's shape by walking the content: ``text.content`` (Official Account,
    WeCom), template ``data.<key>.value`` (and plain ``data.<key>`` strings), SMS ``text`` and
    ``params.*``, e-mail ``subject``/``html``/``text``, article ``articles[i].title``/
    ``digest``/``content``/``url``, cards' titles and descriptions, markdown. URLs are
    checked too (the link rules: shorteners, raw IPs, unfiled domains).
    """
    if isinstance(content, str):
        if content.strip():
            yield prefix, content
    elif isinstance(content, Mapping):
        for key, value in content.items():
            if str(key) in IDENTIFIER_KEYS:
                continue
            yield from text_fields(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(content, list | tuple):
        for i, value in enumerate(content):
            yield from text_fields(value, f"{prefix}[{i}]")


# -- verdicts -------------------------------------------------------------------------------------
VERDICT_ORDER = ("pass", "pass_with_warnings", "review", "block")


def worst_verdict(verdicts: Sequence[str]) -> str:
    """The strictest of several verdicts (``pass`` for none)."""
    worst = 0
    for v in verdicts:
        worst = max(worst, VERDICT_ORDER.index(v))
    return VERDICT_ORDER[worst]


# -- who may do what ------------------------------------------------------------------------------
def check_actor(actor: str) -> str:
    """A review step needs a named actor: the audit log must say who did it."""
    name = actor.strip()
    if not name:
        raise ReviewError(
            "review.actor",
            "a review step needs a named actor: pass --as USER (CLI) or the X-Qunfa-Actor "
            "header (API)",
        )
    return name


def may_approve(actor: str, author: str) -> None:
    """Raise unless ``actor`` may approve a campaign written by ``author`` (four eyes)."""
    name = check_actor(actor)
    if author and name.casefold() == author.strip().casefold():
        raise ReviewError(
            "review.four_eyes",
            f"{name} wrote this campaign and cannot approve it: ask another person to run "
            "`qunfa campaign approve`",
        )


def approval_reasons(audience_size: int, threshold: int, review_findings: int) -> list[str]:
    """Why a campaign needs approval (empty: it does not).

    ``threshold`` ≤ 0 means "every campaign needs approval"; an audience of exactly the
    threshold does not need one (the threshold is the largest unreviewed audience).
    """
    reasons = []
    if audience_size > threshold:
        reasons.append(f"audience {audience_size:,} is above the review threshold {threshold:,}")
    if review_findings:
        reasons.append(f"the check has {review_findings} finding(s) whose policy is review")
    return reasons


# -- the gate -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateInput:
    """What the gate needs to know about a campaign, read by the service."""

    campaign_id: int
    author: str
    digest: str  # of the current content
    checked_hash: str | None
    verdict: str | None  # of the last check (any content)
    block_example: str  # "rule in path" of the first block finding, for the message
    review_findings: int
    audience_size: int
    threshold: int
    review_state: str
    approved_hash: str | None
    approved_by: str | None
    rejected_by: str | None = None


@dataclass(frozen=True)
class GateRefusal:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} [rule {self.rule}]"


def gate(g: GateInput) -> GateRefusal | None:
    """None if the campaign may be planned or sent now, else the first reason it may not.

    Order matters for the operator: first the check (nothing else means anything without
    it), then block findings (approval cannot override a block), then approval.
    """
    cid = g.campaign_id
    if g.checked_hash != g.digest or g.verdict is None:
        return GateRefusal(
            "gate.check",
            f"campaign {cid} has no compliance check of its current content: run "
            f"`qunfa campaign check {cid}` (nothing is planned or sent without a passing check)",
        )
    if g.verdict == "block":
        return GateRefusal(
            "gate.block",
            f"campaign {cid} is blocked by its compliance check ({g.block_example}): change the "
            f"content with `qunfa campaign edit {cid}` and check it again; approval cannot "
            "override a block",
        )
    reasons = approval_reasons(g.audience_size, g.threshold, g.review_findings)
    if not reasons:
        return None
    if g.review_state == ReviewState.APPROVED and g.approved_hash == g.digest:
        return None
    why = "; ".join(reasons)
    if g.review_state == ReviewState.SUBMITTED:
        return GateRefusal(
            "gate.approval",
            f"campaign {cid} needs approval ({why}) and is waiting for it: someone other than "
            f"{g.author or 'the author'} runs `qunfa campaign approve {cid}`",
        )
    if g.review_state == ReviewState.REJECTED:
        return GateRefusal(
            "gate.approval",
            f"campaign {cid} needs approval ({why}) and was rejected"
            f"{' by ' + g.rejected_by if g.rejected_by else ''}: change it with "
            f"`qunfa campaign edit {cid}`, then `qunfa campaign submit {cid}` again "
            f"(see `qunfa campaign review-log {cid}` for the comments)",
        )
    return GateRefusal(
        "gate.approval",
        f"campaign {cid} needs approval ({why}): run `qunfa campaign submit {cid}`, then "
        f"someone other than the author runs `qunfa campaign approve {cid}`",
    )


def dispatch_refusal(
    campaign_id: int, digest: str, checked_hash: str | None, approved_hash: str | None
) -> str | None:
    """The dispatcher's last look before a platform call: is this still the content that passed?

    A cheap comparison of digests (the full gate ran at start): the content must be what the
    last check saw and, if an approval exists, what the approval saw.
    """
    if checked_hash != digest or (approved_hash is not None and approved_hash != digest):
        return (
            f"campaign {campaign_id}'s content changed after it was checked or approved; "
            f"nothing more is sent: run `qunfa campaign check {campaign_id}` (and have it "
            f"approved again if needed), then `qunfa campaign send {campaign_id}` to resume "
            "[rule gate.content_changed]"
        )
    return None
