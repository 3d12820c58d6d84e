"""The streaming XLSX reader (services/xlsx_reader.py) reads what python-calamine reads.

The reference is what ``read_table`` made of a workbook before the streaming reader: calamine's
cells through ``_cell``. Hypothesis writes random sheets with xlsxwriter (shared and inline
strings, numbers, booleans, dates in many formats, formulas, rich text, gaps, empty rows, an
offset start, both date systems) and compares the two readers row by row, with the XML read
in chunks as small as 64 bytes so every boundary (inside a cell, a row, a shared string) is
crossed. Hand-written workbooks cover what xlsxwriter never writes: another attribute order,
rows and cells without ``r``, shared strings out of first-use order, phonetic runs, prefixed
tags, CJK date formats and damaged files.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import xlsxwriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from python_calamine import CalamineWorkbook

from qunfa.services import xlsx_reader as xr
from qunfa.services.contacts import ImportError_, _cell, read_table

# --- the two readers -----------------------------------------------------------------------------


def _trim(row: list[str]) -> list[str]:
    """Calamine pads every row to the sheet's width; the streaming reader does not."""
    end = len(row)
    while end and row[end - 1] == "":
        end -= 1
    return row[:end]


def calamine_rows(path: Path) -> list[list[str]]:
    """Calamine's rows from A1, cut where the streaming reader starts: at the first row with
    a value (the header), from the header's first used column. Calamine keeps the empty rows
    and columns before them, and ``read_table`` refused such a sheet for an empty header."""
    sheet = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0)
    rows = [[_cell(v) for v in r] for r in sheet.iter_rows()]
    while rows and not any(rows[0]):
        del rows[0]
    if not rows:
        return []
    origin = next(i for i, v in enumerate(rows[0]) if v)
    rows[0] = [v.strip() for v in rows[0]]
    return [_trim(r[origin:]) for r in rows]


def streamed_rows(path: Path) -> list[list[str]]:
    header, rows = xr.read_rows(path)
    return [_trim(r) for r in [header, *rows]] if header else []


@contextmanager
def chunk_size(n: int) -> Iterator[None]:
    old, xr.CHUNK = xr.CHUNK, n
    try:
        yield
    finally:
        xr.CHUNK = old


# --- random sheets -------------------------------------------------------------------------------

DATE_FORMATS = [
    "yyyy-mm-dd",
    "yyyy-mm-dd hh:mm:ss",
    "hh:mm",
    "m/d/yy h:mm",
    'yyyy"年"m"月"d"日"',
    "[$-409]d-mmm-yy;@",
    "[h]:mm:ss",
    "mm:ss.0",
    "h:mm AM/PM",
    14,
    22,
]
OTHER_FORMATS = ["0.00", "0.00%", "#,##0", "@", '"mm"0', "[Red]0", "0_m"]

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)
cell = st.one_of(
    st.tuples(st.just("text"), text),
    st.tuples(st.just("phone"), st.integers(13_000_000_000, 19_999_999_999)),
    st.tuples(st.just("int"), st.integers(-(10**15), 10**15)),
    st.tuples(
        st.just("float"),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
    ),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(
        st.just("date"),
        st.tuples(
            # From 1904-01-02: before it a date is a negative number in the 1904 system,
            # which Excel shows as ##### and calamine reads as midnight.
            st.datetimes(dt.datetime(1904, 1, 2), dt.datetime(2100, 1, 1)),
            st.sampled_from(DATE_FORMATS),
        ),
    ),
    st.tuples(st.just("serial"), st.tuples(st.integers(0, 70), st.sampled_from(DATE_FORMATS))),
    st.tuples(
        st.just("formatted"),
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from(OTHER_FORMATS)),
    ),
    st.tuples(st.just("formula"), text),
    st.tuples(st.just("rich"), st.tuples(text, text)),
    st.tuples(st.just("blank"), st.none()),
)
sheets = st.fixed_dictionaries(
    {
        "header": st.lists(text.filter(lambda s: s.strip() != ""), min_size=1, max_size=5),
        "rows": st.lists(
            st.one_of(st.none(), st.lists(st.one_of(st.none(), cell), max_size=5)), max_size=12
        ),
        "at": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "inline": st.booleans(),
        "date1904": st.booleans(),
        "chunk": st.sampled_from([64, 301, 4096, 1 << 20]),
    }
)


