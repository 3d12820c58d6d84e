"""Official Account twin: user tags (标签), reference §1.7.

``tags/create|get|update|delete``, ``tags/members/batchtagging|batchuntagging``, ``user/tag/get``
and ``tags/getidlist``, with the limits of ``rules/wechat_oa.toml`` (tags per account, tags per
user, openids per call, name length, fans above which a tag cannot be deleted, reserved ids).
"""

from __future__ import annotations

from typing import Any

from qunfa.sandbox.wechat_accounts import (
    FIRST_TAG_ID,
    Account,
    ApiError,
    Call,
    endpoint,
    tag_counts,
)


def _tag(call: Call) -> dict[str, Any]:
    tag = call.body.get("tag")
    if not isinstance(tag, dict):
        raise ApiError(47001, "data format error")
    return tag


def _check_name(call: Call, acct: Account, name: Any, tag_id: int | None = None) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(45157, "invalid tag name")
    if len(name) > acct.rules["tag_name_max_chars"]:
        raise ApiError(45158, "tag name too long")
    dup = call.state.one(
        "SELECT id FROM wx_tags WHERE appid = ? AND name = ? AND id IS NOT ?",
        (acct.appid, name, tag_id),
    )
    if dup is not None:
        raise ApiError(45157, "invalid tag name")
    return name


def _existing_id(call: Call, acct: Account, raw: Any) -> int:
    try:
        tag_id = int(raw)
    except (TypeError, ValueError):
        raise ApiError(45159, "invalid tag id") from None
    if 0 <= tag_id <= acct.rules["tag_reserved_max_id"]:
        raise ApiError(45058, "can't modify sys tag")
    found = call.state.one("SELECT 1 FROM wx_tags WHERE appid = ? AND id = ?", (acct.appid, tag_id))
    if found is None:
        raise ApiError(45159, "invalid tag id")
    return tag_id


def create(call: Call, acct: Account) -> dict[str, Any]:
    name = _check_name(call, acct, _tag(call).get("name"))
    count = call.state.one("SELECT count(*) FROM wx_tags WHERE appid = ?", (acct.appid,))
    if count >= acct.rules["tags_per_account"]:
        raise ApiError(45056, "too many tags now, no need to add new")
    with call.state.tx() as db:
        new_id = call.state.one(
            "SELECT max(coalesce(max(id) + 1, 0), ?) FROM wx_tags WHERE appid = ?",
            (FIRST_TAG_ID, acct.appid),
        )
        db.execute(
            "INSERT INTO wx_tags(appid, id, name) VALUES (?,?,?)", (acct.appid, new_id, name)
        )
    return {"tag": {"id": new_id, "name": name}}


def get(call: Call, acct: Account) -> dict[str, Any]:
    return {"tags": tag_counts(call.state.db, acct.appid)}


def update(call: Call, acct: Account) -> dict[str, Any]:
    tag = _tag(call)
    tag_id = _existing_id(call, acct, tag.get("id"))
    name = _check_name(call, acct, tag.get("name"), tag_id)
    with call.state.tx() as db:
        db.execute(
            "UPDATE wx_tags SET name = ? WHERE appid = ? AND id = ?", (name, acct.appid, tag_id)
        )
    return {}


def delete(call: Call, acct: Account) -> dict[str, Any]:
    tag_id = _existing_id(call, acct, _tag(call).get("id"))
    fans = call.state.one(
        "SELECT count(*) FROM wx_follower_tags WHERE appid = ? AND tag_id = ?", (acct.appid, tag_id)
    )
    if fans > acct.rules["tag_delete_max_fans"]:
        raise ApiError(45057, "can't delete the tag that has too many fans")
    with call.state.tx() as db:
        db.execute("DELETE FROM wx_tags WHERE appid = ? AND id = ?", (acct.appid, tag_id))
        db.execute(
            "DELETE FROM wx_follower_tags WHERE appid = ? AND tag_id = ?", (acct.appid, tag_id)
        )
    return {}


