"""The public entry: a :class:`Checker` built once from lexicons and a policy, then ``check``.

Hot path (every message): :func:`normalize_text` inlined (a special-character test, the runs
between separators joined and lower-cased), one DFA automaton call, and a ``'.' in text`` test
for links.
Only a message with a hit or a dot pays for the offset map, link extraction and findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .lexicon import SEVERITIES, Lexicon, builtin
from .links import SUGGESTIONS, LinkPolicy, extract
from .matcher import Match, Matcher
from .normalize import normalize, normalize_text, warm_up
from .normalize import tables as normalize_tables
from .report import Finding, Policy, Report, Verdict

_LINK_SEVERITY = {
    "link_ip": "high",
    "link_unfiled": "high",
    "link_shortener": "medium",
    "link_domain": "low",
}
_CUSTOM_SUGGESTION = "删除或改写该词（工作区自定义词库）"


class Checker:
    """Compliance checker: immutable once built, safe to share between threads."""

    def __init__(
        self,
        lexicons: Sequence[Lexicon] | None = None,
        *,
        custom: Iterable[Lexicon] = (),
        policy: Policy | None = None,
        links: LinkPolicy | None = None,
    ) -> None:
        warm_up()
        self.lexicons: tuple[Lexicon, ...] = (
            *(builtin() if lexicons is None else lexicons),
            *custom,
        )
        self.policy = policy or Policy.builtin()
        self.links = links or LinkPolicy()
        self.matcher = Matcher(self.lexicons)
        self._suggestion = {lex.name: lex.suggestion for lex in self.lexicons if lex.suggestion}
        self._clean_verdicts: dict[str, Verdict] = dict.fromkeys(self.policy.channels, "pass")
        self._find = self.matcher.find_raw
        tables = normalize_tables()
        self._special, self._kept = tables.special.search, tables.kept.findall
        # Verdicts on every channel depend only on the set of categories found: a campaign's
        # flagged messages share a handful of sets, so compute each once (a dict per flagged
        # message over every channel was a quarter of a flagged message's cost).
        self._verdicts: dict[frozenset[str], dict[str, Verdict]] = {}

    def check(self, text: str, channel: str) -> Report:
        """Every finding in ``text`` and the verdict on ``channel`` (and on every channel)."""
        # normalize_text inlined (bound methods, no call): this line is most of the cost of a
        # clean message, and clean messages are most messages.
        special = self._special(text) is not None
        raw = self._find(normalize_text(text) if special else "".join(self._kept(text)).lower())
        if not raw and "." not in text and "．" not in text:
            if channel not in self._clean_verdicts:
                self.policy.check_channel(channel)
            return Report(text, channel, (), "pass", self._clean_verdicts)
        return self._full(text, channel, raw)

    def check_many(self, texts: Iterable[str], channel: str) -> list[Report]:
        """:meth:`check` for many messages (one loop, locals bound once)."""
        self.policy.check_channel(channel)
        find, norm, full, clean = self._find, normalize_text, self._full, self._clean_verdicts
        special, kept, join = self._special, self._kept, "".join
        out: list[Report] = []
        append = out.append
        for text in texts:
            raw = find(join(kept(text)).lower() if special(text) is None else norm(text))
            if not raw and "." not in text and "．" not in text:
                append(Report(text, channel, (), "pass", clean))
            else:
                append(full(text, channel, raw))
        return out

    def _full(self, text: str, channel: str, raw: list[tuple[int, int, int]]) -> Report:
        policy = self.policy
        findings: list[Finding] = []
        if raw:
            for m in self.matcher.resolve(text, raw, normalize(text)):
                findings.append(self._term_finding(text, channel, m))
        for link in extract(text):
            for issue in self.links.issues(link):
                findings.append(
                    Finding(
                        rule_id=f"{issue.kind}:{link.host}",
                        category=issue.kind,
                        severity=_LINK_SEVERITY[issue.kind],
                        action=policy.action(channel, issue.kind),
                        text=text[link.start : link.end],
                        start=link.start,
                        end=link.end,
                        entry=link.url,
                        matched_as="link",
                        suggestion=SUGGESTIONS[issue.kind],
                        detail=issue.detail,
                    )
                )
        return self._report(text, channel, findings)

    def _term_finding(self, text: str, channel: str, m: Match) -> Finding:
        e = m.entry
        return Finding(
            rule_id=f"{e.category}:{e.term}",
            category=e.category,
            severity=e.severity,
            action=self.policy.action(channel, e.category),
            text=text[m.start : m.end],
            start=m.start,
            end=m.end,
            entry=e.term,
            matched_as=m.kind,
            suggestion=self._suggestion.get(e.lexicon)
            or self._suggestion.get(e.category, _CUSTOM_SUGGESTION),
            lexicon=e.lexicon,
        )

    def _report(self, text: str, channel: str, findings: list[Finding]) -> Report:
        policy = self.policy
        if not findings:
            policy.check_channel(channel)
            return Report(text, channel, (), "pass", self._clean_verdicts)
        findings.sort(key=lambda f: (f.start, -SEVERITIES.index(f.severity)))
        cats = frozenset(f.category for f in findings)
        verdicts = self._verdicts.get(cats)
        if verdicts is None:
            verdicts = {ch: policy.verdict(ch, cats) for ch in policy.channels}
            if len(self._verdicts) < 4096:  # bounded: custom categories are few anyway
                self._verdicts[cats] = verdicts
        return Report(text, channel, tuple(findings), verdicts[channel], verdicts)

    def join_checker(self, left: str, right: str, channel: str) -> Callable[[str], Report | None]:
        """A check of values inserted between ``left`` and ``right`` (a template's literal text).

        The returned function takes a value and reports only the lexicon matches of
        ``left + value + right`` that **cross an edge of the value** (``全网最`` + ``佳`` →
        ``最佳``): a match wholly in the template or wholly in the value is found when each is
        checked on its own. A value that normalises to nothing (zero-width characters) joins
        ``left`` and ``right`` directly; a match across that join counts too. Overlapping matches
        are looked for (:meth:`Matcher.crossing`), so the template's own ``全网最`` does not hide
        ``最佳``. Spans in the report are in ``left + value + right``. ``None`` when nothing
        crosses — the common case: one normalisation of the value and one automaton call.
        Links are not looked at here (see ``docs/compliance.md``).
        """
        self.policy.check_channel(channel)
        ln, rn = normalize_text(left), normalize_text(right)
        a, vs = len(ln), len(left)
        find, norm = self.matcher.overlapping.find_matches_as_indexes, normalize_text
        patterns, crossing = self.matcher.patterns, self.matcher.crossing

        def check(value: str) -> Report | None:
            vn = norm(value)
            raw = find(ln + vn + rn, overlapping=True)
            if not raw:
                return None
            # Normalisation is per character, so normalised [a, b) is exactly the value's.
            b = a + len(vn)
            for idx, s, e in raw:
                if s < b and e > a and (s < a or e > b) and patterns[idx].entry is not None:
                    break
            else:
                return None
            text = left + value + right
            found = [
                self._term_finding(text, channel, m) for m in crossing(text, vs, vs + len(value))
            ]
            return self._report(text, channel, found) if found else None

        return check


_default: Checker | None = None


def default_checker() -> Checker:
    """A process-wide checker over the built-in lexicons and policy (built on first use)."""
    global _default
    if _default is None:
        _default = Checker()
    return _default


def check(text: str, channel: str) -> Report:
    """``default_checker().check(text, channel)``."""
    return default_checker().check(text, channel)
