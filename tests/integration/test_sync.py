"""Platform sync against the sandbox over HTTP: resumable, unionids, WeCom customers and tags."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from qunfa.bootstrap import Container
from qunfa.channels.wechat_oa import WechatApiError
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Identity, SyncState, Tag
from tests.conftest import make_oa


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every sync test on SQLite and on PostgreSQL (the page writer's SQL differs)."""
    return container_on_both


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


# -- the Official Account tag phase: resumable mid-phase -------------------------------------------
TAG_PAGE = 100  # sandbox user/tag/get page size in these tests


async def _platform_tags(c: Container, appid: str) -> dict[str, tuple[int, set[str]]]:
    """Tag name → (platform id, member openids), read straight from the platform."""
    from qunfa.channels.http import HttpClient

    async with HttpClient() as http:
        oa = c.accounts.adapter(c.accounts.get(appid), http)
        out = {}
        for t in await oa.tags():
            members: set[str] = set()
            async for page in oa.tag_members(int(t["id"])):
                members.update(page)
            out[str(t["name"])] = (int(t["id"]), members)
        return out


async def _retag(c: Container, appid: str, tag_id: int, add: list[str], drop: list[str]) -> None:
    from qunfa.channels.http import HttpClient

    async with HttpClient() as http:
        oa = c.accounts.adapter(c.accounts.get(appid), http)
        for i in range(0, len(drop), 50):
            await oa.tag_users(tag_id, drop[i : i + 50], add=False)
        for i in range(0, len(add), 50):
            await oa.tag_users(tag_id, add[i : i + 50])


