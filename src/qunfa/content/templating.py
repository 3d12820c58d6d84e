"""Personalisation: sandboxed Jinja2 templates over a contact's fields.

The language is Jinja2 expressions and statements (``{{ name }}``, ``{{ attrs.level }}``,
``{% if city == "上海" %}…{% endif %}``, filters such as ``{{ name|default("朋友") }}``) in an
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with :class:`~jinja2.StrictUndefined` and
no autoescaping (the channels take text). Variables:

- per person (:data:`CONTACT_FIELDS`): ``name``, ``city``, ``province``, ``gender``,
  ``birthday``, ``timezone`` and ``attrs.<key>`` (the contact's custom attributes);
- per campaign: whatever the campaign passes in ``variables`` (e.g. ``coupon``, ``deadline``).

Safety: no Python attribute is reachable — ``{{ ''.__class__ }}``, ``{{ attrs.items() }}`` and
``{{ name.upper() }}`` all fail — only dictionary keys of the context and the built-in filters.
Checking (:func:`check_template`) happens before sending and names the variable, its position
and the closest known name; rendering an unknown variable raises instead of leaving a blank.
Channels that send one message to many (Official Account mass send, WeCom customer tasks, a
group robot) refuse per-person variables; template messages take them only in ``data`` fields.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONTACT_FIELDS: tuple[str, ...] = ("name", "city", "province", "gender", "birthday", "timezone")
ATTRS = "attrs"
PERSON_VARIABLES = frozenset({*CONTACT_FIELDS, ATTRS})

# Channels whose one platform call carries one text for everybody: per-person variables are
# impossible there, whatever the template language could do.
ONE_TO_MANY: Mapping[str, str] = {
    "wechat_oa": "an Official Account mass send delivers one message to every recipient",
    "wecom_customer": "a WeCom customer mass send is one task with one text for all customers",
    "personal_wechat": "the 群发助手 sends one copied text to every friend in the batch",
    "webhook": "a group robot posts one message to the group",
}
# Channels that personalise only in some fields of the content (dotted path prefixes).
FIELDS_ONLY: Mapping[str, tuple[str, ...]] = {"wechat_template": ("data.",)}

_MARKERS = ("{{", "{%", "{#")


class TemplateError(ValueError):
    """A template that cannot be rendered; ``issues`` say where and why."""

    def __init__(self, issues: list[TemplateIssue]) -> None:
        super().__init__("; ".join(i.message for i in issues))
        self.issues = issues


@dataclass(frozen=True)
class TemplateIssue:
    """One problem found in a template, with where it is and what to do about it."""

    rule_id: str  # template.syntax | template.unknown_variable | template.per_person_variable …
    field: str  # the content field, e.g. "text" or "data.thing1"
    variable: str | None
    position: int | None  # character offset in the field's text
    line: int | None
    message: str
    suggestion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox, tightened: no object attribute at all, only mapping keys."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return False

    def is_safe_callable(self, obj: Any) -> bool:
        return False

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``attrs.level`` on a dict is a key lookup, never a Python attribute: go straight to
        # the key (the default tries getattr first and pays for an AttributeError per render).
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


ENV = _Env(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def has_template(text: str) -> bool:
    """Whether ``text`` contains template syntax at all (plain text renders to itself)."""
    return any(m in text for m in _MARKERS)


@dataclass(frozen=True)
class Compiled:
    """A template compiled once; render it per recipient with :meth:`render`."""

    source: str
    _template: Any  # jinja2.Template, or None for plain text

    def render(self, context: Mapping[str, Any]) -> str:
        if self._template is None:
            return self.source
        try:
            return str(self._template.render(context))
        except (UndefinedError, SecurityError) as exc:
            raise TemplateError(
                [TemplateIssue("template.render", "", None, None, None, str(exc))]
            ) from exc


@lru_cache(maxsize=512)
def compile_template(text: str) -> Compiled:
    """Compile ``text`` (cached): once per campaign, never per recipient."""
    if not has_template(text):
        return Compiled(text, None)
    try:
        return Compiled(text, ENV.from_string(text))
    except TemplateSyntaxError as exc:
        raise TemplateError([_syntax_issue(text, exc, "")]) from exc


def render(text: str, context: Mapping[str, Any]) -> str:
    """Render ``text`` for one context (compiles through the cache)."""
    return compile_template(text).render(context)


def render_many(template: str | Compiled, contexts: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Render one template for many contexts: compiled once, then one render per context."""
    compiled = compile_template(template) if isinstance(template, str) else template
    inner = compiled._template
    if inner is None:
        for _ in contexts:
            yield compiled.source
        return
    # Skip Template.render's per-call wrapper: build the context and join the generator.
    new_context, root, concat = inner.new_context, inner.root_render_func, "".join
    try:
        for ctx in contexts:
            yield concat(root(new_context(ctx)))
    except (UndefinedError, SecurityError) as exc:
        issue = TemplateIssue("template.render", "", None, None, None, str(exc))
        raise TemplateError([issue]) from exc


