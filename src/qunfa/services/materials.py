"""The material library (素材库): items, immutable versions, per-channel variants, uploads, uses.

A :class:`~qunfa.storage.models.Material` has versions; a version's ``body`` is
``{"default": {...}, "<channel>": {...}}`` — the variant for a channel falls back to
``default``. Editing creates a new version (versions never change), so a campaign that
referenced ``{"material_id": N, "version": V}`` keeps sending exactly what was checked.

Media files live under ``<data_dir>/materials/<sha256[:2]>/<sha256>.<ext>`` with their size,
type, pixels and duration read from the header (:mod:`qunfa.content.mediafile`). A version is
uploaded to each platform account once: the media_id is cached in ``media_uploads`` and
re-uploaded when it expires (temporary media: 3 days, from the rule files) or when the
platform says it is invalid (40007 → :meth:`MaterialService.invalidate`).

Content that references a material is turned into the channel's concrete content by
:meth:`MaterialService.resolve_content` (media as the placeholder ``"@media:<version_id>"``,
which passes the adapters' shape checks) and, at send time, by
:meth:`MaterialService.content_for_send`, which uploads what is needed and puts the real
media_ids in.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from qunfa.channels.base import ChannelContext
from qunfa.channels.errcode_api import ApiCallError
from qunfa.channels.http import HttpClient
from qunfa.channels.media import UploadFile, add_draft, api_for, upload, video_description
from qunfa.content.lint import MediaFacts
from qunfa.content.mediafile import inspect
from qunfa.storage.models import Account, Material, MaterialUse, MaterialVersion, MediaUpload

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

KINDS = ("text", "news", "image", "video", "miniprogram", "link", "file")
MEDIA_KINDS = frozenset({"image", "video", "file"})
PLACEHOLDER = re.compile(r"^@media:(\d+)(?::(\w+))?$")


class MaterialError(ValueError):
    """A material request that cannot be done; the message says what to change."""


@dataclass(frozen=True)
class MaterialRef:
    material_id: int
    version: int | None


def material_ref(content: Mapping[str, Any]) -> MaterialRef | None:
    """The material a campaign's content references (``{"material_id": N, "version": V}``)."""
    if "material_id" not in content:
        return None
    try:
        mid = int(content["material_id"])
        version = content.get("version")
        return MaterialRef(mid, None if version is None else int(version))
    except (TypeError, ValueError) as exc:
        raise MaterialError("material_id and version must be integers") from exc


def _validate_body(kind: str, body: Mapping[str, Any]) -> None:
    default = body.get("default")
    if not isinstance(default, Mapping):
        raise MaterialError(
            'body needs a "default" variant: {"default": {...}, "<channel>": {...}}'
        )
    for channel, variant in body.items():
        if not isinstance(variant, Mapping):
            raise MaterialError(f"variant {channel!r} must be an object")
    if kind == "text" and not str(default.get("text") or "").strip():
        raise MaterialError("a text material needs body.default.text")
    if kind == "news":
        arts = default.get("articles")
        if not isinstance(arts, list) or not arts:
            raise MaterialError(
                "a news material needs body.default.articles: [{title, content, …}]"
            )
        for i, art in enumerate(arts):
            if not isinstance(art, Mapping) or not art.get("title") or not art.get("content"):
                raise MaterialError(f"articles.{i} needs a title and content (HTML)")
            if not art.get("cover_material_id"):
                raise MaterialError(
                    f"articles.{i} needs cover_material_id: the id of an image material "
                    "(the platform requires a cover thumbnail)"
                )
    if kind == "link" and not str(default.get("url") or "").startswith(("http://", "https://")):
        raise MaterialError("a link card needs body.default.url (http or https)")
    if kind == "miniprogram":
        missing = [k for k in ("appid", "page", "title") if not default.get(k)]
        if missing:
            raise MaterialError(f"a mini-program card needs body.default.{', '.join(missing)}")


