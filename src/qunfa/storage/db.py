"""Engine and session set-up for the embedded default (SQLite, WAL) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_CACHE = -4096  # KiB, negative = size: 4 MiB per connection (see below)
# Bytes a page for new databases (SQLite's default is 4,096). Imports write rows and indexes
# by the million; with 16 KiB pages a 1,000,000-row contact import took 17.2 s against
# 18.9 s (docs/performance.md, "Contact import"). An existing database keeps its page size:
# the PRAGMA only counts before the first table is created.
PAGE_SIZE = 16_384


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; NORMAL is durable across process crashes
    # (only an OS crash can lose the last commits); busy_timeout makes writers queue instead
    # of failing with "database is locked" when the worker and the API commit together.
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: a new file takes it then
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    # 4 MiB page cache per connection: the workers, the sweeper and the API's threads each hold
    # a pooled connection, so a large cache multiplies (64 MiB each measured 231 MB peak RSS on
    # the 1M benchmark); the OS page cache serves the rest. The planner's sort of one keyset
    # page (a few MB) stays in memory: on disk it cost a second per million recipients.
    cur.execute(f"PRAGMA cache_size={DEFAULT_CACHE}")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create the engine; creates the SQLite data folder when needed."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def take_write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock now, at the start of a transaction that reads the
    main database before its first write to it (e.g. through a temp table).

    In WAL mode such a transaction reads from a snapshot; if another connection commits before
    its first write, the upgrade fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT)
    and busy_timeout cannot help. A write statement that changes nothing takes the lock first
    (waiting behind other writers as usual). PostgreSQL needs nothing.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(text("UPDATE meta SET key = key WHERE 0"))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
