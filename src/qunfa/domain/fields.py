"""The fields of a person as imported: header names, and one normaliser per field.

Pure (standard library only). Every normaliser takes the raw cell text and returns the
canonical value, or raises :class:`FieldError` whose message names what is wrong and what is
expected; the importer puts that message in the error report next to the row and column.

Canonical forms:

- ``phone``: E.164. Mainland-China mobiles in any usual spelling (``+86``, ``0086``, ``86`` or
  none; spaces, dashes, dots, brackets, full-width digits) → ``+861xxxxxxxxxx``; other
  countries need their code, written ``+CC…`` or ``00CC…`` (8–15 digits in all).
- ``email``: ``local@domain`` with the domain lower-cased (the local part is case-sensitive by
  the standard, so it is kept).
- dates (``birthday``): ``YYYY-MM-DD`` from ``2024-01-02``, ``2024/1/2``, ``2024.01.02``,
  ``20240102`` or ``2024年1月2日``.
- ``registered_at``: epoch seconds from a date or a date and time (ISO 8601, ``T`` or space,
  optional seconds and offset); a time without an offset is China time (UTC+8).
- ``gender``: ``male`` | ``female`` | ``unknown`` from 男/女/male/female/m/f/先生/女士/1/2/0/未知 …
- ``timezone``: an IANA name (``Asia/Shanghai``), matched case-insensitively.
- ``tags``: a list of names from ``a;b;c`` (``;`` or full-width ``；``), de-duplicated.
"""

from __future__ import annotations

import difflib
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from typing import Any, cast
from zoneinfo import available_timezones

__all__ = [
    "ACCOUNT_KINDS",
    "ATTRIBUTE_FIELDS",
    "FIELDS",
    "HEADER_ALIASES",
    "MERGE_KINDS",
    "ColumnPlan",
    "FieldError",
    "normalise_birthday",
    "normalise_email",
    "normalise_gender",
    "normalise_phone",
    "normalise_registered_at",
    "normalise_tags",
    "normalise_text",
    "normalise_timezone",
    "parse_date",
    "plan_columns",
]


class FieldError(ValueError):
    """A cell that cannot be used; the message says why and what is expected."""


# Account-less identity kinds that make two records one person (same blind index → merge).
MERGE_KINDS = ("unionid", "phone", "email")
# Identity kinds that only exist on a platform account (import them with an account).
ACCOUNT_KINDS = ("openid", "external_userid")
# Plain attributes of the contact row.
ATTRIBUTE_FIELDS = ("name", "city", "province", "gender", "birthday", "timezone", "registered_at")
FIELDS = (*MERGE_KINDS, *ACCOUNT_KINDS, *ATTRIBUTE_FIELDS, "tags")

# Header spellings operators use, folded (lower-case, no spaces/underscores/dashes) → field.
HEADER_ALIASES: dict[str, str] = {
    **{f.replace("_", ""): f for f in FIELDS},
    "mobile": "phone", "tel": "phone", "telephone": "phone", "phonenumber": "phone",
    "手机": "phone", "手机号": "phone", "手机号码": "phone", "电话": "phone", "联系电话": "phone",
    "mail": "email", "emailaddress": "email", "邮箱": "email", "电子邮箱": "email",
    "邮件": "email", "电子邮件": "email",
    "姓名": "name", "名字": "name", "fullname": "name", "客户名称": "name",
    "城市": "city", "所在城市": "city", "省份": "province", "省": "province",
    "sex": "gender", "性别": "gender", "生日": "birthday", "出生日期": "birthday",
    "dob": "birthday", "dateofbirth": "birthday", "时区": "timezone", "tz": "timezone",
    "注册时间": "registered_at", "注册日期": "registered_at", "registered": "registered_at",
    "signupdate": "registered_at", "标签": "tags", "tag": "tags",
    "externaluserid": "external_userid", "外部联系人id": "external_userid",
}  # fmt: skip


def _fold_header(name: str) -> str:
    return re.sub(r"[\s_\-]", "", unicodedata.normalize("NFKC", name)).lower()


