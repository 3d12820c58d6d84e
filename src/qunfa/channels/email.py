"""``email``: one message per recipient over SMTP (aiosmtplib), with List-Unsubscribe.

A batch (``recipients_per_batch``) is sent over ``smtp_connections`` SMTP sessions (default
one), each logging in once and sending its share one message at a time. Every message is
multipart/alternative (text + optional HTML) and carries ``List-Unsubscribe`` (a mailto and a
one-click HTTPS link under the account's ``unsubscribe_base``) and ``List-Unsubscribe-Post``
(RFC 8058). ``Message-ID`` is derived from (batch key, recipient), so a receiver can dedupe a
repeat; SMTP itself has no dedupe, so the channel is not idempotent for the engine.

Results: a 2xx after DATA accepts the message (its Message-ID becomes the recipient's id, which
a later bounce is matched by); a 5xx for a recipient is a permanent failure of that recipient;
4xx ones make the batch retryable only when nothing was accepted, otherwise they are recorded as
failures. Connection, login and mid-session errors stop the batch (retryable or account).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any, ClassVar

import aiosmtplib

from qunfa.channels.base import Channel, ContentError, OutboundBatch
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError, most_severe
from qunfa.rules import RuleSet

E = ErrorClass
DEFAULT_UNSUBSCRIBE_BASE = "http://127.0.0.1:8000/u/"
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
# SMTP reply classes (RFC 5321 §4.2.1): what each means for a batch or a recipient.
EMAIL_ERRORS: Mapping[int | str, ErrorClass] = {
    "connect": E.RETRYABLE,  # relay down or unreachable: nothing was sent
    "disconnected": E.RETRYABLE,
    535: E.ACCOUNT,  # authentication credentials invalid
    534: E.ACCOUNT,  # authentication mechanism too weak
    530: E.ACCOUNT,  # authentication required
    "auth_unsupported": E.ACCOUNT,
    421: E.RETRYABLE,  # service not available, closing
    450: E.RETRYABLE,
    451: E.RETRYABLE,
    452: E.RETRYABLE,
    454: E.RETRYABLE,
    550: E.RECIPIENT,  # mailbox unavailable / user unknown
    551: E.RECIPIENT,
    552: E.RECIPIENT,
    553: E.RECIPIENT,
    554: E.RECIPIENT,
}


def message_id(key: str, recipient: str, from_address: str) -> str:
    """Deterministic ``<…@domain>`` for (batch key, recipient): a resend has the same id."""
    digest = hashlib.sha256(f"{key}\0{recipient.lower()}".encode()).hexdigest()[:32]
    return f"<{digest}@{from_address.rsplit('@', 1)[-1]}>"


def unsubscribe_token(campaign_uid: str, recipient: str) -> str:
    """Opaque per-(campaign, recipient) token for the one-click unsubscribe URL."""
    return hashlib.sha256(f"unsub\0{campaign_uid}\0{recipient.lower()}".encode()).hexdigest()[:32]


def classify_reply(code: int, message: str) -> PlatformError:
    klass = EMAIL_ERRORS.get(code) or (E.RECIPIENT if code >= 500 else E.RETRYABLE)
    return PlatformError(code, message.strip(), klass)


@dataclass
class _Share:
    """What one SMTP session achieved."""

    accepted: dict[str, str] = field(default_factory=dict)
    failed: dict[str, PlatformError] = field(default_factory=dict)
    deferred: dict[str, PlatformError] = field(default_factory=dict)
    stop: PlatformError | None = None
    in_doubt: bool = False


class Email(Channel):
    key: ClassVar[str] = "email"
    title: ClassVar[str] = "E-mail over SMTP"
    rules_name: ClassVar[str] = "email"
    recipient_kind: ClassVar[str] = "email"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    errors = EMAIL_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = (
        "host",
        "port",
        "username",
        "password",
        "from_address",
    )
    sandbox_prefix: ClassVar[str] = "email"
    idempotent: ClassVar[bool] = False  # SMTP has no dedupe: in doubt → unknown
    personalises: ClassVar[bool] = True  # one message per recipient anyway

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["recipients_per_batch"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        """``{"subject", "text", "html"?, "from_name"?}``: a subject and a plain-text part."""
        if not str(content.get("subject") or "").strip():
            raise ContentError("an e-mail needs a subject (--subject '…')")
        if "\n" in str(content["subject"]) or "\r" in str(content["subject"]):
            raise ContentError("the subject must be one line")
        if not str(content.get("text") or "").strip():
            raise ContentError(
                "an e-mail needs a plain-text part ('text'), also when it has HTML: clients "
                "and spam filters expect multipart/alternative"
            )

    def classify(self, code: int | str, message: str) -> PlatformError:
        if isinstance(code, int):
            return classify_reply(code, message)
        return super().classify(code, message)

    def build(self, batch: OutboundBatch, recipient: str) -> EmailMessage:
        """The message ``recipient`` gets from ``batch`` (headers included)."""
        # One message per recipient already: a personalised batch just picks their content.
        creds, content = self.account.credentials, batch.content_for(recipient)
        sender = creds["from_address"]
        base = str(self.account.settings.get("unsubscribe_base") or DEFAULT_UNSUBSCRIBE_BASE)
        # The engine hands a signed token per recipient (qunfa's /u/<token> route withdraws);
        # the unsigned fallback only serves adapters driven directly, outside the engine.
        token = batch.unsubscribe.get(recipient) or unsubscribe_token(batch.campaign_uid, recipient)
        mailto = str(self.account.settings.get("unsubscribe_mailto") or sender)
        msg = EmailMessage()
        msg["From"] = formataddr((str(content.get("from_name") or ""), sender))
        msg["To"] = recipient
        msg["Subject"] = str(content["subject"])
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id(batch.key, recipient, sender)
        msg["List-Unsubscribe"] = f"<mailto:{mailto}?subject=unsubscribe>, <{base}{token}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(str(content["text"]))
        if content.get("html"):
            msg.add_alternative(str(content["html"]), subtype="html")
        return msg

    def _client(self) -> aiosmtplib.SMTP:
        creds = self.account.credentials
        port = int(creds["port"])
        starttls = str(creds.get("starttls", "")).lower() in ("1", "true", "yes")
        return aiosmtplib.SMTP(
            hostname=creds["host"],
            port=port,
            timeout=float(self.rules["smtp_timeout_seconds"]),
            use_tls=port == 465,  # implicit TLS (SMTPS); otherwise STARTTLS only if asked
            start_tls=starttls if port != 465 else False,
        )

    async def _session(self, batch: OutboundBatch, recipients: list[str]) -> _Share:
        share = _Share()
        creds = self.account.credentials
        smtp = self._client()
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            share.stop = PlatformError("connect", f"cannot reach SMTP relay: {exc}", E.RETRYABLE)
            return share
        try:
            await smtp.login(creds["username"], creds["password"])
        except aiosmtplib.SMTPAuthenticationError as exc:
            share.stop = PlatformError(exc.code, exc.message, E.ACCOUNT)
        except aiosmtplib.SMTPNotSupported as exc:
            share.stop = PlatformError("auth_unsupported", str(exc), E.ACCOUNT)
        except aiosmtplib.SMTPResponseException as exc:
            share.stop = self.classify(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            share.stop = PlatformError("disconnected", str(exc), E.RETRYABLE)
        if share.stop is None:
            await self._send_all(smtp, batch, recipients, share)
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()  # the messages' fate was settled by their own replies
        return share

    async def _send_all(
        self, smtp: aiosmtplib.SMTP, batch: OutboundBatch, recipients: list[str], share: _Share
    ) -> None:
        sender = self.account.credentials["from_address"]
        limit = self.rules["messages_per_second"]
        for rcpt in recipients:
            msg = self.build(batch, rcpt)
            await self.ctx.limiter.acquire(f"email:{self.account.app_id}", limit, 1.0)
            try:
                await smtp.send_message(msg, sender=sender, recipients=[rcpt])
                share.accepted[rcpt] = str(msg["Message-ID"])
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                error = self.classify(refused.code, refused.message)
                bucket = share.failed if error.klass is E.RECIPIENT else share.deferred
                bucket[rcpt] = error
            except aiosmtplib.SMTPSenderRefused as exc:
                # The relay refuses our From: an account setting, for every message.
                klass = E.ACCOUNT if exc.code >= 500 else E.RETRYABLE
                share.stop = PlatformError(exc.code, exc.message, klass)
                return
            except aiosmtplib.SMTPDataError as exc:
                error = self.classify(exc.code, exc.message)
                bucket = share.failed if error.klass is E.RECIPIENT else share.deferred
                bucket[rcpt] = error
            except aiosmtplib.SMTPResponseException as exc:
                share.stop = self.classify(exc.code, exc.message)
                if share.stop.klass is E.RECIPIENT:  # a 5xx outside RCPT/DATA: give up here
                    share.stop = PlatformError(exc.code, exc.message, E.BATCH)
                return
            except (aiosmtplib.SMTPException, OSError) as exc:
                # Lost mid-message: this one may have been delivered.
                share.stop = PlatformError("disconnected", str(exc), E.RETRYABLE)
                share.in_doubt = True
                return

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        invalid = {
            r: PlatformError("invalid_address", f"{r!r} is not an e-mail address", E.RECIPIENT)
            for r in batch.recipients
            if not _ADDRESS.match(r)
        }
        valid = [r for r in batch.recipients if r not in invalid]
        n = max(1, min(self.rules["smtp_connections"], len(valid)))
        shares = await asyncio.gather(*(self._session(batch, valid[i::n]) for i in range(n)))
        accepted = {k: v for s in shares for k, v in s.accepted.items()}
        failed = {**invalid, **{k: v for s in shares for k, v in s.failed.items()}}
        deferred = {k: v for s in shares for k, v in s.deferred.items()}
        stops = [s.stop for s in shares if s.stop is not None]
        in_doubt = any(s.in_doubt for s in shares)
        if stops:
            # Accepted and refused recipients are recorded; the rest go back to planned (or
            # become unknown when a message was in flight).
            return BatchOutcome(
                accepted=False,
                error=most_severe(stops),
                in_doubt=in_doubt,
                recipient_msg_ids=accepted,
                recipient_failures=failed,
            )
        if deferred and not accepted:
            return BatchOutcome(
                accepted=False,
                error=most_severe(list(deferred.values())),
                recipient_failures=failed,
            )
        return BatchOutcome(
            accepted=True,
            done=True,
            recipient_msg_ids=accepted,
            recipient_failures={**failed, **deferred},
        )
