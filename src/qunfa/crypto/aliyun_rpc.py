"""Aliyun RPC-style request signing, signature version 1.0 (HMAC-SHA1): pure functions.

Shared by the ``sms_aliyun`` adapter (which signs) and its sandbox twin (which recomputes and
compares). The procedure (Aliyun "RPC signature mechanism"):

1. percent-encode every parameter name and value per RFC 3986 (unreserved ``A-Za-z0-9-_.~``
   stay, space is ``%20``, ``*`` is ``%2A``; UTF-8 bytes first);
2. sort the parameters by name (``Signature`` itself excluded) and join ``name=value`` with
   ``&`` → the canonicalized query string;
3. ``StringToSign = METHOD + "&" + enc("/") + "&" + enc(canonicalized query)``;
4. ``Signature = base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign))``.

Checked against Aliyun's documented examples (``testsecret``/DescribeRegions and the
dysmsapi SendSms example) in tests/unit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

SIGNATURE_METHOD = "HMAC-SHA1"
SIGNATURE_VERSION = "1.0"


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun wants it (``quote`` keeps exactly the unreserved set)."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted, encoded ``name=value`` pairs joined by ``&``; ``Signature`` is left out."""
    items = sorted((k, v) for k, v in params.items() if k != "Signature")
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in items)


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(method: str, params: Mapping[str, str], secret: str) -> str:
    """The base64 ``Signature`` of ``params`` sent with HTTP ``method``."""
    digest = hmac.new(
        f"{secret}&".encode(), string_to_sign(method, params).encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def iso_timestamp(ts: float) -> str:
    """ISO 8601 UTC to the second, as the ``Timestamp`` parameter wants it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> float:
    """Inverse of :func:`iso_timestamp`; raises ``ValueError`` for anything else."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def signed_params(
    method: str,
    action_params: Mapping[str, str],
    *,
    access_key_id: str,
    secret: str,
    version: str,
    now: float,
    nonce: str | None = None,
    fmt: str = "JSON",
) -> dict[str, str]:
    """The action's parameters plus the common ones, with ``Signature`` added."""
    params = {
        **action_params,
        "AccessKeyId": access_key_id,
        "Format": fmt,
        "SignatureMethod": SIGNATURE_METHOD,
        "SignatureVersion": SIGNATURE_VERSION,
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "Timestamp": iso_timestamp(now),
        "Version": version,
    }
    params["Signature"] = sign(method, params, secret)
    return params
