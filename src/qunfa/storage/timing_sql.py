"""Named SQL for time in planning (due times, zone staggering, send-time optimisation).

Everything here is set-based and portable between SQLite (≥3.35) and PostgreSQL. The few
per-zone facts computed in Python (a zone's due instant, its 24 hourly STO slots) are loaded into
two temporary tables with ``executemany`` (rows = distinct zone inputs × 24 at most); every
recipient-scale step is one statement joining them. Times are UTC epoch seconds.

NULL-safe joins on the contact's ``(timezone, province, city)`` are written out with ``OR … IS
NULL`` because SQLite's ``IS`` and PostgreSQL's ``IS NOT DISTINCT FROM`` differ.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

# --- temporary tables ----------------------------------------------------------------------------

# plan_zone: one row per distinct contact (timezone, province, city) of the audience with the
# resolved zone's index and its fixed due time (the campaign's send moment in that zone).
# plan_slot: per zone index and local hour 0..23, the STO due time of that hour.
# TEMP tables live on the connection; each use starts with a DELETE of the campaign's rows.
CREATE_PLAN_ZONE = text(
    "CREATE TEMP TABLE IF NOT EXISTS plan_zone (campaign_id INTEGER NOT NULL,"
    " timezone VARCHAR(64), province VARCHAR(64), city VARCHAR(64),"
    " zone_ix INTEGER NOT NULL, offset_s INTEGER NOT NULL, due DOUBLE PRECISION NOT NULL)"
)
CREATE_PLAN_SLOT = text(
    "CREATE TEMP TABLE IF NOT EXISTS plan_slot (campaign_id INTEGER NOT NULL,"
    " zone_ix INTEGER NOT NULL, hour INTEGER NOT NULL, due DOUBLE PRECISION NOT NULL)"
)
CLEAR_PLAN_ZONE = text("DELETE FROM plan_zone WHERE campaign_id = :campaign_id")
CLEAR_PLAN_SLOT = text("DELETE FROM plan_slot WHERE campaign_id = :campaign_id")
INSERT_PLAN_ZONE = text(
    "INSERT INTO plan_zone (campaign_id, timezone, province, city, zone_ix, offset_s, due)"
    " VALUES (:campaign_id, :timezone, :province, :city, :zone_ix, :offset_s, :due)"
)
INSERT_PLAN_SLOT = text(
    "INSERT INTO plan_slot (campaign_id, zone_ix, hour, due)"
    " VALUES (:campaign_id, :zone_ix, :hour, :due)"
)

_ZONE_JOIN = """
JOIN plan_zone pz ON pz.campaign_id = :campaign_id
 AND (pz.timezone = c.timezone OR (pz.timezone IS NULL AND c.timezone IS NULL))
 AND (pz.province = c.province OR (pz.province IS NULL AND c.province IS NULL))
 AND (pz.city = c.city OR (pz.city IS NULL AND c.city IS NULL))"""

# audience_zone_inputs: the distinct zone inputs of a campaign's planned recipients (a handful of
# rows, however large the audience): the only thing zone resolution needs from the database.
AUDIENCE_ZONE_INPUTS = text(
    """
SELECT DISTINCT c.timezone, c.province, c.city
FROM deliveries d JOIN contacts c ON c.id = d.contact_id
WHERE d.campaign_id = :campaign_id AND d.status = 'planned'
"""
)

# set_due_all: one due time for every planned row (campaign-wide timing). A row already due later
# (deferred past a cap by an earlier step) keeps its later time.
SET_DUE_ALL = text(
    """
UPDATE deliveries
SET due_at = CASE WHEN due_at IS NOT NULL AND due_at > :due THEN due_at ELSE :due END
WHERE campaign_id = :campaign_id AND status = 'planned'
"""
)

# set_due_by_zone: each planned row gets its zone's due time (per-recipient local time): the
# contact's zone inputs are matched to plan_zone NULL-safely; later existing dues are kept.
SET_DUE_BY_ZONE = text(
    f"""
