"""The money trail over the in-memory gateway and ledger: every movement of the gateway balance
is booked once through the clearing account, which always equals the gateway balance."""

from __future__ import annotations

import pytest

from adapters.memory.faults import Fault
from adapters.memory.store import MemoryStore
from connector.domain.ids import ClientKey, IdempotencyKey, LedgerCustomerId
from connector.domain.model import MilestoneState as S
from connector.domain.money import Money
from connector.ports import (
    AccountRole,
    ChargeRequest,
    InvoiceDraft,
    InvoiceLine,
    OperationKind,
    PaymentPosting,
)
from tests.support import ArmedFault, SimulatedCrash, new_world

TENANT = "smith-cpa"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def uow_of(store: MemoryStore):  # type: ignore[no-untyped-def]
    return lambda: store.unit_of_work(TENANT)


def milestones(store: MemoryStore) -> list:  # type: ignore[type-arg]
    with store.unit_of_work(TENANT) as uow:
        return uow.milestones.list()


def balance(world, role: AccountRole) -> Money:  # type: ignore[no-untyped-def]
    return world.ledger.account_balance(role)


def in_step(world) -> bool:  # type: ignore[no-untyped-def]
    return balance(world, AccountRole.CLEARING) == world.gateway.balance()


def paid_milestone(world, store, *, kind: str = "card"):  # type: ignore[no-untyped-def]
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME", kind=kind)
    world.reach("WI-1", "In Progress", "Documents received")  # 40% of 3000.00
    service = world.service(uow_of(store))
    service.run_cycle()
    (milestone,) = [m for m in milestones(store) if m.state is S.RECONCILED]
    return service, milestone


def test_a_card_payment_is_booked_gross_with_its_fee_and_a_payout_empties_clearing(
    store: MemoryStore,
) -> None:
    world = new_world()
    service, _milestone = paid_milestone(world, store)

    assert balance(world, AccountRole.CLEARING) == Money("1200.00", "USD") - Money("35.10", "USD")
    assert balance(world, AccountRole.FEES) == Money("35.10", "USD")  # 2.9% + 0.30
    assert in_step(world)

    world.clock.advance(days=2)
    world.gateway.payout()
    service.run_cycle()

    assert balance(world, AccountRole.CLEARING).is_zero()
    assert balance(world, AccountRole.BANK) == Money("1164.90", "USD")
    assert in_step(world)
    (payout,) = [e for e in world.ledger.entries() if e["type"] == "TransferEntry"]
    assert payout["reference"].startswith("po_")  # the bank feed's deposit matches one entry


def test_partial_refunds_disputes_and_returns_keep_clearing_equal_to_the_balance(
    store: MemoryStore,
) -> None:
    world = new_world()
    service, milestone = paid_milestone(world, store)
    charge = milestone.charge_id

    world.gateway.refund(charge, Money("200.00", "USD"))
    service.run_cycle()
    assert in_step(world)

    world.gateway.open_dispute(charge)
    service.run_cycle()
    assert in_step(world)
    assert balance(world, AccountRole.DISPUTES) == Money("1200.00", "USD")
    world.gateway.win_dispute(charge)
    service.run_cycle()
    assert in_step(world)
    assert balance(world, AccountRole.DISPUTES).is_zero()

    world.gateway.payout()
    world.gateway.open_dispute(charge)
    world.gateway.lose_dispute(charge)
    report = service.run_cycle()
    assert in_step(world)
    assert balance(world, AccountRole.DISPUTES).is_zero()  # written off as a refund
    assert any("dispute over 1200.00 USD was lost" in p for p in report.problems)

    world.gateway.payout()  # the balance is negative now: the gateway pulls from the bank
    service.run_cycle()
    assert balance(world, AccountRole.CLEARING).is_zero()
    assert in_step(world)
    kinds = sorted(e["type"] for e in world.ledger.entries())
    assert (
        kinds.count("RefundEntry") == 2 and kinds.count("TransferEntry") == 5
    )  # 2 holds, a release, 2 payouts
    assert {m.state for m in milestones(store) if m.invoice_id} == {S.RECONCILED}


def test_a_returned_bank_debit_is_a_new_receivable_and_the_admin_is_told(
    store: MemoryStore,
) -> None:
    world = new_world()
    service, milestone = paid_milestone(world, store, kind="us_bank_account")

    world.gateway.return_payment(milestone.charge_id)
    report = service.run_cycle()

    assert in_step(world)
    (returned,) = [e for e in world.ledger.entries() if e["type"] == "ReturnedPaymentEntry"]
    assert returned["amount"] == "1200.00"
    assert any("bank returned the payment of 1200.00 USD" in p for p in report.problems)
    assert [m.state for m in milestones(store) if m.invoice_id] == [S.RECONCILED]  # final


def test_booking_twice_books_nothing_new(store: MemoryStore) -> None:
    world = new_world()
    service, milestone = paid_milestone(world, store)
    world.gateway.refund(milestone.charge_id, Money("50.00", "USD"))
    world.gateway.payout()
    service.run_cycle()
    booked = world.ledger.entries()

    service.run_cycle()
    service.book_money_trail()

    assert world.ledger.entries() == booked
    assert in_step(world)


