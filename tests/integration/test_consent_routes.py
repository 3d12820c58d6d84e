"""Consent end to end, continued: the Aliyun SMS upstream-reply route and the dispatch-time
hold of a platform-wide Official Account batch.

Over real HTTP: the Aliyun twin's "user replied" admin endpoint pushes the SmsUp format
(a JSON array) to qunfa's reply route; "TD" withdraws SMS consent for the number and the next
campaign skips it (the twin's ledger says who got a text); a reply that is not only keywords
withdraws nothing. A ``to_all`` batch larger than one openid-list call, with someone who
withdrew after planning, pauses the campaign instead of sending to everyone.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Batch, Event
from tests.conftest import drain, make_oa
from tests.integration.test_consent import contact_of, deliveries, openids, plan, seed_identities
from tests.integration.test_sms_aliyun import CONTENT, TPL
from tests.integration.test_sms_tencent import wait_for

PHONES = [f"+86137{i:08d}" for i in range(1, 6)]
SIGN = "阿里云短信测试"


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    server = ServerThread(create_app(container)).start()
    yield server
    server.stop()


def aliyun(admin: SandboxAdmin, c: Container, sandbox: EmbeddedSandbox, api: ServerThread) -> str:
    """An Aliyun SMS account whose twin pushes replies to qunfa's route (URL token ``tok``)."""
    akid, secret = f"LTAI{secrets.token_hex(8)}", secrets.token_hex(15)
    reply_url = f"{api.url}/callbacks/sms_aliyun/{akid}/reply?token=tok"
    admin.create_account("sms_aliyun", access_key_id=akid, access_key_secret=secret,
                         sign_name=SIGN, templates=TPL, receipt_delay_seconds=60.0,
                         reply_url=reply_url)  # fmt: skip
    c.accounts.add(channel="sms_aliyun", app_id=akid,
                   credentials={"access_key_id": akid, "access_key_secret": secret,
                                "sign_name": SIGN, "callback_token": "tok"},
                   base_url=f"{sandbox.url}/sms_aliyun")  # fmt: skip
    return akid


def replies(c: Container) -> list[dict[str, object]]:
    with c.sessions() as s:
        return [e.payload for e in s.scalars(select(Event).where(Event.kind == "sms.reply"))]


