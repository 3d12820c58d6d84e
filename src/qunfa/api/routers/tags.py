"""Tags over REST: groups, tags, membership, rule evaluation and the platform outbox."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from qunfa.api.deps import ContainerDep
from qunfa.services.accounts import AccountError
from qunfa.services.tags import TagError

router = APIRouter(prefix="/api/tags", tags=["tags"])


class TagPublic(BaseModel):
    id: int
    account_id: int | None
    group_id: int | None
    name: str
    source: str
    member_count: int
    platform_tag_id: int | None
    platform_ref: str | None
    rule: str | None
    rule_every_minutes: int | None


class TagCreate(BaseModel):
    name: str
    account: str | None = None
    group: str | None = None
    rule: str | None = None
    every_minutes: int | None = None


class Members(BaseModel):
    contact_ids: list[int] = []
    identity_ids: list[int] = []
    remove: bool = False


class GroupCreate(BaseModel):
    name: str
    account: str | None = None


def _public(t: Any) -> TagPublic:
    return TagPublic.model_validate(t, from_attributes=True)


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(status_code=400, detail=str(exc))


@router.get("", response_model=list[TagPublic])
def list_tags(c: ContainerDep, account: str | None = None) -> list[TagPublic]:
    try:
        return [_public(t) for t in c.tags.list_tags(account)]
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None


@router.post("", response_model=TagPublic, status_code=201)
async def create_tag(c: ContainerDep, body: TagCreate) -> TagPublic:
    try:
        tag = await c.tags.create(body.name, account=body.account, group=body.group,
                                  rule=body.rule, every_minutes=body.every_minutes)  # fmt: skip
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None
    return _public(tag)


@router.delete("/{tag_id}", status_code=204)
async def delete_tag(c: ContainerDep, tag_id: int) -> None:
    try:
        await c.tags.delete(tag_id)
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None


@router.post("/{tag_id}/members")
def members(c: ContainerDep, tag_id: int, body: Members) -> dict[str, int]:
    try:
        done = c.tags.apply(tag_id, contact_ids=body.contact_ids,
                            identity_ids=body.identity_ids, remove=body.remove)  # fmt: skip
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None
    return {"added": done.added, "removed": done.removed}


@router.post("/{tag_id}/evaluate")
def evaluate(c: ContainerDep, tag_id: int) -> dict[str, int]:
    try:
        done = c.tags.evaluate(tag_id)
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None
    return {"added": done.added, "removed": done.removed, "skipped": done.skipped}


@router.post("/push")
async def push(c: ContainerDep) -> dict[str, int]:
    sent = await c.tags.push()
    return {"accepted": sent, **c.tags.pending()}


@router.get("/groups")
def groups(c: ContainerDep, account: str | None = None) -> list[dict[str, Any]]:
    return [{"id": g.id, "name": g.name, "account_id": g.account_id,
             "platform_group_id": g.platform_group_id} for g in c.tags.groups(account)]  # fmt: skip


@router.post("/groups", status_code=201)
def create_group(c: ContainerDep, body: GroupCreate) -> dict[str, Any]:
    try:
        g = c.tags.create_group(body.name, body.account)
    except (TagError, AccountError) as exc:
        raise _bad(exc) from None
    return {"id": g.id, "name": g.name, "account_id": g.account_id}
