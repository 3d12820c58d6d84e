"""The gate's check of a personalised campaign's *values* (docs/review.md, "Personalised values").

A template is checked once as text; what it will insert per person — names, cities, custom
attributes — is checked here against the same compliance lexicons, **set-based over the
audience and by distinct value**: a million recipients share a few hundred cities, so each city
is checked once; names are many but still far fewer than people, and are decrypted in one
streamed pass (``Keyring.decrypt_many``).

- Which variables: only those the content's per-person fields read (``{{ name }}``,
  ``{{ city }}``, ``{{ attrs.level }}`` …); a campaign without per-person variables costs one
  cached parse.
- Whose values: the campaign's ledger once planned; before, the contacts behind the account's
  subscribed identities of the channel's recipient kind (narrowed by the tag for ``tag:``) — the
  same upper bound the approval threshold uses, so nobody who could receive it is skipped.
- One ``GROUP BY`` per column or attribute (value and how many contacts have it); names one
  streamed ``SELECT`` of ``name_enc``.

A finding on a value is reported like a field's, under ``values.<variable>``, with how many
recipients carry the value. Names are personal data: the report keeps only the matched part
and a masked name (``张*``), never the whole name.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError, nodes
from sqlalchemy import Select, func, select

from qunfa.content.templating import ATTRS, CONTACT_FIELDS, ENV
from qunfa.domain.audience import AudienceError, parse_audience
from qunfa.services.personalise import person_fields
from qunfa.storage.models import Contact, Delivery, Identity, IdentityTag, Tag

if TYPE_CHECKING:
    from qunfa.bootstrap import Container
    from qunfa.compliance import Checker
    from qunfa.storage.models import Campaign

NAME = "name"


@dataclass
class ValueCheck:
    """What the value check found: report entries per variable and the figures."""

    fields: list[dict[str, Any]] = field(default_factory=list)  # like the check's "fields"
    variables: list[str] = field(default_factory=list)
    contacts: int = 0
    distinct: dict[str, int] = field(default_factory=dict)  # variable → distinct values
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "variables": self.variables,
            "contacts": self.contacts,
            "distinct": self.distinct,
            "seconds": round(self.seconds, 3),
            "flagged": len(self.fields),
        }


def variables_read(content: Mapping[str, Any], channel: str) -> list[str]:
    """The per-person variables the content's fields read: ``name``, ``city``, ``attrs.level``."""
    found: set[str] = set()
    for _, text in person_fields(content, channel):
        try:
            tree = ENV.parse(text)
        except TemplateSyntaxError:
            continue
        for n in tree.find_all(nodes.Name):
            if n.ctx == "load" and n.name in CONTACT_FIELDS:
                found.add(n.name)
        for g in tree.find_all(nodes.Getattr):
            if isinstance(g.node, nodes.Name) and g.node.name == ATTRS:
                found.add(f"{ATTRS}.{g.attr}")
        for gi in tree.find_all(nodes.Getitem):
            if (
                isinstance(gi.node, nodes.Name)
                and gi.node.name == ATTRS
                and isinstance(gi.arg, nodes.Const)
                and isinstance(gi.arg.value, str)
            ):
                found.add(f"{ATTRS}.{gi.arg.value}")
    return sorted(found)


def audience_contacts(c: Container, camp: Campaign, recipient_kind: str) -> Select[Any]:
    """A SELECT of the contact ids that may receive ``camp`` (see the module docstring)."""
    if camp.planned_count:
        return select(Delivery.contact_id).where(Delivery.campaign_id == camp.id)
    stmt = select(Identity.contact_id).where(
        Identity.account_id == camp.account_id,
        Identity.kind == recipient_kind,
        Identity.subscribed.is_(True),
    )
    try:
        aud = parse_audience(camp.audience)
    except AudienceError:
        aud = None
    if aud is not None and aud.kind == "tag":
        stmt = (
            stmt.join(IdentityTag, IdentityTag.identity_id == Identity.id)
            .join(Tag, Tag.id == IdentityTag.tag_id)
            .where(Tag.account_id == camp.account_id, Tag.name == aud.tag)
        )
    return stmt


def _mask(name: str) -> str:
    return name[:1] + "*" * max(1, len(name) - 1) if name else ""


def distinct_values(
    c: Container, variable: str, contacts: Select[Any]
) -> Iterable[tuple[str, int]]:
    """(value, how many contacts have it) for one variable over the audience."""
    ids = contacts.subquery()
    in_audience = Contact.id.in_(select(ids.c[0]))
    if variable == NAME:
        names: Counter[str] = Counter()
        stmt = select(Contact.name_enc).where(in_audience, Contact.name_enc.is_not(None))
        with c.engine.connect() as conn:
            # The DBAPI cursor itself: a million Row objects cost more than decrypting them.
            # (No stream_results: its buffered strategy pre-fetches rows the cursor then lacks.)
            result = conn.execute(stmt)
            cursor = result.cursor
            while part := cursor.fetchmany(20_000):
                names.update(c.keyring.decrypt_many([bytes(b) for (b,) in part if b]))
            result.close()
        return names.items()
    if variable.startswith(f"{ATTRS}."):
        column: Any = Contact.attrs[variable.partition(".")[2]].as_string()
    else:
        column = getattr(Contact, variable)
    stmt2 = select(column, func.count()).where(in_audience).group_by(column)
    with c.engine.connect() as conn:
        return [(str(v), int(n)) for v, n in conn.execute(stmt2) if v not in (None, "")]


def check_values(
    c: Container,
    camp: Campaign,
    content: Mapping[str, Any],
    checker: Checker,
    recipient_kind: str,
) -> ValueCheck:
    """Check every distinct value the campaign's templates will insert, on its channel."""
    t0 = time.perf_counter()
    out = ValueCheck(variables=variables_read(content, camp.channel))
    if not out.variables:
        return out
    contacts = audience_contacts(c, camp, recipient_kind)
    with c.engine.connect() as conn:
        sub = contacts.subquery()
        out.contacts = int(conn.scalar(select(func.count(func.distinct(sub.c[0])))) or 0)
    check = checker.check
    for variable in out.variables:
        values = list(distinct_values(c, variable, contacts))
        out.distinct[variable] = len(values)
        for value, count in values:
            report = check(value, camp.channel)
            if not report.findings:
                continue
            shown = _mask(value) if variable == NAME else value
            findings = report.to_dict()["findings"]
            if variable == NAME:  # keep the matched part only, never the whole name
                for f in findings:
                    f["text"] = value[f["start"] : f["end"]]
            out.fields.append(
                {
                    "path": f"values.{variable}",
                    "text": shown,
                    "verdict": report.verdict,
                    "recipients": count,
                    "findings": findings,
                }
            )
    out.seconds = time.perf_counter() - t0
    return out
