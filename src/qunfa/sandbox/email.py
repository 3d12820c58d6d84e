"""E-mail twin (channel ``email``): a real SMTP server (aiosmtpd) beside the sandbox.

When the sandbox app starts, an aiosmtpd ``Controller`` listens on 127.0.0.1 (the port of the
previous run when it is free, else a free one) — ``GET /_sandbox/email/smtp`` →
``{"host", "port"}``. AUTH PLAIN/LOGIN is required before MAIL (530 otherwise); credentials come
from ``POST /_sandbox/email/accounts {from_address, username, password, bounce_rate,
bounce_domains, reject_domains, defer_domains, callback_url, bounce_delay_seconds}``; bad ones
get ``535 5.7.8``. RCPT: a domain in ``reject_domains`` → ``550 5.1.1`` (user unknown), in
``defer_domains`` → ``451 4.3.0``. DATA stores the raw message per recipient
(``GET /_sandbox/email/messages?to=``). Recipients in ``bounce_domains`` or a deterministic
``bounce_rate`` share (hash of Message-ID + recipient) are accepted but bounce after
``bounce_delay_seconds`` (rule ``bounce_delay_seconds``): the bounce is listed at
``GET /_sandbox/email/bounces?since=`` and pushed as JSON
``{"bounces": [{message_id, recipient, status, diagnostic, bounced_at}]}`` to the account's
``callback_url``. The ledger (channel ``email``, account = from address) holds the messages that
were delivered: bounced ones are never written.

The SMTP server runs on its own thread and loop; every database write is handed to the
sandbox's loop (the State connection is used from that loop only); the authenticator and RCPT
checks read through a separate read-only connection (WAL allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import json
import logging
import random
import socket
import sqlite3
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from qunfa.rules import load as load_rules
from qunfa.sandbox import ledger
from qunfa.sandbox.faults import FaultConfig
from qunfa.sandbox.sms_tencent import enqueue_push
from qunfa.sandbox.state import STATE, State

# Loopback-only sandbox: AUTH without TLS is intended (see _Controller).
logging.getLogger("mail.log").setLevel(logging.ERROR)

TWIN = "email"  # url prefix; discovered by qunfa.sandbox.twins
CHANNEL = "email"
SCHEMA = """
CREATE TABLE IF NOT EXISTS email_accounts (
    from_address TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, password TEXT NOT NULL,
    bounce_rate REAL NOT NULL, bounce_domains TEXT NOT NULL, reject_domains TEXT NOT NULL,
    defer_domains TEXT NOT NULL, callback_url TEXT NOT NULL, bounce_delay REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS email_msgs (
    id INTEGER PRIMARY KEY, account TEXT NOT NULL, message_id TEXT NOT NULL,
    mail_from TEXT NOT NULL, rcpt TEXT NOT NULL, subject TEXT NOT NULL, raw TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, due_at REAL, bounced_at REAL
);
CREATE INDEX IF NOT EXISTS email_msgs_rcpt ON email_msgs(rcpt);
CREATE INDEX IF NOT EXISTS email_msgs_due ON email_msgs(status, due_at);
"""


def _domains(value: Any) -> str:
    return json.dumps(sorted({str(d).lower().lstrip("@") for d in value or []}))


def create_account(state: State, spec: dict[str, Any]) -> dict[str, Any]:
    sender = str(spec["from_address"])
    delay = spec.get("bounce_delay_seconds", load_rules("email")["bounce_delay_seconds"])
    with state.tx() as db:
        db.execute("DELETE FROM email_accounts WHERE username = ?", (str(spec["username"]),))
        db.execute(
            "INSERT OR REPLACE INTO email_accounts VALUES (?,?,?,?,?,?,?,?,?)",
            (sender, str(spec["username"]), str(spec["password"]),
             float(spec.get("bounce_rate", 0.0)), _domains(spec.get("bounce_domains")),
             _domains(spec.get("reject_domains")), _domains(spec.get("defer_domains")),
             str(spec.get("callback_url") or ""), float(delay)),
        )  # fmt: skip
    return {"from_address": sender, "username": spec["username"]}


def bounces_by_rate(message_id: str, rcpt: str, rate: float) -> bool:
    h = hashlib.sha256(f"bounce:{message_id}:{rcpt.lower()}".encode()).digest()
    return int.from_bytes(h[:4]) < rate * 2**32


class Handler:
    """aiosmtpd hooks. Runs on the SMTP thread; writes go to the sandbox loop."""

    def __init__(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.read = sqlite3.connect(str(state.path), check_same_thread=False)

    def close(self) -> None:
        self.read.close()

    def _account(self, sender: str) -> tuple[Any, ...] | None:
        row = self.read.execute(
            "SELECT * FROM email_accounts WHERE from_address = ?", (sender,)
        ).fetchone()
        return None if row is None else tuple(row)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        row = self.read.execute(
            "SELECT from_address, password FROM email_accounts WHERE username = ?",
            (data.login.decode("utf-8", "replace"),),
        ).fetchone()
        if row is None or row[1] != data.password.decode("utf-8", "replace"):
            return AuthResult(success=False, handled=False)  # → 535 5.7.8
        return AuthResult(success=True, auth_data=row[0])

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        acct = self._account(str(session.auth_data))
        domain = address.rsplit("@", 1)[-1].lower()
        if acct is not None and domain in json.loads(acct[5]):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if acct is not None and domain in json.loads(acct[6]):
            return f"451 4.3.0 <{address}>: Temporary lookup failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _fault(self) -> FaultConfig | None:
        """The faults set with ``POST /_sandbox/faults`` apply to SMTP too (platform "email")."""
        row = self.read.execute("SELECT value FROM meta WHERE key = 'faults'").fetchone()
        if row is None:
            return None
        cfg = FaultConfig.from_json(json.loads(row[0]))
        return cfg if cfg.platform in (None, TWIN) else None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._fault()
        if fault is not None:
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.error_rate and random.random() < fault.error_rate:
                return "421 4.3.2 Service not available (injected fault), try again later"
        hang = (
            fault is not None
            and bool(fault.accept_then_timeout_rate)
            and (random.random() < fault.accept_then_timeout_rate)
        )
        reply = await self._accept(session, envelope)
        if hang:  # committed, but the answer never comes in time: the client is in doubt
            await asyncio.sleep(fault.hang_seconds)  # type: ignore[union-attr]
        return reply

    async def _accept(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        raw_bytes = raw if isinstance(raw, bytes) else raw.encode()
        future = asyncio.run_coroutine_threadsafe(
            self._store(str(session.auth_data), str(envelope.mail_from), envelope.rcpt_tos,
                        raw_bytes),
            self.loop,
        )  # fmt: skip
        first = await asyncio.wrap_future(future)
        return f"250 2.0.0 Ok: queued as {first}"

    async def _store(self, account: str, mail_from: str, rcpts: list[str], raw: bytes) -> int:
        """On the sandbox loop: one row per recipient, ledger rows for the delivered ones."""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        mid, subject = str(msg.get("Message-ID", "")), str(msg.get("Subject", ""))
        state, now = self.state, self.state.now()
        acct = state.db.execute(
            "SELECT bounce_rate, bounce_domains, bounce_delay FROM email_accounts"
            " WHERE from_address = ?",
            (account,),
        ).fetchone()
        rate, domains, delay = (acct[0], json.loads(acct[1]), acct[2]) if acct else (0, [], 0)
        first = 0
        with state.tx() as db:
            for rcpt in rcpts:
                bounce = rcpt.rsplit("@", 1)[-1].lower() in domains or bounces_by_rate(
                    mid, rcpt, rate
                )
                cur = db.execute(
                    "INSERT INTO email_msgs(account, message_id, mail_from, rcpt, subject, raw,"
                    " status, created_at, due_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (account, mid, mail_from, rcpt, subject, raw.decode("utf-8", "replace"),
                     "bouncing" if bounce else "delivered", now, now + delay if bounce else None),
                )  # fmt: skip
                first = first or int(cur.lastrowid or 0)
                if not bounce:
                    ledger.record(db, CHANNEL, account, mid, [rcpt], now)
        return first


def complete_due(state: State, limit: int = 500) -> int:
    """Bounce the messages whose delay has passed and queue the bounce reports."""
    now = state.now()
    rows = state.db.execute(
        "SELECT m.id, m.account, m.message_id, m.rcpt, a.callback_url FROM email_msgs m"
        " JOIN email_accounts a ON a.from_address = m.account"
        " WHERE m.status = 'bouncing' AND m.due_at <= ? ORDER BY m.due_at LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return 0
    reports: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with state.tx() as db:
        for row_id, account, mid, rcpt, url in rows:
            db.execute(
                "UPDATE email_msgs SET status = 'bounced', bounced_at = ? WHERE id = ?",
                (now, row_id),
            )
            reports.setdefault((account, url), []).append(_bounce(mid, rcpt, now))
        for (account, url), items in reports.items():
            enqueue_push(db, TWIN, account, url, {"bounces": items}, now)
    return len(rows)


def _bounce(mid: str, rcpt: str, ts: float) -> dict[str, Any]:
    return {
        "message_id": mid,
        "recipient": rcpt,
        "status": "5.1.1",
        "action": "failed",
        "diagnostic": f"smtp; 550 5.1.1 <{rcpt}>: mailbox unavailable",
        "bounced_at": ts,
    }


@dataclass
class SmtpServer:
    """The running SMTP server (filled in on startup)."""

    host: str = "127.0.0.1"
    port: int = 0


SMTP_SERVER: web.AppKey[SmtpServer] = web.AppKey("qunfa_sandbox_smtp", SmtpServer)


class _Controller(Controller):
    """aiosmtpd's Controller without its per-session "AUTH without TLS" warning."""

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
            return smtp


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # asyncio's server sets SO_REUSEADDR too: TIME_WAIT from the last run is no obstacle.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _smtp_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state, server = app[STATE], app[SMTP_SERVER]
    saved = int(state.get_meta("email_smtp_port", 0) or 0)  # same port after a restart
    server.port = saved if saved and _port_free(saved) else _free_port()
    with state.tx():
        state.set_meta("email_smtp_port", server.port)
    handler = Handler(state, asyncio.get_running_loop())
    controller = _Controller(
        handler,
        hostname=server.host,
        port=server.port,
        authenticator=handler.authenticate,
        auth_required=True,
        auth_require_tls=False,  # loopback only; the real relay would use STARTTLS/465
        ready_timeout=10.0,
    )
    await asyncio.to_thread(controller.start)
    yield
    with contextlib.suppress(Exception):
        await asyncio.to_thread(controller.stop)
    handler.close()


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def admin_smtp(request: web.Request) -> web.Response:
    server = request.app[SMTP_SERVER]
    return _json({"host": server.host, "port": server.port})


async def admin_create(request: web.Request) -> web.Response:
    raw = await request.read()
    return _json(create_account(request.app[STATE], json.loads(raw) if raw.strip() else {}))


async def admin_messages(request: web.Request) -> web.Response:
    to = request.query.get("to")
    where, params = ("WHERE rcpt = ?", (to,)) if to else ("", ())
    rows = (
        request.app[STATE]
        .db.execute(
            "SELECT message_id, account, mail_from, rcpt, subject, status, raw, created_at"
            f" FROM email_msgs {where} ORDER BY id",
            params,
        )
        .fetchall()
    )
    keys = ("message_id", "account", "from", "to", "subject", "status", "raw", "created_at")
    return _json({"messages": [dict(zip(keys, r, strict=True)) for r in rows]})


async def admin_bounces(request: web.Request) -> web.Response:
    since = float(request.query.get("since", "0"))
    rows = (
        request.app[STATE]
        .db.execute(
            "SELECT message_id, rcpt, bounced_at FROM email_msgs WHERE status = 'bounced'"
            " AND bounced_at >= ? ORDER BY bounced_at, id",
            (since,),
        )
        .fetchall()
    )
    return _json({"bounces": [_bounce(m, r, ts) for m, r, ts in rows]})


def add_routes(app: web.Application) -> None:
    app[SMTP_SERVER] = SmtpServer()
    app.cleanup_ctx.append(_smtp_lifecycle)
    app.router.add_get(f"/_sandbox/{TWIN}/smtp", admin_smtp)
    app.router.add_post(f"/_sandbox/{TWIN}/accounts", admin_create)
    app.router.add_get(f"/_sandbox/{TWIN}/messages", admin_messages)
    app.router.add_get(f"/_sandbox/{TWIN}/bounces", admin_bounces)
