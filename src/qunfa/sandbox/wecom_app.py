"""WeCom app-message twin, channel ``wecom_app``: ``message/send`` and ``message/recall``.

Serves ``/wecom/cgi-bin/message/...`` (reference §3.2) with an app secret's token. Recipients are
the corp's members (``touser`` "a|b", or ``@all``); unknown ones come back lower-cased in
``invaliduser`` and all-invalid is 81013. Checked in this order: content (44004/45002/40008),
the duplicate check (an identical request within ``duplicate_check_interval`` answers the first
``msgid`` and delivers nothing), the per-corp call rate (45009), the app's daily person-times
(seats × ``app_daily_person_times_per_seat``, 45009). Then each member gets a ledger row unless
this app already sent them ``app_per_member_per_minute`` in the last 60 s or
``app_per_member_per_hour`` in the last hour: those are dropped silently, as on the platform.
The ledger account is ``<corpid>:<agentid>``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from aiohttp import web

from qunfa.sandbox import media as media_twin
from qunfa.sandbox.wechat_accounts import ApiError
from qunfa.sandbox.wecom_common import PREFIX, Call, Corp, count_call, endpoint

TWIN = "wecom"
CHANNEL = "wecom_app"
SCHEMA = """
CREATE TABLE IF NOT EXISTS wc_app_msgs (
    msgid TEXT PRIMARY KEY, corpid TEXT NOT NULL, agentid INTEGER NOT NULL, digest TEXT NOT NULL,
    created_at REAL NOT NULL, person_times INTEGER NOT NULL, reply TEXT NOT NULL,
    recalled_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wc_app_msgs_digest ON wc_app_msgs(corpid, agentid, digest, created_at);
CREATE INDEX IF NOT EXISTS wc_app_msgs_day ON wc_app_msgs(corpid, agentid, created_at);
"""
MSGTYPES = ("text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown",
            "miniprogram_notice", "template_card")  # fmt: skip
MAX_DUPLICATE_INTERVAL = 4 * 3600  # the platform caps duplicate_check_interval at 4 hours


def _bytes(value: Any) -> int:
    return len(str(value).encode("utf-8"))


def _check_content(body: dict[str, Any], corp: Corp) -> None:
    msgtype = body.get("msgtype")
    if msgtype not in MSGTYPES:
        raise ApiError(40008, "invalid message type")
    part = body.get(msgtype)
    if not isinstance(part, dict) or not part:
        raise ApiError(44004, "empty content")
    r = corp.rules
    if msgtype in ("text", "markdown"):
        if not str(part.get("content", "")).strip():
            raise ApiError(44004, "empty content")
        if _bytes(part["content"]) > r["app_text_max_bytes"]:
            raise ApiError(45002, "content size out of limit")
    elif msgtype == "textcard":
        if (
            _bytes(part.get("title", "")) > r["textcard_title_max_bytes"]
            or _bytes(part.get("description", "")) > r["textcard_description_max_bytes"]
        ):
            raise ApiError(45002, "content size out of limit")
    elif msgtype == "news":
        articles = part.get("articles")
        if not isinstance(articles, list) or not 1 <= len(articles) <= r["news_articles_max"]:
            raise ApiError(45002, "article count out of limit")


def send(call: Call, corp: Corp) -> dict[str, Any]:
    body, state, now = call.body, call.state, call.state.now()
    agentid = int(body.get("agentid", -1))
    if (
        state.one("SELECT 1 FROM wc_apps WHERE corpid = ? AND agentid = ?", (corp.corpid, agentid))
        is None
    ):
        raise ApiError(40056, "invalid agentid")
    if agentid != call.agentid:
        raise ApiError(301002, "not allow operate another agent with this accesstoken")
    touser, toparty, totag = (str(body.get(k) or "") for k in ("touser", "toparty", "totag"))
    if not (touser or toparty or totag):
        raise ApiError(40058, "touser, toparty and totag are all empty")
    _check_content(body, corp)
    msgtype = body.get("msgtype")
    media_twin.require_in(call.state, "wecom", corp.corpid, msgtype, body.get(str(msgtype)))
    listed = [u for u in touser.split("|") if u] if touser != "@all" else []
    if len(listed) > corp.rules["app_max_users_per_call"]:
        raise ApiError(40058, "touser list too long")
    account = f"{corp.corpid}:{agentid}"
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    interval = min(
        int(body.get("duplicate_check_interval") or corp.rules["duplicate_check_interval_seconds"]),
        MAX_DUPLICATE_INTERVAL,
    )
    with state.tx() as db:
        if body.get("enable_duplicate_check"):
            dup = db.execute(
                "SELECT reply FROM wc_app_msgs WHERE corpid = ? AND agentid = ? AND digest = ?"
                " AND created_at > ? ORDER BY created_at LIMIT 1",
                (corp.corpid, agentid, digest, now - interval),
            ).fetchone()
            if dup is not None:  # identical request inside the window: nothing is delivered
                reply: dict[str, Any] = json.loads(dup[0])
                return reply
        members = {
            r[0].lower(): r[0]
            for r in db.execute("SELECT userid FROM wc_members WHERE corpid = ?", (corp.corpid,))
        }
        if touser == "@all":
            valid = list(members.values())
        else:
            valid = list(dict.fromkeys(members[u.lower()] for u in listed if u.lower() in members))
        invalid = list(dict.fromkeys(u.lower() for u in listed if u.lower() not in members))
        extra = {"invalidparty": toparty, "invalidtag": totag}  # parties/tags are not modelled
        answer = {"invaliduser": "|".join(invalid), **{k: v for k, v in extra.items() if v}}
        if not valid:
            raise ApiError(81013, "user & party & tag all invalid", **answer)
        count_call(state, corp, "message/send")
        used = state.one(
            "SELECT coalesce(sum(person_times), 0) FROM wc_app_msgs WHERE corpid = ?"
            " AND agentid = ? AND created_at >= ?",
            (corp.corpid, agentid, state.day_start(now)),
        )
        if used + len(valid) > corp.seats * corp.rules["app_daily_person_times_per_seat"]:
            raise ApiError(45009, "api freq out of limit: the app's daily person-times are spent")
        msgid = secrets.token_urlsafe(24)
        # Per member from this app: ≤ N a minute and ≤ M an hour; the excess silently vanishes.
        db.execute(
            "INSERT INTO ledger(channel, account, recipient, message_id, ts)"
            " SELECT ?, ?, j.value, ?, ? FROM json_each(?) j"
            " WHERE (SELECT count(*) FROM ledger l WHERE l.channel = ? AND l.account = ?"
            "        AND l.recipient = j.value AND l.ts > ?) < ?"
            "   AND (SELECT count(*) FROM ledger l WHERE l.channel = ? AND l.account = ?"
            "        AND l.recipient = j.value AND l.ts > ?) < ?",
            (CHANNEL, account, msgid, now, json.dumps(valid),
             CHANNEL, account, now - 60, corp.rules["app_per_member_per_minute"],
             CHANNEL, account, now - 3600, corp.rules["app_per_member_per_hour"]),
        )  # fmt: skip
        answer["msgid"] = msgid
        db.execute(
            "INSERT INTO wc_app_msgs VALUES (?,?,?,?,?,?,?,NULL)",
            (msgid, corp.corpid, agentid, digest, now, len(valid),
             json.dumps(answer, ensure_ascii=False)),
        )  # fmt: skip
    return answer


def recall(call: Call, corp: Corp) -> dict[str, Any]:
    """Recall within ``recall_window_seconds``; recipients' ledger rows stay (they received it)."""
    msgid, now = str(call.body.get("msgid") or ""), call.state.now()
    row = call.state.db.execute(
        "SELECT created_at FROM wc_app_msgs WHERE msgid = ? AND corpid = ? AND agentid = ?",
        (msgid, corp.corpid, call.agentid),
    ).fetchone()
    if row is None:
        raise ApiError(40058, "invalid msgid")
    if now - row[0] > corp.rules["recall_window_seconds"]:
        raise ApiError(40058, "msg can only be recalled within 24 hours")
    with call.state.tx() as db:
        db.execute(
            "UPDATE wc_app_msgs SET recalled_at = coalesce(recalled_at, ?) WHERE msgid = ?",
            (now, msgid),
        )
    return {}


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/message/send", endpoint(send, "app"))
    app.router.add_post(f"{PREFIX}/message/recall", endpoint(recall, "app"))
