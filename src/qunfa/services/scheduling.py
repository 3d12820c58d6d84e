"""Time in planning: due times per recipient, zone staggering, STO, pacing days, recurrence.

Contracts (``docs/time.md``):

* :func:`validate_campaign_options` checks ``options["timing"]`` and ``options["recurrence"]``
  when a campaign is created; every error names the option.
* :func:`apply_at_plan` runs once in ``CampaignService.plan`` after consent (and any other
  step that defers recipients by setting ``deliveries.due_at``), before pacing. It writes each
  planned row's ``due_at`` (never earlier than a due already there), renumbers the batches so
  one batch never mixes due times, and sets each batch's ``next_attempt_at`` to its due time —
  the sweeper (``DUE_BATCHES``) and the lease (``LEASE_BATCH``) already refuse batches that
  are not due. Everything recipient-scale is one statement of ``storage/timing_sql.py``.
* :func:`pace_due` moves a personal-WeChat pace day onto the campaign's allowed times.
* :func:`spawn_due_runs` (the sweeper) creates each recurring series' run at its fire time,
  exactly once however many sweepers run (a unique ``events`` row per series and fire time).
"""

from __future__ import annotations

import hashlib
import logging
import time as _time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError

from qunfa.channels.registry import channel_class
from qunfa.domain import cron
from qunfa.domain.calendar import CalendarError, next_allowed, resolve_local, zone_or_none
from qunfa.domain.keys import batch_key
from qunfa.services import timing
from qunfa.storage import timing_sql as tq
from qunfa.storage.db import take_write_lock
from qunfa.storage.models import Account, Batch, Campaign, Delivery, Event

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.scheduling")
DEFAULT_ZONE = "Asia/Shanghai"
EXTRA_KEYS = ("per_recipient_local", "optimise", "holdout")
SERIES_STATES = ("draft", "planning")  # a recurring series is a definition, never sent itself


def clock() -> float:
    """Now (epoch seconds); tests replace it to plan at a chosen moment."""
    return _time.time()


class SchedulingError(ValueError):
    """Invalid time options or a refused timing step; the message says what to do."""


@dataclass(frozen=True)
class CampaignTiming:
    """A campaign's validated ``timing`` options (the calendar part plus qunfa's own keys)."""

    base: timing.TimingOptions
    per_recipient_local: bool = False
    optimise_hours: float | None = None  # send-time optimisation horizon
    holdout: float = 0.0  # share of STO recipients sent at the fixed time instead


