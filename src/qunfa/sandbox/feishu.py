"""Feishu twin, channel ``feishu``: tenant tokens and batch messages (reference §5.1, §5.2).

Serves ``/feishu/open-apis/...`` (standing for ``https://open.feishu.cn/open-apis/...``). A
tenant has N users with deterministic open_ids (:func:`open_ids`). Error bodies are
``{"code": N, "msg": "..."}``: HTTP 200 for batch_send's business errors, HTTP 400 for the
gateway's (token 99991661/99991663, frequency limit 99991400) and im/v1's 230xxx.

``batch_send`` decides at acceptance, in one transaction (batch row + ledger rows), which valid
users receive it: all but a deterministic ``invisible_rate`` share (users the bot cannot reach,
counted in valid but never in success). ``get_progress`` shows zeros until the account's
``job_delay_seconds`` have passed, then the final counters. Limits from ``rules/feishu.toml``:
requests/s and /min per app and API (refused calls are not counted), messages/day per app
(a batch that would cross it is refused whole with 11247). Tokens live in the shared
``wx_tokens`` table (``kind = 'feishu'``) so ``revoke_tokens`` reaches them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from aiohttp import web

from qunfa import rules
from qunfa.sandbox import faults, ledger
from qunfa.sandbox.dingtalk import share
from qunfa.sandbox.state import STATE, State

CHANNEL = "feishu"
PREFIX = "/feishu/open-apis"
FIELDS = {"text": "text", "post": "post", "image": "image_key", "share_chat": "share_chat_id"}

TWIN = "feishu"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS fs_apps (
    app_id TEXT PRIMARY KEY, app_secret TEXT NOT NULL, seed INTEGER NOT NULL,
    users INTEGER NOT NULL, job_delay REAL NOT NULL, read_rate REAL NOT NULL,
    invisible_rate REAL NOT NULL, bot INTEGER NOT NULL, batch_permission INTEGER NOT NULL,
    blocked_words TEXT NOT NULL, rules TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fs_users (
    app_id TEXT NOT NULL, open_id TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (app_id, open_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fs_batches (
    message_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, created_at REAL NOT NULL,
    due_at REAL NOT NULL, valid INTEGER NOT NULL, success INTEGER NOT NULL, read INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fs_batches_app ON fs_batches(app_id, created_at);
CREATE TABLE IF NOT EXISTS fs_calls (app_id TEXT NOT NULL, api TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fs_calls_app ON fs_calls(app_id, api, ts);
"""
# Injected faults answer in Feishu's shape: {"code": N, "msg": "..."}.
faults.ERROR_BODIES[TWIN] = lambda code, msg: {"code": code, "msg": msg}


class ApiError(Exception):
    def __init__(self, code: int, msg: str, http_status: int = 200) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.http_status = code, msg, http_status


def reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json"
    )


def open_ids(app_id: str, seed: int, n: int) -> list[str]:
    """The tenant's open_ids in index order: ``ou_`` + 32 hex digits of a hash."""
    return [
        "ou_" + hashlib.blake2b(f"{app_id}:{seed}:{i}".encode(), digest_size=16).hexdigest()
        for i in range(n)
    ]


def _app(state: State, app_id: str) -> dict[str, Any] | None:
    cur = state.db.execute("SELECT * FROM fs_apps WHERE app_id = ?", (app_id,))
    row = cur.fetchone()
    if row is None:
        return None
    app = dict(zip([d[0] for d in cur.description], row, strict=True))
    app["rules"] = rules.load("feishu").with_overrides(json.loads(app["rules"]))
    app["blocked_words"] = json.loads(app["blocked_words"])
    return app


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    app_id, overrides = str(spec["app_id"]), dict(spec.get("rules") or {})
    rules.load("feishu").with_overrides(overrides)  # unknown rule names fail here
    seed, n = int(spec.get("seed", 0)), int(spec.get("users", 100))
    with state.tx() as db:
        for table in ("fs_apps", "fs_users", "fs_batches", "fs_calls"):
            db.execute(f"DELETE FROM {table} WHERE app_id = ?", (app_id,))
        db.execute("DELETE FROM ledger WHERE channel = ? AND account = ?", (CHANNEL, app_id))
        db.execute(
            "INSERT INTO fs_apps VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (app_id, str(spec["app_secret"]), seed, n, float(spec.get("job_delay_seconds", 1.0)),
             float(spec.get("read_rate", 0.5)), float(spec.get("invisible_rate", 0.0)),
             int(bool(spec.get("bot", True))), int(bool(spec.get("batch_permission", True))),
             json.dumps(list(spec.get("blocked_words") or [])), json.dumps(overrides)),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO fs_users VALUES (?,?,?)",
            ((app_id, o, i) for i, o in enumerate(open_ids(app_id, seed, n))),
        )
    return {"app_id": app_id, "users": n}


