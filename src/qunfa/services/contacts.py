"""Import people from CSV / XLSX, and export them (decrypted, audited).

**Import.** The file is streamed in pages of :data:`PAGE` rows. Each row is validated field by
field (:mod:`qunfa.domain.fields`): a bad optional field is reported and left out, the row is
kept; a row without any usable id (phone, e-mail, unionid, or an id of the import's account)
is rejected. Every problem goes to ``<file>.errors.csv`` (row, column, value, reason) — nothing
valid is lost because another row was bad.

Per page, set-based: every id's blind index is computed once; one lookup per id kind finds
the people who already hold them; a row matching an existing person (by unionid, phone or
e-mail, then the account's ids) updates that person — only what changed, so re-importing the
same file changes nothing; the rest become new people, inserted with their identities and
tags by the DBAPI's ``executemany`` / ``COPY`` (:mod:`qunfa.storage.bulk`). A row whose ids
point at two different people records the evidence on its person, and one merge pass at the
end (:meth:`~qunfa.services.people.PeopleService.merge_pending`) merges them.

**Export.** :meth:`ContactService.export` streams the live people of a segment (or all) in
keyset pages to CSV or XLSX and writes an ``audit_log`` row: exporting PII needs a reason.
"""

from __future__ import annotations

import codecs
import csv
import gc
import json
import time
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, bindparam, func, insert, select, update

from qunfa.channels.registry import channel_class
from qunfa.domain.fields import (
    MERGE_KINDS,
    REPEATING_FIELDS,
    ColumnPlan,
    FieldError,
    memoised,
    normaliser,
    plan_columns,
)
from qunfa.services.people import contact_tags, contacts, identities, tags_t, write_audit
from qunfa.storage.bulk import bulk_cache, insert_rows, insert_rows_returning_ids
from qunfa.storage.db import take_write_lock

if TYPE_CHECKING:
    from qunfa.bootstrap import Container
    from qunfa.services.contact_bulk import Columns, Resolver

Progress = Callable[[str, int, int | None], None]
PAGE = 50_000
LOOKUP_CHUNK = 30_000  # under SQLite's 32,766 bound parameters per statement
ATTR_COLUMNS = ("city", "province", "gender", "birthday", "timezone", "registered_at")


class ImportError_(ValueError):
    """The file as a whole cannot be imported (missing, empty, header problems)."""


class ExportError(ValueError):
    """An export that may not or cannot run (no reason given, bad segment, bad format)."""


@dataclass(frozen=True)
class ImportReport:
    rows: int  # data rows read
    imported: int  # rows stored (new or matched people)
    new: int  # people created
    rejected: int  # rows left out entirely
    errors_file: Path | None
    seconds: float
    updated: int = 0  # existing people whose attributes changed
    field_errors: int = 0  # bad fields left out of rows that were kept
    identities_new: int = 0
    merged: int = 0  # merges made by the pass at the end
    bulk_load: bool = False  # one transaction, identity indexes rebuilt (contact_bulk.py)


@dataclass(frozen=True)
class ExportReport:
    rows: int
    path: Path
    seconds: float
    audit_id: int


@dataclass(slots=True)
class _Slot:
    """One person a page's rows resolve to: an existing contact or a new one."""

    contact_id: int | None  # None until inserted
    values: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    row: int = -1  # the valid row (index in the page) that created a new person


@dataclass(slots=True)
class _Prepared:
    """One page after the CPU-bound half of the import (validation, blind indexes, and — in
    the pipeline — encryption): everything the database half needs, nothing it has to read.

    Built in the pipeline's child process (``_produce``) or inline; the error-report rows and
    counters travel with it so the parent writes them in file order.
    """

    valid: list[tuple[dict[str, Any], dict[str, str] | None]]
    errors: list[list[Any]]
    rows: int
    rejected: int
    field_errors: int
    bis: dict[str, bytes]
    # Ciphertexts made ahead (pipeline only): per (kind, value) for ids, per valid row for
    # names. One ciphertext per use, never shared between rows (equal names would show).
    id_encs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    name_encs: list[bytes | None] = field(default_factory=list)
    # Bulk load only (services/contact_bulk.py): the page as columns.
    columns: Columns | None = None


# --- reading files ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A spreadsheet cell as text: 13800138000.0 → "13800138000", dates as ISO."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | dtime):
        return value.isoformat()
    return str(value)


# What a damaged workbook raises while it is read (a truncated or corrupt part).
_DAMAGE = (ValueError, EOFError, zlib.error, zipfile.BadZipFile)


def _checked(path: Path, rows: Iterator[list[str]]) -> Iterator[list[str]]:
    """A streamed workbook's rows; damage found part-way (a truncated or corrupt part) as an
    :class:`ImportError_` naming the file. Rows before it were imported (or, in a bulk load,
    roll back with the rest); a re-import after repairing the file skips what is there."""
    try:
        yield from rows
    except _DAMAGE as exc:
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: Exception) -> ImportError_:
    return ImportError_(f"{path} is damaged ({exc}); save it again from the spreadsheet program")


