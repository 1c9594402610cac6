"""The QuickBooks `Ledger` adapter (python-quickbooks over real HTTP) against the QuickBooks
emulator: exactly-once creates through lost answers, lookups, throttling and server errors,
batches, the pre-flight check, the change feed, email, payments, token refresh, and every
bad-input translation. Every test ends by asserting the emulator saw no spec violation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs

import pytest

from adapters.emulation.clock import EmulatedTime
from adapters.quickbooks.adapter import QuickBooksLedger, QuickBooksOptions
from adapters.quickbooks.translate import TAG
from connector.domain.errors import ConfigError, RejectedError, TransientError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.idempotency import KeyLimit, fit
from connector.ports import (
    BatchItem,
    InvoiceDraft,
    InvoiceLine,
    LedgerInvoiceStatus,
    LedgerNeeds,
    NeedKind,
    PaymentPosting,
)
from tests.contract.harness_quickbooks import QuickBooksHarness

START = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)
CHARGE = "ch_3NxAbCdEfGhIjKlMnOpQrStU"  # a Stripe charge id: 27 characters


class InstantTime(EmulatedTime):
    """Emulated time whose sleeps move the clock instead of waiting (and are recorded), so a
    60-second throttle wait costs nothing and the emulator's rate window sees it pass."""

    def __init__(self) -> None:
        super().__init__(start=START)
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


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
    finally:
        for harness in made:
            harness.close()


@pytest.fixture
def h(make: Make) -> QuickBooksHarness:
    return make()


def draft(
    customer: str,
    reference: str = "karbon:wi-1:ms-1",
    *amounts: str,
    item: str | None = "Professional Services",
    tax_code: str | None = "NON",
    currency: str = "USD",
    **fields: object,
) -> InvoiceDraft:
    lines = [
        InvoiceLine(f"Milestone {reference} part {i}", Money(a, currency), item, tax_code)
        for i, a in enumerate(amounts or ("250.00",))
    ]
    values: dict[str, object] = {"issue_date": date(2026, 3, 10)} | fields
    return InvoiceDraft(LedgerCustomerId(customer), reference, lines, **values)  # type: ignore[arg-type]


def key(name: str) -> IdempotencyKey:
    return IdempotencyKey(f"create_invoice:smith-cpa:{name}:0")


def request_ids(h: QuickBooksHarness, path_part: str) -> list[str]:
    return [
        parse_qs(r.query).get("requestid", [""])[0] for r in h.emulator.requests(path_part, "POST")
    ]


def warm(h: QuickBooksHarness) -> None:
    """Let the adapter read preferences and resolve the item, so faults hit the write."""
    h.ledger.check(LedgerNeeds(items=frozenset({"Professional Services"})))


def queries(h: QuickBooksHarness) -> list[str]:
    return [r.body.decode() for r in h.emulator.requests("/query", "POST")]


# --------------------------------------------------------------------------- invoices


def test_create_invoice_writes_what_the_draft_says(h: QuickBooksHarness):
    customer = h.add_customer("Acme Ltd")
    created = h.ledger.create_invoice(
        draft(
            customer,
            "karbon:wi-7:ms-2",
            "250.00",
            "99.50",
            doc_number="MS-1007",
            due_date=date(2026, 4, 9),
            terms="Net 30",
        ),
        key("ms-2"),
    )
    assert created.number == "MS-1007"
    assert created.reference == "karbon:wi-7:ms-2"
    assert created.total == Money("349.50", "USD")
    assert created.status is LedgerInvoiceStatus.OPEN
    assert created.due_date == date(2026, 4, 9)
    stored = h.emulator.invoice(created.id)
    assert stored["PrivateNote"] == f"{TAG} karbon:wi-7:ms-2"
    assert stored["TxnDate"] == "2026-03-10"
    assert stored["SalesTermRef"]["name"] == "Net 30"
    lines = [line for line in stored["Line"] if line["DetailType"] == "SalesItemLineDetail"]
    assert [line["SalesItemLineDetail"]["ItemRef"]["name"] for line in lines] == [
        "Professional Services"
    ] * 2
    assert {line["SalesItemLineDetail"]["TaxCodeRef"]["value"] for line in lines} == {"NON"}
    assert request_ids(h, "/invoice") == [fit(key("ms-2"), KeyLimit.QUICKBOOKS)]


