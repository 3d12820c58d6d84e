"""Official Account twin, channel ``wechat_template``: ``message/template/send`` (reference §1.4).

Checks, in order: ``client_msg_id`` dedupe (same openid + client_msg_id inside the rule's window
answers success with the ORIGINAL msgid and delivers nothing; a modelling choice: the platform
documents "sends only once" without saying what the repeat call returns), 48001 for a 公众号
(template messages are a 服务号 feature), 40003 unknown openid, 43004 unfollowed, 40037 unknown
template_id, 47003 missing data key or a ``thing`` value over the rule's length (errmsg names
the field), 43101 user refused (a deterministic ``template_refuse_rate`` share of followers, by
hash of openid), 45009 daily quota. An accepted send is written to the ledger at once; after the
account's ``job_delay_seconds`` a TEMPLATESENDJOBFINISH event reports ``success``, or
``failed:user block`` when the user unfollowed in between (then the ledger row is taken back).
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from qunfa.sandbox import ledger
from qunfa.sandbox.state import State
from qunfa.sandbox.wechat_accounts import (
    Account,
    ApiError,
    Call,
    endpoint,
    event_xml,
    follower_state,
    load_account,
)
from qunfa.sandbox.wechat_oa import PREFIX, post_event

CHANNEL = "wechat_template"

TWIN = "wechat"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS template_msgs (
    msgid INTEGER PRIMARY KEY, appid TEXT NOT NULL, openid TEXT NOT NULL,
    template_id TEXT NOT NULL, client_msg_id TEXT, status TEXT NOT NULL,
    created_at REAL NOT NULL, due_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS template_msgs_dedupe ON template_msgs(appid, openid, client_msg_id);
CREATE INDEX IF NOT EXISTS template_msgs_day ON template_msgs(appid, created_at);
CREATE INDEX IF NOT EXISTS template_msgs_due ON template_msgs(status, due_at);
"""


def refuses(openid: str, rate: float) -> bool:
    """Whether this follower has refused template messages (stable for a given rate)."""
    h = hashlib.sha256(f"refuse:{openid}".encode()).digest()
    return int.from_bytes(h[:4]) < rate * 2**32


def _check_data(acct: Account, keys: list[str], data: Any) -> None:
    limit = acct.rules["template_thing_max_chars"]
    for key in keys:
        item = data.get(key) if isinstance(data, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, str) or (key.startswith("thing") and len(value) > limit):
            raise ApiError(47003, f"argument invalid! data.{key}.value")


def send(call: Call, acct: Account) -> dict[str, Any]:
    body, state = call.body, call.state
    openid = str(body.get("touser") or "")
    cmid = body.get("client_msg_id")
    now = state.now()
    if cmid:
        prior = state.one(
            "SELECT msgid FROM template_msgs WHERE appid = ? AND openid = ? AND client_msg_id = ?"
            " AND created_at > ? ORDER BY created_at DESC LIMIT 1",
            (acct.appid, openid, str(cmid),
             now - acct.rules["template_client_msg_id_window_seconds"]),
        )  # fmt: skip
        if prior is not None:
            return {"msgid": prior}
    if acct.type != "service":
        raise ApiError(48001, "api unauthorized")
    status = follower_state(state.db, acct.appid, openid)
    if status is None:
        raise ApiError(40003, "invalid openid")
    if status == "unfollowed":
        raise ApiError(43004, "require subscribe")
    template_id = str(body.get("template_id") or "")
    if template_id not in acct.templates:
        raise ApiError(40037, "invalid template_id")
    _check_data(acct, acct.templates[template_id], body.get("data"))
    if refuses(openid, acct.refuse_rate):
        raise ApiError(43101, "user refuse to accept the msg")
    used = state.one(
        "SELECT count(*) FROM template_msgs WHERE appid = ? AND created_at >= ?",
        (acct.appid, state.day_start(now)),
    )
    if used >= acct.rules["template_daily_quota"]:
        raise ApiError(45009, "reach max api daily quota limit")
    with state.tx() as db:
        msgid = int(state.one("SELECT coalesce(max(msgid), 2000000000) + 1 FROM template_msgs"))
        db.execute(
            "INSERT INTO template_msgs(msgid, appid, openid, template_id, client_msg_id, status,"
            " created_at, due_at) VALUES (?,?,?,?,?,'sending',?,?)",
            (msgid, acct.appid, openid, template_id, str(cmid) if cmid else None, now,
             now + acct.job_delay),
        )  # fmt: skip
        ledger.record(db, CHANNEL, acct.appid, str(msgid), [openid], now)
    return {"msgid": msgid}


def complete_due(state: State, limit: int = 500) -> int:
    """Settle template sends whose delay has passed and queue TEMPLATESENDJOBFINISH."""
    now = state.now()
    rows = state.db.execute(
        "SELECT m.msgid, m.appid, m.openid, EXISTS (SELECT 1 FROM wx_unfollowed u"
        "  WHERE u.appid = m.appid AND u.openid = m.openid) FROM template_msgs m"
        " WHERE m.status = 'sending' AND m.due_at <= ? ORDER BY m.due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return 0
    with state.tx() as db:
        for msgid, appid, openid, gone in rows:
            status = "failed:user block" if gone else "success"
            db.execute("UPDATE template_msgs SET status = ? WHERE msgid = ?", (status, msgid))
            if gone:
                ledger.remove(db, CHANNEL, appid, openid, str(msgid))
            acct = load_account(state, appid)
            if acct is None:
                continue
            xml = event_xml(
                {"ToUserName": acct.original_id, "FromUserName": openid, "CreateTime": int(now),
                 "MsgType": "event", "Event": "TEMPLATESENDJOBFINISH", "MsgID": msgid,
                 "Status": status}
            )  # fmt: skip
            post_event(db, acct, CHANNEL, "TEMPLATESENDJOBFINISH", str(msgid), openid, xml, now)
    return len(rows)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/message/template/send", endpoint(send))