def _encoding(path: Path) -> str:
    """UTF-8 (with or without BOM), else GB18030 — what Excel in China saves CSV as."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8-sig"
    except UnicodeDecodeError:
        return "gb18030"


def read_table(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """The header and the data rows of a CSV or XLSX file (first sheet), streamed as text."""
    if not path.exists():
        raise ImportError_(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        from qunfa.services import xlsx_reader

        try:
            names, data = xlsx_reader.read_rows(path)
        except xlsx_reader.Unsupported:
            pass  # an unusual workbook: the general reader below
        except _DAMAGE as exc:
            raise _damaged(path, exc) from None
        else:
            if not any(names):
                raise ImportError_(f"{path} is empty: the first row must name the columns")
            return names, _checked(path, data)
    if suffix in (".xlsx", ".xlsm", ".xls", ".ods"):
        from python_calamine import CalamineWorkbook

        sheet = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0)
        rows: Iterator[list[Any]] = iter(sheet.iter_rows())
        first = next(rows, None)
        if not first or not any(_cell(v) for v in first):
            raise ImportError_(f"{path} is empty: the first row must name the columns")
        return [_cell(v).strip() for v in first], (
            [v if type(v) is str else _cell(v) for v in r] for r in rows
        )

    def lines() -> Iterator[list[str]]:
        with path.open(newline="", encoding=_encoding(path)) as fh:
            yield from csv.reader(fh)  # plain lists: DictReader costs ~5 µs a row in dicts

    it = lines()
    header = next(it, None)
    if not header:
        raise ImportError_(f"{path} is empty: the first line must name the columns")
    return [h.strip() for h in header], it


def _pages(rows: Iterator[list[str]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    """The rows in pages of ``size``, after a short ramp (size/8, /4, /2): in the pipeline the
    writer waits for the first page to be prepared, and a small one is ready sooner."""
    page: list[tuple[int, list[str]]] = []
    limit = max(1, size // 8)
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        page.append((number, row))
        if len(page) >= limit:
            yield page
            page = []
            limit = min(size, limit * 2)
    if page:
        yield page


# --- the two-process pipeline --------------------------------------------------------------------
#
# Validation, blind indexes and AES-GCM encryption are pure CPU (~half of a page's time) and
# need no database; resolving and writing need no CPU-heavy work. A forked child reads the file
# and prepares page k+1 (``_ImportRun.prepare`` with ``encrypt=True``) while the parent stores
# page k, so the two halves run on the two cores. The child inherits the run (plan, keyring)
# by fork — nothing secret is pickled — and never touches the database; prepared pages come
# back through a queue of at most two (bounded memory), in file order.

# On for files of at least PIPELINE_BYTES (None: never). At 1,000,000 rows on the 2-core
# machine, interleaved with the one-process import at load 1.5-1.9: 61.7 / 66.1 s against
# 77.5-79.0 s (docs/performance.md, "Contact import"). An earlier round measured it slower
# while other test suites kept both cores busy (load 1.8-5): it needs the second core free.
# Small files stay in one process: the first page is prepared before anything is stored, so a
# file of one or two pages gains nothing and pays the fork.
PIPELINE_BYTES: int | None = 8 << 20  # ~100,000 rows of phone, e-mail, name and a few fields
_DONE = "done"


def _prepared(
    run: _ImportRun, rows: Iterator[list[str]], resolver: Resolver | None, encrypt: bool
) -> Iterator[_Prepared]:
    """The file's pages prepared: row by row for the page path, column by column (every id
    and name encrypted ahead) for a bulk load."""
    size = PAGE if resolver is None else min(PAGE, _bulk_page())
    for page in _pages(rows, size):
        yield _prepare(run, page, resolver, encrypt)


def _bulk_page() -> int:
    from qunfa.services.contact_bulk import BULK_PAGE

    return BULK_PAGE


def _prepare(
    run: _ImportRun, page: list[tuple[int, list[str]]], resolver: Resolver | None, encrypt: bool
) -> _Prepared:
    return run.prepare(page, encrypt=encrypt) if resolver is None else resolver.prepare(page)


def _produce(
    run: _ImportRun, path: Path, out: Any, resolver: Resolver | None
) -> None:  # pragma: no cover - in child
    try:
        _, rows = read_table(path)
        for pre in _prepared(run, rows, resolver, encrypt=True):
            out.put(pre)
        out.put(_DONE)
    except BaseException as exc:  # the parent re-raises it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _may_fork() -> bool:
    """Fork only from the main thread (the CLI; tests). The API runs imports in a worker thread
    of a threaded server: a fork there could copy a lock another thread holds, and a child
    stuck on it would stay alive with the parent waiting for its pages — one process instead."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _pipelined(
    run: _ImportRun, path: Path, resolver: Resolver | None = None
) -> Iterator[_Prepared]:
    """Prepared pages from a child process, in order; the child is ended if we stop early."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue(maxsize=2)
    child = ctx.Process(target=_produce, args=(run, path, queue, resolver), daemon=True)
    child.start()
    try:
        while True:
            try:
                item = queue.get(timeout=5.0)
            except Exception:  # queue.Empty: still working, unless it died
                if not child.is_alive():
                    raise ImportError_(
                        f"{path}: the import's reader process ended unexpectedly "
                        f"(exit code {child.exitcode}); run the import again"
                    ) from None
                continue
            if item == _DONE:
                return
            if isinstance(item, tuple):
                raise ImportError_(f"{path}: reading the file failed: {item[1]}")
            yield item
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        queue.close()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the duration of an import.

    An import allocates millions of small acyclic objects (cells, per-row dicts, unpickled
    pages); each collection rescans every live one, which cost ~40 % of the validation time
    at 1,000,000 rows (docs/performance.md, "Contact import"). Reference counting still frees
    them. Process-wide, so the pipeline's forked child
    inherits it.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# --- the service --------------------------------------------------------------------------------


class ContactService:
    def __init__(self, c: Container) -> None:
        self.c = c

    # -- import ---------------------------------------------------------------------------------
    def import_csv(
        self,
        account: int | str,
        path: Path,
        column: str | None = None,
        progress: Progress | None = None,
    ) -> ImportReport:
        """The recipient ids of one account (phones, e-mails, remarks …) from a file.

        ``column`` holds the ids (default: the column named after the account's recipient
        kind, else the first column). Other columns are imported as person fields.
        """
        acc = self.c.accounts.get(account)
        kind = channel_class(acc.channel).recipient_kind
        header, _ = read_table(path)
        col = column or (kind if kind in header else None)
        if col is None:
            plan = plan_columns(header, None, kind)
            col = None if kind in {f for _, f in plan.fields} else header[0]
        if col is not None and col not in header:
            raise ImportError_(f"{path} has no column {col!r}; its columns are {', '.join(header)}")
        return self.import_file(
            path, account=acc.id, mapping={col: kind} if col else None, progress=progress
        )

    def import_file(
        self,
        path: Path,
        *,
        account: int | str | None = None,
        mapping: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        merge: bool = True,
        actor: str = "import",
    ) -> ImportReport:
        """Import people from a CSV or XLSX file; see the module docstring.

        ``mapping`` maps header names to fields (``-`` skips a column, ``attrs.key`` makes it
        a custom attribute). ``account`` is needed for platform ids (openid, external_userid,
        the account's own recipient kind). ``merge`` runs the merge pass at the end.
        """
        started = time.time()
        account_id: int | None = None
        account_kind: str | None = None
        if account is not None:
            acc = self.c.accounts.get(account)
            account_id, account_kind = acc.id, channel_class(acc.channel).recipient_kind
        header, rows = read_table(path)
        try:
            plan = plan_columns(header, mapping, account_kind)
        except FieldError as exc:
            raise ImportError_(f"{path}: {exc}") from None
        if not any(f in MERGE_KINDS for _, f in plan.fields) and not plan.account_fields:
            raise ImportError_(
                f"{path} has no id column: give at least one of phone, email, unionid"
                + (f", openid, external_userid or {account_kind}" if account_kind else "")
                + f" (its columns are {', '.join(header)}; rename or map one with --map)"
            )
        errors_path = path.with_name(path.name + ".errors.csv")
        run = _ImportRun(self.c, plan, account_id, started)
        with errors_path.open("w", newline="", encoding="utf-8") as err_fh:
            errors = csv.writer(err_fh)
            errors.writerow(["row", "column", "value", "reason"])
            run.errors = errors
            run.load_tags()
            with _gc_paused():
                bulk_load = self._bulk_load(run, path, rows, progress)
                if not bulk_load:
                    self._load_pages(run, path, rows, progress)
        run.finish()
        merged = 0
        if merge and run.evidence:
            # Set-based and incremental: one statement over the keys of the people this file
            # linked to someone else (``qunfa contacts merge-run`` does the full pass).
            if progress:
                progress("merging", 0, None)
            merged = len(self.c.people.merge_for(run.evidence, actor=actor))
        if not run.problems:
            errors_path.unlink()
        return ImportReport(
            rows=run.rows,
            imported=run.imported,
            new=run.new,
            rejected=run.rejected,
            errors_file=errors_path if run.problems else None,
            seconds=time.time() - started,
            updated=run.updated,
            field_errors=run.field_errors,
            identities_new=run.identities_new,
            merged=merged,
            bulk_load=bulk_load,
        )

    def _load_pages(
        self, run: _ImportRun, path: Path, rows: Iterator[list[str]], progress: Progress | None
    ) -> None:
        """The page path: each page resolved against the database and committed on its own."""
        if _may_fork() and PIPELINE_BYTES is not None and path.stat().st_size >= PIPELINE_BYTES:
            pages = _pipelined(run, path)
        else:
            pages = _prepared(run, rows, None, encrypt=False)
        for pre in pages:
            with self.c.engine.begin() as conn, bulk_cache(conn):
                run.store(conn, pre)
            if progress:
                progress("importing", run.rows, None)

    def _bulk_load(
        self, run: _ImportRun, path: Path, rows: Iterator[list[str]], progress: Progress | None
    ) -> bool:
        """The bulk load (services/contact_bulk.py) in one transaction, if it applies; False
        (and nothing written) if it does not."""
        from qunfa.services import contact_bulk as bulk

        if self.c.engine.dialect.name != "sqlite" or path.stat().st_size < bulk.BULK_BYTES:
            return False
        with self.c.engine.connect() as conn:
            # Foreign keys are checked per row (a contacts lookup for each identity and tag
            # link: ~3 s a million rows); the load inserts only ids it has just given out, so
            # they are off for its transaction. The PRAGMA is a no-op inside a transaction:
            # set before it begins, restored before the connection goes back to the pool.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            try:
                with conn.begin(), bulk_cache(conn):
                    return self._bulk_transaction(conn, run, path, rows, progress)
            finally:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()

    def _bulk_transaction(
        self,
        conn: Connection,
        run: _ImportRun,
        path: Path,
        rows: Iterator[list[str]],
        progress: Progress | None,
    ) -> bool:
        from qunfa.services import contact_bulk as bulk

        take_write_lock(conn)
        found = bulk.applies(conn, run, path)
        if found is None:
            return False
        first_id, total = found
        dropped = bulk.drop_indexes(conn)
        resolver = bulk.Resolver(run, first_id)
        if _may_fork() and PIPELINE_BYTES is not None:
            pages = _pipelined(run, path, resolver)
        else:
            pages = _prepared(run, rows, resolver, encrypt=True)
        for pre in pages:
            run.take_page(pre)
            bulk.append(conn, run, resolver.resolve(pre))
            if progress:
                progress("importing", run.rows, total)
        for done, _ in enumerate(bulk.rebuild_indexes(conn, dropped), start=1):
            if progress:
                progress("indexing", done, len(dropped))
        return True

    # -- export ---------------------------------------------------------------------------------
    def export(
        self,
        out: Path,
        *,
        reason: str,
        segment: str | None = None,
        fmt: str | None = None,
        actor: str = "system",
        progress: Progress | None = None,
    ) -> ExportReport:
        """Write the live people of ``segment`` (all when None), decrypted, to ``out``.

        Columns: contact_id, name, phone, email, unionid, city, province, gender, birthday,
        timezone, registered_at (ISO, China time), tags, attrs (JSON) — the importer reads the
        file back. Exporting PII is audited: ``reason`` is required and is written with the
        filter, row count and file name to ``audit_log`` (action ``contacts.export``).
        """
        started = time.time()
        if not reason or not reason.strip():
            raise ExportError(
                "exporting people's data needs a reason (--reason 'why'); it is kept in the "
                "audit log with the filter and row count"
            )
        fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
        if fmt not in ("csv", "xlsx"):
            raise ExportError(f"export format {fmt!r} is not supported: use csv or xlsx")
        ids_query = select(contacts.c.id).where(contacts.c.merged_into.is_(None))
        if segment is not None:
            from qunfa.domain.segments import SegmentError, parse_segment
            from qunfa.storage.segment_sql import compile_segment

            try:
                compiled = compile_segment(parse_segment(segment), account_id=None)
            except SegmentError as exc:
                raise ExportError(f"segment: {exc}") from None
            ids_query = ids_query.where(contacts.c.id.in_(compiled.subquery().select()))
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = _writer(out, fmt)
        count = 0
        try:
            writer.row(list(EXPORT_COLUMNS))
            for page in self._export_pages(ids_query):
                for row in page:
                    writer.row(row)
                count += len(page)
                if progress:
                    progress("exporting", count, None)
        finally:
            writer.close()
        with self.c.engine.begin() as conn:
            audit_id = write_audit(
                conn, actor, "contacts.export", f"segment:{segment}" if segment else "all",
                {"filter": segment or "all", "rows": count, "file": out.name, "format": fmt,
                 "reason": reason.strip()},
            )  # fmt: skip
        return ExportReport(count, out, time.time() - started, audit_id)

    def _export_pages(self, ids_query: Any, size: int = 5000) -> Iterator[list[list[Any]]]:
        ring = self.c.keyring
        last = 0
        while True:
            with self.c.engine.connect() as conn:
                page_ids = [
                    int(i)
                    for i in conn.execute(
                        ids_query.where(contacts.c.id > last).order_by(contacts.c.id).limit(size)
                    ).scalars()
                ]
                if not page_ids:
                    return
                last = page_ids[-1]
                people = conn.execute(
                    select(contacts).where(contacts.c.id.in_(page_ids)).order_by(contacts.c.id)
                ).all()
                ids_of: dict[int, dict[str, list[bytes]]] = defaultdict(lambda: defaultdict(list))
                for cid, kind, enc in conn.execute(
                    select(identities.c.contact_id, identities.c.kind, identities.c.value_enc)
                    .where(
                        identities.c.contact_id.in_(page_ids),
                        identities.c.account_id.is_(None),
                    )
                    .order_by(identities.c.id)
                ):
                    ids_of[cid][kind].append(enc)
                tags_of: dict[int, list[str]] = defaultdict(list)
                for cid, name in conn.execute(
                    select(contact_tags.c.contact_id, tags_t.c.name)
                    .join(tags_t, tags_t.c.id == contact_tags.c.tag_id)
                    .where(contact_tags.c.contact_id.in_(page_ids))
                    .order_by(tags_t.c.name)
                ):
                    tags_of[cid].append(name)
            out: list[list[Any]] = []
            for p in people:
                held = ids_of.get(p.id, {})

                def values(kind: str, held: Mapping[str, list[bytes]] = held) -> str:
                    # Same key twice (merge evidence) is shown once.
                    return ";".join(dict.fromkeys(ring.decrypt(e) for e in held.get(kind, [])))

                out.append([
                    p.id, ring.decrypt(p.name_enc) if p.name_enc else "",
                    values("phone"), values("email"), values("unionid"),
                    p.city or "", p.province or "", p.gender or "", p.birthday or "",
                    p.timezone or "", _iso(p.registered_at), ";".join(tags_of.get(p.id, [])),
                    json.dumps(p.attrs, ensure_ascii=False) if p.attrs else "",
                ])  # fmt: skip
            yield out


EXPORT_COLUMNS = (
    "contact_id", "name", "phone", "email", "unionid", "city", "province", "gender",
    "birthday", "timezone", "registered_at", "tags", "attrs",
)  # fmt: skip


def _iso(at: float | None) -> str:
    if at is None:
        return ""
    from qunfa.domain.fields import CHINA

    return datetime.fromtimestamp(at, CHINA).isoformat(sep=" ")


class _Writer:
    def row(self, values: list[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvWriter(_Writer):
    def __init__(self, out: Path) -> None:
        # UTF-8 with BOM: Excel opens it with the right encoding.
        self.fh = out.open("w", newline="", encoding="utf-8-sig")
        self.w = csv.writer(self.fh)

    def row(self, values: list[Any]) -> None:
        self.w.writerow(values)

    def close(self) -> None:
        self.fh.close()


class _XlsxWriter(_Writer):
    def __init__(self, out: Path) -> None:
        import xlsxwriter  # type: ignore[import-untyped]

        # constant_memory: rows are flushed as written, so memory stays flat at any size.
        self.book = xlsxwriter.Workbook(str(out), {"constant_memory": True})
        self.sheet = self.book.add_worksheet("contacts")
        self.n = 0

    def row(self, values: list[Any]) -> None:
        # Ids and phone numbers as text: Excel would turn them into floats.
        for col, v in enumerate(values):
            if isinstance(v, int):
                self.sheet.write_number(self.n, col, v)
            else:
                self.sheet.write_string(self.n, col, str(v))
        self.n += 1

    def close(self) -> None:
        self.book.close()


def _writer(out: Path, fmt: str) -> _Writer:
    return _XlsxWriter(out) if fmt == "xlsx" else _CsvWriter(out)


# --- one import run -----------------------------------------------------------------------------


class _ImportRun:
    """The state of one import: counters, the tag cache and the page algorithm."""

    def __init__(self, c: Container, plan: ColumnPlan, account_id: int | None, now: float) -> None:
        self.c = c
        self.plan = plan
        self.account_id = account_id
        self.now = now
        self.errors: Any = None
        self.rows = self.imported = self.new = self.rejected = 0
        self.updated = self.field_errors = self.identities_new = 0
        self.tag_ids: dict[str, int] = {}
        self.touched_tags: set[int] = set()
        # People this run gave an id someone else holds: the merge pass looks only at them.
        self.evidence: set[int] = set()
        # Fields in resolution order: the strongest evidence of who a row is comes first.
        order = {"unionid": 0, "phone": 1, "email": 2}
        self.fields = sorted(
            (
                (i, f, memoised(normaliser(f)) if f in REPEATING_FIELDS else normaliser(f))
                for i, f in plan.fields
            ),
            key=lambda t: order.get(t[1], 3),
        )
        # (scope, kind) of each id field: account-less merge kinds, and the account's ids.
        self.keys: list[tuple[str, int | None]] = [
            (f, None) for _, f, _ in self.fields if f in MERGE_KINDS
        ] + [(f, account_id) for _, f, _ in self.fields if f in plan.account_fields]
        self.key_fields = tuple(dict.fromkeys(k for k, _ in self.keys))

    @property
    def problems(self) -> int:
        return self.rejected + self.field_errors

    def load_tags(self) -> None:
        with self.c.engine.connect() as conn:
            for tid, name in conn.execute(
                select(tags_t.c.id, tags_t.c.name).where(tags_t.c.account_id.is_(None))
            ):
                self.tag_ids.setdefault(name, int(tid))

    # -- validation ----------------------------------------------------------------------------
    def prepare(self, page: list[tuple[int, list[str]]], encrypt: bool = False) -> _Prepared:
        """The CPU half of a page: validate, blind-index every id, and (``encrypt``, in the
        pipeline's child) encrypt every id and name ahead — on a re-import most of those are
        not needed, but the child's core is otherwise idle."""
        pre = _Prepared(valid=[], errors=[], rows=len(page), rejected=0, field_errors=0, bis={})
        pre.valid = self._validate(page, pre)
        blind = self.c.keyring.blind
        bis = pre.bis
        for vals, _ in pre.valid:
            for kind, _scope in self.keys:
                v = vals.get(kind)
                if v is not None and v not in bis:
                    bis[v] = blind(v)
        if encrypt and pre.valid:
            ring = self.c.keyring
            wanted = list(
                {(kind, v[kind]) for v, _ in pre.valid for kind, _ in self.keys if kind in v}
            )
            pre.id_encs = dict(zip(wanted, ring.encrypt_many([v for _, v in wanted]), strict=True))
            names = [v.get("name") for v, _ in pre.valid]
            named = iter(ring.encrypt_many([n for n in names if n is not None]))
            pre.name_encs = [next(named) if n is not None else None for n in names]
        return pre

    def _validate(
        self, page: list[tuple[int, list[str]]], pre: _Prepared
    ) -> list[tuple[dict[str, Any], dict[str, str] | None]]:
        fields, extra_cols, header = self.fields, self.plan.extra, self.plan.header
        keys = self.key_fields
        valid: list[tuple[dict[str, Any], dict[str, str] | None]] = []
        for number, row in page:
            n = len(row)
            vals: dict[str, Any] = {}
            bad: list[tuple[str, str, str]] = []
            for i, f, fn in fields:
                raw = row[i] if i < n else ""
                if not raw or raw.isspace():
                    continue
                try:
                    vals[f] = fn(raw)
                except FieldError as exc:
                    bad.append((header[i], raw, str(exc)))
            if not any(k in vals for k in keys):
                self.report_rejected(pre, number, bad)
                continue
            self.report_field_errors(pre, number, bad)
            valid.append((vals, self.extra_of(row) if extra_cols else None))
        return valid

    def report_rejected(self, pre: _Prepared, number: int, bad: list[tuple[str, str, str]]) -> None:
        """A row left out (no usable id): its problems, or that it has no id, to the report."""
        pre.rejected += 1
        why = "; row not imported: it has no usable id"
        for col, raw, reason in bad:
            pre.errors.append([number, col, raw, reason + why])
        if not bad:
            pre.errors.append(
                [number, "", "", "the row has no id: fill one of " + ", ".join(self.key_fields)]
            )

    @staticmethod
    def report_field_errors(pre: _Prepared, number: int, bad: list[tuple[str, str, str]]) -> None:
        for col, raw, reason in bad:
            pre.field_errors += 1
            pre.errors.append([number, col, raw, reason + "; the row was imported without it"])

    def extra_of(self, row: list[str]) -> dict[str, Any]:
        """The custom attributes of a row (columns mapped to ``attrs.*`` or an ``attrs`` JSON)."""
        n = len(row)
        extra: dict[str, Any] = {
            k: row[i].strip() for i, k in self.plan.extra if i < n and row[i].strip()
        }
        if "" in extra:
            extra.update(_json_attrs(extra.pop("")))
        return extra

    # -- one page ------------------------------------------------------------------------------
    def take_page(self, pre: _Prepared) -> None:
        """Count a prepared page's rows and write its problems to the error report."""
        self.rows += pre.rows
        self.rejected += pre.rejected
        self.field_errors += pre.field_errors
        for err in pre.errors:
            self.errors.writerow(err)

    def store(self, conn: Connection, pre: _Prepared) -> None:
        """The database half of a page, in the caller's transaction on ``conn``: errors to
        the report, then resolve and write."""
        self.take_page(pre)
        valid = pre.valid
        if not valid:
            return
        self.imported += len(valid)
        ring = self.c.keyring
        holders = self._holders(conn, valid, pre.bis)
        slots, new_ids, evidence, evidence_slots = self._resolve(pre, holders)
        self.evidence.update(evidence)
        matched = [s for s in slots if s.contact_id is not None]
        self._update_existing(conn, matched)
        self._insert_new(conn, [s for s in slots if s.contact_id is None])
        if new_ids:
            ahead = pre.id_encs
            missing = [v for _, kind, _, v, _ in new_ids if (kind, v) not in ahead]
            made = iter(ring.encrypt_many(missing))
            encs = [
                ahead[(kind, v)] if (kind, v) in ahead else next(made)
                for _, kind, _, v, _ in new_ids
            ]
            now = self.now
            rows = [
                (slots[s].contact_id, scope, kind, enc, bi, True, now, now)
                for (s, kind, scope, _, bi), enc in zip(new_ids, encs, strict=True)
            ]
            # In unique-index order: each insert lands next to the previous one in the
            # (account_id, kind, value_bi) B-tree instead of on a random page.
            rows.sort(key=lambda r: (r[2], r[1] or 0, r[4]))
            insert_rows(
                conn,
                "identities",
                ("contact_id", "account_id", "kind", "value_enc", "value_bi", "subscribed",
                 "subscribed_at", "updated_at"),
                rows,
            )  # fmt: skip
            self.identities_new += len(new_ids)
        self._tag(conn, slots, {cast(int, s.contact_id) for s in matched})
        self.evidence.update(cast(int, slots[i].contact_id) for i in evidence_slots)

    def _resolve(
        self, pre: _Prepared, holders: Mapping[tuple[str, int | None, bytes], set[int]]
    ) -> tuple[list[_Slot], list[tuple[int, str, int | None, str, bytes]], set[int], set[int]]:
        """Who each valid row of the page is, given who already ``holders`` each id: the page's
        people (existing ones with their contact id, new ones without), the ids to add as
        ``(slot, kind, scope, value, blind index)``, the people holding an id a row gave
        someone else, and the slots that got such an id (merge evidence). No database: the
        caller looks the holders up (one query per id kind, or the bulk load's memory).
        """
        keys = self.keys
        bis = pre.bis  # blind index of every id once (a value used as two kinds shares it)
        name_encs = pre.name_encs
        evidence: set[int] = set()
        evidence_slots: set[int] = set()
        slots: list[_Slot] = []
        claimed: dict[tuple[str, int | None, bytes], int] = {}  # new ids → slot
        existing_slot: dict[int, int] = {}  # contact id → slot
        new_ids: list[tuple[int, str, int | None, str, bytes]] = []  # slot, kind, scope …
        for row_no, (vals, extra) in enumerate(pre.valid):
            found: int | None = None
            for kind, scope in keys:
                v = vals.get(kind)
                if v is None:
                    continue
                k = (kind, scope, bis[v])
                if k in claimed:
                    found = claimed[k]
                    break
                held = holders.get(k)
                if held:
                    cid = min(held)
                    found = existing_slot.get(cid)
                    if found is None:
                        found = existing_slot[cid] = len(slots)
                        slots.append(_Slot(cid))
                    break
            if found is None:
                found = len(slots)
                slots.append(_Slot(None, row=row_no))
            slot = slots[found]
            for kind, scope in keys:
                v = vals.get(kind)
                if v is None:
                    continue
                k = (kind, scope, bis[v])
                held = holders.get(k)
                claimer = claimed.get(k)
                if claimer == found or (held and slot.contact_id in held):
                    continue
                if (held or claimer is not None) and scope is not None:
                    continue  # an account's id is unique: it stays with its person
                # New, or held by someone else: then it is merge evidence on this person —
                # whether that someone came from an earlier page (held) or from an earlier
                # row of this one (claimed), so page boundaries do not change the outcome.
                if held:
                    evidence.update(held)
                    evidence_slots.add(found)
                if claimer is not None:
                    evidence_slots.update((claimer, found))
                else:
                    claimed[k] = found
                new_ids.append((found, kind, scope, v, bis[v]))
            for name in ("name", *ATTR_COLUMNS):
                if name in vals:
                    slot.values[name] = vals[name]
            if name_encs and name_encs[row_no] is not None:
                slot.values["name_enc"] = name_encs[row_no]  # goes with the name above
            if "tags" in vals:
                slot.tags.extend(t for t in vals["tags"] if t not in slot.tags)
            if extra:
                slot.extra.update(extra)
        return slots, new_ids, evidence, evidence_slots

    def finish(self) -> None:
        """Recount the members of the tags this run added people to (one statement)."""
        if not self.touched_tags:
            return
        members = (
            select(func.count())
            .select_from(contact_tags)
            .where(contact_tags.c.tag_id == tags_t.c.id)
            .scalar_subquery()
        )
        with self.c.engine.begin() as conn:
            conn.execute(
                update(tags_t)
                .where(tags_t.c.id.in_(sorted(self.touched_tags)))
                .values(member_count=members)
            )

    def _holders(
        self,
        conn: Connection,
        valid: list[tuple[dict[str, Any], dict[str, str] | None]],
        bis: dict[str, bytes],
    ) -> dict[tuple[str, int | None, bytes], set[int]]:
        """Who already holds each id of the page: one indexed IN lookup per id kind."""
        out: dict[tuple[str, int | None, bytes], set[int]] = {}
        for kind, scope in self.keys:
            wanted = list({bis[v[kind]] for v, _ in valid if kind in v})
            for bi, cid in lookup_identities(conn, scope, kind, wanted):
                out.setdefault((kind, scope, bi), set()).add(cid)
        return out

    def _insert_new(self, conn: Connection, slots: list[_Slot]) -> None:
        if not slots:
            return
        ring = self.c.keyring
        names = [s.values.get("name") for s in slots]
        named = [n for s, n in zip(slots, names, strict=True) if n is not None and
                 "name_enc" not in s.values]  # fmt: skip
        made = iter(ring.encrypt_many(named))
        encs = (s.values.get("name_enc") or next(made) for s, n in zip(slots, names, strict=True)
                if n is not None)  # fmt: skip
        now = self.now
        rows = []
        for s, name in zip(slots, names, strict=True):
            v = s.values
            rows.append((
                now, now, next(encs) if name is not None else None, v.get("city"),
                v.get("province"), v.get("gender"), v.get("birthday"), v.get("timezone"),
                v.get("registered_at"),
                json.dumps(s.extra, ensure_ascii=False) if s.extra else "{}",
            ))  # fmt: skip
        ids = insert_rows_returning_ids(
            conn,
            "contacts",
            ("created_at", "updated_at", "name_enc", *ATTR_COLUMNS, "attrs"),
            rows,
        )
        for s, cid in zip(slots, ids, strict=True):
            s.contact_id = cid
        self.new += len(slots)

    def _update_existing(self, conn: Connection, slots: list[_Slot]) -> None:
        """Write what the file changes on people it matched — only what differs."""
        if not slots:
            return
        ring = self.c.keyring
        by_id = {s.contact_id: s for s in slots}
        ids = list(by_id)
        changes: list[dict[str, Any]] = []
        for start in range(0, len(ids), LOOKUP_CHUNK):
            for row in conn.execute(
                select(contacts.c.id, contacts.c.name_enc, contacts.c.attrs,
                       *(contacts.c[c] for c in ATTR_COLUMNS))
                .where(contacts.c.id.in_(ids[start : start + LOOKUP_CHUNK]))
            ):  # fmt: skip
                s = by_id[row.id]
                change: dict[str, Any] = {
                    c: s.values[c]
                    for c in ATTR_COLUMNS
                    if c in s.values and s.values[c] != row._mapping[c]
                }
                name = s.values.get("name")
                if name is not None and (
                    row.name_enc is None or ring.decrypt(row.name_enc) != name
                ):
                    change["name_enc"] = s.values.get("name_enc") or ring.encrypt(name)
                attrs = dict(row.attrs or {})
                if s.extra and any(attrs.get(k) != v for k, v in s.extra.items()):
                    change["attrs"] = {**attrs, **s.extra}
                if change:
                    change["id"] = row.id
                    changes.append(change)
        if changes:
            self.updated += len(changes)
            # Grouped by the set of changed columns: one executemany per shape.
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
            for ch in changes:
                shapes[tuple(sorted(ch))].append(ch)
            for shape, group in shapes.items():
                cols = [c for c in shape if c != "id"]
                conn.execute(
                    update(contacts)
                    .where(contacts.c.id == bindparam("cid"))
                    .values({**{c: bindparam(f"v_{c}") for c in cols}, "updated_at": self.now}),
                    [{"cid": g["id"], **{f"v_{c}": g[c] for c in cols}} for g in group],
                )

    def tag_id(self, conn: Connection, name: str) -> int:
        """The id of qunfa's own tag ``name``, created (source manual) if it is new."""
        tid = self.tag_ids.get(name)
        if tid is None:
            tid = self.tag_ids[name] = int(
                conn.execute(
                    insert(tags_t)
                    .values(account_id=None, name=name, source="manual", member_count=0)
                    .returning(tags_t.c.id)
                ).scalar_one()
            )
        return tid

    def _tag(self, conn: Connection, slots: list[_Slot], existing: set[int]) -> None:
        """qunfa's own tags (account-less) on the page's people; missing tags are created."""
        tagged = [s for s in slots if s.tags]
        if not tagged:
            return
        for name in sorted({t for s in tagged for t in s.tags if t not in self.tag_ids}):
            self.tag_id(conn, name)
        pairs = {(self.tag_ids[t], cast(int, s.contact_id)) for s in tagged for t in s.tags}
        have: set[tuple[int, int]] = set()
        # Only people who existed before this page can hold some of these tags already.
        cids = list({s.contact_id for s in tagged if s.contact_id in existing})
        for start in range(0, len(cids), LOOKUP_CHUNK):
            have.update(
                (int(t), int(c))
                for t, c in conn.execute(
                    select(contact_tags.c.tag_id, contact_tags.c.contact_id).where(
                        contact_tags.c.contact_id.in_(cids[start : start + LOOKUP_CHUNK])
                    )
                )
            )
        fresh = sorted(pairs - have)
        if fresh:
            insert_rows(conn, "contact_tags", ("tag_id", "contact_id"), fresh)
            self.touched_tags.update(t for t, _ in fresh)


def _json_attrs(text: str) -> dict[str, Any]:
    """The custom attributes of an export's ``attrs`` column (a JSON object), else nothing."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def lookup_identities(
    conn: Connection, account_id: int | None, kind: str, blinds: Sequence[bytes]
) -> Iterable[tuple[bytes, int]]:
    """``(blind index, contact id)`` of the identities of ``kind`` on ``account_id`` (None:
    account-less) among ``blinds``: the unique index (account_id, kind, value_bi), probed once
    per value, on the raw DBAPI cursor (SQLAlchemy's per-parameter handling would cost more
    than the probes)."""
    dbapi: Any = conn.connection.driver_connection
    scope = "account_id IS NULL" if account_id is None else "account_id = {p}"
    if conn.dialect.name == "postgresql":
        sql = (
            "SELECT value_bi, contact_id FROM identities WHERE "
            + scope.format(p="%s")
            + " AND kind = %s AND value_bi = ANY(%s)"
        )
        with dbapi.cursor() as cur:
            for start in range(0, len(blinds), LOOKUP_CHUNK):
                chunk = list(blinds[start : start + LOOKUP_CHUNK])
                head: list[Any] = [] if account_id is None else [account_id]
                cur.execute(sql, [*head, kind, chunk])
                for bi, cid in cur.fetchall():
                    yield bytes(bi), int(cid)
        return
    cur = dbapi.cursor()
    try:
        for start in range(0, len(blinds), LOOKUP_CHUNK):
            chunk = list(blinds[start : start + LOOKUP_CHUNK])
            head = [] if account_id is None else [account_id]
            sql = (
                "SELECT value_bi, contact_id FROM identities WHERE "
                + scope.format(p="?")
                + " AND kind = ? AND value_bi IN ("
                + ",".join("?" * len(chunk))
                + ")"
            )
            for bi, cid in cur.execute(sql, [*head, kind, *chunk]).fetchall():
                yield bytes(bi), int(cid)
    finally:
        cur.close()
