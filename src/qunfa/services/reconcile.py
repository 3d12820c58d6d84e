"""Reconcile: record what the platform says happened to accepted batches.

Two sources, one result: the verified job-finish callback (MASSSENDJOBFINISH with its
Total/Filter/Sent/Error counts, TEMPLATESENDJOBFINISH per recipient), and — when no callback
arrives — the platform's status API (``mass/get``). Events are stored once (dedupe key).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from qunfa.channels.base import RecipientOutcome, Settlement
from qunfa.channels.http import HttpClient
from qunfa.channels.registry import channel_class
from qunfa.domain.states import BatchState
from qunfa.storage import queries as q
from qunfa.storage.models import Account, Batch, Campaign, Delivery, Event

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.reconcile")
_ERR = re.compile(r"err\((\d+)\)")
# MASSSENDJOBFINISH Status codes of API mass-send protection (风险操作保护, reference §1.3).
ADMIN_REFUSALS = {
    "40001": "the Official Account's admin refused this mass send (API mass-send protection, "
    "err(40001)); it was not sent and is not retried: ask the admin, then send a new campaign",
    "40002": "the Official Account's admin did not confirm this mass send within 30 minutes "
    "(API mass-send protection, err(40002)); it was not sent and is not retried: send a new "
    "campaign when the admin can confirm it",
}


def mass_event_key(acc: Account, msg_id: str) -> str:
    return f"{acc.app_id}:mass:{msg_id}"


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


class Reconciler:
    def __init__(self, c: Container) -> None:
        self.c = c

    def _store_event(self, acc: Account, kind: str, key: str, fields: dict[str, Any]) -> bool:
        """Store an event once; False when it was already recorded (a platform retry)."""
        with self.c.sessions() as s:
            s.add(
                Event(
                    account_id=acc.id,
                    kind=kind,
                    dedupe_key=key,
                    payload=fields,
                    received_at=time.time(),
                )
            )
            try:
                s.commit()
            except IntegrityError:
                return False
        return True

    def handle_wechat_event(self, acc: Account, fields: dict[str, str]) -> str:
        """Apply one decrypted Official Account event; returns what was done (for logs)."""
        event = fields.get("Event", "")
        if event == "MASSSENDJOBFINISH":
            return self._mass_job_finish(acc, fields)
        if event == "TEMPLATESENDJOBFINISH":
            return self._template_job_finish(acc, fields)
        key = (
            f"{acc.app_id}:{event}:{fields.get('FromUserName', '')}:{fields.get('CreateTime', '')}"
        )
        fresh = self._store_event(acc, event or fields.get("MsgType", "message"), key, fields)
        if fresh and event in ("subscribe", "unsubscribe"):  # consent: docs/consent.md
            self.c.consent.oa_follow_change(acc, fields)
        self.c.behaviour.on_wechat_event(acc, fields)  # messages, menu clicks → person events
        return "stored"

    def _mass_job_finish(self, acc: Account, fields: dict[str, str]) -> str:
        msg_id = fields.get("MsgID", "")
        if not self._store_event(acc, "MASSSENDJOBFINISH", mass_event_key(acc, msg_id), fields):
            return "duplicate"
        return self._apply_mass_event(acc, fields)

    def apply_pending_mass_event(self, acc: Account, msg_id: str) -> str | None:
        """Apply a job-finish event that arrived before its send was recorded.

        The platform may post MASSSENDJOBFINISH before our dispatcher has stored the msg_id
        from the send's response. Such an event waits (``batch_id`` NULL) and the dispatcher
        calls this right after recording the acceptance; each side checks after its own
        commit, so one of them always sees the other.
        """
        with self.c.sessions() as s:
            event = s.scalars(
                select(Event).where(
                    Event.dedupe_key == mass_event_key(acc, msg_id), Event.batch_id.is_(None)
                )
            ).one_or_none()
        if event is None:
            return None
        return self._apply_mass_event(acc, dict(event.payload))

    def _apply_mass_event(self, acc: Account, fields: dict[str, str]) -> str:
        msg_id = fields.get("MsgID", "")
        batch = self._batch_by_msg_id(acc.id, msg_id)
        if batch is None:
            log.info(
                "MASSSENDJOBFINISH %s on %s waits for its send to be recorded", msg_id, acc.app_id
            )
            return "pending"
        status = fields.get("Status", "")
        ok = status == "send success"
        values: dict[str, Any] = {
            "platform_status": status[:64],
            "total_count": _int(fields, "TotalCount"),
            "filter_count": _int(fields, "FilterCount"),
            "sent_count": _int(fields, "SentCount"),
            "error_count": _int(fields, "ErrorCount"),
            "finished_at": time.time(),
            "state": BatchState.DONE if ok else BatchState.FAILED,
        }
        admin = None
        if not ok:
            values["last_error"] = f"platform job ended with {status!r}"
            if m := _ERR.search(status):
                values["last_errcode"] = m.group(1)
                admin = ADMIN_REFUSALS.get(m.group(1))  # API mass-send protection
                if admin:
                    values["last_error"] = admin
        with self.c.sessions() as s:
            s.execute(
                update(Batch)
                .where(Batch.id == batch.id, Batch.state.in_(("accepted", "sending", "retry")))
                .values(**values)
            )
            if not ok:
                s.execute(
                    update(Delivery)
                    .where(
                        Delivery.campaign_id == batch.campaign_id,
                        Delivery.batch_no == batch.batch_no,
                        Delivery.status == "sent",
                    )
                    .values(status="failed", reason=f"platform: {status}"[:200])
                )
            s.execute(
                update(Event)
                .where(Event.dedupe_key == mass_event_key(acc, msg_id))
                .values(batch_id=batch.id, campaign_id=batch.campaign_id)
            )
            if admin:  # the campaign says why: the platform holds the job, qunfa never re-sends
                s.execute(
                    update(Campaign)
                    .where(Campaign.id == batch.campaign_id)
                    .values(last_error=admin)
                )
            s.commit()
        self.c.dispatcher.check_campaign(batch.campaign_id)
        return "recorded"

    def _template_job_finish(self, acc: Account, fields: dict[str, str]) -> str:
        msg_id = fields.get("MsgID", "")
        if not self._store_event(
            acc, "TEMPLATESENDJOBFINISH", f"{acc.app_id}:tpl:{msg_id}", fields
        ):
            return "duplicate"
        status = fields.get("Status", "")
        if status == "success":
            return "recorded"
        with self.c.sessions() as s:
            s.execute(
                update(Delivery)
                .where(
                    Delivery.platform_msg_id == msg_id,
                    Delivery.campaign_id.in_(
                        select(Campaign.id).where(Campaign.account_id == acc.id)
                    ),
                )
                .values(status="failed", reason=f"platform: {status}"[:200])
            )
            s.commit()
        return "recorded"

    def _batch_by_msg_id(self, account_id: int, msg_id: str) -> Batch | None:
        with self.c.sessions() as s:
            return s.scalars(
                select(Batch)
                .join(Campaign, Campaign.id == Batch.campaign_id)
                .where(Campaign.account_id == account_id, Batch.platform_msg_id == msg_id)
            ).first()

    # -- polling --------------------------------------------------------------------------------
    def settle_accepted(self, older_than: float) -> int:
        """Poll the platform for accepted batches that are due a look; returns how many ended.

        Channels with a ``poll_interval`` (results only by polling) are asked every interval;
        the others (results by callback) only once their callback is ``older_than`` overdue.
        """
        return asyncio.run(self._settle_accepted(older_than))

    def _due_for_poll(self, older_than: float) -> list[tuple[Batch, Account, Campaign]]:
        now = time.time()
        with self.c.sessions() as s:
            rows = s.execute(
                select(Batch, Account, Campaign)
                .join(Campaign, Campaign.id == Batch.campaign_id)
                .join(Account, Account.id == Campaign.account_id)
                .where(Batch.state == "accepted")
                .order_by(Batch.polled_at.is_not(None), Batch.polled_at)
                .limit(200)
            ).all()
        due = []
        for batch, acc, camp in rows:
            interval = channel_class(camp.channel).poll_interval
            wait = interval if interval is not None else older_than
            last = batch.polled_at or batch.accepted_at or 0.0
            if now - last >= wait:
                due.append((batch, acc, camp))
        return due

    async def _settle_accepted(self, older_than: float) -> int:
        settled = 0
        async with HttpClient(self.c.settings.http_timeout) as http:
            for batch, acc, camp in self._due_for_poll(older_than):
                adapter = self.c.accounts.adapter(acc, http, camp.channel)
                try:
                    result = await adapter.settle(str(batch.platform_msg_id))
                except Exception as exc:  # transport or API error: one batch never stops the rest
                    log.warning("polling batch %s failed (will poll again): %s", batch.id, exc)
                    result = None
                settled += self.apply_settlement(batch, result)
        return settled

    def apply_settlement(self, batch: Batch, result: Settlement | None) -> int:
        """Record a poll's result; returns 1 when the batch reached its final state."""
        now = time.time()
        values: dict[str, Any] = {"polled_at": now}
        if result is not None:
            self._apply_recipients(batch, result)
            counts = result.counts
            for key, column in COUNT_COLUMNS.items():
                if key in counts:
                    values[column] = int(counts[key])
            values["platform_status"] = result.status[:64]
            if result.final:
                values["state"] = BatchState.DONE if result.ok else BatchState.FAILED
                values["finished_at"] = now
        with self.c.sessions() as s:
            s.execute(
                update(Batch)
                .where(Batch.id == batch.id, Batch.state == "accepted")
                .values(**values)
            )
            if result is not None and result.final:
                # Recipients the platform gave no individual word on follow the job's outcome.
                s.execute(
                    update(Delivery)
                    .where(
                        Delivery.campaign_id == batch.campaign_id,
                        Delivery.batch_no == batch.batch_no,
                        Delivery.status == "sending",
                    )
                    .values(
                        status="sent" if result.ok else "failed",
                        reason=None if result.ok else f"platform: {result.status}"[:200],
                        updated_at=now,
                    )
                )
            s.commit()
        if result is not None and result.final:
            self.c.dispatcher.check_campaign(batch.campaign_id)
            return 1
        return 0

    def _apply_recipients(self, batch: Batch, result: Settlement) -> None:
        if not result.recipients:
            return
        decrypt = self.c.keyring.decrypt
        with self.c.engine.connect() as conn:
            ids = {
                decrypt(enc): int(did)
                for did, enc in conn.execute(
                    q.BATCH_DELIVERIES,
                    {"campaign_id": batch.campaign_id, "batch_no": batch.batch_no},
                )
            }
        now = time.time()
        rows = [
            {
                "delivery_id": ids[rid],
                "status": outcome.status,
                "reason": outcome.reason,
                "msg_id": None,
                "now": now,
            }
            for rid, outcome in result.recipients.items()
            if rid in ids
        ]
        if rows:
            with self.c.engine.begin() as conn:
                conn.execute(q.MARK_DELIVERY_OUTCOME, rows)

    def apply_receipts(self, acc: Account, receipts: list[tuple[str, RecipientOutcome]]) -> int:
        """Apply per-recipient receipts pushed by a platform (SMS delivery reports, bounces).

        Each receipt names the per-recipient message id the adapter returned at send time
        (``BatchOutcome.recipient_msg_ids``), which the dispatcher stored on the delivery.
        Returns how many deliveries changed.
        """
        if not receipts:
            return 0
        now = time.time()
        changed = 0
        campaigns = select(Campaign.id).where(Campaign.account_id == acc.id)
        with self.c.sessions() as s:
            for msg_id, outcome in receipts:
                result = s.execute(
                    update(Delivery)
                    .where(Delivery.platform_msg_id == msg_id, Delivery.campaign_id.in_(campaigns))
                    .values(status=outcome.status, reason=outcome.reason, updated_at=now)
                )
                changed += int(result.rowcount)  # type: ignore[attr-defined]
            s.commit()
        return changed


COUNT_COLUMNS = {
    "total": "total_count",
    "filter": "filter_count",
    "sent": "sent_count",
    "error": "error_count",
}
