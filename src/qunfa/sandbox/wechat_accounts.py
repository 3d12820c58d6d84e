"""Official Account records shared by the ``wechat_oa`` and ``wechat_template`` twins.

Accounts (with their rule overrides and templates), generated followers, tags, access tokens,
the error envelope and the request plumbing (:func:`endpoint`) every ``/wechat/cgi-bin`` handler
goes through. Followers are generated deterministically from (appid, seed, index): the openid is
``o`` + 27 base64url characters of a SHAKE-256 stream over (appid, seed); tags are drawn per
follower by a hash of (index, tag) computed inside SQLite; subscribe time, scene and unionid are
derived from the openid's hash when asked. So a 1,000,000-follower account is three set-based
statements in one transaction (a few seconds).
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
from qunfa.sandbox.state import STATE, State

TWIN = "wechat"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS wx_accounts (
    appid TEXT PRIMARY KEY, secret TEXT NOT NULL, type TEXT NOT NULL, token TEXT NOT NULL,
    aes_key TEXT NOT NULL, callback_url TEXT NOT NULL, original_id TEXT NOT NULL,
    seed INTEGER NOT NULL, job_delay REAL NOT NULL, refuse_rate REAL NOT NULL,
    templates TEXT NOT NULL, rules TEXT NOT NULL, created_at REAL NOT NULL,
    followers INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wx_followers (
    appid TEXT NOT NULL, openid TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (appid, openid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wx_unfollowed (
    appid TEXT NOT NULL, openid TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (appid, openid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wx_tags (
    appid TEXT NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (appid, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wx_follower_tags (
    appid TEXT NOT NULL, tag_id INTEGER NOT NULL, openid TEXT NOT NULL,
    PRIMARY KEY (appid, tag_id, openid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wx_tokens (
    token TEXT PRIMARY KEY, appid TEXT NOT NULL, kind TEXT NOT NULL, issued_at REAL NOT NULL,
    expires_at REAL NOT NULL, killed_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wx_tokens_app ON wx_tokens(appid, kind, issued_at);
"""

DEFAULT_TAGS = {"VIP": 0.05, "上海": 0.2, "北京": 0.15, "新客": 0.3, "沉睡用户": 0.25}
DEFAULT_TEMPLATES = {"TPL_ORDER_SHIPPED": ["thing1", "character_string2", "time3"]}
FIRST_TAG_ID = 100  # ids 0/1/2 are system tags; user tags start at 100 as on the platform
SCENES = ("ADD_SCENE_SEARCH", "ADD_SCENE_QR_CODE", "ADD_SCENE_PROFILE_CARD", "ADD_SCENE_OTHERS")
TWO_YEARS = 2 * 365 * 86400


class ApiError(Exception):
    """A platform error answer: ``{"errcode": code, "errmsg": msg, **extra}`` with HTTP 200."""

    def __init__(self, code: int, msg: str, **extra: Any) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.extra = code, msg, extra


def reply(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def error_body(code: int, msg: str, **extra: Any) -> dict[str, Any]:
    rid = "-".join(secrets.token_hex(4) for _ in range(3))
    return {"errcode": code, "errmsg": f"{msg} rid: {rid}", **extra}


@dataclass(frozen=True)
class Account:
    appid: str
    secret: str
    type: str  # "subscription" (公众号) | "service" (服务号)
    token: str
    aes_key: str
    callback_url: str
    original_id: str
    seed: int
    job_delay: float
    refuse_rate: float
    templates: dict[str, list[str]]
    rules: rules.RuleSet
    created_at: float
    followers: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Account:
        ruleset = rules.load("wechat_oa").with_overrides(json.loads(row[11]))
        appid, secret, kind, token, aes_key, url, gh, seed, delay, refuse = row[:10]
        return cls(appid, secret, kind, token, aes_key, url, gh, seed, delay, refuse,
                   json.loads(row[10]), ruleset, row[12], row[13])  # fmt: skip


def helper_openid(appid: str) -> str:
    """The FromUserName of mass-send events (the 群发助手 "mphelper" account's openid)."""
    return "o" + _b64(hashlib.blake2b(f"{appid}:mphelper".encode(), digest_size=21).digest())[:27]


def event_xml(fields: dict[str, str | int]) -> str:
    """Flat event XML as the platform writes it: strings in CDATA, numbers bare."""
    parts = [
        f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}><![CDATA[{v}]]></{k}>"
        for k, v in fields.items()
    ]
    return "<xml>" + "".join(parts) + "</xml>"


def load_account(state: State, appid: str) -> Account | None:
    row = state.db.execute("SELECT * FROM wx_accounts WHERE appid = ?", (appid,)).fetchone()
    return None if row is None else Account.from_row(row)


