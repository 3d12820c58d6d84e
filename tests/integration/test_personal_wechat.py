"""Personal WeChat, assisted-manual: paced batches handed to a person, marks, tracked links.

The sandbox twin plays the person: it creates the friends list (remark names) to import and
records in the ledger what the simulated person sent, so exactly-once is checked as for every
channel. qunfa never drives the WeChat client: ``send_batch`` does no I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from qunfa.api.app import create_app
from qunfa.api.routers.personal_wechat import router
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.channels.base import ContentError, OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.personal_wechat import PersonalWechat
from qunfa.channels.wechat_oa import CHINA
from qunfa.cli.personal import personal_app
from qunfa.rules import load
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.services.campaigns import CampaignError
from qunfa.services.personal import (
    ALERT_THROTTLED,
    CLICK,
    MarkConflict,
    NotFound,
    PersonalError,
    PersonalService,
)
from qunfa.storage.models import Batch, Delivery, Event
from tests.conftest import drain

URL = "https://shop.example/new?from=wx"
TEXT = "老朋友好！新品到店，点这里看看：{link}"
ALL_TODAY = {"batch_max": 50, "daily_pace": 200}  # 50 a batch, 4 batches a day: all due now


def make_account(
    admin: SandboxAdmin,
    c: Container,
    tmp_path: Path,
    *,
    name: str = "小王的微信",
    friends: int = 120,
    rules: dict[str, int] | None = None,
    throttle_after: int | None = None,
) -> list[str]:
    """A simulated person with ``friends`` friends; their remark names imported into qunfa."""
    made = admin.create_account(
        "personal_wechat", account=name, friends=friends, seed=7, throttle_after=throttle_after
    )
    csv_path = tmp_path / f"{name}.csv"
    csv_path.write_text(made["csv"], encoding="utf-8")
    c.accounts.add(
        channel="personal_wechat",
        app_id=name,
        credentials={},
        settings={"rules": rules} if rules else None,
    )
    report = c.contacts.import_csv(name, csv_path, column="remark")
    assert report.imported == friends and report.rejected == 0
    remarks: list[str] = made["remarks"]
    return remarks


def start(c: Container, account: str, content: dict[str, Any] | None = None) -> int:
    camp = c.campaigns.create(
        name="新品通知",
        channel="personal_wechat",
        account=account,
        audience="all",
        content=content or {"text": TEXT, "url": URL},
    )
    c.campaigns.start(camp.id)
    drain(c)
    return int(camp.id)


def batches(c: Container, campaign_id: int) -> list[Batch]:
    with c.sessions() as s:
        return list(
            s.scalars(
                select(Batch).where(Batch.campaign_id == campaign_id).order_by(Batch.batch_no)
            )
        )


def deliveries(c: Container, campaign_id: int) -> dict[str, int]:
    with c.sessions() as s:
        out: dict[str, int] = {}
        for st in s.scalars(select(Delivery.status).where(Delivery.campaign_id == campaign_id)):
            out[st] = out.get(st, 0) + 1
        return out


# -- the adapter ------------------------------------------------------------------------------
def test_batch_size_is_the_smaller_of_one_send_and_one_days_pace() -> None:
    rules = load("personal_wechat")
    assert (rules["batch_max"], rules["daily_pace"], rules["pace_start_hour"]) == (200, 50, 10)
    assert PersonalWechat.batch_size(rules, "manual") == 50
    assert PersonalWechat.batch_size(rules.with_overrides({"daily_pace": 500}), "manual") == 200
    assert PersonalWechat.batch_size(rules.with_overrides({"batch_max": 30}), "manual") == 30
    assert PersonalWechat.daily_pace_rule == "daily_pace" and PersonalWechat.credential_fields == ()
    for rule in rules.rules.values():
        assert rule.source.strip() and len(rule.effective) == 10, rule.name


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ({"url": URL}, "needs content 'text'"),
        ({"text": "x" * 1501}, "at most 1500"),
        ({"text": "hi", "url": "javascript:alert(1)"}, "http(s) link"),
        ({"text": "see {link}"}, "no 'url'"),
        ({"msgtype": "text", "text": {"content": "hi"}}, "only 'text' and 'url'"),
    ],
)
def test_content_is_checked_before_anything_is_planned(
    content: dict[str, Any], error: str, container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    with pytest.raises(ContentError, match=re.escape(error)):
        PersonalWechat.validate_content(content, load("personal_wechat"))
    make_account(admin, container, tmp_path, friends=3)
    with pytest.raises(CampaignError, match=re.escape(error)):
        container.campaigns.create(
            name="x",
            channel="personal_wechat",
            account="小王的微信",
            audience="all",
            content=content,
        )


def test_send_batch_hands_over_without_any_io(container: Container) -> None:
    acc = container.accounts.add(channel="personal_wechat", app_id="离线的微信", credentials={})

    async def run() -> Any:
        async with HttpClient(5.0) as http:  # base_url points nowhere: no call may be made
            adapter = container.accounts.adapter(container.accounts.get(acc.app_id), http)
            out = OutboundBatch("uid", 3, "qf-uid-3", "manual", {"text": "hi"}, ["张伟-上海-0001"])
            return await adapter.send_batch(out)

    outcome = asyncio.run(run())
    assert outcome.accepted and outcome.platform_msg_id == "qf-uid-3" and not outcome.done


# -- pacing and preparation ------------------------------------------------------------------
def test_120_friends_make_three_batches_of_at_most_fifty(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120)
    cid = start(container, "小王的微信")
    rows = batches(container, cid)
    assert [b.size for b in rows] == [50, 50, 20]
    assert rows[0].state == "accepted"  # day 0 is handed over at once
    assert PersonalService(container).due_batches("小王的微信")[0].batch_no == 0


def test_batches_are_paced_fifty_a_day_over_three_days(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120)
    cid = start(container, "小王的微信")
    rows = batches(container, cid)
    assert [b.state for b in rows] == ["accepted", "pending", "pending"]
    assert rows[2].next_attempt_at - rows[1].next_attempt_at == 86400
    assert all(datetime.fromtimestamp(b.next_attempt_at, CHINA).hour == 10 for b in rows[1:])
    days = sorted({datetime.fromtimestamp(b.next_attempt_at, CHINA).date() for b in rows})
    assert len(days) == 3 and (days[2] - days[0]).days == 2
    assert [p.batch_no for p in PersonalService(container).due_batches("小王的微信")] == [0]


def test_prepared_batch_has_copy_ready_text_remarks_and_a_tracked_link(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    remarks = make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    due = PersonalService(container).due_batches("小王的微信")
    assert [(p.batch_no, p.size, len(p.remarks)) for p in due] == [
        (0, 50, 50),
        (1, 50, 50),
        (2, 20, 20),
    ]
    assert sorted(r for p in due for r in p.remarks) == sorted(remarks)  # decrypted, each once
    first = due[0]
    token = hmac.new(container.keyring.blind_key, first.key.encode(), hashlib.sha256).hexdigest()
    assert first.link == f"{container.settings.public_url}/t/{token[:16]}"
    assert first.text == TEXT.replace("{link}", first.link) and URL not in first.text
    assert len({p.link for p in due}) == 3 and first.campaign_id == cid and not first.warnings
    # Without a placeholder the link replaces the literal url, or is appended.
    long_text = "好物推荐 " + "很" * 300 + " " + URL
    cid2 = start(container, "小王的微信", {"text": long_text, "url": URL})
    second = PersonalService(container).due_batches("小王的微信", cid2)[0]
    assert second.link and second.text.endswith(second.link) and URL not in second.text
    assert second.warnings and "300" in second.warnings[0]
    cid3 = start(container, "小王的微信", {"text": "只有文字"})
    third = PersonalService(container).due_batches("小王的微信", cid3)[0]
    assert third.link is None and third.text == "只有文字"


# -- marks ------------------------------------------------------------------------------------
def test_marking_every_batch_sent_finishes_the_campaign(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    due = svc.due_batches("小王的微信")
    for p in due[:2]:
        result = svc.mark(p.batch_id, "sent")
        assert result.changed and result.batch_state == "done"
    assert container.campaigns.get(cid).state == "sending"
    assert [p.batch_no for p in svc.due_batches("小王的微信")] == [2]
    last = svc.mark(due[2].batch_id, "sent", "顺利")
    assert last.campaign_state == "done"
    assert deliveries(container, cid) == {"sent": 120}
    assert {b.platform_status for b in batches(container, cid)} == {"sent"}


def test_failed_batch_fails_its_deliveries_and_the_rest_go_on(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    due = svc.due_batches("小王的微信")
    assert svc.mark(due[1].batch_id, "failed", "手机没电了").batch_state == "failed"
    with container.sessions() as s:
        reasons = set(
            s.scalars(
                select(Delivery.reason).where(Delivery.campaign_id == cid, Delivery.batch_no == 1)
            )
        )
    assert reasons == {"failed (marked by the sender): 手机没电了"}
    assert container.campaigns.get(cid).state == "sending"
    for p in (due[0], due[2]):
        svc.mark(p.batch_id, "sent")
    assert container.campaigns.get(cid).state == "done"
    assert deliveries(container, cid) == {"sent": 70, "failed": 50}


def test_throttled_cancels_the_rest_pauses_the_campaign_and_alerts(
    container: Container, admin: SandboxAdmin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    due = svc.due_batches("小王的微信")
    svc.mark(due[0].batch_id, "sent")
    with caplog.at_level(logging.WARNING, logger="qunfa.personal"):
        result = svc.mark(due[1].batch_id, "throttled", "提示操作频繁")
    assert result.cancelled == 1 and result.campaign_state == "paused"
    states = [(b.state, b.last_errcode) for b in batches(container, cid)]
    assert states == [("done", None), ("failed", "throttled"), ("cancelled", None)]
    assert deliveries(container, cid) == {"sent": 50, "failed": 50, "suppressed": 20}
    camp = container.campaigns.get(cid)
    assert camp.state == "paused" and "throttled" in (camp.last_error or "")
    with container.sessions() as s:
        alerts = list(s.scalars(select(Event).where(Event.kind == ALERT_THROTTLED)))
    assert len(alerts) == 1 and alerts[0].payload["note"] == "提示操作频繁"
    assert alerts[0].payload["account"] == "小王的微信" and alerts[0].batch_id == due[1].batch_id
    assert any("throttled" in r.getMessage() for r in caplog.records)
    assert svc.due_batches("小王的微信") == []  # nothing more is handed out
    with pytest.raises(MarkConflict, match="cancelled"):
        svc.mark(due[2].batch_id, "sent")


def test_marks_are_idempotent_and_conflicts_are_refused(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120)  # default pace: batch 1 not due yet
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    first, pending = batches(container, cid)[0], batches(container, cid)[1]
    assert svc.mark(first.id, "sent").changed
    again = svc.mark(first.id, "sent")
    assert not again.changed and again.batch_state == "done"
    with pytest.raises(MarkConflict, match="already marked 'sent'"):
        svc.mark(first.id, "throttled")
    assert pending.state == "pending"  # tomorrow's batch (daily pace) is not handed over yet
    with pytest.raises(MarkConflict, match="not been handed over"):
        svc.mark(pending.id, "sent")
    with pytest.raises(NotFound):
        svc.mark(99999, "sent")
    with pytest.raises(PersonalError, match="outcome must be"):
        svc.mark(first.id, "done")
    container.accounts.add(
        channel="webhook", app_id="hook", credentials={"url": "http://x", "secret": "s"}
    )
    with pytest.raises(PersonalError, match="not personal_wechat"):
        svc.due_batches("hook")


# -- HTTP and CLI -------------------------------------------------------------------------------
@pytest.fixture
def api(container: Container) -> Iterator[str]:
    app = create_app(container)
    app.include_router(router)
    server = ServerThread(app).start()
    yield server.url
    server.stop()


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    is_json = raw and "json" in headers.get("content-type", "")
    return resp.status, headers, (json.loads(raw) if is_json else raw)


def mark_http(base: str, batch_id: int, outcome: str, note: str | None = None) -> Any:
    body = {"outcome": outcome, "note": note}
    return call(base, "POST", f"/api/personal_wechat/batches/{batch_id}/mark", body)


def test_http_batches_marks_and_tracked_link(
    container: Container, admin: SandboxAdmin, tmp_path: Path, api: str
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    status, _, due = call(api, "GET", f"/api/personal_wechat/{quote('小王的微信')}/batches")
    assert status == 200 and [b["batch_no"] for b in due] == [0, 1, 2]
    assert len(due[0]["remarks"]) == 50 and due[0]["link"] in due[0]["text"]
    bid = due[0]["batch_id"]
    status, _, body = mark_http(api, bid, "sent")
    assert status == 200 and body["changed"] and body["batch_state"] == "done"
    status, _, body = mark_http(api, bid, "sent", note="again")
    assert status == 200 and not body["changed"]
    assert mark_http(api, bid, "failed")[0] == 409
    assert mark_http(api, bid, "sent_ok")[0] == 422
    assert mark_http(api, 99999, "sent")[0] == 404
    assert call(api, "GET", "/api/personal_wechat/nobody/batches")[0] == 404

    path = urlsplit(due[1]["link"]).path
    status, headers, _ = call(api, "GET", path)
    assert status == 302 and headers["location"] == URL
    assert call(api, "GET", "/t/0123456789abcdef")[0] == 404
    assert call(api, "GET", "/t/not-a-token")[0] == 404
    with container.sessions() as s:
        clicks = list(s.scalars(select(Event).where(Event.kind == CLICK)))
    assert len(clicks) == 1 and clicks[0].batch_id == due[1]["batch_id"]
    assert clicks[0].campaign_id == cid


def test_cli_batches_json_and_mark(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=60, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    runner = CliRunner()
    env = {"QUNFA_DATA_DIR": str(container.settings.data_dir), "COLUMNS": "200"}
    out = runner.invoke(personal_app, ["batches", "小王的微信", "--json"], env=env)
    assert out.exit_code == 0, out.output
    due = json.loads(out.stdout)
    assert [len(b["remarks"]) for b in due] == [50, 10]
    shown = runner.invoke(personal_app, ["batches", "小王的微信"], env=env)
    assert shown.exit_code == 0 and due[1]["link"] in shown.stdout
    assert due[1]["remarks"][0] in shown.stdout and "paste this text" in shown.stdout
    for b in due:
        marked = runner.invoke(personal_app, ["mark", str(b["batch_id"]), "sent"], env=env)
        assert marked.exit_code == 0, marked.output
    assert container.campaigns.get(cid).state == "done"
    conflict = runner.invoke(personal_app, ["mark", str(due[0]["batch_id"]), "failed"], env=env)
    assert conflict.exit_code == 2 and "already marked" in conflict.output
    bad = runner.invoke(personal_app, ["mark", str(due[0]["batch_id"]), "maybe"], env=env)
    assert bad.exit_code == 2


# -- the sandbox person, end to end ----------------------------------------------------------
def test_sandbox_person_sends_each_friend_exactly_once(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY)
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    for p in svc.due_batches("小王的微信"):
        body = {"account": "小王的微信", "batch_key": p.key, "remarks": p.remarks}
        answer = admin.post("/_sandbox/personal_wechat/deliver", body)
        assert answer == {"throttled": False, "duplicate": False, "recorded": p.size}
        again = admin.post("/_sandbox/personal_wechat/deliver", body)  # the person re-sends
        assert again["duplicate"] and again["recorded"] == 0
        svc.mark(p.batch_id, "sent")
    assert container.campaigns.get(cid).state == "done"
    ledger = admin.ledger("personal_wechat", "小王的微信")
    assert ledger["messages"] == 120 and ledger["recipients"] == 120
    assert ledger["max_per_recipient"] == 1 and ledger["message_ids"] == 3


def test_sandbox_person_is_throttled_and_the_campaign_stops(
    container: Container, admin: SandboxAdmin, tmp_path: Path
) -> None:
    make_account(admin, container, tmp_path, friends=120, rules=ALL_TODAY, throttle_after=60)
    cid = start(container, "小王的微信")
    svc = PersonalService(container)
    due = svc.due_batches("小王的微信")
    outcomes = []
    for p in due:
        body = {"account": "小王的微信", "batch_key": p.key, "remarks": p.remarks}
        answer = admin.post("/_sandbox/personal_wechat/deliver", body)
        if answer["throttled"]:
            outcomes.append(svc.mark(p.batch_id, "throttled", "操作过于频繁").outcome)
            break
        outcomes.append(svc.mark(p.batch_id, "sent").outcome)
    assert outcomes == ["sent", "throttled"]
    assert container.campaigns.get(cid).state == "paused"
    assert [b.state for b in batches(container, cid)] == ["done", "failed", "cancelled"]
    assert admin.ledger("personal_wechat", "小王的微信")["messages"] == 50  # nothing recorded
    strangers = {"account": "小王的微信", "batch_key": "k", "remarks": ["陌生人"]}
    with pytest.raises(Exception, match="not friends"):
        admin.post("/_sandbox/personal_wechat/deliver", strangers)
    admin.advance_clock(86400)  # a new sandbox day: the simulated client sends again
    body = {"account": "小王的微信", "batch_key": due[2].key, "remarks": due[2].remarks}
    assert admin.post("/_sandbox/personal_wechat/deliver", body)["recorded"] == 20
