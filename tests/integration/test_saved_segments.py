"""Saved segments: service, REST, CLI, and segment audiences planned set-based with a snapshot."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.domain.segments import SegmentError
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.campaigns import CampaignError
from qunfa.services.segments import SegmentServiceError
from qunfa.storage.models import Delivery, Identity, IdentityTag, SegmentSnapshot, Tag
from tests.conftest import drain, make_oa

TEXT = {"msgtype": "text", "text": {"content": "分群测试"}}
SEG = 'tag("VIP") and not tag("上海")'


def _expected(c: Container, account_id: int) -> set[int]:
    """Hand-written: subscribed openids on the account tagged VIP and not 上海."""
    with c.sessions() as s:

        def tagged(name: str) -> set[int]:
            return set(
                s.scalars(
                    select(Identity.contact_id)
                    .join(IdentityTag, IdentityTag.identity_id == Identity.id)
                    .join(Tag, Tag.id == IdentityTag.tag_id)
                    .where(Tag.name == name, Tag.account_id == account_id)
                )
            )

        people = tagged("VIP") - tagged("上海")
        return set(
            s.scalars(
                select(Identity.id).where(
                    Identity.account_id == account_id,
                    Identity.kind == "openid",
                    Identity.subscribed.is_(True),
                    Identity.contact_id.in_(people),
                )
            )
        )


def test_service_create_validate_preview_update_delete(container: Container) -> None:
    segs = container.segments
    with pytest.raises(SegmentError) as info:
        segs.create(name="bad", expression='tag("VIP") and cty == "上海"')
    assert info.value.column == 16 and "did you mean 'city'" in str(info.value)
    seg = segs.create(name="vip", expression=SEG, description="VIP outside 上海")
    assert segs.get("vip").id == seg.id == segs.get(seg.id).id
    with pytest.raises(SegmentServiceError, match="already exists"):
        segs.create(name="vip", expression=SEG)
    from_json = segs.create(name="ios", expression={"and": [{"layer": "ios"}, {"tag": "VIP"}]})
    assert from_json.expression == 'layer("ios") and tag("VIP")'
    p = segs.preview(segment="vip")
    assert p.count == 0 and p.sample == []
    segs.update("vip", expression='said("退款", 7d)')
    assert segs.get("vip").expression == 'said("退款", 7d)'
    segs.delete("vip")
    with pytest.raises(SegmentServiceError, match="no saved segment"):
        segs.get("vip")
    assert [s.name for s in segs.all()] == ["ios"]


def test_api_preview_points_at_the_error_and_crud_works(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        r = client.post(
            "/api/segments/preview", json={"expression": 'tag("VIP") and\n  cty == "x"'}
        )
        assert r.status_code == 422
        assert r.json()["detail"]["line"] == 2 and r.json()["detail"]["column"] == 3
        r = client.post(
            "/api/segments/preview", json={"json": {"and": [{"tag": "a"}, {"in": ["cty", ["x"]]}]}}
        )
        assert r.status_code == 422 and r.json()["detail"]["path"] == "$.and[1].in[0]"
        r = client.post("/api/segments/preview", json={"expression": 'layer("silent")'})
        assert r.status_code == 200 and r.json()["count"] == 0
        r = client.post("/api/segments", json={"name": "s", "expression": SEG})
        assert r.status_code == 201
        sid = r.json()["id"]
        assert client.get(f"/api/segments/{sid}").json()["expression"] == SEG
        r = client.put(f"/api/segments/{sid}", json={"description": "d"})
        assert r.status_code == 200 and r.json()["description"] == "d"
        assert [s["name"] for s in client.get("/api/segments").json()] == ["s"]
        assert client.delete(f"/api/segments/{sid}").status_code == 204
        assert client.get(f"/api/segments/{sid}").status_code == 404


def test_cli_create_count_list_delete(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qunfa.cli.main import app

    monkeypatch.setenv("QUNFA_DATA_DIR", str(container.settings.data_dir))
    runner = CliRunner()
    bad = runner.invoke(app, ["segments", "create", "x", 'tag("VIP") && age > 1'])
    assert bad.exit_code == 2 and "use 'and'" in bad.output
    ok = runner.invoke(app, ["segments", "create", "vip", SEG])
    assert ok.exit_code == 0, ok.output
    out = runner.invoke(app, ["segments", "count", "vip", "--json"])
    assert out.exit_code == 0 and '"count": 0' in out.output
    assert "vip" in runner.invoke(app, ["segments", "list"]).output
    assert runner.invoke(app, ["segments", "delete", "vip"]).exit_code == 0


def test_segment_campaign_plans_exactly_the_segment_and_completes_in_list_mode(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=600)
    acc = container.accounts.get(oa.appid)
    container.segments.create(name="vip-not-sh", expression=SEG)
    with pytest.raises(CampaignError, match="no saved segment"):
        container.campaigns.create(
            name="x", channel="wechat_oa", account=oa.appid, audience="segment:nope", content=TEXT
        )
    with pytest.raises(CampaignError, match="column"):
        container.campaigns.create(
            name="x",
            channel="wechat_oa",
            account=oa.appid,
            audience='expr:tag("VIP") and',
            content=TEXT,
        )
    camp = container.campaigns.create(
        name="seg",
        channel="wechat_oa",
        account=oa.appid,
        audience="segment:vip-not-sh",
        content=TEXT,
    )
    assert camp.mode == "list"
    report = container.campaigns.start(camp.id)
    expected = _expected(container, acc.id)
    assert report is not None and report.recipients == len(expected) > 0
    with container.sessions() as s:
        planned = set(
            s.scalars(select(Delivery.identity_id).where(Delivery.campaign_id == camp.id))
        )
        snaps = list(
            s.scalars(select(SegmentSnapshot).where(SegmentSnapshot.campaign_id == camp.id))
        )
    assert planned == expected
    assert len(snaps) == 1
    snap = snaps[0]
    assert snap.expression == SEG and snap.recipient_count == len(expected)
    assert snap.contact_count >= len(expected) and snap.segment_id is not None
    drain(container)
    status = container.campaigns.status(camp.id)
    assert status["state"] in ("sending", "done") and status["deliveries"] == {
        "sent": len(expected)
    }


def test_expr_audience_on_the_oa_is_list_mode(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=300)
    camp = container.campaigns.create(
        name="e", channel="wechat_oa", account=oa.appid, audience='expr:tag("上海")', content=TEXT
    )
    assert camp.mode == "list" and camp.audience == 'expr:tag("上海")'
    report = container.campaigns.start(camp.id)
    assert report is not None and report.recipients > 0
