"""The two-process import (a forked child validates, blind-indexes and encrypts pages while the
parent writes) and the bulk load (first import into SQLite: indexes dropped and rebuilt, rows
resolved in memory) store exactly what the one-process page-by-page import stores: people,
identities, tags, the error report and the counters — over several pages, with bad rows,
repeated ids across pages (merges), names, and a re-import that changes some rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import qunfa.services.contact_bulk as bulk_mod
import qunfa.services.contacts as contacts_mod
from qunfa.bootstrap import Container
from tests.conftest import make_container


def write_file(path: Path, n: int, shift: int = 0) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["phone", "email", "name", "city", "gender", "birthday", "tags"])
        for i in range(n):
            if i % 97 == 5:
                w.writerow(["12345", "bad-mail", f"坏{i}", "", "x", "", ""])  # rejected
                continue
            # Every 50th row repeats an earlier row's e-mail with a new phone (that person
            # gains a phone); every 70th has one earlier row's phone and another's e-mail
            # (merge evidence when they lie on earlier pages). Both cross page boundaries.
            email = f"u{i - 40 if i % 50 == 49 else i - 20 if i % 70 == 69 else i}@example.com"
            phone = f"139{i + shift - (45 if i % 70 == 69 else 0):08d}"
            w.writerow([
                phone, email, f"客户{i % 7}" if i % 3 else "",
                ["上海", "北京", ""][i % 3], ["男", "女", "?"][i % 3],
                "2099-01-01" if i % 89 == 3 else f"1990-01-{1 + i % 28:02d}",
                ["VIP", "新客;VIP", ""][i % 3],
            ])  # fmt: skip


def state(c: Container) -> dict[str, Any]:
    """Everything the import writes, decrypted where encrypted (ciphertexts differ by nonce)."""
    ring = c.keyring
    with c.engine.connect() as conn:
        people = [
            (r.id, ring.decrypt(r.name_enc) if r.name_enc else None, r.city, r.gender,
             r.birthday, r.merged_into)
            for r in conn.execute(text(
                "SELECT id, name_enc, city, gender, birthday, merged_into FROM contacts "
                "ORDER BY id"))
        ]  # fmt: skip
        ids = sorted(
            (r.contact_id, r.kind, ring.decrypt(r.value_enc), bytes(r.value_bi))
            for r in conn.execute(
                text("SELECT contact_id, kind, value_enc, value_bi FROM identities")
            )
        )
        tags = sorted(
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT t.name, ct.contact_id FROM contact_tags ct "
                    "JOIN tags t ON t.id = ct.tag_id"
                )
            )
        )
    return {"people": people, "ids": ids, "tags": tags}


def run_import(
    c: Container, path: Path, pipeline: bool, monkeypatch: pytest.MonkeyPatch, bulk: bool = False
) -> Any:
    monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", 0 if pipeline else None)
    monkeypatch.setattr(bulk_mod, "BULK_BYTES", 0 if bulk else 1 << 62)
    # Several pages from a small file; 730 is not a multiple of 50, so some repeated e-mails
    # (every 50th row repeats row i - 40) lie on the page before.
    monkeypatch.setattr(contacts_mod, "PAGE", 730)
    r = c.contacts.import_file(path)
    report = (r.rows, r.imported, r.new, r.updated, r.rejected, r.field_errors,
              r.identities_new, r.merged)  # fmt: skip
    errors = r.errors_file.read_text(encoding="utf-8") if r.errors_file else None
    return report, errors


def test_pipelined_and_bulk_imports_equal_the_one_process_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_file(first, 3000)
    write_file(second, 3000, shift=7)  # re-import: most phones new, e-mails known
    results = []
    bulk_loads: list[bool] = []
    real_applies = bulk_mod.applies

    def spy(*args: Any) -> Any:
        found = real_applies(*args)
        bulk_loads.append(found is not None)
        return found

    monkeypatch.setattr(bulk_mod, "applies", spy)
    modes = [(False, False), (True, False), (False, True), (True, True)]  # (pipeline, bulk)
    for pipeline, bulk in modes:
        c = make_container(tmp_path / f"data-{pipeline}-{bulk}")
        try:
            reports = [run_import(c, p, pipeline, monkeypatch, bulk) for p in (first, second)]
            # The keyrings differ (one per data dir): compare plaintexts, and the blind
            # indexes only within a run.
            s = state(c)
            s["ids"] = [(cid, kind, value) for cid, kind, value, _ in s["ids"]]
            results.append((reports, s))
        finally:
            c.close()
    (one, one_state), *others = results
    for mode, (two, two_state) in zip(modes[1:], others, strict=True):
        assert one == two, mode  # counters and error reports, both imports
        assert one_state == two_state, mode
    # The bulk load ran for the first file only: the second brings ids the database holds.
    assert bulk_loads == [True, False, True, False]
    # The files really have rejects, and the second links people of the first (merges).
    assert one[0][0][4] > 0 and one[0][0][7] > 0 and one[1][0][7] > 0
    assert len(one_state["people"]) > 2800 and len(one_state["ids"]) > 5000


def test_the_pipeline_runs_for_files_of_at_least_pipeline_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size threshold picks the path: at the file's size the pipeline runs (its child
    prepares the pages), one byte above it the file is imported in one process."""
    path = tmp_path / "people.csv"
    write_file(path, 1500)
    size = path.stat().st_size
    used: list[bool] = []
    real = contacts_mod._pipelined

    def spy(run: Any, p: Path) -> Any:
        used.append(True)
        return real(run, p)

    monkeypatch.setattr(contacts_mod, "_pipelined", spy)
    monkeypatch.setattr(contacts_mod, "PAGE", 700)
    for threshold in (size + 1, size):
        c = make_container(tmp_path / f"data-{threshold}")
        try:
            monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", threshold)
            r = c.contacts.import_file(path)
            assert r.new > 1400
        finally:
            c.close()
        path.with_name(path.name + ".errors.csv").unlink(missing_ok=True)
    assert used == [True]  # only the run whose threshold equals the file's size


