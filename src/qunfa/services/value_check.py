"""The gate's check of a personalised campaign's *values* (docs/review.md, "Personalised values").

A template is checked once as text; what it will insert per person — names, cities, custom
attributes — is checked here against the same compliance lexicons, **set-based over the
audience and by distinct value**: a million recipients share a few hundred cities, so each city
is checked once; names are many but still far fewer than people, and are decrypted in one
streamed pass (``Keyring.decrypt_many``).

- Which variables: only those the content's per-person fields read (``{{ name }}``,
  ``{{ city }}``, ``{{ attrs.level }}`` …); a campaign without per-person variables costs one
  cached parse.
- Whose values: the campaign's ledger once planned; before, the contacts behind the account's
  subscribed identities of the channel's recipient kind (narrowed by the tag for ``tag:``) — the
  same upper bound the approval threshold uses, so nobody who could receive it is skipped.
- One ``GROUP BY`` per column or attribute (value and how many contacts have it); names one
  streamed ``SELECT`` of ``name_enc``.

A finding on a value is reported like a field's, under ``values.<variable>``, with how many
recipients carry the value. Names are personal data: the report keeps only the matched part
and a masked name (``张*``), never the whole name.

A term can also be split between the template's text and a value (``全网最{{ attrs.word }}``
with ``佳``). Each slot's literal text either side (:func:`template_slots`, cut to the longest
lexicon pattern) is joined to every distinct value (:func:`joins`,
``Checker.join_checker``); only matches that cross an edge of the value are reported, with
the slot's variable, field and position (``joined``). Still one pass over the distinct values.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError, nodes
from sqlalchemy import Select, func, select

from qunfa.compliance.normalize import normalize, normalize_text
from qunfa.content.templating import ATTRS, CONTACT_FIELDS, ENV
from qunfa.domain.audience import AudienceError, parse_audience
from qunfa.services.personalise import person_fields
from qunfa.storage.models import Contact, Delivery, Identity, IdentityTag, Tag

if TYPE_CHECKING:
    from qunfa.bootstrap import Container
    from qunfa.compliance import Checker, Report
    from qunfa.storage.models import Campaign

NAME = "name"
#: Filters after which the inserted text has the value's characters (as the normaliser sees
#: them: case and surrounding spaces do not count). Any other filter is applied to each
#: distinct value before joining (``{{ name|first }}`` inserts one character, not the name).
_PLAIN_FILTERS = frozenset(
    {"default", "d", "upper", "lower", "title", "capitalize", "trim", "string"}
)


@dataclass
class ValueCheck:
    """What the value check found: report entries per variable and the figures."""

    fields: list[dict[str, Any]] = field(default_factory=list)  # like the check's "fields"
    variables: list[str] = field(default_factory=list)
    contacts: int = 0
    distinct: dict[str, int] = field(default_factory=dict)  # variable → distinct values
    joins: int = 0  # slots with template text beside them, each value checked joined to it
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "variables": self.variables,
            "contacts": self.contacts,
            "distinct": self.distinct,
            "joins": self.joins,
            "seconds": round(self.seconds, 3),
            "flagged": len(self.fields),
        }


def variables_read(content: Mapping[str, Any], channel: str) -> list[str]:
    """The per-person variables the content's fields read: ``name``, ``city``, ``attrs.level``."""
    found: set[str] = set()
    for _, text in person_fields(content, channel):
        try:
            tree = ENV.parse(text)
        except TemplateSyntaxError:
            continue
        for n in tree.find_all(nodes.Name):
            if n.ctx == "load" and n.name in CONTACT_FIELDS:
                found.add(n.name)
        for g in tree.find_all(nodes.Getattr):
            if isinstance(g.node, nodes.Name) and g.node.name == ATTRS:
                found.add(f"{ATTRS}.{g.attr}")
        for gi in tree.find_all(nodes.Getitem):
            if (
                isinstance(gi.node, nodes.Name)
                and gi.node.name == ATTRS
                and isinstance(gi.arg, nodes.Const)
                and isinstance(gi.arg.value, str)
            ):
                found.add(f"{ATTRS}.{gi.arg.value}")
    return sorted(found)


