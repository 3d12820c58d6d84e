"""Named SQL for behaviour facts: the per-person facts upsert, RFM quintiles, the layers.

Every statement is set-based and runs on SQLite (≥3.35: window functions, UPDATE … FROM,
upsert with a WHERE) and PostgreSQL. Definitions are those of ``domain/behaviour.py``; the
windows arrive as bound parameters (``:since_7d = now - 7 days`` …) so the SQL has no clock.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from qunfa.domain.behaviour import PURCHASE, rfm_case_sql

# The facts of each person in {scope}, computed from *all* their events and upserted. One
# GROUP BY over ix_person_events_contact_at; the device is the latest event naming one (a
# correlated LIMIT 1 on the same index). ``DO UPDATE … WHERE`` writes only rows whose facts
# really changed, so ``rowcount`` is the number of people whose facts changed (new or updated)
# and untouched rows keep their ``updated_at``. {ne} is the dialect's null-safe "differs".
_FACTS_UPSERT = f"""
INSERT INTO contact_facts (contact_id, last_interaction_at, interactions_7d, spend_3m, orders_3m,
                           last_purchase_at, device, converted, updated_at)
SELECT e.contact_id,
       max(e.at),
       sum(CASE WHEN e.at >= :since_7d THEN 1 ELSE 0 END),
       coalesce(sum(CASE WHEN e.kind = '{PURCHASE}' AND e.at >= :since_3m THEN e.amount END), 0),
       sum(CASE WHEN e.kind = '{PURCHASE}' AND e.at >= :since_3m THEN 1 ELSE 0 END),
       max(CASE WHEN e.kind = '{PURCHASE}' THEN e.at END),
       (SELECT d.device FROM person_events d
        WHERE d.contact_id = e.contact_id AND d.device IS NOT NULL
        ORDER BY d.at DESC, d.id DESC LIMIT 1),
       max(CASE WHEN e.kind = '{PURCHASE}' THEN 1 ELSE 0 END) = 1,
       :now
FROM person_events e
WHERE {{scope}}
GROUP BY e.contact_id
ON CONFLICT (contact_id) DO UPDATE SET
    last_interaction_at = excluded.last_interaction_at,
    interactions_7d = excluded.interactions_7d,
    spend_3m = excluded.spend_3m,
    orders_3m = excluded.orders_3m,
    last_purchase_at = excluded.last_purchase_at,
    device = excluded.device,
    converted = excluded.converted,
    updated_at = excluded.updated_at
WHERE contact_facts.last_interaction_at {{ne}} excluded.last_interaction_at
   OR contact_facts.interactions_7d {{ne}} excluded.interactions_7d
   OR contact_facts.spend_3m {{ne}} excluded.spend_3m
   OR contact_facts.orders_3m {{ne}} excluded.orders_3m
   OR contact_facts.last_purchase_at {{ne}} excluded.last_purchase_at
   OR contact_facts.device {{ne}} excluded.device
   OR contact_facts.converted {{ne}} excluded.converted
"""

# The people whose facts may differ from the last refresh's (see docs/behaviour.md):
#   1. events stored since the last refresh (id above the watermark; PRIMARY KEY range),
#   2. events received shortly before it (received_at overlap: a PostgreSQL transaction that
#      took a lower id may commit after a higher one was seen; ix_person_events_received),
#   3. events that left the 7-day window since then: at ∈ [last - 7d, now - 7d),
#   4. purchases that left the 3-month window: at ∈ [last - 90d, now - 90d) (ix_person_events_at).
# Nothing else changes with time alone: max(at), the device and "converted" do not.
_CHANGED_PEOPLE = f"""
    SELECT contact_id FROM person_events WHERE id > :after_id
    UNION SELECT contact_id FROM person_events WHERE received_at >= :received_since
    UNION SELECT contact_id FROM person_events WHERE at >= :out7_from AND at < :out7_to
    UNION SELECT contact_id FROM person_events
          WHERE kind = '{PURCHASE}' AND at >= :out3_from AND at < :out3_to
