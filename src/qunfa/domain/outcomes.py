"""What a platform call's result means for a batch: the contract between adapters and engine.

Adapters classify every error code they can receive into an :class:`ErrorClass`; the engine
acts on the class alone, so a new channel needs a table, not new engine code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ErrorClass(StrEnum):
    RETRYABLE = "retryable"  # busy, 5xx, timeouts, rate limits: try again later, same key
    RECIPIENT = "recipient"  # permanent for one recipient (not a follower, refused)
    BATCH = "batch"  # permanent for the whole batch (bad content, bad list)
    ACCOUNT = "account"  # credentials, permissions, bans: pause the campaign
    QUOTA = "quota"  # the account's allowance for this period is spent: defer


# When several errors stop one batch, the engine acts on the most severe.
SEVERITY = (
    ErrorClass.ACCOUNT,
    ErrorClass.QUOTA,
    ErrorClass.BATCH,
    ErrorClass.RETRYABLE,
    ErrorClass.RECIPIENT,
)


@dataclass(frozen=True)
class PlatformError:
    """A classified platform error; ``retry_after`` is the minimum wait the platform asks for."""

    code: int | str
    message: str
    klass: ErrorClass
    retry_after: float | None = None

    def describe(self) -> str:
        return f"{self.code} {self.message}".strip()


@dataclass(frozen=True)
class BatchOutcome:
    """The result of sending one batch.

    ``accepted`` with a ``platform_msg_id`` when the platform took the batch (a dedupe hit that
    returns the original id counts too). ``error`` otherwise. ``recipient_failures`` maps a
    recipient id to the error that refused that person, for per-recipient APIs.
    ``in_doubt`` is true when the request may have reached the platform (timeout, reset).
    ``done`` is true when the platform's answer is already final (synchronous channels).
    """

    accepted: bool
    platform_msg_id: str | None = None
    error: PlatformError | None = None
    in_doubt: bool = False
    done: bool = False
    deduplicated: bool = False
    recipient_failures: dict[str, PlatformError] = field(default_factory=dict)
    recipient_msg_ids: dict[str, str] = field(default_factory=dict)


def most_severe(errors: list[PlatformError]) -> PlatformError:
    """The error the engine should act on when a batch met several."""
    if not errors:
        raise ValueError("no errors to choose from")
    return min(errors, key=lambda e: SEVERITY.index(e.klass))
