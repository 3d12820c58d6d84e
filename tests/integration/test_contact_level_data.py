"""The contact-level copies of migration 0006 always equal what they are copied from.

* ``contact_account_tags`` = ``SELECT DISTINCT tag_id, contact_id FROM identity_tags ⋈
  identities`` (a person has an account tag iff one of their identities has it);
* ``contacts.last_interaction_at`` = ``contact_facts.last_interaction_at`` (NULL without a row)
  and ``contacts.active_at`` = ``max(last_interaction_at, coalesce(registered_at, created_at))``.

Checked after a long random sequence of plain SQL writes (single and multi-row inserts,
deletes, identity moves and deletions, tag deletions, facts upserts and deletes) and after the
services' real paths: platform sync from the sandbox, tag operations, merge and unmerge, the
facts refresh. On SQLite and on PostgreSQL, whose triggers differ (row- vs statement-level).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, cast

import pytest
from sqlalchemy import Connection, Table, delete, insert, select, text, update

from qunfa.bootstrap import Container
from qunfa.domain.segments import parse_segment
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import (
    Account,
    Contact,
    ContactFacts,
    Identity,
    IdentityTag,
    Tag,
)
from qunfa.storage.segment_sql import count_segment
from tests.conftest import make_oa

contacts = cast(Table, Contact.__table__)
identities = cast(Table, Identity.__table__)
identity_tags = cast(Table, IdentityTag.__table__)
tags = cast(Table, Tag.__table__)
facts = cast(Table, ContactFacts.__table__)
accounts = cast(Table, Account.__table__)

NOW = 1_750_000_000.0


@pytest.fixture
def container(container_on_both: Container) -> Container:
    return container_on_both


def expected_tags(conn: Connection) -> set[tuple[int, int]]:
    rows = conn.execute(
        text(
            "SELECT DISTINCT it.tag_id, i.contact_id FROM identity_tags it "
            "JOIN identities i ON i.id = it.identity_id"
        )
    )
    return {(int(a), int(b)) for a, b in rows}


def actual_tags(conn: Connection) -> set[tuple[int, int]]:
    rows = conn.execute(text("SELECT tag_id, contact_id FROM contact_account_tags"))
    return {(int(a), int(b)) for a, b in rows}


def check(conn: Connection, where: str) -> None:
    """Both copies equal their source; ``where`` names the step in the failure."""
    assert actual_tags(conn) == expected_tags(conn), where
    rows = conn.execute(
        text(
            "SELECT c.id, c.last_interaction_at, f.last_interaction_at, c.registered_at, "
            "c.created_at, c.active_at FROM contacts c "
            "LEFT JOIN contact_facts f ON f.contact_id = c.id"
        )
    ).all()
    for cid, copy, source, registered, created, active in rows:
        assert copy == source, f"{where}: contact {cid} last_interaction_at {copy} != {source}"
        joined = registered if registered is not None else created
        want = max(source, joined) if source is not None else joined
        assert active == want, f"{where}: contact {cid} active_at {active} != {want}"


def _contact(conn: Connection, rng: random.Random) -> int:
    reg = NOW - rng.randint(0, 100) * 86_400 if rng.random() < 0.7 else None
    return int(
        conn.execute(
            insert(contacts)
            .values(created_at=NOW - rng.randint(0, 100) * 86_400, updated_at=NOW,
                    registered_at=reg, attrs={})
            .returning(contacts.c.id)
        ).scalar_one()
    )  # fmt: skip


def _identity(conn: Connection, contact: int, account: int | None, n: int) -> int:
    return int(
        conn.execute(
            insert(identities)
            .values(contact_id=contact, account_id=account, kind="openid" if account else "phone",
                    value_enc=b"x", value_bi=n.to_bytes(16, "big"), subscribed=True,
                    updated_at=NOW)
            .returning(identities.c.id)
        ).scalar_one()
    )  # fmt: skip


def test_random_plain_sql_writes_keep_both_copies_exact(container: Container) -> None:
    c = container
    rng = random.Random(6)
    serial = 0
    with c.engine.begin() as conn:
        acc = [
            int(
                conn.execute(
                    insert(accounts)
                    .values(channel="wechat_oa", app_id=f"wx{k}", name="a", kind="service",
                            base_url="http://x.invalid", credentials_enc=b"x", settings={},
                            created_at=NOW)
                    .returning(accounts.c.id)
                ).scalar_one()
            )
            for k in range(2)
        ]  # fmt: skip
        [  # four account tags over the two accounts
            int(
                conn.execute(
                    insert(tags)
                    .values(account_id=acc[k % 2], name=f"t{k}", source="synced", member_count=0)
                    .returning(tags.c.id)
                ).scalar_one()
            )
            for k in range(4)
        ]
        people = [_contact(conn, rng) for _ in range(8)]
        ids: list[int] = []
        for _ in range(14):
            serial += 1
            ids.append(_identity(conn, rng.choice(people), rng.choice([*acc, None]), serial))
    check_every = 1
    for step in range(260):
        op = rng.choices(
            ["tag", "tag_many", "untag", "untag_tag", "move", "drop_identity", "new_identity",
             "drop_tag", "facts", "facts_many", "unfacts", "register"],
            weights=[8, 3, 5, 1, 6, 1, 2, 0.3, 5, 2, 3, 2],
        )[0]  # fmt: skip
        with c.engine.begin() as conn:
            live_tags = [int(t) for t in conn.execute(select(tags.c.id)).scalars()]
            if op == "tag" and live_tags and ids:
                pair = (rng.choice(live_tags), rng.choice(ids))
                held = conn.execute(
                    select(identity_tags.c.tag_id).where(
                        identity_tags.c.tag_id == pair[0], identity_tags.c.identity_id == pair[1]
                    )
                ).first()
                if held is None:
                    conn.execute(insert(identity_tags).values(tag_id=pair[0], identity_id=pair[1]))
            elif op == "tag_many" and live_tags and ids:
                # One multi-row statement, as sync writes them (the sets may share a person).
                t = rng.choice(live_tags)
                have = set(conn.execute(
                    select(identity_tags.c.identity_id).where(identity_tags.c.tag_id == t)
                ).scalars())  # fmt: skip
                new = [i for i in rng.sample(ids, min(5, len(ids))) if i not in have]
                if new:
                    conn.execute(
                        insert(identity_tags), [{"tag_id": t, "identity_id": i} for i in new]
                    )
            elif op == "untag":
                row = conn.execute(
                    select(identity_tags.c.tag_id, identity_tags.c.identity_id).order_by(
                        identity_tags.c.tag_id, identity_tags.c.identity_id
                    )
                ).all()
                if row:
                    t, i = rng.choice(row)
                    conn.execute(
                        delete(identity_tags).where(
                            identity_tags.c.tag_id == t, identity_tags.c.identity_id == i
                        )
                    )
            elif op == "untag_tag" and live_tags:  # a whole tag's members in one statement
                conn.execute(delete(identity_tags).where(
                    identity_tags.c.tag_id == rng.choice(live_tags)))  # fmt: skip
            elif op == "move" and ids:  # what merge and unmerge do
                conn.execute(
                    update(identities)
                    .where(identities.c.id.in_(rng.sample(ids, min(2, len(ids)))))
                    .values(contact_id=rng.choice(people))
                )
            elif op == "drop_identity" and len(ids) > 3:
                gone = ids.pop(rng.randrange(len(ids)))
                conn.execute(delete(identities).where(identities.c.id == gone))
            elif op == "new_identity":
                serial += 1
                ids.append(_identity(conn, rng.choice(people), rng.choice([*acc, None]), serial))
            elif op == "drop_tag" and len(live_tags) > 1:
                conn.execute(delete(tags).where(tags.c.id == rng.choice(live_tags)))
            elif op in ("facts", "facts_many"):
                chosen = rng.sample(people, 1 if op == "facts" else 4)
                for cid in chosen:
                    last = NOW - rng.randint(0, 200) * 86_400 if rng.random() < 0.9 else None
                    conn.execute(delete(facts).where(facts.c.contact_id == cid))
                    conn.execute(
                        insert(facts).values(
                            contact_id=cid, last_interaction_at=last, updated_at=NOW
                        )
                    )
                if op == "facts_many":  # one UPDATE over several rows
                    conn.execute(
                        update(facts)
                        .where(facts.c.contact_id.in_(chosen))
                        .values(last_interaction_at=facts.c.last_interaction_at + 3600)
                    )
            elif op == "unfacts":
                conn.execute(delete(facts).where(facts.c.contact_id == rng.choice(people)))
            elif op == "register":
                conn.execute(
                    update(contacts)
                    .where(contacts.c.id == rng.choice(people))
                    .values(registered_at=rng.choice([None, NOW - rng.randint(0, 300) * 86_400]))
                )
        if step % check_every == 0:
            with c.engine.connect() as conn:
                check(conn, f"step {step} ({op})")
    with c.engine.connect() as conn:
        assert expected_tags(conn), "the sequence should leave some tags to compare"
        check(conn, "end")


def _unionid_of(c: Container, conn: Connection, contact_id: int) -> Any:
    return conn.execute(
        select(identities.c.value_bi).where(
            identities.c.contact_id == contact_id, identities.c.kind == "unionid"
        )
    ).scalar_one()


def test_sync_tag_ops_merge_unmerge_and_refresh_keep_the_copies_exact(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=80, tags={"VIP": 0.3, "上海": 0.3})
    acc = c.accounts.get(oa.appid)
    with c.engine.connect() as conn:
        check(conn, "after sync")
        assert len(actual_tags(conn)) > 20  # the sync tagged people
        openids = list(
            conn.execute(
                select(identities.c.id, identities.c.contact_id)
                .where(identities.c.account_id == acc.id, identities.c.kind == "openid")
                .order_by(identities.c.id)
            )
        )
    # Tag operations in qunfa (queued for the platform) and their removal.
    tag = asyncio.run(c.tags.create("高价值", account=oa.appid))
    c.tags.apply(tag.id, identity_ids=[i for i, _ in openids[:30]])
    with c.engine.connect() as conn:
        check(conn, "after apply")
        assert {(tag.id, cid) for _, cid in openids[:30]} <= actual_tags(conn)
    c.tags.apply(tag.id, identity_ids=[i for i, _ in openids[:10]], remove=True)
    c.tags.push_tag_ops()
    asyncio.run(c.accounts.sync(oa.appid))  # the platform's view comes back
    with c.engine.connect() as conn:
        check(conn, "after remove, push and re-sync")
        assert not {(tag.id, cid) for _, cid in openids[:10]} & actual_tags(conn)

    # Merge: a second record (an openid on the account, tagged, and the same unionid as a
    # follower) is found to be that follower; then undone.
    follower = openids[40][1]
    with c.engine.begin() as conn:
        bi = _unionid_of(c, conn, follower)
        other = int(
            conn.execute(
                insert(contacts).values(created_at=NOW, updated_at=NOW, attrs={})
                .returning(contacts.c.id)
            ).scalar_one()
        )  # fmt: skip
        conn.execute(
            insert(identities).values(contact_id=other, account_id=None, kind="unionid",
                                      value_enc=b"x", value_bi=bi, subscribed=True,
                                      updated_at=NOW)
        )  # fmt: skip
        second = _identity(conn, other, acc.id, 10**9)
        conn.execute(insert(identity_tags).values(tag_id=tag.id, identity_id=second))
        check(conn, "before merge")
    merges = c.people.merge_pending()
    assert len(merges) == 1
    survivor = merges[0].survivor_id
    with c.engine.connect() as conn:
        check(conn, "after merge")
        assert (tag.id, survivor) in actual_tags(conn)
        assert not [p for p in actual_tags(conn) if p[1] == merges[0].absorbed_id]
    c.people.unmerge(merges[0].id)
    with c.engine.connect() as conn:
        check(conn, "after unmerge")
        assert (tag.id, other) in actual_tags(conn)

    # Behaviour: events and the facts refresh move the copy (and active_at) of those people.
    at = float(int(time.time()) - 60)
    c.behaviour.ingest(
        [{"kind": "interaction", "contact_id": cid, "at": at} for _, cid in openids[:5]]
    )
    c.behaviour.refresh(now=at + 60)
    with c.engine.connect() as conn:
        check(conn, "after refresh")
        copied = conn.execute(
            select(contacts.c.last_interaction_at).where(
                contacts.c.id.in_([cid for _, cid in openids[:5]])
            )
        ).scalars()
        assert set(copied) == {at}
        # The segment reads active_at: everyone synced a moment ago is active within a day;
        # the record made for the merge (created at NOW, in 2025, no facts) is not.
        live = conn.execute(
            text("SELECT count(*) FROM contacts WHERE merged_into IS NULL")
        ).scalar_one()
        assert count_segment(conn, parse_segment("last_active_within(1d)"), None) == live - 1


def test_deleting_an_account_or_a_contact_cascades_the_copy(container: Container) -> None:
    c = container
    rng = random.Random(1)
    with c.engine.begin() as conn:
        account = int(
            conn.execute(
                insert(accounts)
                .values(channel="wechat_oa", app_id="wxdel", name="a", kind="service",
                        base_url="http://x.invalid", credentials_enc=b"x", settings={},
                        created_at=NOW)
                .returning(accounts.c.id)
            ).scalar_one()
        )  # fmt: skip
        t = int(
            conn.execute(
                insert(tags).values(account_id=account, name="VIP", source="synced",
                                    member_count=0).returning(tags.c.id)
            ).scalar_one()
        )  # fmt: skip
        a, b = _contact(conn, rng), _contact(conn, rng)
        for n, person in enumerate((a, a, b), start=1):
            identity = _identity(conn, person, account, n)
            conn.execute(insert(identity_tags).values(tag_id=t, identity_id=identity))
        assert actual_tags(conn) == {(t, a), (t, b)}
        # One of a's two tagged identities goes: a keeps the tag through the other.
        first = conn.execute(
            select(identities.c.id).where(identities.c.contact_id == a).order_by(identities.c.id)
        ).scalars().first()  # fmt: skip
        conn.execute(delete(identities).where(identities.c.id == first))
        assert actual_tags(conn) == {(t, a), (t, b)}
        conn.execute(delete(contacts).where(contacts.c.id == a))
        check(conn, "contact deleted")
        assert actual_tags(conn) == {(t, b)}
        conn.execute(delete(accounts).where(accounts.c.id == account))
        check(conn, "account deleted")
        assert actual_tags(conn) == set()
