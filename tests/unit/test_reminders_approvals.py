"""Reminders through the ledger's own invoice email, and approval that releases itself after a
notice period, over the in-memory adapters."""

from __future__ import annotations

import pytest

from adapters.memory.store import MemoryStore
from connector.domain.model import MilestoneState as S
from connector.domain.money import Money
from mappings.loader import load_config_text
from tests.support import FIRM_TOML, new_world

TENANT = "smith-cpa"


def config(collection: str):  # type: ignore[no-untyped-def]
    text = FIRM_TOML.replace("__TAX_FEE__", "3000.00").replace(
        "retry_days = [1, 3, 7]", "retry_days = [1, 3, 7]\n" + collection
    )
    return load_config_text(text, "firm.toml")


REMINDING = config("remind_before_due = [3]\nremind_after_due = [1, 7]")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def uow_of(store: MemoryStore):  # type: ignore[no-untyped-def]
    return lambda: store.unit_of_work(TENANT)


def milestones(store: MemoryStore) -> list:  # type: ignore[type-arg]
    with store.unit_of_work(TENANT) as uow:
        return uow.milestones.list()


def test_an_invoice_only_client_is_reminded_on_cadence_until_paid(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1", client="CL-INVOICE")
    world.reach("WI-1", "In Progress", "Documents received")
    service = world.service(uow_of(store), REMINDING)
    service.run_cycle()  # invoiced, due in 15 days (Net 15)
    (invoice,) = world.ledger.invoices()
    sent = []
    for day in range(1, 26):
        world.clock.advance(days=1)
        if day == 18:
            world.ledger.pay_externally(invoice.id, invoice.total)  # a cheque
        service.run_cycle()
        sent.append(len(world.ledger.emails))

    # 3 days before the due date (day 12), 1 day after (day 16), then paid: no 7-day reminder
    assert sent[11] - sent[10] == 1 and sent[15] - sent[14] == 1
    assert world.ledger.emails == [invoice.id, invoice.id]
    (milestone,) = [m for m in milestones(store) if m.invoice_id]
    assert milestone.state is S.PAID_EXTERNALLY
    assert milestone.extra["reminders"] == "2"


def test_a_daemon_back_after_a_week_sends_one_reminder_not_several(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1", client="CL-INVOICE")
    world.reach("WI-1", "In Progress", "Documents received")
    service = world.service(uow_of(store), REMINDING)
    service.run_cycle()

    world.clock.advance(days=25)  # past every reminder's day
    service.run_cycle()
    service.run_cycle()

    assert len(world.ledger.emails) == 1
    (milestone,) = [m for m in milestones(store) if m.invoice_id]
    assert milestone.extra["reminders"] == "3"  # the last one: the earlier ones are skipped


def test_a_client_about_to_be_charged_gets_no_reminder_but_a_failed_collection_does(
    store: MemoryStore,
) -> None:
    world = new_world()
    world.tax_return("WI-1")  # CL-ACME: auto charge, card that works
    world.tax_return("WI-2", client="CL-BAD", customer="61")
    world.gateway.add_method("CL-ACME")
    world.gateway.add_method("CL-BAD", behaviour="decline:stolen_card")
    world.reach("WI-1", "In Progress", "Documents received")
    world.reach("WI-2", "In Progress", "Documents received")
    service = world.service(uow_of(store), REMINDING)
    service.run_cycle()

    world.clock.advance(days=16)
    service.run_cycle()

    states = {m.client_key: m.state for m in milestones(store) if m.invoice_id}
    assert states == {"CL-ACME": S.RECONCILED, "CL-BAD": S.NEEDS_ATTENTION}
    (bad,) = [i for i in world.ledger.invoices() if i.customer_id == "61"]
    assert world.ledger.emails == [bad.id]


def test_approval_releases_itself_after_the_notice_period(store: MemoryStore) -> None:
    world = new_world()
    world.tax_return("WI-1", client="CL-APPROVE")
    world.gateway.add_method("CL-APPROVE")
    world.reach("WI-1", "In Progress", "Documents received")
    service = world.service(uow_of(store), config("auto_approve_after_days = 5"))
    service.run_cycle()
    assert [m.state for m in milestones(store) if m.state is not S.PENDING] == [S.AWAITING_APPROVAL]

    world.clock.advance(days=4)
    service.run_cycle()
    assert world.ledger.invoices() == []
    world.clock.advance(days=1)
    service.run_cycle()

    (invoice,) = world.ledger.invoices()
    assert invoice.total == Money("1200.00", "USD")
    with store.unit_of_work(TENANT) as uow:
        events = [e for e in uow.audit.list() if e.kind == "milestone.approved"]
    assert "5 days' notice passed" in events[0].message


def increase_config(extra: str = ""):  # type: ignore[no-untyped-def]
    text = FIRM_TOML.replace("__TAX_FEE__", "3000.00").replace(
        'fee = "450.00"',
        'fee = "450.00"\n'
        "price_increase = { percent = 4, anniversary = 2027-01-01, notice_days = 45 }",
    )
    return load_config_text(text + extra, "firm.toml")


def test_a_price_increase_is_announced_once_when_its_notice_period_begins(
    store: MemoryStore,
) -> None:
    from adapters.memory.notifier import MemoryNotifier

    world = new_world()  # 2 November 2026: 60 days before the increase
    world.close("CL-ACME", "2026-10", customer="70")
    world.close("CL-ACME", "2026-11", customer="70")
    notifier = MemoryNotifier()
    config = increase_config('\n[clients."CL-ACME"]\nemail = "ap@acme.example"\n')
    service = world.service(uow_of(store), config)
    service.notifier = notifier

    service.run_cycle()
    assert notifier.sent == []  # not yet: 45 days' notice
    world.clock.advance(days=16)  # 18 November: 44 days before
    service.run_cycle()
    service.run_cycle()

    (sent,) = notifier.sent
    assert sent["to"] == "ap@acme.example"
    assert "450.00 USD to 468.00 USD" in sent["body"] and "1 January 2027" in sent["body"]


def test_a_notice_that_cannot_go_is_reported_once_for_the_admin(store: MemoryStore) -> None:
    world = new_world()
    world.close("CL-NOMAIL", "2026-10", customer="70")
    world.clock.advance(days=16)
    service = world.service(uow_of(store), increase_config())  # no notifier configured

    first = service.run_cycle()
    second = service.run_cycle()

    assert [p for p in first.problems if "price notice not sent" in p] != []
    assert [p for p in second.problems if "price notice" in p] == []
    with store.unit_of_work(TENANT) as uow:
        (unsent,) = [e for e in uow.audit.list() if e.kind == "notice.unsent"]
    assert "send the client this notice by hand" in unsent.message
