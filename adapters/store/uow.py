"""The SQL unit of work: repositories over one tenant's rows, translating rows <-> domain types.

SQLite runs in sqlite3's default (legacy) transaction mode: a write transaction starts at the
first INSERT/UPDATE/DELETE, so reads behave like PostgreSQL's READ COMMITTED and writers queue on
the busy timeout. No SAVEPOINTs are used (they do not nest correctly in that mode): duplicates are
detected with INSERT ... ON CONFLICT DO NOTHING RETURNING, which never aborts the transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy import Dialect, Select, select, update
from sqlalchemy.orm import Session

from adapters.store._sql import bytewise, insert, translated
from adapters.store.tables import (
    AuditEventRow,
    ClientRow,
    EngagementRow,
    InboxRow,
    MilestoneRow,
    OperationRow,
    PhaseEventRow,
    SourceCursorRow,
    SourceStateRow,
)
from connector.domain.errors import InvariantViolation
from connector.domain.events import AuditEvent
from connector.domain.ids import (
    ChargeId,
    ClientKey,
    ConfigRevision,
    IdempotencyKey,
    LedgerCustomerId,
    LedgerInvoiceId,
    LedgerPaymentId,
    MilestoneDefId,
    MilestoneKey,
    PlanId,
    SourceId,
    TenantId,
    WorkItemKey,
)
from connector.domain.model import Client, Engagement, Milestone, MilestoneState, PhaseCompletion
from connector.domain.money import Money
from connector.ports import (
    AuditLog,
    ClientRepository,
    CursorRepository,
    Delivery,
    DeliveryStatus,
    EngagementRepository,
    Inbox,
    MilestoneRepository,
    Operation,
    OperationLog,
    OperationStatus,
    PhaseRepository,
    PhaseStatus,
    SourceStateRepository,
    StoredDelivery,
    StoredPhase,
    UnitOfWork,
)

if TYPE_CHECKING:
    from adapters.store.engine import Store

T = TypeVar("T")


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvariantViolation(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _aware_or_none(value: datetime | None, name: str) -> datetime | None:
    return None if value is None else _aware(value, name)


class _Repository:
    def __init__(self, session: Session, tenant_id: TenantId) -> None:
        self._session = session
        self._tenant = tenant_id

    @property
    def _dialect(self) -> Dialect:
        return self._session.get_bind().dialect

    def _rows(self, statement: Select[Any]) -> list[Any]:
        # populate_existing: a second read in the same unit of work sees other writers' commits
        return list(self._session.scalars(statement.execution_options(populate_existing=True)))


# --------------------------------------------------------------------------- milestones


def _milestone_values(m: Milestone) -> dict[str, Any]:
    return {
        "source": m.source,
        "work_item": m.work_item,
        "client_key": m.client_key,
        "plan_id": m.plan_id,
        "definition_id": m.definition_id,
        "description": m.description,
        "amount_minor": m.amount.minor,
        "currency": m.amount.currency,
        "collection_mode": m.collection_mode,
        "config_revision": m.config_revision,
        "state": m.state,
        "period": m.period,
        "planned_date": m.planned_date,
        "triggered_at": _aware_or_none(m.triggered_at, "triggered_at"),
        "ledger_customer_id": m.ledger_customer_id,
        "item": m.item,
        "tax_code": m.tax_code,
        "terms": m.terms,
        "send_invoice": m.send_invoice,
        "invoice_id": m.invoice_id,
        "invoice_number": m.invoice_number,
        "charge_id": m.charge_id,
        "charge_attempts": m.charge_attempts,
        "next_charge_at": _aware_or_none(m.next_charge_at, "next_charge_at"),
        "ledger_payment_id": m.ledger_payment_id,
        "attention_reason": m.attention_reason,
        "resume_state": m.resume_state,
        "extra": dict(m.extra),
    }


def _milestone(row: MilestoneRow) -> Milestone:
    return Milestone(
        key=MilestoneKey(row.key),
        source=SourceId(row.source),
        work_item=WorkItemKey(row.work_item),
        client_key=ClientKey(row.client_key),
        plan_id=PlanId(row.plan_id),
        definition_id=MilestoneDefId(row.definition_id),
        description=row.description,
        amount=Money.from_minor(row.amount_minor, row.currency),
        collection_mode=row.collection_mode,
        config_revision=ConfigRevision(row.config_revision),
        state=row.state,
        period=row.period,
        planned_date=row.planned_date,
        triggered_at=row.triggered_at,
        ledger_customer_id=_maybe(LedgerCustomerId, row.ledger_customer_id),
        item=row.item,
        tax_code=row.tax_code,
        terms=row.terms,
        send_invoice=row.send_invoice,
        invoice_id=_maybe(LedgerInvoiceId, row.invoice_id),
        invoice_number=row.invoice_number,
        charge_id=_maybe(ChargeId, row.charge_id),
        charge_attempts=row.charge_attempts,
        next_charge_at=row.next_charge_at,
        ledger_payment_id=_maybe(LedgerPaymentId, row.ledger_payment_id),
        attention_reason=row.attention_reason,
        resume_state=row.resume_state,
        version=row.version,
        extra=dict(row.extra),
    )


def _maybe(kind: Callable[[str], T], value: str | None) -> T | None:
    return None if value is None else kind(value)


class SqlMilestoneRepository(_Repository):
    @translated
    def get(self, key: MilestoneKey) -> Milestone | None:
        rows = self._rows(
            select(MilestoneRow).where(
                MilestoneRow.tenant_id == self._tenant, MilestoneRow.key == key
            )
        )
        return _milestone(rows[0]) if rows else None

    @translated
    def add(self, milestone: Milestone) -> None:
        values = _milestone_values(milestone)
        statement = (
            insert(self._dialect, MilestoneRow)
            .values(tenant_id=self._tenant, key=milestone.key, version=milestone.version, **values)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(MilestoneRow.__table__.c.id)
        )
        if self._session.execute(statement).first() is None:
            raise InvariantViolation(f"milestone {milestone.key} already exists")

    @translated
    def update(self, milestone: Milestone) -> Milestone:
        saved = dataclasses.replace(milestone, version=milestone.version + 1)
        result = self._session.execute(
            update(MilestoneRow)
            .where(
                MilestoneRow.tenant_id == self._tenant,
                MilestoneRow.key == milestone.key,
                MilestoneRow.version == milestone.version,
            )
            .values(version=saved.version, **_milestone_values(milestone))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise InvariantViolation(
                f"milestone {milestone.key}: version {milestone.version} is stale (another "
                "transaction changed it) or the milestone does not exist"
            )
        return saved

    @translated
    def list(
        self,
        states: frozenset[MilestoneState] | None = None,
        work_item: tuple[SourceId, WorkItemKey] | None = None,
    ) -> list[Milestone]:
        statement = select(MilestoneRow).where(MilestoneRow.tenant_id == self._tenant)
        if states is not None:
            statement = statement.where(MilestoneRow.state.in_([s.value for s in states]))
        if work_item is not None:
            source, key = work_item
            statement = statement.where(
                MilestoneRow.source == source, MilestoneRow.work_item == key
            )
        statement = statement.order_by(bytewise(MilestoneRow.key, self._dialect))
        return [_milestone(row) for row in self._rows(statement)]


# --------------------------------------------------------------------------- engagements, clients


def _engagement_values(e: Engagement) -> dict[str, Any]:
    return {
        "client_key": e.client_key,
        "client_name": e.client_name,
        "title": e.title,
        "kind": e.kind,
        "work_type": e.work_type,
        "template": e.template,
        "fee_minor": None if e.fee is None else e.fee.minor,
        "fee_currency": None if e.fee is None else e.fee.currency,
        "period": e.period,
        "start_date": e.start_date,
        "due_date": e.due_date,
        "ledger_customer_id": e.ledger_customer_id,
    }


def _engagement(row: EngagementRow) -> Engagement:
    fee = None
    if row.fee_minor is not None and row.fee_currency is not None:
        fee = Money.from_minor(row.fee_minor, row.fee_currency)
    return Engagement(
        source=SourceId(row.source),
        key=WorkItemKey(row.key),
        client_key=ClientKey(row.client_key),
        client_name=row.client_name,
        title=row.title,
        kind=row.kind,
        work_type=row.work_type,
        template=row.template,
        fee=fee,
        period=row.period,
        start_date=row.start_date,
        due_date=row.due_date,
        ledger_customer_id=_maybe(LedgerCustomerId, row.ledger_customer_id),
    )


class SqlEngagementRepository(_Repository):
    @translated
    def upsert(self, engagement: Engagement) -> bool:
        existing = self.get(engagement.source, engagement.key)
        if existing == engagement:
            return False
        values = _engagement_values(engagement)
        if existing is None:
            statement = (
                insert(self._dialect, EngagementRow)
                .values(
                    tenant_id=self._tenant, source=engagement.source, key=engagement.key, **values
                )
                .on_conflict_do_nothing(index_elements=["tenant_id", "source", "key"])
                .returning(EngagementRow.__table__.c.id)
            )
            if self._session.execute(statement).first() is not None:
                return True
        self._session.execute(
            update(EngagementRow)
            .where(
                EngagementRow.tenant_id == self._tenant,
                EngagementRow.source == engagement.source,
                EngagementRow.key == engagement.key,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return True

    @translated
    def get(self, source: SourceId, key: WorkItemKey) -> Engagement | None:
        rows = self._rows(
            select(EngagementRow).where(
                EngagementRow.tenant_id == self._tenant,
                EngagementRow.source == source,
                EngagementRow.key == key,
            )
        )
        return _engagement(rows[0]) if rows else None

    @translated
    def list(self) -> list[Engagement]:
        statement = (
            select(EngagementRow)
            .where(EngagementRow.tenant_id == self._tenant)
            .order_by(
                bytewise(EngagementRow.source, self._dialect),
                bytewise(EngagementRow.key, self._dialect),
            )
        )
        return [_engagement(row) for row in self._rows(statement)]


def _client(row: ClientRow) -> Client:
    return Client(
        source=SourceId(row.source),
        key=ClientKey(row.key),
        name=row.name,
        ledger_customer_id=_maybe(LedgerCustomerId, row.ledger_customer_id),
    )


class SqlClientRepository(_Repository):
    @translated
    def upsert(self, client: Client) -> None:
        changes = {"name": client.name, "ledger_customer_id": client.ledger_customer_id}
        statement = (
            insert(self._dialect, ClientRow)
            .values(tenant_id=self._tenant, source=client.source, key=client.key, **changes)
            .on_conflict_do_update(index_elements=["tenant_id", "source", "key"], set_=changes)
        )
        self._session.execute(statement)

    @translated
    def get(self, source: SourceId, key: ClientKey) -> Client | None:
        rows = self._rows(
            select(ClientRow).where(
                ClientRow.tenant_id == self._tenant,
                ClientRow.source == source,
                ClientRow.key == key,
            )
        )
        return _client(rows[0]) if rows else None

    @translated
    def list(self) -> list[Client]:
        statement = (
            select(ClientRow)
            .where(ClientRow.tenant_id == self._tenant)
            .order_by(
                bytewise(ClientRow.source, self._dialect), bytewise(ClientRow.key, self._dialect)
            )
        )
        return [_client(row) for row in self._rows(statement)]


# --------------------------------------------------------------------------- phases


def _stored_phase(row: PhaseEventRow) -> StoredPhase:
    phase = PhaseCompletion(
        source=SourceId(row.source),
        work_item=WorkItemKey(row.work_item),
        kind=row.kind,
        phase=row.phase,
        completed_at=row.completed_at,
        completion=row.completion,
        secondary=row.secondary,
        reopened=row.reopened,
    )
    return StoredPhase(id=row.id, phase=phase, status=row.status, reason=row.reason)


class SqlPhaseRepository(_Repository):
    @translated
    def add(self, phase: PhaseCompletion) -> bool:
        source, work_item, phase_key, completion = phase.natural_key
        statement = (
            insert(self._dialect, PhaseEventRow)
            .values(
                tenant_id=self._tenant,
                source=source,
                work_item=work_item,
                phase_key=phase_key,
                completion=completion,
                kind=phase.kind,
                phase=phase.phase,
                secondary=phase.secondary,
                completed_at=_aware(phase.completed_at, "completed_at"),
                reopened=phase.reopened,
                status=PhaseStatus.NEW,
                reason=None,
            )
            .on_conflict_do_nothing(
                index_elements=["tenant_id", "source", "work_item", "phase_key", "completion"]
            )
            .returning(PhaseEventRow.__table__.c.id)
        )
        return self._session.execute(statement).first() is not None

    @translated
    def list(self, status: PhaseStatus | None = None) -> list[StoredPhase]:
        statement = select(PhaseEventRow).where(PhaseEventRow.tenant_id == self._tenant)
        if status is not None:
            statement = statement.where(PhaseEventRow.status == status)
        return [_stored_phase(row) for row in self._rows(statement.order_by(PhaseEventRow.id))]

    @translated
    def mark(self, phase_id: int, status: PhaseStatus, reason: str | None = None) -> None:
        result = self._session.execute(
            update(PhaseEventRow)
            .where(PhaseEventRow.tenant_id == self._tenant, PhaseEventRow.id == phase_id)
            .values(status=status, reason=reason)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise InvariantViolation(f"phase {phase_id} is not stored for this tenant")


# --------------------------------------------------------------------------- operations


def _operation_values(op: Operation) -> dict[str, Any]:
    return {
        "kind": op.kind,
        "subject": op.subject,
        "payload_hash": op.payload_hash,
        "status": op.status,
        "external_id": op.external_id,
        "attempts": op.attempts,
        "last_error": op.last_error,
        "created_at": _aware(op.created_at, "created_at"),
        "updated_at": _aware(op.updated_at, "updated_at"),
    }


def _operation(row: OperationRow) -> Operation:
    return Operation(
        key=IdempotencyKey(row.key),
        kind=row.kind,
        subject=MilestoneKey(row.subject),
        payload_hash=row.payload_hash,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        external_id=row.external_id,
        attempts=row.attempts,
        last_error=row.last_error,
    )


class SqlOperationLog(_Repository):
    @translated
    def get(self, key: IdempotencyKey) -> Operation | None:
        rows = self._rows(
            select(OperationRow).where(
                OperationRow.tenant_id == self._tenant, OperationRow.key == key
            )
        )
        return _operation(rows[0]) if rows else None

    @translated
    def add(self, operation: Operation) -> None:
        statement = (
            insert(self._dialect, OperationRow)
            .values(tenant_id=self._tenant, key=operation.key, **_operation_values(operation))
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
            .returning(OperationRow.__table__.c.id)
        )
        if self._session.execute(statement).first() is None:
            raise InvariantViolation(f"operation {operation.key} is already recorded")

    @translated
    def update(self, operation: Operation) -> None:
        result = self._session.execute(
            update(OperationRow)
            .where(OperationRow.tenant_id == self._tenant, OperationRow.key == operation.key)
            .values(**_operation_values(operation))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise InvariantViolation(f"operation {operation.key} was never recorded")

    @translated
    def list(
        self, status: OperationStatus | None = None, subject: MilestoneKey | None = None
    ) -> list[Operation]:
        statement = select(OperationRow).where(OperationRow.tenant_id == self._tenant)
        if status is not None:
            statement = statement.where(OperationRow.status == status)
        if subject is not None:
            statement = statement.where(OperationRow.subject == subject)
        statement = statement.order_by(OperationRow.created_at, OperationRow.id)
        return [_operation(row) for row in self._rows(statement)]


# --------------------------------------------------------------------------- cursors, audit


class SqlCursorRepository(_Repository):
    @translated
    def get(self, system: str, stream: str) -> str | None:
        rows = self._rows(
            select(SourceCursorRow).where(
                SourceCursorRow.tenant_id == self._tenant,
                SourceCursorRow.system == system,
                SourceCursorRow.stream == stream,
            )
        )
        return rows[0].value if rows else None

    @translated
    def set(self, system: str, stream: str, value: str | None) -> None:
        statement = (
            insert(self._dialect, SourceCursorRow)
            .values(tenant_id=self._tenant, system=system, stream=stream, value=value)
            .on_conflict_do_update(
                index_elements=["tenant_id", "system", "stream"], set_={"value": value}
            )
        )
        self._session.execute(statement)


class SqlAuditLog(_Repository):
    @translated
    def record(self, event: AuditEvent) -> None:
        self._session.execute(
            insert(self._dialect, AuditEventRow).values(
                tenant_id=self._tenant,
                at=_aware(event.at, "at"),
                kind=event.kind,
                subject=event.subject,
                message=event.message,
                detail=dict(event.detail),
            )
        )

    @translated
    def list(self, limit: int = 100, subject: str | None = None) -> list[AuditEvent]:
        statement = select(AuditEventRow).where(AuditEventRow.tenant_id == self._tenant)
        if subject is not None:
            statement = statement.where(AuditEventRow.subject == subject)
        statement = statement.order_by(AuditEventRow.at.desc(), AuditEventRow.id.desc()).limit(
            limit
        )
        return [
            AuditEvent(
                at=row.at,
                kind=row.kind,
                subject=row.subject,
                message=row.message,
                detail=dict(row.detail),
            )
            for row in self._rows(statement)
        ]


# --------------------------------------------------------------------------- source state, inbox

_CHUNK = 500  # bound the IN lists sent to the database


class SqlSourceStateRepository(_Repository):
    @translated
    def get_many(self, source: SourceId, keys: Collection[str]) -> dict[str, str]:
        wanted = sorted(set(keys))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            rows = self._session.execute(
                select(SourceStateRow.key, SourceStateRow.value).where(
                    SourceStateRow.tenant_id == self._tenant,
                    SourceStateRow.source == source,
                    SourceStateRow.key.in_(chunk),
                )
            )
            found.update({key: value for key, value in rows})
        return found

    @translated
    def all(self, source: SourceId) -> dict[str, str]:
        rows = self._session.execute(
            select(SourceStateRow.key, SourceStateRow.value).where(
                SourceStateRow.tenant_id == self._tenant, SourceStateRow.source == source
            )
        )
        return {key: value for key, value in rows}

    @translated
    def put_many(self, source: SourceId, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            statement = (
                insert(self._dialect, SourceStateRow)
                .values(tenant_id=self._tenant, source=source, key=key, value=value)
                .on_conflict_do_update(
                    index_elements=["tenant_id", "source", "key"], set_={"value": value}
                )
            )
            self._session.execute(statement)


def _delivery(row: InboxRow) -> Delivery:
    return Delivery(
        id=row.id,
        source=SourceId(row.source),
        topic=row.topic,
        resource=row.resource,
        received_at=row.received_at,
        body=row.body,
    )


class SqlInbox(_Repository):
    @translated
    def add(
        self,
        source: SourceId,
        topic: str,
        resource: str,
        dedupe_key: str,
        body: str,
        received_at: datetime,
    ) -> bool:
        statement = (
            insert(self._dialect, InboxRow)
            .values(
                tenant_id=self._tenant,
                source=source,
                topic=topic,
                resource=resource,
                dedupe_key=dedupe_key,
                body=body,
                received_at=_aware(received_at, "received_at"),
                status=DeliveryStatus.PENDING,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "source", "dedupe_key"])
            .returning(InboxRow.__table__.c.id)
        )
        return self._session.execute(statement).first() is not None

    @translated
    def pending(self, source: SourceId, limit: int = 500) -> list[Delivery]:
        statement = (
            select(InboxRow)
            .where(
                InboxRow.tenant_id == self._tenant,
                InboxRow.source == source,
                InboxRow.status == DeliveryStatus.PENDING,
            )
            .order_by(InboxRow.id)
            .limit(limit)
        )
        return [_delivery(row) for row in self._rows(statement)]

    @translated
    def mark(self, ids: Collection[int], status: DeliveryStatus, note: str | None = None) -> None:
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), _CHUNK):
            self._session.execute(
                update(InboxRow)
                .where(
                    InboxRow.tenant_id == self._tenant,
                    InboxRow.id.in_(wanted[start : start + _CHUNK]),
                )
                .values(status=status, note=note)
                .execution_options(synchronize_session=False)
            )

    @translated
    def recent(self, source: SourceId | None = None, limit: int = 50) -> list[StoredDelivery]:
        statement = select(InboxRow).where(InboxRow.tenant_id == self._tenant)
        if source is not None:
            statement = statement.where(InboxRow.source == source)
        statement = statement.order_by(InboxRow.id.desc()).limit(limit)
        return [
            StoredDelivery(_delivery(row), row.status, row.note) for row in self._rows(statement)
        ]

    @translated
    def counts(self) -> dict[tuple[str, DeliveryStatus], int]:
        from sqlalchemy import func

        rows = self._session.execute(
            select(InboxRow.source, InboxRow.status, func.count())
            .where(InboxRow.tenant_id == self._tenant)
            .group_by(InboxRow.source, InboxRow.status)
        )
        return {(source, DeliveryStatus(status)): count for source, status, count in rows}


# --------------------------------------------------------------------------- unit of work


class SqlUnitOfWork:
    """One short transaction over one tenant's rows; leaving it rolls back anything uncommitted."""

    # Typed as the ports: a Protocol's attributes are invariant.
    milestones: MilestoneRepository
    engagements: EngagementRepository
    clients: ClientRepository
    phases: PhaseRepository
    operations: OperationLog
    cursors: CursorRepository
    audit: AuditLog
    source_state: SourceStateRepository
    inbox: Inbox

    def __init__(self, store: Store, tenant_id: TenantId) -> None:
        self._store = store
        self.tenant_id = tenant_id
        self._session: Session | None = None

    def __enter__(self) -> Self:
        if self._session is not None:
            raise InvariantViolation("a unit of work cannot be entered twice")
        self._store.ensure_tenant(self.tenant_id)
        session = Session(self._store.engine, autoflush=False, expire_on_commit=False)
        self._session = session
        tenant = self.tenant_id
        self.milestones = SqlMilestoneRepository(session, tenant)
        self.engagements = SqlEngagementRepository(session, tenant)
        self.clients = SqlClientRepository(session, tenant)
        self.phases = SqlPhaseRepository(session, tenant)
        self.operations = SqlOperationLog(session, tenant)
        self.cursors = SqlCursorRepository(session, tenant)
        self.audit = SqlAuditLog(session, tenant)
        self.source_state = SqlSourceStateRepository(session, tenant)
        self.inbox = SqlInbox(session, tenant)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.rollback()
        finally:
            session.close()

    @property
    def _active(self) -> Session:
        if self._session is None:
            raise InvariantViolation("use the unit of work inside a `with` block")
        return self._session

    @translated
    def commit(self) -> None:
        self._active.commit()

    @translated
    def rollback(self) -> None:
        self._active.rollback()

    def __repr__(self) -> str:
        return f"SqlUnitOfWork(tenant={self.tenant_id!r})"


if TYPE_CHECKING:  # the type checker proves each class implements its port
    _uow: type[UnitOfWork] = SqlUnitOfWork
    _milestones: type[MilestoneRepository] = SqlMilestoneRepository
    _engagements: type[EngagementRepository] = SqlEngagementRepository
    _clients: type[ClientRepository] = SqlClientRepository
    _phases: type[PhaseRepository] = SqlPhaseRepository
    _operations: type[OperationLog] = SqlOperationLog
    _cursors: type[CursorRepository] = SqlCursorRepository
    _audit: type[AuditLog] = SqlAuditLog
    _source_state: type[SourceStateRepository] = SqlSourceStateRepository
    _inbox: type[Inbox] = SqlInbox
