"""Migration 0009 masks the numbers and e-mail addresses earlier versions stored in message
text, on SQLite and PostgreSQL, across its batches, and leaves everything else as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from qunfa.domain.redact import redact
from qunfa.storage.db import make_engine
from qunfa.storage.migrate import current_revision, upgrade

TEXTS = [
    "我的手机是13800138000，请回电",
    "退款进度？+86 139 0013 9000",
    "mail zhang.san@example.com 或 010-8888-6666",
    "身份证 11010519491231002X",
    "订单 3 件，共 299.00 元",  # nothing to mask
    None,
]
MASKED = [
    "我的手机是[number]，请回电",
    "退款进度？[number]",
    "mail [e-mail] 或 [number]",
    "身份证 [number]",
    "订单 3 件，共 299.00 元",
    None,
]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'm.db'}"
    )
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_0009_masks_stored_message_text(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    migration = importlib.import_module("qunfa.storage.migrations.versions.0009_mask_message_text")
    monkeypatch.setattr(migration, "BATCH", 4)  # several batches, one cut inside the texts
    upgrade(engine, "0008")
    rows = [(i + 1, t) for i, t in enumerate(TEXTS * 3)]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO contacts (id, created_at, updated_at) VALUES (1, 1, 1)"))
        conn.execute(
            text(
                "INSERT INTO person_events (id, contact_id, kind, at, text, received_at) "
                "VALUES (:id, 1, 'message', 1.0, :t, 1.0)"
            ),
            [{"id": i, "t": t} for i, t in rows],
        )

    upgrade(engine)

    assert current_revision(engine) == "0009"
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT text FROM person_events ORDER BY id")).scalars().all()
    assert stored == MASKED * 3
    # The frozen rules mask these as the application's do today.
    assert [redact(t) if t else t for t in TEXTS] == MASKED
