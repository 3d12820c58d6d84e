"""Alembic environment: the engine comes from the caller (``qunfa.storage.migrate``).

SQLite: foreign keys are OFF while migrations run (``db.py`` turns them on for every
connection). A migration that rebuilds a table (batch mode, e.g. 0008) drops the old one, and
with foreign keys ON that ``DROP TABLE`` is an implicit ``DELETE`` whose ``ON DELETE CASCADE``
empties the child tables. ``PRAGMA foreign_keys`` is a no-op inside a transaction, so it is
switched off first, on the fresh connection, and committed; the migrations then run in one
explicit transaction (``BEGIN IMMEDIATE``: the write lock up front, and DDL that pysqlite would
otherwise autocommit statement by statement rolls back with the rest), ``PRAGMA
foreign_key_check`` must come back empty before it commits, and foreign keys go back ON before
the connection returns to the pool. This is what Alembic's batch-mode docs recommend.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine

from qunfa.storage.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via the alembic CLI
    raise RuntimeError("run migrations through qunfa.storage.migrate.upgrade(engine)")


def _check_foreign_keys(connection: Connection) -> None:
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if rows:
        shown = "; ".join(
            f"{table} rowid {rowid} -> {parent} (foreign key #{fk})"
            for table, rowid, parent, fk in rows[:10]
        )
        raise RuntimeError(
            f"migrations left {len(rows)} row(s) violating a foreign key, rolled back: {shown}"
        )


def run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
    )
    with context.begin_transaction():
        context.run_migrations()
    if sqlite:
        _check_foreign_keys(connection)
    connection.commit()


with engine.connect() as connection:
    if connection.dialect.name != "sqlite":
        run_migrations(connection)
    else:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
        try:
            run_migrations(connection)
        finally:
            connection.rollback()  # nothing after a commit; a failed run's changes otherwise
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
