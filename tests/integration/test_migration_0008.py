"""Migration 0008: identities' UNIQUE constraint becomes the droppable unique index
``uq_identities_account_kind_bi``, on SQLite (a table rebuild) and on PostgreSQL.

The SQLite rebuild is the dangerous one: with foreign keys ON, ``DROP TABLE identities``
cascades into identity_tags / tag_ops, and 0006's triggers must survive. Every row, id,
trigger and index is compared before and after, both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from qunfa.storage.db import make_engine
from qunfa.storage.migrate import HEAD, alembic_config, current_revision, upgrade
from qunfa.storage.models import Base

INDEX = "uq_identities_account_kind_bi"
CONSTRAINT = "uq_identities_account_id"
TABLES = {
    "accounts": "id",
    "contacts": "id",
    "tags": "id",
    "identities": "id",
    "identity_tags": "tag_id, identity_id",
    "tag_ops": "id",
    "campaigns": "id",
    "deliveries": "id",
    "contact_account_tags": "tag_id, contact_id",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'm.db'}"
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _seed(conn: Connection) -> None:
    """Two accounts, four people, identities (two with a NULL account and the same
    (kind, value_bi): allowed, NULLs are distinct), account tags on identities, a pending tag
    operation, a campaign and a delivery."""
    for account in (1, 2):
        conn.execute(
            text(
                "INSERT INTO accounts (id, channel, app_id, name, kind, base_url, "
                "credentials_enc, settings, created_at) VALUES "
                "(:id, 'wechat_oa', :app, 'oa', 'service', 'http://x', :cred, '{}', 1.0)"
            ),
            {"id": account, "app": f"wx{account}", "cred": b"c"},
        )
    for contact_id in (1, 2, 3, 4):
        conn.execute(
            text("INSERT INTO contacts (id, created_at, updated_at) VALUES (:id, 1.0, 1.0)"),
            {"id": contact_id},
        )
    for tag_id in (10, 11):
        conn.execute(
            text(
                "INSERT INTO tags (id, account_id, name, source, member_count) "
                "VALUES (:id, 1, :name, 'synced', 0)"
            ),
            {"id": tag_id, "name": f"t{tag_id}"},
        )
    identities: list[tuple[int, int, int | None, str, bytes]] = [
        (1, 1, 1, "openid", b"a"),
        (2, 2, 1, "openid", b"b"),
        (3, 1, None, "phone", b"p"),
        (4, 3, None, "phone", b"p"),  # same (NULL, kind, value_bi) as 3
        (5, 3, 2, "openid", b"a"),  # same (kind, value_bi) as 1, other account
    ]
    for identity_id, contact_id, account_id, kind, value_bi in identities:
        _insert_identity(conn, identity_id, contact_id, account_id, kind, value_bi)
    for tag_id, identity_id in ((10, 1), (11, 2), (11, 4)):
        conn.execute(
            text("INSERT INTO identity_tags (tag_id, identity_id) VALUES (:t, :i)"),
            {"t": tag_id, "i": identity_id},
        )
    conn.execute(
        text(
            "INSERT INTO tag_ops (id, tag_id, identity_id, op, created_at, attempts) "
            "VALUES (1, 10, 2, 'add', 1.0, 0)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO campaigns (id, uid, name, channel, account_id, audience, mode, "
            "content, options, state, planned_count, batch_count, created_at) VALUES "
            "(1, 'c1', 'c', 'wechat_oa', 1, 'all', 'broadcast', '{}', '{}', 'done', 1, 1, 1.0)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO deliveries (id, campaign_id, batch_no, identity_id, contact_id, "
            "status, updated_at) VALUES (1, 1, 0, 1, 1, 'sent', 1.0)"
        )
    )


def _insert_identity(
    conn: Connection,
    identity_id: int,
    contact_id: int,
    account_id: int | None,
    kind: str,
    value_bi: bytes,
) -> None:
    conn.execute(
        text(
            "INSERT INTO identities (id, contact_id, account_id, kind, value_enc, value_bi, "
            "subscribed, updated_at) VALUES (:id, :c, :a, :k, :enc, :bi, :sub, 1.0)"
        ),
        {
            "id": identity_id,
            "c": contact_id,
            "a": account_id,
            "k": kind,
            "enc": b"enc" + value_bi,
            "bi": value_bi,
            "sub": True,
        },
    )


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
            ]
            for table, order in TABLES.items()
        }


def _account_tags(conn: Connection) -> set[tuple[int, int]]:
    rows = conn.execute(text("SELECT tag_id, contact_id FROM contact_account_tags"))
    return {(r[0], r[1]) for r in rows}


def _sqlite_schema(engine: Engine) -> dict[str, str | None]:
    """Every trigger and index of the database with its SQL (autoindexes have none)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('trigger', 'index')"
        )
        return {r[0]: r[1] for r in rows}