def parse_timing(raw: Mapping[str, Any] | None) -> CampaignTiming:
    """Validate ``options["timing"]``; raises :class:`timing.TimingError` naming the option."""
    if raw is not None and not isinstance(raw, Mapping):
        raise timing.TimingError('timing: write an object, e.g. {"category": "education"}')
    opts = dict(raw or {})
    extra = {k: opts.pop(k) for k in EXTRA_KEYS if k in opts}
    try:
        base = timing.parse_options(opts)
    except timing.TimingError as exc:
        raise timing.TimingError(f"{exc} (known also: {', '.join(EXTRA_KEYS)})") from None
    local = extra.get("per_recipient_local", False)
    if not isinstance(local, bool):
        raise timing.TimingError(f"per_recipient_local: must be true or false, not {local!r}")
    hours = _horizon(extra.get("optimise"))
    holdout = extra.get("holdout", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise timing.TimingError(f"holdout: a share from 0 to below 1 (e.g. 0.1), not {holdout!r}")
    if holdout and hours is None:
        raise timing.TimingError('holdout: only with optimise (e.g. "optimise": "24h")')
    if hours is not None and base.local_time is not None:
        raise timing.TimingError(
            "optimise: each person gets their own best hour, so local_time cannot be set too; "
            "remove one of them"
        )
    return CampaignTiming(base, local, hours, float(holdout))


def _horizon(value: Any) -> float | None:
    if value is None or value is False:
        return None
    if value is True:
        return 24.0
    text = str(value).strip().lower()
    try:
        if text.endswith("h"):
            hours = float(text[:-1])
        elif text.endswith("d"):
            hours = 24 * float(text[:-1])
        else:
            raise ValueError
    except ValueError:
        raise timing.TimingError(
            f'optimise: write a horizon such as "24h" or "2d", not {value!r}'
        ) from None
    if not 1 <= hours <= 24 * 7:
        raise timing.TimingError(f"optimise: the horizon must be 1h to 7d, not {value!r}")
    return hours


def validate_campaign_options(options: Mapping[str, Any]) -> None:
    """Check the ``timing`` and ``recurrence`` options of a campaign being created."""
    if "timing" in options:
        try:
            parse_timing(options["timing"])
        except timing.TimingError as exc:
            raise SchedulingError(f"timing option invalid: {exc}") from None
    if "recurrence" in options:
        expr = options["recurrence"]
        if not isinstance(expr, str):
            raise SchedulingError('recurrence: a cron expression string, e.g. "0 20 * * MON"')
        try:
            cron.parse(expr)
        except cron.CronError as exc:
            raise SchedulingError(
                f"recurrence: {exc}; write 5 cron fields (minute hour day month weekday), "
                'e.g. "0 20 * * MON"'
            ) from None


def account_zone(acc: Account) -> str:
    """The account's default zone (``settings["timezone"]``) or Asia/Shanghai."""
    zone = (acc.settings or {}).get("timezone")
    return zone if isinstance(zone, str) and zone_or_none(zone) is not None else DEFAULT_ZONE


# -- planning ------------------------------------------------------------------------------------
@dataclass
class TimingReport:
    """What :func:`apply_at_plan` did: due groups, batches, notes (for the plan and dry run)."""

    groups: dict[float, int] = field(default_factory=dict)  # due epoch → recipients
    batches: int = 0
    explain: str = ""
    notes: list[str] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)


def apply_at_plan(c: Container, campaign_id: int, now: float | None = None) -> TimingReport | None:
    """Give every planned row of the campaign its due time and re-batch by due time.

    ``None`` when the campaign has no timing options and no schedule (nothing to do).
    Without ``per_recipient_local`` the whole campaign is due at its next allowed moment in
    the account's zone; with it, each recipient's zone gets its own due time; with
    ``optimise`` each person is due at their best hour (see :mod:`qunfa.services.sto`).
    """
    with c.sessions() as s:
        camp = s.get(Campaign, campaign_id)
        assert camp is not None
        acc = s.get(Account, camp.account_id)
        assert acc is not None
    if (camp.options or {}).get("recurrence"):
        _refuse_series(c, camp)
    raw = (camp.options or {}).get("timing")
    started = clock() if now is None else now
    not_before = datetime.fromtimestamp(max(started, camp.scheduled_at or 0.0), UTC)
    if raw is None:
        if not camp.scheduled_at:
            return None
        with c.engine.begin() as conn:  # scheduled at a minute: no batch before it
            _floor_batches(conn, campaign_id, not_before.timestamp())
        return TimingReport(batches=-1, notes=["due no earlier than the scheduled time"])
    ct = parse_timing(raw)
    home = account_zone(acc)
    report = TimingReport()
    with c.engine.begin() as conn:
        per_zone = ct.per_recipient_local or ct.optimise_hours is not None
        zone_of: dict[tuple[str | None, str | None, str | None], str] = {}
        if per_zone:
            rows = [
                (r[0], r[1], r[2])
                for r in conn.execute(tq.AUDIENCE_ZONE_INPUTS, {"campaign_id": campaign_id})
            ]
            zone_of = timing.resolve_zones(rows, home)
        zones = set(zone_of.values()) if ct.per_recipient_local else {home}
        try:
            p = timing.plan(ct.base, zones or {home}, not_before)
        except timing.TimingError as exc:
            raise SchedulingError(f"timing: {exc}") from None
        report.explain, report.notes = timing.explain(p), list(p.notes)
        dues = p.due_by_zone
        params = {"campaign_id": campaign_id}
        if not per_zone:
            conn.execute(tq.SET_DUE_ALL, {**params, "due": dues[home]})
        else:
            fixed = {z: dues[z if ct.per_recipient_local else home] for z in set(zone_of.values())}
            _load_zones(conn, campaign_id, zone_of, fixed)
            if ct.optimise_hours is None:
                conn.execute(tq.SET_DUE_BY_ZONE, params)
            else:
                _apply_sto(conn, camp, ct, zone_of, fixed, not_before, report)
        report.batches = _rebatch(c, conn, camp, acc, report)
    return report


