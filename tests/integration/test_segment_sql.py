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
from qunfa.storage.models import Account, Contact, Identity, IdentityTag, Tag
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
        for n, (created, updated) in times.items():
            cid = conn.execute(
                insert(contacts)
                .values(created_at=created, updated_at=updated)
                .returning(contacts.c.id)
            ).scalar_one()
            ids[f"c{n}"] = int(cid)
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
    ("last_active_within(7d)", None, {1, 3, 5, 8}),
    ("last_active_within(240h)", None, {1, 3, 4, 5, 8}),  # 10 days: the boundary is included
    ("registered_within(1w)", None, {2, 5}),
    ("registered_within(30d) and not last_active_within(30d)", None, {2}),
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


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('city in ("上海", "北京")', "attribute 'city'"),
        ("age >= 18", "attribute 'age'"),
        ("spend_3m > 100.5", "attribute 'spend_3m'"),
        ('device == "ios"', "attribute 'device'"),
        ('not opted_out("sms")', "function 'opted_out'"),
        ('tag("VIP") and (rfm_segment == "silent" or tag("x"))', "attribute 'rfm_segment'"),
    ],
)
def test_data_that_does_not_exist_yet_is_an_error_not_a_guess(text: str, name: str) -> None:
    with pytest.raises(SegmentError, match=f"{name} is not available yet"):
        compile_segment(parse_segment(text), account_id=None, now=NOW)


def test_every_name_of_the_language_has_an_sql_entry() -> None:
    from qunfa.domain.segments import ATTRIBUTES, FUNCTIONS

    assert set(FUNCTION_SQL) == set(FUNCTIONS)
    assert set(ATTRIBUTE_SQL) == set(ATTRIBUTES)
    assert not any(isinstance(v, Unavailable) for k, v in FUNCTION_SQL.items() if k == "tag")


def test_plugged_in_attributes_compile_comparisons_and_in(
    db: Container, world: dict[str, int]
) -> None:
    """How the next person plugs data in: an attribute bound to a column expression.

    Here ``age`` is bound to the contact's age in days (from ``created_at``) just to exercise
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
    ast = parse_segment('tag("VIP") and last_active_within(30d) and not registered_within(7d)')
    expected = sum(1 for i in range(1, n + 1) if i % 10 == 0 and (i % 90) <= 30 and (i % 400) > 7)
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
