"""XeroLedger (xero-python) over real HTTP against the Xero emulator: exactly-once creates through
dropped connections, Retry-After, budgets, batches, drafts, sending, payments, the change feed,
the pre-flight check, token refresh, two tenants side by side, and every bad input translated
into what the admin should fix. Every test ends with the emulator's spec check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from xero_python.accounting import (
    AccountingApi,
    Contact,
    Invoice,
    Invoices,
    LineAmountTypes,
    LineItem,
)
from xero_python.api_client import ApiClient
from xero_python.api_client.configuration import Configuration
from xero_python.api_client.oauth2 import OAuth2Token

from adapters.emulation.clock import EmulatedTime
from adapters.xero.adapter import XeroLedger, XeroOptions
from adapters.xero.client import _CallToken, private_configuration
from adapters.xero.emulator import XeroEmulator
from connector.domain.errors import ConfigError, RejectedError, TransientError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.idempotency import KeyLimit, fit, make_key
from connector.ports import (
    BatchItem,
    InvoiceDraft,
    InvoiceLine,
    LedgerInvoiceStatus,
    LedgerNeeds,
    NeedKind,
    PaymentPosting,
)
from tests.contract.harness_xero import CLEARING_ACCOUNT, EmulatorTokens, XeroHarness

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ISSUED = date(2026, 3, 2)
DUE = date(2026, 4, 1)


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


def key(name: str) -> IdempotencyKey:
    return make_key("invoice", "firm", name)


def draft(
    customer: str,
    reference: str = "karbon:wi-1:ms-1",
    amount: str = "250.00",
    **fields: Any,
) -> InvoiceDraft:
    line = InvoiceLine(
        description="Q1 bookkeeping",
        amount=Money(amount, fields.pop("currency", "USD")),
        item=fields.pop("item", "PS"),
        tax_code=fields.pop("tax_code", "NONE"),
    )
    fields.setdefault("due_date", DUE)  # None: the adapter works it out from the terms
    return InvoiceDraft(
        customer_id=LedgerCustomerId(customer),
        reference=reference,
        lines=[line],
        issue_date=fields.pop("issue_date", ISSUED),
        **fields,
    )


def puts(h: XeroHarness) -> list[Any]:
    return h.emulator.requests("PUT", "/Invoices")


def statuses(h: XeroHarness) -> list[int]:
    return [r.status for r in h.emulator.log.snapshot()]


# --------------------------------------------------------------------------- exactly once


def test_a_create_is_applied_once_when_its_answer_is_lost(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    h.emulator.drop_next_writes(1)
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    sent = puts(h)
    assert len(sent) == 2  # the dropped attempt and our retry: one HTTP request each
    assert {r.headers["Idempotency-Key"] for r in sent} == {fit(key("ms-1"), KeyLimit.XERO)}
    assert [i.id for i in h.all_invoices()] == [invoice.id]
    assert (invoice.reference, invoice.status) == ("karbon:wi-1:ms-1", LedgerInvoiceStatus.OPEN)
    assert invoice.total == Money("250.00", "USD")
    assert h.violations() == []


def test_the_harness_makes_a_lost_write_an_unknown_outcome(h: XeroHarness) -> None:
    """The contract harness drops every attempt, so the caller sees what the core handles."""
    customer = h.add_customer("Acme Ltd")
    h.drop_next_writes(1)
    with pytest.raises(TransientError) as lost:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert lost.value.outcome_unknown
    assert len(h.all_invoices()) == 1
    assert h.ledger.create_invoice(draft(customer), key("ms-1")).id == h.all_invoices()[0].id
    h.fail_next(1, 429)
    with pytest.raises(TransientError) as limited:
        h.ledger.get_invoice(h.all_invoices()[0].id)
    assert limited.value.retry_after == 1.0
    assert h.violations() == []


def test_a_dropped_put_is_sent_once_and_found_by_the_lookup(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(max_attempts=1)
    customer = h.add_customer("Acme Ltd")
    h.drop_next_writes(1)
    with pytest.raises(TransientError) as lost:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert lost.value.outcome_unknown
    assert len(puts(h)) == 1  # urllib3's hidden retries are off
    found = h.ledger.find_invoice(draft(customer))
    assert found is not None and [found.id] == [i.id for i in h.all_invoices()]
    again = h.ledger.create_invoice(draft(customer), key("ms-1"))  # replayed by its key
    assert again.id == found.id
    assert len(h.all_invoices()) == 1
    assert h.violations() == []


def test_without_our_settings_xero_python_would_duplicate_a_dropped_put(
    h: XeroHarness,
) -> None:
    """Pitfall 3, shown on the emulator: urllib3 resends a PUT whose answer was lost."""
    customer = h.add_customer("Acme Ltd")
    call_token = _CallToken()
    call_token.bind(h.tokens.current().access_token)
    configuration = private_configuration()
    configuration.oauth2_token = call_token
    accounting = AccountingApi(ApiClient(configuration), base_url=h.emulator.api_url)
    body = Invoices(
        invoices=[
            Invoice(
                type="ACCREC",
                contact=Contact(contact_id=customer),
                line_items=[
                    LineItem(
                        description="x",
                        quantity=Decimal(1),
                        unit_amount=Decimal(5),
                        account_code="200",
                    )
                ],
                date=ISSUED,
                due_date=ISSUED,
                line_amount_types=LineAmountTypes.EXCLUSIVE,
                status="AUTHORISED",
            )
        ]
    )
    h.emulator.drop_next_writes(1)
    accounting.create_invoices(h.emulator.tenants[0], body, _request_timeout=(5, 30))
    assert len(puts(h)) == 2
    assert len(h.all_invoices()) == 2  # a duplicate invoice, which our client prevents


def warm(h: XeroHarness) -> None:
    """Read the items once, so a fault injected next strikes the invoice's PUT."""
    assert h.ledger.check(LedgerNeeds(items=frozenset({"PS"}))) == []


