"""Named SQL for quotas and frequency caps on the recipient-scale paths (``docs/quotas.md``).

Every statement is one set-based UPDATE or SELECT over one campaign's delivery rows, portable
between SQLite (≥3.35: ``UPDATE … FROM``, window functions) and PostgreSQL. What counts as "a
message this person got" is a delivery row with ``sent_at`` (set when the dispatcher hands the
recipient to the platform) and a status that may have reached them (``sending``, ``sent``,
``unknown``). Which earlier campaigns count for a rule (same channel, not transactional, same
content …) is decided per campaign in Python and passed as ``:counted`` — a list of campaign
ids, never of recipients.
"""

from __future__ import annotations

import re
from functools import cache

from sqlalchemy import TextClause, bindparam, text

REACHED = "('sending', 'sent', 'unknown')"


# A row an account quota step skips or defers leaves its batch: batch_no b becomes -2 - b
# (≤ -2), so re-batching finds the moved rows by ix_deliveries_batch (one index range, not a
# scan of the campaign) and knows which batches lost how many rows (``MOVED_OUT``); -1 is
# "parked". (The caps step writes its rows straight to their final batch: ``APPLY_*``.)
_LEAVE = (
    "CASE WHEN deliveries.batch_no >= 0 THEN -2 - deliveries.batch_no ELSE deliveries.batch_no END"
)


# over_all: every cap and per-recipient rule in ONE statement (``QuotaService.apply_at_plan``).
# Per planned row: one LEFT JOIN of the person's counted deliveries since the widest window
# (ix_deliveries_contact_sent) and one aggregate per cap — c<i>, how many messages cap i counts,
# and m<i>, the latest of them — plus, per identity-keyed rule (platform rules, the WeCom
# interval), one backward index range of the identity's deliveries: n<i>, the (k+1)-th most
# recent since :since<i> or NULL (an identity's deliveries may be filed under an earlier contact
# id: a merge keeps past deliveries' contact id). HAVING keeps the rows over some rule; the
# result (a few rows) is MATERIALIZED so each rule's moment is computed once. Rule i's moment:
#   rolling (caps):      the (k+1)-th most recent counted message + :window<i> — m<i> when
#                        k = 0, else one backward index range, only for the rows over it;
#   calendar (platform): :until<i>, the next period boundary (China time).
# skip: the first rule over (in the order given) skips the row with its reason;
# defer: ``due_at`` = the latest moment of the rules over (ties → the earlier rule's reason), and
#        a row already due later keeps its due and reason.
# The statement writes no delivery: it fills the temp table ``quota_over`` (row id, its batch,
# reason, moment; a few rows), and ONE UPDATE applies it (``APPLY_SKIP`` / ``APPLY_DEFER``):
# the moved rows are written once, straight to their final batch — a row spread over the
# whole table costs a page write, so a second pass over them would cost nearly as much as
# renumbering the campaign.
#
# Planned, not yet sent (issue 6: two scheduled campaigns must not both count on the last slot):
# a rule with ``:pending<i>`` (other live campaigns' ids) also counts those campaigns' planned
# rows due inside its window [:since<i>, :upper<i>) — due at the latest of the row's due_at, its
# batch's next_attempt_at (schedule, pacing, deferral) and :now. Such a rule is always a probe
# (n<i>, the (k+1)-th most recent of sent ∪ planned), keyed by the identity or by the person;
# its moment is n<i> + :window<i> (rolling) or :until<i> (calendar), as above.
_EFF_RAW = (
    "CASE WHEN coalesce(p.due_at, 0) > b.next_attempt_at THEN p.due_at ELSE b.next_attempt_at END"
)
_EFF = f"CASE WHEN {_EFF_RAW} > :now THEN {_EFF_RAW} ELSE :now END"


