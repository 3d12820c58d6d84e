"""identities: the (account_id, kind, value_bi) UNIQUE constraint becomes a unique index

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 06:00:00

The contact import's bulk-load mode on SQLite drops the identity indexes inside its write
transaction, bulk-inserts, and rebuilds them: ``CREATE INDEX`` sorts once, where each random
insert into a 2M-entry unique B-tree costs ~4 µs. SQLite cannot drop the index behind a UNIQUE
constraint (``sqlite_autoindex_identities_1``), so the constraint ``uq_identities_account_id``
becomes the plain unique index ``uq_identities_account_kind_bi`` on the same columns — same
rule (NULL account ids stay distinct), same lookups, but droppable.

PostgreSQL: create the index, drop the constraint (one transaction).

SQLite cannot drop a constraint, so the table is rebuilt (batch mode, ``recreate="always"``:
create the new table, copy every row with its id, drop the old one, rename, re-create the
indexes). Two hazards, both handled:

* ``DROP TABLE identities`` with foreign keys ON is an implicit ``DELETE`` that cascades to
  ``identity_tags``, ``tag_ops`` … — ``migrations/env.py`` turns foreign keys OFF on SQLite
  for the whole run, checks them with ``PRAGMA foreign_key_check`` before committing, and
  turns them back ON.
* 0006's triggers on ``identities`` go with the dropped table, and those on ``identity_tags``
  read ``identities``: the rename re-parses the schema and fails with "error in trigger …: no
  such table". They are dropped first and re-created afterwards from a frozen copy of 0006's
  SQLite SQL below (their PostgreSQL twins are untouched: no rebuild there).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ["account_id", "kind", "value_bi"]
CONSTRAINT = "uq_identities_account_id"
INDEX = "uq_identities_account_kind_bi"

# Copied from 0006 (SQLITE_TRIGGERS, the five that are on or read ``identities``), frozen here:
# migrations never import each other.
_STILL_HELD = """NOT EXISTS (
    SELECT 1 FROM identity_tags it JOIN identities i ON i.id = it.identity_id
    WHERE it.tag_id = contact_account_tags.tag_id
      AND i.contact_id = contact_account_tags.contact_id)"""

SQLITE_TRIGGERS = {
    "tr_identity_tags_ins": """
CREATE TRIGGER tr_identity_tags_ins AFTER INSERT ON identity_tags BEGIN
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT NEW.tag_id, contact_id FROM identities WHERE id = NEW.identity_id;
END""",
    "tr_identity_tags_del": f"""
CREATE TRIGGER tr_identity_tags_del AFTER DELETE ON identity_tags BEGIN
    DELETE FROM contact_account_tags
    WHERE tag_id = OLD.tag_id
      AND contact_id = (SELECT contact_id FROM identities WHERE id = OLD.identity_id)
      AND {_STILL_HELD};
END""",
    "tr_identity_tags_upd": f"""
CREATE TRIGGER tr_identity_tags_upd AFTER UPDATE ON identity_tags BEGIN
    DELETE FROM contact_account_tags
    WHERE tag_id = OLD.tag_id
      AND contact_id = (SELECT contact_id FROM identities WHERE id = OLD.identity_id)
      AND {_STILL_HELD};
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT NEW.tag_id, contact_id FROM identities WHERE id = NEW.identity_id;
END""",
    "tr_identities_move": f"""
CREATE TRIGGER tr_identities_move AFTER UPDATE OF contact_id ON identities
WHEN OLD.contact_id IS NOT NEW.contact_id BEGIN
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT tag_id, NEW.contact_id FROM identity_tags WHERE identity_id = NEW.id;
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = NEW.id)
      AND {_STILL_HELD};
END""",
    "tr_identities_del": """
CREATE TRIGGER tr_identities_del BEFORE DELETE ON identities BEGIN
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = OLD.id)
      AND NOT EXISTS (
          SELECT 1 FROM identity_tags it JOIN identities i ON i.id = it.identity_id
          WHERE it.tag_id = contact_account_tags.tag_id
            AND i.contact_id = OLD.contact_id AND i.id <> OLD.id);
END""",
}


def _sqlite_guard() -> None:
    """Refuse to rebuild ``identities`` if anything besides the triggers above reads it (a
    later trigger or view would break the rename, or silently vanish with the old table)."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') "
        "AND (tbl_name = 'identities' OR sql LIKE '%identities%')"
    )
    unknown = sorted(f"{kind} {name}" for kind, name in rows if name not in SQLITE_TRIGGERS)
    if unknown:
        raise RuntimeError(
            "migration 0008 rebuilds the identities table and does not know how to keep "
            f"{', '.join(unknown)}: teach it to drop and re-create them"
        )


def _rebuild_sqlite(*, unique_index: bool) -> None:
    _sqlite_guard()
    for trigger in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    with op.batch_alter_table("identities", recreate="always") as batch_op:
        if unique_index:
            batch_op.drop_constraint(CONSTRAINT, type_="unique")
            batch_op.create_index(INDEX, COLUMNS, unique=True)
        else:
            batch_op.drop_index(INDEX)
            batch_op.create_unique_constraint(CONSTRAINT, COLUMNS)
    for ddl in SQLITE_TRIGGERS.values():
        op.execute(ddl)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique_index=True)
        return
    op.create_index(INDEX, "identities", COLUMNS, unique=True)
    op.drop_constraint(CONSTRAINT, "identities", type_="unique")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique_index=False)
        return
    op.create_unique_constraint(CONSTRAINT, "identities", COLUMNS)
    op.drop_index(INDEX, table_name="identities")