# -- followers ------------------------------------------------------------------------------------
# A follower is "followed" unless its (appid, openid) is in wx_unfollowed (unfollows are rare, so
# the big table never changes after creation). Use as ``... FROM wx_followers f WHERE {ALIVE}``.
ALIVE = "NOT EXISTS (SELECT 1 FROM wx_unfollowed u WHERE u.appid = f.appid AND u.openid = f.openid)"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def openids(appid: str, seed: int, n: int) -> list[str]:
    """The first ``n`` openids of (appid, seed): follower i takes bytes 21i..21i+21 of one
    SHAKE-256 stream (21 bytes = 28 base64url chars, of which 27 are kept)."""
    stream = _b64(hashlib.shake_256(f"{appid}:{seed}".encode()).digest(21 * n))
    return ["o" + stream[i : i + 27] for i in range(0, 28 * n, 28)]


def follower_state(db: sqlite3.Connection, appid: str, openid: str) -> str | None:
    """``"followed"``, ``"unfollowed"`` or ``None`` (not a follower of this account)."""
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM wx_unfollowed WHERE appid = ? AND openid = ?)"
        " FROM wx_followers WHERE appid = ? AND openid = ?",
        (appid, openid, appid, openid),
    ).fetchone()
    return None if row is None else ("unfollowed" if row[0] else "followed")


# Tag membership, drawn in one statement from the follower's index: an affine map modulo the
# prime 2^31 - 1, squared modulo the same prime, low 16 bits against the share. The affine map
# alone is not enough: when the multiplier's low bits are close to a multiple of 2^16 they
# drift slowly and a small account could get no member of a 50% tag (1 draw in ~700); the
# square breaks that up (20,000 random draws of 300 followers at 50%: never fewer than 110).
TAG_DRAW_SQL = """
INSERT INTO wx_follower_tags(appid, tag_id, openid)
SELECT appid, :tag_id, openid
FROM (SELECT appid, openid, ((idx + 1) * :mul + :add) % 2147483647 AS x
      FROM wx_followers WHERE appid = :appid)
WHERE (x * x + :add) % 2147483647 % 65536 < :cut
"""


def _tag_hash(appid: str, seed: int, name: str) -> tuple[int, int]:
    """Multiplier and offset of one tag's membership draw (computed in SQL from the index)."""
    h = hashlib.blake2b(f"{appid}:{seed}:tag:{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(h[:4]) | 1) + 2**31, int.from_bytes(h[4:])


def profile(openid: str, created_at: float) -> dict[str, Any]:
    """Fields of user/info derived from the openid's hash (nothing stored)."""
    h = hashlib.blake2b(f"profile:{openid}".encode(), digest_size=32).digest()
    return {
        "unionid": "u" + _b64(h[:21])[:27],
        "subscribe_time": int(created_at) - int.from_bytes(h[21:25]) % TWO_YEARS,
        "subscribe_scene": SCENES[h[25] % len(SCENES)],
    }


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    """Create (or replace) one account with its generated followers, in one transaction."""
    appid = str(spec["appid"])
    acct_type = str(spec.get("type", "service"))
    if acct_type not in ("subscription", "service"):
        raise ValueError("type must be 'subscription' or 'service'")
    overrides = dict(spec.get("rules") or {})
    rules.load("wechat_oa").with_overrides(overrides)  # unknown rule names fail here
    tag_shares: dict[str, float] = dict(spec.get("tags") or DEFAULT_TAGS)
    templates = {**DEFAULT_TEMPLATES, **dict(spec.get("templates") or {})}
    seed, n = int(spec.get("seed", 0)), int(spec.get("followers", 0))
    now = state.now()
    original_id = str(
        spec.get("original_id") or "gh_" + hashlib.sha1(appid.encode()).hexdigest()[:12]
    )
    aes_key = str(
        spec.get("encoding_aes_key") or _b64(hashlib.sha256(appid.encode()).digest())[:43]
    )
    names = list(tag_shares)
    tag_ids = [FIRST_TAG_ID + i for i in range(len(names))]
    with state.tx() as db:
        drop_account(db, appid)
        db.execute(
            "INSERT INTO wx_accounts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                appid, str(spec.get("secret", "")), acct_type, str(spec.get("token", "token")),
                aes_key, str(spec.get("callback_url") or ""), original_id, seed,
                float(spec.get("job_delay_seconds", 1.0)),
                float(spec.get("template_refuse_rate", 0.01)),
                json.dumps(templates), json.dumps(overrides), now, n,
            ),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO wx_tags(appid, id, name) VALUES (?,?,?)",
            [(appid, tid, name) for tid, name in zip(tag_ids, names, strict=True)],
        )
        # One statement, sorted in SQLite: the primary key is then written in order.
        db.execute(
            "INSERT INTO wx_followers(appid, openid, idx)"
            " SELECT ?, value, key FROM json_each(?) ORDER BY value",
            (appid, json.dumps(openids(appid, seed, n))),
        )
        for tag_id, name in zip(tag_ids, names, strict=True):
            # Membership by a multiplicative hash of the index modulo a prime (2^32 - 5).
            mul, add = _tag_hash(appid, seed, name)
            db.execute(
                TAG_DRAW_SQL,
                {"appid": appid, "tag_id": tag_id, "mul": mul, "add": add % 2147483647,
                 "cut": round(float(tag_shares[name]) * 65536)},
            )  # fmt: skip
    return {"appid": appid, "followers": n, "tags": tag_counts(state.db, appid)}


