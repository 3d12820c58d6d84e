"""Platform sync against the sandbox over HTTP: resumable, unionids, WeCom customers and tags."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import func, select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Identity, SyncState, Tag
from tests.conftest import make_oa


class Crash(RuntimeError):
    pass


def crash_after(pages: int):  # type: ignore[no-untyped-def]
    seen = []

    def progress(what: str, done: int, total: int | None) -> None:
        if what in ("followers", "customers"):
            seen.append(done)
            if len(seen) == pages:
                raise Crash(f"killed after {done}")

    return progress


def calls(admin: SandboxAdmin, path: str) -> int:
    return int(admin.get(f"/_sandbox/calls?path={path}")["calls"])


def test_oa_sync_resumes_from_the_cursor_after_a_crash(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=2_500, sync=False,
                 sandbox_rules={"user_get_page_size": 500})  # fmt: skip
    acc = c.accounts.get(oa.appid)
    with pytest.raises(Crash):
        asyncio.run(c.accounts.sync(oa.appid, crash_after(2)))
    assert calls(admin, "user/get") == 2
    st = c.accounts.syncer.state(acc.id, "followers")
    assert st is not None and st.finished_at is None and st.seen == 1_000 and st.cursor
    report = asyncio.run(c.accounts.sync(oa.appid))
    # Resumed: pages 3..5 plus the final empty page, not the 2 already committed again.
    assert calls(admin, "user/get") == 2 + 4
    assert report.resumed and report.followers == 2_500 and report.new == 2_500
    assert calls(admin, "user/info/batchget") == 25  # 100 per call, each openid once
    with c.sessions() as s:
        openids = s.scalar(select(func.count()).select_from(Identity).where(
            Identity.account_id == acc.id, Identity.kind == "openid"))  # fmt: skip
        unionids = s.scalar(select(func.count()).select_from(Identity).where(
            Identity.account_id.is_(None), Identity.kind == "unionid"))  # fmt: skip
        st2 = s.get(SyncState, (acc.id, "followers"))
        assert st2 is not None and st2.finished_at is not None and st2.cursor is None
    assert openids == 2_500 and unionids == 2_500 and report.unionids == 2_500
    again = asyncio.run(c.accounts.sync(oa.appid))  # a complete run starts a new one
    assert not again.resumed and again.new == 0 and again.unsubscribed == 0


def test_unionid_is_an_accountless_identity_of_the_same_contact(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=300)
    acc = c.accounts.get(oa.appid)
    with c.sessions() as s:
        pairs = s.execute(
            select(Identity.contact_id, func.count()).where(
                (Identity.account_id == acc.id) | (Identity.account_id.is_(None))
            ).group_by(Identity.contact_id)
        ).all()  # fmt: skip
        kinds = set(s.scalars(select(Identity.kind).where(Identity.account_id.is_(None))))
    assert len(pairs) == 300 and all(n == 2 for _, n in pairs) and kinds == {"unionid"}


def test_crash_in_the_middle_still_marks_unfollowers_only_at_the_end(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=1_200,
                 sandbox_rules={"user_get_page_size": 400})  # fmt: skip
    gone = admin.get("/_sandbox/wechat/accounts")  # the account exists
    assert any(a["appid"] == oa.appid for a in gone["accounts"])
    first = []

    async def grab() -> None:
        from qunfa.channels.http import HttpClient

        async with HttpClient() as http:
            a = c.accounts.adapter(c.accounts.get(oa.appid), http)
            async for page in a.followers():
                first.extend(page[-5:])  # followers of page 1 (the crashed run commits it)
                return

    asyncio.run(grab())
    admin.post(f"/_sandbox/wechat/accounts/{oa.appid}/unfollow", {"openids": first})
    with pytest.raises(Crash):
        asyncio.run(c.accounts.sync(oa.appid, crash_after(1)))
    with c.sessions() as s:  # nobody marked yet: the run did not finish
        off = s.scalar(select(func.count()).select_from(Identity).where(
            Identity.subscribed.is_(False)))  # fmt: skip
    assert off == 0
    report = asyncio.run(c.accounts.sync(oa.appid))
    assert report.resumed and report.unsubscribed == 5 and report.followers == 1_195


def wecom(admin: SandboxAdmin, c: Container, url: str, customers: int = 450) -> str:
    corpid = f"ww{secrets.token_hex(6)}"
    admin.create_account("wecom", corpid=corpid, secret="contact-secret", staff=3,
                         customers=customers, seed=3,
                         tags={"客户等级": {"重要客户": 0.3, "普通客户": 0.5}})  # fmt: skip
    c.accounts.add(channel="wecom_customer", app_id=corpid, secret="contact-secret",
                   base_url=f"{url}/wecom", credentials={"corpid": corpid})  # fmt: skip
    return corpid


def test_wecom_customers_resume_and_bring_corp_tags(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    corpid = wecom(admin, c, sandbox.url)
    with pytest.raises(Crash):
        asyncio.run(c.accounts.sync(corpid, crash_after(2)))
    before = calls(admin, "batch/get_by_user")
    report = asyncio.run(c.accounts.sync(corpid))
    # 450 customers, 100 a page: 5 pages; the resumed run fetches only the 3 not committed.
    assert before == 2 and calls(admin, "batch/get_by_user") == 5
    assert report.resumed and report.followers == 450 and report.new == 450
    assert report.unionids == 450 and report.tags == 2 and 0 < report.tagged < 450 * 2
    with c.sessions() as s:
        names = {t.name: t.member_count for t in s.scalars(select(Tag))}
    assert set(names) == {"重要客户", "普通客户"} and 90 < names["重要客户"] < 180
