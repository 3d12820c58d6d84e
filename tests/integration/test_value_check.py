"""The gate checks what a personalised campaign will insert: names, cities, attributes.

Each distinct value is checked once against the compliance lexicons on the campaign's channel;
a finding blocks or asks for review like a finding in the text, names stay masked in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.value_check import variables_read
from qunfa.storage.models import Contact
from tests.integration import test_sms_tencent
from tests.integration.test_dingtalk import make_corp
from tests.integration.test_personalised_send import TENCENT, import_people


def campaign(c: Container, app: str, content: dict[str, Any]) -> int:
    camp = c.campaigns.create(
        name="值检查", channel="sms_tencent", account=app, audience="all", content=content
    )
    return int(camp.id)


def test_a_name_that_is_a_blocked_term_blocks_and_stays_masked(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    people = [(f"+86139000001{i:02d}", "张三", "上海") for i in range(5)]
    people += [("+8613900000199", "最佳王", "上海")]
    import_people(container, app, tmp_path, people)
    result = container.review.check(campaign(container, app, TENCENT), "author")
    assert result.verdict == "block"
    flagged = [f for f in result.summary["fields"] if f["path"].startswith("values.")]
    assert [(f["path"], f["text"], f["recipients"]) for f in flagged] == [
        ("values.name", "最**", 1)
    ]
    (finding,) = flagged[0]["findings"]
    assert finding["text"] == "最佳" and finding["action"] == "block"
    assert "最佳王" not in str(result.summary)  # the whole name never lands in the report
    values = result.summary["values"]
    assert values["variables"] == ["city", "name"] and values["contacts"] == 6
    assert values["distinct"] == {"city": 1, "name": 2}  # each distinct value checked once


def test_clean_values_pass_and_attributes_are_checked_by_distinct_value(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    import_people(
        container, app, tmp_path, [(f"+86139000002{i:02d}", f"客户{i}", "北京") for i in range(4)]
    )
    content = {**TENCENT, "params": ["{{ name }}", "{{ attrs.slogan }}"],
               "text": "双十一全场{{ name }}折，{{ attrs.slogan }}，回T退订"}  # fmt: skip
    cid = campaign(container, app, content)
    with container.sessions() as s:
        ids = [i for (i,) in s.execute(select(Contact.id).order_by(Contact.id.desc()).limit(4))]
        s.execute(update(Contact).where(Contact.id.in_(ids)).values(attrs={"slogan": "欢迎光临"}))
        s.commit()
    clean = container.review.check(cid, "author")
    assert not [f for f in clean.summary["fields"] if f["path"].startswith("values.")]
    assert clean.summary["values"]["distinct"] == {"attrs.slogan": 1, "name": 4}
    with container.sessions() as s:
        s.execute(update(Contact).where(Contact.id == ids[0]).values(attrs={"slogan": "全网第一"}))
        s.commit()
    content2 = {**content, "category": "marketing", "text": content["text"] + " "}
    container.review.edit(cid, content2, "author")  # a new digest: check again
    flagged = container.review.check(cid, "author")
    hits = [f for f in flagged.summary["fields"] if f["path"] == "values.attrs.slogan"]
    assert [(h["text"], h["recipients"]) for h in hits] == [("全网第一", 1)]
    assert flagged.verdict == "block"


def test_variables_read_are_only_the_per_person_ones() -> None:
    content = {
        "params": ["{{ name|default('朋友', true) }}", "{{ coupon }}", "{{ attrs['vip'] }}"],
        "text": "{{ city }}{{ attrs.level }}",
        "variables": {"coupon": "A1"},
    }
    assert variables_read(content, "sms_tencent") == ["attrs.level", "attrs.vip", "city", "name"]
    assert variables_read(content, "wechat_oa") == []


def test_a_channel_that_does_not_render_per_recipient_blocks_at_check(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    app = make_corp(admin, container, sandbox.url).app_id
    camp = container.campaigns.create(
        name="钉钉", channel="dingtalk", account=app, audience="all",
        content={"msgtype": "text", "text": {"content": "{{ name }}，今晚 8 点系统维护"}},
    )  # fmt: skip
    result = container.review.check(camp.id, "author")
    assert result.verdict == "block"
    assert any(x["rule"] == "template.per_person_unsupported" for x in result.summary["lint"])
