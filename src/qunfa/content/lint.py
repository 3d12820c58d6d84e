"""Lint per channel: the platforms' hard limits block, the seeds' advice warns.

Every number comes from a rule file — the channel's platform file (``rules/wecom.toml``,
``rules/wechat_oa.toml`` …, with the account's overrides when the caller passes its effective
:class:`~qunfa.rules.RuleSet`) for hard limits, ``rules/content.toml`` for advice — so the lint,
the adapters and the sandbox twins read the same numbers. :func:`lint` is pure: media facts
(size, type, pixels, seconds) are passed in as :class:`MediaFacts`, read by the material
library from the file header.

A finding says which rule, how bad (``block`` | ``warn``), which field, what was measured
against which limit, and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from qunfa import rules as rulebook
from qunfa.rules import RuleSet

BLOCK = "block"
WARN = "warn"

# Which rule file holds each channel's hard limits (the channel classes say the same; the lint
# stays importable without the adapters).
CHANNEL_RULES: Mapping[str, str] = {
    "wechat_oa": "wechat_oa",
    "wechat_template": "wechat_oa",
    "wecom_customer": "wecom",
    "wecom_app": "wecom",
    "sms_tencent": "sms_tencent",
    "sms_aliyun": "sms_aliyun",
    "email": "email",
    "dingtalk": "dingtalk",
    "feishu": "feishu",
    "webhook": "webhook",
    "personal_wechat": "personal_wechat",
}

# Verb-like calls to action; one of them in the first screen is the seeds' advice.
CTA_WORDS: tuple[str, ...] = (
    "点击",
    "立即",
    "马上",
    "领取",
    "报名",
    "查看",
    "回复",
    "扫码",
    "购买",
    "抢购",
    "预约",
    "参与",
    "下载",
    "注册",
    "申请",
    "了解",
    "咨询",
    "前往",
    "进入",
    "戳",
    "订阅",
    "加入",
    "打开",
    "体验",
    "试用",
    "登录",
    "填写",
    "兑换",
    "使用",
)

# Template-message value types (the key's prefix, e.g. thing3) → (rule name, what it takes).
TEMPLATE_TYPES: Mapping[str, tuple[str, str]] = {
    "thing": ("template_thing_max_chars", "characters"),
    "number": ("template_number_max_chars", "digits"),
    "letter": ("template_letter_max_chars", "letters"),
    "symbol": ("template_symbol_max_chars", "symbols"),
    "character_string": ("template_character_string_max_chars", "characters"),
    "phone_number": ("template_phone_number_max_chars", "characters"),
    "car_number": ("template_car_number_max_chars", "characters"),
    "name": ("template_name_max_chars", "characters"),
    "phrase": ("template_phrase_max_chars", "Han characters"),
}


@dataclass(frozen=True)
class LintFinding:
    """One lint result: a broken hard limit (``block``) or advice not followed (``warn``)."""

    rule_id: str
    severity: str  # block | warn
    field: str
    message: str
    suggestion: str
    measured: int | float | str | None = None
    limit: int | float | str | None = None
    unit: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MediaFacts:
    """What the lint needs of one media file of the message (from the material library)."""

    field: str  # e.g. "image", "mpvideo", "attachments.0"
    kind: str  # image | video | voice | file | thumb
    mime: str
    size: int
    width: int | None = None
    height: int | None = None
    duration: float | None = None


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def sms_segments(text: str, single: int = 70, multi: int = 67) -> int:
    """Billable segments: ≤ ``single`` characters is one, else ``ceil(len / multi)``."""
    n = len(text)
    return 1 if n <= single else math.ceil(n / multi)


class _Linter:
    def __init__(self, channel: str, rules: RuleSet | None) -> None:
        self.channel = channel
        name = CHANNEL_RULES.get(channel)
        if rules is None and name is None:
            raise ValueError(
                f"unknown channel {channel!r}: use one of {', '.join(sorted(CHANNEL_RULES))}"
            )
        self.rules = rules if rules is not None else rulebook.load(str(name))
        self.advice = rulebook.load("content")
        self.found: list[LintFinding] = []

    def _rule(self, rs: RuleSet, name: str) -> tuple[int, str, str] | None:
        rule = rs.rules.get(name)
        if rule is None or not isinstance(rule.value, int):
            return None
        return rule.value, rule.unit, rule.source

    def over(
        self,
        rule_name: str,
        field: str,
        measured: int | float,
        *,
        what: str,
        fix: str,
        advice: bool = False,
        under: bool = False,
    ) -> None:
        """Add a finding when ``measured`` is over (or ``under``) the rule's limit."""
        found = self._rule(self.advice if advice else self.rules, rule_name)
        if found is None:
            return
        limit, unit, source = found
        if (measured >= limit) if under else (measured <= limit):
            return
        word = "at least" if under else "at most"
        platform = "advice" if advice else self.rules.platform
        self.found.append(
            LintFinding(
                f"{'advice' if advice else self.channel}.{rule_name}",
                WARN if advice else BLOCK,
                field,
                f"{field}: {what} is {measured:g} {unit.split(' (')[0]}; {platform} "
                f"{'recommends' if advice else 'allows'} {word} {limit:g}",
                fix,
                measured,
                limit,
                unit,
                source,
            )
        )

    def add(self, finding: LintFinding) -> None:
        self.found.append(finding)


