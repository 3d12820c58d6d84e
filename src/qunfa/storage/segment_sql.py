"""Compile a segment AST (:mod:`qunfa.domain.segments`) to one SQL statement.

The result is a SQLAlchemy Core ``Select`` of ``contacts.id`` (or of identity ids, see
:func:`segment_identities`) that runs unchanged on SQLite and PostgreSQL. Nothing is evaluated
row by row in Python: every condition becomes a predicate on the ``contacts`` row — a column
comparison or an ``EXISTS`` over the tables that hold the data — and ``and`` / ``or`` / ``not``
become SQL's.

What each function and attribute means in SQL is the table :data:`FUNCTION_SQL` /
:data:`ATTRIBUTE_SQL` below. Entries whose data is not in the schema yet are
:class:`Unavailable`: compiling a segment that uses them raises :class:`SegmentError` (a
segment is never silently true or false). To plug in real data, replace the ``Unavailable``
entry with a builder, e.g. for ``city`` once a ``contact_facts`` table exists::

    ATTRIBUTE_SQL["city"] = lambda ctx: (
        select(contact_facts.c.city)
        .where(contact_facts.c.contact_id == ctx.contact_id)
        .scalar_subquery()
    )

(or a plain column if the facts live on ``contacts``). Comparisons and ``in`` are compiled
generically from that column expression; a missing value (NULL) never matches a comparison,
so ``not city == "上海"`` includes people whose city is unknown.

Times are epoch seconds; ``now`` is a bound parameter, never the database's clock, so a
planned campaign's snapshot and its preview agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)

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
    validate,
)
from qunfa.storage.models import Contact, Identity, IdentityTag, Tag

contacts = Contact.__table__
identities = Identity.__table__
tags = Tag.__table__
identity_tags = IdentityTag.__table__


@dataclass(frozen=True)
class CompileContext:
    """What a builder may use: the account scope, the time, the outer contact id column."""

    account_id: int | None
    now: float

    @property
    def contact_id(self) -> ColumnElement[int]:
        return contacts.c.id


@dataclass(frozen=True)
class Unavailable:
    """A function or attribute of the language whose data the schema does not hold yet."""

    needs: str  # what has to exist first, shown in the error


FunctionBuilder: TypeAlias = Callable[[CompileContext, tuple[Arg, ...]], ColumnElement[bool]]
AttributeBuilder: TypeAlias = Callable[[CompileContext], ColumnElement[Any]]


# --- functions ----------------------------------------------------------------------------------


# Subqueries use their own aliases and correlate only with ``contacts``, so they stay correct
# when the outer query also reads ``identities`` (see :func:`segment_identities`).
_i = identities.alias("seg_i")
_it = identity_tags.alias("seg_it")
_t = tags.alias("seg_t")


def _exists(*cond: ColumnElement[bool]) -> ColumnElement[bool]:
    return select(literal(1)).where(*cond).correlate(contacts).exists()


def _tag(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """Some identity of the person carries a tag of that name (on the account, if scoped).

    Written as nested EXISTS with the tag ids as an ``IN`` list so that both planners walk
    person → identities (by ``ix_identities_contact``) → ``identity_tags`` primary key; a flat
    three-table join lets SQLite start from the tag and scan all its members per person.
    """
    tag_ids = select(_t.c.id).where(_t.c.name == bindparam(None, args[0]))
    if ctx.account_id is not None:
        tag_ids = tag_ids.where(_t.c.account_id == bindparam(None, ctx.account_id))
    tagged = (
        select(literal(1))
        .where(_it.c.identity_id == _i.c.id, _it.c.tag_id.in_(tag_ids))
        .correlate(_i)
        .exists()
    )
    return _exists(_i.c.contact_id == ctx.contact_id, tagged)


def _has_identity(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """A subscribed identity of that kind; scoped: on the account, or account-less (phone …)."""
    cond = [
        _i.c.contact_id == ctx.contact_id,
        _i.c.kind == bindparam(None, args[0]),
        _i.c.subscribed == true(),
    ]
    if ctx.account_id is not None:
        cond.append(
            or_(
                _i.c.account_id == bindparam(None, ctx.account_id),
                _i.c.account_id.is_(None),
            )
        )
    return _exists(*cond)


def _since(column: ColumnElement[float]) -> FunctionBuilder:
    def build(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
        period = args[0]
        assert isinstance(period, Duration)  # validated
        return column >= bindparam(None, ctx.now - period.seconds)

    return build


FUNCTION_SQL: dict[str, FunctionBuilder | Unavailable] = {
    "tag": _tag,
    "has_identity": _has_identity,
    # Stand-ins until per-person facts exist (issue 4 item 6): the contact row's own times.
    "last_active_within": _since(contacts.c.updated_at),
    "registered_within": _since(contacts.c.created_at),
    "opted_out": Unavailable("the consent ledger (issue 4 item 7)"),
}

ATTRIBUTE_SQL: dict[str, AttributeBuilder | Unavailable] = {
    "city": Unavailable("contact attributes (issue 4 item 2)"),
    "province": Unavailable("contact attributes (issue 4 item 2)"),
    "gender": Unavailable("contact attributes (issue 4 item 2)"),
    "age": Unavailable("contact attributes (issue 4 item 2)"),
    "device": Unavailable("per-person facts from events (issue 4 item 6)"),
    "spend_3m": Unavailable("per-person facts from events (issue 4 item 6)"),
    "rfm_segment": Unavailable("RFM scores (issue 4 item 6)"),
}

assert set(FUNCTION_SQL) == set(FUNCTIONS), "every function of the language needs an SQL entry"
assert set(ATTRIBUTE_SQL) == set(ATTRIBUTES), "every attribute of the language needs an SQL entry"


# --- the compiler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    functions: dict[str, FunctionBuilder | Unavailable]
    attributes: dict[str, AttributeBuilder | Unavailable]


def _unavailable(kind: str, name: str, entry: Unavailable) -> SegmentError:
    return SegmentError(
        f"{kind} '{name}' is not available yet: it needs {entry.needs}; "
        "segments that use it cannot be evaluated"
    )


def _attribute(name: str, ctx: CompileContext, t: _Tables) -> ColumnElement[Any]:
    entry = t.attributes.get(name)
    if entry is None:
        raise SegmentError(f"attribute '{name}' has no SQL mapping")
    if isinstance(entry, Unavailable):
        raise _unavailable("attribute", name, entry)
    return entry(ctx)


def _predicate(node: Node, ctx: CompileContext, t: _Tables) -> ColumnElement[bool]:
    if isinstance(node, Call):
        entry = t.functions.get(node.name)
        if entry is None:
            raise SegmentError(f"function '{node.name}' has no SQL mapping")
        if isinstance(entry, Unavailable):
            raise _unavailable("function", node.name, entry)
        return entry(ctx, node.args)
    if isinstance(node, Compare):
        col = _attribute(node.attr, ctx, t)
        value: BindParameter[Any] = bindparam(None, node.value)
        ops: dict[str, Callable[[], ColumnElement[bool]]] = {
            "==": lambda: col == value,
            "!=": lambda: col != value,
            "<": lambda: col < value,
            "<=": lambda: col <= value,
            ">": lambda: col > value,
            ">=": lambda: col >= value,
        }
        # Two-valued logic: a missing value (NULL) makes the comparison false, not unknown,
        # so that 'not' of it is true.
        return and_(col.is_not(None), ops[node.op]())
    if isinstance(node, In):
        col = _attribute(node.attr, ctx, t)
        return and_(col.is_not(None), col.in_(list(node.values)))
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
    attributes: dict[str, AttributeBuilder | Unavailable] | None = None,
) -> ColumnElement[bool]:
    """The segment as a boolean SQL expression over the ``contacts`` row.

    ``functions`` / ``attributes`` override the module tables (tests, or plugging in data).
    """
    validate(ast)
    ctx = CompileContext(account_id, time.time() if now is None else now)
    t = _Tables(
        FUNCTION_SQL if functions is None else functions,
        ATTRIBUTE_SQL if attributes is None else attributes,
    )
    return _predicate(ast, ctx, t)


def compile_segment(
    ast: Node,
    *,
    account_id: int | None,
    now: float | None = None,
    functions: dict[str, FunctionBuilder | Unavailable] | None = None,
    attributes: dict[str, AttributeBuilder | Unavailable] | None = None,
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


__all__ = [
    "ATTRIBUTE_SQL",
    "FUNCTION_SQL",
    "CompileContext",
    "Unavailable",
    "compile_segment",
    "count_segment",
    "segment_identities",
    "segment_predicate",
]
