"""contact-level segment data: contact_account_tags and contacts.active_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 03:15:00

Two denormalisations that let a segment count on 10M contacts stay one index range per
clause (``docs/performance.md`` "Segment count", ``docs/segments.md``):

* ``contact_account_tags (tag_id, contact_id)``: an account tag at person level — a person has
  it iff one of their identities has it in ``identity_tags``. ``tag()`` reads it instead of
  walking ``identity_tags ⋈ identities`` (10M identities on the big bench).
* ``contacts.last_interaction_at`` (a copy of ``contact_facts.last_interaction_at``, NULL
  without a facts row) and ``contacts.active_at``, a generated column
  ``max(last_interaction_at, coalesce(registered_at, created_at))`` with an index:
  ``last_active_within(d)`` is ``active_at >= now - d``, one range on ``contacts``.

Both are kept by **triggers** (created here, per dialect), not by the writers: every writer of
``identity_tags``, ``identities.contact_id`` and ``contact_facts`` — platform sync, tag
operations, merges and unmerges, the facts refresh, and plain SQL in tests and benches —
stays exact without knowing the copies exist, in the same statement and transaction.
PostgreSQL uses statement-level triggers with transition tables for the bulk paths (sync
inserts ``identity_tags`` by the 10,000; the facts refresh upserts by the million), and
row-level ones where a transition table cannot see what is needed (an identity's tags just
before the identity is deleted; only moves of ``identities.contact_id``).

The backfill is set-based (one ``INSERT … SELECT DISTINCT``, one ``UPDATE … FROM``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# max(last_interaction_at, coalesce(registered_at, created_at)) spelt portably (SQLite's max()
# and PostgreSQL's greatest() differ); a NULL last_interaction_at takes the ELSE branch.
ACTIVE_AT_SQL = (
    "CASE WHEN last_interaction_at > coalesce(registered_at, created_at) "
    "THEN last_interaction_at ELSE coalesce(registered_at, created_at) END"
)

# "(tag, contact) still holds through some identity": used by every delete below.
_STILL_HELD = """NOT EXISTS (
    SELECT 1 FROM identity_tags it JOIN identities i ON i.id = it.identity_id
    WHERE it.tag_id = contact_account_tags.tag_id
      AND i.contact_id = contact_account_tags.contact_id)"""

SQLITE_TRIGGERS = [
    # identity_tags gains a row: the identity's person gains the tag.
    """
CREATE TRIGGER tr_identity_tags_ins AFTER INSERT ON identity_tags BEGIN
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT NEW.tag_id, contact_id FROM identities WHERE id = NEW.identity_id;
END""",
    # identity_tags loses a row: the person loses the tag unless another identity holds it.
    # (When the identity itself is being deleted, tr_identities_del has done this already.)
    f"""
CREATE TRIGGER tr_identity_tags_del AFTER DELETE ON identity_tags BEGIN
    DELETE FROM contact_account_tags
    WHERE tag_id = OLD.tag_id
      AND contact_id = (SELECT contact_id FROM identities WHERE id = OLD.identity_id)
      AND {_STILL_HELD};
END""",
    f"""
CREATE TRIGGER tr_identity_tags_upd AFTER UPDATE ON identity_tags BEGIN
    DELETE FROM contact_account_tags
    WHERE tag_id = OLD.tag_id
      AND contact_id = (SELECT contact_id FROM identities WHERE id = OLD.identity_id)
      AND {_STILL_HELD};
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT NEW.tag_id, contact_id FROM identities WHERE id = NEW.identity_id;
END""",
    # An identity moves to another person (merge, unmerge): its tags move with it.
    f"""
CREATE TRIGGER tr_identities_move AFTER UPDATE OF contact_id ON identities
WHEN OLD.contact_id IS NOT NEW.contact_id BEGIN
    INSERT OR IGNORE INTO contact_account_tags (tag_id, contact_id)
    SELECT tag_id, NEW.contact_id FROM identity_tags WHERE identity_id = NEW.id;
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = NEW.id)
      AND {_STILL_HELD};
END""",
    # An identity is deleted: before its identity_tags rows cascade away, drop the tags only it
    # gave its person.
    """
CREATE TRIGGER tr_identities_del BEFORE DELETE ON identities BEGIN
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = OLD.id)
      AND NOT EXISTS (
          SELECT 1 FROM identity_tags it JOIN identities i ON i.id = it.identity_id
          WHERE it.tag_id = contact_account_tags.tag_id
            AND i.contact_id = OLD.contact_id AND i.id <> OLD.id);
