"""Persistent sandbox state: one SQLite file (stdlib ``sqlite3``), WAL, ``synchronous=NORMAL``.

The sandbox runs on one asyncio event loop and uses one connection from that loop only, so a
transaction opened by :meth:`State.tx` is never interleaved with another handler's work as long as
the handler does not ``await`` inside it. Each module contributes its own ``SCHEMA`` (idempotent
``CREATE ... IF NOT EXISTS``); :meth:`State.reset` empties every table but keeps the schema.

The sandbox clock is ``clock() + offset``; the offset (moved by ``POST /_sandbox/clock``) lives in
the ``meta`` table so a restarted sandbox keeps its simulated date.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# The platforms count days and months in China Standard Time (no DST since 1991).
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")


class State:
    """The sandbox's SQLite database plus its (shiftable) clock."""

    def __init__(
        self,
        path: Path,
        schemas: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.execute("PRAGMA cache_size=-65536")
        with self.tx():
            for script in (META_SCHEMA, *schemas):
                for stmt in script.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
        self._clock = clock
        self._offset = float(self.get_meta("clock_offset", 0.0))

    def close(self) -> None:
        self.db.close()

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception); nests as a no-op."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """First column of the first row, or ``None``."""
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # -- meta (small JSON values) ---------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        raw = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if raw is None else json.loads(raw)

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def del_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # -- clock ----------------------------------------------------------------------------------
    def now(self) -> float:
        """Sandbox time: the injected clock plus the admin-set offset."""
        return self._clock() + self._offset

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> float:
        with self.tx():
            self._offset += seconds
            self.set_meta("clock_offset", self._offset)
        return self._offset

    def day_start(self, ts: float | None = None) -> float:
        """Start of the calendar day (Asia/Shanghai) containing ``ts`` (default: now)."""
        d = datetime.fromtimestamp(self.now() if ts is None else ts, SHANGHAI)
        return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def month_start(self, ts: float | None = None) -> float:
        """Start of the calendar month (Asia/Shanghai) containing ``ts`` (default: now)."""
        d = datetime.fromtimestamp(self.now() if ts is None else ts, SHANGHAI)
        return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()

    @staticmethod
    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat()

    # -- reset ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty every table (schema kept) and zero the clock offset."""
        names = [
            r[0]
            for r in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        with self.tx():
            for name in names:
                self.db.execute(f'DELETE FROM "{name}"')
        self._offset = 0.0


# Typed application key under which the app keeps its State (set by ``server.create_app``).
STATE: web.AppKey[State] = web.AppKey("qunfa_sandbox_state", State)
