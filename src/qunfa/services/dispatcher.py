"""Send one batch, exactly once: lease → ledger → platform call → ledger.

1. **Lease** the batch in one UPDATE (``LEASE_BATCH``). A batch whose previous holder's lease
   expired is *in doubt*: that holder may have reached the platform before dying.
2. An in-doubt batch older than the platform's dedupe window is marked **unknown** and never
   re-sent; younger ones are re-sent with the **same idempotency key**, so the platform
   answers with the original message id (45065 for Official Accounts) instead of sending twice.
3. The ledger rows move planned → sending *before* the call and sending → sent/failed after.
4. The outcome's :class:`ErrorClass` decides: retry with backoff, defer to the next quota
   period, fail the batch, or pause the campaign for an account problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.registry import channel_class
from qunfa.domain.backoff import backoff_delay
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.domain.states import TERMINAL_BATCH_STATES, BatchState, CampaignState
from qunfa.services import links, list_minimum
from qunfa.services.personalise import personalise_batch
from qunfa.storage import queries as q
from qunfa.storage.models import Account, Batch, Campaign

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.dispatch")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Dispatcher:
    def __init__(self, c: Container) -> None:
        self.c = c
        self._local = threading.local()
        # Every thread's loop and session, so that shutdown can close those of worker threads
        # that have already stopped (unclosed aiohttp sessions are reported at exit).
        self._opened: list[tuple[asyncio.AbstractEventLoop, HttpClient]] = []
        self._opened_lock = threading.Lock()

    def run(self, batch_id: int) -> str:
        """Entry point for a worker thread.

        Each thread keeps one event loop and one HTTP session (keep-alive connections) for all
        the batches it runs: a fresh loop, session and TCP connection per batch cost more than a
        200-number SMS call itself.
        """
        local = self._local
        if getattr(local, "loop", None) is None:
            local.loop = asyncio.new_event_loop()
            local.http = HttpClient(lambda: self.c.settings.http_timeout)
            with self._opened_lock:
                self._opened.append((local.loop, local.http))
        result: str = local.loop.run_until_complete(self.send(batch_id, local.http))
        return result

    def close(self) -> None:
        """Release every thread's loop and session; call once the worker threads have stopped
        (a loop still running in another thread is left alone). The loops are run in a helper
        thread: the caller's own thread may be running an event loop of its own."""
        local = self._local
        if getattr(local, "loop", None) is not None:
            local.loop = None
        with self._opened_lock:
            opened, self._opened = self._opened, []
        opened = [(lp, h) for lp, h in opened if not (lp.is_running() or lp.is_closed())]
        if not opened:
            return

        def close_all() -> None:
            for loop, http in opened:
                try:
                    loop.run_until_complete(http.close())
                except Exception:  # shutting down: a session that will not close is left
                    log.debug("could not close a worker thread's HTTP session", exc_info=True)
                finally:
                    loop.close()

        closer = threading.Thread(target=close_all, name="qunfa-dispatch-close")
        closer.start()
        closer.join()

    async def send(self, batch_id: int, http: HttpClient) -> str:
        """Send batch ``batch_id`` if it is due; returns the batch's state afterwards."""
        s = self.c.settings
        owner = worker_id()
        with self.c.sessions() as session:
            found = session.execute(
                select(Batch, Campaign, Account)
                .join(Campaign, Campaign.id == Batch.campaign_id)
                .join(Account, Account.id == Campaign.account_id)
                .where(Batch.id == batch_id)
            ).one_or_none()
        if found is None:
            return "missing"
        batch, camp, acc = found
        if camp.state != CampaignState.SENDING:
            return f"campaign {camp.state}"
        if (refused := self.c.review.refuse_batch(camp)) is not None:
            return str(refused)  # content changed after check/approval: the gate, again
        now = time.time()
        with self.c.engine.begin() as conn:
            leased = conn.execute(
                q.LEASE_BATCH,
                {
                    "batch_id": batch_id,
                    "owner": owner,
                    "now": now,
                    "lease_seconds": s.lease_seconds,
                    "yes": True,
                },
            ).rowcount
        if leased != 1:
            return "busy"  # another worker has it, or it is not due yet
        with self.c.sessions() as session:
            batch = session.get(Batch, batch_id)  # type: ignore[assignment]
            assert batch is not None
        cls = channel_class(camp.channel)
        window = cls.resend_window(self.c.accounts.config(acc, camp.channel).rules, s.unknown_after)
        if batch.in_doubt and now - (batch.first_attempt_at or now) >= window:
            # The previous attempt may have reached the platform and its dedupe no longer
            # covers a re-send (or it never did, as for SMS): a person decides, never a retry.
            reason = (
                "in doubt: the platform has no dedupe for a re-send"
                if not cls.idempotent
                else "in doubt beyond the platform's dedupe window"
            )
            self._finish(batch, owner, BatchState.UNKNOWN, reason)
            return BatchState.UNKNOWN

        # Consent (docs/consent.md): withdrawals since planning are honoured right here.
        check = self.c.consent.before_send(camp, batch.batch_no)
        if check.hold is not None:
            self._commit(batch, owner, {"state": BatchState.RETRY, "enqueued_at": None})
            self.pause(camp.id, f"consent: {check.hold}")
            return BatchState.RETRY
        camp.mode = check.mode
        rows = self._recipients(camp.id, batch.batch_no) if camp.mode != "to_all" else []
        if not rows and (camp.mode in ("list", "template") or check.skipped):
            self._finish(batch, owner, BatchState.DONE, None)  # every recipient already settled
            return BatchState.DONE
        rules = self.c.accounts.config(acc, camp.channel).rules
        if (lone := list_minimum.refusal(camp.channel, camp.mode, rules, len(rows))) is not None:
            # mass/send with one openid is refused (40130): fail them here, say what to use.
            self._finish(batch, owner, BatchState.FAILED, lone)
            return BatchState.FAILED
        recipients = [openid for _, openid in rows]
        content = camp.content
        if "material_id" in content:  # a material reference: resolve it, upload its media once
            try:
                content = await self.c.materials.content_for_send(content, acc, camp.channel, http)
            except Exception as exc:  # any upload failure: nothing was sent yet
                return self._material_failed(batch, owner, exc)
        # Per-recipient rendering (docs/content.md, services/personalise.py); None: same for all.
        personal = personalise_batch(self.c, camp.channel, content, camp.id, batch.batch_no, rows)
        # Tracked links name their recipient where the channel renders per person (links.py).
        personal = links.attribute(self.c, camp, content, rows, personal)
        if personal is not None and not cls.personalises:  # never send a raw {{ name }}
            why = f"{camp.channel} cannot send per-recipient content; remove per-person variables"
            self._finish(batch, owner, BatchState.FAILED, why)
            return BatchState.FAILED
        self._mark(camp.id, batch.batch_no, ("planned",), "sending", None)

        adapter = self.c.accounts.adapter(acc, http, camp.channel)
        tag_id = None
        if camp.mode == "tag":
            tag_id = self._platform_tag_id(acc.id, camp.audience.partition(":")[2])
        outbound = OutboundBatch(
            campaign_uid=camp.uid,
            batch_no=batch.batch_no,
            key=batch.idempotency_key,
            mode=camp.mode,
            content=content,
            recipients=recipients if personal is None else personal.recipients,
            tag_id=tag_id,
            unsubscribe=self._unsubscribe_tokens(camp.channel, rows),
            personal=None if personal is None else personal.content,
        )
        if personal is None or personal.content:
            outcome = await adapter.send_batch(outbound)
        else:  # every recipient failed to render: nothing to send
            outcome = BatchOutcome(accepted=True, done=True)
        if personal is not None:
            outcome = personal.merge(outcome)
        if content is not camp.content:
            outcome = self._media_refused(batch, content, outcome)
        return self.record(batch, camp, owner, outcome, dict((o, d) for d, o in rows))

    # -- material media (docs/content.md) ------------------------------------------------------
    def _material_failed(self, batch: Batch, owner: str, exc: Exception) -> str:
        """Resolving or uploading the campaign's material failed before anything was sent.

        A refusal of the file itself (type, size: :class:`MaterialError`) fails the batch with
        the platform's words; anything else (network, token) is retried with backoff.
        """
        from qunfa.services.materials import MaterialError

        if isinstance(exc, MaterialError):
            self._finish(batch, owner, BatchState.FAILED, f"material: {exc}"[:500])
            return BatchState.FAILED
        wait = backoff_delay(
            batch.attempts, base=self.c.settings.retry_base, cap=self.c.settings.retry_max
        )
        values = {
            "state": BatchState.RETRY,
            "next_attempt_at": time.time() + wait,
            "enqueued_at": None,
            "last_error": f"material upload: {exc!r}"[:500],
        }
        self._commit(batch, owner, values)
        return BatchState.RETRY

    def _media_refused(
        self, batch: Batch, sent: dict[str, Any], outcome: BatchOutcome
    ) -> BatchOutcome:
        """40007 (invalid media_id) on content built from a material: the platform forgot a
        cached upload (deleted, expired early). Forget it here too and retry once — the retry
        uploads again. A second 40007 in a row is the batch's error as classified."""
        error = outcome.error
        if outcome.accepted or error is None or str(error.code) != "40007":
            return outcome
        for media_id in _media_ids(sent):
            self.c.materials.invalidate(media_id)
        if batch.last_errcode == "40007":
            return outcome
        retry = PlatformError(error.code, error.message, ErrorClass.RETRYABLE, error.retry_after)
        return dataclasses.replace(outcome, error=retry)

    # -- reading --------------------------------------------------------------------------------
    def _recipients(self, campaign_id: int, batch_no: int) -> list[tuple[int, str]]:
        decrypt = self.c.keyring.decrypt
        with self.c.engine.connect() as conn:
            result = conn.execute(
                q.BATCH_RECIPIENTS, {"campaign_id": campaign_id, "batch_no": batch_no}
            )
            return [(int(did), decrypt(enc)) for did, enc in result]

    def _unsubscribe_tokens(self, channel: str, rows: list[tuple[int, str]]) -> dict[str, str]:
        """Signed one-click unsubscribe tokens (``/u/<token>``) per recipient, for e-mail."""
        if channel != "email":
            return {}
        token = self.c.consent.unsubscribe_token
        return {recipient: token(did) for did, recipient in rows}

    def _platform_tag_id(self, account_id: int, name: str) -> int | None:
        from qunfa.storage.models import Tag

        with self.c.sessions() as s:
            return s.scalar(
                select(Tag.platform_tag_id).where(Tag.account_id == account_id, Tag.name == name)
            )

    # -- writing --------------------------------------------------------------------------------
    def _mark(
        self,
        campaign_id: int,
        batch_no: int,
        from_status: tuple[str, ...],
        to_status: str,
        reason: str | None,
    ) -> None:
        with self.c.engine.begin() as conn:
            conn.execute(
                q.mark_batch_sql(from_status, to_status),
                {
                    "campaign_id": campaign_id,
                    "batch_no": batch_no,
                    "from_status": list(from_status),
                    "to_status": to_status,
                    "reason": reason,
                    "now": time.time(),
                },
            )

    def _commit(
        self,
        batch: Batch,
        owner: str,
        values: dict[str, Any],
        moves: tuple[tuple[tuple[str, ...], str, str | None], ...] = (),
    ) -> bool:
        """Write an attempt's result and its ledger moves in ONE transaction.

        The batch row is updated only if we still hold the lease (a late writer loses); the
        delivery rows move (from statuses → status, reason) in the same transaction, so a crash
        can never leave a batch recorded as accepted with its recipients still "sending".
        """
        now = time.time()
        with self.c.engine.begin() as conn:
            result = conn.execute(
                update(Batch)
                .where(Batch.id == batch.id, Batch.state == "sending", Batch.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None, **values)
            )
            if result.rowcount != 1:
                log.warning("batch %s: lease lost before recording %s", batch.id, values)
                return False
            for from_status, to_status, reason in moves:
                conn.execute(
                    q.mark_batch_sql(from_status, to_status),
                    {
                        "campaign_id": batch.campaign_id,
                        "batch_no": batch.batch_no,
                        "from_status": list(from_status),
                        "to_status": to_status,
                        "reason": reason,
                        "now": now,
                    },
                )
        return True

    def _finish(self, batch: Batch, owner: str, state: BatchState, error: str | None) -> None:
        status = {BatchState.UNKNOWN: "unknown", BatchState.FAILED: "failed"}.get(state)
        moves = ((("planned", "sending"), status, error),) if status else ()
        values = {"state": state, "last_error": error, "finished_at": time.time()}
        if self._commit(batch, owner, values, moves):
            self.check_campaign(batch.campaign_id)

    def record(
        self,
        batch: Batch,
        camp: Campaign,
        owner: str,
        outcome: BatchOutcome,
        delivery_of: dict[str, int],
    ) -> str:
        now = time.time()
        self._record_recipients(outcome, delivery_of, now)
        # Ids and counts only: recipients are PII, and platform messages may quote them.
        log.info(
            "campaign %s batch %s (#%s, attempt %s): %s; %d recipient(s) accepted, %d failed%s",
            camp.id, batch.id, batch.batch_no, batch.attempts,
            "accepted" if outcome.accepted else f"error {outcome.error and outcome.error.code}",
            len(outcome.recipient_msg_ids), len(outcome.recipient_failures),
            f"; first failure: {next(iter(outcome.recipient_failures.values())).describe()}"
            if outcome.recipient_failures else "",
        )  # fmt: skip
        if outcome.accepted:
            state = BatchState.DONE if outcome.done else BatchState.ACCEPTED
            values = {
                "state": state,
                "platform_msg_id": outcome.platform_msg_id,
                "accepted_at": now,
                "finished_at": now if outcome.done else None,
                "last_error": None,
                "last_errcode": None,
            }
            # Channels whose results come by polling (WeCom customer tasks wait for staff to
            # confirm) keep their recipients "sending" until the platform reports each one.
            cls = channel_class(camp.channel)
            later = (cls.poll_interval is not None or cls.results_later) and not outcome.done
            moves = () if later else ((("sending",), "sent", None),)
            if self._commit(batch, owner, values, moves):
                if outcome.done:
                    self.check_campaign(camp.id)
                elif outcome.platform_msg_id:
                    # The job-finish callback may have beaten us here; apply it now if so.
                    acc = self.c.accounts.get(camp.account_id)
                    self.c.reconciler.apply_pending_mass_event(acc, outcome.platform_msg_id)
            return state
        error = outcome.error
        assert error is not None
        in_doubt = batch.in_doubt or outcome.in_doubt
        common = {"last_errcode": str(error.code), "last_error": error.message[:500]}
        attempts = batch.attempts
        if error.klass is ErrorClass.RETRYABLE and attempts >= self.c.settings.max_attempts:
            final = BatchState.UNKNOWN if in_doubt else BatchState.FAILED
            self._finish(
                batch, owner, final, f"gave up after {attempts} attempts: {error.describe()}"
            )
            return final
        if error.klass in (ErrorClass.BATCH, ErrorClass.RECIPIENT):
            self._finish(batch, owner, BatchState.FAILED, error.describe())
            return BatchState.FAILED
        if error.klass is ErrorClass.QUOTA:
            wait = error.retry_after or 3600.0
            state = BatchState.DEFERRED
        elif error.klass is ErrorClass.ACCOUNT:
            wait = 60.0
            state = BatchState.RETRY
            self.pause(camp.id, f"account problem: {error.describe()} — fix it, then resume")
        else:
            rng_wait = backoff_delay(
                attempts,
                base=self.c.settings.retry_base,
                cap=self.c.settings.retry_max,
                minimum=error.retry_after,
            )
            wait, state = rng_wait, BatchState.RETRY
        values = {
            "state": state,
            "next_attempt_at": now + wait,
            "enqueued_at": None,
            "in_doubt": in_doubt,
            **common,
        }
        # Nothing reached the platform unless in doubt: those recipients go back to planned.
        moves = () if in_doubt else ((("sending",), "planned", None),)
        self._commit(batch, owner, values, moves)
        return state

    def _record_recipients(
        self, outcome: BatchOutcome, delivery_of: dict[str, int], now: float
    ) -> None:
        rows = [
            {
                "delivery_id": delivery_of[o],
                "status": "sent",
                "reason": None,
                "msg_id": m,
                "now": now,
            }
            for o, m in outcome.recipient_msg_ids.items()
            if o in delivery_of
        ] + [
            {
                "delivery_id": delivery_of[o],
                "status": "failed",
                "reason": e.describe()[:200],
                "msg_id": None,
                "now": now,
            }
            for o, e in outcome.recipient_failures.items()
            if o in delivery_of
        ]
        if rows:
            with self.c.engine.begin() as conn:
                conn.execute(q.MARK_DELIVERY, rows)

    # -- campaign level -------------------------------------------------------------------------
    def pause(self, campaign_id: int, reason: str) -> None:
        with self.c.sessions() as s:
            s.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.state == CampaignState.SENDING)
                .values(state=CampaignState.PAUSED, last_error=reason)
            )
            s.commit()

    def check_campaign(self, campaign_id: int) -> bool:
        """Mark the campaign done when every batch is terminal; True if it is done."""
        terminal = [str(st) for st in TERMINAL_BATCH_STATES]
        with self.c.sessions() as s:
            # EXISTS on ix_batches_campaign_state stops at the first open batch: this runs
            # after every synchronous batch, and a count would make a campaign quadratic.
            open_batch = s.scalar(
                select(Batch.id)
                .where(Batch.campaign_id == campaign_id, Batch.state.not_in(terminal))
                .limit(1)
            )
            if open_batch is not None:
                return False
            s.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.state == CampaignState.SENDING)
                .values(state=CampaignState.DONE, finished_at=time.time())
            )
            s.commit()
            return True


_MEDIA_KEYS = ("media_id", "thumb_media_id", "pic_media_id")


def _media_ids(value: Any) -> list[str]:
    """Every media id in a channel content (``media_id``, ``thumb_media_id``, ``pic_media_id``)."""
    if isinstance(value, dict):
        found = [str(v) for k, v in value.items() if k in _MEDIA_KEYS and isinstance(v, str)]
        return found + [m for v in value.values() for m in _media_ids(v)]
    if isinstance(value, list):
        return [m for v in value for m in _media_ids(v)]
    return []
