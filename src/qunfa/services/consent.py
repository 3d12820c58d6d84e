"""Consent and opt-out: the ledger, the suppression list, and the checks before sending.

Every withdrawal route ends in :meth:`ConsentService.withdraw`: it appends a ``withdrawn`` row
to the append-only ``consents`` ledger for each person concerned and puts their identities of
the scope's kinds (phone for SMS, e-mail for e-mail, openid for the Official Account …) — or
the given raw address — on the ``suppressions`` list, keyed by blind index. Repeating a
withdrawal changes nothing (platform callbacks are retried). Re-granting after a withdrawal
(:meth:`ConsentService.grant` / :meth:`lift`) needs evidence and lifts the suppressions.

Sending honours both, set-based, twice: once at plan time for the whole campaign and once
right before each batch is sent (a withdrawal in between is honoured) —
:meth:`ConsentService.skip_suppressed` marks planned delivery rows ``skipped`` with reason
``suppressed`` or ``opted_out``. See ``docs/consent.md``.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, func, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError

from qunfa.channels.registry import channel_class
from qunfa.domain import consent as dom
from qunfa.domain.consent import ALL, ConsentError
from qunfa.domain.fields import normaliser
from qunfa.domain.keys import batch_key
from qunfa.domain.redact import redact
from qunfa.storage import consent_sql as q
from qunfa.storage.models import (
    Account,
    AuditLog,
    Batch,
    Campaign,
    Consent,
    Delivery,
    Event,
    Identity,
    Suppression,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

SKIP_REASONS = ("suppressed", "opted_out")
IMPORT_PAGE = 5_000


@dataclass(frozen=True)
class ConsentResult:
    """What one grant or withdrawal did."""

    scope: str
    contacts: list[int]  # the people it was recorded for
    recorded: int  # ledger rows appended (0: nothing changed, e.g. a repeated withdrawal)
    suppressed: int  # suppression rows added (withdraw) or removed (grant)


@dataclass(frozen=True)
class PlanConsent:
    """Plan-time outcome: who is left, who was skipped, and why the mode changed."""

    recipients: int
    skipped: dict[str, int]
    note: str | None = None

    @property
    def empty_reason(self) -> str | None:
        if self.recipients or not sum(self.skipped.values()):
            return None
        return "every recipient is suppressed or has withdrawn consent for this channel"


@dataclass(frozen=True)
class SendCheck:
    """Right-before-send outcome for one batch."""

    skipped: int
    mode: str  # the campaign's mode to send with (to_all/tag may have become list)
    hold: str | None = None  # set: do not send; pause the campaign with this reason


@dataclass(frozen=True)
class SuppressionImport:
    rows: int
    added: int
    existing: int
    rejected: int
    errors: list[str]


def _scope_for_kind(kind: str) -> str:
    for scope, kinds in dom.SCOPE_KINDS.items():
        if kind in kinds:
            return scope
    raise ConsentError(f"no scope sends to identity kind {kind!r}")


class ConsentService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- keys and small helpers ------------------------------------------------------------------
    @cached_property
    def token_key(self) -> bytes:
        """Key of the unsubscribe-link HMAC, derived from the keyring's blind key (never
        rotated, so links in sent mail stay valid) and never the blind key itself."""
        return hmac.digest(self.c.keyring.blind_key, b"qunfa/unsubscribe-token/v1", "sha256")

    def value_bi(self, kind: str, address: str) -> bytes:
        """Blind index of an address after the same normalisation imports use."""
        try:
            value = normaliser(kind)(address)
        except ValueError as exc:
            raise ConsentError(str(exc)) from None
        return self.c.keyring.blind(value)

    def _evidence(self, evidence: str | Mapping[str, Any] | None) -> bytes | None:
        if evidence is None or evidence == "":
            return None
        raw = evidence if isinstance(evidence, str) else json.dumps(evidence, ensure_ascii=False)
        return self.c.keyring.encrypt(raw)

    def _audit(self, conn: Connection, actor: str, action: str, target: str, **detail: Any) -> None:
        conn.execute(
            insert(AuditLog).values(
                at=time.time(), actor=actor[:64], action=action, target=target[:200], detail=detail
            )
        )

    def _contacts_of(self, conn: Connection, kind: str, value_bi: bytes) -> list[int]:
        rows = conn.execute(
            select(Identity.contact_id)
            .where(Identity.kind == kind, Identity.value_bi == value_bi)
            .distinct()
            .order_by(Identity.contact_id)
        )
        return [int(r[0]) for r in rows]

    def _entries(self, conn: Connection, contact_id: int) -> list[dom.LedgerEntry]:
        rows = conn.execute(
            select(Consent.scope, Consent.status, Consent.at, Consent.id).where(
                Consent.contact_id == contact_id
            )
        )
        return [dom.LedgerEntry(s, st, float(at), int(i)) for s, st, at, i in rows]

    # -- recording -------------------------------------------------------------------------------
    def withdraw(
        self,
        *,
        scope: str | None = None,
        contact_id: int | None = None,
        kind: str | None = None,
        address: str | None = None,
        value_bi: bytes | None = None,
        source: str,
        reason: str = "withdrawn",
        wording_version: str | None = None,
        evidence: str | Mapping[str, Any] | None = None,
        actor: str = "system",
        conn: Connection | None = None,
    ) -> ConsentResult:
        """Withdraw consent for ``scope`` (a channel key or scope; default: the address kind's).

        Give a person (``contact_id``) or an address (``kind`` + ``address``, or its
        ``value_bi``). Every person holding that address gets a ledger row; the person's
        identities of the scope's kinds and the address itself are suppressed.
        """
        if conn is None:
            with self.c.engine.begin() as own:
                return self.withdraw(
                    scope=scope,
                    contact_id=contact_id,
                    kind=kind,
                    address=address,
                    value_bi=value_bi,
                    source=source,
                    reason=reason,
                    wording_version=wording_version,
                    evidence=evidence,
                    actor=actor,
                    conn=own,
                )
        sc, contacts, bi = self._target(conn, scope, contact_id, kind, address, value_bi)
        now, enc = time.time(), self._evidence(evidence)
        recorded = suppressed = 0
        for cid in contacts:
            if dom.consent_state(self._entries(conn, cid), sc) != dom.WITHDRAWN:
                conn.execute(
                    insert(Consent).values(
                        contact_id=cid,
                        scope=sc,
                        status=dom.WITHDRAWN,
                        source=source[:32],
                        wording_version=wording_version,
                        evidence_enc=enc,
                        at=now,
                    )
                )
                recorded += 1
            suppressed += conn.execute(
                q.SUPPRESS_CONTACT,
                {
                    "scope": sc,
                    "kinds": list(dom.kinds_of(sc)),
                    "contact_id": cid,
                    "reason": reason[:64],
                    "source": source[:32],
                    "now": now,
                },
            ).rowcount
        if bi is not None and kind is not None:
            suppressed += conn.execute(
                q.SUPPRESS_VALUE,
                {
                    "scope": sc,
                    "kind": kind,
                    "value_bi": bi,
                    "contact_id": contacts[0] if contacts else None,
                    "reason": reason[:64],
                    "source": source[:32],
                    "now": now,
                },
            ).rowcount
        if recorded or suppressed:
            self._audit(
                conn,
                actor,
                "consent.withdraw",
                f"contacts:{contacts}" if contacts else f"{kind}:{bi.hex() if bi else ''}",
                scope=sc,
                source=source,
                recorded=recorded,
                suppressed=suppressed,
            )
        return ConsentResult(sc, contacts, recorded, suppressed)

    def grant(
        self,
        *,
        scope: str | None = None,
        contact_id: int | None = None,
        kind: str | None = None,
        address: str | None = None,
        value_bi: bytes | None = None,
        source: str,
        wording_version: str | None = None,
        evidence: str | Mapping[str, Any] | None = None,
        actor: str = "system",
    ) -> ConsentResult:
        """Record consent. After a withdrawal this is a *lift*: it needs ``evidence`` (what the
        person did to opt back in) and removes the person's suppressions on the scope."""
        with self.c.engine.begin() as conn:
            sc, contacts, bi = self._target(conn, scope, contact_id, kind, address, value_bi)
            blocked = self._suppressions_of(conn, sc, contacts, kind, bi)
            withdrawn = [
                cid
                for cid in contacts
                if dom.consent_state(self._entries(conn, cid), sc) == dom.WITHDRAWN
            ]
            if (blocked or withdrawn) and not evidence:
                raise ConsentError(
                    "consent was withdrawn (or the address is suppressed) on this scope: "
                    "re-granting needs evidence of the new consent (--evidence)"
                )
            now, enc = time.time(), self._evidence(evidence)
            for cid in contacts:
                conn.execute(
                    insert(Consent).values(
                        contact_id=cid,
                        scope=sc,
                        status=dom.GRANTED,
                        source=source[:32],
                        wording_version=wording_version,
                        evidence_enc=enc,
                        at=now,
                    )
                )
            lifted = 0
            if blocked:
                lifted = conn.execute(
                    delete(Suppression).where(Suppression.id.in_(blocked))
                ).rowcount
            self._audit(
                conn,
                actor,
                "consent.grant",
                f"contacts:{contacts}" if contacts else f"{kind}:{bi.hex() if bi else ''}",
                scope=sc,
                source=source,
                lifted=lifted,
            )
        return ConsentResult(sc, contacts, len(contacts), lifted)

    def lift(self, *, evidence: str | Mapping[str, Any], **target: Any) -> ConsentResult:
        """Re-grant after a withdrawal; ``evidence`` is required."""
        if not evidence:
            raise ConsentError("lifting a withdrawal needs evidence of the new consent")
        return self.grant(evidence=evidence, **target)

    def _target(
        self,
        conn: Connection,
        scope: str | None,
        contact_id: int | None,
        kind: str | None,
        address: str | None,
        value_bi: bytes | None,
    ) -> tuple[str, list[int], bytes | None]:
        """(scope, people, blind index of the address) of a request."""
        if contact_id is None and kind is None:
            raise ConsentError("give a contact id, or an address and its kind")
        bi = value_bi
        if kind is not None and bi is None:
            if not address:
                raise ConsentError(f"give the {kind} to act on")
            bi = self.value_bi(kind, address)
        if scope is None:
            if kind is None:
                raise ConsentError("give the scope (a channel or sms, email, wechat_oa, … or *)")
            scope = _scope_for_kind(kind)
        sc = dom.scope_of(scope)
        if contact_id is not None:
            return sc, [contact_id], bi
        assert kind is not None and bi is not None
        return sc, self._contacts_of(conn, kind, bi), bi

    def _suppressions_of(
        self,
        conn: Connection,
        scope: str,
        contacts: list[int],
        kind: str | None,
        bi: bytes | None,
    ) -> list[int]:
        """Suppression rows a grant on ``scope`` lifts: the scope's own and ``*`` rows of the
        people's identities of the scope's kinds (those kinds are only used by this scope, so
        lifting their ``*`` rows frees nothing else), and of the given address."""
        scopes = list(dom.SCOPES) if scope == ALL else [scope, ALL]
        kinds = list(dom.kinds_of(scope))
        ids: set[int] = set()
        if contacts:
            ident = select(Identity.kind, Identity.value_bi).where(
                Identity.contact_id.in_(contacts), Identity.kind.in_(kinds)
            )
            ids.update(
                conn.scalars(
                    select(Suppression.id).where(
                        Suppression.scope.in_(scopes),
                        tuple_(Suppression.kind, Suppression.value_bi).in_(ident),
                    )
                )
            )
        if kind is not None and bi is not None:
            ids.update(
                conn.scalars(
                    select(Suppression.id).where(
                        Suppression.scope.in_(scopes),
                        Suppression.kind == kind,
                        Suppression.value_bi == bi,
                    )
                )
            )
        return sorted(ids)

    # -- reading ---------------------------------------------------------------------------------
    def ledger(self, contact_id: int) -> list[dict[str, Any]]:
        """The person's ledger, oldest first, evidence decrypted (for the person's own view)."""
        with self.c.sessions() as s:
            rows = s.scalars(
                select(Consent)
                .where(Consent.contact_id == contact_id)
                .order_by(Consent.at, Consent.id)
            ).all()
        return [
            {
                "id": r.id,
                "scope": r.scope,
                "status": r.status,
                "source": r.source,
                "wording_version": r.wording_version,
                "at": r.at,
                "evidence": self.c.keyring.decrypt(r.evidence_enc) if r.evidence_enc else None,
            }
            for r in rows
        ]

    def state(self, contact_id: int) -> dict[str, Any]:
        """Current state per scope, and the person's suppressed identity kinds per scope."""
        with self.c.engine.connect() as conn:
            states = dom.state_by_scope(self._entries(conn, contact_id))
            rows = conn.execute(
                select(Suppression.scope, Suppression.kind)
                .join(
                    Identity,
                    and_(
                        Identity.kind == Suppression.kind, Identity.value_bi == Suppression.value_bi
                    ),
                )
                .where(Identity.contact_id == contact_id)
                .distinct()
            ).all()
        suppressed: dict[str, list[str]] = {}
        for scope, kind in rows:
            suppressed.setdefault(scope, []).append(kind)
        return {"contact_id": contact_id, "scopes": states, "suppressed": suppressed}

    # -- the suppression list --------------------------------------------------------------------
    def suppress(
        self,
        kind: str,
        address: str,
        scope: str | None = None,
        *,
        reason: str = "manual",
        source: str = "api",
        actor: str = "system",
    ) -> bool:
        """Put one address on the list (its owners' ledgers get a withdrawal too)."""
        res = self.withdraw(
            scope=scope, kind=kind, address=address, source=source, reason=reason, actor=actor
        )
        return res.suppressed > 0

    def unsuppress(
        self, kind: str, address: str, scope: str | None = None, *, actor: str = "system"
    ) -> int:
        """Take an address off the list for ``scope`` (default: its kind's scope; ``*`` too).

        This is an operator's correction (a wrong import), not a re-grant: the ledger keeps its
        withdrawals, so people who withdrew stay out until :meth:`lift`.
        """
        bi = self.value_bi(kind, address)
        sc = (
            dom.scope_of(scope)
            if scope
            else (dom.ADDRESS_SCOPES.get(kind) or _scope_for_kind(kind))
        )
        with self.c.engine.begin() as conn:
            n = conn.execute(
                delete(Suppression).where(
                    Suppression.kind == kind,
                    Suppression.value_bi == bi,
                    Suppression.scope.in_([sc, ALL] if scope is None else [sc]),
                )
            ).rowcount
            if n:
                self._audit(conn, actor, "suppression.remove", f"{kind}:{bi.hex()}", scope=sc)
        return int(n)

    def list_suppressions(
        self,
        scope: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[dict[str, Any]]:
        """A page of the list (keyset by id). Values are shown as blind-index prefixes: the
        list holds no plaintext."""
        stmt = select(Suppression).where(Suppression.id > after_id)
        if scope:
            stmt = stmt.where(Suppression.scope == dom.scope_of(scope))
        if kind:
            stmt = stmt.where(Suppression.kind == kind)
        with self.c.sessions() as s:
            rows = s.scalars(stmt.order_by(Suppression.id).limit(limit)).all()
        return [
            {
                "id": r.id,
                "scope": r.scope,
                "kind": r.kind,
                "value_bi": r.value_bi.hex(),
                "contact_id": r.contact_id,
                "reason": r.reason,
                "source": r.source,
                "created_at": r.created_at,
            }
            for r in rows
        ]

    def is_suppressed(self, kind: str, address: str, scope: str) -> bool:
        bi, sc = self.value_bi(kind, address), dom.scope_of(scope)
        with self.c.engine.connect() as conn:
            return (
                conn.scalar(
                    select(func.count())
                    .select_from(Suppression)
                    .where(
                        Suppression.kind == kind,
                        Suppression.value_bi == bi,
                        Suppression.scope.in_([sc, ALL]),
                    )
                )
                or 0
            ) > 0

    def import_suppressions(
        self,
        path: Path,
        *,
        scope: str | None = None,
        reason: str = "imported",
        source: str = "import",
        actor: str = "system",
    ) -> SuppressionImport:
        """Import a CSV of phones and/or e-mail addresses (first column, or a ``phone`` /
        ``email`` / ``value`` column) onto the global list: normalised, blind-indexed, inserted
        a page at a time with ``ON CONFLICT DO NOTHING``. A row with ``@`` is an e-mail
        address, any other a phone number; ``scope`` defaults to the kind's (sms, email)."""
        rows = added = rejected = 0
        errors: list[str] = []
        page: list[dict[str, Any]] = []

        def flush() -> int:
            if not page:
                return 0
            with self.c.engine.begin() as conn:
                n = int(conn.execute(q.SUPPRESS_VALUE, page).rowcount or 0)
            page.clear()
            return n

        now = time.time()
        for lineno, raw in self._csv_values(path):
            rows += 1
            kind = "email" if "@" in raw else "phone"
            try:
                bi = self.value_bi(kind, raw)
                sc = dom.scope_of(scope) if scope else dom.ADDRESS_SCOPES[kind]
            except ConsentError as exc:
                rejected += 1
                if len(errors) < 100:
                    errors.append(f"line {lineno}: {exc}")
                continue
            page.append(
                {
                    "scope": sc,
                    "kind": kind,
                    "value_bi": bi,
                    "contact_id": None,
                    "reason": reason[:64],
                    "source": source[:32],
                    "now": now,
                }
            )
            if len(page) >= IMPORT_PAGE:
                added += flush()
        added += flush()
        with self.c.engine.begin() as conn:
            self._audit(
                conn,
                actor,
                "suppression.import",
                str(path.name),
                rows=rows,
                added=added,
                rejected=rejected,
            )
        return SuppressionImport(rows, added, rows - rejected - added, rejected, errors)

    @staticmethod
    def _csv_values(path: Path) -> Iterator[tuple[int, str]]:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            col = 0
            for lineno, row in enumerate(reader, start=1):
                if not row or not any(cell.strip() for cell in row):
                    continue
                if lineno == 1:
                    header = [h.strip().lower() for h in row]
                    named = [i for i, h in enumerate(header) if h in ("phone", "email", "value")]
                    if named or not any(ch.isdigit() or ch == "@" for ch in "".join(header)):
                        col = named[0] if named else 0
                        continue
                if col < len(row):
                    yield lineno, row[col].strip()

    # -- the checks before sending ---------------------------------------------------------------
    def skip_suppressed(
        self, conn: Connection, campaign_id: int, channel: str, batch_no: int | None = None
    ) -> dict[str, int]:
        """Mark planned deliveries of the campaign (or of one batch) that must not be sent:
        ``skipped``/``suppressed`` when the identity is on the list for the channel's scope or
        ``*``, ``skipped``/``opted_out`` when the person's latest ledger entry for it is a
        withdrawal. Two set-based UPDATEs in the caller's transaction; returns the counts."""
        params: dict[str, Any] = {
            "campaign_id": campaign_id,
            "scope": dom.scope_of(channel),
            "now": time.time(),
            "batch_no": batch_no,
        }
        one = batch_no is not None
        sup = q.SKIP_SUPPRESSED_BATCH if one else q.SKIP_SUPPRESSED_CAMPAIGN
        opt = q.SKIP_OPTED_OUT_BATCH if one else q.SKIP_OPTED_OUT_CAMPAIGN
        if not one:
            params.pop("batch_no")
        # Each UPDATE walks every planned row of the campaign (or batch); with nothing on the
        # list, or no withdrawal in the ledger, it cannot match: one indexed probe instead.
        listed = conn.execute(text("SELECT 1 FROM suppressions LIMIT 1")).first() is not None
        withdrawn = (
            conn.execute(text("SELECT 1 FROM consents WHERE status = 'withdrawn' LIMIT 1")).first()
            is not None
        )
        return {
            "suppressed": int(conn.execute(sup, {**params, "reason": "suppressed"}).rowcount)
            if listed
            else 0,
            "opted_out": int(conn.execute(opt, {**params, "reason": "opted_out"}).rowcount)
            if withdrawn
            else 0,
        }

    def apply_at_plan(self, campaign_id: int, total: int) -> PlanConsent:
        """After materialisation, before pacing: skip who must not get the campaign, fix the
        batch sizes (a batch left empty is done: it is never sent) and, for an Official
        Account ``to_all``/``tag`` campaign where anyone was skipped, renumber the rest into
        openid-list batches (``list`` mode): the platform must not pick the recipients."""
        with self.c.sessions() as s:
            camp = s.get(Campaign, campaign_id)
            assert camp is not None
            acc = s.get(Account, camp.account_id)
            assert acc is not None
        with self.c.engine.begin() as conn:
            skipped = self.skip_suppressed(conn, campaign_id, camp.channel)
            n = sum(skipped.values())
            if not n:
                return PlanConsent(total, skipped)
            note = None
            if camp.mode in ("to_all", "tag"):
                note = (
                    f"sent as openid lists (mass/send), not {camp.mode}: {n} recipient(s) are "
                    "suppressed or withdrew consent, and a platform-wide send would reach them"
                )
                rules = self.c.accounts.config(acc, camp.channel).rules
                size = channel_class(camp.channel).batch_size(rules, "list") or 2**31 - 1
                self._renumber(conn, camp, size)
                conn.execute(
                    update(Campaign)
                    .where(Campaign.id == campaign_id)
                    .values(mode="list", last_error=note)
                )
            else:
                conn.execute(q.BATCH_LIVE_SIZES, {"campaign_id": campaign_id})
                conn.execute(
                    update(Batch)
                    .where(Batch.campaign_id == campaign_id, Batch.size == 0)
                    .values(
                        state="done",
                        finished_at=time.time(),
                        last_error="not sent: every recipient suppressed or opted out",
                    )
                )
        return PlanConsent(total - n, skipped, note)

    def _renumber(self, conn: Connection, camp: Campaign, size: int) -> None:
        """Re-batch the planned rows into ``size``-recipient batches (skipped rows stay in
        batch 0, which always exists when anyone is left) and rebuild the batch rows."""
        conn.execute(
            text(
                """
UPDATE deliveries SET batch_no = n.bn
FROM (
    SELECT id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / :size AS bn
    FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
) n
WHERE deliveries.id = n.id
"""
            ),
            {"campaign_id": camp.id, "size": size},
        )
        conn.execute(delete(Batch).where(Batch.campaign_id == camp.id))
        sizes = conn.execute(
            select(Delivery.batch_no, func.count())
            .where(Delivery.campaign_id == camp.id, Delivery.status == "planned")
            .group_by(Delivery.batch_no)
            .order_by(Delivery.batch_no)
        ).all()
        if sizes:
            conn.execute(
                insert(Batch),
                [
                    {
                        "campaign_id": camp.id,
                        "batch_no": int(no),
                        "state": "pending",
                        "size": int(cnt),
                        "idempotency_key": batch_key(camp.uid, int(no)),
                        "next_attempt_at": 0.0,
                    }
                    for no, cnt in sizes
                ],
            )

    def before_send(self, camp: Campaign, batch_no: int) -> SendCheck:
        """Right before a batch is sent: skip withdrawals since planning (own transaction).

        A ``to_all``/``tag`` batch with anyone skipped is sent as an openid list when its
        recipients fit one list call (the campaign's mode becomes ``list``); otherwise the
        campaign must be held and re-planned, never sent platform-wide.
        """
        with self.c.engine.begin() as conn:
            n = sum(self.skip_suppressed(conn, camp.id, camp.channel, batch_no).values())
            if camp.mode not in ("to_all", "tag"):
                return SendCheck(n, camp.mode)
            out = conn.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.campaign_id == camp.id,
                    Delivery.batch_no == batch_no,
                    Delivery.status == "skipped",
                    Delivery.reason.in_(SKIP_REASONS),
                )
            )
            if not out:
                return SendCheck(n, camp.mode)
            live = (
                conn.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.campaign_id == camp.id,
                        Delivery.batch_no == batch_no,
                        Delivery.status == "planned",
                    )
                )
                or 0
            )
            acc = self.c.accounts.get(camp.account_id)  # an ORM row (a Core select gives ids)
            rules = self.c.accounts.config(acc, camp.channel).rules
            if live > channel_class(camp.channel).batch_size(rules, "list"):
                return SendCheck(
                    n,
                    camp.mode,
                    hold=(
                        f"{out} recipient(s) withdrew after planning and a {camp.mode} send would "
                        f"reach them; {live} recipients exceed one openid-list call: cancel and "
                        "re-create the campaign (it is re-planned as openid lists)"
                    ),
                )
            note = f"sent as an openid list, not {camp.mode}: {out} recipient(s) withdrew consent"
            conn.execute(
                update(Campaign).where(Campaign.id == camp.id).values(mode="list", last_error=note)
            )
            return SendCheck(n, "list")

    # -- unsubscribe links (e-mail) --------------------------------------------------------------
    def unsubscribe_token(self, delivery_id: int) -> str:
        return dom.make_token(self.token_key, delivery_id)

    def resolve_token(self, token: str) -> dict[str, Any] | None:
        """What a genuine token points at (no address: only the channel and the kind)."""
        did = dom.read_token(self.token_key, token)
        if did is None:
            return None
        with self.c.sessions() as s:
            row = s.execute(
                select(Delivery, Identity, Campaign)
                .join(Identity, Identity.id == Delivery.identity_id)
                .join(Campaign, Campaign.id == Delivery.campaign_id)
                .where(Delivery.id == did)
            ).one_or_none()
        if row is None:
            return None
        d, ident, camp = row
        return {
            "delivery_id": d.id,
            "contact_id": d.contact_id,
            "kind": ident.kind,
            "value_bi": ident.value_bi,
            "channel": camp.channel,
            "campaign_id": camp.id,
        }

    def unsubscribe(self, token: str, evidence: Mapping[str, Any]) -> ConsentResult | None:
        """One-click unsubscribe (RFC 8058): withdraw the link's scope; None if not genuine."""
        target = self.resolve_token(token)
        if target is None:
            return None
        return self.withdraw(
            scope=target["channel"],
            contact_id=target["contact_id"],
            kind=target["kind"],
            value_bi=target["value_bi"],
            source="email_link",
            reason="unsubscribe link",
            evidence={
                **evidence,
                "campaign_id": target["campaign_id"],
                "delivery_id": target["delivery_id"],
            },
        )

    # -- platform events -------------------------------------------------------------------------
    def _store_event(self, acc: Account, kind: str, key: str, payload: dict[str, Any]) -> bool:
        with self.c.sessions() as s:
            s.add(
                Event(
                    account_id=acc.id,
                    kind=kind[:64],
                    dedupe_key=key[:200],
                    payload=payload,
                    received_at=time.time(),
                )
            )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        return True

    def sms_reply(
        self, acc: Account, phone: str, reply: str, sent_at: str, raw: Mapping[str, Any]
    ) -> str:
        """An upstream SMS (上行短信): stored as an event (number and text encrypted), and an
        unsubscribe keyword withdraws SMS consent for that number. Returns what was done."""
        bi = self.value_bi("phone", phone)
        unsub = dom.is_unsubscribe_reply(reply)
        digest = hashlib.sha256(reply.encode()).hexdigest()[:12]
        key = f"sms_reply:{acc.channel}:{acc.app_id}:{bi.hex()}:{sent_at}:{digest}"
        payload = {
            "phone_bi": bi.hex(),
            "unsubscribe": unsub,
            "time": sent_at,
            "reply_enc": self.c.keyring.encrypt(json.dumps(dict(raw), ensure_ascii=False)).hex(),
        }
        if not self._store_event(acc, "sms.reply", key, payload):
            return "duplicate"
        if not unsub:
            return "stored"
        self.withdraw(
            scope="sms",
            kind="phone",
            value_bi=bi,
            source="sms_reply",
            reason="sms reply",
            evidence={
                "reply": redact(reply),  # the keyword; a number written beside it is masked
                "time": sent_at,
                "channel": acc.channel,
                "account": acc.app_id,
            },
        )
        return "withdrawn"

    def _identity(self, conn: Connection, acc: Account, kind: str, value: str) -> Any:
        """(id, contact_id) of the account's identity, or None."""
        return conn.execute(
            select(Identity.id, Identity.contact_id).where(
                Identity.account_id == acc.id,
                Identity.kind == kind,
                Identity.value_bi == self.c.keyring.blind(value),
            )
        ).one_or_none()

    def _platform_removed(
        self, conn: Connection, ident: Any, scope: str, kind: str, value: str, source: str,
        reason: str, evidence: dict[str, Any],
    ) -> None:  # fmt: skip
        """The platform says the person left (unfollowed, deleted): the identity is no longer
        subscribed and the scope is withdrawn, in the caller's transaction."""
        if ident is not None:
            conn.execute(
                update(Identity)
                .where(Identity.id == ident.id)
                .values(subscribed=False, updated_at=time.time())
            )
        self.withdraw(
            scope=scope,
            contact_id=ident.contact_id if ident else None,
            kind=kind,
            value_bi=self.c.keyring.blind(value),
            source=source,
            reason=reason,
            evidence=evidence,
            conn=conn,
        )

    def oa_follow_change(self, acc: Account, fields: Mapping[str, str]) -> str:
        """Official Account ``subscribe``/``unsubscribe`` events.

        Unfollow: the identity is marked unsubscribed and the person's ``wechat_oa`` consent
        is withdrawn (source ``oa_unfollow``, the openid suppressed). Follow again: the
        identity is subscribed again, but marketing consent comes back only when the account's
        ``settings["resubscribe_regrants"]`` is true (docs/consent.md: following is consent
        to the account, not necessarily to its marketing; the default keeps the withdrawal).
        """
        event, openid = fields.get("Event", ""), fields.get("FromUserName", "")
        if not openid:
            return "ignored"
        at = float(fields.get("CreateTime") or time.time())
        with self.c.engine.begin() as conn:
            ident = self._identity(conn, acc, "openid", openid)
            if event == "unsubscribe":
                self._platform_removed(
                    conn, ident, "wechat_oa", "openid", openid, "oa_unfollow", "unfollowed",
                    {"event": "unsubscribe", "at": at, "account": acc.app_id},
                )  # fmt: skip
                return "withdrawn"
            if ident is not None:
                conn.execute(
                    update(Identity)
                    .where(Identity.id == ident.id)
                    .values(subscribed=True, subscribed_at=at, updated_at=time.time())
                )
        if (
            event == "subscribe"
            and ident is not None
            and (acc.settings or {}).get("resubscribe_regrants")
        ):
            self.grant(
                scope="wechat_oa",
                contact_id=ident.contact_id,
                kind="openid",
                value_bi=self.c.keyring.blind(openid),
                source="oa_follow",
                evidence={"event": "subscribe", "at": at, "account": acc.app_id},
            )
            return "resubscribed, consent granted"
        return "resubscribed" if ident is not None else "ignored"

    def wecom_removed(self, acc: Account, fields: Mapping[str, str]) -> str:
        """WeCom ``change_external_contact``: ``del_external_contact`` (the member deleted the
        customer) and ``del_follow_user`` (the customer deleted the member) withdraw the
        ``wecom`` scope for that external_userid — for every member of the corp, even if
        another member still has the customer (qunfa does not keep who follows whom yet)."""
        change, ext = fields.get("ChangeType", ""), fields.get("ExternalUserID", "")
        if change not in ("del_external_contact", "del_follow_user") or not ext:
            return "ignored"
        with self.c.engine.begin() as conn:
            ident = self._identity(conn, acc, "external_userid", ext)
            self._platform_removed(
                conn, ident, "wecom", "external_userid", ext, f"wecom_{change}"[:32], change,
                {"event": change, "user": fields.get("UserID", ""),
                 "at": fields.get("CreateTime", "")},
            )  # fmt: skip
        return "withdrawn"
