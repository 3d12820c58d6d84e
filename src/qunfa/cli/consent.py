"""``qunfa consent`` (the ledger) and ``qunfa suppress`` (the global suppression list).

Thin: each command calls :class:`~qunfa.services.consent.ConsentService` (docs/consent.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qunfa.bootstrap import Container
from qunfa.cli.common import fail as _fail
from qunfa.domain.consent import ConsentError

consent_app = typer.Typer(help="Consent ledger: grant, withdraw, show.", no_args_is_help=True)
suppress_app = typer.Typer(help="Global suppression list.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

Contact = Annotated[int | None, typer.Option("--contact", help="contact id")]
Kind = Annotated[str | None, typer.Option("--kind", help="phone | email | openid | …")]
Address = Annotated[str | None, typer.Option("--address", help="the phone, e-mail or id")]
Scope = Annotated[str | None, typer.Option("--scope", help="sms, email, wechat_oa, wecom, … or *")]


def _service() -> Any:
    c = Container()
    return c.consent


def _record(action: str, **kw: Any) -> None:
    try:
        res = getattr(_service(), action)(**kw)
    except ConsentError as exc:
        raise _fail(exc) from None
    console.print(
        f"{action}: scope {res.scope}, {len(res.contacts)} person(s), "
        f"{res.recorded} ledger row(s), {res.suppressed} suppression(s) changed"
    )


@consent_app.command("grant")
def grant(
    contact: Contact = None,
    kind: Kind = None,
    address: Address = None,
    scope: Scope = None,
    source: str = "cli",
    wording: Annotated[str | None, typer.Option(help="consent wording version")] = None,
    evidence: Annotated[str | None, typer.Option(help="what proves it (needed to lift)")] = None,
) -> None:
    """Record consent (after a withdrawal: lift it, with --evidence)."""
    _record("grant", contact_id=contact, kind=kind, address=address, scope=scope,
            source=source, wording_version=wording, evidence=evidence, actor="cli")  # fmt: skip


@consent_app.command("withdraw")
def withdraw(
    contact: Contact = None,
    kind: Kind = None,
    address: Address = None,
    scope: Scope = None,
    source: str = "cli",
    evidence: Annotated[str | None, typer.Option(help="what the person said or did")] = None,
) -> None:
    """Withdraw consent: a ledger row and suppression of the person's ids on the scope."""
    _record("withdraw", contact_id=contact, kind=kind, address=address, scope=scope,
            source=source, evidence=evidence, actor="cli")  # fmt: skip


@consent_app.command("show")
def show(contact: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A person's consent per scope, suppressions and ledger."""
    svc = _service()
    data = {**svc.state(contact), "ledger": svc.ledger(contact)}
    if as_json:
        console.print_json(json.dumps(data, ensure_ascii=False, default=str))
        return
    console.print(f"contact {contact}: " + ", ".join(f"{k}={v}" for k, v in data["scopes"].items()))
    table = Table("at", "scope", "status", "source", "wording", "evidence")
    for e in data["ledger"]:
        table.add_row(str(e["at"]), e["scope"], e["status"], e["source"],
                      e["wording_version"] or "", (e["evidence"] or "")[:60])  # fmt: skip
    console.print(table)


@suppress_app.command("add")
def add(kind: str, address: str, scope: Scope = None, reason: str = "manual") -> None:
    """Suppress one phone, e-mail or id."""
    try:
        added = _service().suppress(kind, address, scope, reason=reason, source="cli", actor="cli")
    except ConsentError as exc:
        raise _fail(exc) from None
    console.print("suppressed" if added else "already suppressed")


@suppress_app.command("remove")
def remove(kind: str, address: str, scope: Scope = None) -> None:
    """Take an address off the list (a correction; the ledger keeps its withdrawals)."""
    try:
        n = _service().unsuppress(kind, address, scope, actor="cli")
    except ConsentError as exc:
        raise _fail(exc) from None
    console.print(f"removed {n} row(s)")


@suppress_app.command("list")
def list_(scope: Scope = None, kind: Kind = None, limit: int = 100, after_id: int = 0) -> None:
    """A page of the list (values are blind indexes: the list holds no plaintext)."""
    table = Table("id", "scope", "kind", "value (blind index)", "contact", "reason", "source")
    for r in _service().list_suppressions(scope, kind, limit, after_id):
        table.add_row(str(r["id"]), r["scope"], r["kind"], r["value_bi"][:12] + "…",
                      str(r["contact_id"] or ""), r["reason"], r["source"])  # fmt: skip
    console.print(table)


@suppress_app.command("import")
def import_(
    file: Path, scope: Scope = None, reason: str = "imported", source: str = "import"
) -> None:
    """Import a CSV of phones and/or e-mail addresses onto the global list."""
    try:
        rep = _service().import_suppressions(file, scope=scope, reason=reason, source=source,
                                             actor="cli")  # fmt: skip
    except (ConsentError, OSError) as exc:
        raise _fail(exc) from None
    console.print(f"{rep.rows} rows: {rep.added} added, {rep.existing} already listed, "
                  f"{rep.rejected} rejected")  # fmt: skip
    for line in rep.errors[:20]:
        err.print(f"  {line}")
