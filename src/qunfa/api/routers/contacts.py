"""People over REST: import a file, show a person, list and undo merges, export (audited).

The import takes the file as the raw request body (``Content-Type`` text/csv or the XLSX
type, ``?filename=`` names it) — or ``?path=`` for a file already on the server.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from qunfa.api.deps import ContainerDep
from qunfa.services.accounts import AccountError
from qunfa.services.contacts import ExportError, ImportError_
from qunfa.services.people import PeopleError

router = APIRouter(prefix="/api/contacts", tags=["contacts"])


class ImportPublic(BaseModel):
    rows: int
    imported: int
    new: int
    updated: int
    rejected: int
    field_errors: int
    identities_new: int
    merged: int
    seconds: float
    errors_file: str | None  # row, column, value, reason
    bulk_load: bool = False  # a first import in one transaction (docs/people.md)


class ExportRequest(BaseModel):
    reason: str
    segment: str | None = None
    all: bool = False
    format: Literal["csv", "xlsx"] = "csv"


def _actor(request: Request) -> str:
    return f"api:{request.client.host}" if request.client else "api"


@router.post("/import", response_model=ImportPublic)
async def import_people(
    request: Request,
    c: ContainerDep,
    filename: Annotated[str, Query(description="name of the uploaded file (.csv/.xlsx)")] = (
        "upload.csv"
    ),
    path: Annotated[str | None, Query(description="a file on the server instead")] = None,
    account: Annotated[str | None, Query(description="account of platform ids")] = None,
    map_: Annotated[list[str] | None, Query(alias="map", description="COLUMN=FIELD")] = None,
) -> ImportPublic:
    if path is not None:
        source = Path(path)
    else:
        folder = c.settings.data_dir / "imports" / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / Path(filename).name
        with source.open("wb") as fh:
            async for chunk in request.stream():
                fh.write(chunk)
    mapping = dict(m.partition("=")[::2] for m in map_ or [])
    try:
        # Off the event loop: a large import takes a minute, and other requests go on meanwhile.
        r = await run_in_threadpool(
            c.contacts.import_file, source, account=account, mapping=mapping, actor=_actor(request)
        )
    except (ImportError_, AccountError) as exc:
        raise HTTPException(422, str(exc)) from None
    return ImportPublic(
        rows=r.rows, imported=r.imported, new=r.new, updated=r.updated, rejected=r.rejected,
        field_errors=r.field_errors, identities_new=r.identities_new, merged=r.merged,
        seconds=r.seconds, errors_file=str(r.errors_file) if r.errors_file else None,
        bulk_load=r.bulk_load,
    )  # fmt: skip


@router.get("/merges")
def list_merges(
    c: ContainerDep, contact: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    return [asdict(m) for m in c.people.merges(limit=limit, contact_id=contact)]


@router.post("/merges/{merge_id}/undo")
def undo_merge(merge_id: int, request: Request, c: ContainerDep) -> dict[str, Any]:
    try:
        return asdict(c.people.unmerge(merge_id, actor=_actor(request)))
    except PeopleError as exc:
        raise HTTPException(404 if "does not exist" in str(exc) else 409, str(exc)) from None


@router.get("/{contact_id}")
def show_person(contact_id: int, c: ContainerDep) -> dict[str, Any]:
    try:
        return asdict(c.people.get(contact_id))
    except PeopleError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/export")
def export_people(body: ExportRequest, request: Request, c: ContainerDep) -> FileResponse:
    if (body.segment is None) == (not body.all):
        raise HTTPException(422, "give either a segment or all: true")
    out = Path(tempfile.mkdtemp(prefix="qunfa-export-")) / f"contacts.{body.format}"
    try:
        r = c.contacts.export(
            out, reason=body.reason, segment=body.segment, fmt=body.format, actor=_actor(request)
        )
    except ExportError as exc:
        raise HTTPException(422, str(exc)) from None
    return FileResponse(r.path, filename=r.path.name, headers={"X-Qunfa-Audit-Id": str(r.audit_id)})
