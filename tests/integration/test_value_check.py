"""The gate checks what a personalised campaign will insert: names, cities, attributes.

Each distinct value is checked once against the compliance lexicons on the campaign's channel;
a finding blocks or asks for review like a finding in the text, names stay masked in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.campaigns import CampaignError
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


def set_attrs(c: Container, attrs: list[dict[str, str]]) -> None:
    """Give the most recently imported contacts these attributes (one dict each)."""
    with c.sessions() as s:
        ids = [
            i
            for (i,) in s.execute(select(Contact.id).order_by(Contact.id.desc()).limit(len(attrs)))
        ]
        for i, a in zip(ids, attrs, strict=True):
            s.execute(update(Contact).where(Contact.id == i).values(attrs=a))
        s.commit()


def joined(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in summary["fields"] if f["path"].startswith("values.") and "joined" in f]


def test_a_term_split_between_template_text_and_a_value_is_caught(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    people = [("+8613900000301", "张三", "第"), ("+8613900000302", "李四", "第")]
    people += [("+8613900000303", "王五", "上海")]
    import_people(container, app, tmp_path, people)
    set_attrs(container, [{"word": "佳"}, {"word": "好看"}, {"word": "佳"}])
    content = {**TENCENT, "params": ["{{ city }}", "{{ attrs.word }}"],
               "text": "本店{{ city }}一名，全网最{{ attrs.word }}的选择，回T退订"}  # fmt: skip
    result = container.review.check(campaign(container, app, content), "author")
    hits = {(h["path"], h["text"], h["recipients"]): h for h in joined(result.summary)}
    assert set(hits) == {
        ("values.city", "本店第一名，全网最", 2),  # 第 + 一名: 第一
        ("values.attrs.word", "一名，全网最佳的选择，回T退订", 2),  # 全网最 + 佳: 最佳
    }
    city = hits[("values.city", "本店第一名，全网最", 2)]
    assert city["joined"]["at"] == [{"field": "text", "position": 2}]
    assert city["joined"]["slot"] == "{{ city }}" and city["joined"]["value"] == "第"
    (f,) = city["findings"]
    assert (f["text"], f["entry"], f["start"], f["end"], f["action"]) == (
        "第一",
        "第一",
        2,
        4,
        "block",
    )
    assert "{{ city }}" in f["suggestion"] and "第一" in f["suggestion"]
    word = hits[("values.attrs.word", "一名，全网最佳的选择，回T退订", 2)]
    at = content["text"].index("{{ attrs.word }}")
    assert word["joined"]["at"] == [{"field": "text", "position": at}] and at == 18
    assert [x["entry"] for x in word["findings"]] == ["最佳"]
    # Neither value is flagged on its own, and the template's own 全网最 stays its own finding.
    assert not [f for f in result.summary["fields"] if f["path"].startswith("values.")
                and "joined" not in f]  # fmt: skip
    (text,) = [f for f in result.summary["fields"] if f["path"] == "text"]
    assert [x["entry"] for x in text["findings"]] == ["全网最"]
    assert result.summary["values"]["joins"] == 2  # the params hold nothing beside the value


def test_a_join_alone_gates_by_its_category_and_names_stay_masked(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    people = [(f"+86139000004{i:02d}", "张三", "上海") for i in range(3)]
    import_people(container, app, tmp_path, people)
    content = {**TENCENT, "params": ["{{ name }}", "{{ city }}"],
               "text": "恭喜{{ name }}一名获奖，{{ city }}店见，回T退订"}  # fmt: skip
    cid = campaign(container, app, content)
    clean = container.review.check(cid, "author")
    assert clean.verdict in ("pass", "pass_with_warnings") and not joined(clean.summary)
    with container.sessions() as s:  # one contact renamed 王第: 恭喜王第一名获奖
        (last,) = s.execute(select(Contact).order_by(Contact.id.desc()).limit(1)).scalars()
        last.name_enc = container.keyring.encrypt("王第")
        s.commit()
    container.review.edit(cid, {**content, "text": str(content["text"]) + " "}, "author")
    result = container.review.check(cid, "author")
    assert result.verdict == "block"  # absolute on SMS: block, like a finding in the text
    (hit,) = joined(result.summary)
    assert (hit["path"], hit["text"], hit["recipients"]) == ("values.name", "恭喜王*一名获奖，", 1)
    assert hit["joined"]["value"] == "王*" and hit["findings"][0]["text"] == "第一"
    assert "王第" not in str(result.summary)  # the whole name never lands in the report
    with pytest.raises(CampaignError, match=r"gate\.block"):
        container.campaigns.start(cid, actor="author")


def test_a_review_category_across_the_join_needs_approval(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    import_people(container, app, tmp_path, [("+8613900000501", "张三", "上海")])
    set_attrs(container, [{"tag": "震"}])
    content = {**TENCENT, "params": ["{{ name }}", "{{ attrs.tag }}"],
               "text": "{{ attrs.tag }}惊！今晚 8 点开抢，回T退订"}  # fmt: skip
    cid = campaign(container, app, content)
    result = container.review.check(cid, "author")
    (hit,) = joined(result.summary)
    assert [(f["entry"], f["action"]) for f in hit["findings"]] == [("震惊", "review")]
    assert result.verdict == "review" and result.summary["counts"]["review"] == 1
    with pytest.raises(CampaignError, match=r"gate\.approval"):
        container.campaigns.start(cid, actor="author")


def test_joins_that_match_nothing_and_evasions_in_the_value(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = test_sms_tencent.make_account(admin, container, sandbox)
    people = [("+8613900000601", "张三", "第"), ("+8613900000602", "李四", "上海")]
    import_people(container, app, tmp_path, people)
    # 第 + 一次 is 第一次: it merely contains 第一's characters and is on the allow list.
    content = {**TENCENT, "params": ["{{ city }}", "{{ name }}"],
               "text": "{{ city }}一次购物满 100 减 20，回T退订"}  # fmt: skip
    cid = campaign(container, app, content)
    clean = container.review.check(cid, "author")
    assert not joined(clean.summary) and clean.verdict in ("pass", "pass_with_warnings")
    # Zero-width and full-width characters inside a value do not hide the join.
    set_attrs(container, [{"rank": "第\u200b", "n": "１"}, {"rank": "第", "n": "2"}])
    content2 = {**content, "text": "本店{{ attrs.rank }}一名，TOP{{ attrs.n }} 品质，回T退订"}
    container.review.edit(cid, content2, "author")
    result = container.review.check(cid, "author")
    found = sorted(
        (h["path"], h["findings"][0]["entry"], h["recipients"]) for h in joined(result.summary)
    )
    assert found == [
        ("values.attrs.n", "TOP1", 1),
        ("values.attrs.rank", "第一", 1),
        ("values.attrs.rank", "第一", 1),
    ]
    assert result.verdict == "block"
