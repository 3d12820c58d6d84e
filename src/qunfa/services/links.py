"""Tracked short links of campaigns (docs/compliance.md, "Tracked links").

* :func:`track` — at create and at every content edit, *before* the check: each ``http(s)://``
  link in the content's text fields becomes ``<public_url>/l/<code>`` and its target gets UTM
  parameters. The mapping lives in the campaign's ``options["links"]``::

      {"<code>": {"i": 0, "url": "<target with UTM>", "original": "<as written>",
                  "short": "<public_url>/l/<code>"}}

  so the approved content digest covers exactly what is sent, and no table is needed.
* :func:`original_content` — the content with every short link put back to the URL the
  operator wrote: what the compliance check judges (allow-list, shorteners, raw IPs, 备案), so
  findings point at the original link and qunfa's own domain is never flagged.
* :func:`attribute` — in the dispatcher, for channels that render per recipient (e-mail,
  Aliyun SMS, WeCom app): each recipient's links get ``.<r>``, a signed delivery reference.
* :class:`LinkService` — ``GET /l/<code>[.<r>]``: verify, record the click (an ``events`` row
  per campaign; a ``person_events`` "click" too when the recipient is known), redirect; and
  the per-link counts of :meth:`CampaignService.status`.

The code format is :mod:`qunfa.domain.links`; its key is derived from the keyring's blind key.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from qunfa.domain import links as dom
from qunfa.domain.review import IDENTIFIER_KEYS
from qunfa.storage.models import Campaign, Delivery, Event

if TYPE_CHECKING:
    from qunfa.bootstrap import Container
    from qunfa.services.personalise import Personal

CLICK = "click.link"  # events.kind of a click on a campaign's tracked link
OPTION = "track_links"  # campaign option: true (default) | false | "campaign"
LINKS = "links"  # campaign option written by qunfa: the code → target mapping
# Channels never rewritten, and why (docs/compliance.md).
SKIPPED = {
    "personal_wechat": "it has its own per-batch tracked link /t/<token>",
    "webhook": "its content is JSON for another system, not a message a person reads",
}
# SMS templates are approved with their link domain: rewritten only when the account says its
# templates were approved with qunfa's public domain (account settings {"track_links": true}).
OPT_IN = frozenset({"sms_tencent", "sms_aliyun"})
# Channels that render each recipient's message anyway: a per-person reference costs nothing
# extra (e-mail: one message each; Aliyun: one parameter object per number) or splits the
# batch into one call per member (WeCom app; options {"track_links": "campaign"} avoids it).
# Tencent SMS sends one call per distinct parameter set: per-person links would turn one call
# of 200 numbers into 200, so its clicks count per campaign.
PER_PERSON = frozenset({"email", "sms_aliyun", "wecom_app"})
# On WeChat and WeCom, links to WeChat's own pages (articles on mp.weixin.qq.com, 企业微信
# pages) open natively; through an external redirect they would get WeChat's "non-WeChat page"
# interstitial and lose the article card. They stay as written there.
WECHAT_CHANNELS = frozenset({"wechat_oa", "wechat_template", "wecom_customer", "wecom_app"})
PLATFORM_DOMAINS = ("weixin.qq.com", "qq.com")
# Fields a platform *loads* rather than a person clicks (pictures), besides the identifiers the
# check skips too (mini-program appid/pagepath, media ids …).
SKIP_KEYS = IDENTIFIER_KEYS | {
    "picurl", "picUrl", "pic_url", "image_url", "thumb_url", "cover_url", "icon_url",
}  # fmt: skip
# Link-preview fetchers and crawlers: recorded (flagged), never counted as a person's click.
_BOT = re.compile(
    r"bot\b|crawler|spider|preview|facebookexternalhit|slackbot|telegrambot|whatsapp|"
    r"discordbot|curl/|python-requests|wget/|headless",
    re.IGNORECASE,
)


class LinkError(ValueError):
    """A tracked-link request this service cannot serve."""


class NotFound(LinkError):
    pass


def link_key(c: Container) -> bytes:
    """Key of the link-code HMAC, derived from the keyring's blind key (never rotated, so links
    in sent messages stay valid) and never the blind key itself."""
    return hmac.digest(c.keyring.blind_key, b"qunfa/link-code/v1", "sha256")


def short_base(c: Container) -> str:
    return c.settings.public_url.rstrip("/") + dom.PATH


def mode(options: Mapping[str, Any] | None) -> str:
    """``person`` (default), ``campaign`` (no per-recipient part) or ``off``."""
    value = (options or {}).get(OPTION, True)
    if value is False:
        return "off"
    return "campaign" if value == "campaign" else "person"


def validate_option(options: Mapping[str, Any]) -> str | None:
    """Why ``options`` are wrong about tracked links, or None (``campaigns.validate_options``)."""
    if LINKS in options:
        return (
            "option links is written by qunfa (the tracked-link mapping); leave it out, or set "
            "track_links false to keep links as written"
        )
    value = options.get(OPTION, True)
    if value is not True and value is not False and value != "campaign":
        return f'track_links must be true, false or "campaign", not {value!r}'
    return None


def _covered(host: str, domains: Sequence[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def track(
    c: Container,
    campaign_id: int,
    channel: str,
    content: dict[str, Any],
    options: dict[str, Any],
    account_settings: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(content, options)`` with the content's links rewritten and the mapping merged in.

    Deterministic: the same original URL keeps its code (an edit that brings back the same
    content gives the same digest), and codes already sent stay in the mapping so their
    clicks still resolve. Unchanged input comes back as the same objects.
    """
    if mode(options) == "off" or channel in SKIPPED:
        return content, options
    if channel in OPT_IN and (account_settings or {}).get(OPTION) is not True:
        return content, options
    if "://" not in repr(content):  # most content has no link: skip the extractor's import
        return content, options
    from qunfa.compliance.links import add_utm, rewrite  # the engine package: imported lazily

    key, base = link_key(c), short_base(c)
    known: dict[str, dict[str, Any]] = dict(options.get(LINKS) or {})
    by_original = {str(v["original"]): code for code, v in known.items()}
    next_index = max((int(v["i"]) for v in known.values()), default=-1) + 1

    def shorten(url: str) -> str | None:
        nonlocal next_index
        if url.startswith(base):  # already ours (an edit of rewritten content)
            return None
        try:
            host = (urlsplit(url).hostname or "").lower()
            target = add_utm(url, channel=channel, campaign=str(campaign_id))
        except ValueError:  # not a URL urllib can take apart: leave it to the check
            return None
        if channel in WECHAT_CHANNELS and _covered(host, PLATFORM_DOMAINS):
            return None
        code = by_original.get(url)
        if code is None:
            code = dom.make_code(key, campaign_id, next_index, target)
            known[code] = {"i": next_index, "url": target, "original": url, "short": base + code}
            by_original[url] = code
            next_index += 1
        return str(known[code]["short"])

    def walk(value: Any, key_name: str = "") -> Any:
        if isinstance(value, str):
            return rewrite(value, shorten, html=key_name == "html")[0]
        if isinstance(value, Mapping):
            return {k: v if str(k) in SKIP_KEYS else walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key_name) for v in value]
        return value

    new = walk(content)
    if not known or new == content:
        return content, options
    return new, {**options, LINKS: known}