def _text_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("content") or value.get("text") or "")
    return "" if value is None else str(value)


def main_text(content: Mapping[str, Any], channel: str) -> tuple[str, str] | None:
    """The message's body text and its field name, if it has one."""
    if channel in ("sms_tencent", "sms_aliyun", "personal_wechat", "email"):
        text = content.get("text")
        return ("text", str(text)) if text else None
    if channel == "feishu":
        inner = content.get("content")
        if isinstance(inner, Mapping) and inner.get("text"):
            return "content.text", str(inner["text"])
        return None
    if channel == "dingtalk":
        msg = content.get("msg") if isinstance(content.get("msg"), Mapping) else content
        assert isinstance(msg, Mapping)
        for kind in ("text", "markdown"):
            part = msg.get(kind)
            if isinstance(part, Mapping):
                text = part.get("content") or part.get("text")
                if text:
                    return f"{kind}.content", str(text)
        return None
    for kind in ("text", "markdown"):
        part = content.get(kind)
        text = _text_of(part)
        if text:
            return (f"{kind}.content" if isinstance(part, Mapping) else kind), text
    return None


def lint(
    content: Mapping[str, Any],
    channel: str,
    rules: RuleSet | None = None,
    *,
    media: Iterable[MediaFacts] = (),
    sign_name: str = "",
) -> list[LintFinding]:
    """Every lint finding for ``content`` sent on ``channel``.

    ``rules``: the account's effective rule set (default: the channel's rule file);
    ``media``: facts of the files the message carries; ``sign_name``: the SMS signature, counted
    in the length as 【签名】. Block findings first, then warnings.
    """
    lt = _Linter(channel, rules)
    body = main_text(content, channel)
    if body is not None:
        _text_rules(lt, content, channel, *body, sign_name=sign_name)
    if channel == "wechat_template":
        _template_values(lt, content)
    if channel == "email":
        subject = str(content.get("subject") or "")
        lt.over(
            "subject_max_chars",
            "subject",
            len(subject),
            what="the subject",
            fix="shorten the subject",
        )
        lt.over(
            "email_subject_advice_max_chars",
            "subject",
            len(subject),
            advice=True,
            what="the subject",
            fix="put the benefit in the first 30–50 characters",
        )
    for i, article in enumerate(_articles(content)):
        _article(lt, article, f"articles.{i}")
    _cards(lt, content, channel)
    for facts in media:
        _media(lt, facts, channel)
    return sorted(lt.found, key=lambda f: (f.severity != BLOCK, f.field, f.rule_id))


