"""The sandbox's own API under ``/_sandbox/`` (never subject to injected faults).

``reset``, ``health``, ``ledger``, ``faults``, ``clock``, ``callbacks`` and the Official Account
fixtures under ``/_sandbox/wechat/accounts``. Answers are JSON; a bad request is HTTP 400
``{"error": "..."}``. Documented with curl examples in ``docs/sandbox.md``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from qunfa.sandbox import callbacks, ledger, wechat_accounts
from qunfa.sandbox.faults import FAULTS, FaultConfig
from qunfa.sandbox.state import STATE

PREFIX = "/_sandbox"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


@web.middleware
async def bad_request(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn malformed admin input into HTTP 400 with a reason."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except (ValueError, KeyError, TypeError) as exc:
        if not request.path.startswith(PREFIX):
            raise
        return _json({"error": f"{type(exc).__name__}: {exc}"}, status=400)


async def health(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    request.app[FAULTS].clear()
    return _json({"ok": True})


async def get_ledger(request: web.Request) -> web.Response:
    channel = request.query["channel"]
    account = request.query.get("account")
    return _json(ledger.summary(request.app[STATE].db, channel, account))


async def set_faults(request: web.Request) -> web.Response:
    data = await _body(request)
    revoked = None
    if data.pop("revoke_tokens", False):
        revoked = wechat_accounts.revoke_all_tokens(request.app[STATE])
    injector = request.app[FAULTS]
    if data:  # {"revoke_tokens": true} alone leaves the active configuration as it is
        injector.configure(FaultConfig.from_json(data))
    out = injector.describe()
    if revoked is not None:
        out["revoked_tokens"] = revoked
    return _json(out)


async def get_faults(request: web.Request) -> web.Response:
    return _json(request.app[FAULTS].describe())


async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return _json(request.app[FAULTS].describe())


async def get_clock(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = state.now()
    return _json({"now": now, "iso": state.iso(now), "offset": state.offset})


async def advance_clock(request: web.Request) -> web.Response:
    seconds = float((await _body(request))["advance"])
    if seconds < 0:
        raise ValueError("the clock only moves forward")
    request.app[STATE].advance(seconds)
    return await get_clock(request)


async def get_callbacks(request: web.Request) -> web.Response:
    account = request.query.get("account")
    limit = int(request.query.get("limit", "1000"))
    return _json({"callbacks": callbacks.listing(request.app[STATE], account, limit)})


async def create_account(request: web.Request) -> web.Response:
    spec = await _body(request)
    return _json(wechat_accounts.create_account(request.app[STATE], spec))


async def list_accounts(request: web.Request) -> web.Response:
    return _json({"accounts": wechat_accounts.list_accounts(request.app[STATE])})


async def unfollow(request: web.Request) -> web.Response:
    openids = (await _body(request))["openids"]
    if not isinstance(openids, list):
        raise ValueError("openids must be a list")
    appid = request.match_info["appid"]
    n = wechat_accounts.unfollow(request.app[STATE], appid, [str(o) for o in openids])
    return _json({"appid": appid, "unfollowed": n})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/health", health)
    r.add_post(f"{PREFIX}/reset", reset)
    r.add_get(f"{PREFIX}/ledger", get_ledger)
    r.add_get(f"{PREFIX}/faults", get_faults)
    r.add_post(f"{PREFIX}/faults", set_faults)
    r.add_delete(f"{PREFIX}/faults", clear_faults)
    r.add_get(f"{PREFIX}/clock", get_clock)
    r.add_post(f"{PREFIX}/clock", advance_clock)
    r.add_get(f"{PREFIX}/callbacks", get_callbacks)
    r.add_get(f"{PREFIX}/wechat/accounts", list_accounts)
    r.add_post(f"{PREFIX}/wechat/accounts", create_account)
    r.add_post(f"{PREFIX}/wechat/accounts/{{appid}}/unfollow", unfollow)
