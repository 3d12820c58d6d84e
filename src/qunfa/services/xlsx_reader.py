"""A streaming reader for the first sheet of an XLSX file: its rows as text, a chunk at a time.

``python-calamine`` (the general reader, kept for XLS, ODS and whatever this module declines)
parses a whole sheet into memory before it yields the first row: ~5 s and ~1 GB for a sheet
of 1,000,000 rows, during which an import has nothing to work on, and the import's header read
paid it once more. This reader inflates the sheet's XML a MiB at a time and turns each chunk
of complete ``<row>`` elements into rows with a few C-level calls (a findall, a split, maps),
so the first rows are ready in milliseconds and memory stays flat; the shared-string table is
parsed the same way, lazily, as far as the rows so far need it (writers number strings in
order of first use). 1,000,000 rows of text: ~4.6 s (docs/performance.md, "Contact import").

What it returns equals what ``read_table`` made of calamine's cells (``_cell``): text as is,
numbers as ``13800138000`` / ``1.5``, booleans as ``true``/``false``, error cells empty,
date-formatted numbers as ISO dates (``1990-01-02``, ``1990-01-02 03:04:05``, ``13:30:00``)
and elapsed times (``[h]:mm:ss``) as ``12:30:00``, by calamine's rules (built-in formats
14-22 and 45-47, custom formats by their first date token outside quotes, brackets and
escapes, the 1900 and 1904 date systems); ``tests/unit/test_xlsx_reader.py`` checks that
against calamine with Hypothesis. Deliberate differences: the built-in formats 27-36 and
50-58, which Excel uses for dates in Chinese, Japanese and Korean locales (31 is
``yyyy"年"m"月"d"日"``), are dates here, where calamine reads numbers; and the header is the
first row holding a value, from its first used column, where calamine starts at A1 (an
empty first row made ``read_table`` refuse the file).

Three paths, the fastest that fits each chunk: every cell a shared string (a sheet of text)
→ one findall of ``<v>`` and slices; cells as Excel, WPS, xlsxwriter and openpyxl write them
(attributes in the order ``r s t``) → one findall of a cell pattern; anything else → the
chunk parsed by ElementTree. Each fast path checks its counts (cells, rows) against the
chunk and steps aside when they differ, so an unusual writer costs time, never data. A
workbook this module cannot read at all (prefixed tags, an encoding other than UTF-8, no
first sheet), or whose first chunk already needs ElementTree (a writer with another cell shape
throughout, for which calamine is faster), raises :class:`Unsupported` before any row, and
the caller uses calamine.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate, chain, compress, count, islice, repeat
from operator import itemgetter, not_
from pathlib import Path
from typing import IO

CHUNK = 1 << 20  # bytes of XML per findall: big enough to amortise, small enough to stream

_NS_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_NS_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_NS_PKG = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_SST_TYPE = "/sharedStrings"


class Unsupported(Exception):
    """This workbook is not one the streaming reader reads; use the general reader."""


# --- the workbook's parts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Book:
    """Where the first sheet and the shared strings are, and how its numbers read as dates."""

    sheet: str
    strings: str | None
    date_styles: frozenset[int]  # indices into cellXfs whose number format is a date
    duration_styles: frozenset[int]  # ... an elapsed time ([h]:mm:ss)
    date1904: bool


def _part(base: str, target: str) -> str:
    return target.lstrip("/") if target.startswith("/") else base + target


def open_book(z: zipfile.ZipFile) -> Book:
    """The first sheet's part name, the shared-string part and the date styles; raises
    :class:`Unsupported` when the workbook does not say (or says it in a way not read here)."""
    try:
        wb = ET.fromstring(z.read("xl/workbook.xml"))
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
    except (KeyError, ET.ParseError) as exc:
        raise Unsupported(f"no readable workbook part ({exc})") from None
    first = wb.find(f"{_NS_MAIN}sheets/{_NS_MAIN}sheet")
    if first is None:
        raise Unsupported("the workbook lists no sheet")
    pr = wb.find(f"{_NS_MAIN}workbookPr")
    date1904 = pr is not None and pr.get("date1904", "0").lower() in ("1", "true")
    targets = {r.get("Id"): r for r in rels.iter(f"{_NS_PKG}Relationship")}
    sheet_rel = targets.get(first.get(f"{_NS_REL}id"))
    if sheet_rel is None or not sheet_rel.get("Target"):
        raise Unsupported("the first sheet has no part")
    strings = next(
        (
            _part("xl/", r.get("Target", ""))
            for r in targets.values()
            if r.get("Type", "").endswith(_SST_TYPE) and r.get("Target")
        ),
        None,
    )
    dates, durations = _date_styles(z)
    return Book(
        sheet=_part("xl/", sheet_rel.get("Target", "")),
        strings=strings if strings in z.namelist() else None,
        date_styles=dates,
        duration_styles=durations,
        date1904=date1904,
    )


# Built-in number formats that are dates: calamine's 14-22, 45 and 47, plus the CJK-locale
# date formats 27-36 and 50-58 (ECMA-376 18.8.30 leaves them to the locale; in zh-CN,
# 31 is yyyy"年"m"月"d"日" and 57/58 are yyyy"年"m"月" / m"月"d"日"). 46 is [h]:mm:ss.
_BUILTIN_DATES = frozenset([*range(14, 23), *range(27, 37), 45, 47, *range(50, 59)])
_BUILTIN_DURATIONS = frozenset([46])
DATE, DURATION = "date", "duration"


def format_kind(code: str) -> str | None:
    """What a custom number format shows (calamine's rule): :data:`DATE` for a date letter
    (d m h y s) or ``AM/PM`` outside quotes, brackets and escapes, :data:`DURATION` for an
    elapsed time (``[h]``, ``[mm]``, ``[s]``), whichever comes first in the first section;
    else None."""
    escaped = quoted = ampm = hms = False
    brackets = 0
    prev = " "
    for ch in code:
        if escaped:
            escaped = False
        elif ch in "_\\*":  # escape, skip-width and fill: the next character is a literal
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == ";":
            return None
        elif ch == "[":
            brackets += 1
        elif ch == "]" and brackets == 1 and hms:
            return DURATION
        elif ch == "]":
            brackets = max(0, brackets - 1)
        elif ch in "aA" and not ampm and brackets == 0:
            ampm = True
        elif brackets == 0 and ch in ("pmPM/" if ampm else "dmhysDMHYS"):
            return DATE
        elif not (hms and ch.lower() == prev.lower()):
            hms = prev == "[" and ch in "mhsMHS"
        prev = ch
    return None


def _date_styles(z: zipfile.ZipFile) -> tuple[frozenset[int], frozenset[int]]:
    """The cell styles (indices into ``cellXfs``) that show a date, and those that show a
    duration."""
    try:
        styles = ET.fromstring(z.read("xl/styles.xml"))
    except (KeyError, ET.ParseError):
        return frozenset(), frozenset()
    custom = {
        int(f.get("numFmtId", "-1")): f.get("formatCode", "")
        for f in styles.iter(f"{_NS_MAIN}numFmt")
    }
    xfs = styles.find(f"{_NS_MAIN}cellXfs")
    dates: set[int] = set()
    durations: set[int] = set()
    for index, xf in enumerate(() if xfs is None else xfs.findall(f"{_NS_MAIN}xf")):
        fid = int(xf.get("numFmtId", "0"))
        if fid in custom:
            kind = format_kind(custom[fid])
        else:
            kind = (
                DATE if fid in _BUILTIN_DATES else DURATION if fid in _BUILTIN_DURATIONS else None
            )
        if kind == DATE:
            dates.add(index)
        elif kind == DURATION:
            durations.add(index)
    return frozenset(dates), frozenset(durations)


# --- text ----------------------------------------------------------------------------------------

_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _unescape(s: str) -> str:
    """Text as an XML parser reports it: line ends normalised (a raw CR is a LF), entities
    and then OOXML's ``_xHHHH_`` (a character XML cannot hold, e.g. _x000D_) undone."""
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    if "&" in s:
        s = html.unescape(s)
    return _ooxml(s)


def _escaped(xml: bytes) -> bool:
    """Whether text in this XML may need :func:`_unescape`."""
    return b"&" in xml or b"_x" in xml or b"\r" in xml


def _ooxml(s: str) -> str:
    """OOXML's ``_xHHHH_`` escapes undone (ElementTree has already undone the entities)."""
    return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), s) if "_x" in s else s


