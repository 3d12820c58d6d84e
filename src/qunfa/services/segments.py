"""Saved segments: create, update, delete, list, preview; and segments as campaign audiences.

A saved segment is a named expression of the segment language (``docs/segments.md``),
optionally scoped to one account. It is validated when saved — parsed *and* compiled, so a
function whose data does not exist yet is refused then, with the column — and evaluated only
in SQL: a preview is one ``SELECT count(*)`` plus a small sample of contact ids. When a
campaign with a ``segment:`` or ``expr:`` audience is planned, the planner inserts the
segment's recipients page by page (``segment_sql.plan_page_statements``) and a
``SegmentSnapshot`` records what was evaluated, when, and how many it held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, delete, or_, select
from sqlalchemy.exc import IntegrityError

from qunfa.domain.audience import Audience
from qunfa.domain.segments import Node, SegmentError, from_json, parse_segment, pretty
from qunfa.storage.models import Segment, SegmentSnapshot
from qunfa.storage.segment_sql import (
    count_and_sample,
    count_segment,
    plan_page_statements,
    segment_predicate,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container


class SegmentServiceError(ValueError):
    """A saved segment that does not exist, a duplicate name, an account mismatch."""


@dataclass(frozen=True)
class Preview:
    """What a segment holds right now: ``count`` contacts, the first ``sample`` ids."""

    expression: str  # canonical text of what was evaluated
    count: int
    sample: list[int]
    evaluated_at: float
    account_id: int | None


@dataclass(frozen=True)
class ResolvedSegment:
    """A campaign's segment audience, fixed at one evaluation time for the whole plan."""

    segment_id: int | None  # the saved segment, None for expr:
    expression: str  # canonical text, as evaluated
    ast: Node
    now: float


def read_expression(expression: str | dict[str, Any] | Node) -> Node:
    """Text (the language) or the console builder's JSON form → a validated AST."""
    if isinstance(expression, str):
        return parse_segment(expression)
    if isinstance(expression, dict):
        return from_json(expression)
    return expression


