"""The pure domain: states, transitions, keys and outcomes. No I/O, no SQLAlchemy, no HTTP."""
