"""The invoice stage over the in-memory ledger: backlog batches, firm numbering, emailing through
the ledger, and the ledger's change feed in the collect stage."""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters.memory.faults import Fault
from adapters.memory.store import MemoryStore
from connector.config import InvoicingPolicy
from connector.domain.ids import IdempotencyKey, LedgerCustomerId
from connector.domain.model import MilestoneState as S
from connector.domain.money import Money
from connector.ports import InvoiceDraft, InvoiceLine, OperationKind, OperationStatus
from mappings.loader import load_config_text
from tests.support import FIRM_TOML, START, ArmedFault, SimulatedCrash, new_world

TENANT = "smith-cpa"
INVOICE_ONLY = '\n[clients."CL-INVOICE"]\ncollection_mode = "invoice_only"\n'


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def uow_of(store: MemoryStore):  # type: ignore[no-untyped-def]
    return lambda: store.unit_of_work(TENANT)


def milestones(store: MemoryStore) -> list:  # type: ignore[type-arg]
    with store.unit_of_work(TENANT) as uow:
        return uow.milestones.list()


def backlog(world, count: int, client: str = "CL-ACME") -> None:  # type: ignore[no-untyped-def]
    for n in range(count):
        world.tax_return(f"WI-{n}", client=client)
        world.reach(f"WI-{n}", "In Progress", "Documents received")


def test_a_backlog_is_posted_in_batches_of_the_ledger_limit(store: MemoryStore) -> None:
    world = new_world()
    world.ledger.batch_limit = 5
    backlog(world, 12)
    world.gateway.add_method("CL-ACME")

    report = world.service(uow_of(store), invoicing=InvoicingPolicy(batch_from=10)).run_cycle()

    assert report.count("invoice") == 12
    batches = [c for c in world.ledger.calls if c.startswith("create_invoices")]
    assert batches == ["create_invoices 5", "create_invoices 5", "create_invoices 2"]
    assert not [c for c in world.ledger.calls if c.startswith("create_invoice ")]
    references = [i.reference for i in world.ledger.invoices()]
    assert len(references) == len(set(references)) == 12


def test_below_the_threshold_invoices_go_one_by_one(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 3)
    world.gateway.add_method("CL-ACME")

    world.service(uow_of(store), invoicing=InvoicingPolicy(batch_from=10)).run_cycle()

    assert len([c for c in world.ledger.calls if c.startswith("create_invoice ")]) == 3
    assert not [c for c in world.ledger.calls if c.startswith("create_invoices")]


def test_a_batch_lost_after_the_ledger_committed_is_looked_up_not_posted_again(
    store: MemoryStore,
) -> None:
    world = new_world()
    backlog(world, 12)
    world.gateway.add_method("CL-ACME")
    world.ledger.create_faults.push(Fault.TIMEOUT_AFTER_COMMIT)
    policy = InvoicingPolicy(batch_from=10)

    first = world.service(uow_of(store), invoicing=policy).run_cycle()

    assert len(world.ledger.invoices()) == 12  # the ledger took them; we did not hear back
    assert any("will retry" in p for p in first.problems)
    with store.unit_of_work(TENANT) as uow:
        pending = uow.operations.list(OperationStatus.PENDING)
    assert len([op for op in pending if op.kind is OperationKind.CREATE_INVOICE]) == 12

    world.service(uow_of(store), invoicing=policy).run_cycle()

    assert len(world.ledger.invoices()) == 12
    assert "find_invoices 12" in world.ledger.calls
    assert {m.state for m in milestones(store) if m.state is not S.PENDING} == {S.RECONCILED}


@pytest.mark.parametrize("point", ["after_intent", "after_call"])
def test_a_crash_inside_a_batch_never_duplicates_an_invoice(store: MemoryStore, point: str) -> None:
    world = new_world()
    backlog(world, 15)
    world.gateway.add_method("CL-ACME")
    policy = InvoicingPolicy(batch_from=10)
    crash = ArmedFault(point, OperationKind.CREATE_INVOICE)

    with pytest.raises(SimulatedCrash):
        world.service(uow_of(store), fault=crash, invoicing=policy).run_cycle()
    world.service(uow_of(store), invoicing=policy).run_cycle()

    references = [i.reference for i in world.ledger.invoices()]
    assert len(references) == len(set(references)) == 15
    assert {m.state for m in milestones(store) if m.state is not S.PENDING} == {S.RECONCILED}


