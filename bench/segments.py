"""Benchmark: the count preview of a three-clause segment, against a raw floor.

    python bench/segments.py [--contacts 1000000] [--runs 7] [--json]
    python bench/segments.py --postgres --contacts 10000000

Setup (timed separately, printed with progress): a fresh database through the real
migrations, then N contacts (cities, registration times), one openid identity each on one
account, 10 % of them tagged VIP on that account (``identity_tags``), 5 % carrying one of
qunfa's own tags (``contact_tags``), interaction facts for 80 % of them, and ``--messages``
message events over 90 days (a tenth of them mention 退款) — SQLite: ``executemany`` from
Python; PostgreSQL: generated server-side by ``INSERT … SELECT … FROM generate_series`` in a
database created for the run, ``qunfa_bench_seg`` (secondary indexes dropped for the load and
rebuilt after, the database dropped at the end whatever happens).

Measured (warm, median of ``--runs``):

* **qunfa** — ``count_segment`` of ``tag("VIP") and city in ("上海", "北京") and
  last_active_within(30d)`` scoped to the account: parse, compile, one ``SELECT count(*)``.
* **floor: count(*)** — ``SELECT count(*) FROM contacts``.
* **floor: hand-written** — the best SQL we would write by hand for the same question on this
  data (one identity per contact, so a plain join from the tag needs no DISTINCT), checked to
  give the same number.

Then the same after creating the candidate indexes (``EXTRA_INDEXES``), to show their effect.
The schema's contact-level copies (migration 0006: ``contact_account_tags``,
``contacts.last_interaction_at`` → ``active_at``) are kept by triggers; SQLite's build fires
them, the PostgreSQL build loads with triggers off (``session_replication_role = replica``) and
fills the copies set-based as the migration's backfill does. The hand-written floor reads
``identity_tags ⋈ identities`` and ``contact_facts``, so its equal count also checks the copies.
``--keep`` leaves ``qunfa_bench_seg`` in place for ``EXPLAIN (ANALYZE, BUFFERS)`` while
iterating (drop it afterwards); otherwise it is dropped at the end, also on SIGTERM.
Targets: ≤300 ms on 1M contacts (SQLite), ≤3 s on 10M (PostgreSQL).

Also measured: ``said("退款", 7d)`` (message text search) against a hand-written
``count(DISTINCT contact_id) … LIKE``; on PostgreSQL again after ``pg_trgm`` and a GIN trigram
index on ``lower(text)`` created *in the bench database only* (not part of the schema).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sqlalchemy import Connection, text

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "qunfa_bench_seg"
NOW = 1_750_000_000.0
DAY = 86_400.0
SEGMENT = 'tag("VIP") and city in ("上海", "北京") and last_active_within(30d)'
# 上海 and 北京 are 10 % each; the rest spread over other cities (5 % have none).
CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "重庆"]
CITY_WEIGHTS = [10, 10] + [9.375] * 8
# Candidate indexes (not in the migrations): created after the first measurement.
EXTRA_INDEXES = {
    "sqlite": [],
    "postgresql": [
        "CREATE INDEX ix_bench_facts_last_cover ON contact_facts (last_interaction_at) "
        "INCLUDE (contact_id)",
        "CREATE INDEX ix_bench_contacts_city_live ON contacts (city, id) WHERE merged_into IS NULL",
    ],
}

SAID = ['said("退款", 7d)', 'said("退款进度", 7d)']
# Message texts: 2 of 20 mention 退款 (a tenth of the messages).
PHRASES = [
    "你好", "请问什么时候发货", "我要退款", "退款进度怎么查", "优惠券怎么用", "谢谢", "好的",
    "会员积分怎么兑换", "地址改一下", "在吗", "发票怎么开", "有没有优惠", "快递到哪了",
    "尺码偏大吗", "怎么联系客服", "下单了", "能便宜点吗", "什么时候有活动", "收到了", "质量不错",
]  # fmt: skip
HAND_SAID = """
SELECT count(DISTINCT contact_id) FROM person_events
WHERE kind = 'message' AND at >= :cut AND lower(text) LIKE :pattern
"""
TRGM_INDEX = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",  # the bench database only
    "CREATE INDEX ix_bench_events_text_trgm ON person_events USING gin (lower(text) gin_trgm_ops)",
]

HAND_WRITTEN = """
SELECT count(*)
FROM identity_tags it
JOIN identities i ON i.id = it.identity_id
JOIN contacts c ON c.id = i.contact_id
LEFT JOIN contact_facts f ON f.contact_id = c.id
WHERE it.tag_id = :vip
  AND c.city IN ('上海', '北京') AND c.merged_into IS NULL
  AND (f.last_interaction_at >= :cut OR coalesce(c.registered_at, c.created_at) >= :cut)
