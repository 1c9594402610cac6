"""The money trail in QuickBooks Online: the adapter's transfers, fees, refunds and returned
payments (python-quickbooks over real HTTP) against the emulator's double-entry books, exactly
once per key through lost answers, found again by their tag, account balances and payments for
`reconcile --check`, the pre-flight check of the account options, and the emulator's webhook
emitter. Every test ends by asserting the emulator saw no spec violation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import pytest
from quickbooks import QuickBooks
from quickbooks.cdc import change_data_capture
from quickbooks.exceptions import QuickbooksException, ValidationException
from quickbooks.objects.base import Ref
from quickbooks.objects.journalentry import (
    Entity,
    JournalEntry,
    JournalEntryLine,
    JournalEntryLineDetail,
)
from quickbooks.objects.purchase import Purchase
from quickbooks.objects.transfer import Transfer
from werkzeug.wrappers import Request, Response

from adapters.emulation.server import EmulatorServer
from adapters.emulation.specs import missing_reason, spec_path
from adapters.emulation.xsd import QUICKBOOKS_XSD
from adapters.quickbooks.adapter import CACHE_TTL, QuickBooksOptions
from adapters.quickbooks.translate import TAG
from connector.domain.errors import ConfigError, InvariantViolation, RejectedError, TransientError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.idempotency import KeyLimit, fit
from connector.ports import (
    AccountRole,
    FeeEntry,
    LedgerEntry,
    LedgerInvoiceStatus,
    LedgerNeeds,
    NeedKind,
    PaymentPosting,
    RefundEntry,
    ReturnedPaymentEntry,
    TransferEntry,
)
from tests.contract.harness_quickbooks import QuickBooksHarness
from tests.integration.test_quickbooks_adapter import InstantTime, draft
from tests.integration.test_quickbooks_emulator import sdk

CLEARING, BANK, FEES, DISPUTES = (
    AccountRole.CLEARING,
    AccountRole.BANK,
    AccountRole.FEES,
    AccountRole.DISPUTES,
)
ON = date(2026, 3, 12)
CHARGE = "ch_3NxAbCdEfGhIjKlMnOpQrStU"  # Stripe ids are 27-28 characters: too long for DocNumber


def usd(amount: str) -> Money:
    return Money(amount, "USD")


def key(name: str) -> IdempotencyKey:
    # as long as the core's keys get: fitted to QBO's 50-character requestid
    return IdempotencyKey(f"post_entry:smith-and-partners-cpa:{name}:stripe-movement:0")


Make = Callable[..., QuickBooksHarness]


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[QuickBooksHarness] = []

    def build(**kwargs: object) -> QuickBooksHarness:
        kwargs.setdefault("time", InstantTime())
        harness = QuickBooksHarness(**kwargs)  # type: ignore[arg-type]
        made.append(harness)
        return harness

    yield build
    try:
        for harness in made:
            assert harness.emulator.violations() == []
            assert harness.emulator.internal_errors == []
            assert harness.emulator.unbalanced() == []  # every transaction's books balance
    finally:
        for harness in made:
            harness.close()


@pytest.fixture
def h(make: Make) -> QuickBooksHarness:
    return make()


class Paid:
    """An invoice of 1000.00 for Acme, paid in full through the clearing account."""

    def __init__(self, h: QuickBooksHarness, amount: str = "1000.00") -> None:
        self.customer = LedgerCustomerId(h.add_customer("Acme Ltd"))
        self.invoice = h.ledger.create_invoice(
            draft(self.customer, "karbon:wi-1:ms-1", amount), IdempotencyKey("ci:ms-1:0")
        )
        self.payment = h.ledger.record_payment(
            PaymentPosting(self.invoice.id, self.customer, usd(amount), ON, CHARGE),
            IdempotencyKey("rp:ms-1:0"),
        )


def entries(paid: Paid) -> dict[str, LedgerEntry]:
    """One entry of each kind, as the core would book a month of Stripe activity."""
    return {
        "payout": TransferEntry(
            CLEARING, BANK, usd("770.70"), ON, "po_1OaBcDeFgHiJkLmNoPqRsTuV", "Stripe payout"
        ),
        "fee": FeeEntry(usd("29.30"), ON, "txn_1OaBcDeFgHiJkLmNoPqRsTuV", "Stripe fee on ch_3Nx"),
        "fee credit": FeeEntry(usd("-1.50"), ON, "txn_1OaBcDeFgHiJkLmNoPqRsTuW", "Fee refunded"),
        "refund": RefundEntry(
            paid.invoice.id,
            paid.customer,
            usd("200.00"),
            ON,
            "re_1OaBcDeFgHiJkLmNoPqRsTuV",
            "Refund",
        ),
        "returned payment": ReturnedPaymentEntry(
            paid.invoice.id,
            paid.customer,
            usd("300.00"),
            ON,
            "txn_1OaBcDeFgHiJkLmNoPqRsTuX",
            "ACH debit returned (R01 insufficient funds)",
        ),
    }


ENTITY_OF = {
    "payout": "Transfer",
    "fee": "Purchase",
    "fee credit": "Deposit",
    "refund": "RefundReceipt",
    "returned payment": "JournalEntry",
}
KINDS = list(ENTITY_OF)


def request_ids(h: QuickBooksHarness, entity: str) -> list[str]:
    return [
        parse_qs(r.query).get("requestid", [""])[0]
        for r in h.emulator.requests(f"/{entity.lower()}", "POST")
    ]


# --------------------------------------------------------------------------- exactly once


@pytest.mark.parametrize("kind", KINDS)
def test_each_entry_is_booked_once_per_key(h: QuickBooksHarness, kind: str):
    entry = entries(Paid(h))[kind]
    entity = ENTITY_OF[kind]
    first = h.ledger.post_entry(entry, key(kind))
    again = h.ledger.post_entry(entry, key(kind))
    assert again == first
    (booked,) = h.emulator.transactions(entity)
    assert booked["Id"] == first
    assert booked["PrivateNote"].endswith(f"{TAG} {entry.reference}")
    assert booked["TxnDate"] == ON.isoformat()
    assert "DocNumber" not in booked  # a Stripe id does not fit 21 characters
    assert request_ids(h, entity) == [fit(key(kind), KeyLimit.QUICKBOOKS)] * 2
    assert h.ledger.find_entry(entry) == first


@pytest.mark.parametrize("kind", KINDS)
def test_a_lost_answer_is_found_and_never_booked_twice(h: QuickBooksHarness, kind: str):
    entry = entries(Paid(h))[kind]
    entity = ENTITY_OF[kind]
    h.drop_next_writes(h.options.max_attempts)  # every retry's answer is lost too
    with pytest.raises(TransientError) as lost:
        h.ledger.post_entry(entry, key(kind))
    assert lost.value.outcome_unknown
    (booked,) = h.emulator.transactions(entity)
    found = h.ledger.find_entry(entry)
    assert found == booked["Id"]
    # the core may still replay under the same key: QuickBooks answers with the same object
    assert h.ledger.post_entry(entry, key(kind)) == found
    assert len(h.emulator.transactions(entity)) == 1


def test_a_lost_answer_within_the_retries_is_replayed_by_requestid(h: QuickBooksHarness):
    entry = entries(Paid(h))["payout"]
    h.drop_next_writes(2)
    transfer_id = h.ledger.post_entry(entry, key("payout"))
    assert [t["Id"] for t in h.emulator.transactions("Transfer")] == [transfer_id]
    assert len(set(request_ids(h, "Transfer"))) == 1  # three attempts, one requestid


def test_find_entry_tells_entries_apart(h: QuickBooksHarness):
    paid = Paid(h)
    payout = entries(paid)["payout"]
    booked = h.ledger.post_entry(payout, key("payout"))
    assert h.ledger.find_entry(payout) == booked
    day_later = TransferEntry(
        CLEARING, BANK, payout.amount, date(2026, 3, 13), payout.reference, ""
    )
    assert h.ledger.find_entry(day_later) == booked  # a day either side (time zones)
    week_later = TransferEntry(
        CLEARING, BANK, payout.amount, date(2026, 3, 19), payout.reference, ""
    )
    assert h.ledger.find_entry(week_later) is None
    other = TransferEntry(CLEARING, BANK, payout.amount, ON, "po_1OaBcDeFgHiJkLmNoPqRsTuZ", "")
    assert h.ledger.find_entry(other) is None
    reversed_ = TransferEntry(BANK, CLEARING, payout.amount, ON, payout.reference, "")
    assert h.ledger.find_entry(reversed_) is None
    hold = TransferEntry(CLEARING, DISPUTES, payout.amount, ON, payout.reference, "")
    assert h.ledger.find_entry(hold) is None
    as_fee = FeeEntry(payout.amount, ON, payout.reference, "")
    assert h.ledger.find_entry(as_fee) is None
    other_amount = TransferEntry(CLEARING, BANK, usd("770.71"), ON, payout.reference, "")
    assert h.ledger.find_entry(other_amount) is None


# --------------------------------------------------------------------------- how they read


def test_a_payout_is_one_transfer_from_clearing_to_the_bank(h: QuickBooksHarness):
    payout = entries(Paid(h))["payout"]
    h.ledger.post_entry(payout, key("payout"))
    (transfer,) = h.emulator.transactions("Transfer")
    assert transfer["FromAccountRef"]["name"] == "Stripe Clearing"
    assert transfer["ToAccountRef"]["name"] == "Checking"
    assert Decimal(str(transfer["Amount"])) == Decimal("770.70")
    assert transfer["PrivateNote"] == f"Stripe payout\n{TAG} {payout.reference}"


def all_accounts(**changes: str | None) -> QuickBooksOptions:
    """The harness's four accounts, with `changes` on top."""
    base: dict[str, Any] = {
        "currency": "USD",
        "clearing_account": "Stripe Clearing",
        "bank_account": "Checking",
        "fee_account": "Stripe Fees",
        "disputes_account": "Stripe Disputes",
    }
    return QuickBooksOptions(**(base | changes))


