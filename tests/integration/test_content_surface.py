"""Content through the entrypoints: `qunfa check` / `POST /api/check` with lint and template
findings, `qunfa materials …`, `/api/materials`, and previews for one contact."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qunfa.api.app import create_app
from qunfa.bootstrap import Container
from qunfa.cli.main import app
from qunfa.content.mediafile import png_header
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Contact
from tests.conftest import make_oa

runner = CliRunner()


def _contact(c: Container, name: str | None, **fields: object) -> int:
    now = time.time()
    with c.sessions() as s:
        row = Contact(
            created_at=now, updated_at=now,
            name_enc=c.keyring.encrypt(name) if name is not None else None, **fields,
        )  # fmt: skip
        s.add(row)
        s.commit()
        return int(row.id)


# -- check ---------------------------------------------------------------------------------------
def test_cli_check_reports_lint_and_template_findings_as_json() -> None:
    text = "{{ nmae }}您好，" + "好" * 80
    result = runner.invoke(
        app, ["check", text, "--channel", "sms_tencent", "--sign-name", "qunfa", "--json"]
    )
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert out["verdict"] == "block" and out["compliance_verdict"] in ("pass", "pass_with_warnings")
    issue = out["template"][0]
    assert (issue["rule_id"], issue["variable"]) == ("template.unknown_variable", "nmae")
    assert "did you mean 'name'" in issue["message"]
    seg = next(f for f in out["lint"] if f["rule_id"] == "sms_tencent.segments")
    assert seg["severity"] == "warn" and seg["measured"] == 2


def test_cli_check_hard_limit_blocks_and_advice_only_warns() -> None:
    over = runner.invoke(app, ["check", "点击" + "好" * 1400, "--channel", "wecom_app", "--json"])
    assert over.exit_code == 1
    out = json.loads(over.output)
    assert out["verdict"] == "block"
    assert "wecom_app.app_text_max_bytes" in {f["rule_id"] for f in out["lint"]}
    advice = runner.invoke(app, ["check", "点击" + "好" * 400, "--channel", "wecom_app", "--json"])
    assert advice.exit_code == 0, advice.output
    assert json.loads(advice.output)["verdict"] == "pass_with_warnings"
    # a campaign variable declared with --var is known
    ok = runner.invoke(app, ["check", "券码 {{ coupon }}，点击领取", "--channel", "sms_aliyun",
                             "--var", "coupon", "--json"])  # fmt: skip
    assert ok.exit_code == 0 and json.loads(ok.output)["template"] == []


def test_cli_check_coloured_output_names_the_rules() -> None:
    result = runner.invoke(
        app, ["check", "你好 {{ name }}", "--channel", "wechat_oa"], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 1
    assert "template.per_person_variable" in result.output
    assert "overall block" in result.output


def test_api_check_includes_lint_and_template(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        r = client.post("/api/check", json={"text": "{{ name }}，点击领取", "channel": "wechat_oa"})
        body = r.json()
        assert r.status_code == 200 and body["verdict"] == "block"
        assert body["template"][0]["rule_id"] == "template.per_person_variable"
        assert body["lint"] == []
        ok = client.post(
            "/api/check", json={"text": "{{ name }}，点击领取", "channel": "sms_tencent"}
        )
        assert ok.json()["verdict"] == "pass" and ok.json()["template"] == []
        typo = client.post(
            "/api/check",
            json={"text": "{{ copon }}", "channel": "email", "variables": ["coupon"]},
        )
        assert "did you mean 'coupon'" in typo.json()["template"][0]["message"]


# -- materials CLI -------------------------------------------------------------------------------
def test_materials_cli_add_version_show_upload_uses_preview(
    container: Container,
    sandbox: EmbeddedSandbox,
    admin: SandboxAdmin,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    monkeypatch.setenv("QUNFA_DATA_DIR", str(container.settings.data_dir))
    oa = make_oa(admin, container, sandbox.url, followers=3, sync=False)
    added = runner.invoke(app, ["materials", "add", "text", "欢迎语", "--text", "{{ name }}，欢迎"])
    assert added.exit_code == 0, added.output
    mid = int(added.output.split()[1])
    v2 = runner.invoke(app, ["materials", "version", str(mid), "--text", "{{ name }}，欢迎回来"])
    assert v2.exit_code == 0 and "v2" in v2.output
    show = runner.invoke(app, ["materials", "show", str(mid), "--version", "1", "--json"])
    assert json.loads(show.output)["body"] == {"default": {"text": "{{ name }}，欢迎"}}
    listed = json.loads(runner.invoke(app, ["materials", "list", "--json"]).output)
    assert [(r["id"], r["version"]) for r in listed] == [(mid, 2)]

    from pathlib import Path

    png = Path(str(tmp_path)) / "poster.png"
    png.write_bytes(png_header(640, 480) + b"\0" * 32)
    img = runner.invoke(app, ["materials", "add", "image", "海报", "--file", str(png)])
    assert img.exit_code == 0 and "640×480" in img.output, img.output
    img_id = int(img.output.split()[1])
    up = runner.invoke(app, ["materials", "upload", str(img_id), "--account", oa.appid])
    assert up.exit_code == 0, up.output
    media_id = up.output.strip().rsplit(" ", 1)[-1]
    shown = json.loads(runner.invoke(app, ["materials", "show", str(img_id), "--json"]).output)
    assert [u["media_id"] for u in shown["uploads"]] == [media_id]
    bad = runner.invoke(app, ["materials", "add", "image", "x", "--text", "no file"])
    assert bad.exit_code == 2 and "needs a file" in bad.output

    who = _contact(container, "李雷", city="杭州")
    pv = runner.invoke(app, ["materials", "preview", "--material", str(mid), "--contact",
                             str(who), "--channel", "sms_tencent", "--json"])  # fmt: skip
    assert pv.exit_code == 0, pv.output
    assert json.loads(pv.output)["content"]["text"] == "李雷，欢迎回来"
    v1 = runner.invoke(app, ["materials", "preview", "--material", str(mid), "--version", "1",
                             "--contact", str(who), "--channel", "sms_tencent"])  # fmt: skip
    assert "李雷，欢迎" in v1.output and "回来" not in v1.output
    refused = runner.invoke(app, ["materials", "preview", "--material", str(mid), "--contact",
                                  str(who), "--channel", "wechat_oa"])  # fmt: skip
    assert refused.exit_code == 2 and "cannot personalise" in refused.output
    uses = runner.invoke(app, ["materials", "uses", str(mid), "--json"])
    assert json.loads(uses.output) == []


# -- preview of a campaign -----------------------------------------------------------------------
def test_campaign_preview_cli_and_api(
    container: Container,
    sandbox: EmbeddedSandbox,
    admin: SandboxAdmin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUNFA_DATA_DIR", str(container.settings.data_dir))
    oa = make_oa(admin, container, sandbox.url, followers=3, sync=False)
    # a template message personalises its data fields
    camp = container.campaigns.create(
        name="会员", channel="wechat_template", account=oa.appid, audience="all",
        content={"template_id": "TPL1", "data": {
            "thing1": "{{ attrs.level }}权益", "name2": "{{ name }}", "time3": "{{ deadline }}"},
            "variables": {"deadline": "12月31日"}},
    )  # fmt: skip
    gold = _contact(container, "韩梅梅", city="上海", attrs={"level": "金卡"})
    nameless = _contact(container, None, attrs={"level": "银卡"})
    out = runner.invoke(
        app, ["campaign", "preview", str(camp.id), "--contact", str(gold), "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)["content"]["data"]
    assert data == {"thing1": "金卡权益", "name2": "韩梅梅", "time3": "12月31日"}
    with TestClient(create_app(container)) as client:
        r = client.get(f"/api/campaigns/{camp.id}/preview", params={"contact": nameless})
        assert r.status_code == 200
        assert r.json()["content"]["data"]["thing1"] == "银卡权益"
        assert r.json()["content"]["data"]["name2"] == ""  # no name: a known, empty field
        assert client.get(f"/api/campaigns/{camp.id}/preview?contact=99999").status_code == 422
        assert client.get("/api/campaigns/99999/preview?contact=1").status_code == 404
    # a contact without the attribute: an error naming it, never a blank
    bare = _contact(container, "无名")
    missing = runner.invoke(app, ["campaign", "preview", str(camp.id), "--contact", str(bare)])
    assert missing.exit_code == 2 and "level" in missing.output


# -- materials REST ------------------------------------------------------------------------------
def test_materials_api_crud_upload_versions_uses(
    container: Container, sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=3, sync=False)
    with TestClient(create_app(container)) as client:
        r = client.post("/api/materials", json={"kind": "text", "title": "t",
                                                "body": {"default": {"text": "你好"}}})  # fmt: skip
        assert r.status_code == 201, r.text
        mid = r.json()["id"]
        assert (
            client.post(
                "/api/materials", json={"kind": "text", "title": "t", "body": {"default": {}}}
            ).status_code
            == 422
        )
        v2 = client.post(
            f"/api/materials/{mid}/versions", json={"body": {"default": {"text": "二"}}}
        )
        assert v2.status_code == 201 and v2.json()["version"] == 2
        versions = client.get(f"/api/materials/{mid}/versions").json()
        assert [v["body"]["default"]["text"] for v in versions] == ["你好", "二"]
        up = client.post(
            "/api/materials/upload",
            files={"file": ("p.png", png_header(800, 1200) + b"\0" * 16, "image/png")},
            data={"kind": "image", "title": "海报"},
        )
        assert up.status_code == 201, up.text
        version = up.json()["version"]
        assert (version["mime"], version["width"], version["height"]) == ("image/png", 800, 1200)
        img = up.json()["id"]
        wrong = client.post(
            "/api/materials/upload",
            files={"file": ("x.png", b"%PDF-1.4 not an image", "image/png")},
            data={"kind": "image", "title": "x"},
        )
        assert wrong.status_code == 422 and "not an image" in wrong.json()["detail"]
        pushed = client.post(f"/api/materials/{img}/push", params={"account": oa.appid})
        assert pushed.status_code == 200, pushed.text
        got = client.get(f"/api/materials/{img}").json()
        assert [u["media_id"] for u in got["uploads"]] == [pushed.json()["media_id"]]
        camp = container.campaigns.create(name="c", channel="wechat_oa", account=oa.appid,
                                          audience="all", content={"material_id": mid})  # fmt: skip
        assert client.get(f"/api/materials/{mid}/uses").json()[0]["campaign_id"] == camp.id
        assert client.get("/api/materials/4242").status_code == 404
        who = _contact(container, "小明")
        pv = client.post("/api/materials/preview", json={
            "contact": who, "channel": "email",
            "content": {"subject": "{{ name }}的账单", "text": "券 {{ coupon }}",
                        "variables": {"coupon": "X9"}}})  # fmt: skip
        assert pv.status_code == 200, pv.text
        assert pv.json()["content"] == {"subject": "小明的账单", "text": "券 X9"}
