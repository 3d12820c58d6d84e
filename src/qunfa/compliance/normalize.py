"""Text normalisation that defeats common evasions, with a map back to the original text.

Every character of the input is normalised **on its own** (a per-character table, built once per
process), in this order:

1. NFKC: full-width → half-width, compatibility forms (``①`` → ``1``, ``⼀`` → ``一``);
2. lower-case (Latin, Greek, Cyrillic …) and Latin diacritics stripped (``ǎ`` → ``a``, so
   pinyin written with tone marks still matches);
3. traditional → simplified Chinese with OpenCC ``t2s``, character by character;
4. homoglyphs: Cyrillic/Greek look-alikes → Latin, ``〇`` → ``零``;
5. separators dropped: spaces, punctuation, symbols (emoji included), control and format
   characters (zero-width U+200B..U+200F, U+2060, U+FEFF), combining marks.

Because the table is per character, ``origin[i]`` (the index in the original text of normalised
character ``i``) is exact and cheap: a character produces zero, one or several normalised
characters, all pointing back at it. Per-character NFKC differs from whole-string NFKC only for
composing sequences (a decomposed ``e`` + U+0301 becomes ``e``, not ``é``) which is what we want
here; phrase-level OpenCC conversions (a handful of context-dependent characters) are not applied,
see ``docs/compliance.md``. Lexicon patterns go through the same function, so both sides agree.

:func:`normalize_text` is the hot path: one regex test for a *special* character (one whose lower
case is not already its normalised form, ``Σ``, or astral); without one, the runs between
separators joined and lower-cased ARE the normalised text; with one, the per-character
``str.translate``. :func:`normalize` also returns the offset map (built from the same runs in the
common case) and is used only for messages that matched something.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import opencc

#: Look-alikes mapped after lower-casing (so only lower-case forms are needed).
HOMOGLYPHS: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # CJK look-alikes
    "ς": "σ",  # final sigma: str.lower() picks it by context, the table must agree
    "〇": "零",
}  # fmt: skip

_SEPARATOR_CATEGORIES = frozenset(
    {"Zs", "Zl", "Zp", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Cc", "Cf"}
    | {"Mn", "Me"}
)
_UNASSIGNED = frozenset({"Cn", "Co", "Cs"})
_HAN_RANGES = ((0x3400, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))


@dataclass(frozen=True, slots=True)
class Normalized:
    """Normalised text and, for each of its characters, the index of its original character."""

    text: str
    origin: list[int]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span ``[a, b)`` of the original text that produced normalised ``text[start:end]``."""
        if not 0 <= start < end <= len(self.text):
            raise ValueError(f"bad normalised span {start}:{end}")
        return self.origin[start], self.origin[end - 1] + 1


class _Table(dict[int, "str | int | None"]):
    """A ``str.translate`` table: missing code points map to themselves (and are remembered, so
    the C loop never raises ``KeyError`` twice for one character)."""

    def __missing__(self, key: int) -> int:
        self[key] = key
        return key


@dataclass(frozen=True)
class _Tables:
    chars: dict[str, str]  # every character whose normalised form differs from itself
    translate: _Table
    separators: re.Pattern[str]  # runs of BMP characters that normalise to nothing
    needs_mapping: re.Pattern[str]  # a BMP character that normalises to something else
    slow: re.Pattern[str]  # astral characters, or ones where str.lower() disagrees with the table
    special: re.Pattern[str]  # any character for which "drop separators, lower()" is not enough
    kept: re.Pattern[str]  # runs of characters that are not BMP separators (the complement)


def _is_separator(ch: str) -> bool:
    return unicodedata.category(ch) in _SEPARATOR_CATEGORIES


def _strip_latin_diacritic(ch: str) -> str:
    if ch.isascii() or not ch.isalpha():
        return ch
    base = unicodedata.normalize("NFKD", ch)[0]
    return base if base.isascii() and base.isalpha() else ch


def _char_class(codepoints: list[int]) -> str:
    """A regex class of ``codepoints`` (BMP only: ``re`` then compiles it to an O(1) bitmap)."""
    return _ranges(codepoints)


