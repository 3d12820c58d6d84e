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

from functools import cache

from sqlalchemy import TextClause, bindparam, text

REACHED = "('sending', 'sent', 'unknown')"


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
def _nth_i(i: int, key: str) -> str:
    return (
        f"(SELECT p.sent_at FROM deliveries p WHERE p.{key} = d.{key} AND p.sent_at >= :since{i}"
        f" AND p.status IN {REACHED} AND p.campaign_id IN :counted{i}"
        f" ORDER BY p.sent_at DESC LIMIT 1 OFFSET :k{i})"
    )


@cache
def over_all(shape: tuple[tuple[bool, bool, bool], ...], defer: bool) -> TextClause:
    """The merged cap/rule pass. ``shape``: per rule (keyed by identity, rolling window,
    k > 0) — the parts of the SQL that change with the rules; the numbers are bind parameters
    (``since<i> k<i> counted<i> reason<i> window<i> until<i>``, plus ``since_min`` and
    ``counted_all``)."""
    n = len(shape)
    # Rules keyed by the person (caps): one LEFT JOIN of the person's counted deliveries since
    # the earliest window and one aggregate per rule (c<i> counted, m<i> the latest). Rules keyed
    # by the identity (platform rules, the WeCom interval): one backward index range of that
    # identity's deliveries (n<i>: the (k+1)-th most recent or NULL) — an identity's deliveries
    # may be filed under an earlier contact id (a merge keeps past deliveries' contact id).
    # Driving ``d`` by the unique (campaign_id, identity_id) index lets the GROUP BY stream;
    # HAVING keeps only the rows over some rule.
    cols_in, over = [], []
    for i, (per_identity, _rolling, _has_k) in enumerate(shape):
        if per_identity:
            cols_in.append(f"{_nth_i(i, 'identity_id')} AS n{i}")
            over.append(f"{_nth_i(i, 'identity_id')} IS NOT NULL")
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
        if not all(per_identity for per_identity, _, _ in shape)
        else ""
    )
    grouped = (
        f"SELECT d.id AS did, d.contact_id, {', '.join(cols_in)} FROM deliveries d{person}"
        " WHERE d.campaign_id = :campaign_id AND d.status = 'planned'"
        " GROUP BY d.identity_id, d.id, d.contact_id HAVING " + " OR ".join(over)
    )

    def at(i: int, per_identity: bool, rolling: bool, has_k: bool) -> str:
        hit = f"g.n{i} IS NOT NULL" if per_identity else f"g.c{i} > :k{i}"
        if not defer:  # skipping only needs to know who is over
            return f"CASE WHEN {hit} THEN 1 END"
        if not rolling:
            return f"CASE WHEN {hit} THEN :until{i} END"
        if per_identity:
            return f"g.n{i} + :window{i}"
        nth = _nth_i(i, "contact_id").replace("d.contact_id", "g.contact_id")
        return f"CASE WHEN {hit} THEN {nth if has_k else f'g.m{i}'} + :window{i} END"

    cols = ", ".join(f"{at(i, *s)} AS a{i}" for i, s in enumerate(shape))
    moments = f"SELECT g.did, {cols} FROM ({grouped}) g"
    if not defer:
        reason = " ".join(f"WHEN a{i} IS NOT NULL THEN :reason{i}" for i in range(n))
        return _expanding_all(
            f"""
WITH x AS MATERIALIZED ({moments})
UPDATE deliveries SET status = 'skipped', reason = n.reason, updated_at = :now
FROM (SELECT did, CASE {reason} END AS reason FROM x) n
WHERE deliveries.id = n.did AND n.reason IS NOT NULL
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
UPDATE deliveries
SET reason = n.reason, due_at = n.at, updated_at = :now
FROM (SELECT did, CASE {due} END AS at, CASE {why} END AS reason FROM x) n
WHERE deliveries.id = n.did AND n.at IS NOT NULL
  AND (deliveries.due_at IS NULL OR deliveries.due_at < n.at)
""",
        n,
    )


def _expanding_all(statement: str, n: int) -> TextClause:
    names = [k for k in ["counted_all"] + [f"counted{i}" for i in range(n)] if f":{k}" in statement]
    return text(statement).bindparams(*(bindparam(k, expanding=True) for k in names))


# over_counts: after over_all, how many of the campaign's rows each of those reasons now holds
# back (skipped, or planned and due later; these reasons come from no other step).
OVER_COUNTS = text(
    """
SELECT reason, count(*) FROM deliveries
WHERE campaign_id = :campaign_id AND reason IN :reasons
GROUP BY reason
"""
).bindparams(bindparam("reasons", expanding=True))


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
UPDATE deliveries SET status = 'skipped', reason = :reason, updated_at = :now
WHERE id IN (SELECT id FROM ({_OVERFLOW_ROWS}) n WHERE n.rn > :remaining)
"""
)
ACCOUNT_OVERFLOW_DEFER = text(
    f"""
UPDATE deliveries
SET due_at = :next + ((n.rn - :remaining - 1) / :limit) * 86400, reason = :reason,
    updated_at = :now
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
_DAYX = "((due_at + 28800) / 86400)"
_DAY = (
    f"CASE WHEN due_at IS NULL OR due_at <= :now THEN -1 "
    f"WHEN CAST({_DAYX} AS INTEGER) > {_DAYX} THEN CAST({_DAYX} AS INTEGER) - 1 "
    f"ELSE CAST({_DAYX} AS INTEGER) END"
)
RENUMBER = text(
    f"""
UPDATE deliveries SET batch_no = n.bn
FROM (
    SELECT r.id, CAST(b.base + (r.rn - 1) / :size AS INTEGER) AS bn
    FROM (
        SELECT id, {_DAY} AS day,
               ROW_NUMBER() OVER (PARTITION BY {_DAY} ORDER BY id) AS rn
        FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
    ) r
    JOIN (
        SELECT day, SUM(nb) OVER (ORDER BY day) - nb AS base
        FROM (
            SELECT {_DAY} AS day, (count(*) + :size - 1) / :size AS nb
            FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
            GROUP BY {_DAY}
        ) per_day
    ) b ON b.day = r.day
) n
WHERE deliveries.id = n.id
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
