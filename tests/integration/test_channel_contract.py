"""One contract, every channel: the whole registry against the sandbox.

For each registered channel: its rule file is sourced and dated, its twin is discovered, its
docs page exists; a small batch sent through the adapter to real recipients on the twin is
accepted and lands in the twin's ledger at most once per recipient; and a platform fault
injected on its twin is classified RETRYABLE. A channel registered without an entry here
fails the test — a new channel joins the contract or the suite says so.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qunfa import rules
from qunfa.bootstrap import Container
from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.registry import channels
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox import twins
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.conftest import make_oa
from tests.integration import (
    test_dingtalk,
    test_email,
    test_feishu,
    test_personal_wechat,
    test_sms_aliyun,
    test_sms_tencent,
    test_webhook,
    test_wecom_customer,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "channels"


@dataclass
class Setup:
    app_id: str
    recipients: list[str]
    content: dict[str, Any]
    platform: str  # the twin's URL prefix, for faults


Factory = Callable[[Container, SandboxAdmin, EmbeddedSandbox, Path], Setup]


def _oa(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    oa = make_oa(a, c, sb.url, followers=20)
    ids = [str(i) for i in _followers(c, oa.appid)]
    return Setup(oa.appid, ids[:3], {"msgtype": "text", "text": {"content": "契约"}}, "wechat")


def _template(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, p: Path) -> Setup:
    base = _oa(c, a, sb, p)
    data = {"thing1": "已发货", "character_string2": "SF1", "time3": "2026-11-23"}
    content = {"template_id": "TPL_ORDER_SHIPPED", "data": data}
    return Setup(base.app_id, base.recipients, content, "wechat")


def _followers(c: Container, appid: str) -> list[str]:
    async def page() -> list[str]:
        async with HttpClient(5.0) as http:
            adapter: Any = c.accounts.adapter(c.accounts.get(appid), http)
            async for ids in adapter.followers():
                return list(ids)
        return []

    return asyncio.run(page())


def _wecom_customer(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    corp = test_wecom_customer.make_corp(a, c, sb.url, customers=6, staff=2)
    asyncio.run(c.accounts.sync(corp.corpid))
    ids = _identity_values(c, corp.corpid)
    return Setup(corp.corpid, ids[:3], {"text": {"content": "契约"}}, "wecom")


def _wecom_app(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    corp = test_wecom_customer.make_corp(a, c, sb.url, customers=2, staff=3, app=True)
    users = [str(s["userid"]) for s in corp.staff][:3]
    app = f"{corp.corpid}:{test_wecom_customer.AGENTID}"
    return Setup(app, users, {"msgtype": "text", "text": {"content": "契约"}}, "wecom")


def _dingtalk(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    corp = test_dingtalk.make_corp(a, c, sb.url, employees=5)
    return Setup(corp.app_id, corp.userids[:3], test_dingtalk.TEXT, "dingtalk")


def _feishu(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    t = test_feishu.make_tenant(a, c, sb.url, users=5)
    return Setup(t.app_id, t.users[:3], test_feishu.TEXT, "feishu")


def _sms_tencent(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    app = test_sms_tencent.make_account(a, c, sb)
    return Setup(app, test_sms_tencent.phones(3), test_sms_tencent.CONTENT, "sms_tencent")


def _sms_aliyun(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    akid = test_sms_aliyun.make_account(a, c, sb)
    phones = [f"+86139{n:08d}" for n in range(3)]
    return Setup(akid, phones, test_sms_aliyun.CONTENT, "sms_aliyun")


def _email(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    sender = test_email.make_account(a, c)
    to = [f"user{n}@mail.example" for n in range(3)]
    return Setup(sender, to, test_email.CONTENT, "email")


def _webhook(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, _: Path) -> Setup:
    ep = test_webhook.make_endpoint(a, c, sb.url)
    return Setup(ep.name, test_webhook.USERS[:3], test_webhook.PUSH, "webhook")


def _personal(c: Container, a: SandboxAdmin, sb: EmbeddedSandbox, p: Path) -> Setup:
    name = f"contract-{secrets.token_hex(3)}"
    remarks = test_personal_wechat.make_account(a, c, p, name=name, friends=5)
    return Setup(name, remarks[:3], {"text": "契约 {link}", "url": "https://e.example/x"}, "")


SETUPS: dict[str, Factory] = {
    "wechat_oa": _oa,
    "wechat_template": _template,
    "wecom_customer": _wecom_customer,
    "wecom_app": _wecom_app,
    "dingtalk": _dingtalk,
    "feishu": _feishu,
    "sms_tencent": _sms_tencent,
    "sms_aliyun": _sms_aliyun,
    "email": _email,
    "webhook": _webhook,
    "personal_wechat": _personal,
}


def _identity_values(c: Container, app_id: str) -> list[str]:
    from sqlalchemy import select

    from qunfa.storage.models import Identity

    acc = c.accounts.get(app_id)
    with c.sessions() as s:
        blobs = s.scalars(select(Identity.value_enc).where(Identity.account_id == acc.id)).all()
    return [c.keyring.decrypt(b) for b in blobs]


def test_every_registered_channel_is_in_the_contract() -> None:
    assert set(channels()) == set(SETUPS), "add the new channel to SETUPS"


@pytest.mark.parametrize("key", sorted(SETUPS))
def test_static_contract(key: str) -> None:
    cls = channels()[key]
    assert cls.key == key and cls.title and cls.modes and cls.recipient_kind
    rs = rules.load(cls.rules_name)
    for rule in rs.rules.values():  # every limit is sourced and dated
        assert rule.source.strip() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rule.effective), rule
    for mode in cls.modes:
        assert cls.batch_size(rs, mode) >= 0
    for code, klass in cls.errors.items():
        assert isinstance(klass, ErrorClass), (code, klass)
    assert (DOCS / f"{key}.md").exists(), f"docs/channels/{key}.md is missing"
    prefix = cls.sandbox_prefix or key
    assert any(prefix == t.TWIN for t in twins.discover()), f"no sandbox twin for {prefix}"
    if cls.dedupe_window_rule:
        assert cls.idempotent and rs[cls.dedupe_window_rule] > 0


def _send(c: Container, s: Setup, key: str, batch_key: str) -> BatchOutcome:
    cls = channels()[key]

    async def go() -> BatchOutcome:
        async with HttpClient(5.0) as http:
            adapter = c.accounts.adapter(c.accounts.get(s.app_id), http, key)
            mode = sorted(cls.modes)[0] if key != "wechat_oa" else "list"
            batch = OutboundBatch("contract", 0, batch_key, mode, s.content, s.recipients)
            return await adapter.send_batch(batch)

    return asyncio.run(go())


@pytest.mark.parametrize("key", sorted(SETUPS))
def test_send_against_the_twin(
    key: str,
    container: Container,
    admin: SandboxAdmin,
    sandbox: EmbeddedSandbox,
    tmp_path: Path,
) -> None:
    setup = SETUPS[key](container, admin, sandbox, tmp_path)
    cls = channels()[key]
    container.accounts.get(setup.app_id)  # registered in qunfa
    cls.validate_content(setup.content, container.accounts.config(
        container.accounts.get(setup.app_id), key).rules)  # fmt: skip
    out = _send(container, setup, key, f"qf-contract-{key}")
    assert out.accepted, out.error
    assert not out.recipient_failures or set(out.recipient_failures) <= set(setup.recipients)
    if key != "personal_wechat":  # a person sends those; nothing reaches the twin by API
        ledger = admin.ledger(key, setup.app_id)
        assert ledger["max_per_recipient"] <= 1
    if setup.platform:  # an injected platform fault is retryable, never a lost batch
        admin.faults(platform=setup.platform, error_rate=1.0, http_status=503)
        faulted = _send(container, setup, key, f"qf-contract-{key}-2")
        admin.clear_faults()
        assert not faulted.accepted and faulted.error is not None
        assert faulted.error.klass is ErrorClass.RETRYABLE, faulted.error