def _ranges(codepoints: list[int]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        a, b = codepoints[i], codepoints[j]
        parts.append(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def _t2s_table() -> dict[str, str]:
    """OpenCC t2s applied to each Han character on its own (one call, one character a line)."""
    han = [
        chr(cp)
        for lo, hi in _HAN_RANGES
        for cp in range(lo, hi + 1)
        if unicodedata.category(chr(cp)) == "Lo"
    ]
    converter = opencc.OpenCC("t2s")
    out = converter.convert("\n".join(han)).split("\n")
    if len(out) != len(han):  # never seen, but keep the table right if it happens
        out = [converter.convert(c) for c in han]
    return {c: s for c, s in zip(han, out, strict=True) if s != c}


def _map_char(c: str, t2s: dict[str, str]) -> str:
    s = c if unicodedata.is_normalized("NFKC", c) else unicodedata.normalize("NFKC", c)
    s = s.lower()
    out: list[str] = []
    for ch in s:
        ch = _strip_latin_diacritic(ch)
        ch = t2s.get(ch, ch)
        for x in ch:
            x = HOMOGLYPHS.get(x, x)
            if not _is_separator(x):
                out.append(x)
    return "".join(out)


@cache
def _tables() -> _Tables:
    t2s = _t2s_table()
    chars: dict[str, str] = {}
    for cp in range(0x110000):
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat in _UNASSIGNED:
            continue
        if cat in ("Lo", "Ll", "Nd") and cp < 0x3400 and c.isascii():
            continue
        m = _map_char(c, t2s)
        if m != c:
            chars[c] = m
    translate = _Table({ord(c): (m or None) for c, m in chars.items()})
    seps = sorted(ord(c) for c, m in chars.items() if not m and ord(c) <= 0xFFFF)
    needs = sorted(ord(c) for c, m in chars.items() if m and ord(c) <= 0xFFFF)
    # The hot path lower-cases the whole string first (C speed); a character for which that does
    # not give the table's answer sends the message to the full translate, like astral ones.
    unsafe = sorted(
        ord(c)
        for c in map(chr, range(0x10000))
        if c.lower() != c and "".join(chars.get(x, x) for x in c.lower()) != chars.get(c, c)
    )
    slow = "[" + _ranges(unsafe)[1:-1] + "\\U00010000-\\U0010ffff]"
    # One test instead of two on the hot path: a kept (non-separator) BMP character whose
    # lower-case form is not already its normalised form (full-width, traditional, homoglyphs,
    # 'İ' whose lower case carries a combining dot …), plus 'Σ' (the only context-dependent
    # lower-casing: final sigma), plus astral characters. Without any, separators out + lower()
    # IS the normalised text.
    special = sorted(
        {0x3A3}
        | {
            ord(c)
            for c in map(chr, range(0x10000))
            if chars.get(c) != "" and c.lower() != chars.get(c, c)
        }
    )
    return _Tables(
        chars=chars,
        translate=translate,
        separators=re.compile(_char_class(seps) + "+"),
        kept=re.compile("[^" + _char_class(seps)[1:] + "+"),
        needs_mapping=re.compile(_char_class(needs)),
        slow=re.compile(slow),
        special=re.compile("[" + _ranges(special)[1:-1] + "\\U00010000-\\U0010ffff]"),
    )


def tables() -> _Tables:
    """The per-character tables (built on first use); the engine binds their regexes."""
    return _TABLES or _tables()


_TABLES: _Tables | None = None  # set by warm_up(): the hot path skips the cache wrapper


def warm_up() -> None:
    """Build the per-character tables now (about a second, once per process)."""
    global _TABLES
    _TABLES = _tables()


def normalize_text(text: str) -> str:
    """The normalised text alone: the hot path (no offset map)."""
    t = _TABLES or _tables()
    if t.special.search(text) is not None:  # rare: full-width, traditional, look-alikes …
        return text.translate(t.translate)
    # Joining the runs between separators (findall of the complement class) is measurably
    # cheaper than sub("") or split (bench/compliance.py: 0.84 vs 1.47 / 1.23 µs a message).
    return "".join(t.kept.findall(text)).lower()


def normalize(text: str) -> Normalized:
    """The normalised text and its offset map back to ``text``.

    Common case first: no astral or case-unsafe character, no character that maps to something
    else after lower-casing, and ``str.lower`` keeps the length. Then every kept character maps
    1:1 and the offset map is the kept runs between separator runs (``list.extend(range)``,
    C speed); this is what a flagged ordinary message pays. Anything else takes the reference
    per-character loop.
    """
    t = _TABLES or _tables()
    if t.special.search(text) is None:
        origin: list[int] = []
        kept: list[str] = []
        prev = 0
        for m in t.separators.finditer(text):
            a = m.start()
            if a > prev:
                origin.extend(range(prev, a))
                kept.append(text[prev:a])
            prev = m.end()
        if prev < len(text):
            origin.extend(range(prev, len(text)))
            kept.append(text[prev:])
        stripped = "".join(kept)
        lowered = stripped.lower()
        if len(lowered) == len(stripped):
            return Normalized(lowered, origin)
    return _normalize_reference(text)


def _normalize_reference(text: str) -> Normalized:
    """:func:`normalize` one character at a time through the table (the reference)."""
    chars = _tables().chars
    out: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        m = chars.get(c)
        if m is None:
            out.append(c)
            origin.append(i)
        elif m:
            out.append(m)
            origin.extend([i] * len(m))
    return Normalized("".join(out), origin)
