"""Callback outbox: events the sandbox posts to an account's callback URL, with retries.

A twin enqueues an event (plaintext XML) in the same transaction that changes the job it reports
on; :class:`CallbackPoster` delivers pending rows in the background, encrypting each attempt
afresh (new timestamp and nonce) with :class:`~qunfa.crypto.wxbizmsgcrypt.WXBizMsgCrypt`, safe
mode: ``POST url?signature&timestamp&nonce&openid&encrypt_type=aes&msg_signature`` with body
``<xml><ToUserName>gh_..</ToUserName><Encrypt>..</Encrypt></xml>``. A row is retried on
connection errors and non-200 answers with a short backoff, up to ``max_attempts`` (1 + the
platform's retry count from its rule file); every attempt and its outcome is recorded for
``GET /_sandbox/callbacks``. Rows still pending when the sandbox stops are posted after restart
(delivery is at-least-once, like the platforms': receivers dedupe by MsgID).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from qunfa.crypto.wxbizmsgcrypt import WXBizMsgCrypt, signature
from qunfa.sandbox.state import State

SCHEMA = """
CREATE TABLE IF NOT EXISTS callbacks (
    id            INTEGER PRIMARY KEY,
    channel       TEXT NOT NULL,
    account       TEXT NOT NULL,
    event         TEXT NOT NULL,
    msg_id        TEXT NOT NULL,
    url           TEXT NOT NULL,
    token         TEXT NOT NULL,
    aes_key       TEXT NOT NULL,
    receive_id    TEXT NOT NULL,
    to_user       TEXT NOT NULL,
    from_user     TEXT NOT NULL,
    plaintext     TEXT NOT NULL,
    max_attempts  INTEGER NOT NULL,
    timeout       REAL NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_pending ON callbacks(status, id);
CREATE TABLE IF NOT EXISTS callback_attempts (
    id           INTEGER PRIMARY KEY,
    callback_id  INTEGER NOT NULL,
    account      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    ts           REAL NOT NULL,
    http_status  INTEGER,
    error        TEXT,
    ok           INTEGER NOT NULL
);
"""

BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0)
MAX_IN_FLIGHT = 32


def enqueue(
    db: sqlite3.Connection,
    *,
    channel: str,
    account: str,
    event: str,
    msg_id: str,
    url: str,
    token: str,
    aes_key: str,
    receive_id: str,
    to_user: str,
    from_user: str,
    plaintext: str,
    max_attempts: int,
    timeout: float,
    now: float,
) -> None:
    """Queue one event (inside the caller's transaction); no URL means nothing to post."""
    db.execute(
        "INSERT INTO callbacks(channel, account, event, msg_id, url, token, aes_key, receive_id,"
        " to_user, from_user, plaintext, max_attempts, timeout, status, created_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            channel, account, event, msg_id, url, token, aes_key, receive_id, to_user,
            from_user, plaintext, max_attempts, timeout, "pending" if url else "no_url", now,
        ),
    )  # fmt: skip


def envelope(row: sqlite3.Row | dict[str, Any], now: float) -> tuple[str, str]:
    """The full URL (with signature query) and XML body for one attempt."""
    crypt = WXBizMsgCrypt(row["token"], row["aes_key"], row["receive_id"])
    ts, nonce = str(int(now)), str(secrets.randbelow(10**9))
    enc = crypt.encrypt(row["plaintext"])
    query = {
        "signature": signature(row["token"], ts, nonce),
        "timestamp": ts,
        "nonce": nonce,
        "openid": row["from_user"],
        "encrypt_type": "aes",
        "msg_signature": crypt.sign(ts, nonce, enc),
    }
    sep = "&" if "?" in row["url"] else "?"
    body = (
        f"<xml><ToUserName><![CDATA[{row['to_user']}]]></ToUserName>"
        f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    )
    return row["url"] + sep + urlencode(query), body


class CallbackPoster:
    """Posts pending callbacks; :meth:`pump` is called by the job loop on every tick."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.session: aiohttp.ClientSession | None = None
        self.in_flight: dict[int, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        tasks = list(self.in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def pump(self) -> None:
        room = MAX_IN_FLIGHT - len(self.in_flight)
        if room <= 0:
            return
        self.state.db.row_factory = sqlite3.Row
        try:
            rows = self.state.db.execute(
                "SELECT * FROM callbacks WHERE status = 'pending' ORDER BY id LIMIT ?",
                (room + len(self.in_flight),),
            ).fetchall()
        finally:
            self.state.db.row_factory = None
        for row in rows:
            if row["id"] not in self.in_flight:
                task = asyncio.create_task(self._deliver(dict(row)))
                self.in_flight[row["id"]] = task
                task.add_done_callback(self._forget(int(row["id"])))

    def _forget(self, cb_id: int) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self.in_flight.pop(cb_id, None)

        return done

    async def _deliver(self, row: dict[str, Any]) -> None:
        assert self.session is not None
        attempt = int(row["attempts"])
        while attempt < int(row["max_attempts"]):
            attempt += 1
            url, body = envelope(row, self.state.now())
            status: int | None = None
            error: str | None = None
            try:
                timeout = aiohttp.ClientTimeout(total=float(row["timeout"]))
                async with self.session.post(
                    url, data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=timeout
                ) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            ok = status == 200
            final = ok or attempt >= int(row["max_attempts"])
            with self.state.tx() as db:
                db.execute(
                    "INSERT INTO callback_attempts(callback_id, account, attempt, ts, http_status,"
                    " error, ok) VALUES (?,?,?,?,?,?,?)",
                    (row["id"], row["account"], attempt, self.state.now(), status, error, int(ok)),
                )
                new_status = "delivered" if ok else ("failed" if final else "pending")
                db.execute(
                    "UPDATE callbacks SET attempts = ?, status = ? WHERE id = ?",
                    (attempt, new_status, row["id"]),
                )
            if final:
                return
            await asyncio.sleep(BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)])


def listing(state: State, account: str | None, limit: int = 1000) -> list[dict[str, Any]]:
    """Callbacks (newest first) with their attempts, for ``GET /_sandbox/callbacks``."""
    where, params = ("WHERE account = ?", [account]) if account else ("", [])
    rows = state.db.execute(
        "SELECT id, channel, account, event, msg_id, url, status, attempts, created_at"
        f" FROM callbacks {where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    out: list[dict[str, Any]] = []
    for r in rows:
        tries = state.db.execute(
            "SELECT attempt, ts, http_status, error, ok FROM callback_attempts"
            " WHERE callback_id = ? ORDER BY attempt",
            (r[0],),
        ).fetchall()
        out.append(
            {
                "id": r[0], "channel": r[1], "account": r[2], "event": r[3], "msg_id": r[4],
                "url": r[5], "status": r[6], "attempts": r[7], "created_at": r[8],
                "deliveries": [
                    {"attempt": t[0], "ts": t[1], "http_status": t[2], "error": t[3],
                     "ok": bool(t[4])}
                    for t in tries
                ],
            }
        )  # fmt: skip
    return out


POSTER: web.AppKey[CallbackPoster] = web.AppKey("qunfa_sandbox_callbacks", CallbackPoster)
