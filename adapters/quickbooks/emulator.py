"""A stateful QuickBooks Online (Accounting API v3) on loopback for tests and the sandbox: OAuth,
name lists, invoices, payments, the money trail (transfers, expenses, deposits, refund receipts,
journal entries) with double-entry account balances, query, CDC, batch, email, the trial balance
report, requestid replay, throttles, faults and a webhook emitter (CloudEvents or legacy)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import parse_qs

import requests
from werkzeug.wrappers import Request, Response

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.emulation.oauth import OAuthPolicy, OAuthServer
from adapters.emulation.server import (
    EmulatorServer,
    RecordedRequest,
    RequestLog,
    ServedEmulator,
    drop_connection,
)
from adapters.emulation.xsd import QuickBooksSchema, quickbooks_schema

__all__ = ["QBO_OAUTH_POLICY", "VENDOR_FACTS", "QuickBooksEmulator", "WebhookDelivery"]

# Where each behaviour comes from ([REF ...] = ../shared/reference/ledger-and-payment-apis.md,
# [V:...] = these vendor facts, checked with the search tool). Bodies are checked against the
# XSDs (adapters/emulation/xsd.py) when the shared specs are found.
VENDOR_FACTS = {
    "requestid": "blogs.intuit.com 2015/04/06 'Request ID update': same requestid -> the "
    "original response, no state change; <= 50 chars (36 in batch) [REF A4]",
    "401": "python-quickbooks #250: lowercase fault body, 'message=AuthenticationFailed; "
    "errorCode=003200; statusCode=401', type AUTHENTICATION",
    "403": "intuit/oauth-jsclient #2: 'message=AuthorizationFailed; errorCode=003100; "
    "statusCode=403', type SERVICE",
    "3001": "python-quickbooks #83/#43, ruckus/quickbooks-ruby #348: XML IntuitResponse Fault "
    "type SERVICE code 3001 'message=ThrottleExceeded; errorCode=003001; statusCode=429'",
    "limits": "developer.intuit.com limits-and-throttles: 500 req/min per realm, 10 concurrent, "
    "40 batch/min; no Retry-After [REF A6]",
    "2500": "intuit/QuickBooks-V3-PHP-SDK #102/#110: 'Invalid Reference Id', element "
    "Line.SalesItemLineDetail.ItemRef",
    "610": "developer.intuit.com handling-common-errors: 610 Object Not Found for references to "
    "inactive name-list objects (Customer.Active false)",
    "6140": "Intuit common errors list + Clio/Chargebee KB: 'Duplicate Document Number Error : "
    "You must specify a different number. This number has already been used. DocNumber=X is "
    "assigned to TxnType=Invoice with TxnId=Y'; include=allowduplicatedocnum overrides",
    "6210": "Intuit common errors list: 6210 Account Period Closed, 'The account period has "
    "closed and the account books cannot be updated through through the QBO Services API'",
    "5010": "Intuit common errors list: 5010 Stale Object Error",
    "6100": "IPP error codes: 'Invalid Line TaxCode in the request: Valid Line TaxCodes for US "
    "should be TAX or NON'",
    "2050": "curbwaste KB: 'String length specified does not match the supported length'; "
    "DocNumber 21, PrivateNote 4000 (zed-systems), PaymentRefNum 21 (intuit MCP #75)",
    "4000/4001": "QueryParserError 'Error parsing query' 4000 (node-quickbooks #56); "
    "'QueryValidationError: property 'X' is not queryable' 4001 (quickbooks-ruby #403); "
    "PrivateNote is not queryable (public code quoting live 4001)",
    "cdc": "blogs.intuit.com 2023/08/24: changes of the last 30 days, <= 1000 objects; "
    "QuickBooksSharp #19 'Operation cdc with changedSince date ... older than fixed days'",
    "void": "intuit/QuickBooks-V3-PHP-SDK #167 and Intuit's void advice: a voided invoice keeps "
    "its lines with amounts 0, TotalAmt and Balance 0 and PrivateNote 'Voided'",
    "send": "Intuit send docs (via withone.ai copy): EmailStatus -> EmailSent, DeliveryInfo set, "
    "sendTo replaces BillEmail.Address",
    "active": "airbyte source-quickbooks: name lists are filtered 'Active IN (true, false)' to "
    "see inactive records (queries return active ones only by default)",
    "transfer": "Intuit Transfer reference (via caribooks/glama copy): FromAccountRef, "
    "ToAccountRef and Amount required, the two accounts must differ; balance-sheet accounts "
    "only [INF]. The XSD declares TransferEx without minOccurs=0, a defect: no Intuit example "
    "sends it, so that one violation is not reported",
    "purchase": "python-quickbooks Purchase docstring (Intuit's definition): PaymentType Cash, "
    "Check or CreditCard, AccountRef required, TotalAmt is the sum of the lines",
    "deposit": "Intuit Deposit definition (python-quickbooks docstring): a direct deposit is "
    "Line.DepositLineDetail with the AccountRef the money comes from; deposits of Undeposited "
    "Funds payments (LinkedTxn lines) are not modelled",
    "refundreceipt": "Intuit RefundReceipt reference (withone.ai copy): DepositToAccountRef and a "
    "line required; DepositToAccountRef is 'an Account where Account.AccountType is Other Current "
    "Asset or Bank'",
    "journalentry": "zed-systems KB (QBO import): 'when posting to the Account Receivable account "
    "you must have a Customer'; debits must equal credits",
    "balances": "XSD Account.CurrentBalance: 'Valid for Balance Sheet accounts': P&L accounts "
    "answer 0 here (their totals come from the TrialBalance report); assets and expenses grow "
    "with debits, liabilities, equity and income with credits; Customer.Balance is the open A/R",
    "webhooks": "blogs.intuit.com 2025/11/12 'Upcoming change to webhooks payload structure': "
    "legacy eventNotifications/dataChangeEvent/entities{id,operation,name,lastUpdated}; "
    "CloudEvents array {specversion 1.0, id, source 'intuit.<opaque>', type "
    "'qbo.account.created.v1', datacontenttype application/json, time, intuitentityid, "
    "intuitaccountid = realm, data {}}; 'voided' as the verb of Void is what third-party "
    "receivers parse (not in Intuit's sample) [INF]; intuit-signature = base64 HMAC-SHA256 "
    "[REF A6]; delivery at least once",
}

QBO_SCOPE = "com.intuit.quickbooks.accounting"
QBO_OAUTH_POLICY = OAuthPolicy(
    access_ttl=timedelta(hours=1),
    refresh_ttl=timedelta(days=100),
    rotation_grace=timedelta(0),  # a used refresh token is refused at once (stricter than Intuit)
    client_auth="basic",
    scopes=(QBO_SCOPE,),
    refresh_expires_field="x_refresh_token_expires_in",
)

MINOR_VERSION = 75
MAX_QUERY_RESULTS = 1000
DEFAULT_QUERY_RESULTS = 100
MAX_BATCH_ITEMS = 30
CDC_LOOKBACK = timedelta(days=30)
CDC_MAX_OBJECTS = 1000
LENGTH_LIMITS = {"DocNumber": 21, "PrivateNote": 4000, "PaymentRefNum": 21}
BALANCE_SHEET = frozenset({"Asset", "Liability", "Equity"})
DEBIT_NORMAL = frozenset({"Asset", "Expense"})  # the others grow with credits
ACCOUNT_CLASSES = {
    "Bank": "Asset",
    "Other Current Asset": "Asset",
    "Accounts Receivable": "Asset",
    "Fixed Asset": "Asset",
    "Other Asset": "Asset",
    "Credit Card": "Liability",
    "Accounts Payable": "Liability",
    "Other Current Liability": "Liability",
    "Long Term Liability": "Liability",
    "Equity": "Equity",
    "Income": "Revenue",
    "Other Income": "Revenue",
    "Expense": "Expense",
    "Other Expense": "Expense",
    "Cost of Goods Sold": "Expense",
}
RECEIVING_TYPES = frozenset({"Bank", "Other Current Asset"})

CURRENCY_NAMES = {
    "USD": "United States Dollar",
    "EUR": "Euro",
    "GBP": "British Pound Sterling",
    "CAD": "Canadian Dollar",
    "AUD": "Australian Dollar",
    "JPY": "Japanese Yen",
    "CHF": "Swiss Franc",
}

# URL segment -> entity name, for the entities this emulator models
ENTITIES = {
    "customer": "Customer",
    "item": "Item",
    "taxcode": "TaxCode",
    "term": "Term",
    "account": "Account",
    "class": "Class",
    "department": "Department",
    "companycurrency": "CompanyCurrency",
    "vendor": "Vendor",
    "invoice": "Invoice",
    "payment": "Payment",
    "transfer": "Transfer",
    "purchase": "Purchase",
    "deposit": "Deposit",
    "refundreceipt": "RefundReceipt",
    "journalentry": "JournalEntry",
    "preferences": "Preferences",
    "companyinfo": "CompanyInfo",
}
NAME_LISTS = frozenset(
    {"Customer", "Vendor", "Item", "TaxCode", "Term", "Account", "Class", "Department"}
    | {"CompanyCurrency"}
)
MONEY_TRAIL = frozenset({"Transfer", "Purchase", "Deposit", "RefundReceipt", "JournalEntry"})
WRITABLE = frozenset(
    {"Customer", "Vendor", "Item", "Term", "Account", "Class", "Department", "CompanyCurrency"}
    | {"Invoice", "Payment"}
    | MONEY_TRAIL
)
TRANSACTIONS = frozenset({"Invoice", "Payment"}) | MONEY_TRAIL
WEBHOOK_ENTITIES = ("Invoice", "Payment")
WEBHOOK_VERBS = {
    "Create": "created",
    "Update": "updated",
    "Delete": "deleted",
    "Void": "voided",
    "Emailed": "emailed",
}
SELLABLE_ITEM_TYPES = frozenset({"Service", "NonInventory", "Inventory"})

# Fields each entity lets a query filter (and sort) on, with their kind. Anything else that
# the entity has is "not queryable" (4001); PrivateNote above all [V:4000/4001].
_MD = {"MetaData.CreateTime": "datetime", "MetaData.LastUpdatedTime": "datetime"}
QUERYABLE: dict[str, dict[str, str]] = {
    "Invoice": {
        "Id": "id",
        "DocNumber": "string",
        "TxnDate": "date",
        "DueDate": "date",
        "CustomerRef": "ref",
        "TotalAmt": "decimal",
        "Balance": "decimal",
        **_MD,
    },
    "Payment": {"Id": "id", "TxnDate": "date", "CustomerRef": "ref", "TotalAmt": "decimal", **_MD},
    "Transfer": {"Id": "id", "TxnDate": "date", **_MD},
    "Purchase": {
        "Id": "id",
        "DocNumber": "string",
        "TxnDate": "date",
        "PaymentType": "string",
        "TotalAmt": "decimal",
        **_MD,
    },
    "Deposit": {"Id": "id", "TxnDate": "date", "TotalAmt": "decimal", **_MD},
    "RefundReceipt": {
        "Id": "id",
        "DocNumber": "string",
        "TxnDate": "date",
        "CustomerRef": "ref",
        "TotalAmt": "decimal",
        **_MD,
    },
    "JournalEntry": {"Id": "id", "DocNumber": "string", "TxnDate": "date", **_MD},
    "Vendor": {
        "Id": "id",
        "DisplayName": "string",
        "CompanyName": "string",
        "Active": "bool",
        "Balance": "decimal",
        **_MD,
    },
    "Customer": {
        "Id": "id",
        "DisplayName": "string",
        "GivenName": "string",
        "FamilyName": "string",
        "CompanyName": "string",
        "FullyQualifiedName": "string",
        "Active": "bool",
        "Balance": "decimal",
        **_MD,
    },
    "Item": {
        "Id": "id",
        "Name": "string",
        "FullyQualifiedName": "string",
        "Type": "string",
        "Sku": "string",
        "Active": "bool",
        **_MD,
    },
    "Account": {
        "Id": "id",
        "Name": "string",
        "FullyQualifiedName": "string",
        "AccountType": "string",
        "Classification": "string",
        "Active": "bool",
        **_MD,
    },
    "TaxCode": {"Id": "string", "Name": "string", "Active": "bool", **_MD},
    "Term": {"Id": "id", "Name": "string", "Active": "bool", **_MD},
    "Class": {
        "Id": "id",
        "Name": "string",
        "FullyQualifiedName": "string",
        "Active": "bool",
        **_MD,
    },
    "Department": {
        "Id": "id",
        "Name": "string",
        "FullyQualifiedName": "string",
        "Active": "bool",
        **_MD,
    },
    "CompanyCurrency": {"Id": "id", "Code": "string", "Name": "string", "Active": "bool", **_MD},
    "Preferences": {"Id": "id", **_MD},
    "CompanyInfo": {"Id": "id", "CompanyName": "string", **_MD},
}
_OPERATORS_BY_KIND = {
    "string": {"=", "<", ">", "<=", ">=", "IN", "LIKE"},
    "ref": {"=", "IN", "LIKE"},
    "bool": {"=", "IN"},
    "decimal": {"=", "<", ">", "<=", ">=", "IN"},
    "id": {"=", "<", ">", "<=", ">=", "IN"},
    "date": {"=", "<", ">", "<=", ">=", "IN"},
    "datetime": {"=", "<", ">", "<=", ">=", "IN"},
}

_XML_THROTTLE = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<IntuitResponse time="{time}" xmlns="http://schema.intuit.com/finance/v3">\n'
    '    <Fault type="SERVICE">\n'
    '        <Error code="3001">\n'
    "            <Message>message=ThrottleExceeded; errorCode=003001; statusCode=429</Message>\n"
    "            <Detail>The request limit was reached.  Try again later</Detail>\n"
    "        </Error>\n"
    "    </Fault>\n"
    "</IntuitResponse>"
)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _company_zone() -> tzinfo:
    """QBO answers in the company's time zone (sandbox companies: US Pacific)."""
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo("America/Los_Angeles")
    except Exception:  # no tz database: a fixed Pacific standard offset is close enough
        from datetime import timezone

        return timezone(timedelta(hours=-8))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # QBO sends amounts as JSON numbers (250.0)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, default=_json_default),
        status=status,
        headers={"intuit_tid": str(uuid.uuid4()), **dict(headers or {})},
        content_type="application/json;charset=UTF-8",
    )


@dataclass
class QBOFault(Exception):
    """One QBO error; answered as `{"Fault": {"Error": [...], "type": ...}}`."""

    code: str
    message: str
    detail: str = ""
    element: str = ""
    status: int = 400
    fault_type: str = "ValidationFault"

    def __post_init__(self) -> None:
        super().__init__(f"{self.code} {self.message}")

    def error(self) -> dict[str, Any]:
        return {
            "Message": self.message,
            "Detail": self.detail or f"{self.message} : {self.element}".rstrip(" :"),
            "code": self.code,
            "element": self.element,
        }

    def body(self) -> dict[str, Any]:
        return {"Fault": {"Error": [self.error()], "type": self.fault_type}}


def _invalid_reference(element: str) -> QBOFault:
    return QBOFault("2500", "Invalid Reference Id", f"Invalid Reference Id : {element}", element)


def _inactive(element: str) -> QBOFault:
    return QBOFault(
        "610",
        "Object Not Found",
        "Object Not Found : Something you're trying to use has been made inactive. Check the "
        "fields with accounts, customers, items, vendors or employees.",
        element,
    )