def test_a_fee_is_an_expense_paid_from_clearing_and_a_fee_credit_a_deposit(make: Make):
    h = make(options=all_accounts(fee_vendor="Stripe"))
    vendor = h.emulator.add_vendor("Stripe")
    fee = FeeEntry(usd("29.30"), ON, "txn_short_29", "Stripe fee")  # 12 characters: a DocNumber
    h.ledger.post_entry(fee, key("fee"))
    (purchase,) = h.emulator.transactions("Purchase")
    assert purchase["PaymentType"] == "Cash"
    assert purchase["AccountRef"]["name"] == "Stripe Clearing"
    assert purchase["EntityRef"] == {"value": vendor, "name": "Stripe", "type": "Vendor"}
    (line,) = purchase["Line"]
    assert line["AccountBasedExpenseLineDetail"]["AccountRef"]["name"] == "Stripe Fees"
    assert Decimal(str(line["Amount"])) == Decimal("29.30")
    assert purchase["DocNumber"] == "txn_short_29"
    credit = FeeEntry(usd("-1.50"), ON, "txn_short_15", "Fee refunded")
    h.ledger.post_entry(credit, key("credit"))
    (deposit,) = h.emulator.transactions("Deposit")
    assert deposit["DepositToAccountRef"]["name"] == "Stripe Clearing"
    (line,) = deposit["Line"]
    assert line["DepositLineDetail"]["AccountRef"]["name"] == "Stripe Fees"
    assert line["DepositLineDetail"]["Entity"]["value"] == vendor
    assert Decimal(str(deposit["TotalAmt"])) == Decimal("1.50")
    assert h.ledger.account_balance(FEES) == usd("27.80")


