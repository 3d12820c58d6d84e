"""SQLAlchemy 2 models: the tables of the walking skeleton.

Times are UTC epoch seconds (``Float``/double precision): the same comparisons work in SQLite
and PostgreSQL, in ORM code and in the named SQL of the hot paths. Secrets and PII columns end
in ``_enc`` (AES-256-GCM, see :mod:`qunfa.crypto.fields`); lookups go through ``_bi`` blind
indexes. Schema changes go through Alembic (``storage/migrations``), never ``create_all``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Computed,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# contacts.active_at: max(last_interaction_at, coalesce(registered_at, created_at)), spelt
# with CASE so SQLite and PostgreSQL read it alike (a NULL last interaction takes the ELSE).
ACTIVE_AT_SQL = (
    "CASE WHEN last_interaction_at > coalesce(registered_at, created_at) "
    "THEN last_interaction_at ELSE coalesce(registered_at, created_at) END"
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class Meta(Base):
    """Installation-wide facts (e.g. the installation id that salts idempotency keys)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Account(Base):
    """A platform account qunfa sends through (an Official Account, a WeCom app, …)."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))  # channel key, e.g. wechat_oa
    app_id: Mapped[str] = mapped_column(String(128))  # appid / corpid / app key (not secret)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="")  # subscription | service | …
    base_url: Mapped[str] = mapped_column(String(500))  # platform or sandbox root
    credentials_enc: Mapped[bytes] = mapped_column(LargeBinary)  # JSON of secrets, encrypted
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # rule overrides, options
    created_at: Mapped[float] = mapped_column(Float)
    synced_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("channel", "app_id"),)


class AccessToken(Base):
    """The one cached access token per account, shared by every process (refreshed under lock)."""

    __tablename__ = "access_tokens"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    token_enc: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[float] = mapped_column(Float)
    fetched_at: Mapped[float] = mapped_column(Float)
    generation: Mapped[int] = mapped_column(Integer, default=1)


class Contact(Base):
    """One person. Their platform identities hang off it.

    Segmentable attributes (city, province, gender, birthday, time zone) are plain columns so
    segments compile to SQL comparisons; the name is PII and encrypted. A contact absorbed by a
    merge keeps its row with ``merged_into`` set (so the merge can be undone) and owns no
    identities while merged.
    """

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    name_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    city: Mapped[str | None] = mapped_column(String(64), nullable=True)
    province: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gender: Mapped[str | None] = mapped_column(String(8), nullable=True)  # male|female|unknown
    birthday: Mapped[str | None] = mapped_column(String(10), nullable=True)  # YYYY-MM-DD
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)  # IANA name
    registered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attrs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")  # custom
    merged_into: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A copy of contact_facts.last_interaction_at (NULL without a facts row), kept by triggers
    # on contact_facts (migration 0006); read through active_at.
    last_interaction_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the person last counted as active: max(last interaction, registered_at or
    # created_at). Generated by the database (VIRTUAL on SQLite, STORED on PostgreSQL), so
    # every writer of those columns keeps it exact; ``last_active_within`` is one range of
    # ix_contacts_active (docs/segments.md).
    active_at: Mapped[float | None] = mapped_column(Float, Computed(ACTIVE_AT_SQL), nullable=True)
    __table_args__ = (
        Index("ix_contacts_city", "city"),
        Index("ix_contacts_registered", "registered_at"),
        Index("ix_contacts_active", "active_at"),
    )


class ContactMerge(Base):
    """One merge of two people found to be one (same unionid, phone or e-mail blind index).

    ``identity_ids`` are the identities moved from ``absorbed_id`` to ``survivor_id`` and
    ``filled`` the survivor's attributes that were empty and taken from the absorbed contact:
    exactly what undoing the merge puts back.
    """

    __tablename__ = "contact_merges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survivor_id: Mapped[int] = mapped_column(Integer)
    absorbed_id: Mapped[int] = mapped_column(Integer)
    matched_kind: Mapped[str] = mapped_column(String(32))  # unionid | phone | email
    identity_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    filled: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(64), default="system")
    merged_at: Mapped[float] = mapped_column(Float)
    undone_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (
        Index("ix_contact_merges_survivor", "survivor_id"),
        Index("ix_contact_merges_absorbed", "absorbed_id"),
    )


class Identity(Base):
    """One id of a person on one platform account (openid, unionid, external_userid, phone …)."""

    __tablename__ = "identities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(32))  # openid | unionid | …
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
    value_bi: Mapped[bytes] = mapped_column(LargeBinary(16))  # blind index for lookups
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    subscribed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        # A unique index, not a UNIQUE constraint: SQLite cannot drop the index behind a
        # constraint, and the contact import's bulk-load mode drops this one (with the other
        # identity indexes) inside its write transaction and rebuilds it after the inserts
        # (migration 0008).
        Index("uq_identities_account_kind_bi", "account_id", "kind", "value_bi", unique=True),
        Index("ix_identities_contact", "contact_id"),
        Index("ix_identities_account_kind", "account_id", "kind", "id"),
    )


class TagGroup(Base):
    """A group of tags (WeCom's 标签组); ``account_id`` NULL for qunfa's own groups."""

    __tablename__ = "tag_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    platform_group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=0.0)
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class Tag(Base):
    """A tag. With an account it is that platform's tag and hangs on identities
    (:class:`IdentityTag`); without one it is qunfa's own and hangs on people
    (:class:`ContactTag`). ``rule`` (a segment expression) makes it a rule tag that is
    re-evaluated every ``rule_every_minutes``."""

    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("tag_groups.id", ondelete="SET NULL"), nullable=True
    )
    name: Mapped[str] = mapped_column(String(100))
    platform_tag_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # OA tag id
    platform_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)  # WeCom tag_id
    source: Mapped[str] = mapped_column(String(16), default="synced")  # synced | manual | rule
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    rule: Mapped[str | None] = mapped_column(Text, nullable=True)
    rule_every_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    evaluated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class IdentityTag(Base):
    __tablename__ = "identity_tags"
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    identity_id: Mapped[int] = mapped_column(
        ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    __table_args__ = (Index("ix_identity_tags_identity", "identity_id"),)


class ContactAccountTag(Base):
    """An account tag at person level: the person has it iff one of their identities has it
    in ``identity_tags``. Kept by triggers on ``identity_tags`` and ``identities`` (migration
    0006), so sync, tag operations, merges and unmerges stay exact without writing it;
    ``tag()`` in segments reads it (one primary-key range per tag)."""

    __tablename__ = "contact_account_tags"
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    __table_args__ = (Index("ix_contact_account_tags_contact", "contact_id"),)


class ContactTag(Base):
    """qunfa's own (account-less) tags on people: manual, imported or rule-generated."""

    __tablename__ = "contact_tags"
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    __table_args__ = (Index("ix_contact_tags_contact", "contact_id"),)


class TagOp(Base):
    """Outbox of tag changes made in qunfa that must reach the platform (two-way sync)."""

    __tablename__ = "tag_ops"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    op: Mapped[str] = mapped_column(String(8))  # add | remove
    created_at: Mapped[float] = mapped_column(Float)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    __table_args__ = (Index("ix_tag_ops_pending", "done_at", "tag_id"),)


class SyncState(Base):
    """Where a platform sync stands, so a crashed sync resumes instead of starting over."""

    __tablename__ = "sync_state"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)  # followers | customers …
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)  # next_openid, cursor …
    run_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    seen: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Segment(Base):
    """A saved segment: an expression of the segment language (and its JSON form)."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    expression: Mapped[str] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True
    )
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SegmentSnapshot(Base):
    """What a segment was when a campaign was planned: the expression, the time, the count."""

    __tablename__ = "segment_snapshots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    segment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expression: Mapped[str] = mapped_column(Text)
    evaluated_at: Mapped[float] = mapped_column(Float)
    contact_count: Mapped[int] = mapped_column(Integer)
    recipient_count: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_segment_snapshots_campaign", "campaign_id"),)


class PersonEvent(Base):
    """Behaviour: an interaction, message, open, click or purchase of one person.

    ``dedupe_key`` (e.g. an order number) makes imports idempotent. ``text`` holds message
    text for rule tags such as "chatted about 退款 in the last 7 days".
    """

    __tablename__ = "person_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # interaction|message|open|click|purchase…
    channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    at: Mapped[float] = mapped_column(Float)
    amount: Mapped[float | None] = mapped_column(Float, nullable=True)  # yuan, purchases
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)  # ios|android|other
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    received_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        Index("ix_person_events_contact_at", "contact_id", "at"),
        Index("ix_person_events_received", "received_at"),
        Index("ix_person_events_at", "at"),
    )


class ContactFacts(Base):
    """Per-person facts derived from events, refreshed incrementally; RFM scores and layer."""

    __tablename__ = "contact_facts"
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    last_interaction_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    interactions_7d: Mapped[int] = mapped_column(Integer, default=0)
    spend_3m: Mapped[float] = mapped_column(Float, default=0.0)
    orders_3m: Mapped[int] = mapped_column(Integer, default=0)
    last_purchase_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    converted: Mapped[bool] = mapped_column(Boolean, default=False)
    rfm_r: Mapped[int | None] = mapped_column(Integer, nullable=True)  # quintile 1..5
    rfm_f: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rfm_m: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rfm_segment: Mapped[str | None] = mapped_column(String(32), nullable=True)
    best_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)  # local 0..23
    best_hour_weight: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        Index("ix_contact_facts_last", "last_interaction_at"),
        Index("ix_contact_facts_spend", "spend_3m"),
        Index("ix_contact_facts_rfm", "rfm_segment"),
        # The RFM cut points are found by indexed OFFSET walks over buyers only
        # (storage/behaviour_sql.py): one partial index per dimension.
        Index(
            "ix_contact_facts_rfm_r",
            "last_purchase_at",
            "contact_id",
            sqlite_where=text("last_purchase_at IS NOT NULL"),
            postgresql_where=text("last_purchase_at IS NOT NULL"),
        ),
        Index(
            "ix_contact_facts_rfm_f",
            "orders_3m",
            "contact_id",
            "last_purchase_at",
            sqlite_where=text("last_purchase_at IS NOT NULL"),
            postgresql_where=text("last_purchase_at IS NOT NULL"),
        ),
        Index(
            "ix_contact_facts_rfm_m",
            "spend_3m",
            "contact_id",
            "last_purchase_at",
            sqlite_where=text("last_purchase_at IS NOT NULL"),
            postgresql_where=text("last_purchase_at IS NOT NULL"),
        ),
    )


class Consent(Base):
    """The consent ledger: every grant and withdrawal per person and channel scope, append-only.

    ``scope`` is a channel family (sms, email, wechat_oa, wecom, …) or ``*`` for all.
    ``evidence_enc`` holds what proves it (the reply text, the form, the IP), encrypted.
    """

    __tablename__ = "consents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # granted | withdrawn
    source: Mapped[str] = mapped_column(String(32))  # import|sms_reply|email_link|api|…
    wording_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    evidence_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_consents_contact_scope", "contact_id", "scope", "at"),)


class Suppression(Base):
    """The global suppression list: never message this address or id on this scope.

    Keyed by the identity's blind index (not the contact) so it survives re-imports, merges
    and unmerges; ``contact_id`` is the person it belonged to when suppressed, for display.
    """

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))  # channel family or *
    kind: Mapped[str] = mapped_column(String(32))  # phone | email | openid | …
    value_bi: Mapped[bytes] = mapped_column(LargeBinary(16))
    contact_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("kind", "value_bi", "scope"),
        Index("ix_suppressions_contact", "contact_id"),
    )


class AuditLog(Base):
    """Who did what to which record, and when: exports, merges, approvals, key rotations."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    __table_args__ = (Index("ix_audit_log_action_at", "action", "at"),)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)  # salts idempotency keys
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    audience: Mapped[str] = mapped_column(Text)  # audience expression, e.g. tag:VIP
    mode: Mapped[str] = mapped_column(String(16))  # to_all | tag | list | template
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Campaign options beyond the content, e.g. {"remind_every_hours": 4} for WeCom tasks.
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="draft")
    created_by: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Review (issue 5): none | submitted | approved | rejected. An approval holds for the
    # content it saw: ``approved_hash`` is that content's digest, and editing voids it.
    review_state: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    approved_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    check_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    checked_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scheduled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A recurring campaign's runs and a fallback campaign point at the campaign they came from.
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    planned_count: Mapped[int] = mapped_column(Integer, default=0)
    batch_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    planned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (Index("ix_campaigns_state", "state"),)


