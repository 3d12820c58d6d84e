"""Named SQL for the recipient-scale hot paths.

Each statement is set-based and portable between SQLite (≥3.35) and PostgreSQL: window
functions, ``ON CONFLICT DO NOTHING`` and integer division behave the same in both. Anything
that touches one row per recipient lives here, named and commented, so it can be read, tuned
and benchmarked in one place. Times are epoch seconds.
"""

from __future__ import annotations

from sqlalchemy import TextClause, bindparam, text


def _sql(statement: str) -> TextClause:
    return text(statement)


# --- planning -----------------------------------------------------------------------------------

# plan_page_*: materialise one keyset page of the audience as delivery rows, numbering batches
# in the same statement. ``:batch_base + (rn - 1) / :batch_size`` is integer division in both
# databases, so batch boundaries come out of SQL with no Python loop. The page size is a
# multiple of the batch size, so no batch straddles two pages. ON CONFLICT keeps re-planning
# after a crash idempotent: (campaign_id, identity_id) is unique, one row per person per campaign.
_PLAN_INSERT = """
INSERT INTO deliveries (campaign_id, batch_no, identity_id, contact_id, status, updated_at)
SELECT :campaign_id, :batch_base + (rn - 1) / :batch_size, id, contact_id, 'planned', :now
FROM (
    SELECT id, contact_id, ROW_NUMBER() OVER (ORDER BY id) AS rn
    FROM (
        SELECT i.id, i.contact_id
        FROM identities i
        {join}
        WHERE i.account_id = :account_id AND i.kind = :kind AND i.subscribed = :yes
          AND i.id > :after_id
        ORDER BY i.id
        LIMIT :page_size
    ) page
) numbered
WHERE true
ON CONFLICT (campaign_id, identity_id) DO NOTHING
"""
# (The row number is taken over the LIMITed page, not the whole remaining audience, so each
# page costs O(page), and ``WHERE true`` is SQLite's required disambiguation of INSERT … SELECT
# … ON CONFLICT.)
_TAG_JOIN = "JOIN identity_tags it ON it.identity_id = i.id AND it.tag_id = :tag_id"

PLAN_PAGE_ALL = _sql(_PLAN_INSERT.format(join=""))
PLAN_PAGE_TAG = _sql(_PLAN_INSERT.format(join=_TAG_JOIN))

# plan_page_end_*: the last identity id of the same page, the keyset cursor for the next one.
_PAGE_END = """
SELECT max(id) FROM (
    SELECT i.id FROM identities i
    {join}
    WHERE i.account_id = :account_id AND i.kind = :kind AND i.subscribed = :yes
      AND i.id > :after_id
    ORDER BY i.id
    LIMIT :page_size
) page
"""
PLAN_PAGE_END_ALL = _sql(_PAGE_END.format(join=""))
PLAN_PAGE_END_TAG = _sql(_PAGE_END.format(join=_TAG_JOIN))

# plan_chunk_*: the same rows for the account-wide and tag audiences, one batch per statement:
# the next :limit recipients after the keyset cursor, all with batch number :batch_no. No
# window function, so no sort: the rows come off ix_identities_account_kind in id order and
# go in as they come, and the statement's rowcount is the batch's size (no GROUP BY after).
# Batches come out exactly as the page form numbers them (the k-th run of :limit ids). Per
# million recipients this saved ~1.5 s of the page form's ~5 s (measured, docs/performance.md).
_PLAN_CHUNK = """
INSERT INTO deliveries (campaign_id, batch_no, identity_id, contact_id, status, updated_at)
SELECT :campaign_id, :batch_no, i.id, i.contact_id, 'planned', :now
FROM identities i
{join}
WHERE i.account_id = :account_id AND i.kind = :kind AND i.subscribed = :yes
  AND i.id > :after_id
ORDER BY i.id
LIMIT :limit
ON CONFLICT (campaign_id, identity_id) DO NOTHING
"""
PLAN_CHUNK_ALL = _sql(_PLAN_CHUNK.format(join=""))
PLAN_CHUNK_TAG = _sql(_PLAN_CHUNK.format(join=_TAG_JOIN))

# plan_cursor: the keyset cursor after a chunk, the campaign's highest identity id so far (the
# chunks go up in id order). One seek at the end of the unique (campaign_id, identity_id) index.
PLAN_CURSOR = _sql("SELECT max(identity_id) FROM deliveries WHERE campaign_id = :campaign_id")

# plan_batch_sizes: recipients per batch for the batches a page created; a handful of rows
# (one per platform call), turned into batch rows with their idempotency keys in Python.
PLAN_BATCH_SIZES = _sql(
    """
SELECT batch_no, count(*) FROM deliveries
WHERE campaign_id = :campaign_id AND batch_no >= :batch_base
GROUP BY batch_no ORDER BY batch_no
"""
)

# --- sending ------------------------------------------------------------------------------------

# lease_batch: take a batch for one attempt. A batch is takeable when it is due (pending, retry,
# deferred) or when its holder's lease expired — that holder may have died mid-call, so the
# batch becomes in doubt: the next attempt must be settled by the platform's dedupe or status
# API, never re-sent blind. One UPDATE decides the race between workers; rowcount 1 wins.
LEASE_BATCH = _sql(
    """
UPDATE batches
SET in_doubt = CASE WHEN state = 'sending' THEN :yes ELSE in_doubt END,
    state = 'sending',
    lease_owner = :owner,
    lease_expires_at = :now + :lease_seconds,
    attempts = attempts + 1,
    first_attempt_at = COALESCE(first_attempt_at, :now)
WHERE id = :batch_id
  AND ((state IN ('pending', 'retry', 'deferred') AND next_attempt_at <= :now)
       OR (state = 'sending' AND lease_expires_at < :now))
"""
)

