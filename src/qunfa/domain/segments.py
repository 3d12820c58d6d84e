"""The segment expression language: tokenizer, parser, AST, JSON form, printer, validation.

A segment is a boolean expression over what qunfa knows about a person, e.g.::

    tag("VIP") and city in ("上海", "北京") and last_active_within(30d) and not opted_out("sms")

This module is pure (standard library only): it turns text or the console builder's JSON into
an AST of frozen dataclasses, checks it against the :data:`FUNCTIONS` and :data:`ATTRIBUTES`
registries and prints it back. Compiling the AST to SQL lives in
:mod:`qunfa.storage.segment_sql`. The language is documented in ``docs/segments.md``.

Every error is a :class:`SegmentError`; errors in text carry the 1-based column of the
offending character and ``str(err)`` shows the source with a caret under it. Errors in the
JSON form name the JSON path instead (``$.and[1].in[0]``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "ATTRIBUTES",
    "COMPARE_OPS",
    "DURATION_UNITS",
    "FUNCTIONS",
    "LAYERS",
    "And",
    "Arg",
    "AttributeSpec",
    "Call",
    "Compare",
    "Duration",
    "FunctionSpec",
    "In",
    "Node",
    "Not",
    "Or",
    "SegmentError",
    "Token",
    "Value",
    "ValueType",
    "from_json",
    "parse_segment",
    "pretty",
    "to_json",
    "tokenize",
    "validate",
]

MAX_DEPTH = 64  # nesting of parentheses / not / and / or; deeper input is refused, not crashed
DURATION_UNITS: dict[str, int] = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}
COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")
ORDERED_OPS = frozenset({"<", "<=", ">", ">="})
KEYWORDS = frozenset({"and", "or", "not", "in"})


# --- errors -------------------------------------------------------------------------------------


class SegmentError(ValueError):
    """A segment that cannot be read or is not valid.

    ``column`` is 1-based in ``source`` (``len(source) + 1`` means "at the end"); ``path`` is
    the JSON path for errors in the JSON form. ``str(err)`` shows a caret line when both the
    source and the column are known.
    """

    def __init__(
        self,
        message: str,
        column: int | None = None,
        *,
        source: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.source = source
        self.path = path

    @property
    def line_column(self) -> tuple[int, int] | None:
        """``(line, column)`` of the error in a multi-line source, both 1-based, or None."""
        if self.column is None or self.source is None:
            return None
        offset = self.column - 1
        line = self.source.count("\n", 0, offset) + 1
        return line, offset - (self.source.rfind("\n", 0, offset) + 1) + 1

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description (the API's error body): message, line, column, path."""
        lc = self.line_column
        return {
            "message": self.message,
            "line": lc[0] if lc else None,
            "column": lc[1] if lc else self.column,
            "offset": self.column,
            "path": self.path,
            "text": str(self),
        }

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.message} (at {self.path})"
        if self.column is None:
            return self.message
        head = f"{self.message} (column {self.column})"
        if self.source is None:
            return head
        # Show the line that holds the column, the caret under the offending character.
        offset = self.column - 1
        start = self.source.rfind("\n", 0, offset) + 1
        end = self.source.find("\n", offset)
        line = self.source[start : end if end >= 0 else len(self.source)]
        line = line.replace("\t", " ").replace("\r", " ")
        return f"{head}\n  {line}\n  {' ' * (offset - start)}^"


# --- the AST ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    """A length of time: ``30d``, ``12h``, ``90m``, ``2w``."""

    amount: int
    unit: Literal["m", "h", "d", "w"]

    @property
    def seconds(self) -> int:
        return self.amount * DURATION_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


Value: TypeAlias = str | int | float
Arg: TypeAlias = str | int | float | Duration


@dataclass(frozen=True)
class Call:
    """A registered function applied to literal arguments: ``tag("VIP")``."""

    name: str
    args: tuple[Arg, ...]
    col: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Compare:
    """``attribute op literal``: ``age >= 18``, ``device == "ios"``."""

    attr: str
    op: str
    value: Value
    col: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class In:
    """``attribute in (literal, …)``: ``city in ("上海", "北京")``."""

    attr: str
    values: tuple[Value, ...]
    col: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    operand: Node
    col: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class And:
    """Two or more operands; ``a and b and c`` is one ``And`` of three."""

    operands: tuple[Node, ...]
    col: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Or:
    """Two or more operands; ``a or b or c`` is one ``Or`` of three."""

    operands: tuple[Node, ...]
    col: int = field(default=0, compare=False, repr=False)


