"""Accounts over REST (read-only here; secrets never leave the server)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from qunfa.api.deps import ContainerDep

router = APIRouter(prefix="/api/accounts", tags=["accounts"])


class AccountPublic(BaseModel):
    id: int
    channel: str
    app_id: str
    name: str
    kind: str
    base_url: str
    synced_at: float | None


@router.get("", response_model=list[AccountPublic])
def list_accounts(c: ContainerDep) -> list[AccountPublic]:
    return [
        AccountPublic(
            id=a.id,
            channel=a.channel,
            app_id=a.app_id,
            name=a.name,
            kind=a.kind,
            base_url=a.base_url,
            synced_at=a.synced_at,
        )
        for a in c.accounts.all()
    ]