def _decode_all(items: list[bytes], escaped: bool = True) -> list[str]:
    """UTF-8 items decoded in one call (joined by NUL, which XML cannot contain) and split:
    ~3× faster than one ``decode`` each at millions of items. ``escaped``: whether any item
    may hold an entity or an ``_xHHHH_`` (the caller checked the chunk they came from)."""
    out = b"\x00".join(items).decode("utf-8").split("\x00") if items else []
    return [_unescape(s) for s in out] if escaped else out


_RICH_TEXT = re.compile(rb"<t(?:\s[^>]*)?>([^<]*)</t>")
_PHONETIC = re.compile(rb"<rPh\b.*?</rPh>", re.S)


def _rich(inner: bytes) -> bytes:
    """The text of a run-formatted string: its ``<t>`` parts, phonetic runs left out."""
    return b"".join(_RICH_TEXT.findall(_PHONETIC.sub(b"", inner)))


# --- shared strings ------------------------------------------------------------------------------

_SI_SIMPLE = re.compile(rb"<si><t(?:\s[^>]*)?>([^<]*)</t></si>|<si><t\s*/></si>|<si/>")
_SI_ANY = re.compile(rb"<si\b[^>]*/>|<si\b[^>]*>(.*?)</si>", re.S)


class SharedStrings:
    """The shared-string table, parsed a chunk at a time as far as a lookup needs."""

    def __init__(self, fh: IO[bytes] | None) -> None:
        self._fh = fh
        self._tail = b""
        self.items: list[str] = []

    def __getitem__(self, index: int) -> str:
        self.ensure(index + 1)
        if not 0 <= index < len(self.items):
            raise ValueError(
                f"a cell names shared string {index}, and the workbook has {len(self.items)}"
            )
        return self.items[index]

    def ensure(self, count: int) -> None:
        """At least ``count`` strings parsed, or all there are."""
        while len(self.items) < count and self._more():
            pass

    def _more(self) -> bool:
        if self._fh is None:
            return False
        data = self._fh.read(CHUNK)
        if not data:
            self._fh = None
            return False
        buf = self._tail + data
        # After the last whole item (``</si>`` or an empty ``<si/>``); the rest waits.
        cut = max(buf.rfind(b"</si>"), buf.rfind(b"<si/>")) + 5
        if cut < 5:
            self._tail = buf
            return True
        body, self._tail = buf[:cut], buf[cut:]
        self.items.extend(_plain_items(body) or _items(body))
        return True


