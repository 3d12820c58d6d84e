"""``personal_wechat``: the assisted-manual channel for personal WeChat (个人微信 群发助手).

There is no API for personal WeChat, and qunfa never automates the client: no hooks, no UI
automation, no protocol clients, nothing that drives WeChat on anyone's behalf (the seeds'
risk advice says it plainly: 禁用第三方外挂工具; such tools get accounts banned). Instead qunfa
plans paced batches of friends and hands each one to a *person*, who pastes the prepared text
into 群发助手, picks the listed friends by their remark names, sends, and marks the batch
``sent``, ``failed`` or ``throttled`` (``qunfa personal`` / ``/api/personal_wechat``; see
:mod:`qunfa.services.personal` and docs/channels/personal_wechat.md).

So :meth:`PersonalWechat.send_batch` performs no I/O at all: "sending" a batch means handing it
to the person. It is always accepted with the batch key as its message id and then waits in
state ``accepted`` until the person marks it. Nothing can be sent twice by a retry, because a
retry only hands over the same batch again (``idempotent = True``).

Limits are data (``rules/personal_wechat.toml``): ``batch_max`` friends per 群发助手 send,
``daily_pace`` person-times a day (the planner spreads batches over days from
``daily_pace_rule`` at ``pace_start_hour`` China time), ``text_max_chars``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from qunfa.channels.base import Channel, ContentError, OutboundBatch
from qunfa.domain.outcomes import BatchOutcome
from qunfa.rules import RuleSet

CONTENT_KEYS = frozenset({"text", "url"})
LINK_PLACEHOLDER = "{link}"  # where the per-batch tracked link goes in the text, if present
URL_MAX_CHARS = 2000


class PersonalWechat(Channel):
    key: ClassVar[str] = "personal_wechat"
    title: ClassVar[str] = "Personal WeChat (assisted-manual, 群发助手)"
    rules_name: ClassVar[str] = "personal_wechat"
    # The friend's remark name as the client shows it: what the person searches for in 群发助手.
    recipient_kind: ClassVar[str] = "wechat_remark"
    modes: ClassVar[frozenset[str]] = frozenset({"manual"})
    credential_fields: ClassVar[tuple[str, ...]] = ()  # no secrets: app_id labels the phone
    sandbox_prefix: ClassVar[str] = "personal_wechat"
    # No platform call exists; a repeated hand-over of the same batch key is the same batch.
    idempotent: ClassVar[bool] = True
    results_later: ClassVar[bool] = True  # recipients count as reached once a person marks it
    daily_pace_rule: ClassVar[str | None] = "daily_pace"

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        """Friends per batch: one 群发助手 send, never more than one day's pace."""
        return max(1, min(rules["batch_max"], rules["daily_pace"]))

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        """``{"text": str, "url": optional http(s) link}``; text ≤ ``text_max_chars``.

        ``{link}`` in the text marks where the batch's tracked link goes; without it the link
        replaces the literal ``url`` in the text, or is appended on its own line.
        """
        unknown = ", ".join(sorted(set(content) - CONTENT_KEYS))
        if unknown:
            raise ContentError(
                f"personal_wechat content has only 'text' and 'url', not {unknown}"
                ' (example: {"text": "新品上架 {link}", "url": "https://shop.example/new"})'
            )
        text = content.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ContentError("personal_wechat needs content 'text': the message to paste")
        limit = rules["text_max_chars"]
        if len(text) > limit:
            raise ContentError(
                f"text is {len(text)} characters; one personal WeChat message holds at most "
                f"{limit} (rule text_max_chars); shorten it"
            )
        url = content.get("url")
        if url is None:
            if LINK_PLACEHOLDER in text:
                raise ContentError("the text has a {link} placeholder but the content has no 'url'")
            return
        if not isinstance(url, str) or len(url) > URL_MAX_CHARS:
            raise ContentError(f"'url' must be a link of at most {URL_MAX_CHARS} characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ContentError(f"'url' must be an http(s) link, not {url!r}")

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        """Hand the batch to the person: no I/O; accepted until it is marked.

        The batch key is the message id, so a hand-over repeated after a crash is recognisably
        the same batch. The person's mark (``services.personal.mark``) settles it.
        """
        return BatchOutcome(accepted=True, platform_msg_id=batch.key)
