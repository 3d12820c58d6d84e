"""WeCom customer-contact twin, channel ``wecom_customer``: 客户群发 tasks, contacts and tags.

Serves ``/wecom/cgi-bin/externalcontact/...`` (reference §3.3–§3.5) with the 客户联系 secret's
token. ``add_msg_template`` creates a task: one row per member who follows a targeted customer
and one per (member, customer), all status 0. A customer several members follow is sent by one
of them: the ``sender`` when given, else the member who "last chatted" with them — chats are not
modelled, so the sandbox takes the member who added them last (a sandbox choice). After the
corp's ``confirm_delay_seconds`` a member who ever confirms (see :mod:`.wecom_common`) sends it
(task status 2): each customer gets status 1 and a ledger row, or 2 when no longer a friend, or
3 when the per-customer cap of the corp's ``monthly_rule`` is already reached (days in the month
/ ``customer_cap_per_week`` per week / ``customer_cap_per_day`` per day, counted from the
ledger). Members who never confirm, and every member of a cancelled task, stay at 0.
"""

from __future__ import annotations

import calendar
import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from qunfa.sandbox import ledger
from qunfa.sandbox import media as media_twin
from qunfa.sandbox.state import SHANGHAI, State
from qunfa.sandbox.wechat_accounts import ApiError
from qunfa.sandbox.wecom_common import PREFIX, Call, Corp, count_call, endpoint, load_corp

TWIN = "wecom"
CHANNEL = "wecom_customer"
UNKNOWN_MSGID = 40058  # sandbox choice: the platform's code for an unknown msgid is not documented
SCHEMA = """
CREATE TABLE IF NOT EXISTS wc_tasks (
    msgid TEXT PRIMARY KEY, corpid TEXT NOT NULL, creator TEXT NOT NULL, created_at REAL NOT NULL,
    content TEXT NOT NULL, cancelled_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wc_tasks_time ON wc_tasks(corpid, created_at);
CREATE TABLE IF NOT EXISTS wc_task_staff (
    msgid TEXT NOT NULL, corpid TEXT NOT NULL, userid TEXT NOT NULL, status INTEGER NOT NULL,
    send_time REAL, due_at REAL, PRIMARY KEY (msgid, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wc_task_staff_due ON wc_task_staff(status, due_at);
CREATE TABLE IF NOT EXISTS wc_task_customers (
    msgid TEXT NOT NULL, corpid TEXT NOT NULL, userid TEXT NOT NULL, external_userid TEXT NOT NULL,
    status INTEGER NOT NULL, send_time REAL, PRIMARY KEY (msgid, userid, external_userid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wc_reminds (msgid TEXT NOT NULL, corpid TEXT NOT NULL, ts REAL NOT NULL);
"""
ATTACHMENT_TYPES = ("image", "link", "miniprogram", "video", "file")


def _bytes(value: Any) -> int:
    return len(str(value).encode("utf-8"))


