"""The bulk load: a large first import of ids into SQLite, with the identity indexes built
afterwards.

Inserting a million people page by page (:meth:`_ImportRun.store`) probes the unique blind
index ``(account_id, kind, value_bi)`` for every id and then inserts into it at a random place
(a blind index is random by design): ~4 µs a B-tree insert on this machine. When the database
holds **none** of the ids the file brings (no identity of the import's kinds on its account:
a first import of phones and e-mails, say), nobody can already hold them, so the import:

* takes SQLite's write lock for its whole duration: one transaction, so readers keep seeing
  the database as it was, other writers wait (``busy_timeout``, 60 s; hence
  :data:`BULK_MAX_ROWS`), and anything failing rolls everything back, indexes included;
* turns foreign-key checks off for that transaction (it links only ids it has just given
  out; the checks cost a lookup per identity and tag link) and back on afterwards;
* drops the indexes of ``identities`` inside it;
* prepares pages column by column in the pipeline's child (:meth:`Resolver.prepare`:
  normalise, blind-index and encrypt a column at a time) while this process resolves who each
  row is against the ids of the run alone, in memory (:meth:`Resolver.resolve`), numbering
  new people itself (it holds the lock, so ``max(id) + 1`` onward are its own), and appends
  the rows with ``executemany`` (:func:`append`);
* and rebuilds the dropped indexes with ``CREATE INDEX`` (a sort) before committing.

The result is what the page path stores: the same people with the same ids, identities,
tags, counters, error report and merge evidence (``tests/integration/
test_contact_import_pipeline.py`` compares all of them). Where the bulk load does not apply
(PostgreSQL; XLS/ODS, or an XLSX without a ``<dimension>``; files under :data:`BULK_BYTES`
or over :data:`BULK_MAX_ROWS` rows; ids already present) the import runs page by page.
Measured in docs/performance.md, "Contact import".
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from qunfa.services.contacts import _ImportRun, _Prepared, _Slot

# Files of at least this size (~100,000 rows) are worth the index rebuild.
BULK_BYTES = 8 << 20
# At most this many data rows: the load holds the write lock throughout (~20 s per million
# rows here), and other writers give up after busy_timeout (60 s, storage/db.py).
BULK_MAX_ROWS = 2_000_000
# The tables whose indexes are dropped and rebuilt: those of ``identities`` (the random
# blind index above all; keeping the other two up row by row cost more than rebuilding them).
# ``contacts`` keeps its three (appended rows land at a few insertion points: growing ids and
# times, repeating cities): keeping them costs ~1.5 s a million rows while the preparing
# process is the slower side anyway, rebuilding them ~1.2 s at the end where nothing runs
# beside it. ``contact_tags`` keeps its index too: the load reads it (tags of people of
# earlier pages).
TABLES = ("identities",)
# Rows per page in a bulk load: smaller than the page path's (no per-page commit to spread)
# so the writer, the slower side, starts sooner and never waits long for the reader (1M rows,
# 2 runs each: 18.7 s with 10,000 against 19.5-21.3 s with 50,000).
BULK_PAGE = 10_000
CONTACT_COLUMNS = ("name_enc", "city", "province", "gender", "birthday", "timezone",
                   "registered_at", "attrs")  # fmt: skip


@dataclass(slots=True)
class Resolved:
    """One page, resolved and ready to append, as columns (``executemany`` zips them)."""

    first_id: int  # the new people's ids are first_id, first_id + 1, …
    contacts: list[list[Any]]  # CONTACT_COLUMNS, one list each, one entry per new person
    # (kind, scope) → (contact ids, ciphertexts, blind indexes)
    identities: dict[tuple[str, int | None], tuple[list[int], list[bytes], list[bytes]]]
    tags: dict[str, list[int]]  # tag name → new people who carry it
    matched: list[_Slot]  # people of earlier pages that rows of this page update
    evidence: set[int]  # people who got an id someone else holds (for the merge pass)
    imported: int = 0
    identities_new: int = 0

    @property
    def new(self) -> int:
        return len(self.contacts[0]) if self.contacts else 0


@dataclass(slots=True)
class Columns:
    """A page after :meth:`Resolver.prepare`: each field's values for the valid rows (None
    where empty or bad), their custom attributes, and per id key (``run.keys`` order) the
    blind indexes and ciphertexts, and the names' ciphertexts, all aligned with the rows.
    Lists of strings and bytes: it crosses from the child cheaply (pickling a page of
    per-row dicts cost more than preparing it)."""

    n: int
    cols: dict[str, list[Any]]
    keep: list[dict[str, Any]]
    key_bis: list[list[bytes | None]]
    key_encs: list[list[bytes | None]]
    name_encs: list[bytes | None]


@dataclass
class Resolver:
    """Who holds each id of the run so far, and the next contact id: the in-memory stand-in
    for the unique index during a bulk load (~120 bytes an id: ~250 MB for 2,000,000).
    :meth:`prepare` is stateless and runs in the pipeline's child; :meth:`resolve` keeps
    the state and runs in the writing process, one page after another in file order."""

    run: _ImportRun
    next_id: int
    # (kind, scope) → blind index → the first person given it; ``more`` the others (an
    # account-less id given to a second person is merge evidence, as on the page path).
    held: dict[tuple[str, int | None], dict[bytes, int]] = field(default_factory=dict)
    more: dict[tuple[str, int | None, bytes], set[int]] = field(default_factory=dict)

    def prepare(self, page: list[tuple[int, list[str]]]) -> _Prepared:
        """The CPU half of a page, column by column: validate, blind-index and encrypt
        (:class:`Columns`). Touches no state of the run, so the pipeline's child runs it while
        this process resolves and writes the page before (:meth:`resolve`).

        The page path's row-by-row work (a dict of fields per row, a slot per person) costs
        ~20 µs a row; here each column is normalised, blind-indexed and encrypted in one pass.
        """
        from qunfa.services.contacts import _Prepared

        run = self.run
        pre = _Prepared(valid=[], errors=[], rows=len(page), rejected=0, field_errors=0, bis={})
        cols, keep, numbers = self._columns(page, pre)
        n = len(numbers)
        ring = run.c.keyring
        encrypt_many = ring.encrypt_many
        key_bis: list[list[bytes | None]] = []
        key_encs: list[list[bytes | None]] = []
        for kind, _ in run.keys:
            col = cols[kind]
            key_bis.append(ring.blind_many(col))
            key_encs.append(_spread(col, encrypt_many([v for v in col if v is not None])))
        names = cols.get("name", [None] * n)
        name_encs = _spread(names, encrypt_many([v for v in names if v is not None]))
        pre.columns = Columns(n, cols, keep, key_bis, key_encs, name_encs)
        return pre

    def resolve(self, pre: _Prepared) -> Resolved:
        """Who the rows of a prepared page are: rows whose ids nobody else has (in this page
        or earlier ones) become new people straight from the columns; only rows sharing an id
        with another row go through the page path's resolution
        (:meth:`_ImportRun._resolve`), and new people are numbered in the order it would give
        them, so both paths store the same. Pages must come in file order."""
        assert pre.columns is not None
        n, cols, keep = pre.columns.n, pre.columns.cols, pre.columns.keep
        key_bis, key_encs = pre.columns.key_bis, pre.columns.key_encs
        name_encs = pre.columns.name_encs
        pre.columns = None
        run = self.run
        complex_rows: set[int] = set()
        for (kind, scope), bis in zip(run.keys, key_bis, strict=True):
            held = self.held.setdefault((kind, scope), {})
            present = [b for b in bis if b is not None]
            distinct = set(present)
            if len(distinct) == len(present) and not any(b in held for b in distinct):
                continue  # the common case: every id of this kind is new and once in the page
            # Rows sharing an id with an earlier page or with another row of this one.
            counts: dict[bytes, int] = {}
            for b in present:
                counts[b] = counts.get(b, 0) + 1
            complex_rows.update(
                row for row, b in enumerate(bis) if b is not None and (counts[b] > 1 or b in held)
            )
        first = self.next_id
        if not complex_rows:
            self.next_id = first + n
            return self._all_new(first, n, cols, keep, key_bis, key_encs, name_encs)
        people, matched, evidence, slot_of, pending, evidence_rows = self._resolve_complex(
            sorted(complex_rows), cols, key_bis, key_encs, name_encs, extras=keep
        )
        # New people in the order of the rows that created them; ids from ``first`` on.
        new_count = len(people)
        self.next_id = first + new_count
        contacts: list[list[Any]] = [[] for _ in CONTACT_COLUMNS]
        tags: dict[str, list[int]] = defaultdict(list)
        ids: dict[tuple[str, int | None], tuple[list[int], list[bytes], list[bytes]]] = {}
        attr_cols = [cols.get(name) for name in CONTACT_COLUMNS[1:-1]]
        tag_col = cols.get("tags")
        identities_new = 0
        for offset, row in enumerate(people):
            cid = first + offset
            slot = slot_of.get(row)
            if slot is None:  # a row of its own: straight from the columns
                contacts[0].append(name_encs[row])
                for out, acol in zip(contacts[1:-1], attr_cols, strict=True):
                    out.append(None if acol is None else acol[row])
                extra = keep[row] if keep else None
                contacts[-1].append(json.dumps(extra, ensure_ascii=False) if extra else "{}")
                if tag_col is not None and tag_col[row]:
                    for name in tag_col[row]:
                        tags[name].append(cid)
                for (kind, scope), bis, encs in zip(run.keys, key_bis, key_encs, strict=True):
                    bi = bis[row]
                    if bi is not None:
                        self._add_id(ids, kind, scope, cid, cast(bytes, encs[row]), bi)
                        identities_new += 1
            else:
                slot.contact_id = cid
                v = slot.values
                contacts[0].append(v.get("name_enc"))
                for out, name in zip(contacts[1:-1], CONTACT_COLUMNS[1:-1], strict=True):
                    out.append(v.get(name))
                contacts[-1].append(
                    json.dumps(slot.extra, ensure_ascii=False) if slot.extra else "{}"
                )
                for name in slot.tags:
                    tags[name].append(cid)
        # Ids the shared rows add (to new people, numbered above, or to earlier pages' people).
        for slot, kind, scope, enc, bi in pending:
            self._add_id(ids, kind, scope, cast(int, slot.contact_id), enc, bi)
            identities_new += 1
        evidence.update(cast(int, slot_of[r].contact_id) for r in evidence_rows)
        return Resolved(
            first_id=first,
            contacts=contacts if new_count else [],
            identities=ids,
            tags=dict(tags),
            matched=matched,
            evidence=evidence,
            imported=n,
            identities_new=identities_new,
        )

    def _all_new(
        self,
        first: int,
        n: int,
        cols: dict[str, list[Any]],
        keep: list[dict[str, Any]],
        key_bis: list[list[bytes | None]],
        key_encs: list[list[bytes | None]],
        name_encs: list[bytes | None],
    ) -> Resolved:
        """A page whose every row is a new person with ids nobody else has: the columns as
        they are, person k of the page numbered ``first + k`` (what the general loop above
        gives such a page, without a Python step per row)."""
        nothing: list[Any] = [None] * n
        contacts = [name_encs, *(cols.get(name, nothing) for name in CONTACT_COLUMNS[1:-1])]
        contacts.append(
            [json.dumps(e, ensure_ascii=False) if e else "{}" for e in keep] if keep else ["{}"] * n
        )
        ids: dict[tuple[str, int | None], tuple[list[int], list[bytes], list[bytes]]] = {}
        identities_new = 0
        for key, bis, encs in zip(self.run.keys, key_bis, key_encs, strict=True):
            if None in bis:
                rows = [r for r, b in enumerate(bis) if b is not None]
                cids = [first + r for r in rows]
                blinds = [cast(bytes, bis[r]) for r in rows]
                ciphers = [cast(bytes, encs[r]) for r in rows]
            else:
                cids = list(range(first, first + n))
                blinds, ciphers = cast(list[bytes], bis), cast(list[bytes], encs)
            if cids:
                ids[key] = (cids, ciphers, blinds)
                self.held[key].update(zip(blinds, cids, strict=True))
                identities_new += len(cids)
        tags: dict[str, list[int]] = defaultdict(list)
        for row, names in enumerate(cols.get("tags", ())):
            if names:
                for name in names:
                    tags[name].append(first + row)
        return Resolved(
            first_id=first,
            contacts=contacts if n else [],
            identities=ids,
            tags=dict(tags),
            matched=[],
            evidence=set(),
            imported=n,
            identities_new=identities_new,
        )

    def _add_id(
        self,
        ids: dict[tuple[str, int | None], tuple[list[int], list[bytes], list[bytes]]],
        kind: str,
        scope: int | None,
        cid: int,
        enc: bytes,
        bi: bytes,
    ) -> None:
        cids, ciphers, blinds = ids.setdefault((kind, scope), ([], [], []))
        cids.append(cid)
        ciphers.append(enc)
        blinds.append(bi)
        if self.held[(kind, scope)].setdefault(bi, cid) != cid:
            self.more.setdefault((kind, scope, bi), set()).add(cid)

    def _columns(
        self, page: list[tuple[int, list[str]]], pre: _Prepared
    ) -> tuple[dict[str, list[Any]], list[dict[str, Any]], list[int]]:
        """Each field's normalised values for the page's valid rows (None where empty or
        bad), the rows' custom attributes (only if the file has such columns) and their
        numbers. Problems go to ``pre`` exactly as the page path reports them."""
        from qunfa.domain.fields import REPEATING_FIELDS, FieldError

        run = self.run
        header = run.plan.header
        rows = [r for _, r in page]
        width = 1 + max((i for i, _, _ in run.fields), default=0)
        if any(len(r) < width for r in rows):  # short rows: pad (a copy; rare)
            rows = [r + [""] * (width - len(r)) if len(r) < width else r for r in rows]
        raw_cols: dict[str, list[Any]] = {}
        bad: dict[int, list[tuple[str, str, str]]] = {}
        for i, f, fn in run.fields:
            cells = [r[i] for r in rows]
            try:  # one comprehension per column; the loop below only if a cell is bad
                if f in REPEATING_FIELDS:  # each distinct cell once, then a lookup per row
                    seen = {c: None if not c or c.isspace() else fn(c) for c in set(cells)}
                    raw_cols[f] = [seen[c] for c in cells]
                else:
                    raw_cols[f] = [None if not c or c.isspace() else fn(c) for c in cells]
                continue
            except FieldError:
                pass
            out: list[Any] = []
            append = out.append
            for j, r in enumerate(rows):
                raw = r[i]
                if not raw or raw.isspace():
                    append(None)
                    continue
                try:
                    append(fn(raw))
                except FieldError as exc:
                    append(None)
                    bad.setdefault(j, []).append((header[i], raw, str(exc)))
            raw_cols[f] = out
        key_cols = [raw_cols[k] for k in run.key_fields]
        valid = [j for j, has in enumerate(map(_any_set, *key_cols)) if has]
        if len(valid) == len(rows) and not bad:
            numbers = [number for number, _ in page]
            extras = [run.extra_of(r) for r in rows] if run.plan.extra else []
            return raw_cols, extras, numbers
        ok = set(valid)
        for j, (number, _) in enumerate(page):
            if j not in ok:
                run.report_rejected(pre, number, bad.get(j, []))
            elif j in bad:
                run.report_field_errors(pre, number, bad[j])
        cols = {f: [col[j] for j in valid] for f, col in raw_cols.items()}
        extras = [run.extra_of(rows[j]) for j in valid] if run.plan.extra else []
        return cols, extras, [page[j][0] for j in valid]

    def _resolve_complex(
        self,
        rows: list[int],
        cols: dict[str, list[Any]],
        key_bis: list[list[bytes | None]],
        key_encs: list[list[bytes | None]],
        name_encs: list[bytes | None],
        extras: list[dict[str, Any]],
    ) -> tuple[
        list[int],
        list[_Slot],
        set[int],
        dict[int, _Slot],
        list[tuple[_Slot, str, int | None, bytes, bytes]],
        list[int],
    ]:
        """The rows that share an id with another row, through the page path's resolution.

        Returns the page's new people in creation order (a row index each: the row that
        created them), the earlier pages' people these rows update, the merge evidence on
        earlier people, the slot of each row that created a person, the ids the rows add
        ``(slot, kind, scope, ciphertext, blind index)`` and the rows whose new person is
        merge evidence — those two wait for the caller to number the new people."""
        from qunfa.services.contacts import _Prepared

        run = self.run
        valid: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        bis: dict[str, bytes] = {}
        encs: dict[tuple[str, str], bytes] = {}
        for j in rows:
            vals = {f: col[j] for f, col in cols.items() if col[j] is not None}
            valid.append((vals, extras[j] if extras else None))
            for (kind, _), kb, ke in zip(run.keys, key_bis, key_encs, strict=True):
                bi = kb[j]
                if bi is not None:
                    bis[vals[kind]] = bi
                    encs[(kind, vals[kind])] = cast(bytes, ke[j])
        sub = _Prepared(valid=valid, errors=[], rows=0, rejected=0, field_errors=0, bis=bis)
        sub.name_encs = [name_encs[j] for j in rows]
        holders: dict[tuple[str, int | None, bytes], set[int]] = {}
        for (kind, scope), kb in zip(run.keys, key_bis, strict=True):
            held = self.held[(kind, scope)]
            for j in rows:
                bi = kb[j]
                if bi is not None and bi in held:
                    k = (kind, scope, bi)
                    holders[k] = {held[bi], *self.more.get(k, ())}
        slots, new_ids, evidence, evidence_slots = run._resolve(sub, holders)
        slot_of = {rows[s.row]: s for s in slots if s.contact_id is None}
        shared = set(rows)
        people = sorted([j for j in range(len(name_encs)) if j not in shared] + list(slot_of))
        pending = [
            (slots[slot_no], kind, scope, encs[(kind, value)], bi)
            for slot_no, kind, scope, value, bi in new_ids
        ]
        evidence_rows = [rows[slots[i].row] for i in evidence_slots if slots[i].row >= 0]
        evidence.update(cast(int, slots[i].contact_id) for i in evidence_slots if slots[i].row < 0)
        matched = [s for s in slots if s.contact_id is not None]
        return people, matched, evidence, slot_of, pending, evidence_rows


def _any_set(*values: Any) -> bool:
    return any(v is not None for v in values)


def _spread(col: list[Any], made: list[bytes]) -> list[bytes | None]:
    """``made`` (one per non-None entry of ``col``, in order) aligned with ``col``."""
    it = iter(made)
    return [None if v is None else next(it) for v in col]


def count_rows(path: Path) -> int | None:
    """Data rows of a CSV file (by its line ends: a quoted cell with a line break counts one
    more) or of an XLSX file's first sheet (:func:`xlsx_rows`); None if unknown. Only an
    estimate, used to decide whether to bulk-load and to size the progress bar."""
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return xlsx_rows(path)
    if suffix != ".csv":
        return None
    lines, last = 0, b"\n"
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(0, lines + (last != b"\n") - 1)


_DIMENSION = re.compile(rb"<(?:\w+:)?dimension\s+ref=\"[A-Z]+[0-9]+(?::[A-Z]+([0-9]+))?\"")


def xlsx_rows(path: Path) -> int | None:
    """Data rows of the first sheet of an XLSX file from the ``<dimension ref="A1:G1000001">``
    at the head of its XML (Excel and the usual libraries write it), without loading the
    sheet; None if the file has none or is not a readable workbook."""
    import zipfile

    from qunfa.services.xlsx_reader import Unsupported, open_book

    try:
        with zipfile.ZipFile(path) as z, z.open(open_book(z).sheet) as fh:
            head = fh.read(4096)
    except (OSError, KeyError, Unsupported, zipfile.BadZipFile):
        return None
    m = _DIMENSION.search(head)
    if m is None:
        return None
    return max(0, int(m[1] or 1) - 1)  # "A1" alone: a sheet of one row (the header)


def applies(conn: Connection, run: _ImportRun, path: Path) -> tuple[int, int] | None:
    """``(next contact id, data rows of the file)`` if this import may bulk-load (see the
    module docstring), else None. Call it holding the write lock: nobody may add ids between
    this check and the load."""
    if conn.dialect.name != "sqlite" or path.stat().st_size < BULK_BYTES:
        return None
    rows = count_rows(path)
    if rows is None or rows > BULK_MAX_ROWS:
        return None
    for kind, scope in run.keys:
        present = conn.execute(
            text(
                "SELECT 1 FROM identities WHERE kind = :kind AND "
                + ("account_id IS NULL" if scope is None else "account_id = :scope")
                + " LIMIT 1"
            ),
            {"kind": kind, "scope": scope},
        ).first()
        if present is not None:
            return None
    top = conn.execute(text("SELECT max(id) FROM contacts")).scalar()
    return int(top or 0) + 1, rows


def drop_indexes(conn: Connection) -> list[tuple[str, str]]:
    """Drop the named indexes of :data:`TABLES` (in the caller's transaction) and return
    ``(name, CREATE statement)`` of each, for :func:`rebuild_indexes`."""
    found = [
        (str(name), str(sql))
        for name, sql in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({', '.join(repr(t) for t in TABLES)}) ORDER BY name"
        )
    ]
    for name, _ in found:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return found


def rebuild_indexes(conn: Connection, dropped: list[tuple[str, str]]) -> Iterator[str]:
    """Create the dropped indexes again, yielding each name when done. A duplicate that a
    unique index rejects fails the statement, and the caller's transaction rolls back."""
    for name, sql in dropped:
        conn.exec_driver_sql(sql)
        yield name


def append(conn: Connection, run: _ImportRun, res: Resolved) -> None:
    """Write one resolved page: updates of earlier pages' people, then the new people, their
    ids and tags, appended with constants in the statements instead of bound per row."""
    now = repr(float(run.now))
    if res.matched:
        run._update_existing(conn, res.matched)
    dbapi: Any = conn.connection.driver_connection
    cur = dbapi.cursor()
    try:
        if res.new:
            # Only the columns this page has values in are bound (a file without time zones
            # binds no NULL time zone a row); the others take their defaults.
            used = [
                (name, col)
                for name, col in zip(CONTACT_COLUMNS, res.contacts, strict=True)
                if any(v is not None for v in col)
                and (name != "attrs" or col.count("{}") < len(col))
            ]
            cur.executemany(
                "INSERT INTO contacts (id, created_at, updated_at"
                + "".join(f", {name}" for name, _ in used)
                + f") VALUES (?, {now}, {now}"
                + ", ?" * len(used)
                + ")",
                zip(
                    range(res.first_id, res.first_id + res.new), *(c for _, c in used), strict=True
                ),
            )
        for (kind, scope), (cids, ciphers, blinds) in res.identities.items():
            account = "NULL" if scope is None else str(int(scope))
            if not kind.replace("_", "").isalnum():  # inlined below: a field name, never data
                raise ValueError(f"unexpected identity kind {kind!r}")
            cur.executemany(
                "INSERT INTO identities (contact_id, account_id, kind, value_enc, value_bi, "
                f"subscribed, subscribed_at, updated_at) VALUES (?, {account}, '{kind}', ?, ?, "
                f"1, {now}, {now})",
                zip(cids, ciphers, blinds, strict=True),
            )
        for name, cids in res.tags.items():
            tag = run.tag_id(conn, name)
            # One statement per tag and page: the ids as one JSON array, unpacked by SQLite
            # (binding 800,000 one-id rows cost ~1.3 s more at 1M people).
            cur.execute(
                f"INSERT INTO contact_tags (tag_id, contact_id) SELECT {tag}, value "
                "FROM json_each(?)",
                (json.dumps(cids),),
            )
            run.touched_tags.add(tag)
    finally:
        cur.close()
    if res.matched:
        run._tag(conn, res.matched, {s.contact_id for s in res.matched if s.contact_id})
    run.imported += res.imported
    run.new += res.new
    run.identities_new += res.identities_new
    run.evidence.update(res.evidence)