def drop_account(db: sqlite3.Connection, appid: str) -> None:
    """Remove an account and everything the twins keep about it (ledger rows included)."""
    tables = ("wx_accounts", "wx_followers", "wx_unfollowed", "wx_tags", "wx_follower_tags")
    for table in (*tables, "wx_tokens"):
        db.execute(f"DELETE FROM {table} WHERE appid = ?", (appid,))
    for table in ("mass_jobs", "mass_calls", "mass_refusals", "template_msgs"):
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            db.execute(f"DELETE FROM {table} WHERE appid = ?", (appid,))
    db.execute(
        "DELETE FROM ledger WHERE channel IN ('wechat_oa', 'wechat_oa_preview', 'wechat_template')"
        " AND account = ?",
        (appid,),
    )


def tag_counts(db: sqlite3.Connection, appid: str) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT t.id, t.name, (SELECT count(*) FROM wx_follower_tags f"
        "  WHERE f.appid = t.appid AND f.tag_id = t.id) FROM wx_tags t WHERE t.appid = ?"
        " ORDER BY t.id",
        (appid,),
    ).fetchall()
    return [{"id": r[0], "name": r[1], "count": r[2]} for r in rows]


def list_accounts(state: State) -> list[dict[str, Any]]:
    rows = state.db.execute(
        "SELECT a.appid, a.type, a.original_id, a.callback_url, a.seed,"
        " a.followers - (SELECT count(*) FROM wx_unfollowed u WHERE u.appid = a.appid)"
        " FROM wx_accounts a ORDER BY a.appid"
    ).fetchall()
    keys = ("appid", "type", "original_id", "callback_url", "seed", "followers")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def unfollow(state: State, appid: str, gone: list[str]) -> int:
    with state.tx() as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO wx_unfollowed(appid, openid, ts)"
            " SELECT f.appid, f.openid, ? FROM json_each(?) j CROSS JOIN wx_followers f"
            " ON f.appid = ? AND f.openid = j.value",
            (state.now(), json.dumps(gone), appid),
        )
        return cur.rowcount


# -- access tokens --------------------------------------------------------------------------------
def issue_token(state: State, acct: Account, kind: str) -> tuple[str, float]:
    now = state.now()
    token = secrets.token_urlsafe(96)
    expires = now + acct.rules["token_expires_seconds"]
    state.db.execute(
        "INSERT INTO wx_tokens(token, appid, kind, issued_at, expires_at) VALUES (?,?,?,?,?)",
        (token, acct.appid, kind, now, expires),
    )
    return token, expires


def check_token(state: State, token: str | None) -> Account:
    """The account a query ``access_token`` belongs to, or the platform's token errcode."""
    if not token:
        raise ApiError(41001, "access_token missing")
    row = state.db.execute(
        "SELECT appid, expires_at, killed_at FROM wx_tokens WHERE token = ?", (token,)
    ).fetchone()
    now = state.now()
    if row is None:
        raise ApiError(40001, "invalid credential, access_token is invalid or not latest")
    if row[2] is not None and now >= row[2]:
        raise ApiError(40001, "invalid credential, access_token is invalid or not latest")
    if now >= row[1]:
        raise ApiError(42001, "access_token expired")
    acct = load_account(state, row[0])
    if acct is None:
        raise ApiError(40001, "invalid credential, access_token is invalid or not latest")
    return acct


def revoke_all_tokens(state: State) -> int:
    with state.tx() as db:
        now = state.now()
        return db.execute(
            "UPDATE wx_tokens SET killed_at = ? WHERE killed_at IS NULL OR killed_at > ?",
            (now, now),
        ).rowcount


# -- request plumbing -----------------------------------------------------------------------------
@dataclass
class Call:
    """One platform request: the state, parsed JSON body and query."""

    state: State
    body: dict[str, Any]
    query: dict[str, str]


ApiFn = Callable[[Call, Account], dict[str, Any]]


def endpoint(fn: ApiFn) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a synchronous handler: parse JSON, check ``access_token``, map :class:`ApiError`."""

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError
            call = Call(request.app[STATE], body, dict(request.query))
            acct = check_token(call.state, call.query.get("access_token"))
            return reply({"errcode": 0, "errmsg": "ok"} | fn(call, acct))
        except ApiError as exc:
            return reply(error_body(exc.code, exc.msg, **exc.extra))
        except (ValueError, UnicodeDecodeError):
            return reply(error_body(47001, "data format error"))

    return handler
