"""Aliyun SMS twin (channel ``sms_aliyun``): ``GET`` or ``POST`` (form) ``/sms_aliyun/`` stands
for ``https://dysmsapi.aliyuncs.com/`` (reference §6.2), RPC style, answers JSON.

Checked in order. Gateway errors (HTTP 400/404, ``{"RequestId", "HostId", "Code", "Message",
"Recommend"}``): ``IncompleteSignature`` (a common parameter missing), ``InvalidVersion``,
``InvalidAction.NotFound`` (only SendBatchSms is simulated), ``InvalidAccessKeyId.NotFound``,
``InvalidTimeStamp.Format`` / ``InvalidTimeStamp.Expired`` (beyond
``timestamp_max_skew_seconds`` of the sandbox clock), ``SignatureNonceUsed`` (same nonce inside
``nonce_window_seconds``), ``SignatureDoesNotMatch`` (recomputed over the received parameters
with the received method), ``Throttling.User`` (over ``requests_per_second``). Business errors
(HTTP 200, ``{"Code", "Message", "RequestId"}``): ``isv.INVALID_JSON_PARAM``,
``isv.MOBILE_COUNT_OVER_LIMIT`` (> ``send_max_per_call``), ``isv.MOBILE_NUMBER_ILLEGAL`` (any
number: the whole request is refused), ``isv.SIGN_COUNT_NOT_MATCH``, ``isv.SMS_SIGNATURE_ILLEGAL``,
``isv.SMS_TEMPLATE_ILLEGAL``, ``isv.TEMPLATE_MISSING_PARAMETERS`` (a ``${name}`` without value).
Success: ``{"Code": "OK", "Message": "OK", "BizId", "RequestId"}``; each number within
``per_number_daily`` today gets a ledger row (message id ``"{BizId}:{+86…}"``). After
``receipt_delay_seconds`` SmsReport receipts are pushed: numbers over the daily cap report
``isv.BUSINESS_LIMIT_CONTROL``, a deterministic ``fail_rate`` share ``MK:0005`` (ledger row
taken back), the rest ``DELIVERED``.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections import deque
from datetime import datetime
from typing import Any

from aiohttp import web

from qunfa.crypto import aliyun_rpc
from qunfa.rules import RuleSet
from qunfa.rules import load as load_rules
from qunfa.sandbox import ledger
from qunfa.sandbox.faults import ERROR_BODIES
from qunfa.sandbox.sms_tencent import (
    enqueue_push,
    fails,
    queue_reply,
    reply_phone,
    set_reply_url,
    sms_account_spec,
)
from qunfa.sandbox.state import SHANGHAI, STATE, State

TWIN = "sms_aliyun"  # url prefix; discovered by qunfa.sandbox.twins
CHANNEL = "sms_aliyun"
PREFIX = f"/{TWIN}"
VERSION = "2017-05-25"
SCHEMA = """
CREATE TABLE IF NOT EXISTS smsa_accounts (
    access_key_id TEXT PRIMARY KEY, secret TEXT NOT NULL, sign_name TEXT NOT NULL,
    templates TEXT NOT NULL, callback_url TEXT NOT NULL, fail_rate REAL NOT NULL,
    receipt_delay REAL NOT NULL, rules TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS smsa_msgs (
    biz_id TEXT NOT NULL, phone TEXT NOT NULL, akid TEXT NOT NULL, out_id TEXT NOT NULL,
    capped INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, due_at REAL NOT NULL,
    PRIMARY KEY (biz_id, phone)
);
-- The text each number received (【sign】 + the template with ITS parameter object): what a
-- personalised SendBatchSms put in whose phone. A side table, so older sandbox files still work.
CREATE TABLE IF NOT EXISTS smsa_texts (
    biz_id TEXT NOT NULL, phone TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (biz_id, phone)
);
CREATE INDEX IF NOT EXISTS smsa_msgs_phone ON smsa_msgs(akid, phone, created_at);
CREATE INDEX IF NOT EXISTS smsa_msgs_due ON smsa_msgs(status, due_at);
CREATE TABLE IF NOT EXISTS smsa_nonces (akid TEXT, nonce TEXT, ts REAL, PRIMARY KEY (akid, nonce));
"""
COMMON = ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp", "SignatureMethod", "Version")
_PHONE = re.compile(r"^(?:\+86|0086|86)?(1[3-9]\d{9})$")
_VAR = re.compile(r"\$\{(\w+)\}")
_calls: dict[tuple[int, str], deque[float]] = {}


class AliError(Exception):
    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _rid() -> str:
    h = secrets.token_hex(16).upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def error_body(code: int | str, message: str) -> dict[str, Any]:
    code = code if isinstance(code, str) else "isp.SYSTEM_ERROR"
    return {"Code": code, "Message": message, "RequestId": _rid()}


ERROR_BODIES[TWIN] = error_body  # injected faults speak Aliyun's shape


def account_rules(raw: str) -> RuleSet:
    overrides = json.loads(raw or "{}")
    base = load_rules("sms_aliyun")
    return base.with_overrides(overrides) if overrides else base


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    akid = str(spec["access_key_id"])
    templates, overrides = sms_account_spec(spec, account_rules)
    with state.tx() as db:
        db.execute(
            "INSERT OR REPLACE INTO smsa_accounts VALUES (?,?,?,?,?,?,?,?)",
            (akid, str(spec["access_key_secret"]), str(spec["sign_name"]),
             json.dumps(templates, ensure_ascii=False), str(spec.get("callback_url") or ""),
             float(spec.get("fail_rate", 0.0)), float(spec.get("receipt_delay_seconds", 1.0)),
             json.dumps(overrides)),
        )  # fmt: skip
        set_reply_url(db, TWIN, akid, str(spec.get("reply_url") or ""))
    return {"access_key_id": akid, "templates": sorted(templates)}


def _verify(method: str, params: dict[str, str], state: State) -> tuple[Any, ...]:
    missing = [p for p in COMMON if not params.get(p)]
    if missing:
        raise AliError("IncompleteSignature", f"missing {', '.join(missing)}", 400)
    if params["Version"] != VERSION:
        raise AliError("InvalidVersion", "Specified parameter Version is not valid.", 400)
    if params.get("Action") != "SendBatchSms":
        raise AliError("InvalidAction.NotFound", "Specified api is not found", 400)
    row = state.db.execute(
        "SELECT * FROM smsa_accounts WHERE access_key_id = ?", (params["AccessKeyId"],)
    ).fetchone()
    if row is None:
        raise AliError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
    rules = account_rules(row[7])
    try:
        ts = aliyun_rpc.parse_timestamp(params["Timestamp"])
    except ValueError:
        raise AliError("InvalidTimeStamp.Format", "Timestamp is not ISO 8601 UTC", 400) from None
    now = state.now() - state.offset  # the caller's real clock, not the shifted test clock
    if abs(now - ts) > rules["timestamp_max_skew_seconds"]:
        raise AliError("InvalidTimeStamp.Expired", "Specified time stamp has expired.", 400)
    expected = aliyun_rpc.sign(method, params, row[1])
    if not hmac.compare_digest(expected, params["Signature"]):
        sts = aliyun_rpc.string_to_sign(method, params)
        raise AliError(
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation."
            f" server string to sign is:{sts}",
            400,
        )
    with state.tx() as db:
        window = rules["nonce_window_seconds"]
        db.execute("DELETE FROM smsa_nonces WHERE ts < ?", (now - window,))
        seen = db.execute(
            "SELECT 1 FROM smsa_nonces WHERE akid = ? AND nonce = ?",
            (row[0], params["SignatureNonce"]),
        ).fetchone()
        if seen:
            raise AliError("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        db.execute(
            "INSERT INTO smsa_nonces VALUES (?,?,?)", (row[0], params["SignatureNonce"], now)
        )
    now = state.now()
    calls = _calls.setdefault((id(state), row[0]), deque())
    while calls and calls[0] <= now - 1.0:
        calls.popleft()
    if len(calls) >= rules["requests_per_second"]:
        raise AliError("Throttling.User", "Request was denied due to user flow control.", 400)
    calls.append(now)
    return tuple(row)


def _json_list(params: dict[str, str], name: str) -> list[Any]:
    try:
        value = json.loads(params.get(name) or "")
    except ValueError:
        raise AliError("isv.INVALID_JSON_PARAM", f"{name} is not valid JSON") from None
    if not isinstance(value, list):
        raise AliError("isv.INVALID_JSON_PARAM", f"{name} must be a JSON array")
    return value


def send(state: State, row: tuple[Any, ...], params: dict[str, str]) -> dict[str, Any]:
    akid, _secret, sign_name, templates_json, _url, _rate, delay, rules_json = row
    rules = account_rules(rules_json)
    numbers = _json_list(params, "PhoneNumberJson")
    signs = _json_list(params, "SignNameJson")
    if not numbers or len(numbers) > rules["send_max_per_call"]:
        raise AliError("isv.MOBILE_COUNT_OVER_LIMIT", f"{len(numbers)} numbers in one request")
    phones = []
    for raw in numbers:
        m = _PHONE.match(str(raw))
        if m is None:
            raise AliError("isv.MOBILE_NUMBER_ILLEGAL", f"illegal mobile number {raw}")
        phones.append("+86" + m.group(1))
    if len(signs) != len(numbers):
        raise AliError("isv.SIGN_COUNT_NOT_MATCH", "SignNameJson and PhoneNumberJson differ")
    if any(s != sign_name for s in signs):
        raise AliError("isv.SMS_SIGNATURE_ILLEGAL", "the sign name is not approved")
    template = json.loads(templates_json).get(params.get("TemplateCode", ""))
    if template is None:
        raise AliError("isv.SMS_TEMPLATE_ILLEGAL", "the template is not approved")
    values = _json_list(params, "TemplateParamJson") if _VAR.search(template) else []
    for i in range(len(phones) if _VAR.search(template) else 0):
        obj = values[i] if i < len(values) and isinstance(values[i], dict) else {}
        absent = [v for v in _VAR.findall(template) if v not in obj]
        if absent:
            raise AliError("isv.TEMPLATE_MISSING_PARAMETERS", f"missing ${{{absent[0]}}}")
    now, biz = state.now(), f"{secrets.randbelow(9 * 10**17) + 10**17}^0"
    cap, day, out_id = rules["per_number_daily"], state.day_start(), params.get("OutId", "")
    texts: dict[str, str] = {}
    for i, phone in enumerate(phones):
        own: dict[str, Any] = values[i] if i < len(values) and isinstance(values[i], dict) else {}
        body = _VAR.sub(lambda m: str(own.get(m.group(1), "")), template)  # noqa: B023
        texts.setdefault(phone, f"【{sign_name}】{body}")
    with state.tx() as db:
        db.executemany(
            "INSERT OR IGNORE INTO smsa_texts VALUES (?,?,?)",
            ((biz, phone, text) for phone, text in texts.items()),
        )
        for phone in dict.fromkeys(phones):
            used = db.execute(
                "SELECT count(*) FROM smsa_msgs WHERE akid = ? AND phone = ? AND capped = 0"
                " AND created_at >= ?",
                (akid, phone, day),
            ).fetchone()[0]
            capped = int(used >= cap)
            db.execute(
                "INSERT INTO smsa_msgs VALUES (?,?,?,?,?,'sending',?,?)",
                (biz, phone, akid, out_id, capped, now, now + delay),
            )
            if not capped:
                ledger.record(db, CHANNEL, akid, f"{biz}:{phone}", [phone], now)
    return {"Code": "OK", "Message": "OK", "BizId": biz, "RequestId": _rid()}


async def handle(request: web.Request) -> web.Response:
    state = request.app[STATE]
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    try:
        row = _verify(request.method, params, state)
        return _json(send(state, row, params))
    except AliError as exc:
        body = error_body(exc.code, exc.message)
        if exc.status != 200:
            body |= {"HostId": "dysmsapi.aliyuncs.com", "Recommend": "https://api.aliyun.com"}
        return _json(body, exc.status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def complete_due(state: State, limit: int = 1000) -> int:
    """Decide due receipts and queue SmsReport pushes (one JSON array per account)."""
    now = state.now()
    rows = state.db.execute(
        "SELECT m.biz_id, m.phone, m.akid, m.out_id, m.capped, m.created_at, a.fail_rate,"
        " a.callback_url FROM smsa_msgs m JOIN smsa_accounts a ON a.access_key_id = m.akid"
        " WHERE m.status = 'sending' AND m.due_at <= ? ORDER BY m.due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return 0
    fmt = "%Y-%m-%d %H:%M:%S"
    reports: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with state.tx() as db:
        for biz, phone, akid, out_id, capped, created, rate, url in rows:
            mid = f"{biz}:{phone}"
            failed = bool(capped) or fails(mid, rate)
            if capped:
                code, msg = "isv.BUSINESS_LIMIT_CONTROL", "触发天级流控"
            else:
                code, msg = ("MK:0005", "用户号码停机") if failed else ("DELIVERED", "用户接收成功")
            db.execute(
                "UPDATE smsa_msgs SET status = ? WHERE biz_id = ? AND phone = ?",
                ("failed" if failed else "delivered", biz, phone),
            )
            if failed and not capped:
                ledger.remove(db, CHANNEL, akid, phone, mid)
            reports.setdefault((akid, url), []).append(
                {"phone_number": phone[3:], "success": not failed, "err_code": code,
                 "err_msg": msg, "biz_id": biz, "out_id": out_id, "sms_size": "1",
                 "send_time": datetime.fromtimestamp(created, SHANGHAI).strftime(fmt),
                 "report_time": datetime.fromtimestamp(now, SHANGHAI).strftime(fmt)}
            )  # fmt: skip
        for (akid, url), items in reports.items():
            enqueue_push(db, TWIN, akid, url, items, now)
    return len(rows)


async def admin_messages(request: web.Request) -> web.Response:
    """``GET /_sandbox/sms_aliyun/messages?account=<AccessKeyId>``: each number's message and
    the text it received."""
    akid = request.query.get("account")
    where, args = ("WHERE m.akid = ?", (akid,)) if akid else ("", ())
    rows = (
        request.app[STATE]
        .db.execute(
            "SELECT m.biz_id, m.phone, m.akid, m.out_id, m.status, t.text FROM smsa_msgs m"
            f" LEFT JOIN smsa_texts t ON t.biz_id = m.biz_id AND t.phone = m.phone {where}"
            " ORDER BY m.created_at",
            args,
        )
        .fetchall()
    )
    keys = ("biz_id", "phone", "account", "out_id", "status", "text")
    return _json({"messages": [dict(zip(keys, r, strict=True)) for r in rows]})


async def admin_create(request: web.Request) -> web.Response:
    raw = await request.read()
    return _json(create_account(request.app[STATE], json.loads(raw) if raw.strip() else {}))


async def admin_reply(request: web.Request) -> web.Response:
    """``POST /_sandbox/sms_aliyun/accounts/{akid}/reply {"phone", "text", "dest_code"?}``: the
    user replied; push Aliyun's SmsUp message (a JSON array, like the SmsReport pushes)."""
    state, akid = request.app[STATE], request.match_info["akid"]
    spec = json.loads(await request.read() or b"{}")
    row = state.db.execute(
        "SELECT sign_name FROM smsa_accounts WHERE access_key_id = ?", (akid,)
    ).fetchone()
    if row is None:
        return _json(error_body("InvalidAccessKeyId.NotFound", f"no account {akid}"), 404)
    now = state.now()
    stamp = datetime.fromtimestamp(now, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    body = [{"phone_number": reply_phone(spec["phone"]), "content": str(spec["text"]),
             "sign_name": row[0], "dest_code": str(spec.get("dest_code") or ""),
             "sequence_id": int(now * 1000), "send_time": stamp}]  # fmt: skip
    return _json(queue_reply(state, TWIN, akid, body))


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/_sandbox/{TWIN}/accounts/{{akid}}/reply", admin_reply)
    app.router.add_get(f"{PREFIX}/", handle)
    app.router.add_post(f"{PREFIX}/", handle)
    app.router.add_post(f"/_sandbox/{TWIN}/accounts", admin_create)
    app.router.add_get(f"/_sandbox/{TWIN}/messages", admin_messages)
