"""Behaviour events over REST: ``POST /api/events`` (a JSON list) and a person's facts.

Ingestion is idempotent by ``dedupe_key`` (send the order number): posting the same list twice
stores it once. Events of people qunfa does not know are answered in ``unknown`` (with their
index in the list), invalid ones in ``invalid``; the rest are stored. Facts follow on the next
refresh (every few minutes in the worker).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep

router = APIRouter(prefix="/api", tags=["behaviour"])
MAX_EVENTS = 10_000


class EventCreate(BaseModel):
    """One event. Name the person by ``contact_id`` or one identity field (or ``identity``)."""

    kind: str = Field(examples=["purchase"])
    at: float | str = Field(description="epoch seconds (or ms), or ISO 8601 (naive = UTC+8)")
    contact_id: int | None = None
    phone: str | None = None
    email: str | None = None
    openid: str | None = None
    unionid: str | None = None
    external_userid: str | None = None
    userid: str | None = None
    identity: dict[str, str] | None = Field(default=None, examples=[{"kind": "phone", "value": ""}])
    account: str | int | None = Field(default=None, description="account id or app id")
    amount: float | None = Field(default=None, description="yuan; required for purchases")
    device: str | None = Field(default=None, examples=["ios"])
    channel: str | None = None
    text: str | None = None
    dedupe_key: str | None = Field(default=None, description="e.g. the order number")


class ProblemPublic(BaseModel):
    index: int
    field: str
    reason: str


class IngestPublic(BaseModel):
    received: int
    inserted: int
    duplicates: int
    unknown: list[ProblemPublic]
    invalid: list[ProblemPublic]


@router.post("/events", response_model=IngestPublic)
def post_events(events: list[EventCreate], c: ContainerDep) -> IngestPublic:
    """Store a list of events (at most 10,000 per request)."""
    if len(events) > MAX_EVENTS:
        raise HTTPException(413, f"at most {MAX_EVENTS:,} events per request")
    r = c.behaviour.ingest([e.model_dump(exclude_none=True) for e in events])
    return IngestPublic(
        received=r.received,
        inserted=r.inserted,
        duplicates=r.duplicates,
        unknown=[ProblemPublic(index=p.index, field=p.field, reason=p.reason) for p in r.unknown],
        invalid=[ProblemPublic(index=p.index, field=p.field, reason=p.reason) for p in r.invalid],
    )


@router.get("/contacts/{contact_id}/facts")
def get_facts(contact_id: int, c: ContainerDep) -> dict[str, Any]:
    """One person's facts, RFM scores and built-in layers (facts null: no events yet)."""
    return {
        "contact_id": contact_id,
        "facts": c.behaviour.facts(contact_id),
        "layers": c.behaviour.layers(contact_id),
    }
