"""Pushing WeCom corp tag changes for customers several members follow, against the twin.

The platform keeps a corp tag mark per (member, customer) and qunfa's sync reads a customer's
tags as the union of their members' marks: a removal made in qunfa must reach every member
whose mark carries the tag, or the next sync brings it back. Over real HTTP, counting the
twin's calls.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.channels.http import HttpClient
from qunfa.channels.wecom_customer import WecomCustomer
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Identity, IdentityTag, Tag, TagOp
from tests.integration.test_sync import calls

T = TypeVar("T")


def platform(c: Container, corpid: str, fn: Callable[[WecomCustomer], Awaitable[T]]) -> T:
    async def main() -> T:
        async with HttpClient(5.0) as http:
            wc = c.accounts.adapter(c.accounts.get(corpid), http)
            assert isinstance(wc, WecomCustomer)
            return await fn(wc)

    return asyncio.run(main())


def marks(c: Container, corpid: str, ext: str) -> dict[str, set[str]]:
    """member → corp tag ids that member marked on ``ext`` (``externalcontact/get``)."""
    return platform(c, corpid, lambda wc: wc.follow_marks_of(ext))


def identity(c: Container, ext: str) -> int:
    with c.sessions() as s:
        found = s.scalars(select(Identity.id).where(Identity.value_bi == c.keyring.blind(ext)))
        return int(found.one())


def tags_of(c: Container, identity_id: int) -> set[str]:
    with c.sessions() as s:
        rows = s.scalars(
            select(Tag.platform_ref)
            .join(IdentityTag, IdentityTag.tag_id == Tag.id)
            .where(IdentityTag.identity_id == identity_id)
        )
        return {str(r) for r in rows}


def test_removing_a_corp_tag_reaches_every_member_who_marked_it(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    corpid = f"ww{secrets.token_hex(6)}"
    admin.create_account("wecom", corpid=corpid, secret="contact-secret", staff=3, customers=30,
                         seed=5, co_follow_share=0.5, max_follow_users=2)  # fmt: skip
    c.accounts.add(channel="wecom_customer", app_id=corpid, secret="contact-secret",
                   base_url=f"{sandbox.url}/wecom", credentials={"corpid": corpid})  # fmt: skip
    asyncio.run(c.accounts.sync(corpid))

    async def follows(wc: WecomCustomer) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        async for page, _ in wc.customer_pages(await wc.follow_users()):
            for item in page:
                out.setdefault(str(item["external_userid"]), []).append(str(item["userid"]))
        return out

    members = platform(c, corpid, follows)
    shared = next(e for e, m in sorted(members.items()) if len(m) == 2)
    single = next(e for e, m in sorted(members.items()) if len(m) == 1)
    a = asyncio.run(c.tags.create("复购", account=corpid, group="运营"))
    b = asyncio.run(c.tags.create("新客", account=corpid, group="运营"))
    ref_a, ref_b = str(a.platform_ref), str(b.platform_ref)

    # Every member marks 复购 in their own client; the sync pulls the union into qunfa.
    async def mark_all(wc: WecomCustomer) -> None:
        for ext in (shared, single):
            for userid in members[ext]:
                await wc.mark_tag(userid, ext, [ref_a], [])

    platform(c, corpid, mark_all)
    assert all(ref_a in m for m in marks(c, corpid, shared).values())
    asyncio.run(c.accounts.sync(corpid))
    sid, uid = identity(c, shared), identity(c, single)
    assert ref_a in tags_of(c, sid) and ref_a in tags_of(c, uid)
    assert ref_b not in tags_of(c, sid)

    # A customer one member follows: one externalcontact/get, one mark_tag.
    got0, mark0 = calls(admin, "externalcontact/get"), calls(admin, "mark_tag")
    assert c.tags.apply(a.id, identity_ids=[uid], remove=True).removed == 1
    assert c.tags.push_tag_ops() == 1
    assert calls(admin, "externalcontact/get") - got0 == 1
    assert calls(admin, "mark_tag") - mark0 == 1
    assert set(marks(c, corpid, single)) == set(members[single])
    assert not any(ref_a in m for m in marks(c, corpid, single).values())

    # Two members carry 复购: the removal goes as both; the add of 新客 rides on one of them.
    mark0 = calls(admin, "mark_tag")
    c.tags.apply(a.id, identity_ids=[sid], remove=True)
    c.tags.apply(b.id, identity_ids=[sid])
    assert c.tags.push_tag_ops() == 2
    assert calls(admin, "mark_tag") - mark0 == 2
    now = marks(c, corpid, shared)
    assert set(now) == set(members[shared])
    assert not any(ref_a in m for m in now.values())
    assert sum(ref_b in m for m in now.values()) == 1  # 新客 marked once is enough
    assert c.tags.pending(c.accounts.get(corpid).id) == {"pending": 0, "failed": 0, "done": 3}

    # The next sync's union no longer has 复购 for either customer.
    asyncio.run(c.accounts.sync(corpid))
    assert ref_a not in tags_of(c, sid) | tags_of(c, uid) and ref_b in tags_of(c, sid)
    with c.sessions() as s:
        assert s.get(Tag, a.id).member_count == 0  # type: ignore[union-attr]


def test_a_refused_removal_stays_pending_with_the_errcode_and_retries(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    corpid = f"ww{secrets.token_hex(6)}"
    admin.create_account("wecom", corpid=corpid, secret="contact-secret", staff=2, customers=6,
                         seed=5, co_follow_share=1.0, max_follow_users=2)  # fmt: skip
    c.accounts.add(channel="wecom_customer", app_id=corpid, secret="contact-secret",
                   base_url=f"{sandbox.url}/wecom", credentials={"corpid": corpid})  # fmt: skip
    asyncio.run(c.accounts.sync(corpid))
    tag = asyncio.run(c.tags.create("复购", account=corpid, group="运营"))
    ref = str(tag.platform_ref)
    with c.sessions() as s:
        ident = s.scalars(select(Identity).where(Identity.kind == "external_userid")).first()
        assert ident is not None
        ext, iid = c.keyring.decrypt(ident.value_enc), ident.id
    both = sorted(marks(c, corpid, ext))
    assert len(both) == 2

    async def mark_both(wc: WecomCustomer) -> None:
        for userid in both:
            await wc.mark_tag(userid, ext, [ref], [])

    platform(c, corpid, mark_both)
    asyncio.run(c.accounts.sync(corpid))
    c.tags.apply(tag.id, identity_ids=[iid], remove=True)

    admin.faults(platform="wecom", paths=["mark_tag"], error_rate=1.0, errcode=-1)
    assert c.tags.push_tag_ops() == 0
    with c.sessions() as s:
        op: Any = s.scalars(select(TagOp).where(TagOp.identity_id == iid)).one()
        assert op.done_at is None and op.attempts == 1 and "-1" in str(op.last_error)
    assert all(ref in m for m in marks(c, corpid, ext).values())  # nothing changed there

    admin.clear_faults()
    with c.engine.begin() as conn:  # the backoff (5 s after one attempt) has passed
        conn.execute(update(TagOp).values(created_at=time.time() - 60))
    mark0 = calls(admin, "mark_tag")
    assert c.tags.push_tag_ops() == 1
    assert calls(admin, "mark_tag") - mark0 == 2
    assert not any(ref in m for m in marks(c, corpid, ext).values())
    asyncio.run(c.accounts.sync(corpid))
    assert ref not in tags_of(c, iid)