Node: TypeAlias = Call | Compare | In | Not | And | Or


# --- the registry -------------------------------------------------------------------------------

ValueType = Literal["str", "int", "number", "duration"]


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    params: tuple[tuple[str, ValueType], ...]  # (name, type)
    doc: str
    # Closed vocabularies for string parameters, by parameter name: layer("silent") is checked
    # when the segment is read, with the column, instead of matching nobody at run time.
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def signature(self) -> str:
        return f"{self.name}({', '.join(f'{t} {n}' for n, t in self.params)})"

    def choices_for(self, param: str) -> tuple[str, ...] | None:
        return dict(self.choices).get(param)


# The built-in layers of ``layer(name)``; their SQL meaning is in storage/segment_sql.py and
# docs/segments.md (new, silent, high_value from facts and registration; ios/android by device).
LAYERS = ("new", "silent", "high_value", "ios", "android")


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: Literal["str", "int", "number"]
    doc: str


FUNCTIONS: dict[str, FunctionSpec] = {
    f.name: f
    for f in (
        FunctionSpec("tag", (("name", "str"),), "the person carries the tag (by name)"),
        FunctionSpec(
            "last_active_within",
            (("period", "duration"),),
            "the person interacted within the period",
        ),
        FunctionSpec(
            "registered_within", (("period", "duration"),), "the person is new within the period"
        ),
        FunctionSpec(
            "opted_out", (("channel", "str"),), "the person withdrew consent for the channel"
        ),
        FunctionSpec(
            "has_identity",
            (("kind", "str"),),
            "the person has a subscribed identity of the kind (openid, phone, email, …)",
        ),
        FunctionSpec(
            "said",
            (("text", "str"), ("period", "duration")),
            "the person sent a message containing the text within the period",
        ),
        FunctionSpec(
            "layer",
            (("name", "str"),),
            "the person is in a built-in layer: " + " | ".join(LAYERS),
            choices=(("name", LAYERS),),
        ),
    )
}

ATTRIBUTES: dict[str, AttributeSpec] = {
    a.name: a
    for a in (
        AttributeSpec("city", "str", "city, e.g. 上海"),
        AttributeSpec("province", "str", "province, e.g. 广东"),
        AttributeSpec("gender", "str", "male | female | unknown"),
        AttributeSpec("device", "str", "device OS: ios | android | other"),
        AttributeSpec("age", "int", "age in whole years"),
        AttributeSpec("spend_3m", "number", "spend over the last three months (yuan)"),
        AttributeSpec("rfm_segment", "str", "RFM layer, e.g. high_value, silent, new"),
        AttributeSpec("interactions_7d", "int", "interactions over the last seven days"),
    )
}


def _known_functions() -> str:
    return ", ".join(f.signature() for f in FUNCTIONS.values())


def _known_attributes() -> str:
    return ", ".join(f"{a.name} ({a.type})" for a in ATTRIBUTES.values())


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


# --- validation (shared by the parser and the JSON reader) ---------------------------------------


class _Where:
    """Where an error is reported: a column in the text, or a JSON path."""

    def __init__(self, *, source: str | None = None, path: str | None = None) -> None:
        self.source = source
        self.path = path

    def error(self, message: str, column: int | None = None) -> SegmentError:
        if self.path is not None:
            return SegmentError(message, None, path=self.path)
        return SegmentError(message, column, source=self.source)


def _type_name(value: object) -> str:
    if isinstance(value, Duration):
        return "duration"
    if isinstance(value, str):
        return "string"
    return "number"


def _fits(value: object, wanted: ValueType) -> bool:
    if isinstance(value, bool):
        return False
    if wanted == "duration":
        return isinstance(value, Duration)
    if wanted == "str":
        return isinstance(value, str)
    if wanted == "int":
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


_WANTED = {
    "str": "a string",
    "int": "a whole number",
    "number": "a number",
    "duration": "a duration",
}


def _check_call(name: str, args: Sequence[object], where: _Where, col: int) -> None:
    spec = FUNCTIONS.get(name)
    if spec is None:
        hint = ""
        if name in ATTRIBUTES:
            hint = f"'{name}' is an attribute: compare it, e.g. {name} == …; "
        raise where.error(
            f"unknown function '{name}'; {hint}{_suggest(name, list(FUNCTIONS))}"
            f"known functions: {_known_functions()}",
            col,
        )
    if len(args) != len(spec.params):
        raise where.error(
            f"{spec.signature()} takes {len(spec.params)} argument"
            f"{'s' if len(spec.params) != 1 else ''}, got {len(args)}",
            col,
        )
    for i, arg in enumerate(args):
        _check_arg(spec, i, arg, where, col)


