"""Official Account ``mass/send`` needs at least 2 openids (rule ``mass_min_per_call``, 40130).

A list batch can be left with one recipient: the last slice of 10,001, a batch whose other
recipients were suppressed or held back by a cap, a due-time group of one, an audience of
exactly one. The platform refuses such a call with 40130, so qunfa never makes it:

- **at plan time** (:func:`apply_at_plan`, after consent, quotas and timing): a lone
  recipient joins a neighbouring batch that has room (≤ ``mass_max_per_call``), or, when the
  neighbour is full, one of the neighbour's recipients moves over to make two. A neighbour
  qualifies only when the moved row's due time is not later than its new batch's (a batch is
  never due before any of its rows). When the whole campaign has exactly one recipient (or no
  neighbour can help) that recipient fails with :data:`REASON`;
- **at send time** (:func:`refusal`, in the dispatcher after the consent re-check): a batch
  left with one recipient fails that recipient with the same reason.

Set-based: only the (few) batch rows pass through Python, never the recipients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select, text, update

from qunfa.channels.registry import channel_class
from qunfa.channels.wechat_oa import WechatOA
from qunfa.rules import RuleSet
from qunfa.storage.models import Account, Batch, Campaign, Delivery

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

REASON = "Official Account mass send needs at least 2 recipients; use a template message or preview"

# live_batches: per batch, its planned rows and the latest due time among them.
_LIVE = text(
    """
SELECT batch_no, count(*), max(COALESCE(due_at, 0)) FROM deliveries
WHERE campaign_id = :campaign_id AND status = 'planned'
GROUP BY batch_no ORDER BY batch_no
"""
)
# move_rows: every planned row of one batch into another (a lone recipient joins a neighbour).
_MOVE_ALL = text(
    """
UPDATE deliveries SET batch_no = :to_no, updated_at = :now
WHERE campaign_id = :campaign_id AND batch_no = :from_no AND status = 'planned'
"""
)
# move_one: the last planned row of a batch that may go as early as :due (borrowed by a lone
# recipient's batch so both have at least two).
_MOVE_ONE = text(
    """