# -- checking --------------------------------------------------------------------------------------
def _syntax_issue(text: str, exc: TemplateSyntaxError, field: str) -> TemplateIssue:
    line = exc.lineno or 1
    position = sum(len(x) + 1 for x in text.split("\n")[: line - 1])
    return TemplateIssue(
        "template.syntax", field, None, position, line,
        f"{field or 'template'}: syntax error on line {line}: {exc.message}",
        "close every {{ … }} and {% … %}; write literal braces as {{ '{{' }}",
    )  # fmt: skip


def _position(text: str, name: str, after: int = 0) -> tuple[int | None, int | None]:
    """Where ``name`` first appears inside a ``{{ }}`` / ``{% %}`` tag of ``text``."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
    for tag in re.finditer(r"\{\{.*?\}\}|\{%.*?%\}", text, re.S):
        found = pattern.search(text, tag.start(), tag.end())
        if found and found.start() >= after:
            return found.start(), text.count("\n", 0, found.start()) + 1
    return None, None


def _names(tree: nodes.Template) -> tuple[set[str], set[str], set[str]]:
    """(variables read, variables assigned in the template, literal ``attrs`` keys read)."""
    read: set[str] = set()
    stored: set[str] = set()
    attr_keys: set[str] = set()
    for node in tree.find_all(nodes.Name):
        (stored if node.ctx in ("store", "param") else read).add(node.name)
    for getattr_node in tree.find_all(nodes.Getattr):
        if isinstance(getattr_node.node, nodes.Name) and getattr_node.node.name == ATTRS:
            attr_keys.add(getattr_node.attr)
    for getitem in tree.find_all(nodes.Getitem):
        if (
            isinstance(getitem.node, nodes.Name)
            and getitem.node.name == ATTRS
            and isinstance(getitem.arg, nodes.Const)
            and isinstance(getitem.arg.value, str)
        ):
            attr_keys.add(getitem.arg.value)
    return read, stored, attr_keys


def _did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def check_template(
    text: str,
    channel: str | None = None,
    *,
    variables: Iterable[str] = (),
    attr_keys: Iterable[str] | None = None,
    field: str = "text",
) -> list[TemplateIssue]:
    """Every problem of ``text`` as the ``field`` of a message on ``channel``.

    ``variables`` are the campaign-level names; ``attr_keys`` the known custom attributes of
    contacts (``None``: any ``attrs.<key>`` is accepted). Finds syntax errors, unknown or
    misspelt variables (with the closest known name) and per-person variables where the
    channel (or this field of it) cannot personalise. An empty list means it will render.
    """
    if not has_template(text):
        return []
    try:
        tree = ENV.parse(text)
    except TemplateSyntaxError as exc:
        return [_syntax_issue(text, exc, field)]
    campaign_vars = set(variables)
    known = PERSON_VARIABLES | campaign_vars
    read, stored, used_attr_keys = _names(tree)
    issues: list[TemplateIssue] = []
    for name in sorted(read - stored - known):
        pos, line = _position(text, name)
        guess = _did_you_mean(name, known)
        issues.append(TemplateIssue(
            "template.unknown_variable", field, name, pos, line,
            f"{field}: unknown variable {name!r}"
            + (f" at line {line}" if line else "")
            + (f" — did you mean {guess!r}?" if guess else ""),
            f"use {{{{ {guess} }}}}" if guess else
            "use a contact field (" + ", ".join(CONTACT_FIELDS) + ", attrs.<key>) or pass it "
            "as a campaign variable",
        ))  # fmt: skip
    if attr_keys is not None:
        keys = set(attr_keys)
        for key in sorted(used_attr_keys - keys):
            pos, line = _position(text, f"{ATTRS}.{key}")
            if pos is None:
                pos, line = _position(text, ATTRS)
            guess = _did_you_mean(key, keys)
            issues.append(TemplateIssue(
                "template.unknown_attribute", field, f"{ATTRS}.{key}", pos, line,
                f"{field}: no contact has the attribute {key!r}"
                + (f" — did you mean {guess!r}?" if guess else ""),
                f"use {{{{ {ATTRS}.{guess} }}}}" if guess else
                f"import contacts with a {key!r} column, or give a default: "
                f"{{{{ {ATTRS}.{key}|default('…') }}}}",
            ))  # fmt: skip
    person = sorted((read - stored) & PERSON_VARIABLES)
    if channel and person and not personalisable(channel, field):
        why = ONE_TO_MANY.get(channel) or (
            f"{channel} takes per-person values only in "
            + ", ".join(f"{p}*" for p in FIELDS_ONLY.get(channel, ()))
        )
        for name in person:
            pos, line = _position(text, name)
            issues.append(TemplateIssue(
                "template.per_person_variable", field, name, pos, line,
                f"{field}: {channel} cannot personalise, but the text uses the per-person "
                f"variable {name!r}: {why}",
                "remove it, send through a channel that personalises (SMS, e-mail, WeCom app, "
                "DingTalk, Feishu), or use a campaign variable that is the same for everybody",
            ))  # fmt: skip
    return issues


def personalisable(channel: str, field: str = "text") -> bool:
    """Whether ``field`` of a message on ``channel`` may differ per recipient."""
    if channel in ONE_TO_MANY:
        return False
    prefixes = FIELDS_ONLY.get(channel)
    return prefixes is None or field.startswith(prefixes)


def template_fields(content: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every string of ``content`` as ``(dotted.field, text)``, lists indexed (``params.0``)."""
    for key, value in content.items():
        path = f"{prefix}{key}"
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, Mapping):
            # Template data values are {"value": "…"} on the wire; name them by the key.
            if set(value) == {"value"} and isinstance(value["value"], str):
                yield path, value["value"]
            else:
                yield from template_fields(value, f"{path}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    yield f"{path}.{i}", item
                elif isinstance(item, Mapping):
                    yield from template_fields(item, f"{path}.{i}.")


def check_content(
    content: Mapping[str, Any],
    channel: str,
    *,
    variables: Iterable[str] = (),
    attr_keys: Iterable[str] | None = None,
) -> list[TemplateIssue]:
    """:func:`check_template` over every text field of a message's ``content``."""
    names = list(variables)
    keys = None if attr_keys is None else list(attr_keys)
    issues: list[TemplateIssue] = []
    for field, text in template_fields(content):
        if field in ("variables",) or field.startswith("variables."):
            continue  # the campaign variables' own values are not templates
        issues.extend(check_template(text, channel, variables=names, attr_keys=keys, field=field))
    return issues


def render_content(content: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` with every template string rendered for ``context`` (structure kept)."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return render(value, context) if has_template(value) else value
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return {k: (v if k == "variables" else walk(v)) for k, v in content.items()}


def contact_context(
    *,
    name: str | None = None,
    city: str | None = None,
    province: str | None = None,
    gender: str | None = None,
    birthday: str | None = None,
    timezone: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The render context of one person; campaign ``variables`` never shadow contact fields.

    A field the contact lacks is ``""`` (known but empty, so ``{{ name|default('朋友', true) }}``
    works); an attribute the contact lacks is absent (so a typo is an error, not a blank).
    """
    ctx: dict[str, Any] = dict(variables or {})
    ctx.update(
        name=name or "", city=city or "", province=province or "", gender=gender or "",
        birthday=birthday or "", timezone=timezone or "", attrs=dict(attrs or {}),
    )  # fmt: skip
    return ctx
