"""Personal WeChat twin, channel ``personal_wechat``: it plays the *person*, not a platform.

Personal WeChat has no API and qunfa never drives the client, so there is no platform protocol
to imitate. For rehearsals and tests the twin stands in for the person with the phone:

* ``POST /_sandbox/personal_wechat/accounts {account, friends: N, seed, throttle_after?,
  rules?}`` creates a simulated WeChat account with N friends whose remark names are
  deterministic for (seed, N), e.g. ``"张伟-上海-0007"``, and answers them (``remarks``, and the
  friends-list ``csv`` with a ``remark`` column to import with ``qunfa contacts import``).
* ``POST /_sandbox/personal_wechat/deliver {account, batch_key, remarks}`` is the person
  sending one prepared batch by hand in 群发助手: every remark must be a friend and a batch holds
  at most ``batch_max`` (the same rule file the adapter reads). It is written to the generic
  ledger (channel ``personal_wechat``, message id = the batch key) in the transaction that
  records the send; a batch key delivered again is answered ``duplicate`` and counts nothing
  (the ledger's primary key and ``pw_sends`` both say so).
* ``throttle_after``: after that many person-times in one sandbox day (China time) the simulated
  client "throttles" — a delivery that would exceed it answers ``{"throttled": true}`` and
  records nothing, as when WeChat shows a risk warning and blocks the send.

``GET /_sandbox/personal_wechat/accounts/{account}`` shows the account and today's count.
No platform path exists, so generic faults do not apply (there is nothing to fail but the
person: rehearse that with ``throttle_after``).
"""

from __future__ import annotations

import json
import random
from typing import Any

from aiohttp import web

from qunfa import rules
from qunfa.sandbox import ledger
from qunfa.sandbox.state import STATE, State

CHANNEL = "personal_wechat"
TWIN = "personal_wechat"  # url prefix (admin paths only); discovered by qunfa.sandbox.twins
ADMIN = "/_sandbox/personal_wechat"
SCHEMA = """
CREATE TABLE IF NOT EXISTS pw_accounts (
    account TEXT PRIMARY KEY, friends INTEGER NOT NULL, seed INTEGER NOT NULL,
    throttle_after INTEGER, rules TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pw_friends (
    account TEXT NOT NULL, remark TEXT NOT NULL, PRIMARY KEY (account, remark)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pw_sends (
    account TEXT NOT NULL, batch_key TEXT NOT NULL, ts REAL NOT NULL, recipients INTEGER NOT NULL,
    PRIMARY KEY (account, batch_key)
) WITHOUT ROWID;
"""
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛")
CITIES = ("上海", "北京", "广州", "深圳", "杭州", "成都", "南京", "武汉", "西安", "苏州")


def remark_names(friends: int, seed: int) -> list[str]:
    """N deterministic, unique remark names: ``<name>-<city>-<4-digit number>``."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SURNAMES)}{rng.choice(GIVEN)}-{rng.choice(CITIES)}-{i:04d}"
        for i in range(1, friends + 1)
    ]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def _body(request: web.Request) -> dict[str, Any]:
    data = json.loads(await request.read() or b"{}")
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    account, friends, seed = (
        str(spec["account"]),
        int(spec.get("friends", 100)),
        int(spec.get("seed", 0)),
    )
    if not account or friends < 0:
        raise ValueError("account must be non-empty and friends ≥ 0")
    overrides = dict(spec.get("rules") or {})
    rules.load(CHANNEL).with_overrides(overrides)  # unknown rule names fail here
    throttle = spec.get("throttle_after")
    remarks = remark_names(friends, seed)
    with state.tx() as db:
        db.execute(
            "INSERT INTO pw_accounts VALUES (?,?,?,?,?) ON CONFLICT(account) DO UPDATE SET"
            " friends = excluded.friends, seed = excluded.seed,"
            " throttle_after = excluded.throttle_after, rules = excluded.rules",
            (account, friends, seed, None if throttle is None else int(throttle),
             json.dumps(overrides)),
        )  # fmt: skip
        db.execute("DELETE FROM pw_friends WHERE account = ?", (account,))
        db.executemany("INSERT INTO pw_friends VALUES (?, ?)", ((account, r) for r in remarks))
    csv_text = "remark\n" + "".join(f"{r}\n" for r in remarks)
    return {"account": account, "friends": friends, "remarks": remarks, "csv": csv_text}


def _sent_today(state: State, account: str) -> int:
    return int(
        state.one(
            "SELECT coalesce(sum(recipients), 0) FROM pw_sends WHERE account = ? AND ts >= ?",
            (account, state.day_start()),
        )
    )


def deliver(state: State, spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The person sends one batch by hand; returns (HTTP status, answer)."""
    account, key = str(spec["account"]), str(spec["batch_key"])
    remarks = [str(r) for r in spec["remarks"]]
    row = state.db.execute(
        "SELECT throttle_after, rules FROM pw_accounts WHERE account = ?", (account,)
    ).fetchone()
    if row is None:
        return 404, {"error": f"no personal WeChat account {account!r}"}
    throttle_after, overrides = row
    batch_max = rules.load(CHANNEL).with_overrides(json.loads(overrides))["batch_max"]
    if state.one("SELECT 1 FROM pw_sends WHERE account = ? AND batch_key = ?", (account, key)):
        return 200, {"throttled": False, "duplicate": True, "recorded": 0}
    if len(set(remarks)) != len(remarks) or not remarks or len(remarks) > batch_max:
        return 400, {
            "error": f"群发助手 takes 1..{batch_max} distinct friends per send, got {len(remarks)}"
        }
    known = {
        r
        for (r,) in state.db.execute(
            f"SELECT remark FROM pw_friends WHERE account = ? AND remark IN "
            f"({','.join('?' * len(remarks))})",
            (account, *remarks),
        )
    }
    strangers = [r for r in remarks if r not in known]
    if strangers:
        return 400, {"error": f"not friends of {account}: {', '.join(strangers[:5])}"}
    today = _sent_today(state, account)
    if throttle_after is not None and today + len(remarks) > throttle_after:
        return 200, {"throttled": True, "sent_today": today, "throttle_after": throttle_after}
    now = state.now()
    with state.tx() as db:
        db.execute("INSERT INTO pw_sends VALUES (?,?,?,?)", (account, key, now, len(remarks)))
        recorded = ledger.record(db, CHANNEL, account, key, remarks, now)
    return 200, {"throttled": False, "duplicate": False, "recorded": recorded}


async def admin_create(request: web.Request) -> web.Response:
    return _json(create_account(request.app[STATE], await _body(request)))


async def admin_deliver(request: web.Request) -> web.Response:
    status, answer = deliver(request.app[STATE], await _body(request))
    return _json(answer, status)


async def admin_show(request: web.Request) -> web.Response:
    state, account = request.app[STATE], request.match_info["account"]
    row = state.db.execute(
        "SELECT friends, seed, throttle_after FROM pw_accounts WHERE account = ?", (account,)
    ).fetchone()
    if row is None:
        return _json({"error": f"no personal WeChat account {account!r}"}, 404)
    sends = state.one("SELECT count(*) FROM pw_sends WHERE account = ?", (account,))
    return _json(
        {
            "account": account,
            "friends": row[0],
            "seed": row[1],
            "throttle_after": row[2],
            "sent_today": _sent_today(state, account),
            "batches_sent": sends,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{ADMIN}/accounts", admin_create)
    app.router.add_get(f"{ADMIN}/accounts/{{account}}", admin_show)
    app.router.add_post(f"{ADMIN}/deliver", admin_deliver)