def _plain_items(body: bytes) -> list[str] | None:
    """The strings of a chunk in which every item is ``<si><t>text</t></si>`` (what most
    writers write for text without formatting), by one decode and one split; else None."""
    n = body.count(b"<si>")
    first = body.find(b"<si><t>")
    if n == 0 or first < 0 or _escaped(body):
        return None
    end = body.rfind(b"</t></si>")
    items = body[first + 7 : end].decode("utf-8").split("</t></si><si><t>")
    # A text cannot hold the separator (its "<" would be escaped), so each split is an item
    # boundary; any other item (<si/>, rich text, <t xml:space=…>) lacks one on a side and
    # leaves fewer pieces than items.
    return items if len(items) == n else None


def _items(body: bytes) -> list[str]:
    """The strings of any chunk: simple items by one findall, rich text by its runs."""
    found = _SI_SIMPLE.findall(body)
    if len(found) != body.count(b"<si>") + body.count(b"<si/>") or b"<si " in body:
        found = [inner if b"<" not in inner else _rich(inner) for inner in _SI_ANY.findall(body)]
    return _decode_all(found, _escaped(body))


# --- cells ---------------------------------------------------------------------------------------

# One match per cell of a chunk: column letters, style, type, the <v> text, the <is> content.
# Excel, WPS, xlsxwriter and openpyxl write the attributes in this order; a cell written
# otherwise does not match, the chunk's counts disagree and the chunk goes to ElementTree.
_CELL = re.compile(
    rb'<c r="([A-Z]{1,3})\d+"(?: s="(\d+)")?(?: t="(\w+)")?(?: (?:cm|vm|ph)="\d+")*\s*'
    rb"(?:/>|>(?:<f\b[^>]*/>|<f\b[^>]*>[^<]*</f>)?(?:<v>([^<]*)</v>)?(?:<is>(.*?)</is>)?</c>)",
    re.S,
)
_ROW_NUMBER = re.compile(rb'<row r="(\d+)"')
_VALUE = re.compile(rb"<v>([^<]*)</v>")
_REF = re.compile(rb'<c r="([A-Z]{1,3})\d')
_EPOCH_1900 = datetime(1899, 12, 30)
_EPOCH_1904 = datetime(1904, 1, 1)


