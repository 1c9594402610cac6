"""One contract for every `Ledger`: the memory ledger, QuickBooks Online and Xero (each over its
emulator, through the real SDK). What the core relies on is asserted here once, for all three."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from connector.domain.errors import RejectedError, TransientError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId
from connector.domain.money import Money
from connector.ports import (
    AccountRole,
    BatchItem,
    FeeEntry,
    InvoiceDraft,
    InvoiceLine,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerNeeds,
    NeedKind,
    PaymentPosting,
    RefundEntry,
    ReturnedPaymentEntry,
    TransferEntry,
)
from tests.contract.ledger_harness import LedgerHarness, MemoryHarness

HARNESSES = {
    "memory": None,
    "quickbooks": ("tests.contract.harness_quickbooks", "QuickBooksHarness"),
    "xero": ("tests.contract.harness_xero", "XeroHarness"),
}


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Iterator[LedgerHarness]:
    where = HARNESSES[request.param]
    if where is None:
        yield MemoryHarness()
        return
    module = importlib.import_module(where[0])  # imported only when used: it starts an emulator
    built = getattr(module, where[1])()
    try:
        yield built
    finally:
        built.close()


def draft_for(
    harness: LedgerHarness,
    customer: str,
    reference: str,
    amount: str = "1200.00",
    *,
    item: str | None = None,
    draft: bool = False,
) -> InvoiceDraft:
    today = date(2026, 11, 16)
    return InvoiceDraft(
        customer_id=LedgerCustomerId(customer),
        reference=reference,
        lines=(
            InvoiceLine(
                description=f"2026 Form 1120 - Documents received ({reference})",
                amount=Money(amount, harness.currency),
                item=item or harness.item(),
                tax_code=harness.tax_code(),
            ),
        ),
        issue_date=today,
        due_date=today + timedelta(days=15),
        terms=None,
        draft=draft,
    )


def key(name: str) -> IdempotencyKey:
    return IdempotencyKey(f"invoice:smith-cpa:{name}:0")


def create_despite_faults(
    harness: LedgerHarness, d: InvoiceDraft, k: IdempotencyKey
) -> LedgerInvoice:
    """What the core does: call; after a transient failure, look up first, then call again."""
    for _ in range(5):
        try:
            return harness.ledger.create_invoice(d, k)
        except TransientError:
            found = harness.ledger.find_invoice(d)
            if found is not None:
                return found
    raise AssertionError("the ledger never answered")


def test_an_invoice_is_created_open_with_its_total_and_read_back(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    d = draft_for(harness, customer, "karbon:WI-1:documents")

    created = harness.ledger.create_invoice(d, key("WI-1"))

    assert created.status is LedgerInvoiceStatus.OPEN
    assert created.total == Money("1200.00", harness.currency)
    assert created.balance == created.total
    assert created.customer_id == customer
    assert created.reference == "karbon:WI-1:documents"
    assert harness.ledger.get_invoice(created.id) == created
    assert [i.id for i in harness.all_invoices()] == [created.id]


def test_the_same_key_never_creates_a_second_invoice(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    d = draft_for(harness, customer, "karbon:WI-2:documents")

    first = harness.ledger.create_invoice(d, key("WI-2"))
    again = harness.ledger.create_invoice(d, key("WI-2"))

    assert again.id == first.id
    assert len(harness.all_invoices()) == 1


def test_a_write_lost_after_the_ledger_committed_is_found_not_repeated(
    harness: LedgerHarness,
) -> None:
    customer = harness.add_customer("Acme LLC")
    d = draft_for(harness, customer, "karbon:WI-3:documents")
    harness.drop_next_writes(1)

    created = create_despite_faults(harness, d, key("WI-3"))

    assert len(harness.all_invoices()) == 1
    assert harness.ledger.find_invoice(d) == harness.ledger.get_invoice(created.id)
    assert harness.ledger.create_invoice(d, key("WI-3")).id == created.id
    assert len(harness.all_invoices()) == 1


def test_a_refused_request_is_retried_or_reported_and_never_doubles(
    harness: LedgerHarness,
) -> None:
    customer = harness.add_customer("Acme LLC")
    d = draft_for(harness, customer, "karbon:WI-4:documents")
    harness.fail_next(1, status=503)

    create_despite_faults(harness, d, key("WI-4"))
    harness.fail_next(1, status=429)
    create_despite_faults(harness, d, key("WI-4"))

    assert len(harness.all_invoices()) == 1


def test_lookups_find_exactly_what_was_created(harness: LedgerHarness) -> None:
    acme = harness.add_customer("Acme LLC")
    beta = harness.add_customer("Beta Dental")
    drafts = [
        draft_for(harness, acme, "karbon:WI-5:documents", "100.00"),
        draft_for(harness, beta, "karbon:WI-6:documents", "200.00"),
        draft_for(harness, acme, "karbon:WI-7:review", "300.00"),
    ]
    made = [harness.ledger.create_invoice(d, key(d.reference)) for d in drafts[:2]]

    found = harness.ledger.find_invoices(drafts)

    assert {ref: inv.id for ref, inv in found.items()} == {
        drafts[0].reference: made[0].id,
        drafts[1].reference: made[1].id,
    }
    assert harness.ledger.find_invoice(drafts[2]) is None
    assert harness.ledger.find_invoice(drafts[1]) == made[1]


def test_a_batch_posts_every_good_invoice_and_rejects_only_the_bad_one(
    harness: LedgerHarness,
) -> None:
    customer = harness.add_customer("Acme LLC")
    items = [
        BatchItem(
            draft_for(harness, customer, f"keeper:CL-{n}:close", f"{450 + n}.00"), key(f"b{n}")
        )
        for n in range(4)
    ]
    bad = draft_for(harness, "999999", "keeper:CL-X:close")
    items.insert(2, BatchItem(bad, key("bX")))
    assert harness.ledger.batch_limit >= len(items)

    results = harness.ledger.create_invoices(items)

    assert len(results) == 5
    assert isinstance(results[2], RejectedError)
    assert "999999" in str(results[2])
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, LedgerInvoice) for r in good)
    assert [r.reference for r in good if isinstance(r, LedgerInvoice)] == [
        item.draft.reference for i, item in enumerate(items) if i != 2
    ]
    assert len(harness.all_invoices()) == 4


def test_an_unknown_customer_is_rejected_with_what_to_fix(harness: LedgerHarness) -> None:
    d = draft_for(harness, "999999", "karbon:WI-8:documents")

    with pytest.raises(RejectedError) as refused:
        harness.ledger.create_invoice(d, key("WI-8"))

    assert "999999" in str(refused.value)
    assert harness.all_invoices() == []


def test_an_archived_item_is_rejected(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    item = harness.item()
    harness.archive_item(item)

    with pytest.raises(RejectedError) as refused:
        harness.ledger.create_invoice(draft_for(harness, customer, "k:WI-9:d"), key("WI-9"))

    assert item.lower() in str(refused.value).lower()
    assert harness.all_invoices() == []


def test_the_pre_flight_check_names_each_missing_thing_and_passes_the_rest(
    harness: LedgerHarness,
) -> None:
    customer = harness.add_customer("Acme LLC")
    good = LedgerNeeds(
        customers=frozenset({customer}),
        items=frozenset({harness.item()}),
        currencies=frozenset({harness.currency}),
    )
    assert list(harness.ledger.check(good)) == []

    problems = harness.ledger.check(
        LedgerNeeds(
            customers=frozenset({customer, "999999"}),
            items=frozenset({harness.item(), "No Such Item 42"}),
            currencies=frozenset({harness.currency, "XAF"}),
        )
    )

    found = {(p.kind, p.value) for p in problems}
    assert found == {
        (NeedKind.CUSTOMER, "999999"),
        (NeedKind.ITEM, "No Such Item 42"),
        (NeedKind.CURRENCY, "XAF"),
    }
    assert all(p.message for p in problems)


def test_a_payment_entered_in_the_ledger_shows_in_the_balance_and_the_change_feed(
    harness: LedgerHarness,
) -> None:
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(draft_for(harness, customer, "k:WI-10:d"), key("WI-10"))
    since = harness.ledger.changes(datetime.now(UTC) - timedelta(days=1)).until
    harness.advance(5)

    harness.pay_externally(created.id, Money("200.00", harness.currency))

    read = harness.ledger.get_invoice(created.id)
    assert read.balance == Money("1000.00", harness.currency)
    assert read.status is LedgerInvoiceStatus.OPEN
    feed = harness.ledger.changes(since)
    assert feed.complete
    assert [i.balance for i in feed.invoices if i.id == created.id] == [read.balance]

    harness.pay_externally(created.id, Money("1000.00", harness.currency))
    assert harness.ledger.get_invoice(created.id).status is LedgerInvoiceStatus.PAID


def test_a_void_in_the_ledger_is_seen(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(draft_for(harness, customer, "k:WI-11:d"), key("WI-11"))
    since = harness.ledger.changes(datetime.now(UTC) - timedelta(days=1)).until
    harness.advance(5)

    harness.void(created.id)

    assert harness.ledger.get_invoice(created.id).status is LedgerInvoiceStatus.VOIDED
    feed = harness.ledger.changes(since)
    assert [i.status for i in feed.invoices if i.id == created.id] == [LedgerInvoiceStatus.VOIDED]


def test_a_payment_is_booked_once_and_found_again(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(draft_for(harness, customer, "k:WI-12:d"), key("WI-12"))
    posting = PaymentPosting(
        invoice_id=created.id,
        customer_id=customer,
        amount=created.total,
        paid_on=date(2026, 11, 20),
        reference="ch_3NxTestCharge0000000001",
    )
    pay_key = IdempotencyKey("payment:smith-cpa:ch_3NxTestCharge0000000001:0")

    payment = harness.ledger.record_payment(posting, pay_key)

    assert harness.ledger.record_payment(posting, pay_key) == payment
    assert harness.ledger.find_payment(posting) == payment
    read = harness.ledger.get_invoice(created.id)
    assert read.balance.is_zero()
    assert read.status is LedgerInvoiceStatus.PAID


def test_an_invoice_is_emailed_once_per_key(harness: LedgerHarness) -> None:
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(draft_for(harness, customer, "k:WI-13:d"), key("WI-13"))
    assert not created.sent
    send_key = IdempotencyKey(f"send:smith-cpa:{created.id}:0")

    sent = harness.ledger.send_invoice(created.id, send_key)

    assert sent.sent
    assert harness.ledger.get_invoice(created.id).sent
    assert harness.emailed(created.id) == 1


def test_a_draft_waits_for_approval_in_the_ledger(harness: LedgerHarness) -> None:
    if not harness.supports_drafts:
        pytest.skip(f"{harness.ledger.name} has no draft invoices; approval is kept internally")
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(
        draft_for(harness, customer, "k:WI-14:d", draft=True), key("WI-14")
    )
    assert created.status is LedgerInvoiceStatus.DRAFT

    harness.approve(created.id)

    assert harness.ledger.get_invoice(created.id).status is LedgerInvoiceStatus.OPEN


def test_a_fresh_connection_has_room_for_a_small_backlog(harness: LedgerHarness) -> None:
    assert harness.ledger.capacity_warning(10) is None


# --------------------------------------------------------------------------- the money trail


def paid_into_clearing(harness: LedgerHarness, reference: str) -> LedgerInvoice:
    customer = harness.add_customer("Acme LLC")
    created = harness.ledger.create_invoice(
        draft_for(harness, customer, f"k:{reference}:d", "1000.00"), key(reference)
    )
    harness.ledger.record_payment(
        PaymentPosting(created.id, customer, created.total, date(2026, 11, 18), reference),
        IdempotencyKey(f"payment:smith-cpa:{reference}:0"),
    )
    return created


def test_a_month_of_money_leaves_clearing_at_zero_and_the_bank_with_the_payout(
    harness: LedgerHarness,
) -> None:
    usd = harness.currency
    invoice = paid_into_clearing(harness, "pi_month")
    day = date(2026, 11, 18)
    entries = [
        FeeEntry(Money("29.30", usd), day, "txn_fee_1", "Stripe fee (ch_1)"),
        RefundEntry(
            invoice.id, invoice.customer_id, Money("200.00", usd), day, "re_1", "Refund (re_1)"
        ),
        TransferEntry(
            AccountRole.CLEARING,
            AccountRole.BANK,
            Money("770.70", usd),
            day,
            "po_1",
            "Payout po_1",
        ),
    ]
    start = {role: harness.ledger.account_balance(role) for role in AccountRole}

    ids = [
        harness.ledger.post_entry(entry, IdempotencyKey(f"entry:smith-cpa:{n}:0"))
        for n, entry in enumerate(entries)
    ]

    moved = {role: harness.ledger.account_balance(role) - start[role] for role in AccountRole}
    # the 1000.00 paid in before `start`, less 29.30 fee, 200.00 refund and the 770.70 payout
    assert moved[AccountRole.CLEARING] == Money("-1000.00", usd)
    assert moved[AccountRole.BANK] == Money("770.70", usd)
    assert moved[AccountRole.FEES] == Money("29.30", usd)
    assert [harness.ledger.find_entry(entry) for entry in entries] == ids
    again = harness.ledger.post_entry(entries[0], IdempotencyKey("entry:smith-cpa:0:0"))
    assert again == ids[0]
    assert harness.ledger.account_balance(AccountRole.FEES) - start[AccountRole.FEES] == Money(
        "29.30", usd
    )


def test_a_dispute_is_held_and_released_and_a_negative_payout_refills_clearing(
    harness: LedgerHarness,
) -> None:
    usd = harness.currency
    paid_into_clearing(harness, "pi_dispute")
    day = date(2026, 11, 19)
    start = {role: harness.ledger.account_balance(role) for role in AccountRole}
    steps = [
        TransferEntry(
            AccountRole.CLEARING,
            AccountRole.DISPUTES,
            Money("1000.00", usd),
            day,
            "txn_d1",
            "Disputed payment held",
        ),
        TransferEntry(
            AccountRole.DISPUTES,
            AccountRole.CLEARING,
            Money("1000.00", usd),
            day,
            "txn_d2",
            "Dispute won",
        ),
        TransferEntry(
            AccountRole.BANK,
            AccountRole.CLEARING,
            Money("15.00", usd),
            day,
            "po_neg",
            "Payout po_neg debited from the bank",
        ),
    ]
    for n, step in enumerate(steps):
        harness.ledger.post_entry(step, IdempotencyKey(f"entry:smith-cpa:d{n}:0"))

    assert harness.ledger.account_balance(AccountRole.DISPUTES) == start[AccountRole.DISPUTES]
    assert harness.ledger.account_balance(AccountRole.CLEARING) - start[
        AccountRole.CLEARING
    ] == Money("15.00", usd)
    assert harness.ledger.account_balance(AccountRole.BANK) - start[AccountRole.BANK] == Money(
        "-15.00", usd
    )


def test_a_returned_payment_takes_money_out_of_clearing(harness: LedgerHarness) -> None:
    usd = harness.currency
    invoice = paid_into_clearing(harness, "pi_return")
    before = harness.ledger.account_balance(AccountRole.CLEARING)
    returned = ReturnedPaymentEntry(
        invoice.id, invoice.customer_id, Money("1000.00", usd), date(2026, 11, 20), "pyr_1",
        "Returned bank payment",
    )  # fmt: skip

    entry_id = harness.ledger.post_entry(returned, IdempotencyKey("entry:smith-cpa:ret:0"))

    assert harness.ledger.find_entry(returned) == entry_id
    assert harness.ledger.account_balance(AccountRole.CLEARING) == before - Money("1000.00", usd)


def test_payments_into_clearing_are_listed_with_their_reference(harness: LedgerHarness) -> None:
    invoice = paid_into_clearing(harness, "pi_listed")
    customer = invoice.customer_id
    other = harness.ledger.create_invoice(
        draft_for(harness, customer, "k:cheque:d", "50.00"), key("cheque")
    )
    harness.pay_externally(other.id, Money("50.00", harness.currency))

    payments = harness.ledger.payments_since(date(2026, 1, 1))

    ours = [p for p in payments if p.reference == "pi_listed"]
    assert len(ours) == 1
    assert ours[0].account is AccountRole.CLEARING
    assert ours[0].amount == Money("1000.00", harness.currency)
    assert ours[0].invoice_id == invoice.id
