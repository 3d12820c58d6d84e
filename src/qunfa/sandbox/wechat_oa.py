"""Official Account twin, channel ``wechat_oa``: access tokens, tags, users and mass send.

Serves ``/wechat/cgi-bin/...`` (standing for ``https://api.weixin.qq.com/cgi-bin/...``) with the
bodies, limits and errcodes of reference §1.1, §1.2, §1.7 and §1.8. Every limit comes from
``rules/wechat_oa.toml`` with the account's overrides. Mass sends are jobs: accepted with status
SENDING (job row + ledger rows in one transaction), SEND_SUCCESS after the account's
``job_delay_seconds``, then a MASSSENDJOBFINISH event is posted (see :mod:`.callbacks`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from qunfa.sandbox import callbacks, ledger
from qunfa.sandbox import media as media_twin
from qunfa.sandbox.state import STATE, State
from qunfa.sandbox.wechat_accounts import (
    ALIVE,
    Account,
    ApiError,
    Call,
    endpoint,
    error_body,
    event_xml,
    follower_state,
    helper_openid,
    issue_token,
    load_account,
    profile,
    reply,
)
from qunfa.sandbox.wechat_tags import TAG_ROUTES

CHANNEL = "wechat_oa"
PREVIEW_CHANNEL = "wechat_oa_preview"
PREFIX = "/wechat/cgi-bin"
MSG_DATA_ID_OFFSET = 1_200_000_000  # msg_data_id (datacube id) of an mpnews send = msg_id + this
MSGTYPES = ("text", "mpnews", "image", "voice", "mpvideo", "wxcard")

TWIN = "wechat"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS mass_jobs (
    msg_id INTEGER PRIMARY KEY, appid TEXT NOT NULL, kind TEXT NOT NULL, msgtype TEXT NOT NULL,
    clientmsgid TEXT, is_to_all INTEGER NOT NULL, tag_id INTEGER, status TEXT NOT NULL,
    created_at REAL NOT NULL, due_at REAL NOT NULL, total INTEGER NOT NULL,
    filter_count INTEGER NOT NULL, sent_count INTEGER NOT NULL, error_count INTEGER NOT NULL,
    msg_data_id INTEGER
);
CREATE INDEX IF NOT EXISTS mass_jobs_cmid ON mass_jobs(appid, clientmsgid, created_at);
CREATE INDEX IF NOT EXISTS mass_jobs_due ON mass_jobs(status, due_at);
CREATE TABLE IF NOT EXISTS mass_calls (appid TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS mass_calls_app ON mass_calls(appid, ts);
CREATE TABLE IF NOT EXISTS mass_refusals (
    appid TEXT NOT NULL, clientmsgid TEXT NOT NULL, ts REAL NOT NULL, errcode INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mass_refusals_app ON mass_refusals(appid, clientmsgid, ts);
CREATE TABLE IF NOT EXISTS mass_protection (
    appid TEXT PRIMARY KEY, enabled INTEGER NOT NULL, policy TEXT NOT NULL, delay REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mass_confirmations (
    msg_id INTEGER PRIMARY KEY, appid TEXT NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, decide_at REAL, expires_at REAL NOT NULL, decided_at REAL
);
CREATE INDEX IF NOT EXISTS mass_confirmations_wait ON mass_confirmations(state, expires_at);
"""
PROTECTION_POLICIES = ("manual", "confirm", "refuse")
PROTECTION_STATUS = {"refused": "err(40001)", "expired": "err(40002)"}


# -- access tokens (§1.1) -------------------------------------------------------------------------
def _credentials(state: State, grant: Any, appid: Any, secret: Any) -> Account:
    if grant != "client_credential":
        raise ApiError(40002, "invalid grant_type")
    acct = load_account(state, str(appid or ""))
    if acct is None:
        raise ApiError(40013, "invalid appid")
    if secret != acct.secret:
        raise ApiError(40125, "invalid appsecret")
    return acct


