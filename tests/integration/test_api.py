"""The HTTP surface: REST campaigns and accounts, the console, and callback verification."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.crypto.wxbizmsgcrypt import WXBizMsgCrypt, signature
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.conftest import OA, make_oa


@pytest.fixture
def oa(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> OA:
    return make_oa(admin, container, sandbox.url, followers=300)


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as tc:
        yield tc


def test_create_list_and_send_a_campaign(client: TestClient, oa: OA, container: Container) -> None:
    body = {
        "name": "API 测试",
        "channel": "wechat_oa",
        "account": oa.appid,
        "audience": "tag:VIP",
        "content": {"msgtype": "text", "text": {"content": "你好"}},
    }
    created = client.post("/api/campaigns", json=body)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert created.json()["state"] == "draft" and created.json()["mode"] == "tag"
    sent = client.post(f"/api/campaigns/{cid}/send")
    assert sent.status_code == 200 and sent.json()["state"] == "sending"
    assert sent.json()["planned"] > 0
    assert container.queued  # type: ignore[attr-defined]  # its batch was handed to the queue
    listed = client.get("/api/campaigns").json()
    assert [c["id"] for c in listed] == [cid]
    again = client.post(f"/api/campaigns/{cid}/send")  # already sending: idempotent resume
    assert again.status_code == 200


def test_bad_input_gets_a_clear_error(client: TestClient, oa: OA) -> None:
    bad = {
        "name": "x",
        "channel": "wechat_oa",
        "account": oa.appid,
        "audience": "tag:不存在",
        "content": {"msgtype": "text", "text": {"content": "hi"}},
    }
    r = client.post("/api/campaigns", json=bad)
    assert r.status_code == 422 and "不存在" in r.json()["detail"]
    r = client.post("/api/campaigns", json={**bad, "audience": "all", "channel": "nope"})
    assert r.status_code == 422 and "unknown channel" in r.json()["detail"]
    empty = {**bad, "audience": "all", "content": {"msgtype": "text", "text": {"content": " "}}}
    r = client.post("/api/campaigns", json=empty)
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert client.get("/api/campaigns/999").status_code == 404


def test_accounts_never_expose_secrets(client: TestClient, oa: OA) -> None:
    r = client.get("/api/accounts")
    assert r.status_code == 200
    text = r.text
    assert oa.appid in text and oa.secret not in text and oa.aes_key not in text


def test_console_defaults_to_chinese_and_offers_english(
    client: TestClient, oa: OA, container: Container
) -> None:
    container.campaigns.create(
        name="控制台活动", channel="wechat_oa", account=oa.appid, audience="all",
        content={"msgtype": "text", "text": {"content": "x"}},
    )  # fmt: skip
    zh = client.get("/")
    assert zh.status_code == 200 and 'lang="zh-CN"' in zh.text
    assert "活动" in zh.text and "控制台活动" in zh.text and "草稿" in zh.text
    en = client.get("/?lang=en")
    assert 'lang="en"' in en.text and "Campaigns" in en.text and "draft" in en.text


def test_console_shows_the_review_state_and_the_reviewer(
    client: TestClient, oa: OA, container: Container
) -> None:
    camp = container.campaigns.create(
        name="待审活动", channel="wechat_oa", account=oa.appid, audience="all",
        content={"msgtype": "text", "text": {"content": "会员日"}}, created_by="小李",
    )  # fmt: skip
    container.review.check(camp.id, "小李")
    container.review.submit(camp.id, "小李")
    assert 'data-review="submitted"' in client.get("/").text
    assert "待审核" in client.get("/").text
    container.review.approve(camp.id, "王审核")
    page = client.get("/?lang=en").text
    assert 'data-review="approved"' in page and "approved · by 王审核" in page


def test_url_verification_echoes_only_with_a_valid_signature(client: TestClient, oa: OA) -> None:
    sig = signature(oa.token, "1700000000", "42")
    ok = client.get(
        f"/callbacks/wechat/{oa.appid}",
        params={"signature": sig, "timestamp": "1700000000", "nonce": "42", "echostr": "hello"},
    )
    assert ok.status_code == 200 and ok.text == "hello"
    bad = client.get(
        f"/callbacks/wechat/{oa.appid}",
        params={"signature": "0" * 40, "timestamp": "1700000000", "nonce": "42", "echostr": "x"},
    )
    assert bad.status_code == 403


def test_encrypted_event_is_verified_before_it_is_read(client: TestClient, oa: OA) -> None:
    crypt = WXBizMsgCrypt(oa.token, oa.aes_key, oa.appid)
    inner = (
        "<xml><MsgType>event</MsgType><Event>VIEW</Event><FromUserName>o1</FromUserName>"
        "<CreateTime>1</CreateTime></xml>"
    )
    env = crypt.encrypt_message(inner, "1700000000", "7")
    params = {
        "signature": signature(oa.token, env.timestamp, env.nonce),
        "timestamp": env.timestamp,
        "nonce": env.nonce,
        "encrypt_type": "aes",
        "msg_signature": env.msg_signature,
    }
    url = f"/callbacks/wechat/{oa.appid}"
    ok = client.post(url, params=params, content=env.xml)
    assert ok.status_code == 200 and ok.text == "success"
    tampered = client.post(url, params={**params, "msg_signature": "f" * 40}, content=env.xml)
    assert tampered.status_code == 403
    other_app = WXBizMsgCrypt(oa.token, oa.aes_key, "wx_other").encrypt_message(inner, "1", "2")
    wrong_id = client.post(
        url,
        params={**params, "timestamp": "1", "nonce": "2",
                "signature": signature(oa.token, "1", "2"),
                "msg_signature": other_app.msg_signature},
        content=other_app.xml,
    )  # fmt: skip
    assert wrong_id.status_code == 403  # encrypted for another account
    assert client.post("/callbacks/wechat/wx_unknown", params=params).status_code == 404