def _refuse_series(c: Container, camp: Campaign) -> None:
    with c.engine.begin() as conn:
        conn.execute(delete(Delivery).where(Delivery.campaign_id == camp.id))
        conn.execute(delete(Batch).where(Batch.campaign_id == camp.id))
    from qunfa.services.campaigns import CampaignError

    raise CampaignError(
        f"campaign {camp.id} is a recurring series ({camp.options['recurrence']!r}): it is never "
        "sent itself; approve it and the sweeper creates a run at each fire time "
        f"(`qunfa campaign runs {camp.id}`), or cancel it to stop the series"
    )


def _floor_batches(conn: Connection, campaign_id: int, due: float) -> None:
    conn.execute(
        update(Batch)
        .where(Batch.campaign_id == campaign_id, Batch.next_attempt_at < due)
        .values(next_attempt_at=due)
    )


def _load_zones(
    conn: Connection,
    campaign_id: int,
    zone_of: Mapping[tuple[str | None, str | None, str | None], str],
    due: Mapping[str, float],
) -> dict[str, int]:
    """Fill the plan_zone temp table; returns the zone → index map used by plan_slot."""
    take_write_lock(conn)  # reads then writes the main database: see storage/db.py
    conn.execute(tq.CREATE_PLAN_ZONE)
    conn.execute(tq.CLEAR_PLAN_ZONE, {"campaign_id": campaign_id})
    index = {z: i for i, z in enumerate(sorted(set(zone_of.values())))}
    now = datetime.now(UTC)
    rows = [
        {
            "campaign_id": campaign_id,
            "timezone": tz,
            "province": prov,
            "city": city,
            "zone_ix": index[zone],
            "offset_s": int(
                (now.astimezone(ZoneInfo(zone)).utcoffset() or timedelta()).total_seconds()
            ),
            "due": due.get(zone, 0.0),
        }
        for (tz, prov, city), zone in zone_of.items()
    ]
    if rows:
        conn.execute(tq.INSERT_PLAN_ZONE, rows)
    return index


def fallback_hour(ct: CampaignTiming) -> int:
    """The category's default hour: the start of its window (10 when it has none)."""
    window = ct.base.send.window
    return window.start.hour if window is not None else 10


def sto_slot(
    zone: str, hour: int, not_before: datetime, horizon_end: datetime, ct: CampaignTiming
) -> float | None:
    """The first allowed instant from ``hour``:00 local (next occurrence ≥ ``not_before``) in
    ``zone``, or ``None`` when it falls after ``horizon_end``."""
    tz = ZoneInfo(zone)
    day = not_before.astimezone(tz).date()
    cand = resolve_local(day, time(hour), tz)
    if cand.timestamp() < not_before.timestamp():
        cand = resolve_local(day + timedelta(days=1), time(hour), tz)
    try:
        allowed = next_allowed(cand, ct.base.send, timing.default_calendar())
    except CalendarError:
        return None
    ts = allowed.timestamp()
    return ts if ts <= horizon_end.timestamp() else None


