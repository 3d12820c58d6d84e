"""Behaviour: person events in (API, CSV, platform callbacks), per-person facts out.

* :meth:`BehaviourService.ingest` stores events in pages, idempotent by ``dedupe_key`` (an
  order number, a platform message id). A person is named by ``contact_id`` or by one identity
  (phone, email, openid, unionid, external_userid, userid — optionally on one account), looked
  up by blind index; events of people qunfa does not know are reported, never stored or
  silently dropped.
* :meth:`BehaviourService.import_csv` streams a file of events or orders through the same
  path; every rejected row goes to ``<file>.errors.csv`` with its row, column and reason.
* :meth:`BehaviourService.refresh` brings ``contact_facts`` up to date incrementally: only
  people with new events or with events that left a sliding window since the last refresh are
  recomputed, in one set-based upsert; when purchase facts changed, the RFM quintiles' cut
  points are moved by the ranks those people shifted them and only the rows between old and
  new cut points are rescored (exact, see ``docs/behaviour.md``). :meth:`rebuild` recomputes
  everything with NTILE (repair, verification).
* :meth:`on_wechat_event` / :meth:`on_wecom_event` turn inbound platform callbacks into events.

Definitions: ``domain/behaviour.py``; algorithm and figures: ``docs/behaviour.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, select, text

from qunfa.domain import behaviour as d
from qunfa.domain.fields import normalise_registered_at, normaliser
from qunfa.domain.redact import redact
from qunfa.services.accounts import AccountError
from qunfa.storage import behaviour_sql as bq
from qunfa.storage.db import take_write_lock
from qunfa.storage.models import Account, Contact, ContactFacts, Identity

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.behaviour")
Progress = Callable[[str, int, int | None], None]

PAGE = 10_000
IDENTITY_KINDS = ("phone", "email", "openid", "unionid", "external_userid", "userid")
STATE_KEY = "behaviour.facts"  # meta: {"event_id", "scanned_at", "now"} of the last refresh
LOCK_KEY = "behaviour.facts.lock"
# A refresh re-reads events received this long before the previous one started: a PostgreSQL
# transaction that took a lower id may commit after a higher id was seen (ingest commits each
# page of 10,000 rows, which takes well under a second).
RECEIVED_OVERLAP = 300.0
REFRESH_EVERY = 300.0  # seconds between refreshes driven by the sweeper
TEXT_MAX = 2000  # characters of message text kept per event


class BehaviourError(ValueError):
    pass


@dataclass(frozen=True)
class EventIn:
    """One validated event, its person not yet resolved (``contact_id`` or an identity)."""

    kind: str
    at: float
    contact_id: int | None = None
    id_kind: str | None = None
    id_value: str | None = None  # normalised (E.164 phone, lower-case e-mail domain …)
    account: str | int | None = None
    amount: float | None = None
    device: str | None = None
    channel: str | None = None
    text: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True)
class Problem:
    """A rejected event: its index in the input (CSV row number), the field and why."""

    index: int
    field: str
    reason: str


@dataclass
class IngestReport:
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    unknown: list[Problem] = field(default_factory=list)  # valid, but no such person
    invalid: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class ImportReport:
    rows: int
    inserted: int
    duplicates: int
    unknown: int
    invalid: int
    errors_file: Path | None
    seconds: float


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did: people whose facts changed, RFM rows rewritten, the time it took."""

    mode: str  # incremental | rebuild
    contacts: int
    rfm: int
    seconds: float
    now: float


