"""The material library over REST: create (JSON or a multipart file), versions, uploads, uses,
preview. Thin: every route calls ``container.materials`` (``services/materials.py``)."""

from __future__ import annotations

import json
from email import policy as email_policy
from email.parser import BytesParser
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep
from qunfa.services.accounts import AccountError
from qunfa.services.materials import MaterialError

router = APIRouter(prefix="/api/materials", tags=["materials"])


class MaterialCreate(BaseModel):
    kind: str = Field(examples=["text"], description="text|news|image|video|miniprogram|link|file")
    title: str = Field(min_length=1, max_length=200)
    body: dict[str, Any] = Field(
        examples=[{"default": {"text": "{{ name }}，您好"}, "wechat_oa": {"text": "各位好"}}],
        description='{"default": {...}, "<channel>": {...}}: per-channel variants',
    )


class VersionCreate(BaseModel):
    body: dict[str, Any] | None = Field(default=None, description="default: the previous body")


class PreviewRequest(BaseModel):
    contact: int
    channel: str
    content: dict[str, Any] = Field(
        examples=[{"material_id": 1}, {"text": "{{ name }}，您好", "variables": {"coupon": "A1"}}]
    )


def _version(v: Any) -> dict[str, Any]:
    return {
        "id": v.id,
        "material_id": v.material_id,
        "version": v.version,
        "body": v.body,
        "file_path": v.file_path,
        "sha256": v.sha256,
        "size": v.size,
        "mime": v.mime,
        "width": v.width,
        "height": v.height,
        "duration": v.duration,
        "created_by": v.created_by,
        "created_at": v.created_at,
    }


def _material(c: Any, material_id: int) -> dict[str, Any]:
    m = c.materials.get(material_id)
    return {
        "id": m.id,
        "kind": m.kind,
        "title": m.title,
        "current_version": m.current_version,
        "archived": m.archived,
        "created_by": m.created_by,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


def _body_form(raw: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(422, f"body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise HTTPException(422, 'body must be an object: {"default": {...}}')
    return body


@router.get("")
def list_materials(c: ContainerDep, archived: bool = False) -> list[dict[str, Any]]:
    return [_material(c, m.id) for m in c.materials.all(archived)]


@router.post("", status_code=201)
def create_material(body: MaterialCreate, c: ContainerDep) -> dict[str, Any]:
    """A material without a file (text, news, link, mini-program card); version 1."""
    try:
        v = c.materials.create(kind=body.kind, title=body.title, body=body.body)
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return _material(c, v.material_id) | {"version": _version(v)}


async def _multipart(request: Request) -> tuple[dict[str, str], tuple[str, bytes]]:
    """The form fields and the ``file`` part (name, bytes) of a multipart/form-data body.

    Parsed with the standard library's MIME parser: the API does not depend on
    python-multipart for one upload route."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with the file in the field 'file'")
    raw = await request.body()
    msg = BytesParser(policy=email_policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + raw
    )
    fields: dict[str, str] = {}
    file: tuple[str, bytes] | None = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            file = (part.get_filename() or "", payload)
        else:
            fields[name] = payload.decode("utf-8")
    if file is None:
        raise HTTPException(422, "no file: send it in the multipart field 'file'")
    return fields, file


@router.post("/upload", status_code=201)
async def create_material_file(request: Request, c: ContainerDep) -> dict[str, Any]:
    """A media material from a multipart upload (fields ``file``, ``kind``, ``title``,
    optional ``body`` JSON): type, size, pixels and duration are read from the file's
    header, not trusted from its name."""
    fields, (filename, data) = await _multipart(request)
    missing = [k for k in ("kind", "title") if not fields.get(k)]
    if missing:
        raise HTTPException(422, f"missing form field(s): {', '.join(missing)}")
    try:
        v = c.materials.create(
            kind=fields["kind"], title=fields["title"],
            body=_body_form(fields.get("body", "")) or {"default": {}}, data=data,
            filename=filename,
        )  # fmt: skip
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return _material(c, v.material_id) | {"version": _version(v)}


@router.get("/{material_id}")
def get_material(material_id: int, c: ContainerDep) -> dict[str, Any]:
    try:
        out = _material(c, material_id)
        current = c.materials.version(material_id)
    except MaterialError as exc:
        raise HTTPException(404, str(exc)) from None
    uploads = [
        {"account_id": u.account_id, "channel": u.channel, "kind": u.kind,
         "media_id": u.media_id, "expires_at": u.expires_at}
        for u in c.materials.uploads(current.id)
    ]  # fmt: skip
    return out | {"version": _version(current), "uploads": uploads}


@router.get("/{material_id}/versions")
def list_versions(material_id: int, c: ContainerDep) -> list[dict[str, Any]]:
    rows = c.materials.versions(material_id)
    if not rows:
        raise HTTPException(404, f"no material {material_id}")
    return [_version(v) for v in rows]


@router.post("/{material_id}/versions", status_code=201)
def add_version(material_id: int, body: VersionCreate, c: ContainerDep) -> dict[str, Any]:
    """Version n+1 with a new body (a file carries over); old versions never change."""
    try:
        v = c.materials.new_version(material_id, body=body.body)
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return _version(v)


@router.post("/{material_id}/versions/upload", status_code=201)
async def add_version_file(material_id: int, request: Request, c: ContainerDep) -> dict[str, Any]:
    """Version n+1 with a new file (multipart field ``file``, optional ``body`` JSON)."""
    fields, (filename, data) = await _multipart(request)
    try:
        v = c.materials.new_version(
            material_id, body=_body_form(fields.get("body", "")), data=data, filename=filename
        )
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return _version(v)


@router.get("/{material_id}/uses")
def material_uses(material_id: int, c: ContainerDep) -> list[dict[str, Any]]:
    return [
        {"version": u.version, "campaign_id": u.campaign_id, "used_at": u.used_at}
        for u in c.materials.uses(material_id)
    ]


@router.post("/{material_id}/push")
async def push_material(
    material_id: int, c: ContainerDep, account: str, channel: str | None = None
) -> dict[str, Any]:
    """Upload the current version to a platform account now (sends do it too, once)."""
    from qunfa.channels.http import HttpClient

    try:
        acc = c.accounts.get(account)
        v = c.materials.version(material_id)
        async with HttpClient() as http:
            media_id = await c.materials.media_id(v.id, acc, channel or acc.channel, http)
    except (MaterialError, AccountError) as exc:
        raise HTTPException(422, str(exc)) from None
    return {"material_id": material_id, "version": v.version, "media_id": media_id}


@router.post("/preview")
def preview(body: PreviewRequest, c: ContainerDep) -> dict[str, Any]:
    """Content (a material reference or plain content) rendered for one contact."""
    try:
        result: dict[str, Any] = c.materials.preview(body.content, body.contact, body.channel)
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return result