class MaterialService:
    def __init__(self, c: Container, clock: Callable[[], float] = time.time) -> None:
        self.c = c
        self.clock = clock

    @property
    def root(self) -> Path:
        return Path(self.c.settings.data_dir) / "materials"

    # -- library -------------------------------------------------------------------------------
    def create(
        self,
        *,
        kind: str,
        title: str,
        body: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        filename: str = "",
        created_by: str = "",
    ) -> MaterialVersion:
        """A new material and its version 1; ``data`` is the file of image/video/file kinds."""
        if kind not in KINDS:
            raise MaterialError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
        if not title.strip():
            raise MaterialError("a material needs a title")
        now = self.clock()
        with self.c.sessions() as s:
            mat = Material(
                kind=kind,
                title=title,
                current_version=0,
                archived=False,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            )
            s.add(mat)
            s.flush()
            mid = mat.id
            s.commit()
        try:
            return self.new_version(
                mid, body=body, data=data, filename=filename, created_by=created_by
            )
        except MaterialError:
            with self.c.sessions() as s:
                gone = s.get(Material, mid)
                if gone is not None:
                    s.delete(gone)
                    s.commit()
            raise

    def new_version(
        self,
        material_id: int,
        *,
        body: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        filename: str = "",
        created_by: str = "",
    ) -> MaterialVersion:
        """Version n+1: unchanged parts are carried over; old versions are never edited."""
        now = self.clock()
        with self.c.sessions() as s:
            mat = s.get(Material, material_id)
            if mat is None:
                raise MaterialError(f"no material {material_id}; see `qunfa materials list`")
            prev = s.scalars(
                select(MaterialVersion).where(
                    MaterialVersion.material_id == material_id,
                    MaterialVersion.version == mat.current_version,
                )
            ).first()
            new_body = dict(body) if body is not None else dict(prev.body if prev else {})
            if not new_body:
                new_body = {"default": {}}
            _validate_body(mat.kind, new_body)
            file_fields: dict[str, Any] = {}
            if data is not None:
                file_fields = self._store(data, filename)
            elif prev is not None and prev.file_path:
                file_fields = {
                    k: getattr(prev, k)
                    for k in ("file_path", "sha256", "size", "mime", "width", "height", "duration")
                }
            if mat.kind in MEDIA_KINDS and not file_fields:
                raise MaterialError(f"a {mat.kind} material needs a file (--file PATH)")
            if mat.kind == "image" and not file_fields["mime"].startswith("image/"):
                raise MaterialError(
                    f"{filename or 'the file'} is {file_fields['mime']}, not an image"
                )
            if mat.kind == "video" and not file_fields["mime"].startswith("video/"):
                raise MaterialError(
                    f"{filename or 'the file'} is {file_fields['mime']}, not a video"
                )
            version = MaterialVersion(
                material_id=material_id,
                version=mat.current_version + 1,
                body=new_body,
                created_by=created_by,
                created_at=now,
                **file_fields,
            )
            s.add(version)
            mat.current_version += 1
            mat.updated_at = now
            s.commit()
            s.refresh(version)
            s.expunge(version)
            return version

    def _store(self, data: bytes, filename: str) -> dict[str, Any]:
        info = inspect(data)
        digest = hashlib.sha256(data).hexdigest()
        ext = info.ext if info.ext != "bin" else (filename.rsplit(".", 1)[-1].lower() or "bin")
        path = self.root / digest[:2] / f"{digest}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # content-addressed: the same bytes are stored once
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return {
            "file_path": str(path.relative_to(Path(self.c.settings.data_dir))),
            "sha256": digest,
            "size": len(data),
            "mime": info.mime,
            "width": info.width,
            "height": info.height,
            "duration": info.duration,
        }

    def all(self, include_archived: bool = False) -> list[Material]:
        with self.c.sessions() as s:
            q = select(Material).order_by(Material.id)
            if not include_archived:
                q = q.where(Material.archived.is_(False))
            return list(s.scalars(q))

    def get(self, material_id: int) -> Material:
        with self.c.sessions() as s:
            mat = s.get(Material, material_id)
            if mat is None:
                raise MaterialError(f"no material {material_id}; see `qunfa materials list`")
            return mat

    def version(self, material_id: int, version: int | None = None) -> MaterialVersion:
        """One version (default: the current one)."""
        mat = self.get(material_id)
        wanted = mat.current_version if version is None else version
        with self.c.sessions() as s:
            found = s.scalars(
                select(MaterialVersion).where(
                    MaterialVersion.material_id == material_id,
                    MaterialVersion.version == wanted,
                )
            ).first()
            if found is None:
                raise MaterialError(
                    f"material {material_id} has no version {wanted} (latest: "
                    f"{mat.current_version})"
                )
            return found

    def versions(self, material_id: int) -> list[MaterialVersion]:
        with self.c.sessions() as s:
            return list(
                s.scalars(
                    select(MaterialVersion)
                    .where(MaterialVersion.material_id == material_id)
                    .order_by(MaterialVersion.version)
                )
            )

    def uses(self, material_id: int) -> list[MaterialUse]:
        with self.c.sessions() as s:
            return list(
                s.scalars(
                    select(MaterialUse)
                    .where(MaterialUse.material_id == material_id)
                    .order_by(MaterialUse.used_at)
                )
            )

    def uploads(self, version_id: int) -> list[MediaUpload]:
        with self.c.sessions() as s:
            return list(s.scalars(select(MediaUpload).where(MediaUpload.version_id == version_id)))

    def record_use(self, material_id: int, version: int, campaign_id: int) -> None:
        """Remember that ``campaign_id`` uses this version (idempotent)."""
        with self.c.sessions() as s:
            exists = s.scalars(
                select(MaterialUse).where(
                    MaterialUse.material_id == material_id,
                    MaterialUse.version == version,
                    MaterialUse.campaign_id == campaign_id,
                )
            ).first()
            if exists is None:
                s.add(
                    MaterialUse(
                        material_id=material_id,
                        version=version,
                        campaign_id=campaign_id,
                        used_at=self.clock(),
                    )
                )
                s.commit()

    def file_bytes(self, v: MaterialVersion) -> bytes:
        if not v.file_path:
            raise MaterialError(f"material {v.material_id} v{v.version} has no file")
        return (Path(self.c.settings.data_dir) / v.file_path).read_bytes()

    def media_facts(self, v: MaterialVersion, field: str = "media") -> list[MediaFacts]:
        """What the lint needs of a version's file."""
        if not v.file_path or v.mime is None or v.size is None:
            return []
        kind = {"image": "image", "video": "video"}.get(v.mime.split("/", 1)[0], "file")
        return [MediaFacts(field, kind, v.mime, v.size, v.width, v.height, v.duration)]

    # -- resolving content ---------------------------------------------------------------------
    def resolve(
        self, content: Mapping[str, Any], channel: str
    ) -> tuple[dict[str, Any], MaterialVersion | None]:
        """(concrete content, the version it came from) — content without a reference as is."""
        ref = material_ref(content)
        if ref is None:
            return dict(content), None
        v = self.version(ref.material_id, ref.version)
        mat = self.get(ref.material_id)
        variant = dict(v.body.get(channel) or v.body.get("default") or {})
        extra = {k: val for k, val in content.items() if k not in ("material_id", "version")}
        if isinstance(variant.get("content"), Mapping):  # a verbatim channel content
            return {**copy.deepcopy(dict(variant["content"])), **extra}, v
        return {**self._shape(mat, v, variant, channel), **extra}, v

    def resolve_content(self, campaign_content: Mapping[str, Any], channel: str) -> dict[str, Any]:
        """The channel's concrete content for ``campaign_content`` (a material reference or
        plain content); media appear as ``"@media:<version_id>[:kind]"`` until sent."""
        return self.resolve(campaign_content, channel)[0]

    def _shape(
        self, mat: Material, v: MaterialVersion, variant: Mapping[str, Any], channel: str
    ) -> dict[str, Any]:
        media = f"@media:{v.id}"
        text = str(variant.get("text") or "")
        kind = mat.kind
        if channel in ("sms_tencent", "sms_aliyun"):
            if kind != "text":
                raise MaterialError(f"{channel} sends text only; material {mat.id} is {kind}")
            return {k: val for k, val in variant.items()} | {"text": text}
        if channel == "email":
            return {
                "subject": str(variant.get("subject") or mat.title),
                "text": text,
                **({"html": variant["html"]} if variant.get("html") else {}),
            }
        if channel == "wechat_oa":
            if kind == "text":
                return {"msgtype": "text", "text": {"content": text}}
            if kind == "image":
                return {"msgtype": "image", "image": {"media_id": media}}
            if kind == "video":
                return {
                    "msgtype": "mpvideo",
                    "mpvideo": {
                        "media_id": media,
                        "title": mat.title,
                        "description": str(variant.get("description") or ""),
                    },
                }
            if kind == "news":
                return {"msgtype": "mpnews", "mpnews": {"media_id": f"{media}:draft"}}
        if channel == "wecom_app":
            if kind == "text":
                return {"msgtype": "text", "text": {"content": text}}
            if kind in MEDIA_KINDS:
                return {"msgtype": kind, kind: {"media_id": media}}
            if kind == "link":
                return {
                    "msgtype": "textcard",
                    "textcard": {
                        "title": str(variant.get("title") or mat.title),
                        "description": str(variant.get("desc") or ""),
                        "url": variant["url"],
                        "btntxt": str(variant.get("btntxt") or "详情"),
                    },
                }
        if channel == "wecom_customer":
            out: dict[str, Any] = {"text": {"content": text}} if text else {}
            if kind in MEDIA_KINDS:
                out["attachments"] = [{"msgtype": kind, kind: {"media_id": media}}]
            elif kind == "link":
                out["attachments"] = [
                    {
                        "msgtype": "link",
                        "link": {
                            "title": str(variant.get("title") or mat.title),
                            "url": variant["url"],
                            "desc": str(variant.get("desc") or ""),
                            **({"picurl": variant["picurl"]} if variant.get("picurl") else {}),
                        },
                    }
                ]
            elif kind == "miniprogram":
                pic = variant.get("pic_material_id")
                pic_id = f"@media:{self.version(int(pic)).id}" if pic else ""
                out["attachments"] = [
                    {
                        "msgtype": "miniprogram",
                        "miniprogram": {
                            "title": variant["title"],
                            "appid": variant["appid"],
                            "page": variant["page"],
                            "pic_media_id": pic_id,
                        },
                    }
                ]
            if out:
                return out
        if kind == "text" and text:
            return dict(variant)
        raise MaterialError(
            f"material {mat.id} ({kind}) has no {channel} form: add a variant "
            f'body["{channel}"] = {{"content": {{…the channel\'s content…}}}}'
        )

    # -- preview -------------------------------------------------------------------------------
    def preview(
        self,
        content_or_campaign_id: Mapping[str, Any] | int,
        contact_id: int,
        channel: str | None = None,
    ) -> dict[str, Any]:
        """What contact ``contact_id`` would receive: the content resolved for the channel (a
        material reference becomes its variant; media stay ``@media:`` placeholders — nothing
        is uploaded) with every template rendered for the contact.

        A campaign id brings its own content and channel; plain content needs ``channel``.
        The template check runs first, so an unknown variable or a per-person variable on a
        channel that cannot personalise is a :class:`MaterialError` naming it, never a blank.
        """
        from qunfa.content.templating import (
            TemplateError,
            check_content,
            contact_context,
            render_content,
        )
        from qunfa.storage.models import Campaign, Contact

        with self.c.sessions() as s:
            if isinstance(content_or_campaign_id, int):
                camp = s.get(Campaign, content_or_campaign_id)
                if camp is None:
                    raise MaterialError(
                        f"no campaign {content_or_campaign_id}; see `qunfa campaign list`"
                    )
                content: Mapping[str, Any] = camp.content
                channel = channel or camp.channel
            else:
                content = content_or_campaign_id
            person = s.get(Contact, contact_id)
            if person is None:
                raise MaterialError(f"no contact {contact_id}; see `qunfa contacts list`")
            s.expunge(person)
        if not channel:
            raise MaterialError("preview needs a channel for plain content (--channel)")
        variables = content.get("variables")
        values = dict(variables) if isinstance(variables, Mapping) else {}
        resolved = self.resolve_content(content, channel)
        issues = check_content(resolved, channel, variables=values)
        if issues:
            raise MaterialError("; ".join(i.message for i in issues))
        name = self.c.keyring.decrypt(person.name_enc) if person.name_enc else None
        ctx = contact_context(
            name=name, city=person.city, province=person.province, gender=person.gender,
            birthday=person.birthday, timezone=person.timezone, attrs=person.attrs,
            variables=values,
        )  # fmt: skip
        try:
            rendered = render_content(resolved, ctx)
        except TemplateError as exc:
            raise MaterialError(str(exc)) from exc
        rendered.pop("variables", None)
        return {"channel": channel, "contact_id": contact_id, "content": rendered}

    # -- uploads -------------------------------------------------------------------------------
    async def content_for_send(
        self, content: Mapping[str, Any], account: Account, channel: str, http: HttpClient
    ) -> dict[str, Any]:
        """``content`` resolved for ``channel`` with every media placeholder uploaded."""
        resolved = self.resolve_content(content, channel)

        async def walk(value: Any) -> Any:
            if isinstance(value, str):
                m = PLACEHOLDER.match(value)
                if m:
                    return await self.media_id(
                        int(m.group(1)), account, channel, http, kind=m.group(2)
                    )
                return value
            if isinstance(value, Mapping):
                return {k: await walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [await walk(v) for v in value]
            return value

        out: dict[str, Any] = await walk(resolved)
        return out

    def invalidate(self, media_id: str) -> int:
        """Forget a cached media_id the platform refused (40007): the next send re-uploads."""
        with self.c.sessions() as s:
            rows = list(s.scalars(select(MediaUpload).where(MediaUpload.media_id == media_id)))
            for row in rows:
                s.delete(row)
            s.commit()
            return len(rows)

    async def media_id(
        self,
        version_id: int,
        account: Account,
        channel: str,
        http: HttpClient,
        *,
        kind: str | None = None,
    ) -> str:
        """The platform's media_id for a version on ``account``, uploading it if needed.

        Official Account mass sends take permanent media (material/add_material) and drafts;
        WeCom takes temporary media (3 days). A cached id past its expiry is uploaded again.
        """
        platform = "wechat" if account.channel.startswith("wechat") else "wecom"
        upload_kind = kind or ("permanent" if platform == "wechat" else "temporary")
        now = self.clock()
        with self.c.sessions() as s:
            cached = s.scalars(
                select(MediaUpload).where(
                    MediaUpload.version_id == version_id,
                    MediaUpload.account_id == account.id,
                    MediaUpload.channel == channel,
                    MediaUpload.kind == upload_kind,
                )
            ).first()
            if cached is not None and (cached.expires_at is None or cached.expires_at > now + 60):
                return cached.media_id
            if cached is not None:  # expired (a minute's margin for the send itself)
                s.delete(cached)
                s.commit()
            v = s.get(MaterialVersion, version_id)
            if v is None:
                raise MaterialError(f"no material version {version_id}")
            s.expunge(v)
        cfg = self.c.accounts.config(account, channel)
        ctx = ChannelContext(http=http, tokens=self.c.tokens, limiter=self.c.limiter)
        api = api_for(cfg, ctx)
        mat = self.get(v.material_id)
        url: str | None = None
        expires: float | None = None
        if upload_kind == "draft":
            media_id = await self._draft(v, account, channel, http, api)
        else:
            file = UploadFile(Path(v.file_path or "x").name, self.file_bytes(v), v.mime or "")
            mtype = (
                "image"
                if (v.mime or "").startswith("image/")
                else ("video" if (v.mime or "").startswith("video/") else "file")
            )
            try:
                if platform == "wechat" and upload_kind == "permanent":
                    fields = video_description(mat.title, "") if mtype == "video" else None
                    data = await upload(
                        api, "material/add_material", file, params={"type": mtype}, fields=fields
                    )
                    url = data.get("url")
                else:
                    data = await upload(api, "media/upload", file, params={"type": mtype})
                    expires = now + cfg.rules["media_temporary_seconds"]
            except ApiCallError as exc:
                raise MaterialError(
                    f"{account.app_id} refused material {v.material_id} v{v.version} "
                    f"({v.mime}, {v.size} bytes): {exc}"
                ) from exc
            media_id = str(data.get("media_id") or data.get("thumb_media_id"))
        with self.c.sessions() as s:
            s.add(
                MediaUpload(
                    version_id=version_id,
                    account_id=account.id,
                    channel=channel,
                    kind=upload_kind,
                    media_id=media_id,
                    url=url,
                    uploaded_at=now,
                    expires_at=expires,
                )
            )
            s.commit()
        return media_id

    async def _draft(
        self, v: MaterialVersion, account: Account, channel: str, http: HttpClient, api: Any
    ) -> str:
        articles = []
        for art in (
            v.body.get(channel, v.body["default"]).get("articles") or v.body["default"]["articles"]
        ):
            cover = self.version(int(art["cover_material_id"]))
            thumb = await self.media_id(cover.id, account, channel, http, kind="permanent")
            articles.append(
                {
                    "title": art["title"],
                    "author": art.get("author", ""),
                    "digest": art.get("digest", ""),
                    "content": art["content"],
                    "content_source_url": art.get("source_url", ""),
                    "thumb_media_id": thumb,
                    "need_open_comment": int(bool(art.get("open_comment"))),
                    "only_fans_can_comment": int(bool(art.get("fans_only_comment"))),
                }
            )
        try:
            return await add_draft(api, articles)
        except ApiCallError as exc:
            raise MaterialError(f"draft/add refused material {v.material_id}: {exc}") from exc