@dataclass(frozen=True)
class Slot:
    """One place a template inserts a per-person value, with the literal text around it.

    ``before``/``after`` are the template's literal text as rendered right before and after the
    slot, up to the nearest tag (``{% … %}``), other expression or slot, or the template's edge:
    a comment is skipped (it renders nothing), a ``{% raw %}`` block is literal text.
    """

    variable: str  # "name", "city", "attrs.word"
    position: int | None  # offset of the slot's "{{" in the template (None: not traceable)
    before: str
    after: str
    expression: str  # the slot's expression source, filters included
    default: str | None = None  # the literal of a default(...) filter: rendered without a value
    plain: bool = True  # only _PLAIN_FILTERS: the inserted text is the value itself


def _slot_variable(expr: str) -> tuple[str, str | None, bool] | None:
    """(variable, default literal, plain) of a ``{{ … }}`` expression reading one per-person
    variable (through filters only); ``None`` for any other expression."""
    try:
        body = ENV.parse("{{ " + expr + " }}").body
    except TemplateSyntaxError:
        return None
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    node = body[0].nodes[0]
    default: str | None = None
    plain = True
    while isinstance(node, nodes.Filter):
        if node.name in ("default", "d") and node.args:
            arg = node.args[0]
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                default = arg.value
        plain = plain and node.name in _PLAIN_FILTERS
        node = node.node  # type: ignore[assignment]
    if isinstance(node, nodes.Name) and node.name in CONTACT_FIELDS:
        return node.name, default, plain
    if (
        isinstance(node, nodes.Getattr)
        and isinstance(node.node, nodes.Name)
        and node.node.name == ATTRS
    ):
        return f"{ATTRS}.{node.attr}", default, plain
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == ATTRS
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return f"{ATTRS}.{node.arg.value}", default, plain
    return None


@lru_cache(maxsize=1024)
def template_slots(text: str) -> tuple[Slot, ...]:
    """The per-person slots of a template with the literal text either side (cached per source).

    Read from Jinja2's token stream, whose values are the rendered literals (whitespace control
    ``{{-`` already applied); positions are found by searching each token in the source in
    order, and become ``None`` from the first token that cannot be found (``\\r\\n`` folded).
    """
    try:
        tokens = list(ENV.lex(text))
    except TemplateSyntaxError:
        return ()
    # The rendered sequence: literal strings, slots, and None for "something else renders here".
    parts: list[str | tuple[str, str | None, bool, str, int | None] | None] = []
    offset: int | None = 0
    expr: list[str] = []
    start: int | None = None
    mode = ""  # "", "var", "block", "comment"
    for _, kind, value in tokens:
        pos: int | None = None
        if offset is not None:
            source = value
            found = text.find(source, offset) if source else offset
            if found < 0 and "\n" in value:
                source = value.replace("\n", "\r\n")  # the lexer folds line ends
                found = text.find(source, offset)
            pos, offset = (None, None) if found < 0 else (found, found + len(source))
        if mode == "var":
            if kind == "variable_end":
                slot = _slot_variable("".join(expr))
                parts.append(None if slot is None else (*slot, "".join(expr).strip(), start))
                mode = ""
            else:
                expr.append(value)
        elif mode == "block":
            if kind == "block_end":
                parts.append(None)
                mode = ""
        elif mode == "comment":
            if kind == "comment_end":
                mode = ""
        elif kind == "data":
            parts.append(value)
        elif kind == "variable_begin":
            mode, expr, start = "var", [], pos
        elif kind == "block_begin":
            mode = "block"
        elif kind == "comment_begin":
            mode = "comment"
        elif kind not in ("raw_begin", "raw_end"):
            parts.append(None)  # line statements and the like: a boundary

    def literal(indexes: Iterable[int]) -> list[str]:
        out: list[str] = []
        for j in indexes:
            part = parts[j]
            if not isinstance(part, str):
                break
            out.append(part)
        return out

    slots: list[Slot] = []
    for i, part in enumerate(parts):
        if isinstance(part, tuple):
            variable, default, plain, source, position = part
            before = "".join(reversed(literal(range(i - 1, -1, -1))))
            after = "".join(literal(range(i + 1, len(parts))))
            slots.append(Slot(variable, position, before, after, source, default, plain))
    return tuple(slots)


