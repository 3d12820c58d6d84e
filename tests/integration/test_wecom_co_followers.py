"""The WeCom customer twin with customers several members follow (``co_follow_share``).

On the platform a customer may be the friend of several staff members: ``batch/get_by_user``
lists them once per (customer, member) with the tags *that* member marked, ``externalcontact/get``
lists every member, and a mass send reaches the customer once, through one member. These tests
read the twin through qunfa's adapter over HTTP, as the sync and the dispatcher do.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from qunfa.bootstrap import Container
from qunfa.channels.wecom_customer import WecomCustomer
from qunfa.sandbox.admin_client import SandboxAdmin, SandboxAdminError
from qunfa.sandbox.server import EmbeddedSandbox, schemas
from qunfa.sandbox.state import State
from qunfa.sandbox.wecom_common import create_corp
from tests.integration.test_wecom_customer import (
    TEXT,
    Corp,
    batch,
    customers,
    make_corp,
    run,
    send,
    settle_until,
)

TAGS = {"客户等级": {"重要客户": 0.4, "普通客户": 0.5}}


@pytest.fixture
def shared(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Corp:
    # A fixed corpid: the follow and tag draws hash it with the seed, so the counts the tests
    # assert are the same every run (a random corpid made them vary around their means).
    return make_corp(admin, container, sandbox.url, corpid="ww0c0f0110ed11a5e", staff=3,
                     customers=40, seed=11, co_follow_share=0.5, tags=TAGS)  # fmt: skip


def follows_by_customer(rows: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
    """external_userid → member → the tag ids that member marked (from batch/get_by_user)."""
    out: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for r in rows:
        member = str(r["userid"])
        assert member not in out[str(r["external_userid"])], "a follow listed twice"
        out[str(r["external_userid"])][member] = set(map(str, r["tag_ids"]))
    return out


def detail(c: Container, corp: Corp, ext: str) -> dict[str, set[str]]:
    """member → tag ids, from ``externalcontact/get``."""

    async def get(a: WecomCustomer) -> dict[str, Any]:
        return await a.api.call_ok("GET", "externalcontact/get", params={"external_userid": ext})

    data = run(get, c, corp)
    return {str(f["userid"]): {str(t["tag_id"]) for t in f["tags"]} for f in data["follow_user"]}


def test_customers_of_several_members_come_once_per_member_with_their_own_tags(
    container: Container, admin: SandboxAdmin, shared: Corp
) -> None:
    c = container
    made = admin.get(f"/_sandbox/wecom/accounts/{shared.corpid}")
    rows = customers(c, shared)  # every member's pages, as the sync reads them
    by_customer = follows_by_customer(rows)
    sizes = Counter(len(m) for m in by_customer.values())
    # 40 customers; about half have a second member and a quarter of those a third.
    assert made["customers"] == len(by_customer) == 40
    assert made["follows"] == len(rows) == sum(s["customers"] for s in made["staff"])
    assert sizes[2] >= 8 and sizes[3] >= 1 and set(sizes) <= {1, 2, 3}
    # Members' marks differ: some customer has a tag from one member only.
    assert any(len({frozenset(t) for t in m.values()}) > 1 for m in by_customer.values())
    for ext in [e for e, m in by_customer.items() if len(m) > 1][:5]:
        assert detail(c, shared, ext) == by_customer[ext]

        async def members(a: WecomCustomer, ext: str = ext) -> list[str]:
            return await a.follow_user_of(ext)

        assert sorted(run(members, c, shared)) == sorted(by_customer[ext])


def test_follows_are_deterministic_and_share_zero_is_one_member_each(
    admin: SandboxAdmin, tmp_path: Path
) -> None:
    def made(name: str, **spec: Any) -> list[tuple[Any, ...]]:
        state = State(tmp_path / f"{name}.db", schemas(), clock=lambda: 1.7e9)
        create_corp(state, {"corpid": "wwdet", "staff": 4, "customers": 60, "seed": 5,
                            "tags": TAGS, **spec})  # fmt: skip
        rows = state.db.execute(
            "SELECT f.external_userid, f.userid, f.idx, f.added_at, (SELECT group_concat(tag_id)"
            " FROM (SELECT tag_id FROM wc_follow_tags t WHERE t.corpid = f.corpid AND"
            " t.external_userid = f.external_userid AND t.userid = f.userid ORDER BY tag_id))"
            " FROM wc_follows f ORDER BY f.idx, f.userid"
        ).fetchall()
        state.close()
        return rows

    shared = made("a", co_follow_share=0.6, max_follow_users=3)
    assert made("b", co_follow_share=0.6, max_follow_users=3) == shared
    per_customer = Counter(r[2] for r in shared)
    assert max(per_customer.values()) == 3 and len(per_customer) == 60
    # Members follow in turn from the customer's own (i mod staff), never one twice.
    for i, n in per_customer.items():
        assert sorted(r[1] for r in shared if r[2] == i) == sorted(
            f"staff{(i + k) % 4:05d}" for k in range(n)
        )
    plain = made("c")
    assert [(r[1], r[2]) for r in plain] == [(f"staff{i % 4:05d}", i) for i in range(60)]
    # The first member's follow keeps its draws (added time, tags) whatever the share.
    first = {(r[0], r[1]): r for r in shared}
    assert all(first[(r[0], r[1])] == r for r in plain if (r[0], r[1]) in first)
    with pytest.raises(SandboxAdminError, match="co_follow_share"):
        admin.create_account("wecom", corpid="wwbad", staff=3, customers=4, co_follow_share=2)


def test_mass_send_reaches_a_shared_customer_once_through_one_member(
    container: Container, admin: SandboxAdmin, shared: Corp
) -> None:
    c = container
    by_customer = follows_by_customer(customers(c, shared))
    targets = sorted(by_customer)
    out = send(c, shared, batch(targets))
    assert out.accepted and out.platform_msg_id and not out.recipient_failures
    result = settle_until(c, shared, out.platform_msg_id, lambda s: s.final)
    assert result.counts["sent"] == 40
    ledger = admin.ledger("wecom_customer", shared.corpid)
    assert ledger["messages"] == 40 and ledger["max_per_recipient"] == 1
    # With a sender, only the sender's customers: one co-followed elsewhere is in fail_list.
    mine = [e for e, m in by_customer.items() if "staff00001" in m]
    other = [e for e, m in by_customer.items() if "staff00001" not in m][:2]
    content = {**TEXT, "sender": "staff00001"}
    out = send(c, shared, batch([*mine, *other], key="qf-wc-1", content=content))
    assert out.accepted and set(out.recipient_failures) == set(other)
    result = settle_until(c, shared, str(out.platform_msg_id), lambda s: s.final)
    assert result.counts["sent"] == len(mine)
    assert admin.ledger("wecom_customer", shared.corpid)["messages"] == 40 + len(mine)


def test_marks_and_deletions_are_per_member(
    container: Container, admin: SandboxAdmin, shared: Corp
) -> None:
    c = container
    by_customer = follows_by_customer(customers(c, shared))
    tag_ids = {str(t["id"]) for g in run(lambda w: w.corp_tags(), c, shared) for t in g["tag"]}
    # A customer with two members where the second has not marked every tag (the draw can
    # give a member all of them).
    ext, members = next(
        (e, m) for e, m in by_customer.items() if len(m) == 2 and tag_ids - m[sorted(m)[1]]
    )
    a, b = sorted(members)
    tag = sorted(tag_ids - members[b])[0]  # a tag b has not marked
    run(lambda w: w.mark_tag(b, ext, [tag], []), c, shared)
    now = detail(c, shared, ext)
    assert now[b] == members[b] | {tag} and now[a] == members[a]  # a's marks untouched
    # Deleting needs the member when several follow; the other friendship stays.
    url = f"/_sandbox/wecom/accounts/{shared.corpid}/delete_customer"
    with pytest.raises(SandboxAdminError, match="give the userid"):
        admin.post(url, {"external_userid": ext})
    gone = admin.post(url, {"external_userid": ext, "userid": a})
    assert gone["userid"] == a and gone["still_followed_by"] == [b]
    assert set(detail(c, shared, ext)) == {b}
    assert ext not in follows_by_customer([r for r in customers(c, shared) if r["userid"] == a])
    made = admin.get(f"/_sandbox/wecom/accounts/{shared.corpid}")
    assert made["customers"] == 40 and made["follows"] == sum(map(len, by_customer.values())) - 1
