"""Compile a segment AST (:mod:`qunfa.domain.segments`) to one SQL statement.

The result is a SQLAlchemy Core ``Select`` of ``contacts.id`` (or of identity ids, see
:func:`segment_identities`) that runs unchanged on SQLite and PostgreSQL. Nothing is evaluated
row by row in Python: every condition becomes a predicate on the ``contacts`` row — a column
comparison, or membership of ``contacts.id`` in a set of contact ids read from the table that
holds the data — and ``and`` / ``or`` / ``not`` become SQL's. Contacts merged into another
(``merged_into`` set) are never in a segment.

What each function and attribute means in SQL is the table :data:`FUNCTION_SQL` /
:data:`ATTRIBUTE_SQL` below (and ``docs/segments.md``). An attribute is one of

* a builder ``ctx -> column expression`` on the contacts row (``city``): comparisons and ``in``
  are compiled generically from it;
* :class:`Related`, a column of a table keyed by contact id (``contact_facts.device``): a
  comparison becomes membership in the set of contacts whose row satisfies it;
* :class:`Comparer`, a builder of the whole comparison (``age``, compiled to a comparison of
  the birthday string with a cut-off date);
* :class:`Unavailable`: compiling a segment that uses it raises :class:`SegmentError` (a
  segment is never silently true or false).

A missing value (NULL, or no row) never matches a comparison, so ``not city == "上海"``
includes people whose city is unknown.

Times are epoch seconds; ``now`` is a bound parameter, never the database's clock, so a
planned campaign's snapshot and its preview agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeAlias

from sqlalchemy import (
    BindParameter,
    Boolean,
    ColumnElement,
    Connection,
    Executable,
    Float,
    FromClause,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from qunfa.domain.segments import (
    ATTRIBUTES,
    FUNCTIONS,
    And,
    Arg,
    Call,
    Compare,
    Duration,
    In,
    Node,
    Not,
    Or,
    SegmentError,
    Value,
    validate,
)
from qunfa.storage.consent_sql import opted_out_sql
from qunfa.storage.models import (
    Contact,
    ContactAccountTag,
    ContactFacts,
    ContactTag,
    Delivery,
    Identity,
    PersonEvent,
    Tag,
)

contacts: Table = Contact.__table__  # type: ignore[assignment]
identities: Table = Identity.__table__  # type: ignore[assignment]
tags: Table = Tag.__table__  # type: ignore[assignment]
contact_account_tags: Table = ContactAccountTag.__table__  # type: ignore[assignment]
contact_tags: Table = ContactTag.__table__  # type: ignore[assignment]
contact_facts: Table = ContactFacts.__table__  # type: ignore[assignment]
person_events: Table = PersonEvent.__table__  # type: ignore[assignment]

# Birthdays turn over at midnight China Standard Time (the platforms' and the users' home).
AGE_TIMEZONE = timezone(timedelta(hours=8))


@dataclass(frozen=True)
class CompileContext:
    """What a builder may use: the account scope, the time, the outer contact id column."""

    account_id: int | None
    now: float

    @property
    def contact_id(self) -> ColumnElement[int]:
        return contacts.c.id

    @property
    def today(self) -> date:
        """The calendar date of ``now`` where ages are counted (:data:`AGE_TIMEZONE`)."""
        return datetime.fromtimestamp(self.now, AGE_TIMEZONE).date()


@dataclass(frozen=True)
class Unavailable:
    """A function or attribute of the language whose data the schema does not hold yet."""

    needs: str  # what has to exist first, shown in the error


@dataclass(frozen=True)
class Related:
    """An attribute held in another table, one row per contact (``contact_facts``).

    ``device == "ios"`` compiles to "the contact is among the ``contact_id`` of the rows whose
    ``device = 'ios'``": a set the database builds once (SQLite) or joins (PostgreSQL),
    instead of a lookup per contact; a contact without a row has no value.
    """

    table: Table
    column: str
    key: str = "contact_id"


@dataclass(frozen=True)
class Comparer:
    """An attribute that compiles its own comparison: ``(ctx, op, value) -> predicate``.

    ``in`` is the ``or`` of ``==`` for each value.
    """

    compare: Callable[[CompileContext, str, Value], ColumnElement[bool]]


FunctionBuilder: TypeAlias = Callable[[CompileContext, tuple[Arg, ...]], ColumnElement[bool]]
AttributeBuilder: TypeAlias = Callable[[CompileContext], ColumnElement[Any]]
AttributeSql: TypeAlias = AttributeBuilder | Related | Comparer | Unavailable


# --- membership: "contacts.id is in this set of contact ids" --------------------------------------


class Member(ColumnElement[bool]):
    """``contacts.id`` belongs to the contact ids a one-column ``SELECT`` returns.

    Rendered per database, because the fastest spelling differs:

    * SQLite: ``contacts.id IN (SELECT …)``. The subquery runs once into a temporary index;
      when it is the most selective term SQLite drives the whole query from it, seeking
      contacts by rowid. A correlated ``EXISTS`` would run once per contact instead.
    * PostgreSQL: ``EXISTS (SELECT 1 FROM (SELECT …) m WHERE m.contact_id = contacts.id)``.
      Under ``and`` it becomes a hash semi-join (``not``: anti-join), like ``IN``; under
      ``or`` it stays an index probe per row. ``IN`` there would become a hashed SubPlan
      only while the set fits ``work_mem`` and otherwise rescan the set for every contact.
    """

    type = Boolean()
    inherit_cache = False  # holds statements; compiled fresh each time (values are bound)

    def __init__(self, ids: Select[Any]) -> None:
        self.ids = ids

    def as_in(self) -> ColumnElement[bool]:
        return contacts.c.id.in_(self.ids)

    def as_exists(self) -> ColumnElement[bool]:
        m = self.ids.subquery("m")
        key = next(iter(m.c))
        return select(literal(1)).select_from(m).where(key == contacts.c.id).exists()


@compiles(Member)
def _member_default(element: Member, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.as_in(), **kw)


@compiles(Member, "postgresql")
def _member_pg(element: Member, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.as_exists(), **kw)


class ByDialect(ColumnElement[bool]):
    """One predicate spelt two ways: ``postgresql`` there, ``default`` elsewhere (SQLite).

    Both spellings select the same contacts; they differ only in what each planner handles
    well (see :func:`_tag` and :func:`_active_since`).
    """

    type = Boolean()
    inherit_cache = False
    _is_implicitly_boolean = True  # already a truth value: no "= 1" on SQLite

    def __init__(self, default: ColumnElement[bool], postgresql: ColumnElement[bool]) -> None:
        self.default = default
        self.postgresql = postgresql


@compiles(ByDialect)
def _by_dialect_default(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.default, **kw) + ")"  # may be an OR


@compiles(ByDialect, "postgresql")
def _by_dialect_pg(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.postgresql, **kw) + ")"


# --- functions ----------------------------------------------------------------------------------


# Subqueries use their own aliases, so they stay correct when the outer query also reads the
# same tables (see :func:`segment_identities`).
_i = identities.alias("seg_i")
_cat = contact_account_tags.alias("seg_cat")
_t = tags.alias("seg_t")
_ct = contact_tags.alias("seg_ct")
_f = contact_facts.alias("seg_f")
_e = person_events.alias("seg_e")


def _bind(value: Any) -> BindParameter[Any]:
    return bindparam(None, value)


def _tag(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """The person carries the tag: an account tag at person level (``contact_account_tags``:
    one of their identities has it) or qunfa's own account-less tag (``contact_tags``).

    Scoped to an account, account tags count only on that account; qunfa's own tags always
    count. Both halves are one primary-key range from the tag (``(tag_id, contact_id)``), so
    the cost follows the tag's size, not the number of contacts or identities.

    PostgreSQL: ``UNION``, not ``UNION ALL``: it has no statistics for the output of ``UNION
    ALL`` and estimates its distinct ids at 200, so it de-duplicated a 1M-id tag and probed
    ``contacts`` by primary key 1M times (15.7 s on 10M contacts); after a ``UNION`` it knows
    the set's size and hash-joins it with the other terms (``docs/performance.md``). SQLite
    keeps ``UNION ALL`` (``IN`` de-duplicates anyway; ``UNION`` adds a temporary b-tree).
    """
    name = _bind(args[0])
    account_tags = select(_t.c.id).where(_t.c.name == name, _t.c.account_id.is_not(None))
    if ctx.account_id is not None:
        account_tags = account_tags.where(_t.c.account_id == _bind(ctx.account_id))
    own_tags = select(_t.c.id).where(_t.c.name == name, _t.c.account_id.is_(None))
    via_identity = select(_cat.c.contact_id).where(_cat.c.tag_id.in_(account_tags))
    direct = select(_ct.c.contact_id).where(_ct.c.tag_id.in_(own_tags))
    return ByDialect(
        default=Member(select(union_all(via_identity, direct).subquery("tagged").c.contact_id)),
        postgresql=Member(select(union(via_identity, direct).subquery("tagged").c.contact_id)),
    )


def _has_identity(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """A subscribed identity of that kind; scoped: on the account, or account-less (phone …)."""
    cond = [_i.c.kind == _bind(args[0]), _i.c.subscribed == true()]
    if ctx.account_id is not None:
        cond.append(or_(_i.c.account_id == _bind(ctx.account_id), _i.c.account_id.is_(None)))
    return Member(select(_i.c.contact_id).where(*cond))


def _cutoff(ctx: CompileContext, period: Arg) -> BindParameter[float]:
    assert isinstance(period, Duration)  # validated
    return _bind(ctx.now - period.seconds)


def _registered_since(cut: ColumnElement[Any], table: FromClause = contacts) -> ColumnElement[bool]:
    """Registered at or after ``cut``: ``registered_at``, or ``created_at`` when unknown.

    Spelt as an ``or`` rather than ``coalesce`` so ``ix_contacts_registered`` stays usable;
    each arm tests for NULL first so the result is never NULL (``not`` of it stays exact).
    ``table``: ``contacts`` (the outer row) or an alias of it (inside a subquery).
    """
    registered = table.c.registered_at
    return or_(
        and_(registered.is_not(None), registered >= cut),
        and_(registered.is_(None), table.c.created_at >= cut),
    )


def _registered_within(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    return _registered_since(_cutoff(ctx, args[0]))


def _active_since(cut: ColumnElement[Any]) -> ColumnElement[bool]:
    """Interacted at or after ``cut``: ``contacts.active_at >= cut``.

    ``active_at`` is generated by the database (migration 0006) as
    ``max(last_interaction_at, coalesce(registered_at, created_at))``: the last interaction
    (``contact_facts.last_interaction_at``, copied onto the row by triggers), and registering
    counts as one — a person qunfa holds no facts for yet (just followed, just imported) is
    active as of registering, not inactive forever. Never NULL (``created_at`` is not), so
    ``not`` of it is exact. One range of ``ix_contacts_active`` on both databases; before,
    this was facts ∪ registered, a 2.4M-id set on the 10M bench (``docs/performance.md``).
    """
    return contacts.c.active_at >= cut


def _last_active_within(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    return _active_since(_cutoff(ctx, args[0]))


def _said(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """A ``message`` event from the person within the period whose text contains the text.

    Case-insensitive for Latin letters (``lower`` on both sides; ``%``/``_`` in the text are
    matched literally). Served by ``ix_person_events_at`` (the period) — see the docs for the
    trigram index we would add on PostgreSQL if message volume grows.
    """
    text_arg = args[0]
    assert isinstance(text_arg, str)
    return Member(
        select(_e.c.contact_id).where(
            _e.c.kind == "message",
            _e.c.at >= _cutoff(ctx, args[1]),
            func.lower(_e.c.text).contains(text_arg.lower(), autoescape=True),
        )
    )


def _fact(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """The person's facts row satisfies ``condition``."""
    return Member(select(_f.c.contact_id).where(condition))


