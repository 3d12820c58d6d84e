"""Normalisers of imported person fields (Hypothesis), the header plan and merge planning."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.domain.fields import (
    FieldError,
    normalise_birthday,
    normalise_email,
    normalise_gender,
    normalise_phone,
    normalise_registered_at,
    normalise_tags,
    normalise_timezone,
    parse_date,
    plan_columns,
)
from qunfa.domain.people import fill, plan_merges

mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
cn_prefixes = st.sampled_from(["", "+86", "0086", "86", "+86 ", "(+86) ", "0086-", "+86-"])
seps = st.sampled_from(["", " ", "-", "."])


@given(mobiles, cn_prefixes, seps, seps)
def test_cn_mobiles_in_every_usual_spelling_become_e164(
    national: str, prefix: str, a: str, b: str
) -> None:
    raw = prefix + national[:3] + a + national[3:7] + b + national[7:]
    assert normalise_phone(raw) == "+86" + national


@given(mobiles)
def test_phone_normalisation_is_idempotent_and_accepts_full_width(national: str) -> None:
    e164 = normalise_phone(national)
    assert normalise_phone(e164) == e164
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in national)
    assert normalise_phone(full_width) == e164


@given(
    st.from_regex(r"[1-79][0-9]{0,2}", fullmatch=True).filter(lambda c: not c.startswith("86")),
    st.from_regex(r"[0-9]{6,11}", fullmatch=True),
    st.sampled_from(["+", "00"]),
)
def test_other_countries_need_their_code(cc: str, rest: str, lead: str) -> None:
    digits = cc + rest
    if 8 <= len(digits) <= 15:
        assert normalise_phone(lead + cc + " " + rest) == "+" + digits
    else:
        with pytest.raises(FieldError, match="8–15"):
            normalise_phone(lead + digits)


@given(st.from_regex(r"[0-9]{1,10}", fullmatch=True).filter(lambda d: not d.startswith("00")))
def test_short_bare_numbers_are_refused_with_the_digit_count(digits: str) -> None:
    with pytest.raises(FieldError, match=f"has {len(digits)} digits"):
        normalise_phone(digits)


@pytest.mark.parametrize("raw", ["", "abc", "+86 12345678901", "1234567890123456", "+0123456789"])
def test_bad_phones_say_why(raw: str) -> None:
    with pytest.raises(FieldError, match="phone number"):
        normalise_phone(raw)


locals_ = st.from_regex(r"[A-Za-z0-9_+\-]{1,20}(\.[A-Za-z0-9_]{1,8})?", fullmatch=True)
domains = st.from_regex(r"[A-Za-z0-9]{1,12}(\.[A-Za-z0-9]{1,8})?\.[A-Za-z]{2,6}", fullmatch=True)


@given(locals_, domains, st.sampled_from(["", " ", "  "]))
def test_emails_keep_the_local_part_and_lower_the_domain(local: str, domain: str, pad: str) -> None:
    value = normalise_email(pad + f"{local}@{domain}" + pad)
    assert value == f"{local}@{domain.lower()}"
    assert normalise_email(value) == value


@pytest.mark.parametrize(
    "raw", ["a", "a@", "@b.com", "a@b", "a b@c.com", "a@b..com", ".a@b.com", "a@b.123"]
)
def test_bad_emails_are_refused(raw: str) -> None:
    with pytest.raises(FieldError, match="not an e-mail address"):
        normalise_email(raw)


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2024, 12, 31)))
def test_every_date_spelling_gives_the_same_birthday(d: date) -> None:
    spellings = [
        d.isoformat(),
        f"{d.year}/{d.month}/{d.day}",
        f"{d.year}.{d.month:02d}.{d.day:02d}",
        f"{d.year}{d.month:02d}{d.day:02d}",
        f"{d.year}年{d.month}月{d.day}日",
    ]
    assert {normalise_birthday(s) for s in spellings} == {d.isoformat()}
    assert parse_date(f" {d.year}-{d.month}-{d.day} ") == d


@pytest.mark.parametrize("raw", ["2024-02-30", "2024-13-01", "yesterday", "2024-01-02 junk"])
def test_bad_dates_are_refused(raw: str) -> None:
    with pytest.raises(FieldError):
        parse_date(raw)


def test_birthdays_in_the_future_are_refused() -> None:
    with pytest.raises(FieldError, match="outside"):
        normalise_birthday("2030-01-01", today=date(2026, 1, 1))


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2090, 1, 1)))
def test_registered_at_reads_offsets_and_defaults_to_china_time(at: datetime) -> None:
    at = at.replace(microsecond=0)
    utc = at.replace(tzinfo=UTC)
    assert normalise_registered_at(at.isoformat() + "Z") == utc.timestamp()
    assert normalise_registered_at(at.isoformat(sep=" ") + "+00:00") == utc.timestamp()
    # No offset: China time, 8 hours ahead of UTC.
    assert normalise_registered_at(at.isoformat(sep=" ")) == utc.timestamp() - 8 * 3600


@pytest.mark.parametrize(
    ("raw", "want"),
    [("男", "male"), ("女", "female"), ("M", "male"), ("female", "female"), ("1", "male"),
     ("2", "female"), ("0", "unknown"), ("未知", "unknown"), (" F ", "female"), ("先生", "male")],
)  # fmt: skip
def test_gender_spellings(raw: str, want: str) -> None:
    assert normalise_gender(raw) == want


GENDER_WORDS = {
    "male", "m", "man", "男", "男性", "先生", "1", "female", "f", "woman", "女", "女性", "女士",
    "2", "unknown", "0", "u", "未知", "保密", "其他", "other",
}  # fmt: skip


@given(
    st.text(max_size=5).filter(
        lambda t: unicodedata.normalize("NFKC", t).strip().lower() not in GENDER_WORDS
    )
)
def test_anything_else_is_not_a_gender(raw: str) -> None:
    with pytest.raises(FieldError, match="gender"):
        normalise_gender(raw)


def test_time_zones_are_iana_names_in_canonical_case() -> None:
    assert normalise_timezone("asia/shanghai") == "Asia/Shanghai"
    assert normalise_timezone("UTC") == "UTC"
    with pytest.raises(FieldError, match="did you mean 'Asia/Shanghai'"):
        normalise_timezone("Asia/Shangai")


@given(st.lists(st.text(alphabet="abc上海 VIP", min_size=1, max_size=6), max_size=6))
def test_tags_split_trim_and_dedupe(names: list[str]) -> None:
    got = normalise_tags(";".join(names))
    want = list(dict.fromkeys(" ".join(n.split()) for n in names if n.strip()))
    assert got == want
    assert normalise_tags("；".join(names)) == want  # full-width separator too


def test_header_aliases_mapping_and_custom_attributes() -> None:
    plan = plan_columns(["手机号码", "E-mail", "姓名", "会员等级", "备注"], {"备注": "-"})
    assert dict((f, plan.header[i]) for i, f in plan.fields) == {
        "phone": "手机号码", "email": "E-mail", "name": "姓名"
    }  # fmt: skip
    assert plan.extra == [(3, "会员等级")]


def test_header_problems_name_the_columns() -> None:
    with pytest.raises(FieldError, match="'phone' and 'mobile' both hold 'phone'"):
        plan_columns(["phone", "mobile"])
    with pytest.raises(FieldError, match="--account"):
        plan_columns(["openid"])
    with pytest.raises(FieldError, match="does not have"):
        plan_columns(["phone"], {"tel": "phone"})
    plan = plan_columns(["remark"], {"remark": "wechat_remark"}, "wechat_remark")
    assert plan.account_fields == {"wechat_remark"}


def test_merge_plan_links_chains_and_respects_undone_pairs() -> None:
    planned = plan_merges([("phone", [3, 1]), ("email", [3, 7]), ("unionid", [9, 10])])
    assert [(m.survivor, m.absorbed, m.matched_kind) for m in planned] == [
        (1, 3, "phone"), (1, 7, "email"), (9, 10, "unionid")
    ]  # fmt: skip
    assert plan_merges([("phone", [1, 3])], undone=[(1, 3)]) == []


def test_fill_takes_only_what_the_survivor_lacks() -> None:
    survivor = {"city": "上海", "gender": None, "attrs": {"a": 1}}
    absorbed = {"city": "北京", "gender": "female", "birthday": "1990-01-01",
                "attrs": {"a": 2, "b": 3}}  # fmt: skip
    assert fill(survivor, absorbed) == {
        "gender": "female", "birthday": "1990-01-01", "attrs": {"b": 3}
    }  # fmt: skip


# --- fast paths: the same answer as the general normaliser ------------------------------------

atoms = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]{1,8}", fullmatch=True)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,6}[A-Za-z0-9])?", fullmatch=True)


@given(
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=3),
    st.from_regex(r"[A-Za-z]{2,6}", fullmatch=True),
)
def test_plain_email_fast_path_agrees_with_the_general_rules(
    local: list[str], domain: list[str], tld: str
) -> None:
    from qunfa.domain.fields import _PLAIN_EMAIL, _email_general

    raw = ".".join(local) + "@" + ".".join([*domain, tld])
    assert _PLAIN_EMAIL.fullmatch(raw)  # the input does take the fast path
    assert normalise_email(raw) == _email_general(raw)


def outcome(fn: Any, raw: str) -> str | None:
    """What a normaliser makes of ``raw``: its value, or None if it refuses it."""
    try:
        return str(fn(raw))
    except FieldError:
        return None


@given(st.text(alphabet="aZ09.-_+@!éＡ ", max_size=30), st.sampled_from(["", "@x.com", "@Ab.CN"]))
def test_email_fast_path_agrees_with_the_general_rules_on_any_text(raw: str, tail: str) -> None:
    from qunfa.domain.fields import _email_general

    raw += tail
    assert outcome(normalise_email, raw) == outcome(_email_general, raw)


@given(st.text(alphabet="0123456789１３８+", min_size=11, max_size=14))
def test_phone_fast_paths_agree_with_the_general_rules(raw: str) -> None:
    from qunfa.domain.fields import _phone_general

    assert outcome(normalise_phone, raw) == outcome(_phone_general, raw)


@given(
    st.sampled_from(["", "+86", "0086", "86", "+1", "00"]),
    st.sampled_from(["", " ", "-", "  ", "."]),
    st.from_regex(r"1[0-9]{2}", fullmatch=True),
    st.sampled_from(["", " ", "-", "--"]),
    st.from_regex(r"[0-9]{3,5}", fullmatch=True),
    st.sampled_from(["", " ", "-"]),
    st.from_regex(r"[0-9]{3,5}", fullmatch=True),
)
def test_spaced_phone_fast_path_agrees_with_the_general_rules(
    prefix: str, s1: str, head: str, s2: str, mid: str, s3: str, tail: str
) -> None:
    from qunfa.domain.fields import _phone_general

    raw = f"{prefix}{s1}{head}{s2}{mid}{s3}{tail}"
    assert outcome(normalise_phone, raw) == outcome(_phone_general, raw)


def test_memoised_normaliser_remembers_values_and_errors() -> None:
    from qunfa.domain.fields import memoised

    calls: list[str] = []

    def gender(raw: str) -> str:
        calls.append(raw)
        return normalise_gender(raw)

    fn = memoised(gender, limit=2)
    assert fn("男") == "male" and fn("男") == "male"
    assert calls == ["男"]
    for _ in range(2):
        with pytest.raises(FieldError, match="not one of"):
            fn("maybe")
    assert calls == ["男", "maybe"]
    assert fn("女") == "female"  # the memo was full: it starts over
    assert fn("男") == "male" and calls == ["男", "maybe", "女", "男"]


def test_fast_paths_keep_full_width_digits_and_bad_dates_out() -> None:
    # \d would match full-width digits: the fast path must not return them unnormalised.
    assert normalise_phone("13８00138000") == "+8613800138000"
    assert normalise_phone("+86138001380００") == "+8613800138000"
    assert normalise_birthday("1990-01-02") == "1990-01-02"
    with pytest.raises(FieldError, match="not a real date"):
        normalise_birthday("1990-02-30")
    assert normalise_tags("VIP;新客;VIP") == ["VIP", "新客"]
    assert normalise_gender("男") == "male" and normalise_gender(" Female ") == "female"
