"""SQLAlchemy tables (`*Row`) of the state store; migrations/versions must produce exactly this."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connector.domain.model import CollectionMode, EngagementKind, MilestoneState, TriggerKind
from connector.ports import DeliveryStatus, OperationKind, OperationStatus, PhaseStatus

E = TypeVar("E", bound=StrEnum)

KEY = 255  # ids and keys from vendors; Stripe's idempotency keys are the longest at 255
SHORT = 64


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no offset: we add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the store keeps timezone-aware UTC datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class EnumText(TypeDecorator[E]):
    """A StrEnum stored as its string value (no native ENUM types, so adding a member needs
    no migration)."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: type[E], length: int = 32) -> None:
        super().__init__(length)
        self.enum_type = enum_type

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_type(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime(), date: Date()}


def _tenant_fk() -> Mapped[str]:
    return mapped_column(String(SHORT), ForeignKey("tenants.id", ondelete="CASCADE"))


class TenantRow(Base):
    """One firm; every other row belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(SHORT), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.current_timestamp())


class SourceCursorRow(Base):
    __tablename__ = "source_cursors"
    __table_args__ = (UniqueConstraint("tenant_id", "system", "stream"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    system: Mapped[str] = mapped_column(String(SHORT))
    stream: Mapped[str] = mapped_column(String(SHORT))
    value: Mapped[str | None] = mapped_column(Text)


class EngagementRow(Base):
    __tablename__ = "engagements"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source", "key"),
        CheckConstraint("(fee_minor IS NULL) = (fee_currency IS NULL)", name="fee_complete"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    source: Mapped[str] = mapped_column(String(SHORT))
    key: Mapped[str] = mapped_column(String(KEY))
    client_key: Mapped[str] = mapped_column(String(KEY))
    client_name: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    kind: Mapped[EngagementKind] = mapped_column(EnumText(EngagementKind))
    work_type: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(Text)
    fee_minor: Mapped[int | None] = mapped_column(BigInteger)
    fee_currency: Mapped[str | None] = mapped_column(String(3))
    period: Mapped[str | None] = mapped_column(String(SHORT))
    start_date: Mapped[date | None]
    due_date: Mapped[date | None]
    ledger_customer_id: Mapped[str | None] = mapped_column(String(KEY))


class ClientRow(Base):
    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("tenant_id", "source", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    source: Mapped[str] = mapped_column(String(SHORT))
    key: Mapped[str] = mapped_column(String(KEY))
    name: Mapped[str] = mapped_column(Text)
    ledger_customer_id: Mapped[str | None] = mapped_column(String(KEY))


class PhaseEventRow(Base):
    """A phase completion seen in a source, stored once per `PhaseCompletion.natural_key`."""

    __tablename__ = "phase_events"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id",
            "source",
            "work_item",
            "phase_key",
            "completion",
            name="uq_phase_events_natural_key",
        ),
        Index("ix_phase_events_tenant_status", "tenant_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    source: Mapped[str] = mapped_column(String(SHORT))
    work_item: Mapped[str] = mapped_column(String(KEY))
    phase_key: Mapped[str] = mapped_column(
        String(2 * KEY)
    )  # natural_key[2]: kind:phase[:secondary][:reopened]
    completion: Mapped[str] = mapped_column(String(KEY))
    kind: Mapped[TriggerKind] = mapped_column(EnumText(TriggerKind))
    phase: Mapped[str] = mapped_column(Text)
    secondary: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime]
    reopened: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[PhaseStatus] = mapped_column(EnumText(PhaseStatus))
    reason: Mapped[str | None] = mapped_column(Text)


class MilestoneRow(Base):
    __tablename__ = "milestones"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_milestones_tenant_state", "tenant_id", "state"),
        Index("ix_milestones_tenant_work_item", "tenant_id", "source", "work_item"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    key: Mapped[str] = mapped_column(String(KEY))
    source: Mapped[str] = mapped_column(String(SHORT))
    work_item: Mapped[str] = mapped_column(String(KEY))
    client_key: Mapped[str] = mapped_column(String(KEY))
    plan_id: Mapped[str] = mapped_column(String(KEY))
    definition_id: Mapped[str] = mapped_column(String(KEY))
    description: Mapped[str] = mapped_column(Text)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    collection_mode: Mapped[CollectionMode] = mapped_column(EnumText(CollectionMode))
    config_revision: Mapped[str] = mapped_column(String(KEY))
    state: Mapped[MilestoneState] = mapped_column(EnumText(MilestoneState))
    period: Mapped[str | None] = mapped_column(String(SHORT))
    planned_date: Mapped[date | None]
    triggered_at: Mapped[datetime | None]
    ledger_customer_id: Mapped[str | None] = mapped_column(String(KEY))
    item: Mapped[str | None] = mapped_column(Text)
    tax_code: Mapped[str | None] = mapped_column(String(KEY))
    terms: Mapped[str | None] = mapped_column(Text)
    send_invoice: Mapped[bool] = mapped_column(Boolean)
    invoice_id: Mapped[str | None] = mapped_column(String(KEY))
    invoice_number: Mapped[str | None] = mapped_column(String(KEY))
    charge_id: Mapped[str | None] = mapped_column(String(KEY))
    charge_attempts: Mapped[int] = mapped_column(Integer)
    next_charge_at: Mapped[datetime | None]
    ledger_payment_id: Mapped[str | None] = mapped_column(String(KEY))
    attention_reason: Mapped[str | None] = mapped_column(Text)
    resume_state: Mapped[MilestoneState | None] = mapped_column(EnumText(MilestoneState))
    version: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict[str, str]] = mapped_column(JSON)


class OperationRow(Base):
    """The intent log: one row per external write, committed before the call is made."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_operations_tenant_status", "tenant_id", "status"),
        Index("ix_operations_tenant_subject", "tenant_id", "subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    key: Mapped[str] = mapped_column(String(KEY))
    kind: Mapped[OperationKind] = mapped_column(EnumText(OperationKind))
    subject: Mapped[str] = mapped_column(String(KEY))
    payload_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[OperationStatus] = mapped_column(EnumText(OperationStatus))
    external_id: Mapped[str | None] = mapped_column(String(KEY))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_at", "tenant_id", "at"),
        Index("ix_audit_events_tenant_subject", "tenant_id", "subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(SHORT))
    subject: Mapped[str] = mapped_column(String(KEY))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, str]] = mapped_column(JSON)