def test_a_refund_reverses_the_invoices_own_item_and_tax_code(h: QuickBooksHarness):
    customer = LedgerCustomerId(h.add_customer("Acme Ltd"))
    item = h.emulator.add_item("Tax return")  # sold into the Services income account
    invoice = h.ledger.create_invoice(
        draft(customer, "karbon:wi-2:ms-1", "500.00", item="Tax return", tax_code="TAX"),
        IdempotencyKey("ci:ms-2:0"),
    )
    refund = RefundEntry(invoice.id, customer, usd("120.00"), ON, "re_1OaBcDeFgHiJkLmNoPqRsTuV", "")
    h.ledger.post_entry(refund, key("refund"))
    (receipt,) = h.emulator.transactions("RefundReceipt")
    assert receipt["CustomerRef"]["value"] == customer
    assert receipt["DepositToAccountRef"]["name"] == "Stripe Clearing"
    line = receipt["Line"][0]["SalesItemLineDetail"]
    assert line["ItemRef"]["value"] == item
    assert line["TaxCodeRef"]["value"] == "TAX"
    assert Decimal(str(receipt["TotalAmt"])) == Decimal("120.00")


def test_a_refund_for_an_invoice_quickbooks_lost_is_rejected(h: QuickBooksHarness):
    paid = Paid(h)
    refund = RefundEntry(
        LedgerInvoiceId("999"), paid.customer, usd("5.00"), ON, "re_1OaBcDeFgHiJkLmNoPqRsTuV", ""
    )
    with pytest.raises(RejectedError) as refused:
        h.ledger.post_entry(refund, key("refund"))
    assert refused.value.code == "invoice_not_found"
    assert h.emulator.transactions("RefundReceipt") == []


# --------------------------------------------------------------------------- balances