UPDATE deliveries
SET due_at = CASE WHEN deliveries.due_at IS NOT NULL AND deliveries.due_at > z.due
                  THEN deliveries.due_at ELSE z.due END
FROM (
    SELECT d.id, pz.due
    FROM deliveries d JOIN contacts c ON c.id = d.contact_id
    {_ZONE_JOIN}
    WHERE d.campaign_id = :campaign_id AND d.status = 'planned'
) z
WHERE deliveries.id = z.id
"""
)

# segment_modal_hour: the most common learned best hour among the campaign's planned
# recipients (ties → the earlier hour); the STO fallback for people with no history.
SEGMENT_MODAL_HOUR = text(
    """
SELECT f.best_hour
FROM deliveries d JOIN contact_facts f ON f.contact_id = d.contact_id
WHERE d.campaign_id = :campaign_id AND d.status = 'planned' AND f.best_hour IS NOT NULL
GROUP BY f.best_hour
ORDER BY count(*) DESC, f.best_hour
LIMIT 1
"""
)

# set_due_sto: send-time optimisation. The holdout (a deterministic share: a salted
# multiplicative hash of the contact id modulo a prime, compared with :holdout_per_10k) gets the
# campaign's fixed due of its zone and variant 'holdout'; everyone else gets the slot of their
# best hour (learned, else :fallback_hour) in their zone and variant 'sto'. Later existing dues
# are kept. contact_id * 2654435761 stays below 2^63 for any 32-bit id.
SET_DUE_STO = text(
    f"""
UPDATE deliveries
SET due_at = CASE WHEN deliveries.due_at IS NOT NULL AND deliveries.due_at > z.due
                  THEN deliveries.due_at ELSE z.due END,
    variant = z.variant
FROM (
    SELECT d.id,
           CASE WHEN h.bucket < :holdout_per_10k THEN pz.due ELSE s.due END AS due,
           CASE WHEN h.bucket < :holdout_per_10k THEN 'holdout' ELSE 'sto' END AS variant
    FROM deliveries d
    JOIN contacts c ON c.id = d.contact_id
    {_ZONE_JOIN}
    JOIN (
        SELECT id, ((contact_id * 2654435761 + :salt) % 4294967291) % 10000 AS bucket
        FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
    ) h ON h.id = d.id
    LEFT JOIN contact_facts f ON f.contact_id = d.contact_id
    JOIN plan_slot s ON s.campaign_id = :campaign_id AND s.zone_ix = pz.zone_ix
     AND s.hour = COALESCE(f.best_hour, :fallback_hour)
    WHERE d.campaign_id = :campaign_id AND d.status = 'planned'
) z
WHERE deliveries.id = z.id
"""
)

# renumber_by_due: batches never mix due times. Each due group's rows are numbered on their own
# (ROW_NUMBER partitioned by due) and the groups laid end to end in due order: a group's first
# batch number is the running total of the earlier groups' batch counts. Skipped rows keep
# their number; only planned rows are sent (BATCH_RECIPIENTS filters on status).
RENUMBER_BY_DUE = text(
    """
UPDATE deliveries SET batch_no = n.bn
FROM (
    SELECT d.id,
           o.base + (ROW_NUMBER() OVER (PARTITION BY COALESCE(d.due_at, 0) ORDER BY d.id) - 1)
               / :size AS bn
    FROM deliveries d
    JOIN (
        SELECT due, SUM(nb) OVER (ORDER BY due ROWS UNBOUNDED PRECEDING) - nb AS base
        FROM (
            SELECT COALESCE(due_at, 0) AS due, (count(*) + :size - 1) / :size AS nb
            FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
            GROUP BY COALESCE(due_at, 0)
        ) g
    ) o ON o.due = COALESCE(d.due_at, 0)
    WHERE d.campaign_id = :campaign_id AND d.status = 'planned'
) n
WHERE deliveries.id = n.id
"""
)

# batch_dues: per batch, its size and due time (every row of a batch shares it after the
# renumbering); a handful of rows turned into batch rows in Python.
BATCH_DUES = text(
    """