def column_letters(index: int) -> str:
    """0 → ``A``, 25 → ``Z``, 26 → ``AA``."""
    out = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        out = chr(65 + rem) + out
    return out


def column_index(letters: bytes | str) -> int:
    """``A`` → 0, ``Z`` → 25, ``AA`` → 26."""
    n = 0
    for ch in letters.encode() if isinstance(letters, str) else letters:
        n = n * 26 + ch - 64
    return n - 1


def _date_text(serial: float, date1904: bool) -> str:
    """A date-formatted number as calamine reads it, then as ``_cell`` writes it: whole days
    a date, under one day a time, else a date and time (to the millisecond)."""
    ms = round(serial * 86_400_000)
    if 0 <= ms < 86_400_000:
        return (datetime.min + timedelta(milliseconds=ms)).time().isoformat()
    if not date1904 and serial < 60:
        ms += 86_400_000  # Excel's 1900-02-29, which never was: calamine counts from 12-31
    epoch = _EPOCH_1904 if date1904 else _EPOCH_1900
    try:
        when = epoch + timedelta(milliseconds=ms)
    except OverflowError:
        return _number_text(repr(serial).encode())
    if ms % 86_400_000 == 0:
        d: date = when.date()
        return d.isoformat()
    return when.isoformat(sep=" ")


def _number_text(v: bytes) -> str:
    """``13800138000`` for an integral number, else Python's shortest repr (``_cell``)."""
    if v.isdigit() and len(v) <= 15 and (v[:1] != b"0" or len(v) == 1):
        return v.decode()
    try:
        f = float(v)
    except ValueError:
        return v.decode(errors="replace")
    return str(int(f)) if f.is_integer() else repr(f)


class _Cells:
    """Turns the tokens of a chunk into cell text (shared by the fast and ElementTree paths)."""

    def __init__(self, book: Book, strings: SharedStrings) -> None:
        self.book = book
        self.strings = strings
        self.numbers: dict[bytes, str] = {}  # repeated numbers (ages, amounts) parse once
        self.columns: dict[bytes, int] = {}
        self.shared_seen = 0  # shared-string cells so far: no index they used can exceed it
        # last_letters[n]: the letters of column n (1-based), what a dense row of n ends with
        self.last_letters = [b"", *(column_letters(i).encode() for i in range(16_384))]
        self.last_refs = [b'<c r="' + x for x in self.last_letters]
        self.shapes: dict[tuple[bytes, ...], Callable[[list[str]], tuple[str, ...]]] = {}

    def texts(self, found: list[tuple[bytes, ...]], shared: int) -> list[str] | None:
        """The text of every cell matched in a chunk, in order; None if one is malformed.

        Shared strings are looked up by index without a call: the table is first read as far
        as this chunk can need (writers number strings in order of first use, so the index a
        cell uses is below the count of shared-string cells so far); a file numbered otherwise
        has the rest of the table read at the first miss."""
        self.shared_seen += shared
        self.strings.ensure(self.shared_seen)
        items, text = self.strings.items, self.text
        for _ in range(2):
            try:
                return [
                    items[int(v)] if t == b"s" else text(s, t, v, inline)
                    for _, s, t, v, inline in found
                ]
            except IndexError:
                self.strings.ensure(1 << 62)
            except ValueError:
                return None
        raise ValueError("a cell names a shared string the workbook does not have")

    def place(self, letters: tuple[bytes, ...], texts: list[str]) -> list[str]:
        """A row with gaps: each text at the column of its cell's letters.

        Rows with gaps repeat a few shapes (the same optional column left empty): each shape
        becomes an ``itemgetter`` once, which builds the row in one call."""
        if len(letters) != len(texts):
            raise ValueError(f"a row's cell references do not read: {letters[:20]!r}")
        place = self.shapes.get(letters)
        if place is None:
            place = self.shapes[letters] = self._shape(letters)
        return list(place([*texts, ""]))

    def _shape(self, letters: tuple[bytes, ...]) -> Callable[[list[str]], tuple[str, ...]]:
        """The getter that turns a row's texts (with "" appended) into its cells from A."""
        width = max(map(self.column, letters)) + 1
        source = [len(letters)] * width  # the appended "": a column with no cell
        for i, col in enumerate(letters):
            source[self.column(col)] = i  # a repeated column: the later cell wins
        get = itemgetter(*source)
        return get if width > 1 else lambda texts: (get(texts),)

    def text(self, style: bytes, kind: bytes, v: bytes, inline: bytes) -> str:
        if kind == b"s":
            return self.strings[int(v)] if v else ""
        if not kind or kind == b"n":
            if not v:
                return ""
            if style and (int(style) in self.book.date_styles):
                try:
                    return _date_text(float(v), self.book.date1904)
                except ValueError:
                    return v.decode(errors="replace")
            if style and (int(style) in self.book.duration_styles):
                try:
                    return str(timedelta(milliseconds=round(float(v) * 86_400_000)))
                except (ValueError, OverflowError):
                    return v.decode(errors="replace")
            out = self.numbers.get(v)
            if out is None:
                out = self.numbers[v] = _number_text(v)
            return out
        if kind == b"inlineStr":
            return _decode_all([_rich(inline)])[0]
        if kind == b"str":
            return _decode_all([v])[0]
        if kind == b"b":
            return "true" if v.strip() in (b"1", b"true") else "false"
        if kind == b"e":
            return ""
        if kind == b"d":
            return _iso_text(v.decode())
        return _decode_all([v])[0]

    def column(self, letters: bytes) -> int:
        n = self.columns.get(letters)
        if n is None:
            n = self.columns[letters] = column_index(letters)
        return n