"""
# The scope is materialised once per refresh into the temporary table ``facts_scope``, so the
# facts upsert and the RFM statements around it see the *same* people: on PostgreSQL each
# statement of a READ COMMITTED transaction sees a new snapshot, and an event committed between
# two of them would otherwise enter one statement's scope and not the other's.
_SCOPE = "SELECT contact_id FROM facts_scope"
_SCOPE_CHANGED = f"e.contact_id IN ({_SCOPE})"


def facts_scope_ddl(dialect: str) -> TextClause:
    """facts_scope: the people one refresh recomputes (a per-connection temporary table)."""
    if dialect == "postgresql":
        return text(
            "CREATE TEMPORARY TABLE IF NOT EXISTS facts_scope (contact_id bigint PRIMARY KEY) "
            "ON COMMIT DELETE ROWS"
        )
    return text("CREATE TEMPORARY TABLE IF NOT EXISTS facts_scope (contact_id INTEGER PRIMARY KEY)")


FACTS_SCOPE_CLEAR = text("DELETE FROM facts_scope")
FACTS_SCOPE_FILL = text(f"INSERT INTO facts_scope (contact_id) {_CHANGED_PEOPLE}")

# Whether any purchase fact (spend_3m, orders_3m, last_purchase_at) may have changed: the
# same scope restricted to purchases. RFM is recomputed only then.
PURCHASES_CHANGED = text(
    f"""
SELECT 1 FROM person_events
WHERE kind = '{PURCHASE}'
  AND (id > :after_id OR received_at >= :received_since
       OR (at >= :out3_from AND at < :out3_to))
LIMIT 1
"""
)


def facts_upsert(dialect: str, full: bool) -> TextClause:
    """The facts upsert for the changed scope, or for everyone (``full``: rebuild)."""
    ne = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    scope = "true" if full else _SCOPE_CHANGED
    return text(_FACTS_UPSERT.format(scope=scope, ne=ne))


# rfm_scores: quintiles over everyone who ever purchased, in one statement. NTILE(5) with the
# contact id as tie-breaker (deterministic: equal values may straddle a boundary, and the top
# quintile is exactly a fifth). R orders by last purchase (most recent = 5), F by orders_3m,
# M by spend_3m. The segment name is domain.behaviour.RFM_RULES as a CASE. Only rows whose
# scores or name changed are written. A global ranking by nature: run only when purchase
# facts changed.
RFM_SCORES = text(
    f"""
UPDATE contact_facts
SET rfm_r = s.r, rfm_f = s.f, rfm_m = s.m, rfm_segment = s.segment
FROM (
    SELECT contact_id, r, f, m, {rfm_case_sql("r", "f", "m")} AS segment
    FROM (
        SELECT contact_id,
               NTILE(5) OVER (ORDER BY last_purchase_at, contact_id) AS r,
               NTILE(5) OVER (ORDER BY orders_3m, contact_id) AS f,
               NTILE(5) OVER (ORDER BY spend_3m, contact_id) AS m
        FROM contact_facts
        WHERE last_purchase_at IS NOT NULL
    ) ranked
) s
WHERE contact_facts.contact_id = s.contact_id
  AND (coalesce(contact_facts.rfm_r, 0) <> s.r OR coalesce(contact_facts.rfm_f, 0) <> s.f
       OR coalesce(contact_facts.rfm_m, 0) <> s.m
       OR coalesce(contact_facts.rfm_segment, '') <> s.segment)
"""
)

# -- incremental RFM -------------------------------------------------------------------------------
# The quintile of a buyer is defined by value with the contact id as tie-breaker, exactly as
# NTILE(5) OVER (ORDER BY value, contact_id) above: with n buyers in that order, quintile k
# ends at rank e_k = k·⌊n/5⌋ + min(k, n mod 5) (the first n mod 5 quintiles hold one more), so
# the 4 rows at ranks e_1..e_4 are the *cut points* and a buyer's score is 1 + the number of
# cut points its (value, contact_id) exceeds. A refresh keeps the 12 cut points (3 dimensions)
# and the number of buyers in its state, moves each cut point by the few ranks the changed
# people shifted it, and rewrites only the changed people plus the rows lying between an old
# and a new cut point: no other row's count of exceeded cut points can have moved.
#
# Indexes that make every lookup below a short index walk (proposed; bench/facts.py creates
# them): (last_purchase_at, contact_id), (orders_3m, contact_id) and (spend_3m, contact_id),
# each WHERE last_purchase_at IS NOT NULL. Without them the statements are the same and exact,
# just slower (a scan with a top-N sort per cut point).
RFM_COLUMNS: dict[str, str] = {"r": "last_purchase_at", "f": "orders_3m", "m": "spend_3m"}
RFM_CUTS = 4  # quintiles: 4 cut points per dimension

# rfm_buyers: how many people ever purchased (the n of the quintiles); only after a rebuild.
RFM_BUYERS = text("SELECT count(*) FROM contact_facts WHERE last_purchase_at IS NOT NULL")


def _cut_names(dim: str, k: int, tag: str = "") -> tuple[str, str]:
    return f"{dim}{k}{tag}v", f"{dim}{k}{tag}i"


def rfm_nth(dim: str, descending: bool) -> TextClause:
    """rfm_nth: the buyer at 0-based position :skip in (value, contact_id) order, or from the
    top when ``descending`` (the caller walks from the nearer end: at most 3/5 of the index)."""
    col = RFM_COLUMNS[dim]
    way = "DESC" if descending else "ASC"
    return text(
        f"SELECT {col}, contact_id FROM contact_facts WHERE last_purchase_at IS NOT NULL "
        f"ORDER BY {col} {way}, contact_id {way} LIMIT 1 OFFSET :skip"
    )


def rfm_step(dim: str, forward: bool) -> TextClause:
    """rfm_step: the buyer :skip positions after (value, id) = (:v, :i), forward; or the
    (:skip+1)-th at or before it, backward. Moves a cut point by the few ranks it shifted.

    Written as two index ranges — the rest of the value's run of ties, then the values beyond
    — each cut to :take = :skip + 1 rows, rather than ``(value, id) > (:v, :i)``: SQLite turns
    a row-value comparison into a range on the value alone and would walk every tie first
    (orders_3m has runs of 100,000s of equal values). PostgreSQL plans both forms alike.
    """
    col = RFM_COLUMNS[dim]
    way, same, beyond = (
        ("ASC", "contact_id > :i", f"{col} > :v")
        if forward
        else ("DESC", "contact_id <= :i", f"{col} < :v")
    )
    buyers = "FROM contact_facts WHERE last_purchase_at IS NOT NULL"
    return text(
        f"""