SELECT batch_no, count(*), max(COALESCE(due_at, 0))
FROM deliveries WHERE campaign_id = :campaign_id AND status = 'planned'
GROUP BY batch_no ORDER BY batch_no
"""
)

# --- send-time optimisation: learning ------------------------------------------------------------

# sto_zone_inputs: distinct zone inputs of people with engagement events in the window.
STO_ZONE_INPUTS = text(
    """
SELECT DISTINCT c.timezone, c.province, c.city
FROM contacts c
WHERE EXISTS (SELECT 1 FROM person_events e WHERE e.contact_id = c.id
              AND e.kind IN ('open', 'click', 'interaction') AND e.at >= :since)
"""
)

# learn_best_hours: per person, a histogram of local hours of their opens, clicks and
# interactions since :since (local hour = UTC hour shifted by the zone's current offset),
# each event weighted by kind (click 2, open and interaction 1) and recency (H / (H + age in
# days), H = :half_days: an event H days old counts half). The top hour (ties → earlier) and
# its share of the person's total weight are upserted into contact_facts.
LEARN_BEST_HOURS = text(
    f"""
INSERT INTO contact_facts (contact_id, best_hour, best_hour_weight, interactions_7d, spend_3m,
                           orders_3m, converted, updated_at)
SELECT contact_id, hr, score / tot, 0, 0, 0, :no, :now
FROM (
    SELECT contact_id, hr, score,
           ROW_NUMBER() OVER (PARTITION BY contact_id ORDER BY score DESC, hr) AS rn,
           SUM(score) OVER (PARTITION BY contact_id) AS tot
    FROM (
        SELECT e.contact_id,
               ((CAST(e.at AS BIGINT) + pz.offset_s) / 3600) % 24 AS hr,
               SUM((CASE WHEN e.kind = 'click' THEN 2.0 ELSE 1.0 END)
                   * :half_days / (:half_days + (:now - e.at) / 86400.0)) AS score
        FROM person_events e
        JOIN contacts c ON c.id = e.contact_id
        {_ZONE_JOIN}
        WHERE e.kind IN ('open', 'click', 'interaction') AND e.at >= :since AND e.at <= :now
        GROUP BY e.contact_id, ((CAST(e.at AS BIGINT) + pz.offset_s) / 3600) % 24
    ) h
) r
WHERE rn = 1
ON CONFLICT (contact_id) DO UPDATE
SET best_hour = excluded.best_hour, best_hour_weight = excluded.best_hour_weight,
    updated_at = excluded.updated_at
"""
)

# sto_report: per variant, recipients sent and how many of them opened / clicked within
# :window seconds after their send (sent_at, else the batch's acceptance, else the due time).
STO_REPORT = text(
    """
SELECT d.variant, count(*),
       SUM(CASE WHEN EXISTS (SELECT 1 FROM person_events e WHERE e.contact_id = d.contact_id
             AND e.kind = 'open' AND e.at >= t.sent AND e.at < t.sent + :window)
           THEN 1 ELSE 0 END),
       SUM(CASE WHEN EXISTS (SELECT 1 FROM person_events e WHERE e.contact_id = d.contact_id
             AND e.kind = 'click' AND e.at >= t.sent AND e.at < t.sent + :window)
           THEN 1 ELSE 0 END)
FROM deliveries d
JOIN (
    SELECT d2.id, COALESCE(d2.sent_at, b.accepted_at, d2.due_at, d2.updated_at) AS sent
    FROM deliveries d2
    LEFT JOIN batches b ON b.campaign_id = d2.campaign_id AND b.batch_no = d2.batch_no
    WHERE d2.campaign_id = :campaign_id
) t ON t.id = d.id
WHERE d.campaign_id = :campaign_id AND d.status = 'sent' AND d.variant IS NOT NULL
GROUP BY d.variant ORDER BY d.variant
"""
)


def named(name: str) -> TextClause:
    """A statement of this module by name (for benches and EXPLAIN)."""
    value = globals()[name.upper()]
    assert isinstance(value, TextClause)
    return value
