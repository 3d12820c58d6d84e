"""People and identities: merging by unionid / phone / e-mail blind index, unmerging, audit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Table, insert, select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.sandbox.wechat_accounts import profile
from qunfa.services.people import PeopleError
from qunfa.storage.models import AuditLog, Contact, Identity
from tests.conftest import make_oa

identities = cast(Table, Identity.__table__)
contacts = cast(Table, Contact.__table__)


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every test here on both databases: the PostgreSQL paths (``COPY``, ``= ANY``) too."""
    return container_on_both


def csv_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def owner(c: Container, kind: str, value: str) -> set[int]:
    with c.engine.connect() as conn:
        return {
            int(cid)
            for cid in conn.execute(
                select(identities.c.contact_id).where(
                    identities.c.account_id.is_(None),
                    identities.c.kind == kind,
                    identities.c.value_bi == c.keyring.blind(value),
                )
            ).scalars()
        }


def snapshot(c: Container) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Everything a merge may touch, comparable before and after (ciphertexts included)."""
    with c.engine.connect() as conn:
        ids = [
            tuple(r)
            for r in conn.execute(
                select(identities.c.id, identities.c.contact_id).order_by(identities.c.id)
            )
        ]
        people = [tuple(r) for r in conn.execute(
            select(contacts.c.id, contacts.c.name_enc, contacts.c.city, contacts.c.gender,
                   contacts.c.birthday, contacts.c.attrs, contacts.c.merged_into)
            .order_by(contacts.c.id))]  # fmt: skip
    return ids, people


def audit_rows(c: Container, action: str) -> list[AuditLog]:
    with c.sessions() as s:
        return list(s.scalars(select(AuditLog).where(AuditLog.action == action)))


def test_one_row_linking_two_people_merges_them_and_unmerge_restores_exactly(
    container: Container, tmp_path: Path
) -> None:
    c = container
    # Two sources: a CRM export with e-mails and names, a shop's phone list with cities.
    c.contacts.import_file(csv_file(tmp_path, "crm.csv",
        "email,name,vip\nwang@example.com,王芳,gold\nli@example.com,李雷,\n"))  # fmt: skip
    c.contacts.import_file(csv_file(tmp_path, "shop.csv",
        "phone,city,gender,tags\n13800138000,上海,女,复购\n"))  # fmt: skip
    crm, shop = (
        owner(c, "email", "wang@example.com").pop(),
        owner(c, "phone", "+8613800138000").pop(),
    )
    assert crm != shop
    before = snapshot(c)
    # A third source says the phone and the e-mail are one person.
    report = c.contacts.import_file(csv_file(tmp_path, "link.csv",
        "phone,email\n138-0013-8000,wang@example.com\n"))  # fmt: skip
    assert report.merged == 1 and report.new == 0
    survivor = c.people.get(min(crm, shop))
    absorbed = c.people.get(max(crm, shop))
    assert absorbed.merged_into == survivor.id and absorbed.identities == []
    kinds = sorted({(i.kind, i.value) for i in survivor.identities})
    assert kinds == [("email", "wang@example.com"), ("phone", "+8613800138000")]
    # The survivor (the CRM record, older) took what it lacked from the shop's record.
    assert (survivor.name, survivor.city, survivor.gender) == ("王芳", "上海", "female")
    assert survivor.attrs == {"vip": "gold"} and survivor.tags == ["复购"]
    [merge] = c.people.merges()
    assert (merge.survivor_id, merge.absorbed_id) == (survivor.id, absorbed.id)
    assert merge.matched_kind == "email"  # the file put the e-mail on the shop's record
    assert set(merge.filled) == {"city", "gender", "tags"}
    [audit] = audit_rows(c, "contacts.merge")
    assert audit.detail["merge_id"] == merge.id and audit.target == f"contact:{survivor.id}"

    undone = c.people.unmerge(merge.id, actor="tester")
    assert undone.undone_at is not None
    ids_after, people_after = snapshot(c)
    # Everything of the two people is as before, plus the link file's own evidence (the
    # e-mail on the shop's record), which stays with the record the file attached it to.
    assert people_after == before[1]  # attributes, names, custom attributes, merged_into
    assert set(before[0]) < set(ids_after)  # every identity back with its owner …
    [(_, holder)] = set(ids_after) - set(before[0])
    assert holder == shop  # … plus the link file's evidence, on the record it was given to
    assert c.people.get(absorbed.id).merged_into is None
    [unaudit] = audit_rows(c, "contacts.unmerge")
    assert unaudit.actor == "tester" and unaudit.detail["merge_id"] == merge.id
    # The same evidence does not merge the pair again, and undoing twice is refused.
    assert c.people.merge_pending() == []
    with pytest.raises(PeopleError, match="already undone"):
        c.people.unmerge(merge.id)


def test_unmerge_puts_back_exactly_the_moved_identities_and_clears_filled(
    container: Container, tmp_path: Path
) -> None:
    c = container
    c.contacts.import_file(csv_file(tmp_path, "a.csv", "phone,name\n13900139000,甲\n"))
    c.contacts.import_file(csv_file(tmp_path, "b.csv",
        "email,city,birthday,note\nb@example.com,北京,1990-05-06,x\n"))  # fmt: skip
    a, b = owner(c, "phone", "+8613900139000").pop(), owner(c, "email", "b@example.com").pop()
    before = snapshot(c)
    # A platform sync (say) adds the same unionid to both: the incremental merge links them.
    now = 1.0
    with c.engine.begin() as conn:
        for cid in (a, b):
            conn.execute(insert(identities).values(
                contact_id=cid, account_id=None, kind="unionid",
                value_enc=c.keyring.encrypt("oU-1"), value_bi=c.keyring.blind("oU-1"),
                subscribed=True, updated_at=now))  # fmt: skip
    before_ids = snapshot(c)[0]
    [merge] = c.people.merge_for([b])
    assert merge.matched_kind == "unionid" and (merge.survivor_id, merge.absorbed_id) == (a, b)
    person = c.people.get(a)
    assert (person.city, person.birthday, person.attrs) == ("北京", "1990-05-06", {"note": "x"})
    assert sorted(i.kind for i in person.identities) == ["email", "phone", "unionid", "unionid"]
    c.people.unmerge(merge.id)
    assert snapshot(c) == (before_ids, before[1])


def test_merge_by_email_across_sources_and_full_pass(container: Container, tmp_path: Path) -> None:
    c = container
    c.contacts.import_file(csv_file(tmp_path, "a.csv", "email,name\nA@Example.COM,甲\n"))
    c.contacts.import_file(csv_file(tmp_path, "b.csv", "unionid,city\nou_7,杭州\n"))
    a, b = owner(c, "email", "A@example.com").pop(), owner(c, "unionid", "ou_7").pop()
    # Without merging, a file links them; the full pass (merge-run) finds it later.
    c.contacts.import_file(
        csv_file(tmp_path, "l.csv", "unionid,email\nou_7,A@EXAMPLE.com\n"), merge=False
    )
    assert c.people.get(b).merged_into is None
    [merge] = c.people.merge_pending(actor="ops")
    assert (merge.survivor_id, merge.absorbed_id, merge.matched_kind) == (a, b, "email")
    assert c.people.merge_pending() == []  # nothing left: evidence on one person is no match


def test_unknown_ids_are_named(container: Container) -> None:
    with pytest.raises(PeopleError, match="contact 999 does not exist"):
        container.people.get(999)
    with pytest.raises(PeopleError, match="merge 5 does not exist"):
        container.people.unmerge(5)


def test_a_row_known_only_by_its_openid_joins_that_person(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=3, sync=False)
    asyncio.run(c.accounts.sync(oa.appid, profiles=False))  # openids only, no unionids
    acc = c.accounts.get(oa.appid)
    with c.engine.connect() as conn:
        cid, enc = conn.execute(
            select(identities.c.contact_id, identities.c.value_enc)
            .where(identities.c.account_id == acc.id, identities.c.kind == "openid")
            .order_by(identities.c.id)
        ).first()  # type: ignore[misc]
    openid = c.keyring.decrypt(enc)
    people_before = snapshot(c)[1]
    # unionid, phone and e-mail unknown; the openid belongs to the synced follower.
    row = f"openid,unionid,phone,name\n{openid},uX1,13800138000,钱七\n"
    r = c.contacts.import_file(csv_file(tmp_path, "crm.csv", row), account=oa.appid)
    assert (r.new, r.imported, r.identities_new, r.merged) == (0, 1, 2, 0)
    assert len(snapshot(c)[1]) == len(people_before)  # nobody new
    assert owner(c, "unionid", "uX1") == {cid} and owner(c, "phone", "+8613800138000") == {cid}
    assert c.people.get(cid).name == "钱七"


def test_a_sync_adding_a_unionid_held_by_another_person_merges_them(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=4, sync=False)
    asyncio.run(c.accounts.sync(oa.appid, profiles=False))  # first sync: no unionids yet
    acc = c.accounts.get(oa.appid)
    with c.engine.connect() as conn:
        follower, enc = conn.execute(
            select(identities.c.contact_id, identities.c.value_enc)
            .where(identities.c.account_id == acc.id, identities.c.kind == "openid")
            .order_by(identities.c.id)
        ).first()  # type: ignore[misc]
    unionid = profile(c.keyring.decrypt(enc), 0.0)["unionid"]  # what user/info will say
    # The CRM knows the same person by unionid and phone: a separate record for now.
    c.contacts.import_file(
        csv_file(tmp_path, "crm.csv", f"unionid,phone,city\n{unionid},13900139000,杭州\n")
    )
    (crm,) = owner(c, "unionid", unionid)
    assert crm != follower
    report = asyncio.run(c.accounts.sync(oa.appid))  # with profiles: the unionid arrives
    assert report.merges == 1
    survivor, absorbed = min(crm, follower), max(crm, follower)
    assert owner(c, "unionid", unionid) == {survivor}
    assert owner(c, "phone", "+8613900139000") == {survivor}
    person = c.people.get(survivor)
    assert person.city == "杭州" and any(i.kind == "openid" for i in person.identities)
    assert c.people.get(absorbed).merged_into == survivor
    (m,) = c.people.merges(contact_id=survivor)
    assert (m.matched_kind, m.actor, m.absorbed_id) == ("unionid", "sync", absorbed)


def test_merge_moves_behaviour_events_and_facts_follow_and_unmerge_moves_them_back(
    container: Container, tmp_path: Path
) -> None:
    from qunfa.services.behaviour import EventIn

    c = container
    c.contacts.import_file(csv_file(tmp_path, "a.csv", "phone,name\n13900139000,甲\n"))
    c.contacts.import_file(csv_file(tmp_path, "b.csv", "email\nb@example.com\n"))
    a, b = owner(c, "phone", "+8613900139000").pop(), owner(c, "email", "b@example.com").pop()
    now = time.time()
    c.behaviour.ingest_parsed([
        EventIn("purchase", now - 3600, contact_id=b, amount=88.0),
        EventIn("purchase", now - 7200, contact_id=b, amount=12.0),
        EventIn("interaction", now - 60, contact_id=a),
    ])  # fmt: skip
    c.behaviour.refresh(now)
    assert c.behaviour.facts(b)["spend_3m"] == 100.0
    assert c.behaviour.facts(a)["spend_3m"] == 0.0
    c.contacts.import_file(
        csv_file(tmp_path, "link.csv", "phone,email\n13900139000,b@example.com\n")
    )
    (merge,) = c.people.merges(contact_id=a)
    assert (merge.survivor_id, merge.absorbed_id) == (a, b) and len(merge.filled["events"]) == 2
    # The incremental refresh (not a rebuild) sees the moved events: the survivor's facts
    # now include the absorbed record's purchases; the absorbed record has no facts.
    assert c.behaviour.refresh(now + 1).mode == "incremental"
    fa = c.behaviour.facts(a)
    assert fa is not None and (fa["spend_3m"], fa["orders_3m"]) == (100.0, 2)
    assert c.behaviour.facts(b) is None
    c.people.unmerge(merge.id)
    c.behaviour.refresh(now + 2)
    fa, fb = c.behaviour.facts(a), c.behaviour.facts(b)
    assert fa is not None and (fa["spend_3m"], fa["orders_3m"]) == (0.0, 0)
    assert fb is not None and (fb["spend_3m"], fb["orders_3m"]) == (100.0, 2)
    # … and equal to what a rebuild from scratch computes.
    incremental = {k: v for k, v in fb.items() if k != "updated_at"}
    c.behaviour.rebuild(now + 2)
    rebuilt = c.behaviour.facts(b)
    assert rebuilt is not None
    assert {k: v for k, v in rebuilt.items() if k != "updated_at"} == incremental
