"""Media twin for both WeChat platforms: uploads, the draft box, and media_id validity.

Serves, as multipart uploads with the file in the form field ``media`` (as the real APIs take it):

- Official Account (``/wechat/cgi-bin``): ``media/upload?type=image|voice|video|thumb``
  (temporary, 3 days) → ``{type, media_id, created_at}``; ``material/add_material?type=…``
  (permanent; video takes a ``description`` form field) → ``{media_id, url?}``;
  ``media/uploadimg`` (images inside article HTML) → ``{url}``; JSON ``draft/add``
  ``{"articles": [{title, author, digest, content, thumb_media_id, …}]}`` → ``{media_id}``.
- WeCom (``/wecom/cgi-bin``): ``media/upload?type=image|voice|video|file`` (3 days) →
  ``{type, media_id, created_at}``; ``media/uploadimg`` → ``{url}``.

Limits (size, formats, lifetime, article field lengths) come from ``rules/wechat_oa.toml`` and
``rules/wecom.toml``. Refusals use the platforms' errcodes: 40004 bad ``type``, 40005 file type
not allowed, 40006 file too small (WeCom), 41005/44001 no file, 45001 file over the limit,
45003/45004/45002 article title/digest/content too long, 40007 unknown or expired media_id.
The mass-send twins call :func:`valid_media` so a send only takes a media_id issued here.
``POST /_sandbox/media/forget {"media_id"}`` makes the platform forget one (as a deleted
material), for tests of the re-upload path.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from email import policy as email_policy
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from qunfa.content.mediafile import inspect
from qunfa.rules import RuleSet
from qunfa.sandbox.state import STATE, State
from qunfa.sandbox.wechat_accounts import ApiError, error_body, reply
from qunfa.sandbox.wechat_accounts import check_token as wechat_token
from qunfa.sandbox.wecom_common import check_token as wecom_token

TWIN = "wechat"  # discovered by qunfa.sandbox.twins; registers the WeCom routes too
SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY, platform TEXT NOT NULL, owner TEXT NOT NULL, kind TEXT NOT NULL,
    type TEXT NOT NULL, size INTEGER NOT NULL, mime TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL, body TEXT
);
CREATE INDEX IF NOT EXISTS media_owner ON media(platform, owner);
"""
OA_TYPES = ("image", "voice", "video", "thumb")
WECOM_TYPES = ("image", "voice", "video", "file")
# What the file's bytes must be for each upload type (the platforms sniff, not only the name).
_MIME_OK: dict[str, tuple[str, ...]] = {
    "image": ("image/",), "thumb": ("image/jpeg",), "video": ("video/",),
    "voice": ("audio/",), "file": ("",),
}  # fmt: skip
_VOICE_FORMATS = {"wechat": "mp3,wma,wav,amr", "wecom": "amr"}


def valid_media(state: State, platform: str, owner: str, media_id: Any) -> bool:
    """Whether ``media_id`` was issued to ``owner`` (appid / corpid) and has not expired."""
    row = state.db.execute(
        "SELECT expires_at FROM media WHERE media_id = ? AND platform = ? AND owner = ?",
        (str(media_id), platform, owner),
    ).fetchone()
    return row is not None and (row[0] is None or row[0] > state.now())


def require_media(state: State, platform: str, owner: str, media_id: Any) -> None:
    """Raise 40007 unless :func:`valid_media`."""
    if not valid_media(state, platform, owner, media_id):
        raise ApiError(40007, "invalid media_id")


def require_in(state: State, platform: str, owner: str, msgtype: Any, obj: Any) -> None:
    """Raise 40007 for any media id in a message part (``media_id``, ``media_ids``,
    ``thumb_media_id``, ``pic_media_id``) that this platform did not issue to ``owner``."""
    if not isinstance(obj, dict) or msgtype in ("text", "markdown", "wxcard", "textcard", "link"):
        return
    ids: list[Any] = [obj[k] for k in ("media_id", "thumb_media_id", "pic_media_id") if obj.get(k)]
    ids += list(obj.get("media_ids") or [])
    for article in obj.get("articles") or []:
        if isinstance(article, dict) and article.get("thumb_media_id"):
            ids.append(article["thumb_media_id"])
    for media_id in ids:
        require_media(state, platform, owner, media_id)


def _formats(rs: RuleSet, kind: str, platform: str) -> list[str] | None:
    if kind == "voice":
        return _VOICE_FORMATS[platform].split(",")
    if kind == "thumb":
        return ["jpg", "jpeg"]
    rule = rs.rules.get(f"media_{kind}_formats")
    return None if rule is None else str(rule.value).split(",")


