"""The UnitOfWork contract, run against every implementation: the SQL store on SQLite and
PostgreSQL, and the in-memory store when `adapters.memory.store` provides one."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from adapters.store.engine import open_store
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
from connector.domain.model import (
    Client,
    CollectionMode,
    Engagement,
    EngagementKind,
    Milestone,
    MilestoneState,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money
from connector.ports import (
    DeliveryStatus,
    Operation,
    OperationKind,
    OperationStatus,
    PhaseStatus,
    UnitOfWork,
)

UowFactory = Callable[[TenantId], UnitOfWork]


def _memory_store_class() -> Any:
    try:
        return getattr(importlib.import_module("adapters.memory.store"), "MemoryStore", None)
    except ImportError:
        return None


IMPLEMENTATIONS = [
    pytest.param("sqlite", id="sql-sqlite"),
    pytest.param("postgres", id="sql-postgres", marks=pytest.mark.postgres),
]
if _memory_store_class() is not None:
    IMPLEMENTATIONS.append(pytest.param("memory", id="memory"))


@pytest.fixture(params=IMPLEMENTATIONS)
def uow_factory(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> UowFactory:
    """`tenant -> UnitOfWork` over an empty store of one implementation."""
    if request.param == "memory":
        memory_store = _memory_store_class()()
        return lambda tenant: memory_store.unit_of_work(tenant)
    store = open_store(make_store_url(request.param))
    request.addfinalizer(store.dispose)
    return store.unit_of_work


TENANT = TenantId("smith-cpa")
OTHER_TENANT = TenantId("jones-llp")
T0 = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def a_milestone(key: str = "karbon:WI-1:kickoff", **changes: Any) -> Milestone:
    milestone = Milestone(
        key=MilestoneKey(key),
        source=SourceId("karbon"),
        work_item=WorkItemKey("WI-1"),
        client_key=ClientKey("CL-ACME"),
        plan_id=PlanId("tax-return"),
        definition_id=MilestoneDefId("kickoff"),
        description="Documents received",
        amount=Money("1200.00", "USD"),
        collection_mode=CollectionMode.AUTO_CHARGE,
        config_revision=ConfigRevision("rev-1"),
    )
    return dataclasses.replace(milestone, **changes)


def a_full_milestone() -> Milestone:
    """Every optional field set, so a round trip proves each column."""
    return a_milestone(
        state=MilestoneState.NEEDS_ATTENTION,
        period="2026-Q1",
        planned_date=date(2026, 3, 31),
        triggered_at=T0,
        ledger_customer_id=LedgerCustomerId("58"),
        item="Tax prep",
        tax_code="NON",
        terms="Net 15",
        send_invoice=True,
        invoice_id=LedgerInvoiceId("inv-9"),
        invoice_number="1009",
        charge_id=ChargeId("ch_1"),
        charge_attempts=2,
        next_charge_at=T0 + timedelta(days=3),
        ledger_payment_id=LedgerPaymentId("pay-1"),
        attention_reason="card declined: do_not_honor",
        resume_state=MilestoneState.COLLECTING,
        version=0,
        extra={"note": "first client of the year", "ünïcode": "✓"},
    )


def an_engagement(key: str = "WI-1", **changes: Any) -> Engagement:
    engagement = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey(key),
        client_key=ClientKey("CL-ACME"),
        client_name="Acme Ltd",
        title="2025 tax return",
        kind=EngagementKind.WORK_ITEM,
        work_type="Tax Return",
        template="1040",
        fee=Money("3000.00", "USD"),
        period=None,
        start_date=date(2026, 1, 5),
        due_date=date(2026, 4, 15),
        ledger_customer_id=LedgerCustomerId("58"),
    )
    return dataclasses.replace(engagement, **changes)


def a_phase(completion: str = "2026-03-01T09:30:15Z", **changes: Any) -> PhaseCompletion:
    phase = PhaseCompletion(
        source=SourceId("karbon"),
        work_item=WorkItemKey("WI-1"),
        kind=TriggerKind.STATUS,
        phase="In Progress",
        completed_at=T0,
        completion=completion,
        secondary="Documents received",
    )
    return dataclasses.replace(phase, **changes)


def an_operation(key: str = "create_invoice:smith-cpa:m1:1", **changes: Any) -> Operation:
    operation = Operation(
        key=IdempotencyKey(key),
        kind=OperationKind.CREATE_INVOICE,
        subject=MilestoneKey("karbon:WI-1:kickoff"),
        payload_hash="sha256:abc",
        status=OperationStatus.PENDING,
        created_at=T0,
        updated_at=T0,
    )
    return dataclasses.replace(operation, **changes)


# --------------------------------------------------------------------------- milestones


def test_a_milestone_round_trips_with_every_field(uow_factory: UowFactory) -> None:
    milestone = a_full_milestone()
    with uow_factory(TENANT) as uow:
        uow.milestones.add(milestone)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.milestones.get(milestone.key) == milestone
        assert uow.milestones.get(MilestoneKey("no-such-key")) is None


@pytest.mark.parametrize(
    "amount",
    [
        Money("1200.00", "USD"),
        Money("0.01", "USD"),
        Money("-15.50", "EUR"),
        Money("150000", "JPY"),
        Money("12.345", "KWD"),
        Money("92233720368547758.07", "USD"),  # 2**63 - 1 minor units: needs a 64-bit column
    ],
    ids=str,
)
def test_money_round_trips_exactly_in_minor_units(uow_factory: UowFactory, amount: Money) -> None:
    milestone = a_milestone(amount=amount)
    with uow_factory(TENANT) as uow:
        uow.milestones.add(milestone)
        uow.commit()
    with uow_factory(TENANT) as uow:
        stored = uow.milestones.get(milestone.key)
    assert stored is not None
    assert stored.amount == amount
    assert stored.amount.currency == amount.currency
    assert stored.amount.minor == amount.minor


def test_datetimes_come_back_timezone_aware_and_equal(uow_factory: UowFactory) -> None:
    tokyo = timezone(timedelta(hours=9))
    triggered = datetime(2026, 3, 2, 8, 0, 0, 500, tzinfo=tokyo)
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone(triggered_at=triggered))
        uow.phases.add(a_phase(completed_at=triggered))
        uow.commit()
    with uow_factory(TENANT) as uow:
        stored = uow.milestones.get(a_milestone().key)
        [phase] = uow.phases.list()
    assert stored is not None and stored.triggered_at is not None
    assert stored.triggered_at.tzinfo is not None
    assert stored.triggered_at == triggered
    assert phase.phase.completed_at.tzinfo is not None
    assert phase.phase.completed_at == triggered


def test_adding_a_milestone_twice_is_refused(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.commit()
    with uow_factory(TENANT) as uow, pytest.raises(InvariantViolation):
        uow.milestones.add(a_milestone(description="again"))


def test_update_saves_changes_and_bumps_the_version(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.commit()
    with uow_factory(TENANT) as uow:
        stored = uow.milestones.get(a_milestone().key)
        assert stored is not None and stored.version == 0
        triggered = stored.transition(MilestoneState.TRIGGERED, triggered_at=T0)
        saved = uow.milestones.update(triggered)
        assert saved.version == 1
        assert saved == dataclasses.replace(triggered, version=1)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.milestones.get(a_milestone().key) == saved


def test_a_stale_version_is_refused(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.commit()
    with uow_factory(TENANT) as uow:
        stale = uow.milestones.get(a_milestone().key)
        assert stale is not None
        uow.milestones.update(stale.with_changes(description="first"))
        uow.commit()
    with uow_factory(TENANT) as uow, pytest.raises(InvariantViolation):
        uow.milestones.update(stale.with_changes(description="second"))
        uow.commit()
    with uow_factory(TENANT) as uow:
        current = uow.milestones.get(a_milestone().key)
    assert current is not None
    assert (current.description, current.version) == ("first", 1)


def test_two_units_of_work_racing_on_one_milestone_let_only_one_win(
    uow_factory: UowFactory,
) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.commit()
    with uow_factory(TENANT) as first, uow_factory(TENANT) as second:
        mine = first.milestones.get(a_milestone().key)
        theirs = second.milestones.get(a_milestone().key)
        assert mine is not None and theirs is not None
        second.milestones.update(theirs.with_changes(description="theirs"))
        second.commit()
        # where the conflict surfaces (update or commit) is the implementation's choice
        with pytest.raises(InvariantViolation):
            first.milestones.update(mine.with_changes(description="mine"))
            first.commit()
    with uow_factory(TENANT) as uow:
        current = uow.milestones.get(a_milestone().key)
    assert current is not None
    assert (current.description, current.version) == ("theirs", 1)


def test_milestones_are_listed_by_state_and_work_item(uow_factory: UowFactory) -> None:
    kickoff = a_milestone("karbon:WI-1:kickoff", state=MilestoneState.TRIGGERED)
    final = a_milestone("karbon:WI-1:final")
    other = a_milestone("karbon:WI-2:kickoff", work_item=WorkItemKey("WI-2"))
    with uow_factory(TENANT) as uow:
        for milestone in (kickoff, final, other):
            uow.milestones.add(milestone)
        uow.commit()
    with uow_factory(TENANT) as uow:
        every = uow.milestones.list()
        pending = uow.milestones.list(frozenset({MilestoneState.PENDING}))
        either = uow.milestones.list(frozenset({MilestoneState.PENDING, MilestoneState.TRIGGERED}))
        none = uow.milestones.list(frozenset())
        wi1 = uow.milestones.list(work_item=(SourceId("karbon"), WorkItemKey("WI-1")))
        wi1_pending = uow.milestones.list(
            frozenset({MilestoneState.PENDING}), (SourceId("karbon"), WorkItemKey("WI-1"))
        )
    assert sorted(m.key for m in every) == sorted([kickoff.key, final.key, other.key])
    assert sorted(m.key for m in pending) == sorted([final.key, other.key])
    assert len(either) == 3
    assert none == []
    assert sorted(m.key for m in wi1) == sorted([kickoff.key, final.key])
    assert [m.key for m in wi1_pending] == [final.key]


# --------------------------------------------------------------------------- transactions


def test_only_committed_work_is_kept(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone("committed"))
        uow.commit()
        uow.milestones.add(a_milestone("left-uncommitted"))
    with uow_factory(TENANT) as uow:
        assert [m.key for m in uow.milestones.list()] == ["committed"]


def test_rollback_discards_and_the_unit_of_work_goes_on(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone("rolled-back"))
        uow.cursors.set("karbon", "work_items", "c1")
        uow.rollback()
        assert uow.milestones.get(MilestoneKey("rolled-back")) is None
        uow.milestones.add(a_milestone("after-rollback"))
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert [m.key for m in uow.milestones.list()] == ["after-rollback"]
        assert uow.cursors.get("karbon", "work_items") is None


def test_an_exception_rolls_everything_back(uow_factory: UowFactory) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.engagements.upsert(an_engagement())
        uow.phases.add(a_phase())
        uow.operations.add(an_operation())
        uow.audit.record(AuditEvent(T0, "invoice.created", "m1", "created"))
        raise Boom
    with uow_factory(TENANT) as uow:
        assert uow.milestones.list() == []
        assert uow.engagements.list() == []
        assert uow.phases.list() == []
        assert uow.operations.list() == []
        assert uow.audit.list() == []


def test_tenants_never_see_each_other(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.milestones.add(a_milestone())
        uow.engagements.upsert(an_engagement())
        uow.clients.upsert(Client(SourceId("karbon"), ClientKey("CL-ACME"), "Acme Ltd"))
        uow.phases.add(a_phase())
        uow.operations.add(an_operation())
        uow.cursors.set("karbon", "work_items", "c1")
        uow.audit.record(AuditEvent(T0, "invoice.created", "m1", "created"))
        uow.commit()
    with uow_factory(OTHER_TENANT) as uow:
        assert uow.milestones.list() == []
        assert uow.milestones.get(a_milestone().key) is None
        assert uow.engagements.list() == []
        assert uow.clients.list() == []
        assert uow.phases.list() == []
        assert uow.operations.get(an_operation().key) is None
        assert uow.cursors.get("karbon", "work_items") is None
        assert uow.audit.list() == []
        # the same natural keys are free in another tenant
        uow.milestones.add(a_milestone())
        assert uow.phases.add(a_phase()) is True
        uow.operations.add(an_operation())
        uow.commit()


# --------------------------------------------------------------------------- engagements, clients


def test_engagement_upsert_reports_new_and_changed(uow_factory: UowFactory) -> None:
    engagement = an_engagement()
    with uow_factory(TENANT) as uow:
        assert uow.engagements.upsert(engagement) is True
        assert uow.engagements.upsert(engagement) is False
        uow.commit()
    changed = dataclasses.replace(engagement, title="2025 tax return (amended)", fee=None)
    with uow_factory(TENANT) as uow:
        assert uow.engagements.upsert(engagement) is False
        assert uow.engagements.upsert(changed) is True
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.engagements.get(SourceId("karbon"), WorkItemKey("WI-1")) == changed
        assert uow.engagements.get(SourceId("keeper"), WorkItemKey("WI-1")) is None
        assert uow.engagements.list() == [changed]


def test_engagements_round_trip_with_every_field(uow_factory: UowFactory) -> None:
    work_item = an_engagement("WI-1")
    close = an_engagement(
        "CL-ACME:2026-10",
        kind=EngagementKind.RECURRING_CLOSE,
        fee=Money("45000", "JPY"),
        period="2026-10",
        work_type=None,
        template=None,
        start_date=None,
        due_date=None,
        ledger_customer_id=None,
    )
    with uow_factory(TENANT) as uow:
        uow.engagements.upsert(work_item)
        uow.engagements.upsert(close)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.engagements.get(work_item.source, work_item.key) == work_item
        assert uow.engagements.get(close.source, close.key) == close
        assert sorted(uow.engagements.list(), key=lambda e: e.key) == sorted(
            [work_item, close], key=lambda e: e.key
        )


def test_clients_upsert_get_and_list(uow_factory: UowFactory) -> None:
    acme = Client(SourceId("karbon"), ClientKey("CL-ACME"), "Acme Ltd")
    beta = Client(SourceId("keeper"), ClientKey("42"), "Beta LLC", LedgerCustomerId("59"))
    with uow_factory(TENANT) as uow:
        uow.clients.upsert(acme)
        uow.clients.upsert(beta)
        uow.commit()
    renamed = dataclasses.replace(
        acme, name="Acme Holdings", ledger_customer_id=LedgerCustomerId("58")
    )
    with uow_factory(TENANT) as uow:
        uow.clients.upsert(renamed)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.clients.get(SourceId("karbon"), ClientKey("CL-ACME")) == renamed
        assert uow.clients.get(SourceId("keeper"), ClientKey("42")) == beta
        assert uow.clients.get(SourceId("keeper"), ClientKey("CL-ACME")) is None
        assert sorted(uow.clients.list(), key=lambda c: c.key) == sorted(
            [renamed, beta], key=lambda c: c.key
        )


# --------------------------------------------------------------------------- phases


def test_a_phase_is_stored_once_per_natural_key(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        assert uow.phases.add(a_phase()) is True
        assert uow.phases.add(a_phase()) is False
        # same natural key: statuses compare without case or spaces
        assert uow.phases.add(a_phase(phase="inprogress", secondary="DOCUMENTS RECEIVED")) is False
        # the transaction is still usable after a duplicate
        assert uow.phases.add(a_phase(completion="2026-03-09T10:00:00Z")) is True
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.phases.add(a_phase()) is False
        stored = uow.phases.list()
    assert [p.phase for p in stored] == [a_phase(), a_phase(completion="2026-03-09T10:00:00Z")]
    assert all(p.status is PhaseStatus.NEW and p.reason is None for p in stored)
    assert len({p.id for p in stored}) == 2


def test_phases_round_trip_and_are_marked(uow_factory: UowFactory) -> None:
    close = a_phase(
        work_item=WorkItemKey("CL-ACME:2026-10"),
        kind=TriggerKind.CLOSE_STATUS,
        phase="Completed",
        secondary=None,
        completion="2026-10",
        reopened=True,
    )
    with uow_factory(TENANT) as uow:
        uow.phases.add(a_phase())
        uow.phases.add(close)
        uow.commit()
    with uow_factory(TENANT) as uow:
        first, second = uow.phases.list()
        assert (first.phase, second.phase) == (a_phase(), close)
        uow.phases.mark(first.id, PhaseStatus.MAPPED)
        uow.phases.mark(second.id, PhaseStatus.UNMAPPED, "no plan matches work type 'Audit'")
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert [p.phase for p in uow.phases.list(PhaseStatus.MAPPED)] == [a_phase()]
        [unmapped] = uow.phases.list(PhaseStatus.UNMAPPED)
        assert unmapped.phase == close
        assert unmapped.reason == "no plan matches work type 'Audit'"
        assert uow.phases.list(PhaseStatus.NEW) == []


# --------------------------------------------------------------------------- operations


def test_operations_round_trip_update_and_list(uow_factory: UowFactory) -> None:
    invoice = an_operation("op-invoice")
    charge = an_operation(
        "op-charge",
        kind=OperationKind.CHARGE,
        subject=MilestoneKey("karbon:WI-2:kickoff"),
        created_at=T0 + timedelta(minutes=1),
        updated_at=T0 + timedelta(minutes=1),
    )
    with uow_factory(TENANT) as uow:
        uow.operations.add(invoice)
        uow.operations.add(charge)
        uow.commit()
    done = dataclasses.replace(
        invoice,
        status=OperationStatus.SUCCEEDED,
        external_id="inv-9",
        attempts=1,
        updated_at=T0 + timedelta(minutes=5),
    )
    failed = dataclasses.replace(
        charge, status=OperationStatus.FAILED, attempts=3, last_error="card_declined"
    )
    with uow_factory(TENANT) as uow:
        assert uow.operations.get(invoice.key) == invoice
        assert uow.operations.get(IdempotencyKey("nope")) is None
        uow.operations.update(done)
        uow.operations.update(failed)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.operations.get(invoice.key) == done
        assert uow.operations.list() == [done, failed]
        assert uow.operations.list(OperationStatus.FAILED) == [failed]
        assert uow.operations.list(OperationStatus.PENDING) == []
        assert uow.operations.list(subject=MilestoneKey("karbon:WI-2:kickoff")) == [failed]
        assert uow.operations.list(OperationStatus.SUCCEEDED, charge.subject) == []


def test_an_operation_key_is_recorded_once(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        uow.operations.add(an_operation())
        uow.commit()
    with uow_factory(TENANT) as uow:
        with pytest.raises(InvariantViolation):
            uow.operations.add(an_operation(payload_hash="sha256:other"))
        # the refusal leaves the transaction usable
        uow.operations.add(an_operation("another-key"))
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.operations.get(an_operation().key) == an_operation()
        assert len(uow.operations.list()) == 2


# --------------------------------------------------------------------------- cursors, audit


def test_cursors_are_set_and_read_per_system_and_stream(uow_factory: UowFactory) -> None:
    with uow_factory(TENANT) as uow:
        assert uow.cursors.get("karbon", "work_items") is None
        uow.cursors.set("karbon", "work_items", "2026-03-01T00:00:00Z")
        uow.cursors.set("karbon", "contacts", "page-7")
        uow.cursors.set("keeper", "work_items", "k-1")
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.cursors.get("karbon", "work_items") == "2026-03-01T00:00:00Z"
        uow.cursors.set("karbon", "work_items", "2026-03-02T00:00:00Z")
        uow.cursors.set("keeper", "work_items", None)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.cursors.get("karbon", "work_items") == "2026-03-02T00:00:00Z"
        assert uow.cursors.get("karbon", "contacts") == "page-7"
        assert uow.cursors.get("keeper", "work_items") is None


def test_the_audit_log_lists_newest_first(uow_factory: UowFactory) -> None:
    events = [
        AuditEvent(
            T0 + timedelta(seconds=i), "invoice.created", f"m{i % 2}", f"event {i}", {"n": str(i)}
        )
        for i in range(5)
    ]
    with uow_factory(TENANT) as uow:
        for event in events:
            uow.audit.record(event)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.audit.list() == list(reversed(events))
        assert uow.audit.list(limit=2) == [events[4], events[3]]
        assert uow.audit.list(subject="m1") == [events[3], events[1]]
        assert uow.audit.list(limit=1, subject="m0") == [events[4]]


# --------------------------------------------------------------------------- source state, inbox


def test_source_snapshots_are_kept_per_source_and_replaced(uow_factory: UowFactory) -> None:
    karbon, keeper = SourceId("karbon"), SourceId("closes")
    with uow_factory(TENANT) as uow:
        uow.source_state.put_many(karbon, {f"wi-{i}": f"v{i}" for i in range(600)})
        uow.source_state.put_many(keeper, {"wi-1": "other"})
        uow.commit()
    with uow_factory(TENANT) as uow:
        uow.source_state.put_many(karbon, {"wi-1": "changed"})
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.source_state.get_many(karbon, ["wi-1", "wi-2", "missing"]) == {
            "wi-1": "changed",
            "wi-2": "v2",
        }
        everything = uow.source_state.all(karbon)
        assert len(everything) == 600 and everything["wi-599"] == "v599"
        # more keys than one IN list holds
        assert len(uow.source_state.get_many(karbon, [f"wi-{i}" for i in range(600)])) == 600
        assert uow.source_state.all(keeper) == {"wi-1": "other"}
    with uow_factory(OTHER_TENANT) as uow:
        assert uow.source_state.all(karbon) == {}


def test_the_inbox_stores_a_delivery_once_and_tracks_its_status(uow_factory: UowFactory) -> None:
    karbon = SourceId("karbon")
    with uow_factory(TENANT) as uow:
        assert uow.inbox.add(karbon, "Work", "wi-1", "Work:wi-1:T1", '{"a":1}', T0)
        assert not uow.inbox.add(karbon, "Work", "wi-1", "Work:wi-1:T1", '{"a":1}', T0)
        assert uow.inbox.add(karbon, "Work", "wi-1", "Work:wi-1:T2", '{"a":2}', T0)
        assert uow.inbox.add(SourceId("closes"), "close", "c-1", "Work:wi-1:T1", "{}", T0)
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert not uow.inbox.add(karbon, "Work", "wi-1", "Work:wi-1:T1", '{"a":1}', T0)
        pending = uow.inbox.pending(karbon)
        assert [(d.resource, d.body, d.received_at) for d in pending] == [
            ("wi-1", '{"a":1}', T0),
            ("wi-1", '{"a":2}', T0),
        ]
        assert uow.inbox.pending(karbon, limit=1) == pending[:1]
        uow.inbox.mark([pending[0].id], DeliveryStatus.DONE)
        uow.inbox.mark([pending[1].id], DeliveryStatus.FAILED, "work item wi-1 is hidden")
        uow.commit()
    with uow_factory(TENANT) as uow:
        assert uow.inbox.pending(karbon) == []
        recent = uow.inbox.recent(karbon)
        assert [(r.status, r.note) for r in recent] == [
            (DeliveryStatus.FAILED, "work item wi-1 is hidden"),
            (DeliveryStatus.DONE, None),
        ]
        assert uow.inbox.counts() == {
            ("karbon", DeliveryStatus.DONE): 1,
            ("karbon", DeliveryStatus.FAILED): 1,
            ("closes", DeliveryStatus.PENDING): 1,
        }
    with uow_factory(OTHER_TENANT) as uow:
        assert uow.inbox.pending(karbon) == []
        assert uow.inbox.add(karbon, "Work", "wi-1", "Work:wi-1:T1", "{}", T0)
