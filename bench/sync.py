"""Measure a full Official Account sync: N followers (default 1,000,000) from the sandbox.

    .venv/bin/python -m bench.sync [N] [--no-profiles]

The sandbox runs in its own process (as in production, the platform is elsewhere); prints the
sandbox account creation time, the sync time, identities per second and platform calls.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.settings import Settings


def main() -> None:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), "1000000"))
    profiles = "--no-profiles" not in sys.argv
    work = Path(tempfile.mkdtemp(prefix="qunfa-bench-sync-"))
    port = 8711
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pathlib import Path; from qunfa.sandbox.server import run;"
         f"run(port={port}, state_path=Path({str(work / 'sandbox.db')!r}))"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/_sandbox/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        admin = SandboxAdmin(url, timeout=600)
        t0 = time.perf_counter()
        admin.create_wechat_account(appid="wxbench", secret="s", followers=n, seed=1)
        created = time.perf_counter() - t0
        c = Container(Settings(data_dir=work / "qunfa", http_timeout=60.0))
        c.migrate()
        c.accounts.add(channel="wechat_oa", app_id="wxbench", secret="s",
                       base_url=f"{url}/wechat")  # fmt: skip
        t0 = time.perf_counter()
        report = asyncio.run(c.accounts.sync("wxbench", profiles=profiles))
        synced = time.perf_counter() - t0
        calls = admin.get("/_sandbox/calls")
        out = {"followers": report.followers, "unionids": report.unionids,
               "tagged": report.tagged, "sandbox_account_s": round(created, 1),
               "sync_s": round(synced, 1), "followers_per_s": round(report.followers / synced),
               "calls": {p.rsplit("/cgi-bin/", 1)[-1]: v["calls"]
                         for p, v in calls["paths"].items()}}  # fmt: skip
        print(json.dumps(out, ensure_ascii=False))
        c.close()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
