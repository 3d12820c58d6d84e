"""Benchmark: the gate's check of a 1,000,000-recipient personalised campaign, against a floor.

    python bench/check_campaign.py [--contacts 1000000] [--json]

Setup (not timed): a fresh SQLite database with N contacts — names (encrypted with the keyring,
~200,000 distinct: 100 surnames × 2,000 given names), 300 cities, ``attrs.level`` (5 values) —
each with a subscribed phone identity on one Tencent SMS account, written with the bulk path
(``storage/bulk.py``); a draft campaign whose template reads ``name``, ``city`` and
``attrs.level``.

* **check** — ``ReviewService.check(campaign)``: the template text once, then every distinct
  value the templates will insert (``services/value_check.py``: one GROUP BY per column or
  attribute, names streamed and decrypted), each checked by the compliance engine.
* **floor** — plain ``sqlite3`` + the same AES-GCM key: read every contact's ``name_enc`` and
  decrypt it. Nothing is checked; no check of the campaign can avoid this much.

Target (issue 5, item 7): ≤ 10 s for 1,000,000 recipients.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"  # noqa: E501
GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红娥文辉建鹏宇浩然子轩梓涵一诺欣怡"
)
LEVELS = ["普通", "银卡", "金卡", "白金", "钻石"]
CONTENT = {
    "template_id": "1001",
    "params": ["{{ name|default('朋友', true) }}", "{{ city }}{{ attrs.level }}"],
    "text": "{{ name|default('朋友', true) }}您好，{{ city }}门店{{ attrs.level }}会员"
    "本周 8 折，回T退订",
    "category": "marketing",
}


def names(n: int, rng: random.Random) -> list[str]:
    given = [a + b for a in GIVEN for b in GIVEN][:2000]
    return [rng.choice(SURNAMES[:100]) + rng.choice(given) for _ in range(n)]


def seed(n: int, work: Path) -> tuple[Any, int]:
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings
    from qunfa.storage.bulk import bulk_cache, insert_rows, insert_rows_returning_ids

    c = Container(Settings(data_dir=work / "qunfa"))
    c.migrate()
    acc = c.accounts.add(
        channel="sms_tencent",
        app_id="1400000001",
        credentials={"secret_id": "AKID", "secret_key": "k", "sdk_app_id": "1400000001",
                     "sign_name": "某品牌"},
        base_url="http://127.0.0.1:9/sms_tencent",
    )  # fmt: skip
    ring, rng, now = c.keyring, random.Random(5), time.time()
    cities = [f"城市{i:03d}" for i in range(300)]
    with c.engine.begin() as conn, bulk_cache(conn):
        for start in range(0, n, 50_000):
            size = min(50_000, n - start)
            page = names(size, rng)
            rows = [
                (now, now, enc, rng.choice(cities), json.dumps({"level": rng.choice(LEVELS)}))
                for enc in ring.encrypt_many(page)
            ]
            ids = insert_rows_returning_ids(
                conn, "contacts", ["created_at", "updated_at", "name_enc", "city", "attrs"], rows
            )
            phones = [f"+86138{start + i:08d}" for i in range(size)]
            insert_rows(
                conn,
                "identities",
                ["contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
                 "updated_at"],
                zip(ids, [acc.id] * size, ["phone"] * size, ring.encrypt_many(phones),
                    [ring.blind(p) for p in phones], [True] * size, [now] * size, strict=True),
            )  # fmt: skip
    camp = c.campaigns.create(
        name="bench", channel="sms_tencent", account="1400000001", audience="all", content=CONTENT
    )
    return c, int(camp.id)


def floor(db: Path) -> float:
    """Read and decrypt every name with plain sqlite3 and one AES-GCM object."""
    from qunfa.crypto.fields import Keyring

    ring = Keyring.load(db.parent / "keys.json")
    conn = sqlite3.connect(db)
    t0 = time.process_time()
    cur = conn.execute("SELECT name_enc FROM contacts")
    total = 0
    while rows := cur.fetchmany(20_000):
        total += len(ring.decrypt_many([bytes(b) for (b,) in rows]))
    elapsed = time.process_time() - t0
    conn.close()
    assert total > 0
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        c, cid = seed(args.contacts, Path(tmp))
        seeded = time.perf_counter() - t0
        from qunfa.compliance import default_checker

        default_checker()  # built once per process (tables, automaton): not the check's cost
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = c.review.check(cid, "bench")
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        values = result.summary.get("values", {})
        floor_s = floor(Path(tmp) / "qunfa" / "qunfa.db")
        out = {
            "contacts": args.contacts,
            "seed_s": round(seeded, 1),
            "check_s": round(wall, 2),
            "check_cpu_s": round(cpu, 2),
            "floor_decrypt_names_s": round(floor_s, 2),
            "check_over_floor": round(cpu / floor_s, 2),
            "distinct": values.get("distinct"),
            "flagged_values": values.get("flagged"),
            "verdict": result.verdict,
            "peak_rss_mb": round(peak_rss_mb()),
        }
        c.engine.dispose()
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return
    print(f"contacts (personalised)    {out['contacts']:>12,} (seeded in {seeded:.1f} s)")
    print(f"distinct values            {json.dumps(out['distinct'], ensure_ascii=False)}")
    print(f"check (wall / CPU)         {wall:>9.2f} s / {cpu:.2f} s   (target ≤ 10 s)")
    print(f"floor: decrypt all names   {floor_s:>9.2f} s CPU")
    print(f"check / floor              {cpu / floor_s:>9.2f}")
    print(
        f"verdict                    {result.verdict:>12} ({out['flagged_values']} values flagged)"
    )
    print(f"peak RSS                   {out['peak_rss_mb']:>9} MB")


if __name__ == "__main__":
    main()
