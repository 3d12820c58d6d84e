"""Benchmark: an N-recipient openid-list campaign end to end, against a raw floor.

    python bench/broadcast.py --recipients 1000000 [--json]

Setup (not timed): a sandbox process with a 服务号 of N followers, synced into qunfa's SQLite
database through the real sync path. Then, each in its own child process so each has its
own peak RSS:

* **qunfa** — create the campaign, plan it (set-based), send it through the Huey worker
  (SQLite queue, worker threads, leases, ledger writes, decrypting every openid), receive the
  encrypted MASSSENDJOBFINISH callbacks, and wait until the campaign is ``done``.
* **floor** — plain ``sqlite3`` + ``aiohttp`` doing the same reads, writes and posts with
  nothing else: read the openids (plaintext), write one delivery row each, POST mass/send in
  batches of 10,000 with the same concurrency, mark the rows sent, poll ``mass/get`` until
  every job is done.

Both talk to the same sandbox process, so the platform's own work is in both figures. The
sandbox account's per-minute mass-call limit (60) is raised for both (per-account override,
as an operator with a raised quota would have), otherwise both runs would measure the limit.
Prints seconds, recipients/s, peak RSS and the ratio qunfa/floor. Targets: ≤3× and ≤200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import child, free_port, peak_rss_mb, sandbox_process

APPID = "wxbench000000001"
SECRET = "bench-secret-0123456789abcdef"
TOKEN = "benchtoken"
CONCURRENCY = 4  # worker threads in qunfa; concurrent posts in the floor
RAISED = {"mass_calls_per_minute": 1_000_000}


# -- setup ---------------------------------------------------------------------------------------
def setup(n: int, work: Path, sandbox_url: str, callback_port: int) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.sandbox.admin_client import SandboxAdmin
    from qunfa.settings import Settings

    admin = SandboxAdmin(sandbox_url, timeout=600)
    aes = base64.b64encode(b"b" * 32).decode().rstrip("=")
    t0 = time.perf_counter()
    admin.create_wechat_account(
        appid=APPID,
        secret=SECRET,
        type="service",
        followers=n,
        tags={},
        token=TOKEN,
        encoding_aes_key=aes,
        callback_url=f"http://127.0.0.1:{callback_port}/callbacks/wechat/{APPID}",
        job_delay_seconds=0.05,
        rules=RAISED,
    )
    created = time.perf_counter() - t0
    c = Container(Settings(data_dir=work / "qunfa"))
    c.migrate()
    c.accounts.add(
        channel="wechat_oa",
        app_id=APPID,
        secret=SECRET,
        base_url=f"{sandbox_url}/wechat",
        token=TOKEN,
        encoding_aes_key=aes,
        settings={"rules": RAISED},
    )
    t0 = time.perf_counter()
    report = asyncio.run(c.accounts.sync(APPID))
    synced = time.perf_counter() - t0
    # The floor's table: the same openids, in plaintext, in a plain SQLite file.
    floor_db = sqlite3.connect(work / "floor.db")
    floor_db.execute("PRAGMA journal_mode=WAL")
    floor_db.execute("CREATE TABLE recipients (id INTEGER PRIMARY KEY, openid TEXT NOT NULL)")
    decrypt = c.keyring.decrypt
    with c.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, value_enc FROM identities WHERE kind = 'openid' ORDER BY id"
        )
        while chunk := rows.fetchmany(50_000):
            floor_db.executemany(
                "INSERT INTO recipients VALUES (?, ?)", [(i, decrypt(e)) for i, e in chunk]
            )
    floor_db.commit()
    floor_db.close()
    # The campaign, checked and approved by someone other than its author (docs/review.md):
    # a million recipients need approval. Reviewing is an operator's step in another process
    # (the API server), so the timed run below starts an approved campaign.
    camp = c.campaigns.create(
        name="bench", channel="wechat_oa", account=APPID, audience="all",
        content={"msgtype": "text", "text": {"content": "性能测试"}}, as_list=True,
    )  # fmt: skip
    c.review.check(camp.id, "bench")
    c.review.submit(camp.id, "bench")
    c.review.approve(camp.id, "bench-reviewer")
    c.close()
    return {"sandbox_account_s": round(created, 2), "sync_s": round(synced, 2),
            "followers": report.followers}  # fmt: skip


# -- the qunfa run (child process) ---------------------------------------------------------------
def run_qunfa(work: Path, sandbox_url: str, callback_port: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    from qunfa.api.app import create_app
    from qunfa.api.server import ServerThread
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings
    from qunfa.worker.queue import Worker

    c = Container(Settings(data_dir=work / "qunfa", worker_threads=CONCURRENCY))
    c.migrate()
    server = ServerThread(create_app(c), port=callback_port).start()
    worker = Worker(c)
    worker.start()
    # Created and approved at set-up (an operator's work, in another process); see setup().
    camp = c.campaigns.get(next(x["id"] for x in c.campaigns.all() if x["name"] == "bench"))
    rss_started = rss_now_mb()
    t0 = time.perf_counter()
    plan = c.campaigns.start(camp.id)
    t_planned = time.perf_counter()
    rss_planned = rss_now_mb()
    # Only the campaign's state: ``status()`` counts the deliveries by status (a scan of the
    # campaign's million rows) and, polled every 50 ms, measured the poller, not the sending.
    while c.campaigns.get(camp.id).state != "done":
        time.sleep(0.05)
    t_done = time.perf_counter()
    status = c.campaigns.status(camp.id)
    worker.stop()
    server.stop()
    assert plan is not None
    return {
        "seconds": round(t_done - t0, 3),
        "plan_seconds": round(t_planned - t0, 3),
        "send_seconds": round(t_done - t_planned, 3),
        "startup_seconds": round(t0 - t_start, 3),
        "batches": plan.batches,
        "sent": status["deliveries"].get("sent", 0),
        "platform_sent": status["platform"]["sent"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_started_mb": rss_started,  # imports, container, API server and worker threads up
        "rss_planned_mb": rss_planned,
    }


def rss_now_mb() -> float:
    """This process's resident set now (VmRSS), to see where the peak comes from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# -- the floor (child process) -------------------------------------------------------------------