def test_a_month_of_stripe_activity_leaves_clearing_at_zero(h: QuickBooksHarness):
    paid = Paid(h)  # 1000 in
    assert h.ledger.account_balance(CLEARING) == usd("1000.00")
    bank_before = h.ledger.account_balance(BANK)
    trail = entries(paid)
    h.ledger.post_entry(trail["fee"], key("fee"))  # 29.30 out
    h.ledger.post_entry(trail["refund"], key("refund"))  # 200 back to the client
    rest = TransferEntry(CLEARING, BANK, usd("770.70"), ON, "po_1OaBcDeFgHiJkLmNoPqRsTuV", "")
    h.ledger.post_entry(rest, key("payout"))  # the rest to the bank
    assert h.ledger.account_balance(CLEARING) == usd("0.00")
    assert h.ledger.account_balance(BANK) == bank_before + usd("770.70")
    assert h.ledger.account_balance(FEES) == usd("29.30")
    assert h.ledger.account_balance(DISPUTES) == usd("0.00")
    # the adapter reads what the books hold; the books are the emulator's own double entry
    for role in (CLEARING, BANK, FEES):
        assert h.ledger.account_balance(role) == h.balance(role)
    assert h.emulator.account_total("Services") == Decimal("800.00")  # revenue net of refund
    assert h.emulator.customer_balance(paid.customer) == 0
    assert h.emulator.current_balance("Stripe Fees") == 0  # QBO keeps no P&L CurrentBalance


def test_a_negative_payout_pulls_from_the_bank(h: QuickBooksHarness):
    Paid(h, "100.00")
    pull = TransferEntry(BANK, CLEARING, usd("50.00"), ON, "po_1OaBcDeFgHiJkLmNoPqRsTuN", "")
    h.ledger.post_entry(pull, key("pull"))
    (transfer,) = h.emulator.transactions("Transfer")
    assert (transfer["FromAccountRef"]["name"], transfer["ToAccountRef"]["name"]) == (
        "Checking",
        "Stripe Clearing",
    )
    assert h.ledger.account_balance(CLEARING) == usd("150.00")
    assert h.ledger.account_balance(BANK) == usd("-50.00")


def test_a_dispute_holds_money_then_releases_it_or_loses_it(h: QuickBooksHarness):
    paid = Paid(h)
    hold = TransferEntry(CLEARING, DISPUTES, usd("1000.00"), ON, "txn_dispute_withdrawn_0001", "")
    h.ledger.post_entry(hold, key("hold"))
    assert h.ledger.account_balance(DISPUTES) == usd("1000.00")
    assert h.ledger.account_balance(CLEARING) == usd("0.00")
    won = TransferEntry(DISPUTES, CLEARING, usd("1000.00"), ON, "txn_dispute_reinstated_01", "")
    h.ledger.post_entry(won, key("won"))
    assert h.ledger.account_balance(DISPUTES) == usd("0.00")
    assert h.ledger.account_balance(CLEARING) == usd("1000.00")
    # a second dispute, lost: the held money goes back to the client from the disputes account
    h.ledger.post_entry(
        TransferEntry(CLEARING, DISPUTES, usd("1000.00"), ON, "txn_dispute_withdrawn_0002", ""),
        key("hold-2"),
    )
    lost = RefundEntry(
        paid.invoice.id,
        paid.customer,
        usd("1000.00"),
        ON,
        "dp_1OaBcDeFgHiJkLmNoPqRsTuV",
        "Dispute lost",
        from_account=DISPUTES,
    )
    receipt_id = h.ledger.post_entry(lost, key("lost"))
    receipt = h.emulator.entity("RefundReceipt", receipt_id)
    assert receipt["DepositToAccountRef"]["name"] == "Stripe Disputes"  # an Other Current Asset
    assert h.ledger.account_balance(DISPUTES) == usd("0.00")
    assert h.ledger.account_balance(CLEARING) == usd("0.00")
    assert h.emulator.account_total("Services") == Decimal("0.00")


def test_a_returned_payment_leaves_the_customer_owing_again(h: QuickBooksHarness):
    paid = Paid(h)
    assert h.emulator.customer_balance(paid.customer) == 0
    returned = ReturnedPaymentEntry(
        paid.invoice.id, paid.customer, usd("1000.00"), ON, "txn_1OaBcDeFgHiJkLmNoPqRsTuR", "ACH"
    )
    journal_id = h.ledger.post_entry(returned, key("returned"))
    assert h.emulator.customer_balance(paid.customer) == Decimal("1000.00")
    assert h.ledger.account_balance(CLEARING) == usd("0.00")
    debit, credit = h.emulator.entity("JournalEntry", journal_id)["Line"]
    assert debit["JournalEntryLineDetail"]["PostingType"] == "Debit"
    assert debit["JournalEntryLineDetail"]["AccountRef"]["name"] == "Accounts Receivable (A/R)"
    assert debit["JournalEntryLineDetail"]["Entity"]["EntityRef"]["value"] == paid.customer
    assert credit["JournalEntryLineDetail"]["PostingType"] == "Credit"
    assert credit["JournalEntryLineDetail"]["AccountRef"]["name"] == "Stripe Clearing"
    # history is not edited: the invoice stays paid by its payment
    assert h.ledger.get_invoice(paid.invoice.id).status is LedgerInvoiceStatus.PAID
    (payment,) = h.emulator.payments()
    assert payment["Id"] == paid.payment and payment["SyncToken"] == "0"


