"""The SQLite connection settings (storage/db.py): WAL, 16 KiB pages for a new database, and
an existing database left with the page size it was created with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from qunfa.storage.db import PAGE_SIZE, make_engine


def _settings(path: Path) -> tuple[int, str, int]:
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (a)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            conn.commit()
            return (
                int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0),
                str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()),
                int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar() or 0),
            )
    finally:
        engine.dispose()


def test_a_new_database_gets_large_pages_and_wal(tmp_path: Path) -> None:
    assert PAGE_SIZE == 16_384
    assert _settings(tmp_path / "new.db") == (PAGE_SIZE, "wal", 1)
    assert _settings(tmp_path / "new.db") == (PAGE_SIZE, "wal", 2)  # reopened: the same


def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (a)")
    old.execute("INSERT INTO t VALUES (0)")
    old.commit()
    old.close()
    assert _settings(path) == (4096, "wal", 2)