def test_one_bad_invoice_in_a_batch_needs_attention_and_the_others_post(
    store: MemoryStore,
) -> None:
    world = new_world()
    backlog(world, 12)
    world.gateway.add_method("CL-ACME")
    # someone typed invoice MS-00005 into the ledger by hand: our fifth number collides
    world.ledger.create_invoice(
        InvoiceDraft(
            customer_id=LedgerCustomerId("58"),
            reference="typed by hand",
            lines=(InvoiceLine("Consulting", Money("10.00", "USD")),),
            issue_date=START.date(),
            doc_number="MS-00005",
        ),
        IdempotencyKey("manual"),
    )
    policy = InvoicingPolicy(batch_from=10, invoice_number="MS-{seq:05d}")

    report = world.service(uow_of(store), invoicing=policy).run_cycle()

    stuck = [m for m in milestones(store) if m.state is S.NEEDS_ATTENTION]
    assert len(stuck) == 1
    assert "MS-00005 is already used" in (stuck[0].attention_reason or "")
    assert report.count("invoice") == 11
    assert len(world.ledger.invoices()) == 12  # the hand-typed one and our eleven


def test_firm_numbering_is_fixed_before_the_call_and_survives_a_crash(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 3)
    world.gateway.add_method("CL-ACME")
    policy = InvoicingPolicy(batch_from=None, invoice_number="MS-{seq:05d}")
    crash = ArmedFault("after_call", OperationKind.CREATE_INVOICE)

    with pytest.raises(SimulatedCrash):
        world.service(uow_of(store), fault=crash, invoicing=policy).run_cycle()
    world.service(uow_of(store), invoicing=policy).run_cycle()

    numbers = sorted(i.number or "" for i in world.ledger.invoices())
    assert numbers == ["MS-00001", "MS-00002", "MS-00003"]
    assert sorted(m.invoice_number for m in milestones(store) if m.invoice_number) == numbers


def test_invoices_the_plan_sends_are_emailed_once_even_across_a_crash(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 2, client="CL-INVOICE")
    send_config = firm_config_with_send()
    crash = ArmedFault("after_call", OperationKind.SEND_INVOICE)

    with pytest.raises(SimulatedCrash):
        world.service(uow_of(store), send_config, fault=crash).run_cycle()
    world.service(uow_of(store), send_config).run_cycle()
    world.service(uow_of(store), send_config).run_cycle()

    invoices = world.ledger.invoices()
    assert len(invoices) == 2
    assert sorted(world.ledger.emails) == sorted(i.id for i in invoices)
    assert all(i.sent for i in invoices)
    assert all(m.extra.get("sent") == "yes" for m in milestones(store) if m.invoice_id)


def firm_config_with_send():  # type: ignore[no-untyped-def]
    text = FIRM_TOML.replace("__TAX_FEE__", "3000.00").replace(
        '[defaults]\nterms = "Net 15"', '[defaults]\nterms = "Net 15"\nsend_invoice = true'
    )
    assert "send_invoice = true" in text
    return load_config_text(text, "send.toml")


def test_a_cheque_recorded_in_the_ledger_is_seen_through_the_change_feed(
    store: MemoryStore,
) -> None:
    world = new_world()
    backlog(world, 3, client="CL-INVOICE")
    service = world.service(uow_of(store))
    service.run_cycle()
    invoices = world.ledger.invoices()
    assert len(invoices) == 3
    world.ledger.calls.clear()

    world.clock.advance(hours=1)
    world.ledger.pay_externally(invoices[0].id, invoices[0].total)
    service.run_cycle()

    states = {m.invoice_id: m.state for m in milestones(store) if m.invoice_id}
    assert states[invoices[0].id] is S.PAID_EXTERNALLY
    assert states[invoices[1].id] is S.INVOICED
    # unchanged invoice-only invoices cost no read of their own: the feed said they did not move
    assert [c for c in world.ledger.calls if c.startswith("get_invoice")] == []
    assert world.ledger.calls.count("changes") == 1

    world.clock.advance(hours=1)
    world.ledger.void(invoices[1].id)
    service.run_cycle()
    states = {m.invoice_id: m.state for m in milestones(store) if m.invoice_id}
    assert states[invoices[1].id] is S.VOIDED


def test_a_chargeable_invoice_is_re_read_right_before_the_charge(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 1)
    world.gateway.add_method("CL-ACME")
    service = world.service(uow_of(store))
    service.poll_sources()
    service.map_phases()
    service.issue_invoices()
    (invoice,) = world.ledger.invoices()
    world.ledger.pay_externally(invoice.id, Money("100.00", "USD"))  # part-paid by cheque
    world.ledger.calls.clear()

    service.collect_payments()

    assert f"get_invoice {invoice.id}" in world.ledger.calls
    (charge,) = world.gateway.charges()
    assert charge.amount == invoice.total - Money("100.00", "USD")


