"""``qunfa advise`` and ``POST /api/advise`` give the same ranking."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qunfa.api.routers import advise as advise_router
from qunfa.bootstrap import Container
from qunfa.cli.main import app


@pytest.fixture
def client() -> Iterator[TestClient]:
    # The router needs no container: mount it alone so the test does not build a database.
    api = FastAPI()
    api.include_router(advise_router.router)
    with TestClient(api) as tc:
        yield tc


ARGS = ["--audience", "300", "--per-week", "3", "--content", "marketing", "--per-person-data",
        "--budget", "low"]  # fmt: skip


def test_cli_json_and_api_agree(client: TestClient) -> None:
    result = CliRunner().invoke(app, ["advise", *ARGS, "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.output)
    body = {"audience": 300, "per_week": 3, "content": "marketing", "per_person_data": True,
            "budget": "low"}  # fmt: skip
    r = client.post("/api/advise", json=body)
    assert r.status_code == 200, r.text
    api = r.json()
    assert [x["channel"] for x in cli["ranked"]] == [x["channel"] for x in api["ranked"]]
    assert api["scenarios"] == [
        "small_audience", "high_frequency_marketing", "deep_analytics", "low_cost"
    ]  # fmt: skip
    assert api["ranked"][-1]["channel"] == "qq" and api["ranked"][-1]["supported"] is False


def test_cli_table_and_bad_input() -> None:
    ok = CliRunner().invoke(app, ["advise", "--audience", "300", "--content", "notification"])
    assert ok.exit_code == 0 and "personal_wechat" in ok.output and "scenarios:" in ok.output
    bad = CliRunner().invoke(app, ["advise", "--audience", "0"])
    assert bad.exit_code == 2 and "audience" in bad.output


def test_api_validation_and_sms_estimate(client: TestClient) -> None:
    assert client.post("/api/advise", json={"audience": 0}).status_code == 422
    assert client.post("/api/advise", json={"audience": 10, "budget": "free"}).status_code == 422
    r = client.post(
        "/api/advise",
        json={"audience": 1000, "per_week": 2, "sms_price_per_segment": 0.05},
    )
    sms = next(x for x in r.json()["ranked"] if x["channel"] == "sms_aliyun")
    assert any("~100.00 a week" in reason for reason in sms["reasons"])


def test_full_app_serves_advise(container: Container) -> None:
    from qunfa.api.app import create_app

    with TestClient(create_app(container)) as tc:
        r = tc.post("/api/advise", json={"audience": 5000, "per_week": 5, "budget": "high"})
    assert r.status_code == 200 and r.json()["ranked"][0]["channel"] == "wecom_customer"