def write_sheet(path: Path, spec: dict[str, Any]) -> None:
    wb = xlsxwriter.Workbook(
        str(path), {"constant_memory": spec["inline"], "date_1904": spec["date1904"]}
    )
    ws = wb.add_worksheet()
    formats: dict[Any, Any] = {}

    def fmt(code: Any) -> Any:
        if code not in formats:
            formats[code] = wb.add_format({"num_format": code})
        return formats[code]

    bold = wb.add_format({"bold": True})
    r0, c0 = spec["at"]
    width = len(spec["header"])
    for j, name in enumerate(spec["header"]):
        ws.write_string(r0, c0 + j, name)
    for i, row in enumerate(spec["rows"], start=r0 + 1):
        for j, value in enumerate((row or [])[:width]):
            if value is None:
                continue
            kind, v = value
            c = c0 + j
            if kind == "text":
                ws.write_string(i, c, v)
            elif kind in ("phone", "int", "float"):
                ws.write_number(i, c, v)
            elif kind == "bool":
                ws.write_boolean(i, c, v)
            elif kind == "date":
                ws.write_datetime(i, c, v[0], fmt(v[1]))
            elif kind in ("serial", "formatted"):
                ws.write_number(i, c, v[0], fmt(v[1]))
            elif kind == "formula":
                ws.write_formula(i, c, '="x"', None, v)
            elif kind == "rich":
                ws.write_rich_string(i, c, v[0], bold, v[1])
            else:
                ws.write_blank(i, c, None, bold)
    wb.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=sheets)
def test_random_sheets_read_as_calamine_reads_them(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "sheet.xlsx"
    write_sheet(path, spec)
    with chunk_size(spec["chunk"]):
        assert streamed_rows(path) == calamine_rows(path)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    code=st.text(alphabet='dmyhsAPM0#.,;[]"\\_ -/:@年月日', min_size=1, max_size=10),
    serial=st.sampled_from([0.25, 1.0, 32875.0, 32875.5]),
)
def test_custom_number_formats_are_dates_when_calamine_says_so(
    tmp_path: Path, code: str, serial: float
) -> None:
    path = tmp_path / "formats.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet()
    ws.write_string(0, 0, "value")
    ws.write_number(1, 0, serial, wb.add_format({"num_format": code}))
    wb.close()
    assert streamed_rows(path) == calamine_rows(path)


@given(st.integers(0, 16_383))
def test_column_letters_and_index_are_inverse(index: int) -> None:
    letters = xr.column_letters(index)
    assert letters.isalpha() and letters.isupper()
    assert xr.column_index(letters) == index
    assert xr.column_index(letters.encode()) == index