def _check_file(
    rs: RuleSet, platform: str, kind: str, filename: str, data: bytes, *, max_rule: str = ""
) -> str:
    """Validate one uploaded file; returns its sniffed MIME type."""
    if not data:
        raise ApiError(41005 if platform == "wechat" else 44001, "media data missing")
    if platform == "wecom" and len(data) <= rs["media_min_bytes"]:
        raise ApiError(40006, "invalid file size")
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    allowed = _formats(rs, kind, platform)
    mime = inspect(data).mime
    if (allowed is not None and ext not in allowed) or not mime.startswith(_MIME_OK[kind]):
        raise ApiError(40005, f"invalid file type: {ext or 'none'} ({mime}) for {kind}")
    limit = rs[max_rule or f"media_{kind}_max_bytes"]
    if len(data) > limit:
        raise ApiError(45001, f"media size out of limit: {len(data)} > {limit}")
    return mime


def _issue(
    db: sqlite3.Connection, state: State, platform: str, owner: str, kind: str, mtype: str,
    size: int, mime: str, lifetime: int | None, body: Any = None,
) -> tuple[str, float]:  # fmt: skip
    now = state.now()
    media_id = f"{'MX' if platform == 'wechat' else '3'}{secrets.token_urlsafe(24)}"
    db.execute(
        "INSERT INTO media VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (media_id, platform, owner, kind, mtype, size, mime, now,
         None if lifetime is None else now + lifetime,
         None if body is None else json.dumps(body, ensure_ascii=False)),
    )  # fmt: skip
    return media_id, now


Upload = Callable[[web.Request, State, str, RuleSet], Awaitable[dict[str, Any]]]


def _handler(platform: str, fn: Upload) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        token = request.query.get("access_token")
        try:
            if platform == "wechat":
                acct = wechat_token(state, token)
                owner, rs = acct.appid, acct.rules
            else:
                corp, _agent = wecom_token(state, token)
                owner, rs = corp.corpid, corp.rules
            return reply({"errcode": 0, "errmsg": "ok"} | await fn(request, state, owner, rs))
        except ApiError as exc:
            body = error_body(exc.code, exc.msg, **exc.extra)
            return reply(body)
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            return reply(error_body(47001, f"data format error: {exc}"))

    return handler


