"""One Aho-Corasick automaton over every normalised pattern, matched on normalised text.

Patterns: each entry's normalised term, its pinyin spelling and its initials (see
:mod:`qunfa.compliance.lexicon`), plus the lexicons' allow-list words. The automaton uses
``MatchKind.LeftmostLongest``, so at any position the longest pattern wins and matches do not
overlap: an allow-list word (``第一次``) that starts at or before an entry (``第一``) and covers it
swallows the match. Latin patterns (initials, Latin terms like ``no1``) only count as a whole
Latin word in the original text (the characters either side of the original span are not ASCII
letters or digits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import ahocorasick_rs

from .lexicon import SEVERITIES, Entry, Lexicon, pinyin_variants
from .normalize import Normalized, normalize, normalize_text

Kind = Literal["term", "pinyin", "initials"]


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str  # normalised
    entry: Entry | None  # None: an allow-list word
    kind: Kind
    whole_word: bool


@dataclass(frozen=True, slots=True)
class Match:
    entry: Entry
    kind: Kind  # matched the term itself, its pinyin or its initials
    pattern: str  # the normalised pattern that matched
    start: int  # span in the ORIGINAL text
    end: int


def _is_word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _whole_word(text: str, a: int, b: int) -> bool:
    """Whether ``text[a:b]`` is not part of a longer Latin word (letters or digits either side)."""
    return not (
        (a > 0 and _is_word_char(text[a - 1])) or (b < len(text) and _is_word_char(text[b]))
    )


class Matcher:
    """Built once from lexicons; :meth:`find_raw` on normalised text is the hot path."""

    def __init__(self, lexicons: Iterable[Lexicon]) -> None:
        by_text: dict[str, Pattern] = {}

        def rank(p: Pattern) -> tuple[int, int]:
            if p.entry is None:
                return (9, 0)  # allow-list words win over entries with the same pattern
            return (SEVERITIES.index(p.entry.severity), p.kind == "term")

        def add(p: Pattern) -> None:
            if not p.text:
                return
            old = by_text.get(p.text)
            if old is None or rank(p) > rank(old):
                by_text[p.text] = p

        for lex in lexicons:
            for e in lex.entries:
                norm = normalize_text(e.term)
                add(Pattern(norm, e, "term", norm.isascii()))
                for kind, text in pinyin_variants(e.term):
                    add(Pattern(text, e, kind, kind == "initials"))
            for word in lex.allow:
                add(Pattern(normalize_text(word), None, "term", False))
                for kind, text in pinyin_variants(word):
                    if kind == "pinyin":
                        add(Pattern(text, None, kind, False))
        self.patterns: list[Pattern] = list(by_text.values())
        #: The longest normalised pattern (entries, their pinyin and initials, allow-list words):
        #: a match touching a position lies within this many characters either side of it.
        self.longest = max((len(p.text) for p in self.patterns), default=0)
        # A DFA: about twice the default's matching speed on 70-character messages for a
        # one-off build of ~0.5 s and ~78 MB (the default NFA: ~3 MB) with 25,000 patterns.
        self.automaton = ahocorasick_rs.AhoCorasick(
            [p.text for p in self.patterns],
            matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
            implementation=ahocorasick_rs.Implementation.DFA,
        )
        self.find_raw = self.automaton.find_matches_as_indexes

    @cached_property
    def overlapping(self) -> ahocorasick_rs.AhoCorasick:
        """Every match, overlapping ones too (the standard automaton, ~3 MB, built on first use):
        for text joined from a template and a value (:meth:`crossing`), where a leftmost-longest
        match wholly in the template (``全网最``) would hide one that crosses into the value
        (``最佳``). A benign race builds it twice; the result is the same."""
        return ahocorasick_rs.AhoCorasick([p.text for p in self.patterns])

    def find_overlapping(self, normalised: str) -> list[tuple[int, int, int]]:
        """Every (pattern index, start, end) in normalised text, overlapping matches included."""
        return self.overlapping.find_matches_as_indexes(normalised, overlapping=True)

    def crossing(self, text: str, start: int, end: int) -> list[Match]:
        """Entry matches of ``text`` that cross an edge of ``text[start:end]`` (an inserted value).

        Overlapping matches count, since the value's own matches and the template's are found
        elsewhere and must not hide a crossing one. An allow-list word that contains a match
        clears it (``第`` + ``一次`` is ``第一次``), and a match inside a longer crossing match is
        dropped (``全网第一`` is reported, not also ``第一``). Spans are in ``text``.
        """
        norm = normalize(text)
        allowed: list[tuple[int, int]] = []
        hits: list[Match] = []
        for idx, s, e in self.find_overlapping(norm.text):
            p = self.patterns[idx]
            a, b = norm.original_span(s, e)
            if p.whole_word and not _whole_word(text, a, b):
                continue
            if p.entry is None:
                allowed.append((a, b))
            elif a < end and b > start and (a < start or b > end):
                hits.append(Match(p.entry, p.kind, p.text, a, b))
        hits = [m for m in hits if not any(a <= m.start and m.end <= b for a, b in allowed)]
        return [
            m
            for m in hits
            if not any(
                o.start <= m.start and m.end <= o.end and o.end - o.start > m.end - m.start
                for o in hits
            )
        ]

    def __len__(self) -> int:
        return len(self.patterns)

    def resolve(
        self, text: str, raw: list[tuple[int, int, int]], norm: Normalized | None = None
    ) -> list[Match]:
        """Map raw automaton hits on ``normalize_text(text)`` back to spans of ``text``."""
        if norm is None:
            norm = normalize(text)
        out: list[Match] = []
        for idx, start, end in raw:
            p = self.patterns[idx]
            if p.entry is None:
                continue
            a, b = norm.original_span(start, end)
            if p.whole_word and not _whole_word(text, a, b):
                continue
            out.append(Match(p.entry, p.kind, p.text, a, b))
        return out

    def matches(self, text: str) -> list[Match]:
        """All matches of ``text``, with spans in ``text``."""
        norm = normalize(text)
        return self.resolve(text, self.find_raw(norm.text), norm)
