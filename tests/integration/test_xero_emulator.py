"""The Xero emulator over real HTTP: OAuth and connections, spec validation, invoices (totals,
numbering, statuses, validation messages, summarizeErrors), where/order/paging/If-Modified-Since,
payments, email, idempotency, rate limits on an emulated clock, and injected faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from xero_python.accounting import (
    AccountingApi,
    Contact,
    CurrencyCode,
    Invoice,
    Invoices,
    LineAmountTypes,
    LineItem,
)
from xero_python.api_client import ApiClient

from adapters.emulation.clock import EmulatedTime
from adapters.emulation.specs import missing_reason, spec_path
from adapters.xero.client import _CallToken, private_configuration
from adapters.xero.emulator import ACCOUNTING_SPEC, MESSAGES, XeroEmulator, ms_date

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def require_spec() -> None:
    if spec_path(ACCOUNTING_SPEC) is None:
        pytest.skip(missing_reason(ACCOUNTING_SPEC))


class Api:
    """Raw HTTP to the emulator as one tenant, with the bearer of one grant."""

    def __init__(self, emulator: XeroEmulator, token: str, tenant: str) -> None:
        self.emulator = emulator
        self.token = token
        self.tenant = tenant

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "xero-tenant-id": self.tenant,
            "Accept": "application/json",
            **extra,
        }

    def get(self, path: str, params: Any = None, **headers: str) -> requests.Response:
        return requests.get(
            self.emulator.api_url + path,
            params=params,
            headers=self.headers(**headers),
            timeout=10,
        )

    def send(
        self, method: str, path: str, body: Any, params: Any = None, **headers: str
    ) -> requests.Response:
        return requests.request(
            method,
            self.emulator.api_url + path,
            json=body,
            params=params,
            headers=self.headers(**headers),
            timeout=10,
        )

    def create(self, *invoices: dict[str, Any], **params: str) -> requests.Response:
        return self.send("PUT", "/Invoices", {"Invoices": list(invoices)}, params or None)


@pytest.fixture
def clock() -> EmulatedTime:
    return EmulatedTime(start=START)


@pytest.fixture
def xero(clock: EmulatedTime) -> Iterator[XeroEmulator]:
    with XeroEmulator(time=clock) as emulator:
        yield emulator


@pytest.fixture
def api(xero: XeroEmulator) -> Api:
    token = xero.connect()
    return Api(xero, str(token["access_token"]), xero.tenants[0])


@pytest.fixture
def contact(xero: XeroEmulator) -> str:
    return xero.add_contact("Acme Ltd", email="ap@acme.example")


def invoice(contact: str, amount: str = "250.00", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Type": "ACCREC",
        "Contact": {"ContactID": contact},
        "LineItems": [
            {
                "Description": "Q1 bookkeeping",
                "Quantity": 1,
                "UnitAmount": float(amount),
                "AccountCode": "200",
                "TaxType": "NONE",
            }
        ],
        "Date": "2026-03-02",
        "DueDate": "2026-04-01",
        "Reference": "ms-1",
        "Status": "AUTHORISED",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}  # None: leave the field out


def messages(response: requests.Response) -> list[str]:
    body = response.json()
    return [
        error["Message"]
        for element in body.get("Elements", body.get("Invoices", body.get("Payments", [])))
        for error in element.get("ValidationErrors", [])
    ]


def only(response: requests.Response, name: str = "Invoices") -> dict[str, Any]:
    assert response.status_code == 200, response.text
    rows = response.json()[name]
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    return row


# --------------------------------------------------------------------------- OAuth, tenants


def test_token_endpoint_rotates_refresh_tokens_with_a_grace_period(
    xero: XeroEmulator, clock: EmulatedTime
) -> None:
    first = xero.connect()
    assert first["expires_in"] == 1800
    form = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": xero.client_id,
        "client_secret": xero.client_secret,
    }
    rotated = requests.post(xero.token_url, data=form, timeout=5)
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != first["refresh_token"]
    clock.advance(timedelta(minutes=29))
    assert requests.post(xero.token_url, data=form, timeout=5).status_code == 200  # grace
    clock.advance(timedelta(minutes=2))
    late = requests.post(xero.token_url, data=form, timeout=5)
    assert (late.status_code, late.json()["error"]) == (400, "invalid_grant")
    basic = requests.post(
        xero.token_url,
        data={k: v for k, v in form.items() if not k.startswith("client_")},
        auth=(xero.client_id, xero.client_secret),
        timeout=5,
    )
    assert basic.status_code == 401  # Xero takes client credentials in the form body


def test_an_expired_access_token_is_refused_like_xero(
    api: Api, clock: EmulatedTime, xero: XeroEmulator
) -> None:
    assert api.get("/Organisation").status_code == 200
    clock.advance(timedelta(minutes=31))
    expired = api.get("/Organisation")
    assert expired.status_code == 401
    assert expired.json()["Detail"].startswith("TokenExpired")
    assert "invalid_token" in expired.headers["WWW-Authenticate"]
    missing = requests.get(xero.api_url + "/Organisation", headers={"xero-tenant-id": api.tenant})
    assert missing.status_code == 401


def test_the_authorization_code_flow_grants_every_organisation(xero: XeroEmulator) -> None:
    second = xero.add_organisation("Second Co", currency="NZD")
    redirect = requests.get(
        xero.url + "/identity/connect/authorize",
        params={
            "response_type": "code",
            "client_id": xero.client_id,
            "redirect_uri": "http://localhost/callback",
            "scope": "offline_access accounting.transactions",
            "state": "s1",
        },
        allow_redirects=False,
        timeout=5,
    )
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert "state=s1" in location
    code = location.split("code=")[1].split("&")[0]
    token = requests.post(
        xero.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://localhost/callback",
            "client_id": xero.client_id,
            "client_secret": xero.client_secret,
        },
        timeout=5,
    ).json()
    connections = requests.get(
        xero.url + "/Connections",
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=5,
    ).json()
    assert {c["tenantId"] for c in connections} == {xero.tenants[0], second}
    assert {c["tenantType"] for c in connections} == {"ORGANISATION"}
    assert xero.violations() == []


def test_connections_list_and_disconnect_tenants(xero: XeroEmulator) -> None:
    second = xero.add_organisation("Second Co")
    token = str(xero.connect()["access_token"])
    auth = {"Authorization": f"Bearer {token}"}
    listed = requests.get(xero.url + "/Connections", headers=auth, timeout=5).json()
    assert len(listed) == 2
    gone = next(c for c in listed if c["tenantId"] == second)
    deleted = requests.delete(xero.url + f"/Connections/{gone['id']}", headers=auth, timeout=5)
    assert deleted.status_code == 204
    assert [
        c["tenantId"] for c in requests.get(xero.url + "/Connections", headers=auth).json()
    ] == [xero.tenants[0]]
    refused = Api(xero, token, second).get("/Organisation")
    assert refused.status_code == 403
    assert xero.violations() == []


def test_tenants_are_separate_organisations(xero: XeroEmulator, api: Api) -> None:
    second = xero.add_organisation("Second Co")
    token = str(xero.connect()["access_token"])
    other = Api(xero, token, second)
    mine = xero.add_contact("Mine")
    assert api.create(invoice(mine)).status_code == 200
    foreign = other.create(invoice(mine))
    assert MESSAGES["contact_missing"] in messages(foreign)
    assert len(xero.invoices()) == 1
    assert xero.invoices(second) == []


# --------------------------------------------------------------------------- the spec


def test_requests_that_break_the_spec_get_400_and_are_recorded(api: Api, contact: str) -> None:
    require_spec()
    bad_type = api.create(invoice(contact, Type="NOT_A_TYPE"))
    assert bad_type.status_code == 400
    assert bad_type.json()["Type"] == "PostDataInvalidException"
    body = invoice(contact)
    body["LineItems"][0]["Quantity"] = "two"
    assert api.create(body).status_code == 400
    no_tenant = requests.get(
        api.emulator.api_url + "/Invoices",
        headers={"Authorization": f"Bearer {api.token}"},
        timeout=5,
    )
    assert no_tenant.status_code == 400
    found = api.emulator.violations()
    assert any("NOT_A_TYPE" in v for v in found)
    assert any("'two' is not of type 'number'" in v for v in found)
    assert any("xero-tenant-id" in v for v in found)
    assert api.emulator.invoices() == []


def test_a_body_built_by_xero_python_passes_the_spec(xero: XeroEmulator, contact: str) -> None:
    require_spec()
    token = xero.connect()
    call_token = _CallToken()
    call_token.bind(str(token["access_token"]))
    configuration = private_configuration()
    configuration.oauth2_token = call_token
    accounting = AccountingApi(ApiClient(configuration), base_url=xero.api_url)
    sdk_invoice = Invoice(
        type="ACCREC",
        contact=Contact(contact_id=contact),
        line_items=[
            LineItem(
                description="Q1",
                quantity=Decimal(1),
                unit_amount=Decimal("250.10"),
                account_code="200",
                tax_type="NONE",
            )
        ],
        date=date(2026, 3, 2),
        due_date=date(2026, 4, 1),
        line_amount_types=LineAmountTypes.EXCLUSIVE,
        reference="ms-1",
        status="AUTHORISED",
        currency_code=CurrencyCode.USD,
    )
    created = accounting.create_invoices(
        xero.tenants[0],
        Invoices(invoices=[sdk_invoice]),
        summarize_errors=False,
        unitdp=4,
        idempotency_key="k-1",
        _request_timeout=(5, 30),
    )
    assert created.invoices[0].total == Decimal("250.1")
    assert xero.requests("PUT", "/Invoices")[0].json()["Invoices"][0]["HasAttachments"] is False
    assert xero.violations() == []


# --------------------------------------------------------------------------- invoices


def test_a_created_invoice_is_numbered_and_totalled(api: Api, contact: str) -> None:
    body = invoice(contact)
    body["LineItems"] = [
        {
            "Description": "a",
            "Quantity": 2,
            "UnitAmount": 100,
            "AccountCode": "200",
            "TaxType": "OUTPUT",
        },
        {
            "Description": "b",
            "Quantity": 1,
            "UnitAmount": 50.5,
            "AccountCode": "200",
            "TaxType": "NONE",
        },
    ]
    body["Date"] = ms_date(date(2026, 3, 2))
    created = only(api.create(body))
    assert created["InvoiceNumber"] == "INV-0001"
    assert (created["SubTotal"], created["TotalTax"], created["Total"]) == (250.5, 16.5, 267.0)
    assert (created["AmountDue"], created["AmountPaid"]) == (267.0, 0.0)
    assert created["Date"] == "/Date(1772409600000+0000)/"
    assert created["DueDate"] == ms_date(date(2026, 4, 1))
    assert created["UpdatedDateUTC"].startswith("/Date(")
    second = only(api.create(invoice(contact, Reference="ms-2")))
    assert second["InvoiceNumber"] == "INV-0002"
    fetched = only(api.get(f"/Invoices/{created['InvoiceID']}"))
    assert fetched["LineItems"][0]["LineAmount"] == 200.0
    assert api.emulator.violations() == []


@pytest.mark.parametrize(
    ("amount_types", "subtotal", "tax", "total"),
    [
        ("Exclusive", 100.0, 8.25, 108.25),
        ("Inclusive", 92.38, 7.62, 100.0),
        ("NoTax", 100.0, 0.0, 100.0),
    ],
)
def test_line_amount_types_decide_how_tax_is_counted(
    api: Api, contact: str, amount_types: str, subtotal: float, tax: float, total: float
) -> None:
    body = invoice(contact, "100.00", LineAmountTypes=amount_types)
    body["LineItems"][0]["TaxType"] = "OUTPUT"
    created = only(api.create(body))
    assert (created["SubTotal"], created["TotalTax"], created["Total"]) == (subtotal, tax, total)


def test_an_item_fills_the_account_and_price(api: Api, xero: XeroEmulator, contact: str) -> None:
    xero.add_item("BK", "Bookkeeping", account_code="260", unit_price=Decimal("80"))
    body = invoice(contact)
    body["LineItems"] = [{"ItemCode": "BK", "Quantity": 2, "TaxType": "NONE"}]
    created = only(api.create(body))
    assert created["LineItems"][0]["AccountCode"] == "260"
    assert created["Total"] == 160.0


def test_a_duplicate_sales_invoice_number_is_a_validation_exception(api: Api, contact: str) -> None:
    assert api.create(invoice(contact, InvoiceNumber="KB-1")).status_code == 200
    again = api.create(invoice(contact, InvoiceNumber="KB-1", Reference="other"))
    assert again.status_code == 400
    body = again.json()
    assert (body["ErrorNumber"], body["Type"]) == (10, "ValidationException")
    assert body["Elements"][0]["ValidationErrors"][0]["Message"] == "Invoice # must be unique."
    both = api.create(
        invoice(contact, InvoiceNumber="KB-2"), invoice(contact, InvoiceNumber="KB-2")
    )
    assert messages(both) == ["Invoice # must be unique."]
    assert len(api.emulator.invoices()) == 1  # a refused request saves nothing


def test_a_request_over_3_5_mb_is_refused(api: Api, contact: str) -> None:
    body = invoice(contact)
    body["LineItems"][0]["Description"] = "x" * (3 * 1024 * 1024 + 600 * 1024)
    assert api.create(body).status_code == 413
    assert api.emulator.invoices() == []


def test_summarize_errors_false_saves_the_valid_elements(api: Api, contact: str) -> None:
    response = api.create(
        invoice(contact, Reference="good-1"),
        invoice(contact, Reference="bad", CurrencyCode="EUR"),
        invoice(contact, Reference="good-2"),
        summarizeErrors="False",
    )
    assert response.status_code == 200
    rows = response.json()["Invoices"]
    assert [r.get("HasErrors") for r in rows] == [False, True, False]
    assert rows[1]["StatusAttributeString"] == "ERROR"
    assert rows[1]["ValidationErrors"] == [
        {"Message": "Organisation is not subscribed to currency EUR"}
    ]
    assert sorted(i["Reference"] for i in api.emulator.invoices()) == ["good-1", "good-2"]


def test_validation_messages_name_what_xero_refuses(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    archived = xero.add_contact("Old Co", archived=True)
    xero.add_item("OLD", "Old item")
    xero.archive_item("OLD")
    xero.add_account("299", "Closed sales", "REVENUE", status="ARCHIVED")

    def refused(body: dict[str, Any]) -> list[str]:
        response = api.create(body)
        assert response.status_code == 400, response.text
        return messages(response)

    assert refused(invoice(archived)) == [MESSAGES["contact_archived"]]
    unknown = "0f0e0d0c-0000-4000-8000-000000000001"
    assert refused(invoice(unknown)) == [MESSAGES["contact_missing"]]
    with_item = invoice(contact)
    with_item["LineItems"][0]["ItemCode"] = "OLD"
    assert refused(with_item) == ["Item code 'OLD' is not valid."]
    bad_account = invoice(contact)
    bad_account["LineItems"][0]["AccountCode"] = "999"
    assert refused(bad_account) == ["Account code '999' is not a valid code for this document."]
    closed = invoice(contact)
    closed["LineItems"][0]["AccountCode"] = "299"
    assert "has been archived" in refused(closed)[0]
    taxed = invoice(contact)
    taxed["LineItems"][0]["TaxType"] = "INPUT"  # purchases only
    assert refused(taxed)[0].startswith("The TaxType code 'INPUT'")
    assert refused(invoice(contact, CurrencyCode="EUR")) == [
        "Organisation is not subscribed to currency EUR"
    ]
    assert refused(invoice(contact, DueDate=None)) == [MESSAGES["due_date_required"]]
    xero.enable_currency("EUR")
    assert api.create(invoice(contact, CurrencyCode="EUR")).status_code == 200


def test_locked_periods_refuse_invoices_and_payments_dated_in_them(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    created = only(api.create(invoice(contact)))
    xero.set_period_lock(date(2026, 3, 31))
    locked = api.create(invoice(contact, Reference="later"))
    assert messages(locked) == [
        "The document date cannot be before the period lock date of 31 March 2026."
    ]
    payment = api.send(
        "PUT",
        "/Payments",
        {
            "Payments": [
                {
                    "Invoice": {"InvoiceID": created["InvoiceID"]},
                    "Account": {"Code": "090"},
                    "Amount": 10,
                    "Date": "2026-03-15",
                }
            ]
        },
    )
    assert "period lock date" in messages(payment)[0]
    xero.set_period_lock(None, end_of_year=date(2026, 3, 31))
    assert "end of year lock date" in messages(api.create(invoice(contact, Reference="x")))[0]
    ok = api.create(invoice(contact, Reference="april", Date="2026-04-01", DueDate="2026-05-01"))
    assert ok.status_code == 200


def test_status_transitions_follow_xero(api: Api, xero: XeroEmulator, contact: str) -> None:
    draft = only(api.create(invoice(contact, Status="DRAFT", DueDate=None)))
    no_due = api.send(
        "POST", f"/Invoices/{draft['InvoiceID']}", {"Invoices": [{"Status": "AUTHORISED"}]}
    )
    assert messages(no_due) == [MESSAGES["due_date_required"]]
    approved = only(
        api.send(
            "POST",
            f"/Invoices/{draft['InvoiceID']}",
            {"Invoices": [{"Status": "AUTHORISED", "DueDate": "2026-04-01"}]},
        )
    )
    assert approved["Status"] == "AUTHORISED"
    back = api.send(
        "POST", f"/Invoices/{draft['InvoiceID']}", {"Invoices": [{"Status": "DELETED"}]}
    )
    assert messages(back) == [MESSAGES["invalid_status"]]
    xero.pay_externally(draft["InvoiceID"], Decimal("10"))
    void = api.send("POST", f"/Invoices/{draft['InvoiceID']}", {"Invoices": [{"Status": "VOIDED"}]})
    assert messages(void) == [MESSAGES["void_with_payments"]]
    edit = api.send("POST", f"/Invoices/{draft['InvoiceID']}", {"Invoices": [{"Reference": "new"}]})
    assert messages(edit) == [MESSAGES["has_payments"]]
    other = only(api.create(invoice(contact, Reference="ms-2")))
    voided = only(
        api.send(
            "POST",
            "/Invoices",
            {"Invoices": [{"InvoiceID": other["InvoiceID"], "Status": "VOIDED"}]},
        )
    )
    assert voided["Status"] == "VOIDED"
    again = api.send(
        "POST", f"/Invoices/{other['InvoiceID']}", {"Invoices": [{"Status": "AUTHORISED"}]}
    )
    assert messages(again) == [MESSAGES["invalid_status"]]
    unknown = api.send(
        "POST",
        "/Invoices/0f0e0d0c-0000-4000-8000-000000000001",
        {"Invoices": [{"Status": "VOIDED"}]},
    )
    assert messages(unknown) == [MESSAGES["invoice_missing"]]
    assert xero.violations() == []


def test_post_invoices_upserts_by_id_or_number(api: Api, contact: str) -> None:
    first = only(
        api.send("POST", "/Invoices", {"Invoices": [invoice(contact, InvoiceNumber="KB-9")]})
    )
    updated = only(
        api.send(
            "POST", "/Invoices", {"Invoices": [{"InvoiceNumber": "KB-9", "Reference": "changed"}]}
        )
    )
    assert updated["InvoiceID"] == first["InvoiceID"]
    assert updated["Reference"] == "changed"
    assert len(api.emulator.invoices()) == 1


def test_the_admin_api_stands_for_a_person_in_xero(
    xero: XeroEmulator, api: Api, contact: str
) -> None:
    draft = only(api.create(invoice(contact, Status="DRAFT")))
    xero.approve(draft["InvoiceID"])
    assert xero.invoice(draft["InvoiceID"])["Status"] == "AUTHORISED"
    xero.pay_externally(draft["InvoiceID"], Decimal("250"))
    assert xero.invoice(draft["InvoiceID"])["Status"] == "PAID"
    other = only(api.create(invoice(contact, Reference="two")))
    xero.void(other["InvoiceID"])
    assert xero.invoice(other["InvoiceID"])["Status"] == "VOIDED"
    another = only(api.create(invoice(contact, Reference="three", Status="DRAFT")))
    xero.void(another["InvoiceID"])  # a draft can only be deleted
    assert xero.invoice(another["InvoiceID"])["Status"] == "DELETED"


# --------------------------------------------------------------------------- reading invoices


@pytest.fixture
def many(api: Api, xero: XeroEmulator, clock: EmulatedTime, contact: str) -> dict[str, Any]:
    other = xero.add_contact("Other Inc")
    ids = {}
    for n in range(5):
        body = invoice(
            contact if n % 2 == 0 else other, Reference=f"ref-{n}", InvoiceNumber=f"N-{n}"
        )
        body["Date"] = f"2026-0{1 + n % 3}-10"
        body["DueDate"] = "2026-06-30"
        if n == 4:
            body["Status"] = "DRAFT"
        ids[n] = only(api.create(body))["InvoiceID"]
        clock.advance(60)
    return {"ids": ids, "other": other, "contact": contact}


def refs(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["Reference"] for i in response.json()["Invoices"]]


def test_where_filters_like_xero(api: Api, many: dict[str, Any]) -> None:
    assert refs(api.get("/Invoices", {"where": 'Reference=="REF-1"'})) == ["ref-1"]  # no case
    assert refs(api.get("/Invoices", {"where": 'Type=="ACCREC" AND Status=="DRAFT"'})) == ["ref-4"]
    assert refs(api.get("/Invoices", {"where": 'Reference=="ref-0" OR Reference=="ref-3"'})) == [
        "ref-0",
        "ref-3",
    ]
    contact = many["other"]
    assert refs(api.get("/Invoices", {"where": f'Contact.ContactID==guid("{contact}")'})) == [
        "ref-1",
        "ref-3",
    ]
    assert refs(api.get("/Invoices", {"where": "Date>=DateTime(2026,3,1)"})) == ["ref-2"]
    assert refs(api.get("/Invoices", {"where": 'Reference.StartsWith("ref-") && Total>200'})) == [
        f"ref-{n}" for n in range(5)
    ]
    broken = api.get("/Invoices", {"where": 'Nope=="x"'})
    assert broken.status_code == 400
    assert broken.json()["Type"] == "QueryParseException"
    assert api.get("/Invoices", {"where": 'Date=="x"'}).status_code == 400


def test_list_parameters_order_and_single_reads(api: Api, many: dict[str, Any]) -> None:
    ids = many["ids"]
    assert refs(api.get("/Invoices", {"IDs": f"{ids[1]},{ids[2]}"})) == ["ref-1", "ref-2"]
    assert refs(api.get("/Invoices", {"InvoiceNumbers": "N-0,N-4"})) == ["ref-0", "ref-4"]
    assert refs(api.get("/Invoices", {"ContactIDs": many["other"]})) == ["ref-1", "ref-3"]
    assert refs(api.get("/Invoices", {"Statuses": "DRAFT"})) == ["ref-4"]
    assert refs(api.get("/Invoices", {"order": "Date DESC, InvoiceNumber"}))[:2] == [
        "ref-2",
        "ref-1",
    ]
    assert only(api.get(f"/Invoices/{ids[3]}"))["Reference"] == "ref-3"
    assert api.get("/Invoices/0f0e0d0c-0000-4000-8000-000000000001").status_code == 404


def test_lists_page_by_100_and_only_pages_carry_line_items(api: Api, contact: str) -> None:
    batch = [invoice(contact, Reference=f"p-{n}") for n in range(50)]
    for _ in range(3):
        assert api.create(*batch).status_code == 200
    first = api.get("/Invoices", {"page": 1})
    assert len(first.json()["Invoices"]) == 100
    assert first.json()["pagination"] == {
        "page": 1,
        "pageSize": 100,
        "pageCount": 2,
        "itemCount": 150,
    }
    assert first.json()["Invoices"][0]["LineItems"]
    assert len(api.get("/Invoices", {"page": 2}).json()["Invoices"]) == 50
    assert len(api.get("/Invoices", {"page": 2, "pageSize": 60}).json()["Invoices"]) == 60
    unpaged = api.get("/Invoices").json()["Invoices"]
    assert len(unpaged) == 150
    assert unpaged[0]["LineItems"] == []


def test_if_modified_since_returns_what_changed(
    api: Api, xero: XeroEmulator, clock: EmulatedTime, many: dict[str, Any]
) -> None:
    mark = clock.now()
    clock.advance(5)
    xero.pay_externally(many["ids"][1], Decimal("10"))
    xero.void(many["ids"][2])
    since = api.get("/Invoices", headers=None, **{"If-Modified-Since": mark.isoformat()})
    assert sorted(refs(since)) == ["ref-1", "ref-2"]
    assert xero.violations() == []
    # the spec wants an RFC 3339 date-time with its offset; a naive time is recorded as a fault
    naive = mark.replace(tzinfo=None).isoformat()
    require_spec()
    assert api.get("/Invoices", **{"If-Modified-Since": naive}).status_code == 400
    assert any("is not a 'date-time'" in v for v in xero.violations())


# --------------------------------------------------------------------------- payments, email


def pay(api: Api, invoice_id: str, amount: float, **fields: Any) -> requests.Response:
    body = {
        "Invoice": {"InvoiceID": invoice_id},
        "Account": {"Code": "855"},
        "Amount": amount,
        "Date": "2026-03-05",
        "Reference": "ch_1",
        **fields,
    }
    return api.send("POST", "/Payments", body)


def test_payments_settle_the_invoice_and_can_be_reversed(
    api: Api, xero: XeroEmulator, contact: str, clock: EmulatedTime
) -> None:
    created = only(api.create(invoice(contact)))
    clock.advance(1)
    partial = only(pay(api, created["InvoiceID"], 100.0), "Payments")
    after = xero.invoice(created["InvoiceID"])
    assert (after["AmountPaid"], after["AmountDue"], after["Status"]) == (
        Decimal("100.0"),
        Decimal("150.0"),
        "AUTHORISED",
    )
    assert after["UpdatedDateUTC"] != created["UpdatedDateUTC"]  # a payment updates the invoice
    assert messages(pay(api, created["InvoiceID"], 151.0)) == [MESSAGES["payment_exceeds"]]
    rest = only(pay(api, created["InvoiceID"], 150.0, Reference="ch_2"), "Payments")
    settled = xero.invoice(created["InvoiceID"])
    assert settled["Status"] == "PAID"
    assert settled["FullyPaidOnDate"] == ms_date(date(2026, 3, 5))
    found = api.get("/Payments", {"where": 'Reference=="ch_2"'}).json()["Payments"]
    assert [p["PaymentID"] for p in found] == [rest["PaymentID"]]
    deleted = only(
        api.send("POST", f"/Payments/{partial['PaymentID']}", {"Status": "DELETED"}), "Payments"
    )
    assert deleted["Status"] == "DELETED"
    reopened = xero.invoice(created["InvoiceID"])
    assert (reopened["Status"], reopened["AmountDue"]) == ("AUTHORISED", Decimal("100.0"))
    assert xero.violations() == []


def test_payments_need_an_approved_invoice_and_a_paying_account(api: Api, contact: str) -> None:
    draft = only(api.create(invoice(contact, Status="DRAFT")))
    assert messages(pay(api, draft["InvoiceID"], 1.0)) == [MESSAGES["payment_not_authorised"]]
    open_invoice = only(api.create(invoice(contact, Reference="two")))
    refused = pay(api, open_invoice["InvoiceID"], 1.0, Account={"Code": "200"})
    assert messages(refused) == [MESSAGES["payment_account"].format(code="200")]
    assert pay(api, open_invoice["InvoiceID"], 1.0, Account={"Code": "090"}).status_code == 200


def test_email_sends_approved_sales_invoices_only(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    created = only(api.create(invoice(contact)))
    sent = api.send("POST", f"/Invoices/{created['InvoiceID']}/Email", {})
    assert sent.status_code == 204
    assert xero.emails(created["InvoiceID"]) == 1
    assert xero.invoice(created["InvoiceID"])["SentToContact"] is True
    draft = only(api.create(invoice(contact, Reference="d", Status="DRAFT")))
    assert messages(api.send("POST", f"/Invoices/{draft['InvoiceID']}/Email", {})) == [
        MESSAGES["email_status"]
    ]
    silent = xero.add_contact("No Mail Ltd")
    mute = only(api.create(invoice(silent, Reference="m")))
    assert messages(api.send("POST", f"/Invoices/{mute['InvoiceID']}/Email", {})) == [
        MESSAGES["email_no_address"]
    ]
    xero.daily_email_limit = 1
    limited = api.send("POST", f"/Invoices/{created['InvoiceID']}/Email", {})
    assert messages(limited) == [MESSAGES["email_limit"]]
    assert xero.violations() == []


# --------------------------------------------------------------------------- idempotency


def test_an_idempotency_key_replays_the_first_answer(
    api: Api, xero: XeroEmulator, contact: str, clock: EmulatedTime
) -> None:
    first = api.create(invoice(contact), **{})
    keyed = api.send(
        "PUT",
        "/Invoices",
        {"Invoices": [invoice(contact, Reference="k")]},
        None,
        **{"Idempotency-Key": "key-1"},
    )
    replay = api.send(
        "PUT",
        "/Invoices",
        {"Invoices": [invoice(contact, Reference="k")]},
        None,
        **{"Idempotency-Key": "key-1"},
    )
    assert first.status_code == keyed.status_code == replay.status_code == 200
    assert replay.json() == keyed.json()
    assert len(xero.invoices()) == 2
    other = api.send(
        "PUT",
        "/Invoices",
        {"Invoices": [invoice(contact, Reference="other")]},
        None,
        **{"Idempotency-Key": "key-1"},
    )
    assert other.status_code == 400
    assert messages(other) == [MESSAGES["idempotency_mismatch"].format(key="key-1")]
    clock.advance(timedelta(minutes=7))  # keys are kept about 6 minutes
    fresh = api.send(
        "PUT",
        "/Invoices",
        {"Invoices": [invoice(contact, Reference="other")]},
        None,
        **{"Idempotency-Key": "key-1"},
    )
    assert fresh.status_code == 200
    assert len(xero.invoices()) == 3


def test_errors_are_replayed_too_and_keys_are_per_tenant(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    body = invoice(contact, CurrencyCode="EUR")
    refused = api.send("PUT", "/Invoices", {"Invoices": [body]}, None, **{"Idempotency-Key": "k"})
    assert refused.status_code == 400
    xero.enable_currency("EUR")
    cached = api.send("PUT", "/Invoices", {"Invoices": [body]}, None, **{"Idempotency-Key": "k"})
    assert (cached.status_code, cached.json()) == (400, refused.json())
    second = xero.add_organisation("Second Co")
    token = str(xero.connect([second])["access_token"])
    other = Api(xero, token, second)
    theirs = xero.add_contact("Theirs", tenant=second)
    mine = other.send(
        "PUT", "/Invoices", {"Invoices": [invoice(theirs)]}, None, **{"Idempotency-Key": "k"}
    )
    assert mine.status_code == 200


# --------------------------------------------------------------------------- rate limits


def test_rate_limits_count_per_tenant_and_answer_429(
    xero: XeroEmulator, api: Api, clock: EmulatedTime
) -> None:
    xero.set_rate_limits(True)
    for left in range(59, -1, -1):
        response = api.get("/Organisation")
        assert response.status_code == 200
        assert response.headers["X-MinLimit-Remaining"] == str(left)
    assert response.headers["X-DayLimit-Remaining"] == "4940"
    assert response.headers["X-AppMinLimit-Remaining"] == "9940"
    limited = api.get("/Organisation")
    assert limited.status_code == 429
    assert limited.headers["X-Rate-Limit-Problem"] == "minute"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    clock.advance(61)
    assert api.get("/Organisation").status_code == 200


def test_the_day_limit_and_the_app_limit(clock: EmulatedTime) -> None:
    with XeroEmulator(time=clock, rate_limits=True, limits={"day": 3, "app_minute": 5}) as xero:
        second = xero.add_organisation("Second")
        token = str(xero.connect()["access_token"])
        one, two = Api(xero, token, xero.tenants[0]), Api(xero, token, second)
        for _ in range(3):
            assert one.get("/Organisation").status_code == 200
        day = one.get("/Organisation")
        assert (day.status_code, day.headers["X-Rate-Limit-Problem"]) == (429, "day")
        assert int(day.headers["Retry-After"]) > 3600
        assert two.get("/Organisation").status_code == 200
        assert two.get("/Organisation").status_code == 200
        app = two.get("/Organisation")
        assert (app.status_code, app.headers["X-Rate-Limit-Problem"]) == (429, "appminute")


def test_more_than_five_concurrent_calls_are_refused(clock: EmulatedTime) -> None:
    with XeroEmulator(time=clock, rate_limits=True, latency=0.3) as xero:
        api = Api(xero, str(xero.connect()["access_token"]), xero.tenants[0])
        results: list[requests.Response] = []
        lock = threading.Lock()
        barrier = threading.Barrier(7)

        def call() -> None:
            barrier.wait()
            response = api.get("/Organisation")
            with lock:
                results.append(response)

        threads = [threading.Thread(target=call) for _ in range(7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        limited = [r for r in results if r.status_code == 429]
        assert len(limited) == 2
        assert {r.headers["X-Rate-Limit-Problem"] for r in limited} == {"concurrent"}
        assert sum(r.status_code == 200 for r in results) == 5


def test_rate_limits_are_off_unless_switched_on(api: Api) -> None:
    for _ in range(65):
        response = api.get("/Currencies")
    assert response.status_code == 200
    assert response.headers["X-MinLimit-Remaining"] == "0"


# --------------------------------------------------------------------------- faults


def test_fail_next_answers_the_status_before_anything_happens(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    xero.fail_next(3, 500)
    xero.fail_next(1, 429)
    assert api.create(invoice(contact)).status_code == 500
    assert api.get("/Organisation").status_code == 500
    assert api.get("/Organisation").status_code == 500
    limited = api.get("/Organisation")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert api.get("/Organisation").status_code == 200
    xero.fail_next(1, 503)
    assert api.get("/Organisation").status_code == 503
    assert xero.invoices() == []


def test_a_dropped_write_is_committed_and_its_key_replays(
    api: Api, xero: XeroEmulator, contact: str
) -> None:
    xero.drop_next_writes(1)
    with pytest.raises(requests.ConnectionError):
        api.send(
            "PUT", "/Invoices", {"Invoices": [invoice(contact)]}, None, **{"Idempotency-Key": "d"}
        )
    assert len(xero.invoices()) == 1
    replay = api.send(
        "PUT", "/Invoices", {"Invoices": [invoice(contact)]}, None, **{"Idempotency-Key": "d"}
    )
    assert only(replay)["InvoiceID"] == xero.invoices()[0]["InvoiceID"]
    assert api.get("/Invoices").status_code == 200  # reads are never dropped
    xero.drop_every_write(True)
    for n in range(3):
        with pytest.raises(requests.ConnectionError):
            api.create(invoice(contact, Reference=f"crash-{n}"))
    xero.drop_every_write(False)
    assert len(xero.invoices()) == 4
    assert xero.violations() == []
