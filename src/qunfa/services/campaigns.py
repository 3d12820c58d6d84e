"""Campaigns: create, plan (audience → delivery rows → batches, set-based), start, report.

Planning streams the audience in keyset pages: each page is one ``INSERT … SELECT`` that
creates the delivery rows and numbers their batches in SQL (see ``storage/queries.py``), then
one small query turns the page's batch numbers into batch rows with deterministic keys. No
recipient ever passes through Python memory during planning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update

from qunfa.channels.base import ContentError
from qunfa.channels.registry import account_channel, channel_class
from qunfa.domain.audience import Audience, AudienceError, parse_audience
from qunfa.domain.keys import batch_key
from qunfa.domain.states import CampaignState, campaign_transition
from qunfa.services import links, list_minimum, scheduling
from qunfa.storage import queries as q
from qunfa.storage.models import Account, Batch, Campaign, Delivery, Identity, Tag

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

Progress = Callable[[str, int, int | None], None]
SINGLE_BATCH = 2**31 - 1  # "batch size" that puts the whole audience in batch 0


class CampaignError(ValueError):
    pass


@dataclass(frozen=True)
class PlanReport:
    campaign_id: int
    recipients: int
    batches: int
    seconds: float


OPTIONS = {
    "remind_every_hours": "hours between reminders to staff who have not sent (WeCom)",
    "timing": "when to send: category, window, quiet_hours, local_time, … (docs/time.md)",
    "recurrence": "a cron expression: the campaign becomes a recurring series (docs/time.md)",
    # caps, quotas and the over-cap policy (docs/quotas.md)
    "caps": 'per-person caps on top of the defaults, {"name": {"limit": n, "days": d}} or false',
    "transactional": "true: exempt from frequency caps (order, verification, service notices)",
    "over_cap": "skip | defer | fallback:<channel>: who is over a cap or quota",
    "fallback_account": "the fallback channel's account (app id), when there are several",
    "fallback_content": "content per fallback channel, {<channel>: {...}}",
    # tracked short links (docs/compliance.md)
    "track_links": "true (default): links become tracked short links; false: left as written; "
    '"campaign": tracked without a per-recipient part',
}


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    if (wrong := links.validate_option(options)) is not None:
        raise CampaignError(wrong)
    unknown = set(options) - set(OPTIONS)
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in OPTIONS.items())
        raise CampaignError(
            f"unknown campaign option(s) {', '.join(sorted(unknown))}; known: {known}"
        )
    hours = options.get("remind_every_hours")
    if hours is not None and (not isinstance(hours, int | float) or hours <= 0):
        raise CampaignError("remind_every_hours must be a positive number of hours")
    _validate_quota_options(options)
    from qunfa.services.scheduling import SchedulingError, validate_campaign_options

    try:
        validate_campaign_options(options)
    except SchedulingError as exc:
        raise CampaignError(str(exc)) from None
    return options


def _validate_quota_options(options: dict[str, Any]) -> None:
    """``over_cap``, ``caps`` and ``transactional`` (docs/quotas.md), checked at create so a
    typo fails now rather than when the campaign is planned."""
    from qunfa.channels.registry import channels
    from qunfa.domain import quota as dom

    if "transactional" in options and not isinstance(options["transactional"], bool):
        raise CampaignError(
            f"transactional must be true or false, not {options['transactional']!r}"
        )
    if "over_cap" in options:
        try:
            pol = dom.parse_policy(options)
        except dom.QuotaError as exc:
            raise CampaignError(str(exc)) from None
        if pol.channel is not None and pol.channel not in channels():
            raise CampaignError(
                f"over_cap {options['over_cap']!r}: no channel {pol.channel!r}; write "
                f'"skip", "defer" or "fallback:<channel>" with one of: '
                + ", ".join(sorted(channels()))
            )
    if "caps" in options:
        caps = options["caps"]
        if caps is not False and not isinstance(caps, dict):
            raise CampaignError(
                f"caps must be false (no caps) or an object of caps by name, "
                f'e.g. {{"marketing_1d": {{"limit": 1, "days": 1}}, "marketing_7d": null}}, '
                f"not {caps!r}"
            )
        if caps:
            try:
                dom.parse_caps({}, caps)
            except dom.QuotaError as exc:
                raise CampaignError(f"caps option invalid: {exc}") from None


class CampaignService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- create ---------------------------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        channel: str,
        account: int | str,
        audience: str,
        content: dict[str, Any],
        as_list: bool = False,
        options: dict[str, Any] | None = None,
        created_by: str = "",
    ) -> Campaign:
        """Create a draft. ``as_list`` sends a tag or everyone as openid lists (mass/send).

        ``created_by`` is the author: the review workflow never lets them approve it.
        """
        cls = channel_class(channel)
        try:
            aud = parse_audience(audience)
        except AudienceError as exc:
            raise CampaignError(str(exc)) from exc
        acc = self.c.accounts.get(account)
        if acc.channel != account_channel(channel):
            raise CampaignError(
                f"account {acc.app_id} is a {acc.channel} account; {channel} needs "
                f"a {account_channel(channel)} account"
            )
        used = None  # (material_id, version) when the content references the material library
        checked = content
        if "material_id" in content:
            from qunfa.services.materials import MaterialError, material_ref

            try:
                ref = material_ref(content)
                assert ref is not None
                # Pin the version: the campaign sends exactly what was checked, whatever the
                # material becomes later.
                version = self.c.materials.version(ref.material_id, ref.version).version
                content = {**content, "version": version}
                checked = self.c.materials.resolve_content(content, channel)
            except MaterialError as exc:
                raise CampaignError(str(exc)) from exc
            used = (ref.material_id, version)
        try:
            cls.validate_content(checked, self.c.accounts.config(acc, channel).rules)
        except ContentError as exc:
            raise CampaignError(str(exc)) from exc
        if channel == "wechat_oa":
            if aud.kind == "openids" or aud.is_segment or as_list:  # segments: openid lists
                mode = "list"
            else:
                mode = "to_all" if aud.kind == "all" else "tag"
        else:  # every other channel has one mode; the audience is resolved by qunfa
            mode = sorted(cls.modes)[0]
        if aud.kind == "tag":
            self._tag(acc.id, aud)  # fail now, not at plan time, if it does not exist
        if aud.is_segment:  # likewise: the saved segment exists, the expression compiles
            try:
                self.c.segments.resolve(aud, acc.id)
            except ValueError as exc:
                raise CampaignError(f"audience {aud}: {exc}") from exc
        with self.c.sessions() as s:
            camp = Campaign(
                uid=uuid.uuid4().hex,
                name=name,
                channel=channel,
                account_id=acc.id,
                audience=str(aud),
                mode=mode,
                content=content,
                options=validate_options(options or {}),
                state=CampaignState.DRAFT,
                created_by=created_by,
                created_at=time.time(),
            )
            s.add(camp)
            s.flush()  # the id: tracked-link codes carry it
            self._track_links(camp, cls, acc)
            s.commit()
        if used is not None:
            self.c.materials.record_use(*used, camp.id)
        return camp

    def _track_links(self, camp: Campaign, cls: Any, acc: Account) -> None:
        """Rewrite the content's links to tracked short links, before any check (the digest
        then covers what is sent); the rewritten content must still pass the channel's limits.
        A material reference carries no link of its own: it is left alone."""
        content, options = links.track(
            self.c, camp.id, camp.channel, camp.content, camp.options, acc.settings
        )
        if content is camp.content:
            return
        try:
            cls.validate_content(content, self.c.accounts.config(acc, camp.channel).rules)
        except ContentError as exc:
            raise CampaignError(
                f"with its links rewritten to tracked short links the content no longer "
                f'fits: {exc}; shorten it or set options {{"track_links": false}}'
            ) from exc
        camp.content, camp.options = content, options

    def _tag(self, account_id: int, aud: Audience) -> Tag:
        with self.c.sessions() as s:
            tag = s.scalars(
                select(Tag).where(Tag.account_id == account_id, Tag.name == aud.tag)
            ).one_or_none()
            if tag is None:
                known = s.scalars(select(Tag.name).where(Tag.account_id == account_id)).all()
                hint = f"known tags: {', '.join(known)}" if known else "no tags synced yet"
                raise CampaignError(
                    f"tag {aud.tag!r} not found on this account ({hint}); "
                    "run `qunfa accounts sync` if it is new"
                )
            return tag

    def get(self, campaign_id: int) -> Campaign:
        with self.c.sessions() as s:
            camp = s.get(Campaign, campaign_id)
            if camp is None:
                raise CampaignError(f"no campaign {campaign_id}; see `qunfa campaign list`")
            return camp

    def _set_state(self, campaign_id: int, target: CampaignState, **values: Any) -> None:
        with self.c.sessions() as s:
            camp = s.get(Campaign, campaign_id)
            assert camp is not None
            camp.state = campaign_transition(camp.state, target)
            for k, v in values.items():
                setattr(camp, k, v)
            s.commit()

    # -- plan -----------------------------------------------------------------------------------
    def plan(self, campaign_id: int, progress: Progress | None = None) -> PlanReport:
        """Materialise recipients and batches. Safe to re-run after a crash mid-plan."""
        started = time.time()
        camp = self.get(campaign_id)
        if camp.state not in (CampaignState.DRAFT, CampaignState.PLANNING):
            raise CampaignError(f"campaign {campaign_id} is {camp.state}; only drafts are planned")
        self.c.review.require(campaign_id, auto_check=False)  # the gate (docs/review.md)
        self._set_state(campaign_id, CampaignState.PLANNING)
        acc = self.c.accounts.get(camp.account_id)
        with self.c.sessions() as s:  # a crash mid-plan left partial rows: start over
            s.execute(delete(Delivery).where(Delivery.campaign_id == campaign_id))
            s.execute(delete(Batch).where(Batch.campaign_id == campaign_id))
            s.commit()
        batch_size = self._batch_size(camp, acc)
        aud = parse_audience(camp.audience)
        seg = self.c.segments.resolve(aud, acc.id) if aud.is_segment else None
        if aud.kind == "openids":
            total = self._plan_explicit(camp, acc, aud, batch_size)
        else:
            total = self._plan_pages(camp, acc, aud, batch_size, progress, seg)
        if seg is not None:  # the record of what the segment was when planned
            self.c.segments.record_snapshot(campaign_id, seg, acc.id, total)
        # Consent (docs/consent.md): skip suppressed / opted-out recipients, fix batch sizes,
        # and never let the platform pick recipients (to_all/tag) when someone is skipped.
        consent = self.c.consent.apply_at_plan(campaign_id, total)
        total = consent.recipients
        quota = self.c.quota.apply_at_plan(campaign_id, total)  # docs/quotas.md
        total = quota.recipients
        scheduling.apply_at_plan(self.c, campaign_id)  # due times, zones, STO (docs/time.md)
        # Official Account mass/send takes ≥ 2 openids: no single-recipient list batch.
        lone = list_minimum.apply_at_plan(self.c, campaign_id, total)
        total = lone.recipients
        self._pace(camp, acc, batch_size)
        with self.c.sessions() as s:
            nbatches = s.scalar(
                select(func.count()).select_from(Batch).where(Batch.campaign_id == campaign_id)
            )
        if total == 0:
            self._set_state(
                campaign_id,
                CampaignState.FAILED,
                last_error=consent.empty_reason
                or quota.empty_reason
                or (list_minimum.REASON if lone.failed else None)
                or "the audience is empty: no subscribed follower matches it",
            )
        else:
            self._set_state(
                campaign_id,
                CampaignState.PLANNED,
                planned_count=total,
                batch_count=nbatches or 0,
                planned_at=time.time(),
            )
        return PlanReport(campaign_id, total, nbatches or 0, time.time() - started)

    def _pace(self, camp: Campaign, acc: Account, batch_size: int) -> None:
        """Spread batches over days for channels with a daily pace (personal WeChat).

        The i-th batch goes on pace day i // per_day; when each day starts (the schedule, the
        window, quiet hours, holidays; one day per date) is ``scheduling.pace_days``.
        """
        cls = channel_class(camp.channel)
        if cls.daily_pace_rule is None or batch_size <= 0:
            return
        rules = self.c.accounts.config(acc, camp.channel).rules
        per_day = max(1, rules[cls.daily_pace_rule] // batch_size)
        start_hour = rules["pace_start_hour"] if "pace_start_hour" in rules.rules else 9
        with self.c.sessions() as s:
            batches = s.scalars(
                select(Batch).where(Batch.campaign_id == camp.id).order_by(Batch.batch_no)
            ).all()
            days = scheduling.pace_days(camp, acc, -(-len(batches) // per_day), start_hour)
            for i, b in enumerate(batches):
                b.next_attempt_at = max(b.next_attempt_at or 0.0, days[i // per_day])
            s.commit()

    def _batch_size(self, camp: Campaign, acc: Account) -> int:
        rules = self.c.accounts.config(acc, camp.channel).rules
        return channel_class(camp.channel).batch_size(rules, camp.mode)

    def _plan_pages(
        self,
        camp: Campaign,
        acc: Account,
        aud: Audience,
        batch_size: int,
        progress: Progress | None,
        seg: Any = None,
    ) -> int:
        single = batch_size == 0
        size = SINGLE_BATCH if single else batch_size
        page = self.c.settings.plan_page_size
        if not single:
            page = max(1, -(-page // size)) * size  # whole batches per page
        tag_id = self._tag(acc.id, aud).id if aud.kind == "tag" else None
        if seg is None:  # everyone or a tag: one statement per batch, no window sort
            return self._plan_chunks(camp, acc, tag_id, size, page, progress)
        # The segment compiled into the page shape (set-based, numbered in SQL).
        kind = channel_class(camp.channel).recipient_kind
        insert_sql, end_sql = self.c.segments.plan_statements(seg, acc.id, kind)
        params: dict[str, Any] = {
            "campaign_id": camp.id,
            "account_id": acc.id,
            "kind": channel_class(camp.channel).recipient_kind,
            "yes": True,
            "page_size": page,
            "batch_size": size,
            "tag_id": tag_id,
        }
        after, base, total = 0, 0, 0
        while True:
            with self.c.engine.begin() as conn:
                end = conn.execute(end_sql, {**params, "after_id": after}).scalar()
                if end is None:
                    break
                now = time.time()
                conn.execute(
                    insert_sql, {**params, "after_id": after, "batch_base": base, "now": now}
                )
                if not single:
                    sizes = conn.execute(
                        q.PLAN_BATCH_SIZES, {"campaign_id": camp.id, "batch_base": base}
                    ).all()
                    self._insert_batches(conn, camp, [(int(n), int(c)) for n, c in sizes])
                    total += sum(int(c) for _, c in sizes)
                    base = int(sizes[-1][0]) + 1 if sizes else base
                else:
                    total = int(
                        conn.execute(
                            select(func.count())
                            .select_from(Delivery)
                            .where(Delivery.campaign_id == camp.id)
                        ).scalar_one()
                    )
            after = int(end)
            if progress:
                progress("planning", total, None)
        if single and total:
            with self.c.engine.begin() as conn:
                self._insert_batches(conn, camp, [(0, total)])
        return total

    def _plan_chunks(
        self,
        camp: Campaign,
        acc: Account,
        tag_id: int | None,
        size: int,
        page: int,
        progress: Progress | None,
    ) -> int:
        """Everyone or a tag: one ``INSERT … SELECT … LIMIT`` per batch (``PLAN_CHUNK_*``) whose
        rowcount is the batch's size, one transaction per page of whole batches. Numbering is
        the page form's: batch k holds the k-th run of ``size`` recipients in identity order.
        One batch (``size`` is :data:`SINGLE_BATCH`) goes in page-sized chunks, all batch 0."""
        single = size == SINGLE_BATCH
        chunk = page if single else size
        params: dict[str, Any] = {
            "campaign_id": camp.id,
            "account_id": acc.id,
            "kind": channel_class(camp.channel).recipient_kind,
            "yes": True,
            "limit": chunk,
            "tag_id": tag_id,
        }
        insert_sql = q.PLAN_CHUNK_TAG if tag_id else q.PLAN_CHUNK_ALL
        after, batch_no, total, more = 0, 0, 0, True
        while more:
            with self.c.engine.begin() as conn:
                sizes: list[tuple[int, int]] = []
                for _ in range(max(1, page // chunk)):
                    n = int(
                        conn.execute(
                            insert_sql,
                            {**params, "after_id": after, "batch_no": batch_no, "now": time.time()},
                        ).rowcount
                    )
                    total += n
                    if n and not single:
                        sizes.append((batch_no, n))
                        batch_no += 1
                    if n < chunk:  # the audience ends in this chunk
                        more = False
                        break
                    after = int(conn.execute(q.PLAN_CURSOR, {"campaign_id": camp.id}).scalar_one())
                self._insert_batches(conn, camp, sizes)
            if progress:
                progress("planning", total, None)
        if single and total:
            with self.c.engine.begin() as conn:
                self._insert_batches(conn, camp, [(0, total)])
        return total

    def _insert_batches(self, conn: Any, camp: Campaign, sizes: list[tuple[int, int]]) -> None:
        if not sizes:
            return
        conn.execute(
            insert(Batch),
            [
                {
                    "campaign_id": camp.id,
                    "batch_no": no,
                    "state": "pending",
                    "size": n,
                    "idempotency_key": batch_key(camp.uid, no),
                    "next_attempt_at": 0.0,
                }
                for no, n in sizes
            ],
        )

    def _plan_explicit(self, camp: Campaign, acc: Account, aud: Audience, batch_size: int) -> int:
        ring = self.c.keyring
        bis = [ring.blind(o) for o in dict.fromkeys(aud.openids)]
        with self.c.sessions() as s:
            rows = s.execute(
                select(Identity.id, Identity.contact_id)
                .where(
                    Identity.account_id == acc.id,
                    Identity.kind == channel_class(camp.channel).recipient_kind,
                    Identity.subscribed.is_(True),
                    Identity.value_bi.in_(bis),
                )
                .order_by(Identity.id)
            ).all()
        if not rows:
            return 0
        size = batch_size or SINGLE_BATCH
        now = time.time()
        with self.c.engine.begin() as conn:
            conn.execute(
                insert(Delivery),
                [
                    {
                        "campaign_id": camp.id,
                        "batch_no": i // size,
                        "identity_id": iid,
                        "contact_id": cid,
                        "status": "planned",
                        "updated_at": now,
                    }
                    for i, (iid, cid) in enumerate(rows)
                ],
            )
            counts: dict[int, int] = {}
            for i in range(len(rows)):
                counts[i // size] = counts.get(i // size, 0) + 1
            self._insert_batches(conn, camp, sorted(counts.items()))
        return len(rows)

    # -- start ----------------------------------------------------------------------------------
    def start(
        self, campaign_id: int, progress: Progress | None = None, actor: str | None = None
    ) -> PlanReport | None:
        """Plan (if still a draft), then hand the batches due now to the workers (the sweeper
        enqueues the others when they fall due). Resumes a paused one.

        The gate runs first (checking the content if no check covers it yet, as ``actor``):
        see ``docs/review.md``.
        """
        camp = self.get(campaign_id)
        if camp.state not in (CampaignState.DONE, CampaignState.FAILED, CampaignState.CANCELLED):
            self.c.review.require(campaign_id, actor=actor, auto_check=True)
        report = None
        if camp.state in (CampaignState.DRAFT, CampaignState.PLANNING):
            report = self.plan(campaign_id, progress)
            camp = self.get(campaign_id)
        if camp.state == CampaignState.PLANNED:
            self._set_state(campaign_id, CampaignState.SENDING, started_at=time.time())
        elif camp.state == CampaignState.PAUSED:
            self._set_state(campaign_id, CampaignState.SENDING, last_error=None)
        elif camp.state != CampaignState.SENDING:
            raise CampaignError(f"campaign {campaign_id} is {camp.state} and cannot be sent")
        # Only the batches due now: a batch due later (time staggering, deferrals, pacing)
        # would refuse the lease and then wait out the lease time before the sweeper re-drives
        # it; left un-enqueued, the sweeper (``DUE_BATCHES``) hands it over as soon as it is due.
        now = time.time()
        with self.c.sessions() as s:
            ids = list(
                s.scalars(
                    select(Batch.id).where(
                        Batch.campaign_id == campaign_id,
                        Batch.state.in_(("pending", "retry", "deferred")),
                        Batch.next_attempt_at <= now,
                    )
                )
            )
            s.execute(update(Batch).where(Batch.id.in_(ids)).values(enqueued_at=now))
            s.commit()
        self.c.enqueue(ids)
        return report

    def edit_content(self, campaign_id: int, content: dict[str, Any], actor: str) -> Campaign:
        """Replace the content; voids an approval of the old content (``services/review.py``)."""
        camp: Campaign = self.c.review.edit(campaign_id, content, actor)
        return camp

    def cancel(self, campaign_id: int) -> None:
        """Stop a campaign: queued batches are cancelled, open platform tasks too (WeCom)."""
        self._set_state(campaign_id, CampaignState.CANCELLED, finished_at=time.time())
        self.c.tasks.cancel_open_tasks(campaign_id)
        with self.c.sessions() as s:
            s.execute(
                update(Batch)
                .where(
                    Batch.campaign_id == campaign_id,
                    Batch.state.in_(("pending", "retry", "deferred")),
                )
                .values(state="cancelled")
            )
            s.commit()

    # -- report ---------------------------------------------------------------------------------
    def status(self, campaign_id: int) -> dict[str, Any]:
        camp = self.get(campaign_id)
        with self.c.engine.connect() as conn:
            batches = {
                st: {"batches": int(n), "recipients": int(sz)}
                for st, n, sz in conn.execute(q.BATCH_STATE_COUNTS, {"campaign_id": camp.id})
            }
            deliveries = {
                st: int(n)
                for st, n in conn.execute(q.DELIVERY_STATUS_COUNTS, {"campaign_id": camp.id})
            }
            platform = conn.execute(
                select(
                    func.sum(Batch.total_count),
                    func.sum(Batch.filter_count),
                    func.sum(Batch.sent_count),
                    func.sum(Batch.error_count),
                ).where(Batch.campaign_id == camp.id)
            ).one()
        acc = self.c.accounts.get(camp.account_id)
        return {
            "id": camp.id,
            "uid": camp.uid,
            "name": camp.name,
            "channel": camp.channel,
            "account": acc.app_id,
            "audience": camp.audience,
            "mode": camp.mode,
            "state": camp.state,
            "planned": camp.planned_count,
            "batches": batches,
            "deliveries": deliveries,
            "platform": {
                "total": platform[0],
                "filter": platform[1],
                "sent": platform[2],
                "error": platform[3],
            },
            "last_error": camp.last_error,
            "review": {
                "state": camp.review_state,
                "approved_by": camp.approved_by,
                "checked": camp.checked_hash is not None,
                "verdict": (camp.check_report or {}).get("verdict"),
            },
            "scheduled_at": camp.scheduled_at,
            "links": links.LinkService(self.c).report(camp),  # tracked-link clicks, or None
            "created_by": camp.created_by,
            "created_at": camp.created_at,
            "started_at": camp.started_at,
            "finished_at": camp.finished_at,
        }

    def all(self) -> list[dict[str, Any]]:
        with self.c.sessions() as s:
            ids = list(s.scalars(select(Campaign.id).order_by(Campaign.id.desc())))
        return [self.status(i) for i in ids]