@pytest.mark.parametrize("point", ["after_intent", "after_call"])
def test_a_crash_while_booking_never_books_twice(store: MemoryStore, point: str) -> None:
    world = new_world()
    _service, milestone = paid_milestone(world, store)
    world.gateway.refund(milestone.charge_id, Money("50.00", "USD"))
    world.gateway.payout()
    crash = ArmedFault(point, OperationKind.POST_ENTRY)

    with pytest.raises(SimulatedCrash):
        world.service(uow_of(store), fault=crash).book_money_trail()
    world.service(uow_of(store)).book_money_trail()

    references = [(e["type"], e["reference"]) for e in world.ledger.entries()]
    assert len(references) == len(set(references))
    assert in_step(world)


def test_the_trail_waits_for_a_payment_not_yet_booked(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-1", "In Progress", "Documents received")
    world.ledger.payment_faults.push(Fault.UNAVAILABLE)
    service = world.service(uow_of(store))

    report = service.run_cycle()

    assert world.ledger.entries() == []  # not the fee before the payment
    assert any("waiting" in p for p in report.problems)
    service.run_cycle()
    assert in_step(world)
    assert len(world.ledger.entries()) == 1  # the fee, once the payment is booked


def test_money_milestone_sync_did_not_move_is_reported_not_booked(store: MemoryStore) -> None:
    world = new_world()
    service, _ = paid_milestone(world, store)
    world.gateway.add_method("CL-OTHER")
    foreign = world.gateway.charge(  # charged by hand in the gateway's dashboard
        ChargeRequest(ClientKey("CL-OTHER"), Money("99.00", "USD"), "manual"),
        IdempotencyKey("manual"),
    )
    assert foreign.status.value == "succeeded"

    report = service.run_cycle()

    assert any("not money milestone-sync charged" in p for p in report.problems)
    assert not in_step(world)  # reconcile --check will show the difference


def busy_month(world, store):  # type: ignore[no-untyped-def]
    service, milestone = paid_milestone(world, store)
    world.gateway.refund(milestone.charge_id, Money("200.00", "USD"))
    world.gateway.payout()
    world.gateway.open_dispute(milestone.charge_id)
    world.gateway.win_dispute(milestone.charge_id)
    world.gateway.refund(milestone.charge_id, Money("100.00", "USD"))
    world.gateway.payout()  # pulls the second refund back from the bank
    service.run_cycle()
    return service


def test_reconcile_check_is_clean_when_every_movement_is_booked(store: MemoryStore) -> None:
    world = new_world()
    service = busy_month(world, store)

    result = service.check_reconciliation()

    assert result.differences == []
    assert result.clearing == result.balance
    assert result.movements == 7  # payment, 2 refunds, 2 payouts, the dispute's hold and release


def test_reconcile_check_names_every_kind_of_difference(store: MemoryStore) -> None:
    world = new_world()
    service = busy_month(world, store)
    (payout, _) = [e for e in world.ledger.entries() if e["type"] == "TransferEntry"][:2]
    world.ledger.delete_entry(payout["id"])  # someone deleted a payout's transfer in the ledger
    world.gateway.add_method("CL-OTHER")
    world.gateway.charge(  # charged by hand in the gateway
        ChargeRequest(ClientKey("CL-OTHER"), Money("99.00", "USD"), "manual"),
        IdempotencyKey("manual"),
    )
    typed = world.ledger.create_invoice(  # an invoice typed into the ledger by hand...
        InvoiceDraft(
            LedgerCustomerId("58"),
            "by hand",
            (InvoiceLine("Advice", Money("10.00", "USD")),),
            world.clock.now().date(),
        ),
        IdempotencyKey("typed"),
    )
    world.ledger.record_payment(  # ...and paid into the clearing account by hand
        PaymentPosting(
            typed.id, typed.customer_id, Money("10.00", "USD"), world.clock.now().date(), "typo"
        ),
        IdempotencyKey("by-hand"),
    )

    result = service.check_reconciliation()

    kinds = {what for what, _ in result.differences}
    assert kinds >= {
        "entry missing",
        "not booked",
        "clearing differs at a payout",
        "clearing differs now",
        "ledger payment without a charge",
    }
    details = " ".join(detail for _, detail in result.differences)
    assert payout["reference"] in details and "typo" in details


def test_a_trail_that_must_wait_keeps_its_place_after_what_it_booked(store: MemoryStore) -> None:
    world = new_world()
    service, _ = paid_milestone(world, store)  # the trail has read one movement: cursor "1"

    def charged(work_item: str, client: str, customer: str) -> None:
        world.tax_return(work_item, client=client, customer=customer)
        world.gateway.add_method(client)
        world.reach(work_item, "In Progress", "Documents received")
        for stage in (service.poll_sources, service.map_phases, service.issue_invoices):
            stage()
        service.collect_payments()

    charged("WI-2", "CL-BETA", "61")
    service.reconcile_payments()  # its payment is booked
    charged("WI-3", "CL-GAMMA", "62")
    world.ledger.payment_faults.push(Fault.UNAVAILABLE)
    service.reconcile_payments()  # this one is not: the trail must wait at it

    service.book_money_trail()

    with store.unit_of_work(TENANT) as uow:
        place = uow.cursors.get("gateway", "movements")
    assert place == "2"  # after the booked second payment, before the waiting third one
    assert [e["type"] for e in world.ledger.entries()] == ["FeeEntry", "FeeEntry"]
    service.run_cycle()
    assert in_step(world)
    assert len(world.ledger.entries()) == 3