async def get_token(request: web.Request) -> web.Response:
    """``GET /cgi-bin/token``: a new token each call; the previous one lives 5 more minutes."""
    state, q = request.app[STATE], request.query
    try:
        acct = _credentials(state, q.get("grant_type"), q.get("appid"), q.get("secret"))
    except ApiError as exc:
        return reply(error_body(exc.code, exc.msg))
    with state.tx() as db:
        now = state.now()
        db.execute(
            "UPDATE wx_tokens SET killed_at = min(expires_at, ?) WHERE appid = ? AND kind = 'token'"
            " AND killed_at IS NULL",
            (now + acct.rules["stable_token_overlap_seconds"], acct.appid),
        )
        token, expires = issue_token(state, acct, "token")
    return reply({"access_token": token, "expires_in": round(expires - now)})


async def stable_token(request: web.Request) -> web.Response:
    """``POST /cgi-bin/stable_token``: the same token until 5 min before expiry, then a new one
    (both valid meanwhile); ``force_refresh`` kills the previous token at once."""
    state = request.app[STATE]
    try:
        body = json.loads(await request.read() or b"{}")
        acct = _credentials(state, body.get("grant_type"), body.get("appid"), body.get("secret"))
    except ApiError as exc:
        return reply(error_body(exc.code, exc.msg))
    except (ValueError, AttributeError):
        return reply(error_body(47001, "data format error"))
    overlap = acct.rules["stable_token_overlap_seconds"]
    with state.tx() as db:
        now = state.now()
        if body.get("force_refresh"):
            db.execute(
                "UPDATE wx_tokens SET killed_at = ? WHERE appid = ? AND kind = 'stable'"
                " AND killed_at IS NULL",
                (now, acct.appid),
            )
        row = db.execute(
            "SELECT token, expires_at FROM wx_tokens WHERE appid = ? AND kind = 'stable'"
            " AND killed_at IS NULL ORDER BY issued_at DESC LIMIT 1",
            (acct.appid,),
        ).fetchone()
        if row is not None and row[1] - now > overlap:
            token, expires = row
        else:
            token, expires = issue_token(state, acct, "stable")
    return reply({"access_token": token, "expires_in": round(expires - now)})


# -- users (§1.8) ---------------------------------------------------------------------------------
def user_get(call: Call, acct: Account) -> dict[str, Any]:
    db, next_openid = call.state.db, call.query.get("next_openid", "")
    if next_openid and follower_state(db, acct.appid, next_openid) is None:
        raise ApiError(40003, "invalid openid")
    gone = call.state.one("SELECT count(*) FROM wx_unfollowed WHERE appid = ?", (acct.appid,))
    total = acct.followers - gone
    openids = [  # pages in openid order (the primary key), so each page is one range scan
        r[0]
        for r in db.execute(
            f"SELECT openid FROM wx_followers f WHERE appid = ? AND openid > ? AND {ALIVE}"
            " ORDER BY openid LIMIT ?",
            (acct.appid, next_openid, acct.rules["user_get_page_size"]),
        )
    ]
    if not openids:  # the platform's last call: count 0, no data
        return {"total": total, "count": 0, "next_openid": ""}
    return {"total": total, "count": len(openids), "data": {"openid": openids},
            "next_openid": openids[-1]}  # fmt: skip


