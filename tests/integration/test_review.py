"""The review workflow and the gate, through the service and the REST API (docs/review.md)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.domain.review import ReviewError
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.campaigns import CampaignError
from qunfa.storage.models import Account, AuditLog, Campaign
from tests.conftest import OA, drain, make_oa

CLEAN = {"msgtype": "text", "text": {"content": "服务升级通知：客服时间延长至 22:00。"}}
BLOCKED = {"msgtype": "text", "text": {"content": "全网最佳的选择，转发到朋友圈领红包"}}
REVIEWED = {"msgtype": "text", "text": {"content": "震惊！会员日提前看"}}  # clickbait: review


@pytest.fixture
def oa(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> OA:
    return make_oa(admin, container, sandbox.url, followers=300, tags={"VIP": 0.5})


def create(c: Container, oa: OA, content: dict[str, Any], audience: str = "tag:VIP") -> int:
    camp = c.campaigns.create(
        name="r", channel="wechat_oa", account=oa.appid, audience=audience,
        content=content, created_by="alice",
    )  # fmt: skip
    return int(camp.id)


def audit(c: Container, cid: int) -> list[str]:
    with c.sessions() as s:
        return list(
            s.scalars(
                select(AuditLog.action)
                .where(AuditLog.target == f"campaign:{cid}")
                .order_by(AuditLog.id)
            )
        )


def sent_all(c: Container, cid: int) -> bool:
    """Every batch reached the platform (a tag send then waits for its job-finish callback)."""
    batches = c.campaigns.status(cid)["batches"]
    return bool(batches) and set(batches) <= {"accepted", "done"}


def set_threshold(c: Container, oa: OA, value: int) -> None:
    with c.sessions() as s:
        acc = s.scalars(select(Account).where(Account.app_id == oa.appid)).one()
        acc.settings = {**(acc.settings or {}), "review_audience_threshold": value}
        s.commit()


def test_clean_small_campaign_is_checked_by_send_and_goes_out(container: Container, oa: OA) -> None:
    cid = create(container, oa, CLEAN)
    container.campaigns.start(cid, actor="alice")
    drain(container)
    camp = container.campaigns.get(cid)
    assert sent_all(container, cid) and camp.checked_hash is not None
    report = camp.check_report
    assert report["verdict"] in ("pass", "pass_with_warnings") and report["counts"]["block"] == 0
    assert all(lf["action"] == "warn" for lf in report["lint"])  # lint advice only warns
    assert audit(container, cid) == ["campaign.check"]


def test_plan_without_a_check_is_refused_with_the_rule(container: Container, oa: OA) -> None:
    cid = create(container, oa, CLEAN)
    with pytest.raises(CampaignError) as exc:
        container.campaigns.plan(cid)
    assert str(exc.value) == (
        f"campaign {cid} has no compliance check of its current content: run "
        f"`qunfa campaign check {cid}` (nothing is planned or sent without a passing check) "
        "[rule gate.check]"
    )
    assert container.campaigns.get(cid).state == "draft"
    container.review.check(cid, "alice")
    assert container.campaigns.plan(cid).recipients > 0


def test_block_finding_refuses_plan_send_and_approval(container: Container, oa: OA) -> None:
    cid = create(container, oa, BLOCKED)
    result = container.review.check(cid, "alice")
    assert result.verdict == "block"
    paths = {f["path"] for f in result.summary["fields"] if f["findings"]}
    assert paths == {"text.content"}
    with pytest.raises(
        CampaignError, match=r"blocked by its compliance check .*\[rule gate.block\]"
    ):
        container.campaigns.start(cid, actor="alice")
    with pytest.raises(ReviewError) as exc:
        container.review.submit(cid, "alice")
    assert exc.value.rule == "gate.block"
    assert container.campaigns.get(cid).state == "draft"
    assert container.queued == []  # type: ignore[attr-defined]


def test_review_finding_needs_approval_by_someone_else(container: Container, oa: OA) -> None:
    cid = create(container, oa, REVIEWED)
    with pytest.raises(CampaignError) as exc:
        container.campaigns.start(cid, actor="alice")
    assert "policy is review" in str(exc.value) and "[rule gate.approval]" in str(exc.value)
    assert "`qunfa campaign submit" in str(exc.value)
    container.review.submit(cid, "alice", "please look")
    with pytest.raises(ReviewError) as own:
        container.review.approve(cid, "alice")
    assert own.value.rule == "review.four_eyes"
    with pytest.raises(CampaignError, match="waiting for it: someone other than alice"):
        container.campaigns.start(cid, actor="alice")
    container.review.approve(cid, "bob", "ok")
    camp = container.campaigns.get(cid)
    assert (camp.review_state, camp.approved_by) == ("approved", "bob")
    assert camp.approved_hash == camp.checked_hash
    container.campaigns.start(cid, actor="alice")
    drain(container)
    assert sent_all(container, cid)
    assert audit(container, cid) == ["campaign.check", "campaign.submit", "campaign.approve"]
    log = container.review.history(cid)
    assert [(r["action"], r["actor"]) for r in log] == [
        ("check", "alice"),
        ("submit", "alice"),
        ("approve", "bob"),
    ]


def test_reject_needs_a_comment_and_blocks_until_resubmitted(container: Container, oa: OA) -> None:
    cid = create(container, oa, REVIEWED)
    container.review.submit(cid, "alice")
    with pytest.raises(ReviewError) as exc:
        container.review.reject(cid, "bob", "  ")
    assert exc.value.rule == "review.comment"
    container.review.reject(cid, "bob", "标题党，请改写")
    with pytest.raises(CampaignError, match="was rejected by bob"):
        container.campaigns.start(cid, actor="alice")
    assert container.review.history(cid)[-1]["comment"] == "标题党，请改写"
    with pytest.raises(ReviewError, match="only a submitted campaign can be approved"):
        container.review.approve(cid, "bob")
    container.review.submit(cid, "alice")
    container.review.approve(cid, "carol")
    assert container.campaigns.get(cid).review_state == "approved"


def test_edit_after_approval_voids_it(container: Container, oa: OA) -> None:
    cid = create(container, oa, REVIEWED)
    container.review.submit(cid, "alice")
    container.review.approve(cid, "bob")
    edited = {"msgtype": "text", "text": {"content": "震惊！会员日提前看（更新）"}}
    container.campaigns.edit_content(cid, edited, "alice")
    camp = container.campaigns.get(cid)
    assert camp.review_state == "none" and camp.approved_hash is None
    assert camp.content == edited
    assert [r["action"] for r in container.review.history(cid)][-2:] == ["edit", "void"]
    assert audit(container, cid)[-2:] == ["campaign.edit", "campaign.void"]
    with pytest.raises(CampaignError, match=r"needs approval .*\[rule gate.approval\]"):
        container.campaigns.start(cid, actor="alice")  # re-checked, still needs approval


def test_audience_threshold_and_account_override(container: Container, oa: OA) -> None:
    cid = create(container, oa, CLEAN, audience="all")
    set_threshold(container, oa, 299)  # 300 followers: one above
    with pytest.raises(CampaignError, match="audience 300 is above the review threshold 299"):
        container.campaigns.start(cid, actor="alice")
    set_threshold(container, oa, 300)
    container.campaigns.start(cid, actor="alice")
    assert container.campaigns.get(cid).state == "sending"


def test_settings_threshold_applies_without_an_override(container: Container, oa: OA) -> None:
    container.settings.review_audience_threshold = 10
    cid = create(container, oa, CLEAN)
    summary = container.review.summary(cid)
    estimate = summary["audience_size"]
    assert summary["threshold"] == 10 and 100 < estimate < 200  # VIP: about half of 300
    with pytest.raises(
        CampaignError, match=f"audience {estimate} is above the review threshold 10"
    ):
        container.campaigns.start(cid, actor="alice")
    container.review.submit(cid, "alice")
    container.review.approve(cid, "bob")
    report = container.campaigns.start(cid, actor="alice")
    assert report.recipients == estimate  # the estimate of a tag audience is exact


def test_dispatcher_refuses_a_batch_after_a_content_change(container: Container, oa: OA) -> None:
    cid = create(container, oa, CLEAN, audience="openids:" + ",".join(_openids(container, oa)))
    container.campaigns.start(cid, actor="alice")
    queued = list(container.queued)  # type: ignore[attr-defined]
    assert queued
    with container.sessions() as s:  # a change behind the workflow's back
        s.execute(update(Campaign).where(Campaign.id == cid).values(content=BLOCKED))
        s.commit()
    assert container.dispatcher.run(queued[0]) == "refused: content changed"
    camp = container.campaigns.get(cid)
    assert camp.state == "paused" and "gate.content_changed" in (camp.last_error or "")
    assert "campaign.gate_refused_batch" in audit(container, cid)
    with pytest.raises(CampaignError, match=r"gate\.block"):
        container.campaigns.start(cid, actor="alice")  # resume re-checks: now blocked


def _openids(c: Container, oa: OA) -> list[str]:
    from qunfa.storage.models import Identity

    with c.sessions() as s:
        rows = s.scalars(select(Identity.value_enc).limit(5)).all()
    return [c.keyring.decrypt(v) for v in rows]


def test_scheduled_campaign_is_started_by_the_sweeper(container: Container, oa: OA) -> None:
    cid = create(container, oa, CLEAN)
    with pytest.raises(ReviewError, match="in the past"):
        container.review.schedule(cid, time.time() - 5, "alice")
    container.review.schedule(cid, time.time() + 3600, "alice")
    assert container.campaigns.get(cid).scheduled_at is not None
    assert container.sweeper.sweep()["scheduled"] == 0  # not yet
    with container.sessions() as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(scheduled_at=time.time() - 1))
        s.commit()
    assert container.sweeper.sweep()["scheduled"] == 1
    camp = container.campaigns.get(cid)
    assert camp.state == "sending" and camp.scheduled_at is None
    assert audit(container, cid) == [
        "campaign.check",
        "campaign.schedule",
        "campaign.scheduled_start",
    ]
    drain(container)
    assert sent_all(container, cid)


def test_scheduling_needs_the_gate_and_an_edit_unschedules(container: Container, oa: OA) -> None:
    cid = create(container, oa, REVIEWED)
    with pytest.raises(CampaignError, match=r"gate\.approval"):
        container.review.schedule(cid, time.time() + 60, "alice")
    container.review.submit(cid, "alice")
    container.review.approve(cid, "bob")
    container.review.schedule(cid, time.time() + 60, "alice")
    container.campaigns.edit_content(cid, REVIEWED | {"text": {"content": "震惊！改"}}, "alice")
    camp = container.campaigns.get(cid)
    assert camp.scheduled_at is None and camp.review_state == "none"


# -- the REST API ---------------------------------------------------------------------------------
def test_review_over_the_api(container: Container, oa: OA) -> None:
    client = TestClient(create_app(container))
    alice, bob = {"X-Qunfa-Actor": "alice"}, {"X-Qunfa-Actor": "bob"}
    body = {"name": "api", "channel": "wechat_oa", "account": oa.appid, "audience": "tag:VIP",
            "content": REVIEWED}  # fmt: skip
    cid = client.post("/api/campaigns", json=body, headers=alice).json()["id"]
    assert container.campaigns.get(cid).created_by == "alice"

    sent = client.post(f"/api/campaigns/{cid}/send", headers=alice)
    assert sent.status_code == 409 and "[rule gate.approval]" in sent.json()["detail"]

    checked = client.post(f"/api/campaigns/{cid}/check", headers=alice).json()
    assert checked["verdict"] == "review" and checked["counts"]["review"] >= 1
    assert checked["fields"][0]["findings"][0]["text"] == "震惊"

    assert client.post(f"/api/campaigns/{cid}/submit", headers=alice).status_code == 200
    own = client.post(f"/api/campaigns/{cid}/approve", headers=alice)
    assert own.status_code == 403 and "review.four_eyes" in own.json()["detail"]
    assert client.post(f"/api/campaigns/{cid}/reject", json={}, headers=bob).status_code == 422
    approved = client.post(f"/api/campaigns/{cid}/approve", json={"comment": "ok"}, headers=bob)
    assert approved.status_code == 200 and approved.json()["review_state"] == "approved"
    assert approved.json()["gate"] is None

    new = {"content": {"msgtype": "text", "text": {"content": "震惊2"}}}
    edited = client.patch(f"/api/campaigns/{cid}", json=new, headers=alice)
    assert edited.status_code == 200 and edited.json()["review_state"] == "none"
    bad = client.patch(
        f"/api/campaigns/{cid}", json={"content": {"msgtype": "nope"}}, headers=alice
    )
    assert bad.status_code == 422

    client.post(f"/api/campaigns/{cid}/submit", headers=alice)
    rejected = client.post(f"/api/campaigns/{cid}/reject", json={"comment": "标题党"}, headers=bob)
    assert rejected.json()["review_state"] == "rejected"
    review = client.get(f"/api/campaigns/{cid}/review").json()
    assert [r["action"] for r in review["log"]] == [
        "check", "check", "submit", "approve", "edit", "void", "check", "submit", "reject",
    ]  # fmt: skip
    assert review["log"][-1]["comment"] == "标题党"
    assert client.get("/api/campaigns/999/review").status_code == 404

    sched = client.post(
        f"/api/campaigns/{cid}/schedule", json={"at": "2099-12-01T20:00:00"}, headers=alice
    )
    assert sched.status_code == 409 and "gate.approval" in sched.json()["detail"]