# -- tenant_access_token (§5.1): the same token until < renew window left, then a new one ------
async def tenant_token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read() or b"{}")
        app = _app(state, str(body.get("app_id") or ""))
    except (ValueError, AttributeError):
        return reply({"code": 10003, "msg": "invalid param"}, 400)
    if app is None:
        return reply({"code": 10003, "msg": "invalid param: app_id"}, 400)
    if body.get("app_secret") != app["app_secret"]:
        return reply({"code": 10014, "msg": "app secret invalid"}, 400)
    now, owner, r = state.now(), f"feishu:{app['app_id']}", app["rules"]
    with state.tx() as db:
        row = db.execute(
            "SELECT token, expires_at FROM wx_tokens WHERE appid = ? AND kind = 'feishu' AND"
            " killed_at IS NULL AND expires_at > ? ORDER BY issued_at DESC LIMIT 1",
            (owner, now + r["token_renew_window_seconds"]),
        ).fetchone()
        if row is None:  # none, or the newest has < 30 min left: a new one (the old stays valid)
            row = ("t-" + secrets.token_hex(20), now + r["token_expires_seconds"])
            db.execute(
                "INSERT INTO wx_tokens(token, appid, kind, issued_at, expires_at)"
                " VALUES (?,?,'feishu',?,?)",
                (row[0], owner, now, row[1]),
            )
    return reply({"code": 0, "msg": "ok", "tenant_access_token": row[0],
                  "expire": round(row[1] - now)})  # fmt: skip


def _authorize(state: State, request: web.Request) -> dict[str, Any]:
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise ApiError(99991661, "Missing access token for authorization", 400)
    row = state.db.execute(
        "SELECT appid, expires_at, killed_at FROM wx_tokens WHERE token = ? AND kind = 'feishu'",
        (auth[7:].strip(),),
    ).fetchone()
    now = state.now()
    app = None if row is None else _app(state, row[0].removeprefix("feishu:"))
    if app is None or now >= row[1] or (row[2] is not None and now >= row[2]):
        raise ApiError(99991663, "Invalid access token for authorization", 400)
    return app


def _rate(state: State, app: dict[str, Any], api: str) -> None:
    """50/s and 1000/min per app and API; a refused call is not counted."""
    now, r, key = state.now(), app["rules"], (app["app_id"], api)
    state.db.execute(
        "DELETE FROM fs_calls WHERE app_id = ? AND api = ? AND ts <= ?", (*key, now - 120)
    )
    last_s = state.one(
        "SELECT count(*) FROM fs_calls WHERE app_id = ? AND api = ? AND ts > ?", (*key, now - 1)
    )
    last_m = state.one(
        "SELECT count(*) FROM fs_calls WHERE app_id = ? AND api = ? AND ts > ?", (*key, now - 60)
    )
    if last_s >= r["requests_per_second"] or last_m >= r["requests_per_minute"]:
        raise ApiError(99991400, "request trigger frequency limit", 400)
    state.db.execute("INSERT INTO fs_calls VALUES (?,?,?)", (*key, now))


def _content(app: dict[str, Any], body: dict[str, Any]) -> None:
    msg_type = body.get("msg_type")
    if msg_type == "interactive":
        if not isinstance(body.get("card"), dict) or not body["card"]:
            raise ApiError(10003, "invalid param: card")
        blob = body["card"]
    elif msg_type in FIELDS:
        content = body.get("content")
        if not isinstance(content, dict):  # v4 takes an object, im/v1 a string
            raise ApiError(10003, "invalid param: content must be an object")
        if not content.get(FIELDS[msg_type]):
            raise ApiError(11246, "content build fail")
        if msg_type == "image" and not str(content["image_key"]).startswith("img_"):
            raise ApiError(11227, "image key invalid")
        blob = content
    else:
        raise ApiError(10003, "invalid param: msg_type")
    text = json.dumps(blob, ensure_ascii=False)
    if any(word in text for word in app["blocked_words"]):
        raise ApiError(11312, "content failed audit")


