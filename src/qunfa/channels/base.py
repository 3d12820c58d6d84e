"""The channel contract: what every adapter provides to the engine.

An adapter sends one batch and says what happened (:class:`BatchOutcome`), classifying each
platform error code into an :class:`ErrorClass`; it can settle an in-doubt or accepted batch
through the platform's status API. Limits come from the platform's rule file. Adapters know
nothing of the database: accounts, tokens and recipients are handed to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class Settlement:
    """What the platform's status API says about an accepted or in-doubt batch."""

    final: bool  # the platform's job has finished
    ok: bool  # … and it succeeded
    status: str  # the platform's own words, e.g. SEND_SUCCESS


@dataclass
class ChannelContext:
    """Shared per-process services handed to every adapter instance."""

    http: HttpClient
    tokens: TokenService
    limiter: RateLimiter


class Channel(ABC):
    """Base of every adapter. Subclasses set the class attributes and implement the calls."""

    key: ClassVar[str]
    title: ClassVar[str]
    rules_name: ClassVar[str]
    recipient_kind: ClassVar[str]
    modes: ClassVar[frozenset[str]]
    errors: ClassVar[Mapping[int | str, ErrorClass]] = {}

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        self.account = account
        self.ctx = ctx
        self.rules = account.rules

    @classmethod
    @abstractmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        """Recipients per batch for ``mode`` under ``rules`` (0 = whole audience in one call)."""

    @abstractmethod
    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        """Send one batch; never raises for platform or transport errors, classifies them."""

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        """Ask the platform how an accepted batch ended; None when the channel cannot tell."""
        return None

    def classify(self, code: int | str, message: str) -> PlatformError:
        """Map a platform error code to its class; unknown codes are permanent for the batch."""
        klass = self.errors.get(code, ErrorClass.BATCH)
        return PlatformError(code, message, klass)
