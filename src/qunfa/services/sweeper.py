"""The sweeper: re-drives work the queue lost, settles overdue batches, closes campaigns.

The queue only wakes workers; the database says what is due. A worker killed mid-batch
leaves a lease that expires; the sweeper finds it and enqueues the batch again, and the next
attempt settles it through the platform's dedupe instead of sending twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from qunfa.services import scheduling
from qunfa.storage import queries as q
from qunfa.storage.models import Batch, Campaign

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.sweeper")


class Sweeper:
    def __init__(self, c: Container) -> None:
        self.c = c

    def due_batches(self, limit: int = 1000) -> list[int]:
        now = time.time()
        with self.c.engine.connect() as conn:
            rows = conn.execute(
                q.DUE_BATCHES,
                {
                    "now": now,
                    "requeue_before": now - self.c.settings.lease_seconds,
                    "limit": limit,
                },
            )
            return [int(r[0]) for r in rows]

    def sweep(self) -> dict[str, int]:
        """One pass; returns what it did (for logs and tests)."""
        timed = scheduling.sweep(self.c)  # recurring runs due (then started below), STO hours
        scheduled = self.c.review.start_due()  # scheduled campaigns whose time has come
        ids = self.due_batches()
        if ids:
            with self.c.sessions() as s:
                s.execute(update(Batch).where(Batch.id.in_(ids)).values(enqueued_at=time.time()))
                s.commit()
            self.c.enqueue(ids)
        settled = self.c.reconciler.settle_accepted(self.c.settings.settle_after)
        reminded = self.c.tasks.remind_due()
        self.c.behaviour.refresh_due()  # behaviour facts every few minutes; never raises
        closed = 0
        with self.c.sessions() as s:
            sending = list(s.scalars(select(Campaign.id).where(Campaign.state == "sending")))
        for cid in sending:
            closed += int(self.c.dispatcher.check_campaign(cid))
        tags = self.c.tags.sweep()  # rule tags due, then the tag outbox (services/tags.py)
        return {"enqueued": len(ids), "settled": settled, "reminded": reminded, "closed": closed,
                "scheduled": scheduled, **tags, **timed}  # fmt: skip

    def run_forever(self, stop: threading.Event) -> None:
        """Sweep every ``sweep_interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                done = self.sweep()
                if any(done.values()):
                    log.info("sweep: %s", done)
            except Exception:  # keep sweeping; the next pass retries
                log.exception("sweep failed")
            stop.wait(self.c.settings.sweep_interval)
