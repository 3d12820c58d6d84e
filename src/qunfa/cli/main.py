"""The ``qunfa`` command line (Typer). Thin: every command calls a service from the container."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from qunfa.bootstrap import Container
from qunfa.cli.advise import advise_app
from qunfa.cli.common import fail
from qunfa.cli.consent import consent_app, suppress_app
from qunfa.cli.contacts import contacts_app
from qunfa.cli.personal import personal_app
from qunfa.cli.review import AsUser, default_actor, review_app
from qunfa.cli.segments import segments_app
from qunfa.services.accounts import AccountError
from qunfa.services.campaigns import CampaignError

app = typer.Typer(
    help="qunfa 群发 — mass messaging across the WeChat ecosystem.", no_args_is_help=True
)
accounts_app = typer.Typer(help="Platform accounts.", no_args_is_help=True)
campaign_app = typer.Typer(help="Campaigns.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(campaign_app, name="campaign")
campaign_app.add_typer(review_app)  # check, submit, approve, reject, schedule, edit (cli/review.py)
campaign_app.add_typer(__import__("qunfa.cli.timing").cli.timing.timing_app)  # runs, sto-report
campaign_app.add_typer(__import__("qunfa.cli.plan").cli.plan.plan_app)  # plan [--dry-run]
app.add_typer(__import__("qunfa.cli.plan").cli.plan.quota_app, name="quota")  # docs/quotas.md
app.add_typer(contacts_app, name="contacts")
app.add_typer(personal_app, name="personal", help="Personal WeChat: prepared batches, marks.")
app.add_typer(consent_app, name="consent")
app.add_typer(suppress_app, name="suppress")
keys_app = typer.Typer(help="Encryption keys (PII and secrets at rest).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
rules_app = typer.Typer(help="Platform rules (limits as data, with sources).", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(advise_app, name="advise")  # qunfa advise --audience N …
app.add_typer(segments_app, name="segments")
app.add_typer(__import__("qunfa.cli.materials").cli.materials.materials_app, name="materials")
app.add_typer(__import__("qunfa.cli.tags").cli.tags.tags_app, name="tags")
app.add_typer(__import__("qunfa.cli.behaviour").cli.behaviour.events_app, name="events")
app.add_typer(__import__("qunfa.cli.behaviour").cli.behaviour.facts_app, name="facts")
console = Console()
err = Console(stderr=True)


def container() -> Container:
    c = Container()
    logging.basicConfig(level=c.settings.log_level, format="%(asctime)s %(name)s %(message)s")
    return c


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A rich progress display; yields a ``(what, done, total)`` callback."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


# -- set-up ---------------------------------------------------------------------------------------
@app.command()
def init() -> None:
    """Create the data folder, the encryption keyring and the database schema."""
    c = container()
    c.migrate()
    c.keyring  # noqa: B018 — creates keys.json on first use
    console.print(f"database ready at {c.settings.db_url}")
    console.print(f"keyring at {c.settings.keyring_path} (keep it safe: it decrypts the data)")


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8600,
    state: Annotated[Path, typer.Option(help="State file")] = Path("data/sandbox.db"),
) -> None:
    """Run the platform sandbox (WeChat twin) on 127.0.0.1."""
    from qunfa.sandbox.server import run

    console.print(f"sandbox on http://127.0.0.1:{port} (admin API under /_sandbox/)")
    run(host="127.0.0.1", port=port, state_path=state)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port for the API, callbacks and console")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run the worker in this process")] = True,
) -> None:
    """Serve the REST API, the platform callbacks and the console (with an embedded worker)."""
    import uvicorn

    from qunfa.api.app import create_app
    from qunfa.worker.queue import Worker

    c = container()
    c.migrate()
    w = Worker(c) if worker else None
    if w:
        w.start()
    try:
        uvicorn.run(create_app(c), host="127.0.0.1", port=port, log_level="info")
    finally:
        if w:
            w.stop()


@app.command("worker")
def worker_cmd(
    threads: Annotated[int, typer.Option(help="Worker threads")] = 4,
) -> None:
    """Run a standalone worker: Huey consumer (one task per batch) and the sweeper."""
    from qunfa.worker.queue import Worker

    c = container()
    c.migrate()
    Worker(c, threads=threads, standalone=True).run_forever()


# -- accounts -------------------------------------------------------------------------------------
@accounts_app.command("add")
def accounts_add(
    app_id: Annotated[str, typer.Option("--appid", help="AppID from the MP console")],
    secret: Annotated[str, typer.Option(help="AppSecret", prompt=True, hide_input=True)],
    kind: Annotated[
        str, typer.Option(help="subscription (公众号) or service (服务号)")
    ] = "service",
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="API root; default the sandbox's /wechat")
    ] = None,
    token: Annotated[str, typer.Option(help="Callback Token")] = "",
    aes_key: Annotated[str, typer.Option(help="Callback EncodingAESKey (43 chars)")] = "",
    channel: Annotated[str, typer.Option(help="Channel key")] = "wechat_oa",
) -> None:
    """Register a platform account; credentials are encrypted at rest."""
    c = container()
    c.migrate()
    try:
        acc = c.accounts.add(
            channel=channel,
            app_id=app_id,
            secret=secret,
            name=name,
            kind=kind or "",
            base_url=base_url,
            token=token,
            encoding_aes_key=aes_key,
        )
    except (AccountError, ValueError) as exc:
        raise fail(str(exc)) from None
    syncable = channel in ("wechat_oa", "wecom_customer")
    nxt = "qunfa accounts sync" if syncable else "qunfa contacts import FILE --account"
    console.print(f"account {acc.id} ({acc.app_id}) saved; next: {nxt} {acc.app_id}")


@accounts_app.command("list")
def accounts_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List accounts (never their secrets)."""
    c = container()
    c.migrate()
    rows = [
        {
            "id": a.id,
            "channel": a.channel,
            "app_id": a.app_id,
            "name": a.name,
            "kind": a.kind,
            "base_url": a.base_url,
            "synced_at": a.synced_at,
        }
        for a in c.accounts.all()
    ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "channel", "appid", "name", "kind", "base url")
    for r in rows:
        table.add_row(str(r["id"]), r["channel"], r["app_id"], r["name"], r["kind"], r["base_url"])
    console.print(table)