class SegmentService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- validation -------------------------------------------------------------------------------
    def check(self, expression: str | dict[str, Any] | Node, account_id: int | None = None) -> Node:
        """Parse and compile without running: every error is a :class:`SegmentError`."""
        ast = read_expression(expression)
        segment_predicate(ast, account_id=account_id, now=time.time())
        return ast

    def _account_id(self, account: int | str | None) -> int | None:
        if account is None or account == "":
            return None
        return int(self.c.accounts.get(account).id)

    # -- saved segments ---------------------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        expression: str | dict[str, Any],
        account: int | str | None = None,
        description: str = "",
        created_by: str = "",
    ) -> Segment:
        """Save a segment; the expression is validated (column-pointing errors) first."""
        name = name.strip()
        if not name:
            raise SegmentServiceError("a segment needs a name")
        account_id = self._account_id(account)
        ast = self.check(expression, account_id)
        now = time.time()
        seg = Segment(
            name=name,
            expression=expression if isinstance(expression, str) else pretty(ast),
            account_id=account_id,
            description=description,
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
        with self.c.sessions() as s:
            s.add(seg)
            try:
                s.commit()
            except IntegrityError:
                raise SegmentServiceError(f"a segment named {name!r} already exists") from None
            return seg

    def get(self, ref: int | str) -> Segment:
        """A saved segment by id or by name."""
        with self.c.sessions() as s:
            cond = Segment.name == str(ref)
            if isinstance(ref, int) or str(ref).isdigit():
                cond = or_(cond, Segment.id == int(ref))
            seg = s.scalars(select(Segment).where(cond).order_by(Segment.id)).first()
            if seg is None:
                raise SegmentServiceError(f"no saved segment {ref!r}; see `qunfa segments list`")
            return seg

    def find(self, ref: int | str) -> Segment | None:
        try:
            return self.get(ref)
        except SegmentServiceError:
            return None

    def all(self, account: int | str | None = None) -> list[Segment]:
        with self.c.sessions() as s:
            stmt = select(Segment).order_by(Segment.name)
            if account is not None:
                stmt = stmt.where(Segment.account_id == self._account_id(account))
            return list(s.scalars(stmt))

    def update(
        self,
        ref: int | str,
        *,
        name: str | None = None,
        expression: str | dict[str, Any] | None = None,
        account: int | str | None = None,
        description: str | None = None,
    ) -> Segment:
        """Change a saved segment; a new expression is validated like on create."""
        seg = self.get(ref)
        with self.c.sessions() as s:
            row = s.get(Segment, seg.id)
            assert row is not None
            if account is not None:
                row.account_id = self._account_id(account)
            if expression is not None:
                ast = self.check(expression, row.account_id)
                row.expression = expression if isinstance(expression, str) else pretty(ast)
            if name is not None:
                if not name.strip():
                    raise SegmentServiceError("a segment needs a name")
                row.name = name.strip()
            if description is not None:
                row.description = description
            row.updated_at = time.time()
            try:
                s.commit()
            except IntegrityError:
                raise SegmentServiceError(f"a segment named {name!r} already exists") from None
            return row

    def delete(self, ref: int | str) -> None:
        """Delete a saved segment; campaigns keep their snapshots (expression included)."""
        seg = self.get(ref)
        with self.c.sessions() as s:
            s.execute(delete(Segment).where(Segment.id == seg.id))
            s.commit()

    # -- preview ----------------------------------------------------------------------------------
    def preview(
        self,
        expression: str | dict[str, Any] | None = None,
        *,
        segment: int | str | None = None,
        account: int | str | None = None,
        sample: int = 10,
        now: float | None = None,
    ) -> Preview:
        """Count (one ``SELECT count(*)``) and sample a saved segment or an expression.

        A saved segment's own account applies unless ``account`` is given.
        """
        account_id = self._account_id(account)
        if segment is not None:
            seg = self.get(segment)
            expression = seg.expression
            if account_id is None:
                account_id = seg.account_id
        if expression is None:
            raise SegmentServiceError("preview needs an expression or a saved segment")
        ast = read_expression(expression)
        at = time.time() if now is None else now
        with self.c.engine.connect() as conn:
            n, ids = count_and_sample(conn, ast, account_id, at, sample)
        return Preview(pretty(ast), n, ids, at, account_id)

    # -- campaigns --------------------------------------------------------------------------------
    def resolve(self, aud: Audience, account_id: int, now: float | None = None) -> ResolvedSegment:
        """The segment of a ``segment:`` / ``expr:`` audience, checked for the account."""
        segment_id: int | None = None
        if aud.kind == "segment":
            assert aud.segment is not None
            seg = self.get(aud.segment)
            if seg.account_id is not None and seg.account_id != account_id:
                raise SegmentServiceError(
                    f"segment {seg.name!r} belongs to account {seg.account_id}, "
                    f"not to the campaign's account {account_id}"
                )
            segment_id, text = seg.id, seg.expression
        elif aud.kind == "expr":
            assert aud.expression is not None
            text = aud.expression
        else:
            raise SegmentServiceError(f"audience {aud} is not a segment")
        ast = self.check(text, account_id)
        return ResolvedSegment(segment_id, pretty(ast), ast, time.time() if now is None else now)

    def plan_statements(
        self, seg: ResolvedSegment, account_id: int, kind: str
    ) -> tuple[Executable, Executable]:
        """The planner's page insert and page end for this segment (set-based, see queries)."""
        return plan_page_statements(
            seg.ast,
            account_id=account_id,
            kind=kind,
            now=seg.now,
            dialect=self.c.engine.dialect.name,
        )

    def record_snapshot(
        self, campaign_id: int, seg: ResolvedSegment, account_id: int, recipients: int
    ) -> SegmentSnapshot:
        """Write the campaign's snapshot: expression as evaluated, time, contacts, recipients.

        Re-planning replaces the campaign's earlier snapshot.
        """
        with self.c.engine.connect() as conn:
            contacts = count_segment(conn, seg.ast, account_id, seg.now)
        snap = SegmentSnapshot(
            campaign_id=campaign_id,
            segment_id=seg.segment_id,
            expression=seg.expression,
            evaluated_at=seg.now,
            contact_count=contacts,
            recipient_count=recipients,
        )
        with self.c.sessions() as s:
            s.execute(delete(SegmentSnapshot).where(SegmentSnapshot.campaign_id == campaign_id))
            s.add(snap)
            s.commit()
            return snap

    def snapshots(self, campaign_id: int) -> list[SegmentSnapshot]:
        with self.c.sessions() as s:
            return list(
                s.scalars(
                    select(SegmentSnapshot)
                    .where(SegmentSnapshot.campaign_id == campaign_id)
                    .order_by(SegmentSnapshot.id)
                )
            )


__all__ = [
    "Preview",
    "ResolvedSegment",
    "SegmentError",
    "SegmentService",
    "SegmentServiceError",
    "read_expression",
]