def _nth_i(i: int, key: str, pending: bool = False) -> str:
    if not pending:
        return (
            f"(SELECT p.sent_at FROM deliveries p WHERE p.{key} = d.{key}"
            f" AND p.sent_at >= :since{i} AND p.status IN {REACHED} AND p.campaign_id IN"
            f" :counted{i} ORDER BY p.sent_at DESC LIMIT 1 OFFSET :k{i})"
        )
    return (
        f"(SELECT p.sent_at AS t FROM deliveries p WHERE p.{key} = d.{key}"
        f" AND p.sent_at >= :since{i} AND p.status IN {REACHED} AND p.campaign_id IN :counted{i}"
        f" UNION ALL SELECT {_EFF} AS t FROM deliveries p JOIN batches b"
        " ON b.campaign_id = p.campaign_id AND b.batch_no = p.batch_no"
        f" WHERE p.{key} = d.{key} AND p.sent_at IS NULL AND p.status = 'planned'"
        f" AND p.campaign_id IN :pending{i} AND {_EFF} >= :since{i} AND {_EFF} < :upper{i}"
        f" ORDER BY t DESC LIMIT 1 OFFSET :k{i})"
    )


@cache
def over_all(shape: tuple[tuple[bool, bool, bool, bool], ...], defer: bool) -> TextClause:
    """The merged cap/rule pass. ``shape``: per rule (keyed by identity, rolling window,
    k > 0, counts other campaigns' planned rows) — the parts of the SQL that change with the
    rules; the numbers are bind parameters (``since<i> k<i> counted<i> reason<i> window<i>
    until<i>``, with pending ``pending<i> upper<i>``, plus ``since_min``, ``counted_all`` and
    ``now``)."""
    n = len(shape)
    # Rules keyed by the person (caps): one LEFT JOIN of the person's counted deliveries since
    # the earliest window and one aggregate per rule (c<i> counted, m<i> the latest). Rules keyed
    # by the identity (platform rules, the WeCom interval): one backward index range of that
    # identity's deliveries (n<i>: the (k+1)-th most recent or NULL) — an identity's deliveries
    # may be filed under an earlier contact id (a merge keeps past deliveries' contact id).
    # Driving ``d`` by the unique (campaign_id, identity_id) index lets the GROUP BY stream;
    # HAVING keeps only the rows over some rule.
    cols_in, over = [], []
    for i, (per_identity, _rolling, _has_k, pending) in enumerate(shape):
        if per_identity or pending:  # a probe: n<i>
            nth = _nth_i(i, "identity_id" if per_identity else "contact_id", pending)
            cols_in.append(f"{nth} AS n{i}")
            over.append(f"{nth} IS NOT NULL")
        else:
            f = (
                f"CASE WHEN p.sent_at >= :since{i} AND p.campaign_id IN :counted{i}"
                " THEN 1 ELSE 0 END"
            )
            cols_in.append(f"SUM({f}) AS c{i}, MAX(CASE WHEN {f} = 1 THEN p.sent_at END) AS m{i}")
            over.append(f"SUM({f}) > :k{i}")
    person = (
        " LEFT JOIN deliveries p ON p.contact_id = d.contact_id"
        f" AND p.sent_at >= :since_min AND p.status IN {REACHED}"
        " AND p.campaign_id IN :counted_all"
        if not all(per_identity or pending for per_identity, _, _, pending in shape)
        else ""
    )
    grouped = (
        f"SELECT d.id AS did, d.contact_id, d.batch_no AS old_bn, d.due_at AS old_due,"
        f" {', '.join(cols_in)} FROM deliveries d{person}"
        " WHERE d.campaign_id = :campaign_id AND d.status = 'planned'"
        " GROUP BY d.identity_id, d.id, d.contact_id, d.batch_no, d.due_at HAVING "
        + " OR ".join(over)
    )

    def at(i: int, per_identity: bool, rolling: bool, has_k: bool, pending: bool) -> str:
        probe = per_identity or pending
        hit = f"g.n{i} IS NOT NULL" if probe else f"g.c{i} > :k{i}"
        if not defer:  # skipping only needs to know who is over
            return f"CASE WHEN {hit} THEN 1 END"
        if not rolling:
            return f"CASE WHEN {hit} THEN :until{i} END"
        if probe:
            return f"g.n{i} + :window{i}"
        nth = _nth_i(i, "contact_id").replace("d.contact_id", "g.contact_id")
        return f"CASE WHEN {hit} THEN {nth if has_k else f'g.m{i}'} + :window{i} END"

    cols = ", ".join(f"{at(i, *s)} AS a{i}" for i, s in enumerate(shape))
    moments = f"SELECT g.did, g.old_bn, g.old_due, {cols} FROM ({grouped}) g"
    if not defer:
        reason = " ".join(f"WHEN a{i} IS NOT NULL THEN :reason{i}" for i in range(n))
        return _expanding_all(
            f"""
WITH x AS MATERIALIZED ({moments})
INSERT INTO quota_over (campaign_id, did, old_bn, reason, at)
SELECT :campaign_id, did, old_bn, reason, NULL
FROM (SELECT did, old_bn, CASE {reason} END AS reason FROM x) n
WHERE n.reason IS NOT NULL
""",
            n,
        )

    def top(i: int) -> str:  # rule i's moment is the latest (the first such rule wins)
        rest = " AND ".join(f"(a{j} IS NULL OR a{i} >= a{j})" for j in range(n) if j != i)
        return f"a{i} IS NOT NULL" + (f" AND {rest}" if rest else "")

    due = " ".join(f"WHEN {top(i)} THEN a{i}" for i in range(n))
    why = " ".join(f"WHEN {top(i)} THEN :reason{i}" for i in range(n))
    return _expanding_all(
        f"""
WITH x AS MATERIALIZED ({moments})
INSERT INTO quota_over (campaign_id, did, old_bn, reason, at)
SELECT :campaign_id, did, old_bn, reason, at
FROM (SELECT did, old_bn, old_due, CASE {due} END AS at, CASE {why} END AS reason FROM x) n
WHERE n.at IS NOT NULL AND (n.old_due IS NULL OR n.old_due < n.at)
""",
        n,
    )


