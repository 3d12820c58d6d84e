"""DingTalk twin, channel ``dingtalk``: tokens and work notifications (reference §4.1, §4.2).

Serves ``/dingtalk/...`` (standing for ``https://oapi.dingtalk.com/...``). A corp app has N
employees with deterministic userids (:func:`employee_ids`). ``asyncsend_v2`` decides every
recipient's fate when it accepts the task (one transaction: task, recipient rows, ledger rows)
and reveals it when the task is done, ``job_delay_seconds`` later: userids not in the corp are
*invalid*; a deterministic ``fail_rate`` share of employees (left the company) *failed*; over
``per_employee_per_day`` or the same content twice in a calendar day (Asia/Shanghai) are
*forbidden* — success for the call, silent drop for the person, never in the ledger. Delivered
employees are read with the deterministic ``read_rate`` share. Tokens are kept in the shared
``wx_tokens`` table (``kind = 'dingtalk'``) so ``/_sandbox/faults {"revoke_tokens": true}``
reaches them too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qunfa import rules
from qunfa.sandbox import ledger
from qunfa.sandbox.state import STATE, State

CHANNEL = "dingtalk"
PREFIX = "/dingtalk"
FIRST_TASK_ID = 2782954358783
DUPLICATE, DAILY_CAP = 143106, 143105  # forbidden_list codes (UNCONFIRMED, see docs)
RESULT_LISTS = (
    "invalid_user_id_list", "forbidden_user_id_list", "failed_user_id_list", "read_user_id_list",
    "unread_user_id_list", "invalid_dept_id_list", "forbidden_list",
)  # fmt: skip
MSG_FIELDS = {
    "text": ("content",), "markdown": ("title", "text"),
    "link": ("messageUrl", "picUrl", "title", "text"), "oa": ("message_url", "body"),
    "action_card": ("title", "markdown"), "image": ("media_id",),
    "voice": ("media_id", "duration"), "file": ("media_id",),
}  # fmt: skip

TWIN = "dingtalk"  # url prefix; discovered by qunfa.sandbox.twins
SCHEMA = """
CREATE TABLE IF NOT EXISTS dt_accounts (
    appkey TEXT PRIMARY KEY, appsecret TEXT NOT NULL, agent_id INTEGER NOT NULL,
    seed INTEGER NOT NULL, employees INTEGER NOT NULL, job_delay REAL NOT NULL,
    read_rate REAL NOT NULL, fail_rate REAL NOT NULL, permission INTEGER NOT NULL,
    rules TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dt_employees (
    appkey TEXT NOT NULL, userid TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (appkey, userid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dt_tasks (
    task_id INTEGER PRIMARY KEY, appkey TEXT NOT NULL, status INTEGER NOT NULL,
    created_at REAL NOT NULL, due_at REAL NOT NULL, total INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dt_tasks_app ON dt_tasks(appkey, created_at);
CREATE INDEX IF NOT EXISTS dt_tasks_due ON dt_tasks(status, due_at);
CREATE TABLE IF NOT EXISTS dt_recipients (
    task_id INTEGER NOT NULL, appkey TEXT NOT NULL, userid TEXT NOT NULL, result TEXT NOT NULL,
    code INTEGER, content_hash TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (task_id, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dt_recipients_user ON dt_recipients(appkey, userid, ts);
"""


class ApiError(Exception):
    def __init__(self, code: int, msg: str, sub_code: str | None = None) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.sub_code = code, msg, sub_code

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errcode": self.code, "errmsg": self.msg}
        if self.sub_code is not None:  # errcode 88: the reason is in sub_code / sub_msg
            out["sub_code"], out["sub_msg"] = self.sub_code, self.msg
            out["errmsg"] = f"ding talk error[subcode={self.sub_code},submsg={self.msg}]"
        return out | {"request_id": secrets.token_hex(6)}


def reply(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def share(label: str, rate: float) -> bool:
    """A stable yes for a ``rate`` share of labels (by hash)."""
    h = hashlib.sha256(label.encode()).digest()
    return int.from_bytes(h[:4]) < rate * 2**32


def employee_ids(appkey: str, seed: int, n: int) -> list[str]:
    """The corp's userids, in index order: ``u`` + 12 hex digits of a hash + the index."""
    return [
        "u" + hashlib.blake2b(f"{appkey}:{seed}:{i}".encode(), digest_size=6).hexdigest() + str(i)
        for i in range(n)
    ]


def _account(state: State, appkey: str) -> dict[str, Any] | None:
    cur = state.db.execute("SELECT * FROM dt_accounts WHERE appkey = ?", (appkey,))
    row = cur.fetchone()
    if row is None:
        return None
    acct = dict(zip([d[0] for d in cur.description], row, strict=True))
    acct["rules"] = rules.load("dingtalk").with_overrides(json.loads(acct["rules"]))
    return acct


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    appkey, overrides = str(spec["appkey"]), dict(spec.get("rules") or {})
    rules.load("dingtalk").with_overrides(overrides)  # unknown rule names fail here
    seed, n = int(spec.get("seed", 0)), int(spec.get("employees", 100))
    ids = employee_ids(appkey, seed, n)
    with state.tx() as db:
        for table in ("dt_accounts", "dt_employees", "dt_tasks", "dt_recipients"):
            db.execute(f"DELETE FROM {table} WHERE appkey = ?", (appkey,))
        db.execute("DELETE FROM ledger WHERE channel = ? AND account = ?", (CHANNEL, appkey))
        db.execute(
            "INSERT INTO dt_accounts VALUES (?,?,?,?,?,?,?,?,?,?)",
            (appkey, str(spec["appsecret"]), int(spec.get("agent_id", 1)), seed, n,
             float(spec.get("job_delay_seconds", 1.0)), float(spec.get("read_rate", 0.5)),
             float(spec.get("fail_rate", 0.0)), int(bool(spec.get("send_permission", True))),
             json.dumps(overrides)),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO dt_employees VALUES (?,?,?)", ((appkey, u, i) for i, u in enumerate(ids))
        )
    return {"appkey": appkey, "agent_id": int(spec.get("agent_id", 1)), "employees": n}


# -- tokens (§4.1): the same token while it is valid ----------------------------------------------
async def gettoken(request: web.Request) -> web.Response:
    state, q = request.app[STATE], request.query
    acct = _account(state, q.get("appkey", ""))
    if acct is None or q.get("appsecret") != acct["appsecret"]:
        return reply(ApiError(40089, "不合法的appKey或appSecret").body())
    now, kind, owner = state.now(), "dingtalk", f"dingtalk:{acct['appkey']}"
    with state.tx() as db:
        row = db.execute(
            "SELECT token, expires_at FROM wx_tokens WHERE appid = ? AND kind = ? AND"
            " killed_at IS NULL AND expires_at > ? ORDER BY issued_at DESC LIMIT 1",
            (owner, kind, now),
        ).fetchone()
        if row is None:
            row = (secrets.token_hex(16), now + acct["rules"]["token_expires_seconds"])
            db.execute(
                "INSERT INTO wx_tokens(token, appid, kind, issued_at, expires_at)"
                " VALUES (?,?,?,?,?)",
                (row[0], owner, kind, now, row[1]),
            )
    return reply({"errcode": 0, "errmsg": "ok", "access_token": row[0],
                  "expires_in": round(row[1] - now)})  # fmt: skip


def _check_token(state: State, token: str) -> dict[str, Any]:
    row = state.db.execute(
        "SELECT appid, expires_at, killed_at FROM wx_tokens WHERE token = ? AND kind = 'dingtalk'",
        (token,),
    ).fetchone()
    now = state.now()
    if row is None or (row[2] is not None and now >= row[2]):
        raise ApiError(88, "不合法的access_token", "40014")
    if now >= row[1]:
        raise ApiError(88, "access_token超时", "42001")
    acct = _account(state, row[0].removeprefix("dingtalk:"))
    if acct is None:
        raise ApiError(88, "不合法的access_token", "40014")
    return acct


Api = Callable[[State, dict[str, Any], dict[str, Any]], dict[str, Any]]


def endpoint(fn: Api) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        try:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                raise ApiError(40035, "不合法的参数: body is not JSON") from None
            acct = _check_token(state, request.query.get("access_token", ""))
            if not isinstance(body, dict):
                raise ApiError(40035, "不合法的参数")
            if int(body.get("agent_id") or 0) != acct["agent_id"]:
                raise ApiError(40056, "不合法的agentid")
            return reply({"errcode": 0, "errmsg": "ok"} | fn(state, acct, body)
                         | {"request_id": secrets.token_hex(6)})  # fmt: skip
        except ApiError as exc:
            return reply(exc.body())
        except (ValueError, TypeError):  # agent_id / task_id that are not numbers
            return reply(ApiError(40035, "不合法的参数").body())

    return handler


# -- work notification (§4.2) ---------------------------------------------------------------------
def _msg(body: dict[str, Any], limit: int) -> str:
    """Validate ``msg`` (object or JSON string) and return its content hash."""
    msg = body.get("msg")
    if isinstance(msg, str):
        try:
            msg = json.loads(msg)
        except ValueError:
            raise ApiError(40035, "不合法的参数: msg") from None
    msgtype = msg.get("msgtype") if isinstance(msg, dict) else None
    obj = msg.get(msgtype) if isinstance(msg, dict) and msgtype in MSG_FIELDS else None
    if not isinstance(obj, dict) or any(not obj.get(f) for f in MSG_FIELDS[str(msgtype)]):
        raise ApiError(40035, "不合法的参数: msg")
    raw = json.dumps(msg, ensure_ascii=False, sort_keys=True)
    if len(json.dumps(msg, ensure_ascii=False).encode()) > limit:
        raise ApiError(40035, "不合法的参数: msg 超过长度限制")
    return hashlib.sha256(raw.encode()).hexdigest()


def asyncsend(state: State, acct: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    r, appkey = acct["rules"], acct["appkey"]
    if not acct["permission"]:
        raise ApiError(88, "没有调用该接口的权限", "60011")
    users = list(dict.fromkeys(u.strip() for u in str(body.get("userid_list") or "").split(",")))
    users = [u for u in users if u]
    if not users:
        raise ApiError(40035, "缺少参数 userid_list")
    if len(users) > r["userids_per_call"]:
        raise ApiError(40035, "不合法的参数: userid_list 超过上限")
    content_hash = _msg(body, r["msg_max_bytes"])
    now, day = state.now(), state.day_start()
    recent = state.one(
        "SELECT coalesce(sum(total), 0) FROM dt_tasks WHERE appkey = ? AND created_at > ?",
        (appkey, now - 60),
    )
    if recent + len(users) > r["recipients_per_minute"]:
        raise ApiError(143103, "应用发送消息的人数超过每分钟上限")
    listed = json.dumps(users)
    known = {u for (u,) in state.db.execute(
        "SELECT e.userid FROM json_each(?) j CROSS JOIN dt_employees e"
        " ON e.appkey = ? AND e.userid = j.value", (listed, appkey))}  # fmt: skip
    today = dict(state.db.execute(
        "SELECT userid, count(*) FROM dt_recipients WHERE appkey = ? AND result = 'sent'"
        " AND ts >= ? AND userid IN (SELECT value FROM json_each(?)) GROUP BY userid",
        (appkey, day, listed)).fetchall())  # fmt: skip
    same = dict(state.db.execute(
        "SELECT userid, count(*) FROM dt_recipients WHERE appkey = ? AND result = 'sent'"
        " AND ts >= ? AND content_hash = ? AND userid IN (SELECT value FROM json_each(?))"
        " GROUP BY userid", (appkey, day, content_hash, listed)).fetchall())  # fmt: skip
    with state.tx() as db:
        task_id = int(state.one("SELECT coalesce(max(task_id), ?) + 1 FROM dt_tasks",
                                (FIRST_TASK_ID - 1,)))  # fmt: skip
        rows, sent = [], []
        for u in users:
            code = None
            if u not in known:
                result = "invalid"
            elif share(f"fail:{appkey}:{u}", acct["fail_rate"]):
                result = "failed"
            elif same.get(u, 0) >= r["same_content_per_day"]:
                result, code = "forbidden", DUPLICATE
            elif today.get(u, 0) >= r["per_employee_per_day"]:
                result, code = "forbidden", DAILY_CAP
            else:
                result = "sent"
                sent.append(u)
            rows.append((task_id, appkey, u, result, code, content_hash, now))
        db.execute("INSERT INTO dt_tasks VALUES (?,?,1,?,?,?)",
                   (task_id, appkey, now, now + acct["job_delay"], len(users)))  # fmt: skip
        db.executemany("INSERT INTO dt_recipients VALUES (?,?,?,?,?,?,?)", rows)
        ledger.record(db, CHANNEL, appkey, str(task_id), sent, now)
    return {"task_id": task_id}


def _task(state: State, acct: dict[str, Any], body: dict[str, Any]) -> tuple[int, int, float]:
    complete_due(state)  # a read right after a clock jump sees the settled task
    row = state.db.execute(
        "SELECT task_id, status, created_at FROM dt_tasks WHERE task_id = ? AND appkey = ?",
        (int(body.get("task_id") or 0), acct["appkey"]),
    ).fetchone()
    if row is None:
        raise ApiError(40035, "不合法的参数: task_id")
    return int(row[0]), int(row[1]), float(row[2])


def progress(state: State, acct: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    _, status, created = _task(state, acct, body)
    elapsed = (state.now() - created) / max(acct["job_delay"], 1e-6)
    pct = 100 if status == 2 else min(99, int(elapsed * 100))
    return {"progress": {"progress_in_percent": pct, "status": status}}


def result(state: State, acct: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    task_id, status, _ = _task(state, acct, body)
    lists: dict[str, list[Any]] = {k: [] for k in RESULT_LISTS}
    if status == 2:  # results appear when the task is done
        for userid, res, code in state.db.execute(
            "SELECT userid, result, code FROM dt_recipients WHERE task_id = ?", (task_id,)
        ):
            if res == "sent":
                read = share(f"read:{task_id}:{userid}", acct["read_rate"])
                lists["read_user_id_list" if read else "unread_user_id_list"].append(userid)
            else:
                lists[f"{res}_user_id_list"].append(userid)
            if res == "forbidden":
                lists["forbidden_list"].append({"code": code, "count": 1, "userid": userid})
    return {"send_result": lists}


def complete_due(state: State) -> int:
    """Tasks whose delay has passed are done (status 2)."""
    now = state.now()
    if state.one("SELECT 1 FROM dt_tasks WHERE status < 2 AND due_at <= ? LIMIT 1", (now,)) is None:
        return 0  # the job loop calls this every tick: don't take the write lock for nothing
    with state.tx() as db:
        return db.execute(
            "UPDATE dt_tasks SET status = 2 WHERE status < 2 AND due_at <= ?", (now,)
        ).rowcount


# -- admin ----------------------------------------------------------------------------------------
async def admin_create(request: web.Request) -> web.Response:
    spec = json.loads(await request.read() or b"{}")
    return web.json_response(create_account(request.app[STATE], spec))


async def admin_employees(request: web.Request) -> web.Response:
    state, appkey = request.app[STATE], request.match_info["appkey"]
    limit = int(request.query.get("limit", "1000"))
    rows = state.db.execute(
        "SELECT userid FROM dt_employees WHERE appkey = ? ORDER BY idx LIMIT ?", (appkey, limit)
    )
    ids = [u for (u,) in rows]
    return web.json_response({"appkey": appkey, "userids": ids})


def add_routes(app: web.Application) -> None:
    base = f"{PREFIX}/topapi/message/corpconversation"
    app.router.add_get(f"{PREFIX}/gettoken", gettoken)
    app.router.add_post(f"{base}/asyncsend_v2", endpoint(asyncsend))
    app.router.add_post(f"{base}/getsendprogress", endpoint(progress))
    app.router.add_post(f"{base}/getsendresult", endpoint(result))
    app.router.add_post("/_sandbox/dingtalk/accounts", admin_create)
    app.router.add_get("/_sandbox/dingtalk/accounts/{appkey}/employees", admin_employees)
