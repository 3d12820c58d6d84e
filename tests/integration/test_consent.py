"""Consent end to end: every withdrawal route over real HTTP, and the checks before sending.

The SMS twin pushes a user's reply to qunfa's reply route; the e-mail link is POSTed one-click;
the Official Account unfollow and the WeCom deletion arrive as encrypted callbacks; the API
records withdrawals. Campaigns then skip those recipients at plan time and right before a
batch is sent; the twins' ledgers say who actually got a message.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.crypto.wxbizmsgcrypt import WXBizMsgCrypt
from qunfa.domain.segments import parse_segment
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.callbacks import envelope
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Account, Consent, Contact, Delivery, Event, Identity, Suppression
from qunfa.storage.segment_sql import compile_segment
from tests.conftest import drain, make_oa
from tests.integration.test_sms_tencent import CONTENT, make_account, new_app_id, wait_for

PHONES = [f"+86139{i:08d}" for i in range(1, 6)]


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    server = ServerThread(create_app(container)).start()
    yield server
    server.stop()


def post(url: str, body: Any, method: str = "POST") -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def seed_identities(c: Container, channel: str, app_id: str, kind: str, values: list[str]) -> None:
    """One contact + identity on the account per value (what an import creates)."""
    now = time.time()
    with c.sessions() as s:
        acc = s.scalars(
            select(Account).where(Account.channel == channel, Account.app_id == app_id)
        ).one()
        for v in values:
            contact = Contact(created_at=now, updated_at=now)
            s.add(contact)
            s.flush()
            s.add(Identity(contact_id=contact.id, account_id=acc.id, kind=kind,
                           value_enc=c.keyring.encrypt(v), value_bi=c.keyring.blind(v),
                           updated_at=now))  # fmt: skip
        s.commit()


def contact_of(c: Container, kind: str, value: str) -> int:
    with c.sessions() as s:
        return int(
            s.scalars(
                select(Identity.contact_id).where(
                    Identity.kind == kind, Identity.value_bi == c.keyring.blind(value)
                )
            ).first()
            or 0
        )


def deliveries(c: Container, campaign_id: int) -> dict[int, tuple[str, str | None]]:
    with c.sessions() as s:
        rows = s.execute(
            select(Delivery.contact_id, Delivery.status, Delivery.reason).where(
                Delivery.campaign_id == campaign_id
            )
        ).all()
    return {int(cid): (st, reason) for cid, st, reason in rows}


def plan(c: Container, cid: int) -> Any:
    """Plan through the review gate (a passing check; approval when the check asks for it)."""
    review = getattr(c, "review", None)
    if review is not None and review.check(cid, "tester").verdict == "review":
        review.submit(cid, "tester")
        review.approve(cid, "reviewer")
    return c.campaigns.plan(cid)


def sms_campaign(c: Container, app: str) -> int:
    camp = c.campaigns.create(name="双十一", channel="sms_tencent", account=app, audience="all",
                              content=CONTENT)  # fmt: skip
    return int(camp.id)


# -- SMS reply → withdrawal → skipped at plan time and right before the batch ---------------------
def test_sms_reply_withdraws_and_campaigns_skip_at_plan_and_before_send(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    app = new_app_id()
    reply_url = f"{api.url}/callbacks/sms_tencent/{app}/reply?token=tok"
    make_account(admin, container, sandbox, app=app, callback_token="tok", reply_url=reply_url)
    seed_identities(container, "sms_tencent", app, "phone", PHONES)
    c = container

    # The person with PHONES[0] replies "ＴＤ" (full width): the twin pushes 回复短信 to qunfa.
    pushed = admin.post(f"/_sandbox/sms_tencent/accounts/{app}/reply",
                        {"phone": PHONES[0], "text": " ＴＤ。"})  # fmt: skip
    assert pushed["body"]["mobile"] == PHONES[0][3:] and pushed["body"]["nationcode"] == "86"
    # A chat reply is stored but withdraws nothing.
    admin.post(f"/_sandbox/sms_tencent/accounts/{app}/reply", {"phone": PHONES[2], "text": "好的"})
    wait_for(lambda: c.consent.is_suppressed("phone", PHONES[0], "sms"))
    wait_for(lambda: _events(c, "sms.reply") == 2)
    assert not c.consent.is_suppressed("phone", PHONES[2], "sms")
    first = contact_of(c, "phone", PHONES[0])
    ledger = c.consent.ledger(first)
    assert [(e["scope"], e["status"], e["source"]) for e in ledger] == [
        ("sms", "withdrawn", "sms_reply")
    ]
    assert "ＴＤ" in ledger[0]["evidence"]  # the reply is the evidence (encrypted at rest)
    with c.sessions() as s:
        payloads = [e.payload for e in s.scalars(select(Event).where(Event.kind == "sms.reply"))]
    assert all(PHONES[0][3:] not in json.dumps(p) for p in payloads)  # no plaintext number

    # Plan: the replier is skipped; the planned count and batch size leave them out.
    cid = sms_campaign(c, app)
    report = plan(c, cid)
    assert report.recipients == 4
    assert deliveries(c, cid)[first] == ("skipped", "suppressed")

    # A withdrawal through the API after planning, before sending.
    second = contact_of(c, "phone", PHONES[1])
    out = post(f"{api.url}/api/consent", {"action": "withdraw", "contact_id": second,
                                          "scope": "sms", "source": "call_centre",
                                          "evidence": "客服电话 2024-11-01"})  # fmt: skip
    assert out["recorded"] == 1 and out["suppressions_changed"] == 1
    c.campaigns.start(cid)
    drain(c)
    got = deliveries(c, cid)
    assert got[second] == ("skipped", "suppressed")  # honoured right before the batch
    assert sum(1 for st, _ in got.values() if st == "sent") == 3
    assert admin.ledger("sms_tencent", app)["messages"] == 3  # the twin agrees: 3 texts
    assert c.campaigns.status(cid)["deliveries"] == {"sent": 3, "skipped": 2}

    # The next campaign skips both at plan time.
    again = sms_campaign(c, app)
    assert plan(c, again).recipients == 3


def _events(c: Container, kind: str) -> int:
    with c.sessions() as s:
        return len(list(s.scalars(select(Event.id).where(Event.kind == kind))))


def test_opted_out_contact_with_a_new_number_is_skipped_as_opted_out(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox)
    seed_identities(container, "sms_tencent", app, "phone", PHONES[:2])
    first = contact_of(container, "phone", PHONES[0])
    container.consent.withdraw(contact_id=first, scope="*", source="api")
    # The suppression list holds the old number; the ledger covers a number added later.
    with container.sessions() as s:
        s.query(Suppression).delete()
        s.commit()
    cid = sms_campaign(container, app)
    assert plan(container, cid).recipients == 1
    assert deliveries(container, cid)[first] == ("skipped", "opted_out")
    # Lifting needs evidence, then the person is sent to again.
    with pytest.raises(ValueError, match="evidence"):
        container.consent.grant(contact_id=first, scope="*", source="api")
    container.consent.lift(contact_id=first, scope="*", source="web_form",
                           evidence={"form": "newsletter", "ip": "203.0.113.9"})  # fmt: skip
    assert plan(container, sms_campaign(container, app)).recipients == 2


def test_a_batch_whose_recipients_all_withdrew_is_done_without_a_platform_call(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox)
    seed_identities(container, "sms_tencent", app, "phone", PHONES[:2])
    cid = sms_campaign(container, app)
    plan(container, cid)
    for p in PHONES[:2]:
        container.consent.withdraw(kind="phone", address=p, source="api")
    container.campaigns.start(cid)
    drain(container)
    status = container.campaigns.status(cid)
    assert status["state"] == "done" and status["deliveries"] == {"skipped": 2}
    assert admin.ledger("sms_tencent", app)["messages"] == 0


# -- Official Account: unfollow callback; to_all switched to openid lists -------------------------
def oa_event(api: ServerThread, oa: Any, openid: str, event: str) -> None:
    plaintext = (
        f"<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]>"
        f"</MsgType><Event><![CDATA[{event}]]></Event></xml>"
    )
    row = {"token": oa.token, "aes_key": oa.aes_key, "receive_id": oa.appid, "from_user": openid,
           "to_user": "gh_test", "plaintext": plaintext,
           "url": f"{api.url}/callbacks/wechat/{oa.appid}"}  # fmt: skip
    url, body = envelope(row, time.time())
    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "text/xml"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == b"success"
    assert WXBizMsgCrypt  # the same crypto module signs (sandbox) and verifies (qunfa)


def openids(c: Container, appid: str) -> list[str]:
    with c.sessions() as s:
        acc = s.scalars(select(Account).where(Account.app_id == appid)).one()
        rows = s.scalars(
            select(Identity.value_enc)
            .where(Identity.account_id == acc.id, Identity.kind == "openid")
            .order_by(Identity.id)
        ).all()
    return [c.keyring.decrypt(v) for v in rows]


def test_oa_unfollow_withdraws_and_to_all_becomes_an_openid_list(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=6, tags={})
    gone, refused = openids(c, oa.appid)[:2]
    oa_event(api, oa, gone, "unsubscribe")
    gone_contact = contact_of(c, "openid", gone)
    assert [(e["scope"], e["source"]) for e in c.consent.ledger(gone_contact)] == [
        ("wechat_oa", "oa_unfollow")
    ]
    with c.sessions() as s:
        ident = s.scalars(
            select(Identity).where(Identity.contact_id == gone_contact, Identity.kind == "openid")
        ).one()
        assert ident.subscribed is False
    # Following again re-subscribes, but does not re-grant marketing consent (default policy).
    oa_event(api, oa, gone, "subscribe")
    with c.sessions() as s:
        assert s.get(Identity, ident.id).subscribed is True  # type: ignore[union-attr]
    assert c.consent.state(gone_contact)["scopes"]["wechat_oa"] == "withdrawn"

    c.consent.withdraw(contact_id=contact_of(c, "openid", refused), scope="wechat_oa",
                       source="api")  # fmt: skip
    text = {"msgtype": "text", "text": {"content": "本周新品上架"}}
    camp = c.campaigns.create(name="all", channel="wechat_oa", account=oa.appid, audience="all",
                              content=text)  # fmt: skip
    assert camp.mode == "to_all"
    report = plan(c, camp.id)
    status = c.campaigns.status(camp.id)
    assert status["mode"] == "list" and "not to_all" in (status["last_error"] or "")
    assert report.recipients == 4
    c.campaigns.start(camp.id)
    drain(c)
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["messages"] == 4 or ledger.get("recipients") == 4, ledger


# -- e-mail one-click ----------------------------------------------------------------------------
def test_email_one_click_unsubscribe(container: Container, api: ServerThread) -> None:
    c = container
    now = time.time()
    creds = {"from_address": "news@shop.example", "host": "127.0.0.1", "port": "1",
             "username": "u", "password": "p"}  # fmt: skip
    acc = c.accounts.add(channel="email", app_id="news@shop.example", credentials=creds,
                         base_url="smtp://127.0.0.1:1")  # fmt: skip
    seed_identities(c, "email", "news@shop.example", "email", ["li.lei@example.com"])
    who = contact_of(c, "email", "li.lei@example.com")
    with c.sessions() as s:
        from qunfa.storage.models import Campaign

        camp = Campaign(uid=secrets.token_hex(8), name="n", channel="email", account_id=acc.id,
                        audience="all", mode="list", state="sending", created_at=now)  # fmt: skip
        s.add(camp)
        s.flush()
        ident = s.scalars(select(Identity).where(Identity.contact_id == who)).one()
        d = Delivery(campaign_id=camp.id, batch_no=0, identity_id=ident.id, contact_id=who,
                     status="sent", updated_at=now)  # fmt: skip
        s.add(d)
        s.commit()
        did = d.id
    token = c.consent.unsubscribe_token(did)
    assert "li.lei" not in token
    # GET only shows the page (scanners and previews fetch links): nothing is withdrawn.
    with urllib.request.urlopen(f"{api.url}/u/{token}", timeout=10) as resp:
        assert resp.status == 200 and b'method="post"' in resp.read()
    assert not c.consent.is_suppressed("email", "li.lei@example.com", "email")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    req = urllib.request.Request(f"{api.url}/u/{token}", data=b"List-Unsubscribe=One-Click",
                                 headers=form)  # fmt: skip
    for _ in range(2):  # idempotent: a mail client may POST twice
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    assert c.consent.is_suppressed("email", "LI.LEI@example.com".lower(), "email")
    assert [(e["scope"], e["source"]) for e in c.consent.ledger(who)] == [("email", "email_link")]
    with c.sessions() as s:
        assert s.query(Suppression).count() == 1
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for bad in (flipped, "nonsense"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(f"{api.url}/u/{bad}", data=b""))
        assert info.value.code == 404


# -- WeCom deletion ------------------------------------------------------------------------------
def test_wecom_customer_deletion_withdraws_the_wecom_scope(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    from tests.integration.test_wecom_customer import ids, make_corp

    corpid = f"ww{secrets.token_hex(8)}"
    corp = make_corp(admin, container, sandbox.url, corpid=corpid,
                     callback_url=f"{api.url}/callbacks/wecom/{corpid}")  # fmt: skip
    asyncio.run(container.accounts.sync(corpid))  # customers become people in qunfa
    ext = ids(container, corp, 1)[0]
    admin.post(f"/_sandbox/wecom/accounts/{corpid}/delete_customer",
               {"external_userid": ext, "change_type": "del_external_contact"})  # fmt: skip
    wait_for(lambda: container.consent.is_suppressed("external_userid", ext, "wecom"), 20)
    who = contact_of(container, "external_userid", ext)
    assert [(e["scope"], e["source"]) for e in container.consent.ledger(who)] == [
        ("wecom", "wecom_del_external_contact")
    ]


# -- API and the suppression list ----------------------------------------------------------------
def test_suppression_api_and_csv_import(
    container: Container, api: ServerThread, tmp_path: Any
) -> None:
    added = post(f"{api.url}/api/suppressions", {"kind": "phone", "address": "139 0000 0001"})
    assert added == {"added": True}
    assert post(f"{api.url}/api/suppressions", {"kind": "phone", "address": "13900000001"}) == {
        "added": False
    }
    csv_file = tmp_path / "dnc.csv"
    csv_file.write_text("phone\n+8613900000001\n0086 139 0000 0002\nNOT A NUMBER\na@b.example\n")
    rep = container.consent.import_suppressions(csv_file)
    assert (rep.rows, rep.added, rep.existing, rep.rejected) == (4, 2, 1, 1)
    with urllib.request.urlopen(f"{api.url}/api/suppressions?scope=sms", timeout=10) as resp:
        items = json.loads(resp.read())["items"]
    assert len(items) == 2 and all(i["kind"] == "phone" for i in items)
    assert "13900000001" not in json.dumps(items)  # blind indexes only
    removed = post(f"{api.url}/api/suppressions", {"kind": "phone", "address": "13900000002"},
                   method="DELETE")  # fmt: skip
    assert removed == {"removed": 1}
    with pytest.raises(urllib.error.HTTPError) as info:
        post(f"{api.url}/api/consent", {"action": "withdraw", "kind": "phone", "address": "12"})
    assert info.value.code == 422


# -- the segment function ------------------------------------------------------------------------
def _opted_out_contacts(c: Container, expr: str) -> set[int]:
    stmt = compile_segment(parse_segment(expr), account_id=None)
    with c.engine.connect() as conn:
        return {int(r[0]) for r in conn.execute(stmt)}


def _check_segments(c: Container) -> None:
    now = time.time()
    with c.sessions() as s:
        people = []
        for _ in range(4):
            contact = Contact(created_at=now, updated_at=now)
            s.add(contact)
            s.flush()
            people.append(contact.id)
        for cid, phone in zip(people, PHONES, strict=False):
            s.add(Identity(contact_id=cid, account_id=None, kind="phone",
                           value_enc=c.keyring.encrypt(phone), value_bi=c.keyring.blind(phone),
                           updated_at=now))  # fmt: skip
        s.commit()
    a, b, d, e = people
    c.consent.suppress("phone", PHONES[0])  # a: on the list
    c.consent.withdraw(contact_id=b, scope="*", source="api")  # b: withdrew everything
    with c.sessions() as s:
        s.query(Suppression).filter(Suppression.contact_id == b).delete()
        s.commit()
    c.consent.withdraw(contact_id=d, scope="email", source="api")  # d: only e-mail
    c.consent.withdraw(contact_id=e, scope="sms", source="api")
    c.consent.lift(contact_id=e, scope="sms", source="api", evidence="opted back in")
    assert _opted_out_contacts(c, 'opted_out("sms")') == {a, b}
    assert _opted_out_contacts(c, 'opted_out("sms_aliyun")') == {a, b}
    assert _opted_out_contacts(c, 'opted_out("email")') == {b, d}
    assert _opted_out_contacts(c, 'not opted_out("sms")') == {d, e}
    with c.sessions() as s:
        assert s.query(Consent).count() == 5  # append-only: the lift added a row


def test_opted_out_segment_on_sqlite(container: Container) -> None:
    _check_segments(container)


def test_opted_out_segment_on_postgresql(pg_url: str, tmp_path: Any) -> None:
    from tests.conftest import fast_settings

    c = Container(fast_settings(tmp_path / "pg", database_url=pg_url))
    c.migrate()
    try:
        _check_segments(c)
    finally:
        c.close()
