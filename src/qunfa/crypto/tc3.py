"""Tencent Cloud API 3.0 request signing, TC3-HMAC-SHA256 (reference §6.1): pure functions.

One module for both sides: the ``sms_tencent`` adapter signs with :func:`sign_headers`, the
sandbox twin recomputes with :func:`signature` from the headers it received and compares. The
procedure, for a POST with a JSON body:

1. ``CanonicalRequest = "POST\\n/\\n\\n" + CanonicalHeaders + "\\n" + SignedHeaders + "\\n" +
   hex(sha256(body))``, where CanonicalHeaders are ``name:value\\n`` lines (lower-case names,
   trimmed values) of the signed headers in order;
2. ``StringToSign = "TC3-HMAC-SHA256\\n" + timestamp + "\\n" + date + "/" + service +
   "/tc3_request\\n" + hex(sha256(CanonicalRequest))`` (date: UTC ``YYYY-MM-DD`` of timestamp);
3. the key chain ``HMAC("TC3" + SecretKey, date) → service → "tc3_request"``;
4. ``Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/<service>/tc3_request,
   SignedHeaders=<names>, Signature=<hex>``.

Checked against the worked example of Tencent Cloud's "Signature v3" page (tests/unit).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
DEFAULT_SIGNED = ("content-type", "host")


def sha256_hex(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def utc_date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def canonical_request(
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload: bytes,
    *,
    method: str = "POST",
    uri: str = "/",
    query: str = "",
) -> str:
    """Step 1. ``headers`` are looked up case-insensitively by the (lower-case) signed names."""
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    names = [h.lower() for h in signed_headers]
    # The docs lower-case the action's value too ("x-tc-action:sendsms").
    values = [lower.get(n, "").lower() if n == "x-tc-action" else lower.get(n, "") for n in names]
    canonical_headers = "".join(f"{n}:{v}\n" for n, v in zip(names, values, strict=True))
    return "\n".join([method, uri, query, canonical_headers, ";".join(names), sha256_hex(payload)])


def string_to_sign(timestamp: int, service: str, canonical: str) -> str:
    """Step 2."""
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{sha256_hex(canonical)}"


def signature(secret_key: str, timestamp: int, service: str, canonical: str) -> str:
    """Steps 2–3: the hex signature of a canonical request."""
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), utc_date(timestamp))
    k_signing = _hmac(_hmac(k_date, service), "tc3_request")
    return hmac.new(
        k_signing, string_to_sign(timestamp, service, canonical).encode("utf-8"), hashlib.sha256
    ).hexdigest()


def authorization(
    secret_id: str, timestamp: int, service: str, signed_headers: Sequence[str], sig: str
) -> str:
    """Step 4: the ``Authorization`` header value."""
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    names = ";".join(h.lower() for h in signed_headers)
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={names}, Signature={sig}"


def sign_headers(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    version: str,
    region: str,
    payload: bytes,
    timestamp: int,
) -> dict[str, str]:
    """Every header a signed API 3.0 POST needs (``Host`` included, as signed)."""
    headers = {"Content-Type": CONTENT_TYPE, "Host": host}
    canonical = canonical_request(headers, DEFAULT_SIGNED, payload)
    sig = signature(secret_key, timestamp, service, canonical)
    return {
        **headers,
        "X-TC-Action": action,
        "X-TC-Version": version,
        "X-TC-Region": region,
        "X-TC-Timestamp": str(timestamp),
        "Authorization": authorization(secret_id, timestamp, service, DEFAULT_SIGNED, sig),
    }


@dataclass(frozen=True)
class ParsedAuthorization:
    secret_id: str
    date: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


_AUTH = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<svc>[^/]+)"
    r"/tc3_request, SignedHeaders=(?P<hdrs>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$"
)


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Split an ``Authorization`` header; None when it is not a TC3-HMAC-SHA256 header."""
    m = _AUTH.match(value.strip())
    if m is None:
        return None
    return ParsedAuthorization(m["id"], m["date"], m["svc"], tuple(m["hdrs"].split(";")), m["sig"])
