"""Behaviour events and facts: ingestion, CSV import, incremental refresh = rebuild, RFM, layers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.crypto.wxbizmsgcrypt import signature
from qunfa.domain import behaviour as d
from qunfa.domain.fields import normaliser
from qunfa.services import behaviour
from qunfa.services.behaviour import EventIn
from qunfa.storage.bulk import insert_rows, insert_rows_returning_ids
from tests.conftest import fast_settings

NOW = 1_750_000_000.0
DAY = d.DAY
FACT_COLS = (
    "contact_id", "last_interaction_at", "interactions_7d", "spend_3m", "orders_3m",
    "last_purchase_at", "device", "converted", "rfm_r", "rfm_f", "rfm_m", "rfm_segment",
)  # fmt: skip


def add_people(
    c: Container,
    n: int,
    *,
    created: float = NOW - 100 * DAY,
    registered: list[float | None] | None = None,
    kind: str = "phone",
    account_id: int | None = None,
) -> list[int]:
    """``n`` contacts with one identity each: phone ``1380000xxxx`` (or ``openid`` ``o<i>``)."""
    ring = c.keyring
    regs = registered or [None] * n
    with c.engine.begin() as conn:
        ids = insert_rows_returning_ids(
            conn, "contacts", ("created_at", "updated_at", "registered_at"),
            [(created, created, regs[i]) for i in range(n)],
        )  # fmt: skip
        values = [_value(kind, cid) for cid in ids]
        insert_rows(
            conn, "identities",
            ("contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
             "updated_at"),
            [(cid, account_id, kind, ring.encrypt(v), ring.blind(v), True, created)
             for cid, v in zip(ids, values, strict=True)],
        )  # fmt: skip
    return ids


def _value(kind: str, cid: int) -> str:
    return str(normaliser("phone")(f"1380000{cid:04d}")) if kind == "phone" else f"o{cid}"


def facts_table(c: Container) -> dict[int, tuple[Any, ...]]:
    with c.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(FACT_COLS)} FROM contact_facts"))
        return {int(r[0]): (r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), *r[8:]) for r in rows}


def reference(c: Container, now: float) -> dict[int, tuple[Any, ...]]:
    """Facts and RFM computed in Python from the stored events (domain.behaviour)."""
    with c.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT contact_id, id, kind, at, amount, device FROM person_events")
        ).all()
    events: dict[int, list[d.EventRow]] = {}
    for cid, eid, kind, at, amount, device in rows:
        events.setdefault(int(cid), []).append(d.EventRow(int(eid), kind, at, amount, device))
    facts = {cid: d.facts_of(evs, now) for cid, evs in events.items()}
    buyers = {cid: f for cid, f in facts.items() if f.last_purchase_at is not None}
    r = d.ntile({cid: f.last_purchase_at or 0.0 for cid, f in buyers.items()})
    fq = d.ntile({cid: float(f.orders_3m) for cid, f in buyers.items()})
    m = d.ntile({cid: f.spend_3m for cid, f in buyers.items()})
    out = {}
    for cid, f in facts.items():
        scores: tuple[Any, ...] = (None, None, None, None)
        if cid in buyers:
            scores = (r[cid], fq[cid], m[cid], d.rfm_segment(r[cid], fq[cid], m[cid]))
        out[cid] = (
            f.last_interaction_at, f.interactions_7d, f.spend_3m, f.orders_3m,
            f.last_purchase_at, f.device, f.converted, *scores,
        )  # fmt: skip
    return out


def reset(c: Container) -> None:
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM person_events"))
        conn.execute(text("DELETE FROM contact_facts"))
        conn.execute(text("DELETE FROM meta WHERE key LIKE 'behaviour.%'"))


# -- ingestion ------------------------------------------------------------------------------------
def test_ingest_is_idempotent_and_reports_unknown_people(container: Container) -> None:
    c = container
    ids = add_people(c, 3)
    events = [
        {"kind": "purchase", "phone": f"1380000{ids[0]:04d}", "amount": 50, "at": NOW,
         "dedupe_key": "order-1", "device": "iPhone"},
        {"kind": "purchase", "contact_id": ids[1], "amount": "12.5", "at": NOW,
         "order_id": "order-2"},
        {"kind": "message", "phone": "13999999999", "at": NOW},  # nobody has this phone
        {"kind": "message", "contact_id": 999_999, "at": NOW},
        {"kind": "purchase", "contact_id": ids[2], "at": NOW},  # no amount
    ]  # fmt: skip
    first = c.behaviour.ingest(events)
    assert (first.received, first.inserted, first.duplicates) == (5, 2, 0)
    assert [(p.index, p.field) for p in first.unknown] == [(3, "contact_id"), (2, "phone")] or [
        (p.index, p.field) for p in first.unknown
    ] == [(2, "phone"), (3, "contact_id")]
    assert [(p.index, p.field) for p in first.invalid] == [(4, "amount")]
    again = c.behaviour.ingest(events[:2])
    assert (again.inserted, again.duplicates) == (0, 2)
    with c.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM person_events")).scalar()
        plain = conn.execute(text("SELECT count(*) FROM person_events WHERE text LIKE '%1380%'"))
        assert plain.scalar() == 0
    assert stored == 2


def test_csv_import_writes_an_errors_file(container: Container, tmp_path: Path) -> None:
    c = container
    ids = add_people(c, 2)
    f = tmp_path / "orders.csv"
    f.write_text(
        "order_id,phone,amount,at,device\n"
        f"A1,1380000{ids[0]:04d},128.50,2024-05-01 12:00:00,iOS 17\n"
        f"A2,1380000{ids[1]:04d},¥30,1714536000,Android\n"
        "A3,13999999999,10,1714536000,\n"
        f"A4,1380000{ids[0]:04d},lots,1714536000,\n"
        f"A5,1380000{ids[0]:04d},5,someday,\n"
        "A6,not-a-phone,5,1714536000,\n",
        encoding="utf-8",
    )
    seen: list[int] = []
    r = c.behaviour.import_csv(f, kind="purchase", progress=lambda _w, n, _t: seen.append(n))
    assert (r.rows, r.inserted, r.unknown, r.invalid) == (6, 2, 1, 3)
    assert seen and seen[-1] == 6
    assert r.errors_file is not None
    lines = r.errors_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "row,column,value,reason"
    by_row = {line.split(",")[0]: line for line in lines[1:]}
    assert set(by_row) == {"4", "5", "6", "7"}
    assert by_row["4"].startswith("4,phone,13999999999,no contact")
    assert by_row["5"].startswith("5,amount,lots,")
    assert by_row["6"].startswith("6,at,someday,")
    assert by_row["7"].startswith("7,phone,not-a-phone,")
    again = c.behaviour.import_csv(f, kind="purchase")
    assert (again.inserted, again.duplicates) == (0, 2)  # order ids dedupe


def test_post_events_over_rest(container: Container) -> None:
    ids = add_people(container, 1)
    with TestClient(create_app(container)) as client:
        body = [
            {"kind": "purchase", "contact_id": ids[0], "amount": 9.9, "at": NOW,
             "dedupe_key": "p1"},
            {"kind": "click", "email": "nobody@example.com", "at": NOW},
        ]  # fmt: skip
        r = client.post("/api/events", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["inserted"] == 1 and out["unknown"][0]["index"] == 1
        assert client.post("/api/events", json=body[:1]).json()["duplicates"] == 1
        container.behaviour.refresh(now=NOW + 60)
        facts = client.get(f"/api/contacts/{ids[0]}/facts").json()
        assert facts["facts"]["spend_3m"] == 9.9 and facts["facts"]["converted"] is True


# -- facts -----------------------------------------------------------------------------------------
def test_facts_and_windows_after_refresh(container: Container) -> None:
    c = container
    a, b = add_people(c, 2)
    c.behaviour.ingest(
        [
            {"kind": "message", "contact_id": a, "at": NOW - 1 * DAY, "device": "android"},
            {"kind": "click", "contact_id": a, "at": NOW - 8 * DAY, "device": "ios"},
            {"kind": "purchase", "contact_id": a, "at": NOW - 10 * DAY, "amount": 100},
            {"kind": "purchase", "contact_id": a, "at": NOW - 100 * DAY, "amount": 999},
            {"kind": "purchase", "contact_id": b, "at": NOW - 2 * DAY, "amount": 5},
        ]
    )
    r = c.behaviour.refresh(now=NOW)
    assert r.mode == "rebuild" and r.contacts == 2  # the first refresh starts the watermark
    fa = c.behaviour.facts(a)
    assert fa is not None
    assert fa["last_interaction_at"] == NOW - DAY and fa["interactions_7d"] == 1
    assert (fa["spend_3m"], fa["orders_3m"]) == (100.0, 1)
    assert fa["device"] == "android" and fa["converted"] is True
    # Eight days later the message left the 7-day window and nothing new arrived.
    later = c.behaviour.refresh(now=NOW + 8 * DAY)
    assert later.mode == "incremental" and later.contacts == 2
    fa = c.behaviour.facts(a)
    assert fa is not None and fa["interactions_7d"] == 0
    assert facts_table(c) == reference(c, NOW + 8 * DAY)
    quiet = c.behaviour.refresh(now=NOW + 8 * DAY + 60)
    assert (quiet.contacts, quiet.rfm) == (0, 0)  # nothing changed: nothing written


def _ops() -> st.SearchStrategy[list[tuple[str, Any]]]:
    event = st.tuples(
        st.integers(0, 7),  # which person
        st.sampled_from(["purchase", "message", "click"]),
        st.sampled_from([-120, -91, -90, -89, -31, -8, -7, -6, -1, 0, 1]).map(lambda x: x * DAY),
        st.sampled_from([-1.0, 0.0, 1.0]),  # right on a window edge, or either side
        st.integers(0, 40).map(lambda q: q / 4),
        st.sampled_from([None, "ios", "android"]),
        st.sampled_from([None, None, "k1", "k2", "k3"]),
    )
    batch = st.lists(event, min_size=1, max_size=6).map(lambda evs: ("batch", evs))
    advance = st.sampled_from([0.0, 1.0, 3600.0, 3 * DAY, 7 * DAY, 30 * DAY, 91 * DAY]).map(
        lambda s: ("advance", s)
    )
    return st.lists(st.one_of(batch, advance, st.just(("refresh", None))), max_size=14)


def run_ops(c: Container, people: list[int], ops: list[tuple[str, Any]]) -> None:
    """Apply batches and clock advances, refreshing incrementally; compare with the reference."""
    now = NOW
    c.behaviour.clock = lambda: now  # received_at and the refresh's scan follow the clock
    for op, arg in ops:
        if op == "advance":
            now += arg
        elif op == "batch":
            evs = []
            for who, kind, offset, edge, amount, device, key in arg:
                evs.append(
                    EventIn(
                        kind=kind, at=now + offset + edge, contact_id=people[who],
                        amount=amount if kind == "purchase" else None, device=device,
                        dedupe_key=key,
                    )
                )  # fmt: skip
            c.behaviour.ingest_parsed(evs)
        c.behaviour.refresh(now=now)
        assert facts_table(c) == reference(c, now), (op, now)
    incremental = facts_table(c)
    c.behaviour.rebuild(now=now)
    assert facts_table(c) == incremental


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops())
def test_incremental_refresh_equals_a_full_recompute(
    container: Container, ops: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the received-at overlap (a PostgreSQL concurrency guard that re-reads the last
    # few minutes) only the window arithmetic and the id watermark find what changed.
    monkeypatch.setattr(behaviour, "RECEIVED_OVERLAP", 0.0)
    people = getattr(container, "_people", None) or add_people(container, 8)
    container._people = people  # type: ignore[attr-defined]
    reset(container)
    run_ops(container, people, ops)


def test_quintiles_and_layers(container: Container) -> None:
    c = container
    n = 23
    people = add_people(
        c, n, registered=[NOW - 2 * DAY if i < 3 else NOW - 200 * DAY for i in range(n)]
    )
    rng = random.Random(7)
    events = []
    for i, cid in enumerate(people[3:]):  # the three newest never bought
        events.append({"kind": "purchase", "contact_id": cid, "amount": 10 * (i + 1),
                       "at": NOW - rng.randint(1, 80) * DAY, "dedupe_key": f"o{cid}",
                       "device": "ios" if i % 2 else "android"})  # fmt: skip
    events.append({"kind": "message", "contact_id": people[0], "at": NOW - DAY})
    c.behaviour.ingest(events)
    c.behaviour.refresh(now=NOW)
    assert facts_table(c) == reference(c, NOW)
    table = facts_table(c)
    by_spend = sorted((row[2], cid) for cid, row in table.items() if row[4] is not None)
    top = {cid for _, cid in by_spend[-4:]}  # 20 buyers: the top fifth is 4 people
    assert set(c.behaviour.layer_members("high_value", now=NOW)) == top
    new = set(c.behaviour.layer_members("new", now=NOW))
    assert new == set(people[:3])  # registered two days ago, never bought
    silent = set(c.behaviour.layer_members("silent", now=NOW))
    assert silent == {cid for cid in people[3:] if table[cid][0] < NOW - 30 * DAY}
    assert set(c.behaviour.layer_members("ios", now=NOW)) == {
        cid for cid, row in table.items() if row[5] == "ios"
    }
    assert "new" in c.behaviour.layers(people[0], now=NOW)
    for when in (NOW, NOW + 10 * DAY, NOW + 60 * DAY):
        assert_layers(c, people, when)


def test_cut_rank_is_where_ntile_ends_each_bucket() -> None:
    for n in range(0, 40):
        values = {i: 0.0 for i in range(n)}  # all ties: the id alone orders them
        buckets = d.ntile(values)
        for k in range(1, 5):
            assert sum(1 for b in buckets.values() if b <= k) == behaviour.cut_rank(n, k)


def many_buyers_ops(c: Container, people: list[int], seed: int) -> None:
    """Many buyers with tied values (few distinct amounts), refreshed after each step.

    Every refresh must equal the Python NTILE reference; most must rewrite far fewer RFM rows
    than there are buyers (the cut points moved, the rest of the ranking did not).
    """
    rng = random.Random(seed)
    now = NOW
    c.behaviour.clock = lambda: now
    evs = [
        EventIn("purchase", now - rng.choice([1, 20, 60, 89, 100]) * DAY, contact_id=cid,
                amount=rng.choice([10.0, 20.0, 50.0]))
        for cid in people if rng.random() < 0.8
    ]  # fmt: skip
    c.behaviour.ingest_parsed(evs)
    assert c.behaviour.refresh(now=now).mode == "rebuild"
    assert facts_table(c) == reference(c, now)
    small = 0
    for step in range(12):
        now += rng.choice([60.0, 3600.0, 5 * DAY, 11 * DAY])
        batch = [
            EventIn(rng.choice(["purchase", "message"]), now - rng.choice([0, 1, 30]) * DAY,
                    contact_id=rng.choice(people), amount=rng.choice([10.0, 20.0, 50.0]))
            for _ in range(rng.randint(1, 6))
        ]  # fmt: skip
        c.behaviour.ingest_parsed(batch)
        report = c.behaviour.refresh(now=now)
        assert report.mode == "incremental"
        assert facts_table(c) == reference(c, now), step
        buyers = sum(1 for row in facts_table(c).values() if row[4] is not None)
        small += report.rfm < buyers // 4
    assert small >= 6
    with c.engine.connect() as conn:
        state = behaviour._read_state(conn)
    assert state is not None and state["rfm"]["n"] == sum(
        1 for row in facts_table(c).values() if row[4] is not None
    )
    incremental = facts_table(c)
    c.behaviour.rebuild(now=now)
    assert facts_table(c) == incremental


def test_incremental_rfm_moves_cut_points_exactly(container: Container) -> None:
    many_buyers_ops(container, add_people(container, 300), seed=3)


def test_a_state_without_cut_points_ranks_once_then_goes_incremental(
    container: Container,
) -> None:
    c = container
    people = add_people(c, 30)
    c.behaviour.ingest_parsed(
        [EventIn("purchase", NOW - i * DAY, contact_id=cid, amount=float(i))
         for i, cid in enumerate(people)]
    )  # fmt: skip
    c.behaviour.refresh(now=NOW)
    with c.engine.begin() as conn:  # the state an older qunfa wrote: no "rfm"
        conn.execute(
            text("UPDATE meta SET value = :v WHERE key = :k"),
            {"v": f'{{"event_id": 30, "scanned_at": {NOW}, "now": {NOW}}}', "k": "behaviour.facts"},
        )
    c.behaviour.clock = lambda: NOW + 60
    c.behaviour.ingest_parsed([EventIn("purchase", NOW, contact_id=people[-1], amount=99.0)])
    assert c.behaviour.refresh(now=NOW + 60).rfm > 0
    assert facts_table(c) == reference(c, NOW + 60)
    with c.engine.connect() as conn:
        state = behaviour._read_state(conn)
    assert state is not None and state["rfm"]["n"] == 30


# -- PostgreSQL ------------------------------------------------------------------------------------
@pytest.fixture
def pg_container(tmp_path: Path, pg_url: str) -> Iterator[Container]:
    c = Container(fast_settings(tmp_path / "data", database_url=pg_url))
    c.migrate()
    yield c
    c.close()


def test_postgresql_incremental_equals_rebuild_and_layers(pg_container: Container) -> None:
    c = pg_container
    people = add_people(c, 8, registered=[NOW - DAY, *[None] * 7])
    rng = random.Random(11)
    for _ in range(6):
        reset(c)
        run_ops(c, people, _random_ops(rng))
    for when in (NOW, NOW + 20 * DAY, NOW + 400 * DAY):
        assert_layers(c, people, when)
    again = c.behaviour.ingest_parsed(
        [EventIn("message", NOW, contact_id=people[0], dedupe_key="x")]
    )
    assert (
        c.behaviour.ingest_parsed(
            [EventIn("message", NOW, contact_id=people[0], dedupe_key="x")]
        ).duplicates
        == 1
    )
    assert again.inserted == 1


def test_postgresql_incremental_rfm_moves_cut_points_exactly(pg_container: Container) -> None:
    many_buyers_ops(pg_container, add_people(pg_container, 300), seed=5)


def assert_layers(c: Container, people: list[int], now: float) -> None:
    """Every layer's SQL members equal domain.behaviour.layers_of over the stored facts."""
    table = facts_table(c)
    with c.engine.connect() as conn:
        contacts = {
            int(r[0]): (r[1], r[2])
            for r in conn.execute(text("SELECT id, registered_at, created_at FROM contacts"))
        }
    expected: dict[str, set[int]] = {layer: set() for layer in d.LAYERS}
    for cid in people:
        row = table.get(cid)
        facts = d.Facts(*row[0:7]) if row else None
        for layer in d.layers_of(facts, row[9] if row else None, *contacts[cid], now):
            expected[layer].add(cid)
    for layer in d.LAYERS:
        assert set(c.behaviour.layer_members(layer, now=now)) & set(people) == expected[layer], (
            layer
        )


