"""Fault injection for platform paths (never ``/_sandbox``), configured by ``/_sandbox/faults``.

One active configuration at a time (a POST replaces it), persisted in ``meta`` so it survives a
restart. Per request on a matching platform path, in this order:

1. ``latency_ms`` — sleep first;
2. ``error_rate`` — with that probability answer at once, without processing: HTTP
   ``http_status`` if set, else HTTP 200 ``{"errcode": errcode, "errmsg": "system error"}``;
3. ``accept_then_timeout_rate`` — with that probability process and commit the request normally,
   then withhold the response for ``hang_seconds`` so the client times out (the send happened).

Draws come from ``random.Random(seed)`` when a seed is given, so a run is reproducible.
``revoke_tokens`` is an action, not a state: it invalidates every current token once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from qunfa.sandbox.state import State

ADMIN_PREFIX = "/_sandbox"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Platforms whose error body is not ``{"errcode", "errmsg"}`` register a builder here, keyed by
# their URL prefix (a twin does it at import): (errcode, errmsg) → the platform's error body.
ERROR_BODIES: dict[str, Callable[[int | str, str], dict[str, Any]]] = {}
# Platforms whose injected error is an HTTP status rather than a JSON body (a webhook receiver
# has no error envelope: HTTP 200 would mean "delivered"); used when no http_status is given.
ERROR_STATUS: dict[str, int] = {}


@dataclass
class FaultConfig:
    platform: str | None = None
    error_rate: float = 0.0
    errcode: int | str = -1  # a string for platforms with string codes (Tencent, Aliyun)
    errmsg: str = "system error"
    http_status: int | None = None
    latency_ms: int = 0
    accept_then_timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    paths: list[str] = field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        for name in ("error_rate", "accept_then_timeout_rate"):
            value = float(getattr(cfg, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
            setattr(cfg, name, value)
        if cfg.platform == "all":
            cfg.platform = None
        return cfg

    def matches(self, path: str) -> bool:
        platform = path.strip("/").split("/", 1)[0]
        if self.platform is not None and platform != self.platform:
            return False
        return not self.paths or any(p in path for p in self.paths)


class FaultInjector:
    """The active fault configuration and its random stream."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.config: FaultConfig | None = None
        self.rng = random.Random()
        saved = state.get_meta("faults")
        if saved:
            self._activate(FaultConfig.from_json(saved))

    def _activate(self, cfg: FaultConfig | None) -> None:
        self.config = cfg
        self.rng = random.Random(cfg.seed if cfg is not None else None)

    def configure(self, cfg: FaultConfig) -> None:
        with self.state.tx():
            self.state.set_meta("faults", asdict(cfg))
        self._activate(cfg)

    def clear(self) -> None:
        with self.state.tx():
            self.state.del_meta("faults")
        self._activate(None)

    def describe(self) -> dict[str, Any]:
        return {
            "active": self.config is not None,
            "faults": asdict(self.config) if self.config else None,
        }

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        cfg = self.config
        if cfg is None or request.path.startswith(ADMIN_PREFIX) or not cfg.matches(request.path):
            return await handler(request)
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        if cfg.error_rate and self.rng.random() < cfg.error_rate:
            status = cfg.http_status or ERROR_STATUS.get(request.path.strip("/").split("/", 1)[0])
            if status:
                return web.Response(status=status, text="injected fault")
            make = ERROR_BODIES.get(request.path.strip("/").split("/", 1)[0])
            body = (
                make(cfg.errcode, cfg.errmsg)
                if make
                else {"errcode": cfg.errcode, "errmsg": cfg.errmsg}
            )
            return web.Response(text=json.dumps(body), content_type="application/json")
        if cfg.accept_then_timeout_rate and self.rng.random() < cfg.accept_then_timeout_rate:
            response = await handler(request)
            await asyncio.sleep(cfg.hang_seconds)
            return response
        return await handler(request)


FAULTS: web.AppKey[FaultInjector] = web.AppKey("qunfa_sandbox_faults", FaultInjector)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    injector = request.app.get(FAULTS)
    if injector is None:
        return await handler(request)
    return await injector(request, handler)
