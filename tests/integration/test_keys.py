"""Key rotation: every encrypted field moves to the new key, and nobody fails a read meanwhile."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from qunfa.bootstrap import Container
from qunfa.crypto.fields import Keyring
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Account, Identity
from tests.conftest import drain, make_oa


def test_rotation_reencrypts_everything_and_old_readers_keep_reading(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=2_500)
    path = container.settings.keyring_path
    worker_ring = Keyring.load(path)  # a running worker's keyring, loaded before the rotation
    with container.sessions() as s:
        before = {i.id: container.keyring.decrypt(i.value_enc) for i in s.scalars(select(Identity))}

    report = container.keys.rotate()

    assert report.key_id == "k2" and report.fields >= 2_500 + 1  # identities + the account
    with container.sessions() as s:
        rows = list(s.scalars(select(Identity)))
        acc = s.scalars(select(Account)).one()
    assert {container.keyring.key_id_of(i.value_enc) for i in rows} == {"k2"}
    assert container.keyring.key_id_of(acc.credentials_enc) == "k2"
    # The worker that never saw k2 reloads keys.json on the new key id instead of failing.
    assert {i.id: worker_ring.decrypt(i.value_enc) for i in rows} == before
    assert Keyring.load(path).active == "k2"
    # Everything still works with the rotated data: credentials, sync, a send.
    assert asyncio.run(container.accounts.sync(oa.appid)).new == 0
    camp = container.campaigns.create(
        name="after rotation", channel="wechat_oa", account=oa.appid, audience="all",
        content={"msgtype": "text", "text": {"content": "轮换后"}}, as_list=True,
    )  # fmt: skip
    container.campaigns.start(camp.id)
    drain(container, rounds=3)
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 2_500


def test_rotating_twice_keeps_every_value_readable(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    make_oa(admin, container, sandbox.url, followers=50)
    assert container.keys.rotate().key_id == "k2"
    assert container.keys.rotate().key_id == "k3"
    with container.sessions() as s:
        openids = select(Identity).where(Identity.kind == "openid")  # (unionids ride along)
        values = [container.keyring.decrypt(i.value_enc) for i in s.scalars(openids)]
    assert len(values) == 50 and all(v.startswith("o") for v in values)
    assert set(Keyring.load(container.settings.keyring_path).keys) == {"k1", "k2", "k3"}


def test_a_different_keyring_is_refused_not_silently_used(tmp_path: object) -> None:
    import pytest

    from qunfa.crypto.fields import KeyError_

    a, b = Keyring.generate(), Keyring.generate()
    b.add_key()
    from pathlib import Path

    p = Path(str(tmp_path)) / "keys.json"
    b.save(p)
    a.path = p  # a's file was replaced by another installation's keyring
    blob = b.encrypt("x")
    with pytest.raises(KeyError_, match="different keyring"):
        a.decrypt(blob)
