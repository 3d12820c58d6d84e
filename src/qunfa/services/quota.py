"""The quota ledger, reservations, frequency caps and the over-cap policy (``docs/quotas.md``).

:meth:`QuotaService.apply_at_plan` is the planner's step after consent: set-based UPDATEs of
the campaign's ``planned`` delivery rows (``storage/quota_sql.py``) that

1. apply the **caps** (every channel and identity of a person, rolling windows; transactional
   campaigns exempt) and the **per-recipient platform rules** (服务号 4 a month, SMS per-number
   caps, DingTalk 500 a day and same content once a day, the WeCom per-customer rule);
2. apply the **per-account quotas** counted in recipients (template messages, Feishu, WeCom app
   person-times a day) against what the ledger says is left — sent or reported, whichever is
   more, minus other campaigns' live reservations;
3. re-batch: rows due now first, then rows deferred to later days in their own batches
   (partitioned by China day of ``due_at``; each batch's ``next_attempt_at`` ≥ its rows'
   ``due_at``);
4. apply the per-account quotas counted in **calls** (公众号 1 mass send a day, 服务号 4 sends
   to all a month) to those batches;
5. **reserve** what the campaign will use per rule and period (``quota_reservations``).

Who is over a cap or quota is skipped (``reason`` ``cap:<name>`` / ``quota:<rule>``),
deferred (``due_at`` = the next allowed moment), or routed to a fallback channel (a child
campaign), as the campaign's ``over_cap`` option says.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from qunfa.channels.registry import channel_class
from qunfa.domain import quota as dom
from qunfa.domain.keys import batch_key
from qunfa.domain.quota import Cap, Policy, QuotaRule
from qunfa.storage import quota_sql as q
from qunfa.storage.db import take_write_lock
from qunfa.storage.models import (
    Account,
    Batch,
    Campaign,
    Delivery,
    Identity,
    QuotaReservation,
    QuotaUsage,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

SINGLE_BATCH = 2**31 - 1
LIVE_STATES = ("planning", "planned", "sending", "paused")
# A dry run plans for real and then removes what it wrote; meanwhile nothing may leave a trace
# outside the campaign (no fallback campaign is created — its size is reported instead).
DRY_RUN: ContextVar[bool] = ContextVar("qunfa_quota_dry_run", default=False)


@contextmanager
def dry_run() -> Iterator[None]:
    token = DRY_RUN.set(True)
    try:
        yield
    finally:
        DRY_RUN.reset(token)


@dataclass(frozen=True)
class PlanQuota:
    """What the quota step did to one campaign."""

    recipients: int
    skipped: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    policy: str = "skip"
    fallback: dict[str, Any] | None = None
    note: str | None = None

    @property
    def empty_reason(self) -> str | None:
        if self.recipients or not any(self.skipped.values()):
            return None
        return "every recipient is over a frequency cap or platform quota: " + ", ".join(
            f"{r} {n}" for r, n in sorted(self.skipped.items())
        )


def content_digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class QuotaService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- what applies ------------------------------------------------------------------------------
    def rules_for(self, camp: Campaign, acc: Account, at: float) -> list[QuotaRule]:
        cfg = self.c.accounts.config(acc, camp.channel)
        values = {n: r.value for n, r in cfg.rules.rules.items()}
        return dom.quota_rules(camp.channel, acc.kind, values, at, acc.settings or {})

    def caps_for(self, camp: Campaign, acc: Account) -> list[Cap]:
        """The caps a campaign is subject to (none if it is transactional)."""
        options = camp.options or {}
        if dom.is_transactional(options, camp.content or {}) or options.get("caps") is False:
            return []
        caps = dom.parse_caps(self.c.settings.caps, options.get("caps") or {})
        # The WeCom interval is a cap like the others: on when caps are (Settings or campaign).
        if camp.channel == "wecom_customer" and (self.c.settings.caps or options.get("caps")):
            values = {n: r.value for n, r in self.c.accounts.config(acc).rules.rules.items()}
            interval = dom.wecom_interval_cap(values)
            if interval is not None:
                caps.append(interval)
        return caps

    @staticmethod
    def policy_of(camp: Campaign) -> tuple[Policy, Policy]:
        """(for people over a cap or per-recipient rule, for an account quota). Without an
        explicit ``over_cap`` people are skipped and an account quota defers the campaign."""
        options = camp.options or {}
        pol = dom.parse_policy(options)
        return (pol, pol) if "over_cap" in options else (pol, Policy("defer"))

    def _campaigns(self, conn: Connection, camp: Campaign, since: float) -> list[Any]:
        """Earlier campaigns that may have sent since ``since`` (campaign rows, not people)."""
        return list(
            conn.execute(
                select(
                    Campaign.id,
                    Campaign.account_id,
                    Campaign.channel,
                    Campaign.options,
                    Campaign.content,
                ).where(
                    Campaign.id != camp.id,
                    Campaign.started_at.is_not(None),
                    (Campaign.finished_at.is_(None)) | (Campaign.finished_at >= since),
                )
            ).all()
        )

    @staticmethod
    def _scheduled(conn: Connection, camp: Campaign) -> list[Any]:
        """Other live campaigns (planned, sending or paused) — their ``planned`` rows are
        messages they will send: counted by due time so two scheduled campaigns cannot both
        count on a person's last slot (campaign rows, not people)."""
        return list(
            conn.execute(
                select(
                    Campaign.id,
                    Campaign.account_id,
                    Campaign.channel,
                    Campaign.options,
                    Campaign.content,
                ).where(
                    Campaign.id != camp.id,
                    Campaign.state.in_(("planned", "sending", "paused")),
                )
            ).all()
        )

    # -- the plan step -----------------------------------------------------------------------------
    def apply_at_plan(self, campaign_id: int, total: int) -> PlanQuota:
        """After consent, before pacing and timing: caps, per-recipient rules, account quotas,
        re-batching and reservations, in one transaction. Returns who is left and why the
        others were skipped or deferred."""
        now = time.time()
        with self.c.sessions() as s:
            camp = s.get(Campaign, campaign_id)
            assert camp is not None
            acc = s.get(Account, camp.account_id)
            assert acc is not None
        at = max(now, camp.scheduled_at or 0.0)
        person_pol, account_pol = self.policy_of(camp)
        caps = self.caps_for(camp, acc)
        rules = [r for r in self.rules_for(camp, acc, at) if r.applies(camp.mode)]
        skipped: Counter[str] = Counter()
        deferred: Counter[str] = Counter()
        with self.c.engine.begin() as conn:
            horizon = max([c.window for c in caps] + [31 * dom.DAY_SECONDS])
            earlier = self._campaigns(conn, camp, now - horizon)
            scheduled = self._scheduled(conn, camp)

            # Caps, then per-recipient rules: one set-based pass (``quota_sql.over_all``). Each
            # counts what earlier campaigns sent (``counted``) and what other live campaigns
            # plan to send inside its window (``pending``: their planned rows by due time).
            over: list[dict[str, Any]] = []
            for cap in caps:
                counted, pending = (
                    [
                        e.id
                        for e in group
                        if not dom.is_transactional(e.options or {}, e.content or {})
                        and (cap.channels is None or e.channel in cap.channels)
                        and (not cap.per_identity or e.account_id == acc.id)
                    ]
                    for group in (earlier, scheduled)
                )
                over.append({"reason": cap.reason, "per_identity": cap.per_identity,
                             "rolling": True, "counted": counted, "pending": pending,
                             "k": cap.limit - 1, "since": at - cap.window,
                             "upper": at + cap.window, "window": cap.window,
                             "until": 0.0})  # fmt: skip
            digest = content_digest(camp.content or {})
            for rule in (r for r in rules if r.scope == "recipient"):
                counted, pending = (
                    [
                        e.id
                        for e in group
                        if e.account_id == acc.id
                        and e.channel == camp.channel
                        and (not rule.same_content or content_digest(e.content or {}) == digest)
                    ]
                    for group in (earlier, scheduled)
                )
                until = dom.period_end(rule.period, at)
                over.append({"reason": rule.reason, "per_identity": True, "rolling": False,
                             "counted": counted, "pending": pending, "k": rule.limit - 1,
                             "since": dom.period_start(rule.period, at), "upper": until,
                             "window": 0.0, "until": until})  # fmt: skip
            # Deferred rows go straight to batches of their own after the campaign's last.
            base = 1 + int(conn.execute(q.MAX_BATCH_NO, {"campaign_id": campaign_id}).scalar_one())
            size = self._size(camp, acc, camp.mode)
            moved = self._over(conn, campaign_id, now, over, person_pol, skipped, deferred,
                               base, size)  # fmt: skip
            for rule in (r for r in rules if r.scope == "account" and r.unit == "recipients"):
                self._account_recipients(conn, camp, acc, rule, at, now, account_pol,
                                         skipped, deferred)  # fmt: skip
            changed = sum(skipped.values()) + sum(deferred.values()) > 0
            note = None
            if changed:
                calls = any(r.scope == "account" and r.unit == "calls" for r in rules)
                note = self._rebatch(conn, camp, acc, now, calls, moved, base)
            for rule in (r for r in rules if r.scope == "account" and r.unit == "calls"):
                self._account_calls(conn, camp, acc, rule, at, now, account_pol, skipped,
                                    deferred)  # fmt: skip
            left = int(
                conn.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.campaign_id == campaign_id, Delivery.status == "planned")
                ).scalar_one()
            )
            self._reserve(conn, camp, acc, rules, at, now)
        fallback = None
        if person_pol.action == "fallback" and any(skipped.values()):
            fallback = self._fallback(camp, acc, person_pol, skipped)
        return PlanQuota(
            left,
            {k: v for k, v in skipped.items() if v},
            {k: v for k, v in deferred.items() if v},
            str(person_pol),
            fallback,
            note,
        )

    def _size(self, camp: Campaign, acc: Account, mode: str) -> int:
        rules = self.c.accounts.config(acc, camp.channel).rules
        return channel_class(camp.channel).batch_size(rules, mode) or SINGLE_BATCH

    @staticmethod
    def _over(
        conn: Connection, campaign_id: int, now: float, over: list[dict[str, Any]],
        pol: Policy, skipped: Counter[str], deferred: Counter[str], base: int, size: int,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """Every cap and per-recipient rule in one statement over the campaign's planned rows
        (skip: the first rule a person is over; defer: the latest moment among them), then one
        count per reason. A rule no earlier campaign counts for cannot bite and is left out; nor
        can a rule keyed by the identity that fewer than ``k + 1`` campaigns count for (a
        campaign has at most one row per identity: ``uq_deliveries_campaign_id``)."""
        over = [
            o for o in over
            if len(o["counted"]) + len(o["pending"]) > (o["k"] if o["per_identity"] else 0)
        ]  # fmt: skip
        if not over:
            return []
        defer = pol.action == "defer"
        shape = tuple(
            (o["per_identity"], o["rolling"], o["k"] > 0, bool(o["pending"])) for o in over
        )
        p: dict[str, Any] = {
            "campaign_id": campaign_id,
            "now": now,
            "since_min": min(o["since"] for o in over),
            "counted_all": sorted(
                {c for o in over if not (o["per_identity"] or o["pending"]) for c in o["counted"]}
            ),
        }
        for i, o in enumerate(over):
            p.update({f"{k}{i}": o[k] for k in ("reason", "counted", "k", "since")})
            if o["pending"]:
                p.update({f"pending{i}": o["pending"], f"upper{i}": o["upper"]})
            if defer:
                p.update({f"window{i}": o["window"], f"until{i}": o["until"]})
        own = {"campaign_id": campaign_id}
        take_write_lock(conn)  # reads then writes the main database: see storage/db.py
        conn.execute(q.CREATE_QUOTA_OVER)
        conn.execute(q.CLEAR_QUOTA_OVER, own)
        conn.execute(q.over_all(shape, defer), p)  # who is over what: into quota_over
        for reason, n in conn.execute(q.OVER_COUNTS, own):
            (deferred if defer else skipped)[str(reason)] += int(n)
        moved = [(int(no), int(n)) for no, n in conn.execute(q.OVER_MOVED_OUT, own)]
        if defer:  # each moved row written once, straight into its final batch
            conn.execute(q.APPLY_DEFER, {**own, "now": now, "base": base, "size": size})
        else:
            conn.execute(q.APPLY_SKIP, {**own, "now": now})
        conn.execute(q.CLEAR_QUOTA_OVER, own)
        return moved

    # -- account quotas ----------------------------------------------------------------------------
    def _used(
        self, conn: Connection, acc_id: int, channels: list[str], rule: QuotaRule, at: float
    ) -> tuple[int, int | None]:
        """(what qunfa sent, what the platform reported or None) in the period of ``at``."""
        p = {
            "account_id": acc_id,
            "channels": channels,
            "start": dom.period_start(rule.period, at),
            "end": dom.period_end(rule.period, at),
        }
        if rule.unit == "calls":
            modes = sorted(rule.modes) if rule.modes else ["to_all", "tag", "list", "template"]
            n, ok, known = conn.execute(q.USED_CALLS, {**p, "modes": modes}).one()
            return int(n or 0), (int(ok or 0) if known else None)
        used = int(conn.execute(q.USED_RECIPIENTS, p).scalar_one() or 0)
        rep, known = conn.execute(q.REPORTED_RECIPIENTS, p).one()
        return used, (int(rep or 0) if known else None)

    def _reserved(
        self, conn: Connection, acc_id: int, rule: QuotaRule, at: float, exclude: int | None
    ) -> int:
        """Live reservations of other campaigns for the rule's period, each shrunk by what its
        campaign already sent in the period (that part is in the ledger already)."""
        key = dom.period_key(rule.period, at)
        rows = conn.execute(
            select(QuotaReservation.campaign_id, QuotaReservation.count)
            .join(Campaign, Campaign.id == QuotaReservation.campaign_id)
            .where(
                QuotaReservation.account_id == acc_id,
                QuotaReservation.rule == rule.rule,
                QuotaReservation.period_key == key,
                QuotaReservation.released_at.is_(None),
                Campaign.state.in_(LIVE_STATES),
                QuotaReservation.campaign_id != (exclude or 0),
            )
        ).all()
        p = {"start": dom.period_start(rule.period, at), "end": dom.period_end(rule.period, at)}
        total = 0
        for cid, count in rows:
            stmt = q.CALLS_BY_CAMPAIGN if rule.unit == "calls" else q.USED_BY_CAMPAIGN
            done = int(conn.execute(stmt, {**p, "campaign_id": cid}).scalar_one() or 0)
            total += max(0, int(count) - done)
        return total

    def _remaining(
        self, conn: Connection, acc: Account, channel: str, rule: QuotaRule, at: float,
        exclude: int | None,
    ) -> int:  # fmt: skip
        used, reported = self._used(conn, acc.id, [channel], rule, at)
        taken = max(used, reported or 0) + self._reserved(conn, acc.id, rule, at, exclude)
        return max(0, rule.limit - taken)

    def _account_recipients(
        self, conn: Connection, camp: Campaign, acc: Account, rule: QuotaRule, at: float,
        now: float, pol: Policy, skipped: Counter[str], deferred: Counter[str],
    ) -> None:  # fmt: skip
        remaining = self._remaining(conn, acc, camp.channel, rule, at, camp.id)
        p = {"campaign_id": camp.id, "now": now, "reason": rule.reason, "remaining": remaining}
        need = int(conn.execute(q.PLANNED_DUE_NOW, p).scalar_one())
        if need <= remaining:
            return
        if pol.action == "defer":
            nxt = dom.period_end(rule.period, at)
            p.update(next=nxt, limit=rule.limit)
            deferred[rule.reason] += conn.execute(q.ACCOUNT_OVERFLOW_DEFER, p).rowcount
        else:
            skipped[rule.reason] += conn.execute(q.ACCOUNT_OVERFLOW_SKIP, p).rowcount

    def _account_calls(
        self, conn: Connection, camp: Campaign, acc: Account, rule: QuotaRule, at: float,
        now: float, pol: Policy, skipped: Counter[str], deferred: Counter[str],
    ) -> None:  # fmt: skip
        """A quota of mass sends: the batches due in the period beyond what is left go to the
        following periods (``limit`` a period) or are skipped. A loop over batches (platform
        calls), never over recipients."""
        end = dom.period_end(rule.period, at)
        batches = conn.execute(
            select(Batch.id, Batch.batch_no, Batch.next_attempt_at)
            .where(Batch.campaign_id == camp.id, Batch.state == "pending", Batch.size > 0)
            .order_by(Batch.next_attempt_at, Batch.batch_no)
        ).all()
        due = [b for b in batches if b.next_attempt_at < end]
        remaining = self._remaining(conn, acc, camp.channel, rule, at, camp.id)
        over = due[remaining:]
        if not over:
            return
        p = {"campaign_id": camp.id, "now": now, "reason": rule.reason}
        if pol.action != "defer":
            nos = [b.batch_no for b in over]
            skipped[rule.reason] += conn.execute(q.SKIP_BATCHES, {**p, "nos": nos}).rowcount
            conn.execute(
                update(Batch)
                .where(Batch.id.in_([b.id for b in over]))
                .values(
                    state="done", size=0, finished_at=now, last_error=f"not sent: {rule.reason}"
                )
            )
            return
        for i, b in enumerate(over):
            when = dom.nth_period_start(rule.period, at, 1 + i // max(1, rule.limit))
            when = max(when, b.next_attempt_at)
            n = conn.execute(q.DEFER_BATCH_ROWS, {**p, "due": when, "batch_no": b.batch_no})
            deferred[rule.reason] += n.rowcount
            conn.execute(update(Batch).where(Batch.id == b.id).values(next_attempt_at=when))

    # -- re-batching -------------------------------------------------------------------------------
    def _rebatch(
        self, conn: Connection, camp: Campaign, acc: Account, now: float, full: bool,
        moved: list[tuple[int, int]], base: int,
    ) -> str | None:  # fmt: skip
        """Re-batch after the caps and quotas moved rows out of their batches: the caps step
        wrote its rows straight to their final place (skipped: batch -1; deferred: batches
        from ``base``) and reports ``moved`` (per old batch, how many left); an account quota
        step marks its rows (``_LEAVE`` in ``storage/quota_sql.py``: batch_no b → -2 - b).

        Incremental (the default): rows still due now keep their batch — a batch that lost
        rows goes a little smaller than the platform maximum, and one that lost all is
        dropped — skipped rows are parked (-1), and only the deferred rows are numbered, into
        batches of their own after the last one, one run per China day of ``due_at`` (a batch
        never mixes days; its ``next_attempt_at`` is its rows' latest ``due_at``). Writes are
        proportional to the rows moved, not to the campaign.

        ``full`` (a quota counted in calls applies, where a batch saved is a send saved) and a
        ``to_all``/``tag`` send (it becomes openid lists: the platform must not pick recipients
        when someone is held back) renumber every live row instead: due now first, then one
        run of batches per due day."""
        note = None
        mode = camp.mode
        if mode in ("to_all", "tag"):
            mode = "list"
            full = True
            note = (
                f"sent as openid lists (mass/send), not {camp.mode}: some recipients are over a "
                "frequency cap or quota, and a platform-wide send would reach them"
            )
            conn.execute(
                update(Campaign).where(Campaign.id == camp.id).values(mode=mode, last_error=note)
            )
            camp.mode = mode
        p: dict[str, Any] = {
            "campaign_id": camp.id,
            "now": now,
            "size": self._size(camp, acc, mode),
        }
        if full:
            conn.execute(q.PARK_SKIPPED, p)
            conn.execute(q.RENUMBER, p)
            conn.execute(delete(Batch).where(Batch.campaign_id == camp.id))
            rows = conn.execute(q.LIVE_BATCHES, p).all()
        else:
            out: Counter[int] = Counter(dict(moved))
            for no, n in conn.execute(q.MOVED_OUT, p):  # what an account quota moved
                out[int(no)] += int(n)
            conn.execute(q.PARK_MOVED, p)
            after = 1 + int(conn.execute(q.MAX_BATCH_NO, p).scalar_one())
            conn.execute(q.MOVE_DEFERRED, {**p, "base": max(base, after)})
            if out:
                conn.execute(
                    update(Batch)
                    .where(Batch.campaign_id == camp.id, Batch.batch_no == bindparam("no"))
                    .values(size=Batch.size - bindparam("n")),
                    [{"no": no, "n": n} for no, n in out.items()],
                )
                conn.execute(
                    delete(Batch).where(
                        Batch.campaign_id == camp.id, Batch.state == "pending", Batch.size <= 0
                    )
                )
            rows = conn.execute(q.NEW_BATCHES, {**p, "base": base}).all()
        if rows:
            conn.execute(
                insert(Batch),
                [
                    {
                        "campaign_id": camp.id,
                        "batch_no": int(no),
                        "state": "pending",
                        "size": int(n),
                        "idempotency_key": batch_key(camp.uid, int(no)),
                        "next_attempt_at": float(due) if float(due) > now else 0.0,
                    }
                    for no, n, due in rows
                ],
            )
        return note

    # -- reservations ------------------------------------------------------------------------------
    def _reserve(
        self, conn: Connection, camp: Campaign, acc: Account, rules: list[QuotaRule],
        at: float, now: float,
    ) -> None:  # fmt: skip
        """What the campaign will use of each account quota, per period: one row per (rule,
        period). Re-planning replaces them."""
        conn.execute(delete(QuotaReservation).where(QuotaReservation.campaign_id == camp.id))
        rows: list[dict[str, Any]] = []
        for rule in (r for r in rules if r.scope == "account" and r.applies(camp.mode)):
            per: Counter[str] = Counter()
            if rule.unit == "calls":
                for (when,) in conn.execute(
                    select(Batch.next_attempt_at).where(
                        Batch.campaign_id == camp.id, Batch.state == "pending", Batch.size > 0
                    )
                ):
                    per[dom.period_key(rule.period, max(at, float(when)))] += 1
            else:
                for due, n in conn.execute(q.ROWS_PER_DUE, {"campaign_id": camp.id, "now": now}):
                    when = at if due is None else max(at, float(due))
                    per[dom.period_key(rule.period, when)] += int(n)
            rows += [
                {"account_id": acc.id, "rule": rule.rule, "period_key": k, "campaign_id": camp.id,
                 "count": n, "created_at": now}
                for k, n in per.items() if n
            ]  # fmt: skip
        if rows:
            conn.execute(insert(QuotaReservation), rows)

    def release(self, campaign_id: int | None = None) -> int:
        """Release the reservations of finished, failed or cancelled campaigns (or of one
        campaign). Reservations of such campaigns never count anyway; this records when."""
        now = time.time()
        with self.c.engine.begin() as conn:
            ended = select(Campaign.id).where(Campaign.state.not_in(LIVE_STATES))
            stmt = update(QuotaReservation).where(QuotaReservation.released_at.is_(None))
            if campaign_id is not None:
                stmt = stmt.where(QuotaReservation.campaign_id == campaign_id)
            else:
                stmt = stmt.where(QuotaReservation.campaign_id.in_(ended))
            return int(conn.execute(stmt.values(released_at=now)).rowcount)

    # -- fallback ----------------------------------------------------------------------------------
    def _fallback(
        self, camp: Campaign, acc: Account, pol: Policy, skipped: Counter[str]
    ) -> dict[str, Any]:
        """A child campaign on the fallback channel for the people held back by a cap or quota:
        their identities on the fallback account, as an explicit audience; its content is the
        campaign's ``options["fallback_content"][<channel>]``."""
        from qunfa.channels.registry import account_channel

        assert pol.channel is not None
        reasons = [r for r in skipped if r.startswith(("cap:", "quota:"))]
        kind = channel_class(pol.channel).recipient_kind
        with self.c.sessions() as s:
            accounts = [
                a
                for a in s.scalars(select(Account)).all()
                if a.channel == account_channel(pol.channel)
                and (pol.account is None or a.app_id == pol.account)
            ]
            if len(accounts) != 1:
                raise dom.QuotaError(
                    f"over_cap fallback:{pol.channel}: {len(accounts)} matching account(s); "
                    "name one with the campaign option fallback_account"
                )
            fb = accounts[0]
            people = (
                select(Delivery.contact_id)
                .where(
                    Delivery.campaign_id == camp.id,
                    Delivery.status == "skipped",
                    Delivery.reason.in_(reasons),
                )
                .scalar_subquery()
            )
            encs = s.scalars(
                select(Identity.value_enc)
                .where(
                    Identity.account_id == fb.id,
                    Identity.kind == kind,
                    Identity.subscribed.is_(True),
                    Identity.contact_id.in_(people),
                )
                .order_by(Identity.id)
            ).all()
        info: dict[str, Any] = {
            "channel": pol.channel, "account": fb.app_id, "recipients": len(encs),
        }  # fmt: skip
        if DRY_RUN.get() or not encs:
            return info
        content = ((camp.options or {}).get("fallback_content") or {}).get(pol.channel)
        if not content:
            raise dom.QuotaError(
                f"over_cap fallback:{pol.channel}: the campaign has no content for it; set "
                f'options["fallback_content"]["{pol.channel}"]'
            )
        ids = ",".join(self.c.keyring.decrypt(e) for e in encs)  # the held-back few, not all
        child = self.c.campaigns.create(
            name=f"{camp.name} (fallback {pol.channel})",
            channel=pol.channel,
            account=fb.id,
            audience=f"ids:{ids}",
            content=content,
            options={"transactional": bool((camp.options or {}).get("transactional"))},
            created_by=camp.created_by,
        )
        with self.c.sessions() as s:
            s.execute(update(Campaign).where(Campaign.id == child.id).values(parent_id=camp.id))
            s.commit()
        info["campaign_id"] = child.id
        return info

    # -- the ledger, for people ------------------------------------------------------------------
    def show(self, account: int | str, at: float | None = None) -> list[dict[str, Any]]:
        """Per account rule and period: limit, what qunfa sent, what the platform reported,
        live reservations and what is left. Also refreshes ``quota_usage`` (the ledger)."""
        from qunfa.channels.registry import account_channel, channels

        acc = self.c.accounts.get(account)
        at = at or time.time()
        now = time.time()
        self.release()
        out: list[dict[str, Any]] = []
        with self.c.engine.begin() as conn:
            for key in sorted(k for k in channels() if account_channel(k) == acc.channel):
                cfg = self.c.accounts.config(acc, key)
                values = {n: r.value for n, r in cfg.rules.rules.items()}
                for rule in dom.quota_rules(key, acc.kind, values, at, acc.settings or {}):
                    row: dict[str, Any] = {
                        "channel": key,
                        "rule": rule.rule,
                        "scope": rule.scope,
                        "unit": rule.unit,
                        "period": str(rule.period),
                        "period_key": dom.period_key(rule.period, at),
                        "limit": rule.limit,
                        "resets_at": dom.period_end(rule.period, at),
                        "source": cfg.rules.rules[rule.rule].source
                        if rule.rule in cfg.rules.rules
                        else "",
                    }
                    if rule.scope == "account":
                        used, reported = self._used(conn, acc.id, [key], rule, at)
                        reserved = self._reserved(conn, acc.id, rule, at, None)
                        row.update(
                            sent=used, reported=reported, reserved=reserved,
                            remaining=max(0, rule.limit - max(used, reported or 0) - reserved),
                        )  # fmt: skip
                        self._record_usage(conn, acc.id, rule, row, now)
                    out.append(row)
        return out

    @staticmethod
    def _record_usage(
        conn: Connection, acc_id: int, rule: QuotaRule, row: dict[str, Any], now: float
    ) -> None:
        key = {"account_id": acc_id, "rule": rule.rule, "period_key": row["period_key"]}
        found = conn.execute(
            update(QuotaUsage)
            .where(*(getattr(QuotaUsage, k) == v for k, v in key.items()))
            .values(sent=row["sent"], reported=row["reported"], updated_at=now)
        ).rowcount
        if not found:
            conn.execute(
                insert(QuotaUsage).values(
                    **key, sent=row["sent"], reported=row["reported"], updated_at=now
                )
            )

    def remaining_share(self, camp: Campaign, include_own: bool = False) -> float | None:
        """The smallest remaining/limit over the account quotas that apply (None: no quota);
        ``include_own``: after this campaign's own reservations."""
        acc = self.c.accounts.get(camp.account_id)
        at = max(time.time(), camp.scheduled_at or 0.0)
        shares = []
        with self.c.engine.connect() as conn:
            for rule in self.rules_for(camp, acc, at):
                if rule.scope == "account" and rule.applies(camp.mode) and rule.limit > 0:
                    left = self._remaining(
                        conn, acc, camp.channel, rule, at, None if include_own else camp.id
                    )
                    shares.append(left / rule.limit)
        return min(shares) if shares else None

    def eligibility(self, campaign_id: int, limit: int = 100) -> dict[str, Any]:
        """After planning: who is eligible now, and for the others why and when they become
        eligible again (per reason: count and the earliest/latest moment; and a page of
        people). Per-account rules give period boundaries (China time); per-recipient rules and
        caps give each person's own moment (their recent deliveries)."""
        now = time.time()
        with self.c.engine.connect() as conn:
            rows = conn.execute(q.OUTCOME_COUNTS, {"campaign_id": campaign_id, "now": now}).all()
            people = conn.execute(
                q.INELIGIBLE, {"campaign_id": campaign_id, "now": now, "limit": limit}
            ).all()
        eligible_now, reasons = 0, {}
        for status, reason, n, lo, hi, later in rows:
            if status == "planned":
                eligible_now += int(n) - int(later or 0)
                if later:
                    reasons[reason or "deferred"] = {
                        "deferred": int(later), "eligible_from": lo, "eligible_until": hi,
                    }  # fmt: skip
            elif status == "skipped":
                reasons.setdefault(reason, {})["skipped"] = int(n)
        return {
            "eligible_now": eligible_now,
            "reasons": reasons,
            "people": [
                {"contact_id": c, "identity_id": i, "status": st, "reason": r, "eligible_at": d}
                for c, i, st, r, d in people
            ],
        }
