"""The HEAD constant that lets start-up skip Alembic must match the migrations on disk."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from qunfa.storage.db import make_engine
from qunfa.storage.migrate import HEAD, alembic_config, current_revision, upgrade


def test_head_constant_matches_the_scripts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    script = ScriptDirectory.from_config(alembic_config(engine))
    assert script.get_current_head() == HEAD


def test_upgrade_records_head_and_is_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD
    upgrade(engine)  # second call: nothing to do
    assert current_revision(engine) == HEAD
