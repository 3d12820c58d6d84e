"""`qunfa demo --json` end to end, as a newcomer runs it (a subprocess, its own data folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QUNFA = str(Path(sys.executable).with_name("qunfa"))


def test_demo_json_summary(tmp_path: Path) -> None:
    out = subprocess.run(
        [QUNFA, "demo", "--contacts", "5000", "--no-serve", "--json", "--data-dir",
         str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["contacts"] == 5000 and summary["sync"]["followers"] == 5000
    by_channel: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for camp in summary["campaigns"]:
        by_channel.setdefault(camp["channel"], []).append(camp)
        assert camp["state"] == "done", camp
    vip, everyone = by_channel["wechat_oa"]
    assert vip["audience"] == "tag:VIP" and everyone["audience"] == "all"
    for camp in (vip, everyone):
        assert camp["deliveries"] == {"sent": camp["planned"]}
        # The platform's own count, from the encrypted MASSSENDJOBFINISH callback.
        assert camp["platform"]["sent"] == camp["planned"]
    assert everyone["planned"] == 5000 and 100 < vip["planned"] < 500  # VIP is ~5%
    ledgers = summary["ledgers"]
    assert ledgers["wechat_oa"]["recipients"] == 5000
    assert ledgers["wechat_oa"]["messages"] == 5000 + vip["planned"]
    assert ledgers["wechat_oa"]["max_per_recipient"] == 2  # VIPs got both, nobody more
    (wecom,) = by_channel["wecom_customer"]
    assert wecom["deliveries"] == {"sent": 2000}  # per-customer status polled from WeCom
    assert ledgers["wecom_customer"]["messages"] == 2000
    (sms,) = by_channel["sms_tencent"]
    d = sms["deliveries"]
    assert d.get("sent", 0) + d.get("failed", 0) == sms["planned"] == 5000
    assert ledgers["sms_tencent"]["max_per_recipient"] == 1
    for ledger in ledgers.values():
        assert ledger["max_per_recipient"] <= 2


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [QUNFA, "demo", "--contacts", "100", "--port", str(port), "--data-dir",
             str(tmp_path / "demo")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 2
    assert f"port {port} is already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_ctrl_c_stops_the_serving_demo(tmp_path: Path) -> None:
    """The demo says "Ctrl-C to stop": the embedded worker must not swallow SIGINT."""
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [QUNFA, "demo", "--contacts", "300", "--port", str(port), "--data-dir",
         str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen, deadline = "", time.monotonic() + 120
    while "console:" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "console:" in seen, seen[-2000:]
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
