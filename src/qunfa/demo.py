"""The demo: a real campaign to a simulated 服务号 on the sandbox, end to end, on one machine.

Starts the sandbox in-process, starts qunfa's API (for the callbacks) and worker, creates a
service account with N followers and realistic tags, syncs it, sends one campaign to a tag
and one to everyone, waits for the job-finish callbacks, and returns a summary.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.settings import Settings
from qunfa.worker.queue import Worker

APPID = "wx5f3a9c0d1e2b4a68"
CORPID = "ww3c5e7a9b1d2f4608"
SMS_APP = "1400987654"
WECOM_STAFF, WECOM_CUSTOMERS = 20, 2_000
SMS_PHONES = 5_000
AUTHOR = "运营-小林"  # the demo campaigns' author (docs/review.md: who may approve)
REVIEWER = "审核-老王"  # approves what needs approval; never the author
DEMO_TAGS = {"VIP": 0.05, "上海": 0.2, "北京": 0.15, "新客": 0.3, "沉睡用户": 0.25}
Step = Callable[[str], None]
Progress = Callable[[str, int, int | None], None]


class DemoError(RuntimeError):
    """The demo cannot start; the message says what to do."""


def check_port(port: int) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(
                f"port {port} is already in use: stop what runs there, or pass --port N "
                "(or --no-serve)"
            ) from None


@dataclass
class DemoRun:
    """Everything the demo started; ``close`` stops it all."""

    container: Container
    sandbox: EmbeddedSandbox
    server: ServerThread
    worker: Worker
    summary: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.worker.stop()
        self.server.stop()
        self.sandbox.__exit__(None, None, None)
        self.container.close()


def _aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


def run_demo(
    *,
    contacts: int = 100_000,
    data_dir: Path = Path("data/demo"),
    port: int = 8000,
    step: Step = lambda _m: None,
    progress: Progress | None = None,
    timeout: float = 600.0,
) -> DemoRun:
    """Run the demo; the returned :class:`DemoRun` keeps the console serving until closed."""
    started = time.time()
    check_port(port)
    shutil.rmtree(data_dir, ignore_errors=True)  # the demo's own folder: always a clean rehearsal
    data_dir.mkdir(parents=True)
    settings = Settings(data_dir=data_dir, settle_after=30.0)
    c = Container(settings)
    c.migrate()

    step("starting the sandbox (platform twin) in-process")
    sandbox = EmbeddedSandbox(data_dir / "sandbox.db", port=0).__enter__()
    admin = SandboxAdmin(sandbox.url)
    step(f"sandbox at {sandbox.url}; starting qunfa's API and worker")
    try:
        server = ServerThread(create_app(c), port=port).start()
    except RuntimeError as exc:
        sandbox.__exit__(None, None, None)
        raise DemoError(f"{exc}; pass --port N to use another port") from None
    worker = Worker(c)
    worker.start()
    run = DemoRun(c, sandbox, server, worker)
    try:
        token, aes_key, secret = secrets.token_hex(8), _aes_key(), secrets.token_hex(16)
        step(f"creating a 服务号 with {contacts:,} followers on the sandbox")
        admin.create_wechat_account(
            appid=APPID,
            secret=secret,
            type="service",
            followers=contacts,
            tags=DEMO_TAGS,
            token=token,
            encoding_aes_key=aes_key,
            callback_url=f"{server.url}/callbacks/wechat/{APPID}",
            job_delay_seconds=1.0,
        )
        c.accounts.add(
            channel="wechat_oa",
            app_id=APPID,
            secret=secret,
            name="qunfa 演示服务号",
            kind="service",
            base_url=f"{sandbox.url}/wechat",
            token=token,
            encoding_aes_key=aes_key,
        )
        step("syncing followers and tags (user/get, tags/get, user/tag/get)")
        sync = asyncio.run(c.accounts.sync(APPID, progress))
        step(f"synced {sync.followers:,} followers and {sync.tags} tags in {sync.seconds:.1f}s")

        campaigns = [
            c.campaigns.create(
                created_by=AUTHOR,
                name="VIP 专享：双十二预告",
                channel="wechat_oa",
                account=APPID,
                audience="tag:VIP",
                content={
                    "msgtype": "text",
                    "text": {"content": "VIP 专享：双十二会员日提前看，回复 1 了解详情。"},
                },
            ),
            c.campaigns.create(
                created_by=AUTHOR,
                name="全体粉丝：服务升级通知",
                channel="wechat_oa",
                account=APPID,
                audience="all",
                content={
                    "msgtype": "text",
                    "text": {"content": "服务升级通知：12 月 1 日起客服时间延长至 22:00。"},
                },
                # A service notice, not marketing: exempt from the per-person frequency caps
                # (docs/quotas.md), so the VIPs who just got the preview still get it.
                options={"transactional": True},
            ),
        ]
        campaigns += _wecom_campaign(c, admin, sandbox.url, server.url, step, progress)
        campaigns += _sms_campaign(c, admin, sandbox.url, server.url, data_dir, step, progress)
        for camp in campaigns:
            _review(c, camp.id, step)
            step(f"sending campaign {camp.id}: {camp.channel} → {camp.audience}")
            c.campaigns.start(camp.id, progress, actor=AUTHOR)
        wait_for(c, [camp.id for camp in campaigns], timeout, progress)
        statuses = [c.campaigns.status(camp.id) for camp in campaigns]
        ledgers = {
            "wechat_oa": admin.ledger("wechat_oa", APPID),
            "wecom_customer": admin.ledger("wecom_customer", CORPID),
            "sms_tencent": admin.ledger("sms_tencent", SMS_APP),
        }
        run.summary = {
            "contacts": contacts,
            "sync": {"followers": sync.followers, "tags": sync.tags, "seconds": sync.seconds},
            "campaigns": statuses,
            "ledger": ledgers["wechat_oa"],
            "ledgers": ledgers,
            "seconds": round(time.time() - started, 2),
            "console": server.url,
        }
        return run
    except BaseException:
        run.close()
        raise


def _wecom_campaign(
    c: Container, admin: SandboxAdmin, sandbox_url: str, server_url: str, step: Step,
    progress: Progress | None,
) -> list[Any]:  # fmt: skip
    """A WeCom corp whose staff confirm the mass-send task, and one campaign to its customers."""
    secret, token, aes = secrets.token_hex(16), secrets.token_hex(8), _aes_key()
    step(f"creating a WeCom corp with {WECOM_CUSTOMERS:,} customers of {WECOM_STAFF} staff")
    admin.create_account(
        "wecom", corpid=CORPID, secret=secret, staff=WECOM_STAFF, customers=WECOM_CUSTOMERS,
        confirm_delay_seconds=1.0, confirm_rate=1.0, token=token, encoding_aes_key=aes,
        callback_url=f"{server_url}/callbacks/wecom/{CORPID}",
    )  # fmt: skip
    c.accounts.add(
        channel="wecom_customer", app_id=CORPID, name="qunfa 演示企业",
        base_url=f"{sandbox_url}/wecom", credentials={"corpid": CORPID, "secret": secret},
        token=token, encoding_aes_key=aes,
    )  # fmt: skip
    sync = asyncio.run(c.accounts.sync(CORPID, progress))
    step(f"synced {sync.followers:,} WeCom customers")
    return [
        c.campaigns.create(
            created_by=AUTHOR,
            name="企业微信客户群发：年终回馈",
            channel="wecom_customer",
            account=CORPID,
            audience="all",
            content={"text": {"content": "年终回馈：老客户专享礼包已到账。"}},
        )
    ]


def _sms_campaign(
    c: Container, admin: SandboxAdmin, sandbox_url: str, server_url: str, data_dir: Path,
    step: Step, progress: Progress | None,
) -> list[Any]:  # fmt: skip
    """An SMS account, phones imported from a CSV, and one marketing SMS with its opt-out."""
    secret_id, secret_key = f"AKID{secrets.token_hex(8)}", secrets.token_hex(16)
    template = "会员日全场{1}折，详情见 {2}，回T退订"
    admin.create_account(
        "sms_tencent", sdk_app_id=SMS_APP, secret_id=secret_id, secret_key=secret_key,
        sign_name="qunfa演示", templates={"1001": template}, receipt_delay_seconds=1.0,
        fail_rate=0.02, callback_url=f"{server_url}/callbacks/sms_tencent/{SMS_APP}",
    )  # fmt: skip
    c.accounts.add(
        channel="sms_tencent", app_id=SMS_APP, name="qunfa 演示短信",
        base_url=f"{sandbox_url}/sms_tencent",
        credentials={"secret_id": secret_id, "secret_key": secret_key, "sdk_app_id": SMS_APP,
                     "sign_name": "qunfa演示"},
    )  # fmt: skip
    csv_path = data_dir / "sms_phones.csv"
    csv_path.write_text(
        "phone\n" + "".join(f"138{i:08d}\n" for i in range(SMS_PHONES)), encoding="utf-8"
    )
    report = c.contacts.import_csv(SMS_APP, csv_path, progress=progress)
    step(f"imported {report.imported:,} phone numbers for SMS")
    content = {
        "template_id": "1001",
        "params": ["8", "qf.example/vip"],
        "text": template.replace("{1}", "8").replace("{2}", "qf.example/vip"),
        "category": "marketing",
    }
    return [
        c.campaigns.create(
            created_by=AUTHOR,
            name="短信：会员日提醒",
            channel="sms_tencent",
            account=SMS_APP,
            audience="all",
            content=content,
        )
    ]


def _review(c: Container, campaign_id: int, step: Step) -> None:
    """The gate as a team runs it (docs/review.md): check the content; when the audience is
    above the review threshold or a finding asks for review, the author submits and someone
    else approves."""
    result = c.review.check(campaign_id, AUTHOR)
    step(f"checked campaign {campaign_id}: {result.verdict}")
    gate = c.review.summary(campaign_id)["gate"]
    if gate and gate["rule"] == "gate.approval":
        step(f"campaign {campaign_id} needs approval: {AUTHOR} submits, {REVIEWER} approves")
        c.review.submit(campaign_id, AUTHOR)
        c.review.approve(campaign_id, REVIEWER, "演示：已核对人群与内容")


def wait_for(
    c: Container, campaign_ids: list[int], timeout: float, progress: Progress | None = None
) -> None:
    """Block until every campaign is done (callbacks included) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = [c.campaigns.status(i) for i in campaign_ids]
        finished = sum(s["state"] in ("done", "failed", "cancelled") for s in statuses)
        if progress:
            progress("waiting for job-finish callbacks", finished, len(campaign_ids))
        if finished == len(campaign_ids):
            return
        paused = [s for s in statuses if s["state"] == "paused"]
        if paused:
            raise RuntimeError(f"campaign {paused[0]['id']} paused: {paused[0]['last_error']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"campaigns not done after {timeout:.0f}s: {statuses}")
        time.sleep(0.2)
