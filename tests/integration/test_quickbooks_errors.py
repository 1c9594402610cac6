"""Error paths of the QuickBooks adapter that the emulator does not produce on its own, with
`responses` in front of python-quickbooks (it is requests-based): XML and HTML bodies, a Fault
Error without a code, timeouts and resets, 401/403 bodies, and the error table itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from adapters.emulation.clock import EmulatedTime
from adapters.quickbooks.adapter import QuickBooksLedger, QuickBooksOptions
from adapters.quickbooks.client import resolve_api_url
from adapters.quickbooks.errors import QBOError, Subject, parse_error_body, translate
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
    TransientError,
)
from connector.domain.ids import IdempotencyKey, LedgerCustomerId
from connector.domain.money import Money
from connector.ports import BatchItem, InvoiceDraft, InvoiceLine, OAuthToken

API = "https://qbo.test/v3"
REALM = "4620816365"
BASE = f"{API}/company/{REALM}"
START = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)
XML_THROTTLE = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<IntuitResponse time="2017-07-30T22:45:22.933-07:00" '
    'xmlns="http://schema.intuit.com/finance/v3">\n'
    '    <Fault type="SERVICE">\n'
    '        <Error code="3001">\n'
    "            <Message>message=ThrottleExceeded; errorCode=003001; statusCode=429</Message>\n"
    "            <Detail>The request limit was reached.  Try again later</Detail>\n"
    "        </Error>\n"
    "    </Fault>\n"
    "</IntuitResponse>"
)


class InstantTime(EmulatedTime):
    def __init__(self) -> None:
        super().__init__(start=START)
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


class StaticTokens:
    """`AccessTokens` handing out numbered tokens; `refresh` issues the next one."""

    connection = "quickbooks"

    def __init__(self, realm: str | None = REALM) -> None:
        self.realm = realm
        self.refreshes = 0
        self._token = self._make()

    def _make(self) -> OAuthToken:
        return OAuthToken(
            access_token=f"at-{self.refreshes}",
            refresh_token=f"rt-{self.refreshes}",
            expires_at=START + timedelta(days=365),
            realm=self.realm,
        )

    def current(self) -> OAuthToken:
        return self._token

    def refresh(self, rejected: OAuthToken) -> OAuthToken:
        self.refreshes += 1
        self._token = self._make()
        return self._token


def fault(code: str | None, message: str, detail: str = "", element: str = "") -> dict[str, Any]:
    error: dict[str, Any] = {"Message": message, "Detail": detail, "element": element}
    if code is not None:
        error["code"] = code
    return {"Fault": {"Error": [error], "type": "ValidationFault"}, "time": "2026-03-10"}


def invoice_json(invoice_id: str = "130", total: str = "250.00") -> dict[str, Any]:
    return {
        "Invoice": {
            "Id": invoice_id,
            "SyncToken": "0",
            "DocNumber": "1001",
            "TxnDate": "2026-03-10",
            "CustomerRef": {"value": "58", "name": "Acme"},
            "CurrencyRef": {"value": "USD", "name": "United States Dollar"},
            "TotalAmt": float(total),
            "Balance": float(total),
            "PrivateNote": "[milestone-sync] ref-1",
            "EmailStatus": "NotSet",
            "Line": [],
        },
        "time": "2026-03-10T10:00:00.000-08:00",
    }


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(
            f"{BASE}/preferences",
            json={
                "Preferences": {
                    "Id": "1",
                    "CurrencyPrefs": {
                        "MultiCurrencyEnabled": False,
                        "HomeCurrency": {"value": "USD"},
                    },
                },
                "time": "2026-03-10T10:00:00-08:00",
            },
        )
        rsps.get(
            f"{BASE}/companyinfo/{REALM}",
            json={"CompanyInfo": {"Id": REALM, "Country": "US"}, "time": "2026-03-10"},
        )
        yield rsps


def ledger(
    time: EmulatedTime | None = None, tokens: StaticTokens | None = None, **options: Any
) -> QuickBooksLedger:
    return QuickBooksLedger(
        tokens or StaticTokens(),
        QuickBooksOptions(currency="USD", **options),
        api_url=API,
        time=time or InstantTime(),
    )


def draft(reference: str = "ref-1") -> InvoiceDraft:
    return InvoiceDraft(
        customer_id=LedgerCustomerId("58"),
        reference=reference,
        lines=[InvoiceLine("Q1 bookkeeping", Money("250.00", "USD"), tax_code="NON")],
        issue_date=date(2026, 3, 10),
    )


def posts(rsps: responses.RequestsMock, path: str) -> list[responses.Call]:
    return [c for c in rsps.calls if c.request.method == "POST" and path in c.request.url]


def requestid(call: responses.Call) -> str | None:
    values = parse_qs(urlsplit(call.request.url).query).get("requestid")
    return values[0] if values else None


KEY = IdempotencyKey("create_invoice:smith:ms-1:0")


def test_an_xml_throttle_body_waits_and_retries_with_the_same_requestid(
    mocked: responses.RequestsMock,
):
    mocked.post(f"{BASE}/invoice", body=XML_THROTTLE, status=429, content_type="application/xml")
    mocked.post(f"{BASE}/invoice", json=invoice_json())
    time = InstantTime()
    created = ledger(time, throttle_wait=45.0).create_invoice(draft(), KEY)
    assert created.id == "130"
    assert time.slept == [45.0]
    calls = posts(mocked, "/invoice")
    assert len(calls) == 2
    assert requestid(calls[0]) == requestid(calls[1]) == KEY


def test_a_json_throttle_fault_is_retried_too(mocked: responses.RequestsMock):
    body = fault("3001", "message=ThrottleExceeded; errorCode=003001; statusCode=429")
    mocked.post(f"{BASE}/invoice", json=body, status=429)
    mocked.post(f"{BASE}/invoice", json=invoice_json())
    time = InstantTime()
    assert ledger(time).create_invoice(draft(), KEY).id == "130"
    assert time.slept == [60.0]


def test_an_error_without_a_code_does_not_crash_the_sdk_path(mocked: responses.RequestsMock):
    mocked.post(f"{BASE}/invoice", json=fault(None, "Something odd", "no code given"), status=400)
    with pytest.raises(RejectedError) as refused:
        ledger().create_invoice(draft(), KEY)
    assert "Something odd" in str(refused.value)


def test_a_non_json_gateway_page_is_a_server_error_and_retried(mocked: responses.RequestsMock):
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    mocked.post(f"{BASE}/invoice", body=page, status=502, content_type="text/html")
    mocked.post(f"{BASE}/invoice", json=invoice_json())
    time = InstantTime()
    assert ledger(time).create_invoice(draft(), KEY).id == "130"
    assert len(time.slept) == 1


def test_timeouts_on_a_write_end_as_an_unknown_outcome_with_one_requestid(
    mocked: responses.RequestsMock,
):
    mocked.post(f"{BASE}/invoice", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(TransientError) as lost:
        ledger(max_attempts=3).create_invoice(draft(), KEY)
    assert lost.value.outcome_unknown
    calls = posts(mocked, "/invoice")
    assert len(calls) == 3
    assert {requestid(c) for c in calls} == {KEY}


def test_a_reset_on_a_read_is_transient_and_known(mocked: responses.RequestsMock):
    mocked.post(f"{BASE}/query", body=requests.ConnectionError("connection reset"))
    with pytest.raises(TransientError) as failed:
        ledger(max_attempts=2).find_invoice(draft())
    assert not failed.value.outcome_unknown


def test_a_batch_server_error_is_not_resent(mocked: responses.RequestsMock):
    mocked.post(f"{BASE}/batch", json=fault("10000", "An application error"), status=500)
    with pytest.raises(TransientError) as failed:
        ledger().create_invoices([BatchItem(draft(), KEY)])
    assert failed.value.outcome_unknown
    assert len(posts(mocked, "/batch")) == 1


def test_forbidden_with_the_lowercase_fault_body_asks_to_reconnect(
    mocked: responses.RequestsMock,
):
    body = {
        "warnings": None,
        "fault": {
            "error": [
                {
                    "message": "message=AuthorizationFailed; errorCode=003100; statusCode=403",
                    "detail": None,
                    "code": "3100",
                }
            ],
            "type": "SERVICE",
        },
    }
    mocked.post(f"{BASE}/invoice", json=body, status=403)
    with pytest.raises(ConfigError) as forbidden:
        ledger().create_invoice(draft(), KEY)
    assert "milestone-sync connect quickbooks" in str(forbidden.value)


def test_a_401_after_the_refresh_is_a_config_error(mocked: responses.RequestsMock):
    body = {"fault": {"error": [{"message": "AuthenticationFailed", "code": "3200"}]}}
    mocked.post(f"{BASE}/invoice", json=body, status=401)
    tokens = StaticTokens()
    with pytest.raises(ConfigError) as refused:
        ledger(tokens=tokens).create_invoice(draft(), KEY)
    assert tokens.refreshes == 1
    assert "even after a refresh" in str(refused.value)
    calls = posts(mocked, "/invoice")
    assert [c.request.headers["Authorization"] for c in calls] == [
        "Bearer at-0",
        "Bearer at-1",
    ]
    assert "at-1" not in str(refused.value)


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        ("6190", ConfigError, "subscription"),
        ("5010", TransientError, "changed the object"),
        ("6999", RejectedError, "6999"),
        ("2010", RejectedError, "milestone-sync bug"),
    ],
)
def test_fault_codes_map_to_what_the_caller_does(
    mocked: responses.RequestsMock, code: str, kind: type[Exception], words: str
):
    mocked.post(f"{BASE}/invoice", json=fault(code, "Something", "about it"), status=400)
    with pytest.raises(kind) as caught:
        ledger(max_attempts=1).create_invoice(draft(), KEY)
    assert words in str(caught.value)


def test_a_fault_inside_a_200_is_still_a_fault(mocked: responses.RequestsMock):
    mocked.post(
        f"{BASE}/invoice",
        json=fault("6210", "Account Period Closed", "The account period has closed"),
        status=200,
    )
    with pytest.raises(RejectedError) as closed:
        ledger().create_invoice(draft(), KEY)
    assert closed.value.code == "period_closed"


def test_qbos_elementless_inactive_fault_names_what_to_check(mocked: responses.RequestsMock):
    detail = (
        "Object Not Found : Something you're trying to use has been made inactive. Check the "
        "fields with accounts, customers, items, vendors or employees."
    )
    mocked.post(f"{BASE}/invoice", json=fault("610", "Object Not Found", detail), status=400)
    with pytest.raises(RejectedError) as inactive:
        ledger().create_invoice(draft(), KEY)
    assert inactive.value.code == "inactive_reference"
    assert "customer 58" in str(inactive.value)


def test_a_query_the_adapter_got_wrong_stops(mocked: responses.RequestsMock):
    body = fault("4000", "Error parsing query", 'QueryParserError: Encountered " <EOF> "')
    mocked.post(f"{BASE}/query", json=body, status=400)
    with pytest.raises(InvariantViolation):
        ledger().find_invoice(draft())


def test_no_realm_anywhere_is_a_config_error(mocked: responses.RequestsMock):
    with pytest.raises(ConfigError) as missing:
        ledger(tokens=StaticTokens(realm=None)).get_invoice("1")  # type: ignore[arg-type]
    assert "realm_id" in str(missing.value)


def test_the_api_address_must_be_https_unless_it_is_this_machine():
    assert resolve_api_url(None, "sandbox") == "https://sandbox-quickbooks.api.intuit.com/v3"
    assert resolve_api_url(None, "production") == "https://quickbooks.api.intuit.com/v3"
    assert resolve_api_url("http://127.0.0.1:8080/v3/", "production") == "http://127.0.0.1:8080/v3"
    with pytest.raises(ConfigError):
        resolve_api_url("http://qbo.example.com/v3", "production")
    with pytest.raises(ConfigError):
        resolve_api_url(None, "staging")


def test_error_bodies_of_every_shape_are_read():
    xml = parse_error_body(429, XML_THROTTLE, "tid-1")
    assert (xml.code, xml.message.startswith("message=ThrottleExceeded")) == ("3001", True)
    lower = parse_error_body(
        401, json.dumps({"fault": {"error": [{"message": "m", "detail": "d", "code": "3200"}]}})
    )
    assert (lower.code, lower.message, lower.detail) == ("3200", "m", "d")
    html = parse_error_body(503, "<html><body><h1>Service Unavailable</h1></body></html>")
    assert (html.code, html.message) == (None, "Service Unavailable")
    empty = parse_error_body(500, "")
    assert empty.message == "no body"
    assert "tid-1" in xml.describe()


def test_the_table_names_the_configured_values():
    subject = Subject(
        "create invoice for ms-1",
        customer="58",
        items={"7": "Bookkeeping"},
        tax_codes={"TAX": "tax"},
        txn_date=date(2026, 2, 1),
        doc_number="MS-9",
        currency="EUR",
    )
    cases = {
        QBOError(400, "2500", "Invalid Reference Id", element="CustomerRef"): "customer 58",
        QBOError(400, "610", "Object Not Found", element="CustomerRef"): "inactive",
        QBOError(
            400, "610", "Object Not Found", element="Line.SalesItemLineDetail.ItemRef"
        ): "'Bookkeeping' is inactive",
        QBOError(400, "6100", "Invalid Line TaxCode"): "tax code 'tax'",
        QBOError(400, "6210", "Account Period Closed"): "2026-02-01",
        QBOError(400, "6140", "Duplicate Document Number Error"): "MS-9",
        QBOError(400, "6000", "Business", "bad", "CurrencyRef"): "currency EUR",
    }
    for error, words in cases.items():
        translated = translate(error, subject)
        assert isinstance(translated, RejectedError), error
        assert words in str(translated), (error, str(translated))