# --- phone -------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s\-.()（）/]")

# The usual spellings of a mainland mobile (``13900000001``, ``+8613900000001``,
# ``+86 139 0000 0001``, ``0086-139-0000-0001``, ``139 0000 0001``): ASCII only ([0-9]: \d
# also matches full-width digits), so NFKC would not change them.
_CN_SPACED = re.compile(r"(?:\+86|0086)?[ \-]?(1[3-9][0-9])[ \-]?([0-9]{4})[ \-]?([0-9]{4})")


def normalise_phone(raw: str) -> str:
    """``raw`` as E.164; mainland mobiles need no country code, others need ``+CC``/``00CC``."""
    # Fast path for the spellings most files hold (a bare 11-digit mobile, canonical as on
    # re-import, or spaced/dashed with or without +86/0086): one precompiled match instead of
    # NFKC + separators.
    m = _CN_SPACED.fullmatch(raw)
    if m is not None:
        return f"+86{m[1]}{m[2]}{m[3]}"
    return _phone_general(raw)


def _phone_general(raw: str) -> str:
    """:func:`normalise_phone` without the fast paths (the tests compare the two)."""
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if not text:
        raise FieldError("phone number is empty")
    if text.startswith("00"):
        text = "+" + text[2:]
    if text.startswith("+"):
        digits = text[1:]
        if not digits:
            raise FieldError(f"phone number {raw!r} has no digits after the international prefix")
        if not digits.isdigit() or not digits.isascii():
            raise FieldError(f"phone number {raw!r} has characters other than digits after '+'")
        if digits.startswith("86"):
            return _cn_mobile(raw, digits[2:])
        if digits.startswith("0"):
            raise FieldError(f"phone number {raw!r}: a country code never starts with 0")
        if not 8 <= len(digits) <= 15:
            raise FieldError(
                f"phone number {raw!r} has {len(digits)} digits; "
                "an international number has 8–15 including the country code"
            )
        return "+" + digits
    if not text.isdigit() or not text.isascii():
        raise FieldError(f"phone number {raw!r} has characters other than digits")
    if text.startswith("86") and len(text) == 13:
        return _cn_mobile(raw, text[2:])
    return _cn_mobile(raw, text)


def _cn_mobile(raw: str, national: str) -> str:
    if len(national) != 11:
        raise FieldError(
            f"phone number {raw!r} has {len(national)} digits after the country code; a "
            "mainland mobile has 11 (numbers of other countries need their +country code)"
        )
    if national[0] != "1" or national[1] not in "3456789":
        raise FieldError(f"phone number {raw!r} is not a mobile number (mainland mobiles: 13–19)")
    return "+86" + national


# --- e-mail -----------------------------------------------------------------------------------

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")


# A plain ASCII address that the general rules below accept unchanged except for the domain's
# case: local part without leading, trailing or doubled dots, labels of letters, digits and
# inner dashes, a TLD of letters. Anything else takes the general path (same result or error).
_PLAIN_EMAIL = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)


_PLAIN_LOCAL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
)
_PLAIN_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
# Domains seen, lower-cased: a file has few distinct ones, so each is matched once.
_DOMAINS: dict[str, str] = {}


def normalise_email(raw: str) -> str:
    """``local@domain`` with the domain lower-cased, or :class:`FieldError`."""
    # _PLAIN_EMAIL in two halves (its local part has no "@", so the last "@" splits it):
    # the domain's verdict is remembered, the local part is one short match.
    local, at, domain = raw.rpartition("@")
    if at and len(raw) <= 254:
        lower = _DOMAINS.get(domain)
        if lower is None and _PLAIN_DOMAIN.fullmatch(domain):
            if len(_DOMAINS) >= 4096:
                _DOMAINS.clear()
            lower = _DOMAINS[domain] = domain.lower()
        if lower is not None and _PLAIN_LOCAL.fullmatch(local):
            return f"{local}@{lower}"
    return _email_general(raw)


