"""Deterministic idempotency keys.

A batch's key is derived from (campaign uid, batch number) only, so every retry of the same
batch — in any process, after any crash — presents the same key and the platform's own dedupe
(``clientmsgid``, ``client_msg_id``, duplicate check, uuid) refuses a second delivery.
"""

from __future__ import annotations

import hashlib


def batch_key(campaign_uid: str, batch_no: int, max_bytes: int = 64) -> str:
    """``qf-<campaign uid>-<batch no>``, hashed down when it would exceed ``max_bytes``."""
    key = f"qf-{campaign_uid}-{batch_no}"
    if len(key.encode()) <= max_bytes:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"qf-{digest[: max_bytes - 3]}"