def batchget(call: Call, acct: Account) -> dict[str, Any]:
    """Profiles of ≤ ``batchget_max_per_call`` openids, in request order: one statement for the
    whole list (follower row, unfollow mark and tag ids per openid), so paging a million
    followers 100 at a time stays cheap. Any unknown openid refuses the call (40003)."""
    items = call.body.get("user_list")
    if not isinstance(items, list) or not 0 < len(items) <= acct.rules["batchget_max_per_call"]:
        raise ApiError(40032, "invalid openid list size")
    asked = [str(i.get("openid", "")) if isinstance(i, dict) else "" for i in items]
    rows = call.state.db.execute(
        "SELECT j.value, f.openid IS NOT NULL,"
        " EXISTS (SELECT 1 FROM wx_unfollowed u WHERE u.appid = ?1 AND u.openid = j.value),"
        " (SELECT json_group_array(tag_id) FROM (SELECT ft.tag_id FROM wx_follower_tags ft"
        "   WHERE ft.appid = ?1 AND ft.openid = j.value"
        "   AND ft.tag_id IN (SELECT id FROM wx_tags WHERE appid = ?1) ORDER BY ft.tag_id))"
        " FROM json_each(?2) j LEFT JOIN wx_followers f ON f.appid = ?1 AND f.openid = j.value"
        " ORDER BY j.key",
        (acct.appid, json.dumps(asked)),
    ).fetchall()
    out = []
    for openid, known, unfollowed, tags in rows:
        if not known:
            raise ApiError(40003, "invalid openid")
        info = profile(openid, acct.created_at)
        if unfollowed:
            out.append({"subscribe": 0, "openid": openid, "unionid": info["unionid"]})
            continue
        out.append({"subscribe": 1, "openid": openid, "language": "zh_CN", **info,
                    "remark": "", "groupid": 0, "tagid_list": json.loads(tags), "qr_scene": 0,
                    "qr_scene_str": ""})  # fmt: skip
    return {"user_info_list": out}


# -- mass send (§1.2) -----------------------------------------------------------------------------
def _content(body: dict[str, Any]) -> tuple[str, Any]:
    msgtype = body.get("msgtype")
    if msgtype not in MSGTYPES:
        raise ApiError(40008, "invalid message type")
    obj = body.get(msgtype) or (body.get("images") if msgtype == "image" else None)
    if not isinstance(obj, dict):
        raise ApiError(44004 if msgtype == "text" else 40007, f"empty {msgtype} data")
    if msgtype == "text":
        if not isinstance(obj.get("content"), str) or not obj["content"]:
            raise ApiError(44004, "empty content")
    elif msgtype == "wxcard":
        if not obj.get("card_id"):
            raise ApiError(40007, "invalid card_id")
    elif not (obj.get("media_id") or obj.get("media_ids")):
        raise ApiError(40007, "invalid media_id")
    return msgtype, obj


def _limiter(call: Call, acct: Account, now: float) -> None:
    """Rolling-minute limit over mass + preview calls; a refused call is not counted."""
    db = call.state.db
    db.execute("DELETE FROM mass_calls WHERE appid = ? AND ts <= ?", (acct.appid, now - 120))
    recent = call.state.one(
        "SELECT count(*) FROM mass_calls WHERE appid = ? AND ts > ?", (acct.appid, now - 60)
    )
    if recent >= acct.rules["mass_calls_per_minute"]:
        raise ApiError(45009, "api freq out of limit")
    db.execute("INSERT INTO mass_calls(appid, ts) VALUES (?, ?)", (acct.appid, now))


def _new_msg_id(state: State) -> int:
    return int(state.one("SELECT coalesce(max(msg_id), 1000000000) + 1 FROM mass_jobs"))


def _check_quota(call: Call, acct: Account, now: float, to_all: bool) -> None:
    """45028: 公众号 1 successful mass send per day; 服务号 ≤ N is_to_all per month."""
    if acct.type == "subscription":
        used = call.state.one(
            "SELECT count(*) FROM mass_jobs WHERE appid = ? AND kind IN ('sendall', 'send')"
            " AND status != 'SEND_FAIL' AND created_at >= ?",
            (acct.appid, call.state.day_start(now)),
        )
        if used >= acct.rules["subscription_mass_per_day"]:
            raise ApiError(45028, "has no masssend quota")
    elif to_all:
        used = call.state.one(
            "SELECT count(*) FROM mass_jobs WHERE appid = ? AND kind = 'sendall' AND is_to_all = 1"
            " AND status != 'SEND_FAIL' AND created_at >= ?",
            (acct.appid, call.state.month_start(now)),
        )
        if used >= acct.rules["service_to_all_per_month"]:
            raise ApiError(45028, "has no masssend quota")