def _required(element: str) -> QBOFault:
    return QBOFault(
        "2020",
        "Required param missing, need to supply the required value for the API",
        f"Required parameter {element} is missing in the request",
        element,
    )


def _business(detail: str, element: str = "") -> QBOFault:
    return QBOFault(
        "6000",
        "A business validation error has occurred while processing your request",
        f"Business Validation Error: {detail}",
        element,
    )


def _not_found(entity: str, object_id: str) -> QBOFault:
    return QBOFault(
        "610",
        "Object Not Found",
        f"Object Not Found : Something you're trying to use has been made inactive. Check the "
        f"fields with accounts, customers, items, vendors or employees. ({entity} {object_id})",
    )


def _unsupported(detail: str) -> QBOFault:
    return QBOFault("500", "Unsupported Operation", f"Operation {detail} is not supported.")


def _decimal(value: Any, element: str) -> Decimal | None:
    """Numbers and numeric strings are both accepted; "" and null mean absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise QBOFault("2010", "Request has invalid or unsupported property", element, element)
    try:
        result = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise QBOFault(
            "2010",
            "Request has invalid or unsupported property",
            f"Property Name:{element} specified is unsupported or invalid",
            element,
        ) from exc
    if not result.is_finite():
        raise QBOFault("2010", "Request has invalid or unsupported property", element, element)
    return result


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _ref_value(body: Mapping[str, Any], key: str) -> str | None:
    ref = body.get(key)
    if isinstance(ref, Mapping):
        return _text(ref.get("value"))
    return _text(ref)


def _parse_date(value: Any, element: str) -> date | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError as exc:
        raise QBOFault(
            "2010",
            "Request has invalid or unsupported property",
            f"Property Name:{element} specified is unsupported or invalid",
            element,
        ) from exc


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _length(body: Mapping[str, Any], name: str) -> None:
    value = _text(body.get(name))
    limit = LENGTH_LIMITS[name]
    if value is not None and len(value) > limit:
        raise QBOFault(
            "2050",
            "String length is either shorter or longer than supported by specification",
            f"String length specified does not match the supported length. Min:0 Max:{limit} "
            f"supported. Supplied length:{len(value)}",
            name,
        )


# ---------------------------------------------------------------------------------------------
# The query language subset [REF fake, V:4000/4001]


class QueryFault(Exception):
    def __init__(self, fault: QBOFault) -> None:
        super().__init__(fault.detail)
        self.fault = fault


def _parser_error(token: _QToken) -> QueryFault:
    shown = token.text if token.kind != "end" else "<EOF>"
    return QueryFault(
        QBOFault(
            "4000",
            "Error parsing query",
            f'QueryParserError: Encountered " {token.kind.upper()} "{shown} "" at line 1, column '
            f"{token.position + 1}.",
        )
    )


def _validation_error(detail: str) -> QueryFault:
    return QueryFault(QBOFault("4001", "Invalid query", f"QueryValidationError: {detail}"))


@dataclass(frozen=True)
class _QToken:
    kind: str  # string | number | name | op | punct | star | end
    text: str
    position: int


_QTOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:\\.|[^'\\])*')
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<star>\*)
    )""",
    re.VERBOSE,
)


def _qtokens(text: str) -> list[_QToken]:
    tokens: list[_QToken] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _QTOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            start = len(text) - len(text[position:].lstrip())
            raise QueryFault(
                QBOFault(
                    "4000",
                    "Error parsing query",
                    f"QueryParserError: Invalid content. Lexical error at line 1, column "
                    f'{start + 1}.  Encountered: "{text[start]}"',
                )
            )
        tokens.append(_QToken(match.lastgroup, match.group(match.lastgroup), match.start()))
        position = match.end()
    tokens.append(_QToken("end", "", len(text)))
    return tokens


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str  # = < > <= >= IN LIKE
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    entity: str
    count: bool
    fields: tuple[str, ...] | None  # None: SELECT *
    conditions: tuple[Condition, ...]
    order: tuple[tuple[str, bool], ...]  # (field, descending)
    start: int
    max_results: int


class _QueryParser:
    def __init__(self, text: str) -> None:
        self._tokens = _qtokens(text)
        self._index = 0

    def _peek(self) -> _QToken:
        return self._tokens[self._index]

    def _next(self) -> _QToken:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token.kind == "name" and token.text.upper() == word:
            self._index += 1
            return True
        return False

    def _expect_keyword(self, word: str) -> None:
        if not self._keyword(word):
            raise _parser_error(self._peek())

    def _expect(self, kind: str, text: str | None = None) -> _QToken:
        token = self._next()
        if token.kind != kind or (text is not None and token.text != text):
            raise _parser_error(token)
        return token

    def parse(self) -> Query:
        self._expect_keyword("SELECT")
        count = False
        fields: list[str] | None = None
        if self._peek().kind == "name" and self._peek().text.upper() == "COUNT":
            self._next()
            self._expect("punct", "(")
            self._expect("star")
            self._expect("punct", ")")
            count = True
        elif self._peek().kind == "star":
            self._next()
            while self._peek().kind == "punct" and self._peek().text == ",":
                self._next()  # `SELECT *, Sku FROM Item` (what the SDK's Item.all sends)
                self._expect("name")
        else:
            fields = [self._expect("name").text]
            while self._peek().kind == "punct" and self._peek().text == ",":
                self._next()
                fields.append(self._expect("name").text)
        self._expect_keyword("FROM")
        entity = self._expect("name").text
        conditions: list[Condition] = []
        if self._keyword("WHERE"):
            conditions.append(self._condition())
            while True:
                if self._keyword("AND"):
                    conditions.append(self._condition())
                elif self._keyword("OR"):
                    raise _validation_error("OR operation is not supported")
                else:
                    break
        order: list[tuple[str, bool]] = []
        if self._keyword("ORDERBY") or (self._keyword("ORDER") and self._by()):
            order.append(self._order_item())
            while self._peek().kind == "punct" and self._peek().text == ",":
                self._next()
                order.append(self._order_item())
        start = 1
        max_results = DEFAULT_QUERY_RESULTS
        while True:
            if self._keyword("STARTPOSITION"):
                start = int(Decimal(self._expect("number").text))
            elif self._keyword("MAXRESULTS"):
                max_results = int(Decimal(self._expect("number").text))
            else:
                break
        if self._peek().kind != "end":
            raise _parser_error(self._peek())
        return Query(
            entity=entity,
            count=count,
            fields=tuple(fields) if fields is not None else None,
            conditions=tuple(conditions),
            order=tuple(order),
            start=max(1, start),
            max_results=max(0, min(max_results, MAX_QUERY_RESULTS)),  # silently capped
        )

    def _by(self) -> bool:
        self._expect_keyword("BY")
        return True

    def _order_item(self) -> tuple[str, bool]:
        name = self._expect("name").text
        descending = False
        if self._keyword("DESC"):
            descending = True
        else:
            self._keyword("ASC")
        return name, descending

    def _condition(self) -> Condition:
        name = self._expect("name").text
        if self._keyword("IN"):
            self._expect("punct", "(")
            values = [self._literal()]
            while self._peek().kind == "punct" and self._peek().text == ",":
                self._next()
                values.append(self._literal())
            self._expect("punct", ")")
            return Condition(name, "IN", tuple(values))
        if self._keyword("LIKE"):
            return Condition(name, "LIKE", (self._literal(),))
        operator = self._next()
        if operator.kind != "op":
            raise _parser_error(operator)
        if operator.text in ("!=", "<>"):
            raise _validation_error(f"operator {operator.text} is not supported")
        return Condition(name, operator.text, (self._literal(),))

    def _literal(self) -> Any:
        token = self._next()
        if token.kind == "string":
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "number":
            return token.text
        if token.kind == "name" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        raise _parser_error(token)


def parse_query(text: str) -> Query:
    if not text.strip():
        raise QueryFault(
            QBOFault(
                "4000", "Error parsing query", "QueryParserError: The query provided was empty"
            )
        )
    return _QueryParser(text).parse()


# ---------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class _Posting:
    """One line of the general ledger: a debit (> 0) or credit (< 0) to an account, with the
    customer it concerns when the account is Accounts Receivable."""

    account: str
    debit: Decimal
    on: date
    customer: str | None = None


@dataclass(frozen=True)
class _Event:
    entity: str
    object_id: str
    operation: str  # Create, Update, Delete, Void, Emailed
    moment: datetime
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # kept across retries