def _text_rules(
    lt: _Linter, content: Mapping[str, Any], channel: str, field: str, text: str, *, sign_name: str
) -> None:
    if channel == "wecom_customer":
        lt.over(
            "customer_text_max_bytes",
            field,
            utf8_len(text),
            what="the text (UTF-8)",
            fix="shorten the text or move details to a link attachment",
        )
    elif channel == "wecom_app":
        lt.over(
            "app_text_max_bytes",
            field,
            utf8_len(text),
            what="the text (UTF-8)",
            fix="shorten the text, or send a textcard/news with a link to the rest",
        )
    elif channel == "dingtalk":
        lt.over(
            "msg_max_bytes",
            field,
            utf8_len(text),
            what="the message (UTF-8)",
            fix="shorten the message or link to the rest",
        )
    elif channel == "personal_wechat":
        lt.over("text_max_chars", field, len(text), what="the text", fix="shorten the text")
    if channel in ("sms_tencent", "sms_aliyun"):
        sign = f"【{sign_name.strip('【】')}】" if sign_name else ""
        full = sign + text
        single = lt._rule(lt.rules, "segment_single_chars")
        multi = lt._rule(lt.rules, "segment_multi_chars")
        if single and multi:
            n = sms_segments(full, single[0], multi[0])
            if n > 1:
                lt.add(
                    LintFinding(
                        f"{channel}.segments",
                        WARN,
                        field,
                        f"{field}: {len(full)} characters with the signature → {n} segments "
                        f"(≤{single[0]} in one, {multi[0]} per segment beyond); billed {n}× per "
                        "recipient",
                        f"cut {len(full) - single[0]} characters to fit one segment",
                        n,
                        1,
                        "segments",
                        single[2],
                    )
                )
        text_for_advice = full
    else:
        text_for_advice = text
    lt.over(
        "text_advice_max_chars",
        field,
        len(text_for_advice),
        advice=True,
        what="the text",
        fix="keep it under 300 characters: most readers stop there",
    )
    window = lt._rule(lt.advice, "cta_window_chars")
    if window and len(text) >= 20:  # a one-liner is all first screen; no point nagging
        head = text[: window[0]]
        if not any(w in head for w in CTA_WORDS):
            lt.add(
                LintFinding(
                    "advice.cta_window_chars",
                    WARN,
                    field,
                    f"{field}: no call to action in the first {window[0]} characters",
                    "say what to do early, e.g. 点击/立即领取/回复1报名/查看详情",
                    head[:20] + ("…" if len(head) > 20 else ""),
                    window[0],
                    window[1],
                    window[2],
                )
            )


def _template_values(lt: _Linter, content: Mapping[str, Any]) -> None:
    data = content.get("data")
    if not isinstance(data, Mapping):
        return
    for key, raw in data.items():
        value = str(raw.get("value", "") if isinstance(raw, Mapping) else raw)
        kind = key.rstrip("0123456789")
        field = f"data.{key}"
        if kind == "amount":
            digits = sum(ch.isdigit() for ch in value)
            lt.over(
                "template_amount_max_digits",
                field,
                digits,
                what=f"the {kind} value",
                fix="at most 10 digits, one currency symbol, optional 元",
            )
            continue
        if kind in TEMPLATE_TYPES:
            rule, what = TEMPLATE_TYPES[kind]
            limit_name = rule
            if kind == "name" and value.isascii():
                # name: 10 Han characters, or 20 if letters only
                found = lt._rule(lt.rules, rule)
                if found and len(value) <= 2 * found[0]:
                    continue
            lt.over(
                limit_name,
                field,
                len(value),
                what=f"the {kind} value ({what})",
                fix=f"shorten {key}; the platform refuses the whole message (47003)",
            )