def _expanding_all(statement: str, n: int) -> TextClause:
    lists = ["counted_all"] + [f"{k}{i}" for i in range(n) for k in ("counted", "pending")]
    names = [k for k in lists if re.search(f":{k}\\b", statement)]
    return text(statement).bindparams(*(bindparam(k, expanding=True) for k in names))


CREATE_QUOTA_OVER = text(
    "CREATE TEMP TABLE IF NOT EXISTS quota_over (campaign_id INTEGER NOT NULL,"
    " did INTEGER NOT NULL, old_bn INTEGER NOT NULL, reason VARCHAR(200),"
    " at DOUBLE PRECISION)"
)
CLEAR_QUOTA_OVER = text("DELETE FROM quota_over WHERE campaign_id = :campaign_id")

# over_counts: after over_all, how many rows each reason holds back (a row over two rules
# counts once, under the reason it was given).
OVER_COUNTS = text(
    "SELECT reason, count(*) FROM quota_over WHERE campaign_id = :campaign_id GROUP BY reason"
)
# over_moved_out: per batch, how many of its rows over_all moved out (incremental re-batch).
OVER_MOVED_OUT = text(
    "SELECT old_bn, count(*) FROM quota_over WHERE campaign_id = :campaign_id AND old_bn >= 0"
    " GROUP BY old_bn"
)
# apply_skip: the skipped rows leave the numbering (batch -1).
APPLY_SKIP = text(
    """
UPDATE deliveries SET status = 'skipped', reason = o.reason, updated_at = :now, batch_no = -1
FROM quota_over o
WHERE o.campaign_id = :campaign_id AND deliveries.id = o.did
"""
)


