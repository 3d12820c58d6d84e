"""Tencent Cloud SMS twin (channel ``sms_tencent``): ``POST /sms_tencent/`` stands for
``https://sms.tencentcloudapi.com/`` (reference §6.1).

Checked in order, each answered as ``{"Response": {"Error": {"Code", "Message"},
"RequestId"}}`` (HTTP 200): ``X-TC-Action`` must be SendSms (``InvalidAction``) and
``X-TC-Version`` 2021-01-11 (``NoSuchVersion``); the TC3-HMAC-SHA256 signature is recomputed
from the received headers and body (``AuthFailure.InvalidAuthorization`` malformed,
``AuthFailure.SignatureExpire`` beyond ``signature_max_skew_seconds`` of the sandbox clock,
``AuthFailure.SecretIdNotFound``, ``AuthFailure.SignatureFailure``); ``RequestLimitExceeded``
over ``requests_per_second``; ``UnauthorizedOperation.SmsSdkAppIdVerifyFail`` for an app of
another key; ``MissingParameter.EmptyPhoneNumberSet``; ``LimitExceeded.PhoneNumberCountLimit``
over ``send_max_per_call``; ``FailedOperation.SignatureIncorrectOrUnapproved`` (sign name);
``FailedOperation.TemplateIncorrectOrUnapproved``;
``FailedOperation.TemplateParamSetNotMatchApprovedTemplate`` (parameter count).
Then per number (``SendStatusSet``): ``InvalidParameterValue.IncorrectPhoneNumber``,
``LimitExceeded.PhoneNumberDailyLimit`` over ``per_number_daily`` (calendar day, Asia/Shanghai),
else ``Ok`` with a SerialNo, a ledger row, and a receipt due after ``receipt_delay_seconds``.
Due receipts are decided (a deterministic ``fail_rate`` share, by hash of the SerialNo, fails
and its ledger row is taken back) and pushed as Tencent's status-report JSON array to the
account's ``callback_url`` through the JSON outbox at the end of this module (also used by the
Aliyun and e-mail twins: posted with retries, persisted, listed at ``GET /_sandbox/pushes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from qunfa.crypto import tc3
from qunfa.rules import RuleSet
from qunfa.rules import load as load_rules
from qunfa.sandbox import ledger
from qunfa.sandbox.faults import ERROR_BODIES
from qunfa.sandbox.state import SHANGHAI, STATE, State

TWIN = "sms_tencent"  # url prefix; discovered by qunfa.sandbox.twins
CHANNEL = "sms_tencent"
PREFIX = f"/{TWIN}"
VERSION = "2021-01-11"
SCHEMA = """
CREATE TABLE IF NOT EXISTS smst_accounts (
    sdk_app_id TEXT PRIMARY KEY, secret_id TEXT NOT NULL UNIQUE, secret_key TEXT NOT NULL,
    sign_name TEXT NOT NULL, templates TEXT NOT NULL, callback_url TEXT NOT NULL,
    fail_rate REAL NOT NULL, receipt_delay REAL NOT NULL, rules TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS smst_msgs (
    sid TEXT PRIMARY KEY, sdk_app_id TEXT NOT NULL, phone TEXT NOT NULL,
    template_id TEXT NOT NULL, session_context TEXT NOT NULL, fee INTEGER NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, due_at REAL NOT NULL
);
-- The text each number received (sign + rendered template): what a personalised send put in
-- whose phone. A side table, so a sandbox database from before it keeps working.
CREATE TABLE IF NOT EXISTS smst_texts (sid TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS smst_msgs_phone ON smst_msgs(sdk_app_id, phone, created_at);
CREATE INDEX IF NOT EXISTS smst_msgs_due ON smst_msgs(status, due_at);
CREATE TABLE IF NOT EXISTS json_push (
    id INTEGER PRIMARY KEY, twin TEXT NOT NULL, account TEXT NOT NULL, url TEXT NOT NULL,
    body TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_http_status INTEGER, last_error TEXT, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS json_push_due ON json_push(status, next_at);
CREATE TABLE IF NOT EXISTS sms_reply_urls (
    twin TEXT NOT NULL, account TEXT NOT NULL, url TEXT NOT NULL, PRIMARY KEY (twin, account)
);
"""
_PHONE = re.compile(r"^(?:\+86|0086|86)?(1[3-9]\d{9})$")
_PLACEHOLDER = re.compile(r"\{(\d+)\}")
_calls: dict[tuple[int, str], deque[float]] = {}  # (id(state), app) → recent call times


class TcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def error_body(code: int | str, message: str) -> dict[str, Any]:
    code = code if isinstance(code, str) else "InternalError"
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": _rid()}}


ERROR_BODIES[TWIN] = error_body  # injected faults speak Tencent's shape


def _rid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def account_rules(row_rules: str) -> RuleSet:
    overrides = json.loads(row_rules or "{}")
    base = load_rules("sms_tencent")
    return base.with_overrides(overrides) if overrides else base


def fails(key: str, rate: float) -> bool:
    """Deterministic share ``rate`` of message ids whose delivery fails."""
    h = hashlib.sha256(f"fail:{key}".encode()).digest()
    return int.from_bytes(h[:4]) < rate * 2**32


def sms_account_spec(
    spec: dict[str, Any], validate: Callable[[str], object]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The templates and rule overrides of an SMS twin account (both SMS twins take these);
    ``per_number_daily`` is a shorthand for that rule; ``validate`` checks the rule names."""
    templates = {str(k): str(v) for k, v in dict(spec.get("templates") or {}).items()}
    overrides = dict(spec.get("rules") or {})
    if "per_number_daily" in spec:
        overrides["per_number_daily"] = int(spec["per_number_daily"])
    validate(json.dumps(overrides))
    return templates, overrides


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    app = str(spec["sdk_app_id"])
    templates, overrides = sms_account_spec(spec, account_rules)
    with state.tx() as db:
        db.execute(
            "INSERT OR REPLACE INTO smst_accounts VALUES (?,?,?,?,?,?,?,?,?)",
            (app, str(spec["secret_id"]), str(spec["secret_key"]), str(spec["sign_name"]),
             json.dumps(templates, ensure_ascii=False), str(spec.get("callback_url") or ""),
             float(spec.get("fail_rate", 0.0)), float(spec.get("receipt_delay_seconds", 1.0)),
             json.dumps(overrides)),
        )  # fmt: skip
        set_reply_url(db, TWIN, app, str(spec.get("reply_url") or ""))
    return {"sdk_app_id": app, "templates": sorted(templates)}


def _verify(request: web.Request, body: bytes, state: State) -> tuple[Any, ...]:
    """The account row of a correctly signed request, else :class:`TcError`."""
    if request.headers.get("X-TC-Action") != "SendSms":
        raise TcError("InvalidAction", "only SendSms is simulated")
    if request.headers.get("X-TC-Version") != VERSION:
        raise TcError("NoSuchVersion", f"version must be {VERSION}")
    auth = tc3.parse_authorization(request.headers.get("Authorization", ""))
    ts_raw = request.headers.get("X-TC-Timestamp", "")
    if auth is None or not ts_raw.isdigit():
        raise TcError("AuthFailure.InvalidAuthorization", "Authorization or timestamp malformed")
    row = state.db.execute(
        "SELECT * FROM smst_accounts WHERE secret_id = ?", (auth.secret_id,)
    ).fetchone()
    if row is None:
        raise TcError("AuthFailure.SecretIdNotFound", "The SecretId is not found")
    # The caller's clock is the real one: compare with the sandbox clock minus its test offset
    # (which only moves days and quotas forward).
    ts, now = int(ts_raw), state.now() - state.offset
    if abs(now - ts) > account_rules(row[8])["signature_max_skew_seconds"]:
        raise TcError("AuthFailure.SignatureExpire", f"timestamp {ts} is too far from {int(now)}")
    canonical = tc3.canonical_request(dict(request.headers), auth.signed_headers, body)
    expected = tc3.signature(row[2], ts, auth.service, canonical)
    if auth.date != tc3.utc_date(ts) or not hmac.compare_digest(expected, auth.signature):
        raise TcError(
            "AuthFailure.SignatureFailure", "The provided credentials could not be validated"
        )
    return tuple(row)


def _rate_limit(state: State, app: str, limit: int) -> None:
    window = _calls.setdefault((id(state), app), deque())
    now = state.now()
    while window and window[0] <= now - 1.0:
        window.popleft()
    if len(window) >= limit:
        raise TcError("RequestLimitExceeded", "request frequency exceeds the limit")
    window.append(now)


def _render(template: str, params: list[str]) -> str:
    wanted = len(set(_PLACEHOLDER.findall(template)))
    if len(params) != wanted:
        raise TcError(
            "FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
            f"the template takes {wanted} parameters, {len(params)} given",
        )
    return _PLACEHOLDER.sub(lambda m: params[int(m.group(1)) - 1], template)


def _segments(text: str, rules: RuleSet) -> int:
    single, multi = rules["segment_single_chars"], rules["segment_multi_chars"]
    return 1 if len(text) <= single else -(-len(text) // multi)


def send(state: State, row: tuple[Any, ...], req: dict[str, Any]) -> list[dict[str, Any]]:
    app, _sid, _key, sign_name, templates_json, _url, _fail, delay, rules_json = row
    rules = account_rules(rules_json)
    if str(req.get("SmsSdkAppId")) != app:
        raise TcError("UnauthorizedOperation.SmsSdkAppIdVerifyFail", "SdkAppId verify failed")
    phones = req.get("PhoneNumberSet") or []
    if not isinstance(phones, list) or not phones:
        raise TcError("MissingParameter.EmptyPhoneNumberSet", "PhoneNumberSet is empty")
    if len(phones) > rules["send_max_per_call"]:
        raise TcError("LimitExceeded.PhoneNumberCountLimit", "too many numbers in one request")
    if req.get("SignName") != sign_name:
        raise TcError("FailedOperation.SignatureIncorrectOrUnapproved", "sign name unapproved")
    templates = json.loads(templates_json)
    template = templates.get(str(req.get("TemplateId")))
    if template is None:
        raise TcError("FailedOperation.TemplateIncorrectOrUnapproved", "template unapproved")
    text = f"【{sign_name}】" + _render(
        template, [str(p) for p in req.get("TemplateParamSet") or []]
    )
    fee, now, context = _segments(text, rules), state.now(), str(req.get("SessionContext") or "")
    cap, day = rules["per_number_daily"], state.day_start()
    out: list[dict[str, Any]] = []
    with state.tx() as db:
        for raw in phones:
            item = {"PhoneNumber": str(raw), "SessionContext": context, "Fee": 0, "SerialNo": "",
                    "IsoCode": "CN"}  # fmt: skip
            m = _PHONE.match(str(raw))
            if m is None:
                out.append({**item, "Code": "InvalidParameterValue.IncorrectPhoneNumber",
                            "Message": "incorrect phone number", "IsoCode": "DEF"})  # fmt: skip
                continue
            phone = "+86" + m.group(1)
            used = db.execute(
                "SELECT count(*) FROM smst_msgs"
                " WHERE sdk_app_id = ? AND phone = ? AND created_at >= ?",
                (app, phone, day),
            ).fetchone()[0]
            if used >= cap:
                out.append({**item, "Code": "LimitExceeded.PhoneNumberDailyLimit",
                            "Message": f"this number received {cap} today"})  # fmt: skip
                continue
            sid = f"{secrets.randbelow(9000) + 1000}:{secrets.token_hex(12)}"
            db.execute(
                "INSERT INTO smst_msgs VALUES (?,?,?,?,?,?,'sending',?,?)",
                (sid, app, phone, str(req["TemplateId"]), context, fee, now, now + delay),
            )
            db.execute("INSERT INTO smst_texts VALUES (?,?)", (sid, text))
            ledger.record(db, CHANNEL, app, sid, [phone], now)
            out.append({**item, "PhoneNumber": phone, "SerialNo": sid, "Fee": fee, "Code": "Ok",
                        "Message": "send success"})  # fmt: skip
    return out


async def handle(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.read()
    try:
        row = _verify(request, body, state)
        _rate_limit(state, row[0], account_rules(row[8])["requests_per_second"])
        try:
            req = json.loads(body)
        except ValueError:
            raise TcError("InvalidParameter", "body is not JSON") from None
        result = {"SendStatusSet": send(state, row, req), "RequestId": _rid()}
    except TcError as exc:
        return _json(error_body(exc.code, exc.message))
    return _json({"Response": result})


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def complete_due(state: State, limit: int = 1000) -> int:
    """Decide due receipts, take failed ones out of the ledger, queue the status reports."""
    now = state.now()
    rows = state.db.execute(
        "SELECT m.sid, m.sdk_app_id, m.phone, a.fail_rate, a.callback_url FROM smst_msgs m"
        " JOIN smst_accounts a ON a.sdk_app_id = m.sdk_app_id"
        " WHERE m.status = 'sending' AND m.due_at <= ? ORDER BY m.due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    if rows:
        reports: dict[tuple[str, str], list[dict[str, Any]]] = {}
        stamp = datetime.fromtimestamp(now, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
        with state.tx() as db:
            for sid, app, phone, rate, url in rows:
                failed = fails(sid, rate)
                db.execute(
                    "UPDATE smst_msgs SET status = ? WHERE sid = ?",
                    ("failed" if failed else "delivered", sid),
                )
                if failed:
                    ledger.remove(db, CHANNEL, app, phone, sid)
                reports.setdefault((app, url), []).append(
                    {"user_receive_time": stamp, "nationcode": "86", "mobile": phone[3:],
                     "report_status": "FAIL" if failed else "SUCCESS",
                     "errmsg": "MK:0005" if failed else "DELIVRD",
                     "description": "用户号码停机" if failed else "用户短信送达成功",
                     "sid": sid}
                )  # fmt: skip
            for (app, url), items in reports.items():
                enqueue_push(db, TWIN, app, url, items, now)
    return len(rows) + pump_pushes(state)


def receipts(state: State, app: str | None) -> list[dict[str, Any]]:
    where, params = ("WHERE m.sdk_app_id = ?", (app,)) if app else ("", ())
    state.db.row_factory = sqlite3.Row
    try:
        rows = state.db.execute(
            "SELECT m.sid, m.sdk_app_id, m.phone, m.status, m.fee, m.session_context, t.text"
            f" FROM smst_msgs m LEFT JOIN smst_texts t ON t.sid = m.sid {where}"
            " ORDER BY m.created_at",
            params,
        ).fetchall()
    finally:
        state.db.row_factory = None
    return [dict(r) for r in rows]


async def admin_create(request: web.Request) -> web.Response:
    raw = await request.read()
    spec = json.loads(raw) if raw.strip() else {}
    return _json(create_account(request.app[STATE], spec))


async def admin_messages(request: web.Request) -> web.Response:
    return _json({"messages": receipts(request.app[STATE], request.query.get("account"))})


# -- JSON outbox: receipts and bounces pushed to qunfa (shared with sms_aliyun and email) -------
PUSH_ATTEMPTS = 5
PUSH_BACKOFF = (0.2, 0.5, 1.0, 2.0)
PUSH_TIMEOUT = 5.0
_in_flight: dict[tuple[int, int], asyncio.Task[None]] = {}


def enqueue_push(
    db: sqlite3.Connection, twin: str, account: str, url: str, body: Any, now: float
) -> None:
    """Queue one JSON POST (inside the caller's transaction); no URL: kept, never posted."""
    db.execute(
        "INSERT INTO json_push(twin, account, url, body, status, next_at, created_at)"
        " VALUES (?,?,?,?,?,?,?)",
        (twin, account, url, json.dumps(body, ensure_ascii=False),
         "pending" if url else "no_url", now, now),
    )  # fmt: skip


def pump_pushes(state: State, limit: int = 32) -> int:
    """Start delivery of due pushes (called from the job loop, so a loop is running)."""
    rows = state.db.execute(
        "SELECT id, url, body, attempts FROM json_push WHERE status = 'pending' AND next_at <= ?"
        " ORDER BY id LIMIT ?",
        (state.now(), limit),
    ).fetchall()
    started = 0
    for push_id, url, body, attempts in rows:
        key = (id(state), int(push_id))
        if key not in _in_flight:
            task = asyncio.create_task(_deliver(state, int(push_id), url, body, int(attempts)))
            _in_flight[key] = task
            task.add_done_callback(lambda _t, k=key: _in_flight.pop(k, None))  # type: ignore[misc]
            started += 1
    return started


async def _deliver(state: State, push_id: int, url: str, body: str, attempts: int) -> None:
    status: int | None = None
    error: str | None = None
    try:
        timeout = aiohttp.ClientTimeout(total=PUSH_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                url, data=body.encode(), headers={"Content-Type": "application/json"}
            ) as resp,
        ):
            status = resp.status
            await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    attempts += 1
    ok = status == 200
    final = ok or attempts >= PUSH_ATTEMPTS
    wait = PUSH_BACKOFF[min(attempts - 1, len(PUSH_BACKOFF) - 1)]
    with state.tx() as db:
        db.execute(
            "UPDATE json_push SET attempts = ?, status = ?, next_at = ?, last_http_status = ?,"
            " last_error = ? WHERE id = ?",
            (attempts, "delivered" if ok else ("failed" if final else "pending"),
             state.now() + wait, status, error, push_id),
        )  # fmt: skip


def pushes(state: State, twin: str | None, account: str | None) -> list[dict[str, Any]]:
    """The outbox, oldest first, for ``GET /_sandbox/pushes?twin=&account=``."""
    clauses = [c for c, v in (("twin = ?", twin), ("account = ?", account)) if v]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = state.db.execute(
        "SELECT id, twin, account, url, body, status, attempts, last_http_status, last_error"
        f" FROM json_push {where} ORDER BY id",
        tuple(v for v in (twin, account) if v),
    ).fetchall()
    keys = ("id", "twin", "account", "url", "body", "status", "attempts", "http_status", "error")
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for item in out:
        item["body"] = json.loads(item["body"])
    return out


async def admin_pushes(request: web.Request) -> web.Response:
    q = request.query
    return _json({"pushes": pushes(request.app[STATE], q.get("twin"), q.get("account"))})


async def _stop_pushes(app: web.Application) -> AsyncIterator[None]:
    yield
    mine = [k for k in _in_flight if k[0] == id(app[STATE])]
    tasks = [_in_flight.pop(k) for k in mine]
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


# -- replies (上行短信): "the user replied X", pushed like receipts (shared with sms_aliyun) ----
def set_reply_url(db: sqlite3.Connection, twin: str, account: str, url: str) -> None:
    """Where an account's replies are pushed (its 回复回调 / SmsUp URL); empty: kept only."""
    db.execute("INSERT OR REPLACE INTO sms_reply_urls VALUES (?,?,?)", (twin, account, url))


def queue_reply(state: State, twin: str, account: str, body: Any) -> dict[str, Any]:
    """Queue one reply push to the account's reply URL (posted by the JSON outbox)."""
    row = state.db.execute(
        "SELECT url FROM sms_reply_urls WHERE twin = ? AND account = ?", (twin, account)
    ).fetchone()
    if row is None:
        raise KeyError(f"no {twin} account {account}")
    with state.tx() as db:
        enqueue_push(db, twin, account, row[0], body, state.now())
    return {"account": account, "pushed_to": row[0], "body": body}


def reply_phone(raw: Any) -> str:
    m = _PHONE.match(str(raw).replace(" ", ""))
    if m is None:
        raise ValueError(f"{raw!r} is not a mainland mobile number")
    return m.group(1)


async def admin_reply(request: web.Request) -> web.Response:
    """``POST /_sandbox/sms_tencent/accounts/{app}/reply {"phone", "text", "extend"?}``: the
    user replied; push Tencent's 回复短信 callback (one JSON object per reply)."""
    state, app = request.app[STATE], request.match_info["app"]
    spec = json.loads(await request.read() or b"{}")
    row = state.db.execute(
        "SELECT sign_name FROM smst_accounts WHERE sdk_app_id = ?", (app,)
    ).fetchone()
    if row is None:
        return web.json_response(error_body("InvalidParameter", f"no account {app}"), status=404)
    body = {"extend": str(spec.get("extend") or ""), "mobile": reply_phone(spec["phone"]),
            "nationcode": "86", "sign": row[0], "text": str(spec["text"]),
            "time": int(state.now())}  # fmt: skip
    return _json(queue_reply(state, TWIN, app, body))


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/_sandbox/{TWIN}/accounts/{{app}}/reply", admin_reply)
    app.router.add_post(f"{PREFIX}/", handle)
    app.router.add_post(f"/_sandbox/{TWIN}/accounts", admin_create)
    app.router.add_get(f"/_sandbox/{TWIN}/messages", admin_messages)
    app.router.add_get("/_sandbox/pushes", admin_pushes)
    app.cleanup_ctx.append(_stop_pushes)