async def batch_send(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        app = _authorize(state, request)
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise ApiError(10003, "invalid param: body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(10003, "invalid param")
        with state.tx():
            _rate(state, app, "batch_send")
        return reply({"code": 0, "msg": "ok", "data": _accept(state, app, body)})
    except ApiError as exc:
        return reply({"code": exc.code, "msg": exc.msg}, exc.http_status)


def _accept(state: State, app: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    if not app["bot"]:
        raise ApiError(11205, "app has no bot ability")
    if not app["batch_permission"]:
        raise ApiError(11203, "no permission to send batch message to users")
    _content(app, body)
    listed = body.get("open_ids")
    r, app_id = app["rules"], app["app_id"]
    if not isinstance(listed, list) or not listed or len(listed) > r["ids_per_list"]:
        raise ApiError(10003, f"invalid param: open_ids must hold 1..{r['ids_per_list']} ids")
    listed = list(dict.fromkeys(str(o) for o in listed))
    known = {o for (o,) in state.db.execute(
        "SELECT u.open_id FROM json_each(?) j CROSS JOIN fs_users u"
        " ON u.app_id = ? AND u.open_id = j.value", (json.dumps(listed), app_id))}  # fmt: skip
    if not known:
        raise ApiError(11101, "open_id not exist")
    now = state.now()
    used = state.one(
        "SELECT coalesce(sum(valid), 0) FROM fs_batches WHERE app_id = ? AND created_at >= ?",
        (app_id, state.day_start(now)),
    )
    if used + len(known) > r["messages_per_day"]:
        raise ApiError(11247, "the number of messages sent today has reached the limit")
    message_id = "bm-" + secrets.token_hex(16)
    got = [o for o in listed if o in known and not share(f"invisible:{o}", app["invisible_rate"])]
    read = sum(share(f"read:{message_id}:{o}", app["read_rate"]) for o in got)
    with state.tx() as db:
        db.execute(
            "INSERT INTO fs_batches VALUES (?,?,?,?,?,?,?)",
            (message_id, app_id, now, now + app["job_delay"], len(known), len(got), read),
        )
        ledger.record(db, CHANNEL, app_id, message_id, got, now)
    invalid = [o for o in listed if o not in known]
    return {"message_id": message_id, "invalid_department_ids": [], "invalid_open_ids": invalid,
            "invalid_user_ids": [], "invalid_union_ids": []}  # fmt: skip


async def batch_info(request: web.Request) -> web.Response:
    """``get_progress`` and ``read_user`` of one batch message (im/v1: errors are HTTP 400)."""
    state, what = request.app[STATE], request.match_info["what"]
    try:
        app = _authorize(state, request)
        with state.tx():
            _rate(state, app, "batch_messages")
        row = state.db.execute(
            "SELECT due_at, valid, success, read FROM fs_batches"
            " WHERE message_id = ? AND app_id = ?",
            (request.match_info["id"], app["app_id"]),
        ).fetchone()
        if row is None:
            raise ApiError(230030, "batch message id is invalid", 400)
        done = state.now() >= row[0]
        valid, success, read = (row[1], row[2], row[3]) if done else (0, 0, 0)
        if what == "read_user":
            data: dict[str, Any] = {
                "read_user": {"read_count": str(read), "total_count": str(valid)}
            }
        else:
            counters = {"valid_user_ids_count": valid, "success_user_ids_count": success,
                        "read_user_ids_count": read}  # fmt: skip
            recall = {"recall": False, "recall_count": 0}
            data = {
                "batch_message_send_progress": counters,
                "batch_message_recall_progress": recall,
            }
        return reply({"code": 0, "msg": "success", "data": data})
    except ApiError as exc:
        return reply({"code": exc.code, "msg": exc.msg}, exc.http_status)


async def admin_create(request: web.Request) -> web.Response:
    spec = json.loads(await request.read() or b"{}")
    return web.json_response(create_account(request.app[STATE], spec))


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/auth/v3/tenant_access_token/internal", tenant_token)
    app.router.add_post(f"{PREFIX}/message/v4/batch_send/", batch_send)
    app.router.add_get(
        f"{PREFIX}/im/v1/batch_messages/{{id}}/{{what:get_progress|read_user}}", batch_info
    )
    app.router.add_post("/_sandbox/feishu/accounts", admin_create)