def _email_general(raw: str) -> str:
    """:func:`normalise_email` without the fast path (the tests compare the two)."""
    value = unicodedata.normalize("NFKC", raw).strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise FieldError(f"{raw!r} is not an e-mail address (expected name@domain.tld)")
    domain = domain.lower()
    if (
        len(value) > 254
        or not _LOCAL.fullmatch(local)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
    ):
        raise FieldError(f"{raw!r} is not an e-mail address: the part before @ is not valid")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise FieldError(f"{raw!r} is not an e-mail address: {domain!r} is not a domain name")
    if labels[-1].isdigit():
        raise FieldError(f"{raw!r} is not an e-mail address: the domain ends in a number")
    return f"{local}@{domain}"


# --- dates ------------------------------------------------------------------------------------

_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TIME = re.compile(r"(?:[T\s]*(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?")
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
_DATE_FORMS = "YYYY-MM-DD, YYYY/MM/DD, YYYY.MM.DD, YYYYMMDD or YYYY年M月D日"


def _date_prefix(raw: str, text: str) -> tuple[date, str]:
    m = _DATE.match(text) or _COMPACT.match(text)
    if not m:
        raise FieldError(f"{raw!r} is not a date (expected {_DATE_FORMS})")
    try:
        d = date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as exc:
        raise FieldError(f"{raw!r} is not a real date: {exc}") from None
    return d, text[m.end() :]


def parse_date(raw: str) -> date:
    """A calendar date in one of the accepted spellings, nothing after it."""
    text = unicodedata.normalize("NFKC", raw).strip()
    d, rest = _date_prefix(raw, text)
    if rest.strip():
        raise FieldError(f"{raw!r} has {rest.strip()!r} after the date (expected {_DATE_FORMS})")
    return d


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def normalise_birthday(raw: str, today: date | None = None) -> str:
    """``YYYY-MM-DD``; a birthday must lie between 1900-01-01 and today."""
    today = today or _today()
    if _ISO_DATE.fullmatch(raw):  # already canonical: only the calendar and range to check
        try:
            d = date(int(raw[:4]), int(raw[5:7]), int(raw[8:]))
        except ValueError:
            d = parse_date(raw)  # raises with the general message
    else:
        d = parse_date(raw)
    if d.year < 1900 or d > today:
        raise FieldError(f"birthday {raw!r} is outside 1900-01-01 … {today.isoformat()}")
    return d.isoformat()


_TODAY: list[Any] = [0, date.min]  # [the minute it was read, today]


