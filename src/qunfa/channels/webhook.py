"""``webhook``: a signed JSON POST per batch, for app-push gateways and internal systems.

An account is an endpoint: ``app_id`` names it, credentials carry ``url`` and ``secret``. Each
POST carries ``{"id", "campaign", "batch", "recipients", "content", "timestamp"}`` and the headers
``X-Qunfa-Timestamp``, ``X-Qunfa-Signature: sha256=<hex HMAC-SHA256(secret, f"{ts}.{body}")>``
and ``Idempotency-Key`` (the batch key; ``<key>.<part>`` when a batch is split into several
POSTs of ``recipients_per_request``). Receivers must verify the signature, reject timestamps
older than ``signature_max_age_seconds`` and answer a repeated Idempotency-Key within
``dedupe_window_seconds`` with 2xx without acting again: that contract is what makes the
channel idempotent. See docs/channels/webhook.md.

2xx: accepted and final. 429, 5xx and timeouts: retryable (``Retry-After`` honoured). 401/403:
the secret or the endpoint's access is wrong (account). Other 4xx: the receiver refuses this batch
(batch), with its error body kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from qunfa.channels.base import Channel, OutboundBatch
from qunfa.channels.http import HttpClient, TransportError
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

E = ErrorClass
SIGNATURE_HEADER = "X-Qunfa-Signature"
TIMESTAMP_HEADER = "X-Qunfa-Timestamp"
KEY_HEADER = "Idempotency-Key"
_IN_DOUBT_STATUS = frozenset({500, 502, 504})  # may hide a processed request (as in http.py)


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`` over the exact body bytes."""
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes | str,
    signature: str,
    *,
    now: float | None = None,
    max_age: float = 300.0,
) -> bool:
    """True when ``signature`` is ours for (timestamp, body) and the timestamp is fresh.

    A timestamp more than ``max_age`` seconds away from ``now`` (either way) fails, so a captured
    request cannot be replayed later. Comparison is constant-time.
    """
    try:
        ts = int(str(timestamp))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > max_age:
        return False
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold anything.
    return hmac.compare_digest(
        sign(secret, ts, body).encode(), signature.encode("utf-8", "replace")
    )


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


async def post_raw(
    http: HttpClient, url: str, data: bytes, headers: dict[str, str]
) -> tuple[int, Mapping[str, str], bytes]:
    """POST ``data`` as is (the signature covers these exact bytes); no redirects followed.

    Uses the shared client's session; transport failures raise ``TransportError`` with the same
    in-doubt rules as :meth:`HttpClient.request_json`.
    """
    resp = await http.request_raw("POST", url, data=data, headers=headers, allow_redirects=False)
    return resp.status, resp.headers, resp.body


class Webhook(Channel):
    key: ClassVar[str] = "webhook"
    title: ClassVar[str] = "Signed webhook (app push, internal systems)"
    rules_name: ClassVar[str] = "webhook"
    recipient_kind: ClassVar[str] = "webhook_id"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    credential_fields: ClassVar[tuple[str, ...]] = ("url", "secret")
    sandbox_prefix: ClassVar[str] = "webhook"
    idempotent: ClassVar[bool] = True  # receivers dedupe by Idempotency-Key (the contract)
    dedupe_window_rule: ClassVar[str | None] = "dedupe_window_seconds"

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["batch_size"]

    def _classify_status(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> PlatformError:
        text = body.decode("utf-8", "replace")[: self.rules["error_body_max_chars"]]
        message = f"HTTP {status}: {text}".strip()
        if status == 429 or status >= 500 or status == 408:
            wait = retry_after(headers.get("Retry-After"))
            return PlatformError(status, message, E.RETRYABLE, retry_after=wait)
        if status in (401, 403):  # wrong secret or endpoint access: every batch would fail
            return PlatformError(status, message, E.ACCOUNT)
        return PlatformError(status, message, E.BATCH)  # other 4xx, and 3xx (not followed)

    async def _post(self, key: str, payload: dict[str, Any]) -> BatchOutcome | None:
        """POST one signed part; None when the receiver accepted it."""
        ts = int(time.time())
        payload["timestamp"] = ts
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        creds = self.account.credentials
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(creds["secret"], ts, data),
            KEY_HEADER: key,
        }
        try:
            status, resp_headers, body = await post_raw(self.ctx.http, creds["url"], data, headers)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), E.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        if 200 <= status < 300:
            return None
        error = self._classify_status(status, resp_headers, body)
        return BatchOutcome(accepted=False, error=error, in_doubt=status in _IN_DOUBT_STATUS)

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        per = max(1, self.rules["recipients_per_request"])
        recipients = list(batch.recipients)
        parts = [recipients[i : i + per] for i in range(0, len(recipients), per)] or [[]]
        for n, part in enumerate(parts):
            # One key per part, derived from the batch key: a retried batch re-posts the parts
            # the receiver already has under the same keys, and it dedupes them.
            key = batch.key if len(parts) == 1 else f"{batch.key}.{n}"
            payload = {
                "id": key,
                "campaign": batch.campaign_uid,
                "batch": batch.batch_no,
                "recipients": part,
                "content": dict(batch.content),
            }
            failed = await self._post(key, payload)
            if failed is not None:
                return failed
        return BatchOutcome(accepted=True, done=True, platform_msg_id=batch.key)
