"""People and their identities: show a person, find and merge duplicates, undo a merge.

A person (a ``contacts`` row) owns identities per platform and account. Account-less
identities of the kinds ``unionid``, ``phone`` and ``email`` are evidence that two records are
one person: equal blind indexes on two live contacts merge them (:mod:`qunfa.domain.people`
picks the survivor and what it takes). A merge moves every identity of the absorbed record to
the survivor, fills the survivor's empty attributes (and adds the absorbed record's own tags),
sets ``merged_into`` on the absorbed record and writes a ``contact_merges`` row and an
``audit_log`` row. :meth:`PeopleService.unmerge` puts exactly that back. Past deliveries keep
the contact id they were planned with.

Finding duplicates is set-based: :meth:`PeopleService.merge_pending` is one ``GROUP BY`` over
the account-less identities (after an import); :meth:`PeopleService.merge_for` looks only at
the keys of some contacts (after a sync or a single upsert adds an identity).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, text, update

from qunfa.domain.fields import MERGE_KINDS
from qunfa.domain.people import FILLABLE, PlannedMerge, fill, plan_merges
from qunfa.storage.models import (
    Account,
    AuditLog,
    Contact,
    ContactFacts,
    ContactMerge,
    ContactTag,
    Identity,
    PersonEvent,
    Tag,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

contacts = cast(Table, Contact.__table__)
identities = cast(Table, Identity.__table__)
merges_t = cast(Table, ContactMerge.__table__)
audit = cast(Table, AuditLog.__table__)
contact_tags = cast(Table, ContactTag.__table__)
tags_t = cast(Table, Tag.__table__)
accounts_t = cast(Table, Account.__table__)
events_t = cast(Table, PersonEvent.__table__)
facts_t = cast(Table, ContactFacts.__table__)
ID_CHUNK = 5000  # ids per IN list: under SQLite's bound-parameter limit

# MERGE_SHARED_KEYS — every account-less merge key (unionid / phone / e-mail blind index) held
# more than once, with the holders. The inner GROUP BY reads only the unique index
# (account_id, kind, value_bi), in order, never the table (COUNT(DISTINCT contact_id) would
# visit every row: 10× slower); only the few repeated keys are joined back. A key repeated on
# one person (merge evidence kept after a merge) is dropped in Python.
MERGE_SHARED_KEYS = text("""
    SELECT i.kind, i.value_bi, i.contact_id
    FROM (SELECT kind, value_bi FROM identities
          WHERE account_id IS NULL AND kind IN ('unionid', 'phone', 'email')
          GROUP BY kind, value_bi
          HAVING COUNT(*) > 1) AS d
    JOIN identities i
      ON i.account_id IS NULL AND i.kind = d.kind AND i.value_bi = d.value_bi
    JOIN contacts c ON c.id = i.contact_id AND c.merged_into IS NULL
""")

# MERGE_KEYS_OF — the holders of the merge keys some contacts have (incremental merging after
# a sync or a single upsert): probes the unique index once per key of those contacts.
MERGE_KEYS_OF = text("""
    SELECT o.kind, o.value_bi, o.contact_id
    FROM identities s
    JOIN identities o
      ON o.account_id IS NULL AND o.kind = s.kind AND o.value_bi = s.value_bi
    JOIN contacts c ON c.id = o.contact_id AND c.merged_into IS NULL
    WHERE s.contact_id IN :ids AND s.account_id IS NULL
      AND s.kind IN ('unionid', 'phone', 'email')
""").bindparams(bindparam("ids", expanding=True))


class PeopleError(ValueError):
    """A person or merge that does not exist, or an undo that cannot be done."""


@dataclass(frozen=True)
class IdentityView:
    id: int
    kind: str
    value: str  # decrypted: show only to people allowed to see PII
    account_id: int | None
    account: str | None  # the account's app id
    subscribed: bool


@dataclass(frozen=True)
class MergeView:
    id: int
    survivor_id: int
    absorbed_id: int
    matched_kind: str
    identity_ids: list[int]
    filled: dict[str, Any]
    actor: str
    merged_at: float
    undone_at: float | None


@dataclass(frozen=True)
class Person:
    id: int
    name: str | None
    city: str | None
    province: str | None
    gender: str | None
    birthday: str | None
    timezone: str | None
    registered_at: float | None
    attrs: dict[str, Any]
    created_at: float
    updated_at: float
    merged_into: int | None
    identities: list[IdentityView] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    merges: list[MergeView] = field(default_factory=list)


def write_audit(
    conn: Connection, actor: str, action: str, target: str, detail: dict[str, Any]
) -> int:
    """Append one ``audit_log`` row in the caller's transaction (never plaintext PII)."""
    return int(
        conn.execute(
            insert(audit)
            .values(at=time.time(), actor=actor, action=action, target=target, detail=detail)
            .returning(audit.c.id)
        ).scalar_one()
    )


