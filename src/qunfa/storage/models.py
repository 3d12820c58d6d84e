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
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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
    """One person. Their platform identities hang off it."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


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
        UniqueConstraint("account_id", "kind", "value_bi"),
        Index("ix_identities_contact", "contact_id"),
        Index("ix_identities_account_kind", "account_id", "kind", "id"),
    )


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    platform_tag_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="synced")  # synced | manual | rule
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("account_id", "name"),)


class IdentityTag(Base):
    __tablename__ = "identity_tags"
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    identity_id: Mapped[int] = mapped_column(
        ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )


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
    __table_args__ = (
        UniqueConstraint("campaign_id", "identity_id"),
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