# -- parsing ---------------------------------------------------------------------------------------
def parse_event(raw: Mapping[str, Any], default_kind: str | None = None) -> EventIn:
    """Validate one event given as a mapping (API JSON or a CSV row).

    Keys: ``kind``; ``at`` (epoch seconds/ms or ISO 8601, naive = China time); the person as
    ``contact_id`` or one of :data:`IDENTITY_KINDS` (``{"phone": "138…"}``) or
    ``identity: {"kind", "value"}``, with ``account`` (id or app id) to narrow an openid;
    ``amount`` (yuan; required for purchases), ``device``, ``channel``, ``text``; and
    ``dedupe_key`` or ``order_id``. Raises :class:`BadField` naming the field.
    """

    def get(key: str) -> Any:
        value = raw.get(key)
        return None if isinstance(value, str) and not value.strip() else value

    try:
        kind = d.normalise_kind(str(get("kind") or default_kind or ""))
    except ValueError as exc:
        raise BadField("kind", str(exc)) from None
    at_raw = get("at")
    if at_raw is None:
        raise BadField("at", "the time is missing")
    try:
        at = d.parse_time(at_raw)
    except ValueError as exc:
        try:  # 2024年5月1日 12:30, 2024/05/01 …: the importer's date forms (naive = UTC+8)
            at = normalise_registered_at(str(at_raw))
        except ValueError:
            raise BadField("at", str(exc)) from None
    try:
        amount = d.parse_amount(get("amount"))
    except ValueError as exc:
        raise BadField("amount", str(exc)) from None
    if kind == d.PURCHASE and amount is None:
        raise BadField("amount", "a purchase needs an amount in yuan")
    contact_id: int | None = None
    id_kind = id_value = None
    if get("contact_id") is not None:
        try:
            contact_id = int(str(get("contact_id")).strip())
        except ValueError:
            raise BadField("contact_id", f"{raw.get('contact_id')!r} is not a number") from None
    else:
        ident = get("identity")
        if isinstance(ident, Mapping):
            id_kind, id_raw = str(ident.get("kind", "")).strip(), ident.get("value")
        else:
            id_kind = next((k for k in IDENTITY_KINDS if get(k) is not None), None)
            id_raw = get(id_kind) if id_kind else None
        if id_kind is None:
            raise BadField(
                "contact_id", "no person: give contact_id or " + "|".join(IDENTITY_KINDS)
            )
        if id_kind not in IDENTITY_KINDS:
            raise BadField("identity", f"{id_kind!r} is not one of {', '.join(IDENTITY_KINDS)}")
        try:
            # The audience importer's canonical forms, so blind indexes match.
            id_value = str(normaliser(id_kind)(str(id_raw or "")))
        except ValueError as exc:
            raise BadField(id_kind, str(exc)) from None
    key = get("dedupe_key") or get("order_id")
    text_value = get("text")
    account = get("account")
    return EventIn(
        kind=kind,
        at=at,
        contact_id=contact_id,
        id_kind=id_kind,
        id_value=id_value,
        account=account if isinstance(account, int) else str(account) if account else None,
        amount=amount,
        device=d.normalise_device(str(get("device")) if get("device") is not None else None),
        channel=str(get("channel"))[:32] if get("channel") is not None else None,
        text=str(text_value)[:TEXT_MAX] if text_value is not None else None,
        dedupe_key=str(key).strip()[:200] if key is not None else None,
    )