def _check_arg(spec: FunctionSpec, i: int, arg: object, where: _Where, col: int) -> None:
    pname, ptype = spec.params[i]
    if not _fits(arg, ptype):
        raise where.error(
            f"argument '{pname}' of {spec.signature()} must be {_WANTED[ptype]}"
            f"{' like 30d, 12h, 90m or 2w' if ptype == 'duration' else ''}, "
            f"got {_type_name(arg)}",
            col,
        )
    if isinstance(arg, Duration) and arg.amount <= 0:
        raise where.error(f"duration {arg} must be positive", col)
    allowed = spec.choices_for(pname)
    if allowed is not None and arg not in allowed:
        raise where.error(
            f"argument '{pname}' of {spec.signature()} must be one of "
            f"{', '.join(repr(a) for a in allowed)}; {_suggest(str(arg), allowed)}got {arg!r}",
            col,
        )


def _check_attr(name: str, where: _Where, col: int) -> AttributeSpec:
    spec = ATTRIBUTES.get(name)
    if spec is None:
        hint = ""
        if name in FUNCTIONS:
            hint = f"'{name}' is a function: call it, e.g. {FUNCTIONS[name].signature()}; "
        raise where.error(
            f"unknown attribute '{name}'; {hint}{_suggest(name, list(ATTRIBUTES))}"
            f"known attributes: {_known_attributes()}; known functions: {_known_functions()}",
            col,
        )
    return spec


def _check_value(spec: AttributeSpec, value: object, where: _Where, col: int) -> None:
    if not _fits(value, spec.type):
        raise where.error(
            f"attribute '{spec.name}' is {spec.type}: compare it with {_WANTED[spec.type]}, "
            f"got {_type_name(value)}{' ' + repr(value) if isinstance(value, float) else ''}",
            col,
        )


def _check_compare(
    attr: str, op: str, value: object, where: _Where, col: int, value_col: int | None = None
) -> None:
    spec = _check_attr(attr, where, col)
    if op not in COMPARE_OPS:
        raise where.error(f"unknown comparison {op!r}; use one of {' '.join(COMPARE_OPS)}", col)
    if op in ORDERED_OPS and spec.type == "str":
        raise where.error(f"attribute '{attr}' is a string: use == , != or in, not {op}", col)
    _check_value(spec, value, where, col if value_col is None else value_col)


def validate(node: Node) -> None:
    """Check a programmatically built AST against the registry (the parser already does)."""
    _validate(node, "$", 0)


