"""events by campaign

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 03:55:00

A campaign's status reads its tracked-link clicks (``events`` rows of kind ``click.link``):
without this index every status call scanned the whole table.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_campaign_kind", "events", ["campaign_id", "kind"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_campaign_kind", table_name="events")