def _iso_text(s: str) -> str:
    """A ``t="d"`` cell (ISO 8601 text) as ``_cell`` writes the date, time or datetime."""
    try:
        when = datetime.fromisoformat(s.strip().rstrip("Z"))
    except ValueError:
        try:
            return time.fromisoformat(s.strip()).isoformat()
        except ValueError:
            return s
    if when.time() == time(0) and "T" not in s and ":" not in s:
        return when.date().isoformat()
    return when.isoformat(sep=" ")


Row = tuple[int, list[str]]  # (1-based sheet row, cells from column A)
Block = tuple[int, list[list[str]]]  # consecutive rows from the first one's sheet row number


def _block(rows: list[Row]) -> Block | None:
    """Numbered rows as consecutive ones, the missing rows empty."""
    if not rows:
        return None
    first = rows[0][0]
    out: list[list[str]] = []
    for number, row in rows:
        gap = number - first - len(out)
        if gap > 0:
            out.extend([] for _ in range(gap))
        out.append(row)
    return first, out


def _rows_shared(chunk: bytes, cells: _Cells) -> Block | None:
    """A chunk in which every cell is a shared string (``<c r="B7" t="s"><v>12</v></c>``, a
    sheet of text), with C-level calls only for the common rows: the values by one findall of
    ``<v>``, each row a slice of them. None if the chunk is not all such cells.

    A row is a slice when it is dense (columns A..n for n cells): cells come in column order
    (the spec requires it), so that is when its last cell's ref is column n of its own row.
    Rows with gaps (an empty cell is usually left out) are placed by their letters."""
    cells_n = chunk.count(b' t="s"><v>')
    if cells_n != chunk.count(b'<c r="'):
        return None
    numbers = _ROW_NUMBER.findall(chunk)
    parts = chunk.split(b"<row ")
    if not numbers or not len(numbers) == len(parts) - 1 == chunk.count(b"<row"):
        return None
    first = int(numbers[0])
    if int(numbers[-1]) - first != len(numbers) - 1:
        return None  # gaps between rows: the general path numbers each row
    cells.shared_seen += cells_n
    cells.strings.ensure(cells.shared_seen)
    values = _VALUE.findall(chunk)
    if len(values) != cells_n:  # a cell of another kind (<c> without r, a number …)
        return None
    items = cells.strings.items
    try:
        texts = list(map(items.__getitem__, map(int, values)))
    except IndexError:
        cells.strings.ensure(1 << 62)
        texts = [cells.strings[int(v)] for v in values]
    except ValueError:
        return None
    del parts[0]  # what precedes the first row
    # Cells with an r, per row: every one holds a value (the counts above). A cell without
    # r and without a value (<c s="1"/>) is nothing to place.
    counts = list(map(bytes.count, parts, repeat(b'<c r="')))
    ends = list(accumulate(counts))
    rows = list(map(texts.__getitem__, map(slice, chain((0,), ends), ends)))
    lasts = map(bytes.rfind, parts, repeat(b'<c r="'))
    wanted = map(bytes.__add__, map(cells.last_refs.__getitem__, counts), numbers)
    dense = map(bytes.startswith, parts, wanted, lasts)
    for i in compress(count(), map(not_, dense)):
        if counts[i]:
            rows[i] = cells.place(tuple(_REF.findall(parts[i])), rows[i])
    return first, rows


