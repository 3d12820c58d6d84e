"""Planning everyone or a tag one batch per statement (``queries.PLAN_CHUNK_*``).

The planner numbers batches as it always did: batch k holds the k-th run of ``batch size``
subscribed recipients in identity order, pages hold whole batches, and a single-batch mode
(``to_all``) puts everyone in batch 0. Checked across page boundaries (a page of 6 rounds up
to two batches of 4), at an audience that ends exactly on a page, with unsubscribed and
untagged identities in between, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.domain.keys import batch_key
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Batch, Delivery, Identity, IdentityTag, Tag
from tests.conftest import make_oa
from tests.integration.test_consent import plan

TEXT = {"msgtype": "text", "text": {"content": "本周新品上架"}}


@pytest.fixture
def container(container_on_both: Container) -> Container:
    return container_on_both


def audience_ids(c: Container, appid: str, tag: str | None = None) -> list[int]:
    """The subscribed openid identities of the account (with the tag), in id order."""
    with c.sessions() as s:
        q = (
            select(Identity.id)
            .where(
                Identity.account_id == c.accounts.get(appid).id,
                Identity.kind == "openid",
                Identity.subscribed.is_(True),
            )
            .order_by(Identity.id)
        )
        if tag is not None:
            q = q.join(IdentityTag, IdentityTag.identity_id == Identity.id).join(
                Tag, (Tag.id == IdentityTag.tag_id) & (Tag.name == tag)
            )
        return list(s.scalars(q))


def planned(c: Container, cid: int) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    """(identity id → batch number, [(batch number, size, key)]) of a planned campaign."""
    with c.sessions() as s:
        rows = s.execute(
            select(Delivery.identity_id, Delivery.batch_no, Delivery.status).where(
                Delivery.campaign_id == cid
            )
        ).all()
        assert {st for _, _, st in rows} == {"planned"}
        batches = s.execute(
            select(Batch.batch_no, Batch.size, Batch.idempotency_key)
            .where(Batch.campaign_id == cid)
            .order_by(Batch.batch_no)
        ).all()
    return {int(i): int(b) for i, b, _ in rows}, [(int(n), int(z), str(k)) for n, z, k in batches]


def expect(c: Container, cid: int, ids: list[int], size: int) -> None:
    """Runs of ``size`` in id order; a last run of one borrows the previous run's last row
    (mass/send takes at least 2 openids: services/list_minimum.py)."""
    by_identity, batches = planned(c, cid)
    want = {iid: k // size for k, iid in enumerate(ids)}
    sizes = [min(size, len(ids) - k * size) for k in range(-(-len(ids) // size))]
    if len(sizes) > 1 and sizes[-1] == 1:
        want[ids[-2]] = len(sizes) - 1
        sizes[-2:] = [sizes[-2] - 1, 2]
    assert by_identity == want
    uid = c.campaigns.get(cid).uid
    assert batches == [(k, n, batch_key(uid, k)) for k, n in enumerate(sizes)]


def test_batches_are_runs_of_the_batch_size_across_pages(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    c.settings.plan_page_size = 6  # whole batches per page: 8 rows, two batches of 4
    oa = make_oa(admin, c, sandbox.url, followers=30, tags={"VIP": 0.5},
                 qunfa_rules={"mass_max_per_call": 4})  # fmt: skip
    everyone = audience_ids(c, oa.appid)
    with c.sessions() as s:  # holes in the id range: unfollowed people are never planned
        s.execute(
            update(Identity).where(Identity.id.in_(everyone[3:13:3])).values(subscribed=False)
        )
        s.commit()
    ids = audience_ids(c, oa.appid)
    assert len(ids) == 26  # 3 full pages and a part page, the last batch of 2

    def campaign(audience: str, as_list: bool = True) -> int:
        camp = c.campaigns.create(name="群发", channel="wechat_oa", account=oa.appid,
                                  audience=audience, content=TEXT, as_list=as_list)  # fmt: skip
        return int(camp.id)

    listed = campaign("all")
    report = plan(c, listed)
    assert (report.recipients, report.batches) == (26, 7)
    expect(c, listed, ids, 4)

    vip = audience_ids(c, oa.appid, "VIP")
    assert 0 < len(vip) < len(ids)
    tagged = campaign("tag:VIP")
    assert plan(c, tagged).recipients == len(vip)
    expect(c, tagged, vip, 4)

    # The audience ends exactly on a page boundary: no empty batch after it.
    with c.sessions() as s:
        s.execute(update(Identity).where(Identity.id.in_(ids[-2:])).values(subscribed=False))
        s.commit()
    ids = ids[:-2]
    assert len(ids) == 24
    exact = campaign("all")
    assert (plan(c, exact).recipients, c.campaigns.get(exact).batch_count) == (24, 6)
    expect(c, exact, ids, 4)

    # to_all: one platform call for everyone, batch 0, filled in page-sized chunks.
    whole = campaign("all", as_list=False)
    assert c.campaigns.get(whole).mode == "to_all"
    assert plan(c, whole).recipients == 24
    expect(c, whole, ids, 2**31 - 1)
