"""Personalisation templates: strict variables, the sandbox, did-you-mean, per-channel refusal."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.content.templating import (
    CONTACT_FIELDS,
    PERSON_VARIABLES,
    TemplateError,
    check_content,
    check_template,
    compile_template,
    contact_context,
    has_template,
    render,
    render_content,
    render_many,
)

CTX = contact_context(
    name="张三", city="上海", province="上海", gender="male", birthday="1990-05-01",
    attrs={"level": "金卡", "points": 120}, variables={"coupon": "A100"},
)  # fmt: skip

names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
    lambda n: n not in PERSON_VARIABLES and n not in ("coupon", "true", "false", "none")
    and n.lower() not in ("true", "false", "none", "and", "or", "not", "in", "is", "if")
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(names, st.text(max_size=20).filter(lambda t: not has_template(t) and not set(t) & set("{}")))
def test_an_unknown_variable_is_an_error_never_a_blank(name: str, around: str) -> None:
    text = f"{around}{{{{ {name} }}}}{around}"
    issues = check_template(text, "sms_tencent", variables=["coupon"])
    assert [i.variable for i in issues] == [name]
    assert issues[0].rule_id == "template.unknown_variable"
    assert issues[0].position == text.index(name, len(around) + 2)  # inside the tag
    with pytest.raises(TemplateError):
        render(text, CTX)
    with pytest.raises(TemplateError):
        list(render_many(text, [CTX]))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CONTACT_FIELDS), st.integers(0, 3), st.sampled_from("xqz"))
def test_a_misspelt_field_suggests_the_right_one(field: str, at: int, extra: str) -> None:
    typo = field[:at] + extra + field[at:]  # one inserted letter
    issues = check_template(f"您好 {{{{ {typo} }}}}", "sms_aliyun")
    assert issues and issues[0].variable == typo
    assert f"did you mean {field!r}" in issues[0].message
    assert issues[0].suggestion == f"use {{{{ {field} }}}}"


def test_known_fields_render_and_missing_attr_is_an_error() -> None:
    assert render("{{ name }}，{{ city }}的{{ attrs.level }}会员，券 {{ coupon }}", CTX) == (
        "张三，上海的金卡会员，券 A100"
    )
    with pytest.raises(TemplateError, match="nolevel"):
        render("{{ attrs.nolevel }}", CTX)
    assert render("{{ attrs.nolevel|default('普通') }}", CTX) == "普通"
    blank = contact_context()
    assert render("{{ name|default('朋友', true) }}", blank) == "朋友"


def test_attribute_keys_are_checked_with_did_you_mean() -> None:
    issues = check_template("{{ attrs.levle }}", "sms_tencent", attr_keys=["level", "points"])
    assert issues[0].rule_id == "template.unknown_attribute"
    assert "did you mean 'level'" in issues[0].message
    assert not check_template("{{ attrs.level }}", "sms_tencent", attr_keys=["level"])


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ attrs.items() }}",
        "{{ name.upper() }}",
        "{{ attrs.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ (attrs|attr('items'))() }}",
    ],
)
def test_the_sandbox_refuses_python_attributes(text: str) -> None:
    with pytest.raises(TemplateError):
        render(text, CTX)


def test_statements_and_filters_work() -> None:
    text = "{% if city == '上海' %}沪上{% else %}各地{% endif %}{{ name|length }}"
    assert render(text, CTX) == "沪上2"
    assert not check_template(text, "email")
    loop = "{% for x in [1, 2] %}{{ x }}{% endfor %}"  # a loop variable is not unknown
    assert not check_template(loop, "email") and render(loop, CTX) == "12"


def test_channels_that_cannot_personalise_refuse_person_variables() -> None:
    oa = check_template("你好 {{ name }}", "wechat_oa")
    assert [i.rule_id for i in oa] == ["template.per_person_variable"]
    assert "Official Account mass send" in oa[0].message
    # a campaign variable is the same for everybody: fine on any channel
    assert not check_template("券 {{ coupon }}", "wechat_oa", variables=["coupon"])
    # template messages personalise only their data fields
    tmpl = {
        "template_id": "T",
        "url": "https://x/{{ name }}",
        "data": {"thing1": {"value": "{{ name }}"}},
    }
    issues = check_content(tmpl, "wechat_template")
    assert [i.field for i in issues] == ["url"]


def test_syntax_error_names_the_line() -> None:
    issues = check_template("第一行\n{{ name ", "sms_tencent")
    assert issues[0].rule_id == "template.syntax" and issues[0].line == 2


def test_render_content_keeps_structure_and_variables() -> None:
    content = {"msgtype": "text", "text": {"content": "{{ name }}"}, "variables": {"a": "{{ x }}"}}
    out = render_content(content, CTX)
    assert out == {"msgtype": "text", "text": {"content": "张三"}, "variables": {"a": "{{ x }}"}}


def test_render_many_compiles_once_and_matches_render() -> None:
    text = "{{ name }}您好，{{ city }}"
    ctxs = [contact_context(name=f"n{i}", city="c") for i in range(5)]
    assert list(render_many(text, ctxs)) == [render(text, c) for c in ctxs]
    assert compile_template(text) is compile_template(text)
    assert list(render_many("plain", ctxs)) == ["plain"] * 5


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda t: not has_template(t)))
def test_plain_text_renders_to_itself(text: str) -> None:
    assert render(text, CTX) == text and not check_template(text, "wechat_oa")
