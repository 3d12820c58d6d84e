"""Tags against the sandbox over HTTP: limits, the outbox (batchtagging, mark_tag), pull, rules."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.tags import TagError
from qunfa.storage.models import Contact, Identity, Tag, TagOp
from tests.conftest import make_oa
from tests.integration.test_sync import wecom


def openid_ids(c: Container, appid: str) -> list[int]:
    acc = c.accounts.get(appid)
    with c.sessions() as s:
        mine = select(Identity.id).where(Identity.account_id == acc.id, Identity.kind == "openid")
        return list(s.scalars(mine.order_by(Identity.id)))


def test_oa_tag_applied_in_qunfa_reaches_the_platform_in_chunks_of_50(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=400, tags={"VIP": 0.1})
    tag = asyncio.run(c.tags.create("高价值", account=oa.appid))
    assert tag.platform_tag_id is not None and tag.platform_tag_id >= 100
    ids = openid_ids(c, oa.appid)[:120]
    result = c.tags.apply(tag.id, identity_ids=ids)
    assert result.added == 120 and c.tags.pending()["pending"] == 120
    assert c.tags.push_tag_ops() == 120
    sizes = admin.get("/_sandbox/calls?path=batchtagging")["paths"]
    (only,) = sizes.values()
    assert only["sizes"] == [50, 50, 20] and only["max_list"] <= 50
    # The platform now lists them: a fresh sync pulls the same 120 back.
    report = asyncio.run(c.accounts.sync(oa.appid))
    assert report.tags == 2 and c.tags.get(tag.id).member_count == 120
    c.tags.apply(tag.id, identity_ids=ids[:30], remove=True)
    assert c.tags.push_tag_ops() == 30
    asyncio.run(c.accounts.sync(oa.appid))
    assert c.tags.get(tag.id).member_count == 90


def test_oa_limits_qunfa_precheck_and_platform_errcodes(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=50, tags={"VIP": 0.0},
                 sandbox_rules={"tags_per_account": 3, "tags_per_user": 1},
                 qunfa_rules={"tags_per_user": 1})  # fmt: skip
    with pytest.raises(TagError, match="tag_name_max_chars"):
        asyncio.run(c.tags.create("x" * 31, account=oa.appid))
    a = asyncio.run(c.tags.create("A", account=oa.appid))
    b = asyncio.run(c.tags.create("B", account=oa.appid))
    with pytest.raises(TagError, match="45056"):  # qunfa thinks 100 fit; the platform says 3
        asyncio.run(c.tags.create("C", account=oa.appid))
    c.accounts.add(channel="wechat_oa", app_id=oa.appid, secret=oa.secret,
                   base_url=f"{sandbox.url}/wechat",
                   settings={"rules": {"tags_per_account": 3, "tags_per_user": 1}})  # fmt: skip
    with pytest.raises(TagError, match="tags_per_account"):
        asyncio.run(c.tags.create("C", account=oa.appid))
    one = openid_ids(c, oa.appid)[:3]
    c.tags.apply(a.id, identity_ids=one)
    with pytest.raises(TagError, match="rule tags_per_user"):
        c.tags.apply(b.id, identity_ids=one)
    assert c.tags.push_tag_ops() == 3
    # Bypass qunfa's pre-check: the platform refuses with 45059 and the op is given up on.
    with c.sessions() as s:
        s.add(TagOp(tag_id=b.id, identity_id=one[0], op="add", created_at=0.0, attempts=0))
        s.commit()
    assert c.tags.push_tag_ops() == 0
    with c.sessions() as s:
        op = s.scalars(select(TagOp).where(TagOp.tag_id == b.id)).one()
    assert op.done_at is None and "45059" in str(op.last_error)
    with pytest.raises(TagError, match="45157"):  # duplicate name on the platform
        asyncio.run(c.tags.rename(b.id, "A"))


def test_platform_side_changes_come_back_on_sync(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=200, tags={"VIP": 0.2, "上海": 0.3})
    acc = c.accounts.get(oa.appid)
    assert {t.name for t in c.tags.list_tags(acc.id)} == {"VIP", "上海"}
    # Someone deletes 上海 and creates 新标签 in the platform's console.

    async def console() -> None:
        from qunfa.channels.http import HttpClient

        async with HttpClient() as http:
            a = c.accounts.adapter(acc, http)
            shanghai = next(t for t in c.tags.list_tags(acc.id) if t.name == "上海")
            await a.delete_tag(shanghai.platform_tag_id)
            await a.create_tag("新标签")

    asyncio.run(console())
    asyncio.run(c.accounts.sync(oa.appid))
    assert {t.name for t in c.tags.list_tags(acc.id)} == {"VIP", "新标签"}


def test_wecom_corp_tag_create_limit_and_mark_tag(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    corpid = wecom(admin, c, sandbox.url, customers=60)
    asyncio.run(c.accounts.sync(corpid))
    tag = asyncio.run(c.tags.create("复购", account=corpid, group="运营"))
    assert tag.platform_ref and tag.platform_ref.startswith("et")
    ids = [i for i in openid_like(c, corpid)][:7]
    c.tags.apply(tag.id, identity_ids=ids)
    assert c.tags.push_tag_ops() == 7
    assert admin.get("/_sandbox/calls?path=mark_tag")["calls"] == 7
    report = asyncio.run(c.accounts.sync(corpid))  # pulled back from the platform
    with c.sessions() as s:
        assert s.get(Tag, tag.id).member_count == 7  # type: ignore[union-attr]
    assert report.tags == 3
    c.accounts.add(channel="wecom_customer", app_id=corpid, secret="contact-secret",
                   base_url=f"{sandbox.url}/wecom", credentials={"corpid": corpid},
                   settings={"rules": {"corp_tags_max": 3}})  # fmt: skip
    with pytest.raises(TagError, match="corp_tags_max"):
        asyncio.run(c.tags.create("再一个", account=corpid, group="运营"))


def openid_like(c: Container, corpid: str) -> list[int]:
    acc = c.accounts.get(corpid)
    with c.sessions() as s:
        return list(s.scalars(select(Identity.id).where(
            Identity.account_id == acc.id, Identity.kind == "external_userid")))  # fmt: skip


def test_rule_tag_membership_follows_the_segment(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=100, tags={"VIP": 0.1})
    with c.sessions() as s:
        people = list(s.scalars(select(Contact).order_by(Contact.id)))
        for p in people[:10]:
            p.city = "上海"
        s.commit()
    tag = asyncio.run(c.tags.create("上海人", rule='city == "上海"', every_minutes=5))
    assert tag.source == "rule" and c.tags.get(tag.id).member_count == 10
    with c.sessions() as s:
        for p in s.scalars(select(Contact).order_by(Contact.id).limit(4)):
            p.city = "北京"
        extra = s.scalars(select(Contact).order_by(Contact.id.desc()).limit(3)).all()
        for p in extra:
            p.city = "上海"
        s.commit()
    assert c.tags.evaluate_due() == 0  # not due for 5 minutes
    result = c.tags.evaluate(tag.id)
    assert (result.added, result.removed) == (3, 4) and c.tags.get(tag.id).member_count == 9
    # An account rule tag also queues the change for the platform and pushes it.
    acct = asyncio.run(c.tags.create("上海粉丝", account=oa.appid, rule='city == "上海"'))
    assert c.tags.get(acct.id).member_count == 9 and c.tags.push_tag_ops() == 9
    tags = {t["name"]: t["count"] for t in asyncio.run(_platform_tags(c, oa.appid))}
    assert tags["上海粉丝"] == 9


async def _platform_tags(c: Container, appid: str) -> list[dict[str, object]]:
    from qunfa.channels.http import HttpClient

    async with HttpClient() as http:
        a = c.accounts.adapter(c.accounts.get(appid), http)
        return await a.tags()  # type: ignore[no-any-return]
