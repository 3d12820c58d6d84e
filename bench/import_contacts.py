"""Benchmark: import N people from a CSV or XLSX file (SQLite) against a raw floor.

    python bench/import_contacts.py --rows 1000000 [--format xlsx] [--repeat 3] [--json]

The file has the columns phone, email, name, city, gender, birthday, tags (a few spellings
per field: ``138 0013 8000``, ``+86…``, ``1990/1/2``, ``男``/``female`` …). Each side runs in
its own child process on a fresh database:

* **qunfa** — ``ContactService.import_file``: read, validate every field, blind-index the
  phone and e-mail, encrypt phone, e-mail and name, resolve who each row is, insert people,
  identities and tags, then the merge pass. Into the fresh database this is the bulk load
  (``services/contact_bulk.py``: one transaction, identity indexes rebuilt at the end, rows
  resolved in memory); the re-import of the same file takes the page path (every id looked
  up, 0 new, 0 updated).
* **floor** — plain ``csv`` + ``sqlite3``: read the same rows, compute the same two blind
  indexes and three encryptions, ``executemany`` one row per person and two per identity into
  tables with the same unique index. No validation, no lookups, no tags, no merge pass. For
  ``--format xlsx`` the floor reads the workbook with ``python-calamine`` (Rust; it loads the
  whole sheet, then hands out rows).

With ``--format xlsx`` the same rows are written as an XLSX file the way Excel saves one
(every text in the shared-string table, xlsxwriter), which qunfa reads with its streaming
reader (``services/xlsx_reader.py``).

Both sides run SQLite with the same settings: 16 KiB pages (``storage/db.py``'s
``PAGE_SIZE``), WAL, ``synchronous=NORMAL``, a 128 MiB page cache for the writes (qunfa sets
it with ``bulk_cache``), ``temp_store=MEMORY``. qunfa
stores pages in this process while a forked child prepares the next ones when the file is
at least ``PIPELINE_BYTES`` (``services/contacts.py``); the floor is one process. The peak
RSS of both qunfa processes is printed. The load average is printed before and after each
side (the machine is shared).

Target: ≤ 20 s for 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import child, peak_rss_mb

CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都"]
GENDERS = ["男", "女", "male", "F", ""]
TAGS = ["VIP", "新客;VIP", "老客", "", "活动;双十一"]


def make_file(path: Path, n: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["phone", "email", "name", "city", "gender", "birthday", "tags"])
        for i in range(n):
            national = f"139{i:08d}"
            phone = (national, f"+86 {national[:3]} {national[3:7]} {national[7:]}")[i % 2]
            birthday = (
                f"19{60 + i % 40}-0{1 + i % 9}-1{i % 10}",
                f"19{60 + i % 40}/{1 + i % 12}/2",
            )
            w.writerow([
                phone, f"user{i}@Example.com", f"客户{i}", CITIES[i % 6], GENDERS[i % 5],
                birthday[i % 2], TAGS[i % 5],
            ])  # fmt: skip


def make_xlsx(csv_path: Path, path: Path) -> None:
    """The CSV's rows as an XLSX file with shared strings, as Excel and WPS save text."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            for j, value in enumerate(row):
                if value:
                    ws.write_string(i, j, value)
    wb.close()


def _rows(path: Path) -> Any:
    """The floor's reader: the data rows of a CSV (csv) or XLSX (python-calamine) file."""
    if path.suffix == ".xlsx":
        from python_calamine import CalamineWorkbook

        rows = iter(CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).iter_rows())
    else:
        rows = csv.reader(path.open(newline="", encoding="utf-8"))
    next(rows)
    return rows


def run_qunfa(work: Path, name: str, reimport: bool = True) -> dict[str, Any]:
    from qunfa.bootstrap import Container
    from qunfa.settings import Settings

    c = Container(Settings(data_dir=work / "qunfa"))
    c.migrate()
    c.keyring  # noqa: B018 — key file created before timing
    t0 = time.perf_counter()
    r = c.contacts.import_file(work / name)
    seconds = time.perf_counter() - t0
    reader_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    again, again_s = None, 0.0
    if reimport:
        t1 = time.perf_counter()
        again = c.contacts.import_file(work / name)
        again_s = time.perf_counter() - t1
    c.close()
    return {
        "seconds": round(seconds, 2), "rows": r.rows, "new": r.new,
        "identities": r.identities_new, "rejected": r.rejected, "merged": r.merged,
        "reimport_seconds": round(again_s, 2), "reimport_new": again and again.new,
        "reimport_updated": again and again.updated, "peak_rss_mb": round(peak_rss_mb(), 1),
        "reader_peak_rss_mb": round(reader_rss, 1), "bulk_load": r.bulk_load,
        "reimport_bulk_load": again and again.bulk_load,
    }  # fmt: skip


