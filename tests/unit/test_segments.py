"""The segment language: parser, printer, JSON form, errors with columns; property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.domain.segments import (
    ATTRIBUTES,
    COMPARE_OPS,
    FUNCTIONS,
    And,
    Call,
    Compare,
    Duration,
    In,
    Node,
    Not,
    Or,
    SegmentError,
    from_json,
    parse_segment,
    pretty,
    to_json,
    validate,
)

EXAMPLE = (
    'tag("VIP") and city in ("上海", "北京") and last_active_within(30d) and not opted_out("sms")'
)


def test_issue_example_parses_to_the_expected_ast() -> None:
    assert parse_segment(EXAMPLE) == And(
        (
            Call("tag", ("VIP",)),
            In("city", ("上海", "北京")),
            Call("last_active_within", (Duration(30, "d"),)),
            Not(Call("opted_out", ("sms",))),
        )
    )
    assert pretty(parse_segment(EXAMPLE)) == EXAMPLE


def test_issue_example_json_form() -> None:
    assert to_json(parse_segment(EXAMPLE)) == {
        "and": [
            {"tag": "VIP"},
            {"in": ["city", ["上海", "北京"]]},
            {"last_active_within": "30d"},
            {"not": {"opted_out": "sms"}},
        ]
    }


def test_precedence_not_binds_tighter_than_and_tighter_than_or() -> None:
    a, b, c = (Call("tag", (x,)) for x in "abc")
    assert parse_segment('tag("a") or tag("b") and tag("c")') == Or((a, And((b, c))))
    assert parse_segment('not tag("a") and tag("b")') == And((Not(a), b))
    assert parse_segment('(tag("a") or tag("b")) and tag("c")') == And((Or((a, b)), c))
    assert parse_segment('not (tag("a") or tag("b"))') == Not(Or((a, b)))
    assert parse_segment('tag("a") and (tag("b") and tag("c"))') == And((a, And((b, c))))


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("age >= 18", Compare("age", ">=", 18)),
        ("spend_3m > 100.5", Compare("spend_3m", ">", 100.5)),
        ("spend_3m <= -2e3", Compare("spend_3m", "<=", -2000.0)),
        ('device == "ios"', Compare("device", "==", "ios")),
        ('gender != "male"', Compare("gender", "!=", "male")),
        ("registered_within(7d)", Call("registered_within", (Duration(7, "d"),))),
        ("last_active_within(12h)", Call("last_active_within", (Duration(12, "h"),))),
        ("last_active_within(90m)", Call("last_active_within", (Duration(90, "m"),))),
        ("last_active_within(2w)", Call("last_active_within", (Duration(2, "w"),))),
        ('has_identity("unionid")', Call("has_identity", ("unionid",))),
        ("age in (18, 19,)", In("age", (18, 19))),
        ('tag("a\\"b\\\\c\\nd\\u4e0a\\ud83d\\ude00")', Call("tag", ('a"b\\c\nd上😀',))),
        ('  tag( "VIP" )\n and\tage<18 ', And((Call("tag", ("VIP",)), Compare("age", "<", 18)))),
    ],
)
def test_forms(text: str, node: Node) -> None:
    assert parse_segment(text) == node
    assert parse_segment(pretty(node)) == node


def test_duration_seconds() -> None:
    assert Duration(30, "d").seconds == 30 * 86400
    assert Duration(2, "w").seconds == 14 * 86400
    assert Duration(90, "m").seconds == 5400
    assert Duration(12, "h").seconds == 43200


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ('tagg("VIP")', 1, "unknown function 'tagg'"),
        ('tag("VIP", "x")', 12, "takes 1 argument, got 2"),
        ("tag()", 5, "takes 1 argument, got 0"),
        ("tag(30d)", 5, "must be a string"),
        ('last_active_within("30d")', 20, "must be a duration"),
        ('tag("VIP', 5, "unterminated string"),
        ('tag("a") tag("b")', 10, "expected 'and', 'or' or the end"),
        ('tag("a"))', 9, "unbalanced ')'"),
        ('cty == "上海"', 1, "unknown attribute 'cty'"),
        ('city > "上海"', 1, "is a string"),
        ('age >= "18"', 8, "whole number"),
        ("age >= 18.5", 8, "whole number"),
        ('city in ("a", 1)', 15, "compare it with a string"),
        ('tag("a") and', 13, "expected a condition"),
        ("", 1, "empty segment"),
        ('city = "上海"', 6, "use '=='"),
        ("tag('VIP')", 5, "double quotes"),
        ("tag（“VIP”）", 4, "full-width"),
        ('TAG("VIP")', 1, "lower case"),
        ('tag("VIP") && age > 1', 12, "use 'and'"),
        ("last_active_within(30x)", 20, "malformed number or duration"),
        ("last_active_within(30days)", 20, "a duration is a whole number"),
        ("last_active_within(0d)", 20, "must be positive"),
        ('tag("\\q")', 6, "unknown escape"),
        ('tag("\\u12")', 6, "four hex digits"),
        ('tag("\\ud800")', 6, "lone surrogate"),
        ("age >= 1d", 8, "only allowed as a function argument"),
        ("city", 5, "expected a comparison"),
        ('city("x")', 1, "'city' is an attribute"),
        ("tag", 4, "'tag' is a function"),
        ('(tag("a")', 10, "expected ')' to close the '(' at column 1"),
        ('tag("a\nb")', 5, "cannot span lines"),
        ("age >= 1 @", 10, "unexpected character '@'"),
    ],
)
def test_errors_point_at_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(SegmentError) as info:
        parse_segment(text)
    err = info.value
    assert fragment in str(err)
    assert err.column == column, str(err)
    lines = str(err).splitlines()
    if "\n" not in text:  # the caret sits under the column
        assert lines[-1].index("^") - 2 == column - 1


def test_unknown_names_list_what_is_known() -> None:
    with pytest.raises(SegmentError) as info:
        parse_segment('ctiy == "上海"')
    message = str(info.value)
    assert "did you mean 'city'" in message
    for name in ATTRIBUTES:
        assert name in message
    for name in FUNCTIONS:
        assert name in message
    with pytest.raises(SegmentError, match=r"known functions: tag\(str name\)"):
        parse_segment('tga("VIP")')


def test_caret_line_shows_the_source() -> None:
    with pytest.raises(SegmentError) as info:
        parse_segment('tag("VIP") and cty == "上海"')
    assert str(info.value).splitlines()[1:] == [
        '  tag("VIP") and cty == "上海"',
        "                 ^",
    ]


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(SegmentError, match="nested deeper"):
        parse_segment("(" * 5000 + 'tag("a")' + ")" * 5000)
    with pytest.raises(SegmentError, match="nested deeper"):
        parse_segment("not " * 5000 + 'tag("a")')
    deep: object = {"tag": "a"}
    for _ in range(5000):
        deep = {"not": deep}
    with pytest.raises(SegmentError, match="nested deeper"):
        from_json(deep)


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        ([], "$", "exactly one key"),
        ({"tag": "a", "age": 1}, "$", "exactly one key"),
        ({"and": []}, "$.and", "non-empty list"),
        ({"and": [{"tag": "a"}, {"tagg": "b"}]}, "$.and[1]", "unknown function 'tagg'"),
        ({"or": [{"tag": "a"}, {"in": ["cty", ["x"]]}]}, "$.or[1].in[0]", "unknown attribute"),
        ({"in": ["city", ["上海", 2]]}, "$.in[1][1]", "compare it with a string"),
        ({"in": ["city", []]}, "$.in[1]", "non-empty list"),
        ({"in": "city"}, "$.in", "[attribute, value]"),
        ({">=": ["age", "18"]}, '$[">="][1]', "whole number"),
        ({">=": ["age", True]}, '$[">="][1]', "string or a number"),
        ({">": ["city", "a"]}, '$[">"][1]', "is a string"),
        ({"not": {"tag": 1}}, "$.not.tag", "must be a string"),
        ({"last_active_within": "30x"}, "$.last_active_within", "duration like"),
        ({"last_active_within": 30}, "$.last_active_within", "duration string"),
        ({"tag": ["a", "b"]}, "$.tag", "takes 1 argument, got 2"),
        ({"has_identity": None}, "$.has_identity", "string or a number"),
    ],
)
def test_json_errors_name_the_path(obj: object, path: str, fragment: str) -> None:
    with pytest.raises(SegmentError) as info:
        from_json(obj)
    assert info.value.path == path, str(info.value)
    assert fragment in str(info.value)


def test_json_one_condition_group_is_the_condition() -> None:
    assert from_json({"and": [{"tag": "VIP"}]}) == Call("tag", ("VIP",))
    assert from_json({"tag": ["VIP"]}) == Call("tag", ("VIP",))


def test_validate_checks_built_asts() -> None:
    validate(And((Call("tag", ("a",)), Compare("age", ">", 3))))
    with pytest.raises(SegmentError, match="at least two"):
        validate(And((Call("tag", ("a",)),)))
    with pytest.raises(SegmentError, match=r"\$\.or\[1\]"):
        validate(Or((Call("tag", ("a",)), Compare("city", "<", "x"))))


# --- property tests -----------------------------------------------------------------------------

strings = st.text(max_size=12)
ints = st.integers(min_value=-(10**12), max_value=10**12)
numbers = st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False))
durations = st.builds(
    Duration, st.integers(min_value=1, max_value=10**6), st.sampled_from(["m", "h", "d", "w"])
)
_BY_TYPE = {"str": strings, "int": ints, "number": numbers, "duration": durations}


def _arg_of(name: str, param: str, ptype: str) -> st.SearchStrategy[object]:
    choices = FUNCTIONS[name].choices_for(param)
    return st.sampled_from(choices) if choices else _BY_TYPE[ptype]


def _call_of(name: str) -> st.SearchStrategy[Node]:
    args = st.tuples(*(_arg_of(name, p, t) for p, t in FUNCTIONS[name].params))
    return st.builds(Call, st.just(name), args)


def _calls() -> st.SearchStrategy[Node]:
    return st.one_of(*(_call_of(name) for name in FUNCTIONS))


def _compares() -> st.SearchStrategy[Node]:
    options = []
    for name, spec in ATTRIBUTES.items():
        ops = ["==", "!="] if spec.type == "str" else list(COMPARE_OPS)
        values = _BY_TYPE[spec.type]
        options.append(
            st.builds(Compare, st.just(name), st.sampled_from(ops), values)
            | st.builds(In, st.just(name), st.lists(values, min_size=1, max_size=4).map(tuple))
        )
    return st.one_of(*options)


def _trees(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    many = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), st.builds(And, many), st.builds(Or, many))


segments = st.recursive(_calls() | _compares(), _trees, max_leaves=12)


@settings(max_examples=400)
@given(segments)
def test_pretty_then_parse_is_identity(node: Node) -> None:
    validate(node)
    assert parse_segment(pretty(node)) == node


@settings(max_examples=400)
@given(segments)
def test_json_round_trip_is_identity(node: Node) -> None:
    assert from_json(to_json(node)) == node
    assert from_json(json.loads(json.dumps(to_json(node), ensure_ascii=False))) == node


_PIECES = st.sampled_from(
    [
        'tag("',
        '"',
        "(",
        ")",
        ",",
        " and ",
        " or ",
        "not ",
        " in ",
        "==",
        ">=",
        "<",
        "!",
        "=",
        "30d",
        "1.5e",
        "-",
        "\\u",
        "\\",
        "city",
        "age",
        "上海",
        "last_active_within(",
        " ",
        "\n",
        "x",
    ]
)
garbage = st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=15).map("".join))


@settings(max_examples=1500)
@given(garbage)
def test_garbage_never_crashes_and_columns_are_inside_the_input(text: str) -> None:
    try:
        node = parse_segment(text)
    except SegmentError as err:
        assert err.column is not None
        assert 1 <= err.column <= len(text) + 1
        str(err)  # renders
    else:
        assert parse_segment(pretty(node)) == node


def _json_children(c: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    keys = st.sampled_from(
        ["and", "or", "not", "in", "tag", "==", ">", "city", "age", "last_active_within", "x"]
    )
    return st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=2)


json_garbage = st.recursive(
    st.none() | st.booleans() | numbers | strings | st.sampled_from(["30d", "city", "age"]),
    _json_children,
    max_leaves=10,
)


@settings(max_examples=500)
@given(json_garbage)
def test_json_garbage_never_crashes(obj: object) -> None:
    try:
        node = from_json(obj)
    except SegmentError as err:
        assert err.path is not None and err.path.startswith("$")
    else:
        validate(node)
        assert from_json(to_json(node)) == node