def _pages(members: int) -> int:
    """user/tag/get calls for one tag: full pages, then the call that answers count 0."""
    return -(-members // TAG_PAGE) + 1


def _local_members(c: Container, account_id: int) -> dict[str, tuple[set[bytes], int]]:
    """Tag name → (blind indexes of its member openids in qunfa, member_count)."""
    from qunfa.storage.models import IdentityTag

    with c.sessions() as s:
        tags = {t.id: t for t in s.scalars(select(Tag).where(Tag.account_id == account_id))}
        rows = s.execute(
            select(IdentityTag.tag_id, Identity.value_bi).join(
                Identity, Identity.id == IdentityTag.identity_id
            ).where(IdentityTag.tag_id.in_(list(tags)))
        ).all()  # fmt: skip
    out = {t.name: (set[bytes](), t.member_count) for t in tags.values()}
    for tag_id, bi in rows:
        out[tags[tag_id].name][0].add(bytes(bi))
    return out


def _changed_platform(c: Container, oa_appid: str) -> dict[str, tuple[int, set[str]]]:
    """After a complete sync, the platform moves 上海's membership: 60 members leave, 40
    followers who were not members join (qunfa must drop the first and add the second)."""
    before = asyncio.run(_platform_tags(c, oa_appid))
    sh_id, sh = before["上海"]
    everyone = set().union(*(m for _, m in before.values()))
    leave = sorted(sh)[:60]
    join = sorted(everyone - sh)[:40]
    asyncio.run(_retag(c, oa_appid, sh_id, join, leave))
    after = asyncio.run(_platform_tags(c, oa_appid))
    assert after["上海"][1] == (sh - set(leave)) | set(join)
    return after


def _assert_exact(c: Container, account_id: int, platform: dict[str, tuple[int, set[str]]]) -> None:
    ring = c.keyring
    local = _local_members(c, account_id)
    assert set(local) == set(platform)
    for name, (_, members) in platform.items():
        blinds, count = local[name]
        assert blinds == {ring.blind(o) for o in members}, name
        assert count == len(members), name


def test_oa_tag_phase_resumes_mid_tag_after_a_crash(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=1_500, sync=False,
                 tags={"VIP": 0.1, "上海": 0.4, "北京": 0.3},
                 sandbox_rules={"user_tag_get_page_size": TAG_PAGE})  # fmt: skip
    acc = c.accounts.get(oa.appid)
    asyncio.run(c.accounts.sync(oa.appid))  # complete: every tag has its old members in qunfa
    platform = _changed_platform(c, oa.appid)
    sh_id = platform["上海"][0]
    before_tags, before_ids = calls(admin, "user/tag/get"), calls(admin, "user/get")
    shanghai_pages = []

    def crash_in_shanghai(what: str, done: int, total: int | None) -> None:
        if what == "tag 上海":
            shanghai_pages.append(done)
            if len(shanghai_pages) == 3:
                raise Crash("killed in the third page of 上海")

    with pytest.raises(Crash):
        asyncio.run(c.accounts.sync(oa.appid, crash_in_shanghai))
    st = c.accounts.syncer.state(acc.id, "followers")
    assert st is not None and st.finished_at is None and st.detail["phase"] == "tags"
    prog = st.detail["tags"]
    assert prog["at"] == sh_id and prog["n"] == 3 * TAG_PAGE and prog["next"]
    finished = {name for name, (pid, _) in platform.items() if str(pid) in prog["done"]}
    assert "上海" not in finished
    ids_calls = calls(admin, "user/get")
    report = asyncio.run(c.accounts.sync(oa.appid))
    # Every tag page fetched exactly once over both runs: finished tags are skipped, 上海
    # continues after its third page; the follower pages are not fetched again either.
    clean = sum(_pages(len(m)) for _, m in platform.values())
    assert calls(admin, "user/tag/get") - before_tags == clean
    assert calls(admin, "user/get") == ids_calls > before_ids
    assert report.resumed and report.tags == 3
    assert report.tagged == sum(len(m) for _, m in platform.values())
    _assert_exact(c, acc.id, platform)  # the 60 leavers are gone, the 40 joiners are in
    st = c.accounts.syncer.state(acc.id, "followers")
    assert st is not None and st.finished_at is not None


def test_oa_tag_page_that_failed_before_commit_is_fetched_again(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    """The platform fails mid-tag (nothing of that page committed), also on a tag's first page
    (its old members must survive the crash), and a tag emptied on the platform ends empty."""
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=1_200, sync=False,
                 tags={"上海": 0.4, "北京": 0.3, "VIP": 0.2},
                 sandbox_rules={"user_tag_get_page_size": TAG_PAGE})  # fmt: skip
    acc = c.accounts.get(oa.appid)
    asyncio.run(c.accounts.sync(oa.appid))
    platform = _changed_platform(c, oa.appid)
    vip_id, vip = platform["VIP"]
    asyncio.run(_retag(c, oa.appid, vip_id, [], sorted(vip)))  # VIP: no members any more
    platform["VIP"] = (vip_id, set())
    old = _local_members(c, acc.id)
    order = [name for name, _ in sorted(platform.items(), key=lambda kv: kv[1][0])]
    last = order[-1]  # the tag paged last: its first page will fail
    before = calls(admin, "user/tag/get")
    faults: list[str] = []

    def fail_next_page(what: str, done: int, total: int | None) -> None:
        # After 上海's second page commits, the platform starts failing user/tag/get.
        if what == "tag 上海" and done >= 2 * TAG_PAGE and not faults:
            faults.append(what)
            admin.faults(platform="wechat", paths=["user/tag/get"], error_rate=1.0, errcode=-1)

    try:
        with pytest.raises(WechatApiError):
            asyncio.run(c.accounts.sync(oa.appid, fail_next_page))
    finally:
        admin.clear_faults()
    assert faults
    st = c.accounts.syncer.state(acc.id, "followers")
    assert st is not None and st.detail["tags"]["n"] == 2 * TAG_PAGE
    if last != "上海":  # a tag whose first page never committed keeps its old members
        assert _local_members(c, acc.id)[last][0] == old[last][0]
    asyncio.run(c.accounts.sync(oa.appid))
    clean = sum(_pages(len(m)) for _, m in platform.values())
    # One call more than a clean run: the page that failed (counted) is fetched again.
    assert calls(admin, "user/tag/get") - before == clean + 1
    _assert_exact(c, acc.id, platform)


def test_wecom_customer_of_two_members_keeps_the_tags_both_marked(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    """On the platform a customer followed by several members comes once per member, with the
    corp tags *that* member marked (the twin's ``co_follow_share``). The customer carries the
    union of every member's tags, also when the run crashes between two members' pages;
    stale tags go on the next run, but only once no member has them any more."""
    from qunfa.channels.http import HttpClient
    from qunfa.channels.wecom_customer import WecomCustomer
    from qunfa.storage.models import IdentityTag

    c = container
    corpid = f"ww{secrets.token_hex(6)}"
    made = admin.create_account("wecom", corpid=corpid, secret="contact-secret", staff=3,
                                customers=300, seed=3, co_follow_share=0.35,
                                tags={"客户等级": {"重要客户": 0.3, "普通客户": 0.5}})  # fmt: skip
    c.accounts.add(channel="wecom_customer", app_id=corpid, secret="contact-secret",
                   base_url=f"{sandbox.url}/wecom", credentials={"corpid": corpid})  # fmt: skip

    async def platform(fn: Callable[[WecomCustomer], Awaitable[Any]]) -> Any:
        async with HttpClient() as http:
            wc = c.accounts.adapter(c.accounts.get(corpid), http)
            assert isinstance(wc, WecomCustomer)
            return await fn(wc)

    async def pages(wc: WecomCustomer) -> list[list[dict[str, object]]]:
        return [page async for page, _ in wc.customer_pages(await wc.follow_users())]

    def read() -> tuple[list[list[dict[str, object]]], dict[str, dict[str, set[str]]]]:
        """The platform's pages (as the sync reads them) and customer → member → tags."""
        got: list[list[dict[str, object]]] = asyncio.run(platform(pages))
        marks: dict[str, dict[str, set[str]]] = {}
        for item in (i for page in got for i in page):
            marks.setdefault(str(item["external_userid"]), {})[str(item["userid"])] = set(
                map(str, item["tag_ids"])  # type: ignore[call-overload]
            )
        return got, marks

    def union(marks: dict[str, dict[str, set[str]]]) -> dict[str, set[str]]:
        return {ext: set().union(*m.values()) for ext, m in marks.items()}

    def tags_of(values: list[str]) -> dict[str, set[str]]:
        ring = c.keyring
        with c.sessions() as s:
            rows = s.execute(
                select(Identity.value_bi, Tag.platform_ref)
                .join(IdentityTag, IdentityTag.identity_id == Identity.id)
                .join(Tag, Tag.id == IdentityTag.tag_id)
                .where(Identity.kind == "external_userid")
            ).all()
        by_bi: dict[bytes, set[str]] = {}
        for bi, ref in rows:
            by_bi.setdefault(bytes(bi), set()).add(str(ref))
        return {v: by_bi.get(ring.blind(v), set()) for v in values}

    got, marks = read()
    follows = sum(map(len, got))
    assert made["customers"] == len(marks) == 300 and made["follows"] == follows > 380
    # Customers a later member adds a tag to, whose first member's page commits before the
    # crash (after 2 pages) and whose later member's page after it: the resume must add.
    before: dict[str, set[str]] = {}
    after: dict[str, set[str]] = {}
    for n, page in enumerate(got):
        for i in page:
            side = before if n < 2 else after
            side.setdefault(str(i["external_userid"]), set()).update(map(str, i["tag_ids"]))  # type: ignore[call-overload]
    split = [ext for ext, tags in before.items() if after.get(ext, set()) - tags]
    assert len(split) >= 5, split

    with pytest.raises(Crash):
        asyncio.run(c.accounts.sync(corpid, crash_after(2)))
    report = asyncio.run(c.accounts.sync(corpid))
    assert report.resumed and report.followers == 300 and report.new == 300
    assert report.unionids == 300
    want = union(marks)
    assert tags_of(list(want)) == want
    assert report.tagged == sum(map(len, want.values()))

    # A complete second run: the same union, no duplicate rows.
    again = asyncio.run(c.accounts.sync(corpid))
    assert not again.resumed and again.tagged == report.tagged and again.followers == 300
    assert tags_of(list(want)) == want

    # One member unmarks a tag on the platform. Where another member still has it, the
    # customer keeps it; where nobody does any more, the next run takes it off.
    def picks(shared: bool) -> list[tuple[str, str, str]]:
        """(customer, member, tag) where another member has the tag too (or nobody else
        does): one per customer, three in all."""
        out: dict[str, tuple[str, str, str]] = {}
        for ext, ms in marks.items():
            for m, ts in sorted(ms.items()):
                for t in sorted(ts):
                    if any(t in o for n, o in ms.items() if n != m) == shared:
                        out.setdefault(ext, (ext, m, t))
        return list(out.values())[:3]

    shared_tag, lone_tag = picks(True), picks(False)
    assert len(shared_tag) == len(lone_tag) == 3
    for ext, member, tag in shared_tag + lone_tag:

        async def unmark(wc: WecomCustomer, e: str = ext, m: str = member, t: str = tag) -> None:
            await wc.mark_tag(m, e, [], [t])

        asyncio.run(platform(unmark))
    _, marks_now = read()
    assert union(marks_now) != want
    asyncio.run(c.accounts.sync(corpid))
    now = tags_of(list(want))
    assert now == union(marks_now)
    assert all(tag in now[ext] for ext, _, tag in shared_tag)
    assert all(tag not in now[ext] for ext, _, tag in lone_tag)
