"""Per-recipient rendering at send time (docs/content.md, "Personalised sending").

A campaign whose content reads per-person variables (``{{ name }}``, ``{{ city }}``,
``{{ attrs.level }}`` …) on a channel that can personalise is rendered here, once per batch:

1. the template fields that read per-person variables are found once per content (cached);
2. the batch's contacts are read **set-based**: one query joins the batch's ledger rows to
   their contacts (name, city, province, gender, birthday, timezone, attrs); names are
   decrypted with the keyring;
3. each field is rendered for every recipient with the compiled template
   (:func:`~qunfa.content.templating.render_many`);
4. the adapter receives ``OutboundBatch.personal`` (recipient → content) and sends each
   recipient their own content, grouping identical renders where its platform allows.

A recipient whose render fails (a missing attribute on that one contact) or renders a field
blank fails alone with a clear reason (``template: …``); nobody receives a raw ``{{ name }}`` or
an empty message. Content without per-person variables costs one cached lookup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError, nodes
from sqlalchemy import select

from qunfa.content.templating import (
    ENV,
    PERSON_VARIABLES,
    Compiled,
    TemplateError,
    compile_template,
    contact_context,
    has_template,
    personalisable,
    render_many,
)
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.storage.models import Contact, Delivery

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

Path = tuple[str | int, ...]


@lru_cache(maxsize=1024)
def reads_person(text: str) -> bool:
    """Whether the template ``text`` reads a per-person variable (cached per source)."""
    if not has_template(text):
        return False
    try:
        tree = ENV.parse(text)
    except TemplateSyntaxError:
        return False  # the check blocks it; nothing to render
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    read = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}
    return bool((read - stored) & PERSON_VARIABLES)


def _fields(value: Any, path: Path = ()) -> list[tuple[Path, str]]:
    """Every string of ``value`` with its path (keys and list indexes)."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [f for k, v in value.items() for f in _fields(v, (*path, k))]
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in _fields(v, (*path, i))]
    return []


def person_fields(content: Mapping[str, Any], channel: str) -> list[tuple[Path, str]]:
    """The fields of ``content`` that differ per recipient on ``channel`` (may be empty).

    The campaign's own ``variables`` are values, not templates; a channel that cannot
    personalise never gets here (the check blocks per-person variables there).
    """
    out: list[tuple[Path, str]] = []
    for path, text in _fields({k: v for k, v in content.items() if k != "variables"}):
        dotted = ".".join(str(p) for p in path)
        if reads_person(text) and personalisable(channel, dotted):
            out.append((path, text))
    return out


def _put(value: Any, path: Path, new: str) -> Any:
    """``value`` with the string at ``path`` replaced (containers on the path copied)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, Mapping):
        copy = dict(value)
        copy[head] = _put(value[head], rest, new)
        return copy
    items = list(value)
    items[int(head)] = _put(items[int(head)], rest, new)
    return items


@dataclass
class Personal:
    """One batch rendered: who gets what, and who failed before any platform call."""

    content: dict[str, dict[str, Any]]  # recipient id → their content
    failures: dict[str, PlatformError] = field(default_factory=dict)

    @property
    def recipients(self) -> list[str]:
        return list(self.content)

    def distinct(self) -> int:
        """How many different contents the batch carries (grouping's best case: 1)."""
        return len({canonical(c) for c in self.content.values()})

    def merge(self, outcome: BatchOutcome) -> BatchOutcome:
        """``outcome`` with the render failures added as per-recipient failures."""
        if not self.failures:
            return outcome
        return replace(outcome, recipient_failures={**self.failures, **outcome.recipient_failures})


def canonical(content: Mapping[str, Any]) -> str:
    """A stable key of a content (grouping identical renders)."""
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def render_fields(
    fields: Sequence[tuple[Path, str]], contexts: Sequence[Mapping[str, Any]]
) -> tuple[list[list[str]], dict[int, str]]:
    """Render every field for every context: ``(per field the renders, {index: reason})``.

    ``render_many`` renders the whole list in one go (the compiled template, no per-call
    wrapper); only when it raises are the contexts rendered one by one to find who failed.
    """
    rendered: list[list[str]] = []
    failed: dict[int, str] = {}
    for path, text in fields:
        compiled: Compiled = compile_template(text)
        dotted = ".".join(str(p) for p in path)
        try:
            values = list(render_many(compiled, contexts))
        except TemplateError:
            values = []
            for i, ctx in enumerate(contexts):
                try:
                    values.append(compiled.render(ctx))
                except TemplateError as exc:
                    values.append("")
                    failed.setdefault(i, f"template: {dotted}: {exc}")
        for i, v in enumerate(values):
            if not v.strip() and i not in failed:
                failed[i] = (
                    f"template: {dotted} renders empty for this recipient; give the variable "
                    "a default, e.g. {{ name|default('朋友', true) }}"
                )
        rendered.append(values)
    return rendered, failed


def batch_contexts(
    c: Container, campaign_id: int, batch_no: int, variables: Mapping[str, Any]
) -> dict[int, dict[str, Any]]:
    """delivery id → render context, for the batch's open ledger rows: ONE query."""
    decrypt = c.keyring.decrypt
    stmt = (
        select(
            Delivery.id,
            Contact.name_enc,
            Contact.city,
            Contact.province,
            Contact.gender,
            Contact.birthday,
            Contact.timezone,
            Contact.attrs,
        )
        .outerjoin(Contact, Contact.id == Delivery.contact_id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.batch_no == batch_no,
            Delivery.status.in_(("planned", "sending")),
        )
    )
    out: dict[int, dict[str, Any]] = {}
    with c.engine.connect() as conn:
        for did, name_enc, city, province, gender, birthday, tz, attrs in conn.execute(stmt):
            out[int(did)] = contact_context(
                name=decrypt(name_enc) if name_enc else None,
                city=city, province=province, gender=gender, birthday=birthday, timezone=tz,
                attrs=attrs if isinstance(attrs, dict) else {}, variables=variables,
            )  # fmt: skip
    return out


def personalise_batch(
    c: Container,
    channel: str,
    content: Mapping[str, Any],
    campaign_id: int,
    batch_no: int,
    rows: Sequence[tuple[int, str]],
) -> Personal | None:
    """The batch's per-recipient contents, or None when the content is the same for all.

    ``rows`` are the batch's (delivery id, recipient id) as the dispatcher read them.
    """
    fields = person_fields(content, channel)
    if not fields or not rows:
        return None
    raw_vars = content.get("variables")
    variables = dict(raw_vars) if isinstance(raw_vars, Mapping) else {}
    by_delivery = batch_contexts(c, campaign_id, batch_no, variables)
    empty = contact_context(variables=variables)
    contexts = [by_delivery.get(did, empty) for did, _ in rows]
    rendered, failed = render_fields(fields, contexts)
    personal = Personal({})
    for i, (_, rid) in enumerate(rows):
        if i in failed:
            personal.failures[rid] = PlatformError("template", failed[i], ErrorClass.RECIPIENT)
            continue
        own: Any = content
        for (path, _), values in zip(fields, rendered, strict=True):
            own = _put(own, path, values[i])
        personal.content[rid] = dict(own)
    return personal


__all__ = [
    "Personal",
    "batch_contexts",
    "canonical",
    "person_fields",
    "personalise_batch",
    "reads_person",
    "render_fields",
]