"""


def progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------------
def contact_rows(n: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    cities = rng.choices([*CITIES, None], weights=[*CITY_WEIGHTS, 5], k=n)
    for i in range(1, n + 1):
        reg = NOW - rng.random() * 730 * DAY
        yield (i, reg, reg, cities[i - 1], reg, "{}")


def identity_rows(n: int, account: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        yield (i, i, account, "openid", b"e", i.to_bytes(16, "big"), True, NOW)


def facts_rows(n: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        if rng.random() < 0.8:
            yield (i, NOW - rng.random() * 120 * DAY, 0, 0.0, 0, False, NOW)


def tag_rows(n: int, vip: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        if rng.random() < 0.1:
            yield (vip, i)


def own_tag_rows(n: int, tag: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        if rng.random() < 0.05:
            yield (tag, i)


def message_rows(n: int, m: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for _ in range(m):
        yield (rng.randint(1, n), "message", "wechat_oa", NOW - rng.random() * 90 * DAY,
               rng.choice(PHRASES), NOW)  # fmt: skip


def chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def add_account_and_tags(conn: Connection) -> tuple[int, int, int]:
    """The account, its VIP tag and one of qunfa's own (account-less) tags."""
    account = int(
        conn.execute(
            text(
                "INSERT INTO accounts (channel, app_id, name, kind, base_url, credentials_enc, "
                "settings, created_at) VALUES ('wechat_oa', 'wxbenchseg', 'bench', 'service', "
                "'http://x.invalid', :c, '{}', :now) RETURNING id"
            ),
            {"c": b"x", "now": NOW},
        ).scalar_one()
    )
    vip = int(
        conn.execute(
            text(
                "INSERT INTO tags (account_id, name, source, member_count) "
                "VALUES (:a, 'VIP', 'synced', 0) RETURNING id"
            ),
            {"a": account},
        ).scalar_one()
    )
    own = int(
        conn.execute(
            text(
                "INSERT INTO tags (account_id, name, source, member_count) "
                "VALUES (NULL, '新客', 'manual', 0) RETURNING id"
            )
        ).scalar_one()
    )
    return account, vip, own


def load(conn: Connection, n: int, messages: int) -> tuple[int, int]:
    """SQLite: rows generated in Python, inserted with ``executemany`` in pages."""
    from qunfa.storage.bulk import insert_rows

    rng = random.Random(4)
    account, vip, own = add_account_and_tags(conn)
    steps: list[tuple[str, list[str], Callable[[], Iterator[tuple[Any, ...]]]]] = [
        (
            "contacts",
            ["id", "created_at", "updated_at", "city", "registered_at", "attrs"],
            lambda: contact_rows(n, rng),
        ),
        (
            "identities",
            [
                "id",
                "contact_id",
                "account_id",
                "kind",
                "value_enc",
                "value_bi",
                "subscribed",
                "updated_at",
            ],
            lambda: identity_rows(n, account),
        ),
        (
            "contact_facts",
            [
                "contact_id",
                "last_interaction_at",
                "interactions_7d",
                "spend_3m",
                "orders_3m",
                "converted",
                "updated_at",
            ],
            lambda: facts_rows(n, rng),
        ),
        ("identity_tags", ["tag_id", "identity_id"], lambda: tag_rows(n, vip, rng)),
        ("contact_tags", ["tag_id", "contact_id"], lambda: own_tag_rows(n, own, rng)),
        (
            "person_events",
            ["contact_id", "kind", "channel", "at", "text", "received_at"],
            lambda: message_rows(n, messages, rng),
        ),
    ]
    for table, cols, rows in steps:
        t0 = time.perf_counter()
        done = 0
        for part in chunks(rows(), 500_000):
            insert_rows(conn, table, cols, part)
            done += len(part)
            progress(f"{table}: {done:,} rows ({time.perf_counter() - t0:.0f} s)")
    return account, vip


