"""The two-process import (a forked child validates, blind-indexes and encrypts pages while the
parent writes) stores exactly what the one-process import stores: people, identities, tags,
the error report and the counters — over several pages, with bad rows, repeated ids across
pages (merges), names, and a re-import that changes some rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

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
            # Every 50th row repeats an earlier row's e-mail with a new phone: merge evidence
            # that crosses page boundaries.
            email = f"u{i - 40 if i % 50 == 49 else i}@example.com"
            w.writerow([
                f"139{i + shift:08d}", email, f"客户{i % 7}" if i % 3 else "",
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


def run_import(c: Container, path: Path, pipeline: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(contacts_mod, "PIPELINE_BYTES", 0 if pipeline else None)
    monkeypatch.setattr(contacts_mod, "PAGE", 700)  # several pages from a small file
    r = c.contacts.import_file(path)
    report = (r.rows, r.imported, r.new, r.updated, r.rejected, r.field_errors,
              r.identities_new, r.merged)  # fmt: skip
    errors = r.errors_file.read_text(encoding="utf-8") if r.errors_file else None
    return report, errors


def test_pipelined_import_equals_the_one_process_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_file(first, 3000)
    write_file(second, 3000, shift=7)  # re-import: most phones new, e-mails known
    results = []
    for pipeline in (False, True):
        c = make_container(tmp_path / f"data-{pipeline}")
        try:
            reports = [run_import(c, p, pipeline, monkeypatch) for p in (first, second)]
            # The keyrings differ (one per data dir): compare plaintexts, and the blind
            # indexes only within a run.
            s = state(c)
            s["ids"] = [(cid, kind, value) for cid, kind, value, _ in s["ids"]]
            results.append((reports, s))
        finally:
            c.close()
    (one, one_state), (two, two_state) = results
    assert one == two  # counters and error reports, both imports
    # The files really have rejects, and the second links people of the first (merges).
    assert one[0][0][4] > 0 and one[1][0][7] > 0
    assert one_state == two_state
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
