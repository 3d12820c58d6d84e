"""Personalised sends end to end: each recipient gets their own name and city, identical
renders share a platform call, a recipient whose template cannot render fails alone.

The twins record what each number/address/member actually received (Tencent and Aliyun keep
the rendered SMS text per number, the SMTP twin the raw message, the calls log the bodies' list
sizes), so these tests read what went out, not what qunfa thinks it sent.
"""

from __future__ import annotations

import asyncio
import email
import time
from email import policy
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.personalise import person_fields, reads_person
from qunfa.storage.models import Contact, Delivery
from tests.approval import approve
from tests.conftest import drain
from tests.integration import test_email, test_sms_aliyun, test_sms_tencent, test_wecom_app

PEOPLE = [  # phone, name, city: three identical renders, then all different, one without city
    ("+8613900000001", "张三", "上海"),
    ("+8613900000002", "张三", "上海"),
    ("+8613900000003", "张三", "上海"),
    ("+8613900000004", "李四", "北京"),
    ("+8613900000005", "王五", ""),
    ("+8613900000006", "赵六", "广州"),
]

TENCENT = {
    "template_id": "1001",
    "params": ["{{ name }}", "{{ city|default('门店', true) }}"],
    "text": "双十一全场{{ name }}折，详情见 {{ city|default('门店', true) }}，回T退订",
    "category": "marketing",
}