# account_overflow_*: an account quota counted in recipients (template messages, Feishu, WeCom
# app person-times a day): rows due now beyond :remaining, in planning order, either skipped or
# deferred — row k past the quota goes to the start of day ⌊k / :limit⌋ after :next (China has
# no daylight saving: a day is 86,400 s).
_DUE_NOW = "(due_at IS NULL OR due_at <= :now)"
_OVERFLOW_ROWS = f"""
SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM deliveries
WHERE campaign_id = :campaign_id AND status = 'planned' AND {_DUE_NOW}
"""
ACCOUNT_OVERFLOW_SKIP = text(
    f"""
UPDATE deliveries SET status = 'skipped', reason = :reason, updated_at = :now,
    batch_no = {_LEAVE}
WHERE id IN (SELECT id FROM ({_OVERFLOW_ROWS}) n WHERE n.rn > :remaining)
"""
)
ACCOUNT_OVERFLOW_DEFER = text(
    f"""
UPDATE deliveries
SET due_at = :next + ((n.rn - :remaining - 1) / :limit) * 86400, reason = :reason,
    updated_at = :now, batch_no = {_LEAVE}
FROM ({_OVERFLOW_ROWS}) n
WHERE deliveries.id = n.id AND n.rn > :remaining
"""
)

# skip_batches: every planned row of some batches (a calls quota: the mass sends past it).
SKIP_BATCHES = text(
    """
UPDATE deliveries SET status = 'skipped', reason = :reason, updated_at = :now
WHERE campaign_id = :campaign_id AND status = 'planned' AND batch_no IN :nos
"""
).bindparams(bindparam("nos", expanding=True))

# defer_batch_rows: the rows of one deferred batch are due when it is.
DEFER_BATCH_ROWS = text(
    """
UPDATE deliveries SET due_at = :due, reason = :reason, updated_at = :now
WHERE campaign_id = :campaign_id AND status = 'planned' AND batch_no = :batch_no
"""
)


# renumber: the campaign's live rows into :size-recipient batches — rows due now first (day
# -1), then one run of batches per China day of ``due_at`` — so a batch never mixes rows due on
# different days. ``base`` is the number of batches of the earlier days (a running SUM over
# the per-day batch counts); skipped rows leave the numbering (batch -1). The day of an epoch
# is ⌊(t + 8 h) / 1 day⌋, written with CAST and a correction because PostgreSQL's CAST rounds
# where SQLite's truncates.
def _day(due: str) -> str:
    x = f"(({due} + 28800) / 86400)"
    return (
        f"CASE WHEN {due} IS NULL OR {due} <= :now THEN -1 "
        f"WHEN CAST({x} AS INTEGER) > {x} THEN CAST({x} AS INTEGER) - 1 "
        f"ELSE CAST({x} AS INTEGER) END"
    )


def _numbered(
    table: str, rows: str, base: str, due: str = "due_at", id_: str = "id", extra: str = ""
) -> str:
    """(id, due, ``extra``, bn, …): the rows of ``table`` matching ``rows`` numbered into
    :size-recipient batches, one run per China day of ``due``, the first numbered ``base``."""
    day = _day(due)
    return f"""
    SELECT r.*, CAST({base} + b.base + (r.rn - 1) / :size AS INTEGER) AS bn
    FROM (
        SELECT {id_} AS id, {due} AS due, {extra}{day} AS day,
               ROW_NUMBER() OVER (PARTITION BY {day} ORDER BY {id_}) AS rn
        FROM {table} WHERE {rows}
    ) r
    JOIN (
        SELECT day, SUM(nb) OVER (ORDER BY day) - nb AS base
        FROM (
            SELECT {day} AS day, (count(*) + :size - 1) / :size AS nb
            FROM {table} WHERE {rows}
            GROUP BY {day}
        ) per_day
    ) b ON b.day = r.day"""


