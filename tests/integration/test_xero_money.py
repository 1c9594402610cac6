"""The money trail in Xero, through xero-python against the Xero emulator: every entry once per
key and found again after a lost answer, the clearing account back at zero after a month of
Stripe money, payouts (negative ones too), disputes held, released and lost, a returned payment
making the client owe again, payments for reconcile, the check's account problems, and the
webhooks Xero sends. Balances are checked twice: as the adapter reads them (Trial Balance) and
by the emulator's own double entry. Every test ends with the emulator's spec check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from werkzeug.wrappers import Request, Response
from xero_python.accounting import (
    Allocation,
    Allocations,
    Contact,
    CreditNote,
    CreditNotes,
    Invoice,
    LineAmountTypes,
    LineItem,
)

from adapters.emulation.server import EmulatorServer
from adapters.emulation.specs import missing_reason, spec_path
from adapters.xero.emulator import AR_CODE, WEBHOOKS_SPEC
from connector.domain.errors import ConfigError, RejectedError, TransientError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.idempotency import make_key
from connector.ports import (
    AccountRole,
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
from tests.contract.harness_xero import SALES_ACCOUNT, XeroHarness

DAY = date(2026, 11, 18)  # the harness's Xero is at 30 November 2026
CLEARING, BANK, FEES, DISPUTES = (
    AccountRole.CLEARING,
    AccountRole.BANK,
    AccountRole.FEES,
    AccountRole.DISPUTES,
)


@pytest.fixture
def make_harness() -> Iterator[Callable[..., XeroHarness]]:
    made: list[XeroHarness] = []

    def make(**settings: Any) -> XeroHarness:
        harness = XeroHarness(**settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def h(make_harness: Callable[..., XeroHarness]) -> XeroHarness:
    return make_harness()


def usd(amount: str) -> Money:
    return Money(amount, "USD")


def entry_key(name: str) -> IdempotencyKey:
    return make_key("entry", "firm", name)


def paid_invoice(h: XeroHarness, reference: str, amount: str = "1000.00") -> LedgerInvoice:
    """An invoice of `amount` paid in full into the clearing account (a Stripe charge)."""
    customer = h.add_customer(f"Client {reference}")
    invoice = h.ledger.create_invoice(
        InvoiceDraft(
            customer_id=LedgerCustomerId(customer),
            reference=f"karbon:{reference}",
            lines=[InvoiceLine("Year-end accounts", usd(amount), item="PS", tax_code="NONE")],
            issue_date=DAY - timedelta(days=3),
            due_date=DAY + timedelta(days=27),
        ),
        make_key("invoice", "firm", reference),
    )
    h.ledger.record_payment(
        PaymentPosting(invoice.id, customer, usd(amount), DAY - timedelta(days=2), reference),
        make_key("payment", "firm", reference),
    )
    return invoice


def balances(h: XeroHarness) -> dict[AccountRole, Money]:
    """Each role's balance as the adapter reads it, checked against the emulator's books."""
    read = {role: h.ledger.account_balance(role) for role in AccountRole}
    assert read == {role: h.account_balance(role) for role in AccountRole}
    return read


def count(h: XeroHarness, what: str) -> int:
    return len(getattr(h.emulator, what)())


# --------------------------------------------------------------------------- one per key


def test_a_month_of_stripe_money_leaves_clearing_at_zero(h: XeroHarness) -> None:
    invoice = paid_invoice(h, "pi_1")
    assert balances(h)[CLEARING] == usd("1000.00")
    entries = [
        FeeEntry(usd("29.30"), DAY, "txn_fee_1", "Stripe fee on ch_1"),
        RefundEntry(invoice.id, invoice.customer_id, usd("200.00"), DAY, "re_1", "Refund re_1"),
        TransferEntry(CLEARING, BANK, usd("770.70"), DAY, "po_1", "Stripe payout po_1"),
    ]

    ids = [h.ledger.post_entry(e, entry_key(f"m{n}")) for n, e in enumerate(entries)]

    after = balances(h)
    assert after[CLEARING] == usd("0.00")
    assert after[BANK] == usd("770.70")
    assert after[FEES] == usd("29.30")
    assert h.emulator.account_balance(SALES_ACCOUNT) == Decimal("-800.00")  # revenue 1000 - 200
    assert h.emulator.account_balance(AR_CODE) == Decimal("0.00")
    assert [h.ledger.find_entry(e) for e in entries] == ids
    # the same keys again: the same documents, nothing new in Xero
    assert [h.ledger.post_entry(e, entry_key(f"m{n}")) for n, e in enumerate(entries)] == ids
    assert (count(h, "bank_transfers"), count(h, "bank_transactions")) == (1, 1)
    assert count(h, "credit_notes") == 1
    assert h.violations() == []


def test_each_entry_reads_as_a_bookkeeper_would_enter_it(h: XeroHarness) -> None:
    invoice = paid_invoice(h, "pi_2")
    h.ledger.post_entry(FeeEntry(usd("29.30"), DAY, "txn_fee_2", "Stripe fee"), entry_key("f"))
    h.ledger.post_entry(
        RefundEntry(invoice.id, invoice.customer_id, usd("200.00"), DAY, "re_2", "Refund"),
        entry_key("r"),
    )
    h.ledger.post_entry(TransferEntry(CLEARING, BANK, usd("5.00"), DAY, "po_2", "Payout"),
                        entry_key("p"))  # fmt: skip

    [fee] = h.emulator.bank_transactions()
    assert (fee["Type"], fee["BankAccount"]["Code"], fee["Reference"]) == (
        "SPEND",
        h.account(CLEARING),
        "txn_fee_2",
    )
    assert fee["Contact"]["Name"] == "Stripe" and fee["LineAmountTypes"] == "NoTax"
    [line] = fee["LineItems"]
    assert (line["AccountCode"], line["TaxType"], line["LineAmount"]) == (
        h.account(FEES),
        "NONE",
        Decimal("29.30"),
    )
    [note] = h.emulator.credit_notes()
    assert (note["Type"], note["Status"], note["Reference"], note["Total"]) == (
        "ACCRECCREDIT",
        "PAID",  # fully refunded in cash
        "re_2",
        Decimal("200.00"),
    )
    assert note["Contact"]["ContactID"] == invoice.customer_id
    [credit_line] = note["LineItems"]
    assert (credit_line["ItemCode"], credit_line["AccountCode"], credit_line["TaxType"]) == (
        "PS",
        SALES_ACCOUNT,
        "NONE",
    )
    [refund] = [p for p in h.emulator.payments() if p["PaymentType"] == "ARCREDITPAYMENT"]
    assert (refund["Account"]["Code"], refund["Reference"], refund["Amount"]) == (
        h.account(CLEARING),
        "re_2",
        Decimal("200.00"),
    )
    [payout] = h.emulator.bank_transfers()
    assert (payout["FromBankAccount"]["Code"], payout["ToBankAccount"]["Code"]) == (
        h.account(CLEARING),
        h.account(BANK),
    )
    assert payout["Reference"] == "po_2"
    # the original payment is untouched and the invoice stays paid
    assert h.ledger.get_invoice(invoice.id).status is LedgerInvoiceStatus.PAID
    # the Stripe contact was created once and is reused
    assert [c["Name"] for c in h.emulator.contacts()].count("Stripe") == 1
    assert len(h.emulator.requests("PUT", "/Contacts")) == 1
    assert h.violations() == []


def test_a_lost_answer_is_found_and_never_doubled(h: XeroHarness) -> None:
    invoice = paid_invoice(h, "pi_3")
    entries: list[Any] = [
        TransferEntry(CLEARING, BANK, usd("100.00"), DAY, "po_3", "Payout"),
        TransferEntry(CLEARING, DISPUTES, usd("50.00"), DAY, "txn_hold_3", "Dispute held"),
        FeeEntry(usd("2.50"), DAY, "txn_fee_3", "Fee"),
        FeeEntry(usd("-1.00"), DAY, "txn_credit_3", "Fee given back"),
        RefundEntry(invoice.id, invoice.customer_id, usd("80.00"), DAY, "re_3", "Refund"),
        ReturnedPaymentEntry(invoice.id, invoice.customer_id, usd("70.00"), DAY, "pyr_3", "ACH"),
    ]
    h.ledger.post_entry(FeeEntry(usd("1.00"), DAY, "txn_warm", "Fee"), entry_key("warm"))
    for n, entry in enumerate(entries):
        h.drop_next_writes(1)  # the entry's first write commits, every answer is lost
        with pytest.raises(TransientError) as lost:
            h.ledger.post_entry(entry, entry_key(f"lost{n}"))
        assert lost.value.outcome_unknown
        found = h.ledger.find_entry(entry)
        if isinstance(entry, RefundEntry | ReturnedPaymentEntry):
            # only its first document landed: unfinished, so the core posts it again, and the
            # retry finishes the entry from what is there
            assert found is None
            found = h.ledger.post_entry(entry, entry_key(f"lost{n}"))
            assert h.ledger.find_entry(entry) == found
        assert found is not None
        assert h.ledger.post_entry(entry, entry_key(f"lost{n}")) == found

    assert count(h, "bank_transfers") == 1
    assert count(h, "credit_notes") == 1
    # warm-up fee, hold, fee, fee credit, returned payment's spend
    assert count(h, "bank_transactions") == 5
    assert len([p for p in h.emulator.payments() if p["PaymentType"] == "ARCREDITPAYMENT"]) == 1
    receivables = [i for i in h.emulator.invoices() if i["Reference"] == "pyr_3"]
    assert len(receivables) == 1
    # 1000 in; out: 1.00 + 100 + 50 + 2.50 - 1.00 + 80 + 70
    assert balances(h)[CLEARING] == usd("697.50")
    assert h.violations() == []


def test_a_retry_hours_later_finds_what_the_first_attempt_left(h: XeroHarness) -> None:
    """Xero forgets an Idempotency-Key after about 6 minutes: the lookups, not the key, keep
    a late retry from booking twice."""
    invoice = paid_invoice(h, "pi_4")
    refund = RefundEntry(invoice.id, invoice.customer_id, usd("10.00"), DAY, "re_4", "Refund")
    first = h.ledger.post_entry(refund, entry_key("late"))
    h.advance(3 * 3600)

    assert h.ledger.find_entry(refund) == first
    assert h.ledger.post_entry(refund, entry_key("late")) == first
    assert count(h, "credit_notes") == 1
    assert h.violations() == []


# --------------------------------------------------------------------------- payouts, disputes


def test_a_negative_payout_refills_clearing_from_the_bank(h: XeroHarness) -> None:
    paid_invoice(h, "pi_5", "40.00")
    h.ledger.post_entry(TransferEntry(CLEARING, BANK, usd("40.00"), DAY, "po_5", "Payout"),
                        entry_key("p5"))  # fmt: skip
    pulled = TransferEntry(BANK, CLEARING, usd("15.00"), DAY, "po_neg", "Negative payout")

    transfer = h.ledger.post_entry(pulled, entry_key("neg"))

    after = balances(h)
    assert (after[CLEARING], after[BANK]) == (usd("15.00"), usd("25.00"))
    [back] = [t for t in h.emulator.bank_transfers() if t["BankTransferID"] == transfer]
    assert (back["FromBankAccount"]["Code"], back["ToBankAccount"]["Code"]) == (
        h.account(BANK),
        h.account(CLEARING),
    )
    assert h.ledger.find_entry(pulled) == transfer
    assert h.violations() == []


def test_a_dispute_is_held_then_released(h: XeroHarness) -> None:
    paid_invoice(h, "pi_6")
    held = TransferEntry(CLEARING, DISPUTES, usd("1000.00"), DAY, "txn_dw", "Dispute du_1")
    h.ledger.post_entry(held, entry_key("held"))
    assert (balances(h)[CLEARING], balances(h)[DISPUTES]) == (usd("0.00"), usd("1000.00"))

    won = TransferEntry(DISPUTES, CLEARING, usd("1000.00"), DAY, "txn_dr", "Dispute du_1 won")
    h.ledger.post_entry(won, entry_key("won"))

    after = balances(h)
    assert (after[CLEARING], after[DISPUTES]) == (usd("1000.00"), usd("0.00"))
    spend, receive = h.emulator.bank_transactions()
    assert (spend["Type"], receive["Type"]) == ("SPEND", "RECEIVE")
    assert {spend["BankAccount"]["Code"], receive["BankAccount"]["Code"]} == {h.account(CLEARING)}
    assert spend["LineItems"][0]["AccountCode"] == h.account(DISPUTES)
    assert h.violations() == []


@pytest.mark.parametrize("payments_enabled", [True, False])
def test_a_lost_dispute_is_refunded_from_the_disputes_account(
    make_harness: Callable[..., XeroHarness], payments_enabled: bool
) -> None:
    h = make_harness(disputes_account="616")
    h.emulator.add_account("616", "Disputed funds", "CURRENT", enable_payments=payments_enabled)
    invoice = paid_invoice(h, "pi_7")
    h.ledger.post_entry(TransferEntry(CLEARING, DISPUTES, usd("1000.00"), DAY, "txn_h7", "Held"),
                        entry_key("h7"))  # fmt: skip
    lost = RefundEntry(
        invoice.id, invoice.customer_id, usd("1000.00"), DAY, "du_7", "Dispute lost", DISPUTES
    )

    note = h.ledger.post_entry(lost, entry_key("lost7"))

    after = balances(h)
    assert (after[CLEARING], after[DISPUTES]) == (usd("0.00"), usd("0.00"))
    assert h.emulator.account_balance(SALES_ACCOUNT) == Decimal("0.00")  # revenue reversed
    assert h.ledger.find_entry(lost) == note
    [refund] = [p for p in h.emulator.payments() if p["PaymentType"] == "ARCREDITPAYMENT"]
    # with payments enabled the refund leaves the disputes account itself; without, the money
    # comes back into clearing (a receive money coded to disputes) and is refunded from there
    assert refund["Account"]["Code"] == ("616" if payments_enabled else h.account(CLEARING))
    assert count(h, "bank_transactions") == (1 if payments_enabled else 2)
    assert h.ledger.post_entry(lost, entry_key("lost7")) == note
    assert h.violations() == []


# --------------------------------------------------------------------------- returned payments


def test_a_returned_payment_leaves_the_client_owing_again(h: XeroHarness) -> None:
    invoice = paid_invoice(h, "pi_8")
    original = [p for p in h.emulator.payments() if p["Reference"] == "pi_8"]
    returned = ReturnedPaymentEntry(
        invoice.id, invoice.customer_id, usd("1000.00"), DAY, "pyr_8", "ACH debit returned"
    )

    receivable = h.ledger.post_entry(returned, entry_key("ret8"))

    assert balances(h)[CLEARING] == usd("0.00")
    assert h.emulator.account_balance(AR_CODE) == Decimal("1000.00")  # owed again
    assert h.emulator.account_balance(h.account(DISPUTES)) == Decimal("0.00")  # nets out
    assert h.emulator.account_balance(SALES_ACCOUNT) == Decimal("-1000.00")  # still earned
    owed = h.ledger.get_invoice(LedgerInvoiceId(receivable))
    assert (owed.customer_id, owed.balance, owed.status) == (
        invoice.customer_id,
        usd("1000.00"),
        LedgerInvoiceStatus.OPEN,
    )
    assert owed.reference == "pyr_8"
    # history is not edited: the original payment and the paid invoice stay as they were
    assert [p for p in h.emulator.payments() if p["Reference"] == "pi_8"] == original
    assert h.ledger.get_invoice(invoice.id).status is LedgerInvoiceStatus.PAID
    assert h.ledger.find_entry(returned) == receivable
    assert h.violations() == []


def test_returned_payments_can_have_their_own_holding_account(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(returns_account="617")
    h.emulator.add_account("617", "Dishonoured payments", "CURRENT")
    invoice = paid_invoice(h, "pi_9")
    h.ledger.post_entry(
        ReturnedPaymentEntry(invoice.id, invoice.customer_id, usd("1000.00"), DAY, "pyr_9", "R"),
        entry_key("ret9"),
    )
    [spend] = h.emulator.bank_transactions()
    assert spend["LineItems"][0]["AccountCode"] == "617"
    assert spend["Contact"]["ContactID"] == invoice.customer_id
    assert h.emulator.account_balance("617") == Decimal("0.00")
    assert h.violations() == []


# --------------------------------------------------------------------------- reconcile inputs


def test_payments_since_lists_customer_payments_with_their_account(h: XeroHarness) -> None:
    ours = paid_invoice(h, "pi_10")
    early_customer = h.add_customer("Early Ltd")
    early = h.ledger.create_invoice(
        InvoiceDraft(
            customer_id=LedgerCustomerId(early_customer),
            reference="karbon:early",
            lines=[InvoiceLine("Old work", usd("30.00"), item="PS", tax_code="NONE")],
            issue_date=date(2026, 10, 1),
            due_date=date(2026, 10, 31),
        ),
        make_key("invoice", "firm", "early"),
    )
    h.emulator.pay_externally(early.id, Decimal("30.00"), on=date(2026, 10, 2), reference="old")
    cheque_customer = h.add_customer("Cheque Co")
    cheque = h.ledger.create_invoice(
        InvoiceDraft(
            customer_id=LedgerCustomerId(cheque_customer),
            reference="karbon:cheque",
            lines=[InvoiceLine("Advice", usd("50.00"), item="PS", tax_code="NONE")],
            issue_date=DAY,
            due_date=DAY + timedelta(days=30),
        ),
        make_key("invoice", "firm", "cheque"),
    )
    h.emulator.pay_externally(cheque.id, Decimal("50.00"), on=DAY, reference="")
    h.ledger.post_entry(  # a cash refund is a payment in Xero too, but not a customer's payment
        RefundEntry(ours.id, ours.customer_id, usd("5.00"), DAY, "re_10", "Refund"),
        entry_key("r10"),
    )

    listed = h.ledger.payments_since(date(2026, 11, 1))

    by_invoice = {p.invoice_id: p for p in listed}
    assert set(by_invoice) == {ours.id, cheque.id}
    mine = by_invoice[ours.id]
    assert (mine.reference, mine.amount, mine.account) == ("pi_10", usd("1000.00"), CLEARING)
    assert mine.paid_on == DAY - timedelta(days=2)
    hand = by_invoice[cheque.id]
    assert (hand.reference, hand.account, hand.amount) == (None, None, usd("50.00"))
    [query] = [r for r in h.emulator.requests("GET", "/Payments") if "DateTime" in r.query]
    assert "ACCRECPAYMENT" in query.query
    assert h.violations() == []


def test_balances_come_from_the_trial_balance(h: XeroHarness) -> None:
    paid_invoice(h, "pi_11", "12.34")
    assert h.ledger.account_balance(CLEARING) == usd("12.34")
    assert h.ledger.account_balance(BANK) == usd("0.00")  # no row in the report: zero
    [report] = h.emulator.requests("GET", "/Reports/TrialBalance")[:1]
    assert "date=2026-11-30" in report.query
    assert h.violations() == []


# --------------------------------------------------------------------------- the check


def test_the_check_names_each_account_problem_by_its_option(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(
        clearing_account="855",  # a payments-enabled liability, not a bank account
        bank_account="200",  # revenue
        fee_account="999",  # missing
        disputes_account="400",  # an expense
        fee_tax_type="OUTPUT",  # a sales-only rate
    )
    problems = {p.value: p for p in h.ledger.check(LedgerNeeds())}

    assert set(problems) == {
        "clearing_account",
        "bank_account",
        "fee_account",
        "disputes_account",
        "fee_tax_type",
    }
    assert all(p.kind is NeedKind.ACCOUNT for p in problems.values())
    assert "bank account" in problems["clearing_account"].message
    assert "does not exist" in problems["fee_account"].message
    assert "REVENUE" in problems["bank_account"].message
    assert "current asset" in problems["disputes_account"].message
    archived = make_harness()
    archived.emulator.archive_account(archived.account(FEES))
    [problem] = archived.ledger.check(LedgerNeeds())
    assert problem.value == "fee_account" and "archived" in problem.message
    assert make_harness().ledger.check(LedgerNeeds()) == []
    assert h.violations() == [] and archived.violations() == []


def test_an_entry_needing_an_unconfigured_account_names_the_option(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(fee_account=None, bank_account=None, disputes_account=None)
    invoice = paid_invoice(h, "pi_12")
    cases: list[tuple[Any, str]] = [
        (FeeEntry(usd("1.00"), DAY, "txn_f", "Fee"), "fee_account"),
        (TransferEntry(CLEARING, BANK, usd("1.00"), DAY, "po_x", "Payout"), "bank_account"),
        (
            RefundEntry(invoice.id, invoice.customer_id, usd("1"), DAY, "du", "Lost", DISPUTES),
            "disputes_account",
        ),
        (
            ReturnedPaymentEntry(invoice.id, invoice.customer_id, usd("1"), DAY, "pyr", "R"),
            "returns_account",
        ),
    ]
    for entry, option in cases:
        with pytest.raises(ConfigError, match=option):
            h.ledger.post_entry(entry, entry_key(entry.reference))
    assert h.emulator.bank_transactions() == [] and h.emulator.credit_notes() == []
    assert h.violations() == []


def test_xero_refusals_say_what_to_fix(h: XeroHarness) -> None:
    paid_invoice(h, "pi_13")
    h.emulator.set_period_lock(date(2026, 11, 20))
    with pytest.raises(RejectedError) as locked:
        h.ledger.post_entry(FeeEntry(usd("1.00"), DAY, "txn_l", "Fee"), entry_key("locked"))
    assert locked.value.code == "locked_period" and "lock date" in str(locked.value)
    h.emulator.set_period_lock(None)
    h.emulator.archive_account(h.account(FEES))
    with pytest.raises(RejectedError) as archived:
        h.ledger.post_entry(FeeEntry(usd("1.00"), DAY, "txn_a", "Fee"), entry_key("archived"))
    assert archived.value.code == "account_archived"
    assert f"{h.account(FEES)} is the xero fee_account" in str(archived.value)
    with pytest.raises(RejectedError) as currency:
        h.ledger.post_entry(FeeEntry(Money("1.00", "EUR"), DAY, "txn_e", "Fee"), entry_key("e"))
    assert currency.value.code == "currency"
    assert h.emulator.bank_transactions() == []
    assert h.violations() == []


# --------------------------------------------------------------------------- emulator extras


def test_a_credit_note_allocated_to_an_invoice_reduces_what_is_owed(h: XeroHarness) -> None:
    """Allocations, as a bookkeeper applies a credit to an open invoice (xero-python against
    the emulator; milestone-sync itself refunds credit notes in cash)."""
    customer = h.add_customer("Allocated Ltd")
    invoice = h.ledger.create_invoice(
        InvoiceDraft(
            customer_id=LedgerCustomerId(customer),
            reference="karbon:alloc",
            lines=[InvoiceLine("Work", usd("300.00"), item="PS", tax_code="NONE")],
            issue_date=DAY,
            due_date=DAY + timedelta(days=30),
        ),
        make_key("invoice", "firm", "alloc"),
    )
    api, tenant = h.xero.client.accounting, h.xero.client.tenant
    credit = CreditNote(
        type="ACCRECCREDIT",
        contact=Contact(contact_id=customer),
        status="AUTHORISED",
        date=DAY,
        reference="cn_alloc",
        line_amount_types=LineAmountTypes.NOTAX,
        line_items=[
            LineItem(description="Goodwill", quantity=Decimal(1), unit_amount=Decimal(100),
                     account_code=SALES_ACCOUNT)
        ],
    )  # fmt: skip
    note = h.xero.client.call(
        "credit", api.create_credit_notes, tenant, CreditNotes(credit_notes=[credit]), write=True
    ).credit_notes[0]
    allocate = Allocations(
        allocations=[Allocation(invoice=Invoice(invoice_id=invoice.id), amount=Decimal(100),
                                date=DAY)]
    )  # fmt: skip

    h.xero.client.call(
        "allocate", api.create_credit_note_allocation, tenant, note.credit_note_id, allocate,
        write=True,
    )  # fmt: skip

    assert h.ledger.get_invoice(invoice.id).balance == usd("200.00")
    assert h.emulator.account_balance(AR_CODE) == Decimal("200.00")
    [stored] = h.emulator.credit_notes()
    assert (stored["Status"], stored["RemainingCredit"]) == ("PAID", Decimal("0.00"))
    too_much = Allocations(
        allocations=[Allocation(invoice=Invoice(invoice_id=invoice.id), amount=Decimal(1),
                                date=DAY)]
    )  # fmt: skip
    with pytest.raises(RejectedError):
        h.xero.client.call(
            "allocate", api.create_credit_note_allocation, tenant, note.credit_note_id,
            too_much, write=True,
        )  # fmt: skip
    assert h.violations() == []


# --------------------------------------------------------------------------- webhooks


WEBHOOK_KEY = "vB1pD0w3fM8kG7+emulated+webhook+key/Q=="


class Receiver:
    """A receiver that does what Xero asks: 200 with no body for a good signature, 401 for a
    bad one; it can be told to fail to see events kept for the next delivery."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.bodies: list[bytes] = []
        self.fail = False
        self.server = EmulatorServer(self.handle)

    def handle(self, request: Request) -> Response:
        body = request.get_data()
        expected = base64.b64encode(hmac.new(self.key.encode(), body, hashlib.sha256).digest())
        given = request.headers.get("x-xero-signature", "").encode()
        if not hmac.compare_digest(expected, given):
            return Response(status=401)
        if self.fail:
            return Response(status=503)
        self.bodies.append(body)
        return Response(status=200)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver(WEBHOOK_KEY)
    served.server.start()
    yield served
    served.server.stop()


