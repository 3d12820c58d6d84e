"""Benchmark: an N-recipient SMS campaign (sms_tencent, 200 numbers a call) against a raw floor.

    python bench/sms.py --recipients 1000000 [--json]      # 5,000 signed SendSms calls

Setup (not timed): a sandbox process with a Tencent SMS account, N phone numbers imported into
qunfa with ``qunfa contacts import`` (encrypted, blind-indexed). Then, each in its own child
process:

* **qunfa** — create the marketing campaign (opt-out checked), plan it, send every batch of
  200 through the Huey worker (leases, ledger, TC3-signed SendSms, per-number results), wait
  until ``done``.
* **floor** — plain ``sqlite3`` + ``aiohttp`` doing the same reads, writes and posts: read the
  numbers, write one delivery row each, sign and POST SendSms 200 numbers at a time with the
  same concurrency, mark the rows sent.

The signing is part of the protocol, so the floor signs too (the same pure TC3 function).
Target: ≤ 3× the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import child, peak_rss_mb, sandbox_process

APP = "1400100200"
SECRET_ID, SECRET_KEY = "AKIDbench0000000000", "benchsecretkey0123456789abcdef"
SIGN = "qunfa"
TEMPLATE = "会员日全场{1}折，回T退订"
CONTENT = {"template_id": "1001", "params": ["8"], "text": "会员日全场8折，回T退订",
           "category": "marketing"}  # fmt: skip
CONCURRENCY = 4
PER_CALL = 200
RAISED = {"per_number_daily": 1000}


def setup(n: int, work: Path, sandbox_url: str) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.sandbox.admin_client import SandboxAdmin
    from qunfa.settings import Settings

    SandboxAdmin(sandbox_url).create_account(
        "sms_tencent", sdk_app_id=APP, secret_id=SECRET_ID, secret_key=SECRET_KEY,
        sign_name=SIGN, templates={"1001": TEMPLATE}, receipt_delay_seconds=86400.0,
        rules=RAISED,
    )  # fmt: skip
    c = Container(Settings(data_dir=work / "qunfa"))
    c.migrate()
    c.accounts.add(
        channel="sms_tencent", app_id=APP, base_url=f"{sandbox_url}/sms_tencent",
        credentials={"secret_id": SECRET_ID, "secret_key": SECRET_KEY, "sdk_app_id": APP,
                     "sign_name": SIGN},
    )  # fmt: skip
    csv_path = work / "phones.csv"
    with csv_path.open("w", encoding="utf-8") as fh:
        fh.write("phone\n")
        fh.writelines(f"+86137{i:08d}\n" for i in range(n))
    t0 = time.perf_counter()
    report = c.contacts.import_csv(APP, csv_path)
    imported = time.perf_counter() - t0
    floor = sqlite3.connect(work / "floor.db")
    floor.execute("CREATE TABLE recipients (id INTEGER PRIMARY KEY, phone TEXT NOT NULL)")
    floor.executemany(
        "INSERT INTO recipients (phone) VALUES (?)", ((f"+86137{i:08d}",) for i in range(n))
    )
    floor.commit()
    floor.close()
    # Checked and approved by someone other than its author (docs/review.md): a million
    # recipients need approval. An operator's step in another process, so not timed below.
    camp = c.campaigns.create(
        name="bench", channel="sms_tencent", account=APP, audience="all", content=CONTENT
    )
    c.review.check(camp.id, "bench")
    c.review.submit(camp.id, "bench")
    c.review.approve(camp.id, "bench-reviewer")
    c.close()
    return {"import_s": round(imported, 2), "imported": report.imported}


def run_qunfa(work: Path) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings
    from qunfa.worker.queue import Worker

    c = Container(Settings(data_dir=work / "qunfa", worker_threads=CONCURRENCY))
    c.migrate()
    worker = Worker(c)
    worker.start()
    # Created and approved at set-up (an operator's work, in another process); see setup().
    camp = c.campaigns.get(next(x["id"] for x in c.campaigns.all() if x["name"] == "bench"))
    t0 = time.perf_counter()
    plan = c.campaigns.start(camp.id)
    t_planned = time.perf_counter()
    while c.campaigns.status(camp.id)["state"] != "done":
        time.sleep(0.05)
    t_done = time.perf_counter()
    status = c.campaigns.status(camp.id)
    worker.stop()
    assert plan is not None
    return {
        "seconds": round(t_done - t0, 3),
        "plan_seconds": round(t_planned - t0, 3),
        "send_seconds": round(t_done - t_planned, 3),
        "batches": plan.batches,
        "sent": status["deliveries"].get("sent", 0),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


async def floor_send(work: Path, sandbox_url: str) -> dict[str, Any]:
    import aiohttp

    from qunfa.crypto import tc3

    url = f"{sandbox_url}/sms_tencent/"
    host = urlsplit(url).netloc
    db = sqlite3.connect(work / "floor.db", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    db.execute("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, rid INTEGER, batch_no INTEGER,"
               " status TEXT)")  # fmt: skip
    db.execute("CREATE INDEX d_batch ON deliveries(batch_no)")
    db.execute(
        "INSERT INTO deliveries (rid, batch_no, status) SELECT id,"
        f" (ROW_NUMBER() OVER (ORDER BY id) - 1) / {PER_CALL}, 'planned' FROM recipients"
    )
    nbatches = db.execute("SELECT max(batch_no) + 1 FROM deliveries").fetchone()[0]
    db.commit()
    sem = asyncio.Semaphore(CONCURRENCY)
    sent = 0
    async with aiohttp.ClientSession() as http:

        async def one(batch_no: int) -> None:
            nonlocal sent
            async with sem:
                phones = [r[0] for r in db.execute(
                    "SELECT r.phone FROM deliveries d JOIN recipients r ON r.id = d.rid"
                    " WHERE d.batch_no = ?", (batch_no,))]  # fmt: skip
                db.execute("UPDATE deliveries SET status='sending' WHERE batch_no=?", (batch_no,))
                db.commit()
                body = {"PhoneNumberSet": phones, "SmsSdkAppId": APP, "SignName": SIGN,
                        "TemplateId": "1001", "TemplateParamSet": ["8"]}  # fmt: skip
                payload = json.dumps(body, ensure_ascii=False).encode()
                headers = tc3.sign_headers(
                    secret_id=SECRET_ID, secret_key=SECRET_KEY, service="sms", host=host,
                    action="SendSms", version="2021-01-11", region="ap-guangzhou",
                    payload=payload, timestamp=int(time.time()),
                )  # fmt: skip
                r = await http.post(url, data=payload, headers=headers)
                data = await r.json()
                ok = [s for s in data["Response"]["SendStatusSet"] if s["Code"] == "Ok"]
                sent += len(ok)
                db.execute("UPDATE deliveries SET status='sent' WHERE batch_no=?", (batch_no,))
                db.commit()

        await asyncio.gather(*(one(b) for b in range(nbatches)))
    seconds = time.perf_counter() - t0
    db.close()
    return {"seconds": round(seconds, 3), "batches": nbatches, "sent": sent,
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["qunfa", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sandbox", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "qunfa":
        print(json.dumps(run_qunfa(args.work)))
        return
    if args.child == "floor":
        print(json.dumps(asyncio.run(floor_send(args.work, args.sandbox))))
        return
    n = args.recipients
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="qunfa-bench-sms-") as tmp:
        work = Path(tmp)
        with sandbox_process(work / "sandbox.db") as url:
            log(f"setup: SMS account, {n:,} numbers imported into qunfa …")
            prepared = setup(n, work, url)
            log(f"setup done ({prepared}); floor run …")
            floor = child(__file__, "floor", "--work", str(work), "--sandbox", url)
            log(f"floor: {floor}; qunfa run …")
            qunfa = child(__file__, "qunfa", "--work", str(work), "--sandbox", url)
    ratio = qunfa["seconds"] / floor["seconds"]
    result = {
        "recipients": n,
        "calls": floor["batches"],
        "setup": prepared,
        "qunfa": {**qunfa, "recipients_per_s": round(n / qunfa["seconds"])},
        "floor": {**floor, "recipients_per_s": round(n / floor["seconds"])},
        "ratio": round(ratio, 2),
        "ok": ratio <= 3.0 and qunfa["sent"] == n,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"recipients        {n:,} in {floor['batches']:,} calls of {PER_CALL}")
    print(f"qunfa             {qunfa['seconds']:.2f} s  ({n / qunfa['seconds']:,.0f}/s)  "
          f"peak RSS {qunfa['peak_rss_mb']} MB")  # fmt: skip
    print(f"floor             {floor['seconds']:.2f} s  ({n / floor['seconds']:,.0f}/s)")
    print(f"ratio             {ratio:.2f}×  (target ≤ 3×)   {'OK' if result['ok'] else 'MISSED'}")


if __name__ == "__main__":
    main()
