"""Named SQL for consent on the recipient-scale paths, and the ``opted_out`` segment builder.

Two rules decide that a person must not get a message on a scope (``docs/consent.md``):

1. **suppressed**: the recipient identity's ``(kind, value_bi)`` is on the suppression list for
   the scope or for ``*`` — keyed by the blind index, so it holds across re-imports and merges;
2. **opted out**: the person's latest ledger entry for the scope or ``*`` is a withdrawal — this
   also covers identities added after the withdrawal (a new phone number of the same person).

Both statements are set-based UPDATEs of one campaign's (or one batch's) ``planned`` delivery
rows, portable between SQLite and PostgreSQL; rows already ``sending`` may have reached the
platform and are never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, TextClause, and_, bindparam, literal, or_, select, text

from qunfa.domain.consent import ALL, ConsentError, scope_of
from qunfa.domain.segments import SegmentError
from qunfa.storage.models import Consent, Contact, Identity, Suppression

if TYPE_CHECKING:
    from qunfa.domain.segments import Arg
    from qunfa.storage.segment_sql import CompileContext

# The identity is suppressed on the scope or everywhere: identities primary key, then the unique
# (kind, value_bi, scope) index of suppressions — two index probes per delivery row.
_SUPPRESSED = """
EXISTS (
    SELECT 1 FROM identities i
    JOIN suppressions s ON s.kind = i.kind AND s.value_bi = i.value_bi
    WHERE i.id = deliveries.identity_id AND s.scope IN (:scope, '*')
)"""

# The person's latest entry for the scope or '*' is a withdrawal: a withdrawn row with no later
# row (by time, then id) of the same person and scopes. Served by ix_consents_contact_scope.
_WITHDRAWN = """
EXISTS (
    SELECT 1 FROM consents w
    WHERE w.contact_id = deliveries.contact_id AND w.scope IN (:scope, '*')
      AND w.status = 'withdrawn'
      AND NOT EXISTS (
          SELECT 1 FROM consents l
          WHERE l.contact_id = w.contact_id AND l.scope IN (:scope, '*')
            AND (l.at > w.at OR (l.at = w.at AND l.id > w.id))
      )
)"""

_SKIP = """
UPDATE deliveries SET status = 'skipped', reason = :reason, updated_at = :now
WHERE campaign_id = :campaign_id {batch} AND status = 'planned' AND {rule}
"""


def _skip(rule: str, batch: bool) -> TextClause:
    return text(_SKIP.format(batch="AND batch_no = :batch_no" if batch else "", rule=rule))


# skip_suppressed_*: planned rows of a campaign (or one batch, right before it is sent) whose
# identity is suppressed → skipped/suppressed; then whose person withdrew → skipped/opted_out.
# The campaign-wide form walks ix_deliveries_batch by its campaign_id prefix.
SKIP_SUPPRESSED_CAMPAIGN = _skip(_SUPPRESSED, batch=False)
SKIP_SUPPRESSED_BATCH = _skip(_SUPPRESSED, batch=True)
SKIP_OPTED_OUT_CAMPAIGN = _skip(_WITHDRAWN, batch=False)
SKIP_OPTED_OUT_BATCH = _skip(_WITHDRAWN, batch=True)

# batch_live_sizes: recipients still to send per batch after skipping (plan-time fix-up).
BATCH_LIVE_SIZES = text(
    """
UPDATE batches SET size = (
    SELECT count(*) FROM deliveries d
    WHERE d.campaign_id = batches.campaign_id AND d.batch_no = batches.batch_no
      AND d.status = 'planned'
)
WHERE campaign_id = :campaign_id
"""
)

# suppress_identities: put a person's identities of some kinds on the suppression list in one
# INSERT … SELECT; ON CONFLICT makes a repeated withdrawal (a platform retry) a no-op.
SUPPRESS_CONTACT = text(
    """
INSERT INTO suppressions (scope, kind, value_bi, contact_id, reason, source, created_at)
SELECT :scope, i.kind, i.value_bi, i.contact_id, :reason, :source, :now
FROM identities i
WHERE i.contact_id = :contact_id AND i.kind IN :kinds
ON CONFLICT (kind, value_bi, scope) DO NOTHING
"""
).bindparams(bindparam("kinds", expanding=True))

# suppress_value: one address or id (an import row, an SMS reply's number, an unfollow).
SUPPRESS_VALUE = text(
    """
INSERT INTO suppressions (scope, kind, value_bi, contact_id, reason, source, created_at)
VALUES (:scope, :kind, :value_bi, :contact_id, :reason, :source, :now)
ON CONFLICT (kind, value_bi, scope) DO NOTHING
"""
)


# -- the segment function opted_out("sms") -------------------------------------------------------
_i = Identity.__table__.alias("optout_i")
_s = Suppression.__table__.alias("optout_s")
_w = Consent.__table__.alias("optout_w")
_l = Consent.__table__.alias("optout_l")
_contacts = Contact.__table__


def opted_out_sql(ctx: CompileContext, args: tuple[Arg, ...]) -> ColumnElement[bool]:
    """``opted_out(channel)``: some identity of the person is suppressed on the channel's scope
    (or ``*``), or the person's latest ledger entry for it is a withdrawal. The argument is a
    channel key (``sms_tencent``) or a scope (``sms``)."""
    try:
        scope = scope_of(str(args[0]))
    except ConsentError as exc:
        raise SegmentError(f"opted_out: {exc}") from None
    scopes = [scope] if scope == ALL else [scope, ALL]
    suppressed = (
        select(literal(1))
        .select_from(_i.join(_s, and_(_s.c.kind == _i.c.kind, _s.c.value_bi == _i.c.value_bi)))
        .where(_i.c.contact_id == ctx.contact_id, _s.c.scope.in_(scopes))
        .correlate(_contacts)
        .exists()
    )
    later = (
        select(literal(1))
        .where(
            _l.c.contact_id == _w.c.contact_id,
            _l.c.scope.in_(scopes),
            or_(_l.c.at > _w.c.at, and_(_l.c.at == _w.c.at, _l.c.id > _w.c.id)),
        )
        .correlate(_w)
        .exists()
    )
    withdrawn = (
        select(literal(1))
        .where(
            _w.c.contact_id == ctx.contact_id,
            _w.c.scope.in_(scopes),
            _w.c.status == "withdrawn",
            ~later,
        )
        .correlate(_contacts)
        .exists()
    )
    return or_(suppressed, withdrawn)