def _renumber(rows: str, base: str) -> str:
    """UPDATE: ``rows`` of the campaign's deliveries renumbered (see ``_numbered``)."""
    return f"""
UPDATE deliveries SET batch_no = n.bn
FROM ({_numbered("deliveries", rows, base)}
) n
WHERE deliveries.id = n.id
"""


# apply_defer: the deferred rows of quota_over get their due time, reason and — written once —
# their final batch: batches of their own from :base (after the campaign's last), one run per
# China day of the due time. (A full re-batch later renumbers them with everything else.)
APPLY_DEFER = text(
    f"""
UPDATE deliveries SET due_at = n.due, reason = n.reason, updated_at = :now, batch_no = n.bn
FROM ({_numbered("quota_over", "campaign_id = :campaign_id", ":base", "at", "did", "reason, ")}
) n
WHERE deliveries.id = n.id
"""
)


# renumber (the full re-batch: a platform-wide send became openid lists, or a quota counted in
# calls wants full batches): every live row, due-now rows from batch 0.
RENUMBER = text(_renumber("campaign_id = :campaign_id AND status = 'planned'", "0"))

# The incremental re-batch (``QuotaService._rebatch``): rows due now keep their batch (a batch
# that lost rows is sent a little smaller than the platform maximum); only the moved rows are
# touched, found by the index range batch_no ≤ -2.
# moved_out: per batch a moved row came from (-2 - batch_no), how many rows left it.
MOVED_OUT = text(
    """
SELECT -2 - batch_no, count(*) FROM deliveries
WHERE campaign_id = :campaign_id AND batch_no <= -2
GROUP BY batch_no
"""
)
# park_moved: skipped rows among them leave the numbering (-1).
PARK_MOVED = text(
    "UPDATE deliveries SET batch_no = -1 WHERE campaign_id = :campaign_id AND batch_no <= -2 "
    "AND status = 'skipped'"
)
# move_deferred: rows an account quota deferred (still ``_LEAVE``-encoded) get batches of
# their own after the last one (:base), one run per China day of due_at.
MOVE_DEFERRED = text(
    _renumber("campaign_id = :campaign_id AND batch_no <= -2 AND status = 'planned'", ":base")
)
# max_batch_no: the campaign's highest batch number in use (index ix_deliveries_batch).
MAX_BATCH_NO = text(
    "SELECT coalesce(max(batch_no), -1) FROM deliveries WHERE campaign_id = :campaign_id"
)
# new_batches: the batches of deferred rows (index range batch_no ≥ :base).
NEW_BATCHES = text(
    """
SELECT batch_no, count(*), coalesce(max(due_at), 0) FROM deliveries
WHERE campaign_id = :campaign_id AND batch_no >= :base AND status = 'planned'
GROUP BY batch_no ORDER BY batch_no
"""
)

PARK_SKIPPED = text(
    "UPDATE deliveries SET batch_no = -1 WHERE campaign_id = :campaign_id AND status = 'skipped'"
)

# live_batches: after renumbering, one row per batch: its size and when it may go (the latest
# due_at among its rows; 0 = now). The contract with every later planning step: a batch's
# next_attempt_at is never earlier than the due_at of any of its rows.
LIVE_BATCHES = text(
    """
SELECT batch_no, count(*), coalesce(max(due_at), 0) FROM deliveries
WHERE campaign_id = :campaign_id AND status = 'planned'
GROUP BY batch_no ORDER BY batch_no
"""
)

# planned_due_now: rows the campaign still sends in the current period (account quotas).
PLANNED_DUE_NOW = text(
    f"SELECT count(*) FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned' "
    f"AND {_DUE_NOW}"
)

# rows_per_due: live rows by due time (NULL or past: due now), for the reservations per period.
ROWS_PER_DUE = text(
    """
SELECT CASE WHEN due_at IS NULL OR due_at <= :now THEN NULL ELSE due_at END, count(*)
FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
GROUP BY CASE WHEN due_at IS NULL OR due_at <= :now THEN NULL ELSE due_at END
"""
)