class SourceStateRow(Base):
    """A source adapter's snapshot of one watched record (e.g. a Karbon work item's status)."""

    __tablename__ = "source_state"
    __table_args__ = (UniqueConstraint("tenant_id", "source", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    source: Mapped[str] = mapped_column(String(SHORT))
    key: Mapped[str] = mapped_column(String(KEY))
    value: Mapped[str] = mapped_column(Text)


class InboxRow(Base):
    """A verified push (webhook delivery, imported row), stored once per (source, dedupe key)."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source", "dedupe_key"),
        Index("ix_inbox_tenant_source_status", "tenant_id", "source", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    source: Mapped[str] = mapped_column(String(SHORT))
    topic: Mapped[str] = mapped_column(String(SHORT))
    resource: Mapped[str] = mapped_column(String(KEY))
    dedupe_key: Mapped[str] = mapped_column(String(KEY))
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]
    status: Mapped[DeliveryStatus] = mapped_column(EnumText(DeliveryStatus))
    note: Mapped[str | None] = mapped_column(Text)


class OAuthTokenRow(Base):
    """An OAuth token per connection, Fernet-encrypted; the plaintext never reaches the table."""

    __tablename__ = "oauth_tokens"
    __table_args__ = (UniqueConstraint("tenant_id", "connection"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    connection: Mapped[str] = mapped_column(String(SHORT))
    ciphertext: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]