def _apply_sto(
    conn: Connection,
    camp: Campaign,
    ct: CampaignTiming,
    zone_of: Mapping[tuple[str | None, str | None, str | None], str],
    fixed: Mapping[str, float],
    not_before: datetime,
    report: TimingReport,
) -> None:
    assert ct.optimise_hours is not None
    index = {z: i for i, z in enumerate(sorted(set(zone_of.values())))}
    horizon_end = not_before + timedelta(hours=ct.optimise_hours)
    take_write_lock(conn)
    conn.execute(tq.CREATE_PLAN_SLOT)
    conn.execute(tq.CLEAR_PLAN_SLOT, {"campaign_id": camp.id})
    slots = []
    for zone, ix in index.items():
        for hour in range(24):
            due = sto_slot(zone, hour, not_before, horizon_end, ct)
            slots.append(
                {"campaign_id": camp.id, "zone_ix": ix, "hour": hour,
                 "due": fixed[zone] if due is None else due}
            )  # fmt: skip
    if slots:
        conn.execute(tq.INSERT_PLAN_SLOT, slots)
    modal = conn.execute(tq.SEGMENT_MODAL_HOUR, {"campaign_id": camp.id}).scalar()
    hour = int(modal) if modal is not None else fallback_hour(ct)
    report.notes.append(
        f"send-time optimisation within {ct.optimise_hours:g}h; people without a learned hour "
        f"get {hour:02d}:00 ({'the audience’s modal hour' if modal is not None else 'category'})"
    )
    conn.execute(
        tq.SET_DUE_STO,
        {
            "campaign_id": camp.id,
            "holdout_per_10k": round(ct.holdout * 10000),
            "salt": holdout_salt(camp.uid),
            "fallback_hour": hour,
        },
    )


def holdout_salt(uid: str) -> int:
    """The campaign's salt for the holdout hash (from its uid: same campaign, same holdout)."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big")


def in_holdout(uid: str, contact_id: int, share: float) -> bool:
    """Python twin of the SQL holdout test (for tests and explanations)."""
    bucket = ((contact_id * 2654435761 + holdout_salt(uid)) % 4294967291) % 10000
    return bucket < round(share * 10000)


def _rebatch(
    c: Container, conn: Connection, camp: Campaign, acc: Account, report: TimingReport
) -> int:
    """Renumber planned rows so a batch never mixes due times; batch due = its rows' due."""
    # One expression object for SELECT and GROUP BY (PostgreSQL needs them identical; two
    # calls would bind two separate parameters).
    due = func.coalesce(Delivery.due_at, literal_column("0.0"))
    groups = conn.execute(
        select(due, func.count())
        .where(Delivery.campaign_id == camp.id, Delivery.status == "planned")
        .group_by(due)
    ).all()
    report.groups = {float(d): int(n) for d, n in groups}
    variants = conn.execute(
        select(Delivery.variant, func.count())
        .where(Delivery.campaign_id == camp.id, Delivery.status == "planned",
               Delivery.variant.is_not(None))
        .group_by(Delivery.variant)
    ).all()  # fmt: skip
    report.variants = {str(v): int(n) for v, n in variants}
    if not groups:
        return 0
    if len(groups) == 1:  # one due time: the batches stand, only their due moves
        _floor_batches(conn, camp.id, float(groups[0][0]))
        return int(conn.execute(
            select(func.count()).select_from(Batch).where(Batch.campaign_id == camp.id)
        ).scalar_one())  # fmt: skip
    cls = channel_class(camp.channel)
    rules = c.accounts.config(acc, camp.channel).rules
    size = cls.batch_size(rules, camp.mode)
    if size == 0 and camp.mode in ("to_all", "tag"):
        # A platform-wide send cannot be split by time: send openid lists instead.
        size = cls.batch_size(rules, "list")
        note = (
            f"sent as openid lists (mass/send), not {camp.mode}: the recipients are due at "
            f"{len(groups)} different times (per-recipient local time or send-time optimisation)"
        )
        report.notes.append(note)
        conn.execute(
            update(Campaign).where(Campaign.id == camp.id).values(mode="list", last_error=note)
        )
    size = size or 2**31 - 1
    conn.execute(tq.RENUMBER_BY_DUE, {"campaign_id": camp.id, "size": size})
    conn.execute(delete(Batch).where(Batch.campaign_id == camp.id))
    rows = conn.execute(tq.BATCH_DUES, {"campaign_id": camp.id}).all()
    conn.execute(
        insert(Batch),
        [
            {
                "campaign_id": camp.id,
                "batch_no": int(no),
                "state": "pending",
                "size": int(n),
                "idempotency_key": batch_key(camp.uid, int(no)),
                "next_attempt_at": float(due),
            }
            for no, n, due in rows
        ],
    )
    return len(rows)


