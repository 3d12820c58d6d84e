"""Tracked short links end to end: rewrite at create (before the check), send through the
sandbox, follow ``/l/<code>`` through the real API app, count the click (docs/compliance.md)."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.campaigns import CampaignError
from qunfa.storage.models import Account, Event, Identity, PersonEvent
from tests.approval import approve
from tests.conftest import drain, make_oa
from tests.integration import test_sms_aliyun
from tests.integration.test_email import make_account, stored
from tests.integration.test_engine import wait_done

SHORT = re.compile(r"http://127\.0\.0\.1:8000/l/([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)?)")
MAIL = {
    "subject": "双十一 5 折",
    "text": "全场 5 折：https://shop.example/sale?from=mail 到店更优惠",
    "html": '<p>全场 5 折：<a href="https://shop.example/sale?from=mail">进店</a>'
    '<img src="https://cdn.example/banner.png"></p>',
}


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as c:
        yield c


def _text(text: str) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": text}}


def _people(c: Container, app: str, tmp_path: Path, addresses: list[str]) -> None:
    path = tmp_path / "mail.csv"
    lines = ["email,name"] + [f"{a},客户{i}" for i, a in enumerate(addresses)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert c.contacts.import_csv(app, path).imported == len(addresses)


def _bodies(admin: SandboxAdmin, to: str) -> dict[str, str]:
    [row] = stored(admin, to)
    msg = email.message_from_bytes(row["raw"].encode(), policy=email.policy.default)
    return {p.get_content_type(): p.get_content() for p in msg.iter_parts()}


def _send_mail(
    c: Container, app: str, content: dict[str, Any], options: dict[str, Any] | None = None
) -> int:
    camp = c.campaigns.create(name="邮件", channel="email", account=app, audience="all",
                              content=content, options=options)  # fmt: skip
    approve(c, camp.id)  # shop.example is off the allow-list: a finding a reviewer accepts
    c.campaigns.start(camp.id)
    assert wait_done(c, camp.id)["state"] == "done"
    return int(camp.id)


def _contact(c: Container, address: str) -> int:
    with c.sessions() as s:
        cid = s.scalar(
            select(Identity.contact_id).where(Identity.value_bi == c.keyring.blind(address))
        )
    assert cid is not None
    return int(cid)


def test_email_links_are_tracked_per_person(
    container: Container, admin: SandboxAdmin, client: TestClient, tmp_path: Path
) -> None:
    c = container
    app = make_account(admin, c)
    _people(c, app, tmp_path, ["li@mail.example", "wang@mail.example"])
    camp_id = _send_mail(c, app, MAIL)
    camp = c.campaigns.get(camp_id)
    [(code, entry)] = camp.options["links"].items()  # one URL, used twice: one code
    assert entry["original"] == "https://shop.example/sale?from=mail"
    assert camp.content["text"] == f"全场 5 折：{entry['short']} 到店更优惠"
    # The check judged the link as written, not qunfa's own host (which is a raw IP here).
    report = camp.check_report
    found = [f for fld in report["fields"] for f in fld.get("findings", [])]
    assert {f["rule_id"] for f in found} == {"link_domain:shop.example", "link_domain:cdn.example"}
    assert all(f["text"] != entry["short"] for f in found)

    li, wang = _bodies(admin, "li@mail.example"), _bodies(admin, "wang@mail.example")
    [li_text] = SHORT.findall(li["text/plain"])
    [li_html] = SHORT.findall(li["text/html"])
    [wang_text] = SHORT.findall(wang["text/plain"])
    assert li_text == li_html and li_text.startswith(code + ".") and li_text != wang_text
    assert "https://cdn.example/banner.png" in li["text/html"]  # an image loads, not tracked
    assert "shop.example" not in li["text/plain"]

    # A link checker's HEAD gets the redirect and counts nothing; a forged code is a 404.
    head = client.head(f"/l/{li_text}", follow_redirects=False)
    assert head.status_code == 302 and head.headers["location"].startswith("https://shop.example")
    assert client.head("/l/nosuchcode", follow_redirects=False).status_code == 404
    r = client.get(f"/l/{li_text}", follow_redirects=False, headers={"user-agent": "Mozilla/5.0"})
    assert r.status_code == 302 and r.headers["cache-control"] == "no-store"
    target = urlsplit(r.headers["location"])
    assert (target.netloc, target.path) == ("shop.example", "/sale")
    assert parse_qsl(target.query) == [
        ("from", "mail"), ("utm_source", "qunfa"), ("utm_medium", "email"),
        ("utm_campaign", str(camp_id)),
    ]  # fmt: skip
    with c.sessions() as s:
        clicks = s.execute(select(PersonEvent.contact_id, PersonEvent.kind, PersonEvent.channel,
                                  PersonEvent.text)).all()  # fmt: skip
    assert clicks == [(_contact(c, "li@mail.example"), "click", "email", entry["original"])]
    client.get(f"/l/{li_text}", follow_redirects=False)  # the same second: counted once
    client.get(f"/l/{wang_text}", follow_redirects=False, headers={"user-agent": "Slackbot 1.0"})
    links = c.campaigns.status(camp_id)["links"]
    assert links["attribution"] == "person" and links["bot_clicks"] == 1
    assert (links["clicks"], links["unique_clickers"]) == (1, 1)
    assert links["links"][0]["original"] == entry["original"]
    api = client.get(f"/api/campaigns/{camp_id}").json()
    assert api["links"]["clicks"] == 1
    page = client.get("/").text  # the console's campaign list shows the total
    assert re.search(rf'data-campaign="{camp_id}".*?class="num clicks">1<', page, re.S)


def test_opt_out_leaves_links_as_written(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    c = container
    app = make_account(admin, c)
    _people(c, app, tmp_path, ["zhao@mail.example"])
    camp_id = _send_mail(c, app, MAIL, options={"track_links": False})
    assert "links" not in c.campaigns.get(camp_id).options
    body = _bodies(admin, "zhao@mail.example")
    assert "https://shop.example/sale?from=mail" in body["text/plain"]
    assert "/l/" not in body["text/plain"] + body["text/html"]
    with pytest.raises(CampaignError, match="track_links must be"):
        c.campaigns.create(name="x", channel="email", account=app, audience="all",
                           content=MAIL, options={"track_links": "yes"})  # fmt: skip
    with pytest.raises(CampaignError, match="written by qunfa"):
        c.campaigns.create(name="x", channel="email", account=app, audience="all",
                           content=MAIL, options={"links": {}})  # fmt: skip


@pytest.fixture
def recorded(sandbox: EmbeddedSandbox) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A pass-through in front of the twin that keeps the mass-send bodies it forwards (the
    Official Account twin keeps counts and ids, not message bodies)."""
    seen: list[dict[str, Any]] = []
    proxy = FastAPI()

    @proxy.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        if "message/mass/" in path:
            seen.append(json.loads(body))
        kind = {"content-type": request.headers.get("content-type", "")}
        async with httpx.AsyncClient() as h:
            r = await h.request(
                request.method, f"{sandbox.url}/{path}", content=body,
                params=dict(request.query_params), headers=kind,
            )  # fmt: skip
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    server = ServerThread(proxy).start()
    yield server.url, seen
    server.stop()