def _mass(call: Call, acct: Account, kind: str) -> dict[str, Any]:
    """Shared body of ``mass/sendall`` and ``mass/send``."""
    body, state, r = call.body, call.state, acct.rules
    msgtype, content = _content(body)
    media_twin.require_in(state, "wechat", acct.appid, msgtype, content)  # only ids issued here
    to_all, tag_id, touser = False, None, None
    if kind == "send":
        raw = body.get("touser")
        if not isinstance(raw, list):
            raise ApiError(40032, "invalid openid list size")
        if len(raw) > r["mass_max_per_call"]:  # the request's list, as sent
            raise ApiError(40032, "invalid openid list size")
        touser = list(dict.fromkeys(str(o) for o in raw))
        # "At least two openid" counts people: a list that names one openid twice is one
        # recipient. The reference does not say how the platform counts (UNCONFIRMED); the
        # twin takes the strict reading, so a client that pads a lone recipient with itself
        # fails here rather than on the real platform. TotalCount is the same distinct count.
        if len(touser) < r["mass_min_per_call"]:
            raise ApiError(40130, "invalid openid list size, at least two openid")
        audience: Any = sorted(touser)
    else:
        flt = body.get("filter")
        if not isinstance(flt, dict):
            raise ApiError(47001, "data format error")
        to_all = bool(flt.get("is_to_all"))
        if not to_all:
            try:
                tag_id = int(flt["tag_id"])
            except (KeyError, TypeError, ValueError):
                raise ApiError(45159, "invalid tag id") from None
            if (
                state.one("SELECT 1 FROM wx_tags WHERE appid = ? AND id = ?", (acct.appid, tag_id))
                is None
            ):
                raise ApiError(45159, "invalid tag id")
        audience = {"is_to_all": to_all, "tag_id": tag_id}
    cmid = body.get("clientmsgid")
    if cmid is None or cmid == "":
        blob = json.dumps([kind, audience, msgtype, content], sort_keys=True, ensure_ascii=False)
        cmid = "auto:" + hashlib.sha256(blob.encode()).hexdigest()[:40]
    else:
        cmid = str(cmid)
        if len(cmid.encode()) > r["clientmsgid_max_bytes"]:
            raise ApiError(45067, "clientmsgid size out of limit")
    now = state.now()
    prior = state.one(
        "SELECT msg_id FROM mass_jobs WHERE appid = ? AND clientmsgid = ? AND created_at > ?"
        " ORDER BY created_at DESC LIMIT 1",
        (acct.appid, cmid, now - r["clientmsgid_window_seconds"]),
    )
    if prior is not None:
        raise ApiError(45065, "clientmsgid exist", msg_id=prior)
    refused = state.one(
        "SELECT 1 FROM mass_refusals WHERE appid = ? AND clientmsgid = ? AND ts > ?",
        (acct.appid, cmid, now - r["clientmsgid_retry_seconds"]),
    )
    if refused is not None:
        raise ApiError(45066, "clientmsgid retry too fast, please retry after 1 minute")
    with state.tx() as db:
        try:
            _limiter(call, acct, now)
            _check_quota(call, acct, now, to_all)
        except ApiError as exc:  # platform-rule refusal: remembered for 45066, then answered
            db.execute(
                "INSERT INTO mass_refusals(appid, clientmsgid, ts, errcode) VALUES (?,?,?,?)",
                (acct.appid, cmid, now, exc.code),
            )
            return error_body(exc.code, exc.msg)
        msg_id = _new_msg_id(state)
        data_id = msg_id + MSG_DATA_ID_OFFSET if msgtype == "mpnews" else None
        counts = _deliver(call, acct, msg_id, now, touser, to_all, tag_id)
        db.execute(
            "INSERT INTO mass_jobs(msg_id, appid, kind, msgtype, clientmsgid, is_to_all, tag_id,"
            " status, created_at, due_at, total, filter_count, sent_count, error_count,"
            " msg_data_id) VALUES (?,?,?,?,?,?,?,'SENDING',?,?,?,?,?,?,?)",
            (msg_id, acct.appid, kind, msgtype, cmid, int(to_all), tag_id, now,
             now + acct.job_delay, *counts, data_id),
        )  # fmt: skip
        if kind == "sendall":
            _await_admin(call.state, acct, msg_id, now)
    out: dict[str, Any] = {"errcode": 0, "errmsg": "send job submission success", "msg_id": msg_id}
    if data_id is not None:
        out["msg_data_id"] = data_id
    return out