def test_payments_since_for_reconcile(h: QuickBooksHarness):
    paid = Paid(h, "400.00")
    cheque_invoice = h.ledger.create_invoice(
        draft(paid.customer, "karbon:wi-1:ms-2", "250.00"), IdempotencyKey("ci:ms-2:0")
    )
    cheque = h.emulator.pay_externally(cheque_invoice.id, Decimal("250.00"), on=date(2026, 3, 11))
    old = h.ledger.create_invoice(
        draft(paid.customer, "karbon:wi-1:ms-0", "75.00"), IdempotencyKey("ci:ms-0:0")
    )
    h.emulator.pay_externally(old.id, Decimal("75.00"), on=date(2026, 2, 27))
    found = {p.id: p for p in h.ledger.payments_since(date(2026, 3, 1))}
    assert set(found) == {paid.payment, cheque}
    ours = found[paid.payment]
    assert (ours.reference, ours.invoice_id, ours.amount, ours.paid_on, ours.account) == (
        CHARGE,
        paid.invoice.id,
        usd("400.00"),
        ON,
        CLEARING,
    )
    theirs = found[cheque]
    assert (theirs.reference, theirs.invoice_id, theirs.amount, theirs.account) == (
        None,
        cheque_invoice.id,
        usd("250.00"),
        None,  # a cheque lands in Undeposited Funds, not the clearing account
    )
    assert h.ledger.payments_since(date(2026, 3, 13)) == []


# --------------------------------------------------------------------------- configuration


def test_check_names_each_account_problem_and_what_to_fix(make: Make):
    h = make(
        options=all_accounts(
            bank_account="Chequing",  # no such account
            fee_account="Checking",  # a Bank account, not an expense
            disputes_account="Old Disputes",
            fee_vendor="Stripe Inc",
        )
    )
    h.emulator.add_account("Old Disputes", "Other Current Asset", active=False)
    problems = {p.value: p for p in h.ledger.check(LedgerNeeds())}
    assert set(problems) == {"bank_account", "fee_account", "disputes_account", "fee_vendor"}
    assert all(p.kind is NeedKind.ACCOUNT for p in problems.values())
    assert "no account 'Chequing'" in problems["bank_account"].message
    assert "is a Bank account" in problems["fee_account"].message
    assert "Expense" in problems["fee_account"].message
    assert "inactive" in problems["disputes_account"].message
    assert "no vendor 'Stripe Inc'" in problems["fee_vendor"].message


def test_check_looks_only_at_the_accounts_configured(make: Make):
    h = make(options=QuickBooksOptions(currency="USD", clearing_account="Stripe Clearing"))
    assert h.ledger.check(LedgerNeeds()) == []
    h2 = make(
        options=all_accounts(bank_account=None, fee_account=None, disputes_account="Checking")
    )
    (problem,) = h2.ledger.check(LedgerNeeds())
    assert problem.value == "disputes_account"
    assert "is a Bank account" in problem.message and "Other Current Asset" in problem.message
    h3 = make(options=all_accounts(disputes_account="Stripe Clearing"))
    (problem,) = h3.ledger.check(LedgerNeeds())
    assert problem.value == "disputes_account"
    assert "clearing_account and disputes_account both name" in problem.message


def test_an_entry_needing_an_unconfigured_account_is_a_config_error(make: Make):
    h = make(options=QuickBooksOptions(currency="USD", clearing_account="Stripe Clearing"))
    payout = TransferEntry(CLEARING, BANK, usd("10.00"), ON, "po_1OaBcDeFgHiJkLmNoPqRsTuV", "")
    with pytest.raises(ConfigError) as missing:
        h.ledger.post_entry(payout, key("payout"))
    assert "bank_account" in str(missing.value)
    with pytest.raises(ConfigError) as fees:
        h.ledger.account_balance(FEES)
    assert "fee_account" in str(fees.value)
    assert h.emulator.transactions("Transfer") == []