@dataclass
class _Join:
    """A slot's context, cut to what a lexicon match touching the value can reach."""

    variable: str
    left: str
    right: str
    check: Callable[[str], Report | None]
    expression: str
    plain: bool
    defaults: set[str] = field(default_factory=set)
    where: list[dict[str, Any]] = field(default_factory=list)  # [{"field", "position"}]


def _context(text: str, width: int, *, tail: bool) -> str:
    """The part of ``text`` that normalises to its last (``tail``) or first ``width`` characters."""
    norm = normalize(text)
    if len(norm.text) <= width:
        return text
    if tail:
        return text[norm.origin[len(norm.text) - width] :]
    return text[: norm.origin[width - 1] + 1]


def joins(content: Mapping[str, Any], channel: str, checker: Checker) -> list[_Join]:
    """Every slot with literal text beside it, one per (variable, context, expression).

    Context: the longest lexicon pattern's length in normalised characters on each side — one
    more than a match touching the value can use, so that the character beyond a Latin match
    is seen by the whole-word test.
    """
    width = checker.matcher.longest
    out: dict[tuple[str, str, str, str], _Join] = {}
    for path, text in person_fields(content, channel):
        dotted = ".".join(str(p) for p in path)
        for slot in template_slots(text):
            left = _context(slot.before, width, tail=True)
            right = _context(slot.after, width, tail=False)
            key = (slot.variable, left, right, slot.expression if not slot.plain else "")
            j = out.get(key)
            if j is None:
                if not normalize_text(left) and not normalize_text(right):
                    continue  # nothing beside the value: its own check covers it
                j = out[key] = _Join(
                    slot.variable,
                    left,
                    right,
                    checker.join_checker(left, right, channel),
                    slot.expression,
                    slot.plain,
                )
            if slot.default is not None:
                j.defaults.add(slot.default)
            j.where.append({"field": dotted, "position": slot.position})
    return list(out.values())


def audience_contacts(c: Container, camp: Campaign, recipient_kind: str) -> Select[Any]:
    """A SELECT of the contact ids that may receive ``camp`` (see the module docstring)."""
    if camp.planned_count:
        return select(Delivery.contact_id).where(Delivery.campaign_id == camp.id)
    stmt = select(Identity.contact_id).where(
        Identity.account_id == camp.account_id,
        Identity.kind == recipient_kind,
        Identity.subscribed.is_(True),
    )
    try:
        aud = parse_audience(camp.audience)
    except AudienceError:
        aud = None
    if aud is not None and aud.kind == "tag":
        stmt = (
            stmt.join(IdentityTag, IdentityTag.identity_id == Identity.id)
            .join(Tag, Tag.id == IdentityTag.tag_id)
            .where(Tag.account_id == camp.account_id, Tag.name == aud.tag)
        )
    return stmt


def _mask(name: str) -> str:
    return name[:1] + "*" * max(1, len(name) - 1) if name else ""


def distinct_values(
    c: Container, variable: str, contacts: Select[Any]
) -> Iterable[tuple[str, int]]:
    """(value, how many contacts have it) for one variable over the audience."""
    ids = contacts.subquery()
    in_audience = Contact.id.in_(select(ids.c[0]))
    if variable == NAME:
        names: Counter[str] = Counter()
        stmt = select(Contact.name_enc).where(in_audience, Contact.name_enc.is_not(None))
        with c.engine.connect() as conn:
            # The DBAPI cursor itself: a million Row objects cost more than decrypting them.
            # (No stream_results: its buffered strategy pre-fetches rows the cursor then lacks.)
            result = conn.execute(stmt)
            cursor = result.cursor
            while part := cursor.fetchmany(20_000):
                names.update(c.keyring.decrypt_many([bytes(b) for (b,) in part if b]))
            result.close()
        return names.items()
    if variable.startswith(f"{ATTRS}."):
        column: Any = Contact.attrs[variable.partition(".")[2]].as_string()
    else:
        column = getattr(Contact, variable)
    stmt2 = select(column, func.count()).where(in_audience).group_by(column)
    with c.engine.connect() as conn:
        return [(str(v), int(n)) for v, n in conn.execute(stmt2) if v not in (None, "")]