def _deliver(
    call: Call, acct: Account, msg_id: int, now: float,
    touser: list[str] | None, to_all: bool, tag_id: int | None,
) -> tuple[int, int, int, int]:  # fmt: skip
    """Write the ledger rows set-based; returns (total, filter, sent, error) for the job."""
    db, appid = call.state.db, acct.appid
    if touser is not None:
        # CROSS JOIN pins json_each as the outer loop: each listed openid is one primary-key
        # probe. A plain JOIN lets SQLite walk every follower of the account and scan the
        # list for each, which is quadratic (seconds for 10,000 of 25,000).
        source = (
            "FROM json_each(?) j CROSS JOIN wx_followers f ON f.appid = ? AND f.openid = j.value"
        )
        params: tuple[Any, ...] = (json.dumps(touser), appid, appid)
    elif to_all:
        source, params = "FROM wx_followers f", (appid,)
    else:
        source = (
            "FROM wx_follower_tags t JOIN wx_followers f ON f.appid = t.appid"
            " AND f.openid = t.openid AND t.appid = ? AND t.tag_id = ?"
        )
        params = (appid, tag_id, appid)
    reachable = call.state.one(f"SELECT count(*) {source} WHERE f.appid = ? AND {ALIVE}", params)
    if touser is not None and reachable == 0:
        raise ApiError(40003, "invalid openid")
    total = len(touser) if touser is not None else reachable
    quota = ""
    extra: tuple[Any, ...] = ()
    if acct.type == "service":  # ≤ N per user per calendar month: the rest is silently filtered
        quota = (
            " AND (SELECT count(*) FROM ledger l WHERE l.channel = ? AND l.account = f.appid"
            " AND l.recipient = f.openid AND l.ts >= ?) < ?"
        )
        extra = (CHANNEL, call.state.month_start(now), acct.rules["service_per_user_per_month"])
    cur = db.execute(
        "INSERT INTO ledger(channel, account, recipient, message_id, ts)"
        f" SELECT ?, f.appid, f.openid, ?, ? {source}"
        f" WHERE f.appid = ? AND {ALIVE}{quota}",
        (CHANNEL, str(msg_id), now, *params, *extra),
    )
    sent = cur.rowcount
    errors = total - reachable
    return total, sent + errors, sent, errors


def sendall(call: Call, acct: Account) -> dict[str, Any]:
    return _mass(call, acct, "sendall")


def send(call: Call, acct: Account) -> dict[str, Any]:
    return _mass(call, acct, "send")