def test_429_waits_retry_after_and_retries_with_the_same_key(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    warm(h)
    h.emulator.fail_next(1, 429)
    before = h.time.monotonic()
    h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert h.time.monotonic() - before >= 1.0  # Retry-After: 1, on the emulated clock
    sent = puts(h)
    assert [r.status for r in sent] == [429, 200]
    assert len({r.headers["Idempotency-Key"] for r in sent}) == 1
    assert len(h.all_invoices()) == 1
    assert h.violations() == []


def test_5xx_is_retried_and_a_long_outage_gives_up(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(max_attempts=3)
    customer = h.add_customer("Acme Ltd")
    warm(h)
    h.emulator.fail_next(2, 500)
    assert h.ledger.create_invoice(draft(customer), key("ms-1")).number == "INV-0001"
    h.emulator.fail_next(3, 503)
    with pytest.raises(TransientError) as down:
        h.ledger.create_invoice(draft(customer, "ms-2"), key("ms-2"))
    assert not down.value.outcome_unknown  # 503: Xero did not take it
    assert [r.status for r in puts(h)] == [500, 500, 200, 503, 503, 503]
    assert h.violations() == []


def test_every_call_has_a_timeout(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(time=EmulatedTime(start=START), timeout=(2, 1), max_attempts=1)
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.emulator.latency = 1.5  # seconds before Xero answers; our read timeout is 1
    with pytest.raises(TransientError) as read:
        h.ledger.get_invoice(invoice.id)
    assert not read.value.outcome_unknown
    with pytest.raises(TransientError) as write:
        h.ledger.create_invoice(draft(customer, "ms-2"), key("ms-2"))
    assert write.value.outcome_unknown  # sent, unanswered: the core looks it up first
    h.emulator.latency = 0.0


# --------------------------------------------------------------------------- budgets


def test_the_day_limit_is_reported_not_slept_out(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(emulator={"rate_limits": True, "limits": {"day": 3}})
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))  # items + put: 2 calls
    h.ledger.get_invoice(invoice.id)
    before = len(h.emulator.log.snapshot())
    with pytest.raises(TransientError) as limited:
        h.ledger.get_invoice(invoice.id)
    assert limited.value.retry_after is not None and limited.value.retry_after > 3600
    assert len(h.emulator.log.snapshot()) == before + 1  # not retried
    assert "day" in str(limited.value)


class SteppedTime(EmulatedTime):
    """Time that passes only when someone waits: `sleep` moves the shared clock instead of
    the wall clock, so budgets are exercised exactly, whatever the machine's speed."""

    def __init__(self) -> None:
        super().__init__(scale=1e-9, start=START)  # the wall clock barely counts

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
        time.sleep(0)


def run_threads(count: int, work: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # returned for the test to show
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_calls_stay_under_60_a_minute(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(time=SteppedTime(), emulator={"rate_limits": True})
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    started = h.time.monotonic()
    errors = run_threads(3, lambda: [h.ledger.get_invoice(invoice.id) for _ in range(25)])
    assert errors == []
    assert len(h.emulator.requests("GET", f"/Invoices/{invoice.id}")) == 75
    assert 429 not in statuses(h)
    assert h.xero.client._minute.waited > 0  # the client held calls back to stay under 60
    assert h.time.monotonic() - started >= 60
    assert h.violations() == []


def test_no_more_than_5_calls_are_in_flight(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(emulator={"rate_limits": True, "latency": 2.0})  # Xero takes 2 s to answer
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    errors = run_threads(8, lambda: [h.ledger.get_invoice(invoice.id) for _ in range(3)])
    assert errors == []
    assert len(h.emulator.requests("GET", f"/Invoices/{invoice.id}")) == 24
    assert 429 not in statuses(h)  # Xero refuses a 6th call in flight
    assert h.violations() == []


def test_capacity_warning_counts_the_calls_left_today(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(emulator={"limits": {"day": 40}})
    assert h.ledger.capacity_warning(5) is None
    assert h.ledger.capacity_warning(30) is None  # batched: 1 create + 30 emails + lookups
    warning = h.ledger.capacity_warning(100)
    assert warning is not None
    assert "Xero allows 39 more API calls today" in warning
    assert "batches of 50" in warning
    assert h.violations() == []


# --------------------------------------------------------------------------- batches, drafts


def test_a_batch_posts_in_one_request_and_rejects_only_the_bad_invoice(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    items = [
        BatchItem(draft(customer, "ms-1"), key("ms-1")),
        BatchItem(draft(customer, "ms-2", tax_code="BOGUS"), key("ms-2")),
        BatchItem(draft("not-a-guid", "ms-3"), key("ms-3")),
        BatchItem(draft(customer, "ms-4"), key("ms-4")),
    ]
    h.emulator.drop_next_writes(1)
    results = h.ledger.create_invoices(items)
    good, bad, local, last = results
    assert not isinstance(good, RejectedError) and not isinstance(last, RejectedError)
    assert isinstance(bad, RejectedError) and bad.code == "tax_type"
    assert "tax_code" in str(bad)
    assert isinstance(local, RejectedError) and local.code == "contact_missing"
    sent = puts(h)
    assert len(sent) == 2  # dropped, then replayed from Xero's idempotency store
    assert len(sent[0].json()["Invoices"]) == 3  # the invalid ContactID never left
    assert "summarizeErrors=False" in sent[0].query
    assert sent[0].headers["Idempotency-Key"].startswith("batch:")
    assert sorted(i.reference for i in h.all_invoices()) == ["ms-1", "ms-4"]
    assert h.violations() == []


def test_find_invoices_uses_few_requests_and_exact_references(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    drafts = [draft(customer, f"karbon:wi-{n}:ms-1") for n in range(15)]
    results = h.ledger.create_invoices([BatchItem(d, key(d.reference)) for d in drafts])
    assert all(not isinstance(r, RejectedError) for r in results)
    numbered = draft(customer, "numbered", doc_number="KB-77")
    h.ledger.create_invoice(numbered, key("numbered"))
    h.emulator.log.clear()
    lookup = [*drafts, numbered, draft(customer, "KARBON:WI-1:MS-1"), draft(customer, "absent")]
    found = h.ledger.find_invoices(lookup)
    assert set(found) == {d.reference for d in drafts} | {"numbered"}  # exact, case included
    assert len(h.emulator.requests("GET", "/Invoices")) == 3  # numbers, then 2 groups of refs
    assert h.violations() == []


def test_drafts_wait_for_approval_in_xero(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    created = h.ledger.create_invoice(draft(customer, draft=True), key("ms-1"))
    assert created.status is LedgerInvoiceStatus.DRAFT
    assert puts(h)[0].json()["Invoices"][0]["Status"] == "DRAFT"
    with pytest.raises(RejectedError) as waiting:
        h.ledger.send_invoice(created.id, make_key("send", "firm", created.id))
    assert waiting.value.code == "not_approved"
    h.approve(created.id)
    assert h.ledger.get_invoice(created.id).status is LedgerInvoiceStatus.OPEN
    sent = h.ledger.send_invoice(created.id, make_key("send", "firm", created.id))
    assert sent.sent and h.emailed(created.id) == 1
    assert h.ledger.get_invoice(created.id).sent
    assert h.violations() == []


def test_lines_carry_items_accounts_tax_and_tracking(
    make_harness: Callable[..., XeroHarness],
) -> None:
    h = make_harness(tracking=(("Region", "North"),), line_amount_types="Inclusive")
    customer = h.add_customer("Acme Ltd")
    h.emulator.add_item("NA", "No account item", account_code=None)
    by_name = draft(customer, "ms-1", item="Professional Services", tax_code="OUTPUT")
    created = h.ledger.create_invoice(by_name, key("ms-1"))
    line = h.emulator.invoice(created.id)["LineItems"][0]
    assert (line["ItemCode"], line["AccountCode"], line["TaxType"]) == ("PS", "200", "OUTPUT")
    assert line["Tracking"][0]["Option"] == "North"
    assert created.total == Money("250.00", "USD")  # tax included in the amount
    plain = h.ledger.create_invoice(draft(customer, "ms-2", item="NA"), key("ms-2"))
    assert h.emulator.invoice(plain.id)["LineItems"][0]["AccountCode"] == "200"  # sales_account
    assert h.violations() == []


def test_due_dates_come_from_the_draft_the_terms_or_xero(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    termed = LedgerCustomerId(h.emulator.add_contact("Termed Co", terms_days=14))
    given = h.ledger.create_invoice(draft(customer, "a", due_date=date(2026, 3, 9)), key("a"))
    named = h.ledger.create_invoice(draft(customer, "b", terms="Net 45", due_date=None), key("b"))
    contact = h.ledger.create_invoice(draft(termed, "c", due_date=None), key("c"))
    organisation = h.ledger.create_invoice(draft(customer, "d", due_date=None), key("d"))
    assert [i.due_date for i in (given, named, contact, organisation)] == [
        date(2026, 3, 9),
        date(2026, 4, 16),
        date(2026, 3, 16),
        date(2026, 4, 1),  # the organisation's 30 days
    ]
    h.emulator.set_payment_terms(None)
    with pytest.raises(RejectedError) as none:
        h.xero._cache.clear()
        h.ledger.create_invoice(draft(customer, "e", due_date=None), key("e"))
    assert none.value.code == "due_date"
    assert len(puts(h)) == 4  # refused before sending
    assert h.violations() == []


# --------------------------------------------------------------------------- payments, feed


def test_payments_are_booked_once_and_found_by_reference(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    posting = PaymentPosting(invoice.id, customer, Money("100.00", "USD"), ISSUED, "ch_1")
    h.emulator.drop_next_writes(1)
    payment = h.ledger.record_payment(posting, make_key("pay", "firm", "ch_1"))
    assert [p["PaymentID"] for p in h.emulator.payments()] == [payment]
    assert h.emulator.payments()[0]["Account"]["Code"] == CLEARING_ACCOUNT
    assert h.ledger.get_invoice(invoice.id).balance == Money("150.00", "USD")
    assert h.ledger.find_payment(posting) == payment
    other = PaymentPosting(invoice.id, customer, Money("1.00", "USD"), ISSUED, "ch_2")
    assert h.ledger.find_payment(other) is None
    too_much = PaymentPosting(invoice.id, customer, Money("500.00", "USD"), ISSUED, "ch_3")
    with pytest.raises(RejectedError) as over:
        h.ledger.record_payment(too_much, make_key("pay", "firm", "ch_3"))
    assert over.value.code == "overpayment"
    h.emulator.delete_payment(payment)
    assert h.ledger.find_payment(posting) is None  # a reversed payment is not a booking
    assert h.violations() == []


def test_payments_need_a_clearing_account(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(clearing_account=None)
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    posting = PaymentPosting(invoice.id, customer, Money("1.00", "USD"), ISSUED, "ch_1")
    with pytest.raises(ConfigError, match="clearing_account"):
        h.ledger.record_payment(posting, make_key("pay", "firm", "ch_1"))


def test_changes_show_payments_and_voids_made_in_xero(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    paid = h.ledger.create_invoice(draft(customer, "ms-1"), key("ms-1"))
    voided = h.ledger.create_invoice(draft(customer, "ms-2"), key("ms-2"))
    untouched = h.ledger.create_invoice(draft(customer, "ms-3"), key("ms-3"))
    h.advance(600)
    since = h.time.now()
    h.advance(600)
    h.pay_externally(paid.id, Money("250.00", "USD"))
    h.void(voided.id)
    feed = h.ledger.changes(since)
    by_id = {i.id: i for i in feed.invoices}
    assert set(by_id) == {paid.id, voided.id}
    assert untouched.id not in by_id
    assert by_id[paid.id].status is LedgerInvoiceStatus.PAID
    assert by_id[paid.id].balance == Money("0.00", "USD")
    assert by_id[voided.id].status is LedgerInvoiceStatus.VOIDED
    assert feed.complete
    assert timedelta(0) < h.time.now() - feed.until < timedelta(minutes=3)
    sent = h.emulator.requests("GET", "/Invoices")[-1]
    assert sent.headers["If-Modified-Since"] == since.isoformat()
    h.advance(600)
    again = h.ledger.changes(feed.until)  # the overlap reads the last minutes again
    assert {i.id for i in again.invoices} == {paid.id, voided.id}
    assert h.ledger.changes(again.until).invoices == []
    assert h.violations() == []


def test_the_change_feed_follows_every_page(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    since = h.time.now()
    for start in range(0, 150, 50):
        items = [
            BatchItem(draft(customer, f"ms-{n}"), key(f"ms-{n}")) for n in range(start, start + 50)
        ]
        h.ledger.create_invoices(items)
    assert len(h.ledger.changes(since).invoices) == 150
    assert h.violations() == []


# --------------------------------------------------------------------------- pre-flight


def test_check_names_what_the_organisation_lacks(h: XeroHarness) -> None:
    good = h.add_customer("Acme Ltd")
    archived = h.emulator.add_contact("Old Co", archived=True)
    h.emulator.add_item("NS", "Not sold", is_sold=False)
    unknown = "0f0e0d0c-0000-4000-8000-000000000001"
    needs = LedgerNeeds(
        customers=frozenset({good, archived, unknown, "58"}),
        items=frozenset({"PS", "Professional Services", "XX", "NS"}),
        tax_codes=frozenset({"NONE", "INPUT", "OUTPUT3", "BOGUS"}),
        currencies=frozenset({"USD", "EUR"}),
        terms=frozenset({"Net 15", "Monthly"}),
    )
    problems = h.ledger.check(needs)
    found = {(p.kind, p.value) for p in problems}
    assert found == {
        (NeedKind.CUSTOMER, archived),
        (NeedKind.CUSTOMER, unknown),
        (NeedKind.CUSTOMER, "58"),
        (NeedKind.ITEM, "XX"),
        (NeedKind.ITEM, "NS"),
        (NeedKind.TAX_CODE, "INPUT"),
        (NeedKind.TAX_CODE, "OUTPUT3"),
        (NeedKind.TAX_CODE, "BOGUS"),
        (NeedKind.CURRENCY, "EUR"),
    }
    messages = {p.value: p.message for p in problems}
    assert "archived" in messages[archived] and "ledger_customer_id" in messages[archived]
    assert "Settings, Currencies" in messages["EUR"]
    calls = len(h.emulator.log.snapshot())
    assert calls <= 7
    assert h.ledger.check(needs) == problems
    assert len(h.emulator.log.snapshot()) == calls  # cached for a few minutes
    h.emulator.enable_currency("EUR")
    h.advance(6 * 60)
    assert (NeedKind.CURRENCY, "EUR") not in {(p.kind, p.value) for p in h.ledger.check(needs)}
    assert h.violations() == []


def test_check_validates_the_connection_options(make_harness: Callable[..., XeroHarness]) -> None:
    h = make_harness(
        sales_account="090",
        clearing_account="200",
        tracking=(("Region", "Closed"), ("Project", "X")),
        currency="NZD",
    )
    h.emulator.set_payment_terms(None)
    problems = h.ledger.check(LedgerNeeds(terms=frozenset({"Monthly"})))
    messages = [(p.kind, p.value) for p in problems]
    assert (NeedKind.ACCOUNT, "sales_account") in messages
    assert (NeedKind.ACCOUNT, "clearing_account") in messages
    assert messages.count((NeedKind.ACCOUNT, "tracking")) == 2
    assert (NeedKind.CURRENCY, "NZD") in messages
    assert (NeedKind.TERMS, "Monthly") in messages
    h.emulator.archive_account("855")
    archived = make_harness(clearing_account="855")
    archived.emulator.archive_account("855")
    [problem] = archived.ledger.check(LedgerNeeds())
    assert problem.value == "clearing_account" and "archived" in problem.message
    assert h.violations() == [] and archived.violations() == []


# --------------------------------------------------------------------------- tokens, tenants


def test_a_401_refreshes_the_token_and_retries_once(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.emulator.expire_access_tokens()
    assert h.ledger.get_invoice(invoice.id).id == invoice.id
    assert h.tokens.refreshes == 1
    assert [r.status for r in h.emulator.requests("GET", f"/Invoices/{invoice.id}")] == [401, 200]
    h.emulator.revoke_all()
    with pytest.raises(ConfigError) as revoked:
        h.ledger.get_invoice(invoice.id)
    assert "connect xero" in str(revoked.value)
    assert h.tokens.current().access_token not in str(revoked.value)
    assert h.violations() == []


def test_two_tenants_in_one_process_never_share_tokens(clock_scale: float = 20.0) -> None:
    clock = EmulatedTime(scale=clock_scale, start=START)
    with XeroEmulator(time=clock, organisations=("North Co", "South Co")) as xero:
        north, south = xero.tenants
        ledgers = {}
        for tenant in (north, south):
            xero.set_payment_terms(30, tenant=tenant)
            tokens = EmulatorTokens(xero, tenants=[tenant])  # a grant for this tenant only
            options = XeroOptions(currency="USD", tenant_id=tenant, sales_account="200")
            ledgers[tenant] = XeroLedger(
                tokens, options, api_url=xero.api_url, identity_url=xero.url, time=clock
            )
        assert (
            ledgers[north].client.api_client.configuration
            is not ledgers[south].client.api_client.configuration
        )
        customers = {t: xero.add_contact(f"Customer of {t}", tenant=t) for t in (north, south)}
        errors: list[BaseException] = []

        def post(tenant: str) -> None:
            try:
                for n in range(8):
                    ledgers[tenant].create_invoice(
                        draft(customers[tenant], f"{tenant}-{n}", item=None), key(f"{tenant}-{n}")
                    )
            except BaseException as exc:  # shown by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=post, args=(t,)) for t in (north, south) for _ in (1,)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for tenant in (north, south):
            assert len(xero.invoices(tenant)) == 8
        assert 403 not in [r.status for r in xero.log.snapshot()]  # no bearer crossed over
        for ledger in ledgers.values():
            ledger.close()
        assert xero.violations() == []


def test_the_sdk_configuration_singleton_is_the_trap_we_avoid() -> None:
    first = Configuration(oauth2_token=OAuth2Token(client_id="first"))
    second = Configuration(oauth2_token=OAuth2Token(client_id="second"))
    # copies of one process-wide default: the arguments are ignored, the token is shared
    assert second.oauth2_token is first.oauth2_token
    assert getattr(second.oauth2_token, "client_id", None) != "second"
    mine, yours = private_configuration(), private_configuration()
    mine.oauth2_token = _CallToken()
    assert yours.oauth2_token is not mine.oauth2_token


def test_the_organisation_comes_from_the_connection_when_not_configured() -> None:
    clock = EmulatedTime(scale=20.0, start=START)
    with XeroEmulator(time=clock) as xero:
        tokens = EmulatorTokens(xero, realm=None)
        ledger = XeroLedger(
            tokens,
            XeroOptions(currency="USD"),
            api_url=xero.api_url,
            identity_url=xero.url,
            time=clock,
        )
        assert ledger.check(LedgerNeeds()) == []
        assert len(xero.requests("GET", "/Connections")) == 1
        ledger.close()
        second = xero.add_organisation("Second Co")
        several = XeroLedger(
            EmulatorTokens(xero, realm=None),
            XeroOptions(currency="USD"),
            api_url=xero.api_url,
            identity_url=xero.url,
            time=clock,
        )
        with pytest.raises(ConfigError) as which:
            several.check(LedgerNeeds())
        assert "tenant_id" in str(which.value) and second in str(which.value)
        several.close()
        assert xero.violations() == []


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_with_what_to_fix_and_never_retried(h: XeroHarness) -> None:
    customer = h.add_customer("Acme Ltd")
    archived = h.emulator.add_contact("Old Co", archived=True)
    h.emulator.add_item("GONE", "Going away")
    h.emulator.add_account("299", "Closed sales", "REVENUE", status="ARCHIVED")
    h.emulator.add_item("OLDACC", "Old account item", account_code="299")
    h.ledger.check(LedgerNeeds(items=frozenset({"GONE"})))  # the items are now cached
    h.emulator.archive_item("GONE")
    h.ledger.create_invoice(draft(customer, "first", doc_number="KB-1"), key("first"))

    cases: list[tuple[InvoiceDraft, str, str]] = [
        (draft(archived, "a"), "contact_archived", "ledger_customer_id"),
        (draft("0f0e0d0c-0000-4000-8000-000000000001", "b"), "contact_missing", "ContactID"),
        (draft(customer, "c", item="GONE"), "item", "item code"),
        (draft(customer, "d", tax_code="INPUT"), "tax_type", "tax_code"),
        (draft(customer, "e", currency="EUR"), "currency", "Settings, Currencies"),
        (draft(customer, "f", doc_number="KB-1"), "duplicate_number", "invoice number"),
        (draft(customer, "g", item="OLDACC"), "account_archived", "sales_account"),
    ]
    for bad, code, hint in cases:
        before = len(puts(h))
        with pytest.raises(RejectedError) as refused:
            h.ledger.create_invoice(bad, key(bad.reference))
        assert (refused.value.code, bad.reference) == (code, bad.reference)
        assert hint in str(refused.value), str(refused.value)
        assert len(puts(h)) == before + 1  # one request, no retry
    h.emulator.set_period_lock(date(2026, 3, 31))
    with pytest.raises(RejectedError) as locked:
        h.ledger.create_invoice(draft(customer, "h"), key("h"))
    assert locked.value.code == "locked_period" and "lock date" in str(locked.value)
    before = len(puts(h))
    for local, code in (
        (draft("58", "i"), "contact_missing"),
        (draft(customer, "j", item="NOPE"), "item"),
    ):
        with pytest.raises(RejectedError) as refused:
            h.ledger.create_invoice(local, key(local.reference))
        assert refused.value.code == code
    assert len(puts(h)) == before  # refused before anything was sent
    assert len(h.all_invoices()) == 1
    assert h.violations() == []


def test_get_and_send_refuse_what_is_not_a_sendable_invoice(h: XeroHarness) -> None:
    with pytest.raises(RejectedError):
        h.ledger.get_invoice(LedgerInvoiceId("INV-1"))
    with pytest.raises(RejectedError) as missing:
        h.ledger.get_invoice(LedgerInvoiceId("0f0e0d0c-0000-4000-8000-000000000001"))
    assert missing.value.code == "not_found"
    customer = h.add_customer("Acme Ltd")
    invoice = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.void(invoice.id)
    with pytest.raises(RejectedError) as voided:
        h.ledger.send_invoice(invoice.id, make_key("send", "firm", invoice.id))
    assert voided.value.code == "voided"
    silent = LedgerCustomerId(h.emulator.add_contact("No Mail Ltd"))
    mute = h.ledger.create_invoice(draft(silent, "ms-2"), key("ms-2"))
    with pytest.raises(RejectedError) as no_mail:
        h.ledger.send_invoice(mute.id, make_key("send", "firm", mute.id))
    assert no_mail.value.code == "no_email"
    assert h.violations() == []


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="integers"):
        XeroOptions(currency="USD", timeout=(5.0, 60.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="line_amount_types"):
        XeroOptions(currency="USD", line_amount_types="Gross")
    with pytest.raises(ValueError, match="ISO 4217"):
        XeroOptions(currency="usd")
