"""Storage adapter: SQLAlchemy models, engine set-up, migrations and the named hot-path SQL."""