def _members(call: Call, acct: Account) -> tuple[int, list[str]]:
    openids = call.body.get("openid_list")
    if (
        not isinstance(openids, list)
        or not 0 < len(openids) <= acct.rules["batchtagging_max_per_call"]
    ):
        raise ApiError(40032, "invalid openid list size")
    tag_id = _existing_id(call, acct, call.body.get("tagid"))
    openids = [str(o) for o in dict.fromkeys(openids)]
    for openid in openids:
        if (
            call.state.one(
                "SELECT 1 FROM wx_followers WHERE openid = ? AND appid = ?", (openid, acct.appid)
            )
            is None
        ):
            raise ApiError(40003, "invalid openid")
    return tag_id, openids


def batchtagging(call: Call, acct: Account) -> dict[str, Any]:
    tag_id, openids = _members(call, acct)
    limit = acct.rules["tags_per_user"]
    for openid in openids:
        has = call.state.db.execute(
            "SELECT count(*), coalesce(sum(tag_id = ?), 0) FROM wx_follower_tags"
            " WHERE appid = ? AND openid = ?"
            " AND tag_id IN (SELECT id FROM wx_tags WHERE appid = ?)",
            (tag_id, acct.appid, openid, acct.appid),
        ).fetchone()
        if not has[1] and has[0] >= limit:
            raise ApiError(45059, "has too many tags")
    with call.state.tx() as db:
        db.executemany(
            "INSERT OR IGNORE INTO wx_follower_tags(appid, tag_id, openid) VALUES (?,?,?)",
            [(acct.appid, tag_id, o) for o in openids],
        )
    return {}


def batchuntagging(call: Call, acct: Account) -> dict[str, Any]:
    tag_id, openids = _members(call, acct)
    with call.state.tx() as db:
        db.executemany(
            "DELETE FROM wx_follower_tags WHERE appid = ? AND tag_id = ? AND openid = ?",
            [(acct.appid, tag_id, o) for o in openids],
        )
    return {}


def user_tag_get(call: Call, acct: Account) -> dict[str, Any]:
    """Members of a tag in openid order; the last call answers count 0 without data."""
    tag_id = _existing_id(call, acct, call.body.get("tagid"))
    rows = call.state.db.execute(
        "SELECT openid FROM wx_follower_tags WHERE appid = ? AND tag_id = ? AND openid > ?"
        " ORDER BY openid LIMIT ?",
        (acct.appid, tag_id, str(call.body.get("next_openid") or ""),
         acct.rules["user_tag_get_page_size"]),
    ).fetchall()  # fmt: skip
    if not rows:
        return {"count": 0, "next_openid": ""}
    openids = [r[0] for r in rows]
    return {"count": len(openids), "data": {"openid": openids}, "next_openid": openids[-1]}


def getidlist(call: Call, acct: Account) -> dict[str, Any]:
    openid = str(call.body.get("openid", ""))
    if (
        call.state.one(
            "SELECT 1 FROM wx_followers WHERE openid = ? AND appid = ?", (openid, acct.appid)
        )
        is None
    ):
        raise ApiError(40003, "invalid openid")
    rows = call.state.db.execute(
        "SELECT tag_id FROM wx_follower_tags WHERE appid = ? AND openid = ?"
        " AND tag_id IN (SELECT id FROM wx_tags WHERE appid = ?) ORDER BY tag_id",
        (acct.appid, openid, acct.appid),
    ).fetchall()
    return {"tagid_list": [r[0] for r in rows]}


TAG_ROUTES = [
    ("POST", "tags/create", endpoint(create)),
    ("GET", "tags/get", endpoint(get)),
    ("POST", "tags/update", endpoint(update)),
    ("POST", "tags/delete", endpoint(delete)),
    ("POST", "tags/members/batchtagging", endpoint(batchtagging)),
    ("POST", "tags/members/batchuntagging", endpoint(batchuntagging)),
    ("POST", "user/tag/get", endpoint(user_tag_get)),
    ("POST", "tags/getidlist", endpoint(getidlist)),
]