def _pg_array(items: list[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{x}'" for x in items) + "]"


# The PostgreSQL build, generated server-side with the same distributions as the Python rows:
# registration uniform over two years; 上海/北京 10 % each, eight other cities 9.375 % each, 5 %
# no city; facts for 80 % (last interaction uniform over 120 days, written on the contact — the
# triggers' copy — and then into contact_facts from there); VIP on 10 % of the
# identities; an own tag on 5 % of the contacts; messages uniform over people and 90 days.
PG_LOAD = [
    (
        "contacts",
        f"""
INSERT INTO contacts (id, created_at, updated_at, city, registered_at, attrs,
                      last_interaction_at)
SELECT i, reg, reg,
       CASE WHEN u < 10 THEN '上海' WHEN u < 20 THEN '北京'
            WHEN u < 95 THEN ({_pg_array(CITIES[2:])})[1 + floor((u - 20) / 9.375)::int] END,
       reg, '{{}}',
       CASE WHEN random() < 0.8 THEN :now - random() * 120 * :day END
FROM (SELECT i, :now - random() * 730 * :day AS reg, random() * 100 AS u
      FROM generate_series(1, :n) i) g
""",
    ),
    (
        "identities",
        """
INSERT INTO identities (id, contact_id, account_id, kind, value_enc, value_bi, subscribed,
                        updated_at)
SELECT i, i, :account, 'openid', '\\x65'::bytea, decode(lpad(to_hex(i), 32, '0'), 'hex'), true,
       :now
FROM generate_series(1, :n) i
""",
    ),
    (
        "contact_facts",
        """
INSERT INTO contact_facts (contact_id, last_interaction_at, interactions_7d, spend_3m, orders_3m,
                           converted, updated_at)
SELECT id, last_interaction_at, 0, 0.0, 0, false, :now
FROM contacts WHERE last_interaction_at IS NOT NULL
""",
    ),
    (
        "identity_tags",
        "INSERT INTO identity_tags (tag_id, identity_id) "
        "SELECT :vip, i FROM generate_series(1, :n) i WHERE random() < 0.1",
    ),
    (
        # What the trigger on identity_tags would have written (the migration's backfill).
        "contact_account_tags",
        "INSERT INTO contact_account_tags (tag_id, contact_id) "
        "SELECT DISTINCT it.tag_id, i.contact_id "
        "FROM identity_tags it JOIN identities i ON i.id = it.identity_id",
    ),
    (
        "contact_tags",
        "INSERT INTO contact_tags (tag_id, contact_id) "
        "SELECT :own, i FROM generate_series(1, :n) i WHERE random() < 0.05",
    ),
    (
        "person_events",
        f"""
INSERT INTO person_events (contact_id, kind, channel, at, text, received_at)
SELECT 1 + floor(random() * :n)::int, 'message', 'wechat_oa', :now - random() * 90 * :day,
       ({_pg_array(PHRASES)})[1 + floor(random() * {len(PHRASES)})::int], :now
FROM generate_series(1, :messages)
""",
    ),
]


def load_pg(conn: Connection, n: int, messages: int) -> tuple[int, int]:
    """PostgreSQL: every row generated by the server (no row crosses the wire)."""
    account, vip, own = add_account_and_tags(conn)
    conn.exec_driver_sql("SELECT setseed(0.42)")  # the same data every run
    params = {"n": n, "messages": messages, "now": NOW, "day": DAY, "account": account,
              "vip": vip, "own": own}  # fmt: skip
    for table, sql in PG_LOAD:
        t0 = time.perf_counter()
        rows = conn.execute(text(sql), params).rowcount
        progress(f"{table}: {rows:,} rows ({time.perf_counter() - t0:.0f} s)")
    return account, vip


# -- measuring -----------------------------------------------------------------------------------
def median_ms(fn: Callable[[], int], runs: int) -> tuple[float, int]:
    fn()  # warm: caches, plans, pages
    times, value = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        value = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), value


def measure(conn: Connection, account: int, vip: int, runs: int) -> dict[str, Any]:
    from qunfa.domain.segments import parse_segment
    from qunfa.storage.segment_sql import count_segment

    cut = NOW - 30 * DAY
    qunfa_ms, got = median_ms(
        lambda: count_segment(conn, parse_segment(SEGMENT), account, NOW), runs
    )
    floor_ms, total = median_ms(
        lambda: int(conn.execute(text("SELECT count(*) FROM contacts")).scalar_one()), runs
    )
    hand_ms, hand = median_ms(
        lambda: int(conn.execute(text(HAND_WRITTEN), {"vip": vip, "cut": cut}).scalar_one()),
        runs,
    )
    if hand != got:
        raise SystemExit(f"disagreement: qunfa counted {got}, the hand-written SQL {hand}")
    return {
        "count": got,
        "contacts": total,
        "qunfa_ms": round(qunfa_ms, 1),
        "floor_count_ms": round(floor_ms, 1),
        "floor_hand_ms": round(hand_ms, 1),
        "ratio_vs_count": round(qunfa_ms / floor_ms, 2),
        "ratio_vs_hand": round(qunfa_ms / hand_ms, 2),
    }


def measure_said(conn: Connection, account: int, runs: int) -> dict[str, Any]:
    """``said(text, 7d)`` counts: qunfa's compiled segment vs a hand-written DISTINCT count."""
    from qunfa.domain.segments import parse_segment
    from qunfa.storage.segment_sql import count_segment

    out: dict[str, Any] = {}
    for segment in SAID:
        word = segment.split('"')[1]

        def ours(segment: str = segment) -> int:  # parse + compile + count, as the API does
            return count_segment(conn, parse_segment(segment), account, NOW)

        def hand(word: str = word) -> int:
            params = {"cut": NOW - 7 * DAY, "pattern": f"%{word}%"}
            return int(conn.execute(text(HAND_SAID), params).scalar_one())

        qunfa_ms, got = median_ms(ours, runs)
        hand_ms, hand_count = median_ms(hand, runs)
        out[segment] = {"count": got, "hand_count": hand_count, "qunfa_ms": round(qunfa_ms, 1),
                        "hand_ms": round(hand_ms, 1)}  # fmt: skip
    return out


def explain_said(conn: Connection, account: int) -> str:
    from sqlalchemy import func, select

    from qunfa.domain.segments import parse_segment
    from qunfa.storage.segment_sql import contacts, segment_predicate

    stmt = (
        select(func.count())
        .select_from(contacts)
        .where(segment_predicate(parse_segment(SAID[0]), account_id=account, now=NOW))
    )
    sql = stmt.compile(conn, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN (COSTS OFF) "
    rows = conn.exec_driver_sql(prefix + str(sql)).all()
    return "\n".join(" | ".join(str(c) for c in r) for r in rows)


def explain(conn: Connection, account: int) -> str:
    from sqlalchemy import func, select

    from qunfa.domain.segments import parse_segment
    from qunfa.storage.segment_sql import contacts, segment_predicate

    stmt = (
        select(func.count())
        .select_from(contacts)
        .where(segment_predicate(parse_segment(SEGMENT), account_id=account, now=NOW))
    )
    sql = stmt.compile(conn, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN (COSTS OFF) "
    rows = conn.exec_driver_sql(prefix + str(sql)).all()
    return "\n".join(" | ".join(str(c) for c in r) for r in rows)


# -- databases -----------------------------------------------------------------------------------
def run(url: str | None, data_dir: Path, n: int, runs: int, messages: int) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings
    from qunfa.storage.bulk import bulk_cache

    c = Container(Settings(data_dir=data_dir, database_url=url))
    c.migrate()
    dialect = c.engine.dialect.name
    t0 = time.perf_counter()
    dropped: list[str] = []
    with c.engine.begin() as conn:
        if dialect == "postgresql":
            # Load without secondary indexes and foreign-key triggers, rebuild after: the
            # usual bulk-load recipe (the bench database is thrown away afterwards).
            conn.exec_driver_sql("SET session_replication_role = replica")
            dropped = [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE tablename IN ('contacts', "
                    "'identities', 'identity_tags', 'contact_tags', 'contact_facts', "
                    "'person_events', 'contact_account_tags') AND indexname LIKE 'ix_%%'"
                )
            ]
            for name in conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename IN ('contacts', "
                "'identities', 'identity_tags', 'contact_tags', 'contact_facts', "
                "'person_events', 'contact_account_tags') AND indexname LIKE 'ix_%%'"
            ).scalars():
                conn.exec_driver_sql(f"DROP INDEX {name}")
        if dialect == "postgresql":
            account, vip = load_pg(conn, n, messages)
        else:
            with bulk_cache(conn, 512):
                account, vip = load(conn, n, messages)
    if dialect == "postgresql":
        with c.engine.begin() as conn:
            conn.exec_driver_sql("SET maintenance_work_mem = '512MB'")
            for ddl in dropped:
                progress(f"rebuilding {ddl.split(' ON ')[0]}")
                conn.exec_driver_sql(ddl)
    with c.engine.begin() as conn:
        progress("ANALYZE")
        conn.exec_driver_sql("ANALYZE")
    build_s = time.perf_counter() - t0
    progress(f"built in {build_s:.0f} s; measuring")
    with c.engine.connect() as conn:
        before = measure(conn, account, vip, runs)
        plan = explain(conn, account)
        said = measure_said(conn, account, runs)
        said_plan = explain_said(conn, account)
    result: dict[str, Any] = {"database": dialect, "build_s": round(build_s, 1), **before}
    result["plan"] = plan
    result["said"] = said
    result["said_plan"] = said_plan
    extra = EXTRA_INDEXES[dialect]
    if extra:
        with c.engine.begin() as conn:
            for ddl in extra:
                progress(ddl)
                conn.exec_driver_sql(ddl)
            conn.exec_driver_sql("ANALYZE")
        with c.engine.connect() as conn:
            result["with_extra_indexes"] = measure(conn, account, vip, runs)
            result["plan_with_extra_indexes"] = explain(conn, account)
    if dialect == "postgresql":
        with c.engine.begin() as conn:
            t1 = time.perf_counter()
            for ddl in TRGM_INDEX:
                progress(ddl)
                conn.exec_driver_sql(ddl)
            conn.exec_driver_sql("ANALYZE person_events")
            result["trgm_build_s"] = round(time.perf_counter() - t1, 1)
        with c.engine.connect() as conn:
            result["said_with_trgm"] = measure_said(conn, account, runs)
            result["said_plan_with_trgm"] = explain_said(conn, account)
    c.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--postgres", action="store_true", help=f"PostgreSQL ({PG_DB}, fresh)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--keep",
        action="store_true",
        help=f"PostgreSQL: leave {PG_DB} in place at the end (for EXPLAIN while iterating; "
        f"drop it yourself: DROP DATABASE {PG_DB})",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.postgres:
            import psycopg

            # SIGTERM (a timeout, kill) unwinds like Ctrl-C, so the finally below drops the
            # database; only SIGKILL leaves it (the next run drops it before creating).
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
                admin.execute(f"CREATE DATABASE {PG_DB}")
            try:
                url = PG_ADMIN.rsplit("/", 1)[0] + f"/{PG_DB}"
                result = run(url, Path(tmp), args.contacts, args.runs, args.messages)
            finally:
                if args.keep:
                    progress(f"--keep: {PG_DB} left in place; drop it when done")
                else:
                    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                        admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        else:
            result = run(None, Path(tmp), args.contacts, args.runs, args.messages)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    db, n = result["database"], result["contacts"]
    print(f"\n{db}: {n:,} contacts (built in {result['build_s']} s)")
    print(f"segment: {SEGMENT}  →  {result['count']:,} contacts")
    for label, r in (("", result), ("with extra indexes: ", result.get("with_extra_indexes"))):
        if r is None:
            continue
        print(
            f"  {label}qunfa count {r['qunfa_ms']} ms | floor count(*) {r['floor_count_ms']} ms"
            f" ({r['ratio_vs_count']}×) | hand-written {r['floor_hand_ms']} ms"
            f" ({r['ratio_vs_hand']}×)"
        )
    for label, said in (("", result["said"]), ("with pg_trgm: ", result.get("said_with_trgm"))):
        for segment, r in (said or {}).items():
            print(
                f"  {label}{segment}: qunfa {r['qunfa_ms']} ms ({r['count']:,}) | hand-written"
                f" {r['hand_ms']} ms ({r['hand_count']:,})"
            )
    if "trgm_build_s" in result:
        print(f"  pg_trgm GIN index built in {result['trgm_build_s']} s")
    print("plan:\n" + result["plan"])
    if "plan_with_extra_indexes" in result:
        print("plan with extra indexes:\n" + result["plan_with_extra_indexes"])
    print("said plan:\n" + result["said_plan"])
    if "said_plan_with_trgm" in result:
        print("said plan with pg_trgm:\n" + result["said_plan_with_trgm"])


if __name__ == "__main__":
    main()
