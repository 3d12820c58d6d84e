"""Per-channel lint: each hard limit exactly at and one past its boundary, each advice."""

from __future__ import annotations

from typing import Any

import pytest

from qunfa import rules
from qunfa.content.check import check_message, combine, text_content
from qunfa.content.lint import BLOCK, WARN, LintFinding, MediaFacts, lint, sms_segments

CTA = "点击领取"  # a call to action, so the first-screen advice stays quiet


def _ids(findings: list[LintFinding]) -> set[str]:
    return {f.rule_id for f in findings}


def _blocks(findings: list[LintFinding]) -> set[str]:
    return {f.rule_id for f in findings if f.severity == BLOCK}


def _text(channel: str, body: str) -> dict[str, Any]:
    return text_content(body, channel)


# -- hard limits: at the boundary passes, one past blocks --------------------------------------
# (channel, rule, a text of exactly `limit` units built from a unit string)
BYTE_LIMITS = [
    ("wecom_customer", "customer_text_max_bytes", 4000),
    ("wecom_app", "app_text_max_bytes", 2048),
    ("dingtalk", "msg_max_bytes", 2048),
]


@pytest.mark.parametrize(("channel", "rule", "limit"), BYTE_LIMITS)
def test_byte_limits_at_and_one_past(channel: str, rule: str, limit: int) -> None:
    # Chinese characters are 3 bytes in UTF-8: fill with them, top up with ASCII to the byte.
    han = "好" * ((limit - len(CTA.encode())) // 3)
    at = CTA + han + "a" * (limit - len((CTA + han).encode()))
    assert len(at.encode()) == limit
    assert f"{channel}.{rule}" not in _ids(lint(_text(channel, at), channel))
    past = lint(_text(channel, at + "a"), channel)
    hit = [f for f in past if f.rule_id == f"{channel}.{rule}"]
    assert hit and hit[0].severity == BLOCK
    assert (hit[0].measured, hit[0].limit) == (limit + 1, limit)
    assert "rules" not in hit[0].source and hit[0].source  # names where the number comes from


def test_personal_wechat_char_limit() -> None:
    at = CTA + "好" * (1500 - len(CTA))
    assert "personal_wechat.text_max_chars" not in _ids(lint({"text": at}, "personal_wechat"))
    assert "personal_wechat.text_max_chars" in _blocks(lint({"text": at + "好"}, "personal_wechat"))


TEMPLATE_TYPES = [
    ("thing1", 20, "好"),
    ("number2", 32, "1"),
    ("letter3", 32, "a"),
    ("symbol4", 5, "%"),
    ("character_string5", 32, "a"),
    ("phone_number6", 17, "1"),
    ("car_number7", 8, "沪"),
    ("phrase8", 5, "好"),
    ("name9", 10, "张"),
]


@pytest.mark.parametrize(("key", "limit", "unit"), TEMPLATE_TYPES)
def test_template_value_types_at_and_one_past(key: str, limit: int, unit: str) -> None:
    def content(value: str) -> dict[str, Any]:
        return {"template_id": "T", "data": {key: {"value": value}}}

    rule = f"wechat_template.template_{key.rstrip('0123456789')}_max_chars"
    assert rule not in _ids(lint(content(unit * limit), "wechat_template"))
    past = lint(content(unit * (limit + 1)), "wechat_template")
    assert rule in _blocks(past)
    assert next(f for f in past if f.rule_id == rule).field == f"data.{key}"


def test_template_name_allows_twenty_letters_and_amount_counts_digits() -> None:
    def content(data: dict[str, str]) -> dict[str, Any]:
        return {"template_id": "T", "data": {k: {"value": v} for k, v in data.items()}}

    assert not _blocks(lint(content({"name1": "a" * 20}), "wechat_template"))
    assert _blocks(lint(content({"name1": "a" * 21}), "wechat_template"))
    assert not _blocks(lint(content({"amount1": "¥1234567890元"}), "wechat_template"))
    assert _blocks(lint(content({"amount1": "¥12345678901元"}), "wechat_template")) == {
        "wechat_template.template_amount_max_digits"
    }


def test_article_title_limit_and_title_advice() -> None:
    def news(title: str) -> dict[str, Any]:
        return {"articles": [{"title": title, "content": "<p>x</p>"}]}

    assert "wechat_oa.article_title_max_chars" not in _ids(lint(news("标" * 64), "wechat_oa"))
    assert "wechat_oa.article_title_max_chars" in _blocks(lint(news("标" * 65), "wechat_oa"))
    # advice: 8–30 characters; outside it warns and never blocks
    assert "advice.title_advice_max_chars" not in _ids(lint(news("标" * 30), "wechat_oa"))
    long = lint(news("标" * 31), "wechat_oa")
    assert "advice.title_advice_max_chars" in _ids(long) and not _blocks(long)
    assert "advice.title_advice_min_chars" not in _ids(lint(news("标" * 8), "wechat_oa"))
    assert "advice.title_advice_min_chars" in _ids(lint(news("标" * 7), "wechat_oa"))


def test_wecom_textcard_button_limit() -> None:
    def card(btn: str) -> dict[str, Any]:
        return {
            "msgtype": "textcard",
            "textcard": {"title": "t", "description": "d", "btntxt": btn},
        }

    assert not _blocks(lint(card("查看详情"), "wecom_app"))
    assert "wecom_app.textcard_btntxt_max_chars" in _blocks(lint(card("查看详情页"), "wecom_app"))


def test_email_subject_hard_limit_and_advice() -> None:
    ok = lint({"subject": "s" * 50, "text": "hi"}, "email")
    assert not _ids(ok) & {"email.subject_max_chars", "advice.email_subject_advice_max_chars"}
    advice = lint({"subject": "s" * 51, "text": "hi"}, "email")
    assert "advice.email_subject_advice_max_chars" in _ids(advice) and not _blocks(advice)
    assert "email.subject_max_chars" in _blocks(lint({"subject": "s" * 999, "text": "hi"}, "email"))


# -- SMS segments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_sms_segment_count(n: int, segments: int) -> None:
    assert sms_segments("字" * n) == segments


def test_sms_segments_count_the_signature() -> None:
    sign = "【qunfa】"  # 7 characters
    fits = "字" * (70 - len(sign))
    one = lint({"text": fits}, "sms_tencent", sign_name="qunfa")
    assert "sms_tencent.segments" not in _ids(one)
    two = lint({"text": fits + "字"}, "sms_tencent", sign_name="【qunfa】")
    seg = next(f for f in two if f.rule_id == "sms_tencent.segments")
    assert (seg.severity, seg.measured, seg.limit) == (WARN, 2, 1)
    assert "71 characters with the signature → 2 segments" in seg.message
    assert "cut 1 characters" in seg.suggestion
    # without the signature the same text is one segment: the signature is what tips it
    assert "sms_tencent.segments" not in _ids(lint({"text": fits + "字"}, "sms_tencent"))


def test_sms_segment_rules_follow_account_overrides() -> None:
    rs = rules.load("sms_aliyun").with_overrides(
        {"segment_single_chars": 10, "segment_multi_chars": 8}
    )
    found = lint({"text": "字" * 11}, "sms_aliyun", rs)
    assert "sms_aliyun.segments" in _ids(found)


# -- advice --------------------------------------------------------------------------------------
def test_text_advice_300_characters_warns() -> None:
    at = CTA + "好" * (300 - len(CTA))
    assert "advice.text_advice_max_chars" not in _ids(lint(_text("wecom_app", at), "wecom_app"))
    past = lint(_text("wecom_app", at + "好"), "wecom_app")
    assert [f.severity for f in past if f.rule_id == "advice.text_advice_max_chars"] == [WARN]


def test_call_to_action_in_first_screen() -> None:
    late = "好" * 100 + "点击领取"
    assert "advice.cta_window_chars" in _ids(lint(_text("wecom_app", late), "wecom_app"))
    early = "好" * 96 + "点击领取" + "好" * 50
    assert "advice.cta_window_chars" not in _ids(lint(_text("wecom_app", early), "wecom_app"))
    short = "今晚八点开播"  # a one-liner is all first screen
    assert "advice.cta_window_chars" not in _ids(lint(_text("wecom_app", short), "wecom_app"))


def _image(w: int, h: int, size: int = 1000, mime: str = "image/png") -> MediaFacts:
    return MediaFacts("image", "image", mime, size, w, h)


def test_image_resolution_advice_at_and_below() -> None:
    assert not lint({}, "wechat_oa", media=[_image(720, 1280)])
    low = lint({}, "wechat_oa", media=[_image(719, 1279)])
    assert _ids(low) == {"advice.image_advice_min_width", "advice.image_advice_min_height"}
    assert not _blocks(low)


def test_image_size_and_format_block() -> None:
    limit = 10 * 1024 * 1024
    assert not _blocks(lint({}, "wechat_oa", media=[_image(720, 1280, limit)]))
    assert "wechat_oa.media_image_max_bytes" in _blocks(
        lint({}, "wechat_oa", media=[_image(720, 1280, limit + 1)])
    )
    # WeCom takes jpg/png only; the OA also takes gif
    gif = _image(720, 1280, mime="image/gif")
    assert not _blocks(lint({}, "wechat_oa", media=[gif]))
    assert "wecom_app.media_image_formats" in _blocks(lint({}, "wecom_app", media=[gif]))


def test_video_duration_advice() -> None:
    def video(s: float) -> MediaFacts:
        return MediaFacts("mpvideo", "video", "video/mp4", 1000, duration=s)

    assert not lint({}, "wechat_oa", media=[video(90)])
    long = lint({}, "wechat_oa", media=[video(90.5)])
    assert _ids(long) == {"advice.video_advice_max_seconds"} and not _blocks(long)


def test_blocks_sort_first_and_unknown_channel_is_named() -> None:
    found = lint(_text("wecom_app", "好" * 700), "wecom_app")
    assert found[0].severity == BLOCK and found[-1].severity == WARN
    with pytest.raises(ValueError, match=r"unknown channel 'fax'.*wechat_oa"):
        lint({}, "fax")


# -- the combined content check ------------------------------------------------------------------
def test_check_message_verdicts() -> None:
    clean = check_message(_text("wecom_app", "点击领取优惠"), "wecom_app")
    assert clean.verdict == "pass" and combine("pass", clean) == "pass"
    warn = check_message(_text("wecom_app", CTA + "好" * 400), "wecom_app")
    assert warn.verdict == "pass_with_warnings"
    assert combine("review", warn) == "review"
    block = check_message(_text("wecom_app", "好" * 700), "wecom_app")
    assert block.verdict == "block" and combine("pass", block) == "block"
    typo = check_message({"text": "{{ nmae }}你好"}, "sms_tencent")
    assert typo.verdict == "block" and typo.template[0].variable == "nmae"
    assert typo.to_dict()["template"][0]["suggestion"] == "use {{ name }}"