# -- pacing ---------------------------------------------------------------------------------------
def pace_due(camp: Campaign, acc: Account) -> Callable[[datetime], datetime] | None:
    """For a paced campaign with timing options: a day's start → its first allowed moment.

    A pace day then starts at the window (or after the quiet hours) on an allowed day, in the
    account's zone. ``None`` without timing options (the pace rule's own start hour stands).
    """
    raw = (camp.options or {}).get("timing")
    if raw is None:
        return None
    ct = parse_timing(raw)
    tz = ZoneInfo(account_zone(acc))
    cal = timing.default_calendar()

    def move(moment: datetime) -> datetime:
        return next_allowed(moment.astimezone(tz), ct.base.send, cal)

    return move


def pace_days(camp: Campaign, acc: Account, days: int, start_hour: int) -> list[float]:
    """The start (epoch) of each of a paced campaign's ``days`` pace days (personal WeChat).

    Day 0 starts at the campaign's first allowed moment from now or its schedule, whichever
    is later. Day k starts on the local date after day k-1's — at the window's start when the
    campaign has a window, else at ``start_hour`` (the rule ``pace_start_hour``) — moved onto
    the allowed times (quiet hours, window, workdays / holidays) in the account's zone. Each
    day is searched from the date after the previous one, so a move (now past the window, a
    holiday) never puts two pace days — twice the daily pace — on one date.
    """
    tz = ZoneInfo(account_zone(acc))
    move = pace_due(camp, acc)
    raw = (camp.options or {}).get("timing")
    window = parse_timing(raw).base.send.window if raw is not None else None
    first = datetime.fromtimestamp(max(clock(), camp.scheduled_at or 0.0), tz)
    out = [move(first) if move is not None else first]
    for _ in range(1, days):
        after = out[-1].astimezone(tz).date() + timedelta(days=1)
        start = resolve_local(after, window.start if window is not None else time(start_hour), tz)
        out.append(move(start) if move is not None else start)
    return [d.timestamp() for d in out]


# -- recurrence -----------------------------------------------------------------------------------
def _approved(c: Container, camp: Campaign) -> bool:
    return camp.review_state == "approved" and camp.approved_hash == c.review.digest(camp)


def spawn_due_runs(c: Container, now: float | None = None) -> int:
    """Create the run of every approved recurring series whose fire time has come.

    A run is a child campaign (``parent_id``) with the series' content, audience and options
    (without ``recurrence``), scheduled at the fire time, so ``review.start_due`` starts it.
    It inherits the series' check and approval while the content is the one approved: a series
    approved once runs without re-approval; editing the content voids the approval and the
    series waits until it is approved again. Missed fire times (the sweeper was down) give one
    catch-up run for the latest, never a burst.
    """
    now = clock() if now is None else now
    with c.sessions() as s:
        series = [
            camp
            for camp in s.scalars(
                select(Campaign).where(
                    Campaign.parent_id.is_(None), Campaign.state.in_(SERIES_STATES)
                )
            )
            if (camp.options or {}).get("recurrence")
        ]
    made = 0
    for camp in series:
        try:
            made += _spawn(c, camp, now)
        except Exception:  # one bad series must not stop the others
            log.exception("recurring series %s: run not created", camp.id)
    return made


RUN_EVENT = "recurrence_run"


def run_key(series_id: int, fire: float) -> str:
    """The dedupe key that makes a series' run at ``fire`` exactly once (``events``)."""
    return f"{RUN_EVENT}:{series_id}:{fire:.0f}"


def _last_run_at(c: Container, series_id: int) -> float | None:
    with c.sessions() as s:
        opts = s.scalars(select(Campaign.options).where(Campaign.parent_id == series_id)).all()
    times = [float(o["run_at"]) for o in opts if isinstance(o, dict) and "run_at" in o]
    return max(times) if times else None


