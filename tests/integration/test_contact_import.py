"""People import (CSV, XLSX), the error report, idempotence, export with audit, and the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import xlsxwriter  # type: ignore[import-untyped]
from python_calamine import CalamineWorkbook
from sqlalchemy import func, select
from typer.testing import CliRunner

from qunfa.bootstrap import Container
from qunfa.services.contacts import ExportError, ImportError_
from qunfa.storage.models import AuditLog, Contact, ContactTag, Identity

ROWS = (
    "手机,邮箱,姓名,城市,性别,生日,标签,会员等级\n"
    "138 0013 8000,a@Example.com,张三,上海,男,1990/1/2,VIP;新客,3\n"
    "13900139000,b@example.com,李四,北京,女,1991年2月3日,VIP,\n"
    "12345,bad-mail,王五,,x,,,\n"  # no usable id: rejected, every bad field reported
    "+86 137-0013-7000,,赵六,广州,unknown,2099-01-01,,\n"  # bad birthday: row kept
)


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every test here on both databases: the PostgreSQL paths (``COPY``, ``= ANY``) too."""
    return container_on_both


def counts(c: Container) -> tuple[int, int, int]:
    with c.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(Contact)).scalar_one(),
            conn.execute(select(func.count()).select_from(Identity)).scalar_one(),
            conn.execute(select(func.count()).select_from(ContactTag)).scalar_one(),
        )


