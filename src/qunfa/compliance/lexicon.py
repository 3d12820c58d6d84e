"""Lexicons: terms by category with a severity, built-in (packaged TOML) or imported per workspace.

A built-in lexicon is one ``data/<category>.toml`` file with its source and checked date. A custom
lexicon is a text file, one entry a line, either a bare term or CSV ``term,category,severity``
(``#`` starts a comment; an optional ``term,category,severity`` header line is skipped).

Each entry also matches its pinyin spelling (``转发`` → ``zhuanfa``) and, for entries of three or
more Han characters, its pinyin initials (``转发到朋友圈`` → ``zfdpyq``). Two-character initials
(``zf``, ``by``) are ordinary Latin letter pairs and would fire everywhere; full spellings of
fewer than four letters are skipped for the same reason. Initials and Latin terms only match as a
whole Latin word (not inside ``laptop1``); see :mod:`qunfa.compliance.matcher`.
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pypinyin import Style, lazy_pinyin

from .normalize import normalize_text

Severity = Literal["low", "medium", "high"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high")
BUILTIN_CATEGORIES = ("absolute", "induce_share", "clickbait", "financial", "medical")
MIN_PINYIN_LETTERS = 4
MIN_INITIALS_CHARS = 3
_CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class LexiconError(ValueError):
    """A lexicon file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Entry:
    term: str
    category: str
    severity: Severity
    lexicon: str  # the lexicon's name: a built-in category or the custom file's name


@dataclass(frozen=True)
class Lexicon:
    name: str
    entries: tuple[Entry, ...]
    allow: tuple[str, ...] = ()  # benign words that merely contain an entry's characters
    title: str = ""
    source: str = ""
    checked: str = ""
    suggestion: str = ""

    def __len__(self) -> int:
        return len(self.entries)


def _severity(value: object, where: str) -> Severity:
    for s in SEVERITIES:
        if value == s:
            return s
    raise LexiconError(f"{where}: unknown severity {value!r} (expected low, medium or high)")


def is_han(term: str) -> bool:
    return bool(term) and all("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in term)


def pinyin_variants(term: str) -> Iterator[tuple[Literal["pinyin", "initials"], str]]:
    """The pinyin spelling (≥4 letters) and, for ≥3 Han characters, the initials of ``term``."""
    term = normalize_text(term)
    if not is_han(term) or len(term) < 2:
        return
    full = "".join(lazy_pinyin(term, style=Style.NORMAL))
    if len(full) >= MIN_PINYIN_LETTERS and full.isascii():
        yield "pinyin", full
    if len(term) >= MIN_INITIALS_CHARS:
        initials = "".join(lazy_pinyin(term, style=Style.FIRST_LETTER))
        if initials.isascii() and initials.isalpha():
            yield "initials", initials


def parse_toml(text: str, where: str) -> Lexicon:
    """One built-in lexicon file."""
    try:
        data = tomllib.loads(text)
        category = str(data["category"])
        severity = _severity(data["severity"], where)
        entries = tuple(Entry(str(t), category, severity, category) for t in data["terms"])
        return Lexicon(
            name=category,
            entries=entries,
            allow=tuple(str(a) for a in data.get("allow", ())),
            title=str(data.get("title", "")),
            source=str(data["source"]),
            checked=str(data["checked"]),
            suggestion=str(data.get("suggestion", "")),
        )
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise LexiconError(f"{where}: {exc}") from exc


@cache
def builtin() -> tuple[Lexicon, ...]:
    """The packaged lexicons, one per built-in category."""
    root = resources.files(__package__).joinpath("data")
    return tuple(
        parse_toml(root.joinpath(f"{c}.toml").read_text(encoding="utf-8"), f"{c}.toml")
        for c in BUILTIN_CATEGORIES
    )


def parse_custom(
    text: str,
    name: str = "custom",
    *,
    default_category: str = "custom",
    default_severity: Severity = "medium",
) -> Lexicon:
    """A workspace lexicon: one term a line, or CSV ``term,category,severity``.

    Raises :class:`LexiconError` naming the line for an empty term, a term that is nothing but
    separators, too many fields, a malformed category or an unknown severity.
    """
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}: line {lineno}"
        fields = next(csv.reader([line], skipinitialspace=True)) if "," in line else [line]
        fields = [f.strip() for f in fields]
        if first and [f.lower() for f in fields] == ["term", "category", "severity"][: len(fields)]:
            first = False
            continue
        first = False
        if len(fields) > 3:
            raise LexiconError(
                f"{where}: {len(fields)} fields, expected term or term,category,severity"
            )
        term = fields[0]
        if not term:
            raise LexiconError(f"{where}: empty term")
        if not normalize_text(term):
            raise LexiconError(f"{where}: term {term!r} is only separators (nothing to match)")
        category = fields[1] if len(fields) > 1 and fields[1] else default_category
        if not _CATEGORY_RE.fullmatch(category):
            raise LexiconError(
                f"{where}: category {category!r} must be lower-case letters, digits or _"
            )
        severity = (
            _severity(fields[2].lower(), where)
            if len(fields) > 2 and fields[2]
            else default_severity
        )
        key = normalize_text(term)
        if key in seen:
            raise LexiconError(f"{where}: duplicate of line {seen[key]} ({term!r})")
        seen[key] = lineno
        entries.append(Entry(term, category, severity, name))
    return Lexicon(name=name, entries=tuple(entries), source=name)


def load_custom(path: str | Path, **kwargs: str) -> Lexicon:
    """:func:`parse_custom` on a UTF-8 file; errors name the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LexiconError(f"{p.name}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    default_severity = _severity(kwargs.get("default_severity", "medium"), p.name)
    return parse_custom(
        text,
        p.name,
        default_category=kwargs.get("default_category", "custom"),
        default_severity=default_severity,
    )
