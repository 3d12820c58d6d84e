"""The compliance report through the CLI (`qunfa check`) and the API (`POST /api/check`)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.cli.main import app

BAD = "全网最低价！转 发 到朋友圈领红包"


def test_cli_blocks_with_exit_1_and_reports_original_spans() -> None:
    result = CliRunner().invoke(app, ["check", BAD, "--channel", "wechat_oa", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["verdict"] == "block"
    spans = {(f["start"], f["end"]) for f in report["findings"]}
    assert (6, 14) in spans  # "转 发 到朋友圈" as written, spaces and all
    assert BAD[6:14] == "转 发 到朋友圈"


def test_cli_passes_clean_text_with_exit_0() -> None:
    result = CliRunner().invoke(app, ["check", "今天是我们第一次开业，欢迎光临"])
    assert result.exit_code == 0, result.output


def test_cli_needs_a_message() -> None:
    assert CliRunner().invoke(app, ["check"]).exit_code == 2


def test_api_returns_findings_and_verdicts(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        r = client.post("/api/check", json={"text": BAD, "channel": "wechat_oa"})
        assert r.status_code == 200
        body = r.json()
        assert body["verdict"] == "block" and body["findings"]
        finding = body["findings"][0]
        assert {"start", "end", "category", "severity", "suggestion"} <= set(finding)
        bad_channel = client.post("/api/check", json={"text": BAD, "channel": "nope"})
        assert bad_channel.status_code == 422
