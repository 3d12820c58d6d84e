"""`qunfa campaign check ID` prints what a personalised campaign's values hold (docs/review.md).

Through the CLI runner, against the same data directory as the test's container: a value that
holds a term on its own (a city, a name kept masked), and a value that forms a term with the
template's text beside it (a join), each with its variable, value, recipients and the span
underlined — as ANSI underline with colour forced, as a ``^`` line without colour.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from qunfa.bootstrap import Container
from qunfa.cli.main import app
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.integration import test_sms_tencent
from tests.integration.test_personalised_send import TENCENT, import_people
from tests.integration.test_value_check import campaign, set_attrs

runner = CliRunner()
PLAIN = {"NO_COLOR": "1", "COLUMNS": "250"}
COLOUR = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "250"}
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def underlined(output: str) -> list[str]:
    """Per output line, the characters an ANSI underline (SGR 4) is on, in order."""
    lines: list[str] = []
    for line in output.splitlines():
        on, got, pos = False, [], 0
        for m in SGR.finditer(line):
            if on:
                got.append(line[pos : m.start()])
            for p in m.group(1).split(";"):
                if p in ("", "0", "24"):
                    on = False
                elif p == "4":
                    on = True
            pos = m.end()
        lines.append("".join(got))
    return lines


def check(cid: int, env: dict[str, str]) -> Result:
    return runner.invoke(app, ["campaign", "check", str(cid), "--as", "author"], env=env)


@pytest.fixture
def cli_data(container: Container, monkeypatch: pytest.MonkeyPatch) -> Container:
    monkeypatch.setenv("QUNFA_DATA_DIR", str(container.settings.data_dir))
    return container


def test_values_that_hold_a_term_are_printed_masked_with_counts_and_spans(
    cli_data: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    c = cli_data
    app_id = test_sms_tencent.make_account(admin, c, sandbox)
    people = [("+8613900000701", "张三", "全网第一"), ("+8613900000702", "李四", "全网第一")]
    people += [("+8613900000703", "最佳王", "上海")]
    import_people(c, app_id, tmp_path, people)
    cid = campaign(c, app_id, TENCENT)

    out = check(cid, PLAIN)
    assert out.exit_code == 1, out.output  # block: the values block like a text finding
    text = out.output
    assert "personalised values: city (2 distinct), name (3 distinct) over 3 contacts" in text
    assert "values.city  value 全网第一 · 2 recipients" in text
    assert "values.name  value 最** · 1 recipient" in text
    assert "最佳王" not in text  # the whole name never printed
    lines = text.splitlines()
    # The matched spans, marked under the value: 全网第一 (whole), 最佳 of the masked 最**.
    assert lines[lines.index("全网第一") + 1] == "^" * 8
    assert lines[lines.index("最**") + 1] == "^^^"  # 最 (2 cells) and the * in place of 佳
    row = next(line for line in lines if line.startswith("│ 全网第一"))
    assert [cell.strip() for cell in row.split("│")[1:6]] == [
        "全网第一",
        "全网第一",
        "absolute",
        "high",
        "block",
    ]
    assert f"campaign {cid}: block — 4 text field(s), 2 value finding(s) (0 joined" in text
    assert text.count("verdict block on sms_tencent") >= 2

    coloured = check(cid, COLOUR)
    assert coloured.exit_code == 1
    spans = underlined(coloured.output)
    assert "全网第一" in spans and "最*" in spans  # the span itself, underlined
    assert "最佳王" not in coloured.output


def test_a_join_is_printed_with_the_value_bracketed_in_the_template_text(
    cli_data: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    c = cli_data
    app_id = test_sms_tencent.make_account(admin, c, sandbox)
    people = [("+8613900000801", "张三", "第"), ("+8613900000802", "李四", "第")]
    people += [("+8613900000803", "王五", "上海")]
    import_people(c, app_id, tmp_path, people)
    set_attrs(c, [{"tag": "震"}, {"tag": "好"}, {"tag": "好"}])
    content: dict[str, Any] = {
        **TENCENT,
        "params": ["{{ city }}", "{{ attrs.tag }}"],
        "text": "本店{{ city }}一名，{{ attrs.tag }}惊价，回T退订",
    }
    cid = campaign(c, app_id, content)

    out = check(cid, PLAIN)
    assert out.exit_code == 1, out.output
    text = out.output
    lines = text.splitlines()
    heading = "values.city  {{ city }} = 第 · 2 recipients · joined to the template's text in"
    assert f"{heading} text at 2" in text  # the slot's field and the offset of its {{
    # The value bracketed in the joined text; the span 第一 crosses the bracket.
    body = next(line for line in lines if line.startswith("本店[第]一名"))
    assert lines[lines.index(body) + 1] == " " * 5 + "^" * 5  # 本店[ then 第]一
    assert "values.attrs.tag  {{ attrs.tag }} = 震 · 1 recipient" in text
    join = lines.index("一名，[震]惊价，回T退订")  # the window: the slot's text either side
    assert lines[join + 1] == " " * 7 + "^" * 5  # 一名，[ then 震]惊
    rows = [
        [cell.strip() for cell in line.split("│")[1:6]] for line in lines if line.startswith("│")
    ]
    assert ["第一", "第一", "absolute", "high", "block"] in rows
    assert ["震惊", "震惊", "clickbait", "medium", "review"] in rows
    assert "模板中 {{ city }} 两侧的文字" in text  # the suggestion says where to rewrite
    # The verdict line agrees with the worst finding: 第一 blocks an SMS whatever 震惊 says.
    assert f"campaign {cid}: block — 4 text field(s), 2 value finding(s) (2 joined" in text

    coloured = check(cid, COLOUR)
    assert coloured.exit_code == 1
    spans = underlined(coloured.output)
    assert "第]一" in spans and "震]惊" in spans