def test_official_account_links_count_per_campaign_and_wechat_pages_stay(
    container: Container,
    admin: SandboxAdmin,
    recorded: tuple[str, list[dict[str, Any]]],
    client: TestClient,
) -> None:
    c = container
    via, bodies = recorded
    oa = make_oa(admin, c, via, followers=30)
    text = "新品上市 https://shop.example/new 往期回顾 https://mp.weixin.qq.com/s/abc"
    camp = c.campaigns.create(name="公众号", channel="wechat_oa", account=oa.appid,
                              audience="all", content=_text(text))  # fmt: skip
    sent = camp.content["text"]["content"]
    [(code, entry)] = camp.options["links"].items()
    assert sent == f"新品上市 {entry['short']} 往期回顾 https://mp.weixin.qq.com/s/abc"
    approve(c, camp.id)
    c.campaigns.start(camp.id)
    drain(c)  # accepted; the job-finish callback is not wired here (no callback URL)
    assert c.campaigns.status(camp.id)["deliveries"] == {"sent": 30}
    [body] = bodies  # what the platform received: the short link, the article link as is
    assert body["text"]["content"] == sent and body["filter"]["is_to_all"] is True
    # A mass send is one message for everyone: the link has no recipient part.
    r = client.get(f"/l/{code}", follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"] == (
        f"https://shop.example/new?utm_source=qunfa&utm_medium=wechat_oa&utm_campaign={camp.id}"
    )
    with c.sessions() as s:
        events = s.execute(select(Event.kind, Event.campaign_id)).all()
        assert s.scalar(select(PersonEvent.id)) is None
    assert ("click.link", camp.id) in events
    links = c.campaigns.status(camp.id)["links"]
    assert links["attribution"] == "campaign" and links["clicks"] == 1
    assert links["unique_clickers"] is None