class Batch(Base):
    """One platform call's worth of recipients, and everything known about its outcome."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    batch_no: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    size: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    in_doubt: Mapped[bool] = mapped_column(Boolean, default=False)
    platform_msg_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    platform_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_errcode: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    total_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    filter_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sent_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    polled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (
        UniqueConstraint("campaign_id", "batch_no"),
        Index("ix_batches_due", "state", "next_attempt_at"),
        Index("ix_batches_campaign_state", "campaign_id", "state"),
        Index("ix_batches_msg", "platform_msg_id"),
    )


class Delivery(Base):
    """The per-recipient ledger: one row per (campaign, identity), never two."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    batch_no: Mapped[int] = mapped_column(Integer)  # with campaign_id, names its batch
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    contact_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="planned")
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    platform_msg_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    # When this recipient should get it (local-time staggering, deferral past a cap); NULL:
    # with its batch. When it was handed to the platform: what caps and quotas count.
    due_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    variant: Mapped[str | None] = mapped_column(String(16), nullable=True)  # e.g. sto | holdout
    __table_args__ = (
        UniqueConstraint("campaign_id", "identity_id"),
        Index("ix_deliveries_contact_sent", "contact_id", "sent_at"),
        Index("ix_deliveries_identity_sent", "identity_id", "sent_at"),
        # Not on status: every batch rewrites status twice for all its rows, and one batch's
        # rows are few enough to filter without an index.
        Index("ix_deliveries_batch", "campaign_id", "batch_no"),
        Index("ix_deliveries_msg", "platform_msg_id"),  # receipts find their delivery by it
    )


