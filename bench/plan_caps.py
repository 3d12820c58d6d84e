"""Benchmark: planning an N-recipient SMS campaign with caps and quotas on, against off.

    python bench/plan_caps.py --recipients 1000000 [--json]

Setup (not timed): an embedded SQLite database with one Tencent SMS account, N people with a
phone each (bulk-inserted with ``storage/bulk.py``), and N earlier deliveries of a finished
marketing campaign, one per person, ``sent_at`` spread over the last 7 days — so the
"1 a day" cap bites for about a seventh of them and the per-number rule is evaluated for all.

Timed, in the same run and the same database, each on a fresh draft campaign:

* **off** — the real ``CampaignService.plan`` with the quota step replaced by a no-op;
* **on** — the real ``plan`` with the default caps (3 in 7 days, 1 a day) and the platform's
  per-number daily rule, policy ``defer`` (the deferred rows are re-batched by due day), plus the
  time helper's step as wired in ``plan``.

The "off" campaign is cancelled (not timed) before "on" is planned: left planned, its rows
would count for the caps of the "on" plan (other live campaigns' planned rows count,
docs/quotas.md) and defer everyone.

Target (issue 6 item 9): on ≤ 2× off.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

CONTENT = {"template_id": "1001", "params": ["8"], "text": "会员日全场8折，回T退订",
           "category": "marketing"}  # fmt: skip


def seed(c: Any, n: int) -> int:
    from sqlalchemy import text

    from qunfa.storage.bulk import bulk_cache, insert_rows

    c.accounts.add(
        channel="sms_tencent",
        app_id="1400999000",
        credentials={
            "secret_id": "AKIDx",
            "secret_key": "k",
            "sdk_app_id": "1400999000",
            "sign_name": "qunfa",
        },
        base_url="http://127.0.0.1:1/sms_tencent",
    )
    acc = c.accounts.get("1400999000")
    now = time.time()
    rng = random.Random(7)
    with c.engine.begin() as conn, bulk_cache(conn):
        insert_rows(conn, "contacts", ["id", "created_at", "updated_at", "attrs"],
                    ((i, now, now, "{}") for i in range(1, n + 1)))  # fmt: skip
        insert_rows(
            conn, "identities",
            ["id", "contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
             "updated_at"],
            ((i, i, acc.id, "phone", b"x", i.to_bytes(16, "big"), True, now)
             for i in range(1, n + 1)),
        )  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO campaigns (uid, name, channel, account_id, audience, mode, content,"
                " options, state, created_by, review_state, planned_count, batch_count,"
                " created_at, started_at, finished_at) VALUES ('prior', 'prior', 'sms_tencent',"
                " :acc, 'all', 'list', '{}', '{}', 'done', '', 'none', :n, 0, :t, :t, :now)"
            ),
            {"acc": acc.id, "n": n, "t": now - 7 * 86400, "now": now},
        )
        prior = int(conn.execute(text("SELECT id FROM campaigns WHERE uid = 'prior'")).scalar_one())
        insert_rows(
            conn, "deliveries",
            ["campaign_id", "batch_no", "identity_id", "contact_id", "status", "updated_at",
             "sent_at"],
            ((prior, i // 200, i, i, "sent", now, now - rng.uniform(0, 7 * 86400))
             for i in range(1, n + 1)),
        )  # fmt: skip
    return int(acc.id)


# Proposed (not in a migration yet): covering indexes for the merged cap pass, so the per-person
# aggregate and the per-identity probe read campaign_id and status from the index, not the row.
COVERING = (
    "CREATE INDEX IF NOT EXISTS ix_deliveries_contact_sent_cover"
    " ON deliveries (contact_id, sent_at, campaign_id, status)",
    "CREATE INDEX IF NOT EXISTS ix_deliveries_identity_sent_cover"
    " ON deliveries (identity_id, sent_at, campaign_id, status)",
)


def run(n: int, covering: bool = False) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.services.campaigns import CampaignService
    from qunfa.services.dryrun import _Advisory
    from qunfa.services.quota import PlanQuota
    from qunfa.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="qunfa-bench-plan-"))
    c = Container(Settings(data_dir=work))
    c.migrate()
    t0 = time.time()
    seed(c, n)
    if covering:
        from sqlalchemy import text

        with c.engine.begin() as conn:
            for ddl in COVERING:
                conn.execute(text(ddl))
    seeded = time.time() - t0
    planner = CampaignService(_Advisory(c))  # type: ignore[arg-type]  # no review gate here

    def campaign(name: str, **options: Any) -> int:
        return int(
            c.campaigns.create(name=name, channel="sms_tencent", account="1400999000",
                               audience="all", content=CONTENT, options=options).id
        )  # fmt: skip

    off_id = campaign("off")
    real = c.quota.apply_at_plan
    c.quota.apply_at_plan = lambda cid, total: PlanQuota(total)  # the step switched off
    t0 = time.time()
    off = planner.plan(off_id)
    t_off = time.time() - t0
    c.quota.apply_at_plan = real
    # The "off" campaign is now a planned campaign to the same people: left live, its planned
    # rows would count against the "on" one (docs/quotas.md, scheduled campaigns) and defer
    # everyone. Cancelled (not timed), both plans start from the same ledger.
    c.campaigns.cancel(off_id)
    on_id = campaign("on", over_cap="defer")
    t0 = time.time()
    on = planner.plan(on_id)
    t_on = time.time() - t0
    elig = c.quota.eligibility(on_id, limit=0)
    return {
        "recipients": n,
        "covering_indexes": covering,
        "seed_seconds": round(seeded, 1),
        "off_seconds": round(t_off, 2),
        "on_seconds": round(t_on, 2),
        "ratio": round(t_on / t_off, 2),
        "off_batches": off.batches,
        "on_batches": on.batches,
        "deferred": {k: v.get("deferred", 0) for k, v in elig["reasons"].items()},
        "eligible_now": elig["eligible_now"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--covering-indexes", action="store_true",
                    help="add the proposed covering indexes (setup, not timed)")  # fmt: skip
    args = ap.parse_args()
    r = run(args.recipients, args.covering_indexes)
    if args.json:
        print(json.dumps(r))
        return
    extra = ", proposed covering indexes" if r["covering_indexes"] else ""
    print(f"planning {r['recipients']:,} recipients (SMS, SQLite{extra}), "
          f"seeded in {r['seed_seconds']} s")  # fmt: skip
    print(f"  caps + quotas off: {r['off_seconds']:>7.2f} s  {r['off_batches']} batches")
    print(f"  caps + quotas on : {r['on_seconds']:>7.2f} s  {r['on_batches']} batches, "
          f"{r['eligible_now']:,} due now, deferred {r['deferred']}")  # fmt: skip
    print(f"  ratio on/off: {r['ratio']}× (target ≤ 2×)")


if __name__ == "__main__":
    main()
