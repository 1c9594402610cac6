"""The QuickBooks Online emulator over real HTTP, driven by python-quickbooks itself where the SDK
can say it: OAuth and discovery, entity state and computed totals, validation faults with QBO's
codes, requestid replay, the query subset, change data capture, batch, invoice email, throttles,
injected faults, and XSD checks of every body."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from intuitlib.client import AuthClient
from intuitlib.exceptions import AuthClientError
from quickbooks import QuickBooks
from quickbooks.batch import batch_create
from quickbooks.cdc import change_data_capture
from quickbooks.exceptions import (
    AuthorizationException,
    ObjectNotFoundException,
    QuickbooksException,
    ValidationException,
)
from quickbooks.objects.base import Ref
from quickbooks.objects.customer import Customer
from quickbooks.objects.detailline import SalesItemLine, SalesItemLineDetail
from quickbooks.objects.invoice import Invoice
from quickbooks.objects.item import Item
from quickbooks.objects.payment import Payment, PaymentLine
from requests_oauthlib import OAuth2Session

from adapters.emulation.clock import EmulatedTime
from adapters.emulation.specs import SPECS_ENV, missing_reason, spec_path
from adapters.emulation.xsd import QUICKBOOKS_XSD, quickbooks_schema, violations
from adapters.quickbooks.emulator import QuickBooksEmulator

START = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)  # 10:00 in the company's (Pacific) zone


def require_xsd() -> None:
    if spec_path(QUICKBOOKS_XSD) is None:
        pytest.skip(missing_reason(QUICKBOOKS_XSD))


@pytest.fixture
def clock() -> EmulatedTime:
    return EmulatedTime(start=START)


@pytest.fixture
def emulator(clock: EmulatedTime, monkeypatch: pytest.MonkeyPatch) -> Iterator[QuickBooksEmulator]:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http to loopback only
    with QuickBooksEmulator(time=clock) as emu:
        yield emu


def sdk(emulator: QuickBooksEmulator, access_token: str | None = None) -> QuickBooks:
    """python-quickbooks pointed at the emulator (no AuthClient: the token is given)."""
    token = access_token or str(emulator.connect()["access_token"])
    qb = QuickBooks(company_id=emulator.realm_id, minorversion=75, use_decimal=True)
    session = OAuth2Session()
    session.access_token = token
    qb.session = session
    qb.api_url_v3 = emulator.api_url
    return qb


@pytest.fixture
def qb(emulator: QuickBooksEmulator) -> QuickBooks:
    return sdk(emulator)


def raw(emulator: QuickBooksEmulator, qb: QuickBooks) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {qb.session.access_token}"
    session.headers["Accept"] = "application/json"
    return session


def company_url(emulator: QuickBooksEmulator, rest: str) -> str:
    return f"{emulator.api_url}/company/{emulator.realm_id}/{rest}"


def invoice(customer: str, *amounts: str, item: str = "1", **fields: Any) -> Invoice:
    obj = Invoice()
    obj.CustomerRef = Ref()
    obj.CustomerRef.value = customer
    for amount in amounts or ("250.00",):
        line = SalesItemLine()
        line.Amount = Decimal(amount)
        line.Description = f"work worth {amount}"
        line.SalesItemLineDetail = detail = SalesItemLineDetail()
        detail.ItemRef = Ref()
        detail.ItemRef.value = item
        detail.Qty = 1
        detail.UnitPrice = Decimal(amount)
        obj.Line.append(line)
    for name, value in fields.items():
        setattr(obj, name, value)
    return obj


def payment(customer: str, invoice_id: str, amount: str, **fields: Any) -> Payment:
    obj = Payment()
    obj.CustomerRef = Ref()
    obj.CustomerRef.value = customer
    obj.TotalAmt = Decimal(amount)
    line = PaymentLine()
    line.Amount = Decimal(amount)
    target = Invoice()
    target.Id = invoice_id
    line.LinkedTxn.append(target.to_linked_txn())
    obj.Line.append(line)
    for name, value in fields.items():
        setattr(obj, name, value)
    return obj


def fault_code(exc: QuickbooksException) -> str:
    return str(exc.error_code)


# --------------------------------------------------------------------------- OAuth


def test_discovery_document_names_the_emulators_own_endpoints(emulator: QuickBooksEmulator):
    auth = AuthClient(
        emulator.client_id,
        emulator.client_secret,
        "http://localhost/callback",
        environment=emulator.discovery_url,  # intuitlib reads any other value as the URL
    )
    assert auth.token_endpoint == emulator.url + "/oauth2/v1/tokens/bearer"
    assert auth.auth_endpoint == emulator.url + "/connect/oauth2"
    assert auth.revoke_endpoint == emulator.url + "/v2/oauth2/tokens/revoke"
    assert auth.jwks_uri.startswith(emulator.url)
    assert auth.user_info_url.startswith(emulator.url)


def test_refresh_rotates_and_a_used_refresh_token_is_refused_at_once(
    emulator: QuickBooksEmulator,
):
    first = emulator.connect()
    assert first["x_refresh_token_expires_in"] == 100 * 24 * 3600
    assert first["expires_in"] == 3600
    assert first["realmId"] == emulator.realm_id
    auth = AuthClient(
        emulator.client_id,
        emulator.client_secret,
        "http://x/cb",
        environment=emulator.discovery_url,
    )
    auth.refresh(refresh_token=str(first["refresh_token"]))  # HTTP Basic, as intuitlib sends
    assert auth.refresh_token != first["refresh_token"]
    with pytest.raises(AuthClientError) as refused:
        auth.refresh(refresh_token=str(first["refresh_token"]))
    assert refused.value.status_code == 400
    assert "invalid_grant" in refused.value.content.decode()


def test_authorize_redirect_carries_the_realm_id(emulator: QuickBooksEmulator):
    answer = requests.get(
        emulator.url + "/connect/oauth2",
        params={
            "client_id": emulator.client_id,
            "response_type": "code",
            "redirect_uri": "http://localhost/cb",
            "scope": "com.intuit.quickbooks.accounting",
            "state": "s-1",
        },
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert query["realmId"] == [emulator.realm_id]
    assert query["state"] == ["s-1"]
    token = requests.post(
        emulator.token_url,
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": "http://localhost/cb",
        },
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    assert token.status_code == 200
    assert "access_token" in token.json()


def test_an_expired_bearer_gets_the_authentication_failed_fault(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    emulator.expire_access_tokens()
    answer = raw(emulator, qb).get(company_url(emulator, "preferences?minorversion=75"), timeout=5)
    assert answer.status_code == 401
    error = answer.json()["fault"]["error"][0]
    assert error["code"] == "3200"
    assert "AuthenticationFailed" in error["message"]
    with pytest.raises(AuthorizationException):
        Customer.all(qb=qb)


def test_a_token_for_another_company_is_forbidden(emulator: QuickBooksEmulator, qb: QuickBooks):
    answer = raw(emulator, qb).get(
        f"{emulator.api_url}/company/123/preferences?minorversion=75", timeout=5
    )
    assert answer.status_code == 403
    assert answer.json()["fault"]["error"][0]["code"] == "3100"


# --------------------------------------------------------------------------- entities


def test_invoice_totals_balance_ids_and_reply_shape(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme", email="ap@acme.test")
    created = invoice(customer, "250.00", "100.50").save(qb=qb, request_id="i-1")
    assert isinstance(created.Id, str)
    assert created.TotalAmt == Decimal("350.50")
    assert created.Balance == Decimal("350.50")
    assert created.BillEmail.Address == "ap@acme.test"  # copied from the customer
    assert created.SyncToken == "0"
    reply = emulator.requests("/invoice", "POST")[-1]
    assert reply.status == 200
    body = raw(emulator, qb).get(
        company_url(emulator, f"invoice/{created.Id}?minorversion=75"), timeout=5
    )
    assert set(body.json()) == {"Invoice", "time"}


def test_numeric_strings_and_numbers_are_both_amounts(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    session = raw(emulator, qb)
    line = {
        "DetailType": "SalesItemLineDetail",
        "SalesItemLineDetail": {"ItemRef": {"value": "1"}, "Qty": "2", "UnitPrice": 50},
    }
    answer = session.post(
        company_url(emulator, "invoice?minorversion=75"),
        json={
            "CustomerRef": {"value": customer},
            "Line": [{**line, "Amount": "100"}, {**line, "Amount": 100, "Description": ""}],
            "TxnDate": "",
        },
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["Invoice"]["TotalAmt"] == 200.0
    assert answer.json()["Invoice"]["TxnDate"] == "2026-03-10"  # "" means today, company time


def test_payment_reduces_balance_and_touches_the_invoice(
    emulator: QuickBooksEmulator, qb: QuickBooks, clock: EmulatedTime
):
    customer = emulator.add_customer("Acme")
    created = invoice(customer, "300.00").save(qb=qb)
    before = Invoice.get(created.Id, qb=qb)
    clock.advance(120)
    paid = payment(customer, created.Id, "120.00").save(qb=qb, request_id="p-1")
    after = Invoice.get(created.Id, qb=qb)
    assert after.Balance == Decimal("180.00")
    assert after.MetaData.LastUpdatedTime > before.MetaData.LastUpdatedTime
    assert after.SyncToken == "1"
    assert [(link.TxnId, link.TxnType) for link in after.LinkedTxn] == [(paid.Id, "Payment")]
    payment(customer, created.Id, "180.00").save(qb=qb)
    assert Invoice.get(created.Id, qb=qb).Balance == 0


def test_update_checks_and_bumps_sync_token(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    created = Invoice.get(invoice(customer).save(qb=qb).Id, qb=qb)
    created.PrivateNote = "edited"
    updated = created.save(qb=qb)
    assert updated.SyncToken == "1"
    assert updated.PrivateNote == "edited"
    with pytest.raises(QuickbooksException) as stale:
        created.save(qb=qb)  # the same object again: SyncToken 0 is stale now
    assert fault_code(stale.value) == "5010"


def test_void_keeps_the_invoice_with_zero_amounts(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    created = invoice(customer, "80.00").save(qb=qb)
    payment(customer, created.Id, "30.00").save(qb=qb)
    Invoice.get(created.Id, qb=qb).void(qb=qb)
    voided = Invoice.get(created.Id, qb=qb)
    assert (voided.TotalAmt, voided.Balance, voided.PrivateNote) == (0, 0, "Voided")
    assert emulator.payments()[0]["UnappliedAmt"] == 30.0


def test_payment_void_gives_the_balance_back(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    created = invoice(customer, "80.00").save(qb=qb)
    paid = payment(customer, created.Id, "80.00").save(qb=qb)
    Payment.get(paid.Id, qb=qb).void(qb=qb)  # ?operation=update&include=void, sparse
    assert Invoice.get(created.Id, qb=qb).Balance == Decimal("80.00")
    assert emulator.requests("/payment", "POST")[-1].query.count("include=void") == 1


def test_customer_and_item_creation_through_the_sdk(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = Customer()
    customer.DisplayName = "Baker & Sons"
    saved = customer.save(qb=qb)
    assert saved.Active is True
    assert saved.CurrencyRef.value == "USD"
    item = Item()
    item.Name = "Advisory"
    item.Type = "Service"
    item.IncomeAccountRef = Ref()
    item.IncomeAccountRef.value = "1"
    assert item.save(qb=qb).Name == "Advisory"
    again = Customer()
    again.DisplayName = "Baker & Sons"
    with pytest.raises(QuickbooksException) as duplicate:
        again.save(qb=qb)
    assert fault_code(duplicate.value) == "6240"


# --------------------------------------------------------------------------- validation faults


def test_reference_faults_use_qbos_codes(emulator: QuickBooksEmulator, qb: QuickBooks):
    active = emulator.add_customer("Acme")
    inactive = emulator.add_customer("Gone", active=False)
    archived = emulator.add_item("Old service")
    emulator.archive_item(archived)
    with pytest.raises(ValidationException) as unknown:
        invoice("999").save(qb=qb)
    assert fault_code(unknown.value) == "2500"
    with pytest.raises(ObjectNotFoundException) as inactive_customer:
        invoice(inactive).save(qb=qb)
    assert fault_code(inactive_customer.value) == "610"
    with pytest.raises(ObjectNotFoundException):
        invoice(active, item=archived).save(qb=qb)
    with pytest.raises(ValidationException) as no_item:
        invoice(active, item="777").save(qb=qb)
    assert "ItemRef" in no_item.value.detail


def test_closed_period_tax_code_and_length_faults(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    emulator.set_book_close_date(date(2026, 2, 28))
    with pytest.raises(QuickbooksException) as closed:
        invoice(customer, TxnDate="2026-02-28").save(qb=qb)
    assert fault_code(closed.value) == "6210"
    assert invoice(customer, TxnDate="2026-03-01").save(qb=qb).Id
    taxed = invoice(customer)
    taxed.Line[0].SalesItemLineDetail.TaxCodeRef = Ref()
    taxed.Line[0].SalesItemLineDetail.TaxCodeRef.value = "20.0% S"
    with pytest.raises(QuickbooksException) as tax:
        taxed.save(qb=qb)
    assert fault_code(tax.value) == "6100"
    with pytest.raises(ValidationException) as long_number:
        invoice(customer, DocNumber="X" * 22).save(qb=qb)
    assert fault_code(long_number.value) == "2050"


def test_currency_faults(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    euro = invoice(customer)
    euro.CurrencyRef = Ref()
    euro.CurrencyRef.value = "EUR"
    with pytest.raises(QuickbooksException) as off:
        euro.save(qb=qb)
    assert fault_code(off.value) == "6000"
    assert "Multicurrency is not enabled" in off.value.detail
    emulator.enable_multicurrency("EUR")
    with pytest.raises(QuickbooksException) as mismatch:
        euro.save(qb=qb)  # the customer bills in USD
    assert "does not match the customer's currency" in mismatch.value.detail
    european = emulator.add_customer("Europa", currency="EUR")
    euro.CustomerRef.value = european
    saved = euro.save(qb=qb)
    assert saved.CurrencyRef.value == "EUR"
    assert emulator.currencies == ["USD", "EUR"]


def test_duplicate_doc_number_unless_allowed(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    first = invoice(customer, DocNumber="MS-1").save(qb=qb)
    with pytest.raises(QuickbooksException) as duplicate:
        invoice(customer, DocNumber="MS-1").save(qb=qb)
    assert fault_code(duplicate.value) == "6140"
    assert f"TxnId={first.Id}" in duplicate.value.detail
    allowed = invoice(customer, DocNumber="MS-1").save(
        qb=qb, params={"include": "allowduplicatedocnum"}
    )
    assert allowed.Id != first.Id


def test_payments_over_the_balance_or_with_a_long_ref_num_are_refused(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    customer = emulator.add_customer("Acme")
    created = invoice(customer, "50.00").save(qb=qb)
    with pytest.raises(QuickbooksException) as over:
        payment(customer, created.Id, "50.01").save(qb=qb)
    assert fault_code(over.value) == "6000"
    assert "exceeds its open balance" in over.value.detail
    charge = "ch_3NxAbCdEfGhIjKlMnOpQrStU"  # 27 characters: more than PaymentRefNum holds
    with pytest.raises(ValidationException) as long_ref:
        payment(customer, created.Id, "10.00", PaymentRefNum=charge).save(qb=qb)
    assert fault_code(long_ref.value) == "2050"
    assert Invoice.get(created.Id, qb=qb).Balance == Decimal("50.00")


def test_send_needs_an_address_and_records_the_email(emulator: QuickBooksEmulator, qb: QuickBooks):
    silent = emulator.add_customer("No Mail")
    loud = emulator.add_customer("Mail", email="ap@mail.test")
    unsent = invoice(silent).save(qb=qb)
    with pytest.raises(QuickbooksException) as no_address:
        unsent.send(qb=qb)
    assert fault_code(no_address.value) == "6000"
    assert emulator.emails(unsent.Id) == 0
    answer = unsent.send(qb=qb, send_to="books@silent.test")
    assert answer["Invoice"]["EmailStatus"] == "EmailSent"
    assert answer["Invoice"]["BillEmail"]["Address"] == "books@silent.test"
    assert answer["Invoice"]["DeliveryInfo"]["DeliveryType"] == "Email"
    sent = invoice(loud).save(qb=qb)
    sent.send(qb=qb)
    sent.send(qb=qb)
    assert emulator.emails(sent.Id) == 2
    assert emulator.email_recipients(sent.Id) == ["ap@mail.test", "ap@mail.test"]


# --------------------------------------------------------------------------- requestid


def test_requestid_replays_the_first_answer_without_a_second_invoice(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    customer = emulator.add_customer("Acme")
    first = invoice(customer, "10.00").save(qb=qb, request_id="same-key")
    second = invoice(customer, "99.00").save(qb=qb, request_id="same-key")  # other body, too
    assert second.Id == first.Id
    assert second.TotalAmt == Decimal("10.00")
    assert len(emulator.invoices()) == 1


def test_a_refused_request_is_not_stored_so_its_requestid_can_succeed_later(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    customer = emulator.add_customer("Acme")
    emulator.set_book_close_date(date(2026, 3, 31))
    with pytest.raises(QuickbooksException):
        invoice(customer, TxnDate="2026-03-05").save(qb=qb, request_id="k-1")
    emulator.set_book_close_date(None)  # the admin reopened the books
    assert invoice(customer, TxnDate="2026-03-05").save(qb=qb, request_id="k-1").Id


def test_replay_failures_mode_replays_a_refusal(
    clock: EmulatedTime, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with QuickBooksEmulator(time=clock, replay_failures=True) as emulator:
        qb = sdk(emulator)
        customer = emulator.add_customer("Acme")
        emulator.set_book_close_date(date(2026, 3, 31))
        with pytest.raises(QuickbooksException):
            invoice(customer, TxnDate="2026-03-05").save(qb=qb, request_id="k-1")
        emulator.set_book_close_date(None)
        with pytest.raises(QuickbooksException) as replayed:
            invoice(customer, TxnDate="2026-03-05").save(qb=qb, request_id="k-1")
        assert fault_code(replayed.value) == "6210"
        assert emulator.invoices() == []


def test_two_requests_with_one_requestid_at_once_create_one_invoice(
    clock: EmulatedTime, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with QuickBooksEmulator(time=clock, latency=0.2) as emulator:
        customer = emulator.add_customer("Acme")
        token = str(emulator.connect()["access_token"])
        ids: list[str] = []

        def create() -> None:
            ids.append(invoice(customer).save(qb=sdk(emulator, token), request_id="twin").Id)

        threads = [threading.Thread(target=create) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(ids) == 2
        assert len(set(ids)) == 1
        assert len(emulator.invoices()) == 1


# --------------------------------------------------------------------------- query


def test_query_filters_orders_and_pages(emulator: QuickBooksEmulator, qb: QuickBooks):
    acme = emulator.add_customer("Acme")
    baker = emulator.add_customer("Baker")
    other = emulator.add_customer("Other")
    for number, (customer, amount, day) in enumerate(
        [
            (acme, "100.00", "2026-03-01"),
            (acme, "200.00", "2026-03-02"),
            (baker, "300.00", "2026-03-03"),
            (other, "400.00", "2026-03-04"),
        ],
        start=1,
    ):
        invoice(customer, amount, DocNumber=f"MS-{number}", TxnDate=day).save(qb=qb)
    by_customer = Invoice.where(f"CustomerRef IN ('{acme}', '{baker}')", qb=qb)
    assert [i.DocNumber for i in by_customer] == ["MS-1", "MS-2", "MS-3"]
    dated = Invoice.where(
        "TxnDate >= '2026-03-02' AND TotalAmt < '400'", order_by="TxnDate DESC", qb=qb
    )
    assert [i.DocNumber for i in dated] == ["MS-3", "MS-2"]
    like = Invoice.where("DocNumber LIKE 'ms-%'", start_position=2, max_results=2, qb=qb)
    assert [i.DocNumber for i in like] == ["MS-2", "MS-3"]
    assert Invoice.count("TotalAmt > '150'", qb=qb) == 3
    ordered = Invoice.query(
        "select * from invoice ORDER BY MetaData.CreateTime DESC MAXRESULTS 1", qb=qb
    )
    assert len(ordered) == 1
    assert Invoice.where("DocNumber = 'nope'", qb=qb) == []


def test_query_refuses_what_qbo_cannot_filter_or_parse(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    cases = {
        "SELECT * FROM Invoice WHERE PrivateNote = 'x'": ("4001", "is not queryable"),
        "SELECT * FROM Invoice WHERE Nonsense = 'x'": ("4001", "not found"),
        "SELECT * FROM Invoice WHERE DocNumber = 'a' OR DocNumber = 'b'": ("4001", "OR"),
        "SELECT * FROM Invoice WHERE": ("4000", "QueryParserError"),
        "SELECT * FRM Invoice": ("4000", "QueryParserError"),
        "SELECT * FROM Unicorn": ("4000", "Invalid entity"),
        "SELECT * FROM Invoice WHERE TxnDate > 'soon'": ("4001", "not valid"),
        "SELECT * FROM Customer WHERE Active LIKE 'tr%'": ("4001", "not supported"),
    }
    for text, (code, words) in cases.items():
        with pytest.raises(QuickbooksException) as refused:
            Invoice.query(text, qb=qb)
        assert fault_code(refused.value) == code, text
        assert words in refused.value.detail, text


def test_query_hides_inactive_names_unless_asked_and_caps_max_results(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    emulator.add_customer("Live")
    emulator.add_customer("Sleeping", active=False)
    assert [c.DisplayName for c in Customer.all(qb=qb)] == ["Live"]
    both = Customer.where("Active IN (true, false)", qb=qb)
    assert [c.DisplayName for c in both] == ["Live", "Sleeping"]
    for index in range(1002):
        emulator.add_customer(f"Bulk {index}")
    assert len(Customer.query("SELECT * FROM Customer MAXRESULTS 5000", qb=qb)) == 1000


# --------------------------------------------------------------------------- CDC


def test_cdc_lists_only_changed_objects_and_deletions(
    emulator: QuickBooksEmulator, qb: QuickBooks, clock: EmulatedTime
):
    customer = emulator.add_customer("Acme")
    old = invoice(customer).save(qb=qb)
    kept = invoice(customer).save(qb=qb)
    gone = invoice(customer).save(qb=qb)
    clock.advance(600)
    since = clock.now()
    clock.advance(60)
    emulator.pay_externally(kept.Id, Decimal("10.00"))
    emulator.delete_invoice(gone.Id)
    changes = change_data_capture(
        [Invoice, Payment], since.astimezone(UTC).isoformat(timespec="seconds"), qb=qb
    )
    by_id = {i.Id: i for i in changes.Invoice}
    assert set(by_id) == {kept.Id, gone.Id}
    assert by_id[gone.Id].status == "Deleted"
    assert old.Id not in by_id
    assert len(changes.Payment) == 1
    assert changes.time


def test_cdc_refuses_more_than_30_days_and_returns_at_most_1000(
    emulator: QuickBooksEmulator, qb: QuickBooks, clock: EmulatedTime
):
    since = clock.now()
    for index in range(1005):
        emulator.add_customer(f"Bulk {index}")
    clock.advance(timedelta(days=31))
    qb = sdk(emulator)  # the access token lives an hour
    with pytest.raises(QuickbooksException) as too_old:
        change_data_capture([Customer], since.isoformat(timespec="seconds"), qb=qb)
    assert "older than fixed days" in too_old.value.detail
    recent = clock.now() - timedelta(days=29)
    emulator.add_customer("Just now")
    changes = change_data_capture([Customer], recent.isoformat(timespec="seconds"), qb=qb)
    assert [c.DisplayName for c in changes.Customer] == ["Just now"]
    clock.advance(timedelta(days=-30))  # back to when the bulk was made
    qb = sdk(emulator)
    bulk = change_data_capture(
        [Customer], (since - timedelta(seconds=1)).isoformat(timespec="seconds"), qb=qb
    )
    assert len(bulk.Customer) == 1000


# --------------------------------------------------------------------------- batch


def test_batch_commits_good_items_and_faults_the_bad_one(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    customer = emulator.add_customer("Acme")
    result = batch_create([invoice(customer), invoice("404"), invoice(customer)], qb=qb)
    assert len(result.successes) == 2
    assert [(f.Error[0].code, f.original_object.CustomerRef.value) for f in result.faults] == [
        ("2500", "404")
    ]
    assert len(emulator.invoices()) == 2
    assert "requestid" not in emulator.requests("/batch")[-1].query


def test_batch_of_more_than_30_is_refused(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    body = {
        "BatchItemRequest": [
            {
                "bId": str(i),
                "operation": "create",
                "Invoice": json.loads(invoice(customer).to_json()),
            }
            for i in range(31)
        ]
    }
    answer = raw(emulator, qb).post(
        company_url(emulator, "batch?minorversion=75"), json=body, timeout=10
    )
    assert answer.status_code == 400
    assert emulator.invoices() == []


# --------------------------------------------------------------------------- throttles, faults


def test_throttles_per_minute_with_both_fault_shapes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    clock = EmulatedTime(start=START)
    with QuickBooksEmulator(time=clock, limits=True, per_minute=5) as emulator:
        qb = sdk(emulator)
        for _ in range(5):
            Customer.all(qb=qb)
        with pytest.raises(ValidationException) as as_json:
            Customer.all(qb=qb)
        assert fault_code(as_json.value) == "3001"
        with pytest.raises(QuickbooksException) as as_xml:
            Customer.all(qb=qb)
        assert "ThrottleExceeded" in str(as_xml.value)  # XML body: the SDK cannot read it
        assert emulator.requests()[-1].status == 429
        clock.advance(60)
        assert Customer.all(qb=qb) is not None
        assert emulator.throttled == 2


def test_throttles_concurrent_requests_and_batches(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    clock = EmulatedTime(start=START, scale=10)
    with QuickBooksEmulator(
        time=clock, limits=True, concurrent=2, batch_per_minute=1, latency=10.0
    ) as emulator:
        token = str(emulator.connect()["access_token"])
        statuses: list[int] = []

        def call() -> None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            url = company_url(emulator, "query?minorversion=75")
            answer = session.post(
                url, data="SELECT * FROM Customer", headers={"Content-Type": "application/text"}
            )
            statuses.append(answer.status_code)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses).count(200) == 2
        assert sorted(statuses).count(429) == 2
        emulator.latency = 0
        qb = sdk(emulator, token)
        batch_create([invoice(emulator.add_customer("A"))], qb=qb)
        with pytest.raises(QuickbooksException):
            batch_create([invoice(emulator.add_customer("B"))], qb=qb)


def test_injected_failures_come_before_anything_happens(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    customer = emulator.add_customer("Acme")
    emulator.fail_next(1, 503, "json")
    emulator.fail_next(1, 500, "xml")
    emulator.fail_next(1, 502, "html")
    emulator.fail_next(1, 429, "xml")
    for expected in (503, 500, 502, 429):
        with pytest.raises(QuickbooksException):
            invoice(customer).save(qb=qb, request_id=f"r-{expected}")
        assert emulator.requests()[-1].status == expected
    assert emulator.invoices() == []


def test_dropped_writes_commit_and_replays_answer(emulator: QuickBooksEmulator, qb: QuickBooks):
    customer = emulator.add_customer("Acme")
    emulator.drop_next_writes(1)
    with pytest.raises(requests.ConnectionError):
        invoice(customer).save(qb=qb, request_id="drop-1")
    assert len(emulator.invoices()) == 1  # committed before the drop
    assert invoice(customer).save(qb=qb, request_id="drop-1").Id == emulator.invoices()[0]["Id"]
    emulator.drop_every_write(True)
    with pytest.raises(requests.ConnectionError):
        invoice(customer).save(qb=qb, request_id="drop-2")
    with pytest.raises(requests.ConnectionError):
        payment(customer, emulator.invoices()[0]["Id"], "1.00").save(qb=qb, request_id="drop-3")
    replay = invoice(customer).save(qb=qb, request_id="drop-2")  # replays are answered
    assert replay.Id == emulator.invoices()[1]["Id"]
    Customer.all(qb=qb)  # reads are never dropped
    emulator.drop_every_write(False)
    assert len(emulator.invoices()) == 2


# --------------------------------------------------------------------------- spec checks


def test_a_valid_sdk_body_passes_and_bad_ones_are_refused_and_recorded(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    require_xsd()
    customer = emulator.add_customer("Acme")
    invoice(customer, DocNumber="OK-1", PrivateNote="note").save(qb=qb)
    payment(customer, emulator.invoices()[0]["Id"], "1.00").save(qb=qb)
    assert emulator.violations() == []
    bad_amount = json.loads(invoice(customer).to_json())
    bad_amount["Line"][0]["Amount"] = "lots"
    bad_detail = json.loads(invoice(customer).to_json())
    bad_detail["Line"][0]["DetailType"] = "NoSuchDetail"
    unknown = json.loads(invoice(customer).to_json())
    unknown["Colour"] = "blue"
    session = raw(emulator, qb)
    for body in (bad_amount, bad_detail, unknown):
        answer = session.post(company_url(emulator, "invoice?minorversion=75"), json=body)
        assert answer.status_code == 400
        assert answer.json()["Fault"]["type"] == "ValidationFault"
    found = emulator.violations()
    assert any("Line[0].Amount" in v and "lots" in v for v in found)
    assert any("DetailType" in v and "must be one of" in v for v in found)
    assert any("Invoice.Colour: not a field of Invoice" in v for v in found)
    assert len(emulator.invoices()) == 1


def test_violations_module_normalises_only_the_sdks_quirks():
    require_xsd()
    body = json.loads(invoice("1").to_json())  # LineNum 0, SyncToken 0, "" dates, domain
    assert violations("Invoice", body) == []
    body["SyncToken"] = True
    body["EmailStatus"] = "Mailed"
    body["Line"][0]["SalesItemLineDetail"]["Qty"] = "two"
    body["CustomerRef"]["colour"] = "red"
    found = violations("Invoice", body)
    assert any("EmailStatus" in v for v in found)
    assert any("Qty" in v for v in found)
    assert any("CustomerRef.colour" in v for v in found)
    assert any("SyncToken" in v for v in found)


def test_without_the_specs_the_emulator_skips_validation(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, clock: EmulatedTime
):
    monkeypatch.setenv(SPECS_ENV, str(tmp_path))  # a specs directory without quickbooks/
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    assert quickbooks_schema() is None
    with pytest.raises(LookupError, match="not found"):
        violations("Invoice", {})
    with QuickBooksEmulator(time=clock) as emulator:
        qb = sdk(emulator)
        body = json.loads(invoice(emulator.add_customer("Acme")).to_json())
        body["Colour"] = "blue"  # would be refused with the XSDs at hand
        answer = raw(emulator, qb).post(company_url(emulator, "invoice?minorversion=75"), json=body)
        assert answer.status_code == 200
        assert emulator.violations() == []


def test_minorversion_is_recorded_and_its_absence_is_a_violation(
    emulator: QuickBooksEmulator, qb: QuickBooks
):
    Customer.all(qb=qb)
    assert emulator.minor_versions == ["75"]
    raw(emulator, qb).get(company_url(emulator, "preferences"), timeout=5)
    assert emulator.violations() == [
        f"GET /v3/company/{emulator.realm_id}/preferences: minorversion missing: QBO would "
        "default to 75; pin it on every call"
    ]


def test_admin_routes_seed_and_inspect(emulator: QuickBooksEmulator, qb: QuickBooks):
    created = requests.post(emulator.url + "/__admin/customers", json={"name": "Web"}, timeout=5)
    customer = created.json()["id"]
    invoice(customer, "40.00").save(qb=qb)
    invoice_id = emulator.invoices()[0]["Id"]
    requests.post(
        emulator.url + f"/__admin/invoices/{invoice_id}/pay", json={"amount": "40.00"}, timeout=5
    )
    listed = requests.get(emulator.url + "/__admin/invoices", timeout=5).json()
    assert listed[0]["Balance"] == 0
    assert requests.get(emulator.url + "/__admin/violations", timeout=5).json() == []
