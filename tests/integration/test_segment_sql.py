"""Segments compiled to one SQL statement, on SQLite and PostgreSQL, against real rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, Table, event, insert, select

from qunfa.bootstrap import Container
from qunfa.domain.segments import SegmentError, parse_segment
from qunfa.storage.models import Account, Contact, ContactFacts, Identity, IdentityTag, Tag
from qunfa.storage.segment_sql import (
    ATTRIBUTE_SQL,
    FUNCTION_SQL,
    Unavailable,
    compile_segment,
    count_segment,
    segment_identities,
)
from tests.conftest import fast_settings

NOW = 1_750_000_000.0
DAY = 86_400.0

accounts = cast(Table, Account.__table__)
contacts = cast(Table, Contact.__table__)
identities = cast(Table, Identity.__table__)
tags = cast(Table, Tag.__table__)
identity_tags = cast(Table, IdentityTag.__table__)
contact_facts = cast(Table, ContactFacts.__table__)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    c = Container(fast_settings(tmp_path / "data", database_url=url))
    c.migrate()
    yield c
    c.close()


def _account(conn: Any, app_id: str) -> int:
    row = conn.execute(
        insert(accounts)
        .values(
            channel="wechat_oa",
            app_id=app_id,
            name=app_id,
            kind="service",
            base_url="http://sandbox.invalid",
            credentials_enc=b"x",
            settings={},
            created_at=NOW,
        )
        .returning(accounts.c.id)
    )
    return int(row.scalar_one())


_bi = iter(range(1, 10**9))


def _identity(
    conn: Any, contact_id: int, account_id: int | None, kind: str, *, subscribed: bool = True
) -> int:
    row = conn.execute(
        insert(identities)
        .values(
            contact_id=contact_id,
            account_id=account_id,
            kind=kind,
            value_enc=b"enc",
            value_bi=next(_bi).to_bytes(16, "big"),
            subscribed=subscribed,
            updated_at=NOW,
        )
        .returning(identities.c.id)
    )
    return int(row.scalar_one())


@pytest.fixture
def world(db: Container) -> dict[str, int]:
    """Two accounts, eight people.

    "active" is contact_facts.last_interaction_at; c5 and c6 have no facts row (registration
    then counts as their last activity).

    c1  openid@A tagged VIP@A, active 1 day ago, registered 100 days ago
    c2  openid@A tagged VIP@A and 上海@A, active 40 days ago, registered 3 days ago
    c3  openid@B tagged VIP@B (same tag name, other account), active 1 day ago
    c4  openid@A unsubscribed, tagged 上海@A; phone (no account), active 10 days ago
    c5  phone only, registered 1 day ago
    c6  openid@A and unionid@A, nothing else
    c7  no identities at all, registered 200 days ago, active 200 days ago
    c8  openid@A tagged VIP@A on one identity and 上海@A on another
    """
    ids: dict[str, int] = {}
    with db.engine.begin() as conn:
        a = ids["A"] = _account(conn, "wxA")
        b = ids["B"] = _account(conn, "wxB")
        times = {
            1: (NOW - 100 * DAY, NOW - 1 * DAY),
            2: (NOW - 3 * DAY, NOW - 40 * DAY),
            3: (NOW - 50 * DAY, NOW - 1 * DAY),
            4: (NOW - 50 * DAY, NOW - 10 * DAY),
            5: (NOW - 1 * DAY, NOW - 1 * DAY),
            6: (NOW - 60 * DAY, NOW - 60 * DAY),
            7: (NOW - 200 * DAY, NOW - 200 * DAY),
            8: (NOW - 20 * DAY, NOW - 5 * DAY),
        }
        for n, (created, active) in times.items():
            cid = conn.execute(
                insert(contacts).values(created_at=created, updated_at=NOW).returning(contacts.c.id)
            ).scalar_one()
            ids[f"c{n}"] = int(cid)
            if n not in (5, 6):
                conn.execute(
                    insert(contact_facts).values(
                        contact_id=cid, last_interaction_at=active, updated_at=NOW
                    )
                )
        tag_ids = {}
        for account, name in ((a, "VIP"), (a, "上海"), (b, "VIP"), (a, "unused")):
            tag_ids[(account, name)] = conn.execute(
                insert(tags)
                .values(account_id=account, name=name, source="manual", member_count=0)
                .returning(tags.c.id)
            ).scalar_one()

        def tag(identity: int, account: int, name: str) -> None:
            conn.execute(
                insert(identity_tags).values(tag_id=tag_ids[(account, name)], identity_id=identity)
            )

        tag(_identity(conn, ids["c1"], a, "openid"), a, "VIP")
        i2 = _identity(conn, ids["c2"], a, "openid")
        tag(i2, a, "VIP")
        tag(i2, a, "上海")
        tag(_identity(conn, ids["c3"], b, "openid"), b, "VIP")
        tag(_identity(conn, ids["c4"], a, "openid", subscribed=False), a, "上海")
        _identity(conn, ids["c4"], None, "phone")
        _identity(conn, ids["c5"], None, "phone")
        _identity(conn, ids["c6"], a, "openid")
        _identity(conn, ids["c6"], a, "unionid")
        tag(_identity(conn, ids["c8"], a, "openid"), a, "VIP")
        tag(_identity(conn, ids["c8"], a, "unionid"), a, "上海")
    return ids


def _run(db: Container, text: str, account: int | None) -> set[int]:
    stmt = compile_segment(parse_segment(text), account_id=account, now=NOW)
    with db.engine.connect() as conn:
        return {int(r[0]) for r in conn.execute(stmt)}


CASES = [
    ('tag("VIP")', "A", {1, 2, 8}),
    ('tag("VIP")', None, {1, 2, 3, 8}),
    ('tag("VIP")', "B", {3}),
    ('tag("上海")', "A", {2, 4, 8}),
    ('tag("unused")', "A", set()),
    ('tag("nobody has this")', None, set()),
    ('tag("VIP") and tag("上海")', "A", {2, 8}),
    ('tag("VIP") or tag("上海")', "A", {1, 2, 4, 8}),
    ('not tag("VIP")', "A", {3, 4, 5, 6, 7}),
    ('not tag("VIP")', None, {4, 5, 6, 7}),
    ('has_identity("openid")', "A", {1, 2, 6, 8}),  # c4's openid is unsubscribed
    ('has_identity("openid")', None, {1, 2, 3, 6, 8}),
    ('has_identity("phone")', "A", {4, 5}),  # account-less identities count for any account
    ('has_identity("unionid") and not tag("VIP")', "A", {6}),
    # c2 interacted 40 days ago but registered 3 days ago: registering counts as activity
    ("last_active_within(7d)", None, {1, 2, 3, 5, 8}),
    ("last_active_within(240h)", None, {1, 2, 3, 4, 5, 8}),  # 10 days: boundary included
    ("registered_within(1w)", None, {2, 5}),
    ("not last_active_within(30d)", None, {6, 7}),  # c6: no facts, registered 60 days ago
    ('layer("silent")', None, {6, 7}),
    ('layer("new")', None, {2, 5}),  # nobody converted
    ("registered_within(30d) and not last_active_within(2d)", None, {2, 8}),
    ('tag("VIP") and (last_active_within(2d) or registered_within(4d))', "A", {1, 2}),
    ('not (tag("VIP") or tag("上海")) and has_identity("openid")', "A", {6}),
    ('not not tag("VIP")', "A", {1, 2, 8}),
    ("last_active_within(3000w) or not last_active_within(3000w)", None, set(range(1, 9))),
]


@pytest.mark.parametrize(("text", "account", "expected"), CASES)
def test_compiled_segments_select_exactly_the_expected_contacts(
    db: Container, world: dict[str, int], text: str, account: str | None, expected: set[int]
) -> None:
    got = _run(db, text, world[account] if account else None)
    assert got == {world[f"c{n}"] for n in expected}, text


def test_count_matches_the_select(db: Container, world: dict[str, int]) -> None:
    for text, account, expected in CASES:
        ast = parse_segment(text)
        with db.engine.connect() as conn:
            n = count_segment(conn, ast, world[account] if account else None, NOW)
        assert n == len(expected), text


def test_segment_identities_address_the_account(db: Container, world: dict[str, int]) -> None:
    stmt = segment_identities(
        parse_segment('tag("VIP") or has_identity("unionid")'),
        account_id=world["A"],
        kind="openid",
        now=NOW,
    )
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    assert {int(r[1]) for r in rows} == {world[f"c{n}"] for n in (1, 2, 6, 8)}
    assert len(rows) == 4


def test_data_that_does_not_exist_is_an_error_with_the_column_not_a_guess() -> None:
    functions = {**FUNCTION_SQL, "said": Unavailable("message events")}
    attributes = {**ATTRIBUTE_SQL, "device": Unavailable("device facts")}
    ast = parse_segment('tag("VIP") and (said("x", 1d) or tag("y"))')
    with pytest.raises(SegmentError, match="function 'said' is not available yet") as info:
        compile_segment(ast, account_id=None, now=NOW, functions=functions)
    assert info.value.column == 17
    with pytest.raises(SegmentError, match="attribute 'device' is not available yet"):
        compile_segment(
            parse_segment('device == "ios"'), account_id=None, now=NOW, attributes=attributes
        )


def test_every_name_of_the_language_has_an_sql_entry() -> None:
    from qunfa.domain.segments import ATTRIBUTES, FUNCTIONS

    assert set(FUNCTION_SQL) == set(FUNCTIONS)
    assert set(ATTRIBUTE_SQL) == set(ATTRIBUTES)
    # Everything but opted_out (the consent ledger's, plugged in by that work) is real data.
    pending = {
        k for k, v in {**FUNCTION_SQL, **ATTRIBUTE_SQL}.items() if isinstance(v, Unavailable)
    }
    assert pending <= {"opted_out"}


def test_plugged_in_attributes_compile_comparisons_and_in(
    db: Container, world: dict[str, int]
) -> None:
    """How the next person plugs data in: an attribute bound to a column expression.

    Here ``age`` is re-bound to the contact's age in days (from ``created_at``) just to exercise
    comparisons, ``in`` and ``not`` over real SQL on both databases.
    """
    age_days = (NOW - contacts.c.created_at) / DAY
    attributes = {**ATTRIBUTE_SQL, "age": lambda ctx: age_days}
    with db.engine.connect() as conn:

        def run(text: str) -> set[int]:
            stmt = compile_segment(
                parse_segment(text), account_id=None, now=NOW, attributes=attributes
            )
            got = {int(r[0]) for r in conn.execute(stmt)}
            return {n for n in range(1, 9) if world[f"c{n}"] in got}

        assert run("age >= 60") == {1, 6, 7}
        assert run("age < 4") == {2, 5}
        assert run("age == 50") == {3, 4}
        assert run("age != 50 and age <= 20") == {2, 5, 8}
        assert run("age in (1, 3, 200)") == {2, 5, 7}
        assert run('not age in (1, 3, 200) and tag("VIP")') == {1, 3, 8}


def test_compiled_sql_is_one_select_with_bound_parameters() -> None:
    stmt = compile_segment(
        parse_segment('tag("x\'; DROP TABLE contacts; --") and last_active_within(30d)'),
        account_id=7,
        now=NOW,
    )
    compiled = stmt.compile()
    sql = str(compiled)
    assert sql.lstrip().upper().startswith("SELECT")
    assert "DROP" not in sql  # values travel as parameters, never as SQL text
    assert NOW - 30 * DAY in compiled.params.values()
    assert 7 in compiled.params.values()


class _StatementCounter:
    """Counts the SQL statements an engine sends while attached."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: list[str] = []

    def before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> _StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self.before)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self.before)