def test_bad_codes_are_a_plain_404_never_a_redirect(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, client: TestClient
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=5)
    camp = c.campaigns.create(name="x", channel="wechat_oa", account=oa.appid, audience="all",
                              content=_text("看 https://shop.example/a"))  # fmt: skip
    [code] = camp.options["links"]
    assert client.get(f"/l/{code}", follow_redirects=False).status_code == 302
    flipped = code[:-2] + ("A" if code[-2] != "A" else "B") + code[-1]
    for bad in (flipped, code[:-1], code + "x", "nothing", "https:evil.example", "-"):
        r = client.get(f"/l/{bad}", follow_redirects=False)
        assert r.status_code == 404 and r.text == "no such link", bad
        assert "location" not in r.headers
    # A slash (even encoded) is not a code at all: the router's own 404.
    r = client.get("/l/https:%2F%2Fevil.example", follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    # A genuine code with a mangled recipient part still goes where it should, unattributed.
    assert client.get(f"/l/{code}.zzzz", follow_redirects=False).status_code == 302


def test_check_flags_a_shortener_target_at_its_original_position(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=5)
    text = "限时福利，点击 https://t.cn/A6x 领取"
    camp = c.campaigns.create(name="短链", channel="wechat_oa", account=oa.appid,
                              audience="all", content=_text(text))  # fmt: skip
    assert "t.cn" not in camp.content["text"]["content"]
    result = c.review.check(camp.id, "author")
    [fld] = result.summary["fields"]
    assert fld["text"] == text
    [finding] = [f for f in fld["findings"] if f["category"] == "link_shortener"]
    assert finding["text"] == "https://t.cn/A6x"
    assert text[finding["start"] : finding["end"]] == "https://t.cn/A6x"


def test_edit_keeps_codes_and_the_gate_sees_the_rewritten_content(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, client: TestClient
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=5)
    first = {"msgtype": "text", "text": {"content": "看 https://shop.example/a"}}
    camp = c.campaigns.create(name="改", channel="wechat_oa", account=oa.appid, audience="all",
                              content=first)  # fmt: skip
    [old] = camp.options["links"]
    approve(c, camp.id)
    digest = c.review.digest(c.campaigns.get(camp.id))
    same = c.campaigns.edit_content(camp.id, first, "author")  # the same text: no change
    assert c.review.digest(same) == digest and same.review_state == "approved"
    second = {
        "msgtype": "text",
        "text": {"content": "看 https://shop.example/a 和 https://shop.example/b"},
    }
    edited = c.campaigns.edit_content(camp.id, second, "author")
    assert edited.review_state == "none"  # an edit after approval voids it
    assert set(edited.options["links"]) > {old} and len(edited.options["links"]) == 2
    assert edited.content["text"]["content"].count("/l/") == 2
    assert client.get(f"/l/{old}", follow_redirects=False).status_code == 302


def test_sms_links_only_when_the_account_opts_in_then_per_number(
    container: Container,
    admin: SandboxAdmin,
    sandbox: EmbeddedSandbox,
    client: TestClient,
    tmp_path: Path,
) -> None:
    """An SMS template's link domain is fixed at approval: links stay as written unless the
    account says its templates carry qunfa's domain; then each number gets its own link."""
    c = container
    akid = test_sms_aliyun.make_account(admin, c, sandbox)
    phones = ["+8613900000011", "+8613900000012"]
    path = tmp_path / "phones.csv"
    path.write_text("phone,name\n" + "".join(f"{p},客户\n" for p in phones), encoding="utf-8")
    assert c.contacts.import_csv(akid, path).imported == 2
    content = {**test_sms_aliyun.CONTENT, "params": {"discount": "5 https://shop.example/s"},
               "text": "双十一全场5 https://shop.example/s折，回T退订"}  # fmt: skip
    plain = c.campaigns.create(name="短信", channel="sms_aliyun", account=akid, audience="all",
                               content=content)  # fmt: skip
    assert plain.content == content and "links" not in plain.options
    with c.sessions() as s:
        s.execute(update(Account).where(Account.app_id == akid).values(
            settings={"track_links": True}))  # fmt: skip
        s.commit()
    camp = c.campaigns.create(name="短信", channel="sms_aliyun", account=akid, audience="all",
                              content=content)  # fmt: skip
    [(code, entry)] = camp.options["links"].items()
    assert camp.content["params"]["discount"] == f"5 {entry['short']}"
    assert camp.content["text"] == f"双十一全场5 {entry['short']}折，回T退订"  # what is checked
    approve(c, camp.id)
    c.campaigns.start(camp.id)
    assert wait_done(c, camp.id)["state"] == "done"
    got = {
        m["phone"]: m["text"]
        for m in admin.get(f"/_sandbox/sms_aliyun/messages?account={akid}")["messages"]
    }
    tokens = {phone: SHORT.findall(text) for phone, text in got.items()}
    assert sorted(tokens) == phones
    assert all(len(t) == 1 and t[0].startswith(code + ".") for t in tokens.values())
    assert len({t[0] for t in tokens.values()}) == 2  # one link per number
    r = client.get(f"/l/{tokens[phones[1]][0]}", follow_redirects=False)
    assert r.status_code == 302 and "utm_medium=sms_aliyun" in r.headers["location"]
    with c.sessions() as s:
        [who] = s.scalars(select(PersonEvent.contact_id)).all()
    assert who == _contact(c, phones[1])