@dataclass
class _Webhook:
    url: str
    verifier_token: str = field(repr=False)
    payload: Literal["cloudevents", "legacy"]
    entities: frozenset[str]
    duplicates: bool
    pending: list[_Event] = field(default_factory=list)


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST the emitter made: what it sent and what the receiver answered."""

    url: str
    body: bytes
    signature: str
    status: int | None  # None: the receiver could not be reached
    error: str | None = None


@dataclass
class _Company:
    realm: str
    home_currency: str
    country: str
    entities: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    deleted: dict[str, dict[str, datetime]] = field(default_factory=dict)
    next_ids: dict[str, int] = field(default_factory=dict)
    next_doc_number: int = 1001
    replies: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)  # requestid
    emails: dict[str, list[str]] = field(default_factory=dict)
    # the general ledger: each transaction's lines, by (entity, Id), applied to the balances
    postings: dict[tuple[str, str], list[_Posting]] = field(default_factory=dict)

    def table(self, entity: str) -> dict[str, dict[str, Any]]:
        return self.entities.setdefault(entity, {})

    def new_id(self, entity: str) -> str:
        value = self.next_ids.get(entity, 1)
        self.next_ids[entity] = value + 1
        return str(value)


@dataclass
class _Outcome:
    """What one API call produced: the response, and what the emulator does after sending it."""

    response: Response
    write: bool = False
    transaction_write: bool = False  # an invoice or payment changed (drop_every_write)
    storable: bool = False  # may be replayed for its requestid


# ---------------------------------------------------------------------------------------------
# The emulator


class QuickBooksEmulator(ServedEmulator):
    """QuickBooks Online v3 on a loopback port (one company), with the state and test controls
    to drive it. Use as a context manager or call `start()` / `stop()`.

    `limits` turns on Intuit's throttles (off by default so functional tests never see them):
    500 requests a minute per realm, 10 at once, 40 batch requests a minute, measured on `time`
    (an `EmulatedTime`: scale it to make a minute pass in a second). `replay_failures` also
    stores and replays a requestid whose first answer was a Fault (see `_store_reply`)."""

    def __init__(
        self,
        *,
        realm_id: str = "9341452867223459",
        client_id: str = "qbo-client-id",
        client_secret: str = "qbo-client-secret",
        time: EmulatedTime = REAL_TIME,
        home_currency: str = "USD",
        country: str = "US",
        company_name: str = "Sandbox Company_US_1",
        custom_txn_numbers: bool = True,
        unique_doc_numbers: bool = True,
        validate: bool = True,
        limits: bool = False,
        per_minute: int = 500,
        concurrent: int = 10,
        batch_per_minute: int = 40,
        throttle_form: Literal["alternate", "json", "xml"] = "alternate",
        replay_failures: bool = False,
        latency: float = 0.0,
        tax_codes: Iterable[str] | None = None,
        cdc_max_objects: int = CDC_MAX_OBJECTS,
    ) -> None:
        self.realm_id = realm_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.time = time
        self.limits = limits
        self.per_minute = per_minute
        self.concurrent = concurrent
        self.batch_per_minute = batch_per_minute
        self.throttle_form = throttle_form
        self.replay_failures = replay_failures
        self.latency = latency
        self.unique_doc_numbers = unique_doc_numbers
        self.cdc_max_objects = cdc_max_objects  # QBO: 1000; lower it to test the cut-off
        self._validate = validate
        self._zone = _company_zone()

        self.log = RequestLog()
        self.internal_errors: list[str] = []
        self.minor_versions: list[str | None] = []
        self.throttled = 0
        self._lock = threading.RLock()
        self._company = _Company(realm_id, home_currency, country)
        self._window: deque[float] = deque()
        self._batch_window: deque[float] = deque()
        self._in_flight = 0
        self._throttle_count = 0
        self._injected: list[tuple[int, str]] = []
        self._request_gates: dict[str, threading.Lock] = {}
        self._drop_writes = 0
        self._drop_every_write = False
        self._schema: QuickBooksSchema | None = None
        self._schema_resolved = False
        self._webhooks: list[_Webhook] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.oauth = OAuthServer(
            QBO_OAUTH_POLICY,
            {client_id: client_secret},
            now=self.time.now,
            grant_extra=lambda: {"realmId": self.realm_id},
        )
        self._server = EmulatorServer(self._handle)
        self._seed(company_name, custom_txn_numbers, tax_codes)

    # -- addresses -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """What python-quickbooks needs as `api_url_v3`."""
        return self.url + "/v3"

    @property
    def discovery_url(self) -> str:
        return self.url + "/.well-known/openid_configuration"

    @property
    def token_url(self) -> str:
        return self.url + "/oauth2/v1/tokens/bearer"

    # -- observation -----------------------------------------------------------------------

    def violations(self) -> list[str]:
        """Every spec violation of every request received (empty: all conformed)."""
        return self.log.violations()

    def requests(self, path_part: str = "", method: str | None = None) -> list[RecordedRequest]:
        return [
            e
            for e in self.log.snapshot()
            if path_part in e.path and (method is None or e.method == method)
        ]

    def request_ids(self) -> list[str]:
        """The requestid of every API request that carried one, in order."""
        found = []
        for entry in self.log.snapshot():
            values = parse_qs(entry.query).get("requestid")
            if values:
                found.append(values[0])
        return found

    def invoices(self) -> list[dict[str, Any]]:
        """Every invoice in the company, as GET would render it."""
        with self._lock:
            return [self._render(row) for row in self._company.table("Invoice").values()]

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._company.table("Invoice")[invoice_id])

    def payments(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render(row) for row in self._company.table("Payment").values()]

    def entity(self, entity: str, object_id: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._company.table(entity)[object_id])

    def emails(self, invoice_id: str) -> int:
        """How many times the invoice was emailed (POST .../send)."""
        with self._lock:
            return len(self._company.emails.get(invoice_id, []))

    def email_recipients(self, invoice_id: str) -> list[str]:
        with self._lock:
            return list(self._company.emails.get(invoice_id, []))

    # -- OAuth -----------------------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Consent without the browser: the first token response, plus `realmId`."""
        body = self.oauth.connect(self.client_id, realmId=self.realm_id)
        return {**body, "realmId": self.realm_id}

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def revoke_all(self) -> None:
        self.oauth.revoke_all()

    # -- fault controls --------------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503, form: str = "json") -> None:
        """The next `count` API requests fail with `status` before anything happens: 429 as a
        ThrottleExceeded Fault, 5xx as a SystemFault; `form` 'json' or 'xml' (an XML
        IntuitResponse, as QBO sometimes answers), or 'html' for 5xx (a gateway page)."""
        with self._lock:
            self._injected.extend([(status, form)] * count)

    def drop_next_writes(self, count: int = 1) -> None:
        """The next `count` writes commit, then the connection drops before the answer."""
        with self._lock:
            self._drop_writes += count

    def drop_every_write(self, enabled: bool = True) -> None:
        """Every invoice or payment write (create, update, void, send, batch) commits and then
        drops the connection, until turned off."""
        with self._lock:
            self._drop_every_write = enabled

    # -- admin: seeding and changes made in QuickBooks itself -------------------------------

    def add_customer(
        self,
        name: str,
        currency: str | None = None,
        email: str | None = None,
        *,
        active: bool = True,
        terms: str | None = None,
    ) -> str:
        with self._lock:
            row: dict[str, Any] = {
                "DisplayName": name,
                "FullyQualifiedName": name,
                "CompanyName": name,
                "Active": active,
                "Balance": Decimal("0"),
                "Taxable": False,
                "CurrencyRef": self._currency_ref(currency or self._company.home_currency),
            }
            if email:
                row["PrimaryEmailAddr"] = {"Address": email}
            if terms is not None:
                row["SalesTermRef"] = {"value": self._find_named("Term", terms)["Id"]}
            return str(self._insert("Customer", row)["Id"])

    def archive_customer(self, customer: str) -> None:
        self._set_active("Customer", customer, False)

    def add_item(
        self,
        name: str,
        *,
        item_type: str = "Service",
        income_account: str | None = None,
        unit_price: Decimal | None = None,
        active: bool = True,
    ) -> str:
        with self._lock:
            row: dict[str, Any] = {
                "Name": name,
                "FullyQualifiedName": name,
                "Type": item_type,
                "Active": active,
                "Taxable": False,
                "UnitPrice": unit_price if unit_price is not None else Decimal("0"),
            }
            if item_type in SELLABLE_ITEM_TYPES:
                account = income_account or self._find_named("Account", "Services")["Id"]
                row["IncomeAccountRef"] = {"value": account}
            return str(self._insert("Item", row)["Id"])

    def archive_item(self, item: str) -> None:
        """Make an item inactive (QBO's 'delete' of a product or service), by id or name."""
        self._set_active("Item", item, False)

    def add_account(self, name: str, account_type: str = "Bank", *, active: bool = True) -> str:
        classification = ACCOUNT_CLASSES.get(account_type, "Asset")
        with self._lock:
            return str(
                self._insert(
                    "Account",
                    {
                        "Name": name,
                        "FullyQualifiedName": name,
                        "AccountType": account_type,
                        "Classification": classification,
                        "Active": active,
                        "CurrentBalance": Decimal("0"),
                        "CurrencyRef": self._currency_ref(self._company.home_currency),
                    },
                )["Id"]
            )

    def archive_account(self, account: str) -> None:
        self._set_active("Account", account, False)

    def add_vendor(self, name: str, *, active: bool = True) -> str:
        with self._lock:
            return str(
                self._insert(
                    "Vendor",
                    {
                        "DisplayName": name,
                        "CompanyName": name,
                        "PrintOnCheckName": name,
                        "Active": active,
                        "Balance": Decimal("0"),
                        "CurrencyRef": self._currency_ref(self._company.home_currency),
                    },
                )["Id"]
            )

    def add_term(self, name: str, due_days: int = 30, *, active: bool = True) -> str:
        with self._lock:
            return str(
                self._insert(
                    "Term",
                    {"Name": name, "Active": active, "Type": "STANDARD", "DueDays": due_days},
                )["Id"]
            )

    def add_class(self, name: str, *, active: bool = True) -> str:
        with self._lock:
            return str(
                self._insert("Class", {"Name": name, "FullyQualifiedName": name, "Active": active})[
                    "Id"
                ]
            )

    def add_department(self, name: str, *, active: bool = True) -> str:
        with self._lock:
            return str(
                self._insert(
                    "Department", {"Name": name, "FullyQualifiedName": name, "Active": active}
                )["Id"]
            )

    def add_tax_code(self, name: str, *, active: bool = True, code_id: str | None = None) -> str:
        with self._lock:
            row = {"Name": name, "Description": name, "Active": active, "Taxable": True}
            if code_id is not None:
                row["Id"] = code_id
            return str(self._insert("TaxCode", row)["Id"])

    def archive(self, entity: str, key: str) -> None:
        self._set_active(entity, key, False)

    def set_book_close_date(self, day: date | None) -> None:
        """Close the books up to and including `day` (None: reopen them)."""
        with self._lock:
            prefs = self._preferences()
            prefs["AccountingInfoPrefs"]["BookCloseDate"] = day.isoformat() if day else None
            self._touch(prefs)

    def set_custom_txn_numbers(self, enabled: bool) -> None:
        with self._lock:
            prefs = self._preferences()
            prefs["SalesFormsPrefs"]["CustomTxnNumbers"] = enabled
            self._touch(prefs)

    def enable_multicurrency(self, *currencies: str) -> None:
        """Turn multicurrency on (it cannot be turned off in QBO) and add `currencies`."""
        with self._lock:
            prefs = self._preferences()
            prefs["CurrencyPrefs"]["MultiCurrencyEnabled"] = True
            self._touch(prefs)
            for code in currencies:
                self._add_currency(code)

    def add_currency(self, code: str) -> str:
        with self._lock:
            return self._add_currency(code)

    @property
    def currencies(self) -> list[str]:
        """The currencies invoices may use: home currency, plus enabled ones."""
        with self._lock:
            enabled = [
                str(row["Code"])
                for row in self._company.table("CompanyCurrency").values()
                if row.get("Active", True)
            ]
            return [self._company.home_currency, *enabled]

    def pay_externally(
        self,
        invoice_id: str,
        amount: Decimal | str | int | Any,
        *,
        reference: str = "cheque 1001",
        on: date | None = None,
    ) -> str:
        """A payment recorded in QuickBooks by someone else (a cheque, QBO Payments); returns
        the Payment's Id. `amount` may be a Decimal or a connector Money."""
        raw = getattr(amount, "amount", amount)
        with self._lock:
            invoice = self._company.table("Invoice")[invoice_id]
            body = {
                "CustomerRef": {"value": invoice["CustomerRef"]["value"]},
                "TotalAmt": str(raw),
                "PaymentRefNum": reference[:21],
                "Line": [
                    {
                        "Amount": str(raw),
                        "LinkedTxn": [{"TxnId": invoice_id, "TxnType": "Invoice"}],
                    }
                ],
            }
            if on is not None:
                body["TxnDate"] = on.isoformat()
            return str(self._write_payment(body, {})["Id"])

    def void_invoice(self, invoice_id: str) -> None:
        with self._lock:
            self._void_invoice(self._company.table("Invoice")[invoice_id])

    def delete_invoice(self, invoice_id: str) -> None:
        with self._lock:
            self._delete("Invoice", self._company.table("Invoice")[invoice_id])

    def edit_payment(self, payment_id: str, **changes: Any) -> None:
        """Change a payment as a QBO user would (e.g. PrivateNote='...'): a full update."""
        with self._lock:
            current = self._render(self._company.table("Payment")[payment_id])
            self._write("Payment", {**current, **changes}, {}, "update")

    def void_payment(self, payment_id: str) -> None:
        with self._lock:
            self._void_payment(self._company.table("Payment")[payment_id])

    # -- the general ledger, as a test reads it ---------------------------------------------

    def transactions(self, entity: str) -> list[dict[str, Any]]:
        """Every object of a transaction entity (e.g. 'Transfer'), as GET would render it."""
        with self._lock:
            return [self._render(row) for row in self._company.table(entity).values()]

    def account_total(self, account: str) -> Decimal:
        """What the ledger holds in an account (id or name) in its normal direction: debits less
        credits for assets and expenses, credits less debits for the others. Unlike
        CurrentBalance this is kept for income and expense accounts too."""
        with self._lock:
            row = self._find_named("Account", account)
            debits = sum(
                (
                    p.debit
                    for lines in self._company.postings.values()
                    for p in lines
                    if p.account == row["Id"]
                ),
                Decimal("0"),
            )
            return debits if row.get("Classification") in DEBIT_NORMAL else -debits

    def current_balance(self, account: str) -> Decimal:
        """The account's CurrentBalance as QBO answers it (0 for income and expense accounts)."""
        with self._lock:
            return Decimal(self._find_named("Account", account).get("CurrentBalance", 0))

    def customer_balance(self, customer: str) -> Decimal:
        """The customer's open balance (QBO Customer.Balance): what A/R holds for them."""
        with self._lock:
            return Decimal(self._find_named("Customer", customer).get("Balance", 0))

    def unbalanced(self) -> list[str]:
        """Transactions whose debits and credits differ (empty: the books balance)."""
        with self._lock:
            return [
                f"{entity} {object_id}: debits - credits = {total}"
                for (entity, object_id), lines in self._company.postings.items()
                if (total := sum((p.debit for p in lines), Decimal("0"))) != 0
            ]

    # -- webhooks ----------------------------------------------------------------------------

    def add_webhook(
        self,
        url: str,
        verifier_token: str,
        payload: Literal["cloudevents", "legacy"] = "cloudevents",
        *,
        entities: Iterable[str] = WEBHOOK_ENTITIES,
        duplicates: bool = False,
    ) -> None:
        """Notify `url` of changes to `entities` (Invoice and Payment: create, update, void,
        delete, email), signed with `verifier_token`, as Intuit's CloudEvents array or the
        legacy eventNotifications body. Notifications wait until `deliver_pending()`; with
        `duplicates` each one is sent twice (delivery is at least once)."""
        if payload not in ("cloudevents", "legacy"):
            raise ValueError(f"payload must be 'cloudevents' or 'legacy', not {payload!r}")
        with self._lock:
            self._webhooks.append(
                _Webhook(url, verifier_token, payload, frozenset(entities), duplicates)
            )

    def set_webhook_duplicates(self, enabled: bool) -> None:
        with self._lock:
            for hook in self._webhooks:
                hook.duplicates = enabled

    def pending_notifications(self) -> int:
        with self._lock:
            return sum(len(hook.pending) for hook in self._webhooks)

    def deliver_pending(self, timeout: float = 5.0) -> list[WebhookDelivery]:
        """POST every waiting notification, one request per webhook (twice with duplicates).
        A webhook whose receiver did not answer 2xx keeps its notifications for the next call,
        as Intuit retries."""
        with self._lock:
            batches = [(hook, list(hook.pending)) for hook in self._webhooks if hook.pending]
        made: list[WebhookDelivery] = []
        for hook, events in batches:
            body = self._notification_body(hook, events)
            digest = hmac.new(hook.verifier_token.encode(), body, hashlib.sha256).digest()
            signature = base64.b64encode(digest).decode()
            delivered = False
            for _ in range(2 if hook.duplicates else 1):
                try:
                    answer = requests.post(
                        hook.url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "intuit-signature": signature,
                            "User-Agent": "Intuit-Webhooks (emulated)",
                        },
                        timeout=timeout,
                    )
                    delivery = WebhookDelivery(hook.url, body, signature, answer.status_code)
                    delivered = delivered or 200 <= answer.status_code < 300
                except requests.RequestException as exc:
                    delivery = WebhookDelivery(hook.url, body, signature, None, type(exc).__name__)
                made.append(delivery)
            if delivered:
                with self._lock:
                    hook.pending = [e for e in hook.pending if e not in events]
        with self._lock:
            self.webhook_deliveries.extend(made)
        return made

    def _notification_body(self, hook: _Webhook, events: list[_Event]) -> bytes:
        def stamp(moment: datetime) -> str:
            return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

        if hook.payload == "legacy":
            body: Any = {
                "eventNotifications": [
                    {
                        "realmId": self.realm_id,
                        "dataChangeEvent": {
                            "entities": [
                                {
                                    "name": event.entity,
                                    "id": event.object_id,
                                    "operation": event.operation,
                                    "lastUpdated": stamp(event.moment),
                                }
                                for event in events
                            ]
                        },
                    }
                ]
            }
        else:
            # Intuit's source is an opaque per-app string, not the realm
            opaque = base64.b64encode(hashlib.sha256(self.client_id.encode()).digest()).decode()
            body = [
                {
                    "specversion": "1.0",
                    "id": event.event_id,
                    "source": f"intuit.{opaque}",
                    "type": f"qbo.{event.entity.lower()}.{WEBHOOK_VERBS[event.operation]}.v1",
                    "datacontenttype": "application/json",
                    "time": stamp(event.moment),
                    "intuitentityid": event.object_id,
                    "intuitaccountid": self.realm_id,
                    "data": {},
                }
                for event in events
            ]
        return json.dumps(body).encode()

    def _notify(self, entity: str, object_id: str, operation: str) -> None:
        """Queue a change for every webhook that watches `entity` (callers hold the lock)."""
        if not self._webhooks:
            return
        event = _Event(entity, object_id, operation, self._now())
        for hook in self._webhooks:
            if entity in hook.entities:
                hook.pending.append(event)

    # -- seeding ---------------------------------------------------------------------------

    def _seed(
        self, company_name: str, custom_txn_numbers: bool, tax_codes: Iterable[str] | None
    ) -> None:
        now = self.time.now()
        company = self._company
        company.table("CompanyInfo")[company.realm] = {
            "Id": company.realm,
            "SyncToken": "0",
            "CompanyName": company_name,
            "LegalName": company_name,
            "Country": company.country,
            "SupportedLanguages": "en",
            "domain": "QBO",
            "sparse": False,
            "MetaData": self._meta(now),
        }
        company.table("Preferences")["1"] = {
            "Id": "1",
            "SyncToken": "0",
            "domain": "QBO",
            "sparse": False,
            "AccountingInfoPrefs": {
                "TrackDepartments": True,
                "DepartmentTerminology": "Location",
                "ClassTrackingPerTxn": False,
                "ClassTrackingPerTxnLine": True,
                "CustomerTerminology": "Customers",
                "BookCloseDate": None,
            },
            "SalesFormsPrefs": {
                "CustomTxnNumbers": custom_txn_numbers,
                "AllowDeposit": True,
                "AllowDiscount": True,
                "AutoApplyCredit": True,
                "AutoApplyPayments": True,
            },
            "CurrencyPrefs": {
                "MultiCurrencyEnabled": False,
                "HomeCurrency": {"value": company.home_currency},
            },
            "TaxPrefs": {"UsingSalesTax": company.country == "US"},
            "MetaData": self._meta(now),
        }
        for name, account_type, subtype in (
            ("Services", "Income", "ServiceFeeIncome"),
            ("Undeposited Funds", "Other Current Asset", "UndepositedFunds"),
            ("Accounts Receivable (A/R)", "Accounts Receivable", "AccountsReceivable"),
            ("Checking", "Bank", "Checking"),
        ):
            account_id = self.add_account(name, account_type)
            company.table("Account")[account_id]["AccountSubType"] = subtype
        for name, days in (("Due on receipt", 0), ("Net 15", 15), ("Net 30", 30), ("Net 60", 60)):
            self.add_term(name, days)
        self.add_item("Services")
        if company.country == "US":
            # US companies apply sales tax by the pseudo codes TAX and NON [V:6100]
            self.add_tax_code("TAX", code_id="TAX")
            self.add_tax_code("NON", code_id="NON")
            company.table("TaxCode")["NON"]["Taxable"] = False
        for name in tax_codes or ():
            self.add_tax_code(name)

    # -- state helpers (callers hold the lock) -----------------------------------------------

    def _now(self) -> datetime:
        return self.time.now()

    def _local(self, moment: datetime) -> str:
        return moment.astimezone(self._zone).isoformat(timespec="seconds")

    def _meta(self, moment: datetime) -> dict[str, Any]:
        return {"CreateTime": moment, "LastUpdatedTime": moment}

    def _today(self) -> date:
        return self._now().astimezone(self._zone).date()

    def _touch(self, row: dict[str, Any], *, bump: bool = True, operation: str = "Update") -> None:
        row.setdefault("MetaData", self._meta(self._now()))["LastUpdatedTime"] = self._now()
        if bump:
            row["SyncToken"] = str(int(row.get("SyncToken", "0")) + 1)
        watched = {entity for hook in self._webhooks for entity in hook.entities}
        for entity in sorted(watched):
            if self._company.table(entity).get(str(row.get("Id"))) is row:
                self._notify(entity, str(row["Id"]), operation)

    def _insert(self, entity: str, row: dict[str, Any]) -> dict[str, Any]:
        table = self._company.table(entity)
        row.setdefault("Id", self._company.new_id(entity))
        row.setdefault("SyncToken", "0")
        row.setdefault("domain", "QBO")
        row.setdefault("sparse", False)
        row["MetaData"] = self._meta(self._now())
        table[row["Id"]] = row
        self._notify(entity, str(row["Id"]), "Create")
        return row

    def _preferences(self) -> dict[str, Any]:
        return self._company.table("Preferences")["1"]

    def _multicurrency(self) -> bool:
        return bool(self._preferences()["CurrencyPrefs"].get("MultiCurrencyEnabled"))

    def _add_currency(self, code: str) -> str:
        for row in self._company.table("CompanyCurrency").values():
            if row["Code"] == code:
                row["Active"] = True
                return str(row["Id"])
        return str(
            self._insert(
                "CompanyCurrency",
                {"Code": code, "Name": CURRENCY_NAMES.get(code, code), "Active": True},
            )["Id"]
        )

    def _currency_ref(self, code: str) -> dict[str, str]:
        return {"value": code, "name": CURRENCY_NAMES.get(code, code)}

    def _find_named(self, entity: str, key: str) -> dict[str, Any]:
        table = self._company.table(entity)
        if key in table:
            return table[key]
        for row in table.values():
            if row.get("Name") == key or row.get("DisplayName") == key:
                return row
        raise KeyError(f"no {entity} {key!r}")

    def _set_active(self, entity: str, key: str, active: bool) -> None:
        with self._lock:
            row = self._find_named(entity, key)
            row["Active"] = active
            self._touch(row)

    def _render(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as QBO answers it: times in the company's zone, amounts as numbers."""

        def convert(value: Any) -> Any:
            if isinstance(value, datetime):
                return self._local(value)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items() if v is not None}
            if isinstance(value, list):
                return [convert(v) for v in value]
            return value

        rendered: dict[str, Any] = convert(copy.deepcopy(dict(row)))
        return rendered

    def _time(self) -> str:
        return self._now().astimezone(self._zone).isoformat(timespec="milliseconds")

    def _reply(self, entity: str, row: Mapping[str, Any]) -> Response:
        return _json(200, {entity: self._render(row), "time": self._time()})

    def _fault(self, fault: QBOFault) -> Response:
        return _json(fault.status, {**fault.body(), "time": self._time()})

    # -- references ------------------------------------------------------------------------

    def _reference(
        self,
        entity: str,
        value: str | None,
        element: str,
        *,
        required: bool = False,
    ) -> dict[str, Any] | None:
        if value is None:
            if required:
                raise _required(element)
            return None
        row = self._company.table(entity).get(value)
        if row is None:
            raise _invalid_reference(element)
        if not row.get("Active", True):
            raise _inactive(element)
        return row

    def _check_open_period(self, day: date) -> None:
        closed = self._preferences()["AccountingInfoPrefs"].get("BookCloseDate")
        if closed and day <= date.fromisoformat(closed):
            raise QBOFault(
                "6210",
                "Account Period Closed",
                "The account period has closed and the account books cannot be updated through "
                "through the QBO Services API. Please use the QBO website to make these changes.",
            )

    def _currency_for(self, body: Mapping[str, Any], customer: Mapping[str, Any]) -> str:
        """The transaction currency: CurrencyRef, else the customer's [V: multicurrency]."""
        home = self._company.home_currency
        customer_currency = (customer.get("CurrencyRef") or {}).get("value") or home
        wanted = _ref_value(body, "CurrencyRef")
        if not self._multicurrency():
            if wanted is not None and wanted != home:
                raise _business(
                    f"Multicurrency is not enabled for this company: {wanted} cannot be used, "
                    f"transactions are in the home currency {home}.",
                    "CurrencyRef",
                )
            return home
        currency = wanted or customer_currency
        if currency not in self.currencies:
            raise _business(
                f"The currency {currency} is not in the company's currency list.", "CurrencyRef"
            )
        if currency != customer_currency:
            raise _business(
                f"The transaction currency {currency} does not match the customer's currency "
                f"{customer_currency}.",
                "CurrencyRef",
            )
        return currency

    # -- invoices --------------------------------------------------------------------------

    def _write_invoice(
        self, body: Mapping[str, Any], params: Mapping[str, str], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        invoice = self._write_invoice_row(body, params, existing)
        self._repost("Invoice", invoice)
        return invoice

    def _write_invoice_row(
        self, body: Mapping[str, Any], params: Mapping[str, str], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        company = self._company
        customer = self._reference(
            "Customer", _ref_value(body, "CustomerRef"), "CustomerRef", required=True
        )
        assert customer is not None
        currency = self._currency_for(body, customer)
        lines_in = body.get("Line") or []
        if isinstance(lines_in, Mapping):
            lines_in = [lines_in]
        lines: list[dict[str, Any]] = []
        total = Decimal("0")
        us = company.country == "US"
        for raw in lines_in:
            detail_type = raw.get("DetailType")
            if detail_type == "SubTotalLineDetail":
                continue  # QBO recomputes the subtotal line
            line: dict[str, Any] = {
                "Id": str(len(lines) + 1),
                "LineNum": len(lines) + 1,
                "DetailType": detail_type,
            }
            if _text(raw.get("Description")) is not None:
                line["Description"] = raw["Description"]
            if detail_type == "DescriptionOnly":
                line["Amount"] = Decimal("0")
                line["DescriptionLineDetail"] = dict(raw.get("DescriptionLineDetail") or {})
                lines.append(line)
                continue
            if detail_type != "SalesItemLineDetail":
                raise _unsupported(f"Line.DetailType {detail_type} (not modelled by the emulator)")
            detail = raw.get("SalesItemLineDetail") or {}
            amount = _decimal(raw.get("Amount"), "Line.Amount")
            if amount is None:
                raise _required("Line.Amount")
            item_id = _ref_value(detail, "ItemRef") or "1"  # QBO's default item, "Services"
            item = self._reference("Item", item_id, "Line.SalesItemLineDetail.ItemRef")
            assert item is not None
            if item.get("Type") not in SELLABLE_ITEM_TYPES:
                raise QBOFault(
                    "2500",
                    "Invalid Reference Id",
                    "Invalid Reference Id : Categories cannot be used in transactions.",
                    "Line.SalesItemLineDetail.ItemRef",
                )
            qty = _decimal(detail.get("Qty"), "Line.SalesItemLineDetail.Qty")
            price = _decimal(detail.get("UnitPrice"), "Line.SalesItemLineDetail.UnitPrice")
            mismatch = qty is not None and price is not None and qty != 0
            if (
                mismatch
                and qty is not None
                and price is not None
                and (_money(qty * price) != _money(amount))
            ):
                raise QBOFault(
                    "6070",
                    "Amount calculation incorrect in the request",
                    f"Amount is not equal to Qty * UnitPrice. Supplied value:{amount}",
                    "Line.Amount",
                )
            stored_detail: dict[str, Any] = {
                "ItemRef": {"value": item["Id"], "name": item["Name"]},
                "Qty": qty if qty is not None else Decimal("1"),
                "UnitPrice": price if price is not None else amount,
            }
            tax = _ref_value(detail, "TaxCodeRef")
            if us:
                if tax is not None and tax not in ("TAX", "NON"):
                    raise QBOFault(
                        "6100",
                        "Invalid Line TaxCode in the request",
                        f"Valid Line TaxCodes for US should be TAX or NON. Supplied value:{tax}",
                        "Line.SalesItemLineDetail.TaxCodeRef",
                    )
                stored_detail["TaxCodeRef"] = {"value": tax or "NON"}
            else:
                if tax is None:
                    raise _business(
                        "Make sure all your transactions have a GST/VAT rate before you save.",
                        "Line.SalesItemLineDetail.TaxCodeRef",
                    )
                self._reference("TaxCode", tax, "Line.SalesItemLineDetail.TaxCodeRef")
                stored_detail["TaxCodeRef"] = {"value": tax}
            line_class = self._reference(
                "Class", _ref_value(detail, "ClassRef"), "Line.SalesItemLineDetail.ClassRef"
            )
            if line_class is not None:
                stored_detail["ClassRef"] = {"value": line_class["Id"], "name": line_class["Name"]}
            service_date = _parse_date(detail.get("ServiceDate"), "ServiceDate")
            if service_date is not None:
                stored_detail["ServiceDate"] = service_date.isoformat()
            line["Amount"] = _money(amount)
            line["SalesItemLineDetail"] = stored_detail
            total += _money(amount)
            lines.append(line)
        if not any(line["DetailType"] == "SalesItemLineDetail" for line in lines):
            raise _business("You must fill out at least one split line.", "Line")
        lines.append(
            {"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}}
        )

        txn_date = _parse_date(body.get("TxnDate"), "TxnDate") or (
            date.fromisoformat(existing["TxnDate"]) if existing else self._today()
        )
        self._check_open_period(txn_date)
        if existing is not None:
            self._check_open_period(date.fromisoformat(existing["TxnDate"]))
        for name in ("DocNumber", "PrivateNote"):
            _length(body, name)
        term = self._reference("Term", _ref_value(body, "SalesTermRef"), "SalesTermRef")
        if term is None and existing is None and customer.get("SalesTermRef"):
            term = self._company.table("Term").get(customer["SalesTermRef"]["value"])
        due = _parse_date(body.get("DueDate"), "DueDate")
        if due is None:
            due = txn_date + timedelta(days=int(term.get("DueDays", 0))) if term else txn_date
        department = self._reference(
            "Department", _ref_value(body, "DepartmentRef"), "DepartmentRef"
        )
        txn_class = self._reference("Class", _ref_value(body, "ClassRef"), "ClassRef")

        doc_number = _text(body.get("DocNumber"))
        custom_numbers = bool(self._preferences()["SalesFormsPrefs"].get("CustomTxnNumbers"))
        if doc_number is None and existing is not None:
            doc_number = existing.get("DocNumber")
        elif doc_number is None and not custom_numbers:
            doc_number = str(company.next_doc_number)
            company.next_doc_number += 1
        allow_duplicates = "allowduplicatedocnum" in params.get("include", "").lower()
        if doc_number is not None and self.unique_doc_numbers and not allow_duplicates:
            for other in company.table("Invoice").values():
                if other.get("DocNumber") == doc_number and other is not existing:
                    raise QBOFault(
                        "6140",
                        "Duplicate Document Number Error",
                        "Duplicate Document Number Error : You must specify a different number. "
                        f"This number has already been used. DocNumber={doc_number} is assigned "
                        f"to TxnType=Invoice with TxnId={other['Id']}",
                    )

        email = body.get("BillEmail") if isinstance(body.get("BillEmail"), Mapping) else None
        if email is None or not _text(email.get("Address")):
            email = customer.get("PrimaryEmailAddr") if existing is None else None
            if existing is not None:
                email = existing.get("BillEmail")
        paid = Decimal("0")
        linked: list[dict[str, Any]] = []
        if existing is not None:
            paid = existing["TotalAmt"] - existing["Balance"]
            linked = list(existing.get("LinkedTxn", []))
            if paid > total:
                raise _business(
                    f"The invoice total {total} would fall below the {paid} already paid.",
                    "Line",
                )
        row: dict[str, Any] = {
            "AllowIPNPayment": False,
            "AllowOnlinePayment": False,
            "AllowOnlineCreditCardPayment": False,
            "AllowOnlineACHPayment": False,
            "CustomField": list(body.get("CustomField") or []),
            "DocNumber": doc_number,
            "TxnDate": txn_date.isoformat(),
            "DueDate": due.isoformat(),
            "CurrencyRef": self._currency_ref(currency),
            "ExchangeRate": Decimal("1"),
            "LinkedTxn": linked,
            "Line": lines,
            "TxnTaxDetail": {"TotalTax": Decimal("0")},
            "CustomerRef": {"value": customer["Id"], "name": customer["DisplayName"]},
            "TotalAmt": total,
            "HomeTotalAmt": total,
            "Balance": total - paid,
            "HomeBalance": total - paid,
            "ApplyTaxAfterDiscount": False,
            "PrintStatus": _text(body.get("PrintStatus")) or "NeedToPrint",
            "EmailStatus": _text(body.get("EmailStatus"))
            or (existing or {}).get("EmailStatus")
            or "NotSet",
            "PrivateNote": _text(body.get("PrivateNote")),
        }
        for key in ("CustomerMemo",):
            if isinstance(body.get(key), Mapping) and _text(body[key].get("value")):
                row[key] = {"value": body[key]["value"]}
        if email is not None and _text(email.get("Address")):
            row["BillEmail"] = {"Address": email["Address"]}
        if term is not None:
            row["SalesTermRef"] = {"value": term["Id"], "name": term["Name"]}
        if department is not None:
            row["DepartmentRef"] = {"value": department["Id"], "name": department["Name"]}
        if txn_class is not None:
            row["ClassRef"] = {"value": txn_class["Id"], "name": txn_class["Name"]}
        if existing is not None and existing.get("DeliveryInfo"):
            row["DeliveryInfo"] = existing["DeliveryInfo"]
        if existing is None:
            return self._insert("Invoice", row)
        for key in [k for k in existing if k not in ("Id", "SyncToken", "MetaData", "domain")]:
            existing.pop(key)
        existing.update(row)
        self._touch(existing)
        return existing

    def _void_invoice(self, invoice: dict[str, Any]) -> dict[str, Any]:
        self._check_open_period(date.fromisoformat(invoice["TxnDate"]))
        for link in invoice.get("LinkedTxn", []):
            payment = self._company.table("Payment").get(link["TxnId"])
            if payment is not None:
                self._unlink_payment(payment, invoice["Id"])
        for line in invoice["Line"]:
            line["Amount"] = Decimal("0")
            detail = line.get("SalesItemLineDetail")
            if detail is not None:
                detail["Qty"] = Decimal("0")
                detail["UnitPrice"] = Decimal("0")
        invoice.update(
            TotalAmt=Decimal("0"),
            HomeTotalAmt=Decimal("0"),
            Balance=Decimal("0"),
            HomeBalance=Decimal("0"),
            LinkedTxn=[],
            PrivateNote="Voided",
        )
        self._touch(invoice, operation="Void")
        self._repost("Invoice", invoice)
        return invoice

    def _delete(self, entity: str, row: dict[str, Any]) -> dict[str, Any]:
        if entity == "Invoice":
            self._check_open_period(date.fromisoformat(row["TxnDate"]))
            for link in row.get("LinkedTxn", []):
                payment = self._company.table("Payment").get(link["TxnId"])
                if payment is not None:
                    self._unlink_payment(payment, row["Id"])
        elif entity == "Payment":
            self._check_open_period(date.fromisoformat(row["TxnDate"]))
            self._release_payment(row)
        elif entity in MONEY_TRAIL:
            self._check_open_period(date.fromisoformat(row["TxnDate"]))
        else:
            raise _unsupported(f"Delete of {entity}")
        del self._company.table(entity)[row["Id"]]
        self._company.deleted.setdefault(entity, {})[row["Id"]] = self._now()
        self._unpost(entity, row["Id"])
        self._notify(entity, row["Id"], "Delete")
        return {"Id": row["Id"], "status": "Deleted", "domain": "QBO"}

    # -- payments --------------------------------------------------------------------------

    def _write_payment(
        self,
        body: Mapping[str, Any],
        params: Mapping[str, str],
        existing: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        payment = self._write_payment_row(body, params, existing)
        self._repost("Payment", payment)
        return payment

    def _write_payment_row(
        self,
        body: Mapping[str, Any],
        params: Mapping[str, str],
        existing: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # what an updated payment already applied goes back to its invoices first
        credit_back: dict[str, Decimal] = {}
        for line in (existing or {}).get("Line", []):
            for link in line.get("LinkedTxn", []):
                credit_back[link["TxnId"]] = (
                    credit_back.get(link["TxnId"], Decimal("0")) + line["Amount"]
                )
        if existing is not None:
            self._check_open_period(date.fromisoformat(existing["TxnDate"]))
        customer = self._reference(
            "Customer", _ref_value(body, "CustomerRef"), "CustomerRef", required=True
        )
        assert customer is not None
        currency = self._currency_for(body, customer)
        total = _decimal(body.get("TotalAmt"), "TotalAmt")
        if total is None:
            raise _business("You must set a transaction amount.", "TotalAmt")
        if total < 0:
            raise _business("Payment amount must not be negative.", "TotalAmt")
        txn_date = _parse_date(body.get("TxnDate"), "TxnDate") or self._today()
        self._check_open_period(txn_date)
        for name in ("PaymentRefNum", "PrivateNote"):
            _length(body, name)
        deposit = self._reference(
            "Account", _ref_value(body, "DepositToAccountRef"), "DepositToAccountRef"
        )
        if deposit is None:
            deposit = self._find_named("Account", "Undeposited Funds")
        if deposit.get("AccountType") not in ("Bank", "Other Current Asset"):
            raise _business(
                f"Account {deposit['Name']} cannot receive payments: use a bank or other current "
                "asset account (such as Undeposited Funds).",
                "DepositToAccountRef",
            )
        lines_in = body.get("Line") or []
        if isinstance(lines_in, Mapping):
            lines_in = [lines_in]
        applications: list[tuple[dict[str, Any], Decimal]] = []
        applied = Decimal("0")
        for raw in lines_in:
            amount = _decimal(raw.get("Amount"), "Line.Amount")
            if amount is None:
                raise _required("Line.Amount")
            links = raw.get("LinkedTxn") or []
            if isinstance(links, Mapping):
                links = [links]
            for link in links:
                if link.get("TxnType") != "Invoice":
                    raise _unsupported(f"LinkedTxn.TxnType {link.get('TxnType')}")
                invoice = self._company.table("Invoice").get(str(link.get("TxnId")))
                if invoice is None:
                    raise _invalid_reference("Line.LinkedTxn.TxnId")
                if invoice["CustomerRef"]["value"] != customer["Id"]:
                    raise _business(
                        f"Invoice {invoice['Id']} belongs to another customer.", "Line.LinkedTxn"
                    )
                if invoice["CurrencyRef"]["value"] != currency:
                    raise _business(
                        f"Invoice {invoice['Id']} is in {invoice['CurrencyRef']['value']}, the "
                        f"payment in {currency}.",
                        "CurrencyRef",
                    )
                open_balance = invoice["Balance"] + credit_back.get(invoice["Id"], Decimal("0"))
                if _money(amount) > open_balance:
                    raise _business(
                        f"The payment amount {_money(amount)} applied to invoice "
                        f"{invoice.get('DocNumber') or invoice['Id']} exceeds its open balance "
                        f"{open_balance}.",
                        "Line.Amount",
                    )
                applications.append((invoice, _money(amount)))
            applied += _money(amount)
        if applied > total:
            raise _business(
                f"The amounts applied ({applied}) exceed the payment total ({total}).", "Line"
            )
        row: dict[str, Any] = {
            "CustomerRef": {"value": customer["Id"], "name": customer["DisplayName"]},
            "CurrencyRef": self._currency_ref(currency),
            "DepositToAccountRef": {"value": deposit["Id"]},
            "TotalAmt": _money(total),
            "UnappliedAmt": _money(total - applied),
            "ProcessPayment": False,
            "TxnDate": txn_date.isoformat(),
            "PaymentRefNum": _text(body.get("PaymentRefNum")),
            "PrivateNote": _text(body.get("PrivateNote")),
            "ExchangeRate": Decimal("1"),
            "Line": [
                {
                    "Amount": amount,
                    "LinkedTxn": [{"TxnId": invoice["Id"], "TxnType": "Invoice"}],
                }
                for invoice, amount in applications
            ],
        }
        if existing is None:
            payment = self._insert("Payment", row)
        else:
            existing.update(row)
            self._touch(existing)
            payment = existing
        # only invoices whose applied amount changed are touched (a memo edit changes none)
        applied_now: dict[str, Decimal] = {}
        for invoice, amount in applications:
            applied_now[invoice["Id"]] = applied_now.get(invoice["Id"], Decimal("0")) + amount
        invoices = self._company.table("Invoice")
        for invoice_id in sorted(set(applied_now) | set(credit_back)):
            invoice = invoices.get(invoice_id)
            delta = applied_now.get(invoice_id, Decimal("0")) - credit_back.get(
                invoice_id, Decimal("0")
            )
            if invoice is None or delta == 0:
                continue
            invoice["Balance"] -= delta
            invoice["HomeBalance"] = invoice["Balance"]
            links = [t for t in invoice.get("LinkedTxn", []) if t["TxnId"] != payment["Id"]]
            if invoice_id in applied_now:
                links.append({"TxnId": payment["Id"], "TxnType": "Payment"})
            invoice["LinkedTxn"] = links
            self._touch(invoice)
        return payment

    def _unlink_payment(self, payment: dict[str, Any], invoice_id: str) -> None:
        """The invoice goes away (void, delete): its share of the payment becomes unapplied."""
        kept = []
        for line in payment["Line"]:
            if any(link["TxnId"] == invoice_id for link in line.get("LinkedTxn", [])):
                payment["UnappliedAmt"] += line["Amount"]
            else:
                kept.append(line)
        payment["Line"] = kept
        self._touch(payment)

    def _release_payment(self, payment: dict[str, Any]) -> None:
        for line in payment["Line"]:
            for link in line.get("LinkedTxn", []):
                invoice = self._company.table("Invoice").get(link["TxnId"])
                if invoice is None:
                    continue
                invoice["Balance"] += line["Amount"]
                invoice["HomeBalance"] = invoice["Balance"]
                invoice["LinkedTxn"] = [
                    t for t in invoice.get("LinkedTxn", []) if t["TxnId"] != payment["Id"]
                ]
                self._touch(invoice)

    def _void_payment(self, payment: dict[str, Any]) -> dict[str, Any]:
        self._check_open_period(date.fromisoformat(payment["TxnDate"]))
        self._release_payment(payment)
        for line in payment["Line"]:
            line["Amount"] = Decimal("0")
        payment.update(TotalAmt=Decimal("0"), UnappliedAmt=Decimal("0"), PrivateNote="Voided")
        self._touch(payment, operation="Void")
        self._repost("Payment", payment)
        return payment

    # -- the general ledger ------------------------------------------------------------------

    def _repost(self, entity: str, row: Mapping[str, Any]) -> None:
        """Replace the transaction's lines in the general ledger with what it says now."""
        self._unpost(entity, str(row["Id"]))
        lines = [p for p in self._postings_for(entity, row) if p.debit != 0]
        if lines:
            self._company.postings[(entity, str(row["Id"]))] = lines
            self._apply(lines, 1)

    def _unpost(self, entity: str, object_id: str) -> None:
        self._apply(self._company.postings.pop((entity, object_id), []), -1)

    def _apply(self, lines: Iterable[_Posting], sign: int) -> None:
        accounts = self._company.table("Account")
        for line in lines:
            account = accounts.get(line.account)
            if account is None:
                continue
            debit = line.debit * sign
            classification = account.get("Classification")
            if classification in BALANCE_SHEET:  # P&L accounts keep CurrentBalance 0 [V:balances]
                grows = debit if classification in DEBIT_NORMAL else -debit
                account["CurrentBalance"] = Decimal(account.get("CurrentBalance", 0)) + grows
            if line.customer and account.get("AccountType") == "Accounts Receivable":
                customer = self._company.table("Customer").get(line.customer)
                if customer is not None:
                    customer["Balance"] = Decimal(customer.get("Balance", 0)) + debit

    def _receivable_account(self) -> str | None:
        for row in self._company.table("Account").values():
            if row.get("AccountType") == "Accounts Receivable":
                return str(row["Id"])
        return None

    def _income_account(self, line: Mapping[str, Any]) -> str | None:
        detail = line.get("SalesItemLineDetail") or {}
        item = self._company.table("Item").get(str((detail.get("ItemRef") or {}).get("value")))
        return _ref_value(item, "IncomeAccountRef") if item is not None else None

    def _postings_for(self, entity: str, row: Mapping[str, Any]) -> list[_Posting]:
        """The debits (> 0) and credits (< 0) a transaction makes, as QBO's ledger books it."""
        on = date.fromisoformat(str(row["TxnDate"]))
        total = Decimal(row.get("TotalAmt") or 0)
        customer = _ref_value(row, "CustomerRef")
        lines: list[_Posting] = []
        if entity in ("Invoice", "RefundReceipt"):
            sign = 1 if entity == "Invoice" else -1  # a refund gives the revenue back
            if entity == "Invoice":
                receivable = self._receivable_account()
                if receivable is not None:
                    lines.append(_Posting(receivable, total, on, customer))
            else:
                lines.append(_Posting(str(_ref_value(row, "DepositToAccountRef")), -total, on))
            for line in row.get("Line", []):
                if line.get("DetailType") != "SalesItemLineDetail":
                    continue
                income = self._income_account(line)
                if income is not None:
                    lines.append(_Posting(income, -sign * Decimal(line["Amount"]), on))
        elif entity == "Payment":
            receivable = self._receivable_account()
            lines.append(_Posting(str(_ref_value(row, "DepositToAccountRef")), total, on))
            if receivable is not None:
                lines.append(_Posting(receivable, -total, on, customer))
        elif entity == "Transfer":
            amount = Decimal(row.get("Amount") or 0)
            lines.append(_Posting(str(_ref_value(row, "ToAccountRef")), amount, on))
            lines.append(_Posting(str(_ref_value(row, "FromAccountRef")), -amount, on))
        elif entity == "Purchase":
            lines.append(_Posting(str(_ref_value(row, "AccountRef")), -total, on))
            for line in row.get("Line", []):
                detail = line["AccountBasedExpenseLineDetail"]
                lines.append(
                    _Posting(str(_ref_value(detail, "AccountRef")), Decimal(line["Amount"]), on)
                )
        elif entity == "Deposit":
            lines.append(_Posting(str(_ref_value(row, "DepositToAccountRef")), total, on))
            for line in row.get("Line", []):
                detail = line["DepositLineDetail"]
                lines.append(
                    _Posting(str(_ref_value(detail, "AccountRef")), -Decimal(line["Amount"]), on)
                )
        elif entity == "JournalEntry":
            for line in row.get("Line", []):
                detail = line["JournalEntryLineDetail"]
                amount = Decimal(line["Amount"])
                entity_ref = (detail.get("Entity") or {}).get("EntityRef") or {}
                who = (
                    entity_ref.get("value")
                    if (detail.get("Entity") or {}).get("Type") == "Customer"
                    else None
                )
                lines.append(
                    _Posting(
                        str(_ref_value(detail, "AccountRef")),
                        amount if detail["PostingType"] == "Debit" else -amount,
                        on,
                        who,
                    )
                )
        return lines

    # -- the money trail: transfers, expenses, deposits, refund receipts, journal entries -----

    def _write_money(
        self, entity: str, body: Mapping[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        if existing is not None:
            self._check_open_period(date.fromisoformat(existing["TxnDate"]))
        txn_date = _parse_date(body.get("TxnDate"), "TxnDate") or self._today()
        self._check_open_period(txn_date)
        for name in ("DocNumber", "PrivateNote"):
            _length(body, name)
        writer = {
            "Transfer": self._transfer_row,
            "Purchase": self._purchase_row,
            "Deposit": self._deposit_row,
            "RefundReceipt": self._refund_receipt_row,
            "JournalEntry": self._journal_entry_row,
        }[entity]
        row = writer(body)
        row.update(
            TxnDate=txn_date.isoformat(),
            PrivateNote=_text(body.get("PrivateNote")),
            DocNumber=_text(body.get("DocNumber")),
        )
        department = self._reference(
            "Department", _ref_value(body, "DepartmentRef"), "DepartmentRef"
        )
        if department is not None:
            row["DepartmentRef"] = {"value": department["Id"], "name": department["Name"]}
        if existing is None:
            saved = self._insert(entity, row)
        else:
            for key in [k for k in existing if k not in ("Id", "SyncToken", "MetaData", "domain")]:
                existing.pop(key)
            existing.update(row)
            self._touch(existing)
            saved = existing
        self._repost(entity, saved)
        return saved

    def _plain_currency(self, body: Mapping[str, Any]) -> dict[str, str]:
        """The currency of a transaction between the firm's own (home currency) accounts."""
        home = self._company.home_currency
        wanted = _ref_value(body, "CurrencyRef") or home
        if wanted != home:
            detail = (
                f"Multicurrency is not enabled for this company: {wanted} cannot be used."
                if not self._multicurrency()
                else f"The accounts are in {home}: a {wanted} amount cannot be posted to them."
            )
            raise _business(detail, "CurrencyRef")
        return self._currency_ref(home)

    def _account(
        self, body: Mapping[str, Any], key: str, element: str, types: frozenset[str] | None = None
    ) -> dict[str, Any]:
        account = self._reference("Account", _ref_value(body, key), element, required=True)
        assert account is not None
        if types is not None and account.get("AccountType") not in types:
            allowed = " or ".join(sorted(types))
            raise _business(
                f"Account {account['Name']} is a {account.get('AccountType')} account: "
                f"{element} takes {allowed} accounts.",
                element,
            )
        return account

    def _named_entity(self, ref: Any, element: str) -> dict[str, Any] | None:
        """EntityRef / Entity of a line: a vendor or customer, by Id (its `type` says which)."""
        if not isinstance(ref, Mapping) or _text(ref.get("value")) is None:
            return None
        kind = _text(ref.get("type")) or "Vendor"
        if kind not in ("Vendor", "Customer"):
            raise _unsupported(f"{element} of type {kind}")
        return self._reference(kind, str(ref["value"]), element)

    def _amount(self, value: Any, element: str) -> Decimal:
        amount = _decimal(value, element)
        if amount is None:
            raise _required(element)
        if amount <= 0:
            raise _business(f"The amount must be more than zero. Supplied value:{amount}", element)
        return _money(amount)

    @staticmethod
    def _lines(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        lines = body.get("Line") or []
        return [lines] if isinstance(lines, Mapping) else list(lines)

    def _transfer_row(self, body: Mapping[str, Any]) -> dict[str, Any]:
        source = self._account(body, "FromAccountRef", "FromAccountRef")
        target = self._account(body, "ToAccountRef", "ToAccountRef")
        for account, element in ((source, "FromAccountRef"), (target, "ToAccountRef")):
            if account.get("Classification") not in BALANCE_SHEET:
                raise _business(
                    f"Transfers move money between balance sheet accounts: {account['Name']} is "
                    f"a {account.get('AccountType')} account.",
                    element,
                )
        if source["Id"] == target["Id"]:
            raise _business("The transfer's from and to accounts must differ.", "ToAccountRef")
        return {
            "FromAccountRef": {"value": source["Id"], "name": source["Name"]},
            "ToAccountRef": {"value": target["Id"], "name": target["Name"]},
            "Amount": self._amount(body.get("Amount"), "Amount"),
            "CurrencyRef": self._plain_currency(body),
        }

    def _purchase_row(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kind = _text(body.get("PaymentType"))
        if kind is None:
            raise _required("PaymentType")
        paid_from = self._account(
            body,
            "AccountRef",
            "AccountRef",
            frozenset({"Credit Card"}) if kind == "CreditCard" else RECEIVING_TYPES,
        )
        payee = self._named_entity(body.get("EntityRef"), "EntityRef")
        lines: list[dict[str, Any]] = []
        total = Decimal("0")
        for raw in self._lines(body):
            if raw.get("DetailType") != "AccountBasedExpenseLineDetail":
                raise _unsupported(f"Purchase Line.DetailType {raw.get('DetailType')}")
            detail = raw.get("AccountBasedExpenseLineDetail") or {}
            account = self._account(
                detail, "AccountRef", "Line.AccountBasedExpenseLineDetail.AccountRef"
            )
            amount = self._amount(raw.get("Amount"), "Line.Amount")
            line: dict[str, Any] = {
                "Id": str(len(lines) + 1),
                "Amount": amount,
                "DetailType": "AccountBasedExpenseLineDetail",
                "AccountBasedExpenseLineDetail": {
                    "AccountRef": {"value": account["Id"], "name": account["Name"]},
                    "BillableStatus": "NotBillable",
                    "TaxCodeRef": {"value": "NON"},
                },
            }
            if _text(raw.get("Description")) is not None:
                line["Description"] = raw["Description"]
            lines.append(line)
            total += amount
        if not lines:
            raise _business("You must fill out at least one split line.", "Line")
        row: dict[str, Any] = {
            "PaymentType": kind,
            "AccountRef": {"value": paid_from["Id"], "name": paid_from["Name"]},
            "Credit": bool(_bool(body.get("Credit"))) if kind == "CreditCard" else None,
            "Line": lines,
            "TotalAmt": total,
            "CurrencyRef": self._plain_currency(body),
        }
        if payee is not None:
            row["EntityRef"] = {
                "value": payee["Id"],
                "name": payee["DisplayName"],
                "type": _text((body.get("EntityRef") or {}).get("type")) or "Vendor",
            }
        return row

    def _deposit_row(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if body.get("CashBack"):
            raise _unsupported("Deposit.CashBack (not modelled by the emulator)")
        into = self._account(body, "DepositToAccountRef", "DepositToAccountRef", RECEIVING_TYPES)
        lines: list[dict[str, Any]] = []
        total = Decimal("0")
        for raw in self._lines(body):
            if raw.get("LinkedTxn"):
                raise _unsupported("Deposit of linked payments (not modelled by the emulator)")
            detail = raw.get("DepositLineDetail") or {}
            account = self._account(detail, "AccountRef", "Line.DepositLineDetail.AccountRef")
            amount = self._amount(raw.get("Amount"), "Line.Amount")
            stored: dict[str, Any] = {
                "AccountRef": {"value": account["Id"], "name": account["Name"]}
            }
            who = self._named_entity(detail.get("Entity"), "Line.DepositLineDetail.Entity")
            if who is not None:
                stored["Entity"] = {
                    "value": who["Id"],
                    "name": who["DisplayName"],
                    "type": _text(detail["Entity"].get("type")) or "Vendor",
                }
            line: dict[str, Any] = {
                "Id": str(len(lines) + 1),
                "LineNum": len(lines) + 1,
                "Amount": amount,
                "DetailType": "DepositLineDetail",
                "DepositLineDetail": stored,
            }
            if _text(raw.get("Description")) is not None:
                line["Description"] = raw["Description"]
            lines.append(line)
            total += amount
        if not lines:
            raise _business("You must fill out at least one split line.", "Line")
        return {
            "DepositToAccountRef": {"value": into["Id"], "name": into["Name"]},
            "Line": lines,
            "TotalAmt": total,
            "HomeTotalAmt": total,
            "CurrencyRef": self._plain_currency(body),
        }

    def _refund_receipt_row(self, body: Mapping[str, Any]) -> dict[str, Any]:
        customer = self._reference(
            "Customer", _ref_value(body, "CustomerRef"), "CustomerRef", required=True
        )
        assert customer is not None
        currency = self._currency_for(body, customer)
        paid_from = self._account(
            body, "DepositToAccountRef", "DepositToAccountRef", RECEIVING_TYPES
        )
        _length(body, "PaymentRefNum")
        lines: list[dict[str, Any]] = []
        total = Decimal("0")
        for raw in self._lines(body):
            if raw.get("DetailType") != "SalesItemLineDetail":
                raise _unsupported(f"RefundReceipt Line.DetailType {raw.get('DetailType')}")
            line = self._sales_line(raw, len(lines) + 1)
            lines.append(line)
            total += line["Amount"]
        if not lines:
            raise _business("You must fill out at least one split line.", "Line")
        return {
            "CustomerRef": {"value": customer["Id"], "name": customer["DisplayName"]},
            "DepositToAccountRef": {"value": paid_from["Id"], "name": paid_from["Name"]},
            "Line": [
                *lines,
                {"Amount": total, "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}},
            ],
            "TotalAmt": total,
            "HomeTotalAmt": total,
            "Balance": Decimal("0"),
            "CurrencyRef": self._currency_ref(currency),
            "PaymentRefNum": _text(body.get("PaymentRefNum")),
            "PrintStatus": "NotSet",
            "TxnTaxDetail": {"TotalTax": Decimal("0")},
        }

    def _sales_line(self, raw: Mapping[str, Any], number: int) -> dict[str, Any]:
        """A SalesItemLine of a refund receipt, checked as QBO checks an invoice's."""
        detail = raw.get("SalesItemLineDetail") or {}
        amount = self._amount(raw.get("Amount"), "Line.Amount")
        item = self._reference(
            "Item", _ref_value(detail, "ItemRef") or "1", "Line.SalesItemLineDetail.ItemRef"
        )
        assert item is not None
        if item.get("Type") not in SELLABLE_ITEM_TYPES:
            raise QBOFault(
                "2500",
                "Invalid Reference Id",
                "Invalid Reference Id : Categories cannot be used in transactions.",
                "Line.SalesItemLineDetail.ItemRef",
            )
        qty = _decimal(detail.get("Qty"), "Line.SalesItemLineDetail.Qty")
        price = _decimal(detail.get("UnitPrice"), "Line.SalesItemLineDetail.UnitPrice")
        if qty is not None and price is not None and qty != 0 and _money(qty * price) != amount:
            raise QBOFault(
                "6070",
                "Amount calculation incorrect in the request",
                f"Amount is not equal to Qty * UnitPrice. Supplied value:{amount}",
                "Line.Amount",
            )
        stored: dict[str, Any] = {
            "ItemRef": {"value": item["Id"], "name": item["Name"]},
            "Qty": qty if qty is not None else Decimal("1"),
            "UnitPrice": price if price is not None else amount,
        }
        tax = _ref_value(detail, "TaxCodeRef")
        if self._company.country == "US":
            if tax is not None and tax not in ("TAX", "NON"):
                raise QBOFault(
                    "6100",
                    "Invalid Line TaxCode in the request",
                    f"Valid Line TaxCodes for US should be TAX or NON. Supplied value:{tax}",
                    "Line.SalesItemLineDetail.TaxCodeRef",
                )
            stored["TaxCodeRef"] = {"value": tax or "NON"}
        else:
            if tax is None:
                raise _business(
                    "Make sure all your transactions have a GST/VAT rate before you save.",
                    "Line.SalesItemLineDetail.TaxCodeRef",
                )
            self._reference("TaxCode", tax, "Line.SalesItemLineDetail.TaxCodeRef")
            stored["TaxCodeRef"] = {"value": tax}
        line_class = self._reference(
            "Class", _ref_value(detail, "ClassRef"), "Line.SalesItemLineDetail.ClassRef"
        )
        if line_class is not None:
            stored["ClassRef"] = {"value": line_class["Id"], "name": line_class["Name"]}
        line: dict[str, Any] = {
            "Id": str(number),
            "LineNum": number,
            "Amount": amount,
            "DetailType": "SalesItemLineDetail",
            "SalesItemLineDetail": stored,
        }
        if _text(raw.get("Description")) is not None:
            line["Description"] = raw["Description"]
        return line

    def _journal_entry_row(self, body: Mapping[str, Any]) -> dict[str, Any]:
        lines: list[dict[str, Any]] = []
        debits = Decimal("0")
        credits = Decimal("0")
        for raw in self._lines(body):
            if raw.get("DetailType") != "JournalEntryLineDetail":
                raise _unsupported(f"JournalEntry Line.DetailType {raw.get('DetailType')}")
            detail = raw.get("JournalEntryLineDetail") or {}
            posting = _text(detail.get("PostingType"))
            if posting not in ("Debit", "Credit"):
                raise _required("Line.JournalEntryLineDetail.PostingType")
            account = self._account(detail, "AccountRef", "Line.JournalEntryLineDetail.AccountRef")
            amount = self._amount(raw.get("Amount"), "Line.Amount")
            stored: dict[str, Any] = {
                "PostingType": posting,
                "AccountRef": {"value": account["Id"], "name": account["Name"]},
            }
            entity = detail.get("Entity") if isinstance(detail.get("Entity"), Mapping) else None
            kind = _text((entity or {}).get("Type"))
            who = None
            if entity is not None and kind is not None:
                if kind not in ("Customer", "Vendor"):
                    raise _unsupported(f"JournalEntry line Entity.Type {kind}")
                who = self._reference(
                    kind,
                    _ref_value(entity, "EntityRef"),
                    "Line.JournalEntryLineDetail.Entity.EntityRef",
                    required=True,
                )
                assert who is not None
                stored["Entity"] = {
                    "Type": kind,
                    "EntityRef": {"value": who["Id"], "name": who["DisplayName"]},
                }
            if account.get("AccountType") == "Accounts Receivable" and kind != "Customer":
                raise _business(
                    "When you use Accounts Receivable, you must choose a customer in the Name "
                    "field.",
                    "Line.JournalEntryLineDetail.Entity",
                )
            if account.get("AccountType") == "Accounts Payable" and kind != "Vendor":
                raise _business(
                    "When you use Accounts Payable, you must choose a supplier in the Name field.",
                    "Line.JournalEntryLineDetail.Entity",
                )
            line: dict[str, Any] = {
                "Id": str(len(lines)),
                "Amount": amount,
                "DetailType": "JournalEntryLineDetail",
                "JournalEntryLineDetail": stored,
            }
            if _text(raw.get("Description")) is not None:
                line["Description"] = raw["Description"]
            lines.append(line)
            if posting == "Debit":
                debits += amount
            else:
                credits += amount
        if len(lines) < 2:
            raise _business("A journal entry needs at least one debit and one credit line.", "Line")
        if debits != credits:
            raise _business(
                f"Your Journal Entry is out of balance: debits {debits}, credits {credits}. "
                "Debits must equal credits.",
                "Line",
            )
        return {
            "Adjustment": bool(_bool(body.get("Adjustment"))),
            "Line": lines,
            "TotalAmt": debits,
            "HomeTotalAmt": debits,
            "CurrencyRef": self._plain_currency(body),
        }

    # -- name lists ------------------------------------------------------------------------

    def _write_name_list(
        self, entity: str, body: Mapping[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        row: dict[str, Any] = dict(existing or {})
        for key, value in body.items():
            if key in ("Id", "SyncToken", "MetaData", "domain", "sparse") or value in ("", []):
                continue
            row[key] = value
        name_key = "DisplayName" if entity in ("Customer", "Vendor") else "Name"
        if entity == "CompanyCurrency":
            name_key = "Code"
            if not self._multicurrency():
                raise _business("Multicurrency is not enabled for this company.", "Code")
            row.setdefault("Name", CURRENCY_NAMES.get(str(row.get("Code")), row.get("Code")))
        name = _text(row.get(name_key))
        if name is None:
            if entity == "Customer":
                raise QBOFault(
                    "6080",
                    "No Name Provided",
                    "Title, GivenName, MiddleName, FamilyName, DisplayName, Suffix - one of "
                    "these must be non-empty",
                )
            raise _required(name_key)
        for other in self._company.table(entity).values():
            if other.get(name_key) == name and other.get("Id") != row.get("Id"):
                raise QBOFault(
                    "6240",
                    "Duplicate Name Exists Error",
                    "The name supplied already exists. : Another product or service is already "
                    "using this name. Please use a different name."
                    if entity == "Item"
                    else "The name supplied already exists. : Another customer, vendor or "
                    "employee is already using this name. Please use a different name.",
                )
        row.setdefault("Active", True)
        if entity in ("Customer", "Item", "Class", "Department", "Account"):
            row["FullyQualifiedName"] = name
        if entity == "Customer":
            code = _ref_value(row, "CurrencyRef") or self._company.home_currency
            if code not in self.currencies:
                raise _business(f"The currency {code} is not enabled.", "CurrencyRef")
            row["CurrencyRef"] = self._currency_ref(code)
            row.setdefault("Balance", Decimal("0"))
        if entity == "Item" and row.get("Type") in SELLABLE_ITEM_TYPES:
            self._reference(
                "Account", _ref_value(row, "IncomeAccountRef"), "IncomeAccountRef", required=True
            )
        if existing is None:
            return self._insert(entity, row)
        existing.update(row)
        self._touch(existing)
        return existing

    # -- writes: one entry point for the API and batch ---------------------------------------

    def _write(
        self, entity: str, body: Mapping[str, Any], params: Mapping[str, str], operation: str
    ) -> tuple[dict[str, Any], bool]:
        """Apply one write; returns (the object to answer with, whether it is a deletion)."""
        if entity not in WRITABLE:
            raise _unsupported(f"{operation.capitalize()} of {entity}")
        table = self._company.table(entity)
        object_id = _text(body.get("Id"))
        existing = None
        if operation != "create" or object_id is not None:
            if object_id is None:
                raise _required("Id")
            existing = table.get(object_id)
            if existing is None:
                raise _not_found(entity, object_id)
            token = _text(body.get("SyncToken"))
            if token is None:
                raise _required("SyncToken")
            if token != existing["SyncToken"]:
                raise QBOFault(
                    "5010",
                    "Stale Object Error",
                    "Stale Object Error : You and another user were working on the same thing. "
                    "The other user finished before you did, so your work was not saved.",
                )
        if operation == "delete":
            assert existing is not None
            return self._delete(entity, existing), True
        if operation == "void":
            assert existing is not None
            if entity == "Invoice":
                return self._void_invoice(existing), False
            if entity == "Payment":
                return self._void_payment(existing), False
            raise _unsupported(f"Void of {entity}")
        sparse = _bool(body.get("sparse")) is True
        if existing is not None and sparse:
            merged = self._render(existing)
            merged.update({k: v for k, v in body.items() if k != "sparse"})
            body = merged
        if entity == "Invoice":
            return self._write_invoice(body, params, existing), False
        if entity == "Payment":
            return self._write_payment(body, params, existing), False
        if entity in MONEY_TRAIL:
            return self._write_money(entity, body, existing), False
        return self._write_name_list(entity, body, existing), False

    # -- queries ---------------------------------------------------------------------------

    def _run_query(self, text: str) -> dict[str, Any]:
        query = parse_query(text)
        entity = _canonical_entity(query.entity)
        if entity is None:
            raise QueryFault(
                QBOFault(
                    "4000",
                    "Error parsing query",
                    f"QueryParserError: Invalid entity name: {query.entity}",
                )
            )
        fields = QUERYABLE[entity]
        conditions = list(query.conditions)
        for condition in conditions:
            self._check_condition(entity, condition, fields)
        for name, _descending in query.order:
            if _canonical_field(name, fields) is None:
                raise _validation_error(f"property '{name}' is not sortable")
        if entity in NAME_LISTS and not any(
            _canonical_field(c.field, fields) == "Active" for c in conditions
        ):
            conditions.append(Condition("Active", "=", (True,)))  # inactive ones stay hidden
        rows = [
            row
            for row in self._company.table(entity).values()
            if all(self._matches(row, c, fields) for c in conditions)
        ]
        if query.count:
            return {"QueryResponse": {"totalCount": len(rows)}, "time": self._time()}
        rows.sort(key=lambda row: _sort_key(row.get("Id")))
        for name, descending in reversed(query.order):
            canonical = _canonical_field(name, fields)
            assert canonical is not None
            rows.sort(key=_sorter(canonical), reverse=descending)
        page = rows[query.start - 1 : query.start - 1 + query.max_results]
        if not page:
            return {"QueryResponse": {}, "time": self._time()}
        rendered = [self._render(row) for row in page]
        if query.fields is not None:
            wanted = {_canonical_field(f, fields) or f for f in query.fields} | {"Id"}
            rendered = [
                {**{k: v for k, v in row.items() if k in wanted}, "sparse": True}
                for row in rendered
            ]
        return {
            "QueryResponse": {
                entity: rendered,
                "startPosition": query.start,
                "maxResults": len(rendered),
            },
            "time": self._time(),
        }

    def _check_condition(
        self, entity: str, condition: Condition, fields: Mapping[str, str]
    ) -> None:
        canonical = _canonical_field(condition.field, fields)
        if canonical is None:
            known = self._known_properties(entity)
            if condition.field.split(".")[0].lower() in known:
                raise _validation_error(f"property '{condition.field}' is not queryable")
            raise _validation_error(f"Property {condition.field} not found for Entity {entity}")
        kind = fields[canonical]
        if condition.operator not in _OPERATORS_BY_KIND[kind]:
            raise _validation_error(
                f"operator '{condition.operator}' is not supported for property '{canonical}'"
            )
        for value in condition.values:
            try:
                _coerce(kind, value, self._zone)
            except (ValueError, InvalidOperation) as exc:
                raise _validation_error(
                    f"value '{value}' is not valid for property '{canonical}'"
                ) from exc

    def _known_properties(self, entity: str) -> set[str]:
        names = {"privatenote", "metadata", "syncToken".lower(), "line", "customfield"}
        for row in self._company.table(entity).values():
            names.update(key.lower() for key in row)
        schema = self._resolve_schema()
        if schema is not None and entity in schema.entities:
            names.update(_schema_children(schema, entity))
        return names

    def _matches(
        self, row: Mapping[str, Any], condition: Condition, fields: Mapping[str, str]
    ) -> bool:
        canonical = _canonical_field(condition.field, fields)
        assert canonical is not None
        kind = fields[canonical]
        actual = _field_value(row, canonical)
        if actual is None:
            return False
        actual_value = _coerce(kind, actual, self._zone)
        wanted = [_coerce(kind, value, self._zone) for value in condition.values]
        operator = condition.operator
        if operator == "IN":
            return bool(actual_value in wanted)
        if operator == "LIKE":
            pattern = "^" + ".*".join(re.escape(p) for p in str(wanted[0]).split("%")) + "$"
            return re.match(pattern, str(actual_value), re.IGNORECASE | re.DOTALL) is not None
        target = wanted[0]
        if operator == "=":
            return bool(actual_value == target)
        if operator == "<":
            return bool(actual_value < target)
        if operator == ">":
            return bool(actual_value > target)
        if operator == "<=":
            return bool(actual_value <= target)
        return bool(actual_value >= target)

    # -- change data capture -----------------------------------------------------------------

    def _cdc(self, args: Mapping[str, str]) -> dict[str, Any]:
        names = [n.strip() for n in args.get("entities", "").split(",") if n.strip()]
        since_text = args.get("changedSince", "")
        if not names:
            raise _required("entities")
        if not since_text:
            raise _required("changedSince")
        try:
            since = _parse_moment(since_text, self._zone)
        except ValueError as exc:
            raise QBOFault(
                "2010",
                "Request has invalid or unsupported property",
                f"Property Name:changedSince specified is unsupported or invalid: {since_text}",
                "changedSince",
            ) from exc
        if since < self._now() - CDC_LOOKBACK:
            raise QBOFault(
                "10000",
                "An application error has occurred while processing your request",
                f"Operation cdc with changedSince date {since_text} which is older than fixed "
                "days is not supported.",
                fault_type="SystemFault",
            )
        entities = []
        for name in names:
            entity = _canonical_entity(name)
            if entity is None or entity in ("Preferences", "CompanyInfo"):
                raise _unsupported(f"CDC of {name}")
            entities.append(entity)
        changes: list[tuple[datetime, str, dict[str, Any]]] = []
        for entity in entities:
            for row in self._company.table(entity).values():
                updated = row["MetaData"]["LastUpdatedTime"]
                if updated >= since:
                    changes.append((updated, entity, self._render(row)))
            for object_id, when in self._company.deleted.get(entity, {}).items():
                if when >= since:
                    changes.append(
                        (
                            when,
                            entity,
                            {
                                "Id": object_id,
                                "status": "Deleted",
                                "domain": "QBO",
                                "MetaData": {"LastUpdatedTime": self._local(when)},
                            },
                        )
                    )
        changes.sort(key=lambda change: change[0])
        changes = changes[: self.cdc_max_objects]
        responses = []
        for entity in entities:
            objects = [obj for _, name, obj in changes if name == entity]
            if objects:
                responses.append(
                    {
                        entity: objects,
                        "startPosition": 1,
                        "maxResults": len(objects),
                        "totalCount": len(objects),
                    }
                )
            else:
                responses.append({})
        return {"CDCResponse": [{"QueryResponse": responses}], "time": self._time()}

    # -- reports -----------------------------------------------------------------------------

    def _report(self, name: str, args: Mapping[str, str]) -> dict[str, Any]:
        """The TrialBalance report: each account's debit or credit balance over the period
        (balance sheet accounts: everything up to end_date; income and expense accounts: the
        period's activity), then the totals. Other reports are not modelled."""
        if name != "TrialBalance":
            raise _unsupported(f"report {name}")
        today = self._today()
        start = _parse_date(args.get("start_date"), "start_date") or today.replace(month=1, day=1)
        end = _parse_date(args.get("end_date"), "end_date") or today
        if start > end:
            raise QBOFault(
                "2010",
                "Request has invalid or unsupported property",
                "start_date must not be after end_date",
                "start_date",
            )
        sums: dict[str, Decimal] = {}
        accounts = self._company.table("Account")
        for lines in self._company.postings.values():
            for line in lines:
                account = accounts.get(line.account)
                if account is None or line.on > end:
                    continue
                if account.get("Classification") not in BALANCE_SHEET and line.on < start:
                    continue
                sums[line.account] = sums.get(line.account, Decimal("0")) + line.debit
        rows: list[dict[str, Any]] = []
        total_debit = Decimal("0")
        total_credit = Decimal("0")
        for account_id in sorted(sums, key=_sort_key):
            amount = sums[account_id]
            if amount == 0:
                continue
            debit = amount if amount > 0 else None
            credit = -amount if amount < 0 else None
            total_debit += debit or 0
            total_credit += credit or 0
            rows.append(
                {
                    "ColData": [
                        {"value": accounts[account_id]["Name"], "id": account_id},
                        {"value": f"{debit:.2f}" if debit is not None else ""},
                        {"value": f"{credit:.2f}" if credit is not None else ""},
                    ]
                }
            )
        rows.append(
            {
                "Summary": {
                    "ColData": [
                        {"value": "TOTAL"},
                        {"value": f"{total_debit:.2f}"},
                        {"value": f"{total_credit:.2f}"},
                    ]
                },
                "type": "Section",
                "group": "GrandTotal",
            }
        )
        return {
            "Header": {
                "Time": self._local(self._now()),
                "ReportName": "TrialBalance",
                "ReportBasis": "Accrual",
                "StartPeriod": start.isoformat(),
                "EndPeriod": end.isoformat(),
                "Currency": self._company.home_currency,
                "Option": [{"Name": "NoReportData", "Value": "false" if sums else "true"}],
            },
            "Columns": {
                "Column": [
                    {"ColTitle": "", "ColType": "Account"},
                    {"ColTitle": "Debit", "ColType": "Money"},
                    {"ColTitle": "Credit", "ColType": "Money"},
                ]
            },
            "Rows": {"Row": rows},
        }

    # -- HTTP entry ------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/__admin/"):
            return self._admin(request)
        violations: list[str] = []
        outcome = _Outcome(Response(status=500))
        try:
            outcome = self._answer(request, violations)
        except Exception:  # an emulator bug: answer like QBO's system fault, keep the traceback
            self.internal_errors.append(traceback.format_exc())
            outcome = _Outcome(
                self._fault(
                    QBOFault(
                        "10000",
                        "An application error has occurred while processing your request",
                        "System Failure Error: emulator internal error",
                        status=500,
                        fault_type="SystemFault",
                    )
                )
            )
        self.log.add(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string.decode("latin-1"),
                headers=dict(request.headers),
                body=request.get_data(),
                status=outcome.response.status_code,
                violations=tuple(violations),
            )
        )
        if outcome.write and outcome.response.status_code < 300:
            with self._lock:
                drop = self._drop_every_write and outcome.transaction_write
                if not drop and self._drop_writes > 0:
                    self._drop_writes -= 1
                    drop = True
            if drop:
                raise drop_connection(request)
        return outcome.response

    def _answer(self, request: Request, violations: list[str]) -> _Outcome:
        path = request.path
        if path in (
            "/.well-known/openid_configuration",
            "/.well-known/openid_sandbox_configuration",
        ):
            return _Outcome(_json(200, self._discovery(request)))
        if path == "/connect/oauth2":
            return _Outcome(self.oauth.authorize(request))
        if path == "/oauth2/v1/tokens/bearer":
            return _Outcome(self.oauth.token(request))
        if path == "/v2/oauth2/tokens/revoke":
            return _Outcome(self.oauth.revoke(request))
        if path == "/op/v1/jwks":
            return _Outcome(_json(200, {"keys": []}))
        if path == "/v1/openid_connect/userinfo":
            status, _grant = self.oauth.bearer(request.headers.get("Authorization"))
            if status != "ok":
                return _Outcome(_json(401, {"error": "invalid_token"}))
            return _Outcome(_json(200, {"sub": "emulated-user", "email": "admin@example.com"}))
        match = re.fullmatch(r"/v3/company/([^/]+)/(.+)", path)
        if match is None:
            return _Outcome(_json(404, {"error": f"no such resource {path}"}))
        realm, rest = match.group(1), match.group(2)
        refusal = self._authenticate(request, realm)
        if refusal is not None:
            return _Outcome(refusal)
        minor = request.args.get("minorversion")
        self.minor_versions.append(minor)
        if minor is None:
            violations.append("minorversion missing: QBO would default to 75; pin it on every call")
        elif not minor.isdigit():
            violations.append(f"minorversion {minor!r} is not a number")
        is_batch = rest == "batch"
        throttled = self._throttle(is_batch)
        if throttled is not None:
            return _Outcome(throttled)
        with self._lock:
            injected = self._injected.pop(0) if self._injected else None
            self._in_flight += 1
        try:
            if injected is not None:
                return _Outcome(self._injected_response(*injected))
            if self.latency > 0:
                self.time.sleep(self.latency)
            return self._api(request, rest, violations)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _discovery(self, request: Request) -> dict[str, Any]:
        base = request.host_url.rstrip("/")
        return {
            "issuer": base + "/op/v1",
            "authorization_endpoint": base + "/connect/oauth2",
            "token_endpoint": base + "/oauth2/v1/tokens/bearer",
            "userinfo_endpoint": base + "/v1/openid_connect/userinfo",
            "revocation_endpoint": base + "/v2/oauth2/tokens/revoke",
            "jwks_uri": base + "/op/v1/jwks",
            "response_types_supported": ["code"],
            "scopes_supported": ["openid", "email", "profile", "address", "phone", QBO_SCOPE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def _authenticate(self, request: Request, realm: str) -> Response | None:
        status, grant = self.oauth.bearer(request.headers.get("Authorization"))
        if status != "ok":
            detail = {
                "missing": "Missing bearer token",
                "invalid": "Malformed bearer token: too short or too long",
                "expired": "Token expired",
                "revoked": "Token revoked",
            }[status]
            return _json(
                401,
                {
                    "warnings": None,
                    "intuitObject": None,
                    "fault": {
                        "error": [
                            {
                                "message": "message=AuthenticationFailed; errorCode=003200; "
                                "statusCode=401",
                                "detail": detail,
                                "code": "3200",
                                "element": None,
                            }
                        ],
                        "type": "AUTHENTICATION",
                    },
                    "report": None,
                    "queryResponse": None,
                    "batchItemResponse": [],
                    "attachableResponse": [],
                    "syncErrorResponse": None,
                    "requestId": None,
                    "time": int(self._now().timestamp() * 1000),
                    "status": None,
                    "cdcresponse": [],
                },
                {"WWW-Authenticate": 'Bearer realm="Intuit", error="invalid_token"'},
            )
        assert grant is not None
        if grant.extra.get("realmId") != realm or realm != self.realm_id:
            return _json(
                403,
                {
                    "warnings": None,
                    "intuitObject": None,
                    "fault": {
                        "error": [
                            {
                                "message": "message=AuthorizationFailed; errorCode=003100; "
                                "statusCode=403",
                                "detail": None,
                                "code": "3100",
                                "element": None,
                            }
                        ],
                        "type": "SERVICE",
                    },
                    "requestId": None,
                    "time": int(self._now().timestamp() * 1000),
                },
            )
        return None

    def _throttle(self, is_batch: bool) -> Response | None:
        if not self.limits:
            return None
        with self._lock:
            now = self.time.monotonic()
            for window in (self._window, self._batch_window):
                while window and now - window[0] >= 60.0:
                    window.popleft()
            over = (
                len(self._window) >= self.per_minute
                or self._in_flight >= self.concurrent
                or (is_batch and len(self._batch_window) >= self.batch_per_minute)
            )
            if not over:
                self._window.append(now)
                if is_batch:
                    self._batch_window.append(now)
                return None
            self.throttled += 1
            self._throttle_count += 1
            if self.throttle_form == "alternate":
                form = "json" if self._throttle_count % 2 else "xml"
            else:
                form = self.throttle_form
        return self._throttle_response(form)

    def _throttle_response(self, form: str) -> Response:
        if form == "xml":
            return Response(
                _XML_THROTTLE.format(time=self._time()),
                status=429,
                content_type="application/xml;charset=UTF-8",
                headers={"intuit_tid": str(uuid.uuid4())},
            )
        return _json(
            429,
            {
                "Fault": {
                    "Error": [
                        {
                            "Message": "message=ThrottleExceeded; errorCode=003001; statusCode=429",
                            "Detail": "The request limit was reached.  Try again later",
                            "code": "3001",
                        }
                    ],
                    "type": "SERVICE",
                },
                "time": self._time(),
            },
        )

    def _injected_response(self, status: int, form: str) -> Response:
        if status == 429:
            return self._throttle_response(form)
        if form == "html":
            return Response(
                f"<html><body><h1>{status} Service Unavailable</h1></body></html>",
                status=status,
                content_type="text/html",
            )
        if form == "xml":
            return Response(
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                f'<IntuitResponse time="{self._time()}" '
                'xmlns="http://schema.intuit.com/finance/v3"><Fault type="SystemFault">'
                '<Error code="10000"><Message>An application error has occurred while '
                "processing your request</Message><Detail>System Failure Error: An unexpected "
                "error occurred while accessing or saving your data. Please wait a few minutes "
                "and try again.</Detail></Error></Fault></IntuitResponse>",
                status=status,
                content_type="application/xml;charset=UTF-8",
            )
        return self._fault(
            QBOFault(
                "10000",
                "An application error has occurred while processing your request",
                "System Failure Error: An unexpected error occurred while accessing or saving "
                "your data. Please wait a few minutes and try again.",
                status=status,
                fault_type="SystemFault",
            )
        )

    def _resolve_schema(self) -> QuickBooksSchema | None:
        if not self._validate:
            return None
        if not self._schema_resolved:
            self._schema = quickbooks_schema()
            self._schema_resolved = True
        return self._schema

    def _check_body(self, entity: str, body: Any, violations: list[str]) -> QBOFault | None:
        """XSD violations of one entity body: recorded, and the QBO fault to answer with."""
        schema = self._resolve_schema()
        if schema is None:
            return None
        found = [
            line
            for line in schema.violations(entity, body)
            # the XSD's one known defect on these entities [V:transfer]
            if not (entity == "Transfer" and "Tag 'TransferEx' expected" in line)
        ]
        if not found:
            return None
        violations.extend(found)
        if any("value must be one of" in line for line in found):
            return QBOFault("2170", "Invalid Enumeration", "; ".join(found))
        return QBOFault(
            "2010",
            "Request has invalid or unsupported property",
            "; ".join(found),
        )

    def _api(self, request: Request, rest: str, violations: list[str]) -> _Outcome:
        args = request.args
        request_id = args.get("requestid")
        if request_id is not None and len(request_id) > 50:
            violations.append(f"requestid longer than 50 characters ({len(request_id)})")
        if request.method != "POST" or request_id is None:
            return self._execute(request, rest, violations)
        with self._lock:
            gate = self._request_gates.setdefault(request_id, threading.Lock())
        with gate:  # two requests with one requestid never both run
            with self._lock:
                stored = self._company.replies.get(request_id)
            if stored is not None:
                status, body, content_type = stored
                return _Outcome(
                    Response(body, status=status, content_type=content_type), write=True
                )
            outcome = self._execute(request, rest, violations)
            if outcome.storable:
                self._store_reply(request_id, outcome.response)
            return outcome

    def _execute(self, request: Request, rest: str, violations: list[str]) -> _Outcome:
        try:
            return self._route(request, rest, violations)
        except QBOFault as fault:
            outcome = _Outcome(self._fault(fault), write=request.method == "POST")
            outcome.storable = self.replay_failures and not violations
            return outcome
        except QueryFault as fault:
            return _Outcome(self._fault(fault.fault))

    def _store_reply(self, request_id: str, response: Response) -> None:
        """Keep the first answer per (realm, requestid) [V:requestid].

        Intuit says a repeated requestid gets "the same response as it did for the original
        request" and does not say whether a refused request counts. This emulator stores
        successful writes always and refused ones only with `replay_failures=True`: by default a
        request refused for bad data (closed period, archived item) can succeed later under the
        same requestid once an admin fixed the cause. XSD-refused bodies are never stored."""
        with self._lock:
            self._company.replies.setdefault(
                request_id,
                (response.status_code, response.get_data(), response.content_type or ""),
            )

    def _route(self, request: Request, rest: str, violations: list[str]) -> _Outcome:
        method = request.method
        parts = rest.split("/")
        if rest == "query":
            if method == "POST":
                content_type = (request.content_type or "").split(";")[0].strip()
                if content_type not in ("application/text", "text/plain"):
                    violations.append(
                        f"query sent as {content_type or 'no content type'}: QBO wants "
                        "application/text"
                    )
                text = request.get_data(as_text=True)
            else:
                text = request.args.get("query", "")
            with self._lock:
                return _Outcome(_json(200, self._run_query(text)))
        if rest == "cdc" and method == "GET":
            with self._lock:
                return _Outcome(_json(200, self._cdc(request.args)))
        if rest == "batch" and method == "POST":
            return self._batch(request, violations)
        if len(parts) == 3 and parts[0] == "invoice" and parts[2] == "send" and method == "POST":
            return self._send(request, parts[1])
        if len(parts) == 2 and parts[0] == "reports" and method == "GET":
            with self._lock:
                return _Outcome(_json(200, self._report(parts[1], request.args)))
        entity = ENTITIES.get(parts[0].lower())
        if entity is None:
            raise _unsupported(f"{method} {rest}")
        if method == "GET":
            with self._lock:
                if entity == "Preferences" and len(parts) == 1:
                    return _Outcome(self._reply(entity, self._preferences()))
                if len(parts) != 2:
                    raise _unsupported(f"GET {rest}")
                row = self._company.table(entity).get(parts[1])
                if row is None:
                    raise _not_found(entity, parts[1])
                return _Outcome(self._reply(entity, row))
        if method != "POST" or len(parts) != 1:
            raise _unsupported(f"{method} {rest}")
        content_type = (request.content_type or "").split(";")[0].strip()
        if content_type != "application/json":
            violations.append(f"{entity} body sent as {content_type or 'no content type'}")
        try:
            body = json.loads(request.get_data() or b"null", parse_float=Decimal)
        except ValueError as exc:
            raise QBOFault(
                "2010", "Request has invalid or unsupported property", f"Malformed JSON: {exc}"
            ) from exc
        operation = _operation(request.args)
        fault = self._check_body(entity, body, violations)
        if fault is not None:
            raise fault
        with self._lock:
            row, deleted = self._write(entity, body, request.args, operation)
            response = (
                _json(200, {entity: row, "time": self._time()})
                if deleted
                else self._reply(entity, row)
            )
        return _Outcome(
            response,
            write=True,
            transaction_write=entity in TRANSACTIONS,
            storable=True,
        )

    def _send(self, request: Request, invoice_id: str) -> _Outcome:
        send_to = request.args.get("sendTo")
        with self._lock:
            invoice = self._company.table("Invoice").get(invoice_id)
            if invoice is None:
                raise _not_found("Invoice", invoice_id)
            address = send_to or (invoice.get("BillEmail") or {}).get("Address")
            if not address:
                raise _business(
                    "An email address is required to send this invoice: add one to the invoice "
                    "(BillEmail) or the customer, or pass sendTo.",
                    "BillEmail",
                )
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                raise QBOFault(
                    "2210",
                    "Invalid Email Address format",
                    "Email Address does not conform to the syntax rules of RFC 822.",
                    "BillEmail",
                )
            if send_to:
                invoice["BillEmail"] = {"Address": send_to}
            invoice["EmailStatus"] = "EmailSent"
            invoice["DeliveryInfo"] = {"DeliveryType": "Email", "DeliveryTime": self._now()}
            self._company.emails.setdefault(invoice_id, []).append(address)
            self._touch(invoice, operation="Emailed")
            response = self._reply("Invoice", invoice)
        return _Outcome(response, write=True, transaction_write=True, storable=True)

    def _batch(self, request: Request, violations: list[str]) -> _Outcome:
        try:
            body = json.loads(request.get_data() or b"null", parse_float=Decimal)
        except ValueError as exc:
            raise QBOFault(
                "2010", "Request has invalid or unsupported property", f"Malformed JSON: {exc}"
            ) from exc
        items = body.get("BatchItemRequest") if isinstance(body, Mapping) else None
        if not isinstance(items, list):
            raise _required("BatchItemRequest")
        if len(items) > MAX_BATCH_ITEMS:
            raise _unsupported(f"Batch of {len(items)} items (at most {MAX_BATCH_ITEMS})")
        answers = []
        transaction_write = False
        for item in items:
            bid = str(item.get("bId", ""))
            if "Query" in item:
                try:
                    with self._lock:
                        answer = self._run_query(str(item["Query"]))
                    answers.append({"bId": bid, "QueryResponse": answer["QueryResponse"]})
                except QueryFault as refused:
                    answers.append({"bId": bid, "Fault": refused.fault.body()["Fault"]})
                continue
            operation = str(item.get("operation", "create"))
            names = [k for k in item if k not in ("bId", "operation", "optionsData")]
            entity = names[0] if len(names) == 1 else None
            if entity is None or entity not in WRITABLE:
                unknown = _unsupported(f"batch item {names}")
                answers.append({"bId": bid, "Fault": unknown.body()["Fault"]})
                continue
            item_violations: list[str] = []
            invalid = self._check_body(entity, item[entity], item_violations)
            violations.extend(f"BatchItemRequest bId={bid}: {v}" for v in item_violations)
            if invalid is not None:
                answers.append({"bId": bid, "Fault": invalid.body()["Fault"]})
                continue
            try:
                with self._lock:
                    row, deleted = self._write(entity, item[entity], {}, operation)
                    rendered = row if deleted else self._render(row)
                answers.append({"bId": bid, entity: rendered})
                transaction_write = transaction_write or entity in TRANSACTIONS
            except QBOFault as refusal:
                answers.append({"bId": bid, "Fault": refusal.body()["Fault"]})
        response = _json(200, {"BatchItemResponse": answers, "time": self._time()})
        return _Outcome(response, write=True, transaction_write=transaction_write, storable=True)

    # -- admin over HTTP (for the sandbox; not logged, no auth) ------------------------------

    def _admin(self, request: Request) -> Response:
        parts = [p for p in request.path.removeprefix("/__admin/").split("/") if p]
        try:
            body = json.loads(request.get_data() or b"{}")
            result = self._admin_dispatch(request.method, parts, body)
        except KeyError as exc:
            return _json(404, {"error": f"not found: {exc}"})
        except (TypeError, ValueError, InvalidOperation, QBOFault) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, result)

    def _admin_dispatch(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        match method, parts:
            case "POST", ["connect"]:
                return self.connect()
            case "POST", ["customers"]:
                return {"id": self.add_customer(**body)}
            case "POST", ["items"]:
                return {"id": self.add_item(**body)}
            case "POST", ["items", item, "archive"]:
                self.archive_item(item)
                return {}
            case "GET", ["invoices"]:
                return self.invoices()
            case "POST", ["invoices", invoice_id, "pay"]:
                return {"id": self.pay_externally(invoice_id, Decimal(str(body["amount"])))}
            case "POST", ["invoices", invoice_id, "void"]:
                self.void_invoice(invoice_id)
                return {}
            case "POST", ["book_close_date"]:
                value = body.get("date")
                self.set_book_close_date(date.fromisoformat(value) if value else None)
                return {}
            case "POST", ["multicurrency"]:
                self.enable_multicurrency(*body.get("currencies", []))
                return {"currencies": self.currencies}
            case "POST", ["fail_next"]:
                self.fail_next(
                    int(body.get("count", 1)),
                    int(body.get("status", 503)),
                    body.get("form", "json"),
                )
                return {}
            case "POST", ["drop_next_writes"]:
                self.drop_next_writes(int(body.get("count", 1)))
                return {}
            case "POST", ["expire_tokens"]:
                self.expire_access_tokens()
                return {}
            case "GET", ["violations"]:
                return self.violations()
            case "POST", ["webhooks"]:
                self.add_webhook(
                    str(body["url"]),
                    str(body["verifier_token"]),
                    body.get("payload", "cloudevents"),
                    duplicates=bool(body.get("duplicates", False)),
                )
                return {}
            case "POST", ["webhooks", "deliver"]:
                return [
                    {"url": d.url, "status": d.status, "error": d.error}
                    for d in self.deliver_pending()
                ]
        raise KeyError(f"{method} /__admin/{'/'.join(parts)}")


# ---------------------------------------------------------------------------------------------
# Module helpers


def _operation(args: Mapping[str, str]) -> str:
    operation = (args.get("operation") or "").lower()
    if operation == "update" and "void" in (args.get("include") or "").lower():
        return "void"  # Payment / SalesReceipt void [REF A3]
    if operation in ("delete", "void"):
        return operation
    return "update" if operation == "update" else "create"


def _canonical_entity(name: str) -> str | None:
    return ENTITIES.get(name.lower())


def _canonical_field(name: str, fields: Mapping[str, str]) -> str | None:
    for known in fields:
        if known.lower() == name.lower():
            return known
    return None


def _field_value(row: Mapping[str, Any], field: str) -> Any:
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    if isinstance(value, Mapping):  # a reference compares by its value
        value = value.get("value")
    return value


def _parse_moment(text: str, zone: tzinfo) -> datetime:
    text = text.strip().replace("Z", "+00:00")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return datetime.fromisoformat(text).replace(tzinfo=zone)
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def _coerce(kind: str, value: Any, zone: tzinfo) -> Any:
    if kind == "id":
        return int(str(value))
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    if kind == "datetime":
        if isinstance(value, datetime):
            return value
        return _parse_moment(str(value), zone)
    if kind == "bool":
        result = _bool(value)
        if result is None:
            raise ValueError(f"{value!r} is not a boolean")
        return result
    return str(value).casefold()  # string comparisons ignore case, as QBO's do


def _sorter(field: str) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    return lambda row: _sort_key(_field_value(row, field))


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, str) and value.isdigit():
        return (1, int(value))
    if isinstance(value, datetime):
        return (2, value.timestamp())
    if isinstance(value, Decimal | int | float):
        return (1, value)
    return (3, str(value).casefold())


def _schema_children(schema: QuickBooksSchema, entity: str) -> set[str]:
    """Property names of an entity in the XSD, to tell 'not queryable' from 'no such field'."""
    try:
        content: Any = getattr(schema._schema.elements[entity].type, "content", None)
        return {_strip(child.name).lower() for child in content.iter_elements()}
    except Exception:  # a schema shape this walk does not know: fall back to the known list
        return set()


def _strip(name: str | None) -> str:
    return (name or "").rsplit("}", 1)[-1]