def check_values(
    c: Container,
    camp: Campaign,
    content: Mapping[str, Any],
    checker: Checker,
    recipient_kind: str,
) -> ValueCheck:
    """Check every distinct value the campaign's templates will insert, on its channel."""
    t0 = time.perf_counter()
    out = ValueCheck(variables=variables_read(content, camp.channel))
    if not out.variables:
        return out
    contacts = audience_contacts(c, camp, recipient_kind)
    with c.engine.connect() as conn:
        sub = contacts.subquery()
        out.contacts = int(conn.scalar(select(func.count(func.distinct(sub.c[0])))) or 0)
    check = checker.check
    slots = joins(content, camp.channel, checker)
    out.joins = len(slots)
    for variable in out.variables:
        values = list(distinct_values(c, variable, contacts))
        out.distinct[variable] = len(values)
        for value, count in values:
            report = check(value, camp.channel)
            if not report.findings:
                continue
            shown = _mask(value) if variable == NAME else value
            findings = report.to_dict()["findings"]
            if variable == NAME:  # keep the matched part only, never the whole name
                for f in findings:
                    f["text"] = value[f["start"] : f["end"]]
            out.fields.append(
                {
                    "path": f"values.{variable}",
                    "text": shown,
                    "verdict": report.verdict,
                    "recipients": count,
                    "findings": findings,
                }
            )
        # Then joined to the template's text beside each slot: a term split between the two.
        for j in slots:
            if j.variable == variable:
                out.fields += _check_joined(j, values, out.contacts)
    out.seconds = time.perf_counter() - t0
    return out


def _check_joined(j: _Join, values: list[tuple[str, int]], contacts: int) -> list[dict[str, Any]]:
    """Each distinct value (and a default's literal) joined to the slot's template text."""
    render: Callable[[str], str] | None = None
    if not j.plain:  # a filter that changes the text: insert what it renders
        compiled = ENV.compile_expression(j.expression)
        key = j.variable.partition(".")[2]

        def render(value: str) -> str:
            ctx = {ATTRS: {key: value}} if key else {j.variable: value}
            try:
                return str(compiled(**ctx))
            except Exception:  # whatever the filter does, the raw value is the fallback
                return value

    out: list[dict[str, Any]] = []
    check = j.check
    for value, count in values:
        inserted = value if render is None else render(value)
        report = check(inserted)
        if report is not None:
            out.append(_joined_entry(j, report, inserted, count, masked=j.variable == NAME))
    without = max(0, contacts - sum(n for v, n in values if v))  # they get the default
    for literal in sorted(j.defaults):
        report = check(literal)
        if report is not None:
            out.append(_joined_entry(j, report, literal, without, masked=False, default=True))
    return out


def _joined_entry(
    j: _Join, report: Report, value: str, count: int, *, masked: bool, default: bool = False
) -> dict[str, Any]:
    """A report entry for a value that forms a lexicon term with the template text beside it."""
    left = len(j.left)
    # Same length as the value, so the findings' spans stay true in the shown text.
    shown = (value[:1] + "*" * (len(value) - 1) if len(value) > 1 else "*") if masked else value
    slot = "{{ " + j.expression + " }}"
    findings = report.to_dict()["findings"]
    for f in findings:
        f["suggestion"] = (
            f"模板中 {slot} 两侧的文字与该值拼接成“{f['entry']}”：改写模板这一处的文字，"
            f"或修改该值（{f['suggestion']}）"
        )
    return {
        "path": f"values.{j.variable}",
        "text": report.text[:left] + shown + report.text[left + len(value) :],
        "verdict": report.verdict,
        "recipients": count,
        "findings": findings,
        "joined": {
            "variable": j.variable,
            "slot": slot,
            "value": _mask(value) if masked else value,
            "default": default,
            "at": j.where,
            # Where the (masked) value sits in "text", so a reader can mark it apart from the
            # template's text (the CLI brackets it); the rest is the template's.
            "span": [left, left + len(shown)],
        },
    }
