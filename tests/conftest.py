"""Shared fixtures: a real sandbox over HTTP, a container on a fresh database, accounts."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.settings import Settings

PG_ADMIN_URL = os.environ.get("QUNFA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[EmbeddedSandbox]:
    with EmbeddedSandbox(tmp_path / "sandbox.db", port=0) as sb:
        yield sb


@pytest.fixture
def admin(sandbox: EmbeddedSandbox) -> SandboxAdmin:
    return SandboxAdmin(sandbox.url)


def fast_settings(data_dir: Path, **overrides: object) -> Settings:
    """Fast, test-friendly timings: short leases and backoff, no real waits."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "lease_seconds": 5.0,
        "http_timeout": 5.0,
        "retry_base": 0.01,
        "retry_max": 0.05,
        "max_attempts": 6,
        "sweep_interval": 0.2,
        "plan_page_size": 20_000,
        # No default frequency caps: most tests send to the same people again and again;
        # tests/integration/test_quota.py turns them on (docs/quotas.md).
        "caps": {},
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_container(data_dir: Path, database_url: str | None = None) -> Container:
    """A migrated container whose batches wait in ``c.queued`` for the test to drive them."""
    c = Container(fast_settings(data_dir, database_url=database_url))
    c.migrate()
    queued: list[int] = []
    c.set_enqueue(queued.extend)  # tests drive batches themselves; see drain()
    c.queued = queued  # type: ignore[attr-defined]
    return c


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    c = make_container(tmp_path / "data")
    yield c
    c.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def container_on_both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    """The container on SQLite, then on a fresh PostgreSQL database: for modules whose
    set-based SQL must work on both (they alias it as their ``container``)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = make_container(tmp_path / "data", url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:  # pragma: no cover - CI starts PostgreSQL
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"qunfa_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class OA:
    appid: str
    secret: str
    token: str
    aes_key: str


def aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


def make_oa(
    admin: SandboxAdmin,
    c: Container,
    sandbox_url: str,
    *,
    followers: int = 1000,
    kind: str = "service",
    tags: dict[str, float] | None = None,
    callback_url: str | None = None,
    sync: bool = True,
    sandbox_rules: dict[str, int] | None = None,
    qunfa_rules: dict[str, int] | None = None,
    **extra: object,
) -> OA:
    """An Official Account on the sandbox, registered (and synced) in qunfa."""
    oa = OA(f"wx{secrets.token_hex(8)}", secrets.token_hex(16), secrets.token_hex(6), aes_key())
    admin.create_wechat_account(
        appid=oa.appid,
        secret=oa.secret,
        type=kind,
        followers=followers,
        tags=tags if tags is not None else {"VIP": 0.1, "上海": 0.3},
        token=oa.token,
        encoding_aes_key=oa.aes_key,
        callback_url=callback_url or "",
        job_delay_seconds=0.05,
        rules=sandbox_rules or {},
        **extra,
    )
    c.accounts.add(
        channel="wechat_oa",
        app_id=oa.appid,
        secret=oa.secret,
        kind=kind,
        base_url=f"{sandbox_url}/wechat",
        token=oa.token,
        encoding_aes_key=oa.aes_key,
        settings={"rules": qunfa_rules} if qunfa_rules else None,
    )
    if sync:
        asyncio.run(c.accounts.sync(oa.appid))
    return oa


def drain(c: Container, rounds: int = 50) -> None:
    """Run every queued batch (and whatever becomes due) in this thread until quiet."""
    import time

    queued: list[int] = c.queued  # type: ignore[attr-defined]
    for _ in range(rounds):
        if not queued:
            due = c.sweeper.due_batches()
            if not due:
                return
            queued.extend(due)
        while queued:
            c.dispatcher.run(queued.pop(0))
        time.sleep(0.06)
