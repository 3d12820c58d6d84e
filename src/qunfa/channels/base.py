"""The channel contract: what every adapter provides to the engine.

An adapter sends one batch and says what happened (:class:`BatchOutcome`), classifying each
platform error code into an :class:`ErrorClass`; it can settle an in-doubt or accepted batch
through the platform's status API. Limits come from the platform's rule file. Adapters know
nothing of the database: accounts, tokens and recipients are handed to them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from qunfa.channels.http import HttpClient
from qunfa.channels.ratelimit import RateLimiter
from qunfa.channels.tokens import TokenService
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet


@dataclass(frozen=True)
class AccountConfig:
    """An account as an adapter sees it: ids, decrypted credentials and effective rules."""

    id: int
    channel: str
    app_id: str
    kind: str
    base_url: str
    credentials: Mapping[str, str]
    rules: RuleSet
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboundBatch:
    """One platform call's worth of work. ``key`` is the deterministic idempotency key."""

    campaign_uid: str
    batch_no: int
    key: str
    mode: str
    content: Mapping[str, Any]
    recipients: Sequence[str] = ()
    tag_id: int | None = None
    # Recipient → signed unsubscribe token (e-mail's List-Unsubscribe link, docs/consent.md).
    unsubscribe: Mapping[str, str] = field(default_factory=dict)
    # Recipient → their own rendered content (a personalised campaign, docs/content.md); None:
    # ``content`` is everybody's. Only channels with ``personalises = True`` receive it.
    personal: Mapping[str, Mapping[str, Any]] | None = None

    def content_for(self, recipient: str) -> Mapping[str, Any]:
        """The content ``recipient`` receives."""
        if self.personal is None:
            return self.content
        return self.personal.get(recipient, self.content)

    def groups(
        self, key: Callable[[Mapping[str, Any]], Hashable] | None = None
    ) -> list[tuple[Mapping[str, Any], list[str]]]:
        """Recipients grouped by identical content (by ``key`` of it; default: all of it), in
        order of first appearance: one group when the batch is not personalised."""
        if self.personal is None:
            return [(self.content, list(self.recipients))]
        keyf = key or _canonical
        found: dict[Hashable, tuple[Mapping[str, Any], list[str]]] = {}
        for rid in self.recipients:
            own = self.personal.get(rid, self.content)
            k = keyf(own)
            if k in found:
                found[k][1].append(rid)
            else:
                found[k] = (own, [rid])
        return list(found.values())


def _canonical(content: Mapping[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class RecipientOutcome:
    """One recipient's result as the platform reports it after the fact."""

    status: str  # a DeliveryStatus value: sent | failed | unknown
    reason: str | None = None


@dataclass(frozen=True)
class Settlement:
    """What the platform's status/result API says about an accepted batch.

    ``recipients`` carries per-recipient outcomes when the platform reports them (WeCom
    customer status 0/1/2/3, DingTalk's invalid/forbidden/failed lists …), keyed by the same
    recipient id the batch was sent with; ``counts`` the platform's own totals.
    """

    final: bool  # the platform's job has finished: no further poll needed
    ok: bool  # … and it succeeded as a whole
    status: str  # the platform's own words, e.g. SEND_SUCCESS
    recipients: Mapping[str, RecipientOutcome] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


class ContentError(ValueError):
    """Content this channel cannot send; the message says what to change."""


@runtime_checkable
class ConfirmableTasks(Protocol):
    """Channels whose send creates a task that people must confirm (WeCom customer mass send).

    The engine shows who has not sent, reminds them on the campaign's schedule and cancels
    through these calls.
    """

    async def staff_status(self, msgid: str) -> list[tuple[str, int, int | None]]:
        """(member, status 0 not sent / 2 sent, send time) for each member of the task."""
        ...

    async def remind(self, msgid: str) -> None: ...

    async def cancel(self, msgid: str) -> None: ...


@dataclass
class ChannelContext:
    """Shared per-process services handed to every adapter instance."""

    http: HttpClient
    tokens: TokenService
    limiter: RateLimiter


class Channel(ABC):
    """Base of every adapter. Subclasses set the class attributes and implement the calls."""

    key: ClassVar[str]  # the channel's one name: module, sandbox twin, docs, registry
    title: ClassVar[str]
    rules_name: ClassVar[str]  # rules/<rules_name>.toml
    recipient_kind: ClassVar[str]  # identity kind it sends to: openid, external_userid, phone …
    modes: ClassVar[frozenset[str]]
    errors: ClassVar[Mapping[int | str, ErrorClass]] = {}
    # Channel whose accounts this one sends through (wechat_template → wechat_oa); None = own.
    account_channel: ClassVar[str | None] = None
    # Credential fields an account of this channel must have (all credentials are encrypted).
    credential_fields: ClassVar[tuple[str, ...]] = ("secret",)
    # The sandbox twin's URL prefix: the default base URL is <sandbox_url>/<sandbox_prefix>.
    sandbox_prefix: ClassVar[str] = ""
    # True when the platform dedupes a retried batch by its idempotency key, so an in-doubt
    # batch may be re-sent inside the dedupe window. False (SMS, e-mail …): in doubt → unknown.
    idempotent: ClassVar[bool] = True
    # The rule naming the platform's dedupe window in seconds (clientmsgid 24 h …); an in-doubt
    # batch older than 90% of it is never re-sent. None: the engine's ``unknown_after``.
    dedupe_window_rule: ClassVar[str | None] = None
    # True when an accepted batch's recipients are only known reached later, one by one (a
    # person marks a personal-WeChat batch sent); they stay "sending" until then. Channels
    # with a poll_interval behave so too.
    results_later: ClassVar[bool] = False
    # The rule naming how many recipients a day this channel may reach from one account (the
    # personal-WeChat risk pacing); the planner then spreads batches over days. None: no pacing.
    daily_pace_rule: ClassVar[str | None] = None
    # Seconds between result polls of an accepted batch; None: wait for a callback and poll
    # only after ``settle_after``.
    poll_interval: ClassVar[float | None] = None
    # True when ``send_batch`` honours ``OutboundBatch.personal`` (per-recipient content). The
    # dispatcher never hands per-person templates to a channel without it: they would go out
    # raw, so such a batch fails with the reason instead.
    personalises: ClassVar[bool] = False

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        self.account = account
        self.ctx = ctx
        self.rules = account.rules

    @classmethod
    @abstractmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        """Recipients per batch for ``mode`` under ``rules`` (0 = whole audience in one call)."""

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        """Raise :class:`ContentError` for content the platform would refuse."""
        return None  # default: the channel accepts any content the platform might

    @abstractmethod
    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        """Send one batch; never raises for platform or transport errors, classifies them."""

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        """Ask the platform how an accepted batch ended; None when the channel cannot tell."""
        return None

    @classmethod
    def resend_window(cls, rules: RuleSet, default: float) -> float:
        """Seconds after the first attempt during which an in-doubt batch may be re-sent."""
        if not cls.idempotent:
            return 0.0
        if cls.dedupe_window_rule is None:
            return default
        return min(default, 0.9 * rules[cls.dedupe_window_rule])

    def classify(self, code: int | str, message: str) -> PlatformError:
        """Map a platform error code to its class; unknown codes are permanent for the batch."""
        klass = self.errors.get(code, ErrorClass.BATCH)
        return PlatformError(code, message, klass)