def _articles(content: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Articles of a news/图文 body (a material's ``articles`` or an inline ``news``)."""
    found = content.get("articles")
    if found is None and isinstance(content.get("news"), Mapping):
        found = content["news"].get("articles")
    return [a for a in found if isinstance(a, Mapping)] if isinstance(found, list) else []


def _article(lt: _Linter, article: Mapping[str, Any], prefix: str) -> None:
    title = str(article.get("title") or "")
    for rule, key, what in (
        ("article_title_max_chars", "title", "the title"),
        ("article_author_max_chars", "author", "the author"),
        ("article_digest_max_chars", "digest", "the digest"),
        ("article_content_max_chars", "content", "the HTML content"),
    ):
        value = str(article.get(key) or "")
        lt.over(rule, f"{prefix}.{key}", len(value), what=what, fix=f"shorten {key}")
    if title:
        lt.over(
            "title_advice_max_chars",
            f"{prefix}.title",
            len(title),
            advice=True,
            what="the title",
            fix="the chat list cuts long titles: lead with the benefit",
        )
        lt.over(
            "title_advice_min_chars",
            f"{prefix}.title",
            len(title),
            advice=True,
            under=True,
            what="the title",
            fix="say what the reader gets in the title",
        )


def _cards(lt: _Linter, content: Mapping[str, Any], channel: str) -> None:
    if channel == "wecom_app" and isinstance(content.get("textcard"), Mapping):
        card = content["textcard"]
        lt.over(
            "textcard_title_max_bytes",
            "textcard.title",
            utf8_len(str(card.get("title", ""))),
            what="the title (UTF-8)",
            fix="shorten the title",
        )
        lt.over(
            "textcard_description_max_bytes",
            "textcard.description",
            utf8_len(str(card.get("description", ""))),
            what="the description (UTF-8)",
            fix="shorten the description",
        )
        lt.over(
            "textcard_btntxt_max_chars",
            "textcard.btntxt",
            len(str(card.get("btntxt", ""))),
            what="the button text",
            fix="use at most 4 characters, e.g. 详情",
        )
    if channel == "wecom_customer":
        for i, att in enumerate(content.get("attachments") or []):
            if not isinstance(att, Mapping):
                continue
            part = att.get(str(att.get("msgtype")))
            if not isinstance(part, Mapping):
                continue
            base = f"attachments.{i}.{att.get('msgtype')}"
            if att.get("msgtype") == "link":
                lt.over(
                    "link_title_max_bytes",
                    f"{base}.title",
                    utf8_len(str(part.get("title", ""))),
                    what="the title (UTF-8)",
                    fix="shorten the title",
                )
                lt.over(
                    "link_desc_max_bytes",
                    f"{base}.desc",
                    utf8_len(str(part.get("desc", ""))),
                    what="the description (UTF-8)",
                    fix="shorten the description",
                )
                lt.over(
                    "link_url_max_bytes",
                    f"{base}.url",
                    utf8_len(str(part.get("url", ""))),
                    what="the URL",
                    fix="use a shorter (tracked) link",
                )
            elif att.get("msgtype") == "miniprogram":
                lt.over(
                    "miniprogram_title_max_bytes",
                    f"{base}.title",
                    utf8_len(str(part.get("title", ""))),
                    what="the title (UTF-8)",
                    fix="shorten the title",
                )


def _formats(rs: RuleSet, name: str) -> list[str] | None:
    rule = rs.rules.get(name)
    return None if rule is None else [f.strip() for f in str(rule.value).split(",") if f.strip()]


def _media(lt: _Linter, m: MediaFacts, channel: str) -> None:
    kind = "thumb" if m.kind == "thumb" else m.kind
    size_rule = f"media_{kind}_max_bytes"
    lt.over(
        size_rule,
        m.field,
        m.size,
        what=f"the {kind} file",
        fix=("compress or resize it" if kind in ("image", "thumb") else "shorten or re-encode it"),
    )
    allowed = _formats(lt.rules, f"media_{kind}_formats")
    ext = m.mime.rsplit("/", 1)[-1].replace("jpeg", "jpg").replace("mpeg", "mp3")
    if allowed is not None and ext not in allowed and m.mime.rsplit("/", 1)[-1] not in allowed:
        lt.add(
            LintFinding(
                f"{channel}.media_{kind}_formats",
                BLOCK,
                m.field,
                f"{m.field}: {m.mime} is not a {kind} type {lt.rules.platform} accepts",
                f"convert it to one of: {', '.join(allowed)}",
                m.mime,
                ",".join(allowed),
                "file types",
                lt.rules.rules[f"media_{kind}_formats"].source,
            )
        )
    if kind == "image" and m.width is not None and m.height is not None:
        lt.over(
            "image_advice_min_width",
            m.field,
            m.width,
            advice=True,
            under=True,
            what="the image width",
            fix="use at least 720×1280 pixels",
        )
        lt.over(
            "image_advice_min_height",
            m.field,
            m.height,
            advice=True,
            under=True,
            what="the image height",
            fix="use at least 720×1280 pixels",
        )
    if kind == "video" and m.duration is not None:
        lt.over(
            "video_advice_max_seconds",
            m.field,
            m.duration,
            advice=True,
            what="the video",
            fix="cut it to 90 seconds or less",
        )


def has_blocking(findings: Iterable[LintFinding]) -> bool:
    return any(f.severity == BLOCK for f in findings)
