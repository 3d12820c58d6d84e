"""Webhook twin, channel ``webhook``: a receiver that honours qunfa's webhook contract.

``POST /webhook/receive/<name>`` verifies ``X-Qunfa-Signature`` against the secret registered
with ``POST /_sandbox/webhook/accounts {name, secret}`` using :func:`qunfa.channels.webhook.verify`
(the same code receivers are told to copy), with the sandbox clock, so advancing the clock past
``signature_max_age_seconds`` makes signatures stale. Missing headers, a stale timestamp or a bad
signature → 401. A repeated ``Idempotency-Key`` inside ``dedupe_window_seconds`` → 200
``{"ok": true, "duplicate": true}`` and nothing recorded; otherwise every recipient of the body is
written to the ledger (channel ``webhook``, message id = the key) in the same transaction as the
key. An endpoint may be told to answer ``force_status`` (with ``retry_after`` and ``force_body``)
to rehearse a failing receiver. Generic faults apply (``platform: "webhook"``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from qunfa import rules
from qunfa.channels.webhook import KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from qunfa.sandbox import faults, ledger
from qunfa.sandbox.state import STATE, State

CHANNEL = "webhook"
PREFIX = "/webhook/receive"

TWIN = "webhook"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS wh_endpoints (
    name TEXT PRIMARY KEY, secret TEXT NOT NULL, force_status INTEGER, retry_after TEXT,
    force_body TEXT NOT NULL, rules TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wh_keys (
    name TEXT NOT NULL, key TEXT NOT NULL, ts REAL NOT NULL, recipients INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wh_requests (
    name TEXT NOT NULL, ts REAL NOT NULL, status INTEGER NOT NULL, key TEXT
);
CREATE INDEX IF NOT EXISTS wh_requests_name ON wh_requests(name, ts);
"""
# A receiver has no error envelope: an injected error without http_status is a 503.
faults.ERROR_STATUS[TWIN] = 503


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    name, overrides = str(spec["name"]), dict(spec.get("rules") or {})
    rules.load("webhook").with_overrides(overrides)  # unknown rule names fail here
    force = spec.get("force_status")
    retry = spec.get("retry_after")
    with state.tx() as db:
        db.execute(
            "INSERT INTO wh_endpoints VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET"
            " secret = excluded.secret, force_status = excluded.force_status,"
            " retry_after = excluded.retry_after, force_body = excluded.force_body,"
            " rules = excluded.rules",
            (name, str(spec["secret"]), None if force is None else int(force),
             None if retry is None else str(retry), str(spec.get("force_body", "")),
             json.dumps(overrides)),
        )  # fmt: skip
    return {"name": name, "url_path": f"{PREFIX}/{name}"}


async def receive(request: web.Request) -> web.Response:
    state, name = request.app[STATE], request.match_info["name"]
    row = state.db.execute(
        "SELECT secret, force_status, retry_after, force_body, rules FROM wh_endpoints"
        " WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return _json({"error": f"no endpoint {name!r}"}, 404)
    secret, force, retry, force_body, overrides = row
    r = rules.load("webhook").with_overrides(json.loads(overrides))
    raw, now = await request.read(), state.now()
    key = request.headers.get(KEY_HEADER, "")

    def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        with state.tx() as db:
            db.execute("INSERT INTO wh_requests VALUES (?,?,?,?)", (name, now, status, key or None))
        resp = _json(body, status) if not isinstance(body, str) else web.Response(
            status=status, text=body)  # fmt: skip
        resp.headers.update(headers or {})
        return resp

    ts = request.headers.get(TIMESTAMP_HEADER, "")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not ts or not signature:
        return answer(401, {"error": "missing signature headers"})
    if not verify(secret, ts, raw, signature, now=now, max_age=r["signature_max_age_seconds"]):
        return answer(401, {"error": "bad signature or stale timestamp"})
    if force is not None:
        return answer(force, force_body or {"error": "forced"},
                      {"Retry-After": retry} if retry else None)  # fmt: skip
    if not key:
        return answer(400, {"error": f"missing {KEY_HEADER}"})
    try:
        body = json.loads(raw)
        recipients = [str(x) for x in body["recipients"]]
    except (ValueError, KeyError, TypeError):
        return answer(400, {"error": "body must be JSON with a recipients list"})
    seen = state.one(
        "SELECT 1 FROM wh_keys WHERE name = ? AND key = ? AND ts > ?",
        (name, key, now - r["dedupe_window_seconds"]),
    )
    if seen is not None:
        return answer(200, {"ok": True, "duplicate": True, "id": key})
    with state.tx() as db:
        db.execute(
            "INSERT INTO wh_keys VALUES (?,?,?,?) ON CONFLICT(name, key) DO UPDATE SET"
            " ts = excluded.ts, recipients = excluded.recipients",
            (name, key, now, len(recipients)),
        )
        ledger.record(db, CHANNEL, name, key, recipients, now)
    return answer(200, {"ok": True, "duplicate": False, "id": key, "recipients": len(recipients)})


async def admin_create(request: web.Request) -> web.Response:
    spec = json.loads(await request.read() or b"{}")
    return _json(create_account(request.app[STATE], spec))


async def admin_requests(request: web.Request) -> web.Response:
    """Every request an endpoint received, with the status it answered (oldest first)."""
    name = request.match_info["name"]
    rows = (
        request.app[STATE]
        .db.execute(
            "SELECT ts, status, key FROM wh_requests WHERE name = ? ORDER BY ts, rowid", (name,)
        )
        .fetchall()
    )
    return _json({"name": name, "requests": [{"ts": t, "status": s, "key": k} for t, s, k in rows]})


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/{{name}}", receive)
    app.router.add_post("/_sandbox/webhook/accounts", admin_create)
    app.router.add_get("/_sandbox/webhook/accounts/{name}/requests", admin_requests)
