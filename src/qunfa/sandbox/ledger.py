"""The per-recipient ledger: what each recipient actually received, for every channel twin.

One generic table keyed by (channel, account, recipient, message_id). A channel twin writes its
rows in the same transaction that accepts a send (set-based: ``INSERT … SELECT`` or
``executemany``), so the ledger and the platform's job records can never disagree, whatever
crashes. Filtered or refused recipients are never written. ``GET /_sandbox/ledger`` reads
:func:`summary`; crash tests compare it across restarts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    channel    TEXT NOT NULL,
    account    TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    ts         REAL NOT NULL,
    PRIMARY KEY (channel, account, recipient, message_id)
) WITHOUT ROWID;
"""


def record(
    db: sqlite3.Connection,
    channel: str,
    account: str,
    message_id: str,
    recipients: Iterable[str],
    ts: float,
) -> int:
    """Write one delivery row per recipient (duplicates ignored); returns rows written."""
    before = db.total_changes
    db.executemany(
        "INSERT OR IGNORE INTO ledger(channel, account, recipient, message_id, ts) "
        "VALUES (?, ?, ?, ?, ?)",
        ((channel, account, r, message_id, ts) for r in recipients),
    )
    return db.total_changes - before


def remove(db: sqlite3.Connection, channel: str, account: str, recipient: str, mid: str) -> None:
    """Take back one delivery (the platform reported it as not delivered after all)."""
    db.execute(
        "DELETE FROM ledger WHERE channel = ? AND account = ? AND recipient = ? AND message_id = ?",
        (channel, account, recipient, mid),
    )


def summary(db: sqlite3.Connection, channel: str, account: str | None = None) -> dict[str, Any]:
    """``messages`` = deliveries (ledger rows), ``message_ids`` = distinct platform messages,
    ``recipients`` = distinct (account, recipient), ``max_per_recipient`` = most deliveries any
    one recipient got."""
    where = "channel = ?" + (" AND account = ?" if account is not None else "")
    params: tuple[str, ...] = (channel,) if account is None else (channel, account)
    # Grouping follows the primary key order, so this is one ordered scan of the channel's rows.
    row = db.execute(
        "SELECT count(*), coalesce(sum(n), 0), coalesce(max(n), 0) FROM ("
        f"  SELECT count(*) AS n FROM ledger WHERE {where} GROUP BY account, recipient)",
        params,
    ).fetchone()
    ids = db.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT account, message_id FROM ledger WHERE {where})",
        params,
    ).fetchone()
    out: dict[str, Any] = {
        "channel": channel,
        "messages": row[1],
        "recipients": row[0],
        "max_per_recipient": row[2],
        "message_ids": ids[0],
    }
    if account is not None:
        out["account"] = account
    return out