async def floor_send(work: Path, sandbox_url: str) -> dict[str, Any]:
    import aiohttp

    root = f"{sandbox_url}/wechat/cgi-bin"
    db = sqlite3.connect(work / "floor.db", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    db.execute(
        "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, recipient_id INTEGER, batch_no INTEGER,"
        " status TEXT)"
    )
    db.execute("CREATE INDEX d_batch ON deliveries(batch_no)")
    db.execute(
        "INSERT INTO deliveries (recipient_id, batch_no, status)"
        " SELECT id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / 10000, 'planned' FROM recipients"
    )
    nbatches = db.execute("SELECT max(batch_no) + 1 FROM deliveries").fetchone()[0]
    db.commit()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{root}/stable_token",
            json={"grant_type": "client_credential", "appid": APPID, "secret": SECRET},
        )
        token = (await resp.json())["access_token"]
        sem = asyncio.Semaphore(CONCURRENCY)
        msg_ids: list[int] = []

        async def one(batch_no: int) -> None:
            async with sem:
                openids = [
                    r[0]
                    for r in db.execute(
                        "SELECT r.openid FROM deliveries d JOIN recipients r"
                        " ON r.id = d.recipient_id WHERE d.batch_no = ?",
                        (batch_no,),
                    )
                ]
                db.execute("UPDATE deliveries SET status='sending' WHERE batch_no=?", (batch_no,))
                db.commit()
                body = {"touser": openids, "msgtype": "text", "text": {"content": "floor"},
                        "clientmsgid": f"floor-{batch_no}-{time.time()}"}  # fmt: skip
                r = await http.post(f"{root}/message/mass/send",
                                    params={"access_token": token}, json=body)  # fmt: skip
                data = await r.json()
                assert data.get("errcode", 0) == 0, data
                msg_ids.append(int(data["msg_id"]))
                db.execute("UPDATE deliveries SET status='sent' WHERE batch_no=?", (batch_no,))
                db.commit()

        await asyncio.gather(*(one(b) for b in range(nbatches)))
        pending = set(msg_ids)
        while pending:  # the same wait for the platform's result as qunfa's reconcile
            for mid in list(pending):
                r = await http.post(
                    f"{root}/message/mass/get", params={"access_token": token}, json={"msg_id": mid}
                )
                if (await r.json()).get("msg_status") != "SENDING":
                    pending.discard(mid)
            if pending:
                await asyncio.sleep(0.05)
    seconds = time.perf_counter() - t0
    sent = db.execute("SELECT count(*) FROM deliveries WHERE status='sent'").fetchone()[0]
    db.close()
    return {"seconds": round(seconds, 3), "batches": nbatches, "sent": sent,
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


# -- orchestration -------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument(
        "--setup-cache",
        type=Path,
        metavar="DIR",
        help="keep the (untimed) set-up in DIR/<N> and start later runs from a copy of it",
    )
    ap.add_argument("--child", choices=["qunfa", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sandbox", help=argparse.SUPPRESS)
    ap.add_argument("--callback-port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "qunfa":
        print(json.dumps(run_qunfa(args.work, args.sandbox, args.callback_port)))
        return
    if args.child == "floor":
        print(json.dumps(asyncio.run(floor_send(args.work, args.sandbox))))
        return

    n = args.recipients

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    cache = args.setup_cache / str(n) if args.setup_cache else None
    with tempfile.TemporaryDirectory(prefix="qunfa-bench-") as tmp:
        work = Path(tmp)
        reused = cache is not None and (cache / "setup.json").exists()
        if reused:
            assert cache is not None
            # A copy of a finished set-up (sandbox state, qunfa's data dir, the floor's table),
            # untouched by any run: each run sends to and writes into its own copy. The sandbox
            # comes back on the same port, which qunfa's account and the callbacks name.
            shutil.copytree(cache, work, dirs_exist_ok=True)
            prepared = json.loads((work / "setup.json").read_text())
        else:
            prepared = {"callback_port": free_port(), "sandbox_port": free_port()}
        callback_port = int(prepared["callback_port"])
        with sandbox_process(work / "sandbox.db", port=int(prepared["sandbox_port"])) as url:
            if reused:
                log(f"setup: reused from {cache} ({prepared}); floor run …")
            else:
                log(f"setup: sandbox account with {n:,} followers, sync into qunfa …")
                prepared |= setup(n, work, url, callback_port)
                log(f"setup done ({prepared}); floor run …")
                if cache is not None:  # the sandbox is idle: its WAL files copy consistently
                    shutil.rmtree(cache, ignore_errors=True)
                    shutil.copytree(work, cache)
                    (cache / "setup.json").write_text(json.dumps(prepared))
            common = ["--work", str(work), "--sandbox", url, "--callback-port", str(callback_port)]
            floor = child(__file__, "floor", *common)
            log(f"floor: {floor}; qunfa run …")
            qunfa = child(__file__, "qunfa", *common)
    ratio = qunfa["seconds"] / floor["seconds"]
    result = {
        "recipients": n,
        "setup": prepared,
        "qunfa": {**qunfa, "recipients_per_s": round(n / qunfa["seconds"])},
        "floor": {**floor, "recipients_per_s": round(n / floor["seconds"])},
        "ratio": round(ratio, 2),
        "targets": {"ratio_max": 3.0, "peak_rss_mb_max": 200},
        "ok": ratio <= 3.0 and qunfa["peak_rss_mb"] <= 200 and qunfa["sent"] == n,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"recipients        {n:,}")
    print(f"qunfa             {qunfa['seconds']:.2f} s  ({n / qunfa['seconds']:,.0f}/s)  "
          f"plan {qunfa['plan_seconds']:.2f} s, send+reconcile {qunfa['send_seconds']:.2f} s  "
          f"peak RSS {qunfa['peak_rss_mb']} MB")  # fmt: skip
    print(f"floor             {floor['seconds']:.2f} s  ({n / floor['seconds']:,.0f}/s)  "
          f"peak RSS {floor['peak_rss_mb']} MB")  # fmt: skip
    print(f"ratio             {ratio:.2f}×  (target ≤ 3×)   {'OK' if result['ok'] else 'MISSED'}")


if __name__ == "__main__":
    main()
