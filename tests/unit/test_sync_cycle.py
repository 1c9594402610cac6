"""The sync cycle end to end over the in-memory adapters: billing, collection, recovery paths."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from adapters.memory.faults import Fault
from adapters.memory.store import MemoryStore
from connector.domain.errors import InvariantViolation
from connector.domain.model import MilestoneState as S
from connector.domain.money import Money
from connector.ports import OperationStatus, PhaseStatus
from tests.support import firm_config, new_world

TENANT = "smith-cpa"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def uow_of(store: MemoryStore):  # type: ignore[no-untyped-def]
    return lambda: store.unit_of_work(TENANT)


def milestones(store: MemoryStore) -> dict[str, object]:
    with store.unit_of_work(TENANT) as uow:
        return {m.key: m for m in uow.milestones.list()}


def test_a_tax_return_is_billed_in_three_parts_that_sum_to_the_fee(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1", fee=None)
    world.gateway.add_method("CL-ACME")
    world.finish_all_phases("WI-1")
    service = world.service(uow_of(store))

    report = service.run_cycle()

    assert report.problems == []
    invoices = world.ledger.invoices()
    assert sorted(str(i.total.amount) for i in invoices) == ["1200.00", "1200.00", "600.00"]
    assert sum(i.total.amount for i in invoices) == Decimal("3000.00")
    assert all(i.balance.is_zero() for i in invoices)
    assert sorted(c.amount.amount for c in world.gateway.charges()) == [
        Decimal("600.00"),
        Decimal("1200.00"),
        Decimal("1200.00"),
    ]
    assert {m.state for m in milestones(store).values()} == {S.RECONCILED}  # type: ignore[attr-defined]


def test_running_the_cycle_again_changes_nothing(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME")
    world.finish_all_phases("WI-1")
    service = world.service(uow_of(store))
    service.run_cycle()
    before = (
        len(world.ledger.invoices()),
        len(world.gateway.charges()),
        len(world.ledger.payments()),
    )

    for _ in range(3):
        service.run_cycle()

    assert (
        (len(world.ledger.invoices()), len(world.gateway.charges()), len(world.ledger.payments()))
        == before
        == (3, 3, 3)
    )


def test_only_reached_phases_are_billed_and_the_rest_stay_pending(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-1", "In Progress", "Documents received")
    world.reach("WI-1", "Waiting")  # a transition no milestone listens to
    service = world.service(uow_of(store))

    service.run_cycle()

    states = {k.rsplit(":", 1)[1]: m.state for k, m in milestones(store).items()}  # type: ignore[attr-defined]
    assert states == {"kickoff": S.RECONCILED, "review": S.PENDING, "filed": S.PENDING}
    with store.unit_of_work(TENANT) as uow:
        statuses = sorted(p.status for p in uow.phases.list())
    assert statuses == [PhaseStatus.IGNORED, PhaseStatus.MAPPED]


def test_an_unmapped_completed_phase_needs_attention_and_is_never_dropped(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-9", work_type="Payroll")
    world.reach("WI-9", "Completed")
    service = world.service(uow_of(store))

    report = service.run_cycle()

    with store.unit_of_work(TENANT) as uow:
        unmapped = uow.phases.list(PhaseStatus.UNMAPPED)
    assert len(unmapped) == 1
    assert "Payroll" in (unmapped[0].reason or "")
    assert any("WI-9" in p for p in report.problems)
    assert world.ledger.invoices() == []


def test_ignored_work_is_recorded_with_its_reason(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-8", work_type="Internal")
    world.reach("WI-8", "Completed")

    world.service(uow_of(store)).run_cycle()

    with store.unit_of_work(TENANT) as uow:
        (phase,) = uow.phases.list()
    assert phase.status is PhaseStatus.IGNORED
    assert phase.reason == "internal work is never billed"


def test_monthly_closes_bill_one_milestone_per_period(store: MemoryStore) -> None:
    world = new_world()
    world.gateway.add_method("CL-BETA")
    for period in ("2026-09", "2026-10"):
        world.close("CL-BETA", period)
        world.close_done(f"CL-BETA:{period}")
    world.close_done("CL-BETA:2026-10")  # the same close reported done twice

    world.service(uow_of(store)).run_cycle()

    assert sorted(i.reference for i in world.ledger.invoices()) == [
        "keeper:CL-BETA:2026-09:close",
        "keeper:CL-BETA:2026-10:close",
    ]
    assert {i.total for i in world.ledger.invoices()} == {Money("450.00", "USD")}


def test_approval_required_waits_for_approval(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-2", client="CL-APPROVE")
    world.gateway.add_method("CL-APPROVE")
    world.reach("WI-2", "In Progress", "Documents received")
    service = world.service(uow_of(store))

    service.run_cycle()
    assert world.ledger.invoices() == []
    (waiting,) = [m for m in milestones(store).values() if m.state is S.AWAITING_APPROVAL]  # type: ignore[attr-defined]

    assert service.approve([waiting.key]) == [waiting.key]  # type: ignore[attr-defined]
    service.run_cycle()
    assert [i.total for i in world.ledger.invoices()] == [Money("1200.00", "USD")]
    assert milestones(store)[waiting.key].state is S.RECONCILED  # type: ignore[attr-defined]


def test_invoice_only_clients_are_never_charged_and_external_payment_is_noticed(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-3", client="CL-INVOICE")
    world.gateway.add_method("CL-INVOICE")
    world.reach("WI-3", "In Progress", "Documents received")
    service = world.service(uow_of(store))
    service.run_cycle()
    (invoice,) = world.ledger.invoices()
    assert world.gateway.charges() == []

    world.ledger.pay_externally(invoice.id, invoice.total)
    service.run_cycle()

    (milestone,) = [m for m in milestones(store).values() if m.invoice_id]  # type: ignore[attr-defined]
    assert milestone.state is S.PAID_EXTERNALLY
    assert world.gateway.charges() == []


def test_an_invoice_part_paid_by_cheque_is_charged_only_its_balance(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-4")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-4", "In Progress", "Documents received")
    service = world.service(uow_of(store))
    service.poll_sources()
    service.map_phases()
    service.issue_invoices()
    (invoice,) = world.ledger.invoices()
    world.ledger.pay_externally(invoice.id, Money("200.00", "USD"))

    service.run_cycle()

    assert [c.amount for c in world.gateway.charges()] == [Money("1000.00", "USD")]
    assert world.ledger.get_invoice(invoice.id).balance.is_zero()


def test_an_invoice_paid_before_collection_is_not_charged(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-5")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-5", "In Progress", "Documents received")
    service = world.service(uow_of(store))
    service.poll_sources()
    service.map_phases()
    service.issue_invoices()
    (invoice,) = world.ledger.invoices()
    world.ledger.pay_externally(invoice.id, invoice.total)

    service.run_cycle()

    assert world.gateway.charges() == []


def test_soft_declines_retry_on_schedule_and_hard_declines_stop(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-6", client="CL-SOFT", customer="61")
    world.tax_return("WI-7", client="CL-HARD", customer="62")
    world.gateway.add_method("CL-SOFT", "decline:insufficient_funds")
    world.gateway.add_method("CL-HARD", "decline:stolen_card")
    world.reach("WI-6", "In Progress", "Documents received")
    world.reach("WI-7", "In Progress", "Documents received")
    service = world.service(uow_of(store))

    service.run_cycle()
    by_client = {m.client_key: m for m in milestones(store).values() if m.invoice_id}  # type: ignore[attr-defined]
    assert by_client["CL-SOFT"].state is S.CHARGE_FAILED
    assert by_client["CL-SOFT"].next_charge_at == world.clock.now() + timedelta(days=1)
    assert by_client["CL-HARD"].state is S.NEEDS_ATTENTION
    assert "stolen_card" in by_client["CL-HARD"].attention_reason
    assert len(world.gateway.charges()) == 2

    service.run_cycle()  # not due yet: no new charge
    assert len(world.gateway.charges()) == 2

    for days in (1, 3, 7):
        world.clock.advance(days=days)
        service.run_cycle()
    soft = milestones(store)[by_client["CL-SOFT"].key]
    assert soft.state is S.NEEDS_ATTENTION  # type: ignore[attr-defined]
    assert "4 times" in soft.attention_reason  # type: ignore[attr-defined]
    assert len([c for c in world.gateway.charges() if c.decline_code == "insufficient_funds"]) == 4
    assert len([c for c in world.gateway.charges() if c.decline_code == "stolen_card"]) == 1


def test_ach_processing_is_not_booked_until_it_settles(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-10")
    world.gateway.add_method("CL-ACME", "processing", kind="us_bank_account")
    world.reach("WI-10", "In Progress", "Documents received")
    service = world.service(uow_of(store))

    service.run_cycle()
    (milestone,) = [m for m in milestones(store).values() if m.charge_id]  # type: ignore[attr-defined]
    assert milestone.state is S.PROCESSING
    assert world.ledger.payments() == []

    world.gateway.settle(milestone.charge_id)
    service.run_cycle()
    assert milestones(store)[milestone.key].state is S.RECONCILED  # type: ignore[attr-defined]
    assert len(world.ledger.payments()) == 1


def test_a_client_with_no_ledger_customer_waits_until_mapped_and_others_go_on(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-11", client="CL-NOCUST", customer=None)
    world.tax_return("WI-12")
    world.gateway.add_method("CL-ACME")
    world.gateway.add_method("CL-NOCUST")
    world.reach("WI-11", "In Progress", "Documents received")
    world.reach("WI-12", "In Progress", "Documents received")

    report = world.service(uow_of(store)).run_cycle()

    waiting = [m for m in milestones(store).values() if m.extra.get("blocked")]  # type: ignore[attr-defined]
    assert len(waiting) == 1
    assert waiting[0].state is S.INVOICING  # type: ignore[attr-defined]
    assert 'clients."CL-NOCUST"' in waiting[0].extra["blocked"]  # type: ignore[attr-defined]
    assert any('clients."CL-NOCUST"' in p for p in report.problems)
    assert len(world.ledger.invoices()) == 1

    # the admin maps the client: the next cycle reprices and bills it, no retry needed
    world.ledger.add_customer("99", "No Customer LLC")
    fixed = firm_config(extra='\n[clients."CL-NOCUST"]\nledger_customer_id = "99"\n')
    world.service(uow_of(store), fixed).run_cycle()

    billed = milestones(store)[waiting[0].key]  # type: ignore[attr-defined]
    assert billed.state is S.RECONCILED  # type: ignore[attr-defined]
    assert "blocked" not in billed.extra  # type: ignore[attr-defined]
    assert {i.customer_id for i in world.ledger.invoices()} == {"58", "99"}


def test_an_archived_item_blocks_only_its_milestones_until_restored(store: MemoryStore) -> None:
    world = new_world()
    world.ledger.add_item("Tax Preparation")
    world.ledger.add_item("Bookkeeping")
    world.ledger.archive_item("Bookkeeping")
    config = firm_config(extra='\n[clients."CL-BOOKS"]\nitem = "Bookkeeping"\n')
    world.tax_return("WI-21")
    world.tax_return("WI-22", client="CL-BOOKS", customer="61")
    world.gateway.add_method("CL-ACME")
    world.gateway.add_method("CL-BOOKS")
    world.reach("WI-21", "In Progress", "Documents received")
    world.reach("WI-22", "In Progress", "Documents received")

    world.service(uow_of(store), config).run_cycle()

    by_client = {m.client_key: m for m in milestones(store).values() if m.state is not S.PENDING}  # type: ignore[attr-defined]
    assert by_client["CL-ACME"].state is S.RECONCILED  # type: ignore[attr-defined]
    assert by_client["CL-BOOKS"].state is S.INVOICING  # type: ignore[attr-defined]
    assert "'Bookkeeping' is archived" in by_client["CL-BOOKS"].extra["blocked"]  # type: ignore[attr-defined]

    world.ledger.add_item("Bookkeeping")  # restored in the ledger
    world.service(uow_of(store), config).run_cycle()

    assert milestones(store)[by_client["CL-BOOKS"].key].state is S.RECONCILED  # type: ignore[attr-defined]


def test_a_config_amendment_reprices_only_what_is_not_yet_invoiced(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-13")
    world.gateway.add_method("CL-ACME")
    world.reach("WI-13", "In Progress", "Documents received")
    world.service(uow_of(store), firm_config("3000.00")).run_cycle()

    amended = firm_config("4000.00")
    world.service(uow_of(store), amended).run_cycle()

    by_def = {k.rsplit(":", 1)[1]: m for k, m in milestones(store).items()}
    assert by_def["kickoff"].amount == Money("1200.00", "USD")  # type: ignore[attr-defined]
    assert by_def["review"].amount == Money("1600.00", "USD")  # type: ignore[attr-defined]
    assert by_def["filed"].amount == Money("800.00", "USD")  # type: ignore[attr-defined]
    assert by_def["review"].config_revision == amended.revision  # type: ignore[attr-defined]
    assert by_def["kickoff"].config_revision != amended.revision  # type: ignore[attr-defined]
    with store.unit_of_work(TENANT) as uow:
        repriced = [e for e in uow.audit.list() if e.kind == "milestone.repriced"]
    assert {e.subject for e in repriced} == {by_def["review"].key, by_def["filed"].key}  # type: ignore[attr-defined]
    assert repriced[0].detail["new_revision"] == amended.revision


def test_reopened_work_untriggers_before_invoicing_and_flags_after(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-14", client="CL-APPROVE")
    world.tax_return("WI-15", client="CL-INVOICE", customer="64")
    world.tax_return("WI-16")
    world.gateway.add_method("CL-ACME")
    for key in ("WI-14", "WI-15", "WI-16"):
        world.reach(key, "In Progress", "Documents received")
    service = world.service(uow_of(store))
    service.run_cycle()

    for key in ("WI-14", "WI-15", "WI-16"):
        world.reach(key, "In Progress", "Documents received", reopened=True)
    service.run_cycle()

    state = {m.key: m for m in milestones(store).values()}
    assert state["karbon:WI-14:kickoff"].state is S.PENDING  # type: ignore[attr-defined]
    reopened = state["karbon:WI-15:kickoff"]
    assert reopened.state is S.NEEDS_ATTENTION  # type: ignore[attr-defined]
    assert "reopened" in reopened.attention_reason  # type: ignore[attr-defined]
    paid = state["karbon:WI-16:kickoff"]
    assert paid.state is S.RECONCILED  # type: ignore[attr-defined]  # history is not rewritten
    with store.unit_of_work(TENANT) as uow:
        kinds = [e.kind for e in uow.audit.list(subject=paid.key)]  # type: ignore[attr-defined]
    assert "milestone.reopened_after_billing" in kinds


def test_a_transient_ledger_failure_is_retried_with_the_same_key(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-16")
    world.reach("WI-16", "In Progress", "Documents received")
    world.ledger.create_faults.push(Fault.UNAVAILABLE)
    service = world.service(uow_of(store))

    report = service.run_cycle()
    assert world.ledger.invoices() == []
    assert any("will retry" in p for p in report.problems)
    with store.unit_of_work(TENANT) as uow:
        (op,) = uow.operations.list()
    assert op.status is OperationStatus.PENDING and op.attempts == 1

    service.run_cycle()
    assert len(world.ledger.invoices()) == 1
    with store.unit_of_work(TENANT) as uow:
        (op_after,) = [o for o in uow.operations.list() if o.key == op.key]
    assert op_after.status is OperationStatus.SUCCEEDED and op_after.attempts == 2


def test_a_timeout_after_the_ledger_committed_is_resolved_by_lookup(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-17")
    world.reach("WI-17", "In Progress", "Documents received")
    world.ledger.create_faults.push(Fault.TIMEOUT_AFTER_COMMIT)
    service = world.service(uow_of(store))

    service.run_cycle()
    service.run_cycle()

    assert len(world.ledger.invoices()) == 1
    creates = [c for c in world.ledger.calls if c.startswith("create_invoice")]
    assert creates == ["create_invoice karbon:WI-17:kickoff"]  # looked up, never re-sent
    assert "find_invoice karbon:WI-17:kickoff" in world.ledger.calls


def test_a_rejected_invoice_needs_attention_and_the_rest_of_the_run_goes_on(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-18")
    world.tax_return("WI-19", client="CL-OTHER", customer="63")
    world.reach("WI-18", "In Progress", "Documents received")
    world.reach("WI-19", "In Progress", "Documents received")
    world.ledger.create_faults.push(Fault.REJECT)

    world.service(uow_of(store)).run_cycle()

    states = sorted(m.state for m in milestones(store).values() if m.state is not S.PENDING)  # type: ignore[attr-defined]
    assert S.NEEDS_ATTENTION in states
    assert len(world.ledger.invoices()) == 1


def test_an_unavailable_source_is_reported_and_other_stages_run(store: MemoryStore) -> None:
    world = new_world()
    world.close("CL-BETA", "2026-10")
    world.close_done("CL-BETA:2026-10")
    world.karbon.unavailable = True

    report = world.service(uow_of(store)).run_cycle()

    assert any("karbon" in p and "unavailable" in p for p in report.problems)
    assert len(world.ledger.invoices()) == 1


def test_illegal_transitions_raise() -> None:
    world = new_world()
    engagement = world.tax_return("WI-20")
    from connector.planning import new_milestones
    from mappings.engine import MappingEngine

    config = firm_config()
    matched = MappingEngine(config).resolve(engagement, None, world.clock.now().date())
    milestone = new_milestones(engagement, matched, set(), config.revision)[0]  # type: ignore[arg-type]
    with pytest.raises(InvariantViolation):
        milestone.transition(S.PAID)
    with pytest.raises(InvariantViolation):
        milestone.transition(S.NEEDS_ATTENTION)  # a reason is required