def _cell_count(xml: bytes) -> int:
    """The ``<c>`` elements in a run of rows: every tag there starting "<c" but the run
    properties of inline rich text (``<color>``, ``<charset>``, ``<condense>``)."""
    n = xml.count(b"<c")
    if b"<is>" in xml:
        n -= sum(map(xml.count, (b"<color", b"<charset", b"<condense")))
    return n


def _rows_fast(chunk: bytes, cells: _Cells) -> list[Row] | None:
    """The chunk's rows from two findalls and a split; None if a row or cell did not match
    the fast patterns (the caller then parses the chunk with ElementTree)."""
    found = _CELL.findall(chunk)
    numbers = _ROW_NUMBER.findall(chunk)
    parts = chunk.split(b"<row ")
    # Every element in <sheetData> starting "<c" is a cell and every "<row" a row: a count
    # that differs means one did not match (another attribute order, no r, a prefix …).
    rows_n = chunk.count(b"<row")
    if len(found) != _cell_count(chunk) or not len(numbers) == len(parts) - 1 == rows_n:
        return None
    texts = cells.texts(found, chunk.count(b' t="s"'))
    if texts is None:
        return None
    out: list[Row] = []
    last_letters = cells.last_letters
    at = 0
    for number, part in zip(numbers, islice(parts, 1, None), strict=True):
        n = _cell_count(part)
        end = at + n
        row = texts[at:end]
        # Cells come in column order (the spec requires it), so a row whose last cell is in
        # column n is dense: A..n, nothing to place. Others have gaps (an empty cell is
        # usually left out) and are placed by their letters.
        if n and found[end - 1][0] != last_letters[n]:
            row = cells.place(tuple(f[0] for f in found[at:end]), row)
        out.append((int(number), row))
        at = end
    return out


def _rows_tree(chunk: bytes, root_tag: bytes, cells: _Cells, last: int) -> list[Row]:
    """The general path: the chunk's ``<row>`` elements parsed with ElementTree."""
    # Writers put control characters in <v> raw (xlsxwriter does in formula results), which
    # XML 1.0 and so ElementTree refuse: they travel as private-use characters and come back.
    chunk = _CONTROL.sub(lambda m: chr(0xE000 + m[0][0]).encode(), chunk)
    try:
        tree = ET.fromstring(root_tag + chunk + b"</worksheet>")
    except ET.ParseError as exc:
        raise ValueError(f"the sheet's XML is not well-formed near row {last + 1}: {exc}") from None
    out: list[Row] = []
    for el in tree.iter(f"{_NS_MAIN}row"):
        r = el.get("r")
        last = int(r) if r else last + 1
        row: list[str] = []
        for c in el.iter(f"{_NS_MAIN}c"):
            ref = c.get("r")
            at = cells.column(re.sub(r"\d+", "", ref).encode()) if ref else len(row)
            v = c.find(f"{_NS_MAIN}v")
            inline = c.find(f"{_NS_MAIN}is")
            vtext = (v.text or "") if v is not None else ""
            itext = (
                "".join(
                    t.text or "" for t in inline.iter(f"{_NS_MAIN}t") if not _in_phonetic(inline, t)
                )
                if inline is not None
                else ""
            )
            vtext, itext = vtext.translate(_UNCONTROL), itext.translate(_UNCONTROL)
            kind = c.get("t", "")
            if kind == "inlineStr":
                value = _ooxml(itext)
            elif kind in ("str", "e"):
                value = "" if kind == "e" else _ooxml(vtext)
            else:
                value = cells.text(c.get("s", "").encode(), kind.encode(), vtext.encode(), b"")
            if at >= len(row):
                row.extend([""] * (at - len(row)))
                row.append(value)
            else:
                row[at] = value
        out.append((last, row))
    return out


def _in_phonetic(inline: ET.Element, t: ET.Element) -> bool:
    return any(t in list(ph.iter()) for ph in inline.iter(f"{_NS_MAIN}rPh"))


_ROOT = re.compile(rb"<worksheet\b[^>]*>")
_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f]")
_UNCONTROL = {0xE000 + c: c for c in (*range(1, 9), 11, 12, *range(14, 32))}


