"""The tags CLI (``qunfa tags …``) and REST API (``/api/tags…``) end to end.

Groups, tags, membership, member counts, rule tags and deletion through both surfaces, on
SQLite and on PostgreSQL; the Official Account limits (100 tags per account, 20 per person)
refused with the rule's name and what to do, through both surfaces, before any platform call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner, Result

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.cli.main import app
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Contact, Identity, IdentityTag, Tag
from tests.conftest import fast_settings, make_oa

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Container]:
    """A container on SQLite or PostgreSQL; the CLI (a new Container per command) sees the same
    database and keyring through QUNFA_DATA_DIR / QUNFA_DATABASE_URL."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = Container(fast_settings(tmp_path / "data", database_url=url))
    c.migrate()
    monkeypatch.setenv("QUNFA_DATA_DIR", str(c.settings.data_dir))
    if url:
        monkeypatch.setenv("QUNFA_DATABASE_URL", url)
    else:
        monkeypatch.delenv("QUNFA_DATABASE_URL", raising=False)
    yield c
    c.close()


def qunfa(*args: str) -> Result:
    return runner.invoke(app, ["tags", *args])


def said(result: Result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def people(c: Container, cities: list[str]) -> list[int]:
    now = time.time()
    with c.sessions() as s:
        rows = [Contact(city=city, created_at=now, updated_at=now) for city in cities]
        s.add_all(rows)
        s.commit()
        return [int(r.id) for r in rows]


def set_city(c: Container, ids: list[int], city: str) -> None:
    with c.sessions() as s:
        for cid in ids:
            s.get(Contact, cid).city = city  # type: ignore[union-attr]
        s.commit()


def listed(*args: str) -> dict[str, dict[str, Any]]:
    out = qunfa("list", "--json", *args)
    assert out.exit_code == 0, out.output
    return {r["name"]: r for r in json.loads(out.output)}


# -- qunfa's own tags and groups, both databases ---------------------------------------------------
def test_tags_cli_groups_tags_members_rules_delete(db: Container) -> None:
    c = db
    ids = people(c, ["上海", "上海", "北京", "杭州"])
    made = qunfa("group-add", "会员")
    assert made.exit_code == 0, made.output
    group_id = int(made.output.split()[1])
    assert "会员" in qunfa("groups").output
    assert [g.name for g in c.tags.groups()] == ["会员"]

    tag = qunfa("create", "高价值", "--group", "会员")
    assert tag.exit_code == 0 and "(manual), 0 members" in tag.output, tag.output
    applied = qunfa("apply", "高价值", *map(str, ids[:3]))
    assert applied.exit_code == 0 and "3 added, 0 removed" in applied.output, applied.output
    again = qunfa("apply", "高价值", str(ids[0]), str(ids[3]))  # one new, one already there
    assert "1 added" in again.output
    off = qunfa("apply", "高价值", str(ids[1]), "--remove")
    assert "0 added, 1 removed" in off.output
    rows = listed()
    assert rows["高价值"]["members"] == 3 and rows["高价值"]["group_id"] == group_id
    assert rows["高价值"]["source"] == "manual"

    rule = qunfa("create", "上海人", "--rule", 'city == "上海"', "--every", "5")
    assert rule.exit_code == 0 and "(rule), 2 members" in rule.output, rule.output
    set_city(c, ids[:1], "北京")
    set_city(c, ids[2:], "上海")
    evaluated = qunfa("evaluate", "上海人")
    assert "2 joined, 1 left, 0 over the limit" in said(evaluated), evaluated.output
    rows = listed()
    assert rows["上海人"]["members"] == 3 and rows["上海人"]["rule"] == 'city == "上海"'
    assert "0 rule tags evaluated" in qunfa("evaluate").output  # not due for 5 minutes

    gone = qunfa("delete", "高价值")
    assert gone.exit_code == 0 and set(listed()) == {"上海人"}
    deleted = qunfa("group-delete", str(group_id))
    assert "0 tags deleted" in deleted.output and c.tags.groups() == []

    # Refusals: one line, exit code 2, what is wrong and what to do.
    dup = qunfa("create", "上海人")
    assert dup.exit_code == 2 and "a tag named '上海人' already exists here" in said(dup)
    bad = qunfa("create", "坏规则", "--rule", "city ==")
    assert bad.exit_code == 2 and "rule 'city =='" in said(bad)
    missing = qunfa("apply", "没有这个", "1")
    assert missing.exit_code == 2 and "no tag '没有这个'; see `qunfa tags list`" in said(missing)
    wrong = qunfa("apply", "上海人", "1", "--identities")
    assert wrong.exit_code == 2 and "pass contact ids" in said(wrong)
    oa = qunfa("group-add", "x", "--account", "wx_nobody")
    assert oa.exit_code == 2 and "no account 'wx_nobody'" in said(oa)


def test_tags_rest_groups_tags_members_rules_delete(db: Container) -> None:
    c = db
    ids = people(c, ["上海", "北京", "上海"])
    with TestClient(create_app(c)) as api:
        group = api.post("/api/tags/groups", json={"name": "会员"})
        assert group.status_code == 201, group.text
        gid = group.json()["id"]
        assert [g["name"] for g in api.get("/api/tags/groups").json()] == ["会员"]
        assert api.post("/api/tags/groups", json={"name": "会员"}).json() == {
            "detail": "a tag group named '会员' already exists"
        }

        made = api.post("/api/tags", json={"name": "高价值", "group": "会员"})
        assert made.status_code == 201, made.text
        tag = made.json()
        assert (tag["group_id"], tag["source"], tag["member_count"]) == (gid, "manual", 0)
        members = api.post(f"/api/tags/{tag['id']}/members", json={"contact_ids": ids})
        assert members.json() == {"added": 3, "removed": 0}
        out = api.post(f"/api/tags/{tag['id']}/members",
                       json={"contact_ids": ids[:1], "remove": True})  # fmt: skip
        assert out.json() == {"added": 0, "removed": 1}

        rule = api.post("/api/tags", json={"name": "上海人", "rule": 'city == "上海"',
                                           "every_minutes": 15})  # fmt: skip
        assert rule.status_code == 201, rule.text
        rt = rule.json()
        assert (rt["source"], rt["member_count"], rt["rule_every_minutes"]) == ("rule", 2, 15)
        set_city(c, ids[1:2], "上海")
        assert api.post(f"/api/tags/{rt['id']}/evaluate").json() == {
            "added": 1, "removed": 0, "skipped": 0
        }  # fmt: skip
        counts = {t["name"]: t["member_count"] for t in api.get("/api/tags").json()}
        assert counts == {"高价值": 2, "上海人": 3}

        assert api.delete(f"/api/tags/{tag['id']}").status_code == 204
        assert [t["name"] for t in api.get("/api/tags").json()] == ["上海人"]
        with c.sessions() as s:
            assert s.get(Tag, tag["id"]) is None

        # Refusals: HTTP 400 with the same sentence as the CLI.
        def refused(r: Any) -> str:
            assert r.status_code == 400, r.text
            return str(r.json()["detail"])

        assert refused(api.post("/api/tags", json={"name": "上海人"})) == (
            "a tag named '上海人' already exists here"
        )
        assert refused(api.post("/api/tags", json={"name": " "})) == "a tag name cannot be empty"
        bad_rule = api.post("/api/tags", json={"name": "x", "rule": "city =="})
        assert "rule 'city =='" in refused(bad_rule)
        assert refused(api.post(f"/api/tags/{tag['id']}/evaluate")) == (
            f"no tag {tag['id']!r}; see `qunfa tags list`"
        )
        plain = api.post("/api/tags", json={"name": "普通"}).json()
        assert refused(api.post(f"/api/tags/{plain['id']}/evaluate")) == (
            "tag '普通' has no rule; set one with `qunfa tags create --rule`"
        )
        assert refused(api.post("/api/tags", json={"name": "x", "group": "没有"})) == (
            "no tag group '没有' here; create it with `qunfa tags group-add`"
        )


# -- Official Account limits through both surfaces -------------------------------------------------
def _fill_tags(c: Container, appid: str, n: int) -> list[int]:
    """``n`` tags of the account as qunfa knows them (as a sync would have left them)."""
    acc = c.accounts.get(appid)
    with c.sessions() as s:
        tags = [Tag(account_id=acc.id, name=f"已有{i}", source="synced",
                    platform_tag_id=1000 + i) for i in range(n)]  # fmt: skip
        s.add_all(tags)
        s.commit()
        return [int(t.id) for t in tags]


def openid_ids(c: Container, appid: str) -> list[int]:
    acc = c.accounts.get(appid)
    with c.sessions() as s:
        q = select(Identity.id).where(Identity.account_id == acc.id, Identity.kind == "openid")
        return list(s.scalars(q.order_by(Identity.id)))


def test_oa_limits_are_refused_clearly_by_cli_and_rest(
    container: Container,
    admin: SandboxAdmin,
    sandbox: EmbeddedSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = container
    monkeypatch.setenv("QUNFA_DATA_DIR", str(c.settings.data_dir))
    monkeypatch.delenv("QUNFA_DATABASE_URL", raising=False)
    oa = make_oa(admin, c, sandbox.url, followers=5, tags={})
    made = qunfa("create", "复购", "--account", oa.appid)
    assert made.exit_code == 0, made.output
    tag = c.tags.get("复购", oa.appid)
    assert tag.platform_tag_id is not None  # created on the platform (the twin) first
    groups = qunfa("group-add", "会员", "--account", oa.appid)
    assert groups.exit_code == 2
    assert "Official Account tags have no groups; group qunfa tags instead" in said(groups)
    long = qunfa("create", "长" * 31, "--account", oa.appid)
    assert long.exit_code == 2 and "allows 30 (rule tag_name_max_chars)" in said(long)

    # 20 tags per person (the real rule): someone carrying 20 cannot get a 21st.
    ident = openid_ids(c, oa.appid)[0]
    twenty = _fill_tags(c, oa.appid, 20)
    with c.sessions() as s:
        s.add_all(IdentityTag(tag_id=t, identity_id=ident) for t in twenty)
        s.commit()
    per_user = ("1 of these people already carry 20 tags on this account, the platform's "
                "maximum (rule tags_per_user): remove a tag from them first")  # fmt: skip
    over = qunfa("apply", "复购", str(ident), "--identities", "--account", oa.appid)
    assert over.exit_code == 2 and per_user in said(over), over.output
    with TestClient(create_app(c)) as api:
        r = api.post(f"/api/tags/{tag.id}/members", json={"identity_ids": [ident]})
        assert (r.status_code, r.json()["detail"]) == (400, per_user)
        others = openid_ids(c, oa.appid)[1:]
        ok = api.post(f"/api/tags/{tag.id}/members", json={"identity_ids": others})
        assert ok.json() == {"added": 4, "removed": 0}
    assert c.tags.get(tag.id).member_count == 4
    pushed = qunfa("push")
    assert pushed.exit_code == 0 and "4 tag changes accepted" in said(pushed), pushed.output
    platform = {t["name"]: t["count"] for t in asyncio.run(_platform_tags(c, oa.appid))}
    assert platform["复购"] == 4

    # 100 tags per account (the real rule): fill up to 100, the 101st is refused here.
    acc = c.accounts.get(oa.appid)
    have = len(c.tags.list_tags(oa.appid))
    assert 20 < have < 100
    with c.sessions() as s:
        s.add_all(Tag(account_id=acc.id, name=f"更多{i}", source="synced",
                      platform_tag_id=2000 + i) for i in range(100 - have))  # fmt: skip
        s.commit()
    per_account = (f"{acc.name} already has 100 tags; wechat_oa allows 100 (rule "
                   "tags_per_account): delete unused tags first (`qunfa tags delete`)")  # fmt: skip
    calls = admin.get("/_sandbox/calls?path=tags/create")["calls"]
    full = qunfa("create", "再一个", "--account", oa.appid)
    assert full.exit_code == 2 and per_account in said(full), full.output
    with TestClient(create_app(c)) as api:
        r = api.post("/api/tags", json={"name": "再一个", "account": oa.appid})
        assert (r.status_code, r.json()["detail"]) == (400, per_account)
    assert admin.get("/_sandbox/calls?path=tags/create")["calls"] == calls  # never asked


async def _platform_tags(c: Container, appid: str) -> list[dict[str, Any]]:
    from qunfa.channels.http import HttpClient

    async with HttpClient() as http:
        a = c.accounts.adapter(c.accounts.get(appid), http)
        return await a.tags()  # type: ignore[no-any-return]
