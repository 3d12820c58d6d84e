"""Bulk writes below SQLAlchemy's per-row parameter handling, for recipient-scale inserts.

SQLAlchemy's executemany processes every parameter of every row in Python (~70 µs a row for a
wide row); the DBAPI does it in C. SQLite gets ``cursor.executemany``; PostgreSQL gets ``COPY``.
Both run on the connection of the caller's transaction, so they commit or roll back with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, text

from qunfa.storage.db import DEFAULT_CACHE


@contextmanager
def bulk_cache(conn: Connection, mib: int = 128) -> Iterator[None]:
    """A large SQLite page cache on this connection for the duration of a bulk write.

    Inserting random 16-byte blind indexes into a unique B-tree of a million entries touches
    pages all over it; with the everyday 4 MiB cache that is disk-bound. Reset afterwards so
    the pooled connection does not keep the memory.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql(f"PRAGMA cache_size=-{mib * 1024}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={DEFAULT_CACHE}")


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order) into ``table`` in one bulk operation."""
    cols = ", ".join(columns)
    dbapi: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        with dbapi.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" * len(columns))
    cur = dbapi.cursor()
    try:
        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
    finally:
        cur.close()


def insert_rows_returning_ids(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[int]:
    """INSERT ``rows`` and return their new ``id`` values, in row order.

    PostgreSQL: ids from the table's sequence (``nextval``), then ``COPY`` with explicit ids.
    SQLite: ``executemany``; the first row takes the database's write lock for the rest of the
    transaction, and an ``INTEGER PRIMARY KEY`` is assigned ``max(id) + 1``, so the rows hold
    the contiguous range ending at the new ``max(id)``.
    """
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        seq = conn.execute(text(f"SELECT pg_get_serial_sequence('{table}', 'id')")).scalar_one()
        ids = [
            int(i)
            for i in conn.execute(
                text("SELECT nextval(:seq) FROM generate_series(1, :n)"),
                {"seq": seq, "n": len(rows)},
            ).scalars()
        ]
        insert_rows(
            conn, table, ["id", *columns], [(i, *r) for i, r in zip(ids, rows, strict=True)]
        )
        return ids
    insert_rows(conn, table, columns, rows)
    last = int(conn.execute(text(f"SELECT MAX(id) FROM {table}")).scalar_one())
    return list(range(last - len(rows) + 1, last + 1))
