"""Saved segments over REST, and the count preview the console's builder calls as you type.

Errors in an expression are ``422`` with a body that points at it::

    {"detail": {"message": "unknown attribute 'cty'; …", "line": 1, "column": 16,
                "offset": 16, "path": null, "text": "… with the caret line"}}

(``path`` instead of line/column for the JSON form: ``$.and[1].in[0]``.)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, model_validator

from qunfa.api.deps import ContainerDep
from qunfa.domain.segments import SegmentError
from qunfa.services.accounts import AccountError
from qunfa.services.segments import SegmentServiceError
from qunfa.storage.models import Segment

router = APIRouter(prefix="/api/segments", tags=["segments"])

EXAMPLE = 'tag("VIP") and city in ("上海", "北京") and last_active_within(30d)'


class SegmentIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expression: str | None = Field(default=None, examples=[EXAMPLE])
    json_form: dict[str, Any] | None = Field(
        default=None, alias="json", description="the builder's JSON form instead of text"
    )
    account: str | None = Field(default=None, description="account id or appid (scopes tags)")
    description: str = ""
    created_by: str = ""

    @model_validator(mode="after")
    def _one_form(self) -> SegmentIn:
        if (self.expression is None) == (self.json_form is None):
            raise ValueError("give exactly one of 'expression' (text) or 'json'")
        return self


class SegmentPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    expression: str | None = None
    json_form: dict[str, Any] | None = Field(default=None, alias="json")
    account: str | None = None
    description: str | None = None


class PreviewIn(BaseModel):
    expression: str | None = Field(default=None, examples=[EXAMPLE])
    json_form: dict[str, Any] | None = Field(default=None, alias="json")
    segment: str | None = Field(default=None, description="a saved segment's id or name")
    account: str | None = None
    sample: int = Field(default=10, ge=0, le=1000)


class SegmentOut(BaseModel):
    id: int
    name: str
    expression: str
    account_id: int | None
    description: str
    created_by: str
    created_at: float
    updated_at: float


class PreviewOut(BaseModel):
    expression: str
    count: int
    sample: list[int]
    evaluated_at: float
    account_id: int | None


def _out(seg: Segment) -> dict[str, Any]:
    return {
        "id": seg.id,
        "name": seg.name,
        "expression": seg.expression,
        "account_id": seg.account_id,
        "description": seg.description,
        "created_by": seg.created_by,
        "created_at": seg.created_at,
        "updated_at": seg.updated_at,
    }


def _error(exc: Exception) -> HTTPException:
    if isinstance(exc, SegmentError):
        return HTTPException(422, exc.to_dict())
    if isinstance(exc, SegmentServiceError) and str(exc).startswith("no saved segment"):
        return HTTPException(404, str(exc))
    if isinstance(exc, SegmentServiceError) and "already exists" in str(exc):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


ERRORS = (SegmentError, SegmentServiceError, AccountError)


@router.get("", response_model=list[SegmentOut])
def list_segments(c: ContainerDep) -> list[dict[str, Any]]:
    return [_out(s) for s in c.segments.all()]


@router.post("", response_model=SegmentOut, status_code=201)
def create_segment(body: SegmentIn, c: ContainerDep) -> dict[str, Any]:
    try:
        seg = c.segments.create(
            name=body.name,
            expression=body.expression if body.expression is not None else body.json_form,
            account=body.account,
            description=body.description,
            created_by=body.created_by,
        )
    except ERRORS as exc:
        raise _error(exc) from None
    return _out(seg)


@router.post("/preview", response_model=PreviewOut)
def preview_segment(body: PreviewIn, c: ContainerDep) -> dict[str, Any]:
    """Count (one SQL count) and sample contact ids; a bad expression is 422 with its column."""
    expression = body.expression if body.expression is not None else body.json_form
    try:
        p = c.segments.preview(
            expression, segment=body.segment, account=body.account, sample=body.sample
        )
    except ERRORS as exc:
        raise _error(exc) from None
    return {
        "expression": p.expression,
        "count": p.count,
        "sample": p.sample,
        "evaluated_at": p.evaluated_at,
        "account_id": p.account_id,
    }


@router.get("/{segment_id}", response_model=SegmentOut)
def get_segment(segment_id: int, c: ContainerDep) -> dict[str, Any]:
    try:
        return _out(c.segments.get(segment_id))
    except ERRORS as exc:
        raise _error(exc) from None


@router.put("/{segment_id}", response_model=SegmentOut)
def update_segment(segment_id: int, body: SegmentPatch, c: ContainerDep) -> dict[str, Any]:
    try:
        seg = c.segments.update(
            segment_id,
            name=body.name,
            expression=body.expression if body.expression is not None else body.json_form,
            account=body.account,
            description=body.description,
        )
    except ERRORS as exc:
        raise _error(exc) from None
    return _out(seg)


@router.delete("/{segment_id}", status_code=204)
def delete_segment(segment_id: int, c: ContainerDep) -> None:
    try:
        c.segments.delete(segment_id)
    except ERRORS as exc:
        raise _error(exc) from None
