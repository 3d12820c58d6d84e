"""WeCom customer-contact twin: corp tag management and one customer's detail (§3.4, §3.5).

``externalcontact/add_corp_tag``, ``edit_corp_tag``, ``del_corp_tag`` with the limits of
``rules/wecom.toml`` (``corp_tags_max`` tags per corp, ``corp_tag_name_max_chars``), and
``externalcontact/get`` (a customer with every member who still follows them, each with the tags
*that* member put on them). Listing and marking tags (``get_corp_tag_list``, ``mark_tag``) live
in :mod:`.wecom_customer`. Errcodes: 40068 unknown tag or group id, 40071 a name already used in
the group, 40072 a name too long or empty, 45024 over the corp tag limit (the platform's code
for that is not documented: a sandbox choice), 84061 unknown customer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from qunfa.sandbox.wechat_accounts import ApiError
from qunfa.sandbox.wecom_common import PREFIX, Call, Corp, endpoint

TWIN = "wecom"
TOO_MANY_TAGS = 45024  # sandbox choice, see the module docstring


def _name(corp: Corp, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(40072, "invalid tag name length")
    if len(raw) > corp.rules["corp_tag_name_max_chars"]:
        raise ApiError(40072, "invalid tag name length")
    return raw


def _new_id(corp: Corp, *parts: object) -> str:
    digest = hashlib.blake2b(":".join(map(str, (corp.corpid, *parts))).encode(), digest_size=15)
    return "et" + digest.hexdigest()[:30]


def add_corp_tag(call: Call, corp: Corp) -> dict[str, Any]:
    """Add tags to a group (``group_id``, or the group named ``group_name``, created if new)."""
    db, b, now = call.state.db, call.body, call.state.now()
    tags = b.get("tag")
    if not isinstance(tags, list) or not tags:
        raise ApiError(40058, "tag list is empty")  # empty groups are not allowed
    names = [_name(corp, t.get("name") if isinstance(t, dict) else None) for t in tags]
    if len(set(names)) != len(names):
        raise ApiError(40071, "tag name already exists")
    if b.get("group_id"):
        row = db.execute(
            "SELECT group_id, group_name, min(ord) / 100 FROM wc_tags WHERE corpid = ?"
            " AND group_id = ? GROUP BY group_id",
            (corp.corpid, str(b["group_id"])),
        ).fetchone()
        if row is None:
            raise ApiError(40068, "invalid tagid")
    else:
        group_name = _name(corp, b.get("group_name"))
        row = db.execute(
            "SELECT group_id, group_name, min(ord) / 100 FROM wc_tags WHERE corpid = ?"
            " AND group_name = ? GROUP BY group_id",
            (corp.corpid, group_name),
        ).fetchone()
        if row is None:
            groups = call.state.one(
                "SELECT count(DISTINCT group_id) FROM wc_tags WHERE corpid = ?", (corp.corpid,)
            )
            row = (_new_id(corp, "group", group_name, now), group_name, groups)
    group_id, group_name, group_order = row
    taken = {
        r[0]
        for r in db.execute(
            "SELECT name FROM wc_tags WHERE corpid = ? AND group_id = ?", (corp.corpid, group_id)
        )
    }
    if taken & set(names):
        raise ApiError(40071, "tag name already exists")
    count = call.state.one("SELECT count(*) FROM wc_tags WHERE corpid = ?", (corp.corpid,))
    if count + len(names) > corp.rules["corp_tags_max"]:
        raise ApiError(TOO_MANY_TAGS, "too many corp tags")
    out = []
    with call.state.tx():
        for i, name in enumerate(names):
            tag_id = _new_id(corp, group_id, name, now)
            order = 100 * int(group_order) + (len(taken) + i) % 100
            db.execute(
                "INSERT INTO wc_tags VALUES (?,?,?,?,?,?,?)",
                (corp.corpid, tag_id, group_id, group_name, name, order, now),
            )
            out.append({"id": tag_id, "name": name, "create_time": int(now), "order": i})
    group = {"group_id": group_id, "group_name": group_name, "create_time": int(now),
             "order": int(group_order), "tag": out}  # fmt: skip
    return {"tag_group": group}


def edit_corp_tag(call: Call, corp: Corp) -> dict[str, Any]:
    """Rename a tag (or a group, when ``id`` is a group id)."""
    db, ident = call.state.db, str(call.body.get("id", ""))
    name = call.body.get("name")
    row = db.execute(
        "SELECT group_id FROM wc_tags WHERE corpid = ? AND tag_id = ?", (corp.corpid, ident)
    ).fetchone()
    is_group = row is None
    if (
        is_group
        and call.state.one(
            "SELECT count(*) FROM wc_tags WHERE corpid = ? AND group_id = ?", (corp.corpid, ident)
        )
        == 0
    ):
        raise ApiError(40068, "invalid tagid")
    if name is None:
        return {}
    name = _name(corp, name)
    with call.state.tx():
        if is_group:
            db.execute(
                "UPDATE wc_tags SET group_name = ? WHERE corpid = ? AND group_id = ?",
                (name, corp.corpid, ident),
            )
        else:
            dup = call.state.one(
                "SELECT count(*) FROM wc_tags WHERE corpid = ? AND group_id = ? AND name = ?"
                " AND tag_id <> ?",
                (corp.corpid, row[0], name, ident),
            )
            if dup:
                raise ApiError(40071, "tag name already exists")
            db.execute(
                "UPDATE wc_tags SET name = ? WHERE corpid = ? AND tag_id = ?",
                (name, corp.corpid, ident),
            )
    return {}


def del_corp_tag(call: Call, corp: Corp) -> dict[str, Any]:
    """Delete tags and whole groups; their marks on customers go with them."""
    tag_ids = [str(t) for t in call.body.get("tag_id") or []]
    group_ids = [str(g) for g in call.body.get("group_id") or []]
    if not tag_ids and not group_ids:
        raise ApiError(40058, "tag_id and group_id are both empty")
    db = call.state.db
    doomed = [
        r[0]
        for r in db.execute(
            "SELECT tag_id FROM wc_tags WHERE corpid = ?1 AND (tag_id IN (SELECT value FROM"
            " json_each(?2)) OR group_id IN (SELECT value FROM json_each(?3)))",
            (corp.corpid, json.dumps(tag_ids), json.dumps(group_ids)),
        )
    ]
    if not doomed or not set(tag_ids) <= set(doomed):
        raise ApiError(40068, "invalid tagid")
    with call.state.tx():
        db.execute(
            "DELETE FROM wc_follow_tags WHERE corpid = ? AND tag_id IN"
            " (SELECT value FROM json_each(?))",
            (corp.corpid, json.dumps(doomed)),
        )
        db.execute(
            "DELETE FROM wc_tags WHERE corpid = ? AND tag_id IN (SELECT value FROM json_each(?))",
            (corp.corpid, json.dumps(doomed)),
        )
    return {}


def get_contact(call: Call, corp: Corp) -> dict[str, Any]:
    """``GET externalcontact/get?external_userid=``: the customer and its follow users (every
    member still their friend, in userid order, each with the tags that member marked)."""
    ext = call.query.get("external_userid", "")
    rows = call.state.db.execute(
        "SELECT c.name, c.unionid, c.userid, c.remark, c.added_at, t.tag_id, t.name,"
        " t.group_name FROM wc_follows c LEFT JOIN wc_follow_tags ct ON ct.corpid ="
        " c.corpid AND ct.external_userid = c.external_userid AND ct.userid = c.userid"
        " LEFT JOIN wc_tags t ON t.corpid = c.corpid AND t.tag_id = ct.tag_id"
        " WHERE c.corpid = ? AND c.external_userid = ? AND c.deleted_at IS NULL"
        " ORDER BY c.userid, t.ord",
        (corp.corpid, ext),
    ).fetchall()
    if not rows:
        raise ApiError(84061, "not external contact")
    follows: dict[str, dict[str, Any]] = {}
    for _, _, userid, remark, added, tag_id, tag_name, group in rows:
        follow = follows.setdefault(userid, {
            "userid": userid, "remark": remark, "description": "", "createtime": int(added),
            "tags": [], "add_way": 1, "oper_userid": userid})  # fmt: skip
        if tag_id is not None:
            follow["tags"].append(
                {"group_name": group, "tag_name": tag_name, "tag_id": tag_id, "type": 1}
            )
    name, unionid = rows[0][:2]
    return {
        "external_contact": {"external_userid": ext, "name": name, "type": 1, "gender": 0,
                             "unionid": unionid},
        "follow_user": list(follows.values()),
        "next_cursor": "",
    }  # fmt: skip


def add_routes(app: web.Application) -> None:
    routes = [
        ("POST", "add_corp_tag", add_corp_tag),
        ("POST", "edit_corp_tag", edit_corp_tag),
        ("POST", "del_corp_tag", del_corp_tag),
        ("GET", "get", get_contact),
    ]
    for method, path, fn in routes:
        app.router.add_route(method, f"{PREFIX}/externalcontact/{path}", endpoint(fn, "contact"))