# -- the ledger ---------------------------------------------------------------------------------
# used_recipients: recipients handed to the platform by the account's campaigns on some
# channels within [start, end): what qunfa sent. Walks ix_deliveries_batch per campaign.
USED_RECIPIENTS = text(
    f"""
SELECT count(*) FROM deliveries d
WHERE d.campaign_id IN (
    SELECT id FROM campaigns WHERE account_id = :account_id AND channel IN :channels
) AND d.sent_at >= :start AND d.sent_at < :end AND d.status IN {REACHED}
"""
).bindparams(bindparam("channels", expanding=True))

# reported_recipients: what the platform said it sent (job-finish callbacks, polls).
REPORTED_RECIPIENTS = text(
    """
SELECT sum(b.sent_count), count(b.sent_count) FROM batches b
JOIN campaigns c ON c.id = b.campaign_id
WHERE c.account_id = :account_id AND c.channel IN :channels
  AND b.accepted_at >= :start AND b.accepted_at < :end
"""
).bindparams(bindparam("channels", expanding=True))

# used_calls / reported_calls: mass sends (batches) the platform accepted in the period, and
# how many of them it reported as having reached anyone.
USED_CALLS = text(
    """
SELECT count(*), sum(CASE WHEN b.sent_count > 0 THEN 1 ELSE 0 END),
       count(b.sent_count)
FROM batches b JOIN campaigns c ON c.id = b.campaign_id
WHERE c.account_id = :account_id AND c.channel IN :channels AND c.mode IN :modes
  AND b.accepted_at >= :start AND b.accepted_at < :end
"""
).bindparams(bindparam("channels", expanding=True), bindparam("modes", expanding=True))

# used_by_campaign: what one campaign already sent in a period (its reservation shrinks by it).
USED_BY_CAMPAIGN = text(
    f"""
SELECT count(*) FROM deliveries WHERE campaign_id = :campaign_id
  AND sent_at >= :start AND sent_at < :end AND status IN {REACHED}
"""
)
CALLS_BY_CAMPAIGN = text(
    "SELECT count(*) FROM batches WHERE campaign_id = :campaign_id "
    "AND accepted_at >= :start AND accepted_at < :end"
)

# -- dry run and eligibility --------------------------------------------------------------------
# outcome_counts: per status and reason, how many rows and (deferred rows) the due range.
OUTCOME_COUNTS = text(
    """
SELECT status, coalesce(reason, ''), count(*), min(due_at), max(due_at),
       sum(CASE WHEN due_at > :now THEN 1 ELSE 0 END)
FROM deliveries WHERE campaign_id = :campaign_id
GROUP BY status, coalesce(reason, '')
"""
)

# ineligible: per person, why and when they become eligible again (a page of them).
INELIGIBLE = text(
    """
SELECT contact_id, identity_id, status, reason, due_at FROM deliveries
WHERE campaign_id = :campaign_id
  AND (status = 'skipped' OR (status = 'planned' AND due_at > :now))
ORDER BY id LIMIT :limit
"""
)

# recent_complaints: people of the campaign who withdrew or unsubscribed in the last :days.
RECENT_COMPLAINTS = text(
    """
SELECT count(DISTINCT d.contact_id) FROM deliveries d
JOIN consents w ON w.contact_id = d.contact_id
WHERE d.campaign_id = :campaign_id AND w.status = 'withdrawn' AND w.at >= :since
"""
)

# batch_timeline: batches (and recipients) per hour of next_attempt_at.
BATCH_TIMELINE = text(
    """
SELECT CAST(next_attempt_at / 3600 AS INTEGER), count(*), sum(size)
FROM batches WHERE campaign_id = :campaign_id AND state = 'pending'
GROUP BY CAST(next_attempt_at / 3600 AS INTEGER) ORDER BY 1
"""
)
