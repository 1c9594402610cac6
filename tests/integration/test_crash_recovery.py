"""Crash at every recovery point, restart on the real store, and check the money invariants:
each milestone ends with exactly one invoice, at most one charge per attempt, one payment."""

from __future__ import annotations

from collections import Counter

import pytest

from adapters.store.engine import open_store
from connector.domain.model import MilestoneState
from connector.ports import OperationKind, OperationStatus
from tests.support import ArmedFault, SimulatedCrash, World, new_world

TENANT = "smith-cpa"
POINTS = ["after_intent", "after_call"]
KINDS = [OperationKind.CREATE_INVOICE, OperationKind.CHARGE, OperationKind.RECORD_PAYMENT]


def busy_world() -> World:
    world = new_world()
    for key, client, customer in (("WI-1", "CL-ACME", "58"), ("WI-2", "CL-BETA", "59")):
        world.tax_return(key, client=client, customer=customer)
        world.gateway.add_method(client)
        world.finish_all_phases(key)
    return world


def assert_money_invariants(world: World, store_url: str) -> None:
    store = open_store(store_url)
    try:
        with store.unit_of_work(TENANT) as uow:
            milestones = uow.milestones.list()
            operations = uow.operations.list()
    finally:
        store.dispose()
    assert len(milestones) == 6
    assert {m.state for m in milestones} == {MilestoneState.RECONCILED}
    invoices_per_milestone = Counter(i.reference for i in world.ledger.invoices())
    assert invoices_per_milestone == Counter({m.key: 1 for m in milestones})
    charges = world.gateway.charges()
    assert len(charges) == 6
    assert sorted(m.charge_id for m in milestones) == sorted(c.id for c in charges)
    payments = Counter(p["reference"] for p in world.ledger.payments())
    assert payments == Counter({c.id: 1 for c in charges})
    assert all(i.balance.is_zero() for i in world.ledger.invoices())
    assert {op.status for op in operations} == {OperationStatus.SUCCEEDED}


@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_recovery_point_never_duplicates_money(
    store_url: str, point: str, kind: OperationKind
) -> None:
    world = busy_world()
    fault = ArmedFault(point, kind)
    store = open_store(store_url)
    try:
        with pytest.raises(SimulatedCrash):
            world.service(lambda: store.unit_of_work(TENANT), fault=fault).run_cycle()
    finally:
        store.dispose()  # the process is gone; only the database and the vendors remain
    assert fault.fired

    restarted = open_store(store_url)
    try:
        service = world.service(lambda: restarted.unit_of_work(TENANT))
        with restarted.unit_of_work(TENANT) as uow:
            pending = uow.operations.list(OperationStatus.PENDING)
        assert [op.kind for op in pending] == [kind]  # the intent survived the crash
        for _ in range(2):
            service.run_cycle()
    finally:
        restarted.dispose()

    assert_money_invariants(world, store_url)
    if point == "after_call":
        # the vendor had done it: recovery looked it up instead of sending it again
        sent = {
            OperationKind.CREATE_INVOICE: [c for c in world.ledger.calls if c.startswith("create")],
            OperationKind.CHARGE: world.gateway.calls,
            OperationKind.RECORD_PAYMENT: [c for c in world.ledger.calls if c.startswith("record")],
        }[kind]
        assert len(sent) == 6


@pytest.mark.parametrize("point", POINTS)
def test_repeated_crashes_in_a_row_still_converge(store_url: str, point: str) -> None:
    world = busy_world()
    for kind in KINDS:
        store = open_store(store_url)
        try:
            with pytest.raises(SimulatedCrash):
                world.service(store.uow_factory(TENANT), fault=ArmedFault(point, kind)).run_cycle()
        finally:
            store.dispose()
    store = open_store(store_url)
    try:
        world.service(lambda: store.unit_of_work(TENANT)).run_cycle()
    finally:
        store.dispose()
    assert_money_invariants(world, store_url)
