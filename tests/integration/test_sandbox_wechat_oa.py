"""The sandbox's Official Account twin over real HTTP: one test per platform rule.

Each test starts its own :class:`EmbeddedSandbox` on a fresh SQLite file and creates small
accounts through ``/_sandbox/wechat/accounts`` with rule overrides where a limit must bite fast.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from qunfa.crypto.wxbizmsgcrypt import WXBizMsgCrypt, parse_xml, signature
from qunfa.sandbox.server import EmbeddedSandbox

AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CGI = "/wechat/cgi-bin"


class Client:
    """Synchronous JSON client for one sandbox."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def upload_image(self, token: str) -> str:
        """A permanent image material (mass sends take only media ids the twin issued)."""
        from qunfa.content.mediafile import png_header

        boundary = "qunfa-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="media"; filename="a.png"'
                "\r\nContent-Type: image/png\r\n\r\n"
            ).encode()
            + png_header(10, 10)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            f"{self.url}/wechat/cgi-bin/material/add_material?type=image&access_token={token}",
            data=body, method="POST",
        )  # fmt: skip
        req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["media_id"])

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, {} if body is None else body)

    def account(self, appid: str, **spec: Any) -> dict[str, Any]:
        spec = {"secret": "s3cret", "followers": 20, "type": "service", **spec, "appid": appid}
        result: dict[str, Any] = self.post("/_sandbox/wechat/accounts", spec)
        return result

    def token(self, appid: str, secret: str = "s3cret") -> str:
        q = f"grant_type=client_credential&appid={appid}&secret={secret}"
        return str(self.get(f"{CGI}/token?{q}")["access_token"])

    def api(self, token: str, path: str, body: Any = None, query: str = "") -> Any:
        url = f"{CGI}/{path}?access_token={token}{query}"
        return self.get(url) if body is None else self.post(url, body)

    def followers(self, token: str) -> list[str]:
        return list(self.api(token, "user/get")["data"]["openid"])

    def ledger(self, channel: str = "wechat_oa", account: str = "") -> dict[str, Any]:
        q = f"?channel={channel}" + (f"&account={account}" if account else "")
        result: dict[str, Any] = self.get(f"/_sandbox/ledger{q}")
        return result

    def advance(self, seconds: float) -> None:
        self.post("/_sandbox/clock", {"advance": seconds})


