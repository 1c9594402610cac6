"""An in-memory state store with the same transactional contract as the SQL store."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Self

from connector.domain.errors import InvariantViolation
from connector.domain.events import AuditEvent
from connector.domain.ids import ClientKey, IdempotencyKey, MilestoneKey, SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, Milestone, MilestoneState, PhaseCompletion
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
)


@dataclass
class _Tables:
    milestones: dict[MilestoneKey, Milestone] = field(default_factory=dict)
    engagements: dict[tuple[str, str], Engagement] = field(default_factory=dict)
    clients: dict[tuple[str, str], Client] = field(default_factory=dict)
    phases: dict[int, StoredPhase] = field(default_factory=dict)
    phase_keys: set[tuple[str, str, str, str]] = field(default_factory=set)
    operations: dict[IdempotencyKey, Operation] = field(default_factory=dict)
    cursors: dict[tuple[str, str], str | None] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    next_phase_id: int = 1
    source_state: dict[tuple[str, str], str] = field(default_factory=dict)
    inbox: dict[int, StoredDelivery] = field(default_factory=dict)
    inbox_keys: set[tuple[str, str]] = field(default_factory=set)
    next_delivery_id: int = 1


class MemoryStore:
    """Holds one set of tables per tenant; units of work copy them and swap on commit."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tables] = {}
        self._lock = threading.Lock()

    def unit_of_work(self, tenant_id: str) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self, tenant_id)

    def _snapshot(self, tenant: str) -> _Tables:
        with self._lock:
            return _copy(self._tenants.setdefault(tenant, _Tables()))

    def _commit(self, tenant: str, tables: _Tables, expected: dict[MilestoneKey, int]) -> None:
        with self._lock:
            current = self._tenants.setdefault(tenant, _Tables())
            for key, version in expected.items():
                stored = current.milestones.get(key)
                if stored is not None and stored.version != version:
                    raise InvariantViolation(f"milestone {key} was changed by another transaction")
            self._tenants[tenant] = _copy(tables)


def _copy(tables: _Tables) -> _Tables:
    """A copy of every table; the rows are frozen dataclasses, shared rather than copied (a
    deep copy made each transaction cost as much as the whole store)."""
    return _Tables(
        **{f.name: copy.copy(getattr(tables, f.name)) for f in dataclasses.fields(_Tables)}
    )


class _Milestones:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def get(self, key: MilestoneKey) -> Milestone | None:
        return self._uow._t.milestones.get(key)

    def add(self, milestone: Milestone) -> None:
        if milestone.key in self._uow._t.milestones:
            raise InvariantViolation(f"milestone {milestone.key} already exists")
        self._uow._t.milestones[milestone.key] = milestone

    def update(self, milestone: Milestone) -> Milestone:
        stored = self._uow._t.milestones.get(milestone.key)
        if stored is None or stored.version != milestone.version:
            raise InvariantViolation(
                f"milestone {milestone.key}: stale version {milestone.version}"
            )
        self._uow._expected.setdefault(milestone.key, stored.version)
        saved = dataclasses.replace(milestone, version=milestone.version + 1)
        self._uow._t.milestones[milestone.key] = saved
        return saved

    def list(
        self,
        states: frozenset[MilestoneState] | None = None,
        work_item: tuple[SourceId, WorkItemKey] | None = None,
    ) -> list[Milestone]:
        found = [
            m
            for m in self._uow._t.milestones.values()
            if (states is None or m.state in states)
            and (work_item is None or (m.source, m.work_item) == work_item)
        ]
        return sorted(found, key=lambda m: m.key)


class _Engagements:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def upsert(self, engagement: Engagement) -> bool:
        key = (engagement.source, engagement.key)
        changed = self._uow._t.engagements.get(key) != engagement
        self._uow._t.engagements[key] = engagement
        return changed

    def get(self, source: SourceId, key: WorkItemKey) -> Engagement | None:
        return self._uow._t.engagements.get((source, key))

    def list(self) -> list[Engagement]:
        return sorted(self._uow._t.engagements.values(), key=lambda e: (e.source, e.key))


class _Clients:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def upsert(self, client: Client) -> None:
        self._uow._t.clients[(client.source, client.key)] = client

    def get(self, source: SourceId, key: ClientKey) -> Client | None:
        return self._uow._t.clients.get((source, key))

    def list(self) -> list[Client]:
        return sorted(self._uow._t.clients.values(), key=lambda c: (c.source, c.key))


class _Phases:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def add(self, phase: PhaseCompletion) -> bool:
        t = self._uow._t
        if phase.natural_key in t.phase_keys:
            return False
        t.phase_keys.add(phase.natural_key)
        t.phases[t.next_phase_id] = StoredPhase(t.next_phase_id, phase, PhaseStatus.NEW)
        t.next_phase_id += 1
        return True

    def list(self, status: PhaseStatus | None = None) -> list[StoredPhase]:
        return [
            p
            for _, p in sorted(self._uow._t.phases.items())
            if status is None or p.status is status
        ]

    def mark(self, phase_id: int, status: PhaseStatus, reason: str | None = None) -> None:
        stored = self._uow._t.phases[phase_id]
        self._uow._t.phases[phase_id] = dataclasses.replace(stored, status=status, reason=reason)