def _today() -> date:
    """Today's date, read at most once a minute (``date.today()`` costs ~1.5 µs a call and
    an import calls it once a row)."""
    minute = int(time.time() // 60)
    if _TODAY[0] != minute:
        _TODAY[0], _TODAY[1] = minute, date.today()
    return cast(date, _TODAY[1])


def normalise_registered_at(raw: str) -> float:
    """Epoch seconds of a date or date-time; no offset means China time (UTC+8)."""
    text = unicodedata.normalize("NFKC", raw).strip()
    d, rest = _date_prefix(raw, text)
    m = _TIME.fullmatch(rest)
    if not m:
        raise FieldError(
            f"{raw!r} is not a date or date-time (expected {_DATE_FORMS}, optionally followed "
            "by HH:MM[:SS] and an offset such as +08:00 or Z)"
        )
    hour, minute, second, offset = m[1], m[2], m[3], m[4]
    tz: timezone = CHINA
    if offset == "Z":
        tz = UTC
    elif offset:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        at = datetime(
            d.year, d.month, d.day, int(hour or 0), int(minute or 0), int(second or 0), tzinfo=tz
        )
    except ValueError as exc:
        raise FieldError(f"{raw!r} is not a real time: {exc}") from None
    return at.timestamp()


# --- enums and names ---------------------------------------------------------------------------

GENDERS: dict[str, str] = {
    "male": "male", "m": "male", "man": "male", "男": "male", "男性": "male", "先生": "male",
    "1": "male", "female": "female", "f": "female", "woman": "female", "女": "female",
    "女性": "female", "女士": "female", "2": "female", "unknown": "unknown", "0": "unknown",
    "u": "unknown", "未知": "unknown", "保密": "unknown", "其他": "unknown", "other": "unknown",
}  # fmt: skip


def normalise_gender(raw: str) -> str:
    """``male`` | ``female`` | ``unknown`` (WeChat's 1/2/0 included)."""
    value = GENDERS.get(raw)  # the exact spelling: the common case, no normalisation
    if value is not None:
        return value
    value = GENDERS.get(unicodedata.normalize("NFKC", raw).strip().lower())
    if value is None:
        raise FieldError(
            f"gender {raw!r} is not one of 男/女/male/female/m/f/1/2/unknown/未知 (or empty)"
        )
    return value


@cache
def _zones() -> dict[str, str]:
    return {z.lower(): z for z in available_timezones()}


def normalise_timezone(raw: str) -> str:
    """An IANA time-zone name, canonical case (``asia/shanghai`` → ``Asia/Shanghai``)."""
    value = raw.strip()
    found = _zones().get(value.lower())
    if found is None:
        near = difflib.get_close_matches(value, list(_zones().values()), n=1)
        hint = f" — did you mean {near[0]!r}?" if near else ""
        raise FieldError(f"{raw!r} is not an IANA time zone (e.g. Asia/Shanghai){hint}")
    return found


def normalise_text(raw: str, limit: int = 64) -> str:
    """Trimmed, NFKC-normalised text of at most ``limit`` characters."""
    value = " ".join(unicodedata.normalize("NFKC", raw).split())
    if len(value) > limit:
        raise FieldError(f"{raw[:20]!r}… is {len(value)} characters long; at most {limit}")
    return value


_TAG_SPLIT = re.compile(r"[;；]")


_PLAIN_TAGS = re.compile(r"[^\s;；]+(?:;[^\s;；]+)*")


def normalise_tags(raw: str) -> list[str]:
    """Tag names from ``a;b;c``, trimmed, empty ones dropped, de-duplicated in order."""
    if _PLAIN_TAGS.fullmatch(raw) and unicodedata.is_normalized("NFKC", raw):
        # No spaces, no full-width separator, already NFKC: only split and de-duplicate.
        fast = list(dict.fromkeys(raw.split(";")))
        if all(len(name) <= 100 for name in fast):
            return fast
    names = [" ".join(unicodedata.normalize("NFKC", t).split()) for t in _TAG_SPLIT.split(raw)]
    out = list(dict.fromkeys(n for n in names if n))
    for name in out:
        if len(name) > 100:
            raise FieldError(f"tag {name[:20]!r}… is longer than 100 characters")
    return out


def _identity(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise FieldError("the value is empty")
    if len(value) > 200 or any(ch.isspace() for ch in value):
        raise FieldError(f"{raw[:40]!r} is not a platform id (no spaces, at most 200 characters)")
    return value


NORMALISERS: dict[str, Callable[[str], Any]] = {
    "phone": normalise_phone,
    "email": normalise_email,
    "unionid": _identity,
    "openid": _identity,
    "external_userid": _identity,
    "name": lambda raw: normalise_text(raw, 200),
    "city": normalise_text,
    "province": normalise_text,
    "gender": normalise_gender,
    "birthday": normalise_birthday,
    "timezone": normalise_timezone,
    "registered_at": normalise_registered_at,
    "tags": normalise_tags,
}


def normaliser(field: str) -> Callable[[str], Any]:
    """The normaliser of a field; ids of other kinds (an account's own kind) need non-empty."""
    return NORMALISERS.get(field, _identity)


# Fields whose columns repeat a few values (cities, genders, dates, tag lists): an import
# normalises each distinct cell once (:func:`memoised`).
REPEATING_FIELDS = frozenset(
    {"city", "province", "gender", "birthday", "timezone", "registered_at", "tags"}
)


def memoised(fn: Callable[[str], Any], limit: int = 1 << 16) -> Callable[[str], Any]:
    """``fn`` with its answers (values and :class:`FieldError` messages) remembered per raw
    cell, for columns of repeating values. At most ``limit`` cells are kept (the memo starts
    over when full). Returned values are shared between calls: callers must not mutate them.
    Meant for one import run: ``birthday``'s "not after today" is then judged once a run."""
    memo: dict[str, Any] = {}

    def call(raw: str) -> Any:
        try:
            hit = memo[raw]
        except KeyError:
            if len(memo) >= limit:
                memo.clear()
            try:
                hit = memo[raw] = fn(raw)
            except FieldError as exc:
                hit = memo[raw] = _Failed(str(exc))
        if type(hit) is _Failed:
            raise FieldError(hit.message)
        return hit

    return call


class _Failed:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


# --- header → fields ---------------------------------------------------------------------------


class ColumnPlan:
    """Which column holds which field: ``fields`` (index, field), ``extra`` (index, attr key;
    the key ``""`` is a JSON object of several attributes, as exports write them).

    ``account_fields`` are the fields stored as identities of the import's account (openid,
    external_userid and the account's own recipient kind).
    """

    def __init__(
        self,
        header: Sequence[str],
        fields: list[tuple[int, str]],
        extra: list[tuple[int, str]],
        account_fields: frozenset[str],
    ) -> None:
        self.header = list(header)
        self.fields = fields
        self.extra = extra
        self.account_fields = account_fields

    def column_of(self, field: str) -> str | None:
        for index, f in self.fields:
            if f == field:
                return self.header[index]
        return None


IGNORED = ("-", "", "ignore", "contact_id")


def plan_columns(
    header: Sequence[str],
    mapping: Mapping[str, str] | None = None,
    account_kind: str | None = None,
) -> ColumnPlan:
    """Map a header to fields: explicit ``mapping`` (header → field, ``-`` to skip) first,
    then the aliases in :data:`HEADER_ALIASES`; other columns become custom attributes.

    ``account_kind`` is the recipient kind of the import's account (``phone`` for SMS,
    ``wechat_remark`` for personal WeChat …): a column of that name (or mapped to it) becomes
    an identity on the account. Raises :class:`FieldError` naming the problem when a field is
    mapped twice, a mapping names no column, or identity columns need an account.
    """
    mapping = dict(mapping or {})
    unknown = [h for h in mapping if h not in header]
    if unknown:
        raise FieldError(
            f"the mapping names column(s) {', '.join(map(repr, unknown))} the file does not "
            f"have; its columns are {', '.join(header)}"
        )
    known = set(FIELDS) | ({account_kind} if account_kind else set())
    fields: list[tuple[int, str]] = []
    extra: list[tuple[int, str]] = []
    seen: dict[str, str] = {}
    for index, name in enumerate(header):
        if name in mapping:
            target = mapping[name].strip()
            if target in IGNORED:
                continue
            if target not in known and not target.startswith("attrs."):
                raise FieldError(
                    f"column {name!r} is mapped to {target!r}, which is not a field; fields: "
                    f"{', '.join(sorted(known))}, or attrs.<key> for a custom attribute"
                )
        else:
            folded = _fold_header(name)
            if not folded or folded in ("ignore", "contactid"):
                continue  # an export's contact_id is qunfa's own, not data
            if folded == "attrs":  # an export's custom attributes, as a JSON object
                extra.append((index, ""))
                continue
            target = (
                account_kind
                if account_kind and folded == _fold_header(account_kind)
                else HEADER_ALIASES.get(folded, f"attrs.{name.strip()}")
            )
        if target.startswith("attrs."):
            extra.append((index, target[6:]))
            continue
        if target in seen:
            raise FieldError(
                f"columns {seen[target]!r} and {name!r} both hold {target!r}; map one of them "
                f"elsewhere (e.g. --map '{name}=-' to skip it)"
            )
        seen[target] = name
        fields.append((index, target))
    account_fields = frozenset(
        f for _, f in fields if f in ACCOUNT_KINDS or (account_kind and f == account_kind)
    )
    if account_fields and account_kind is None:
        raise FieldError(
            f"column(s) {', '.join(sorted(seen[f] for f in account_fields))} hold ids of a "
            "platform account: name the account (--account) they belong to"
        )
    return ColumnPlan(header, fields, extra, account_fields)
