"""WeCom (企业微信) records shared by the ``wecom_customer`` and ``wecom_app`` twins.

A corp (``corpid``) has a 客户联系 secret, apps (``agentid`` → secret), members (staff),
customers (external contacts) and the follows between them, corp tags, and access tokens. As on
the platform, a customer may be the friend of several members: each (customer, member) pair is a
follow (``wc_follows``) with its own remark, add time, deletion and corp tags (``wc_follow_tags``,
the tags *that* member marked). All of it is generated deterministically from (corpid, seed) by
``POST /_sandbox/wecom/accounts``: userids ``staff00000…``, external_userids ``wm`` + 30 base64url
characters of a SHAKE-256 stream, customer i followed by member ``i mod staff`` and, for a share
``co_follow_share`` of customers, also by member ``i+1`` (and, for that share of those, ``i+2``
…, up to ``max_follow_users`` members), and whether a member ever confirms a mass-send task
drawn by a hash of (corpid, seed, userid) against ``confirm_rate``.

Tokens live in the Official Account twin's token table (``wx_tokens``, appid
``wecom:<corpid>:<contact|agentid>``) so ``POST /_sandbox/faults {"revoke_tokens": true}``
revokes them too. Errors are HTTP 200 ``{"errcode": N, "errmsg": "..., more info at ...?e=N"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from qunfa import rules
from qunfa.sandbox import callbacks
from qunfa.sandbox.state import STATE, State

# WeCom speaks the same errcode protocol as the Official Account twin: share its error type.
from qunfa.sandbox.wechat_accounts import ApiError, event_xml, reply

TWIN = "wecom"  # url prefix; discovered by qunfa.sandbox.twins
PREFIX = "/wecom/cgi-bin"
ADMIN = "/_sandbox/wecom"
SCHEMA = """
CREATE TABLE IF NOT EXISTS wc_corps (
    corpid TEXT PRIMARY KEY, secret TEXT NOT NULL, token TEXT NOT NULL, aes_key TEXT NOT NULL,
    callback_url TEXT NOT NULL, seed INTEGER NOT NULL, confirm_delay REAL NOT NULL,
    confirm_rate REAL NOT NULL, monthly_rule TEXT NOT NULL, seats INTEGER NOT NULL,
    rules TEXT NOT NULL, created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wc_apps (
    corpid TEXT NOT NULL, agentid INTEGER NOT NULL, secret TEXT NOT NULL,
    PRIMARY KEY (corpid, agentid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wc_members (
    corpid TEXT NOT NULL, userid TEXT NOT NULL, idx INTEGER NOT NULL, confirms INTEGER NOT NULL,
    PRIMARY KEY (corpid, userid)
) WITHOUT ROWID;
-- One row per follow (customer, member): the customer's own fields (idx, name, unionid) repeat
-- on each of their follows, deleted_at ends that one friendship (del_follow_user and
-- del_external_contact both name a member).
CREATE TABLE IF NOT EXISTS wc_follows (
    corpid TEXT NOT NULL, external_userid TEXT NOT NULL, userid TEXT NOT NULL,
    idx INTEGER NOT NULL, name TEXT NOT NULL, unionid TEXT NOT NULL, remark TEXT NOT NULL,
    added_at REAL NOT NULL, deleted_at REAL, PRIMARY KEY (corpid, external_userid, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wc_follows_owner ON wc_follows(corpid, userid, external_userid);
CREATE TABLE IF NOT EXISTS wc_tags (
    corpid TEXT NOT NULL, tag_id TEXT NOT NULL, group_id TEXT NOT NULL, group_name TEXT NOT NULL,
    name TEXT NOT NULL, ord INTEGER NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (corpid, tag_id)
) WITHOUT ROWID;
-- The corp tags a member marked on their customer (follow_info.tag_id of that follow).
CREATE TABLE IF NOT EXISTS wc_follow_tags (
    corpid TEXT NOT NULL, external_userid TEXT NOT NULL, userid TEXT NOT NULL,
    tag_id TEXT NOT NULL, PRIMARY KEY (corpid, external_userid, userid, tag_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wc_calls (corpid TEXT NOT NULL, api TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS wc_calls_api ON wc_calls(corpid, api, ts);
"""

CAP_RULES = ("days_in_month", "7_per_week", "1_per_day")
DEFAULT_TAGS = {"客户等级": {"重要客户": 0.2, "普通客户": 0.5}}
TWO_YEARS = 2 * 365 * 86400


def error_body(code: int, msg: str, **extra: Any) -> dict[str, Any]:
    hint = f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
    more = f"https://open.work.weixin.qq.com/devtool/query?e={code}"
    return {"errcode": code, "errmsg": f"{msg}, hint: [{hint}], more info at {more}", **extra}


@dataclass(frozen=True)
class Corp:
    corpid: str
    secret: str
    token: str
    aes_key: str
    callback_url: str
    seed: int
    confirm_delay: float
    confirm_rate: float
    monthly_rule: str
    seats: int
    rules: rules.RuleSet
    created_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Corp:
        ruleset = rules.load("wecom").with_overrides(json.loads(row[10]))
        corpid, secret, token, aes_key, url, seed, delay, rate, rule, seats = row[:10]
        return cls(corpid, secret, token, aes_key, url, seed, delay, rate, rule, seats,
                   ruleset, row[11])  # fmt: skip


def load_corp(state: State, corpid: str) -> Corp | None:
    row = state.db.execute("SELECT * FROM wc_corps WHERE corpid = ?", (corpid,)).fetchone()
    return None if row is None else Corp.from_row(row)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _share(*parts: object) -> float:
    """A deterministic draw in [0, 1) from the parts."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h) / 2**64


def userids(n: int) -> list[str]:
    return [f"staff{i:05d}" for i in range(n)]


def external_userids(corpid: str, seed: int, n: int) -> list[str]:
    """Customer i takes bytes 24i..24i+24 of one SHAKE-256 stream (32 base64url chars, 30 kept)."""
    stream = _b64(hashlib.shake_256(f"{corpid}:{seed}:external".encode()).digest(24 * n))
    return ["wm" + stream[i : i + 30] for i in range(0, 32 * n, 32)]


def follower_indexes(ext: str, i: int, n_staff: int, share: float, most: int) -> list[int]:
    """The members (indexes) following customer i: ``i mod staff`` first, then ``i+1``, ``i+2``
    … each with chance ``share`` given the one before, at most ``most`` members in all. Drawn
    from the external_userid, so a seed gives the same follows every time (and share 0 gives
    exactly the one-member corps of before)."""
    out = [i % n_staff]
    for k in range(1, min(most, n_staff)):
        if _share(ext, "co_follow", k) >= share:
            break
        out.append((i + k) % n_staff)
    return out


def _tag_id(corpid: str, *parts: str) -> str:
    return "et" + _b64(
        hashlib.blake2b(":".join((corpid, *parts)).encode(), digest_size=15).digest()
    )


def create_corp(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    """Create (or replace) one corp with its members, customers, tags and apps."""
    corpid = str(spec["corpid"])
    monthly_rule = str(
        spec.get("monthly_rule", rules.load("wecom").rules["customer_cap_rule"].value)
    )
    if monthly_rule not in CAP_RULES:
        raise ValueError(f"monthly_rule must be one of {', '.join(CAP_RULES)}")
    overrides = dict(spec.get("rules") or {})
    rules.load("wecom").with_overrides(overrides)  # unknown rule names fail here
    seed, n_staff, n_cust = (
        int(spec.get("seed", 0)),
        int(spec.get("staff", 5)),
        int(spec.get("customers", 100)),
    )
    if n_cust and not n_staff:
        raise ValueError("customers need at least one staff member to follow them")
    rate = float(spec.get("confirm_rate", 0.9))
    co_share, most = float(spec.get("co_follow_share", 0.0)), int(spec.get("max_follow_users", 3))
    if not 0.0 <= co_share <= 1.0:
        raise ValueError("co_follow_share must be a share between 0 and 1")
    if most < 1:
        raise ValueError("max_follow_users must be at least 1 (the member who added the customer)")
    aes_key = str(
        spec.get("encoding_aes_key") or _b64(hashlib.sha256(corpid.encode()).digest())[:43]
    )
    tags: dict[str, dict[str, float]] = dict(spec.get("tags") or DEFAULT_TAGS)
    apps = {int(k): str(v) for k, v in dict(spec.get("app_secrets") or {}).items()}
    now = state.now()
    staff = userids(n_staff)
    customers = external_userids(corpid, seed, n_cust)
    # (customer, member, draw key): the first member's follow keeps the draws of one-member
    # corps (so existing seeds do not change); a co-follower's draws also hash the userid.
    follows = [
        (ext, i, staff[m], (ext,) if k == 0 else (ext, staff[m]))
        for i, ext in enumerate(customers)
        for k, m in enumerate(follower_indexes(ext, i, n_staff, co_share, most))
    ]
    with state.tx() as db:
        drop_corp(db, corpid)
        db.execute(
            "INSERT INTO wc_corps VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (corpid, str(spec.get("secret", "")), str(spec.get("token", "token")), aes_key,
             str(spec.get("callback_url") or ""), seed,
             float(spec.get("confirm_delay_seconds", 1.0)), rate, monthly_rule,
             int(spec.get("seats", 200)), json.dumps(overrides), now),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO wc_apps VALUES (?,?,?)", [(corpid, a, s) for a, s in apps.items()]
        )
        db.executemany(
            "INSERT INTO wc_members VALUES (?,?,?,?)",
            [(corpid, u, i, int(_share(seed, u, "confirms") < rate)) for i, u in enumerate(staff)],
        )
        db.executemany(
            "INSERT INTO wc_follows VALUES (?,?,?,?,?,?,?,?,NULL)",
            [(corpid, ext, uid, i, f"客户{i}",
              "o" + _b64(hashlib.blake2b(f"union:{ext}".encode(), digest_size=21).digest())[:27],
              "", now - _share(*key, "added") * TWO_YEARS)
             for ext, i, uid, key in follows],
        )  # fmt: skip
        for g, (group, members) in enumerate(tags.items()):
            group_id = _tag_id(corpid, group)
            for t, (name, share) in enumerate(members.items()):
                tag_id = _tag_id(corpid, group, name)
                db.execute(
                    "INSERT INTO wc_tags VALUES (?,?,?,?,?,?,?)",
                    (corpid, tag_id, group_id, group, name, 100 * g + t, now),
                )
                db.executemany(
                    "INSERT INTO wc_follow_tags VALUES (?,?,?,?)",
                    [(corpid, ext, uid, tag_id) for ext, _, uid, key in follows
                     if _share(*key, tag_id) < share],
                )  # fmt: skip
    return describe_corp(state, corpid)


def drop_corp(db: sqlite3.Connection, corpid: str) -> None:
    """Remove a corp and everything the twins keep about it (ledger rows included)."""
    for table in ("wc_corps", "wc_apps", "wc_members", "wc_follows", "wc_tags",
                  "wc_follow_tags", "wc_calls"):  # fmt: skip
        db.execute(f"DELETE FROM {table} WHERE corpid = ?", (corpid,))
    for table in ("wc_tasks", "wc_task_staff", "wc_task_customers", "wc_reminds", "wc_app_msgs"):
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            db.execute(f"DELETE FROM {table} WHERE corpid = ?", (corpid,))
    db.execute("DELETE FROM wx_tokens WHERE appid LIKE ?", (f"wecom:{corpid}:%",))
    db.execute(
        "DELETE FROM ledger WHERE channel IN ('wecom_customer', 'wecom_app')"
        " AND (account = ? OR account LIKE ?)",
        (corpid, f"{corpid}:%"),
    )


def describe_corp(state: State, corpid: str) -> dict[str, Any]:
    corp = load_corp(state, corpid)
    if corp is None:
        raise KeyError(f"no corp {corpid}")
    staff = state.db.execute(
        "SELECT m.userid, m.confirms, (SELECT count(*) FROM wc_follows c WHERE c.corpid ="
        " m.corpid AND c.userid = m.userid AND c.deleted_at IS NULL)"
        " FROM wc_members m WHERE m.corpid = ? ORDER BY m.idx",
        (corpid,),
    ).fetchall()
    customers, follows = state.db.execute(
        "SELECT count(DISTINCT external_userid), count(*) FROM wc_follows"
        " WHERE corpid = ? AND deleted_at IS NULL",
        (corpid,),
    ).fetchone()
    agents = [r[0] for r in state.db.execute(
        "SELECT agentid FROM wc_apps WHERE corpid = ? ORDER BY agentid", (corpid,))]  # fmt: skip
    return {
        "corpid": corpid,
        "monthly_rule": corp.monthly_rule,
        "agents": agents,
        "staff": [{"userid": u, "confirms": bool(c), "customers": n} for u, c, n in staff],
        # customers: distinct people who are still someone's friend; follows: (customer,
        # member) pairs, what batch/get_by_user lists over every member.
        "customers": customers,
        "follows": follows,
    }


def delete_customer(
    state: State, corpid: str, ext: str, change_type: str, userid: str | None = None
) -> dict[str, Any]:
    """One member and the customer stop being friends (the follow of ``userid``, which may be
    left out when only one member follows them); queue the encrypted change_external_contact
    event. The customer stays a friend of their other members."""
    corp = load_corp(state, corpid)
    if corp is None:
        raise KeyError(f"no corp {corpid}")
    if change_type not in ("del_follow_user", "del_external_contact"):
        raise ValueError("change_type must be del_follow_user or del_external_contact")
    now = state.now()
    with state.tx() as db:
        members = [r[0] for r in db.execute(
            "SELECT userid FROM wc_follows WHERE corpid = ? AND external_userid = ?"
            " AND deleted_at IS NULL ORDER BY userid",
            (corpid, ext),
        )]  # fmt: skip
        if not members or (userid is not None and userid not in members):
            raise KeyError(f"no customer {ext} of {userid or 'any member'} in {corpid}")
        if userid is None and len(members) > 1:
            raise ValueError(
                f"customer {ext} is followed by {', '.join(members)}: give the userid whose"
                " friendship ends"
            )
        member = userid or members[0]
        db.execute(
            "UPDATE wc_follows SET deleted_at = ? WHERE corpid = ? AND external_userid = ?"
            " AND userid = ?",
            (now, corpid, ext, member),
        )
        fields: dict[str, str | int] = {
            "ToUserName": corpid, "FromUserName": "sys", "CreateTime": int(now),
            "MsgType": "event", "Event": "change_external_contact", "ChangeType": change_type,
            "UserID": member, "ExternalUserID": ext,
        }  # fmt: skip
        callbacks.enqueue(
            db, channel="wecom_customer", account=corpid, event="change_external_contact",
            msg_id=f"{ext}:{member}:{int(now)}", url=corp.callback_url, token=corp.token,
            aes_key=corp.aes_key, receive_id=corpid, to_user=corpid, from_user="sys",
            plaintext=event_xml(fields), max_attempts=1 + corp.rules["callback_retries"],
            timeout=corp.rules["callback_timeout_seconds"], now=now,
        )  # fmt: skip
    return {"corpid": corpid, "external_userid": ext, "userid": member, "change_type": change_type,
            "still_followed_by": [m for m in members if m != member]}  # fmt: skip


# -- tokens ---------------------------------------------------------------------------------------
def _token_app(corpid: str, agentid: int | None) -> str:
    return f"wecom:{corpid}:{'contact' if agentid is None else agentid}"


async def gettoken(request: web.Request) -> web.Response:
    """``GET gettoken?corpid&corpsecret``: one token per secret, the same until it expires."""
    state, q = request.app[STATE], request.query
    corp = load_corp(state, q.get("corpid", ""))
    if corp is None:
        return reply(error_body(40013, "invalid corpid"))
    secret = q.get("corpsecret", "")
    agentid: int | None = None
    if secret != corp.secret or not secret:
        agentid = state.one(
            "SELECT agentid FROM wc_apps WHERE corpid = ? AND secret = ?", (corp.corpid, secret)
        )
        if agentid is None or not secret:
            return reply(error_body(40001, "invalid credential"))
    app = _token_app(corp.corpid, agentid)
    now = state.now()
    with state.tx() as db:
        row = db.execute(
            "SELECT token, expires_at FROM wx_tokens WHERE appid = ? AND kind = 'wecom'"
            " AND killed_at IS NULL AND expires_at > ? ORDER BY issued_at DESC LIMIT 1",
            (app, now),
        ).fetchone()
        if row is None:
            token, expires = secrets.token_urlsafe(96), now + corp.rules["token_expires_seconds"]
            db.execute(
                "INSERT INTO wx_tokens(token, appid, kind, issued_at, expires_at)"
                " VALUES (?,?,'wecom',?,?)",
                (token, app, now, expires),
            )
        else:
            token, expires = row
    return reply({"errcode": 0, "errmsg": "ok", "access_token": token,
                  "expires_in": round(expires - now)})  # fmt: skip


def check_token(state: State, token: str | None) -> tuple[Corp, int | None]:
    """The corp and app (None = the 客户联系 secret) a query ``access_token`` belongs to."""
    if not token:
        raise ApiError(41001, "access_token missing")
    row = state.db.execute(
        "SELECT appid, expires_at, killed_at FROM wx_tokens WHERE token = ? AND kind = 'wecom'",
        (token,),
    ).fetchone()
    now = state.now()
    if row is None or (row[2] is not None and now >= row[2]):
        raise ApiError(40014, "invalid access_token")
    if now >= row[1]:
        raise ApiError(42001, "access_token expired")
    _, corpid, app = str(row[0]).split(":", 2)
    corp = load_corp(state, corpid)
    if corp is None:
        raise ApiError(40014, "invalid access_token")
    return corp, None if app == "contact" else int(app)


# -- request plumbing -----------------------------------------------------------------------------
@dataclass
class Call:
    """One platform request: the state, parsed JSON body and query, and who is calling."""

    state: State
    body: dict[str, Any]
    query: dict[str, str]
    agentid: int | None  # None: the 客户联系 secret's token


ApiFn = Callable[[Call, Corp], dict[str, Any]]


def endpoint(fn: ApiFn, scope: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a synchronous handler: parse JSON, check ``access_token`` and its scope
    (``contact``: the 客户联系 secret; ``app``: an app secret), map :class:`ApiError`."""

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError
            state = request.app[STATE]
            corp, agentid = check_token(state, request.query.get("access_token"))
            if (scope == "contact") != (agentid is None):
                raise ApiError(48002, "api forbidden")
            call = Call(state, body, dict(request.query), agentid)
            return reply({"errcode": 0, "errmsg": "ok"} | fn(call, corp))
        except ApiError as exc:
            return reply(error_body(exc.code, exc.msg, **exc.extra))
        except (ValueError, UnicodeDecodeError, TypeError):
            return reply(error_body(47001, "data format error"))

    return handler


def count_call(state: State, corp: Corp, api: str) -> None:
    """Per corp per API call rate (inside the caller's transaction): 45009 over the limit."""
    now = state.now()
    used = state.one(
        "SELECT count(*) FROM wc_calls WHERE corpid = ? AND api = ? AND ts > ?",
        (corp.corpid, api, now - 60),
    )
    if used >= corp.rules["api_calls_per_minute"]:
        raise ApiError(45009, "api freq out of limit")
    state.db.execute("INSERT INTO wc_calls VALUES (?,?,?)", (corp.corpid, api, now))


# -- admin ----------------------------------------------------------------------------------------
async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


async def admin_create(request: web.Request) -> web.Response:
    return web.json_response(create_corp(request.app[STATE], await _json_body(request)))


async def admin_get(request: web.Request) -> web.Response:
    return web.json_response(describe_corp(request.app[STATE], request.match_info["corpid"]))


async def admin_delete_customer(request: web.Request) -> web.Response:
    body = await _json_body(request)
    out = delete_customer(
        request.app[STATE], request.match_info["corpid"], str(body["external_userid"]),
        str(body.get("change_type", "del_follow_user")),
        str(body["userid"]) if body.get("userid") else None,
    )  # fmt: skip
    return web.json_response(out)


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/gettoken", gettoken)
    app.router.add_post(f"{ADMIN}/accounts", admin_create)
    app.router.add_get(f"{ADMIN}/accounts/{{corpid}}", admin_get)
    app.router.add_post(f"{ADMIN}/accounts/{{corpid}}/delete_customer", admin_delete_customer)
