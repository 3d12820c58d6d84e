"""Sends that people must confirm (WeCom customer mass send): who has not sent, reminders, cancel.

``add_msg_template`` only creates a task per staff member; each must confirm it in the WeCom
client. This service lists the members who have not sent yet, reminds them on the schedule the
campaign sets (``options.remind_every_hours``; the platform allows ``remind_per_day`` reminders
per task in 24 h), and cancels outstanding tasks when the campaign is cancelled. Reminders are
recorded as events, so the count survives restarts and is shared by every worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from qunfa.channels.base import ConfirmableTasks
from qunfa.channels.http import HttpClient
from qunfa.storage.models import Account, Batch, Campaign, Delivery, Event

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.tasks")
DAY = 86400.0


@dataclass(frozen=True)
class Sender:
    batch_no: int
    userid: str
    sent: bool
    send_time: int | None


class TaskService:
    def __init__(self, c: Container) -> None:
        self.c = c

    def _accepted(self, campaign_id: int | None = None) -> list[tuple[Batch, Campaign, Account]]:
        query = (
            select(Batch, Campaign, Account)
            .join(Campaign, Campaign.id == Batch.campaign_id)
            .join(Account, Account.id == Campaign.account_id)
            .where(Batch.state == "accepted", Batch.platform_msg_id.is_not(None))
        )
        if campaign_id is not None:
            query = query.where(Campaign.id == campaign_id)
        with self.c.sessions() as s:
            return [tuple(row) for row in s.execute(query).all()]  # type: ignore[misc]

    @asynccontextmanager
    async def _tasks(
        self, rows: list[tuple[Batch, Campaign, Account]]
    ) -> AsyncIterator[list[tuple[Batch, Campaign, Any]]]:
        """The rows whose channel has confirmable tasks, each with its adapter (one session)."""
        async with HttpClient(self.c.settings.http_timeout) as http:
            out = []
            for batch, camp, acc in rows:
                adapter = self.c.accounts.adapter(acc, http, camp.channel)
                if isinstance(adapter, ConfirmableTasks):
                    out.append((batch, camp, adapter))
            yield out

    # -- who has not sent -------------------------------------------------------------------------
    def senders(self, campaign_id: int) -> list[Sender]:
        """Every member of the campaign's open tasks, and whether they have sent."""
        return asyncio.run(self._senders(campaign_id))

    async def _senders(self, campaign_id: int) -> list[Sender]:
        out: list[Sender] = []
        async with self._tasks(self._accepted(campaign_id)) as items:
            for batch, _camp, adapter in items:
                for userid, status, send_time in await adapter.staff_status(batch.platform_msg_id):
                    out.append(Sender(batch.batch_no, userid, status == 2, send_time))
        return out

    # -- reminders --------------------------------------------------------------------------------
    def remind_due(self) -> int:
        """Remind members of tasks whose campaign asks for it and whose turn has come."""
        rows = [r for r in self._accepted() if (r[1].options or {}).get("remind_every_hours")]
        return asyncio.run(self._remind(rows)) if rows else 0

    async def _remind(self, rows: list[tuple[Batch, Campaign, Account]]) -> int:
        sent = 0
        now = time.time()
        async with self._tasks(rows) as items:
            for batch, camp, adapter in items:
                every = float(camp.options["remind_every_hours"]) * 3600
                kind = f"remind.{camp.channel}"
                with self.c.sessions() as s:
                    times = list(
                        s.scalars(
                            select(Event.received_at).where(
                                Event.kind == kind, Event.batch_id == batch.id
                            )
                        )
                    )
                last = max(times, default=batch.accepted_at or now)
                recent = sum(1 for t in times if t > now - DAY)
                limit = adapter.rules["remind_per_day"]
                if now - last < every or recent >= limit:
                    continue
                pending = [u for u, st, _ in await adapter.staff_status(batch.platform_msg_id)
                           if st != 2]  # fmt: skip
                if not pending:
                    continue
                try:
                    await adapter.remind(str(batch.platform_msg_id))
                except Exception as exc:  # the platform refused: try at the next turn
                    log.warning("reminding batch %s failed: %s", batch.id, exc)
                    continue
                with self.c.sessions() as s:
                    s.add(
                        Event(
                            account_id=camp.account_id,
                            kind=kind,
                            dedupe_key=f"{kind}:{batch.id}:{len(times) + 1}",
                            campaign_id=camp.id,
                            batch_id=batch.id,
                            payload={"pending": pending},
                            received_at=now,
                        )
                    )
                    s.commit()
                sent += 1
        return sent

    def reminders(self, campaign_id: int) -> int:
        with self.c.sessions() as s:
            return int(
                s.scalar(
                    select(func.count()).where(
                        Event.campaign_id == campaign_id, Event.kind.like("remind.%")
                    )
                )
                or 0
            )

    # -- cancel -----------------------------------------------------------------------------------
    def cancel_open_tasks(self, campaign_id: int) -> int:
        """Cancel the campaign's unconfirmed tasks; recipients not reached yet become failed."""
        return asyncio.run(self._cancel(campaign_id))

    async def _cancel(self, campaign_id: int) -> int:
        cancelled = 0
        async with self._tasks(self._accepted(campaign_id)) as items:
            for batch, _camp, adapter in items:
                await adapter.cancel(str(batch.platform_msg_id))
                # Record who was reached before the cancel; the rest never will be.
                result = await adapter.settle(str(batch.platform_msg_id))
                if result is not None:
                    self.c.reconciler._apply_recipients(batch, result)
                with self.c.sessions() as s:
                    s.execute(
                        update(Delivery)
                        .where(
                            Delivery.campaign_id == batch.campaign_id,
                            Delivery.batch_no == batch.batch_no,
                            Delivery.status == "sending",
                        )
                        .values(status="failed", reason="cancelled before the member sent it")
                    )
                    s.execute(
                        update(Batch)
                        .where(Batch.id == batch.id)
                        .values(state="done", platform_status="cancelled", finished_at=time.time())
                    )
                    s.commit()
                cancelled += 1
        return cancelled
