"""Personal WeChat, assisted-manual: hand prepared batches to a person and record their marks.

qunfa never drives the WeChat client. The dispatcher "sends" a ``personal_wechat`` batch by
accepting it (no I/O, see :mod:`qunfa.channels.personal_wechat`); it then waits in state
``accepted``. This service is the person's side:

* :meth:`PersonalService.due_batches` — the accepted batches of an account, each with the
  copy-ready text, the friends' remark names (decrypted) and a per-batch tracked link;
* :meth:`PersonalService.mark` — the person says how it went: ``sent``, ``failed`` or
  ``throttled`` (WeChat showed a risk warning or limited the account: the rest of the campaign is
  cancelled, the campaign paused, an alert stored). One mark is one transaction; repeating a
  mark is a no-op, a conflicting one is refused;
* :meth:`PersonalService.click` — a tracked link was opened: store the click, return the target.

The tracked link is ``<public_url>/t/<token>``, token = the first 16 hex digits of
HMAC-SHA256(keyring blind key, batch key): stable for a batch, unguessable without the keyring.
Tokens are registered (an ``events`` row) when a batch is first prepared, so a click finds its
batch by the unique dedupe key instead of hashing every batch.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from qunfa.channels.personal_wechat import LINK_PLACEHOLDER, PersonalWechat
from qunfa.channels.wechat_oa import CHINA
from qunfa.domain.states import TERMINAL_BATCH_STATES, BatchState, CampaignState
from qunfa.storage import queries as q
from qunfa.storage.models import Account, Batch, Campaign, Event

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.personal")

CHANNEL = PersonalWechat.key
Outcome = Literal["sent", "failed", "throttled"]
OUTCOMES: tuple[str, ...] = ("sent", "failed", "throttled")
ALERT_THROTTLED = "alert.personal_wechat.throttled"
CLICK = "click.personal_wechat"
LINK = "link.personal_wechat"
# The batch state each mark leads to; the mark itself is kept in Batch.platform_status (the
# person is this channel's "platform").
MARK_STATE = {"sent": BatchState.DONE, "failed": BatchState.FAILED, "throttled": BatchState.FAILED}


class PersonalError(ValueError):
    """A request this service cannot serve (wrong channel, bad outcome …)."""


class NotFound(PersonalError):
    pass


class MarkConflict(PersonalError):
    """The batch was already marked differently, or cannot be marked in its state."""


@dataclass(frozen=True)
class PreparedBatch:
    """One batch as the person needs it: what to paste, to whom, and the link to include."""

    batch_id: int
    key: str
    campaign_id: int
    campaign: str
    batch_no: int
    size: int
    text: str  # copy-ready: the campaign text with the tracked link in place
    remarks: list[str]  # friends' remark names, in planning order
    link: str | None  # the batch's tracked link (None when the content has no url)
    handed_over_at: float | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MarkResult:
    batch_id: int
    outcome: str
    changed: bool  # False: the same mark was already recorded (a repeat is a no-op)
    batch_state: str
    campaign_state: str
    cancelled: int = 0  # batches cancelled by a ``throttled`` mark


def link_token(blind_key: bytes, batch_key: str) -> str:
    """The tracked-link token of a batch: 16 hex digits of HMAC-SHA256(blind key, batch key)."""
    return hmac.new(blind_key, batch_key.encode(), hashlib.sha256).hexdigest()[:16]


def copy_text(text: str, url: str | None, link: str | None) -> str:
    """The text to paste: ``{link}`` or the literal url replaced by the link, else appended."""
    if not link:
        return text
    if LINK_PLACEHOLDER in text:
        return text.replace(LINK_PLACEHOLDER, link)
    if url and url in text:
        return text.replace(url, link)
    return f"{text.rstrip()}\n{link}"


class PersonalService:
    def __init__(self, c: Container) -> None:
        self.c = c

    def link(self, batch_key: str) -> str:
        token = link_token(self.c.keyring.blind_key, batch_key)
        return f"{self.c.settings.public_url.rstrip('/')}/t/{token}"

    # -- the person's queue ---------------------------------------------------------------------
    def due_batches(
        self, account_ref: int | str, campaign_id: int | None = None
    ) -> list[PreparedBatch]:
        """Accepted (handed-over, unmarked) batches of sending campaigns on this account.

        A paused campaign hands out nothing: the person must not keep sending after a
        throttle or while an operator has stopped the campaign.
        """
        acc = self._account(account_ref)
        query = (
            select(Batch, Campaign)
            .join(Campaign, Campaign.id == Batch.campaign_id)
            .where(
                Campaign.account_id == acc.id,
                Campaign.channel == CHANNEL,
                Campaign.state == CampaignState.SENDING,
                Batch.state == BatchState.ACCEPTED,
            )
            .order_by(Batch.accepted_at, Campaign.id, Batch.batch_no)
        )
        if campaign_id is not None:
            query = query.where(Campaign.id == campaign_id)
        with self.c.sessions() as s:
            rows = s.execute(query).all()
        rules = self.c.accounts.config(acc, CHANNEL).rules
        prepared = [self._prepare(batch, camp, rules["text_advised_chars"]) for batch, camp in rows]
        self._register_links(acc, [p for p in prepared if p.link])
        return prepared

    def _prepare(self, batch: Batch, camp: Campaign, advised: int) -> PreparedBatch:
        content: dict[str, Any] = dict(camp.content or {})
        text, url = str(content.get("text", "")), content.get("url")
        link = self.link(batch.idempotency_key) if url else None
        warnings = []
        if len(text) > advised:
            warnings.append(
                f"the text is {len(text)} characters; keep it within {advised} (seeds: "
                "建议文字控制在300字以内) so friends read it"
            )
        return PreparedBatch(
            batch_id=batch.id,
            key=batch.idempotency_key,
            campaign_id=camp.id,
            campaign=camp.name,
            batch_no=batch.batch_no,
            size=batch.size,
            text=copy_text(text, url, link),
            remarks=self._remarks(camp.id, batch.batch_no),
            link=link,
            handed_over_at=batch.accepted_at,
            warnings=warnings,
        )

    def _remarks(self, campaign_id: int, batch_no: int) -> list[str]:
        decrypt = self.c.keyring.decrypt
        with self.c.engine.connect() as conn:
            rows = conn.execute(
                q.BATCH_DELIVERIES, {"campaign_id": campaign_id, "batch_no": batch_no}
            ).all()
        return [decrypt(enc) for _, enc in sorted(rows, key=lambda r: int(r[0]))]

    def _register_links(self, acc: Account, prepared: list[PreparedBatch]) -> None:
        """Record token → batch once per batch (``events``, unique dedupe key) for clicks."""
        if not prepared:
            return
        keys = {f"{LINK}:{p.link.rsplit('/', 1)[1]}": p for p in prepared if p.link}
        with self.c.sessions() as s:
            known = set(s.scalars(select(Event.dedupe_key).where(Event.dedupe_key.in_(keys))))
        for key, p in keys.items():
            if key in known:
                continue
            try:
                with self.c.engine.begin() as conn:
                    conn.execute(
                        insert(Event).values(
                            account_id=acc.id,
                            kind=LINK,
                            dedupe_key=key,
                            campaign_id=p.campaign_id,
                            batch_id=p.batch_id,
                            payload={"batch_key": p.key, "link": p.link},
                            received_at=time.time(),
                        )
                    )
            except IntegrityError:
                pass  # another process registered it first: same token, same batch

    # -- marks ----------------------------------------------------------------------------------
    def mark(self, batch_id: int, outcome: str, note: str | None = None) -> MarkResult:
        """Record the person's outcome for one handed-over batch (see the module docstring)."""
        if outcome not in OUTCOMES:
            raise PersonalError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        batch, camp, acc = self._batch(batch_id)
        repeat = self._repeat(batch, camp, outcome)
        if repeat is not None:
            return repeat
        note = (note or "").strip() or None
        now, cancelled = time.time(), 0
        with self.c.engine.begin() as conn:
            taken = conn.execute(
                update(Batch)
                .where(Batch.id == batch.id, Batch.state == BatchState.ACCEPTED)
                .values(**self._batch_values(batch, outcome, note, now))
            ).rowcount
            if taken == 1:
                cancelled = self._apply(conn, batch, camp, acc, outcome, note, now)
        if taken != 1:  # another mark won the race: answer as if it had come first
            batch, camp, _ = self._batch(batch_id)
            repeat = self._repeat(batch, camp, outcome)
            assert repeat is not None
            return repeat
        if outcome == "throttled":
            log.warning(
                "personal WeChat %s was throttled on campaign %s (%s) batch %s: %s — the "
                "campaign is paused and its %d remaining batches are cancelled",
                acc.app_id, camp.id, camp.name, batch.batch_no, note or "no note", cancelled,
            )  # fmt: skip
        self.c.dispatcher.check_campaign(camp.id)
        with self.c.sessions() as s:
            state = s.scalar(select(Campaign.state).where(Campaign.id == camp.id)) or ""
        return MarkResult(batch.id, outcome, True, MARK_STATE[outcome], state, cancelled)

    def _batch_values(
        self, batch: Batch, outcome: str, note: str | None, now: float
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "state": MARK_STATE[outcome],
            "platform_status": outcome,
            "finished_at": now,
            "total_count": batch.size,
            "sent_count": batch.size if outcome == "sent" else 0,
            "error_count": 0 if outcome == "sent" else batch.size,
            "last_error": note,
            "last_errcode": None,
        }
        if outcome == "throttled":
            values["last_errcode"] = "throttled"
            values["last_error"] = f"throttled: {note}" if note else "throttled"
        return values

    def _apply(
        self,
        conn: Connection,
        batch: Batch,
        camp: Campaign,
        acc: Account,
        outcome: str,
        note: str | None,
        now: float,
    ) -> int:
        """The ledger moves of one mark, inside the mark's transaction; returns cancellations."""
        if outcome == "sent":
            self._move(conn, camp.id, [batch.batch_no], ("sending", "sent"), "sent", None, now)
            return 0
        reason = f"{outcome} (marked by the sender)" + (f": {note}" if note else "")
        self._move(conn, camp.id, [batch.batch_no], ("planned", "sending", "sent"), "failed",
                   reason, now)  # fmt: skip
        if outcome == "failed":
            return 0
        # Throttled: stop everything else now. Recipients of the cancelled batches were
        # deliberately not sent to (suppressed), so nobody reads them as still pending.
        terminal = [str(s) for s in TERMINAL_BATCH_STATES]
        others = list(
            conn.execute(
                select(Batch.batch_no).where(
                    Batch.campaign_id == camp.id,
                    Batch.id != batch.id,
                    Batch.state.not_in(terminal),
                )
            ).scalars()
        )
        why = f"account {acc.app_id} was throttled on batch {batch.batch_no}"
        if others:
            conn.execute(
                update(Batch)
                .where(Batch.campaign_id == camp.id, Batch.batch_no.in_(others))
                .values(
                    state=BatchState.CANCELLED,
                    last_error=f"cancelled: {why}",
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            self._move(conn, camp.id, others, ("planned", "sending", "sent"), "suppressed",
                       f"cancelled: {why}", now)  # fmt: skip
        conn.execute(
            update(Campaign)
            .where(Campaign.id == camp.id, Campaign.state == CampaignState.SENDING)
            .values(
                state=CampaignState.PAUSED,
                last_error=(
                    f"paused: personal WeChat {why}"
                    + (f" ({note})" if note else "")
                    + f"; {len(others)} remaining batches cancelled. Let the account rest "
                    "before sending again, and send less per day (rule daily_pace)."
                ),
            )
        )
        conn.execute(
            insert(Event).values(
                account_id=acc.id,
                kind=ALERT_THROTTLED,
                dedupe_key=f"{ALERT_THROTTLED}:{batch.id}",
                campaign_id=camp.id,
                batch_id=batch.id,
                payload={
                    "account": acc.app_id,
                    "campaign_id": camp.id,
                    "campaign": camp.name,
                    "batch_id": batch.id,
                    "batch_no": batch.batch_no,
                    "note": note,
                    "cancelled_batches": len(others),
                },
                received_at=now,
            )
        )
        return len(others)

    @staticmethod
    def _move(
        conn: Connection,
        campaign_id: int,
        batch_nos: list[int],
        from_status: tuple[str, ...],
        to_status: str,
        reason: str | None,
        now: float,
    ) -> None:
        for no in batch_nos:  # one statement per batch: IN-lists cannot be executemany'd
            conn.execute(
                q.mark_batch_sql(from_status, to_status),
                {
                    "campaign_id": campaign_id,
                    "batch_no": no,
                    "from_status": list(from_status),
                    "to_status": to_status,
                    "reason": reason[:200] if reason else None,
                    "now": now,
                },
            )

    def _repeat(self, batch: Batch, camp: Campaign, outcome: str) -> MarkResult | None:
        """None when the batch awaits a mark; a no-op result for a repeat; else MarkConflict."""
        if batch.state == BatchState.ACCEPTED:
            return None
        marked = (
            batch.platform_status if batch.state in (BatchState.DONE, BatchState.FAILED) else None
        )
        if marked in OUTCOMES:
            if marked == outcome:
                return MarkResult(batch.id, outcome, False, batch.state, camp.state)
            raise MarkConflict(
                f"batch {batch.id} is already marked {marked!r}; it cannot become {outcome!r}"
            )
        if batch.state in (BatchState.PENDING, BatchState.RETRY, BatchState.DEFERRED):
            due = datetime.fromtimestamp(batch.next_attempt_at, CHINA)
            raise MarkConflict(
                f"batch {batch.id} has not been handed over yet (it is {batch.state}, due "
                f"{due:%Y-%m-%d %H:%M} China time); "
                "send only the batches `qunfa personal batches` lists"
            )
        raise MarkConflict(
            f"batch {batch.id} is {batch.state}"
            + (f" ({batch.last_error})" if batch.last_error else "")
            + "; it cannot be marked"
        )

    # -- tracked links --------------------------------------------------------------------------
    def click(self, token: str, user_agent: str | None = None) -> str:
        """Record a click on a batch's tracked link; returns the campaign's url to redirect to.

        Clicks are stored once per token and second (link previews fetch twice at once).
        """
        with self.c.sessions() as s:
            link = s.scalars(select(Event).where(Event.dedupe_key == f"{LINK}:{token}")).first()
            camp = s.get(Campaign, link.campaign_id) if link and link.campaign_id else None
        url = (camp.content or {}).get("url") if camp else None
        if link is None or camp is None or not isinstance(url, str):
            raise NotFound(f"no tracked link {token!r}")
        now = time.time()
        try:
            with self.c.engine.begin() as conn:
                conn.execute(
                    insert(Event).values(
                        account_id=link.account_id,
                        kind=CLICK,
                        dedupe_key=f"{CLICK}:{token}:{int(now)}",
                        campaign_id=camp.id,
                        batch_id=link.batch_id,
                        payload={"token": token, "user_agent": (user_agent or "")[:300]},
                        received_at=now,
                    )
                )
        except IntegrityError:
            pass  # a second click within the same second: counted once
        return url

    # -- lookups --------------------------------------------------------------------------------
    def _account(self, ref: int | str) -> Account:
        acc: Account = self.c.accounts.get(ref)
        if acc.channel != CHANNEL:
            raise PersonalError(f"account {acc.app_id} is a {acc.channel} account, not {CHANNEL}")
        return acc

    def _batch(self, batch_id: int) -> tuple[Batch, Campaign, Account]:
        with self.c.sessions() as s:
            row = s.execute(
                select(Batch, Campaign, Account)
                .join(Campaign, Campaign.id == Batch.campaign_id)
                .join(Account, Account.id == Campaign.account_id)
                .where(Batch.id == batch_id)
            ).one_or_none()
        if row is None or row[1].channel != CHANNEL:
            raise NotFound(f"no personal_wechat batch {batch_id}")
        return row[0], row[1], row[2]