def webhook_schema() -> Draft202012Validator:
    path = spec_path(WEBHOOKS_SPEC)
    if path is None:
        pytest.skip(missing_reason(WEBHOOKS_SPEC))
    spec = yaml.safe_load(path.read_text())
    return Draft202012Validator(
        {"$ref": "#/components/schemas/WebhookEvent", "components": spec["components"]}
    )


def test_invoice_and_contact_changes_are_posted_signed_as_xero_does(
    h: XeroHarness, receiver: Receiver
) -> None:
    schema = webhook_schema()
    h.emulator.add_webhook(receiver.server.url + "/xero", WEBHOOK_KEY)
    assert [h.emulator.send_intent_to_receive(v) for v in (True, False)] == [200, 401]
    invoice = paid_invoice(h, "pi_14")  # a contact, an invoice, its payment

    assert h.emulator.deliver_pending() == [200]

    [body] = receiver.bodies[-1:]
    payload = json.loads(body)
    assert list(schema.iter_errors(payload)) == []
    events = payload["events"]
    # the contact appears, the invoice is created, its payment changes it
    assert [(e["eventCategory"], e["eventType"]) for e in events] == [
        ("CONTACT", "CREATE"),
        ("INVOICE", "CREATE"),
        ("INVOICE", "UPDATE"),
    ]
    event = events[1]
    assert {e["resourceId"] for e in events[1:]} == {invoice.id}
    assert event["resourceUrl"] == f"https://api.xero.com/api.xro/2.0/Invoices/{invoice.id}"
    assert (event["tenantId"], event["tenantType"]) == (h.emulator.tenants[0], "ORGANISATION")
    assert payload["lastEventSequence"] - payload["firstEventSequence"] == len(events) - 1
    assert len(payload["entropy"]) == 20

    h.advance(5)
    h.emulator.void(h.ledger.create_invoice(_small_draft(invoice), make_key("i", "f", "v")).id)
    receiver.fail = True
    assert h.emulator.deliver_pending() == [503]
    assert h.emulator.pending_webhook_events() == 2  # kept: Xero retries
    receiver.fail = False
    h.emulator.webhook_duplicates(True)
    assert h.emulator.deliver_pending() == [200, 200]  # at least once: here twice
    assert receiver.bodies[-1] == receiver.bodies[-2]
    created, voided = json.loads(receiver.bodies[-1])["events"]
    assert (created["eventType"], voided["eventType"]) == ("CREATE", "UPDATE")
    assert created["resourceId"] == voided["resourceId"] != invoice.id
    assert h.emulator.pending_webhook_events() == 0
    assert h.emulator.deliver_pending() == []
    assert h.violations() == []