def test_an_account_archived_after_the_check_is_rejected_then_reported(h: QuickBooksHarness):
    assert h.ledger.check(LedgerNeeds()) == []  # resolved and cached
    h.emulator.archive_account("Stripe Fees")
    fee = FeeEntry(usd("29.30"), ON, "txn_1OaBcDeFgHiJkLmNoPqRsTuV", "Stripe fee")
    with pytest.raises(RejectedError) as refused:
        h.ledger.post_entry(fee, key("fee"))
    assert refused.value.code == "fee_account"
    assert "account 'Stripe Fees' (ledger option fee_account) is inactive" in str(refused.value)
    with pytest.raises(ConfigError) as config:  # the cache was dropped: read afresh
        h.ledger.post_entry(fee, key("fee"))
    assert "inactive" in str(config.value)


def test_a_closed_period_is_rejected(h: QuickBooksHarness):
    payout = TransferEntry(CLEARING, BANK, usd("10.00"), ON, "po_1OaBcDeFgHiJkLmNoPqRsTuV", "")
    h.emulator.set_book_close_date(date(2026, 3, 31))
    with pytest.raises(RejectedError) as refused:
        h.ledger.post_entry(payout, key("payout"))
    assert refused.value.code == "period_closed"
    assert "2026-03-12" in str(refused.value)


def test_money_in_another_currency_than_its_accounts_is_rejected(h: QuickBooksHarness):
    euros = TransferEntry(CLEARING, BANK, Money("10.00", "EUR"), ON, "po_euro", "")
    with pytest.raises(RejectedError) as off:
        h.ledger.post_entry(euros, key("euros"))
    assert off.value.code == "currency" and "multicurrency is off" in str(off.value)
    h.emulator.enable_multicurrency("EUR")
    h.advance(CACHE_TTL + 1)  # the adapter trusts what it read of the company for 5 minutes
    with pytest.raises(RejectedError) as kept:
        h.ledger.post_entry(euros, key("euros"))
    assert kept.value.code == "currency"
    assert "'Stripe Clearing' (ledger option clearing_account) is kept in USD" in str(kept.value)
    assert h.emulator.transactions("Transfer") == []


def test_amounts_of_the_wrong_sign_are_bugs(h: QuickBooksHarness):
    with pytest.raises(InvariantViolation):
        h.ledger.post_entry(
            TransferEntry(CLEARING, BANK, usd("-1.00"), ON, "po_x", ""), key("negative")
        )
    with pytest.raises(InvariantViolation):
        h.ledger.post_entry(FeeEntry(usd("0.00"), ON, "txn_x", ""), key("zero"))


# --------------------------------------------------------------------------- webhooks