def _sheet_rows(fh: IO[bytes], cells: _Cells) -> Iterator[list[list[str]]]:
    """The sheet's rows from row 1 on, a chunk's at a time, a row missing from the XML empty."""
    head = fh.read(CHUNK)
    while b"<sheetData" not in head and len(head) < (16 << 20):
        more = fh.read(CHUNK)
        if not more:
            break
        head += more
    if not head.lstrip(b"\xef\xbb\xbf").startswith(b"<?xml") and b"<worksheet" not in head[:512]:
        raise Unsupported("the sheet is not UTF-8 XML")
    if re.search(rb"<\?xml[^>]*encoding=\"(?!utf-8|UTF-8)", head[:200]):
        raise Unsupported("the sheet is not UTF-8")
    root = _ROOT.search(head)
    start = head.find(b"<sheetData")
    if root is None or start < 0:
        raise Unsupported("the sheet has no <worksheet>/<sheetData> (prefixed tags?)")
    root_tag = root[0]
    at = head.find(b">", start) + 1
    if head[at - 2 : at] == b"/>":
        return  # <sheetData/>: an empty sheet
    buf = head[at:]
    last = 0  # the sheet row number of the last row yielded
    while True:
        end = buf.find(b"</sheetData>")
        if end >= 0:
            body, tail, done = buf[:end], b"", True
        else:
            cut = buf.rfind(b"</row>") + 6  # after the last whole row; the rest waits
            cut = cut if cut >= 6 else 0
            body, tail, done = buf[:cut], buf[cut:], False
        if body.strip():
            block = _rows_shared(body, cells)
            if block is None:
                numbered = _rows_fast(body, cells)
                if numbered is None:
                    if last == 0 and not done:
                        # The first chunk already needs ElementTree (~4× slower than
                        # calamine): this writer's cells are not the usual shape. Nothing has
                        # been handed out yet, so the general reader can take the whole file.
                        raise Unsupported("cells written in a shape the fast paths do not read")
                    numbered = _rows_tree(body, root_tag, cells, last)
                block = _block(numbered)
            if block:
                first, rows = block
                if first > last + 1:
                    yield [[] for _ in range(first - last - 1)]
                yield rows
                last = first + len(rows) - 1
        if done:
            return
        data = fh.read(CHUNK)
        if not data:
            raise ValueError("the sheet's XML ends before </sheetData>: the file is truncated")
        buf = tail + data


def read_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """The header and the data rows of the first sheet, as ``read_table`` returns them: rows
    from the first row holding a value, from the first column the header uses, with empty rows
    inside the sheet kept (as calamine keeps them) and trailing empty rows dropped.

    Raises :class:`Unsupported` (before any row) for a workbook the caller should give to the
    general reader, ``ValueError`` naming the problem for a damaged one."""
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise Unsupported(f"not a zip file ({exc})") from None
    try:
        book = open_book(z)
        strings = SharedStrings(z.open(book.strings) if book.strings else None)
        sheet = z.open(book.sheet)
    except KeyError as exc:
        z.close()
        raise Unsupported(f"a part the workbook names is missing ({exc})") from None
    except Unsupported:
        z.close()
        raise
    blocks = _sheet_rows(sheet, _Cells(book, strings))
    try:
        for block in blocks:
            at = next((i for i, r in enumerate(block) if any(r)), None)
            if at is not None:
                break
        else:
            z.close()
            return [], iter(())
    except BaseException:
        z.close()
        raise
    header = block[at]
    origin = next(i for i, v in enumerate(header) if v)
    rest = chain([block[at + 1 :]], blocks)
    return [h.strip() for h in header[origin:]], _data(z, rest, origin)


def _data(
    z: zipfile.ZipFile, blocks: Iterator[list[list[str]]], origin: int
) -> Iterator[list[str]]:
    """The rows after the header; trailing empty rows dropped (calamine's sheet ends at the
    last value). The workbook is closed when the rows run out or the caller drops them."""
    try:
        pending = 0  # empty rows seen, yielded only if a row with a value follows
        for rows in blocks:
            if not pending and not origin and all(map(any, rows)):
                yield from rows  # the usual block: every row holds a value
                continue
            for row in rows:
                if not any(row):
                    pending += 1
                    continue
                while pending:
                    yield []
                    pending -= 1
                yield row[origin:] if origin else row
    finally:
        z.close()