def test_csv_import_keeps_good_rows_and_reports_every_problem(
    container: Container, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(ROWS, encoding="utf-8")
    r = container.contacts.import_file(path)
    assert (r.rows, r.imported, r.new, r.rejected, r.field_errors) == (4, 3, 3, 1, 1)
    assert r.errors_file == tmp_path / "people.csv.errors.csv"
    with r.errors_file.open(encoding="utf-8") as fh:
        errors = list(csv.reader(fh))
    assert errors[0] == ["row", "column", "value", "reason"]
    assert [(e[0], e[1], e[2]) for e in errors[1:]] == [
        ("4", "手机", "12345"), ("4", "邮箱", "bad-mail"), ("4", "性别", "x"),
        ("5", "生日", "2099-01-01"),
    ]  # fmt: skip
    assert "no usable id" in errors[1][3] and "imported without it" in errors[4][3]
    assert counts(container) == (3, 5, 3)
    person = container.people.get(1)
    assert (person.name, person.city, person.gender, person.birthday) == (
        "张三", "上海", "male", "1990-01-02"
    )  # fmt: skip
    assert person.attrs == {"会员等级": "3"} and person.tags == ["VIP", "新客"]
    assert {(i.kind, i.value) for i in person.identities} == {
        ("phone", "+8613800138000"), ("email", "a@example.com")
    }  # fmt: skip
    # PII is never stored in plaintext (the SQLite file as written; on PostgreSQL the columns).
    if container.engine.dialect.name == "sqlite":
        raw = (container.settings.data_dir / "qunfa.db").read_bytes()
    else:
        with container.engine.connect() as conn:
            raw = b"".join(
                bytes(v)
                for v in [
                    *conn.execute(select(Identity.value_enc)).scalars(),
                    *(n for n in conn.execute(select(Contact.name_enc)).scalars() if n),
                ]
            )
        assert raw
    assert b"13800138000" not in raw and "张三".encode() not in raw


def test_reimport_changes_nothing_and_a_matching_row_updates_the_person(
    container: Container, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(ROWS, encoding="utf-8")
    container.contacts.import_file(path)
    before = counts(container)
    with container.engine.connect() as conn:
        stamps = conn.execute(select(Contact.updated_at).order_by(Contact.id)).scalars().all()
    again = container.contacts.import_file(path)
    assert (again.new, again.updated, again.identities_new) == (0, 0, 0)
    assert counts(container) == before
    with container.engine.connect() as conn:
        assert conn.execute(select(Contact.updated_at).order_by(Contact.id)).scalars().all() == (
            stamps
        )
    update = tmp_path / "update.csv"
    update.write_text("phone,city,tags\n+8613900139000,深圳,老客\n", encoding="utf-8")
    r = container.contacts.import_file(update)
    assert (r.new, r.updated) == (0, 1)
    person = container.people.get(2)
    assert person.city == "深圳" and person.name == "李四" and person.tags == ["VIP", "老客"]


def test_xlsx_import_reads_numbers_and_dates_as_text(container: Container, tmp_path: Path) -> None:
    import datetime as dt

    path = tmp_path / "people.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["Mobile", "Name", "Birthday", "Registered", "Level"])
    sheet.write_row(1, 0, [13800138000, "张三", "1990-01-02", "", 3])
    sheet.write_number(2, 0, 13900139000)
    sheet.write_string(2, 1, "李四")
    sheet.write_datetime(
        2, 2, dt.datetime(1991, 2, 3), book.add_format({"num_format": "yyyy-mm-dd"})
    )
    sheet.write_string(2, 3, "2024-05-06 10:00")
    book.close()
    r = container.contacts.import_file(path)
    assert (r.rows, r.new, r.rejected, r.field_errors) == (2, 2, 0, 0)
    second = container.people.get(2)
    assert [i.value for i in second.identities] == ["+8613900139000"]
    assert second.birthday == "1991-02-03" and second.registered_at == pytest.approx(1714960800)
    assert container.people.get(1).attrs == {"Level": "3"}


def test_header_mapping_and_whole_file_problems(container: Container, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("号码,备注\n13800138000,x\n", encoding="utf-8")
    with pytest.raises(ImportError_, match="no id column"):
        container.contacts.import_file(path)
    r = container.contacts.import_file(path, mapping={"号码": "phone", "备注": "-"})
    assert r.new == 1 and container.people.get(1).attrs == {}
    with pytest.raises(ImportError_, match="does not exist"):
        container.contacts.import_file(tmp_path / "missing.csv")


def test_gbk_csv_from_excel_is_read(container: Container, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("手机,姓名\n13800138000,张三\n".encode("gbk"))
    assert container.contacts.import_file(path).new == 1
    assert container.people.get(1).name == "张三"


def test_export_needs_a_reason_streams_decrypted_rows_and_is_audited(
    container: Container, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(ROWS, encoding="utf-8")
    container.contacts.import_file(path)
    with pytest.raises(ExportError, match="needs a reason"):
        container.contacts.export(tmp_path / "x.csv", reason=" ")
    r = container.contacts.export(tmp_path / "all.csv", reason="月度对账", actor="alice")
    with r.path.open(encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert r.rows == 3 == len(rows)
    assert (rows[0]["name"], rows[0]["phone"], rows[0]["tags"]) == ("张三", "+8613800138000",
                                                                     "VIP;新客")  # fmt: skip
    x = container.contacts.export(
        tmp_path / "vip.xlsx", reason="活动名单", segment='tag("VIP")', actor="bob"
    )
    sheet = CalamineWorkbook.from_path(str(x.path)).get_sheet_by_index(0).to_python()
    assert x.rows == 2 and [row[1] for row in sheet[1:]] == ["张三", "李四"]
    with container.sessions() as s:
        audits = list(s.scalars(select(AuditLog).where(AuditLog.action == "contacts.export")))
    assert [(a.actor, a.target, a.detail["rows"], a.detail["reason"]) for a in audits] == [
        ("alice", "all", 3, "月度对账"), ("bob", 'segment:tag("VIP")', 2, "活动名单")
    ]  # fmt: skip
    assert audits[1].detail["file"] == "vip.xlsx" and x.audit_id == audits[1].id
    # The exported file imports back without changes.
    back = container.contacts.import_file(r.path)
    assert (back.new, back.updated, back.identities_new) == (0, 0, 0)


def test_cli_import_show_export_merges(
    container: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qunfa.cli.main import app

    monkeypatch.setenv("QUNFA_DATA_DIR", str(container.settings.data_dir))
    path = tmp_path / "people.csv"
    path.write_text(ROWS, encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(app, ["contacts", "import", str(path), "--map", "会员等级=attrs.level"])
    assert out.exit_code == 0, out.output
    assert "4 rows: 3 imported (3 new people" in out.output and "problems" in out.output
    shown = runner.invoke(app, ["contacts", "show", "1", "--json"])
    assert shown.exit_code == 0 and '"level": "3"' in shown.output
    refused = runner.invoke(app, ["contacts", "export", "--all", "--out", str(tmp_path / "o.csv"),
                                  "--reason", ""])  # fmt: skip
    assert refused.exit_code == 2
    done = runner.invoke(app, ["contacts", "export", "--all", "--out", str(tmp_path / "o.csv"),
                               "--reason", "备份"])  # fmt: skip
    assert done.exit_code == 0 and "3 people written" in done.output.replace("\n", " ")
    merges = runner.invoke(app, ["contacts", "merges", "--json"])
    assert merges.exit_code == 0 and merges.output.strip() == "[]"
    missing = runner.invoke(app, ["contacts", "unmerge", "42"])
    assert missing.exit_code == 2 and "merge 42 does not exist" in missing.output


def test_api_import_show_export_and_merges(container: Container) -> None:
    from fastapi.testclient import TestClient

    from qunfa.api.app import create_app

    client = TestClient(create_app(container))
    r = client.post("/api/contacts/import?filename=p.csv", content=ROWS.encode())
    assert r.status_code == 200 and (r.json()["new"], r.json()["rejected"]) == (3, 1)
    person = client.get("/api/contacts/1").json()
    assert person["name"] == "张三" and person["tags"] == ["VIP", "新客"]
    assert client.get("/api/contacts/99").status_code == 404
    assert client.get("/api/contacts/merges").json() == []
    assert client.post("/api/contacts/merges/7/undo").status_code == 404
    no_reason = client.post("/api/contacts/export", json={"all": True, "reason": ""})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    out = client.post("/api/contacts/export", json={"all": True, "reason": "核对"})
    assert out.status_code == 200 and "张三" in out.content.decode("utf-8-sig")
    assert out.headers["X-Qunfa-Audit-Id"].isdigit()