def _merge_view(row: Any) -> MergeView:
    return MergeView(
        id=row.id,
        survivor_id=row.survivor_id,
        absorbed_id=row.absorbed_id,
        matched_kind=row.matched_kind,
        identity_ids=list(row.identity_ids or []),
        filled=dict(row.filled or {}),
        actor=row.actor,
        merged_at=row.merged_at,
        undone_at=row.undone_at,
    )


class PeopleService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- reading --------------------------------------------------------------------------------
    def get(self, contact_id: int) -> Person:
        """One person with decrypted identities, qunfa tags and the merges that involve them."""
        ring = self.c.keyring
        with self.c.engine.connect() as conn:
            row = conn.execute(select(contacts).where(contacts.c.id == contact_id)).first()
            if row is None:
                raise PeopleError(
                    f"contact {contact_id} does not exist (list people with "
                    "`qunfa contacts export --all` or look one up by id)"
                )
            ids = conn.execute(
                select(identities, accounts_t.c.app_id)
                .select_from(
                    identities.outerjoin(accounts_t, accounts_t.c.id == identities.c.account_id)
                )
                .where(identities.c.contact_id == contact_id)
                .order_by(identities.c.id)
            ).all()
            tag_names = conn.execute(
                select(tags_t.c.name)
                .join(contact_tags, contact_tags.c.tag_id == tags_t.c.id)
                .where(contact_tags.c.contact_id == contact_id)
                .order_by(tags_t.c.name)
            ).scalars()
            merge_rows = conn.execute(
                select(merges_t)
                .where(
                    (merges_t.c.survivor_id == contact_id) | (merges_t.c.absorbed_id == contact_id)
                )
                .order_by(merges_t.c.id)
            ).all()
            return Person(
                id=row.id,
                name=ring.decrypt(row.name_enc) if row.name_enc else None,
                city=row.city,
                province=row.province,
                gender=row.gender,
                birthday=row.birthday,
                timezone=row.timezone,
                registered_at=row.registered_at,
                attrs=dict(row.attrs or {}),
                created_at=row.created_at,
                updated_at=row.updated_at,
                merged_into=row.merged_into,
                identities=[
                    IdentityView(
                        i.id,
                        i.kind,
                        ring.decrypt(i.value_enc),
                        i.account_id,
                        i.app_id,
                        bool(i.subscribed),
                    )
                    for i in ids
                ],
                tags=list(tag_names),
                merges=[_merge_view(m) for m in merge_rows],
            )

    def merges(self, limit: int = 100, contact_id: int | None = None) -> list[MergeView]:
        """The latest merges (newest first), optionally only those involving one contact."""
        stmt = select(merges_t).order_by(merges_t.c.id.desc()).limit(limit)
        if contact_id is not None:
            stmt = stmt.where(
                (merges_t.c.survivor_id == contact_id) | (merges_t.c.absorbed_id == contact_id)
            )
        with self.c.engine.connect() as conn:
            return [_merge_view(r) for r in conn.execute(stmt)]

    # -- merging --------------------------------------------------------------------------------
    def merge_pending(self, actor: str = "system") -> list[MergeView]:
        """Merge every group of live people sharing a unionid, phone or e-mail (one pass)."""
        with self.c.engine.connect() as conn:
            shared = conn.execute(MERGE_SHARED_KEYS).all()
        return self._merge_shared(shared, actor)

    def merge_for(self, contact_ids: Iterable[int], actor: str = "system") -> list[MergeView]:
        """Merge these contacts with whoever shares one of their merge keys (incremental).

        For services that add identities one page at a time (platform sync, API upserts):
        call it with the contacts whose account-less identities just changed.
        """
        ids = sorted(set(contact_ids))
        shared: list[Any] = []
        with self.c.engine.connect() as conn:
            for start in range(0, len(ids), 5000):
                shared += conn.execute(MERGE_KEYS_OF, {"ids": ids[start : start + 5000]}).all()
        return self._merge_shared(shared, actor)

    def _merge_shared(self, shared: Sequence[Any], actor: str) -> list[MergeView]:
        holders: dict[tuple[str, bytes], set[int]] = defaultdict(set)
        for kind, bi, cid in shared:
            holders[(kind, bytes(bi))].add(int(cid))
        groups = [(k[0], ids) for k, ids in holders.items() if len(ids) > 1]
        if not groups:
            return []
        involved = sorted({c for _, ids in groups for c in ids})
        with self.c.engine.connect() as conn:
            undone = [
                (int(a), int(b))
                for a, b in conn.execute(
                    select(merges_t.c.survivor_id, merges_t.c.absorbed_id).where(
                        merges_t.c.undone_at.is_not(None),
                        merges_t.c.absorbed_id.in_(involved),
                    )
                )
            ]
        planned = plan_merges(groups, undone)
        done: list[MergeView] = []
        with self.c.engine.begin() as conn:
            for m in planned:
                done.append(self._apply(conn, m, actor))
        return done

    def _apply(self, conn: Connection, m: PlannedMerge, actor: str) -> MergeView:
        now = time.time()
        cols = [contacts.c[c] for c in (*FILLABLE, "attrs")]
        rows = {
            r.id: dict(r._mapping)
            for r in conn.execute(
                select(contacts.c.id, *cols).where(contacts.c.id.in_([m.survivor, m.absorbed]))
            )
        }
        moved = [
            int(i)
            for i in conn.execute(
                select(identities.c.id).where(identities.c.contact_id == m.absorbed)
            ).scalars()
        ]
        conn.execute(
            update(identities)
            .where(identities.c.contact_id == m.absorbed)
            .values(contact_id=m.survivor, updated_at=now)
        )
        filled = fill(rows[m.survivor], rows[m.absorbed])
        values: dict[str, Any] = {k: v for k, v in filled.items() if k != "attrs"}
        if "attrs" in filled:
            values["attrs"] = {**(rows[m.survivor]["attrs"] or {}), **filled["attrs"]}
        survivor_tags = select(contact_tags.c.tag_id).where(contact_tags.c.contact_id == m.survivor)
        new_tags = [
            int(t)
            for t in conn.execute(
                select(contact_tags.c.tag_id).where(
                    contact_tags.c.contact_id == m.absorbed,
                    contact_tags.c.tag_id.not_in(survivor_tags),
                )
            ).scalars()
        ]
        if new_tags:
            conn.execute(
                insert(contact_tags), [{"tag_id": t, "contact_id": m.survivor} for t in new_tags]
            )
        conn.execute(
            update(contacts).where(contacts.c.id == m.survivor).values(**values, updated_at=now)
        )
        conn.execute(
            update(contacts).where(contacts.c.id == m.absorbed).values(merged_into=m.survivor)
        )
        # What undo needs, without plaintext PII: the name is recorded as filled, not copied.
        record: dict[str, Any] = {
            k: (True if k == "name_enc" else v) for k, v in filled.items() if k != "attrs"
        }
        if "attrs" in filled:
            record["attrs"] = sorted(filled["attrs"])
        if new_tags:
            record["tags"] = new_tags
        filled_names = sorted(record)
        events = _move_events(conn, m.absorbed, m.survivor, now)
        if events:
            record["events"] = events
        merge_id = int(
            conn.execute(
                insert(merges_t)
                .values(
                    survivor_id=m.survivor, absorbed_id=m.absorbed, matched_kind=m.matched_kind,
                    identity_ids=moved, filled=record, actor=actor, merged_at=now,
                )
                .returning(merges_t.c.id)
            ).scalar_one()
        )  # fmt: skip
        write_audit(
            conn, actor, "contacts.merge", f"contact:{m.survivor}",
            {"merge_id": merge_id, "absorbed": m.absorbed, "matched_kind": m.matched_kind,
             "identities": len(moved), "filled": filled_names, "events": len(events)},
        )  # fmt: skip
        return MergeView(
            merge_id, m.survivor, m.absorbed, m.matched_kind, moved, record, actor, now, None
        )

    def unmerge(self, merge_id: int, actor: str = "system") -> MergeView:
        """Undo a merge: move exactly its identities back, clear what it filled, revive the
        absorbed record. The same evidence will not merge the pair again."""
        now = time.time()
        with self.c.engine.begin() as conn:
            row = conn.execute(select(merges_t).where(merges_t.c.id == merge_id)).first()
            if row is None:
                raise PeopleError(
                    f"merge {merge_id} does not exist (list merges with `qunfa contacts merges`)"
                )
            if row.undone_at is not None:
                raise PeopleError(f"merge {merge_id} was already undone")
            m = _merge_view(row)
            if m.identity_ids:
                conn.execute(
                    update(identities)
                    .where(identities.c.id.in_(m.identity_ids))
                    .values(contact_id=m.absorbed_id, updated_at=now)
                )
            events = [int(e) for e in m.filled.get("events", [])]
            if events:
                _restore_events(conn, events, m.survivor_id, m.absorbed_id, now)
            clear: dict[str, Any] = {k: None for k in m.filled if k in FILLABLE}
            if m.filled.get("attrs"):
                current = conn.execute(
                    select(contacts.c.attrs).where(contacts.c.id == m.survivor_id)
                ).scalar_one()
                drop = set(m.filled["attrs"])
                clear["attrs"] = {k: v for k, v in (current or {}).items() if k not in drop}
            if clear:
                conn.execute(
                    update(contacts)
                    .where(contacts.c.id == m.survivor_id)
                    .values(**clear, updated_at=now)
                )
            if m.filled.get("tags"):
                conn.execute(
                    delete(contact_tags).where(
                        contact_tags.c.contact_id == m.survivor_id,
                        contact_tags.c.tag_id.in_(m.filled["tags"]),
                    )
                )
            conn.execute(
                update(contacts)
                .where(contacts.c.id == m.absorbed_id)
                .values(merged_into=None, updated_at=now)
            )
            conn.execute(update(merges_t).where(merges_t.c.id == merge_id).values(undone_at=now))
            write_audit(
                conn, actor, "contacts.unmerge", f"contact:{m.survivor_id}",
                {"merge_id": merge_id, "absorbed": m.absorbed_id,
                 "identities": len(m.identity_ids), "events": len(events),
                 "cleared": sorted(k for k in m.filled if k != "events")},
            )  # fmt: skip
        return MergeView(
            m.id, m.survivor_id, m.absorbed_id, m.matched_kind, m.identity_ids, m.filled,
            m.actor, m.merged_at, now,
        )  # fmt: skip