class Event(Base):
    """Inbound platform events (callbacks), stored verified and deduplicated."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[float] = mapped_column(Float)
    # A campaign's clicks on its tracked links (and its other events) without scanning the table.
    __table_args__ = (Index("ix_events_campaign_kind", "campaign_id", "kind"),)


class Material(Base):
    """An item of the material library (素材库): text, article, image, video, card, file."""

    __tablename__ = "materials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # text|news|image|video|miniprogram|link|file
    title: Mapped[str] = mapped_column(String(200))
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class MaterialVersion(Base):
    """One immutable version of a material: its body and its per-channel variants.

    ``body`` is ``{"default": {...}, "<channel>": {...}}``; a media file lives at ``file_path``
    (under the data directory) with its digest and the facts the lint needs.
    """

    __tablename__ = "material_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    material_id: Mapped[int] = mapped_column(ForeignKey("materials.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    file_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mime: Mapped[str | None] = mapped_column(String(100), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("material_id", "version"),)


class MediaUpload(Base):
    """A material version uploaded to one platform account: its media_id, until it expires."""

    __tablename__ = "media_uploads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("material_versions.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # temporary | permanent | draft
    media_id: Mapped[str] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    uploaded_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("version_id", "account_id", "channel", "kind"),)


class MaterialUse(Base):
    """Where a material version was used."""

    __tablename__ = "material_uses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    material_id: Mapped[int] = mapped_column(ForeignKey("materials.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    used_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("material_id", "version", "campaign_id"),)


class CampaignReview(Base):
    """Every step of a campaign's review: submit, approve, reject, void, comment."""

    __tablename__ = "campaign_reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_campaign_reviews_campaign", "campaign_id", "at"),)


class QuotaReservation(Base):
    """Quota a scheduled campaign counts on, so two campaigns cannot both take the last slot."""

    __tablename__ = "quota_reservations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(64))  # the rule name in rules/<platform>.toml
    period_key: Mapped[str] = mapped_column(String(32))  # e.g. 2026-11-24 or 2026-11
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("account_id", "rule", "period_key", "campaign_id"),)


class QuotaUsage(Base):
    """Per account, rule and period: what qunfa sent and what the platform reported."""

    __tablename__ = "quota_usage"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    reported: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