def write_account_file(path: Path, n: int) -> None:
    """openids of an account with unionids, phones, custom attributes and short rows: no id
    repeats, so every page takes the bulk load's all-new path (rows become people straight
    from the columns), with a few bad fields and rejected rows."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["openid", "unionid", "phone", "name", "city", "level", "tags"])
        for i in range(n):
            if i % 211 == 7:
                w.writerow(["", "", "not-a-phone"])  # short, no usable id: rejected
                continue
            w.writerow([
                f"o{i:07d}", f"u{i:07d}" if i % 4 else "",
                f"+86 139 {i // 10_000:04d} {i % 10_000:04d}" if i % 3 else "12",
                f"客户{i}" if i % 5 else "", ["上海", "北京"][i % 2], f"L{i % 3}" if i % 2 else "",
                "VIP" if i % 7 == 0 else "",
            ])  # fmt: skip


def to_xlsx(csv_path: Path) -> Path:
    import xlsxwriter

    out = csv_path.with_suffix(".xlsx")
    book = xlsxwriter.Workbook(str(out), {"constant_memory": True})
    sheet = book.add_worksheet()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for r, row in enumerate(csv.reader(fh)):
            sheet.write_row(r, 0, row)
    book.close()
    return out


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_bulk_load_of_an_account_file_equals_the_page_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    path = tmp_path / "followers.csv"
    write_account_file(path, 2500)
    if fmt == "xlsx":
        path = to_xlsx(path)
    results = []
    real_applies, bulk_loads = bulk_mod.applies, []

    def spy(*args: Any) -> Any:
        found = real_applies(*args)
        bulk_loads.append(found is not None)
        return found

    monkeypatch.setattr(bulk_mod, "applies", spy)
    for pipeline, bulk in [(False, False), (False, True), (True, True)]:
        c = make_container(tmp_path / f"data-{pipeline}-{bulk}")
        try:
            acc = c.accounts.add(
                channel="wechat_oa", app_id="wxbulk01", secret="s", token="tok",
                base_url="http://127.0.0.1:9/wechat",
            )  # fmt: skip
            monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", 0 if pipeline else None)
            monkeypatch.setattr(bulk_mod, "BULK_BYTES", 0 if bulk else 1 << 62)
            monkeypatch.setattr(contacts_mod, "PAGE", 600)
            r = c.contacts.import_file(path, account=acc.id)
            errors = r.errors_file.read_text(encoding="utf-8") if r.errors_file else None
            with c.engine.connect() as conn:
                attrs = sorted(
                    (int(i), str(a))
                    for i, a in conn.execute(text("SELECT id, attrs FROM contacts"))
                )
                scopes = sorted(
                    tuple(x)
                    for x in conn.execute(
                        text("SELECT kind, account_id IS NULL, count(*) FROM identities "
                             "GROUP BY kind, account_id IS NULL")
                    )
                )  # fmt: skip
            s = state(c)
            s["ids"] = [(cid, kind, value) for cid, kind, value, _ in s["ids"]]
            results.append(((r.rows, r.new, r.rejected, r.field_errors, r.identities_new),
                            errors, attrs, scopes, s))  # fmt: skip
        finally:
            c.close()
    assert bulk_loads == [True, True]  # the two bulk runs loaded in bulk
    first, *others = results
    assert all(other == first for other in others)
    counts, errors, attrs, scopes, _ = first
    assert counts[2] > 0 and counts[3] > 0 and errors  # rejects and bad fields reported
    assert ("openid", 0, counts[1]) in scopes  # the account's ids, one per person
    assert any('"level": "L1"' in a for _, a in attrs)  # custom attributes kept


def test_a_failed_bulk_load_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction: a failure on the third page rolls back every page before it and the
    dropped indexes; foreign keys are back on for the pooled connection."""
    path = tmp_path / "a.csv"
    write_file(path, 3000)
    c = make_container(tmp_path / "data")
    try:
        with c.engine.connect() as conn:
            indexes = sorted(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'").all())  # fmt: skip
        monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", None)
        monkeypatch.setattr(bulk_mod, "BULK_BYTES", 0)
        monkeypatch.setattr(contacts_mod, "PAGE", 700)
        real, calls = bulk_mod.append, []

        def failing(conn: Any, run: Any, res: Any) -> None:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("disk full")
            real(conn, run, res)

        monkeypatch.setattr(bulk_mod, "append", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            c.contacts.import_file(path)
        with c.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM contacts").scalar() == 0
            assert conn.exec_driver_sql("SELECT count(*) FROM identities").scalar() == 0
            after = sorted(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'").all())  # fmt: skip
            assert after == indexes
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # The next import of the same file runs and stores everyone.
        monkeypatch.setattr(bulk_mod, "append", real)
        r = c.contacts.import_file(path)
        assert r.new > 2800
        with c.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        c.close()


def test_page_boundaries_do_not_change_who_is_who(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row whose phone one earlier row has and whose e-mail another has links the two
    people whether those rows are on its page or on an earlier one: with 730-row pages and
    with the whole file in one page, the same ids end up together on the same people after
    the merge pass (the bulk load's pages are smaller than the page path's). Which of the
    linked people a chained row's attributes land on first may differ; the merge then fills
    the survivor from the absorbed person (docs/people.md)."""
    path = tmp_path / "a.csv"
    write_file(path, 3000)
    results = []
    for page in (730, 100_000):
        c = make_container(tmp_path / f"data-{page}")
        try:
            monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", None)
            monkeypatch.setattr(bulk_mod, "BULK_BYTES", 1 << 62)
            monkeypatch.setattr(contacts_mod, "PAGE", page)
            r = c.contacts.import_file(path)
            s = state(c)
            live = {p[0] for p in s["people"] if p[5] is None}
            groups: dict[int, set[tuple[str, str]]] = {}
            for cid, kind, value, _ in s["ids"]:
                assert cid in live  # merged-away people hold no ids
                groups.setdefault(cid, set()).add((kind, value))
            results.append((r.new, r.merged, sorted(sorted(g) for g in groups.values())))
        finally:
            c.close()
    assert results[0] == results[1]
    assert results[0][1] > 0  # the file does link people


def test_rows_of_csv_and_xlsx_files_are_counted_without_loading_them(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    write_file(path, 1234)
    assert bulk_mod.count_rows(path) == 1234
    assert bulk_mod.count_rows(to_xlsx(path)) == 1234  # from the sheet's <dimension>
    (tmp_path / "b.xlsx").write_bytes(b"not a zip")
    assert bulk_mod.count_rows(tmp_path / "b.xlsx") is None  # unknown: no bulk load
    (tmp_path / "c.ods").write_bytes(b"")
    assert bulk_mod.count_rows(tmp_path / "c.ods") is None