class _Operations:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def get(self, key: IdempotencyKey) -> Operation | None:
        return self._uow._t.operations.get(key)

    def add(self, operation: Operation) -> None:
        if operation.key in self._uow._t.operations:
            raise InvariantViolation(f"operation {operation.key} already recorded")
        self._uow._t.operations[operation.key] = operation

    def update(self, operation: Operation) -> None:
        if operation.key not in self._uow._t.operations:
            raise InvariantViolation(f"operation {operation.key} was never recorded")
        self._uow._t.operations[operation.key] = operation

    def list(
        self, status: OperationStatus | None = None, subject: MilestoneKey | None = None
    ) -> list[Operation]:
        return [
            op
            for op in sorted(self._uow._t.operations.values(), key=lambda o: o.created_at)
            if (status is None or op.status is status)
            and (subject is None or op.subject == subject)
        ]


class _Cursors:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def get(self, system: str, stream: str) -> str | None:
        return self._uow._t.cursors.get((system, stream))

    def set(self, system: str, stream: str, value: str | None) -> None:
        self._uow._t.cursors[(system, stream)] = value


class _Audit:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def record(self, event: AuditEvent) -> None:
        self._uow._t.audit.append(event)

    def list(self, limit: int = 100, subject: str | None = None) -> list[AuditEvent]:
        events = [e for e in self._uow._t.audit if subject is None or e.subject == subject]
        return list(reversed(events))[:limit]


class _SourceState:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def get_many(self, source: SourceId, keys: Collection[str]) -> dict[str, str]:
        state = self._uow._t.source_state
        return {k: state[(source, k)] for k in keys if (source, k) in state}

    def all(self, source: SourceId) -> dict[str, str]:
        return {k: v for (s, k), v in self._uow._t.source_state.items() if s == source}

    def put_many(self, source: SourceId, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._uow._t.source_state[(source, key)] = value


class _Inbox:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def add(
        self,
        source: SourceId,
        topic: str,
        resource: str,
        dedupe_key: str,
        body: str,
        received_at: datetime,
    ) -> bool:
        t = self._uow._t
        if (source, dedupe_key) in t.inbox_keys:
            return False
        t.inbox_keys.add((source, dedupe_key))
        delivery = Delivery(t.next_delivery_id, source, topic, resource, received_at, body)
        t.inbox[delivery.id] = StoredDelivery(delivery, DeliveryStatus.PENDING)
        t.next_delivery_id += 1
        return True

    def pending(self, source: SourceId, limit: int = 500) -> list[Delivery]:
        found = [
            d.delivery
            for _, d in sorted(self._uow._t.inbox.items())
            if d.delivery.source == source and d.status is DeliveryStatus.PENDING
        ]
        return found[:limit]

    def mark(self, ids: Collection[int], status: DeliveryStatus, note: str | None = None) -> None:
        for delivery_id in ids:
            stored = self._uow._t.inbox[delivery_id]
            self._uow._t.inbox[delivery_id] = dataclasses.replace(stored, status=status, note=note)

    def recent(self, source: SourceId | None = None, limit: int = 50) -> list[StoredDelivery]:
        found = [
            d
            for _, d in sorted(self._uow._t.inbox.items(), reverse=True)
            if source is None or d.delivery.source == source
        ]
        return found[:limit]

    def counts(self) -> dict[tuple[str, DeliveryStatus], int]:
        counts: dict[tuple[str, DeliveryStatus], int] = {}
        for d in self._uow._t.inbox.values():
            key = (str(d.delivery.source), d.status)
            counts[key] = counts.get(key, 0) + 1
        return counts


class MemoryUnitOfWork:
    def __init__(self, store: MemoryStore, tenant: str) -> None:
        self._store = store
        self._tenant = tenant
        self._t = _Tables()
        self._expected: dict[MilestoneKey, int] = {}
        self.milestones: MilestoneRepository = _Milestones(self)
        self.engagements: EngagementRepository = _Engagements(self)
        self.clients: ClientRepository = _Clients(self)
        self.phases: PhaseRepository = _Phases(self)
        self.operations: OperationLog = _Operations(self)
        self.cursors: CursorRepository = _Cursors(self)
        self.audit: AuditLog = _Audit(self)
        self.source_state: SourceStateRepository = _SourceState(self)
        self.inbox: Inbox = _Inbox(self)

    def __enter__(self) -> Self:
        self._t = self._store._snapshot(self._tenant)
        self._expected = {}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()

    def commit(self) -> None:
        self._store._commit(self._tenant, self._t, self._expected)
        self._expected = {}
        self._t = self._store._snapshot(self._tenant)

    def rollback(self) -> None:
        self._t = self._store._snapshot(self._tenant)
        self._expected = {}