def preview(call: Call, acct: Account) -> dict[str, Any]:
    """One message to one openid (``touser``) or WeChat ID (``towxname``, wins if both)."""
    msgtype, part = _content(call.body)
    media_twin.require_in(call.state, "wechat", acct.appid, msgtype, part)
    state, now = call.state, call.state.now()
    wxname, openid = call.body.get("towxname"), call.body.get("touser")
    if wxname:
        recipient = f"wxname:{wxname}"
        used = state.one(
            "SELECT count(*) FROM mass_jobs WHERE appid = ? AND kind = 'preview_wxname'"
            " AND created_at >= ?",
            (acct.appid, state.day_start(now)),
        )
        if used >= acct.rules["preview_towxname_per_day"]:
            raise ApiError(45009, "reach max api daily quota limit")
    else:
        status = follower_state(state.db, acct.appid, str(openid or ""))
        if status is None:
            raise ApiError(40003, "invalid openid")
        if status == "unfollowed":
            raise ApiError(43004, "require subscribe")
        recipient = str(openid)
    with state.tx() as db:
        _limiter(call, acct, now)
        msg_id = _new_msg_id(state)
        db.execute(
            "INSERT INTO mass_jobs(msg_id, appid, kind, msgtype, is_to_all, status, created_at,"
            " due_at, total, filter_count, sent_count, error_count)"
            " VALUES (?,?,?,?,0,'SEND_SUCCESS',?,?,1,1,1,0)",
            (msg_id, acct.appid, "preview_wxname" if wxname else "preview", msgtype, now, now),
        )
        ledger.record(db, PREVIEW_CHANNEL, acct.appid, str(msg_id), [recipient], now)
    return {"errmsg": "preview success", "msg_id": msg_id}


def _job_id(call: Call, acct: Account) -> int:
    try:
        msg_id = int(call.body.get("msg_id", ""))
    except (TypeError, ValueError):
        raise ApiError(40059, "invalid msg id") from None
    if (
        call.state.one(
            "SELECT 1 FROM mass_jobs WHERE msg_id = ? AND appid = ?", (msg_id, acct.appid)
        )
        is None
    ):
        raise ApiError(40059, "invalid msg id")
    return msg_id


def mass_get(call: Call, acct: Account) -> dict[str, Any]:
    msg_id = _job_id(call, acct)
    complete_due(call.state)  # so a status read right after a clock jump is already settled
    status = call.state.one("SELECT status FROM mass_jobs WHERE msg_id = ?", (msg_id,))
    return {"msg_id": msg_id, "msg_status": status}


def mass_delete(call: Call, acct: Account) -> dict[str, Any]:
    """Marks the job DELETE (recipients keep what they got, so the ledger is unchanged)."""
    msg_id = _job_id(call, acct)
    with call.state.tx() as db:
        db.execute("UPDATE mass_jobs SET status = 'DELETE' WHERE msg_id = ?", (msg_id,))
    return {}


# -- API mass-send protection (风险操作保护, reference §1.2/§1.3) ---------------------------------
# With protection on, a ``sendall`` job (to all or to a tag) waits for the account admin's
# confirmation; the twin plays the admin: ``manual`` waits for ``POST /_sandbox/wechat/mass/
# {msg_id}/confirm|refuse``, ``confirm``/``refuse`` answer by themselves after ``delay`` seconds.
# Refused ⇒ MASSSENDJOBFINISH Status err(40001); no answer within the rule's 30 minutes ⇒
# err(40002). Either way the job is SEND_FAIL and its ledger rows are removed (nobody got it).
def _await_admin(state: State, acct: Account, msg_id: int, now: float) -> None:
    row = state.db.execute(
        "SELECT enabled, policy, delay FROM mass_protection WHERE appid = ?", (acct.appid,)
    ).fetchone()
    if row is None or not row[0]:
        return
    _, policy, delay = row
    decide_at = None if policy == "manual" else now + float(delay)
    state.db.execute(
        "INSERT INTO mass_confirmations(msg_id, appid, state, created_at, decide_at, expires_at)"
        " VALUES (?,?,'waiting',?,?,?)",
        (msg_id, acct.appid, now, decide_at,
         now + acct.rules["mass_send_protection_confirm_seconds"]),
    )  # fmt: skip


def decide(state: State, msg_id: int, answer: str) -> dict[str, Any]:
    """The admin's answer to a waiting job: ``confirm`` or ``refuse`` (admin endpoint)."""
    if answer not in ("confirm", "refuse"):
        raise ValueError("answer must be confirm or refuse")
    row = state.db.execute(
        "SELECT state FROM mass_confirmations WHERE msg_id = ?", (msg_id,)
    ).fetchone()
    if row is None:
        raise ValueError(f"msg_id {msg_id} is not waiting for an admin (protection off?)")
    if row[0] != "waiting":
        raise ValueError(f"msg_id {msg_id} was already {row[0]}")
    with state.tx() as db:
        _settle_confirmation(db, state, msg_id, "confirmed" if answer == "confirm" else "refused")
    complete_due(state)
    return {"msg_id": msg_id, "state": "confirmed" if answer == "confirm" else "refused"}