def _move_events(conn: Connection, absorbed: int, survivor: int, now: float) -> list[int]:
    """Give the absorbed person's behaviour events to the survivor; returns their ids.

    ``received_at`` is set to ``now`` so the incremental facts refresh (which rescans events
    received since its last run, ``services/behaviour.py``) recomputes the survivor; the
    absorbed record's facts row goes (it has no events, and merged records are never
    segmented).
    """
    ids = [
        int(i)
        for i in conn.execute(
            select(events_t.c.id).where(events_t.c.contact_id == absorbed).order_by(events_t.c.id)
        ).scalars()
    ]
    if ids:
        conn.execute(
            update(events_t)
            .where(events_t.c.contact_id == absorbed)
            .values(contact_id=survivor, received_at=now)
        )
    conn.execute(delete(facts_t).where(facts_t.c.contact_id == absorbed))
    return ids


def _restore_events(
    conn: Connection, ids: list[int], survivor: int, absorbed: int, now: float
) -> None:
    """Undo :func:`_move_events`: exactly those events go back (events recorded for the
    survivor since the merge stay). Both people's remaining events are touched so the next
    refresh recomputes both; a survivor left without events loses its facts row."""
    for start in range(0, len(ids), ID_CHUNK):
        conn.execute(
            update(events_t)
            .where(events_t.c.id.in_(ids[start : start + ID_CHUNK]),
                   events_t.c.contact_id == survivor)
            .values(contact_id=absorbed, received_at=now)
        )  # fmt: skip
    touched = conn.execute(
        update(events_t).where(events_t.c.contact_id == survivor).values(received_at=now)
    ).rowcount
    if not touched:
        conn.execute(delete(facts_t).where(facts_t.c.contact_id == survivor))


__all__ = ["MERGE_KINDS", "IdentityView", "MergeView", "PeopleError", "PeopleService", "Person"]