NEW_WITHIN = Duration(7, "d")
SILENT_FOR = Duration(30, "d")


def _layer(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """The built-in layers (coordinated with the facts/RFM job that fills ``contact_facts``).

    new: registered within 7 days and not converted · silent: no interaction for 30 days
    (``not last_active_within(30d)``) · high_value: top 20 % by three-month spend
    (``rfm_m = 5``, the fifth quintile) · ios / android: ``contact_facts.device``.
    """
    name = args[0]
    if name == "new":
        converted = _fact(_f.c.converted == true())
        return and_(_registered_since(_bind(ctx.now - NEW_WITHIN.seconds)), not_(converted))
    if name == "silent":
        return not_(_active_since(_bind(ctx.now - SILENT_FOR.seconds)))
    if name == "high_value":
        return _fact(_f.c.rfm_m == 5)
    if name in ("ios", "android"):
        return _fact(_f.c.device == _bind(name))
    raise SegmentError(f"unknown layer {name!r}")  # pragma: no cover - validated


FUNCTION_SQL: dict[str, FunctionBuilder | Unavailable] = {
    "tag": _tag,
    "has_identity": _has_identity,
    "last_active_within": _last_active_within,
    "registered_within": _registered_within,
    "opted_out": opted_out_sql,  # suppressions or a withdrawn ledger entry (consent_sql)
    "said": _said,
    "layer": _layer,
}


# --- attributes ---------------------------------------------------------------------------------


def _years_before(day: date, years: int) -> str:
    """``day`` moved back ``years`` years, as YYYY-MM-DD; 29 February becomes the 28th.

    Out-of-range years clamp to strings below / above every real date.
    """
    y = day.year - years
    if y < 1:
        return "0000-00-00"
    if y > 9999:
        return "9999-99-99"
    d = day.day
    if day.month == 2 and d == 29 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        d = 28
    return f"{y:04d}-{day.month:02d}-{d:02d}"


def _age(ctx: CompileContext, op: str, value: Value) -> ColumnElement[bool]:
    """``age op n`` as a comparison of ``birthday`` (YYYY-MM-DD text) with a cut-off date.

    Someone is at least ``n`` on ``today`` iff born on or before today minus ``n`` years
    (``C(n)``), so: ``age >= n`` ⇔ ``birthday <= C(n)``, ``age < n`` ⇔ ``birthday > C(n)``,
    ``age == n`` ⇔ ``C(n+1) < birthday <= C(n)``. ISO dates order as strings, so this is an
    index-friendly range on both databases, with no date functions.
    """
    assert isinstance(value, int)  # validated: age is a whole number
    b = contacts.c.birthday
    today = ctx.today

    def at_least(n: int) -> ColumnElement[bool]:
        return b <= _bind(_years_before(today, n))

    def below(n: int) -> ColumnElement[bool]:
        return b > _bind(_years_before(today, n))

    match op:
        case ">=":
            cond = at_least(value)
        case ">":
            cond = at_least(value + 1)
        case "<":
            cond = below(value)
        case "<=":
            cond = below(value + 1)
        case "==":
            cond = and_(at_least(value), below(value + 1))
        case "!=":
            cond = not_(and_(at_least(value), below(value + 1)))
        case _:  # pragma: no cover - validated
            raise SegmentError(f"unknown comparison {op!r}")
    return and_(b.is_not(None), cond)


ATTRIBUTE_SQL: dict[str, AttributeSql] = {
    "city": lambda ctx: contacts.c.city,
    "province": lambda ctx: contacts.c.province,
    "gender": lambda ctx: contacts.c.gender,
    "age": Comparer(_age),
    "device": Related(contact_facts, "device"),
    "spend_3m": Related(contact_facts, "spend_3m"),
    "rfm_segment": Related(contact_facts, "rfm_segment"),
    "interactions_7d": Related(contact_facts, "interactions_7d"),
}

assert set(FUNCTION_SQL) == set(FUNCTIONS), "every function of the language needs an SQL entry"
assert set(ATTRIBUTE_SQL) == set(ATTRIBUTES), "every attribute of the language needs an SQL entry"


# --- the compiler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    functions: dict[str, FunctionBuilder | Unavailable]
    attributes: dict[str, AttributeSql]


def _unavailable(kind: str, name: str, entry: Unavailable, col: int) -> SegmentError:
    return SegmentError(
        f"{kind} '{name}' is not available yet: it needs {entry.needs}; "
        "segments that use it cannot be evaluated",
        col or None,
    )


def _attribute(name: str, col: int, t: _Tables) -> AttributeBuilder | Related | Comparer:
    entry = t.attributes.get(name)
    if entry is None:
        raise SegmentError(f"attribute '{name}' has no SQL mapping", col or None)
    if isinstance(entry, Unavailable):
        raise _unavailable("attribute", name, entry, col)
    return entry


def _compare(column: ColumnElement[Any], op: str, value: Value) -> ColumnElement[bool]:
    bound: BindParameter[Any] = _bind(value)
    match op:
        case "==":
            return column == bound
        case "!=":
            return column != bound
        case "<":
            return column < bound
        case "<=":
            return column <= bound
        case ">":
            return column > bound
        case ">=":
            return column >= bound
    raise SegmentError(f"unknown comparison {op!r}")  # pragma: no cover - validated


def _test(
    entry: AttributeBuilder | Related | Comparer,
    ctx: CompileContext,
    cond: Callable[[ColumnElement[Any]], ColumnElement[bool]],
    values: list[tuple[str, Value]],
) -> ColumnElement[bool]:
    """One comparison or ``in`` on an attribute, whichever kind of attribute it is."""
    if isinstance(entry, Comparer):
        return or_(*(entry.compare(ctx, op, v) for op, v in values))
    if isinstance(entry, Related):
        rel = entry.table.alias(f"seg_{entry.table.name}")
        related = rel.c[entry.column]
        return Member(select(rel.c[entry.key]).where(related.is_not(None), cond(related)))
    column = entry(ctx)
    # Two-valued logic: a missing value (NULL) makes the comparison false, not unknown, so
    # that 'not' of it is true.
    return and_(column.is_not(None), cond(column))


def _predicate(node: Node, ctx: CompileContext, t: _Tables) -> ColumnElement[bool]:
    if isinstance(node, Call):
        fn = t.functions.get(node.name)
        if fn is None:
            raise SegmentError(f"function '{node.name}' has no SQL mapping", node.col or None)
        if isinstance(fn, Unavailable):
            raise _unavailable("function", node.name, fn, node.col)
        return fn(ctx, node.args)
    if isinstance(node, Compare):
        entry = _attribute(node.attr, node.col, t)
        op, value = node.op, node.value
        return _test(entry, ctx, lambda c: _compare(c, op, value), [(op, value)])
    if isinstance(node, In):
        entry = _attribute(node.attr, node.col, t)
        values = list(node.values)
        return _test(entry, ctx, lambda c: c.in_(values), [("==", v) for v in values])
    if isinstance(node, Not):
        return not_(_predicate(node.operand, ctx, t))
    if isinstance(node, And):
        return and_(*(_predicate(c, ctx, t) for c in node.operands))
    if isinstance(node, Or):
        return or_(*(_predicate(c, ctx, t) for c in node.operands))
    raise SegmentError(f"not a segment node: {type(node).__name__}")  # pragma: no cover


def segment_predicate(
    ast: Node,
    *,
    account_id: int | None,
    now: float | None = None,
    functions: dict[str, FunctionBuilder | Unavailable] | None = None,
    attributes: dict[str, AttributeSql] | None = None,
) -> ColumnElement[bool]:
    """The segment as a boolean SQL expression over the ``contacts`` row.

    Includes ``contacts.merged_into IS NULL``. ``functions`` / ``attributes`` override the
    module tables (tests, or plugging in data).
    """
    validate(ast)
    ctx = CompileContext(account_id, time.time() if now is None else now)
    t = _Tables(
        FUNCTION_SQL if functions is None else functions,
        ATTRIBUTE_SQL if attributes is None else attributes,
    )
    # Merged-away contacts are folded into their survivor: never in any segment (also not
    # in 'not …'), so the survivor is addressed once.
    return and_(contacts.c.merged_into.is_(None), _predicate(ast, ctx, t))


def compile_segment(
    ast: Node,
    *,
    account_id: int | None,
    now: float | None = None,
    functions: dict[str, FunctionBuilder | Unavailable] | None = None,
    attributes: dict[str, AttributeSql] | None = None,
) -> Select[int]:
    """One ``SELECT contacts.id FROM contacts WHERE <segment>``, ordered by id.

    ``account_id`` scopes tag and identity lookups to that account; ``now`` (epoch seconds,
    default: the current time) anchors ``…_within`` durations.
    """
    where = segment_predicate(
        ast, account_id=account_id, now=now, functions=functions, attributes=attributes
    )
    return select(contacts.c.id).where(where).order_by(contacts.c.id)


def segment_identities(
    ast: Node,
    *,
    account_id: int,
    kind: str,
    now: float | None = None,
) -> Select[int, int]:
    """``(identity id, contact id)`` of the subscribed identities of one kind on one account
    whose person is in the segment: what a campaign on that account would address."""
    where = segment_predicate(ast, account_id=account_id, now=now)
    return (
        select(identities.c.id, identities.c.contact_id)
        .select_from(identities.join(contacts, contacts.c.id == identities.c.contact_id))
        .where(
            identities.c.account_id == account_id,
            identities.c.kind == kind,
            identities.c.subscribed == true(),
            where,
        )
        .order_by(identities.c.id)
    )


def count_segment(
    conn: Connection, ast: Node, account_id: int | None, now: float | None = None
) -> int:
    """How many contacts the segment holds: one ``SELECT count(*)`` statement."""
    where = segment_predicate(ast, account_id=account_id, now=now)
    stmt = select(func.count()).select_from(contacts).where(where)
    return int(conn.execute(stmt).scalar_one())


def count_and_sample(
    conn: Connection, ast: Node, account_id: int | None, now: float, sample: int = 10
) -> tuple[int, list[int]]:
    """The preview: the count (one ``SELECT count(*)``) and the first ``sample`` contact ids."""
    n = count_segment(conn, ast, account_id, now)
    ids: list[int] = []
    if n and sample > 0:
        stmt = compile_segment(ast, account_id=account_id, now=now).limit(sample)
        ids = [int(r[0]) for r in conn.execute(stmt)]
    return n, ids


# --- planning -----------------------------------------------------------------------------------
#
# The planner's keyset page (``queries.PLAN_PAGE_*``) with the segment in place of the tag join:
# one page of the account's subscribed identities of the channel's kind, past ``:after_id``,
# whose contact is in the segment, numbered into batches by ROW_NUMBER in the same statement.
# Named parameters are the ones the planner already passes (after_id, page_size, campaign_id,
# batch_base, batch_size, now); the segment's own values (the evaluation time, tag names …)
# are bound into the statement, so every page sees the same ``now``.


def _segment_page(ast: Node, *, account_id: int, kind: str, now: float) -> Select[Any]:
    where = segment_predicate(ast, account_id=account_id, now=now)
    return (
        select(identities.c.id, identities.c.contact_id)
        .select_from(identities.join(contacts, contacts.c.id == identities.c.contact_id))
        .where(
            identities.c.account_id == _bind(account_id),
            identities.c.kind == _bind(kind),
            identities.c.subscribed == true(),
            identities.c.id > bindparam("after_id", type_=Integer),
            where,
        )
        .order_by(identities.c.id)
        .limit(bindparam("page_size", type_=Integer))
    )


def plan_page_statements(
    ast: Node, *, account_id: int, kind: str, now: float, dialect: str
) -> tuple[Executable, Executable]:
    """``(insert one page of deliveries, last identity id of that page)`` for a segment.

    The same shape as ``PLAN_PAGE_TAG`` / ``PLAN_PAGE_END_TAG``: ``INSERT … SELECT`` with
    ``:batch_base + (rn - 1) / :batch_size`` and ``ON CONFLICT DO NOTHING``; ``dialect`` picks
    SQLite's or PostgreSQL's spelling of the latter.
    """
    deliveries: Table = Delivery.__table__  # type: ignore[assignment]
    page = _segment_page(ast, account_id=account_id, kind=kind, now=now).subquery("page")
    numbered = select(
        page.c.id,
        page.c.contact_id,
        func.row_number().over(order_by=page.c.id).label("rn"),
    ).subquery("numbered")
    rows = select(
        bindparam("campaign_id", type_=Integer),
        bindparam("batch_base", type_=Integer)
        + (numbered.c.rn - 1) // bindparam("batch_size", type_=Integer),
        numbered.c.id,
        numbered.c.contact_id,
        literal("planned"),
        bindparam("now", type_=Float),
    ).where(true())  # SQLite: disambiguates INSERT … SELECT … ON CONFLICT
    cols = ["campaign_id", "batch_no", "identity_id", "contact_id", "status", "updated_at"]
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    ins = (
        dialect_insert(deliveries)
        .from_select(cols, rows)
        .on_conflict_do_nothing(index_elements=["campaign_id", "identity_id"])
    )
    end = select(func.max(page.c.id))
    return ins, end


__all__ = [
    "AGE_TIMEZONE",
    "ATTRIBUTE_SQL",
    "FUNCTION_SQL",
    "ByDialect",
    "Comparer",
    "CompileContext",
    "Member",
    "Related",
    "Unavailable",
    "compile_segment",
    "count_and_sample",
    "count_segment",
    "plan_page_statements",
    "segment_identities",
    "segment_predicate",
]
