"""Behaviour facts: a full rebuild vs an incremental refresh after 10,000 new events.

``python bench/facts.py [--contacts 1000000] [--events 3000000] [--new 10000] [--postgres URL]``

Seeds contacts and events (20 % purchases, spread over 180 days) straight into the tables,
times :meth:`BehaviourService.rebuild` (every person's facts and RFM from scratch), then twice
stores ``--new`` events five minutes later through :meth:`ingest_parsed` and times
:meth:`BehaviourService.refresh` (only the people with new events or with events that left a
window in those five minutes; RFM cut points moved and the rows between old and new cut points
rewritten): first with the migrations' indexes only, then after creating the three proposed
RFM indexes (``behaviour_sql.RFM_INDEXES``). Prints the ratios, a refresh with no new events
(window ageing only), and checks that the incremental table equals a rebuild.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from qunfa.bootstrap import Container
from qunfa.domain.behaviour import DAY
from qunfa.services.behaviour import BehaviourService, EventIn
from qunfa.settings import Settings
from qunfa.storage import behaviour_sql as bq
from qunfa.storage.bulk import bulk_cache, insert_rows

NOW = 1_750_000_000.0
KINDS = ("purchase", "message", "message", "click", "click")
DEVICES = ("ios", "android", None, None)


def seed(c: Container, contacts: int, events: int, rng: random.Random) -> None:
    page = 200_000
    with c.engine.begin() as conn, bulk_cache(conn):
        for start in range(1, contacts + 1, page):
            stop = min(start + page, contacts + 1)
            rows = [(i, NOW - 200 * DAY, NOW - 200 * DAY, "{}") for i in range(start, stop)]
            insert_rows(conn, "contacts", ("id", "created_at", "updated_at", "attrs"), rows)
        for start in range(0, events, page):
            batch = []
            for i in range(start, min(start + page, events)):
                kind = KINDS[i % 5]
                purchase = kind == "purchase"
                batch.append((
                    rng.randint(1, contacts), kind, "wechat_oa",
                    NOW - rng.random() * 180 * DAY,
                    round(rng.random() * 500, 2) if purchase else None,
                    rng.choice(DEVICES), f"order-{i}" if purchase else None, NOW - 3600,
                ))  # fmt: skip
            insert_rows(
                conn, "person_events",
                ("contact_id", "kind", "channel", "at", "amount", "device", "dedupe_key",
                 "received_at"),
                batch,
            )  # fmt: skip


def ingest_new(
    svc: BehaviourService, n: int, contacts: int, at: float, rng: random.Random
) -> tuple[float, int]:
    """``n`` new events in the last five minutes (a fifth purchases), through ingest_parsed."""
    new = [
        EventIn(
            kind=KINDS[i % 5], at=at - rng.random() * 300,
            contact_id=rng.randint(1, contacts),
            amount=round(rng.random() * 500, 2) if KINDS[i % 5] == "purchase" else None,
            device=rng.choice(DEVICES),
            dedupe_key=f"new-{at}-{i}" if KINDS[i % 5] == "purchase" else None,
        )
        for i in range(n)
    ]  # fmt: skip
    t0 = time.perf_counter()
    stored = svc.ingest_parsed(new).inserted
    return time.perf_counter() - t0, stored


def verify(c: Container, svc: BehaviourService, now: float) -> bool:
    """The incrementally maintained facts and scores equal a rebuild from scratch."""
    query = text(
        "SELECT contact_id, last_interaction_at, interactions_7d, spend_3m, orders_3m, "
        "last_purchase_at, device, converted, rfm_r, rfm_f, rfm_m, rfm_segment "
        "FROM contact_facts ORDER BY contact_id"
    )
    with c.engine.connect() as conn:
        before = [tuple(r) for r in conn.execute(query)]
    svc.rebuild(now=now)
    with c.engine.connect() as conn:
        return before == [tuple(r) for r in conn.execute(query)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--postgres", default=None, help="a PostgreSQL URL (an empty database)")
    args = ap.parse_args()
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=args.postgres)
        c = Container(settings)
        c.migrate()
        t0 = time.perf_counter()
        seed(c, args.contacts, args.events, rng)
        print(f"seeded {args.contacts:,} contacts, {args.events:,} events "
              f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        svc = c.behaviour
        svc.clock = lambda: NOW
        full = svc.rebuild(now=NOW)
        print(f"full rebuild:        {full.seconds:8.2f}s  ({full.contacts:,} people, "
              f"{full.rfm:,} RFM rows)")  # fmt: skip
        later = NOW
        ratios = []
        for label in ("without the RFM indexes", "with the RFM indexes"):
            if label.startswith("without"):  # they are in the schema (migration 0005)
                with c.engine.begin() as conn:
                    for dim in bq.RFM_COLUMNS:
                        conn.execute(text(f"DROP INDEX IF EXISTS ix_contact_facts_rfm_{dim}"))
            if label.startswith("with "):
                t0 = time.perf_counter()
                with c.engine.begin() as conn:
                    for ddl in bq.RFM_INDEXES:  # as in the schema (migration 0005)
                        conn.execute(text(ddl))
                    conn.execute(text("ANALYZE"))
                print(f"create the 3 RFM indexes + ANALYZE: {time.perf_counter() - t0:.2f}s")
            later += 300  # the sweeper's refresh five minutes later
            svc.clock = lambda at=later: at
            ingest_s, stored = ingest_new(svc, args.new, args.contacts, later, rng)
            print(f"[{label}] ingest {args.new:,} events: {ingest_s:.2f}s ({stored:,} stored)")
            inc = svc.refresh(now=later)
            ratios.append(full.seconds / inc.seconds)
            print(f"[{label}] incremental refresh: {inc.seconds:8.3f}s  ({inc.contacts:,} "
                  f"people changed, {inc.rfm:,} RFM rows rewritten); "
                  f"rebuild / incremental {ratios[-1]:.1f}x")  # fmt: skip
        later += 300
        svc.clock = lambda: later
        idle = svc.refresh(now=later)
        print(f"refresh, no new events (window ageing only): {idle.seconds:.3f}s "
              f"({idle.contacts:,} people changed, {idle.rfm:,} RFM rows)")  # fmt: skip
        check = verify(c, svc, later)
        print(f"incremental table equals rebuild(): {check}")
        c.close()


if __name__ == "__main__":
    main()