def test_the_admin_hears_when_the_ledger_budget_will_not_cover_the_backlog(
    store: MemoryStore,
) -> None:
    world = new_world()
    backlog(world, 3)
    world.ledger.calls_left_today = 2

    report = world.service(uow_of(store)).run_cycle()

    assert any("3 invoices need about 3 calls, 2 are left today" in p for p in report.problems)


def test_a_rejected_invoice_is_retried_under_a_new_key_once_the_admin_fixed_it(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-1", "In Progress", "Documents received")
    world.ledger.create_faults.push(Fault.REJECT)
    service = world.service(uow_of(store))
    service.run_cycle()
    (stuck,) = [m for m in milestones(store) if m.state is S.NEEDS_ATTENTION]
    assert "rejected" in (stuck.attention_reason or "")

    assert service.retry() == [stuck.key]
    service.run_cycle()

    (billed,) = [m for m in milestones(store) if m.key == stuck.key]
    assert billed.state is S.RECONCILED
    assert len(world.ledger.invoices()) == 1
    with store.unit_of_work(TENANT) as uow:
        creates = [o for o in uow.operations.list() if o.kind is OperationKind.CREATE_INVOICE]
    assert sorted((o.key.rsplit(":", 1)[1], o.status) for o in creates) == [
        ("0", OperationStatus.FAILED),
        ("1", OperationStatus.SUCCEEDED),
    ]


def test_a_hard_decline_is_retried_as_a_new_attempt_after_the_client_updates_their_card(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME", behaviour="decline:stolen_card")
    world.reach("WI-1", "In Progress", "Documents received")
    service = world.service(uow_of(store))
    service.run_cycle()
    (stuck,) = [m for m in milestones(store) if m.state is S.NEEDS_ATTENTION]

    world.gateway.add_method("CL-ACME")  # a new card
    service.retry([stuck.key])
    service.run_cycle()

    (paid,) = [m for m in milestones(store) if m.key == stuck.key]
    assert paid.state is S.RECONCILED
    assert paid.charge_attempts == 2
    assert [c.status for c in world.gateway.charges()] == ["failed", "succeeded"]


def test_where_the_ledger_keeps_drafts_approval_happens_there(store: MemoryStore) -> None:
    world = new_world()
    world.ledger.supports_drafts = True  # as Xero
    world.tax_return("WI-1", client="CL-APPROVE")
    world.gateway.add_method("CL-APPROVE")
    world.reach("WI-1", "In Progress", "Documents received")
    service = world.service(uow_of(store), firm_config_with_send())

    service.run_cycle()
    service.run_cycle()

    (invoice,) = world.ledger.invoices()
    assert invoice.status.value == "draft"
    assert world.gateway.charges() == [] and world.ledger.emails == []
    (waiting,) = [m for m in milestones(store) if m.invoice_id]
    assert waiting.state is S.INVOICED  # no internal approval step: the partner approves in Xero

    world.clock.advance(hours=1)
    world.ledger.approve(invoice.id)
    service.run_cycle()
    service.run_cycle()

    (paid,) = [m for m in milestones(store) if m.invoice_id]
    assert paid.state is S.RECONCILED
    assert [c.amount for c in world.gateway.charges()] == [invoice.total]
    assert world.ledger.emails == [invoice.id]


def test_milestones_remember_when_they_were_invoiced_due_and_paid(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 1)
    world.gateway.add_method("CL-ACME")
    world.service(uow_of(store)).run_cycle()

    (paid,) = [m for m in milestones(store) if m.invoice_id]
    today = world.clock.now().date()
    assert paid.extra["invoiced_on"] == today.isoformat()
    assert paid.extra["due_on"] == (today + timedelta(days=15)).isoformat()  # Net 15
    assert paid.extra["paid_on"] == today.isoformat()


def test_only_milestones_never_invoiced_can_be_voided(store: MemoryStore) -> None:
    world = new_world()
    backlog(world, 1)  # WI-0: its first milestone is invoiced and paid, two are pending
    world.gateway.add_method("CL-ACME")
    service = world.service(uow_of(store))
    service.run_cycle()
    keys = sorted(m.key for m in milestones(store))

    voided = service.void(keys, "the engagement was cancelled")

    states = {m.key: m.state for m in milestones(store)}
    assert sorted(voided) == [k for k in keys if states[k] is S.VOIDED]
    assert len(voided) == 2
    assert [s for s in states.values() if s is not S.VOIDED] == [S.RECONCILED]
