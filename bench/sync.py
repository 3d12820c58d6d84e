"""Measure a full Official Account sync: N followers (default 1,000,000) from the sandbox.

    .venv/bin/python bench/sync.py [N] [--no-profiles]     (or python -m bench.sync …)

The sandbox runs in its own process (as in production, the platform is elsewhere). Prints the
sandbox account creation time, the sync time, identities per second, platform calls, and a
**floor measured in the same run** against the same sandbox: the same platform calls made raw
(aiohttp, no qunfa code: ``user/get`` paging, ``user/info/batchget`` 100 at a time with the
same concurrency, ``tags/get`` + ``user/tag/get`` paging) with plain inserts of what they
return into a fresh SQLite file (one ``executemany`` and one transaction per page, no index, no
encryption, no blind index, no lookups). ``ratio`` = sync / floor: what qunfa's bookkeeping
(two identities per follower, AES-GCM, HMAC blind indexes, the unique index, resumable
state) costs on top of just fetching and storing the lists. The floor runs after the sync, so
it meets a sandbox whose caches the sync warmed: the ratio errs on the high side.

Wall time on the shared 2-core machine swings with the other helpers' load, so the bench also
prints CPU seconds (user + system) of both sides — qunfa's process and the sandbox's — for the
sync and for the floor, and ``cpu_ratio`` = sync CPU / floor CPU, which load barely moves.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.services.sync import PROFILE_CONCURRENCY
from qunfa.settings import Settings


async def floor(base: str, appid: str, secret: str, path: Path, profiles: bool) -> dict[str, Any]:
    """The same platform calls as the sync, raw, with plain inserts (see the module doc)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE followers (openid TEXT, unionid TEXT, subscribe_time INTEGER)")
    db.execute("CREATE TABLE tag_members (tag_id INTEGER, openid TEXT)")
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:

        async def call(method: str, api: str, **kw: Any) -> dict[str, Any]:
            async with http.request(method, f"{base}/cgi-bin/{api}", **kw) as r:
                data: dict[str, Any] = await r.json(content_type=None)
            if data.get("errcode"):
                raise RuntimeError(f"{api}: {data}")
            return data

        token = (
            await call("GET", "token", params={"grant_type": "client_credential", "appid": appid,
                                              "secret": secret})
        )["access_token"]  # fmt: skip
        q = {"access_token": token}
        gate = asyncio.Semaphore(PROFILE_CONCURRENCY)

        async def batchget(chunk: list[str]) -> list[dict[str, Any]]:
            async with gate:
                body = {"user_list": [{"openid": o, "lang": "zh_CN"} for o in chunk]}
                data = await call("POST", "user/info/batchget", params=q, json=body)
                return list(data["user_info_list"])

        nxt, followers = "", 0
        while True:
            data = await call("GET", "user/get", params={**q, "next_openid": nxt})
            page = (data.get("data") or {}).get("openid") or []
            if not page:
                break
            if profiles:
                parts = await asyncio.gather(
                    *(batchget(page[i : i + 100]) for i in range(0, len(page), 100))
                )
                rows = [(u["openid"], u.get("unionid"), u.get("subscribe_time"))
                        for part in parts for u in part]  # fmt: skip
            else:
                rows = [(o, None, None) for o in page]
            db.execute("BEGIN")
            db.executemany("INSERT INTO followers VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            followers += len(page)
            nxt = str(data.get("next_openid") or "")
            if not nxt:
                break
        tagged = 0
        for tag in (await call("GET", "tags/get", params=q))["tags"]:
            nxt = ""
            while True:
                body = {"tagid": tag["id"], "next_openid": nxt}
                data = await call("POST", "user/tag/get", params=q, json=body)
                page = (data.get("data") or {}).get("openid") or []
                if not page or not data.get("count"):
                    break
                db.execute("BEGIN")
                db.executemany("INSERT INTO tag_members VALUES (?, ?)",
                               [(tag["id"], o) for o in page])  # fmt: skip
                db.execute("COMMIT")
                tagged += len(page)
                nxt = str(data.get("next_openid") or "")
                if not nxt:
                    break
    db.close()
    total = time.perf_counter() - t0
    return {"floor_s": total, "floor_followers": followers, "floor_tagged": tagged}


def cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process ``pid``: less sensitive to
    the other helpers' load on the shared machine than wall time."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), "1000000"))
    profiles = "--no-profiles" not in sys.argv
    work = Path(tempfile.mkdtemp(prefix="qunfa-bench-sync-"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pathlib import Path; from qunfa.sandbox.server import run;"
         f"run(port={port}, state_path=Path({str(work / 'sandbox.db')!r}))"],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    load = [Path("/proc/loadavg").read_text().split()[:3]]
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
        marks: dict[str, float] = {}

        def phase(what: str, done: int, total: int | None) -> None:
            # The first tag page ends the follower phase (its time includes tags/get).
            if what.startswith("tag ") and "ids" not in marks:
                marks["ids"] = time.perf_counter() - t0

        t0, c0, s0 = time.perf_counter(), cpu(), cpu(proc.pid)
        report = asyncio.run(c.accounts.sync("wxbench", phase, profiles=profiles))
        synced = time.perf_counter() - t0
        sync_cpu = {"qunfa": round(cpu() - c0, 1), "sandbox": round(cpu(proc.pid) - s0, 1)}
        calls = admin.get("/_sandbox/calls")
        c.close()
        load.append(Path("/proc/loadavg").read_text().split()[:3])
        c0, s0 = cpu(), cpu(proc.pid)
        raw = asyncio.run(floor(f"{url}/wechat", "wxbench", "s", work / "floor.db", profiles))
        floor_cpu = {"client": round(cpu() - c0, 1), "sandbox": round(cpu(proc.pid) - s0, 1)}
        load.append(Path("/proc/loadavg").read_text().split()[:3])
        assert raw["floor_followers"] == report.followers, (raw, report)
        assert raw["floor_tagged"] == report.tagged, (raw, report)
        out = {"followers": report.followers, "unionids": report.unionids,
               "tagged": report.tagged, "sandbox_account_s": round(created, 1),
               "sync_s": round(synced, 1), "followers_per_s": round(report.followers / synced),
               "followers_phase_s": round(marks.get("ids", synced), 1),
               **raw, "floor_s": round(raw["floor_s"], 1),
               "ratio": round(synced / raw["floor_s"], 2),
               "sync_cpu_s": sync_cpu, "floor_cpu_s": floor_cpu,
               "cpu_ratio": round(sum(sync_cpu.values()) / max(sum(floor_cpu.values()), 0.01),
                                  2),
               "calls": {p.rsplit("/cgi-bin/", 1)[-1]: v["calls"]
                         for p, v in calls["paths"].items()},
               "loadavg_start_aftersync_end": [" ".join(x) for x in load]}  # fmt: skip
        print(json.dumps(out, ensure_ascii=False))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)  # a 1M run leaves ~700 MB


if __name__ == "__main__":
    main()