def _random_ops(rng: random.Random) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for _ in range(10):
        if rng.random() < 0.6:
            ops.append(
                ("batch", [
                    (rng.randrange(8), rng.choice(["purchase", "message", "click"]),
                     rng.choice([-120, -90, -8, -7, -1, 0]) * DAY, rng.choice([-1.0, 0.0, 1.0]),
                     rng.randrange(40) / 4, rng.choice([None, "ios", "android"]),
                     rng.choice([None, "k1", "k2"]))
                    for _ in range(rng.randint(1, 5))
                ])
            )  # fmt: skip
        else:
            ops.append(("advance", rng.choice([1.0, 3 * DAY, 7 * DAY, 31 * DAY, 91 * DAY])))
    return ops


# -- platform events -------------------------------------------------------------------------------
def test_an_oa_text_message_callback_creates_a_message_event(container: Container) -> None:
    c = container
    acc = c.accounts.add(
        channel="wechat_oa", app_id="wxbehaviour01", secret="s", token="tok",
        base_url="http://127.0.0.1:9/wechat",
    )  # fmt: skip
    (cid,) = add_people(c, 1, kind="openid", account_id=acc.id)
    xml = (
        f"<xml><ToUserName>gh_1</ToUserName><FromUserName>o{cid}</FromUserName>"
        "<CreateTime>1750000000</CreateTime><MsgType>text</MsgType>"
        "<Content>我想退款</Content><MsgId>1234567</MsgId></xml>"
    )
    params = {
        "timestamp": "1750000000",
        "nonce": "5",
        "signature": signature("tok", "1750000000", "5"),
    }
    with TestClient(create_app(c)) as client:
        for _ in range(2):  # the platform retries: stored once
            r = client.post("/callbacks/wechat/wxbehaviour01", params=params, content=xml)
            assert r.status_code == 200 and r.text == "success"
    with c.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT contact_id, kind, text, at, channel FROM person_events")
        ).all()
    assert [tuple(r) for r in rows] == [(cid, "message", "我想退款", NOW, "wechat_oa")]