def _validate(node: object, path: str, depth: int) -> None:
    where = _Where(path=path)
    if depth > MAX_DEPTH:
        raise where.error(f"expression nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, Call):
        _check_call(node.name, node.args, where, 0)
    elif isinstance(node, Compare):
        _check_compare(node.attr, node.op, node.value, where, 0)
    elif isinstance(node, In):
        spec = _check_attr(node.attr, where, 0)
        if not node.values:
            raise where.error(f"'{node.attr} in (…)' needs at least one value")
        for v in node.values:
            _check_value(spec, v, where, 0)
    elif isinstance(node, Not):
        _validate(node.operand, f"{path}.not", depth + 1)
    elif isinstance(node, And | Or):
        key = "and" if isinstance(node, And) else "or"
        if len(node.operands) < 2:
            raise where.error(f"'{key}' needs at least two operands")
        for i, child in enumerate(node.operands):
            _validate(child, f"{path}.{key}[{i}]", depth + 1)
    else:
        raise where.error(f"not a segment node: {type(node).__name__}")


# --- tokenizer ----------------------------------------------------------------------------------

TokenKind = Literal["string", "number", "duration", "ident", "keyword", "op", "(", ")", ",", "eof"]


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str  # the source text of the token
    value: Arg | None  # decoded literal for string / number / duration
    col: int  # 1-based column of the first character


_FULLWIDTH = {
    "（": "(",
    "）": ")",
    "，": ",",
    "“": '"',
    "”": '"',
    "＝": "=",
    "＞": ">",
    "＜": "<",
    "！": "!",
}
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r"}


def _is_ident_start(ch: str) -> bool:
    return ("a" <= ch <= "z") or ch == "_"


def _is_ident_char(ch: str) -> bool:
    return _is_ident_start(ch) or ("0" <= ch <= "9")


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def tokenize(text: str) -> Iterator[Token]:
    """Yield the tokens of ``text``, ending with an ``eof`` token; bad input raises."""
    n = len(text)
    i = 0
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            yield Token("eof", "", None, n + 1)
            return
        ch = text[i]
        col = i + 1
        if ch == '"':
            value, i = _read_string(text, i)
            yield Token("string", text[col - 1 : i], value, col)
        elif _is_digit(ch) or (ch == "-" and i + 1 < n and _is_digit(text[i + 1])):
            tok, i = _read_number(text, i)
            yield tok
        elif _is_ident_start(ch):
            j = i
            while j < n and _is_ident_char(text[j]):
                j += 1
            word = text[i:j]
            yield Token("keyword" if word in KEYWORDS else "ident", word, None, col)
            i = j
        elif ch in "(),":
            yield Token(ch, ch, None, col)  # type: ignore[arg-type]
            i += 1
        elif ch in "=!<>":
            two = text[i : i + 2]
            if two in ("==", "!=", "<=", ">="):
                yield Token("op", two, None, col)
                i += 2
            elif ch in "<>":
                yield Token("op", ch, None, col)
                i += 1
            elif ch == "=":
                raise SegmentError("use '==' to compare, not '='", col, source=text)
            else:
                raise SegmentError("use 'not' to negate, or '!=' to compare", col, source=text)
        elif ch in _FULLWIDTH:
            raise SegmentError(
                f"full-width {ch!r} is not part of the language; use {_FULLWIDTH[ch]!r}",
                col,
                source=text,
            )
        elif ch == "'":
            raise SegmentError('strings use double quotes: "…"', col, source=text)
        elif "A" <= ch <= "Z":
            raise SegmentError(
                "names are lower case: functions, attributes and and/or/not/in", col, source=text
            )
        elif ch in "&|":
            word = "and" if ch == "&" else "or"
            raise SegmentError(f"use '{word}' instead of {ch!r}", col, source=text)
        else:
            raise SegmentError(f"unexpected character {ch!r}", col, source=text)


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read the string literal opening at ``start``; return its value and the next index."""
    n = len(text)
    out: list[str] = []
    i = start + 1
    while True:
        if i >= n:
            raise SegmentError("unterminated string", start + 1, source=text)
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\n":
            raise SegmentError(
                "unterminated string (a string cannot span lines; use \\n)",
                start + 1,
                source=text,
            )
        if ch < " ":
            raise SegmentError(
                f"control character U+{ord(ch):04X} in a string; write it as \\u{ord(ch):04x}",
                i + 1,
                source=text,
            )
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise SegmentError("unterminated string", start + 1, source=text)
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == "u":
            code, i = _read_u(text, i)
            if 0xD800 <= code <= 0xDBFF and text[i : i + 2] == "\\u":
                low, j = _read_u(text, i)
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i = j
            if 0xD800 <= code <= 0xDFFF:
                raise SegmentError("lone surrogate in \\u escape", i - 5, source=text)
            out.append(chr(code))
        else:
            raise SegmentError(
                f'unknown escape \\{esc}; use \\" \\\\ \\n \\t \\r \\/ or \\uXXXX',
                i + 1,
                source=text,
            )


def _read_u(text: str, i: int) -> tuple[int, int]:
    """Read ``\\uXXXX`` at ``i``; return the code unit and the next index."""
    digits = text[i + 2 : i + 6]
    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise SegmentError("\\u needs four hex digits, e.g. \\u4e0a", i + 1, source=text)
    return int(digits, 16), i + 6


def _read_number(text: str, start: int) -> tuple[Token, int]:
    n = len(text)
    i = start + 1 if text[start] == "-" else start
    while i < n and _is_digit(text[i]):
        i += 1
    is_float = False
    if i < n and text[i] == "." and i + 1 < n and _is_digit(text[i + 1]):
        is_float = True
        i += 1
        while i < n and _is_digit(text[i]):
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and _is_digit(text[j]):
            is_float = True
            i = j
            while i < n and _is_digit(text[i]):
                i += 1
    raw = text[start:i]
    col = start + 1
    if not is_float and i < n and text[i] in DURATION_UNITS:
        unit = text[i]
        if raw.startswith("-"):
            raise SegmentError("a duration cannot be negative", col, source=text)
        if i + 1 < n and _is_ident_char(text[i + 1]):
            raise SegmentError(
                "a duration is a whole number and one unit: m, h, d or w (e.g. 30d)",
                col,
                source=text,
            )
        dur = Duration(int(raw), unit)  # type: ignore[arg-type]
        return Token("duration", raw + unit, dur, col), i + 1
    if i < n and (_is_ident_char(text[i]) or text[i] == "."):
        raise SegmentError(
            f"malformed number or duration near {text[start : i + 1]!r} "
            "(durations: 30d, 12h, 90m, 2w)",
            col,
            source=text,
        )
    value: int | float = float(raw) if is_float else int(raw)
    if isinstance(value, float) and not math.isfinite(value):
        raise SegmentError(f"number {raw} is out of range", col, source=text)
    return Token("number", raw, value, col), i


# --- parser -------------------------------------------------------------------------------------
#
#   segment  := or_expr EOF
#   or_expr  := and_expr ("or" and_expr)*
#   and_expr := not_expr ("and" not_expr)*
#   not_expr := "not" not_expr | primary
#   primary  := "(" or_expr ")" | call | compare | in_test
#   call     := IDENT "(" [literal ("," literal)*] ")"
#   compare  := IDENT OP literal
#   in_test  := IDENT "in" "(" literal ("," literal)* [","] ")"
#   literal  := STRING | NUMBER | DURATION


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(tokenize(text))
        self.pos = 0
        self.depth = 0
        self.where = _Where(source=text)

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def error(self, message: str, tok: Token | None = None) -> SegmentError:
        return SegmentError(message, (tok or self.tok).col, source=self.text)

    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def at(self, kind: TokenKind) -> bool:
        return self.tok.kind == kind

    def is_kw(self, word: str) -> bool:
        return self.at("keyword") and self.tok.text == word

    def expect(self, kind: TokenKind, what: str) -> Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {_describe(self.tok)}")
        return self.advance()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels")

    def segment(self) -> Node:
        if self.at("eof"):
            raise self.error('empty segment: write a condition, e.g. tag("VIP")')
        node = self.or_expr()
        if not self.at("eof"):
            if self.at(")"):
                raise self.error("unbalanced ')'")
            raise self.error(f"expected 'and', 'or' or the end, found {_describe(self.tok)}")
        return node

    def or_expr(self) -> Node:
        self.enter()
        col = self.tok.col
        items = [self.and_expr()]
        while self.is_kw("or"):
            self.advance()
            items.append(self.and_expr())
        self.depth -= 1
        return items[0] if len(items) == 1 else Or(tuple(items), col)

    def and_expr(self) -> Node:
        col = self.tok.col
        items = [self.not_expr()]
        while self.is_kw("and"):
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items), col)

    def not_expr(self) -> Node:
        if self.is_kw("not"):
            tok = self.advance()
            self.enter()
            operand = self.not_expr()
            self.depth -= 1
            return Not(operand, tok.col)
        return self.primary()

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "(":
            self.advance()
            if self.at(")"):
                raise self.error("empty parentheses: write a condition inside")
            node = self.or_expr()
            if not self.at(")"):
                raise self.error(
                    f"expected ')' to close the '(' at column {tok.col}, "
                    f"found {_describe(self.tok)}"
                )
            self.advance()
            return node
        if tok.kind != "ident":
            raise self.error(
                f'expected a condition (a function call like tag("VIP") or a comparison '
                f"like age >= 18), found {_describe(tok)}"
            )
        self.advance()
        name = tok.text
        nxt = self.tok
        if nxt.kind == "(":
            return self.call(tok)
        if nxt.kind == "op":
            self.advance()
            value = self.literal()
            self.check_literal_value(value)
            _check_compare(name, nxt.text, value.value, self.where, tok.col, value.col)
            return Compare(name, nxt.text, value.value, tok.col)  # type: ignore[arg-type]
        if nxt.kind == "keyword" and nxt.text == "in":
            spec = _check_attr(name, self.where, tok.col)
            self.advance()
            self.expect("(", "'(' after 'in'")
            values: list[Value] = []
            while True:
                lit = self.literal()
                self.check_literal_value(lit)
                _check_value(spec, lit.value, _Where(source=self.text), lit.col)
                values.append(lit.value)  # type: ignore[arg-type]
                if self.at(","):
                    self.advance()
                    if self.at(")"):
                        break
                    continue
                break
            self.expect(")", "',' or ')' in the list")
            return In(name, tuple(values), tok.col)
        if name in FUNCTIONS:
            raise self.error(f"'{name}' is a function: call it, e.g. {FUNCTIONS[name].signature()}")
        _check_attr(name, self.where, tok.col)
        raise self.error(
            f"expected a comparison (== != < <= > >=) or 'in' after '{name}', "
            f"found {_describe(nxt)}"
        )

    def call(self, name_tok: Token) -> Node:
        name = name_tok.text
        if name not in FUNCTIONS:
            _check_call(name, (), self.where, name_tok.col)  # raises: unknown function
        self.advance()  # "("
        args: list[Arg] = []
        arg_cols: list[int] = []
        if not self.at(")"):
            while True:
                lit = self.literal()
                args.append(lit.value)  # type: ignore[arg-type]
                arg_cols.append(lit.col)
                if not self.at(","):
                    break
                self.advance()
        if not self.at(")"):
            raise self.error(
                f"expected ',' or ')' in the call of {name}, found {_describe(self.tok)}"
            )
        close = self.advance()
        spec = FUNCTIONS[name]
        if len(args) != len(spec.params):
            col = arg_cols[len(spec.params)] if len(args) > len(spec.params) else close.col
            _check_call(name, args, self.where, col)
        for i, (arg, col) in enumerate(zip(args, arg_cols, strict=True)):
            _check_arg(spec, i, arg, self.where, col)
        return Call(name, tuple(args), name_tok.col)

    def literal(self) -> Token:
        tok = self.tok
        if tok.kind in ("string", "number", "duration"):
            return self.advance()
        raise self.error(
            f'expected a value (a "string", a number or a duration), found {_describe(tok)}'
        )

    def check_literal_value(self, tok: Token) -> None:
        if tok.kind == "duration":
            raise self.error("a duration is only allowed as a function argument", tok)


def _describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "the end of the segment"
    if tok.kind == "keyword":
        return f"'{tok.text}'"
    if tok.kind == "ident":
        return f"name '{tok.text}'"
    if tok.kind in ("string", "number", "duration"):
        return f"{tok.kind} {tok.text}"
    return f"'{tok.text}'"


def parse_segment(text: str) -> Node:
    """Parse and validate a segment expression; raise :class:`SegmentError` with a column."""
    if not isinstance(text, str):
        raise SegmentError(f"a segment is text, not {type(text).__name__}")
    return _Parser(text).segment()


# --- printer ------------------------------------------------------------------------------------


def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _literal(v: Arg) -> str:
    if isinstance(v, Duration):
        return str(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def pretty(node: Node) -> str:
    """Print the canonical text of a segment; ``parse_segment(pretty(n)) == n``."""
    if isinstance(node, Call):
        return f"{node.name}({', '.join(_literal(a) for a in node.args)})"
    if isinstance(node, Compare):
        return f"{node.attr} {node.op} {_literal(node.value)}"
    if isinstance(node, In):
        return f"{node.attr} in ({', '.join(_literal(v) for v in node.values)})"
    if isinstance(node, Not):
        inner = pretty(node.operand)
        return f"not ({inner})" if isinstance(node.operand, And | Or) else f"not {inner}"
    word = " and " if isinstance(node, And) else " or "
    parts = []
    for child in node.operands:
        text = pretty(child)
        # Same-kind children keep their grouping; an 'or' inside an 'and' needs it.
        grouped = isinstance(child, type(node)) or (isinstance(node, And) and isinstance(child, Or))
        parts.append(f"({text})" if grouped else text)
    return word.join(parts)


# --- JSON form ----------------------------------------------------------------------------------
#
#   {"and": [n, n, …]}  {"or": [n, n, …]}  {"not": n}
#   {"in": ["city", ["上海", "北京"]]}
#   {"==": ["device", "ios"]}   (also != < <= > >=)
#   {"tag": "VIP"}  {"last_active_within": "30d"}   (one argument: the value itself)
#   {"f": [a, b]}                                   (any number of arguments: a list)
#
# Every node is an object with exactly one key. Durations are strings like "30d".


def _arg_json(v: Arg) -> object:
    return str(v) if isinstance(v, Duration) else v


def to_json(node: Node) -> dict[str, Any]:
    """The console builder's JSON form of a segment (plain dicts, lists, strings, numbers)."""
    if isinstance(node, Call):
        if len(node.args) == 1:
            return {node.name: _arg_json(node.args[0])}
        return {node.name: [_arg_json(a) for a in node.args]}
    if isinstance(node, Compare):
        return {node.op: [node.attr, node.value]}
    if isinstance(node, In):
        return {"in": [node.attr, list(node.values)]}
    if isinstance(node, Not):
        return {"not": to_json(node.operand)}
    key = "and" if isinstance(node, And) else "or"
    return {key: [to_json(c) for c in node.operands]}


def _duration_from(text: str, where: _Where) -> Duration:
    unit = text[-1:] if text else ""
    digits = text[:-1]
    if unit not in DURATION_UNITS or not digits.isascii() or not digits.isdigit():
        raise where.error(f'expected a duration like "30d", "12h", "90m" or "2w", got {text!r}')
    return Duration(int(digits), unit)  # type: ignore[arg-type]


def _json_value(v: object, where: _Where) -> Value:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise where.error(f"expected a string or a number, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise where.error(f"number {v!r} is not finite")
    return v


def from_json(obj: object) -> Node:
    """Read the JSON form (already decoded); errors name the JSON path, e.g. ``$.and[2]``."""
    return _from_json(obj, "$", 0)


def _from_json(obj: object, path: str, depth: int) -> Node:
    where = _Where(path=path)
    if depth > MAX_DEPTH:
        raise where.error(f"expression nested deeper than {MAX_DEPTH} levels")
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise where.error(
            "expected an object with exactly one key (and, or, not, in, a comparison or a "
            "function name)"
        )
    ((key, body),) = obj.items()
    if not isinstance(key, str):
        raise where.error("keys must be strings")
    sub = f"{path}.{key}" if key.isidentifier() else f'{path}["{key}"]'
    if key in ("and", "or"):
        if not isinstance(body, list) or not body:
            raise _Where(path=sub).error(f"'{key}' takes a non-empty list of conditions")
        items = tuple(_from_json(c, f"{sub}[{i}]", depth + 1) for i, c in enumerate(body))
        if len(items) == 1:  # a builder's one-condition group is just that condition
            return items[0]
        return And(items) if key == "and" else Or(items)
    if key == "not":
        return Not(_from_json(body, sub, depth + 1))
    if key == "in" or key in COMPARE_OPS:
        if not isinstance(body, list) or len(body) != 2 or not isinstance(body[0], str):
            shape = '["city", ["上海", "北京"]]' if key == "in" else '["age", 18]'
            raise _Where(path=sub).error(f"'{key}' takes [attribute, value], e.g. {shape}")
        attr = body[0]
        spec = _check_attr(attr, _Where(path=f"{sub}[0]"), 0)
        if key == "in":
            raw = body[1]
            if not isinstance(raw, list) or not raw:
                raise _Where(path=f"{sub}[1]").error("'in' takes a non-empty list of values")
            values = []
            for i, v in enumerate(raw):
                w = _Where(path=f"{sub}[1][{i}]")
                value = _json_value(v, w)
                _check_value(spec, value, w, 0)
                values.append(value)
            return In(attr, tuple(values))
        w = _Where(path=f"{sub}[1]")
        value = _json_value(body[1], w)
        _check_compare(attr, key, value, w, 0)
        return Compare(attr, key, value)
    spec_f = FUNCTIONS.get(key)
    if spec_f is None:
        _check_call(key, (), where, 0)  # raises: unknown function, with the known ones
        raise AssertionError("unreachable")  # pragma: no cover
    raw_args = body if isinstance(body, list) else [body]
    if len(raw_args) != len(spec_f.params):
        _check_call(key, raw_args, _Where(path=sub), 0)
    args: list[Arg] = []
    for i, (raw_arg, (_, ptype)) in enumerate(zip(raw_args, spec_f.params, strict=True)):
        w = _Where(path=sub if not isinstance(body, list) else f"{sub}[{i}]")
        arg: Arg
        if ptype == "duration":
            if not isinstance(raw_arg, str):
                raise w.error(f'expected a duration string like "30d", got {raw_arg!r}')
            arg = _duration_from(raw_arg, w)
        else:
            arg = _json_value(raw_arg, w)
        _check_arg(spec_f, i, arg, w, 0)
        args.append(arg)
    return Call(key, tuple(args))