END""",
    # contacts.last_interaction_at follows contact_facts.last_interaction_at.
    """
CREATE TRIGGER tr_contact_facts_ins AFTER INSERT ON contact_facts BEGIN
    UPDATE contacts SET last_interaction_at = NEW.last_interaction_at
    WHERE id = NEW.contact_id AND last_interaction_at IS NOT NEW.last_interaction_at;
END""",
    """
CREATE TRIGGER tr_contact_facts_upd AFTER UPDATE OF last_interaction_at ON contact_facts BEGIN
    UPDATE contacts SET last_interaction_at = NEW.last_interaction_at
    WHERE id = NEW.contact_id AND last_interaction_at IS NOT NEW.last_interaction_at;
END""",
    """
CREATE TRIGGER tr_contact_facts_del AFTER DELETE ON contact_facts BEGIN
    UPDATE contacts SET last_interaction_at = NULL
    WHERE id = OLD.contact_id AND last_interaction_at IS NOT NULL;
END""",
]

PG_TRIGGERS = [
    # identity_tags: statement level, the whole inserted / deleted set at once.
    """
CREATE FUNCTION qf_identity_tags_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_account_tags (tag_id, contact_id)
    SELECT DISTINCT n.tag_id, i.contact_id FROM qf_new n JOIN identities i ON i.id = n.identity_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_identity_tags_ins AFTER INSERT ON identity_tags "
    "REFERENCING NEW TABLE AS qf_new FOR EACH STATEMENT EXECUTE FUNCTION qf_identity_tags_ins()",
    f"""
CREATE FUNCTION qf_identity_tags_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contact_account_tags
    USING (SELECT DISTINCT o.tag_id, i.contact_id
           FROM qf_old o JOIN identities i ON i.id = o.identity_id) gone
    WHERE contact_account_tags.tag_id = gone.tag_id
      AND contact_account_tags.contact_id = gone.contact_id
      AND {_STILL_HELD};
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_identity_tags_del AFTER DELETE ON identity_tags "
    "REFERENCING OLD TABLE AS qf_old FOR EACH STATEMENT EXECUTE FUNCTION qf_identity_tags_del()",
    f"""
CREATE FUNCTION qf_identity_tags_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contact_account_tags
    USING (SELECT DISTINCT o.tag_id, i.contact_id
           FROM qf_old o JOIN identities i ON i.id = o.identity_id) gone
    WHERE contact_account_tags.tag_id = gone.tag_id
      AND contact_account_tags.contact_id = gone.contact_id
      AND {_STILL_HELD};
    INSERT INTO contact_account_tags (tag_id, contact_id)
    SELECT DISTINCT n.tag_id, i.contact_id FROM qf_new n JOIN identities i ON i.id = n.identity_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_identity_tags_upd AFTER UPDATE ON identity_tags "
    "REFERENCING OLD TABLE AS qf_old NEW TABLE AS qf_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION qf_identity_tags_upd()",
    # identities: row level (moves are rare; transition tables cannot take a column list, and
    # an update of every identity — key rotation — must not pay for a join).
    f"""
CREATE FUNCTION qf_identities_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact_account_tags (tag_id, contact_id)
    SELECT tag_id, NEW.contact_id FROM identity_tags WHERE identity_id = NEW.id
    ON CONFLICT DO NOTHING;
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = NEW.id)
      AND {_STILL_HELD};
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_identities_move AFTER UPDATE OF contact_id ON identities FOR EACH ROW "
    "WHEN (OLD.contact_id IS DISTINCT FROM NEW.contact_id) EXECUTE FUNCTION qf_identities_move()",
    """
CREATE FUNCTION qf_identities_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contact_account_tags
    WHERE contact_id = OLD.contact_id
      AND tag_id IN (SELECT tag_id FROM identity_tags WHERE identity_id = OLD.id)
      AND NOT EXISTS (
          SELECT 1 FROM identity_tags it JOIN identities i ON i.id = it.identity_id
          WHERE it.tag_id = contact_account_tags.tag_id
            AND i.contact_id = OLD.contact_id AND i.id <> OLD.id);
    RETURN OLD;
END $$""",
    "CREATE TRIGGER tr_identities_del BEFORE DELETE ON identities FOR EACH ROW "
    "EXECUTE FUNCTION qf_identities_del()",
    # contact_facts → contacts.last_interaction_at, statement level.
    """