def test_aliyun_reply_td_withdraws_and_the_next_campaign_skips_the_number(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    c = container
    akid = aliyun(admin, c, sandbox, api)
    seed_identities(c, "sms_aliyun", akid, "phone", PHONES)

    # The person with PHONES[0] replies "TD": the twin pushes an SmsUp array to qunfa.
    pushed = admin.post(f"/_sandbox/sms_aliyun/accounts/{akid}/reply",
                        {"phone": PHONES[0], "text": "TD"})  # fmt: skip
    assert pushed["pushed_to"].startswith(f"{api.url}/callbacks/sms_aliyun/{akid}/reply")
    (item,) = pushed["body"]
    assert item["phone_number"] == PHONES[0][3:] and item["content"] == "TD"
    assert item["sign_name"] == SIGN and {"send_time", "dest_code", "sequence_id"} <= set(item)
    # A question that mentions the keyword is stored, and withdraws nothing.
    admin.post(f"/_sandbox/sms_aliyun/accounts/{akid}/reply",
               {"phone": PHONES[1], "text": "TD是什么意思？"})  # fmt: skip
    wait_for(lambda: c.consent.is_suppressed("phone", PHONES[0], "sms"))
    wait_for(lambda: len(replies(c)) == 2)
    assert sorted(bool(p["unsubscribe"]) for p in replies(c)) == [False, True]
    assert not c.consent.is_suppressed("phone", PHONES[1], "sms")
    assert c.consent.ledger(contact_of(c, "phone", PHONES[1])) == []
    first = contact_of(c, "phone", PHONES[0])
    ledger = c.consent.ledger(first)
    assert [(e["scope"], e["status"], e["source"]) for e in ledger] == [
        ("sms", "withdrawn", "sms_reply")
    ]
    evidence = json.loads(ledger[0]["evidence"])
    assert (evidence["reply"], evidence["channel"], evidence["account"]) == (
        "TD", "sms_aliyun", akid
    )  # fmt: skip
    assert all(PHONES[0][3:] not in json.dumps(p) for p in replies(c))  # no plaintext number
    # The withdrawal covers the whole SMS scope: Tencent's numbers too.
    assert c.consent.is_suppressed("phone", PHONES[0], "sms_tencent")

    # The next campaign skips the number at plan time; the twin texts the other four.
    camp = c.campaigns.create(name="双十一", channel="sms_aliyun", account=akid, audience="all",
                              content=CONTENT)  # fmt: skip
    assert plan(c, camp.id).recipients == 4
    assert deliveries(c, camp.id)[first] == ("skipped", "suppressed")
    c.campaigns.start(camp.id)
    drain(c)
    texted = {m["phone"] for m in admin.get(f"/_sandbox/sms_aliyun/messages?account={akid}")
              ["messages"]}  # fmt: skip
    assert texted == set(PHONES[1:])
    assert admin.ledger("sms_aliyun", akid)["messages"] == 4
    assert c.campaigns.status(camp.id)["deliveries"] == {"sent": 4, "skipped": 1}


def test_aliyun_reply_route_checks_the_url_token(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    c = container
    akid = aliyun(admin, c, sandbox, api)
    body = json.dumps([{"phone_number": PHONES[2][3:], "content": "退订", "sign_name": SIGN,
                        "send_time": "2025-11-11 10:00:00", "dest_code": "",
                        "sequence_id": 1}]).encode()  # fmt: skip
    for token, code in (("wrong", 403), ("tok", 200)):
        req = urllib.request.Request(
            f"{api.url}/callbacks/sms_aliyun/{akid}/reply?token={token}", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        if code == 403:
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            assert info.value.code == 403
            assert not c.consent.is_suppressed("phone", PHONES[2], "sms")
        else:
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read()) == {"code": 0, "msg": "成功"}
    # No person has the number yet: it goes on the global do-not-contact list all the same.
    assert c.consent.is_suppressed("phone", PHONES[2], "sms")


def test_a_large_to_all_batch_with_a_late_withdrawal_pauses_instead_of_sending(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    # 12 followers; one openid-list call takes 5 here, so the to_all batch cannot become one.
    oa = make_oa(admin, c, sandbox.url, followers=12, tags={},
                 qunfa_rules={"mass_max_per_call": 5})  # fmt: skip
    text = {"msgtype": "text", "text": {"content": "本周新品上架"}}
    camp = c.campaigns.create(name="all", channel="wechat_oa", account=oa.appid, audience="all",
                              content=text)  # fmt: skip
    assert plan(c, camp.id).recipients == 12
    assert c.campaigns.status(camp.id)["mode"] == "to_all"
    gone = openids(c, oa.appid)[3]
    c.consent.withdraw(contact_id=contact_of(c, "openid", gone), scope="wechat_oa",
                       source="api")  # fmt: skip
    c.campaigns.start(camp.id)
    drain(c)
    status = c.campaigns.status(camp.id)
    assert status["state"] == "paused", status
    reason = status["last_error"] or ""
    assert reason.startswith("consent: 1 recipient(s) withdrew after planning")
    assert "11 recipients exceed one openid-list call" in reason
    assert "cancel and re-create the campaign" in reason
    assert status["mode"] == "to_all"  # not silently switched
    with c.sessions() as s:
        (state,) = s.scalars(select(Batch.state).where(Batch.campaign_id == camp.id)).all()
    assert state == "retry"
    # Nobody got the platform-wide send (nor any other).
    assert admin.get("/_sandbox/calls?path=mass/send")["calls"] == 0
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0
    rows = deliveries(c, camp.id)
    assert rows[contact_of(c, "openid", gone)] == ("skipped", "suppressed")
    assert sorted(st for st, _ in rows.values()) == ["planned"] * 11 + ["skipped"]
