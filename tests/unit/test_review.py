"""Pure review rules: the content digest, text fields, who may approve, when approval is needed,
and the gate's answers (docs/review.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qunfa.domain.review import (
    GateInput,
    ReviewError,
    approval_reasons,
    content_digest,
    dispatch_refusal,
    gate,
    material_ref,
    may_approve,
    text_fields,
    worst_verdict,
)

TEXT = {"msgtype": "text", "text": {"content": "你好"}}


def test_digest_is_stable_across_key_order_and_changes_with_any_value() -> None:
    a = content_digest({"msgtype": "text", "text": {"content": "你好"}})
    b = content_digest({"text": {"content": "你好"}, "msgtype": "text"})
    assert a == b and len(a) == 64
    assert content_digest({"msgtype": "text", "text": {"content": "你好!"}}) != a
    # the material version is part of what was seen
    ref = {"material_id": 3, "version": 1}
    assert content_digest(ref, 1) != content_digest(ref, 2)
    assert content_digest(ref) != content_digest(ref, 1)


def test_material_ref() -> None:
    assert material_ref({"material_id": 3, "version": 2}) == (3, 2)
    assert material_ref({"material_id": 3}) == (3, None)
    assert material_ref(TEXT) is None
    assert material_ref({"material_id": True}) is None


def test_text_fields_cover_every_channel_shape_and_skip_identifiers() -> None:
    template = {
        "template_id": "TPL-最佳",
        "url": "https://qf.example/a",
        "data": {"thing1": {"value": "会员日"}, "time2": {"value": "12月1日"}},
    }
    assert list(text_fields(template)) == [
        ("url", "https://qf.example/a"),
        ("data.thing1.value", "会员日"),
        ("data.time2.value", "12月1日"),
    ]
    sms = {"template_id": "1001", "params": ["8", "qf.example/s"], "text": "会员日 回T退订"}
    assert [p for p, _ in text_fields(sms)] == ["params[0]", "params[1]", "text"]
    email = {"subject": "月报", "html": "<p>你好</p>", "text": "你好", "from_address": "a@b.cn"}
    assert [p for p, _ in text_fields(email)] == ["subject", "html", "text"]
    news = {"articles": [{"title": "标题", "digest": "摘要", "thumb_media_id": "M1"}]}
    assert [p for p, _ in text_fields(news)] == ["articles[0].title", "articles[0].digest"]
    assert list(text_fields({"msgtype": "mpnews", "mpnews": {"media_id": "abc"}})) == []


def test_worst_verdict() -> None:
    assert worst_verdict([]) == "pass"
    assert worst_verdict(["pass", "pass_with_warnings"]) == "pass_with_warnings"
    assert worst_verdict(["review", "block", "pass"]) == "block"


def test_the_author_cannot_approve_their_own_campaign() -> None:
    with pytest.raises(ReviewError, match="cannot approve") as exc:
        may_approve("Alice", "alice")  # case does not make a second person
    assert exc.value.rule == "review.four_eyes"
    may_approve("bob", "alice")
    may_approve("bob", "")  # no recorded author (created before the workflow): any named actor
    with pytest.raises(ReviewError) as blank:
        may_approve("  ", "alice")
    assert blank.value.rule == "review.actor"


def test_approval_is_needed_above_the_threshold_or_for_review_findings() -> None:
    assert approval_reasons(10_000, 10_000, 0) == []  # at the threshold: not above it
    assert "above the review threshold" in approval_reasons(10_001, 10_000, 0)[0]
    assert "policy is review" in approval_reasons(10, 10_000, 2)[0]
    assert len(approval_reasons(20_000, 10_000, 1)) == 2
    assert approval_reasons(1, 0, 0)  # threshold 0: every campaign is reviewed


BASE = GateInput(
    campaign_id=7,
    author="alice",
    digest="d1",
    checked_hash="d1",
    verdict="pass",
    block_example="absolute:最佳 in text.content: “最佳”",
    review_findings=0,
    audience_size=100,
    threshold=10_000,
    review_state="none",
    approved_hash=None,
    approved_by=None,
)


def test_gate_open_for_a_checked_small_clean_campaign() -> None:
    assert gate(BASE) is None
    assert gate(replace(BASE, verdict="pass_with_warnings")) is None


def test_gate_wants_a_check_of_the_current_content() -> None:
    for g in (replace(BASE, checked_hash=None), replace(BASE, checked_hash="old")):
        refusal = gate(g)
        assert refusal is not None and refusal.rule == "gate.check"
        assert "run `qunfa campaign check 7`" in str(refusal)


def test_gate_refuses_a_block_even_when_approved() -> None:
    g = replace(BASE, verdict="block", review_state="approved", approved_hash="d1")
    refusal = gate(g)
    assert refusal is not None and refusal.rule == "gate.block"
    assert "absolute:最佳" in refusal.message and "cannot override" in refusal.message


def test_gate_wants_an_approval_of_the_current_content_when_needed() -> None:
    big = replace(BASE, audience_size=10_001)
    refusal = gate(big)
    assert refusal is not None and refusal.rule == "gate.approval"
    assert "`qunfa campaign submit 7`" in refusal.message
    waiting = gate(replace(big, review_state="submitted"))
    assert waiting is not None and "someone other than alice" in waiting.message
    rejected = gate(replace(big, review_state="rejected", rejected_by="bob"))
    assert rejected is not None and "rejected by bob" in rejected.message
    assert gate(replace(big, review_state="approved", approved_hash="d1")) is None
    stale = gate(replace(big, review_state="approved", approved_hash="d0"))
    assert stale is not None and stale.rule == "gate.approval"
    assert gate(replace(BASE, review_findings=1)) is not None


def test_dispatch_refusal_is_a_digest_comparison() -> None:
    assert dispatch_refusal(7, "d1", "d1", None) is None
    assert dispatch_refusal(7, "d1", "d1", "d1") is None
    changed = dispatch_refusal(7, "d2", "d1", None)
    assert changed is not None and "gate.content_changed" in changed
    assert dispatch_refusal(7, "d2", "d2", "d1") is not None  # approval saw other content