# --- hand-written workbooks ----------------------------------------------------------------------

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
WORKBOOK = (
    f'<workbook xmlns="{MAIN}" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships">{pr}<sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
RELS = (
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/worksheet" Target="worksheets/sheet1.xml"/>'
    '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/sharedStrings" Target="sharedStrings.xml"/>'
    '<Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/styles" Target="styles.xml"/></Relationships>'
)
CONTENT_TYPES = (
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
    'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.'
    'openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.spreadsheetml.sharedStrings+xml"/>'
    '<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.spreadsheetml.styles+xml"/></Types>'
)
ROOT_RELS = (
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
)


def styles(*num_fmt_ids: int) -> str:
    xfs = "".join(f'<xf numFmtId="{n}" fontId="0" fillId="0" borderId="0"/>' for n in num_fmt_ids)
    return (
        f'<styleSheet xmlns="{MAIN}"><fonts count="1"><font/></fonts><fills count="1"><fill/>'
        f'</fills><borders count="1"><border/></borders><cellXfs count="{len(num_fmt_ids) + 1}">'
        f'<xf numFmtId="0" fontId="0" fillId="0" borderId="0"/>{xfs}</cellXfs></styleSheet>'
    )


def workbook(
    path: Path,
    sheet_data: str,
    strings: list[str] | str = (),  # type: ignore[assignment]
    *,
    style: str = styles(),
    pr: str = "",
    root: str = f'<worksheet xmlns="{MAIN}">',
    end: str = "</worksheet>",
) -> Path:
    sst = strings if isinstance(strings, str) else "".join(f"<si><t>{s}</t></si>" for s in strings)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", CONTENT_TYPES)
        z.writestr("_rels/.rels", ROOT_RELS)
        z.writestr("xl/workbook.xml", WORKBOOK.format(pr=pr))
        z.writestr("xl/_rels/workbook.xml.rels", RELS)
        z.writestr("xl/styles.xml", style)
        z.writestr("xl/sharedStrings.xml", f'<sst xmlns="{MAIN}">{sst}</sst>')
        z.writestr(
            "xl/worksheets/sheet1.xml",
            f'<?xml version="1.0" encoding="UTF-8"?>{root}<sheetData>{sheet_data}</sheetData>'
            + end,
        )
    return path


def test_other_attribute_orders_and_missing_refs(tmp_path: Path) -> None:
    """A chunk the fast paths do not read goes to ElementTree; if the first chunk of a longer
    sheet already needs it, the whole file goes to calamine (faster for such a writer)."""
    data = (
        '<row r="1"><c t="s" r="A1"><v>0</v></c><c t="s" r="B1"><v>1</v></c></row>'
        # no r on the row or its cells: the next row, the next columns
        '<row><c t="s"><v>2</v></c><c><v>5</v></c></row>'
        # a gap of two rows, then cells with the style after the type
        '<row r="5"><c r="B5" t="n" s="0"><v>1.5</v></c></row>'
    )
    path = workbook(tmp_path / "order.xlsx", data, ["phone", "name", "13800138000"])
    expected = [["13800138000", "5"], [], [], ["", "1.5"]]
    header, rows = xr.read_rows(path)  # one chunk: ElementTree
    assert header == ["phone", "name"]
    assert list(rows) == expected
    with chunk_size(32):
        with pytest.raises(xr.Unsupported, match="shape"):
            xr.read_rows(path)
        header, rows = read_table(path)  # calamine
        assert header == ["phone", "name"]
        assert [_trim(r) for r in rows] == expected
    # A later chunk in another shape is read by ElementTree, in place.
    fast = '<row r="{n}"><c r="A{n}" t="s"><v>2</v></c></row>'
    later = "".join(fast.format(n=n) for n in range(2, 40)) + (
        '<row r="40"><c t="s" r="B40"><v>2</v></c></row>'
    )
    path = workbook(
        tmp_path / "later.xlsx",
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>' + later,
        ["phone", "name", "13800138000"],
    )
    with chunk_size(256):
        header, rows = xr.read_rows(path)
        assert list(rows) == [["13800138000"]] * 38 + [["", "13800138000"]]


def test_shared_strings_out_of_first_use_order_and_rich_items(tmp_path: Path) -> None:
    sst = (
        (
            "<si><t>phone</t></si>"
            '<si><r><rPr><b/></rPr><t xml:space="preserve">Zhang </t></r><r><t>San</t></r>'
            '<rPh sb="0" eb="1"><t>ちょう</t></rPh></si>'
            "<si/>"
            "<si><t>a &amp; b _x000D_ &lt;c&gt;</t></si>"
        )
        + "".join(f"<si><t>filler{i}</t></si>" for i in range(200))
        + "<si><t>last</t></si>"
    )
    data = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>204</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>1</v></c><c r="B2" t="s"><v>3</v></c></row>'
        '<row r="3"><c r="A3" t="s"><v>2</v></c><c r="B3" t="s"><v>4</v></c></row>'
    )
    path = workbook(tmp_path / "sst.xlsx", data, sst)
    with chunk_size(64):
        header, rows = xr.read_rows(path)
        assert header == ["phone", "last"]
        assert list(rows) == [["Zhang San", "a & b \r <c>"], ["", "filler0"]]
    assert streamed_rows(path) == calamine_rows(path)


def test_cjk_builtin_date_formats_read_as_dates(tmp_path: Path) -> None:
    """Excel in Chinese saves 年月日 dates with built-in ids (31, 57, 58) that calamine reads
    as plain numbers; a birthday column formatted so must arrive as a date."""
    data = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2" s="1"><v>32875</v></c><c r="B2" s="2"><v>32875</v></c></row>'
    )
    path = workbook(tmp_path / "cjk.xlsx", data, ["birthday", "month"], style=styles(31, 57))
    header, rows = xr.read_rows(path)
    assert header == ["birthday", "month"]
    assert list(rows) == [["1990-01-02", "1990-01-02"]]


def test_1904_date_system(tmp_path: Path) -> None:
    data = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'
        '<row r="2"><c r="A2" s="1"><v>31413</v></c></row>'
    )
    path = workbook(
        tmp_path / "d1904.xlsx",
        data,
        ["birthday"],
        style=styles(14),
        pr='<workbookPr date1904="1"/>',
    )
    assert streamed_rows(path) == [["birthday"], ["1990-01-02"]] == calamine_rows(path)


