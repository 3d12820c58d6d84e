"""The compliance engine: pure (no I/O beyond its packaged data files).

``Checker`` is built once from lexicons and a policy; ``Checker.check(text, channel)`` returns a
``Report`` whose findings point at the original text. See ``docs/compliance.md``.
"""

from .engine import Checker, check, default_checker
from .lexicon import Entry, Lexicon, LexiconError, builtin, load_custom, parse_custom
from .links import LinkPolicy, TrackedLink, add_utm, extract, rewrite
from .normalize import Normalized, normalize, normalize_text
from .report import Finding, Policy, Report, render

__all__ = [
    "Checker",
    "Entry",
    "Finding",
    "Lexicon",
    "LexiconError",
    "LinkPolicy",
    "Normalized",
    "Policy",
    "Report",
    "TrackedLink",
    "add_utm",
    "builtin",
    "check",
    "default_checker",
    "extract",
    "load_custom",
    "normalize",
    "normalize_text",
    "parse_custom",
    "render",
    "rewrite",
]