def _identity_keys(engine: Engine) -> tuple[set[str], set[str]]:
    """(unique indexes, unique constraints) on identities, by name."""
    insp = inspect(engine)
    indexes = {str(ix["name"]) for ix in insp.get_indexes("identities") if ix["unique"]}
    constraints = {str(uc["name"]) for uc in insp.get_unique_constraints("identities")}
    return indexes, constraints


def _assert_foreign_keys_on(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:  # the pooled connection the migrations ran on
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    fresh = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with fresh.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        fresh.dispose()


def _assert_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_0008_keeps_every_row_and_trigger_and_makes_the_index(engine: Engine) -> None:
    sqlite = engine.dialect.name == "sqlite"
    upgrade(engine, "0007")
    with engine.begin() as conn:
        _seed(conn)
    before = _rows(engine)
    assert before["contact_account_tags"] == [(10, 1), (11, 2), (11, 3)]
    schema_0007 = _sqlite_schema(engine) if sqlite else {}

    upgrade(engine, "0008")

    assert current_revision(engine) == "0008"
    assert _rows(engine) == before
    assert _identity_keys(engine) == ({INDEX}, set())
    if sqlite:
        schema = _sqlite_schema(engine)
        # The same triggers with the same SQL, the same indexes; the constraint's autoindex
        # gave way to the named index.
        assert schema.pop(INDEX) == (
            f"CREATE UNIQUE INDEX {INDEX} ON identities (account_id, kind, value_bi)"
        )
        assert schema_0007.pop("sqlite_autoindex_identities_1") is None
        assert schema == schema_0007
    _assert_foreign_keys_on(engine)
    _assert_matches_models(engine)

    # The index enforces the rule: a second (account, kind, value_bi) is refused, a NULL
    # account is not a value.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _insert_identity(conn, 6, 4, 1, "openid", b"a")
    with engine.begin() as conn:
        _insert_identity(conn, 6, 4, None, "phone", b"p")

    # contact_account_tags still follows identity_tags and identities (0006's triggers).
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO identity_tags (tag_id, identity_id) VALUES (10, 2)"))
        assert (10, 2) in _account_tags(conn)
        conn.execute(text("UPDATE identities SET contact_id = 4 WHERE id = 2"))
        tags = _account_tags(conn)
        assert {(10, 4), (11, 4)} <= tags
        assert not {(10, 2), (11, 2)} & tags
        conn.execute(text("DELETE FROM identities WHERE id = 2"))
        assert _account_tags(conn) == {(10, 1), (11, 3)}
        # Foreign keys are ON again: the delete cascaded.
        assert conn.execute(text("SELECT count(*) FROM tag_ops")).scalar() == 0
        left = conn.execute(text("SELECT count(*) FROM identity_tags WHERE identity_id = 2"))
        assert left.scalar() == 0

    # Down to 0007 (the constraint again) and back up: nothing lost either way.
    after = _rows(engine)
    command.downgrade(alembic_config(engine), "0007")
    assert current_revision(engine) == "0007"
    assert _rows(engine) == after
    assert _identity_keys(engine)[1] == {CONSTRAINT}
    assert INDEX not in _identity_keys(engine)[0]
    if sqlite:
        assert _sqlite_schema(engine) == schema_0007 | {"sqlite_autoindex_identities_1": None}
    _assert_foreign_keys_on(engine)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _insert_identity(conn, 7, 4, 1, "openid", b"a")

    upgrade(engine)
    assert current_revision(engine) == HEAD
    assert _rows(engine) == after
    assert _identity_keys(engine) == ({INDEX}, set())
    _assert_foreign_keys_on(engine)
    _assert_matches_models(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO identity_tags (tag_id, identity_id) VALUES (11, 1)"))
        assert (11, 1) in _account_tags(conn)


def test_sqlite_migration_refuses_to_commit_a_foreign_key_violation(tmp_path: Path) -> None:
    """env.py's ``PRAGMA foreign_key_check`` runs before the commit: a violation (here an
    orphan left before the upgrade) rolls the whole run back and foreign keys end up ON."""
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine, "0007")
    with engine.begin() as conn:
        _seed(conn)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.execute(text("INSERT INTO identity_tags (tag_id, identity_id) VALUES (10, 999)"))
        conn.commit()
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    schema_0007 = _sqlite_schema(engine)

    with pytest.raises(RuntimeError, match=r"violating a foreign key.*identity_tags"):
        upgrade(engine)

    assert current_revision(engine) == "0007"
    assert _sqlite_schema(engine) == schema_0007  # the rebuild and trigger drops rolled back
    assert _identity_keys(engine)[1] == {CONSTRAINT}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