def run_floor(work: Path, name: str) -> dict[str, Any]:
    from qunfa.crypto.fields import Keyring
    from qunfa.storage.db import PAGE_SIZE

    ring = Keyring.generate()
    db = sqlite3.connect(work / "floor.db")
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # as qunfa's new databases (16 KiB)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-131072")  # = bulk_cache's 128 MiB
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name_enc BLOB, city TEXT,"
               " gender TEXT, birthday TEXT, tags TEXT)")  # fmt: skip
    db.execute("CREATE TABLE ids (id INTEGER PRIMARY KEY, person INTEGER, kind TEXT,"
               " value_enc BLOB, value_bi BLOB)")  # fmt: skip
    db.execute("CREATE UNIQUE INDEX ids_bi ON ids (kind, value_bi)")
    t0 = time.perf_counter()
    # The reader's setup is timed too (python-calamine loads the whole sheet there).
    reader = _rows(work / name)
    person = 0
    while True:
        page = [r for _, r in zip(range(50_000), reader, strict=False)]
        if not page:
            break
        phones, emails, names = (ring.encrypt_many([r[k] for r in page]) for k in (0, 1, 2))
        db.executemany(
            "INSERT INTO people (id, name_enc, city, gender, birthday, tags)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(person + j, names[j], r[3], r[4], r[5], r[6]) for j, r in enumerate(page)],
        )
        db.executemany(
            "INSERT INTO ids (person, kind, value_enc, value_bi) VALUES (?, ?, ?, ?)",
            [(person + j, "phone", phones[j], ring.blind(r[0])) for j, r in enumerate(page)]
            + [(person + j, "email", emails[j], ring.blind(r[1]))
               for j, r in enumerate(page)],
        )  # fmt: skip
        person += len(page)
    db.commit()
    seconds = time.perf_counter() - t0
    db.close()
    return {"seconds": round(seconds, 2), "rows": person, "peak_rss_mb": round(peak_rss_mb(), 1)}


def _load() -> str:
    """The 1-minute load average now (the machine is shared: figures need it beside them)."""
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    ap.add_argument("--repeat", type=int, default=1,
                    help="floor/qunfa pairs on the same file (the medians decide; the machine "
                         "is shared and its speed drifts)")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["qunfa", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-reimport", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    name = f"people.{args.format}"
    if args.child == "qunfa":
        print(json.dumps(run_qunfa(args.work, name, reimport=not args.no_reimport)))
        return
    if args.child == "floor":
        print(json.dumps(run_floor(args.work, name)))
        return
    n = args.rows

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qunfa-bench-import-") as tmp:
        work = Path(tmp)
        log(f"setup: writing {n:,} rows …")
        make_file(work / "people.csv", n)
        if args.format == "xlsx":
            log("setup: saving them as XLSX (shared strings) …")
            make_xlsx(work / "people.csv", work / name)
        size = (work / name).stat().st_size
        for k in range(args.repeat):
            rep = work / f"run{k}"
            rep.mkdir()
            os.link(work / name, rep / name)
            log(f"pair {k + 1}/{args.repeat}: floor run …")
            # Each side starts with nothing of the other's left to write back to disk: the
            # floor's database (~0.4 GB) is otherwise flushed by the kernel during qunfa's run.
            os.sync()
            load = [_load()]
            floor = child(__file__, "floor", "--work", str(rep), "--format", args.format)
            load.append(_load())
            log(f"floor: {floor}; qunfa run …")
            os.sync()
            extra = [] if k == 0 else ["--no-reimport"]
            qunfa = child(__file__, "qunfa", "--work", str(rep), "--format", args.format, *extra)
            load.append(_load())
            pairs.append({"qunfa": qunfa, "floor": floor, "load": load,
                          "ratio": round(qunfa["seconds"] / floor["seconds"], 2)})  # fmt: skip
            shutil.rmtree(rep)
    from qunfa.services.contacts import PIPELINE_BYTES

    pipelined = PIPELINE_BYTES is not None and size >= PIPELINE_BYTES
    q_med = statistics.median(p["qunfa"]["seconds"] for p in pairs)
    f_med = statistics.median(p["floor"]["seconds"] for p in pairs)
    r_med = statistics.median(p["ratio"] for p in pairs)
    first = pairs[0]["qunfa"]
    result = {
        "rows": n,
        "format": args.format,
        "bytes": size,
        "pairs": pairs,
        "qunfa_median_s": q_med,
        "floor_median_s": f_med,
        "ratio_median": r_med,
        "pipelined": pipelined,
        "ok": q_med <= 20.0 * n / 1_000_000 and all(p["qunfa"]["new"] == n for p in pairs),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"rows              {n:,} (phone, email, name, city, gender, birthday, tags) "
          f"in {args.format.upper()}, {size / 2**20:.1f} MiB")  # fmt: skip
    for k, p in enumerate(pairs, start=1):
        q, f = p["qunfa"], p["floor"]
        print(f"pair {k}            qunfa {q['seconds']:.2f} s ({n / q['seconds']:,.0f} rows/s, "
              f"{'bulk load' if q['bulk_load'] else 'page path'}, peak RSS {q['peak_rss_mb']} MB "
              f"+ reader {q['reader_peak_rss_mb']} MB)  floor {f['seconds']:.2f} s  "
              f"ratio {p['ratio']:.2f}×  load {' → '.join(p['load'])}")  # fmt: skip
    print(f"re-import         {first['reimport_seconds']:.2f} s ({first['reimport_new']} new, "
          f"{first['reimport_updated']} updated, "
          f"{'bulk load' if first['reimport_bulk_load'] else 'page path'})")  # fmt: skip
    print(f"settings          SQLite 16 KiB pages, WAL, synchronous=NORMAL, cache 128 MiB, "
          f"temp_store=MEMORY "
          f"(both); qunfa {'two processes' if pipelined else 'one process'}")  # fmt: skip
    print(f"median            qunfa {q_med:.2f} s, floor {f_med:.2f} s, ratio {r_med:.2f}×   "
          f"target ≤ 20 s per 1M: {'OK' if result['ok'] else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