def _settle_confirmation(db: Any, state: State, msg_id: int, outcome: str) -> None:
    now = state.now()
    db.execute(
        "UPDATE mass_confirmations SET state = ?, decided_at = ? WHERE msg_id = ?",
        (outcome, now, msg_id),
    )
    if outcome == "confirmed":
        return
    job = db.execute("SELECT appid, total FROM mass_jobs WHERE msg_id = ?", (msg_id,)).fetchone()
    db.execute("UPDATE mass_jobs SET status = 'SEND_FAIL' WHERE msg_id = ?", (msg_id,))
    db.execute("DELETE FROM ledger WHERE channel = ? AND message_id = ?", (CHANNEL, str(msg_id)))
    acct = load_account(state, job[0])
    if acct is None:
        return
    xml = event_xml(
        {"ToUserName": acct.original_id, "FromUserName": helper_openid(acct.appid),
         "CreateTime": int(now), "MsgType": "event", "Event": "MASSSENDJOBFINISH",
         "MsgID": msg_id, "Status": PROTECTION_STATUS[outcome], "TotalCount": job[1],
         "FilterCount": 0, "SentCount": 0, "ErrorCount": 0}
    )  # fmt: skip
    post_event(db, acct, CHANNEL, "MASSSENDJOBFINISH", str(msg_id), helper_openid(acct.appid),
               xml, now)  # fmt: skip


def _protection_due(state: State, now: float) -> None:
    """Automatic answers whose delay passed, and waits past the 30 minutes (err(40002))."""
    rows = state.db.execute(
        "SELECT c.msg_id, p.policy, c.decide_at, c.expires_at FROM mass_confirmations c"
        " LEFT JOIN mass_protection p ON p.appid = c.appid"
        " WHERE c.state = 'waiting' AND (c.expires_at <= ?1 OR c.decide_at <= ?1)",
        (now,),
    ).fetchall()
    if not rows:
        return
    with state.tx() as db:
        for msg_id, policy, decide_at, expires_at in rows:
            if decide_at is not None and decide_at <= now and decide_at < expires_at:
                outcome = "refused" if policy == "refuse" else "confirmed"
            else:
                outcome = "expired"
            _settle_confirmation(db, state, msg_id, outcome)


def protection(state: State, appid: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    """Read or set an account's protection (admin endpoint); lists the waiting jobs."""
    if spec is not None:
        policy = str(spec.get("policy", "manual"))
        if policy not in PROTECTION_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(PROTECTION_POLICIES)}")
        if load_account(state, appid) is None:
            raise ValueError(f"no account {appid}")
        with state.tx() as db:
            db.execute(
                "INSERT INTO mass_protection(appid, enabled, policy, delay) VALUES (?,?,?,?)"
                " ON CONFLICT(appid) DO UPDATE SET enabled = excluded.enabled,"
                " policy = excluded.policy, delay = excluded.delay",
                (appid, int(bool(spec.get("enabled", True))), policy,
                 float(spec.get("delay_seconds", 60.0))),
            )  # fmt: skip
    row = state.db.execute(
        "SELECT enabled, policy, delay FROM mass_protection WHERE appid = ?", (appid,)
    ).fetchone()
    jobs = state.db.execute(
        "SELECT msg_id, state, created_at, expires_at FROM mass_confirmations WHERE appid = ?"
        " ORDER BY msg_id",
        (appid,),
    ).fetchall()
    return {
        "appid": appid,
        "enabled": bool(row and row[0]),
        "policy": row[1] if row else "manual",
        "delay_seconds": row[2] if row else 60.0,
        "jobs": [
            {"msg_id": m, "state": st, "created_at": c, "expires_at": e} for m, st, c, e in jobs
        ],
    }