def wait(c: Container, campaign_id: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        drain(c, rounds=1)
        status: dict[str, Any] = c.campaigns.status(campaign_id)
        if status["state"] in ("done", "failed", "paused"):
            return status
        time.sleep(0.05)
    raise AssertionError(c.campaigns.status(campaign_id))


def import_people(
    c: Container, app: str, tmp_path: Path, people: list[tuple[str, str, str]]
) -> None:
    lines = ["phone,name,city"] + [",".join(p) for p in people]
    path = tmp_path / "people.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = c.contacts.import_csv(app, path)
    assert report.imported == len(people)


def run_campaign(c: Container, channel: str, app: str, content: dict[str, Any]) -> dict[str, Any]:
    camp = c.campaigns.create(
        name="个性化", channel=channel, account=app, audience="all", content=content
    )
    approve(c, camp.id)
    c.campaigns.start(camp.id)
    status = wait(c, camp.id)
    status["id"] = camp.id
    return status


def tencent_calls(admin: SandboxAdmin) -> list[int]:
    paths = admin.get("/_sandbox/calls?path=/sms_tencent")["paths"]
    return [n for p in paths.values() for n in p["sizes"]]


def test_tencent_each_number_gets_its_own_text_and_identical_params_share_a_call(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    import_people(container, app, tmp_path, PEOPLE)
    before = len(tencent_calls(admin))
    status = run_campaign(container, "sms_tencent", app, TENCENT)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 6}
    got = {
        m["phone"]: m["text"]
        for m in admin.get(f"/_sandbox/sms_tencent/messages?account={app}")["messages"]
    }
    assert got == {
        "+8613900000001": "【腾讯云】双十一全场张三折，详情见 上海，回T退订",
        "+8613900000002": "【腾讯云】双十一全场张三折，详情见 上海，回T退订",
        "+8613900000003": "【腾讯云】双十一全场张三折，详情见 上海，回T退订",
        "+8613900000004": "【腾讯云】双十一全场李四折，详情见 北京，回T退订",
        "+8613900000005": "【腾讯云】双十一全场王五折，详情见 门店，回T退订",
        "+8613900000006": "【腾讯云】双十一全场赵六折，详情见 广州，回T退订",
    }
    # Four distinct parameter sets: four SendSms calls, the three 张三/上海 in one of them.
    sizes = tencent_calls(admin)[before:]
    # (the calls log keeps each body's largest list: the 2 params, or the 3 numbers)
    assert len(sizes) == 4 and sorted(sizes)[-1] == 3
    assert "{{" not in "".join(got.values())


def test_a_recipient_whose_template_cannot_render_fails_alone(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    people = [("+8613900000011", "甲", "上海"), ("+8613900000012", "", "北京"),
              ("+8613900000013", "丙", "深圳")]  # fmt: skip
    import_people(container, app, tmp_path, people)
    with container.sessions() as s:  # only 甲 and the nameless one have a level
        ids = [cid for (cid,) in s.execute(select(Contact.id).order_by(Contact.id))]
        s.execute(update(Contact).where(Contact.id.in_(ids[-3:-1])).values(attrs={"level": "金卡"}))
        s.commit()
    content = {**TENCENT, "params": ["{{ name }}", "{{ attrs.level }}"],
               "text": "双十一全场{{ name }}折，详情见 {{ attrs.level }}，回T退订"}  # fmt: skip
    status = run_campaign(container, "sms_tencent", app, content)
    assert status["state"] == "done"
    assert status["deliveries"] == {"sent": 1, "failed": 2}
    with container.sessions() as s:
        reasons = dict(
            s.execute(
                select(Delivery.contact_id, Delivery.reason).where(
                    Delivery.campaign_id == status["id"], Delivery.status == "failed"
                )
            ).all()
        )
    texts = sorted(reasons.values())
    assert any("renders empty" in r and "params.0" in r for r in texts)  # no name: not a blank
    assert any("template" in r and "level" in r for r in texts)  # 丙 has no level: no blank
    sent = admin.get(f"/_sandbox/sms_tencent/messages?account={app}")["messages"]
    assert [(m["phone"], m["text"]) for m in sent] == [
        ("+8613900000011", "【腾讯云】双十一全场甲折，详情见 金卡，回T退订")
    ]


def test_aliyun_sends_one_call_with_a_parameter_object_per_number(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    akid = test_sms_aliyun.make_account(admin, container, sandbox)
    import_people(container, akid, tmp_path, PEOPLE[2:])
    before = admin.get("/_sandbox/calls?path=/sms_aliyun")["calls"]
    content = {**test_sms_aliyun.CONTENT, "params": {"discount": "{{ name }}{{ city }}"},
               "text": "双十一全场{{ name }}{{ city }}折，回T退订"}  # fmt: skip
    status = run_campaign(container, "sms_aliyun", akid, content)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 4}
    assert admin.get("/_sandbox/calls?path=/sms_aliyun")["calls"] - before == 1
    got = {
        m["phone"]: m["text"]
        for m in admin.get(f"/_sandbox/sms_aliyun/messages?account={akid}")["messages"]
    }
    assert got == {
        "+8613900000003": "【阿里云短信测试】双十一全场张三上海折，回T退订",
        "+8613900000004": "【阿里云短信测试】双十一全场李四北京折，回T退订",
        "+8613900000005": "【阿里云短信测试】双十一全场王五折，回T退订",
        "+8613900000006": "【阿里云短信测试】双十一全场赵六广州折，回T退订",
    }


def test_email_adapter_sends_each_recipient_their_own_subject_and_body(
    container: Container, admin: SandboxAdmin
) -> None:
    sender = test_email.make_account(admin, container)
    rcpts = ["p1@mail.example", "p2@mail.example"]
    base = {"subject": "会员日", "text": "本周 8 折。"}
    personal = {
        "p1@mail.example": {"subject": "张三，会员日", "text": "张三您好，上海门店本周 8 折。"},
        "p2@mail.example": {"subject": "李四，会员日", "text": "李四您好，北京门店本周 8 折。"},
    }
    batch = OutboundBatch("camp-p", 0, "qf-mail-p", "list", base, rcpts, personal=personal)

    async def main() -> Any:
        async with HttpClient(5.0) as http:
            acc = next(a for a in container.accounts.all() if a.app_id == sender)
            return await container.accounts.adapter(acc, http).send_batch(batch)

    out = asyncio.run(main())
    assert out.accepted and set(out.recipient_msg_ids) == set(rcpts)
    for rcpt, own in personal.items():
        (msg,) = test_email.stored(admin, rcpt)
        parsed = email.message_from_bytes(msg["raw"].encode(), policy=policy.default)
        assert parsed["Subject"] == own["subject"]
        body = parsed.get_body(("plain",))
        assert body is not None and own["text"] in body.get_content()


def test_groups_identical_contents_and_keeps_order() -> None:
    a, b = {"text": "甲"}, {"text": "乙"}
    batch = OutboundBatch(
        "c", 0, "k", "list", {"text": "{{ name }}"}, ["r1", "r2", "r3", "r4"],
        personal={"r1": a, "r2": b, "r3": dict(a), "r4": b},
    )  # fmt: skip
    assert batch.groups() == [(a, ["r1", "r3"]), (b, ["r2", "r4"])]
    assert batch.content_for("r2") == b and batch.content_for("nobody") == batch.content
    plain = OutboundBatch("c", 0, "k", "list", {"text": "hi"}, ["r1", "r2"])
    assert plain.groups() == [({"text": "hi"}, ["r1", "r2"])]


def test_only_fields_reading_person_variables_are_rendered() -> None:
    content = {
        "template_id": "1001",
        "params": ["{{ coupon }}", "{{ name }}", "{% set x = 1 %}{{ x }}"],
        "text": "{{ attrs.level }}",
        "variables": {"coupon": "{{ name }}"},  # a value, never a template
    }
    assert [p for p, _ in person_fields(content, "sms_tencent")] == [("params", 1), ("text",)]
    assert person_fields(content, "wechat_oa") == []  # one text for all: the check blocks it
    assert reads_person("{{ city|default('x') }}") and not reads_person("{{ coupon }}")


def test_wecom_app_sends_one_message_per_distinct_text(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    corp = test_wecom_app.make_corp(admin, container, sandbox.url, app=True, staff=5, customers=0)
    members = test_wecom_app.users(corp, 5)
    text = {"msgtype": "text", "text": {"content": "{{ name }}，今晚 8 点系统维护"}}

    def own(who: str) -> dict[str, Any]:
        return {"msgtype": "text", "text": {"content": f"{who}，今晚 8 点系统维护"}}

    personal = {m: own("甲" if i < 3 else f"乙{i}") for i, m in enumerate(members)}
    before = admin.get("/_sandbox/calls?path=message/send")["calls"]
    batch = OutboundBatch("camp-w", 0, "qf-app-p", "users", text, members, personal=personal)
    out = test_wecom_app.send(container, corp, batch)
    assert out.accepted and out.done and not out.recipient_failures
    assert admin.get("/_sandbox/calls?path=message/send")["calls"] - before == 3  # 甲, 乙3, 乙4
    ids = out.recipient_msg_ids
    assert set(ids) == set(members) and len({ids[m] for m in members[:3]}) == 1
    assert len(set(ids.values())) == 3
    assert admin.ledger("wecom_app", test_wecom_app.app_id(corp))["messages"] == 5