def _spawn(c: Container, camp: Campaign, now: float) -> int:
    if not _approved(c, camp):
        return 0
    acc = c.accounts.get(camp.account_id)
    tz = ZoneInfo(account_zone(acc))
    expr = cron.parse(camp.options["recurrence"])
    anchor = _last_run_at(c, camp.id) or camp.approved_at or camp.created_at
    fire = cron.next_fire(expr, datetime.fromtimestamp(anchor, UTC), tz)
    if fire.timestamp() > now:
        return 0
    for _ in range(10_000):  # catch up to the latest missed fire time
        following = cron.next_fire(expr, fire, tz)
        if following.timestamp() > now:
            break
        fire = following
    options = {k: v for k, v in (camp.options or {}).items() if k != "recurrence"}
    options["run_at"] = fire.timestamp()
    with c.sessions() as s:
        # Exactly once across sweepers (threads, processes, machines on one database): the
        # run's claim is a row with a unique dedupe key (series, fire time) in ``events``,
        # inserted first in the same transaction as the run. A second sweeper that read "no
        # run yet" before the first committed fails on the key (after waiting for the first's
        # write lock on SQLite, for its commit on PostgreSQL) and rolls back: no second run.
        s.add(
            Event(
                account_id=camp.account_id,
                kind=RUN_EVENT,
                dedupe_key=run_key(camp.id, fire.timestamp()),
                campaign_id=camp.id,
                payload={"run_at": fire.timestamp()},
                received_at=now,
            )
        )
        try:
            s.flush()
        except IntegrityError:
            s.rollback()
            log.info("recurring series %s: run at %s made by another sweeper", camp.id,
                     fire.isoformat())  # fmt: skip
            return 0
        child = Campaign(
            uid=uuid.uuid4().hex,
            name=f"{camp.name} · {fire:%Y-%m-%d %H:%M}",
            channel=camp.channel,
            account_id=camp.account_id,
            audience=camp.audience,
            mode=camp.mode,
            content=dict(camp.content),
            options=options,
            state="draft",
            created_by=camp.created_by,
            review_state=camp.review_state,
            approved_by=camp.approved_by,
            approved_at=camp.approved_at,
            approved_hash=camp.approved_hash,
            check_report=camp.check_report,
            checked_hash=camp.checked_hash,
            scheduled_at=fire.timestamp(),
            parent_id=camp.id,
            created_at=now,
        )
        s.add(child)
        s.commit()
        log.info("recurring series %s: run %s at %s", camp.id, child.id, fire.isoformat())
    return 1


def runs(c: Container, campaign_id: int) -> dict[str, Any]:
    """A series and its runs (newest first), with the next fire time."""
    camp = c.campaigns.get(campaign_id)
    expr = (camp.options or {}).get("recurrence")
    with c.sessions() as s:
        children = list(
            s.scalars(
                select(Campaign)
                .where(Campaign.parent_id == campaign_id)
                .order_by(Campaign.id.desc())
            )
        )
    nxt = None
    if expr:
        acc = c.accounts.get(camp.account_id)
        anchor = _last_run_at(c, campaign_id) or camp.approved_at or camp.created_at
        nxt = cron.next_fire(expr, datetime.fromtimestamp(max(anchor, _time.time()), UTC),
                             ZoneInfo(account_zone(acc))).timestamp()  # fmt: skip
    return {
        "id": camp.id,
        "name": camp.name,
        "recurrence": expr,
        "approved": _approved(c, camp),
        "state": camp.state,
        "next_run_at": nxt if camp.state in SERIES_STATES else None,
        "runs": [
            {
                "id": r.id,
                "name": r.name,
                "state": r.state,
                "run_at": (r.options or {}).get("run_at"),
                "planned": r.planned_count,
                "last_error": r.last_error,
            }
            for r in children
        ],
    }


def sweep(c: Container) -> dict[str, int]:
    """The sweeper's timing work: create due recurring runs, refresh learned best hours."""
    from qunfa.services import sto

    runs_made = spawn_due_runs(c)
    learned = sto.refresh_due(c)
    return {"runs": runs_made, "best_hours": learned}
