"""Behaviour rules: value parsing, RFM naming (Python and its SQL CASE), NTILE, layers."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.domain import behaviour as d
from qunfa.services.behaviour import BadField, parse_event, wechat_event_kind

NOW = 1_750_000_000.0


def test_every_score_combination_has_one_name_and_the_sql_case_agrees() -> None:
    db = sqlite3.connect(":memory:")
    case = d.rfm_case_sql("r", "f", "m")
    seen = set()
    for r in range(1, 6):
        for f in range(1, 6):
            for m in range(1, 6):
                name = d.rfm_segment(r, f, m)
                assert name in d.RFM_SEGMENTS
                (sql_name,) = db.execute(
                    f"SELECT {case} FROM (SELECT ? r, ? f, ? m)", (r, f, m)
                ).fetchone()
                assert sql_name == name, (r, f, m)
                seen.add(name)
    assert seen == set(d.RFM_SEGMENTS)  # every rule is reachable
    assert d.rfm_segment(5, 5, 5) == "champions" and d.rfm_segment(1, 1, 1) == "lost"
    assert d.rfm_segment(1, 5, 5) == "cant_lose" and d.rfm_segment(5, 1, 1) == "promising"


@given(st.dictionaries(st.integers(1, 10_000), st.sampled_from([0.0, 1.5, 2.0, 7.25, 100.0])))
def test_ntile_matches_sqlite_ntile_and_fifths(values: dict[int, float]) -> None:
    ours = d.ntile(values)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER, v REAL)")
    db.executemany("INSERT INTO t VALUES (?, ?)", list(values.items()))
    theirs = dict(db.execute("SELECT id, NTILE(5) OVER (ORDER BY v, id) FROM t").fetchall())
    assert ours == theirs
    sizes = [sum(1 for b in ours.values() if b == k) for k in range(1, 6)]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1
    for a in values:  # never a lower bucket for a strictly higher value
        for b in values:
            if values[a] > values[b]:
                assert ours[a] >= ours[b]


@pytest.mark.parametrize(
    ("raw", "device"),
    [("iOS 17.2", "ios"), ("iPhone", "ios"), ("Android 14", "android"), ("HarmonyOS", "android"),
     ("Windows", "other"), ("", None), (None, None)],
)  # fmt: skip
def test_devices_are_normalised(raw: str | None, device: str | None) -> None:
    assert d.normalise_device(raw) == device


def test_times_and_amounts() -> None:
    assert d.parse_time(1_700_000_000) == 1_700_000_000.0
    assert d.parse_time("1700000000123") == pytest.approx(1_700_000_000.123)  # milliseconds
    naive = d.parse_time("2024-05-01 12:00:00")  # China time
    assert naive == datetime(2024, 5, 1, 4, 0, tzinfo=UTC).timestamp()
    assert d.parse_time("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    for bad in ("yesterday", "-5", ""):
        with pytest.raises(ValueError):
            d.parse_time(bad)
    assert d.parse_amount("¥1,280.50") == 1280.5
    assert d.parse_amount("") is None
    with pytest.raises(ValueError):
        d.parse_amount("-3")


def test_parse_event_names_the_bad_field() -> None:
    ok = parse_event({"kind": "Purchase", "phone": "138 0013 8000", "amount": "99", "at": "1"})
    assert ok.kind == "purchase" and ok.id_kind == "phone" and ok.amount == 99.0
    assert ok.id_value is not None and ok.id_value.startswith("+86")
    cases = [
        ({"kind": "purchase", "contact_id": 1, "at": 1}, "amount"),
        ({"kind": "message", "contact_id": 1}, "at"),
        ({"kind": "message", "at": 1}, "contact_id"),
        ({"kind": "bad kind!", "contact_id": 1, "at": 1}, "kind"),
        ({"kind": "message", "email": "nope", "at": 1}, "email"),
        ({"kind": "message", "identity": {"kind": "qq", "value": "1"}, "at": 1}, "identity"),
    ]
    for raw, field in cases:
        with pytest.raises(BadField) as info:
            parse_event(raw)
        assert info.value.field == field


def test_oa_callbacks_map_to_event_kinds() -> None:
    assert wechat_event_kind({"MsgType": "text", "Content": "退款"}) == "message"
    assert wechat_event_kind({"MsgType": "event", "Event": "CLICK"}) == "click"
    assert wechat_event_kind({"MsgType": "event", "Event": "subscribe"}) == "interaction"
    assert wechat_event_kind({"MsgType": "event", "Event": "unsubscribe"}) is None
    assert wechat_event_kind({"MsgType": "event", "Event": "MASSSENDJOBFINISH"}) is None


def _facts(**kw: object) -> d.Facts:
    base: dict[str, object] = {
        "last_interaction_at": None, "interactions_7d": 0, "spend_3m": 0.0, "orders_3m": 0,
        "last_purchase_at": None, "device": None, "converted": False,
    }  # fmt: skip
    base.update(kw)
    return d.Facts(**base)  # type: ignore[arg-type]


def test_layers_have_the_documented_edges() -> None:
    old = NOW - 100 * d.DAY
    assert d.layers_of(None, None, NOW - 3 * d.DAY, old, NOW) == {"new"}
    assert d.layers_of(_facts(converted=True), 2, NOW - 3 * d.DAY, old, NOW) == set()
    assert d.layers_of(None, None, None, NOW - 3 * d.DAY, NOW) == {"new"}  # created, no date
    assert d.layers_of(None, None, None, old, NOW) == {"silent"}
    just = _facts(last_interaction_at=NOW - d.SILENT_AFTER)  # exactly 30 days: not yet
    assert "silent" not in d.layers_of(just, None, None, old, NOW)
    assert "silent" in d.layers_of(
        _facts(last_interaction_at=NOW - d.SILENT_AFTER - 1), None, None, old, NOW
    )
    assert d.layers_of(_facts(last_interaction_at=NOW, device="ios"), 5, None, old, NOW) == {
        "ios", "high_value"
    }  # fmt: skip


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["purchase", "message", "click"]),
            st.integers(-200, 5).map(lambda days: NOW + days * d.DAY),
            st.integers(0, 400).map(lambda q: q / 4),
            st.sampled_from([None, "ios", "android"]),
        ),
        max_size=12,
    )
)
def test_facts_of_reference(events: list[tuple[str, float, float, str | None]]) -> None:
    rows = [
        d.EventRow(i, k, at, amt if k == "purchase" else None, dev)
        for i, (k, at, amt, dev) in enumerate(events)
    ]
    f = d.facts_of(rows, NOW)
    buys = [r for r in rows if r.kind == "purchase"]
    assert f.converted == bool(buys)
    assert f.orders_3m == sum(1 for r in buys if r.at >= NOW - d.WINDOW_3M)
    assert f.interactions_7d <= len(rows)
    assert (f.last_interaction_at is None) == (not rows)
    if f.device is not None:
        assert f.device in {r.device for r in rows}