class BadField(ValueError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.field = name
        self.reason = reason


# -- the service -----------------------------------------------------------------------------------
class BehaviourService:
    def __init__(self, c: Container) -> None:
        self.c = c
        self._last_auto = 0.0
        # The wall clock that stamps received_at and the refresh's scan; tests simulate time.
        self.clock: Callable[[], float] = time.time

    # -- ingestion -------------------------------------------------------------------------------
    def ingest(
        self,
        events: Iterable[Mapping[str, Any]],
        default_kind: str | None = None,
        received_at: float | None = None,
    ) -> IngestReport:
        """Validate, resolve and store events (API JSON); problems are reported by index."""
        started = time.perf_counter()
        report = IngestReport()
        page: list[tuple[int, EventIn]] = []
        for index, raw in enumerate(events):
            report.received += 1
            try:
                page.append((index, parse_event(raw, default_kind)))
            except BadField as exc:
                report.invalid.append(Problem(index, exc.field, exc.reason))
            if len(page) == PAGE:
                self._store_page(page, report, received_at)
                page = []
        if page:
            self._store_page(page, report, received_at)
        report.seconds = time.perf_counter() - started
        return report

    def ingest_parsed(
        self, events: Sequence[EventIn], received_at: float | None = None
    ) -> IngestReport:
        """Store already validated events (platform hooks, tests, the benchmark)."""
        report = IngestReport(received=len(events))
        for start in range(0, len(events), PAGE):
            chunk = list(enumerate(events[start : start + PAGE], start=start))
            self._store_page(chunk, report, received_at)
        return report

    def _store_page(
        self, page: list[tuple[int, EventIn]], report: IngestReport, received_at: float | None
    ) -> None:
        """Resolve one page's people (one IN query per identity kind) and insert it."""
        people = self._resolve(page, report)
        now = self.clock() if received_at is None else received_at
        # Message text is stored with e-mails and phone/ID/card numbers masked
        # (domain/redact.py): it is searched by SQL (said()), so it cannot be encrypted.
        rows = [
            (people[i], ev.kind, ev.channel, ev.at, ev.amount, ev.device,
             redact(ev.text) if ev.text else ev.text, ev.dedupe_key, now)
            for i, ev in page
            if i in people
        ]  # fmt: skip
        if not rows:
            return
        with self.c.engine.begin() as conn:
            inserted = _insert_events(conn, rows)
        report.inserted += inserted
        report.duplicates += len(rows) - inserted

    def _resolve(self, page: list[tuple[int, EventIn]], report: IngestReport) -> dict[int, int]:
        """Index → contact id for the page's events whose person exists; the rest reported."""
        found: dict[int, int] = {}
        by_contact: dict[int, list[int]] = defaultdict(list)
        by_identity: dict[tuple[str, int | None], dict[bytes, list[int]]] = defaultdict(
            lambda: defaultdict(list)
        )
        accounts: dict[str | int, int | None] = {}
        ring = self.c.keyring
        for index, ev in page:
            if ev.contact_id is not None:
                by_contact[ev.contact_id].append(index)
                continue
            assert ev.id_kind is not None and ev.id_value is not None
            account_id: int | None = None
            if ev.account is not None:
                if ev.account not in accounts:
                    try:
                        accounts[ev.account] = int(self.c.accounts.get(ev.account).id)
                    except AccountError:
                        accounts[ev.account] = None
                account_id = accounts[ev.account]
                if account_id is None:
                    report.invalid.append(Problem(index, "account", f"no account {ev.account}"))
                    continue
            by_identity[(ev.id_kind, account_id)][ring.blind(ev.id_value)].append(index)
        with self.c.engine.connect() as conn:
            if by_contact:
                # A contact merged into another gives its events to the survivor.
                t = cast(Table, Contact.__table__)
                for chunk in _chunks(list(by_contact), 5000):
                    for cid, merged in conn.execute(
                        select(t.c.id, t.c.merged_into).where(t.c.id.in_(chunk))
                    ):
                        for index in by_contact.pop(int(cid)):
                            found[index] = int(merged or cid)
                for cid, indexes in by_contact.items():
                    for index in indexes:
                        report.unknown.append(Problem(index, "contact_id", f"no contact {cid}"))
            ids = cast(Table, Identity.__table__)
            for (kind, account_id), blinds in by_identity.items():
                for chunk in _chunks(list(blinds), 5000):
                    query = select(ids.c.value_bi, ids.c.contact_id).where(
                        ids.c.kind == kind, ids.c.value_bi.in_(chunk)
                    )
                    if account_id is not None:
                        query = query.where(ids.c.account_id == account_id)
                    # The same phone on two accounts is one person after merging; before, the
                    # oldest contact wins (deterministic).
                    best: dict[bytes, int] = {}
                    for bi, cid in conn.execute(query):
                        key = bytes(bi)
                        best[key] = min(best.get(key, int(cid)), int(cid))
                    for bi in chunk:
                        for index in blinds[bi]:
                            if bi in best:
                                found[index] = best[bi]
                            else:
                                report.unknown.append(
                                    Problem(index, kind, f"no contact with this {kind}")
                                )
        return found

    # -- CSV import ------------------------------------------------------------------------------
    def import_csv(
        self,
        path: Path,
        kind: str | None = None,
        account: str | None = None,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Import events/orders from a CSV file with a header row (see ``docs/behaviour.md``).

        Columns: ``order_id``/``dedupe_key``, the person (``contact_id`` or ``phone`` …),
        ``amount``, ``at``, ``device``, ``channel``, ``text``, ``kind`` (else ``kind``),
        ``account`` (else ``account``). Rejected and unknown rows go to ``<file>.errors.csv``.
        """
        started = time.perf_counter()
        if kind is not None:
            try:
                kind = d.normalise_kind(kind)
            except ValueError as exc:
                raise BehaviourError(str(exc)) from None
        if not path.exists():
            raise BehaviourError(f"{path} does not exist")
        errors_path = path.with_name(path.name + ".errors.csv")
        rows = inserted = duplicates = unknown = invalid = 0
        with (
            path.open(newline="", encoding="utf-8-sig") as fh,
            errors_path.open("w", newline="", encoding="utf-8") as err_fh,
        ):
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if not header:
                raise BehaviourError(f"{path} is empty: the first line must name the columns")
            if "contact_id" not in header and not any(k in header for k in IDENTITY_KINDS):
                raise BehaviourError(
                    f"{path} names no person column; give one of contact_id, "
                    f"{', '.join(IDENTITY_KINDS)} (its columns are {', '.join(header)})"
                )
            if "at" not in header:
                raise BehaviourError(f"{path} has no column 'at' (when it happened)")
            errors = csv.writer(err_fh)
            errors.writerow(["row", "column", "value", "reason"])
            for page in _pages(reader):
                report = IngestReport()
                raws: dict[int, dict[str, str]] = {}
                parsed: list[tuple[int, EventIn]] = []
                for number, row in page:
                    raw = dict(zip(header, row, strict=False))
                    if account and not raw.get("account"):
                        raw["account"] = account
                    raws[number] = raw
                    try:
                        parsed.append((number, parse_event(raw, kind)))
                    except BadField as exc:
                        report.invalid.append(Problem(number, exc.field, exc.reason))
                self._store_page(parsed, report, None)
                for problem in sorted([*report.invalid, *report.unknown], key=lambda p: p.index):
                    value = raws[problem.index].get(problem.field, "")
                    errors.writerow([problem.index, problem.field, value, problem.reason])
                rows += len(page)
                inserted += report.inserted
                duplicates += report.duplicates
                unknown += len(report.unknown)
                invalid += len(report.invalid)
                if progress:
                    progress("importing events", rows, None)
        rejected = unknown + invalid
        if not rejected:
            errors_path.unlink()
        return ImportReport(
            rows, inserted, duplicates, unknown, invalid, errors_path if rejected else None,
            time.perf_counter() - started,
        )  # fmt: skip

    # -- facts -----------------------------------------------------------------------------------
    def refresh(self, now: float | None = None) -> RefreshReport:
        """Bring ``contact_facts`` up to date at ``now``, touching only what may have changed.

        Recomputed: people with events stored since the last refresh (by id, plus a received-
        at overlap) and people with events that left the 7-day or 3-month window between the
        last refresh's ``now`` and this one. RFM is recomputed when purchase facts may have
        changed. The first refresh, or one with a clock earlier than the last, rebuilds.
        """
        now = time.time() if now is None else now
        started = time.perf_counter()
        with self.c.engine.begin() as conn:
            conn.execute(bq.FACTS_LOCK, {"key": LOCK_KEY})
            state = _read_state(conn)
            if state is None or now < float(state["now"]):
                contacts, rfm = _rebuild(conn, now, self.clock())
                return RefreshReport("rebuild", contacts, rfm, time.perf_counter() - started, now)
            scanned_at = self.clock()
            max_id = conn.execute(text("SELECT max(id) FROM person_events")).scalar()
            last = float(state["now"])
            params = {
                "after_id": int(state["event_id"]),
                "received_since": float(state["scanned_at"]) - RECEIVED_OVERLAP,
                "out7_from": last - d.WINDOW_7D,
                "out7_to": now - d.WINDOW_7D,
                "out3_from": last - d.WINDOW_3M,
                "out3_to": now - d.WINDOW_3M,
            }
            purchases = conn.execute(bq.PURCHASES_CHANGED, params).first() is not None
            _fill_scope(conn, params)
            rfm_state: RfmState | None = state.get("rfm")
            before: Sequence[int] | None = None
            if purchases and rfm_state is not None and rfm_state["n"]:
                # The scope's ranks below each cut point before its facts change.
                before = _scope_counts(conn, rfm_state)
            contacts = conn.execute(
                bq.facts_upsert(conn.dialect.name, full=False), _windows(now)
            ).rowcount
            rfm = 0
            if purchases:
                if rfm_state is None:  # a state written before incremental RFM: rank once
                    rfm = conn.execute(bq.RFM_SCORES).rowcount
                    rfm_state = _rfm_fresh(conn)
                else:
                    rfm, rfm_state = _rfm_incremental(conn, rfm_state, before)
            _write_state(conn, int(max_id or state["event_id"]), scanned_at, now, rfm_state)
        return RefreshReport("incremental", contacts, rfm, time.perf_counter() - started, now)

    def rebuild(self, now: float | None = None) -> RefreshReport:
        """Recompute every person's facts from scratch (repair, and the tests' reference)."""
        now = time.time() if now is None else now
        started = time.perf_counter()
        with self.c.engine.begin() as conn:
            conn.execute(bq.FACTS_LOCK, {"key": LOCK_KEY})
            contacts, rfm = _rebuild(conn, now, self.clock())
        return RefreshReport("rebuild", contacts, rfm, time.perf_counter() - started, now)

    def refresh_due(self) -> RefreshReport | None:
        """Refresh when this process last did ``REFRESH_EVERY`` ago (the sweeper); never raises."""
        if time.monotonic() - self._last_auto < REFRESH_EVERY and self._last_auto:
            return None
        self._last_auto = time.monotonic()
        try:
            return self.refresh()
        except Exception:  # the sweeper's other work goes on; the next pass retries
            log.exception("behaviour facts refresh failed")
            return None

    def facts(self, contact_id: int) -> dict[str, Any] | None:
        """One person's facts row (None when they have no events yet)."""
        with self.c.sessions() as s:
            row = s.get(ContactFacts, contact_id)
            if row is None:
                return None
            cols = [col.name for col in cast(Table, ContactFacts.__table__).columns]
            return {name: getattr(row, name) for name in cols}

    def layers(self, contact_id: int, now: float | None = None) -> list[str]:
        """The built-in layers one person is in at ``now``."""
        now = time.time() if now is None else now
        out = []
        with self.c.engine.connect() as conn:
            for layer, condition in bq.LAYER_CONDITIONS.items():
                sql = text(
                    "SELECT 1 FROM contacts c LEFT JOIN contact_facts f ON f.contact_id = c.id "
                    f"WHERE c.id = :cid AND ({condition})"
                )
                if conn.execute(sql, {"cid": contact_id, **_layer_params(now)}).first():
                    out.append(layer)
        return out

    def layer_members(self, layer: str, now: float | None = None) -> list[int]:
        """Contact ids in a built-in layer at ``now`` (tests and small reports)."""
        if layer not in bq.LAYER_CONDITIONS:
            raise BehaviourError(f"no layer {layer!r}; layers are {', '.join(d.LAYERS)}")
        now = time.time() if now is None else now
        with self.c.engine.connect() as conn:
            rows = conn.execute(bq.layer_members(layer), _layer_params(now))
            return [int(r[0]) for r in rows]

    # -- platform hooks --------------------------------------------------------------------------
    def on_wechat_event(self, acc: Account, fields: Mapping[str, str]) -> bool:
        """An Official Account callback (message, menu click, subscribe …) as a person event.

        Never raises: a callback must be answered whatever happens here. Followers not yet
        synced are unknown and skipped (logged at debug level, without the openid).
        """
        try:
            kind = wechat_event_kind(fields)
            openid = fields.get("FromUserName", "")
            if kind is None or not openid:
                return False
            at = d.parse_time(fields.get("CreateTime") or time.time())
            ref = fields.get("MsgId") or f"{fields.get('Event', '')}:{openid}:{int(at)}"
            event = EventIn(
                kind=kind,
                at=at,
                id_kind="openid",
                id_value=openid,
                account=int(acc.id),
                channel=acc.channel[:32],
                text=(fields.get("Content") or fields.get("EventKey") or None),
                dedupe_key=f"{acc.channel}:{acc.app_id}:{ref}"[:200],
            )
            return self.ingest_parsed([event]).inserted == 1
        except Exception:  # the callback is answered regardless
            log.exception("could not record a behaviour event from %s", acc.app_id)
            return False

    def on_wecom_event(self, acc: Account, fields: Mapping[str, str]) -> bool:
        """A WeCom callback: a customer added a staff member, or a member messaged the app."""
        try:
            at = d.parse_time(fields.get("CreateTime") or time.time())
            if fields.get("Event") == "change_external_contact":
                if fields.get("ChangeType") not in (
                    "add_external_contact",
                    "add_half_external_contact",
                ):
                    return False
                id_kind, value, kind = (
                    "external_userid",
                    fields.get("ExternalUserID", ""),
                    "interaction",
                )
            elif fields.get("MsgType") == "text":
                id_kind, value, kind = "userid", fields.get("FromUserName", ""), "message"
            else:
                return False
            if not value:
                return False
            ref = fields.get("MsgId") or f"{fields.get('ChangeType', '')}:{value}:{int(at)}"
            event = EventIn(
                kind=kind,
                at=at,
                id_kind=id_kind,
                id_value=value,
                channel=acc.channel[:32],
                text=fields.get("Content") or None,
                dedupe_key=f"wecom:{acc.app_id}:{ref}"[:200],
            )
            return self.ingest_parsed([event]).inserted == 1
        except Exception:
            log.exception("could not record a behaviour event from %s", acc.app_id)
            return False


def wechat_event_kind(fields: Mapping[str, str]) -> str | None:
    """The person-event kind of an Official Account callback, or None (not the person's act).

    Messages (text, image, voice …) are ``message``; menu clicks and menu links are ``click``;
    subscribing and scanning a QR code are ``interaction``. Unsubscribing, automatic location
    reports and platform job reports are not engagement.
    """
    msg_type = fields.get("MsgType", "")
    if msg_type and msg_type != "event":
        return "message"
    event = fields.get("Event", "").upper()
    if event in ("CLICK", "VIEW", "SCANCODE_PUSH", "SCANCODE_WAITMSG", "VIEW_MINIPROGRAM"):
        return "click"
    if event in ("SUBSCRIBE", "SCAN"):
        return "interaction"
    return None


# -- helpers ---------------------------------------------------------------------------------------
def _windows(now: float) -> dict[str, float]:
    return {"now": now, "since_7d": now - d.WINDOW_7D, "since_3m": now - d.WINDOW_3M}


def _layer_params(now: float) -> dict[str, Any]:
    return {"now": now, "new_for": d.NEW_FOR, "silent_after": d.SILENT_AFTER, "no": False}


def _rebuild(conn: Connection, now: float, scanned_at: float) -> tuple[int, int]:
    max_id = conn.execute(text("SELECT max(id) FROM person_events")).scalar()
    conn.execute(text("DELETE FROM contact_facts"))
    contacts = conn.execute(bq.facts_upsert(conn.dialect.name, full=True), _windows(now)).rowcount
    rfm = conn.execute(bq.RFM_SCORES).rowcount
    _write_state(conn, max_id or 0, scanned_at, now, _rfm_fresh(conn))
    return contacts, rfm


# -- incremental RFM (algorithm: storage/behaviour_sql.py, "incremental RFM") ----------------------
# The state's "rfm": {"n": buyers, "cuts": {"r": [[value, contact_id] × 4], "f": …, "m": …}}.
RfmState = dict[str, Any]


def cut_rank(n: int, k: int, buckets: int = 5) -> int:
    """The 1-based rank of the last row of bucket ``k`` of ``n`` rows, as NTILE fills them."""
    small, extra = divmod(n, buckets)
    return k * small + min(k, extra)


def _fill_scope(conn: Connection, params: Mapping[str, Any]) -> None:
    take_write_lock(conn)  # reads then writes the main database: see storage/db.py
    conn.execute(bq.facts_scope_ddl(conn.dialect.name))
    conn.execute(bq.FACTS_SCOPE_CLEAR)  # SQLite keeps the rows of an earlier refresh
    conn.execute(bq.FACTS_SCOPE_FILL, dict(params))
    if conn.dialect.name == "postgresql":
        # Temporary tables get no autovacuum statistics; the upsert's plan needs a row count.
        conn.execute(text("ANALYZE facts_scope"))


def _cut_params(cuts: Mapping[str, Sequence[Sequence[Any]]], tag: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim, points in cuts.items():
        for k, (value, cid) in enumerate(points, start=1):
            out[f"{dim}{k}{tag}v"], out[f"{dim}{k}{tag}i"] = value, cid
    return out


def _scope_counts(conn: Connection, state: RfmState) -> Sequence[int]:
    """[buyers in scope, then per dimension and cut point: scope buyers at or below it]."""
    row = conn.execute(bq.RFM_SCOPE_COUNTS, _cut_params(state["cuts"])).one()
    return [int(x or 0) for x in row]


def _nth(conn: Connection, dim: str, n: int, rank: int) -> list[Any]:
    """The buyer at 1-based ``rank`` in (value, contact_id) order, walked from the nearer end."""
    down = rank - 1 > n - rank
    skip = n - rank if down else rank - 1
    row = conn.execute(bq.rfm_nth(dim, descending=down), {"skip": skip}).one()
    return [row[0], int(row[1])]


def _rfm_fresh(conn: Connection) -> RfmState:
    """Cut points from scratch (after a full ranking): four index walks per dimension."""
    n = int(conn.execute(bq.RFM_BUYERS).scalar() or 0)
    if n == 0:
        return {"n": 0, "cuts": None}
    cuts = {
        dim: [_nth(conn, dim, n, cut_rank(n, k)) for k in range(1, bq.RFM_CUTS + 1)]
        for dim in bq.RFM_COLUMNS
    }
    return {"n": n, "cuts": cuts}


def _rfm_incremental(
    conn: Connection, old: RfmState, before: Sequence[int] | None
) -> tuple[int, RfmState]:
    """Move each cut point by the ranks the scope's changes shifted it; rewrite what moved.

    A stored cut point ``c`` had rank ``e_k(n_old)``. Only scope rows changed, so its rank now
    is that plus (scope buyers ≤ c after) − (scope buyers ≤ c before); the new cut point, at
    rank ``e_k(n)``, is that many rows away: a short walk on the dimension's index.
    """
    if not old["n"] or before is None:  # nobody had purchased: every buyer is in the scope
        fresh = _rfm_fresh(conn)
        if not fresh["n"]:
            return 0, fresh
        params: dict[str, object] = _cut_params(fresh["cuts"])
        for dim, points in fresh["cuts"].items():  # empty ranges: the scope holds every buyer
            for k, (value, cid) in enumerate(points, start=1):
                params.update(bq.between_params(dim, k, (value, cid), (value, cid)))
        return conn.execute(bq.RFM_REWRITE, params).rowcount, fresh
    after = _scope_counts(conn, old)
    n_old = int(old["n"])
    n = n_old + after[0] - before[0]
    cuts: dict[str, list[list[Any]]] = {}
    ranges: dict[str, object] = {}
    column = 1
    for dim in bq.RFM_COLUMNS:
        cuts[dim] = []
        for k in range(1, bq.RFM_CUTS + 1):
            was = old["cuts"][dim][k - 1]
            at = cut_rank(n_old, k) + after[column] - before[column]
            column += 1
            want = cut_rank(n, k)
            if abs(want - at) > min(want - 1, n - want):  # a big move: walk from an end
                new = _nth(conn, dim, n, want)
            else:
                skip = want - at - 1 if want > at else at - want
                row = conn.execute(
                    bq.rfm_step(dim, forward=want > at),
                    {"v": was[0], "i": was[1], "skip": skip, "take": skip + 1},
                ).one()
                new = [row[0], int(row[1])]
            cuts[dim].append(new)
            low, high = sorted([(was[0], int(was[1])), (new[0], int(new[1]))])
            ranges.update(bq.between_params(dim, k, low, high))
    params = {**_cut_params(cuts), **ranges}
    return conn.execute(bq.RFM_REWRITE, params).rowcount, {"n": n, "cuts": cuts}


def _read_state(conn: Connection) -> dict[str, Any] | None:
    value = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": STATE_KEY}).scalar()
    return json.loads(value) if value else None


def _write_state(
    conn: Connection, event_id: int, scanned_at: float, now: float, rfm: RfmState | None
) -> None:
    state = {"event_id": int(event_id), "scanned_at": scanned_at, "now": now}
    value = json.dumps({**state, "rfm": rfm} if rfm is not None else state)
    conn.execute(
        text(
            "INSERT INTO meta (key, value) VALUES (:k, :v) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        {"k": STATE_KEY, "v": value},
    )


_INSERT = (
    "INSERT INTO person_events (contact_id, kind, channel, at, amount, device, text, "
    "dedupe_key, received_at) VALUES ({marks}) ON CONFLICT (dedupe_key) DO NOTHING"
)


def _insert_events(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows with the DBAPI's executemany; a known ``dedupe_key`` is skipped.

    Returns how many were inserted (the driver's summed rowcount). COPY cannot skip conflicts,
    so PostgreSQL gets psycopg's pipelined executemany.
    """
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    dbapi: Any = conn.connection.driver_connection
    cur = dbapi.cursor()
    try:
        cur.executemany(_INSERT.format(marks=", ".join([mark] * 9)), rows)
        return int(cur.rowcount)
    finally:
        cur.close()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pages(reader: Iterator[list[str]]) -> Iterator[list[tuple[int, list[str]]]]:
    page: list[tuple[int, list[str]]] = []
    for number, row in enumerate(reader, start=2):  # row 1 is the header
        if not any(cell.strip() for cell in row):
            continue  # blank lines are not rows
        page.append((number, row))
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page