def test_a_long_key_is_fitted_to_qbos_50_character_requestid(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    long_key = IdempotencyKey("create_invoice:smith-cpa:" + "karbon:wi-123456789:" * 5 + ":0")
    h.ledger.create_invoice(draft(customer), long_key)
    (sent,) = request_ids(h, "/invoice")
    assert len(sent) == 50
    assert sent == fit(long_key, KeyLimit.QUICKBOOKS)


def test_a_lost_answer_is_retried_with_the_same_requestid_and_creates_once(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.drop_next_writes(1)
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert len(h.all_invoices()) == 1
    rid = fit(key("ms-1"), KeyLimit.QUICKBOOKS)
    assert request_ids(h, "/invoice") == [rid, rid]
    assert h.all_invoices()[0].id == created.id


def test_lost_answers_past_the_retries_leave_an_unknown_outcome_the_lookup_resolves(
    h: QuickBooksHarness,
):
    customer = h.add_customer("Acme")
    h.drop_next_writes(h.options.max_attempts)
    with pytest.raises(TransientError) as lost:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert lost.value.outcome_unknown
    found = h.ledger.find_invoice(draft(customer, issue_date=date(2026, 3, 11)))
    assert found is not None
    assert found.reference == "karbon:wi-1:ms-1"
    again = h.ledger.create_invoice(draft(customer), key("ms-1"))  # same key: replayed
    assert again.id == found.id
    assert len(h.all_invoices()) == 1


def test_find_invoices_by_number_and_by_customer_in_two_queries(h: QuickBooksHarness):
    acme, baker = h.add_customer("Acme"), h.add_customer("Baker")
    numbered = [draft(acme, f"ref-n{i}", doc_number=f"N-{i}") for i in range(3)]
    plain = [draft(c, f"ref-p{i}") for i, c in enumerate([acme, baker, baker])]
    for d in numbered + plain[:2]:
        h.ledger.create_invoice(d, key(d.reference))
    h.emulator.log.clear()
    found = h.ledger.find_invoices(numbered + plain)
    assert set(found) == {"ref-n0", "ref-n1", "ref-n2", "ref-p0", "ref-p1"}
    assert len(queries(h)) == 2
    assert "DocNumber IN" in queries(h)[0]
    assert "CustomerRef IN" in queries(h)[1]
    assert "PrivateNote" not in " ".join(queries(h))  # QBO cannot filter on it


def test_an_invoice_someone_else_numbered_the_same_is_not_ours(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.ledger.create_invoice(draft(customer, "theirs", doc_number="N-1"), key("theirs"))
    assert h.ledger.find_invoice(draft(customer, "mine", doc_number="N-1")) is None
    with pytest.raises(RejectedError) as duplicate:
        h.ledger.create_invoice(draft(customer, "mine", doc_number="N-1"), key("mine"))
    assert duplicate.value.code == "duplicate_doc_number"
    assert "N-1" in str(duplicate.value)


def test_get_invoice_of_a_deleted_invoice_is_rejected(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.emulator.delete_invoice(created.id)
    with pytest.raises(RejectedError) as missing:
        h.ledger.get_invoice(created.id)
    assert missing.value.code == "invoice_not_found"


# --------------------------------------------------------------------------- throttling, 5xx


@pytest.mark.parametrize("form", ["json", "xml"])
def test_throttling_waits_the_configured_time_and_retries_with_the_same_requestid(
    h: QuickBooksHarness, form: str
):
    customer = h.add_customer("Acme")
    warm(h)
    h.emulator.fail_next(2, 429, form)
    h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert h.time.slept == [60.0, 60.0]  # type: ignore[attr-defined]
    rid = fit(key("ms-1"), KeyLimit.QUICKBOOKS)
    assert request_ids(h, "/invoice") == [rid] * 3
    assert len(h.all_invoices()) == 1


def test_real_rate_limits_are_ridden_out(make: Make):
    h = make(limits=True, per_minute=4)
    customer = h.add_customer("Acme")
    for index in range(4):
        h.ledger.create_invoice(draft(customer, f"ref-{index}"), key(f"ref-{index}"))
    assert h.emulator.throttled >= 1
    assert len(h.all_invoices()) == 4


def test_server_errors_back_off_and_retry(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    warm(h)
    h.emulator.fail_next(1, 503, "html")
    h.emulator.fail_next(1, 500, "json")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert created.total == Money("250.00", "USD")
    assert len(h.time.slept) == 2  # type: ignore[attr-defined]


def test_nothing_is_retried_forever(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    warm(h)
    h.emulator.fail_next(50, 503)
    with pytest.raises(TransientError) as failing:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert failing.value.outcome_unknown  # a 5xx on a write may come after the write
    assert len(h.emulator.requests("/invoice", "POST")) == h.options.max_attempts
    with pytest.raises(TransientError) as reading:
        h.ledger.find_invoice(draft(customer))
    assert not reading.value.outcome_unknown


# --------------------------------------------------------------------------- batch


def test_a_batch_posts_the_good_invoices_and_rejects_the_bad_one(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.archive_item("Professional Services")
    h.emulator.add_item("Bookkeeping")
    items = [
        BatchItem(draft(customer, "b-0", item="Bookkeeping"), key("b-0")),
        BatchItem(draft("404", "b-1", item="Bookkeeping"), key("b-1")),
        BatchItem(draft(customer, "b-2"), key("b-2")),  # archived item: refused before sending
        BatchItem(draft(customer, "b-3", item="Bookkeeping"), key("b-3")),
    ]
    results = h.ledger.create_invoices(items)
    assert [type(r).__name__ for r in results] == [
        "LedgerInvoice",
        "RejectedError",
        "RejectedError",
        "LedgerInvoice",
    ]
    assert isinstance(results[1], RejectedError) and results[1].code == "customer_not_found"
    assert "404" in str(results[1])
    assert isinstance(results[2], RejectedError) and results[2].code == "item_inactive"
    assert len(h.emulator.requests("/batch", "POST")) == 1
    assert sorted(i.reference for i in h.all_invoices()) == ["b-0", "b-3"]


def test_a_lost_batch_answer_is_not_resent_and_the_lookup_finds_every_invoice(
    h: QuickBooksHarness,
):
    customer = h.add_customer("Acme")
    items = [BatchItem(draft(customer, f"b-{i}"), key(f"b-{i}")) for i in range(3)]
    h.drop_next_writes(1)
    with pytest.raises(TransientError) as lost:
        h.ledger.create_invoices(items)
    assert lost.value.outcome_unknown
    assert len(h.emulator.requests("/batch", "POST")) == 1
    found = h.ledger.find_invoices([item.draft for item in items])
    assert set(found) == {"b-0", "b-1", "b-2"}


def test_a_replayed_batch_recognises_its_own_numbered_invoices(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    items = [
        BatchItem(draft(customer, f"b-{i}", doc_number=f"B-{i}"), key(f"b-{i}")) for i in (0, 1)
    ]
    first = h.ledger.create_invoices(items)
    again = h.ledger.create_invoices(items)  # QBO answers 6140 per item: they are ours
    assert [getattr(r, "id", None) for r in again] == [getattr(r, "id", None) for r in first]
    assert len(h.all_invoices()) == 2


def test_a_throttled_batch_is_retried(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    warm(h)
    h.emulator.fail_next(1, 429, "xml")
    results = h.ledger.create_invoices([BatchItem(draft(customer, "b-0"), key("b-0"))])
    assert results[0].reference == "b-0"  # type: ignore[union-attr]
    assert len(h.emulator.requests("/batch", "POST")) == 2


# --------------------------------------------------------------------------- pre-flight


def test_check_names_every_problem_and_what_to_fix(make: Make):
    h = make(options=QuickBooksOptions(currency="USD", clearing_account="Checking"))
    h.emulator.enable_multicurrency("EUR")
    good = h.add_customer("Acme")
    asleep = h.emulator.add_customer("Sleeping", active=False)
    euro = h.emulator.add_customer("Europa", currency="EUR")
    old = h.emulator.add_item("Old service")
    h.emulator.archive_item(old)
    h.emulator.add_item("Consulting hours", item_type="Category")
    needs = LedgerNeeds(
        customers=frozenset({good, asleep, euro, "404"}),
        items=frozenset({"Professional Services", old, "Consulting hours", "Nope", "1"}),
        tax_codes=frozenset({"NON", "TAX", "VAT"}),
        terms=frozenset({"Net 30", "Net 99"}),
        currencies=frozenset({"USD", "EUR", "GBP"}),
    )
    problems = {(p.kind, p.value): p.message for p in h.ledger.check(needs)}
    assert set(problems) == {
        (NeedKind.CUSTOMER, asleep),
        (NeedKind.CUSTOMER, "404"),
        (NeedKind.CURRENCY, euro),
        (NeedKind.ITEM, old),
        (NeedKind.ITEM, "Consulting hours"),
        (NeedKind.ITEM, "Nope"),
        (NeedKind.TAX_CODE, "VAT"),
        (NeedKind.TERMS, "Net 99"),
        (NeedKind.CURRENCY, "GBP"),
    }
    assert "inactive" in problems[(NeedKind.CUSTOMER, asleep)]
    assert "ledger_customer_id" in problems[(NeedKind.CUSTOMER, "404")]
    assert "billed in EUR" in problems[(NeedKind.CURRENCY, euro)]
    assert "archived" in problems[(NeedKind.ITEM, old)]
    assert "cannot be sold" in problems[(NeedKind.ITEM, "Consulting hours")]
    assert "TAX or NON" in problems[(NeedKind.TAX_CODE, "VAT")]
    assert "currency list" in problems[(NeedKind.CURRENCY, "GBP")]
    used = len(h.emulator.requests("/v3/"))
    assert used <= 12
    h.ledger.check(needs)
    assert len(h.emulator.requests("/v3/")) == used  # cached for a few minutes


def test_check_validates_the_connection_options(make: Make):
    h = make(
        options=QuickBooksOptions(
            currency="USD",
            clearing_account="Services",  # an income account cannot receive payments
            class_name="Nope",
            department="Downtown",
        )
    )
    h.emulator.add_department("Downtown", active=False)
    problems = {p.value: p.message for p in h.ledger.check(LedgerNeeds())}
    assert set(problems) == {"clearing_account", "class_name", "department"}
    assert "Bank or Other Current Asset" in problems["clearing_account"]
    assert "no class 'Nope'" in problems["class_name"]
    assert "inactive" in problems["department"]
    assert all(p.kind is NeedKind.ACCOUNT for p in h.ledger.check(LedgerNeeds()))


def test_a_clean_check_is_empty_and_capacity_is_unlimited(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    needs = LedgerNeeds(
        customers=frozenset({customer}),
        items=frozenset({"Professional Services"}),
        tax_codes=frozenset({"NON"}),
        terms=frozenset({"Net 30"}),
        currencies=frozenset({"USD"}),
    )
    assert h.ledger.check(needs) == []
    assert h.ledger.capacity_warning(10_000) is None


# --------------------------------------------------------------------------- change feed


def test_changes_see_a_cheque_paid_and_an_invoice_voided_in_quickbooks(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    paid = h.ledger.create_invoice(draft(customer, "ref-paid"), key("ref-paid"))
    voided = h.ledger.create_invoice(draft(customer, "ref-void"), key("ref-void"))
    untouched = h.ledger.create_invoice(draft(customer, "ref-same"), key("ref-same"))
    h.advance(300)
    since = h.now()
    h.advance(60)
    h.pay_externally(paid.id, Money("250.00", "USD"))
    h.void(voided.id)
    changes = h.ledger.changes(since)
    by_id = {i.id: i for i in changes.invoices}
    assert set(by_id) == {paid.id, voided.id}
    assert by_id[paid.id].status is LedgerInvoiceStatus.PAID
    assert by_id[paid.id].reference == "ref-paid"
    assert by_id[voided.id].status is LedgerInvoiceStatus.VOIDED
    assert untouched.id not in by_id
    assert changes.complete
    assert h.now() - timedelta(seconds=90) < changes.until < h.now()
    later = h.ledger.changes(changes.until)
    assert {i.id for i in later.invoices} <= {paid.id, voided.id}  # the overlap re-reads


def test_changes_older_than_30_days_are_incomplete_and_ask_within_the_window(
    h: QuickBooksHarness,
):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.emulator.delete_invoice(created.id)
    changes = h.ledger.changes(h.now() - timedelta(days=45))
    assert not changes.complete
    (deleted,) = changes.invoices
    assert (deleted.id, deleted.status) == (created.id, LedgerInvoiceStatus.VOIDED)
    asked = parse_qs(h.emulator.requests("/cdc")[-1].query)["changedSince"][0]
    asked_at = datetime.fromisoformat(asked)
    assert h.now() - timedelta(days=30) < asked_at < h.now() - timedelta(days=29)


def test_a_payment_changed_alone_brings_its_invoice_into_the_changes(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    payment_id = h.emulator.pay_externally(created.id, Decimal("50.00"))
    h.advance(300)
    since = h.now()
    h.advance(60)
    h.emulator.edit_payment(payment_id, PrivateNote="cheque 1001, banked Tuesday")
    assert h.emulator.invoice(created.id)["SyncToken"] == "1"  # the invoice itself unchanged
    changes = h.ledger.changes(since)
    assert [(i.id, i.balance) for i in changes.invoices] == [(created.id, Money("200.00", "USD"))]


def test_changes_continue_from_the_last_object_when_cdc_cuts_off(make: Make):
    h = make(cdc_max_objects=2)
    h.ledger.cdc_max_objects = 2  # type: ignore[attr-defined]
    customer = h.add_customer("Acme")
    since = h.now()
    created = []
    for index in range(3):
        h.advance(10)
        created.append(h.ledger.create_invoice(draft(customer, f"ref-{index}"), key(f"r{index}")))
    first = h.ledger.changes(since)
    assert [i.id for i in first.invoices] == [created[0].id, created[1].id]
    assert first.until < h.now() - timedelta(seconds=5)
    second = h.ledger.changes(first.until)
    assert created[2].id in {i.id for i in second.invoices}


# --------------------------------------------------------------------------- email


def test_send_invoice_uses_quickbooks_email(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    sent = h.ledger.send_invoice(created.id, IdempotencyKey("send_invoice:smith:ms-1:0"))
    assert sent.sent
    assert h.emailed(created.id) == 1
    assert h.ledger.get_invoice(created.id).sent


def test_a_lost_send_is_not_resent(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.drop_next_writes(1)
    with pytest.raises(TransientError) as lost:
        h.ledger.send_invoice(created.id, IdempotencyKey("send:ms-1"))
    assert lost.value.outcome_unknown
    assert h.emailed(created.id) == 1
    assert h.ledger.get_invoice(created.id).sent  # what the core checks instead


def test_sending_to_a_customer_without_email_is_rejected(h: QuickBooksHarness):
    customer = LedgerCustomerId(h.emulator.add_customer("No Mail"))
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    with pytest.raises(RejectedError) as refused:
        h.ledger.send_invoice(created.id, IdempotencyKey("send:ms-1"))
    assert refused.value.code == "no_email"
    assert "email address" in str(refused.value)


# --------------------------------------------------------------------------- payments


def test_a_payment_lands_in_the_clearing_account_and_can_be_found(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    posting = PaymentPosting(
        created.id, LedgerCustomerId(customer), Money("250.00", "USD"), date(2026, 3, 12), CHARGE
    )
    payment_id = h.ledger.record_payment(posting, IdempotencyKey("record_payment:ms-1:0"))
    (stored,) = h.emulator.payments()
    assert stored["Id"] == payment_id
    assert stored["PaymentRefNum"] == CHARGE[:21]
    assert stored["PrivateNote"] == f"{TAG} {CHARGE}"
    clearing = h.emulator.entity("Account", stored["DepositToAccountRef"]["value"])
    assert clearing["Name"] == "Stripe Clearing"
    assert h.ledger.get_invoice(created.id).status is LedgerInvoiceStatus.PAID
    assert h.ledger.find_payment(posting) == payment_id
    other = PaymentPosting(
        created.id, LedgerCustomerId(customer), Money("1.00", "USD"), date(2026, 3, 12), "ch_x"
    )
    assert h.ledger.find_payment(other) is None


def test_a_lost_payment_answer_is_found_after_the_retries(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    posting = PaymentPosting(
        created.id, LedgerCustomerId(customer), Money("100.00", "USD"), date(2026, 3, 12), CHARGE
    )
    h.drop_next_writes(h.options.max_attempts)
    with pytest.raises(TransientError) as lost:
        h.ledger.record_payment(posting, IdempotencyKey("record_payment:ms-1:0"))
    assert lost.value.outcome_unknown
    found = h.ledger.find_payment(posting)
    assert found == h.emulator.payments()[0]["Id"]
    h.void(created.id)  # the payment is unlinked now: still found among the customer's
    assert h.ledger.find_payment(posting) == found


def test_a_payment_over_the_open_balance_is_rejected(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer), key("ms-1"))
    h.pay_externally(created.id, Money("200.00", "USD"))
    posting = PaymentPosting(
        created.id, LedgerCustomerId(customer), Money("250.00", "USD"), date(2026, 3, 12), CHARGE
    )
    with pytest.raises(RejectedError) as refused:
        h.ledger.record_payment(posting, IdempotencyKey("record_payment:ms-1:0"))
    assert refused.value.code == "overpayment"


# --------------------------------------------------------------------------- tokens


def test_a_401_refreshes_once_and_retries(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.ledger.create_invoice(draft(customer, "ref-1"), key("ref-1"))
    h.emulator.expire_access_tokens()
    h.ledger.create_invoice(draft(customer, "ref-2"), key("ref-2"))
    assert h.tokens.refreshes == 1
    assert [r.status for r in h.emulator.requests("/invoice", "POST")] == [200, 401, 200]


def test_a_revoked_connection_is_a_config_error(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.ledger.create_invoice(draft(customer, "ref-1"), key("ref-1"))
    h.emulator.revoke_all()
    with pytest.raises(ConfigError) as revoked:
        h.ledger.create_invoice(draft(customer, "ref-2"), key("ref-2"))
    assert "milestone-sync connect quickbooks" in str(revoked.value)
    assert h.tokens._token.access_token not in str(revoked.value)


# --------------------------------------------------------------------------- bad input


def test_unknown_and_inactive_customers_are_rejected(h: QuickBooksHarness):
    asleep = h.emulator.add_customer("Sleeping", active=False)
    with pytest.raises(RejectedError) as unknown:
        h.ledger.create_invoice(draft("404"), key("ms-1"))
    assert unknown.value.code == "customer_not_found"
    assert "customer 404 does not exist in QuickBooks" in str(unknown.value)
    assert "ledger_customer_id" in str(unknown.value)
    with pytest.raises(RejectedError) as inactive:
        h.ledger.create_invoice(draft(asleep), key("ms-2"))
    assert inactive.value.code == "customer_inactive"
    assert h.all_invoices() == []


def test_an_item_archived_in_quickbooks_is_rejected_before_and_after_caching(
    h: QuickBooksHarness,
):
    customer = h.add_customer("Acme")
    h.ledger.create_invoice(draft(customer, "ref-1"), key("ref-1"))  # item resolved, cached
    h.archive_item("Professional Services")
    with pytest.raises(RejectedError) as archived:
        h.ledger.create_invoice(draft(customer, "ref-2"), key("ref-2"))  # QBO says 610
    assert archived.value.code == "item_inactive"
    assert "Professional Services" in str(archived.value)
    with pytest.raises(RejectedError) as again:
        h.ledger.create_invoice(draft(customer, "ref-3"), key("ref-3"))  # looked up afresh
    assert again.value.code == "item_inactive"
    with pytest.raises(RejectedError) as missing:
        h.ledger.create_invoice(draft(customer, "ref-4", item="Nope"), key("ref-4"))
    assert missing.value.code == "item_not_found"


def test_a_closed_accounting_period_is_rejected(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    h.emulator.set_book_close_date(date(2026, 3, 31))
    with pytest.raises(RejectedError) as closed:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert closed.value.code == "period_closed"
    assert "2026-03-10" in str(closed.value)
    assert "Close the books" in str(closed.value)


def test_tax_codes_must_suit_the_company(make: Make):
    us = make()
    customer = us.add_customer("Acme")
    with pytest.raises(RejectedError) as vat:
        us.ledger.create_invoice(draft(customer, tax_code="VAT"), key("ms-1"))
    assert vat.value.code == "tax_code"
    uk = make(country="GB", home_currency="GBP", tax_codes=["20.0% S"], options=None)
    uk_ledger = QuickBooksLedger(
        uk.tokens,
        QuickBooksOptions(currency="GBP", clearing_account="Stripe Clearing"),
        api_url=uk.emulator.api_url,
        time=uk.time,
    )
    customer = LedgerCustomerId(uk.emulator.add_customer("Tesco", currency="GBP"))
    with pytest.raises(RejectedError) as unknown:
        uk_ledger.create_invoice(draft(customer, tax_code="5.0% R", currency="GBP"), key("uk-1"))
    assert unknown.value.code == "tax_code"
    created = uk_ledger.create_invoice(
        draft(customer, tax_code="20.0% S", currency="GBP"), key("uk-2")
    )
    assert created.total == Money("250.00", "GBP")


def test_currencies_must_be_enabled_and_match_the_customer(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    with pytest.raises(RejectedError) as off:
        h.ledger.create_invoice(draft(customer, currency="EUR"), key("ms-1"))
    assert off.value.code == "currency"
    assert "multicurrency is off" in str(off.value)
    h.emulator.enable_multicurrency("EUR")
    h.advance(301)  # past the adapter's few-minute cache of the company's preferences
    with pytest.raises(RejectedError) as mismatch:
        h.ledger.create_invoice(draft(customer, currency="EUR"), key("ms-2"))
    assert mismatch.value.code == "currency"  # QuickBooks refused: the customer bills in USD
    european = LedgerCustomerId(h.emulator.add_customer("Europa", currency="EUR"))
    created = h.ledger.create_invoice(draft(european, currency="EUR"), key("ms-3"))
    assert created.total == Money("250.00", "EUR")
    assert h.emulator.invoice(created.id)["CurrencyRef"]["value"] == "EUR"


def test_class_and_location_are_written_when_configured(make: Make):
    h = make(
        options=QuickBooksOptions(
            currency="USD",
            clearing_account="Stripe Clearing",
            class_name="Tax",
            department="Downtown",
        )
    )
    h.emulator.add_class("Tax")
    h.emulator.add_department("Downtown")
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer, "ref-1", "10.00", "20.00"), key("ref-1"))
    stored = h.emulator.invoice(created.id)
    assert stored["DepartmentRef"]["name"] == "Downtown"
    classes = [
        line["SalesItemLineDetail"]["ClassRef"]["name"]
        for line in stored["Line"]
        if line["DetailType"] == "SalesItemLineDetail"
    ]
    assert classes == ["Tax", "Tax"]


def test_a_missing_class_option_stops_with_a_config_error(make: Make):
    h = make(options=QuickBooksOptions(currency="USD", class_name="Nope"))
    customer = h.add_customer("Acme")
    with pytest.raises(ConfigError) as missing:
        h.ledger.create_invoice(draft(customer), key("ms-1"))
    assert "class_name" in str(missing.value)


def test_money_comes_back_as_exact_decimals(h: QuickBooksHarness):
    customer = h.add_customer("Acme")
    created = h.ledger.create_invoice(draft(customer, "ref-1", "0.10", "0.20"), key("ref-1"))
    assert created.total.amount == Decimal("0.30")
    assert isinstance(created.balance.amount, Decimal)
    assert created.customer_id == customer
    assert created.id == LedgerInvoiceId(created.id)