UPDATE deliveries SET batch_no = :to_no, updated_at = :now
WHERE id = (
    SELECT id FROM deliveries
    WHERE campaign_id = :campaign_id AND batch_no = :from_no AND status = 'planned'
      AND COALESCE(due_at, 0) <= :due
    ORDER BY id DESC LIMIT 1
)
"""
)


def minimum(channel: str, mode: str, rules: RuleSet) -> int:
    """The fewest recipients one call of this channel and mode takes (1: no minimum)."""
    if mode != "list" or not issubclass(channel_class(channel), WechatOA):
        return 1
    return int(rules["mass_min_per_call"]) if "mass_min_per_call" in rules.rules else 1


def refusal(channel: str, mode: str, rules: RuleSet, recipients: int) -> str | None:
    """Why a batch of ``recipients`` must not be sent (None: it may)."""
    if 0 < recipients < minimum(channel, mode, rules):
        return REASON
    return None


@dataclass(frozen=True)
class PlanFix:
    merged: int  # lone recipients moved into a neighbouring batch
    borrowed: int  # recipients moved from a full neighbour to a lone one
    failed: int  # recipients failed with REASON
    recipients: int  # planned recipients left


@dataclass
class _Live:
    no: int
    size: int
    due: float  # the batch's next_attempt_at
    row_due: float  # the latest due_at among its rows
    note: str | None = None  # why an emptied batch is not sent
    failed: bool = False


def apply_at_plan(c: Container, campaign_id: int, total: int) -> PlanFix:
    """Leave no Official Account list batch with a single recipient (see the module doc)."""
    with c.sessions() as s:
        camp = s.get(Campaign, campaign_id)
        assert camp is not None
        acc = s.get(Account, camp.account_id)
        assert acc is not None
    rules = c.accounts.config(acc, camp.channel).rules
    least = minimum(camp.channel, camp.mode, rules)
    if least <= 1 or total == 0:
        return PlanFix(0, 0, 0, total)
    most = int(channel_class(camp.channel).batch_size(rules, "list"))
    merged = borrowed = failed = 0
    now = time.time()
    with c.engine.begin() as conn:
        # The common case, decided from the (few) batch rows instead of every planned row:
        # every step before this one keeps ``batches.size`` equal to its planned rows (the
        # planner, consent's fix-up, the quota and timing re-batching), so when the sizes add
        # up to the planned total and none is lone, there is nothing to do.
        sizes = [
            int(n) for n in conn.scalars(select(Batch.size).where(Batch.campaign_id == campaign_id))
        ]
        if sum(sizes) == total and not any(0 < n < least for n in sizes):
            return PlanFix(0, 0, 0, total)
        dues = dict(
            conn.execute(
                select(Batch.batch_no, Batch.next_attempt_at).where(
                    Batch.campaign_id == campaign_id
                )
            ).all()
        )
        live = [
            _Live(int(no), int(n), float(dues.get(no) or 0.0), float(d))
            for no, n, d in conn.execute(_LIVE, {"campaign_id": campaign_id})
        ]
        for i, lone in enumerate(live):
            if lone.size == 0 or lone.size >= least:
                continue
            near = [live[j] for j in (i - 1, i + 1) if 0 <= j < len(live) and live[j].size]
            near.sort(key=lambda b: (b.due != lone.due, b.no))  # same due time first
            done = False
            for nb in near:
                if nb.size + lone.size <= most and nb.due >= lone.row_due:
                    conn.execute(_MOVE_ALL, _p(campaign_id, lone.no, nb.no, now))
                    nb.size, nb.row_due = nb.size + lone.size, max(nb.row_due, lone.row_due)
                    merged += lone.size
                    lone.size, lone.note = 0, f"not sent: its recipient joined batch {nb.no}"
                    done = True
                    break
            if not done:
                for nb in near:
                    if nb.size - (least - lone.size) < least:
                        continue
                    moved = 0
                    for _ in range(least - lone.size):
                        p = {**_p(campaign_id, nb.no, lone.no, now), "due": lone.due}
                        moved += int(conn.execute(_MOVE_ONE, p).rowcount)
                    if moved:
                        nb.size -= moved
                        lone.size += moved
                        borrowed += moved
                    if lone.size >= least:
                        done = True
                        break
            if not done:
                failed += int(
                    conn.execute(
                        update(Delivery)
                        .where(
                            Delivery.campaign_id == campaign_id,
                            Delivery.batch_no == lone.no,
                            Delivery.status == "planned",
                        )
                        .values(status="failed", reason=REASON, updated_at=now)
                    ).rowcount
                )
                lone.size, lone.note, lone.failed = 0, REASON, True
        if merged or borrowed or failed:
            _fix_batches(conn, campaign_id, live, now)
        left = int(
            conn.execute(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.campaign_id == campaign_id, Delivery.status == "planned")
            ).scalar_one()
        )
    return PlanFix(merged, borrowed, failed, left)


def _p(campaign_id: int, from_no: int, to_no: int, now: float) -> dict[str, float | int]:
    return {"campaign_id": campaign_id, "from_no": from_no, "to_no": to_no, "now": now}


def _fix_batches(conn: Connection, campaign_id: int, live: list[_Live], now: float) -> None:
    """Batch sizes after the moves; a batch left empty is done (never sent)."""
    for b in live:
        values: dict[str, object] = {"size": b.size}
        if b.note is not None:
            state = "failed" if b.failed else "done"
            values |= {"state": state, "finished_at": now, "last_error": b.note}
        conn.execute(
            update(Batch)
            .where(Batch.campaign_id == campaign_id, Batch.batch_no == b.no)
            .values(**values)
        )
