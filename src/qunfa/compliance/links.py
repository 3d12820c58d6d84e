"""Links in a message: extraction, allow-list / shortener / raw-IP / filing (备案) checks, and the
rewrite to signed tracked short links with UTM parameters.

Extraction works on the original text (full-width ASCII folded one-to-one first, so
``ｅｘａｍｐｌｅ．ｃｏｍ`` is found and offsets stay exact). It finds ``http(s)://`` URLs, bare
domains with a known top-level domain (``example.com/path``, ``shop.example.cn``) and raw IPv4
addresses, with Chinese text directly around them.

:func:`rewrite` replaces ``http(s)://`` links with tracked short links; what a short link is
(the signed code) lives in :mod:`qunfa.domain.links`, and campaigns use both through
``services/links.py`` (docs/compliance.md, "Tracked links").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import unescape as html_unescape
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SHORTENERS = frozenset(
    {
        "t.cn", "dwz.cn", "url.cn", "suo.im", "suo.nz", "bit.ly", "tinyurl.com", "goo.gl", "t.co",
        "ow.ly", "is.gd", "buff.ly", "rebrand.ly", "cutt.ly", "s.id", "w.url.cn", "sohu.gg",
        "tb.cn", "m.tb.cn", "dwz.date", "u.nu", "v.gd", "0x3.me", "lnkd.in", "reurl.cc",
        "kuaizhan.com",
    }
)  # fmt: skip
DEFAULT_ALLOW = frozenset({"weixin.qq.com", "mp.weixin.qq.com", "work.weixin.qq.com", "qq.com"})
_TLDS = (
    "com|cn|net|org|info|biz|io|co|me|cc|tv|top|xyz|vip|shop|site|online|club|link|app|dev|ai|ly|gl|"
    "im|in|hk|tw|mo|jp|kr|uk|us|de|fr|ru|sg|gov|edu|mobi|pro|ink|fun|work|ltd|wang|store|tech|"
    "date|red|ren|pub|live|art|asia|group|cloud|show|space|website|life|world|nu|gd|id|example"
)
_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
_URL_RE = re.compile(
    r"(?<![A-Za-z0-9@.\-_])(?:"
    r"(?P<scheme>https?://)" + _URL_CHARS + r"+"
    r"|(?P<ip>(?:\d{1,3}\.){3}\d{1,3})(?::\d{1,5})?(?:[/?#]" + _URL_CHARS + r"*)?"
    r"|(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+(?:" + _TLDS + r")(?![A-Za-z0-9\-])"
    r"(?::\d{1,5})?(?:[/?#]" + _URL_CHARS + r"*)?"
    r")",
    re.IGNORECASE,
)
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FULLWIDTH_RE = re.compile("[\uff01-\uff5e]")
# Every link the pattern finds has a dot (domain, IP) or a slash (scheme://): text without
# either, ASCII or full-width, has none (most of a campaign's messages).
_LINK_HINT = re.compile("[./\uff0e\uff0f]")
_TRAILING = ".,;:!?)'](*"

IssueKind = Literal["link_domain", "link_shortener", "link_ip", "link_unfiled"]
SUGGESTIONS: dict[str, str] = {
    "link_domain": "改用白名单内的域名（如公众号文章、已备案的自有域名）",
    "link_shortener": "不要使用第三方短链，改用 qunfa 的可追踪短链或原始白名单链接",
    "link_ip": "不要直接使用 IP 地址，改用已备案的域名",
    "link_unfiled": "该域名未备案：改用已完成 ICP 备案的域名",
}


@dataclass(frozen=True, slots=True)
class Link:
    url: str  # as written (after full-width folding)
    start: int  # span in the original text
    end: int
    host: str  # lower-case, without port
    is_ip: bool

    @property
    def absolute(self) -> str:
        """The URL with a scheme (``https://`` added to bare domains and IPs)."""
        return self.url if re.match(r"https?://", self.url, re.I) else "https://" + self.url


@dataclass(frozen=True, slots=True)
class LinkIssue:
    link: Link
    kind: IssueKind
    detail: str


@dataclass(frozen=True)
class LinkPolicy:
    """Allowed domains (a domain allows its subdomains), shorteners, and the filing (备案) status
    of known domains (``False`` → flagged; domains absent from the mapping are not judged)."""

    allow: frozenset[str] = DEFAULT_ALLOW
    filed: Mapping[str, bool] = field(default_factory=dict)
    shorteners: frozenset[str] = SHORTENERS

    @staticmethod
    def _covered(host: str, domains: Iterable[str]) -> bool:
        return any(host == d or host.endswith("." + d) for d in domains)

    def issues(self, link: Link) -> list[LinkIssue]:
        host = link.host
        if link.is_ip:
            return [LinkIssue(link, "link_ip", f"raw IP address {host}")]
        out: list[LinkIssue] = []
        if host in self.shorteners:
            out.append(LinkIssue(link, "link_shortener", f"third-party shortener {host}"))
        elif not self._covered(host, self.allow):
            out.append(LinkIssue(link, "link_domain", f"{host} is not on the allow-list"))
        filed = next((v for d, v in self.filed.items() if self._covered(host, (d,))), None)
        if filed is False:
            out.append(LinkIssue(link, "link_unfiled", f"{host} has no ICP filing (备案)"))
        return out


def _fold_fullwidth(m: re.Match[str]) -> str:
    return chr(ord(m.group()) - 0xFEE0)


def extract(text: str) -> list[Link]:
    """Every URL, bare domain and raw IP in ``text``, in order, with spans in ``text``."""
    if _LINK_HINT.search(text) is None:
        return []
    # Fold full-width ASCII one run at a time: a dict translate pays a lookup per character of
    # the whole message (offsets are kept either way: every fold is one character to one).
    folded = _FULLWIDTH_RE.sub(_fold_fullwidth, text)
    out: list[Link] = []
    for m in _URL_RE.finditer(folded):
        url = m.group(0)
        while url and url[-1] in _TRAILING and not (url[-1] == ")" and "(" in url):
            url = url[:-1]
        start = m.start()
        is_ip = m.group("ip") is not None
        host = urlsplit(url if m.group("scheme") else "//" + url).hostname or ""
        if m.group("scheme") and not is_ip:
            try:
                ipaddress.ip_address(host)
                is_ip = True
            except ValueError:
                pass
        if not host:
            continue
        out.append(Link(url, start, start + len(url), host.lower(), is_ip))
    return out


def add_utm(url: str, *, channel: str, campaign: str) -> str:
    """``url`` with utm_source=qunfa, utm_medium=<channel>, utm_campaign=<campaign> added.

    UTM values the operator already wrote win (their own campaign naming in their analytics);
    the other parameters, their order and the fragment are kept.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in query}
    ours = [("utm_source", "qunfa"), ("utm_medium", channel), ("utm_campaign", campaign)]
    query += [(k, v) for k, v in ours if k not in have]
    return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))


@dataclass(frozen=True, slots=True)
class TrackedLink:
    """One link :func:`rewrite` replaced."""

    original: str  # the URL as written (HTML entities decoded in HTML)
    short_url: str  # what the text now carries
    start: int  # span of the original link in the original text
    end: int


_SCHEME = re.compile(r"https?://", re.IGNORECASE)
# An HTML attribute that loads a resource rather than being clicked: ``<img src="…">``.
_LOADED_ATTR = re.compile(r"(?:src|srcset|background|poster)\s*=\s*[\"']?$", re.IGNORECASE)


def rewrite(
    text: str, shorten: Callable[[str], str | None], *, html: bool = False
) -> tuple[str, list[TrackedLink]]:
    """Replace every ``http(s)://`` link for which ``shorten(url)`` returns a short URL.

    Left as written: bare domains and IPs without a scheme (not reliably clickable, and SMS
    templates spell their links that way); a link directly followed by ``{`` (a template
    builds the rest of the URL per person); in HTML, URLs an attribute *loads* (``src=`` of an
    image: a redirect there would count every open as a click). In HTML the URL is unescaped
    (``&amp;`` → ``&``) before ``shorten`` sees it. ``shorten`` returning None leaves the link.
    """
    if "://" not in text:
        return text, []
    pieces: list[str] = []
    tracked: list[TrackedLink] = []
    pos = 0
    for link in extract(text):
        if not _SCHEME.match(link.url) or text[link.end : link.end + 1] == "{":
            continue
        if html and _LOADED_ATTR.search(text, max(0, link.start - 24), link.start):
            continue
        url = html_unescape(link.url) if html else link.url
        short = shorten(url)
        if short is None:
            continue
        tracked.append(TrackedLink(url, short, link.start, link.end))
        pieces += [text[pos : link.start], short]
        pos = link.end
    pieces.append(text[pos:])
    return "".join(pieces), tracked
