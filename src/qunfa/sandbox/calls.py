"""A count of the platform calls the sandbox answered, for tests and benchmarks.

Every request on a platform path (not ``/_sandbox``) is counted by path, with the size of the
largest list in its JSON body (``openid_list``, ``user_list``, ``userid_list`` …), so a test can
assert "the resumed sync did not page from the start" or "no batchtagging call held more than
50 openids" without reading the platform's state. Kept in memory (it is a view of this run, not
platform state): ``GET /_sandbox/calls?path=<substring>`` reads it, ``DELETE`` clears it.
Faulted requests are counted too: the middleware sits outside fault injection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

ADMIN_PREFIX = "/_sandbox"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CallLog:
    """Per path: how many calls, and the list sizes their bodies carried (in order)."""

    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = {}

    def record(self, path: str, size: int) -> None:
        self.sizes.setdefault(path, []).append(size)

    def describe(self, contains: str = "") -> dict[str, Any]:
        paths = {p: s for p, s in self.sizes.items() if contains in p}
        return {
            "calls": sum(len(s) for s in paths.values()),
            "paths": {p: {"calls": len(s), "max_list": max(s), "sizes": s[-1000:]}
                      for p, s in sorted(paths.items())},
        }  # fmt: skip


CALLS: web.AppKey[CallLog] = web.AppKey("qunfa_sandbox_calls", CallLog)


def _largest_list(raw: bytes) -> int:
    if not raw.strip().startswith(b"{"):
        return 0
    try:
        body = json.loads(raw)
    except ValueError:
        return 0
    return max((len(v) for v in body.values() if isinstance(v, list)), default=0)


@web.middleware
async def call_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    log = request.app.get(CALLS)
    if log is not None and not request.path.startswith(ADMIN_PREFIX):
        # aiohttp caches the body, so the handler reads it again for free.
        log.record(
            request.path, _largest_list(await request.read()) if request.can_read_body else 0
        )
    return await handler(request)


async def get_calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[CALLS].describe(request.query.get("path", "")))


async def clear_calls(request: web.Request) -> web.Response:
    request.app[CALLS].sizes.clear()
    return web.json_response({"calls": 0, "paths": {}})


def add_routes(app: web.Application) -> None:
    app[CALLS] = CallLog()
    app.router.add_get(f"{ADMIN_PREFIX}/calls", get_calls)
    app.router.add_delete(f"{ADMIN_PREFIX}/calls", clear_calls)