CREATE FUNCTION qf_contact_facts_set() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts c SET last_interaction_at = n.last_interaction_at
    FROM qf_new n
    WHERE c.id = n.contact_id AND c.last_interaction_at IS DISTINCT FROM n.last_interaction_at;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_contact_facts_ins AFTER INSERT ON contact_facts "
    "REFERENCING NEW TABLE AS qf_new FOR EACH STATEMENT EXECUTE FUNCTION qf_contact_facts_set()",
    # Updates: only the rows whose last interaction changed reach contacts — the RFM
    # statements rewrite hundreds of thousands of facts rows without touching it.
    """
CREATE FUNCTION qf_contact_facts_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts c SET last_interaction_at = n.last_interaction_at
    FROM qf_new n JOIN qf_old o ON o.contact_id = n.contact_id
    WHERE o.last_interaction_at IS DISTINCT FROM n.last_interaction_at
      AND c.id = n.contact_id AND c.last_interaction_at IS DISTINCT FROM n.last_interaction_at;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_contact_facts_upd AFTER UPDATE ON contact_facts "
    "REFERENCING OLD TABLE AS qf_old NEW TABLE AS qf_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION qf_contact_facts_upd()",
    """
CREATE FUNCTION qf_contact_facts_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE contacts c SET last_interaction_at = NULL
    FROM qf_old o
    WHERE c.id = o.contact_id AND c.last_interaction_at IS NOT NULL;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER tr_contact_facts_del AFTER DELETE ON contact_facts "
    "REFERENCING OLD TABLE AS qf_old FOR EACH STATEMENT EXECUTE FUNCTION qf_contact_facts_del()",
]

TRIGGERS = [
    ("identity_tags", "tr_identity_tags_ins", "qf_identity_tags_ins"),
    ("identity_tags", "tr_identity_tags_del", "qf_identity_tags_del"),
    ("identity_tags", "tr_identity_tags_upd", "qf_identity_tags_upd"),
    ("identities", "tr_identities_move", "qf_identities_move"),
    ("identities", "tr_identities_del", "qf_identities_del"),
    ("contact_facts", "tr_contact_facts_ins", "qf_contact_facts_set"),
    ("contact_facts", "tr_contact_facts_upd", "qf_contact_facts_upd"),
    ("contact_facts", "tr_contact_facts_del", "qf_contact_facts_del"),
]

BACKFILL_TAGS = """
INSERT INTO contact_account_tags (tag_id, contact_id)
SELECT DISTINCT it.tag_id, i.contact_id
FROM identity_tags it JOIN identities i ON i.id = it.identity_id
"""
BACKFILL_LAST = {
    "postgresql": """
UPDATE contacts c SET last_interaction_at = f.last_interaction_at
FROM contact_facts f WHERE f.contact_id = c.id AND f.last_interaction_at IS NOT NULL
""",
    "sqlite": """
UPDATE contacts SET last_interaction_at = f.last_interaction_at
FROM contact_facts f WHERE f.contact_id = contacts.id AND f.last_interaction_at IS NOT NULL
""",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "contact_account_tags",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_contact_account_tags_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"],
            ["tags.id"],
            name=op.f("fk_contact_account_tags_tag_id_tags"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tag_id", "contact_id", name=op.f("pk_contact_account_tags")),
    )
    op.execute(BACKFILL_TAGS)
    op.create_index("ix_contact_account_tags_contact", "contact_account_tags", ["contact_id"])

    # The copy first, then the generated column: on PostgreSQL adding a STORED column rewrites
    # the table once, which also drops the dead rows the backfill UPDATE left.
    op.add_column("contacts", sa.Column("last_interaction_at", sa.Float(), nullable=True))
    op.execute(BACKFILL_LAST[dialect if dialect == "postgresql" else "sqlite"])
    # SQLite can add only a VIRTUAL generated column (computed on read; the index stores it);
    # PostgreSQL (≤ 16) has only STORED ones.
    op.add_column(
        "contacts",
        sa.Column(
            "active_at",
            sa.Float(),
            sa.Computed(ACTIVE_AT_SQL, persisted=dialect == "postgresql"),
            nullable=True,
        ),
    )
    op.create_index("ix_contacts_active", "contacts", ["active_at"])

    for ddl in PG_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS:
        op.execute(ddl)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, trigger, _function in TRIGGERS:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    if dialect == "postgresql":
        for function in dict.fromkeys(f for _, _, f in TRIGGERS):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_index("ix_contacts_active", table_name="contacts")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("active_at")
        batch_op.drop_column("last_interaction_at")
    op.drop_index("ix_contact_account_tags_contact", table_name="contact_account_tags")
    op.drop_table("contact_account_tags")
