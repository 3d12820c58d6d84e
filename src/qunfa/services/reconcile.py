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

from qunfa.channels.http import HttpClient, TransportError
from qunfa.channels.wechat_oa import WechatApiError
from qunfa.domain.states import BatchState
from qunfa.storage.models import Account, Batch, Campaign, Delivery, Event

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.reconcile")
_ERR = re.compile(r"err\((\d+)\)")


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
        self._store_event(acc, event or fields.get("MsgType", "message"), key, fields)
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
        if not ok:
            values["last_error"] = f"platform job ended with {status!r}"
            if m := _ERR.search(status):
                values["last_errcode"] = m.group(1)
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
        """Ask the platform about accepted batches whose callback is overdue."""
        return asyncio.run(self._settle_accepted(older_than))

    async def _settle_accepted(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        with self.c.sessions() as s:
            rows = s.execute(
                select(Batch, Account)
                .join(Campaign, Campaign.id == Batch.campaign_id)
                .join(Account, Account.id == Campaign.account_id)
                .where(Batch.state == "accepted", Batch.accepted_at < cutoff)
                .limit(100)
            ).all()
        settled = 0
        async with HttpClient(self.c.settings.http_timeout) as http:
            for batch, acc in rows:
                camp = self.c.campaigns.get(batch.campaign_id)
                adapter = self.c.accounts.adapter(acc, http, camp.channel)
                try:
                    result = await adapter.settle(str(batch.platform_msg_id))
                except (TransportError, WechatApiError) as exc:
                    log.warning("settling batch %s failed: %s", batch.id, exc)
                    continue
                if result is None or not result.final:
                    continue
                with self.c.sessions() as s:
                    s.execute(
                        update(Batch)
                        .where(Batch.id == batch.id, Batch.state == "accepted")
                        .values(
                            state=BatchState.DONE if result.ok else BatchState.FAILED,
                            platform_status=result.status,
                            finished_at=time.time(),
                        )
                    )
                    s.commit()
                settled += 1
                self.c.dispatcher.check_campaign(batch.campaign_id)
        return settled