async def _file(request: web.Request) -> tuple[str, bytes, dict[str, Any]]:
    """The ``media`` file part (name, bytes) and the other form fields of a multipart body.

    Parsed from the raw bytes: the call-log middleware has already read the body, and
    aiohttp's ``post()`` would need the stream again."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(41005, "media data missing: send multipart/form-data with field 'media'")
    raw = await request.read()
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    msg = BytesParser(policy=email_policy.HTTP).parsebytes(head + raw)
    name, data, others = "", None, {}
    for part in msg.iter_parts():
        field = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if field == "media":
            name, data = part.get_filename() or "", payload
        elif isinstance(field, str):
            others[field] = payload.decode("utf-8")
    if data is None:
        raise ApiError(41005, "media data missing")
    return name, data, others


def _type(request: web.Request, allowed: tuple[str, ...]) -> str:
    kind = request.query.get("type", "")
    if kind not in allowed:
        raise ApiError(40004, f"invalid media type: {kind!r}")
    return kind


# -- Official Account ------------------------------------------------------------------------------
async def oa_upload(request: web.Request, state: State, owner: str, rs: RuleSet) -> dict[str, Any]:
    """Temporary media (3 days)."""
    kind = _type(request, OA_TYPES)
    name, data, _ = await _file(request)
    mime = _check_file(rs, "wechat", kind, name, data)
    with state.tx() as db:
        media_id, now = _issue(db, state, "wechat", owner, "temporary", kind, len(data), mime,
                               rs["media_temporary_seconds"])  # fmt: skip
    key = "thumb_media_id" if kind == "thumb" else "media_id"
    return {"type": kind, key: media_id, "created_at": int(now)}


async def oa_add_material(
    request: web.Request, state: State, owner: str, rs: RuleSet
) -> dict[str, Any]:
    """Permanent media; an image also gets a URL."""
    kind = _type(request, OA_TYPES)
    name, data, others = await _file(request)
    mime = _check_file(rs, "wechat", kind, name, data)
    description = None
    if kind == "video":
        try:
            description = json.loads(others.get("description") or "")
        except ValueError as exc:
            raise ApiError(47001, "video needs a description {title, introduction}") from exc
    with state.tx() as db:
        media_id, _ = _issue(db, state, "wechat", owner, "permanent", kind, len(data), mime, None,
                             description)  # fmt: skip
    out: dict[str, Any] = {"media_id": media_id}
    if kind in ("image", "thumb"):
        out["url"] = f"http://mmbiz.qpic.cn/sandbox/{media_id}/0"
    return out


async def oa_uploadimg(
    request: web.Request, state: State, owner: str, rs: RuleSet
) -> dict[str, Any]:
    """An image for article HTML: a URL only, no media_id."""
    name, data, _ = await _file(request)
    ext = name.rsplit(".", 1)[-1].lower()
    if ext not in str(rs.rules["uploadimg_formats"].value).split(",") or inspect(data).mime not in (
        "image/jpeg",
        "image/png",
    ):
        raise ApiError(40005, "invalid file type: uploadimg takes jpg/png")
    if len(data) > rs["uploadimg_max_bytes"]:
        raise ApiError(45001, "media size out of limit")
    with state.tx() as db:
        media_id, _ = _issue(db, state, "wechat", owner, "uploadimg", "image", len(data),
                             inspect(data).mime, None)  # fmt: skip
    return {"url": f"http://mmbiz.qpic.cn/sandbox/{media_id}/0"}


async def oa_draft_add(
    request: web.Request, state: State, owner: str, rs: RuleSet
) -> dict[str, Any]:
    """A draft (图文): every article needs a permanent thumb; fields within their limits."""
    body = json.loads(await request.read() or b"{}")
    articles = body.get("articles") if isinstance(body, dict) else None
    if not isinstance(articles, list) or not articles or len(articles) > 8:
        raise ApiError(45008, "article size out of limit")  # 1–8 articles per draft
    for art in articles:
        if not isinstance(art, dict):
            raise ValueError
        if len(str(art.get("title") or "")) > rs["article_title_max_chars"]:
            raise ApiError(45003, "title size out of limit")
        if len(str(art.get("digest") or "")) > rs["article_digest_max_chars"]:
            raise ApiError(45004, "description size out of limit")
        if len(str(art.get("author") or "")) > rs["article_author_max_chars"]:
            raise ApiError(45110, "author size out of limit")
        content = str(art.get("content") or "")
        if not content:
            raise ApiError(44004, "empty content")
        if len(content) > rs["article_content_max_chars"]:
            raise ApiError(45002, "content size out of limit")
        thumb = art.get("thumb_media_id")
        row = state.db.execute(
            "SELECT kind FROM media WHERE media_id = ? AND platform = 'wechat' AND owner = ?",
            (str(thumb), owner),
        ).fetchone()
        if row is None or row[0] != "permanent":
            raise ApiError(40007, "invalid media_id: thumb_media_id must be a permanent material")
    with state.tx() as db:
        media_id, _ = _issue(db, state, "wechat", owner, "draft", "news", 0, "application/json",
                             None, articles)  # fmt: skip
    return {"media_id": media_id}


# -- WeCom ----------------------------------------------------------------------------------------
async def wecom_upload(
    request: web.Request, state: State, owner: str, rs: RuleSet
) -> dict[str, Any]:
    kind = _type(request, WECOM_TYPES)
    name, data, _ = await _file(request)
    mime = _check_file(rs, "wecom", kind, name, data)
    with state.tx() as db:
        media_id, now = _issue(db, state, "wecom", owner, "temporary", kind, len(data), mime,
                               rs["media_temporary_seconds"])  # fmt: skip
    return {"type": kind, "media_id": media_id, "created_at": str(int(now))}


async def wecom_uploadimg(
    request: web.Request, state: State, owner: str, rs: RuleSet
) -> dict[str, Any]:
    name, data, _ = await _file(request)
    _check_file(rs, "wecom", "image", name, data, max_rule="uploadimg_max_bytes")
    with state.tx() as db:
        media_id, _ = _issue(db, state, "wecom", owner, "uploadimg", "image", len(data),
                             inspect(data).mime, None)  # fmt: skip
    return {"url": f"https://wework.qpic.cn/sandbox/{media_id}/0"}


async def forget(request: web.Request) -> web.Response:
    """Admin: the platform forgets a media_id (deleted material, expired early)."""
    body = json.loads(await request.read() or b"{}")
    state = request.app[STATE]
    with state.tx() as db:
        gone = db.execute("DELETE FROM media WHERE media_id = ?", (str(body.get("media_id")),))
    return web.json_response({"forgotten": gone.rowcount})


def add_routes(app: web.Application) -> None:
    oa, wc = "/wechat/cgi-bin", "/wecom/cgi-bin"
    app.router.add_post(f"{oa}/media/upload", _handler("wechat", oa_upload))
    app.router.add_post(f"{oa}/material/add_material", _handler("wechat", oa_add_material))
    app.router.add_post(f"{oa}/media/uploadimg", _handler("wechat", oa_uploadimg))
    app.router.add_post(f"{oa}/draft/add", _handler("wechat", oa_draft_add))
    app.router.add_post(f"{wc}/media/upload", _handler("wecom", wecom_upload))
    app.router.add_post(f"{wc}/media/uploadimg", _handler("wecom", wecom_uploadimg))
    app.router.add_post("/_sandbox/media/forget", forget)