class Receiver:
    """A loopback endpoint standing in for milestone-sync's webhook receiver."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []  # statuses to answer with first (then 200)
        self.server = EmulatorServer(self._handle)
        self.url = self.server.start() + "/webhooks/quickbooks"

    def _handle(self, request: Request) -> Response:
        self.received.append((dict(request.headers), request.get_data()))
        return Response(status=self.answers.pop(0) if self.answers else 200)

    def bodies(self) -> list[Any]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.stop()


def signed(headers: dict[str, str], body: bytes, token: str) -> bool:
    digest = hmac.new(token.encode(), body, hashlib.sha256).digest()
    return hmac.compare_digest(headers["Intuit-Signature"], base64.b64encode(digest).decode())


def test_webhooks_announce_invoice_and_payment_changes_as_cloudevents(
    h: QuickBooksHarness, receiver: Receiver
):
    h.emulator.add_webhook(receiver.url, "verifier-token-1")
    paid = Paid(h)
    h.void(paid.invoice.id)
    deliveries = h.emulator.deliver_pending()
    assert [d.status for d in deliveries] == [200]
    ((headers, body),) = receiver.received
    assert signed(headers, body, "verifier-token-1")
    events = json.loads(body)
    assert [(e["type"], e["intuitentityid"]) for e in events] == [
        ("qbo.invoice.created.v1", paid.invoice.id),
        ("qbo.payment.created.v1", paid.payment),
        ("qbo.invoice.updated.v1", paid.invoice.id),  # the payment changed its balance
        ("qbo.payment.updated.v1", paid.payment),  # the void unapplied it
        ("qbo.invoice.voided.v1", paid.invoice.id),
    ]
    first = events[0]
    assert first["specversion"] == "1.0"
    assert first["intuitaccountid"] == h.emulator.realm_id
    assert first["source"].startswith("intuit.")
    assert first["datacontenttype"] == "application/json" and first["data"] == {}
    assert first["time"].endswith("Z")
    assert len({e["id"] for e in events}) == len(events)
    assert h.emulator.deliver_pending() == []  # nothing left


def test_legacy_webhooks_carry_the_entities_and_operations(
    h: QuickBooksHarness, receiver: Receiver
):
    h.emulator.add_webhook(receiver.url, "verifier-token-2", payload="legacy")
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer, "ms-1"), IdempotencyKey("ci:1"))
    h.ledger.send_invoice(created.id, IdempotencyKey("si:1"))
    h.emulator.deliver_pending()
    ((headers, body),) = receiver.received
    assert signed(headers, body, "verifier-token-2")
    (notification,) = json.loads(body)["eventNotifications"]
    assert notification["realmId"] == h.emulator.realm_id
    changes = notification["dataChangeEvent"]["entities"]
    assert [(c["name"], c["id"], c["operation"]) for c in changes] == [
        ("Invoice", created.id, "Create"),
        ("Invoice", created.id, "Emailed"),
    ]
    assert re.fullmatch(r"2026-03-10T18:0\d:\d\d\.\d{3}Z", changes[0]["lastUpdated"])


def test_webhooks_are_delivered_at_least_once(h: QuickBooksHarness, receiver: Receiver):
    h.emulator.add_webhook(receiver.url, "verifier-token-3")
    customer = h.add_customer("Acme")
    h.ledger.create_invoice(draft(customer, "ms-1"), IdempotencyKey("ci:1"))
    receiver.answers = [500]
    assert [d.status for d in h.emulator.deliver_pending()] == [500]
    assert h.emulator.pending_notifications() == 1  # kept for the next attempt
    assert [d.status for d in h.emulator.deliver_pending()] == [200]
    first, second = receiver.bodies()
    assert first == second  # the same event, same id: the receiver deduplicates by id
    h.emulator.set_webhook_duplicates(True)
    h.ledger.create_invoice(draft(customer, "ms-2"), IdempotencyKey("ci:2"))
    assert [d.status for d in h.emulator.deliver_pending()] == [200, 200]
    assert receiver.bodies()[2] == receiver.bodies()[3]


def test_an_unreachable_receiver_keeps_its_notifications(h: QuickBooksHarness):
    server = EmulatorServer(lambda request: Response(status=200))
    url = server.start()
    server.stop()  # nobody listens there now
    h.emulator.add_webhook(url, "verifier-token-4", payload="legacy")
    h.ledger.create_invoice(draft(h.add_customer("Acme"), "ms-1"), IdempotencyKey("ci:1"))
    (delivery,) = h.emulator.deliver_pending(timeout=1.0)
    assert delivery.status is None and delivery.error
    assert h.emulator.pending_notifications() == 1


# --------------------------------------------------------------------------- the emulator's books


def sdk_client(h: QuickBooksHarness) -> QuickBooks:
    return sdk(h.emulator, h.tokens.current().access_token)


def account_id(h: QuickBooksHarness, name: str) -> str:
    (row,) = [a for a in h.emulator.transactions("Account") if a["Name"] == name]
    return str(row["Id"])


def journal(h: QuickBooksHarness, *lines: tuple[str, str, str, str | None]) -> JournalEntry:
    entry = JournalEntry()
    entry.TxnDate = ON.isoformat()
    for posting, account, amount, customer in lines:
        line = JournalEntryLine()
        line.Amount = Decimal(amount)
        detail = JournalEntryLineDetail()
        detail.PostingType = posting
        detail.AccountRef = Ref()
        detail.AccountRef.value = account_id(h, account)
        if customer is not None:
            detail.Entity = Entity()
            detail.Entity.Type = "Customer"
            detail.Entity.EntityRef = Ref()
            detail.Entity.EntityRef.value = customer
        line.JournalEntryLineDetail = detail
        entry.Line.append(line)
    return entry


def transfer(h: QuickBooksHarness, source: str, target: str, amount: str) -> Transfer:
    obj = Transfer()
    obj.FromAccountRef = Ref()
    obj.FromAccountRef.value = account_id(h, source)
    obj.ToAccountRef = Ref()
    obj.ToAccountRef.value = account_id(h, target)
    obj.Amount = Decimal(amount)
    obj.TxnDate = ON.isoformat()
    return obj


def test_journal_entries_must_balance_and_name_the_customer_on_receivables(h: QuickBooksHarness):
    qb = sdk_client(h)
    customer = h.add_customer("Acme")
    ar = "Accounts Receivable (A/R)"
    unbalanced = journal(h, ("Debit", ar, "10.00", customer), ("Credit", "Checking", "9.00", None))
    with pytest.raises(QuickbooksException) as refused:
        unbalanced.save(qb=qb)
    assert refused.value.error_code == 6000 and "out of balance" in refused.value.detail
    nobody = journal(h, ("Debit", ar, "10.00", None), ("Credit", "Checking", "10.00", None))
    with pytest.raises(QuickbooksException) as refused:
        nobody.save(qb=qb)
    assert "must choose a customer" in refused.value.detail
    good = journal(h, ("Debit", ar, "10.00", customer), ("Credit", "Checking", "10.00", None))
    good.save(qb=qb)
    assert h.emulator.customer_balance(customer) == Decimal("10.00")
    assert h.emulator.current_balance("Checking") == Decimal("-10.00")


def test_transfers_move_money_between_two_balance_sheet_accounts(h: QuickBooksHarness):
    qb = sdk_client(h)
    with pytest.raises(QuickbooksException) as same:
        transfer(h, "Checking", "Checking", "5.00").save(qb=qb)
    assert "must differ" in same.value.detail
    with pytest.raises(QuickbooksException) as income:
        transfer(h, "Services", "Checking", "5.00").save(qb=qb)
    assert "balance sheet" in income.value.detail
    with pytest.raises(QuickbooksException) as nothing:
        transfer(h, "Stripe Clearing", "Checking", "0").save(qb=qb)
    assert "more than zero" in nothing.value.detail
    assert h.emulator.transactions("Transfer") == []


def test_a_body_the_xsd_refuses_is_a_violation_and_a_fault(h: QuickBooksHarness):
    if spec_path(QUICKBOOKS_XSD) is None:
        pytest.skip(missing_reason(QUICKBOOKS_XSD))
    purchase = Purchase()
    purchase.PaymentType = "Bitcoin"  # not in the XSD's PaymentTypeEnum
    purchase.AccountRef = Ref()
    purchase.AccountRef.value = account_id(h, "Stripe Clearing")
    with pytest.raises(QuickbooksException) as refused:
        purchase.save(qb=sdk_client(h))
    assert refused.value.error_code == 2170
    (violation,) = h.emulator.violations()
    assert "PaymentType" in violation
    h.emulator.log.clear()  # seen; the fixture checks the rest


def test_deleting_a_transfer_reverses_it_and_the_change_feed_says_so(h: QuickBooksHarness):
    qb = sdk_client(h)
    saved = transfer(h, "Stripe Clearing", "Checking", "40.00").save(qb=qb)
    assert h.emulator.current_balance("Checking") == Decimal("40.00")
    assert h.emulator.current_balance("Stripe Clearing") == Decimal("-40.00")
    Transfer.get(saved.Id, qb=qb).delete(qb=qb)
    assert h.emulator.current_balance("Checking") == 0
    assert h.emulator.current_balance("Stripe Clearing") == 0
    changed = change_data_capture([Transfer], "2026-03-10T00:00:00-08:00", qb=qb)
    (gone,) = changed.Transfer
    assert (gone.Id, gone.status) == (saved.Id, "Deleted")


def test_money_trail_queries_filter_on_what_qbo_lets_them(h: QuickBooksHarness):
    qb = sdk_client(h)
    transfer(h, "Stripe Clearing", "Checking", "40.00").save(qb=qb)
    found = Transfer.query(
        "SELECT * FROM Transfer WHERE TxnDate >= '2026-03-11' AND TxnDate <= '2026-03-13'", qb=qb
    )
    assert len(found) == 1
    with pytest.raises(ValidationException) as refused:
        Transfer.query("SELECT * FROM Transfer WHERE Amount = '40.00'", qb=qb)
    assert "not queryable" in refused.value.detail


def test_the_trial_balance_shows_every_account_debit_or_credit(h: QuickBooksHarness):
    paid = Paid(h, "100.00")
    h.ledger.post_entry(FeeEntry(usd("3.20"), ON, "txn_fee_1", "fee"), key("fee"))
    report = sdk_client(h).get_report(
        "TrialBalance", {"start_date": "2026-01-01", "end_date": "2026-12-31"}
    )
    *rows, total = report["Rows"]["Row"]
    shown = {
        row["ColData"][0]["value"]: (row["ColData"][1]["value"], row["ColData"][2]["value"])
        for row in rows
    }
    assert shown == {
        "Services": ("", "100.00"),  # income: a credit
        "Stripe Clearing": ("96.80", ""),
        "Stripe Fees": ("3.20", ""),
    }
    assert total["group"] == "GrandTotal"
    assert total["Summary"]["ColData"][1]["value"] == total["Summary"]["ColData"][2]["value"]
    assert h.emulator.customer_balance(paid.customer) == 0
    before = sdk_client(h).get_report(
        "TrialBalance", {"start_date": "2026-01-01", "end_date": "2026-03-11"}
    )
    # on the 11th only the invoice (dated the 10th) was booked: receivable against income
    assert [r["ColData"][0]["value"] for r in before["Rows"]["Row"][:-1]] == [
        "Services",
        "Accounts Receivable (A/R)",
    ]