SELECT v, i FROM (
    SELECT * FROM (SELECT {col} AS v, contact_id AS i {buyers} AND {col} = :v AND {same}
                   ORDER BY contact_id {way} LIMIT :take) run
    UNION ALL
    SELECT * FROM (SELECT {col} AS v, contact_id AS i {buyers} AND {beyond}
                   ORDER BY {col} {way}, contact_id {way} LIMIT :take) rest
) near
ORDER BY v {way}, i {way} LIMIT 1 OFFSET :skip
"""
    )


# rfm_scope_counts: among the people a refresh recomputes (the changed scope), how many are
# buyers and how many lie at or below each stored cut point. Run before and after the facts
# upsert: the differences say how far each cut point's rank moved, so the new cut points are
# found by a walk of that many rows instead of re-ranking everyone. Binds r1v, r1i … m4v, m4i.
RFM_SCOPE_COUNTS = text(
    "SELECT count(*)"
    + "".join(
        f", coalesce(sum(CASE WHEN ({col}, contact_id) <= (:{v}, :{i}) THEN 1 ELSE 0 END), 0)"
        for dim, col in RFM_COLUMNS.items()
        for k in range(1, RFM_CUTS + 1)
        for v, i in [_cut_names(dim, k)]
    )
    + "\nFROM contact_facts WHERE last_purchase_at IS NOT NULL"
    + f" AND contact_id IN ({_SCOPE})"
)


def _score_sql(dim: str) -> str:
    """1 + the number of (new) cut points the row's (value, contact_id) exceeds."""
    col = RFM_COLUMNS[dim]
    terms = [
        f"CASE WHEN ({col}, contact_id) > (:{v}, :{i}) THEN 1 ELSE 0 END"
        for k in range(1, RFM_CUTS + 1)
        for v, i in [_cut_names(dim, k)]
    ]
    return "1 + " + " + ".join(terms)


def _between_cuts(dim: str, k: int) -> str:
    """The buyers whose (value, id) lies in (lo, hi] of one cut point's old and new position.

    Three index ranges, for the reason given at :func:`rfm_step`: the low value's run after
    lo's id, the values strictly between, the high value's run up to hi's id. The bounds come
    from :func:`between_params`, which makes the arms that do not apply empty.
    """
    col = RFM_COLUMNS[dim]
    n = f"{dim}{k}"
    buyers = "SELECT contact_id FROM contact_facts WHERE last_purchase_at IS NOT NULL"
    return (
        f"{buyers} AND {col} = :{n}av AND contact_id > :{n}alo AND contact_id <= :{n}ahi"
        f"\n            UNION {buyers} AND {col} > :{n}blo AND {col} < :{n}bhi"
        f"\n            UNION {buyers} AND {col} = :{n}cv AND contact_id > :{n}clo"
        f" AND contact_id <= :{n}chi"
    )


_NO_ID = 2**62  # above every contact id: an empty (lo, hi] id range