def test_count_preview_on_100k_contacts_is_one_statement(db: Container) -> None:
    n = 100_000
    with db.engine.begin() as conn:
        account = _account(conn, "wxBig")
        vip = conn.execute(
            insert(tags).values(account_id=account, name="VIP").returning(tags.c.id)
        ).scalar_one()
        conn.execute(
            insert(contacts),
            [
                {"id": i, "created_at": NOW - (i % 400) * DAY, "updated_at": NOW - (i % 90) * DAY}
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(identities),
            [
                {
                    "id": i,
                    "contact_id": i,
                    "account_id": account,
                    "kind": "openid",
                    "value_enc": b"e",
                    "value_bi": i.to_bytes(16, "big"),
                    "subscribed": i % 7 != 0,
                    "updated_at": NOW,
                }
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(identity_tags),
            [{"tag_id": vip, "identity_id": i} for i in range(1, n + 1) if i % 10 == 0],
        )
        conn.execute(
            insert(contact_facts),
            [
                {"contact_id": i, "last_interaction_at": NOW - (i % 90) * DAY, "updated_at": NOW}
                for i in range(1, n + 1)
            ],
        )
    ast = parse_segment('tag("VIP") and last_active_within(30d) and not registered_within(7d)')
    expected = sum(
        1
        for i in range(1, n + 1)
        if i % 10 == 0 and ((i % 90) <= 30 or (i % 400) <= 30) and (i % 400) > 7
    )
    with db.engine.connect() as conn:
        conn.execute(select(1)).all()  # warm the connection outside the counted window
        with _StatementCounter(db.engine) as counter:
            t0 = time.perf_counter()
            got = count_segment(conn, ast, account, NOW)
            elapsed = time.perf_counter() - t0
    print(
        f"\n{db.engine.dialect.name}: 3-clause segment count over {n} contacts = {got} "
        f"in {elapsed * 1000:.1f} ms ({len(counter.seen)} statement)"
    )
    assert got == expected
    assert len(counter.seen) == 1, counter.seen


# --- agreement with a brute-force evaluation ---------------------------------------------------

from datetime import datetime  # noqa: E402

from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qunfa.domain.segments import (  # noqa: E402
    LAYERS,
    And,
    Call,
    Compare,
    Duration,
    In,
    Node,
    Not,
    Or,
)
from qunfa.storage.models import ContactTag, PersonEvent  # noqa: E402
from qunfa.storage.segment_sql import AGE_TIMEZONE  # noqa: E402

contact_tags = cast(Table, ContactTag.__table__)
person_events = cast(Table, PersonEvent.__table__)
CITIES = ["上海", "北京", "广州"]
TEXTS = ["我要退款", "Refund please", "hello", "50% off", "a_b", None]
BIRTHDAYS = ["2007-06-15", "2007-06-16", "2000-02-29", "1990-01-01", "2025-06-15", None]
TAGS = ["VIP", "上海", "own"]


def _random_world(db: Container, seed: int = 7) -> dict[str, Any]:
    """~60 people with random attributes, identities, tags, facts, messages and merges."""
    import random

    rng = random.Random(seed)
    people: list[dict[str, Any]] = []
    with db.engine.begin() as conn:
        a, b = _account(conn, "wxR1"), _account(conn, "wxR2")
        tag_ids = {
            (acc, name): int(
                conn.execute(
                    insert(tags).values(account_id=acc, name=name).returning(tags.c.id)
                ).scalar_one()
            )
            for acc in (a, b, None)
            for name in TAGS
        }
        for _ in range(60):
            reg = NOW - rng.choice([1, 5, 8, 20, 40, 100]) * DAY
            row = {
                "created_at": reg - DAY,
                "updated_at": NOW,
                "city": rng.choice([*CITIES, None]),
                "gender": rng.choice(["male", "female", None]),
                "birthday": rng.choice(BIRTHDAYS),
                "registered_at": rng.choice([reg, None]),
            }
            cid = int(
                conn.execute(insert(contacts).values(**row).returning(contacts.c.id)).scalar_one()
            )
            p: dict[str, Any] = {"id": cid, **row, "merged": False, "idents": [], "own": set()}
            p["facts"] = None
            if rng.random() < 0.7:
                p["facts"] = {
                    "last_interaction_at": rng.choice(
                        [None, NOW - rng.choice([0.5, 3, 10, 45]) * DAY]
                    ),
                    "spend_3m": rng.choice([0.0, 99.5, 300.0]),
                    "device": rng.choice(["ios", "android", None]),
                    "rfm_segment": rng.choice(["high_value", "silent", None]),
                    "rfm_m": rng.choice([1, 5, None]),
                    "converted": rng.random() < 0.3,
                    "interactions_7d": rng.choice([0, 2, 9]),
                }
                conn.execute(
                    insert(contact_facts).values(contact_id=cid, updated_at=NOW, **p["facts"])
                )
            for _ in range(rng.choice([0, 1, 2])):
                acc = rng.choice([a, b, None])
                kind = "phone" if acc is None else rng.choice(["openid", "unionid"])
                sub = rng.random() < 0.8
                iid = _identity(conn, cid, acc, kind, subscribed=sub)
                tagged = {n for n in TAGS if acc is not None and rng.random() < 0.3}
                for n in tagged:
                    conn.execute(
                        insert(identity_tags).values(tag_id=tag_ids[(acc, n)], identity_id=iid)
                    )
                p["idents"].append(
                    {"account": acc, "kind": kind, "subscribed": sub, "tags": tagged}
                )
            for n in TAGS:
                if rng.random() < 0.15:
                    conn.execute(
                        insert(contact_tags).values(tag_id=tag_ids[(None, n)], contact_id=cid)
                    )
                    p["own"].add(n)
            p["events"] = []
            for _ in range(rng.choice([0, 1, 2])):
                ev = {
                    "kind": rng.choice(["message", "click"]),
                    "at": NOW - rng.choice([0.5, 5, 20]) * DAY,
                    "text": rng.choice(TEXTS),
                }
                conn.execute(insert(person_events).values(contact_id=cid, received_at=NOW, **ev))
                p["events"].append(ev)
            people.append(p)
        for p in rng.sample(people, 5):  # merged into someone: gone from every segment
            conn.execute(
                contacts.update()
                .where(contacts.c.id == p["id"])
                .values(merged_into=people[0]["id"])
            )
            p["merged"] = True
    return {"people": people, "A": a, "B": b}


def _age(birthday: str) -> int:
    today = datetime.fromtimestamp(NOW, AGE_TIMEZONE).date()
    y, m, d = (int(x) for x in birthday.split("-"))
    return today.year - y - ((today.month, today.day) < (m, d))


def _value(p: dict[str, Any], attr: str) -> Any:
    if attr in ("city", "province", "gender"):
        return p.get(attr)
    if attr == "age":
        return None if p["birthday"] is None else _age(p["birthday"])
    return None if p["facts"] is None else p["facts"].get(attr)


def _cmp(v: Any, op: str, w: Any) -> bool:
    return bool(
        {"==": v == w, "!=": v != w, "<": v < w, "<=": v <= w, ">": v > w, ">=": v >= w}[op]
    )


def _reg(p: dict[str, Any]) -> float:
    return float(p["registered_at"] if p["registered_at"] is not None else p["created_at"])


def _active(p: dict[str, Any], cut: float) -> bool:
    last = p["facts"] and p["facts"]["last_interaction_at"]
    return bool(last is not None and last and last >= cut) or _reg(p) >= cut


def _eval(node: Node, p: dict[str, Any], account: int | None) -> bool:
    """What the segment means, written out over Python data."""
    if isinstance(node, And):
        return all(_eval(c, p, account) for c in node.operands)
    if isinstance(node, Or):
        return any(_eval(c, p, account) for c in node.operands)
    if isinstance(node, Not):
        return not _eval(node.operand, p, account)
    if isinstance(node, Compare):
        v = _value(p, node.attr)
        return v is not None and _cmp(v, node.op, node.value)
    if isinstance(node, In):
        v = _value(p, node.attr)
        return v is not None and v in node.values
    assert isinstance(node, Call)
    arg = node.args[0]
    if node.name == "tag":
        on_account = any(
            arg in i["tags"] and (account is None or i["account"] == account) for i in p["idents"]
        )
        return on_account or arg in p["own"]
    if node.name == "has_identity":
        return any(
            i["kind"] == arg
            and i["subscribed"]
            and (account is None or i["account"] in (account, None))
            for i in p["idents"]
        )
    if node.name == "last_active_within":
        assert isinstance(arg, Duration)
        return _active(p, NOW - arg.seconds)
    if node.name == "registered_within":
        assert isinstance(arg, Duration)
        return _reg(p) >= NOW - arg.seconds
    if node.name == "said":
        period = node.args[1]
        assert isinstance(arg, str) and isinstance(period, Duration)
        return any(
            e["kind"] == "message"
            and e["at"] >= NOW - period.seconds
            and e["text"] is not None
            and arg.lower() in e["text"].lower()
            for e in p["events"]
        )
    if node.name == "layer":
        f = p["facts"] or {}
        if arg == "new":
            return _reg(p) >= NOW - 7 * DAY and not f.get("converted")
        if arg == "silent":
            return not _active(p, NOW - 30 * DAY)
        if arg == "high_value":
            return f.get("rfm_m") == 5
        return f.get("device") == arg
    raise AssertionError(node)


_periods = st.sampled_from(
    [Duration(12, "h"), Duration(1, "d"), Duration(7, "d"), Duration(30, "d")]
)
_leaves = st.one_of(
    st.builds(Call, st.just("tag"), st.tuples(st.sampled_from([*TAGS, "none"]))),
    st.builds(
        Call, st.just("has_identity"), st.tuples(st.sampled_from(["openid", "unionid", "phone"]))
    ),
    st.builds(Call, st.just("last_active_within"), st.tuples(_periods)),
    st.builds(Call, st.just("registered_within"), st.tuples(_periods)),
    st.builds(
        Call,
        st.just("said"),
        st.tuples(st.sampled_from(["退款", "refund", "REFUND", "%", "_", "o"]), _periods),
    ),
    st.builds(Call, st.just("layer"), st.tuples(st.sampled_from(LAYERS))),
    st.builds(
        Compare,
        st.sampled_from(["city", "gender", "device", "rfm_segment"]),
        st.sampled_from(["==", "!="]),
        st.sampled_from([*CITIES, "male", "ios", "high_value"]),
    ),
    st.builds(
        Compare,
        st.just("age"),
        st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
        st.sampled_from([0, 17, 18, 25, 35]),
    ),
    st.builds(
        Compare,
        st.just("spend_3m"),
        st.sampled_from(["==", "<", ">="]),
        st.sampled_from([0, 99.5, 300]),
    ),
    st.builds(
        Compare,
        st.just("interactions_7d"),
        st.sampled_from(["==", "<", ">="]),
        st.sampled_from([0, 2, 9]),
    ),
    st.builds(
        In, st.just("city"), st.lists(st.sampled_from(CITIES), min_size=1, max_size=2).map(tuple)
    ),
    st.builds(
        In,
        st.just("age"),
        st.lists(st.sampled_from([17, 18, 35, 0]), min_size=1, max_size=3).map(tuple),
    ),
)
_exprs = st.recursive(
    _leaves,
    lambda c: (
        st.builds(Not, c)
        | st.builds(And, st.lists(c, min_size=2, max_size=3).map(tuple))
        | st.builds(Or, st.lists(c, min_size=2, max_size=3).map(tuple))
    ),
    max_leaves=5,
)


def test_compiled_sql_agrees_with_a_brute_force_evaluation(db: Container) -> None:
    world = _random_world(db)
    live = [p for p in world["people"] if not p["merged"]]

    @hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_exprs, st.sampled_from(["A", None]))
    def check(ast: Node, scope: str | None) -> None:
        account = world[scope] if scope else None
        stmt = compile_segment(ast, account_id=account, now=NOW)
        with db.engine.connect() as conn:
            got = {int(r[0]) for r in conn.execute(stmt)}
        expected = {p["id"] for p in live if _eval(ast, p, account)}
        assert got == expected, pretty_text(ast)

    check()


def pretty_text(ast: Node) -> str:
    from qunfa.domain.segments import pretty

    return pretty(ast)