@accounts_app.command("sync")
def accounts_sync(account: Annotated[str, typer.Argument(help="account id or appid")]) -> None:
    """Pull followers and tags from the platform."""
    c = container()
    c.migrate()
    try:
        with progress_bar() as bar:
            report = asyncio.run(c.accounts.sync(account, bar))
    except AccountError as exc:
        raise fail(str(exc)) from None
    console.print(
        f"{report.followers:,} followers ({report.new:,} new, {report.unsubscribed:,} unfollowed), "
        f"{report.tags} tags, {report.tagged:,} tag memberships in {report.seconds:.1f}s"
    )


# -- compliance -----------------------------------------------------------------------------------
@app.command()
def check(
    text: Annotated[str | None, typer.Argument(help="the message (or --file)")] = None,
    channel: Annotated[str, typer.Option(help="channel whose policy applies")] = "wechat_oa",
    file: Annotated[Path | None, typer.Option(help="read the message from a file")] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="a campaign variable the text may use")
    ] = None,
    sign_name: Annotated[str, typer.Option(help="SMS signature, counted in the length")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a message before sending: compliance, channel lint and template variables.

    Exits 1 when the verdict is block or review (a hard limit or an unknown variable blocks
    too), so scripts can gate on it.
    """
    from qunfa.cli.materials import render_content_check
    from qunfa.compliance import default_checker, render
    from qunfa.content.check import check_message, combine, text_content

    if file is not None:
        text = file.read_text(encoding="utf-8")
    if not text:
        raise fail("give the message as an argument or with --file")
    try:
        report = default_checker().check(text, channel)
        content = check_message(
            text_content(text, channel), channel, variables=var or (), sign_name=sign_name
        )
    except (KeyError, ValueError) as exc:
        raise fail(str(exc)) from None
    verdict = combine(report.verdict, content)
    if as_json:
        out = report.to_dict() | content.to_dict()
        out |= {"verdict": verdict, "compliance_verdict": report.verdict}
        print(json.dumps(out, ensure_ascii=False))
    else:
        console.print(render(report, text))
        console.print(render_content_check(content, verdict))
    if verdict not in ("pass", "pass_with_warnings"):
        raise typer.Exit(1)


# -- keys -----------------------------------------------------------------------------------------
@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new data key and re-encrypt every encrypted field with it, online."""
    c = container()
    c.migrate()
    with progress_bar() as bar:
        report = c.keys.rotate(bar)
    console.print(
        f"active key {report.key_id}: {report.fields:,} fields re-encrypted in "
        f"{report.seconds:.1f}s (old keys stay in {c.settings.keyring_path} for reading)"
    )


# -- rules ----------------------------------------------------------------------------------------
@rules_app.command("show")
def rules_show(
    platform: Annotated[
        str | None, typer.Argument(help="e.g. wechat_oa, wecom, sms_tencent")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print every platform limit with its value, source and effective date."""
    from qunfa import rules

    names = rules.platforms()
    if platform is not None and platform not in names:
        raise fail(f"no rules for {platform!r}; known: {', '.join(names)}")
    chosen = [platform] if platform else names
    data = {
        name: {r.name: {"value": r.value, "unit": r.unit, "source": r.source,
                        "effective": r.effective} for r in rules.load(name).rules.values()}
        for name in chosen
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(data, ensure_ascii=False))
        return
    for name in chosen:
        table = Table("rule", "value", "unit", "effective", "source", title=f"rules/{name}.toml")
        for rule, r in data[name].items():
            table.add_row(
                rule, str(r["value"]), str(r["unit"]), str(r["effective"]), str(r["source"])
            )
        console.print(table)


# -- campaigns ------------------------------------------------------------------------------------
def _content(
    channel: str,
    text: str | None,
    mpnews: str | None,
    template: str | None,
    fields: list[str],
    url: str | None = None,
) -> dict[str, Any]:
    if template:
        data = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep:
                raise fail(f"--field {f!r} must look like key=value")
            data[key] = value
        return {"template_id": template, "data": data}
    if channel == "personal_wechat":
        if not text:
            raise fail("a personal WeChat campaign needs --text (and optionally --url)")
        return {"text": text, **({"url": url} if url else {})}
    if channel in ("wecom_customer", "wecom_app") and text:
        return {"msgtype": "text", "text": {"content": text}}
    if mpnews:
        return {"msgtype": "mpnews", "mpnews": {"media_id": mpnews}}
    if text:
        return {"msgtype": "text", "text": {"content": text}}
    raise fail("give the content: --text '…', --mpnews MEDIA_ID or --template ID --field k=v")


@campaign_app.command("create")
def campaign_create(
    name: Annotated[str, typer.Option(help="Campaign name")],
    account: Annotated[str, typer.Option(help="account id or appid")],
    audience: Annotated[str, typer.Option(help="all | tag:<name> | openids:a,b")] = "all",
    channel: Annotated[str, typer.Option(help="wechat_oa or wechat_template")] = "wechat_oa",
    text: Annotated[str | None, typer.Option(help="Text message")] = None,
    mpnews: Annotated[str | None, typer.Option(help="mpnews media_id (from the draft box)")] = None,
    template: Annotated[str | None, typer.Option(help="template_id for wechat_template")] = None,
    field: Annotated[list[str] | None, typer.Option(help="template data key=value")] = None,
    as_list: Annotated[bool, typer.Option("--as-list", help="send as openid lists")] = False,
    url: Annotated[str | None, typer.Option(help="personal_wechat: the link to track")] = None,
    remind_every: Annotated[
        float | None, typer.Option(help="WeCom: hours between reminders to staff who have not sent")
    ] = None,
    track_links: Annotated[
        bool,
        typer.Option(
            "--track-links/--no-track-links",
            help="rewrite links to tracked short links with UTM parameters (docs/compliance.md)",
        ),
    ] = True,
    actor: AsUser = None,
) -> None:
    """Create a draft campaign (--as: its author, who may not approve it)."""
    c = container()
    c.migrate()
    content = _content(channel, text, mpnews, template, field or [], url)
    try:
        camp = c.campaigns.create(
            name=name,
            channel=channel,
            account=account,
            audience=audience,
            content=content,
            as_list=as_list,
            options={
                **({"remind_every_hours": remind_every} if remind_every else {}),
                **({} if track_links else {"track_links": False}),
            },
            created_by=actor or default_actor(),
        )
    except (CampaignError, AccountError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"campaign {camp.id} created ({camp.mode}); send it with: qunfa campaign send {camp.id}"
    )


@campaign_app.command("send")
def campaign_send(
    campaign_id: int,
    wait: Annotated[bool, typer.Option(help="Run a worker here and wait until it is done")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 3600.0,
    actor: AsUser = None,
) -> None:
    """Check (if needed), plan the campaign and queue its batches (resumes a paused one)."""
    c = container()
    c.migrate()
    try:
        with progress_bar() as bar:
            report = c.campaigns.start(campaign_id, bar, actor=actor or default_actor())
    except CampaignError as exc:
        raise fail(str(exc)) from None
    if report:
        console.print(
            f"planned {report.recipients:,} recipients in {report.batches} batches "
            f"({report.seconds:.1f}s)"
        )
    if wait:
        from qunfa.demo import wait_for
        from qunfa.worker.queue import Worker

        w = Worker(c)
        w.start()
        try:
            with progress_bar() as bar:
                wait_for(c, [campaign_id], timeout, bar)
        finally:
            w.stop()
    _print_status(c.campaigns.status(campaign_id))


def _print_status(s: dict[str, Any]) -> None:
    console.print(
        f"[bold]#{s['id']} {s['name']}[/] — {s['channel']} {s['audience']} — [bold]{s['state']}[/]"
    )
    d, p = s["deliveries"], s["platform"]
    console.print(
        f"  planned {s['planned']:,} · sent {d.get('sent', 0):,} · failed {d.get('failed', 0):,} · "
        f"unknown {d.get('unknown', 0):,} · pending {d.get('planned', 0) + d.get('sending', 0):,}"
    )
    if p["total"] is not None:
        console.print(
            f"  platform: total {p['total']:,} · filter {p['filter']:,} · "
            f"sent {p['sent']:,} · error {p['error']:,}"
        )
    if s["last_error"]:
        console.print(f"  [red]{s['last_error']}[/]")


@campaign_app.command("status")
def campaign_status(
    campaign_id: int, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show one campaign's progress and the platform's report."""
    c = container()
    c.migrate()
    try:
        s = c.campaigns.status(campaign_id)
    except CampaignError as exc:
        raise fail(str(exc)) from None
    if as_json:
        console.print_json(json.dumps(s, ensure_ascii=False))
    else:
        _print_status(s)


@campaign_app.command("senders")
def campaign_senders(
    campaign_id: int, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """WeCom: the staff members of the campaign's open tasks, and who has not sent yet."""
    c = container()
    c.migrate()
    rows = c.tasks.senders(campaign_id)
    if as_json:
        console.print_json(json.dumps([vars(r) for r in rows]))
        return
    pending = [r for r in rows if not r.sent]
    console.print(
        f"{len(rows)} staff tasks, {len(pending)} not sent yet · "
        f"{c.tasks.reminders(campaign_id)} reminders sent"
    )
    for r in pending:
        console.print(f"  batch {r.batch_no}: [yellow]{r.userid}[/] has not sent")


@campaign_app.command("preview")
def campaign_preview(
    campaign_id: int,
    contact: Annotated[int, typer.Option(help="contact id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The campaign's content as one contact would receive it (templates rendered)."""
    from qunfa.cli.materials import print_preview
    from qunfa.services.materials import MaterialError

    c = container()
    c.migrate()
    try:
        out = c.materials.preview(campaign_id, contact)
    except MaterialError as exc:
        raise fail(str(exc)) from None
    print_preview(out, as_json)


@campaign_app.command("cancel")
def campaign_cancel(campaign_id: int) -> None:
    """Cancel a campaign: queued batches stop, open WeCom tasks are cancelled on the platform."""
    c = container()
    c.migrate()
    try:
        c.campaigns.cancel(campaign_id)
    except (CampaignError, ValueError) as exc:
        raise fail(str(exc)) from None
    _print_status(c.campaigns.status(campaign_id))


@campaign_app.command("list")
def campaign_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List campaigns, newest first."""
    c = container()
    c.migrate()
    rows = c.campaigns.all()
    if as_json:
        console.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("id", "name", "channel", "audience", "state", "planned", "sent", "failed")
    for s in rows:
        d = s["deliveries"]
        table.add_row(
            str(s["id"]),
            s["name"],
            s["channel"],
            s["audience"],
            s["state"],
            f"{s['planned']:,}",
            f"{d.get('sent', 0):,}",
            f"{d.get('failed', 0):,}",
        )
    console.print(table)


# -- demo -----------------------------------------------------------------------------------------
@app.command()
def demo(
    contacts: Annotated[int, typer.Option(help="Followers of the simulated 服务号")] = 100_000,
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep serving the console")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    port: Annotated[int, typer.Option(help="Console port")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="The demo's own data folder (wiped)")] = Path(
        "data/demo"
    ),
) -> None:
    """Run a real campaign end to end on the sandbox, then serve the console."""
    from qunfa.demo import DemoError, run_demo

    logging.basicConfig(level=logging.WARNING)
    step = (lambda _m: None) if as_json else (lambda m: err.print(f"[cyan]›[/] {m}"))
    try:
        with progress_bar() as bar:
            run = run_demo(
                contacts=contacts,
                data_dir=data_dir,
                port=port if serve_ else 0,
                step=step,
                progress=None if as_json else bar,
            )
    except DemoError as exc:
        raise fail(str(exc)) from None
    try:
        if as_json:
            print(json.dumps(run.summary, ensure_ascii=False, indent=2))
        else:
            _print_summary(run.summary)
        if serve_:
            err.print(f"\nconsole: [bold]{run.server.url}[/] — Ctrl-C to stop")
            run.server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        run.close()


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(
        "#", "campaign", "channel", "audience", "state", "planned", "sent", "failed",
        "platform total/filter/sent/error",
    )  # fmt: skip
    for s in summary["campaigns"]:
        p = s["platform"]
        platform = (
            "—" if p["total"] is None else f"{p['total']}/{p['filter']}/{p['sent']}/{p['error']}"
        )
        table.add_row(
            str(s["id"]),
            s["name"],
            s["channel"],
            s["audience"],
            s["state"],
            f"{s['planned']:,}",
            f"{s['deliveries'].get('sent', 0):,}",
            f"{s['deliveries'].get('failed', 0):,}",
            platform,
        )
    console.print(table)
    for channel, led in summary["ledgers"].items():
        console.print(
            f"sandbox ledger {channel}: {led['messages']:,} messages to {led['recipients']:,} "
            f"recipients, at most {led['max_per_recipient']} per recipient"
        )
    console.print(f"{summary['seconds']}s in all")


if __name__ == "__main__":
    app()