async def admin_protection(request: web.Request) -> web.Response:
    state, appid = request.app[STATE], request.match_info["appid"]
    spec = None
    if request.method == "POST":
        raw = await request.read()
        spec = json.loads(raw) if raw.strip() else {}
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
    return web.json_response(protection(state, appid, spec))


async def admin_decide(request: web.Request) -> web.Response:
    msg_id = int(request.match_info["msg_id"])
    return web.json_response(decide(request.app[STATE], msg_id, request.match_info["answer"]))


def complete_due(state: State, limit: int = 500) -> int:
    """SENDING jobs whose delay has passed become SEND_SUCCESS and queue MASSSENDJOBFINISH.

    Jobs waiting for an admin's confirmation (mass-send protection) wait; the admin's answer
    or the 30-minute timeout settles them first.
    """
    now = state.now()
    _protection_due(state, now)
    rows = state.db.execute(
        "SELECT msg_id, appid, total, filter_count, sent_count, error_count FROM mass_jobs"
        " WHERE status = 'SENDING' AND due_at <= ? AND NOT EXISTS (SELECT 1 FROM"
        " mass_confirmations m WHERE m.msg_id = mass_jobs.msg_id AND m.state = 'waiting')"
        " ORDER BY due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return 0
    with state.tx() as db:
        for msg_id, appid, total, filtered, sent, errors in rows:
            db.execute("UPDATE mass_jobs SET status = 'SEND_SUCCESS' WHERE msg_id = ?", (msg_id,))
            acct = load_account(state, appid)
            if acct is None:
                continue
            xml = event_xml(
                {"ToUserName": acct.original_id, "FromUserName": helper_openid(appid),
                 "CreateTime": int(now), "MsgType": "event", "Event": "MASSSENDJOBFINISH",
                 "MsgID": msg_id, "Status": "send success", "TotalCount": total,
                 "FilterCount": filtered, "SentCount": sent, "ErrorCount": errors}
            )  # fmt: skip
            post_event(
                db, acct, CHANNEL, "MASSSENDJOBFINISH", str(msg_id), helper_openid(appid), xml, now
            )
    return len(rows)


def post_event(
    db: Any, acct: Account, channel: str, event: str, msg_id: str, from_user: str, xml: str,
    now: float,
) -> None:  # fmt: skip
    """Queue an encrypted (safe-mode) event to the account's callback URL."""
    callbacks.enqueue(
        db, channel=channel, account=acct.appid, event=event, msg_id=msg_id,
        url=acct.callback_url, token=acct.token, aes_key=acct.aes_key, receive_id=acct.appid,
        to_user=acct.original_id, from_user=from_user, plaintext=xml,
        max_attempts=1 + acct.rules["callback_retries"],
        timeout=acct.rules["callback_timeout_seconds"], now=now,
    )  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/token", get_token)
    app.router.add_post(f"{PREFIX}/stable_token", stable_token)
    routes = [
        *TAG_ROUTES,
        ("GET", "user/get", endpoint(user_get)),
        ("POST", "user/info/batchget", endpoint(batchget)),
        ("POST", "message/mass/sendall", endpoint(sendall)),
        ("POST", "message/mass/send", endpoint(send)),
        ("POST", "message/mass/preview", endpoint(preview)),
        ("POST", "message/mass/get", endpoint(mass_get)),
        ("POST", "message/mass/delete", endpoint(mass_delete)),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, f"{PREFIX}/{path}", handler)
    admin = "/_sandbox/wechat"  # the twin plays the account admin (mass-send protection)
    app.router.add_get(f"{admin}/accounts/{{appid}}/protection", admin_protection)
    app.router.add_post(f"{admin}/accounts/{{appid}}/protection", admin_protection)
    app.router.add_post(f"{admin}/mass/{{msg_id}}/{{answer}}", admin_decide)