def cap_window(state: State, corp: Corp, now: float) -> tuple[float, int]:
    """(period start, receive cap) of the corp's per-customer rule at ``now``."""
    local = datetime.fromtimestamp(now, SHANGHAI)
    if corp.monthly_rule == "1_per_day":
        return state.day_start(now), corp.rules["customer_cap_per_day"]
    if corp.monthly_rule == "7_per_week":
        monday = (local - timedelta(days=local.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return monday.timestamp(), corp.rules["customer_cap_per_week"]
    return state.month_start(now), calendar.monthrange(local.year, local.month)[1]


RECEIVED = (
    "(SELECT count(*) FROM ledger l WHERE l.channel = 'wecom_customer' AND l.account = c.corpid"
    " AND l.recipient = c.external_userid AND l.ts >= ?)"
)


def _content(body: dict[str, Any], corp: Corp) -> dict[str, Any]:
    text = str((body.get("text") or {}).get("content", ""))
    attachments = body.get("attachments") or []
    if not text and not attachments:
        raise ApiError(40063, "text and attachments are both empty")
    if _bytes(text) > corp.rules["customer_text_max_bytes"]:
        raise ApiError(45002, "content size out of limit")
    if (
        not isinstance(attachments, list)
        or len(attachments) > corp.rules["customer_attachments_max"]
    ):
        raise ApiError(45002, "attachments size out of limit")
    for att in attachments:
        if not isinstance(att, dict) or att.get("msgtype") not in ATTACHMENT_TYPES:
            raise ApiError(40008, "invalid attachment msgtype")
    return {k: v for k, v in (("text", {"content": text} if text else None),
                              ("attachments", attachments or None)) if v}  # fmt: skip


def add_msg_template(call: Call, corp: Corp) -> dict[str, Any]:
    body, state, now = call.body, call.state, call.state.now()
    if body.get("chat_type", "single") != "single":
        raise ApiError(40058, "invalid chat_type: the sandbox models single (customers) only")
    content = _content(body, corp)
    for att in content.get("attachments") or []:  # only media ids issued by this corp's uploads
        kind = att.get("msgtype")
        media_twin.require_in(state, "wecom", corp.corpid, kind, att.get(str(kind)))
    listed = [str(u) for u in body.get("external_userid") or []]
    sender = body.get("sender")
    if len(listed) > corp.rules["customer_max_per_call"]:
        raise ApiError(40058, "external_userid list too long")
    if not listed and not sender:
        raise ApiError(40058, "external_userid or sender required")
    if (
        sender
        and state.one(
            "SELECT 1 FROM wc_members WHERE corpid = ? AND userid = ?", (corp.corpid, sender)
        )
        is None
    ):
        raise ApiError(40003, "invalid userid")
    start, cap = cap_window(state, corp, now)
    with state.tx() as db:
        count_call(state, corp, "add_msg_template")
        owner = "" if not sender else " AND c.userid = ?"
        if listed:
            # One follow per listed customer (a repeated id counts once): the sender's, else
            # the "last chatted" stand-in — a live follow before a deleted one, then the latest
            # added. A customer whose only follows are deleted stays a target and gets status 2.
            sql = (
                f"SELECT c.external_userid, c.userid, {RECEIVED} FROM (SELECT c.*, row_number()"
                " OVER (PARTITION BY c.external_userid ORDER BY c.deleted_at IS NOT NULL,"
                " c.added_at DESC, c.userid) AS pick FROM json_each(?) j JOIN wc_follows c"
                f" ON c.corpid = ? AND c.external_userid = j.value{owner}) c WHERE c.pick = 1"
            )
            params: tuple[Any, ...] = (start, json.dumps(listed), corp.corpid)
        else:
            sql = (
                f"SELECT c.external_userid, c.userid, {RECEIVED} FROM wc_follows c"
                f" WHERE c.corpid = ? AND c.deleted_at IS NULL{owner}"
            )
            params = (start, corp.corpid)
        targets = db.execute(sql, (*params, *([sender] if sender else []))).fetchall()
        found = {t[0] for t in targets}
        fail_list = list(dict.fromkeys(u for u in listed if u not in found))
        if not targets:
            if listed:
                raise ApiError(40096, "invalid external userid", fail_list=fail_list)
            raise ApiError(41048, "no sendable customer")
        if all(t[2] >= cap for t in targets):
            raise ApiError(41048, "no sendable customer: every customer is over the limit")
        msgid = "msg" + secrets.token_urlsafe(24)
        db.execute(
            "INSERT INTO wc_tasks VALUES (?,?,?,?,?,NULL)",
            (msgid, corp.corpid, "", now, json.dumps(content, ensure_ascii=False)),
        )
        db.execute(
            "INSERT INTO wc_task_staff SELECT ?, m.corpid, m.userid, 0, NULL,"
            " CASE WHEN m.confirms THEN ? END FROM wc_members m"
            " WHERE m.corpid = ? AND m.userid IN (SELECT value FROM json_each(?))",
            (
                msgid,
                now + corp.confirm_delay,
                corp.corpid,
                json.dumps(sorted({t[1] for t in targets})),
            ),
        )
        db.executemany(
            "INSERT INTO wc_task_customers VALUES (?,?,?,?,0,NULL)",
            [(msgid, corp.corpid, t[1], t[0]) for t in targets],
        )
    return {"fail_list": fail_list, "msgid": msgid}


def complete_due(state: State, limit: int = 200) -> int:
    """Members whose confirm time has come send the task: customers get status 1, 2 or 3."""
    now = state.now()
    due = state.db.execute(
        "SELECT s.msgid, s.corpid, s.userid FROM wc_task_staff s JOIN wc_tasks t"
        " ON t.msgid = s.msgid WHERE s.status = 0 AND s.due_at <= ? AND t.cancelled_at IS NULL"
        " ORDER BY s.due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    with state.tx() as db:
        for msgid, corpid, userid in due:
            corp = load_corp(state, corpid)
            if corp is None:
                continue
            start, cap = cap_window(state, corp, now)
            rows = db.execute(
                f"SELECT tc.external_userid, c.deleted_at IS NOT NULL, {RECEIVED}"
                " FROM wc_task_customers tc JOIN wc_follows c ON c.corpid = tc.corpid"
                " AND c.external_userid = tc.external_userid AND c.userid = tc.userid"
                " WHERE tc.msgid = ? AND tc.userid = ?",
                (start, msgid, userid),
            ).fetchall()
            status = {ext: 2 if gone else (3 if n >= cap else 1) for ext, gone, n in rows}
            db.executemany(
                "UPDATE wc_task_customers SET status = ?, send_time = ? WHERE msgid = ?"
                " AND userid = ? AND external_userid = ?",
                [(s, now if s == 1 else None, msgid, userid, e) for e, s in status.items()],
            )
            sent = [e for e, s in status.items() if s == 1]
            ledger.record(db, CHANNEL, corpid, msgid, sent, now)
            db.execute(
                "UPDATE wc_task_staff SET status = 2, send_time = ? WHERE msgid = ? AND userid = ?",
                (now, msgid, userid),
            )
    return len(due)


# -- follow-up endpoints --------------------------------------------------------------------------
def _task(call: Call, corp: Corp) -> str:
    msgid = str(call.body.get("msgid") or "")
    if (
        call.state.one(
            "SELECT 1 FROM wc_tasks WHERE msgid = ? AND corpid = ?", (msgid, corp.corpid)
        )
        is None
    ):
        raise ApiError(UNKNOWN_MSGID, "invalid msgid")
    complete_due(call.state)  # a read right after a clock jump is already settled
    return msgid


def _limit(call: Call, corp: Corp, rule: str, default: int) -> int:
    return max(1, min(int(call.body.get("limit") or default), corp.rules[rule]))


def get_groupmsg_list_v2(call: Call, corp: Corp) -> dict[str, Any]:
    b = call.body
    if "start_time" not in b or "end_time" not in b:
        raise ApiError(40058, "start_time and end_time are required")
    start, end = float(b["start_time"]), float(b["end_time"])
    if not 0 <= end - start <= corp.rules["groupmsg_list_max_range_seconds"]:
        raise ApiError(40058, "invalid time range: at most one month")
    if b.get("chat_type", "single") != "single" or int(b.get("filter_type", 2)) == 1:
        return {"group_msg_list": [], "next_cursor": ""}  # only company single-chat tasks exist
    limit, offset = _limit(call, corp, "groupmsg_list_page_max", 50), int(b.get("cursor") or 0)
    creator = " AND creator = ?" if b.get("creator") else ""
    rows = call.state.db.execute(
        "SELECT msgid, creator, created_at, content FROM wc_tasks WHERE corpid = ?"
        f" AND created_at >= ? AND created_at <= ?{creator} ORDER BY created_at, msgid"
        " LIMIT ? OFFSET ?",
        (corp.corpid, start, end, *([b["creator"]] if creator else []), limit + 1, offset),
    ).fetchall()
    items = [{"msgid": m, "creator": c, "create_time": int(t), "create_type": 0, **json.loads(x)}
             for m, c, t, x in rows[:limit]]  # fmt: skip
    return {
        "group_msg_list": items,
        "next_cursor": str(offset + limit) if len(rows) > limit else "",
    }


def get_groupmsg_task(call: Call, corp: Corp) -> dict[str, Any]:
    msgid, limit = _task(call, corp), _limit(call, corp, "groupmsg_result_page_max", 500)
    rows = call.state.db.execute(
        "SELECT userid, status, send_time FROM wc_task_staff WHERE msgid = ? AND userid > ?"
        " ORDER BY userid LIMIT ?",
        (msgid, str(call.body.get("cursor") or ""), limit + 1),
    ).fetchall()
    tasks = [{"userid": u, "status": s, **({"send_time": int(t)} if s == 2 else {})}
             for u, s, t in rows[:limit]]  # fmt: skip
    return {"task_list": tasks, "next_cursor": rows[limit - 1][0] if len(rows) > limit else ""}


def get_groupmsg_send_result(call: Call, corp: Corp) -> dict[str, Any]:
    msgid, limit = _task(call, corp), _limit(call, corp, "groupmsg_result_page_max", 500)
    if not call.body.get("userid"):
        raise ApiError(40058, "userid is required")
    rows = call.state.db.execute(
        "SELECT external_userid, userid, status, send_time FROM wc_task_customers"
        " WHERE msgid = ? AND userid = ? AND external_userid > ? ORDER BY external_userid LIMIT ?",
        (msgid, str(call.body["userid"]), str(call.body.get("cursor") or ""), limit + 1),
    ).fetchall()
    sent = [
        {
            "external_userid": e,
            "userid": u,
            "status": s,
            **({"send_time": int(t)} if s == 1 else {}),
        }
        for e, u, s, t in rows[:limit]
    ]
    return {"send_list": sent, "next_cursor": rows[limit - 1][0] if len(rows) > limit else ""}


def remind_groupmsg_send(call: Call, corp: Corp) -> dict[str, Any]:
    msgid, now = _task(call, corp), call.state.now()
    with call.state.tx() as db:
        used = call.state.one(
            "SELECT count(*) FROM wc_reminds WHERE msgid = ? AND ts > ?", (msgid, now - 86400)
        )
        if used >= corp.rules["remind_per_day"]:
            raise ApiError(45009, "api freq out of limit: at most 3 reminders per 24 hours")
        db.execute("INSERT INTO wc_reminds VALUES (?,?,?)", (msgid, corp.corpid, now))
    return {}


def cancel_groupmsg_send(call: Call, corp: Corp) -> dict[str, Any]:
    msgid = _task(call, corp)
    with call.state.tx() as db:
        db.execute(
            "UPDATE wc_tasks SET cancelled_at = coalesce(cancelled_at, ?) WHERE msgid = ?",
            (call.state.now(), msgid),
        )
    return {}


# -- contacts and tags (§3.4, §3.5) ---------------------------------------------------------------
def get_follow_user_list(call: Call, corp: Corp) -> dict[str, Any]:
    rows = call.state.db.execute(
        "SELECT userid FROM wc_members WHERE corpid = ? ORDER BY idx", (corp.corpid,)
    )
    return {"follow_user": [r[0] for r in rows]}


def contact_list(call: Call, corp: Corp) -> dict[str, Any]:
    userid = call.query.get("userid", "")
    if (
        call.state.one(
            "SELECT 1 FROM wc_members WHERE corpid = ? AND userid = ?", (corp.corpid, userid)
        )
        is None
    ):
        raise ApiError(40003, "invalid userid")
    rows = call.state.db.execute(
        "SELECT external_userid FROM wc_follows WHERE corpid = ? AND userid = ?"
        " AND deleted_at IS NULL ORDER BY external_userid",
        (corp.corpid, userid),
    )
    return {"external_userid": [r[0] for r in rows]}


def batch_get_by_user(call: Call, corp: Corp) -> dict[str, Any]:
    """Customers of ``userid_list`` (≤ 100) in (userid, external_userid) order, cursor-paged:
    one item per follow, so a customer several of the members follow comes once per member,
    each time with the tags that member marked (``follow_info.tag_id``)."""
    users = [str(u) for u in call.body.get("userid_list") or []]
    if not users or len(users) > corp.rules["contacts_page_max"]:
        raise ApiError(40058, "userid_list must hold 1..100 userids")
    limit = _limit(call, corp, "contacts_page_max", 50)
    after_user, _, after_ext = str(call.body.get("cursor") or "").partition("|")
    rows = call.state.db.execute(
        "SELECT c.external_userid, c.name, c.unionid, c.userid, c.remark, c.added_at,"
        " (SELECT json_group_array(tag_id) FROM wc_follow_tags t WHERE t.corpid = c.corpid"
        "  AND t.external_userid = c.external_userid AND t.userid = c.userid)"
        " FROM wc_follows c WHERE c.corpid = ? AND c.deleted_at IS NULL"
        " AND c.userid IN (SELECT value FROM json_each(?))"
        " AND (c.userid, c.external_userid) > (?, ?)"
        " ORDER BY c.userid, c.external_userid LIMIT ?",
        (corp.corpid, json.dumps(users), after_user, after_ext, limit + 1),
    ).fetchall()
    out = [
        {"external_contact": {"external_userid": e, "name": n, "type": 1, "gender": 0,
                              "unionid": u},
         "follow_info": {"userid": uid, "remark": r, "description": "", "createtime": int(t),
                         "tag_id": json.loads(tags), "add_way": 1, "oper_userid": uid}}
        for e, n, u, uid, r, t, tags in rows[:limit]
    ]  # fmt: skip
    last = rows[limit - 1] if len(rows) > limit else None
    return {"external_contact_list": out, "next_cursor": f"{last[3]}|{last[0]}" if last else ""}


def get_corp_tag_list(call: Call, corp: Corp) -> dict[str, Any]:
    tag_ids = [str(t) for t in call.body.get("tag_id") or []]
    group_ids = [str(g) for g in call.body.get("group_id") or []]
    rows = call.state.db.execute(
        "SELECT group_id, group_name, tag_id, name, ord, created_at FROM wc_tags"
        " WHERE corpid = ? ORDER BY ord",
        (corp.corpid,),
    ).fetchall()
    groups: dict[str, dict[str, Any]] = {}
    for gid, gname, tid, name, order, created in rows:
        if (tag_ids and tid not in tag_ids) or (group_ids and gid not in group_ids):
            continue
        group = groups.setdefault(gid, {"group_id": gid, "group_name": gname,
                                        "create_time": int(created), "order": order // 100,
                                        "deleted": False, "tag": []})  # fmt: skip
        group["tag"].append({"id": tid, "name": name, "create_time": int(created),
                             "order": order % 100, "deleted": False})  # fmt: skip
    return {"tag_group": list(groups.values())}


def mark_tag(call: Call, corp: Corp) -> dict[str, Any]:
    b = call.body
    add, remove = (
        [str(t) for t in b.get("add_tag") or []],
        [str(t) for t in b.get("remove_tag") or []],
    )
    if not add and not remove:
        raise ApiError(40058, "add_tag and remove_tag are both empty")
    db = call.state.db
    if (
        call.state.one(
            "SELECT 1 FROM wc_follows WHERE corpid = ? AND external_userid = ? AND userid = ?"
            " AND deleted_at IS NULL",
            (corp.corpid, str(b.get("external_userid")), str(b.get("userid"))),
        )
        is None
    ):
        raise ApiError(84061, "not external contact")
    known = {
        r[0] for r in db.execute("SELECT tag_id FROM wc_tags WHERE corpid = ?", (corp.corpid,))
    }
    if not set(add + remove) <= known:
        raise ApiError(40068, "invalid tagid")
    with call.state.tx():  # the marks of this member only: a co-follower's stay
        ext, uid = str(b["external_userid"]), str(b["userid"])
        db.executemany("INSERT OR IGNORE INTO wc_follow_tags VALUES (?,?,?,?)",
                       [(corp.corpid, ext, uid, t) for t in add])  # fmt: skip
        db.executemany("DELETE FROM wc_follow_tags WHERE corpid = ? AND external_userid = ?"
                       " AND userid = ? AND tag_id = ?",
                       [(corp.corpid, ext, uid, t) for t in remove])  # fmt: skip
    return {}


def add_routes(app: web.Application) -> None:
    routes = [
        ("POST", "add_msg_template", add_msg_template),
        ("POST", "get_groupmsg_list_v2", get_groupmsg_list_v2),
        ("POST", "get_groupmsg_task", get_groupmsg_task),
        ("POST", "get_groupmsg_send_result", get_groupmsg_send_result),
        ("POST", "remind_groupmsg_send", remind_groupmsg_send),
        ("POST", "cancel_groupmsg_send", cancel_groupmsg_send),
        ("GET", "get_follow_user_list", get_follow_user_list),
        ("GET", "list", contact_list),
        ("POST", "batch/get_by_user", batch_get_by_user),
        ("POST", "get_corp_tag_list", get_corp_tag_list),
        ("POST", "mark_tag", mark_tag),
    ]
    for method, path, fn in routes:
        app.router.add_route(method, f"{PREFIX}/externalcontact/{path}", endpoint(fn, "contact"))