def between_params(
    dim: str, k: int, lo: tuple[object, int], hi: tuple[object, int]
) -> dict[str, object]:
    """The binds of :func:`_between_cuts` for (lo, hi] (lo ≤ hi; lo = hi: nothing)."""
    n = f"{dim}{k}"
    (lo_v, lo_i), (hi_v, hi_i) = lo, hi
    one_value = lo_v == hi_v
    return {
        f"{n}av": lo_v, f"{n}alo": lo_i, f"{n}ahi": hi_i if one_value else _NO_ID,
        f"{n}blo": lo_v, f"{n}bhi": hi_v,
        f"{n}cv": hi_v, f"{n}clo": _NO_ID if one_value else -1, f"{n}chi": hi_i,
    }  # fmt: skip


_BETWEEN_ALL = "\n            UNION ".join(
    _between_cuts(dim, k) for dim in RFM_COLUMNS for k in range(1, RFM_CUTS + 1)
)

# rfm_rewrite: the scores (and segment name) of the changed people and of the rows between
# each cut point's old and new position, from the new cut points; only differing rows are
# written. Each UNION arm is a range on one index, so the statement reads O(changes) rows.
# Binds the new cut points (r1v, r1i …) and the ranges (between_params for each cut point; a
# cut point that did not move gives empty ranges).
RFM_REWRITE = text(
    f"""
UPDATE contact_facts
SET rfm_r = s.r, rfm_f = s.f, rfm_m = s.m, rfm_segment = s.segment
FROM (
    SELECT contact_id, r, f, m, {rfm_case_sql("r", "f", "m")} AS segment
    FROM (
        SELECT contact_id, {_score_sql("r")} AS r, {_score_sql("f")} AS f,
               {_score_sql("m")} AS m
        FROM contact_facts
        WHERE last_purchase_at IS NOT NULL AND contact_id IN (
            {_SCOPE}
            UNION {_BETWEEN_ALL}
        )
    ) scored
) s
WHERE contact_facts.contact_id = s.contact_id
  AND (coalesce(contact_facts.rfm_r, 0) <> s.r OR coalesce(contact_facts.rfm_f, 0) <> s.f
       OR coalesce(contact_facts.rfm_m, 0) <> s.m
       OR coalesce(contact_facts.rfm_segment, '') <> s.segment)
"""
)

# The indexes of the cut-point walks (see above). last_purchase_at is carried in the F and M
# indexes so SQLite can answer from the index alone (it does not infer that the partial
# index's condition holds for a row read through it).
# They are in the schema (models.ContactFacts, migration 0005); the DDL stays for the bench,
# which measures the refresh without and with them.
RFM_INDEXES: tuple[str, ...] = tuple(
    f"CREATE INDEX IF NOT EXISTS ix_contact_facts_rfm_{dim} ON contact_facts "
    f"({col}, contact_id{'' if dim == 'r' else ', last_purchase_at'}) "
    "WHERE last_purchase_at IS NOT NULL"
    for dim, col in RFM_COLUMNS.items()
)


# The built-in layers as conditions over ``contacts c LEFT JOIN contact_facts f`` at :now
# (domain.behaviour.layers_of; the segment language's layer() compiles the same). Evaluated
# when a segment is resolved, so "silent" and "new", which change with time alone, need no
# refresh at all. :no is the boolean false.
LAYER_CONDITIONS: dict[str, str] = {
    "new": "coalesce(c.registered_at, c.created_at) >= :now - :new_for"
    " AND coalesce(f.converted, :no) = :no",
    # contacts.active_at (migration 0006) is max(last interaction, registered else created):
    # the same column and index the segment language's last_active_within() reads.
    "silent": "c.active_at < :now - :silent_after",
    "high_value": "f.rfm_m = 5",
    "ios": "f.device = 'ios'",
    "android": "f.device = 'android'",
}

# layer_members: the contacts in one layer (tests, `qunfa facts layer`); merged contacts excluded.
_LAYER_MEMBERS = """
SELECT c.id FROM contacts c LEFT JOIN contact_facts f ON f.contact_id = c.id
WHERE c.merged_into IS NULL AND ({condition})
ORDER BY c.id
"""


def layer_members(layer: str) -> TextClause:
    return text(_LAYER_MEMBERS.format(condition=LAYER_CONDITIONS[layer]))


# facts_state_lock: serialise refreshes. The upsert takes PostgreSQL's row lock on the meta row
# (a second refresher waits for the first to commit, then reads its watermark) and SQLite's
# write lock; it is the first statement of the refresh transaction for that reason.
FACTS_LOCK = text(
    """
INSERT INTO meta (key, value) VALUES (:key, '') ON CONFLICT (key) DO UPDATE SET value = ''
"""
)
