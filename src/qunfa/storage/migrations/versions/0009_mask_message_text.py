"""person_events.text: numbers and e-mail addresses people wrote into messages masked

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 09:30:00

From this version on, message text is stored masked (``domain/redact.py``): e-mail addresses
become ``[e-mail]``, runs of 7 or more digits ``[number]``. This masks what earlier versions
stored, with a frozen copy of those rules (a migration never imports the application, whose
rules may change later). Rows are read 5,000 at a time by id; only those whose text changes
are written. Data only: the schema is unchanged, and a downgrade restores nothing (the numbers
are gone, which is the point).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 5_000
_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_NUMBER = re.compile(r"(?<!\d)\+?\d(?:[ \u3000\-.]?\d){6,}(?:[Xx](?!\w))?(?!\d)")


def mask(text: str) -> str:
    """domain/redact.py's ``redact`` as of this revision."""
    if "@" in text:
        text = _EMAIL.sub("[e-mail]", text)
    return _NUMBER.sub("[number]", text)


def upgrade() -> None:
    conn = op.get_bind()
    read = sa.text(
        "SELECT id, text FROM person_events WHERE id > :after AND text IS NOT NULL "
        "ORDER BY id LIMIT :n"
    )
    write = sa.text("UPDATE person_events SET text = :text WHERE id = :id")
    after = 0
    while True:
        rows = conn.execute(read, {"after": after, "n": BATCH}).all()
        if not rows:
            return
        after = rows[-1][0]
        changed = [{"id": i, "text": m} for i, t in rows if (m := mask(t)) != t]
        if changed:
            conn.execute(write, changed)


def downgrade() -> None:
    pass  # the masked numbers are not kept anywhere: nothing to restore
