"""Campaign and batch state machines and the per-recipient delivery statuses.

A campaign moves draft → planned → sending → done; a batch moves pending → sending → accepted
→ done, with retry/deferred loops and the terminal failed/unknown states. Transitions not listed
here raise :class:`InvalidTransition`, so a bug shows up as an error, not as a silent re-send.
"""

from __future__ import annotations

from enum import StrEnum


class InvalidTransition(ValueError):
    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"{kind} cannot go from {current!r} to {target!r}")
        self.current, self.target = current, target


class CampaignState(StrEnum):
    DRAFT = "draft"
    PLANNING = "planning"
    PLANNED = "planned"
    SENDING = "sending"
    PAUSED = "paused"  # an account-level error stopped it; resumable
    DONE = "done"  # every batch reached a terminal state
    FAILED = "failed"  # nothing can be sent (e.g. empty audience, rejected content)
    CANCELLED = "cancelled"


CAMPAIGN_TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.DRAFT: frozenset(
        {CampaignState.PLANNING, CampaignState.CANCELLED, CampaignState.FAILED}
    ),
    CampaignState.PLANNING: frozenset(
        {CampaignState.PLANNED, CampaignState.FAILED, CampaignState.DRAFT}
    ),
    CampaignState.PLANNED: frozenset(
        {CampaignState.SENDING, CampaignState.CANCELLED, CampaignState.DONE}
    ),
    CampaignState.SENDING: frozenset(
        {CampaignState.DONE, CampaignState.PAUSED, CampaignState.CANCELLED}
    ),
    CampaignState.PAUSED: frozenset({CampaignState.SENDING, CampaignState.CANCELLED}),
    CampaignState.DONE: frozenset(),
    CampaignState.FAILED: frozenset(),
    CampaignState.CANCELLED: frozenset(),
}


def campaign_transition(current: str, target: str) -> CampaignState:
    """Validate and return ``target``; staying in the same state is always allowed."""
    cur, tgt = CampaignState(current), CampaignState(target)
    if cur != tgt and tgt not in CAMPAIGN_TRANSITIONS[cur]:
        raise InvalidTransition("campaign", cur, tgt)
    return tgt


class BatchState(StrEnum):
    PENDING = "pending"  # planned, never tried
    SENDING = "sending"  # leased; a platform call may be in flight
    RETRY = "retry"  # a retryable error; next_attempt_at says when
    DEFERRED = "deferred"  # a quota says "not today"; next_attempt_at is when it refills
    ACCEPTED = "accepted"  # the platform took it (msg_id known); waiting for the job result
    DONE = "done"  # the platform reported the job's result
    FAILED = "failed"  # permanent error for the whole batch
    UNKNOWN = "unknown"  # outcome cannot be settled safely; an operator decides
    CANCELLED = "cancelled"


TERMINAL_BATCH_STATES = frozenset(
    {BatchState.DONE, BatchState.FAILED, BatchState.UNKNOWN, BatchState.CANCELLED}
)
# States from which a worker may (re)take a batch when it is due.
SENDABLE_BATCH_STATES = frozenset({BatchState.PENDING, BatchState.RETRY, BatchState.DEFERRED})

BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.PENDING: frozenset({BatchState.SENDING, BatchState.CANCELLED}),
    BatchState.SENDING: frozenset(
        {
            BatchState.SENDING,  # a lease taken over after expiry
            BatchState.ACCEPTED,
            BatchState.DONE,
            BatchState.RETRY,
            BatchState.DEFERRED,
            BatchState.FAILED,
            BatchState.UNKNOWN,
        }
    ),
    BatchState.RETRY: frozenset({BatchState.SENDING, BatchState.CANCELLED, BatchState.UNKNOWN}),
    BatchState.DEFERRED: frozenset({BatchState.SENDING, BatchState.CANCELLED}),
    # Cancelled: a task still waiting for people (WeCom staff, a personal-WeChat operator).
    BatchState.ACCEPTED: frozenset({BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED}),
    BatchState.DONE: frozenset(),
    BatchState.FAILED: frozenset(),
    BatchState.UNKNOWN: frozenset({BatchState.DONE, BatchState.FAILED}),  # operator settles
    BatchState.CANCELLED: frozenset(),
}


def batch_transition(current: str, target: str) -> BatchState:
    cur, tgt = BatchState(current), BatchState(target)
    if tgt not in BATCH_TRANSITIONS[cur]:
        raise InvalidTransition("batch", cur, tgt)
    return tgt


class DeliveryStatus(StrEnum):
    """The per-recipient ledger. ``sent`` means the platform accepted it for this person."""

    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    UNKNOWN = "unknown"
    # Never sent by qunfa's own decision before the call; the reason says why (suppressed,
    # opted_out: docs/consent.md).
    SKIPPED = "skipped"