@lru_cache(maxsize=256)
def _pattern(shorts: tuple[str, ...]) -> re.Pattern[str]:
    """Any of a campaign's short URLs, not followed by more code characters."""
    alternatives = "|".join(re.escape(s) for s in sorted(shorts, key=len, reverse=True))
    return re.compile(f"(?:{alternatives})(?![A-Za-z0-9_-])")


def _shorts(options: Mapping[str, Any] | None) -> dict[str, str]:
    links = (options or {}).get(LINKS) or {}
    return {str(v["short"]): str(v["original"]) for v in links.values()}


def _sub(value: Any, pattern: re.Pattern[str], repl: Any) -> Any:
    if isinstance(value, str):
        return pattern.sub(repl, value) if "/l/" in value else value
    if isinstance(value, Mapping):
        return {k: _sub(v, pattern, repl) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, pattern, repl) for v in value]
    return value


def original_content(content: dict[str, Any], options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``content`` with every tracked short link replaced by the URL the operator wrote."""
    shorts = _shorts(options)
    if not shorts:
        return content
    restored: dict[str, Any] = _sub(content, _pattern(tuple(shorts)), lambda m: shorts[m[0]])
    return restored


def attribute(
    c: Container,
    camp: Campaign,
    content: Mapping[str, Any],
    rows: Sequence[tuple[int, str]],
    personal: Personal | None,
) -> Personal | None:
    """Each recipient's content with ``.<r>`` after every tracked link (per-person channels).

    ``rows`` are the batch's (delivery id, recipient id); ``personal`` the batch rendered per
    person so far (None: the same content for all). Returns ``personal`` unchanged when the
    campaign has no tracked links, its channel does not render per recipient, or its option
    says ``"campaign"``.
    """
    options = camp.options or {}
    if LINKS not in options or camp.channel not in PER_PERSON or mode(options) != "person":
        return personal
    pattern = _pattern(tuple(_shorts(options)))
    if personal is None and pattern.search(repr(content)) is None:
        return None  # the links are elsewhere (a material's own text is not rewritten)
    from qunfa.services.personalise import Personal

    key = link_key(c)
    # The campaign whose codes these are: this one, or the series a recurring run copied its
    # content and links from (the click resolves to the series, docs/compliance.md).
    claimed = dom.read_code(next(iter(options[LINKS])))
    owner = claimed[0] if claimed is not None else camp.id
    out = Personal({}, dict(personal.failures) if personal is not None else {})
    shared = _builder(content, pattern) if personal is None else None
    for did, rid in rows:
        suffix = "." + dom.make_recipient(key, owner, did)
        if shared is not None:
            out.content[rid] = shared(suffix)
        elif (own := personal.content.get(rid) if personal else None) is not None:
            out.content[rid] = _builder(own, pattern)(suffix)
        # else: the recipient failed to render and stays a failure
    return out


def _builder(value: Any, pattern: re.Pattern[str]) -> Callable[[str], Any]:
    """``suffix → value`` with ``suffix`` after every match of ``pattern``: the content is
    taken apart once per batch, so each recipient costs a few joins (parts without a link are
    shared between recipients, as personalised contents share theirs)."""
    if isinstance(value, str):
        ends = [m.end() for m in pattern.finditer(value)] if "/l/" in value else []
        if not ends:
            return lambda _s: value
        chunks = [value[a:b] for a, b in zip([0, *ends], [*ends, len(value)], strict=True)]
        tail = chunks.pop()
        return lambda s: s.join(chunks) + s + tail
    if isinstance(value, Mapping):
        parts = {k: _builder(v, pattern) for k, v in value.items()}
        return lambda s: {k: b(s) for k, b in parts.items()}
    if isinstance(value, list):
        items = [_builder(v, pattern) for v in value]
        return lambda s: [b(s) for b in items]
    return lambda _s: value


class LinkService:
    def __init__(self, c: Container) -> None:
        self.c = c

    def click(self, token: str, user_agent: str | None = None, *, record: bool = True) -> str:
        """Record a click on ``/l/<token>``; returns the target to redirect to.

        ``record=False`` (a ``HEAD`` request: link checkers, mail scanners, unfurlers) checks
        the code and returns the target without counting anything.

        Raises :class:`NotFound` for anything but a genuine code of an existing campaign. A
        genuine code with a broken recipient part still redirects and counts for the campaign
        (mail clients and forwarding sometimes mangle the tail). Clicks are stored once per
        (link, recipient) and second: link previews fetch twice at once.
        """
        code, part = dom.split(token)
        claimed = dom.read_code(code)
        if claimed is None:
            raise NotFound("no such link")
        campaign_id, index = claimed
        key = link_key(self.c)
        with self.c.sessions() as s:
            camp = s.get(Campaign, campaign_id)
            entry = ((camp.options or {}).get(LINKS) or {}).get(code) if camp else None
            if camp is None or not isinstance(entry, dict) or entry.get("i") != index:
                raise NotFound("no such link")
            if not dom.verify_code(key, code, str(entry["url"])):
                raise NotFound("no such link")
            if not record:
                return str(entry["url"])
            did = dom.read_recipient(key, campaign_id, part) if part else None
            contact = None
            if did is not None:
                row = s.execute(
                    select(Delivery.campaign_id, Campaign.parent_id, Delivery.contact_id)
                    .join(Campaign, Campaign.id == Delivery.campaign_id)
                    .where(Delivery.id == did)
                ).one_or_none()
                if row is None or campaign_id not in (row[0], row[1]):
                    did = None
                else:
                    contact = row[2]
        ua = (user_agent or "")[:300]
        bot = bool(_BOT.search(ua))
        now = time.time()
        try:
            with self.c.engine.begin() as conn:
                conn.execute(
                    insert(Event).values(
                        account_id=camp.account_id,
                        kind=CLICK,
                        dedupe_key=f"{CLICK}:{code}:{did if did is not None else '-'}:{int(now)}",
                        campaign_id=campaign_id,
                        payload={
                            "code": code,
                            "i": index,
                            "delivery": did,
                            "contact": contact,
                            "bot": bot,
                            "user_agent": ua,
                        },
                        received_at=now,
                    )
                )
        except IntegrityError:
            return str(entry["url"])  # a repeat within the second: counted once
        if contact is not None and not bot:
            from qunfa.services.behaviour import EventIn

            self.c.behaviour.ingest_parsed(
                [
                    EventIn(
                        kind="click",
                        at=now,
                        contact_id=int(contact),
                        channel=camp.channel,
                        text=str(entry["original"])[:2000],
                        dedupe_key=f"{CLICK}:{campaign_id}:{index}:{did}:{int(now)}",
                    )
                ]
            )
        return str(entry["url"])

    def report(self, camp: Campaign) -> dict[str, Any] | None:
        """Clicks per link and unique clickers (people, where the channel tells them apart);
        None when the campaign has no tracked links. Crawlers are counted apart."""
        links = (camp.options or {}).get(LINKS) or {}
        if not links:
            return None
        per_person = camp.channel in PER_PERSON and mode(camp.options) == "person"
        clicks = dict.fromkeys(links, 0)
        people: dict[str, set[int]] = {code: set() for code in links}
        bots = 0
        with self.c.engine.connect() as conn:
            # ix_events_campaign_kind (migration 0007) keeps this to the campaign's own rows.
            for (payload,) in conn.execute(
                select(Event.payload).where(Event.kind == CLICK, Event.campaign_id == camp.id)
            ):
                code = str((payload or {}).get("code"))
                if code not in clicks:
                    continue
                if payload.get("bot"):
                    bots += 1
                    continue
                clicks[code] += 1
                if payload.get("contact") is not None:
                    people[code].add(int(payload["contact"]))
        everyone = set().union(*people.values())
        ordered = sorted(links.items(), key=lambda kv: int(kv[1]["i"]))
        return {
            "attribution": "person" if per_person else "campaign",
            "clicks": sum(clicks.values()),
            "unique_clickers": len(everyone) if per_person else None,
            "bot_clicks": bots,
            "links": [
                {
                    "code": code,
                    "short": v["short"],
                    "original": v["original"],
                    "target": v["url"],
                    "clicks": clicks[code],
                    "unique_clickers": len(people[code]) if per_person else None,
                }
                for code, v in ordered
            ],
        }
