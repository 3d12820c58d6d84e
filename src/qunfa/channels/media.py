"""Media uploads to WeChat Official Accounts and WeCom (multipart, as the real APIs take them).

OA: ``media/upload?type=`` (temporary, 3 days), ``material/add_material?type=`` (permanent),
``media/uploadimg`` (a URL for images inside article HTML), ``draft/add`` (JSON articles →
the mpnews media_id). WeCom: ``media/upload?type=`` (3 days), ``media/uploadimg``. The file goes
in the form field ``media``; the token is the account's shared one (re-fetched once on
40001/40014/42001 via :meth:`TokenService.call_with_token`). A non-zero errcode raises the
platform's :class:`~qunfa.channels.errcode_api.ApiCallError` (40005 type, 45001 size, 40007 id …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from qunfa.channels.base import AccountConfig, ChannelContext
from qunfa.channels.errcode_api import TOKEN_ERRORS, ErrcodeApi
from qunfa.channels.http import decode_json
from qunfa.channels.wechat_oa import WECHAT_ERRORS, WechatApi
from qunfa.channels.wecom_common import WECOM_ERRORS, WecomApi

MEDIA_ERRORS = {40004, 40005, 40006, 40007, 40009, 40011, 41005, 44001, 45001, 45003, 45004}


@dataclass(frozen=True)
class UploadFile:
    filename: str
    data: bytes
    mime: str


def api_for(account: AccountConfig, ctx: ChannelContext) -> ErrcodeApi:
    """The errcode API of the account's platform (wechat_oa or a WeCom channel)."""
    if account.channel.startswith("wechat"):
        return WechatApi(account, ctx, WECHAT_ERRORS)
    if account.channel.startswith("wecom"):
        return WecomApi(account, ctx, WECOM_ERRORS)
    raise ValueError(f"{account.channel} has no media upload API (WeChat OA and WeCom do)")


async def upload(
    api: ErrcodeApi,
    path: str,
    file: UploadFile,
    *,
    params: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST ``file`` as multipart field ``media`` to ``path``; the decoded success body."""
    url = f"{api.root}/{path}"

    async def request(token: str) -> dict[str, Any]:
        form = aiohttp.FormData()  # one per attempt: a FormData is consumed by sending it
        for key, value in (fields or {}).items():
            form.add_field(key, value)
        form.add_field("media", file.data, filename=file.filename, content_type=file.mime)
        query = {"access_token": token, **(params or {})}
        resp = await api.ctx.http.request_raw("POST", url, params=query, data=form)
        data: dict[str, Any] = decode_json(resp, url)
        return data

    data = await api.ctx.tokens.call_with_token(
        api.account.id,
        api._fetch_token,
        request,
        lambda d: int(d.get("errcode", 0)) in TOKEN_ERRORS,
    )
    code = int(data.get("errcode", 0))
    if code != 0:
        raise api.api_error(api.classify(code, str(data.get("errmsg", ""))))
    return data


async def add_draft(api: ErrcodeApi, articles: list[dict[str, Any]]) -> str:
    """``draft/add``: the articles (each with a permanent ``thumb_media_id``) → media_id."""
    data = await api.call_ok("POST", "draft/add", {"articles": articles})
    return str(data["media_id"])


def video_description(title: str, introduction: str) -> dict[str, str]:
    """The ``description`` form field a permanent video needs."""
    return {"description": json.dumps({"title": title, "introduction": introduction})}