def test_an_update_after_a_delivery_is_an_update_event(h: XeroHarness, receiver: Receiver) -> None:
    invoice = paid_invoice(h, "pi_15")
    h.emulator.add_webhook(receiver.server.url, WEBHOOK_KEY, categories=("INVOICE",))
    h.advance(2)
    h.emulator.archive_contact(invoice.customer_id)  # not subscribed to contacts
    h.ledger.send_invoice(invoice.id, make_key("send", "firm", "pi_15"))

    assert h.emulator.deliver_pending() == [200]

    [event] = json.loads(receiver.bodies[0])["events"]
    assert (event["eventCategory"], event["eventType"], event["resourceId"]) == (
        "INVOICE",
        "UPDATE",
        invoice.id,
    )
    assert h.violations() == []


def _small_draft(like: LedgerInvoice) -> InvoiceDraft:
    return InvoiceDraft(
        customer_id=like.customer_id,
        reference="karbon:small",
        lines=[InvoiceLine("Small job", usd("10.00"), item="PS", tax_code="NONE")],
        issue_date=DAY,
        due_date=DAY + timedelta(days=30),
    )


def test_the_emulator_refuses_what_xero_refuses_on_the_money_trail(h: XeroHarness) -> None:
    """Bank transfers between bank accounts only, never to the same one; no line coded to a
    bank or system account; a contact on every bank transaction: Xero's 400s, translated."""
    from xero_python.accounting import BankTransactions, BankTransfers

    from adapters.xero.translate import bank_transaction_model, bank_transfer_model

    api, tenant = h.xero.client.accounting, h.xero.client.tenant
    clearing, fees = h.account(CLEARING), h.account(FEES)

    def transfer(to: str) -> str | None:
        body = BankTransfers(bank_transfers=[bank_transfer_model(clearing, to, usd("1"), DAY, "x")])
        with pytest.raises(RejectedError) as refused:
            h.xero.client.call("transfer", api.create_bank_transfer, tenant, body, write=True)
        return refused.value.code

    def spend(line_account: str, contact: str) -> str | None:
        model = bank_transaction_model(
            "SPEND", bank_code=clearing, contact_id=contact, line_account=line_account,
            amount=usd("1"), on=DAY, reference="x", description="x", tax_type=None,
        )  # fmt: skip
        body = BankTransactions(bank_transactions=[model])
        with pytest.raises(RejectedError) as refused:
            h.xero.client.call("spend", api.create_bank_transactions, tenant, body, write=True)
        return refused.value.code

    customer = h.add_customer("Someone")
    assert transfer(fees) == "bank_account"
    assert transfer(clearing) == "same_account"
    assert spend(AR_CODE, customer) == "account_invalid"
    assert spend(h.account(BANK), customer) == "account_invalid"
    assert spend(fees, "0f0e0d0c-0000-4000-8000-000000000009") == "contact_missing"
    assert h.emulator.bank_transfers() == [] and h.emulator.bank_transactions() == []
    assert h.violations() == []
