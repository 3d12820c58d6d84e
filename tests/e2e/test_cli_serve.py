"""An operator's session: the CLI and `qunfa serve` (API, callbacks, embedded worker) together.

Sandbox and server run as their own processes; every step is a real command or HTTP call
against the same data folder, as a person would do it from the README.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qunfa.sandbox.admin_client import SandboxAdmin
from tests.conftest import aes_key

QUNFA = str(Path(sys.executable).with_name("qunfa"))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "QUNFA_DATA_DIR": str(tmp_path / "data"), "QUNFA_LOG_LEVEL": "WARNING"}


@pytest.fixture
def processes(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    sb_port, api_port = free_port(), free_port()
    sandbox = subprocess.Popen(
        [QUNFA, "sandbox", "--port", str(sb_port), "--state", str(tmp_path / "sb.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    serve = subprocess.Popen(
        [QUNFA, "serve", "--port", str(api_port)],
        env={**env, "QUNFA_SANDBOX_URL": f"http://127.0.0.1:{sb_port}",
             "QUNFA_PUBLIC_URL": f"http://127.0.0.1:{api_port}", "QUNFA_SETTLE_AFTER": "5"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    urls = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{api_port}"
    try:
        wait_http(f"{urls[0]}/_sandbox/health")
        wait_http(f"{urls[1]}/healthz")
        yield urls
    finally:
        for proc in (serve, sandbox):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [QUNFA, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"qunfa {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def test_operator_session_from_the_cli_and_the_api(
    env: dict[str, str], processes: tuple[str, str]
) -> None:
    sandbox_url, api_url = processes
    env = {**env, "QUNFA_SANDBOX_URL": sandbox_url}
    appid, secret, token, key = "wxclitest0000001", "s3cret-0123456789", "tok", aes_key()
    SandboxAdmin(sandbox_url).create_wechat_account(
        appid=appid, secret=secret, type="service", followers=3_000, token=token,
        encoding_aes_key=key, callback_url=f"{api_url}/callbacks/wechat/{appid}",
        job_delay_seconds=0.1, tags={"VIP": 0.1},
    )  # fmt: skip

    cli(env, "init")
    assert "saved" in cli(
        env, "accounts", "add", "--appid", appid, "--kind", "service", "--token", token,
        "--aes-key", key, stdin=f"{secret}\n",
    )  # fmt: skip
    accounts = json.loads(cli(env, "accounts", "list", "--json"))
    assert [a["app_id"] for a in accounts] == [appid]
    assert secret not in json.dumps(accounts)
    assert "3,000 followers" in cli(env, "accounts", "sync", appid)
    created = cli(
        env, "campaign", "create", "--name", "CLI 测试", "--account", appid,
        "--audience", "tag:VIP", "--text", "来自命令行的问候",
    )  # fmt: skip
    assert "campaign 1 created" in created

    # Send through the running server: its embedded worker sends, its callback route reconciles.
    sent = http("POST", f"{api_url}/api/campaigns/1/send")
    assert sent["state"] == "sending" and sent["planned"] > 0
    deadline = time.monotonic() + 60
    while (status := http("GET", f"{api_url}/api/campaigns/1"))["state"] != "done":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["deliveries"] == {"sent": status["planned"]}
    assert status["platform"]["sent"] == status["planned"]  # from MASSSENDJOBFINISH

    listed = json.loads(cli(env, "campaign", "list", "--json"))
    assert [c["state"] for c in listed] == ["done"]
    shown = json.loads(cli(env, "campaign", "status", "1", "--json"))
    assert shown["planned"] == status["planned"]
    assert SandboxAdmin(sandbox_url).ledger("wechat_oa", appid)["max_per_recipient"] == 1
    page = urllib.request.urlopen(f"{api_url}/", timeout=5).read().decode()
    assert "CLI 测试" in page and "已完成" in page  # the console, in Chinese by default


def test_cli_errors_are_clear_and_exit_2(env: dict[str, str]) -> None:
    out = subprocess.run(
        [QUNFA, "campaign", "status", "42"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "no campaign 42" in out.stderr
    out = subprocess.run(
        [QUNFA, "campaign", "create", "--name", "x", "--account", "wx_none", "--text", "hi"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "no account 'wx_none'" in out.stderr
    assert "Traceback" not in out.stderr
