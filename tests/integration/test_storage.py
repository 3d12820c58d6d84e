"""Storage on SQLite and PostgreSQL: the same migrations, the same set-based SQL, a campaign."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, inspect, select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Base, Delivery
from tests.approval import approve
from tests.conftest import drain, make_oa

TEXT = {"msgtype": "text", "text": {"content": "存储测试"}}


@pytest.fixture
def any_db(container_on_both: Container) -> Container:
    return container_on_both


def test_migrations_create_every_model_table(any_db: Container) -> None:
    tables = set(inspect(any_db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    any_db.migrate()  # idempotent: a second upgrade is a no-op


def test_campaign_end_to_end(
    any_db: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = any_db
    oa = make_oa(admin, c, sandbox.url, followers=12_000)
    camp = c.campaigns.create(
        name="db", channel="wechat_oa", account=oa.appid, audience="all", content=TEXT,
        as_list=True,
    )  # fmt: skip
    approve(c, camp.id)  # 12,000 followers: above the review threshold
    report = c.campaigns.start(camp.id)
    assert report is not None and (report.recipients, report.batches) == (12_000, 2)
    deadline = time.monotonic() + 30
    while c.campaigns.status(camp.id)["state"] != "done":
        assert time.monotonic() < deadline
        drain(c, rounds=1)
        c.reconciler.settle_accepted(0)  # no callback server here: poll mass/get
        time.sleep(0.05)
    assert c.campaigns.status(camp.id)["deliveries"] == {"sent": 12_000}
    assert admin.ledger("wechat_oa", oa.appid)["max_per_recipient"] == 1


def test_tag_plan_and_resync(
    any_db: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    import asyncio

    c = any_db
    oa = make_oa(admin, c, sandbox.url, followers=3_000)
    camp = c.campaigns.create(
        name="tag", channel="wechat_oa", account=oa.appid, audience="tag:上海", content=TEXT
    )
    approve(c, camp.id)
    report = c.campaigns.plan(camp.id)
    assert 600 < report.recipients < 1200 and report.batches == 1  # ~30%, one sendall
    again = asyncio.run(c.accounts.sync(oa.appid))  # a second sync inserts nobody new
    assert again.new == 0 and again.followers == 3_000 and again.unsubscribed == 0
    with c.sessions() as s:
        n = s.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.campaign_id == camp.id)
        )
    assert n == report.recipients


def test_unfollowers_are_marked_on_resync(
    any_db: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    import asyncio

    c = any_db
    oa = make_oa(admin, c, sandbox.url, followers=500)
    openids = []

    async def some() -> None:
        from qunfa.channels.http import HttpClient

        async with HttpClient() as http:
            a = c.accounts.adapter(c.accounts.get(oa.appid), http)
            async for page in a.followers():  # type: ignore[attr-defined]
                openids.extend(page[:7])
                return

    asyncio.run(some())
    admin.post(f"/_sandbox/wechat/accounts/{oa.appid}/unfollow", {"openids": openids})
    report = asyncio.run(c.accounts.sync(oa.appid))
    assert report.unsubscribed == 7 and report.followers == 493


def test_pii_and_secrets_are_not_in_the_sqlite_file(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=200)
    container.close()
    raw = (container.settings.data_dir / "qunfa.db").read_bytes()
    wal = container.settings.data_dir / "qunfa.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert oa.secret.encode() not in raw and oa.aes_key.encode() not in raw
    import sqlite3

    db = sqlite3.connect(container.settings.data_dir / "qunfa.db")
    blobs = [row[0] for row in db.execute("SELECT value_enc FROM identities LIMIT 50")]
    db.close()
    openids = [container.keyring.decrypt(b) for b in blobs]
    assert all(o.startswith("o") for o in openids)
    assert not any(o.encode() in raw for o in openids)
