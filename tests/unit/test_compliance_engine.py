"""Compliance engine: corpus precision/recall, lexicon import, links, report offsets, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qunfa.compliance import (
    Checker,
    LexiconError,
    LinkPolicy,
    extract,
    parse_custom,
    render,
)

CORPUS = Path(__file__).with_name("compliance_corpus.tsv")


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


def test_corpus_precision_recall(checker: Checker, capsys: pytest.CaptureFixture[str]) -> None:
    tp = fp = fn = tn = 0
    wrong: list[str] = []
    rows = [
        line.rstrip("\n").split("\t", 1)
        for line in CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
        if line.strip() and not line.startswith("#")
    ]
    assert len(rows) >= 200
    for label, message in rows:
        cats = {f.category for f in checker.check(message, "wechat_oa").findings}
        cats = {c for c in cats if not c.startswith("link_")}
        if label == "clean":
            tn, fp = (tn + 1, fp) if not cats else (tn, fp + 1)
        elif label in cats:
            tp += 1
        else:
            fn += 1
        if (label == "clean") != (not cats) or (label != "clean" and label not in cats):
            wrong.append(f"{label}\t{message}\t{sorted(cats)}")
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    with capsys.disabled():
        print(
            f"\ncompliance corpus: {len(rows)} messages, precision {precision:.3f}, "
            f"recall {recall:.3f} (tp {tp}, fp {fp}, fn {fn}, tn {tn})"
        )
    assert precision >= 0.95, wrong
    assert recall >= 0.95, wrong


def test_report_offsets_point_at_original(checker: Checker) -> None:
    text = "限时！全 网 最 低 价，轉發到朋友圈领取 zfdpyq"
    report = checker.check(text, "wechat_oa")
    assert report.verdict == "block"
    for f in report.findings:
        assert text[f.start : f.end] == f.text
    by_entry = {f.entry: f for f in report.findings}
    assert by_entry["全网最"].text == "全 网 最"
    assert [f.text for f in report.findings if f.entry == "转发到朋友圈"] == [
        "轉發到朋友圈",
        "zfdpyq",
    ]
    assert {f.matched_as for f in report.findings} >= {"term", "initials"}
    data = json.loads(report.to_json())
    assert data["verdict"] == "block" and data["findings"][0]["start"] == by_entry["全网最"].start
    assert render(report) is not None


def test_verdicts_per_channel(checker: Checker) -> None:
    report = checker.check("震惊！这件事", "sms_tencent")
    assert report.verdict == "review"
    assert report.verdicts["wechat_template"] == "block"
    assert report.verdicts["dingtalk"] == "pass_with_warnings"
    assert checker.check("今天天气不错", "wechat_oa").verdict == "pass"
    with pytest.raises(ValueError, match="unknown channel"):
        checker.check("今天天气不错", "nope")


def test_allow_list_and_whole_word(checker: Checker) -> None:
    assert not checker.check("这是我第一次来", "wechat_oa").findings
    assert checker.check("这是全国第一", "wechat_oa").findings
    assert not checker.check("laptop1", "wechat_oa").findings
    assert checker.check("the top 1 choice", "wechat_oa").findings


def test_custom_lexicon() -> None:
    lex = parse_custom("# comment\nterm,category,severity\n竞品A\n内部价,pricing,high\n", "ws1")
    assert [(e.term, e.category, e.severity) for e in lex.entries] == [
        ("竞品A", "custom", "medium"),
        ("内部价", "pricing", "high"),
    ]
    c = Checker(custom=[lex])
    f = c.check("这是内 部 价", "wechat_oa").findings[0]
    assert (f.category, f.severity, f.action, f.text) == ("pricing", "high", "review", "内 部 价")
    for text, msg in [
        ("ok\n内部价,pricing,urgent\n", "line 2: unknown severity"),
        ("a,b,high,extra\n", "line 1: 4 fields"),
        ("ok\n\n！！！\n", "line 3: term '！！！' is only separators"),
        ("x,Bad Cat\n", "line 1: category"),
        ("竞品\n竞 品\n", "line 2: duplicate of line 1"),
    ]:
        with pytest.raises(LexiconError, match=msg):
            parse_custom(text, "ws1")


def test_link_extraction_and_flags() -> None:
    text = (
        "详情见example.com/a?x=1，短链t.cn/Ab3，内网http://10.0.0.1:8080/x "
        "以及mp.weixin.qq.com/s/1。"
    )
    links = extract(text)
    assert [link.host for link in links] == ["example.com", "t.cn", "10.0.0.1", "mp.weixin.qq.com"]
    for link in links:
        assert text[link.start : link.end] == link.url
    policy = LinkPolicy(filed={"example.com": False})
    kinds = [[i.kind for i in policy.issues(link)] for link in links]
    assert kinds == [["link_domain", "link_unfiled"], ["link_shortener"], ["link_ip"], []]
    assert not extract("版本v1.2.3，价格3.5元，邮箱a@b.com")
    report = Checker(links=policy).check(text, "wechat_oa")
    assert {f.category for f in report.findings} >= {"link_shortener", "link_ip", "link_unfiled"}


# -- batched checking ----------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [
    "全网最低价", "转 发 到朋友圈", "震惊", "稳赚不赔", "第一次", "國家級", "ｚｈｕａｎｆａ",
    "欢迎光临", "http://t.cn/x", "shop.example/a", "\ue000", "。", "！", "😀", "abc", " ",
]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=6).map("".join), max_size=40))
def test_check_many_equals_checking_one_by_one(texts: list[str]) -> None:
    from qunfa.compliance import default_checker

    checker = default_checker()
    batched = checker.check_many(texts, "wechat_oa")
    single = [checker.check(t, "wechat_oa") for t in texts]
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in single]


def test_check_many_over_the_corpus_equals_one_by_one() -> None:
    from pathlib import Path

    from qunfa.compliance import default_checker

    corpus = Path(__file__).with_name("compliance_corpus.tsv").read_text(encoding="utf-8")
    texts = [line.split("\t")[-1] for line in corpus.splitlines() if "\t" in line]
    checker = default_checker()
    assert len(texts) >= 200
    batched = checker.check_many(texts * 3, "sms_tencent")  # crosses a BATCH boundary
    assert [r.to_dict() for r in batched] == [
        checker.check(t, "sms_tencent").to_dict() for t in texts * 3
    ]