def text(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": content}, **extra}


@pytest.fixture
def sandbox_oa(tmp_path: Path) -> Iterator[Client]:
    with EmbeddedSandbox(tmp_path / "sandbox.db") as sb:
        yield Client(sb.url)


# -- tokens ---------------------------------------------------------------------------------------
def test_token_overlap_and_errors(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxa")
    first = c.get(f"{CGI}/token?grant_type=client_credential&appid=wxa&secret=s3cret")
    assert first["expires_in"] == 7200 and len(first["access_token"]) >= 100
    second = c.token("wxa")
    assert second != first["access_token"]
    assert c.api(first["access_token"], "tags/get")["errcode"] == 0  # 5 min overlap
    c.advance(301)
    assert c.api(first["access_token"], "tags/get")["errcode"] == 40001
    assert c.api(second, "tags/get")["errcode"] == 0
    base = f"{CGI}/token?grant_type=client_credential"
    assert c.get(f"{base}&appid=nope&secret=s3cret")["errcode"] == 40013
    assert c.get(f"{base}&appid=wxa&secret=bad")["errcode"] == 40125
    assert c.get(f"{CGI}/token?grant_type=x&appid=wxa&secret=s3cret")["errcode"] == 40002
    assert c.api("", "tags/get")["errcode"] == 41001
    assert c.api("garbage", "tags/get")["errmsg"].startswith("invalid credential")
    c.advance(7200)
    assert c.api(second, "tags/get")["errcode"] == 42001


def test_stable_token_and_revoke(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxs")
    body = {"grant_type": "client_credential", "appid": "wxs", "secret": "s3cret"}
    a = c.post(f"{CGI}/stable_token", body)
    b = c.post(f"{CGI}/stable_token", body)
    assert a["access_token"] == b["access_token"] and a["expires_in"] == 7200
    c.advance(7200 - 299)  # inside the last 5 minutes: a new token, the old one still valid
    d = c.post(f"{CGI}/stable_token", body)
    assert d["access_token"] != a["access_token"] and d["expires_in"] == 7200
    assert c.api(a["access_token"], "tags/get")["errcode"] == 0
    e = c.post(f"{CGI}/stable_token", {**body, "force_refresh": True})
    assert c.api(d["access_token"], "tags/get")["errcode"] == 40001
    assert c.api(e["access_token"], "tags/get")["errcode"] == 0
    c.post("/_sandbox/faults", {"revoke_tokens": True})
    assert c.api(e["access_token"], "tags/get")["errcode"] == 40001
    assert c.api(c.token("wxs"), "tags/get")["errcode"] == 0


# -- tags and users -------------------------------------------------------------------------------
def test_tag_limits_and_errcodes(sandbox_oa: Client) -> None:
    c = sandbox_oa
    rules = {"tags_per_account": 6, "tags_per_user": 6, "tag_delete_max_fans": 3}
    made = c.account("wxt", followers=60, rules=rules)
    assert [t["id"] for t in made["tags"]] == [100, 101, 102, 103, 104]
    t = c.token("wxt")
    new = c.api(t, "tags/create", {"tag": {"name": "广东"}})
    assert new["tag"] == {"id": 105, "name": "广东"}
    assert c.api(t, "tags/create", {"tag": {"name": "再来"}})["errcode"] == 45056
    assert c.api(t, "tags/update", {"tag": {"id": 105, "name": "VIP"}})["errcode"] == 45157
    assert c.api(t, "tags/update", {"tag": {"id": 105, "name": "长" * 31}})["errcode"] == 45158
    assert c.api(t, "tags/update", {"tag": {"id": 2, "name": "x"}})["errcode"] == 45058
    assert c.api(t, "tags/delete", {"tag": {"id": 999}})["errcode"] == 45159
    assert c.api(t, "tags/delete", {"tag": {"id": 103}})["errcode"] == 45057  # >3 fans
    users = c.followers(t)
    batch = {"openid_list": users[:51], "tagid": 105}
    assert c.api(t, "tags/members/batchtagging", batch)["errcode"] == 40032
    bad = {"openid_list": ["o_not_a_follower"], "tagid": 105}
    assert c.api(t, "tags/members/batchtagging", bad)["errcode"] == 40003
    assert c.api(t, "tags/members/batchtagging", {"openid_list": users[:3], "tagid": 105}) == {
        "errcode": 0,
        "errmsg": "ok",
    }
    page = c.api(t, "user/tag/get", {"tagid": 105, "next_openid": ""})
    assert page["count"] == 3 and sorted(page["data"]["openid"]) == sorted(users[:3])
    assert c.api(t, "user/tag/get", {"tagid": 105, "next_openid": page["next_openid"]}) == {
        "errcode": 0, "errmsg": "ok", "count": 0, "next_openid": "",
    }  # fmt: skip
    assert 105 in c.api(t, "tags/getidlist", {"openid": users[0]})["tagid_list"]
    c.api(t, "tags/members/batchuntagging", {"openid_list": users[:1], "tagid": 105})
    assert 105 not in c.api(t, "tags/getidlist", {"openid": users[0]})["tagid_list"]
    assert c.api(t, "tags/delete", {"tag": {"id": 105}})["errcode"] == 0
    # 45059: a user already holding tags_per_user tags cannot get another
    c.account("wxt2", followers=5, tags={"a": 1.0}, rules={"tags_per_user": 1})
    t2 = c.token("wxt2")
    other = c.api(t2, "tags/create", {"tag": {"name": "b"}})["tag"]["id"]
    u2 = c.followers(t2)[:1]
    assert (
        c.api(t2, "tags/members/batchtagging", {"openid_list": u2, "tagid": other})["errcode"]
        == 45059
    )


def test_user_get_paging_and_batchget(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxu", followers=25, rules={"user_get_page_size": 10})
    t = c.token("wxu")
    seen: list[str] = []
    nxt, counts = "", []
    while True:
        page = c.api(t, "user/get", query=f"&next_openid={nxt}")
        assert page["total"] == 25
        counts.append(page["count"])
        if not page["count"]:
            assert "data" not in page
            break
        seen += page["data"]["openid"]
        nxt = page["next_openid"]
    assert counts == [10, 10, 5, 0] and len(set(seen)) == 25
    assert all(len(o) == 28 and o.startswith("o") for o in seen)
    too_many = {"user_list": [{"openid": o} for o in seen] * 5}
    assert c.api(t, "user/info/batchget", too_many)["errcode"] == 40032
    info = c.api(t, "user/info/batchget", {"user_list": [{"openid": seen[0], "lang": "zh_CN"}]})
    item = info["user_info_list"][0]
    assert item["subscribe"] == 1 and item["openid"] == seen[0]
    for key in ("unionid", "language", "subscribe_time", "remark", "tagid_list", "subscribe_scene"):
        assert key in item
    assert time.time() - 2 * 366 * 86400 < item["subscribe_time"] <= time.time() + 5
    c.post("/_sandbox/wechat/accounts/wxu/unfollow", {"openids": [seen[0]]})
    gone = c.api(t, "user/info/batchget", {"user_list": [{"openid": seen[0]}]})
    assert gone["user_info_list"][0]["subscribe"] == 0
    assert c.api(t, "user/get")["total"] == 24


# -- mass send ------------------------------------------------------------------------------------
def test_mass_send_list_sizes_and_unknown_openids(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxm", followers=10, rules={"mass_max_per_call": 12})
    t = c.token("wxm")
    users = c.followers(t)
    assert c.api(t, "message/mass/send", text(touser=users[:1]))["errcode"] == 40130
    assert c.api(t, "message/mass/send", text(touser=users + ["x"] * 3))["errcode"] == 40032
    assert c.api(t, "message/mass/send", text(touser=["oX1", "oX2"]))["errcode"] == 40003
    ok = c.api(t, "message/mass/send", text(touser=[*users[:4], "oUnknown"]))
    assert ok["errcode"] == 0 and ok["errmsg"] == "send job submission success"
    assert "msg_data_id" not in ok
    news = c.api(t, "message/mass/send", {"touser": users[:2], "msgtype": "mpnews",
                                          "mpnews": {"media_id": c.upload_image(t)}})  # fmt: skip
    assert isinstance(news["msg_data_id"], int)
    assert c.ledger(account="wxm") == {
        "channel": "wechat_oa", "account": "wxm", "messages": 6, "recipients": 4,
        "max_per_recipient": 2, "message_ids": 2,
    }  # fmt: skip
    assert c.api(t, "message/mass/send", {"touser": users, "msgtype": "bogus"})["errcode"] == 40008


def test_mass_send_counts_people_not_list_entries(sandbox_oa: Client) -> None:
    """The minimum of two is two distinct openids (the twin's strict reading); the maximum is
    the list as sent; a repeated openid receives the message once."""
    c = sandbox_oa
    c.account("wxdup", followers=5, rules={"mass_max_per_call": 4})
    t = c.token("wxdup")
    a, b, *_ = c.followers(t)
    assert c.api(t, "message/mass/send", text(touser=[a, a]))["errcode"] == 40130
    assert c.api(t, "message/mass/send", text(touser=[a, a, a, b, b]))["errcode"] == 40032
    assert c.ledger(account="wxdup")["messages"] == 0  # refusals deliver nothing
    ok = c.api(t, "message/mass/send", text(touser=[a, b, a, b]))
    assert ok["errcode"] == 0
    assert c.ledger(account="wxdup") == {
        "channel": "wechat_oa", "account": "wxdup", "messages": 2, "recipients": 2,
        "max_per_recipient": 1, "message_ids": 1,
    }  # fmt: skip


def test_subscription_daily_quota_and_45066(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxd", type="subscription", followers=5)
    t = c.token("wxd")
    assert c.api(t, "message/mass/sendall", text(filter={"is_to_all": True}))["errcode"] == 0
    second = text("again", filter={"is_to_all": True}, clientmsgid="B")
    assert c.api(t, "message/mass/sendall", second)["errcode"] == 45028
    assert c.api(t, "message/mass/sendall", second)["errcode"] == 45066  # refused < 60 s ago
    c.advance(61)
    assert c.api(t, "message/mass/sendall", second)["errcode"] == 45028
    c.advance(86400)
    t = c.token("wxd")
    assert c.api(t, "message/mass/sendall", second)["errcode"] == 0
    assert c.ledger(account="wxd")["max_per_recipient"] == 2


def test_service_four_per_month_filtered_silently(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxv", followers=6, job_delay_seconds=0)
    t = c.token("wxv")
    users = c.followers(t)
    for i in range(4):
        sent = c.api(t, "message/mass/sendall", text(f"m{i}", filter={"is_to_all": True}))
        assert sent["errcode"] == 0
    fifth_all = c.api(t, "message/mass/sendall", text("m5", filter={"is_to_all": True}))
    assert fifth_all["errcode"] == 45028
    listed = c.api(t, "message/mass/send", text("m6", touser=[*users[:3], "oGhost"]))
    assert listed["errcode"] == 0  # not an error: everybody is filtered
    jobs = {cb["msg_id"]: cb for cb in wait_callbacks(c, "wxv", 5, status="no_url")}
    assert str(listed["msg_id"]) in jobs
    assert c.ledger(account="wxv")["max_per_recipient"] == 4
    assert c.ledger(account="wxv")["messages"] == 24
    c.advance(32 * 86400)  # next calendar month: quota back
    t = c.token("wxv")
    again = c.api(t, "message/mass/send", text("m7", touser=users[:3]))
    assert again["errcode"] == 0
    assert c.ledger(account="wxv")["messages"] == 27


def test_per_minute_limit_45009(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxr", followers=5, rules={"mass_calls_per_minute": 3})
    t = c.token("wxr")
    users = c.followers(t)
    for i in range(2):
        assert c.api(t, "message/mass/send", text(f"n{i}", touser=users))["errcode"] == 0
    assert c.api(t, "message/mass/preview", text(touser=users[0]))["errcode"] == 0
    refused = c.api(t, "message/mass/send", text("n3", touser=users))
    assert refused["errcode"] == 45009 and refused["errmsg"].startswith("api freq out of limit")
    c.advance(61)
    assert c.api(t, "message/mass/send", text("n3", touser=users))["errcode"] == 0


def test_clientmsgid_dedupe_45065_and_45067(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxc", followers=5)
    t = c.token("wxc")
    users = c.followers(t)
    first = c.api(t, "message/mass/send", text(touser=users, clientmsgid="camp-1"))
    before = c.ledger(account="wxc")
    dup = c.api(t, "message/mass/send", text("other", touser=users, clientmsgid="camp-1"))
    assert dup["errcode"] == 45065 and dup["msg_id"] == first["msg_id"]
    assert c.ledger(account="wxc") == before
    plain = c.api(t, "message/mass/send", text("same", touser=users))
    again = c.api(t, "message/mass/send", text("same", touser=list(reversed(users))))
    assert again["errcode"] == 45065 and again["msg_id"] == plain["msg_id"]
    long_id = c.api(t, "message/mass/send", text(touser=users, clientmsgid="x" * 65))
    assert long_id["errcode"] == 45067
    c.advance(86401)
    t = c.token("wxc")
    assert c.api(t, "message/mass/send", text(touser=users, clientmsgid="camp-1"))["errcode"] == 0


def test_mass_get_status_and_delete(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxg", followers=4, job_delay_seconds=0.4)
    t = c.token("wxg")
    sent = c.api(t, "message/mass/sendall", text(filter={"is_to_all": False, "tag_id": 103}))
    msg_id = sent["msg_id"]
    assert c.api(t, "message/mass/get", {"msg_id": msg_id})["msg_status"] == "SENDING"
    time.sleep(0.6)
    assert c.api(t, "message/mass/get", {"msg_id": msg_id}) == {
        "errcode": 0, "errmsg": "ok", "msg_id": msg_id, "msg_status": "SEND_SUCCESS",
    }  # fmt: skip
    assert c.api(t, "message/mass/delete", {"msg_id": msg_id})["errcode"] == 0
    assert c.api(t, "message/mass/get", {"msg_id": msg_id})["msg_status"] == "DELETE"
    assert c.api(t, "message/mass/get", {"msg_id": 1})["errcode"] == 40059
    assert c.api(t, "message/mass/delete", {"msg_id": 1})["errcode"] == 40059
    bad_tag = text(filter={"is_to_all": False, "tag_id": 999})
    assert c.api(t, "message/mass/sendall", bad_tag)["errcode"] == 45159


# -- template messages ----------------------------------------------------------------------------
def tpl(openid: str, **extra: Any) -> dict[str, Any]:
    data = {"thing1": {"value": "你的包裹"}, "character_string2": {"value": "SF123"},
            "time3": {"value": "2026-11-23 10:00"}}  # fmt: skip
    return {"touser": openid, "template_id": "TPL_ORDER_SHIPPED", "data": data, **extra}


def test_template_send_errcodes_and_dedupe(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxp", followers=6, template_refuse_rate=0.0, rules={"template_daily_quota": 3})
    t = c.token("wxp")
    users = c.followers(t)
    ok = c.api(t, "message/template/send", tpl(users[0], client_msg_id="k1"))
    assert ok["errcode"] == 0 and ok["errmsg"] == "ok" and isinstance(ok["msgid"], int)
    dup = c.api(t, "message/template/send", tpl(users[0], client_msg_id="k1"))
    assert dup == ok
    assert c.ledger("wechat_template", "wxp")["messages"] == 1
    assert c.api(t, "message/template/send", tpl("oNobody"))["errcode"] == 40003
    assert c.api(t, "message/template/send", tpl(users[1], template_id="T?"))["errcode"] == 40037
    missing = tpl(users[1])
    del missing["data"]["time3"]
    bad = c.api(t, "message/template/send", missing)
    assert bad["errcode"] == 47003 and "data.time3.value" in bad["errmsg"]
    long_thing = tpl(users[1])
    long_thing["data"]["thing1"]["value"] = "字" * 21
    assert c.api(t, "message/template/send", long_thing)["errcode"] == 47003
    c.post("/_sandbox/wechat/accounts/wxp/unfollow", {"openids": [users[5]]})
    assert c.api(t, "message/template/send", tpl(users[5]))["errcode"] == 43004
    assert c.api(t, "message/template/send", tpl(users[1]))["errcode"] == 0
    assert c.api(t, "message/template/send", tpl(users[2]))["errcode"] == 0
    quota = c.api(t, "message/template/send", tpl(users[3]))
    assert quota["errcode"] == 45009 and "daily quota" in quota["errmsg"]
    c.account("wxq", followers=3, template_refuse_rate=1.0)
    tq = c.token("wxq")
    refused = c.api(tq, "message/template/send", tpl(c.followers(tq)[0]))
    assert refused["errcode"] == 43101
    c.account("wxsub", followers=3, type="subscription")
    ts = c.token("wxsub")
    assert c.api(ts, "message/template/send", tpl(c.followers(ts)[0]))["errcode"] == 48001


# -- callbacks ------------------------------------------------------------------------------------
def wait_callbacks(c: Client, account: str, n: int, status: str = "delivered") -> list[Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = [cb for cb in c.get(f"/_sandbox/callbacks?account={account}")["callbacks"]
               if cb["status"] == status]  # fmt: skip
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} {status} callbacks for {account}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_encrypted_callbacks_and_retries(sandbox_oa: Client) -> None:
    c = sandbox_oa
    received: list[tuple[dict[str, str], str]] = []
    fail_first = {"n": 2}

    async def receive(request: web.Request) -> web.Response:
        if request.query.get("fail") and fail_first["n"] > 0:
            fail_first["n"] -= 1
            return web.Response(status=500)
        received.append((dict(request.query), await request.text()))
        return web.Response(text="success")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/cb", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.to_thread(run_sends, f"http://127.0.0.1:{port}/cb")
            deadline = time.monotonic() + 10
            while len(received) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()

    def run_sends(url: str) -> None:
        spec = {"token": "tok", "encoding_aes_key": AES_KEY, "job_delay_seconds": 0.1,
                "template_refuse_rate": 0.0, "original_id": "gh_test"}  # fmt: skip
        c.account("wxe", followers=5, callback_url=url, **spec)
        t = c.token("wxe")
        users = c.followers(t)
        c.post("/_sandbox/wechat/accounts/wxe/unfollow", {"openids": [users[4]]})
        c.api(t, "message/mass/send", text(touser=[*users, "oGhost"]))
        c.api(t, "message/template/send", tpl(users[0]))
        c.account("wxf", followers=3, callback_url=url + "?fail=1", **spec)
        tf = c.token("wxf")
        c.api(tf, "message/mass/sendall", text(filter={"is_to_all": True}))

    asyncio.run(scenario())
    events: dict[str, dict[str, str]] = {}
    for query, body in received:
        outer = parse_xml(body)
        assert outer["ToUserName"] == "gh_test" and set(outer) == {"ToUserName", "Encrypt"}
        assert query["encrypt_type"] == "aes"
        assert query["signature"] == signature("tok", query["timestamp"], query["nonce"])
        appid = "wxf" if "fail" in query else "wxe"
        inner = parse_xml(
            WXBizMsgCrypt("tok", AES_KEY, appid).decrypt_message(
                body, query["msg_signature"], query["timestamp"], query["nonce"]
            )
        )
        assert inner["FromUserName"] == query["openid"] and inner["MsgType"] == "event"
        events[appid + inner["Event"]] = inner
    mass = events["wxeMASSSENDJOBFINISH"]
    assert mass["Status"] == "send success" and mass["ToUserName"] == "gh_test"
    assert (mass["TotalCount"], mass["FilterCount"], mass["SentCount"], mass["ErrorCount"]) == (
        "6", "6", "4", "2",
    )  # fmt: skip
    assert events["wxeTEMPLATESENDJOBFINISH"]["Status"] == "success"
    retried = wait_callbacks(c, "wxf", 1)[0]
    assert retried["attempts"] == 3
    assert [d["http_status"] for d in retried["deliveries"]] == [500, 500, 200]


# -- faults ---------------------------------------------------------------------------------------
def test_injected_errors(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxi", followers=3)
    t = c.token("wxi")
    c.post("/_sandbox/faults", {"error_rate": 1.0, "paths": ["tags/get"]})
    assert c.api(t, "tags/get") == {"errcode": -1, "errmsg": "system error"}
    assert c.api(t, "user/get")["errcode"] == 0  # path filter
    assert c.get("/_sandbox/health") == {"ok": True}  # never on /_sandbox
    c.post("/_sandbox/faults", {"error_rate": 1.0, "http_status": 503})
    with pytest.raises(urllib.error.HTTPError) as err:
        c.api(t, "tags/get")
    assert err.value.code == 503
    assert c.get("/_sandbox/faults")["faults"]["http_status"] == 503

    def draws() -> list[int]:
        c.post("/_sandbox/faults", {"error_rate": 0.5, "seed": 7})
        return [c.api(t, "tags/get")["errcode"] for _ in range(12)]

    first = draws()
    assert first == draws() and -1 in first and 0 in first
    c.call("DELETE", "/_sandbox/faults")
    assert c.api(t, "tags/get")["errcode"] == 0


def test_accept_then_timeout_records_the_send(sandbox_oa: Client) -> None:
    c = sandbox_oa
    c.account("wxh", followers=4)
    t = c.token("wxh")
    users = c.followers(t)
    c.post("/_sandbox/faults", {"accept_then_timeout_rate": 1.0, "hang_seconds": 3})
    body = text(touser=users, clientmsgid="hang-1")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        c.call("POST", f"{CGI}/message/mass/send?access_token={t}", body, timeout=0.5)
    c.call("DELETE", "/_sandbox/faults")
    assert c.ledger(account="wxh")["messages"] == 4
    assert c.api(t, "message/mass/send", body)["errcode"] == 45065
    c.post("/_sandbox/faults", {"error_rate": 1.0})
    assert c.api(t, "message/mass/send", text(touser=users, clientmsgid="e-1"))["errcode"] == -1
    c.call("DELETE", "/_sandbox/faults")
    assert c.api(t, "message/mass/send", text(touser=users, clientmsgid="e-1"))["errcode"] == 0


# -- persistence ----------------------------------------------------------------------------------
def test_state_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "sandbox.db"
    with EmbeddedSandbox(db) as sb:
        c = Client(sb.url)
        c.account("wxk", followers=8, job_delay_seconds=0.5)
        t = c.token("wxk")
        sent = c.api(t, "message/mass/send", text(touser=c.followers(t), clientmsgid="r1"))
        c.advance(100)
        before = c.ledger(account="wxk")
    with EmbeddedSandbox(db) as sb:
        c = Client(sb.url)
        assert c.ledger(account="wxk") == before and before["messages"] == 8
        assert c.get("/_sandbox/clock")["offset"] == 100
        assert c.api(t, "message/mass/get", {"msg_id": sent["msg_id"]})["msg_status"] in (
            "SENDING", "SEND_SUCCESS",
        )  # fmt: skip
        assert (
            c.api(t, "message/mass/send", text(touser=["a", "b"], clientmsgid="r1"))["msg_id"]
            == sent["msg_id"]
        )
        wait_callbacks(c, "wxk", 1, status="no_url")  # the pending job finished after restart
        c.post("/_sandbox/reset")
        assert c.ledger(account="wxk")["messages"] == 0
        assert c.get("/_sandbox/wechat/accounts") == {"accounts": []}
