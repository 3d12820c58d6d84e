"""Alembic environment: the engine comes from the caller (``qunfa.storage.migrate``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from qunfa.storage.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via the alembic CLI
    raise RuntimeError("run migrations through qunfa.storage.migrate.upgrade(engine)")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