# batch_recipients: the encrypted recipient ids of one batch, in planning order. Served by
# ix_deliveries_batch (campaign_id, batch_no) and the identities primary key.
BATCH_RECIPIENTS = _sql(
    """
SELECT d.id, i.value_enc
FROM deliveries d JOIN identities i ON i.id = d.identity_id
WHERE d.campaign_id = :campaign_id AND d.batch_no = :batch_no
  AND d.status IN ('planned', 'sending')
ORDER BY d.id
"""
)

# batch_deliveries: every ledger row of one batch with its recipient id (encrypted), to apply
# per-recipient results a platform reports after the fact (WeCom, DingTalk, Feishu).
BATCH_DELIVERIES = _sql(
    """
SELECT d.id, i.value_enc
FROM deliveries d JOIN identities i ON i.id = d.identity_id
WHERE d.campaign_id = :campaign_id AND d.batch_no = :batch_no
"""
)

# mark_batch_deliveries: move a whole batch's ledger rows from one status to another in one
# statement (planned → sending before the call, sending → sent after acceptance). ``sent_at``
# is when the recipients were handed to the platform (what caps and quotas count,
# docs/quotas.md): set when rows leave planned for the platform, cleared when a batch goes back
# to planned (nothing reached it), and left out of the SET list otherwise, because SQLite
# rewrites the two sent_at indexes for every row whose SET list names the column (that doubled
# the per-batch cost). Pick the statement with :func:`mark_batch_sql`.
_MARK_BATCH = """
UPDATE deliveries SET status = :to_status, reason = :reason, updated_at = :now{sent_at}
WHERE campaign_id = :campaign_id AND batch_no = :batch_no AND status IN :from_status
"""
MARK_BATCH_DELIVERIES = _sql(_MARK_BATCH.format(sent_at="")).bindparams(
    bindparam("from_status", expanding=True)
)
MARK_BATCH_HANDED_OVER = _sql(
    _MARK_BATCH.format(sent_at=", sent_at = COALESCE(sent_at, :now)")
).bindparams(bindparam("from_status", expanding=True))
MARK_BATCH_BACK_TO_PLANNED = _sql(_MARK_BATCH.format(sent_at=", sent_at = NULL")).bindparams(
    bindparam("from_status", expanding=True)
)


def mark_batch_sql(from_status: tuple[str, ...] | list[str], to_status: str) -> TextClause:
    """The ledger move for ``from_status`` → ``to_status``, touching ``sent_at`` only if needed."""
    if to_status == "planned":
        return MARK_BATCH_BACK_TO_PLANNED
    if to_status in ("sending", "sent", "unknown") and "planned" in from_status:
        return MARK_BATCH_HANDED_OVER
    return MARK_BATCH_DELIVERIES


# mark_delivery: one recipient's outcome (per-recipient APIs), used with executemany.
MARK_DELIVERY = _sql(
    """
UPDATE deliveries SET status = :status, reason = :reason, platform_msg_id = :msg_id,
       updated_at = :now
WHERE id = :delivery_id
"""
)

# mark_delivery_outcome: a result reported after the fact (keeps the message id we have).
MARK_DELIVERY_OUTCOME = _sql(
    """
UPDATE deliveries SET status = :status, reason = :reason,
       platform_msg_id = COALESCE(:msg_id, platform_msg_id), updated_at = :now
WHERE id = :delivery_id
"""
)

# --- sweeping -----------------------------------------------------------------------------------

# due_batches: batches that should be running but have no live task: due and never enqueued
# for this attempt, or leased by a worker whose lease expired (it crashed) and not enqueued
# since. Either way, an enqueue older than one lease period counts as lost (the worker that
# popped it died before taking the lease) and is redone. The queue only wakes workers; this
# query is the source of truth, and the lease makes a duplicate task harmless.
DUE_BATCHES = _sql(
    """
SELECT b.id FROM batches b JOIN campaigns c ON c.id = b.campaign_id
WHERE c.state = 'sending'
  AND ((b.state IN ('pending', 'retry', 'deferred') AND b.next_attempt_at <= :now
        AND (b.enqueued_at IS NULL OR b.enqueued_at < :requeue_before))
    OR (b.state = 'sending' AND b.lease_expires_at < :now
        AND (b.enqueued_at IS NULL OR b.enqueued_at < b.lease_expires_at
             OR b.enqueued_at < :requeue_before)))
ORDER BY b.id
LIMIT :limit
"""
)

# campaign_progress: per-state batch counts and per-status delivery counts of one campaign.
BATCH_STATE_COUNTS = _sql(
    "SELECT state, count(*), coalesce(sum(size), 0) FROM batches "
    "WHERE campaign_id = :campaign_id GROUP BY state"
)
DELIVERY_STATUS_COUNTS = _sql(
    "SELECT status, count(*) FROM deliveries WHERE campaign_id = :campaign_id GROUP BY status"
)