def test_a_prefixed_sheet_goes_to_the_general_reader(tmp_path: Path) -> None:
    data = '<x:row r="1"><x:c r="A1" t="s"><x:v>0</x:v></x:c></x:row>'
    path = workbook(
        tmp_path / "prefixed.xlsx",
        data.replace("<x:row", "<x:row").replace("sheetData", "x:sheetData"),
        ["phone"],
        root=f'<x:worksheet xmlns:x="{MAIN}">',
        end="</x:worksheet>",
    )
    # The sheetData tags are written unprefixed by the helper: make them prefixed too.
    raw = {n: zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()}
    sheet = raw["xl/worksheets/sheet1.xml"].replace(b"<sheetData>", b"<x:sheetData>")
    raw["xl/worksheets/sheet1.xml"] = sheet.replace(b"</sheetData>", b"</x:sheetData>")
    with zipfile.ZipFile(path, "w") as z:
        for name, body in raw.items():
            z.writestr(name, body)
    with pytest.raises(xr.Unsupported):
        xr.read_rows(path)
    header, rows = read_table(path)  # calamine reads it
    assert header == ["phone"] and list(rows) == []


def test_a_truncated_sheet_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    rows = "".join(
        f'<row r="{i}"><c r="A{i}" t="s"><v>{i - 1}</v></c></row>' for i in range(1, 400)
    )
    path = workbook(tmp_path / "cut.xlsx", rows, [f"1380013{i:04d}" for i in range(399)])
    raw = {n: zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist()}
    sheet = raw["xl/worksheets/sheet1.xml"]
    raw["xl/worksheets/sheet1.xml"] = sheet[: len(sheet) // 2]
    with zipfile.ZipFile(path, "w") as z:
        for name, body in raw.items():
            z.writestr(name, body)
    with chunk_size(256):
        header, data = read_table(path)
        assert header == ["13800130000"]
        with pytest.raises(ImportError_, match=r"cut\.xlsx is damaged .*ends before"):
            list(data)


def test_a_cell_naming_a_missing_shared_string_is_a_clear_error(tmp_path: Path) -> None:
    data = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>7</v></c></row>'
    )
    path = workbook(tmp_path / "bad.xlsx", data, ["phone"])
    with pytest.raises(
        ImportError_, match=r"bad\.xlsx is damaged \(a cell names shared string 7, "
    ):
        list(read_table(path)[1])


def test_header_and_empty_sheets(tmp_path: Path) -> None:
    empty = workbook(tmp_path / "empty.xlsx", "", [])
    with pytest.raises(ImportError_, match="is empty"):
        read_table(empty)
    # Leading empty rows and columns: the header is the first row with a value, from its
    # first used column; trailing empty (styled) rows are not rows.
    data = (
        '<row r="2"><c r="C2" s="0"/></row>'
        '<row r="3"><c r="B3" t="s"><v>0</v></c><c r="C3" t="s"><v>1</v></c></row>'
        '<row r="4"><c r="B4" t="s"><v>2</v></c></row>'
        '<row r="9" s="1" customFormat="1"/><row r="10"><c r="D10" s="0"/></row>'
    )
    path = workbook(tmp_path / "offset.xlsx", data, [" phone ", "name", "13800138000"])
    header, rows = read_table(path)
    assert header == ["phone", "name"] and list(rows) == [["13800138000"]]


@pytest.mark.parametrize("chunk", [48, 1 << 20])
def test_a_sheet_of_text_with_cells_lacking_a_value_or_a_ref(tmp_path: Path, chunk: int) -> None:
    """The all-shared-strings path places cells by their refs; an empty cell without one
    (<c/>) is skipped, and a row without attributes sends the chunk to the general path."""
    data = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c s="0"/><c r="B2" t="s"><v>2</v></c></row>'
        '<row r="3"><c r="A3" t="s"><v>2</v></c><c/><c r="C3" t="s"><v>3</v></c></row>'
        '<row><c r="A4" t="s"><v>3</v></c></row>'
    )
    path = workbook(tmp_path / "text.xlsx", data, ["phone", "name", "13800138000", "x"])
    with chunk_size(chunk):
        header, rows = xr.read_rows(path)
        assert header == ["phone", "name"]
        assert list(rows) == [["", "13800138000"], ["13800138000", "", "x"], ["x"]]
