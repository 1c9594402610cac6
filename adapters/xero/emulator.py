"""A stateful local emulator of Xero (Accounting API 2.0, identity, OAuth 2) for tests and the
sandbox: organisations with accounts, tax rates, tracking, items and contacts; sales invoices,
payments and emails; Xero's idempotency, rate limits, paging and filters; injected faults.

Behaviour follows ../shared/reference/ledger-and-payment-apis.md section B and Pitfalls [REF],
Xero's OpenAPI files [SPEC] and the facts in `MESSAGES` below, each tagged with where it came
from. Every /api.xro/2.0 and /Connections request is checked against Xero's OpenAPI
description when it is found beside the checkout; a request Xero would refuse gets Xero's 400
and is recorded, so `violations() == []` in a test proves the client spoke valid Xero."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import string
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.emulation.oauth import Grant, OAuthPolicy, OAuthServer
from adapters.emulation.openapi import OpenAPIContract
from adapters.emulation.server import (
    EmulatorServer,
    RecordedRequest,
    RequestLog,
    ServedEmulator,
    drop_connection,
)
from adapters.emulation.specs import spec_path

__all__ = [
    "ACCOUNTING_SPEC",
    "IDENTITY_SPEC",
    "MESSAGES",
    "XeroEmulator",
    "XeroValidationError",
]

ACCOUNTING_SPEC = "xero/xero_accounting.yaml"
IDENTITY_SPEC = "xero/xero-identity.yaml"
API_PREFIX = "/api.xro/2.0"
AUTHORIZE_PATH = "/identity/connect/authorize"
TOKEN_PATH = "/connect/token"
REVOKE_PATH = "/connect/revocation"
CONNECTIONS_PATH = "/Connections"

CLIENT_ID = "xero-emulator-client"
CLIENT_SECRET = "xero-emulator-secret"
SCOPES = (
    "openid",
    "profile",
    "email",
    "offline_access",
    "accounting.transactions",
    "accounting.contacts",
    "accounting.settings",
)
# [REF B1, DOC developer.xero.com/faq/oauth2]: access 30 min; refresh rotates, 60 days unused;
# the previous refresh token may be retried for 30 minutes; client credentials in the body.
XERO_OAUTH = OAuthPolicy(
    access_ttl=timedelta(minutes=30),
    refresh_ttl=timedelta(days=60),
    rotation_grace=timedelta(minutes=30),
    client_auth="body",
    scopes=SCOPES,
)

# [REF B4, DOC developer.xero.com/faq/limits]
MINUTE_LIMIT = 60
DAY_LIMIT = 5000
CONCURRENT_LIMIT = 5
APP_MINUTE_LIMIT = 10_000
MAX_BODY_BYTES = int(3.5 * 1024 * 1024)  # "Request ≤3.5 MB" [REF B4]
PAGE_SIZE = 100  # "Up to 100 invoices will be returned in a single API call" [SPEC getInvoices]
MAX_PAGE_SIZE = 1000
# Keys are kept about 6 minutes; same key + different request -> 400; errors are replayed too
# (Xero's idempotency guide as quoted in XeroAPI/xero-prompt-library python/SKILL.md).
IDEMPOTENCY_TTL = timedelta(minutes=6)
IDEMPOTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SENDABLE_STATUSES = frozenset({"SUBMITTED", "AUTHORISED", "PAID"})  # [DOC via docs.zynk.com]
# The seeded chart's system accounts, where the double entry lands: receivables, sales tax, and
# the prior years' profit (the trial balance shows it as retained earnings)
AR_CODE = "610"
TAX_CODE = "820"
RETAINED_CODE = "960"
SYSTEM_ACCOUNTS = frozenset({AR_CODE, TAX_CODE, RETAINED_CODE})
WEBHOOKS_SPEC = "xero/xero-webhooks.yaml"
API_RESOURCE_URL = "https://api.xero.com/api.xro/2.0"

# Validation texts Xero answers with, and where each wording comes from:
#   [XERO]  Xero's own material (spec, docs, XeroAPI repositories)
#   [SEEN]  quoted from Xero responses by several unrelated integrators' code and fixtures
#   [ONE]   quoted by one integrator only
#   [GUESS] not found anywhere: our wording, kept close to Xero's style
MESSAGES: dict[str, str] = {
    "duplicate_number": "Invoice # must be unique.",  # [SEEN]
    "contact_missing": "The contact with the specified ContactID could not be found.",  # [GUESS]
    "contact_archived": "The contact is archived and cannot be used.",  # [ONE]
    "contact_required": "A Contact must be specified for this type of transaction",  # [ONE]
    "item_invalid": "Item code '{code}' is not valid.",  # [GUESS]
    "item_not_sold": "Item code '{code}' cannot be used on sales transactions.",  # [GUESS]
    "account_invalid": "Account code '{code}' is not a valid code for this document.",  # [SEEN]
    "account_archived": (  # [SEEN]
        "Account code '{code}' has been archived, or has been deleted. Each line item must "
        "reference a valid account."
    ),
    "account_required": "Account code must be specified for each line item.",  # [GUESS]
    "tax_invalid": (  # [ONE]; "cannot be used with account code" variant is [XERO docs]
        "The TaxType code '{code}' does not exist or cannot be used with this type of document."
    ),
    "currency_not_enabled": "Organisation is not subscribed to currency {code}",  # [SEEN]
    "period_lock": "The document date cannot be before the period lock date of {date}.",  # [SEEN]
    "year_lock": "The document date cannot be before the end of year lock date of {date}.",
    "due_date_required": "The document DueDate field must be specified.",  # [ONE: xeroizer#290]
    "description_required": "The Description field is mandatory for each Line Item.",  # [GUESS]
    "tracking_invalid": "Tracking option '{option}' of category '{name}' is not valid.",
    "invoice_missing": "An existing Invoice with the specified InvoiceID could not be found",
    "invalid_status": "Invoice not of valid status for modification",  # [ONE] (PHPAccounting)
    "has_payments": (  # [ONE]
        "This document cannot be edited as it has a payment or credit note allocated to it."
    ),
    "void_with_payments": (  # [ONE]
        "The status VOIDED cannot be applied to the invoice because it has payments or credit "
        "notes allocated to it."
    ),
    "create_status": "Invoices can only be created as DRAFT, SUBMITTED or AUTHORISED.",  # [GUESS]
    "type_unsupported": "Only ACCREC (sales) invoices are emulated.",  # emulator's own limit
    "line_items_required": "At least one line item must be specified.",  # [GUESS]
    "total_negative": "The invoice total must be zero or greater.",  # [GUESS]
    "payment_not_authorised": "Payments can only be made against Authorised documents",  # [ONE]
    "payment_exceeds": "Payment amount exceeds the amount outstanding on this document",  # [SEEN]
    "payment_amount": "Payment amount must be greater than zero.",  # [GUESS]
    "payment_account": (  # [GUESS]
        "Account code '{code}' cannot accept payments: use a bank account or an account with "
        "payments enabled."
    ),
    "payment_invalid_status": "Payment not of valid status for modification",  # [ONE]
    "email_type": "Only sales invoices (ACCREC) can be emailed.",  # [GUESS]
    "email_status": (  # rule: [XERO docs via docs.zynk.com], wording [GUESS]
        "The invoice must be SUBMITTED, AUTHORISED or PAID to be emailed."
    ),
    "email_no_address": "The contact does not have an email address.",  # [GUESS]
    "email_limit": "The daily limit of invoice emails for this organisation was reached.",
    "idempotency_mismatch": (  # [ONE], rule [XERO prompt library: 400 "used with a different]
        "Idempotency Key: {key} is used with a different request."
    ),
    "sent_not_approved": "SentToContact can only be set on approved invoices.",  # [SPEC]
    # the money trail: bank transfers, spend/receive money, credit notes and their refunds
    "credit_note_missing": (  # [GUESS], shaped like invoice_missing
        "An existing Credit Note with the specified CreditNoteID could not be found"
    ),
    "bank_account_invalid": (  # [GUESS]; the rule (BANK accounts only) is Xero's [DOC]
        "Account code '{code}' is not a bank account. Bank transactions and transfers need a "
        "bank account."
    ),
    "transfer_same_account": "The From and To bank accounts must be different.",  # [GUESS]
    "transfer_amount": "The transfer amount must be greater than zero.",  # [GUESS]
    "bank_type_unsupported": "Only SPEND and RECEIVE bank transactions are emulated.",  # own
    "bank_total": "The bank transaction total must be greater than zero.",  # [GUESS]
    "credit_type_unsupported": "Only ACCRECCREDIT (sales) credit notes are emulated.",  # own
    "credit_status": (  # [GUESS]
        "Credit notes can only be created as DRAFT, SUBMITTED or AUTHORISED."
    ),
    "allocation_status": (  # rule [DOC waymark/Xero docs: AUTHORISED before allocating]
        "Allocations can only be made from an AUTHORISED credit note to an AUTHORISED invoice."
    ),
    "allocation_contact": (  # [GUESS]
        "The credit note and the invoice must be for the same contact and currency."
    ),
    "allocation_exceeds": (  # [GUESS]
        "The amount allocated exceeds the remaining credit or the amount due on the invoice."
    ),
    "contact_name_required": "The contact name must be specified.",  # [GUESS]
    "contact_name_taken": (  # [SEEN]
        "The contact name {name} is already assigned to another contact. The contact name "
        "must be unique across all active contacts."
    ),
}


class XeroValidationError(ValueError):
    """What Xero refuses with a ValidationException; the admin API raises it directly."""

    def __init__(self, messages: str | Sequence[str]) -> None:
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("; ".join(self.messages))


def _msg(name: str, **values: Any) -> str:
    return MESSAGES[name].format(**values)


# ---------------------------------------------------------------------------------------------
# Xero's OpenAPI descriptions, loaded once per process


_CONTRACTS: dict[tuple[Path, str], OpenAPIContract] = {}
_CONTRACTS_LOCK = threading.Lock()


def _load_contract(relative: str, prefix: str) -> OpenAPIContract | None:
    path = spec_path(relative)
    if path is None:
        return None
    with _CONTRACTS_LOCK:
        contract = _CONTRACTS.get((path, prefix))
        if contract is None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            spec = yaml.load(path.read_text(), Loader=loader)
            _relax_spec_defects(spec)
            contract = OpenAPIContract(spec, path_prefix=prefix)
            _CONTRACTS[(path, prefix)] = contract
        return contract


def accounting_contract() -> OpenAPIContract | None:
    """Xero's Accounting API description as a request checker, or None without the file."""
    return _load_contract(ACCOUNTING_SPEC, API_PREFIX)


def identity_contract() -> OpenAPIContract | None:
    return _load_contract(IDENTITY_SPEC, "")


def _relax_spec_defects(spec: dict[str, Any]) -> None:
    """Loosen what the file gets wrong about Xero (see contract-validation.md).

    - OAuth2 security: openapi-core cannot check it and warns on every request ("Unsupported
      scheme type"), which pytest turns into errors; the emulator checks the bearer itself.
    - `Has*` flags are marked readOnly, yet xero-python sends `HasAttachments: false` and
      `HasErrors: false` on every invoice and Xero accepts them [REF B3]. Other readOnly
      fields (Total, AmountDue...) stay refused, so a client sending them is noticed."""
    spec.pop("security", None)
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict):
                operation.pop("security", None)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                for name, schema in properties.items():
                    if name.startswith("Has") and isinstance(schema, dict):
                        schema.pop("readOnly", None)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.get("components", {}).get("schemas", {}))


# ---------------------------------------------------------------------------------------------
# Wire formats: /Date(ms+0000)/, money, GUIDs


CENT = Decimal("0.01")
_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def ms_date(value: date | datetime | None) -> str | None:
    """Xero's JSON date: /Date(1768435200000+0000)/ (dates are midnight UTC)."""
    if value is None:
        return None
    moment = _utc(value) if isinstance(value, datetime) else _midnight(value)
    return f"/Date({int(moment.timestamp() * 1000)}+0000)/"


def parse_ms_datetime(text: str) -> datetime | None:
    match = _MS_DATE.match(text.strip())
    if match is None:
        return None
    return datetime.fromtimestamp(int(match.group(1)) / 1000, tz=UTC)


def parse_date(value: Any) -> date:
    """A date as Xero accepts it: /Date(ms)/, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss."""
    text = str(value).strip()
    moment = parse_ms_datetime(text)
    if moment is not None:
        return moment.date()
    try:
        return date.fromisoformat(text[:10])
    except ValueError as exc:
        raise XeroValidationError(f"The date '{text}' is not a valid date") from exc


def _parse_moment_header(text: str) -> datetime:
    """If-Modified-Since: ISO 8601 (naive means UTC) or an RFC 1123 HTTP date."""
    text = text.strip()
    try:
        return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return _utc(parsedate_to_datetime(text))


def _dec(value: Any, default: Decimal | None = None) -> Decimal | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise XeroValidationError(f"'{value}' is not a number")
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:
        raise XeroValidationError(f"'{value}' is not a number") from exc
    if not result.is_finite():
        raise XeroValidationError(f"'{value}' is not a number")
    return result


def _round(amount: Decimal, places: Decimal = CENT) -> Decimal:
    return amount.quantize(places, rounding=ROUND_HALF_UP)


def _is_guid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # Xero sends money as JSON numbers; SDKs parse them as Decimal
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, default=_json_default),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json; charset=utf-8",
    )


def _problem(status: int, title: str, detail: str) -> Response:
    """Identity-style errors (401, 403) as Xero's API gateway answers them."""
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else {}
    return _json(
        status,
        {
            "Type": None,
            "Title": title,
            "Status": status,
            "Detail": detail,
            "Instance": str(uuid.uuid4()),
            "Extensions": {},
        },
        headers,
    )


def _api_exception(number: int, kind: str, message: str, status: int = 400) -> Response:
    """ErrorNumber 14 PostDataInvalidException (bad body), 16 QueryParseException (bad query)."""
    return _json(status, {"ErrorNumber": number, "Type": kind, "Message": message})


def _validation_exception(elements: Sequence[Mapping[str, Any]]) -> Response:
    """[REF B3, What a faithful fake must do]: 400, ErrorNumber 10, per-element messages."""
    return _json(
        400,
        {
            "ErrorNumber": 10,
            "Type": "ValidationException",
            "Message": "A validation exception occurred",
            "Elements": list(elements),
        },
    )


class _Refusal(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _refuse_validation(messages: str | Sequence[str], element: Mapping[str, Any] | None = None):
    listed = [messages] if isinstance(messages, str) else list(messages)
    return _Refusal(
        _validation_exception(
            [{**(element or {}), "ValidationErrors": [{"Message": m} for m in listed]}]
        )
    )


def _query_error(message: str) -> _Refusal:
    return _Refusal(_api_exception(16, "QueryParseException", message))


def _not_found() -> _Refusal:
    return _Refusal(
        _json(404, {"Title": "NotFound", "Status": 404, "Detail": "The resource was not found"})
    )


# ---------------------------------------------------------------------------------------------
# `where`: the subset of Xero's filter language (a Dynamic LINQ dialect) clients use


class WhereError(ValueError):
    """A filter Xero cannot parse: answered 400 QueryParseException."""


_WHERE_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|>=|<=|&&|\|\||[<>!=(),.])
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"==", "!=", ">=", "<=", ">", "<", "="}
_METHODS = {"contains", "startswith", "endswith"}


def _tokenize_where(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _WHERE_TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise WhereError(f"Syntax error at position {position} in '{text}'")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        position = match.end()
    return tokens


Predicate = Callable[[Mapping[str, Any]], bool]


class _WhereParser:
    """Recursive descent: or/and/not, comparisons, .Contains/StartsWith/EndsWith, literals
    "text", numbers, true/false/null, Guid("..."), DateTime(y, m, d[, h, mi, s])."""

    def __init__(self, text: str, fields: Mapping[str, str], type_name: str) -> None:
        self._text = text
        self._tokens = _tokenize_where(text)
        self._index = 0
        self._fields = fields  # field -> kind: string, guid, datetime, number, bool
        self._type = type_name

    def parse(self) -> Predicate:
        predicate = self._or()
        if self._index != len(self._tokens):
            raise WhereError(f"Syntax error: unexpected '{self._peek()[1]}' in '{self._text}'")
        return predicate

    def _peek(self) -> tuple[str, str]:
        return self._tokens[self._index] if self._index < len(self._tokens) else ("end", "")

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token[0] == "end":
            raise WhereError(f"Syntax error: '{self._text}' ends too early")
        self._index += 1
        return token

    def _expect(self, op: str) -> None:
        kind, value = self._take()
        if kind != "op" or value != op:
            raise WhereError(f"'{op}' expected in '{self._text}'")

    def _is(self, *words: str) -> bool:
        kind, value = self._peek()
        return (kind == "op" and value in words) or (kind == "name" and value.upper() in words)

    def _or(self) -> Predicate:
        terms = [self._and()]
        while self._is("||", "OR"):
            self._index += 1
            terms.append(self._and())
        return terms[0] if len(terms) == 1 else (lambda row: any(t(row) for t in terms))

    def _and(self) -> Predicate:
        terms = [self._not()]
        while self._is("&&", "AND"):
            self._index += 1
            terms.append(self._not())
        return terms[0] if len(terms) == 1 else (lambda row: all(t(row) for t in terms))

    def _not(self) -> Predicate:
        if self._is("!", "NOT"):
            self._index += 1
            inner = self._not()
            return lambda row: not inner(row)
        if self._is("("):
            self._index += 1
            inner = self._or()
            self._expect(")")
            return inner
        return self._comparison()

    def _comparison(self) -> Predicate:
        kind, name = self._take()
        if kind != "name":
            raise WhereError(f"Syntax error at '{name}' in '{self._text}'")
        path = [name]
        method = None
        while self._is("."):
            self._index += 1
            kind, part = self._take()
            if kind != "name":
                raise WhereError(f"Syntax error at '{part}' in '{self._text}'")
            if part.casefold() in _METHODS and self._is("("):
                method = part.casefold()
                break
            path.append(part)
        field_name, field_kind = self._resolve(".".join(path))
        if method is not None:
            self._expect("(")
            argument = self._literal()
            self._expect(")")
            if field_kind != "string" or not isinstance(argument, str):
                raise WhereError(f"Method '{method}' needs a string field and a string value")
            needle = argument.casefold()

            def call(row: Mapping[str, Any]) -> bool:
                value = row.get(field_name)
                if value is None:
                    return False
                text = str(value).casefold()
                if method == "contains":
                    return needle in text
                if method == "startswith":
                    return text.startswith(needle)
                return text.endswith(needle)

            return call
        kind, operator = self._take()
        if kind != "op" or operator not in _COMPARISONS:
            raise WhereError(f"Operator expected after '{field_name}' in '{self._text}'")
        operator = "==" if operator == "=" else operator
        literal = self._literal()
        expected = _literal_kind(literal)
        if literal is not None and not _compatible(field_kind, expected):
            raise WhereError(
                f"Operator '{operator}' incompatible with operand types "
                f"'{_TYPE_NAMES[field_kind]}' and '{_TYPE_NAMES[expected]}'"
            )
        return _comparator(field_name, field_kind, operator, literal)

    def _resolve(self, name: str) -> tuple[str, str]:
        """(canonical field name, kind); Dynamic LINQ ignores case in member names."""
        for known, kind in self._fields.items():
            if known.casefold() == name.casefold():
                return known, kind
        raise WhereError(f"No property or field '{name}' exists in type '{self._type}'")

    def _literal(self) -> Any:
        kind, value = self._take()
        if kind == "string":
            return value
        if kind == "number":
            return Decimal(value)
        if kind == "name":
            word = value.casefold()
            if word == "true":
                return True
            if word == "false":
                return False
            if word == "null":
                return None
            if word == "guid":
                self._expect("(")
                kind, text = self._take()
                self._expect(")")
                if kind != "string" or not _is_guid(text):
                    raise WhereError(f"'{text}' is not a valid Guid")
                return uuid.UUID(text)
            if word == "datetime":
                self._expect("(")
                parts = [int(self._number())]
                while self._is(","):
                    self._index += 1
                    parts.append(int(self._number()))
                self._expect(")")
                if len(parts) not in (3, 6):
                    raise WhereError("DateTime takes (year, month, day[, hour, minute, second])")
                try:
                    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]
                except ValueError as exc:
                    raise WhereError(str(exc)) from exc
        raise WhereError(f"Syntax error at '{value}' in '{self._text}'")

    def _number(self) -> Decimal:
        kind, value = self._take()
        if kind != "number":
            raise WhereError(f"A number was expected, not '{value}'")
        return Decimal(value)


_TYPE_NAMES = {
    "string": "String",
    "guid": "Guid",
    "datetime": "DateTime",
    "number": "Decimal",
    "bool": "Boolean",
    "null": "Object",
}


def _literal_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, uuid.UUID):
        return "guid"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, Decimal):
        return "number"
    return "string"


def _compatible(field_kind: str, literal_kind: str) -> bool:
    if field_kind == literal_kind:
        return True
    # Dynamic LINQ converts a string literal to a Guid; enums (Type, Status) are strings here
    return field_kind == "guid" and literal_kind == "string"


def _comparator(name: str, kind: str, operator: str, literal: Any) -> Predicate:
    def normal(value: Any) -> Any:
        if value is None:
            return None
        if kind == "string":
            return str(value).casefold()  # Xero's string comparisons ignore case
        if kind == "guid":
            return str(value).casefold()
        return value

    target = normal(str(literal) if isinstance(literal, uuid.UUID) else literal)

    def compare(row: Mapping[str, Any]) -> bool:
        value = normal(row.get(name))
        if operator == "==":
            return bool(value == target)
        if operator == "!=":
            return bool(value != target)
        if value is None or target is None:
            return False
        if operator == ">=":
            return bool(value >= target)
        if operator == "<=":
            return bool(value <= target)
        if operator == ">":
            return bool(value > target)
        return bool(value < target)

    return compare


def parse_where(text: str, fields: Mapping[str, str], type_name: str) -> Predicate:
    return _WhereParser(text, fields, type_name).parse()


def _listed(
    request: Request,
    records: Sequence[Any],
    fields: Mapping[str, Any],
    entity: str,
    view: Callable[[Any], dict[str, Any]],
    changed_at: Callable[[Any], datetime],
    *,
    paged: bool = True,
) -> list[dict[str, Any]]:
    """The views of `records` a list request asks for: its `where`, `If-Modified-Since`,
    `order` and `page`."""
    args = request.args
    predicate = parse_where(args["where"], fields, entity) if args.get("where") else None
    moment = _if_modified_since(request)
    rows = []
    for record in records:
        if moment is not None and changed_at(record) < moment:
            continue
        shown = view(record)
        if predicate is None or predicate(shown):
            rows.append(shown)
    rows = _order_rows(rows, args.get("order"), fields)
    if paged:
        page, size = _paging(args)
        if page is not None:
            rows = rows[(page - 1) * size : page * size]
    return rows


def _order_rows(
    rows: list[dict[str, Any]], order: str | None, fields: Mapping[str, str]
) -> list[dict[str, Any]]:
    """`order=Date DESC, InvoiceNumber`: stable, None last."""
    if not order:
        return rows
    keys: list[tuple[str, bool]] = []
    for part in order.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].upper() not in ("ASC", "DESC")):
            raise WhereError(f"Invalid order '{order}'")
        match = next((f for f in fields if f.casefold() == words[0].casefold()), None)
        if match is None:
            raise WhereError(f"No property or field '{words[0]}' exists in the ordering")
        keys.append((match, len(words) == 2 and words[1].upper() == "DESC"))
    for name, descending in reversed(keys):
        present = [r for r in rows if r.get(name) is not None]
        absent = [r for r in rows if r.get(name) is None]
        present.sort(key=lambda r, n=name: _sortable(r[n]), reverse=descending)
        rows = present + absent
    return rows


def _sortable(value: Any) -> Any:
    return str(value).casefold() if isinstance(value, str | uuid.UUID) else value


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class _Account:
    id: str
    code: str
    name: str
    type: str
    status: str = "ACTIVE"
    tax_type: str | None = None
    enable_payments: bool = False
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))
    system: bool = False  # Accounts Receivable and the like: no line may be coded to it

    @property
    def account_class(self) -> str:
        if self.type in {"REVENUE", "SALES", "OTHERINCOME"}:
            return "REVENUE"
        if self.type in {"BANK", "CURRENT", "FIXED", "INVENTORY", "NONCURRENT", "PREPAYMENT"}:
            return "ASSET"
        if self.type in {"CURRLIAB", "LIABILITY", "TERMLIAB"}:
            return "LIABILITY"
        if self.type == "EQUITY":
            return "EQUITY"
        return "EXPENSE"

    @property
    def accepts_payments(self) -> bool:
        return self.type == "BANK" or self.enable_payments


@dataclass
class _TaxRate:
    tax_type: str
    name: str
    rate: Decimal
    status: str = "ACTIVE"
    revenue: bool = True
    expenses: bool = True


@dataclass
class _TrackingCategory:
    id: str
    name: str
    options: dict[str, tuple[str, str]]  # option name -> (option id, status)
    status: str = "ACTIVE"


@dataclass
class _Item:
    id: str
    code: str
    name: str
    description: str | None
    is_sold: bool
    account_code: str | None
    tax_type: str | None
    unit_price: Decimal | None
    archived: bool = False
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Contact:
    id: str
    name: str
    email: str | None
    currency: str | None
    status: str = "ACTIVE"
    terms: tuple[int, str] | None = None  # (Day, Type) of PaymentTerms.Sales
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Line:
    id: str
    description: str | None
    quantity: Decimal
    unit_amount: Decimal
    line_amount: Decimal
    tax_amount: Decimal
    account_code: str | None
    tax_type: str | None
    item_code: str | None
    tracking: list[tuple[str, str, str, str]]  # (category id, name, option id, option name)
    discount_rate: Decimal | None = None


@dataclass
class _Invoice:
    id: str
    number: str
    type: str
    contact_id: str
    status: str
    line_amount_types: str
    lines: list[_Line]
    issued: date
    due: date | None
    reference: str | None
    currency: str
    created: datetime
    updated: datetime
    branding_theme: str | None = None
    sent: bool = False
    url: str | None = None
    fully_paid_on: date | None = None

    @property
    def subtotal(self) -> Decimal:
        if self.line_amount_types == "Inclusive":
            return sum((ln.line_amount - ln.tax_amount for ln in self.lines), Decimal("0"))
        return sum((ln.line_amount for ln in self.lines), Decimal("0"))

    @property
    def total_tax(self) -> Decimal:
        return sum((ln.tax_amount for ln in self.lines), Decimal("0"))

    @property
    def total(self) -> Decimal:
        return _round(self.subtotal + self.total_tax)


@dataclass
class _Payment:
    """A payment on an invoice (ACCRECPAYMENT), or a cash refund of a credit note
    (ARCREDITPAYMENT: `invoice_id` None, `credit_note_id` set)."""

    id: str
    invoice_id: str | None
    account_code: str
    amount: Decimal
    paid_on: date
    reference: str | None
    status: str
    created: datetime
    updated: datetime
    external: bool = False  # entered in Xero by a person, not through the API
    credit_note_id: str | None = None

    @property
    def kind(self) -> str:
        return "ARCREDITPAYMENT" if self.credit_note_id else "ACCRECPAYMENT"


@dataclass
class _Allocation:
    id: str
    invoice_id: str
    amount: Decimal
    on: date


@dataclass
class _CreditNote:
    """An ACCRECCREDIT credit note: lines like an invoice's, taken off the customer's balance
    by allocations to invoices, or paid back in cash by refund payments."""

    id: str
    number: str
    type: str
    contact_id: str
    status: str
    line_amount_types: str
    lines: list[_Line]
    issued: date
    reference: str | None
    currency: str
    created: datetime
    updated: datetime
    allocations: list[_Allocation] = field(default_factory=list)
    fully_paid_on: date | None = None

    @property
    def total(self) -> Decimal:
        return _document_total(self.lines, self.line_amount_types)


@dataclass
class _BankTransaction:
    """Spend or receive money: the bank account on one side, the lines' accounts on the other."""

    id: str
    type: str  # SPEND | RECEIVE
    contact_id: str
    bank_code: str
    line_amount_types: str
    lines: list[_Line]
    on: date
    reference: str | None
    currency: str
    status: str
    created: datetime
    updated: datetime

    @property
    def total(self) -> Decimal:
        return _document_total(self.lines, self.line_amount_types)


@dataclass
class _BankTransfer:
    id: str
    from_code: str
    to_code: str
    amount: Decimal
    on: date
    reference: str | None
    status: str
    created: datetime
    from_transaction: str = field(default_factory=lambda: str(uuid.uuid4()))
    to_transaction: str = field(default_factory=lambda: str(uuid.uuid4()))


def _net(line: _Line, line_amount_types: str) -> Decimal:
    """What a line puts on its account, tax apart."""
    return (
        line.line_amount - line.tax_amount
        if line_amount_types == "Inclusive"
        else (line.line_amount)
    )


def _document_total(lines: Sequence[_Line], line_amount_types: str) -> Decimal:
    return _round(sum((_net(ln, line_amount_types) + ln.tax_amount for ln in lines), Decimal("0")))


@dataclass
class _Stored:
    """A response kept for an Idempotency-Key [Xero idempotency guide]."""

    fingerprint: str
    status: int
    body: bytes
    headers: dict[str, str]
    at: datetime


@dataclass
class _Org:
    """One Xero organisation (one tenant)."""

    id: str
    name: str
    base_currency: str
    short_code: str
    country: str = "US"
    currencies: set[str] = field(default_factory=set)
    period_lock: date | None = None
    year_lock: date | None = None
    terms: tuple[int, str] | None = None  # Organisation PaymentTerms.Sales
    accounts: dict[str, _Account] = field(default_factory=dict)  # by code
    tax_rates: dict[str, _TaxRate] = field(default_factory=dict)
    tracking: dict[str, _TrackingCategory] = field(default_factory=dict)  # by name
    items: dict[str, _Item] = field(default_factory=dict)  # by code
    contacts: dict[str, _Contact] = field(default_factory=dict)
    invoices: dict[str, _Invoice] = field(default_factory=dict)
    payments: dict[str, _Payment] = field(default_factory=dict)
    credit_notes: dict[str, _CreditNote] = field(default_factory=dict)
    bank_transactions: dict[str, _BankTransaction] = field(default_factory=dict)
    bank_transfers: dict[str, _BankTransfer] = field(default_factory=dict)
    idempotency: dict[str, _Stored] = field(default_factory=dict)
    emails: dict[str, int] = field(default_factory=dict)
    email_days: dict[date, int] = field(default_factory=dict)
    next_number: int = 1
    next_credit_number: int = 1
    branding_theme: str = field(default_factory=lambda: str(uuid.uuid4()))


def _seed_org(org: _Org, now: datetime) -> None:
    """A small chart of accounts like a new Xero organisation's, a clearing account for card
    payouts, sales tax rates (one archived, one for purchases only) and a tracking category."""
    for code, name, kind, tax, payments in (
        ("090", "Business Bank Account", "BANK", None, False),
        ("200", "Sales", "REVENUE", "OUTPUT", False),
        ("260", "Other Revenue", "REVENUE", "OUTPUT", False),
        ("400", "Advertising", "EXPENSE", "INPUT", False),
        ("610", "Accounts Receivable", "CURRENT", None, False),
        ("820", "Sales Tax", "CURRLIAB", None, False),
        ("855", "Stripe Clearing", "CURRLIAB", "NONE", True),
        ("960", "Retained Earnings", "EQUITY", None, False),
    ):
        org.accounts[code] = _Account(
            id=str(uuid.uuid4()),
            code=code,
            name=name,
            type=kind,
            tax_type=tax,
            enable_payments=payments,
            updated=now,
            system=code in SYSTEM_ACCOUNTS,
        )
    for tax_type, name, rate, status, revenue, expenses in (
        ("NONE", "Tax Exempt", "0", "ACTIVE", True, True),
        ("OUTPUT", "Tax on Sales", "8.25", "ACTIVE", True, False),
        ("EXEMPTOUTPUT", "Exempt Sales", "0", "ACTIVE", True, False),
        ("INPUT", "Tax on Purchases", "8.25", "ACTIVE", False, True),
        ("OUTPUT3", "Old Sales Tax", "7", "ARCHIVED", True, False),
    ):
        org.tax_rates[tax_type] = _TaxRate(
            tax_type, name, Decimal(rate), status, revenue=revenue, expenses=expenses
        )
    org.tracking["Region"] = _TrackingCategory(
        id=str(uuid.uuid4()),
        name="Region",
        options={
            "North": (str(uuid.uuid4()), "ACTIVE"),
            "South": (str(uuid.uuid4()), "ACTIVE"),
            "Closed": (str(uuid.uuid4()), "ARCHIVED"),
        },
    )


@dataclass
class _Subscription:
    """A webhook subscription: where to POST, the signing key, and the events not yet
    acknowledged with a 200."""

    url: str
    key: str
    categories: frozenset[str]
    queue: list[dict[str, Any]] = field(default_factory=list)


class _RateLimits:
    """Xero's per-tenant and per-app budgets on the emulated timeline [REF B4]."""

    def __init__(
        self,
        minute: int = MINUTE_LIMIT,
        day: int = DAY_LIMIT,
        concurrent: int = CONCURRENT_LIMIT,
        app_minute: int = APP_MINUTE_LIMIT,
    ) -> None:
        self.limits = (minute, day, concurrent, app_minute)
        self.minute: dict[str, deque[float]] = {}
        self.day: dict[str, deque[float]] = {}
        self.app: deque[float] = deque()
        self.in_flight: dict[str, int] = {}

    @staticmethod
    def _trim(window: deque[float], now: float, span: float) -> None:
        while window and now - window[0] >= span:
            window.popleft()

    def remaining(self, tenant: str, now: float) -> tuple[int, int, int]:
        minute = self.minute.setdefault(tenant, deque())
        day = self.day.setdefault(tenant, deque())
        self._trim(minute, now, 60.0)
        self._trim(day, now, 86_400.0)
        self._trim(self.app, now, 60.0)
        minute_limit, day_limit, _, app_limit = self.limits
        return (
            max(0, day_limit - len(day)),
            max(0, minute_limit - len(minute)),
            max(0, app_limit - len(self.app)),
        )

    def check(self, tenant: str, now: float) -> tuple[str, int] | None:
        """(problem, Retry-After seconds) when the request must be refused."""
        day_left, minute_left, app_left = self.remaining(tenant, now)
        if self.in_flight.get(tenant, 0) >= self.limits[2]:
            return "concurrent", 1
        if day_left <= 0:
            return "day", max(1, math.ceil(86_400.0 - (now - self.day[tenant][0])))
        if minute_left <= 0:
            return "minute", max(1, math.ceil(60.0 - (now - self.minute[tenant][0])))
        if app_left <= 0:
            return "appminute", max(1, math.ceil(60.0 - (now - self.app[0])))
        return None

    def count(self, tenant: str, now: float) -> None:
        self.minute.setdefault(tenant, deque()).append(now)
        self.day.setdefault(tenant, deque()).append(now)
        self.app.append(now)


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    handlers: Mapping[str, Callable[[Request, _Org, dict[str, str]], Response]]


_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

INVOICE_FIELDS = {
    "InvoiceID": "guid",
    "InvoiceNumber": "string",
    "Type": "string",
    "Status": "string",
    "Reference": "string",
    "Contact.ContactID": "guid",
    "Contact.Name": "string",
    "Date": "datetime",
    "DueDate": "datetime",
    "UpdatedDateUTC": "datetime",
    "CurrencyCode": "string",
    "Total": "number",
    "SubTotal": "number",
    "AmountDue": "number",
    "AmountPaid": "number",
    "SentToContact": "bool",
}
PAYMENT_FIELDS = {
    "PaymentID": "guid",
    "Reference": "string",
    "Status": "string",
    "PaymentType": "string",
    "Amount": "number",
    "Date": "datetime",
    "UpdatedDateUTC": "datetime",
    "Invoice.InvoiceID": "guid",
    "Invoice.InvoiceNumber": "string",
    "CreditNote.CreditNoteID": "guid",
    "CreditNote.CreditNoteNumber": "string",
    "Account.Code": "string",
    "IsReconciled": "bool",
}
BANK_TRANSACTION_FIELDS = {
    "BankTransactionID": "guid",
    "Type": "string",
    "Status": "string",
    "Reference": "string",
    "Date": "datetime",
    "Total": "number",
    "BankAccount.Code": "string",
    "BankAccount.AccountID": "guid",
    "Contact.ContactID": "guid",
    "UpdatedDateUTC": "datetime",
}
BANK_TRANSFER_FIELDS = {
    "BankTransferID": "guid",
    "Reference": "string",
    "Date": "datetime",
    "Amount": "number",
    "FromBankAccount.Code": "string",
    "ToBankAccount.Code": "string",
    "CreatedDateUTC": "datetime",
}
CREDIT_NOTE_FIELDS = {
    "CreditNoteID": "guid",
    "CreditNoteNumber": "string",
    "Type": "string",
    "Status": "string",
    "Reference": "string",
    "Contact.ContactID": "guid",
    "Date": "datetime",
    "Total": "number",
    "RemainingCredit": "number",
    "UpdatedDateUTC": "datetime",
}
CONTACT_FIELDS = {
    "ContactID": "guid",
    "Name": "string",
    "EmailAddress": "string",
    "ContactStatus": "string",
    "IsCustomer": "bool",
    "UpdatedDateUTC": "datetime",
}
SIMPLE_FIELDS = {
    "Code": "string",
    "Name": "string",
    "Type": "string",
    "Status": "string",
    "TaxType": "string",
    "Class": "string",
    "EnablePaymentsToAccount": "bool",
}


class XeroEmulator(ServedEmulator):
    """Xero on loopback: `with XeroEmulator() as xero: token = xero.connect(); ...`.

    One emulator serves several organisations (tenants); a grant may use some or all of them
    (GET /Connections lists them). State changes through the HTTP API, or through the admin
    methods that stand for a person working in Xero (approve, void, pay by cheque...)."""

    def __init__(
        self,
        *,
        time: EmulatedTime = REAL_TIME,
        organisations: Sequence[str] = ("Demo Company (US)",),
        base_currency: str = "USD",
        validate: bool = True,
        rate_limits: bool = False,
        latency: float = 0.0,
        daily_email_limit: int | None = None,
        limits: Mapping[str, int] | None = None,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
    ) -> None:
        if not organisations:
            raise ValueError("an emulator needs at least one organisation")
        self.time = time
        self.client_id = client_id
        self.client_secret = client_secret
        self._validate = validate
        self.rate_limits = rate_limits
        self.latency = latency
        self.daily_email_limit = daily_email_limit
        self.log = RequestLog()
        self.internal_errors: list[str] = []
        self._lock = threading.RLock()
        self._orgs: dict[str, _Org] = {}
        for name in organisations:
            self.add_organisation(name, currency=base_currency)
        # Xero's numbers unless a test shrinks one (e.g. {"day": 20}) to reach it quickly
        self._limits = _RateLimits(**(limits or {}))
        self._injected: list[int] = []
        self._drop_writes = 0
        self._drop_every_write = False
        self.oauth = OAuthServer(
            XERO_OAUTH,
            {client_id: client_secret},
            now=self.time.now,
            grant_extra=lambda: self._grant_extra(None),
        )
        self._contracts_resolved = False
        self._accounting: OpenAPIContract | None = None
        self._identity: OpenAPIContract | None = None
        self._webhooks: list[_Subscription] = []
        self._webhook_seen: dict[tuple[str, str, str], datetime] = {}
        self._webhook_sequence = 0
        self._webhook_twice = False
        self._webhook_schema: dict[str, Any] | None = None
        self.webhook_violations: list[str] = []
        self._server = EmulatorServer(self._handle)
        self._routes = self._build_routes()

    # -- addresses -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    # -- observation -----------------------------------------------------------------------

    def violations(self) -> list[str]:
        """Every spec violation received, plus emulator bugs (a test must see both)."""
        return (
            self.log.violations()
            + list(self.webhook_violations)
            + [f"emulator error: {e}" for e in self.internal_errors]
        )

    def requests(self, method: str | None = None, path: str = "") -> list[RecordedRequest]:
        """Received requests: `method`, and `path` under /api.xro/2.0 with everything below it
        ('/Invoices' also counts GET /Invoices/{id}); '/Connections' as is."""
        prefix = API_PREFIX + path if path.startswith("/") and path != CONNECTIONS_PATH else path
        return [
            e
            for e in self.log.snapshot()
            if (method is None or e.method == method)
            and (e.path == prefix or e.path.startswith(prefix + "/") or not path)
        ]

    @property
    def tenants(self) -> list[str]:
        with self._lock:
            return list(self._orgs)

    def _org(self, tenant: str | None) -> _Org:
        with self._lock:
            if tenant is None:
                return next(iter(self._orgs.values()))
            return self._orgs[tenant]

    def invoices(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every invoice as GET /Invoices/{id} shows it (money as Decimal)."""
        with self._lock:
            org = self._org(tenant)
            return [_loads(self._render_invoice(org, inv)) for inv in org.invoices.values()]

    def invoice(self, invoice_id: str, tenant: str | None = None) -> dict[str, Any]:
        with self._lock:
            org = self._org(tenant)
            return _loads(self._render_invoice(org, org.invoices[invoice_id]))

    def payments(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            org = self._org(tenant)
            return [_loads(self._render_payment(org, p)) for p in org.payments.values()]

    def emails(self, invoice_id: str, tenant: str | None = None) -> int:
        """How many times the invoice was emailed to its contact."""
        with self._lock:
            return self._org(tenant).emails.get(invoice_id, 0)

    # -- the money trail, as an accountant would read it -----------------------------------

    def account_balance(self, code: str, *, tenant: str | None = None) -> Decimal:
        """The account's balance by double entry over every approved document, whatever its
        date: debits positive (money in a bank or asset account is positive, an expense is
        positive, revenue and liabilities are negative)."""
        with self._lock:
            org = self._org(tenant)
            return _round(
                sum(
                    (a for c, _, a in self._postings(org, date.max) if c == code),
                    Decimal("0"),
                )
            )

    def credit_notes(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            org = self._org(tenant)
            return [_loads(self._render_credit_note(org, n)) for n in org.credit_notes.values()]

    def bank_transactions(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            org = self._org(tenant)
            return [
                _loads(self._render_bank_transaction(org, t))
                for t in org.bank_transactions.values()
            ]

    def bank_transfers(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            org = self._org(tenant)
            return [_loads(self._render_transfer(org, t)) for t in org.bank_transfers.values()]

    def contacts(self, tenant: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render_contact(c) for c in self._org(tenant).contacts.values()]

    # -- webhooks (Xero -> the firm's receiver) --------------------------------------------

    def add_webhook(
        self,
        url: str,
        webhook_key: str,
        *,
        categories: Sequence[str] = ("INVOICE", "CONTACT"),
    ) -> None:
        """Subscribe `url` to invoice and contact events, signed with `webhook_key` (the key
        Xero shows on the app's webhooks page). Changes from now on are queued for it."""
        with self._lock:
            self._note_changes()  # what changed before belongs to the earlier subscriptions
            self._webhooks.append(_Subscription(url, webhook_key, frozenset(categories)))

    def webhook_duplicates(self, enabled: bool = True) -> None:
        """Deliver every payload twice (Xero delivers at least once)."""
        with self._lock:
            self._webhook_twice = enabled

    def pending_webhook_events(self) -> int:
        with self._lock:
            self._note_changes()
            return sum(len(s.queue) for s in self._webhooks)

    def deliver_pending(self) -> list[int]:
        """POST each subscription's queued events in one signed payload; returns the statuses
        the receivers answered (0: no answer). Events stay queued until a receiver answers
        200, as Xero keeps retrying for up to 24 hours [DOC configuring-your-server]."""
        with self._lock:
            self._note_changes()
            batches = [(s, list(s.queue)) for s in self._webhooks if s.queue]
        statuses: list[int] = []
        for subscription, events in batches:
            ordered = sorted(events, key=lambda e: e["sequence"])
            payload = {
                "events": [{k: v for k, v in e.items() if k != "sequence"} for e in ordered],
                "firstEventSequence": ordered[0]["sequence"],
                "lastEventSequence": ordered[-1]["sequence"],
                "entropy": _entropy(),
            }
            self._check_webhook(payload, probe=False)
            body = json.dumps(payload, separators=(",", ":")).encode()
            answers = [
                self._post_webhook(subscription.url, body, _sign(subscription.key, body))
                for _ in range(2 if self._webhook_twice else 1)
            ]
            statuses += answers
            if 200 in answers:
                with self._lock:
                    delivered = {id(e) for e in events}
                    subscription.queue = [e for e in subscription.queue if id(e) not in delivered]
        return statuses

    def send_intent_to_receive(self, valid: bool = True, *, url: str | None = None) -> int:
        """Xero's 'Intent to receive' probe: an empty, signed payload (or one with a wrong
        signature); the receiver must answer 200 to the first and 401 to the second."""
        with self._lock:
            if url is None and not self._webhooks:
                raise ValueError("add_webhook first, or give the url")
            subscription = next((s for s in self._webhooks if url in (None, s.url)), None)
            key = subscription.key if subscription else ""
            target = url or (subscription.url if subscription else "")
        payload = {
            "events": [],
            "lastEventSequence": 0,
            "firstEventSequence": 0,
            "entropy": _entropy(),
        }
        self._check_webhook(payload, probe=True)
        body = json.dumps(payload, separators=(",", ":")).encode()
        signature = _sign(key if valid else key + "-not-the-key", body)
        return self._post_webhook(target, body, signature)

    def _note_changes(self) -> None:
        """Queue an event for every invoice and contact created or changed since the last look
        (called under the lock after each write, and before each delivery), in the order the
        changes happened."""
        found: list[tuple[datetime, str, dict[str, Any]]] = []
        for org in self._orgs.values():
            for category, table, path in (
                ("INVOICE", org.invoices, "Invoices"),
                ("CONTACT", org.contacts, "Contacts"),
            ):
                for resource_id, resource in table.items():
                    seen_key = (org.id, category, resource_id)
                    before = self._webhook_seen.get(seen_key)
                    if before == resource.updated:
                        continue
                    self._webhook_seen[seen_key] = resource.updated
                    event = {
                        "resourceUrl": f"{API_RESOURCE_URL}/{path}/{resource_id}",
                        "resourceId": resource_id,
                        # Xero writes UTC without an offset, to the millisecond [SPEC example]
                        "eventDateUtc": _utc(resource.updated).strftime("%Y-%m-%dT%H:%M:%S.%f")[
                            :-3
                        ],
                        "eventType": "CREATE" if before is None else "UPDATE",
                        "eventCategory": category,
                        "tenantId": org.id,
                        "tenantType": "ORGANISATION",
                    }
                    found.append((_utc(resource.updated), category, event))
        found.sort(key=lambda f: f[0])
        for _, category, event in found:
            listeners = [s for s in self._webhooks if category in s.categories]
            if not listeners:
                continue
            self._webhook_sequence += 1
            for subscription in listeners:
                subscription.queue.append({**event, "sequence": self._webhook_sequence})

    def _check_webhook(self, payload: Mapping[str, Any], *, probe: bool) -> None:
        """Validate what we send against Xero's webhooks description. The probe's sequence
        numbers are 0 in Xero's documentation while the schema says at least 1: the probe is
        checked with that minimum lifted."""
        with self._lock:
            if self._webhook_schema is None:
                self._webhook_schema = _webhook_validators()
            validators = self._webhook_schema
        if not validators:
            return
        validator = validators["probe" if probe else "events"]
        for error in validator.iter_errors(payload):
            where = "/".join(str(p) for p in error.absolute_path) or "(payload)"
            with self._lock:
                self.webhook_violations.append(f"webhook payload at {where}: {error.message}")

    def _post_webhook(self, url: str, body: bytes, signature: str) -> int:
        import requests

        try:
            answer = requests.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "x-xero-signature": signature},
                timeout=5,  # Xero wants an answer within 5 seconds [DOC]
            )
        except requests.RequestException:
            return 0
        return answer.status_code

    # -- OAuth -----------------------------------------------------------------------------

    def connect(self, tenants: Sequence[str] | None = None) -> dict[str, object]:
        """Consent without the browser: a grant for `tenants` (default: every organisation)
        and its first token response (access_token, refresh_token, expires_in, scope...)."""
        return self.oauth.connect(self.client_id, **self._grant_extra(tenants))

    def _grant_extra(self, tenants: Sequence[str] | None) -> dict[str, str]:
        chosen = list(tenants) if tenants is not None else self.tenants
        unknown = [t for t in chosen if t not in self._orgs]
        if unknown:
            raise KeyError(f"no organisation {unknown[0]}")
        return {"tenants": ",".join(chosen), "auth_event": str(uuid.uuid4())}

    def expire_access_tokens(self) -> None:
        self.oauth.expire_access_tokens()

    def revoke_all(self) -> None:
        self.oauth.revoke_all()

    @staticmethod
    def _grant_tenants(grant: Grant) -> list[str]:
        return [t for t in grant.extra.get("tenants", "").split(",") if t]

    # -- organisation set-up (a person in Xero) --------------------------------------------

    def add_organisation(self, name: str, *, currency: str = "USD") -> str:
        with self._lock:
            tenant = str(uuid.uuid4())
            org = _Org(
                id=tenant,
                name=name,
                base_currency=currency,
                short_code="!" + hashlib.sha256(tenant.encode()).hexdigest()[:5],
            )
            _seed_org(org, self.time.now())
            self._orgs[tenant] = org
            return tenant

    def add_contact(
        self,
        name: str,
        currency: str | None = None,
        email: str | None = None,
        *,
        tenant: str | None = None,
        terms_days: int | None = None,
        archived: bool = False,
    ) -> str:
        """A customer; returns its ContactID. `terms_days`: PaymentTerms.Sales N days after."""
        with self._lock:
            org = self._org(tenant)
            contact = _Contact(
                id=str(uuid.uuid4()),
                name=name,
                email=email,
                currency=currency,
                status="ARCHIVED" if archived else "ACTIVE",
                terms=(terms_days, "DAYSAFTERBILLDATE") if terms_days is not None else None,
                updated=self.time.now(),
            )
            org.contacts[contact.id] = contact
            return contact.id

    def archive_contact(self, contact_id: str, *, tenant: str | None = None) -> None:
        with self._lock:
            contact = self._org(tenant).contacts[contact_id]
            contact.status = "ARCHIVED"
            contact.updated = self.time.now()

    def add_item(
        self,
        code: str,
        name: str | None = None,
        *,
        tenant: str | None = None,
        account_code: str | None = "200",
        tax_type: str | None = None,
        unit_price: Decimal | None = None,
        is_sold: bool = True,
        description: str | None = None,
    ) -> str:
        with self._lock:
            org = self._org(tenant)
            if code in org.items:
                raise ValueError(f"item {code} already exists")
            item = _Item(
                id=str(uuid.uuid4()),
                code=code,
                name=name or code,
                description=description,
                is_sold=is_sold,
                account_code=account_code,
                tax_type=tax_type,
                unit_price=unit_price,
                updated=self.time.now(),
            )
            org.items[code] = item
            return item.id

    def archive_item(self, code: str, *, tenant: str | None = None) -> None:
        """The item is taken out of use: it leaves GET /Items and lines can no longer name it.

        (Xero's own archive semantics for items were not verified; the emulator treats an
        archived item like a removed one.)"""
        with self._lock:
            item = self._org(tenant).items[code]
            item.archived = True
            item.updated = self.time.now()

    def add_account(
        self,
        code: str,
        name: str,
        type: str = "REVENUE",
        *,
        tenant: str | None = None,
        enable_payments: bool = False,
        tax_type: str | None = None,
        status: str = "ACTIVE",
    ) -> str:
        with self._lock:
            org = self._org(tenant)
            account = _Account(
                id=str(uuid.uuid4()),
                code=code,
                name=name,
                type=type,
                status=status,
                tax_type=tax_type,
                enable_payments=enable_payments,
                updated=self.time.now(),
            )
            org.accounts[code] = account
            return account.id

    def archive_account(self, code: str, *, tenant: str | None = None) -> None:
        with self._lock:
            self._org(tenant).accounts[code].status = "ARCHIVED"

    def add_tax_rate(
        self,
        tax_type: str,
        name: str,
        rate: Decimal,
        *,
        tenant: str | None = None,
        status: str = "ACTIVE",
        revenue: bool = True,
    ) -> None:
        with self._lock:
            self._org(tenant).tax_rates[tax_type] = _TaxRate(
                tax_type, name, Decimal(rate), status, revenue=revenue
            )

    def add_tracking_option(self, category: str, option: str, *, tenant: str | None = None):
        with self._lock:
            org = self._org(tenant)
            found = org.tracking.get(category)
            if found is None:
                found = org.tracking[category] = _TrackingCategory(str(uuid.uuid4()), category, {})
            found.options[option] = (str(uuid.uuid4()), "ACTIVE")

    def enable_currency(self, code: str, *, tenant: str | None = None) -> None:
        with self._lock:
            self._org(tenant).currencies.add(code)

    def set_period_lock(
        self,
        period: date | None,
        end_of_year: date | None = None,
        *,
        tenant: str | None = None,
    ) -> None:
        with self._lock:
            org = self._org(tenant)
            org.period_lock = period
            org.year_lock = end_of_year

    def set_payment_terms(self, days: int | None, *, tenant: str | None = None) -> None:
        """Organisation default: sales invoices due `days` after the invoice date."""
        with self._lock:
            self._org(tenant).terms = (days, "DAYSAFTERBILLDATE") if days is not None else None

    # -- changes made in Xero by a person ---------------------------------------------------

    def approve(self, invoice_id: str, *, tenant: str | None = None) -> None:
        """DRAFT or SUBMITTED -> AUTHORISED, as an approver clicking Approve."""
        with self._lock:
            org = self._org(tenant)
            invoice = org.invoices[invoice_id]
            errors = self._transition(org, invoice, "AUTHORISED") or self._approval_errors(
                "AUTHORISED", invoice.due, invoice.lines
            )
            if errors:
                raise XeroValidationError(errors)
            invoice.status = "AUTHORISED"
            invoice.updated = self.time.now()

    def void(self, invoice_id: str, *, tenant: str | None = None) -> None:
        """AUTHORISED -> VOIDED; a draft is deleted instead (Xero offers only Delete there)."""
        with self._lock:
            org = self._org(tenant)
            invoice = org.invoices[invoice_id]
            target = "DELETED" if invoice.status in ("DRAFT", "SUBMITTED") else "VOIDED"
            errors = self._transition(org, invoice, target)
            if errors:
                raise XeroValidationError(errors)
            invoice.status = target
            invoice.updated = self.time.now()

    def pay_externally(
        self,
        invoice_id: str,
        amount: Decimal,
        *,
        tenant: str | None = None,
        account_code: str = "090",
        on: date | None = None,
        reference: str = "cheque",
    ) -> str:
        """A payment entered in Xero (a cheque, Xero's own gateway); returns its PaymentID."""
        with self._lock:
            org = self._org(tenant)
            payment = self._apply_payment(
                org,
                {
                    "Invoice": {"InvoiceID": invoice_id},
                    "Account": {"Code": account_code},
                    "Amount": Decimal(amount),
                    "Date": (on or self.time.now().date()).isoformat(),
                    "Reference": reference,
                },
            )
            payment.external = True
            return payment.id

    def delete_payment(self, payment_id: str, *, tenant: str | None = None) -> None:
        with self._lock:
            org = self._org(tenant)
            self._remove_payment(org, org.payments[payment_id])

    # -- fault controls --------------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next `count` API requests answer `status` (500, 503 or 429 with Retry-After)
        before anything happens."""
        with self._lock:
            self._injected.extend([status] * count)

    def drop_next_writes(self, count: int = 1) -> None:
        """The next `count` writes take effect (and their idempotency answer is kept), then the
        connection drops before the client gets the answer."""
        with self._lock:
            self._drop_writes += count

    def drop_every_write(self, enabled: bool = True) -> None:
        with self._lock:
            self._drop_every_write = enabled

    def set_rate_limits(self, enabled: bool) -> None:
        with self._lock:
            self.rate_limits = enabled

    # -- request handling ------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        violations: list[str] = []
        drop = False
        try:
            response, drop = self._answer(request, violations)
        except Exception:  # an emulator bug: answer 500, keep the traceback for violations()
            self.internal_errors.append(traceback.format_exc())
            response, drop = _json(500, {"Title": "An error occurred", "Status": 500}), False
        self.log.add(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string.decode("latin-1"),
                headers=dict(request.headers),
                body=request.get_data(),
                status=0 if drop else response.status_code,
                violations=tuple(violations),
            )
        )
        if drop:
            raise drop_connection(request)
        return response

    def _answer(self, request: Request, violations: list[str]) -> tuple[Response, bool]:
        path = request.path
        if path == AUTHORIZE_PATH and request.method == "GET":
            return self.oauth.authorize(request), False
        if path == TOKEN_PATH and request.method == "POST":
            return self.oauth.token(request), False
        if path == REVOKE_PATH and request.method == "POST":
            return self.oauth.revoke(request), False
        if path == CONNECTIONS_PATH or path.startswith(CONNECTIONS_PATH + "/"):
            return self._connections(request, violations), False
        if path.startswith(API_PREFIX + "/"):
            return self._api(request, violations)
        return _json(404, {"Title": "NotFound", "Status": 404, "Detail": path}), False

    def _resolve_contracts(self) -> None:
        with self._lock:
            if not self._contracts_resolved:
                if self._validate:
                    self._accounting = accounting_contract()
                    self._identity = identity_contract()
                self._contracts_resolved = True

    def _bearer(self, request: Request) -> tuple[Response | None, Grant | None]:
        status, grant = self.oauth.bearer(request.headers.get("Authorization"))
        if status == "ok":
            return None, grant
        if status == "expired":
            return _problem(401, "Unauthorized", "TokenExpired: token expired"), None
        return _problem(401, "Unauthorized", "AuthenticationUnsuccessful"), None

    def _connections(self, request: Request, violations: list[str]) -> Response:
        self._resolve_contracts()
        if self._identity is not None:
            violations.extend(self._identity.violations(request))
        refusal, grant = self._bearer(request)
        if refusal is not None or grant is None:
            return refusal or _problem(401, "Unauthorized", "AuthenticationUnsuccessful")
        if violations:
            return _json(
                400, {"Title": "BadRequest", "Status": 400, "Detail": "; ".join(violations)}
            )
        with self._lock:
            tenants = self._grant_tenants(grant)
            if request.method == "GET":
                return _json(
                    200,
                    [
                        {
                            "id": _connection_id(grant, tenant),
                            "authEventId": grant.extra.get("auth_event"),
                            "tenantId": tenant,
                            "tenantType": "ORGANISATION",
                            "tenantName": self._orgs[tenant].name,
                            "createdDateUtc": self.time.now().strftime("%Y-%m-%dT%H:%M:%S.%f"),
                            "updatedDateUtc": self.time.now().strftime("%Y-%m-%dT%H:%M:%S.%f"),
                        }
                        for tenant in tenants
                        if tenant in self._orgs
                    ],
                )
            if request.method == "DELETE":
                wanted = request.path.rsplit("/", 1)[-1].casefold()
                kept = [t for t in tenants if _connection_id(grant, t).casefold() != wanted]
                if len(kept) == len(tenants):
                    return _json(404, {"Title": "NotFound", "Status": 404})
                grant.extra["tenants"] = ",".join(kept)
                return Response(status=204)
        return _json(405, {"Title": "MethodNotAllowed", "Status": 405})

    def _api(self, request: Request, violations: list[str]) -> tuple[Response, bool]:
        if request.content_length and request.content_length > MAX_BODY_BYTES:
            return _json(413, {"Title": "Request Entity Too Large", "Status": 413}), False
        self._resolve_contracts()
        if self._accounting is not None:
            violations.extend(self._accounting.violations(request))
        refusal, grant = self._bearer(request)
        if refusal is not None or grant is None:
            return refusal or _problem(401, "Unauthorized", "AuthenticationUnsuccessful"), False
        tenant = request.headers.get("xero-tenant-id", "").strip()
        if not tenant:
            return (
                _api_exception(16, "QueryParseException", "; ".join(violations) or "no tenant"),
                False,
            )
        with self._lock:
            if tenant not in self._orgs or tenant not in self._grant_tenants(grant):
                return _problem(403, "Forbidden", "AuthenticationUnsuccessful"), False
            org = self._orgs[tenant]
            now = self.time.monotonic()
            limited = self._limits.check(tenant, now) if self.rate_limits else None
            injected = self._injected.pop(0) if limited is None and self._injected else None
            if limited is None and injected is None:
                self._limits.count(tenant, now)
                self._limits.in_flight[tenant] = self._limits.in_flight.get(tenant, 0) + 1
        if limited is not None:
            problem, wait = limited
            return self._with_limits(tenant, self._rate_limited(problem, wait)), False
        if injected is not None:
            return self._with_limits(tenant, _injected(injected)), False
        try:
            if self.latency > 0:
                self.time.sleep(self.latency)
            response, drop = self._dispatch(request, org, violations)
        finally:
            with self._lock:
                self._limits.in_flight[tenant] -= 1
        return self._with_limits(tenant, response), drop

    def _with_limits(self, tenant: str, response: Response) -> Response:
        with self._lock:
            day, minute, app = self._limits.remaining(tenant, self.time.monotonic())
        response.headers["X-DayLimit-Remaining"] = str(day)
        response.headers["X-MinLimit-Remaining"] = str(minute)
        response.headers["X-AppMinLimit-Remaining"] = str(app)
        return response

    @staticmethod
    def _rate_limited(problem: str, wait: int) -> Response:
        return Response(
            "You have exceeded the rate limit",
            status=429,
            headers={"Retry-After": str(wait), "X-Rate-Limit-Problem": problem},
            content_type="text/plain; charset=utf-8",
        )

    def _dispatch(
        self, request: Request, org: _Org, violations: list[str]
    ) -> tuple[Response, bool]:
        route, params = self._route(request.path[len(API_PREFIX) :])
        if route is None:
            return _json(404, {"Title": "NotFound", "Status": 404}), False
        handler = route.handlers.get(request.method)
        if handler is None:
            return _json(405, {"Title": "MethodNotAllowed", "Status": 405}), False
        if violations:
            body_fault = any(v.startswith("InvalidRequestBody") for v in violations)
            if body_fault:
                return _api_exception(14, "PostDataInvalidException", "; ".join(violations)), False
            return _api_exception(16, "QueryParseException", "; ".join(violations)), False
        write = request.method in WRITE_METHODS
        key = (
            request.headers.get("Idempotency-Key") if request.method in IDEMPOTENT_METHODS else None
        )
        with self._lock:
            replay = self._replay(org, key, request) if key else None
            # a replayed answer is an answer like any other: the network may lose it too
            response = replay if replay is not None else self._run(handler, request, org, params)
            if key and replay is None and response.status_code < 500:
                org.idempotency[key] = _Stored(
                    fingerprint=_fingerprint(request),
                    status=response.status_code,
                    body=response.get_data(),
                    headers={
                        k: v for k, v in response.headers.items() if k.lower() != "content-length"
                    },
                    at=self.time.now(),
                )
            if write and self._webhooks:
                self._note_changes()
            drop = False
            if write and response.status_code < 400:
                if self._drop_every_write:
                    drop = True
                elif self._drop_writes > 0:
                    self._drop_writes -= 1
                    drop = True
        return response, drop

    @staticmethod
    def _run(
        handler: Callable[[Request, _Org, dict[str, str]], Response],
        request: Request,
        org: _Org,
        params: dict[str, str],
    ) -> Response:
        try:
            return handler(request, org, params)
        except _Refusal as refused:
            return refused.response
        except XeroValidationError as exc:
            return _validation_exception(
                [{"ValidationErrors": [{"Message": m} for m in exc.messages]}]
            )
        except WhereError as exc:
            return _api_exception(16, "QueryParseException", str(exc))

    def _replay(self, org: _Org, key: str, request: Request) -> Response | None:
        stored = org.idempotency.get(key)
        now = self.time.now()
        if stored is None or now - stored.at >= IDEMPOTENCY_TTL:
            org.idempotency.pop(key, None)
            return None
        if stored.fingerprint != _fingerprint(request):
            return _validation_exception(
                [{"ValidationErrors": [{"Message": _msg("idempotency_mismatch", key=key)}]}]
            )
        return Response(stored.body, status=stored.status, headers=dict(stored.headers))

    def _route(self, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match:
                return route, match.groupdict()
        return None, {}

    def _build_routes(self) -> list[_Route]:
        def route(pattern: str, **handlers: Callable[..., Response]) -> _Route:
            return _Route(re.compile(pattern), {k.upper(): v for k, v in handlers.items()})

        return [
            route("/Organisation", get=self._get_organisation),
            route("/Currencies", get=self._get_currencies),
            route("/BrandingThemes", get=self._get_branding_themes),
            route("/Accounts", get=self._get_accounts),
            route("/TaxRates", get=self._get_tax_rates),
            route("/TrackingCategories", get=self._get_tracking),
            route("/Items", get=self._get_items),
            route(r"/Items/(?P<id>[^/]+)", get=self._get_item),
            route("/Contacts", get=self._get_contacts, put=self._put_contacts),
            route(rf"/Contacts/(?P<id>{_GUID})", get=self._get_contact),
            route(
                "/Invoices",
                get=self._get_invoices,
                put=self._put_invoices,
                post=self._post_invoices,
            ),
            route(rf"/Invoices/(?P<id>{_GUID})", get=self._get_invoice, post=self._post_invoice),
            route(rf"/Invoices/(?P<id>{_GUID})/Email", post=self._email_invoice),
            route(
                "/Payments",
                get=self._get_payments,
                put=self._put_payments,
                post=self._post_payment,
            ),
            route(rf"/Payments/(?P<id>{_GUID})", get=self._get_payment, post=self._delete_payment),
            route("/BankTransfers", get=self._get_bank_transfers, put=self._put_bank_transfers),
            route(rf"/BankTransfers/(?P<id>{_GUID})", get=self._get_bank_transfer),
            route(
                "/BankTransactions",
                get=self._get_bank_transactions,
                put=self._put_bank_transactions,
            ),
            route(rf"/BankTransactions/(?P<id>{_GUID})", get=self._get_bank_transaction),
            route("/CreditNotes", get=self._get_credit_notes, put=self._put_credit_notes),
            route(rf"/CreditNotes/(?P<id>{_GUID})", get=self._get_credit_note),
            route(rf"/CreditNotes/(?P<id>{_GUID})/Allocations", put=self._put_allocations),
            route("/Reports/TrialBalance", get=self._get_trial_balance),
        ]

    # -- reference data --------------------------------------------------------------------

    def _envelope(self, name: str, rows: Any, **extra: Any) -> Response:
        return _json(
            200,
            {
                "Id": str(uuid.uuid4()),
                "Status": "OK",
                "ProviderName": "milestone-sync emulator",
                "DateTimeUTC": ms_date(self.time.now()),
                **extra,
                name: rows,
            },
        )

    def _get_organisation(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        body: dict[str, Any] = {
            "OrganisationID": org.id,
            "Name": org.name,
            "LegalName": org.name,
            "BaseCurrency": org.base_currency,
            "CountryCode": org.country,
            "OrganisationType": "COMPANY",
            "OrganisationStatus": "ACTIVE",
            "IsDemoCompany": False,
            "Version": "US" if org.country == "US" else "GLOBAL",
            "ShortCode": org.short_code,
            "Timezone": "UTC",
            "Class": "STANDARD",
            "Edition": "BUSINESS",
        }
        if org.period_lock:
            body["PeriodLockDate"] = ms_date(org.period_lock)
        if org.year_lock:
            body["EndOfYearLockDate"] = ms_date(org.year_lock)
        if org.terms:
            body["PaymentTerms"] = {"Sales": {"Day": org.terms[0], "Type": org.terms[1]}}
        return self._envelope("Organisations", [body])

    def _get_currencies(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        codes = [org.base_currency, *sorted(org.currencies - {org.base_currency})]
        return self._envelope("Currencies", [{"Code": c, "Description": c} for c in codes])

    def _get_branding_themes(self, request: Request, org: _Org, params: dict[str, str]):
        return self._envelope(
            "BrandingThemes",
            [
                {
                    "BrandingThemeID": org.branding_theme,
                    "Name": "Standard",
                    "SortOrder": 0,
                    "Type": "INVOICE",
                }
            ],
        )

    def _get_accounts(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        rows = [
            (
                {
                    "AccountID": a.id,
                    "Code": a.code,
                    "Name": a.name,
                    "Type": a.type,
                    "Status": a.status,
                    "Class": a.account_class,
                    "EnablePaymentsToAccount": a.enable_payments,
                    "ShowInExpenseClaims": False,
                    "UpdatedDateUTC": ms_date(a.updated),
                    **({"TaxType": a.tax_type} if a.tax_type else {}),
                    **({"BankAccountType": "BANK"} if a.type == "BANK" else {}),
                },
                {
                    "Code": a.code,
                    "Name": a.name,
                    "Type": a.type,
                    "Status": a.status,
                    "TaxType": a.tax_type,
                    "Class": a.account_class,
                    "EnablePaymentsToAccount": a.enable_payments,
                },
            )
            for a in org.accounts.values()
        ]
        return self._envelope("Accounts", _filtered(request, rows, SIMPLE_FIELDS, "Account"))

    def _get_tax_rates(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        rows = [
            (
                {
                    "Name": t.name,
                    "TaxType": t.tax_type,
                    "Status": t.status,
                    "CanApplyToRevenue": t.revenue,
                    "CanApplyToExpenses": t.expenses,
                    "CanApplyToAssets": True,
                    "CanApplyToLiabilities": True,
                    "CanApplyToEquity": True,
                    "DisplayTaxRate": t.rate,
                    "EffectiveRate": t.rate,
                    "TaxComponents": [
                        {
                            "Name": t.name,
                            "Rate": t.rate,
                            "IsCompound": False,
                            "IsNonRecoverable": False,
                        }
                    ],
                },
                {"Name": t.name, "TaxType": t.tax_type, "Status": t.status},
            )
            for t in org.tax_rates.values()
        ]
        return self._envelope("TaxRates", _filtered(request, rows, SIMPLE_FIELDS, "TaxRate"))

    def _get_tracking(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        archived = _flag(request.args.get("includeArchived"))
        rows = []
        for category in org.tracking.values():
            if category.status != "ACTIVE" and not archived:
                continue
            rows.append(
                {
                    "TrackingCategoryID": category.id,
                    "Name": category.name,
                    "Status": category.status,
                    "Options": [
                        {
                            "TrackingOptionID": option_id,
                            "Name": name,
                            "Status": status,
                            "HasValidationErrors": False,
                            "IsDeleted": False,
                            "IsArchived": status == "ARCHIVED",
                            "IsActive": status == "ACTIVE",
                        }
                        for name, (option_id, status) in category.options.items()
                        if status == "ACTIVE" or archived
                    ],
                }
            )
        return self._envelope("TrackingCategories", rows)

    def _render_item(self, item: _Item) -> dict[str, Any]:
        sales: dict[str, Any] = {}
        if item.unit_price is not None:
            sales["UnitPrice"] = item.unit_price
        if item.account_code:
            sales["AccountCode"] = item.account_code
        if item.tax_type:
            sales["TaxType"] = item.tax_type
        return {
            "ItemID": item.id,
            "Code": item.code,
            "Name": item.name,
            "Description": item.description,
            "IsSold": item.is_sold,
            "IsPurchased": False,
            "IsTrackedAsInventory": False,
            "SalesDetails": sales,
            "UpdatedDateUTC": ms_date(item.updated),
        }

    def _get_items(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        rows = [
            (self._render_item(i), {"Code": i.code, "Name": i.name})
            for i in org.items.values()
            if not i.archived
        ]
        return self._envelope("Items", _filtered(request, rows, SIMPLE_FIELDS, "Item"))

    def _get_item(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        wanted = params["id"]
        for item in org.items.values():
            if not item.archived and (
                item.code == wanted or item.id.casefold() == wanted.casefold()
            ):
                return self._envelope("Items", [self._render_item(item)])
        raise _not_found()

    def _render_contact(self, contact: _Contact) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ContactID": contact.id,
            "ContactStatus": contact.status,
            "Name": contact.name,
            "IsCustomer": True,
            "IsSupplier": False,
            "Addresses": [],
            "Phones": [],
            "ContactGroups": [],
            "ContactPersons": [],
            "HasAttachments": False,
            "HasValidationErrors": False,
            "UpdatedDateUTC": ms_date(contact.updated),
        }
        if contact.email:
            body["EmailAddress"] = contact.email
        if contact.currency:
            body["DefaultCurrency"] = contact.currency
        if contact.terms:
            body["PaymentTerms"] = {"Sales": {"Day": contact.terms[0], "Type": contact.terms[1]}}
        return body

    def _get_contacts(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        args = request.args
        ids = {i.strip().casefold() for i in args.get("IDs", "").split(",") if i.strip()}
        archived = _flag(args.get("includeArchived")) or bool(ids)
        since = request.headers.get("If-Modified-Since")
        moment = _parse_moment_header(since) if since else None
        rows = []
        for contact in org.contacts.values():
            if ids and contact.id.casefold() not in ids:
                continue
            if contact.status == "ARCHIVED" and not archived:
                continue
            if moment is not None and contact.updated < moment:
                continue
            view = {
                "ContactID": contact.id,
                "Name": contact.name,
                "EmailAddress": contact.email,
                "ContactStatus": contact.status,
                "IsCustomer": True,
                "UpdatedDateUTC": contact.updated,
            }
            rows.append((self._render_contact(contact), view))
        selected = _filtered(request, rows, CONTACT_FIELDS, "Contact")
        page, size = _paging(args)
        if page is not None:
            selected = selected[(page - 1) * size : page * size]
        return self._envelope("Contacts", selected)

    def _get_contact(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        contact = _find(org.contacts, params["id"])
        if contact is None:
            raise _not_found()
        return self._envelope("Contacts", [self._render_contact(contact)])

    # -- invoices: reading -----------------------------------------------------------------

    def _invoice_view(self, org: _Org, invoice: _Invoice) -> dict[str, Any]:
        contact = org.contacts.get(invoice.contact_id)
        paid = self._amount_paid(org, invoice)
        credited = self._amount_credited(org, invoice)
        return {
            "InvoiceID": invoice.id,
            "InvoiceNumber": invoice.number,
            "Type": invoice.type,
            "Status": invoice.status,
            "Reference": invoice.reference,
            "Contact.ContactID": invoice.contact_id,
            "Contact.Name": contact.name if contact else None,
            "Date": _midnight(invoice.issued),
            "DueDate": _midnight(invoice.due) if invoice.due else None,
            "UpdatedDateUTC": invoice.updated,
            "CurrencyCode": invoice.currency,
            "Total": invoice.total,
            "SubTotal": invoice.subtotal,
            "AmountDue": invoice.total - paid - credited,
            "AmountPaid": paid,
            "SentToContact": invoice.sent,
            "_created": invoice.created,
        }

    def _amount_paid(self, org: _Org, invoice: _Invoice) -> Decimal:
        return sum(
            (
                p.amount
                for p in org.payments.values()
                if p.invoice_id == invoice.id and p.status == "AUTHORISED"
            ),
            Decimal("0"),
        )

    def _amount_credited(self, org: _Org, invoice: _Invoice) -> Decimal:
        """What credit notes allocated to the invoice took off it."""
        return sum(
            (
                a.amount
                for note in org.credit_notes.values()
                if note.status in ("AUTHORISED", "PAID")
                for a in note.allocations
                if a.invoice_id == invoice.id
            ),
            Decimal("0"),
        )

    def _amount_settled(self, org: _Org, invoice: _Invoice) -> Decimal:
        return self._amount_paid(org, invoice) + self._amount_credited(org, invoice)

    def _render_invoice(
        self, org: _Org, invoice: _Invoice, *, lines: bool = True
    ) -> dict[str, Any]:
        contact = org.contacts.get(invoice.contact_id)
        paid = self._amount_paid(org, invoice)
        credited = self._amount_credited(org, invoice)
        payments = [
            {
                "PaymentID": p.id,
                "Date": ms_date(p.paid_on),
                "Amount": p.amount,
                "Reference": p.reference or "",
                "CurrencyRate": Decimal("1"),
                "HasAccount": False,
                "HasValidationErrors": False,
            }
            for p in org.payments.values()
            if p.invoice_id == invoice.id and p.status == "AUTHORISED"
        ]
        body: dict[str, Any] = {
            "Type": invoice.type,
            "InvoiceID": invoice.id,
            "InvoiceNumber": invoice.number,
            "Reference": invoice.reference or "",
            "Payments": payments,
            "CreditNotes": [
                {
                    "CreditNoteID": note.id,
                    "CreditNoteNumber": note.number,
                    "AppliedAmount": a.amount,
                    "HasErrors": False,
                }
                for note in org.credit_notes.values()
                if note.status in ("AUTHORISED", "PAID")
                for a in note.allocations
                if a.invoice_id == invoice.id
            ],
            "Prepayments": [],
            "Overpayments": [],
            "AmountDue": _round(invoice.total - paid - credited),
            "AmountPaid": _round(paid),
            "AmountCredited": _round(credited),
            "CurrencyRate": Decimal("1"),
            "IsDiscounted": False,
            "HasAttachments": False,
            "HasErrors": False,
            "Contact": {
                "ContactID": invoice.contact_id,
                "Name": contact.name if contact else "",
                "ContactStatus": contact.status if contact else "ACTIVE",
                "Addresses": [],
                "Phones": [],
                "ContactGroups": [],
                "ContactPersons": [],
                "HasValidationErrors": False,
            },
            "DateString": f"{invoice.issued.isoformat()}T00:00:00",
            "Date": ms_date(invoice.issued),
            "Status": invoice.status,
            "LineAmountTypes": invoice.line_amount_types,
            "LineItems": [_render_line(ln) for ln in invoice.lines] if lines else [],
            "SubTotal": _round(invoice.subtotal),
            "TotalTax": _round(invoice.total_tax),
            "Total": invoice.total,
            "UpdatedDateUTC": ms_date(invoice.updated),
            "CurrencyCode": invoice.currency,
            "SentToContact": invoice.sent,
            "BrandingThemeID": invoice.branding_theme or org.branding_theme,
        }
        if invoice.due:
            body["DueDateString"] = f"{invoice.due.isoformat()}T00:00:00"
            body["DueDate"] = ms_date(invoice.due)
        if invoice.fully_paid_on and invoice.status == "PAID":
            body["FullyPaidOnDate"] = ms_date(invoice.fully_paid_on)
        if invoice.url:
            body["Url"] = invoice.url
        return body

    def _get_invoices(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        args = request.args
        since = request.headers.get("If-Modified-Since")
        try:
            moment = _parse_moment_header(since) if since else None
        except (TypeError, ValueError) as exc:
            raise _query_error(f"If-Modified-Since '{since}' is not a date") from exc
        predicate = (
            parse_where(args["where"], INVOICE_FIELDS, "Invoice") if args.get("where") else None
        )
        ids = _csv(args.get("IDs"), casefold=True)
        numbers = _csv(args.get("InvoiceNumbers"))
        contacts = _csv(args.get("ContactIDs"), casefold=True)
        statuses = {s.upper() for s in _csv(args.get("Statuses"))}
        rows: list[dict[str, Any]] = []
        for invoice in org.invoices.values():
            if ids and invoice.id.casefold() not in ids:
                continue
            if numbers and invoice.number not in numbers:
                continue
            if contacts and invoice.contact_id.casefold() not in contacts:
                continue
            if statuses and invoice.status not in statuses:
                continue
            if moment is not None and invoice.updated < moment:
                continue
            view = self._invoice_view(org, invoice)
            if predicate is not None and not predicate(view):
                continue
            rows.append(view)
        rows.sort(key=lambda v: (v["_created"], v["InvoiceID"]))
        rows = _order_rows(rows, args.get("order"), INVOICE_FIELDS)
        page, size = _paging(args)
        summary = _flag(args.get("summaryOnly"))
        extra: dict[str, Any] = {}
        if page is not None:
            count = len(rows)
            extra["pagination"] = {
                "page": page,
                "pageSize": size,
                "pageCount": max(1, math.ceil(count / size)),
                "itemCount": count,
            }
            rows = rows[(page - 1) * size : page * size]
        # line items only come with paged lists (as Xero does), never with summaryOnly
        with_lines = page is not None and not summary
        invoices = [
            self._render_invoice(org, org.invoices[v["InvoiceID"]], lines=with_lines) for v in rows
        ]
        return self._envelope("Invoices", invoices, **extra)

    def _get_invoice(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        invoice = _find(org.invoices, params["id"])
        if invoice is None:
            raise _not_found()
        return self._envelope("Invoices", [self._render_invoice(org, invoice)])

    # -- invoices: writing -----------------------------------------------------------------

    def _put_invoices(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        return self._save_invoices(request, org, create_only=True)

    def _post_invoices(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        return self._save_invoices(request, org, create_only=False)

    def _post_invoice(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        invoice = _find(org.invoices, params["id"])
        elements = _elements(request, "Invoices")
        if invoice is None:
            raise _refuse_validation(_msg("invoice_missing"))
        if len(elements) != 1:
            raise _refuse_validation("Exactly one invoice must be given to update by InvoiceID")
        element = dict(elements[0])
        element["InvoiceID"] = invoice.id
        errors = self._update_invoice(org, invoice, element, _unitdp(request), commit=False)
        if errors:
            raise _refuse_validation(errors, element)
        self._update_invoice(org, invoice, element, _unitdp(request), commit=True)
        return self._envelope("Invoices", [self._render_invoice(org, invoice)])

    def _save_invoices(self, request: Request, org: _Org, *, create_only: bool) -> Response:
        elements = _elements(request, "Invoices")
        summarize = not _is_false(request.args.get("summarizeErrors"))
        unitdp = _unitdp(request)
        outcomes: list[tuple[dict[str, Any], list[str], _Invoice | None]] = []
        taken: set[str] = set()  # numbers claimed by earlier elements of this request
        for raw in elements:
            element = dict(raw)
            existing = None if create_only else self._existing(org, element)
            if existing is not None:
                errors = self._update_invoice(org, existing, element, unitdp, commit=False)
                outcomes.append((element, errors, existing))
                continue
            if create_only and element.get("InvoiceID"):
                outcomes.append((element, ["An invoice cannot be created with an InvoiceID"], None))
                continue
            errors, built = self._build_invoice(org, element, unitdp, taken)
            if built is not None and not errors:
                taken.add(built.number)
            outcomes.append((element, errors, built))
        failed = [(e, errs) for e, errs, _ in outcomes if errs]
        if failed and summarize:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered: list[dict[str, Any]] = []
        now = self.time.now()
        for element, errors, invoice in outcomes:
            if errors:
                rendered.append(
                    {
                        **element,
                        "HasErrors": True,
                        "StatusAttributeString": "ERROR",
                        "ValidationErrors": [{"Message": m} for m in errors],
                    }
                )
                continue
            assert invoice is not None
            if invoice.id in org.invoices:
                self._update_invoice(org, invoice, element, unitdp, commit=True)
            else:
                invoice.created = invoice.updated = now
                org.invoices[invoice.id] = invoice
            rendered.append({**self._render_invoice(org, invoice), "StatusAttributeString": "OK"})
        return self._envelope("Invoices", rendered)

    def _existing(self, org: _Org, element: Mapping[str, Any]) -> _Invoice | None:
        invoice_id = element.get("InvoiceID")
        if invoice_id:
            return _find(org.invoices, str(invoice_id))
        number = element.get("InvoiceNumber")
        if number:
            for invoice in org.invoices.values():
                if (
                    invoice.type == "ACCREC"
                    and invoice.number == number
                    and invoice.status != "DELETED"
                ):
                    return invoice
        return None

    def _build_invoice(
        self, org: _Org, element: Mapping[str, Any], unitdp: int, taken: set[str]
    ) -> tuple[list[str], _Invoice | None]:
        errors: list[str] = []
        kind = element.get("Type", "ACCREC")
        if kind != "ACCREC":
            return [_msg("type_unsupported")], None
        status = str(element.get("Status") or "DRAFT")
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            errors.append(_msg("create_status"))
        contact, contact_errors = self._contact_for(org, element.get("Contact"))
        errors += contact_errors
        currency = element.get("CurrencyCode") or (contact.currency if contact else None)
        currency = currency or org.base_currency
        if currency != org.base_currency and currency not in org.currencies:
            errors.append(_msg("currency_not_enabled", code=currency))
        try:
            issued = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
            due = parse_date(element["DueDate"]) if element.get("DueDate") else None
        except XeroValidationError as exc:
            return errors + exc.messages, None
        errors += self._lock_errors(org, issued)
        if due is None and status != "DRAFT":
            errors.append(_msg("due_date_required"))
        amount_types = str(element.get("LineAmountTypes") or "Exclusive")
        raw_lines = element.get("LineItems") or []
        if not raw_lines:
            errors.append(_msg("line_items_required"))
        lines, line_errors = self._lines(org, raw_lines, amount_types, status, unitdp)
        errors += line_errors
        number = element.get("InvoiceNumber")
        if number:
            number = str(number)
            if number in taken or any(
                i.type == "ACCREC" and i.number == number and i.status != "DELETED"
                for i in org.invoices.values()
            ):
                errors.append(_msg("duplicate_number"))
        if element.get("SentToContact") and status != "AUTHORISED":
            errors.append(_msg("sent_not_approved"))
        if errors:
            return errors, None
        invoice = _Invoice(
            id=str(uuid.uuid4()),
            number=number or self._next_number(org, taken),
            type="ACCREC",
            contact_id=contact.id if contact else "",
            status=status,
            line_amount_types=amount_types,
            lines=lines,
            issued=issued,
            due=due,
            reference=element.get("Reference"),
            currency=currency,
            created=self.time.now(),
            updated=self.time.now(),
            branding_theme=element.get("BrandingThemeID"),
            sent=bool(element.get("SentToContact")),
            url=element.get("Url"),
        )
        if invoice.total < 0:
            return [_msg("total_negative")], None
        return [], invoice

    def _next_number(self, org: _Org, taken: set[str]) -> str:
        used = {i.number for i in org.invoices.values()} | taken
        while True:
            candidate = f"INV-{org.next_number:04d}"
            org.next_number += 1
            if candidate not in used:
                return candidate

    def _contact_for(self, org: _Org, raw: Any) -> tuple[_Contact | None, list[str]]:
        if not isinstance(raw, Mapping):
            return None, [_msg("contact_required")]
        contact_id = raw.get("ContactID")
        if contact_id:
            contact = _find(org.contacts, str(contact_id))
        elif raw.get("Name"):
            contact = next(
                (
                    c
                    for c in org.contacts.values()
                    if c.name.casefold() == str(raw["Name"]).casefold()
                ),
                None,
            )
            if contact is None:  # Xero would create a new contact here; the emulator refuses
                return None, [_msg("contact_missing")]
        else:
            return None, [_msg("contact_required")]
        if contact is None:
            return None, [_msg("contact_missing")]
        if contact.status == "ARCHIVED":
            return contact, [_msg("contact_archived")]
        return contact, []

    def _lock_errors(self, org: _Org, day: date) -> list[str]:
        if org.year_lock and day <= org.year_lock:
            return [_msg("year_lock", date=_long_date(org.year_lock))]
        if org.period_lock and day <= org.period_lock:
            return [_msg("period_lock", date=_long_date(org.period_lock))]
        return []

    def _lines(
        self,
        org: _Org,
        raw_lines: Sequence[Any],
        amount_types: str,
        status: str,
        unitdp: int,
        *,
        purpose: str = "revenue",
    ) -> tuple[list[_Line], list[str]]:
        """Lines of a sale (invoice, credit note, money received: tax rates that apply to
        revenue) or of a purchase (`purpose="expenses"`: money spent)."""
        lines: list[_Line] = []
        errors: list[str] = []
        places = Decimal("0.0001") if unitdp == 4 else CENT
        for raw in raw_lines:
            if not isinstance(raw, Mapping):
                errors.append("A line item must be an object")
                continue
            item = None
            code = raw.get("ItemCode")
            if code:
                item = org.items.get(str(code))
                if item is None or item.archived:
                    errors.append(_msg("item_invalid", code=code))
                    continue
                if purpose == "revenue" and not item.is_sold:
                    errors.append(_msg("item_not_sold", code=code))
                    continue
            description = raw.get("Description") or (item.description if item else None)
            if not description and not item:
                errors.append(_msg("description_required"))
            try:
                quantity = _dec(raw.get("Quantity"), Decimal("1"))
                unit = _dec(raw.get("UnitAmount"))
                given_total = _dec(raw.get("LineAmount"))
                discount = _dec(raw.get("DiscountRate"))
            except XeroValidationError as exc:
                errors += exc.messages
                continue
            assert quantity is not None
            if unit is None and given_total is None and item and item.unit_price is not None:
                unit = item.unit_price
            if unit is not None:
                unit = _round(unit, places)
                gross = quantity * unit
                if discount:
                    gross = gross * (Decimal("100") - discount) / Decimal("100")
                line_amount = _round(gross)
            elif given_total is not None:
                line_amount = _round(given_total)
                unit = _round(line_amount / quantity, places) if quantity else line_amount
            else:
                line_amount = Decimal("0.00")
                unit = Decimal("0")
            account_code = raw.get("AccountCode") or (item.account_code if item else None)
            if account_code:
                account = org.accounts.get(str(account_code))
                if account is None or account.type == "BANK" or account.system:
                    errors.append(_msg("account_invalid", code=account_code))
                    continue
                if account.status != "ACTIVE":
                    errors.append(_msg("account_archived", code=account_code))
                    continue
            elif status != "DRAFT":
                errors.append(_msg("account_required"))
                continue
            else:
                account = None
            tax_type = (
                raw.get("TaxType")
                or (item.tax_type if item else None)
                or (account.tax_type if account else None)
            )
            rate = Decimal("0")
            if amount_types != "NoTax" and tax_type:
                tax = org.tax_rates.get(str(tax_type))
                usable = tax is not None and (tax.revenue if purpose == "revenue" else tax.expenses)
                if tax is None or tax.status != "ACTIVE" or not usable:
                    errors.append(_msg("tax_invalid", code=tax_type))
                    continue
                rate = tax.rate / Decimal("100")
            if amount_types == "Exclusive":
                tax_amount = _round(line_amount * rate)
            elif amount_types == "Inclusive":
                tax_amount = _round(line_amount * rate / (1 + rate))
            else:
                tax_amount = Decimal("0.00")
            tracking, tracking_errors = self._tracking(org, raw.get("Tracking") or [])
            if tracking_errors:
                errors += tracking_errors
                continue
            lines.append(
                _Line(
                    id=str(uuid.uuid4()),
                    description=description,
                    quantity=quantity,
                    unit_amount=unit,
                    line_amount=line_amount,
                    tax_amount=tax_amount,
                    account_code=str(account_code) if account_code else None,
                    tax_type=str(tax_type) if tax_type else None,
                    item_code=item.code if item else None,
                    tracking=tracking,
                    discount_rate=discount,
                )
            )
        return lines, errors

    def _tracking(
        self, org: _Org, raw: Sequence[Any]
    ) -> tuple[list[tuple[str, str, str, str]], list[str]]:
        chosen: list[tuple[str, str, str, str]] = []
        for entry in raw:
            if not isinstance(entry, Mapping):
                return [], ["A tracking entry must be an object"]
            name = entry.get("Name")
            option = entry.get("Option")
            category = None
            if entry.get("TrackingCategoryID"):
                category = next(
                    (
                        c
                        for c in org.tracking.values()
                        if c.id.casefold() == str(entry["TrackingCategoryID"]).casefold()
                    ),
                    None,
                )
            elif name:
                category = org.tracking.get(str(name))
            found = category.options.get(str(option)) if category and option else None
            if category is None or category.status != "ACTIVE" or not found or found[1] != "ACTIVE":
                return [], [_msg("tracking_invalid", name=name or "?", option=option or "?")]
            chosen.append((category.id, category.name, found[0], str(option)))
        if len({c[0] for c in chosen}) != len(chosen) or len(chosen) > 2:
            return [], [
                "A line item can carry at most one option of each of two tracking categories"
            ]
        return chosen, []

    def _transition(self, org: _Org, invoice: _Invoice, target: str) -> list[str]:
        """Xero's status graph: DRAFT/SUBMITTED -> AUTHORISED or DELETED (or each other);
        AUTHORISED -> VOIDED without payments; PAID, VOIDED and DELETED are final."""
        current = invoice.status
        if target == current:
            return []
        allowed = {
            "DRAFT": {"SUBMITTED", "AUTHORISED", "DELETED"},
            "SUBMITTED": {"DRAFT", "AUTHORISED", "DELETED"},
            "AUTHORISED": {"VOIDED"},
        }.get(current, set())
        if current == "AUTHORISED" and target == "VOIDED" and self._amount_settled(org, invoice):
            return [_msg("void_with_payments")]
        if target not in allowed:
            return [_msg("invalid_status")]
        return []

    @staticmethod
    def _approval_errors(status: str, due: date | None, lines: Sequence[_Line]) -> list[str]:
        """What a SUBMITTED or AUTHORISED invoice must have that a draft may lack."""
        if status not in ("SUBMITTED", "AUTHORISED"):
            return []
        errors = []
        if due is None:
            errors.append(_msg("due_date_required"))
        if any(line.account_code is None for line in lines):
            errors.append(_msg("account_required"))
        return errors

    def _update_invoice(
        self,
        org: _Org,
        invoice: _Invoice,
        element: Mapping[str, Any],
        unitdp: int,
        *,
        commit: bool,
    ) -> list[str]:
        """Errors of applying `element` to `invoice`; applies it when `commit`."""
        target = str(element.get("Status") or invoice.status)
        edited = set(element) - {
            "InvoiceID",
            "Status",
            "Type",
            "HasAttachments",
            "HasErrors",
            "Contact",
            "InvoiceNumber",
            "SentToContact",
        }
        if invoice.status in ("PAID", "VOIDED", "DELETED") and (edited or target != invoice.status):
            return [_msg("invalid_status")]
        if edited and self._amount_settled(org, invoice) > 0:
            return [_msg("has_payments")]
        errors = self._transition(org, invoice, target)
        if errors:
            return errors
        changes: dict[str, Any] = {}
        try:
            if element.get("Date"):
                changes["issued"] = parse_date(element["Date"])
            if element.get("DueDate"):
                changes["due"] = parse_date(element["DueDate"])
        except XeroValidationError as exc:
            return exc.messages
        if "issued" in changes:
            errors = self._lock_errors(org, changes["issued"])
            if errors:
                return errors
        if "Reference" in element:
            changes["reference"] = element.get("Reference")
        if element.get("LineAmountTypes"):
            changes["line_amount_types"] = str(element["LineAmountTypes"])
        if "LineItems" in element:
            lines, line_errors = self._lines(
                org,
                element.get("LineItems") or [],
                changes.get("line_amount_types", invoice.line_amount_types),
                target,
                unitdp,
            )
            if line_errors:
                return line_errors
            changes["lines"] = lines
        number = element.get("InvoiceNumber")
        if number and number != invoice.number:
            if any(
                other.id != invoice.id
                and other.type == "ACCREC"
                and other.number == number
                and other.status != "DELETED"
                for other in org.invoices.values()
            ):
                return [_msg("duplicate_number")]
            changes["number"] = str(number)
        errors = self._approval_errors(
            target, changes.get("due", invoice.due), changes.get("lines", invoice.lines)
        )
        if errors:
            return errors
        sent = element.get("SentToContact")
        if sent and target not in SENDABLE_STATUSES:
            return [_msg("sent_not_approved")]
        if not commit:
            return []
        for name, value in changes.items():
            setattr(invoice, name, value)
        if sent is not None:
            invoice.sent = bool(sent)
        invoice.status = target
        invoice.updated = self.time.now()
        return []

    # -- email -----------------------------------------------------------------------------

    def _email_invoice(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        invoice = _find(org.invoices, params["id"])
        if invoice is None:
            raise _not_found()
        if invoice.type != "ACCREC":
            raise _refuse_validation(_msg("email_type"))
        if invoice.status not in SENDABLE_STATUSES:
            raise _refuse_validation(_msg("email_status"))
        contact = org.contacts.get(invoice.contact_id)
        if contact is None or not contact.email:
            raise _refuse_validation(_msg("email_no_address"))
        today = self.time.now().date()
        if (
            self.daily_email_limit is not None
            and org.email_days.get(today, 0) >= self.daily_email_limit
        ):
            raise _refuse_validation(_msg("email_limit"))
        org.email_days[today] = org.email_days.get(today, 0) + 1
        org.emails[invoice.id] = org.emails.get(invoice.id, 0) + 1
        invoice.sent = True
        invoice.updated = self.time.now()
        return Response(status=204)

    # -- contacts: writing -----------------------------------------------------------------

    def _put_contacts(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        """PUT /Contacts creates contacts; names are unique among active contacts [SEEN]."""
        elements = _elements(request, "Contacts")
        summarize = not _is_false(request.args.get("summarizeErrors"))
        taken = {c.name.casefold() for c in org.contacts.values() if c.status == "ACTIVE"}
        checked: list[tuple[dict[str, Any], list[str]]] = []
        for raw in elements:
            name = str(raw.get("Name") or "").strip()
            if not name:
                checked.append((dict(raw), [_msg("contact_name_required")]))
            elif name.casefold() in taken:
                checked.append((dict(raw), [_msg("contact_name_taken", name=name)]))
            else:
                taken.add(name.casefold())
                checked.append((dict(raw), []))
        failed = [(e, errs) for e, errs in checked if errs]
        if failed and summarize:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered = []
        for element, errors in checked:
            if errors:
                rendered.append(
                    {
                        **element,
                        "HasValidationErrors": True,
                        "ValidationErrors": [{"Message": m} for m in errors],
                    }
                )
                continue
            contact = _Contact(
                id=str(uuid.uuid4()),
                name=str(element["Name"]).strip(),
                email=element.get("EmailAddress") or None,
                currency=element.get("DefaultCurrency") or None,
                updated=self.time.now(),
            )
            org.contacts[contact.id] = contact
            rendered.append(self._render_contact(contact))
        return self._envelope("Contacts", rendered)

    # -- bank transfers --------------------------------------------------------------------

    def _render_transfer(self, org: _Org, transfer: _BankTransfer) -> dict[str, Any]:
        def account(code: str) -> dict[str, Any]:
            found = org.accounts.get(code)
            return {
                "AccountID": found.id if found else None,
                "Code": code,
                "Name": found.name if found else "",
            }

        return {
            "BankTransferID": transfer.id,
            "FromBankAccount": account(transfer.from_code),
            "ToBankAccount": account(transfer.to_code),
            "Amount": transfer.amount,
            "Date": ms_date(transfer.on),
            "DateString": f"{transfer.on.isoformat()}T00:00:00",
            "CurrencyRate": Decimal("1"),
            "FromBankTransactionID": transfer.from_transaction,
            "ToBankTransactionID": transfer.to_transaction,
            "FromIsReconciled": False,
            "ToIsReconciled": False,
            "Reference": transfer.reference or "",
            "HasAttachments": False,
            "CreatedDateUTC": ms_date(transfer.created),
            "Status": transfer.status,
        }

    def _transfer_view(self, transfer: _BankTransfer) -> dict[str, Any]:
        return {
            "BankTransferID": transfer.id,
            "Reference": transfer.reference,
            "Date": _midnight(transfer.on),
            "Amount": transfer.amount,
            "FromBankAccount.Code": transfer.from_code,
            "ToBankAccount.Code": transfer.to_code,
            "CreatedDateUTC": transfer.created,
        }

    def _get_bank_transfers(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        deleted = _flag(request.args.get("includeDeleted"))
        rows = _listed(
            request,
            [t for t in org.bank_transfers.values() if deleted or t.status != "DELETED"],
            BANK_TRANSFER_FIELDS,
            "BankTransfer",
            self._transfer_view,
            lambda transfer: transfer.created,
            paged=False,
        )
        return self._envelope(
            "BankTransfers",
            [self._render_transfer(org, org.bank_transfers[v["BankTransferID"]]) for v in rows],
        )

    def _get_bank_transfer(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        transfer = _find(org.bank_transfers, params["id"])
        if transfer is None:
            raise _not_found()
        return self._envelope("BankTransfers", [self._render_transfer(org, transfer)])

    def _put_bank_transfers(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        """Money between two BANK accounts; Xero takes no summarizeErrors here [SPEC]."""
        elements = _elements(request, "BankTransfers")
        checked = [(dict(e), self._transfer_errors(org, e)) for e in elements]
        failed = [(e, errs) for e, errs in checked if errs]
        if failed:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered = []
        now = self.time.now()
        for element, _ in checked:
            from_account = _account_ref(org, element.get("FromBankAccount"))
            to_account = _account_ref(org, element.get("ToBankAccount"))
            assert from_account is not None and to_account is not None
            transfer = _BankTransfer(
                id=str(uuid.uuid4()),
                from_code=from_account.code,
                to_code=to_account.code,
                amount=_round(_dec(element.get("Amount")) or Decimal("0")),
                on=parse_date(element["Date"]) if element.get("Date") else now.date(),
                reference=element.get("Reference"),
                status="AUTHORISED",
                created=now,
            )
            org.bank_transfers[transfer.id] = transfer
            rendered.append(self._render_transfer(org, transfer))
        return self._envelope("BankTransfers", rendered)

    def _transfer_errors(self, org: _Org, element: Mapping[str, Any]) -> list[str]:
        errors = []
        accounts = []
        for side in ("FromBankAccount", "ToBankAccount"):
            account = _account_ref(org, element.get(side))
            code = _ref_code(element.get(side)) or ""
            if account is None:
                errors.append(_msg("account_invalid", code=code))
            elif account.status != "ACTIVE":
                errors.append(_msg("account_archived", code=account.code))
            elif account.type != "BANK":
                errors.append(_msg("bank_account_invalid", code=account.code))
            accounts.append(account)
        if not errors and accounts[0] is accounts[1]:
            errors.append(_msg("transfer_same_account"))
        try:
            amount = _dec(element.get("Amount"))
            on = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
        except XeroValidationError as exc:
            return errors + exc.messages
        if amount is None or _round(amount) <= 0:
            errors.append(_msg("transfer_amount"))
        return errors + self._lock_errors(org, on)

    # -- bank transactions (spend and receive money) ---------------------------------------

    def _render_bank_transaction(self, org: _Org, tx: _BankTransaction) -> dict[str, Any]:
        contact = org.contacts.get(tx.contact_id)
        bank = org.accounts.get(tx.bank_code)
        subtotal = sum((_net(ln, tx.line_amount_types) for ln in tx.lines), Decimal("0"))
        return {
            "BankTransactionID": tx.id,
            "Type": tx.type,
            "Status": tx.status,
            "Contact": {
                "ContactID": tx.contact_id,
                "Name": contact.name if contact else "",
                "HasValidationErrors": False,
            },
            "BankAccount": {
                "AccountID": bank.id if bank else None,
                "Code": tx.bank_code,
                "Name": bank.name if bank else "",
            },
            "LineItems": [_render_line(ln) for ln in tx.lines],
            "LineAmountTypes": tx.line_amount_types,
            "Date": ms_date(tx.on),
            "DateString": f"{tx.on.isoformat()}T00:00:00",
            "Reference": tx.reference or "",
            "IsReconciled": False,
            "CurrencyCode": tx.currency,
            "CurrencyRate": Decimal("1"),
            "SubTotal": _round(subtotal),
            "TotalTax": _round(sum((ln.tax_amount for ln in tx.lines), Decimal("0"))),
            "Total": tx.total,
            "UpdatedDateUTC": ms_date(tx.updated),
            "HasAttachments": False,
        }

    def _bank_transaction_view(self, org: _Org, tx: _BankTransaction) -> dict[str, Any]:
        bank = org.accounts.get(tx.bank_code)
        return {
            "BankTransactionID": tx.id,
            "Type": tx.type,
            "Status": tx.status,
            "Reference": tx.reference,
            "Date": _midnight(tx.on),
            "Total": tx.total,
            "BankAccount.Code": tx.bank_code,
            "BankAccount.AccountID": bank.id if bank else None,
            "Contact.ContactID": tx.contact_id,
            "UpdatedDateUTC": tx.updated,
        }

    def _get_bank_transactions(self, request: Request, org: _Org, params: dict[str, str]):
        rows = _listed(
            request,
            list(org.bank_transactions.values()),
            BANK_TRANSACTION_FIELDS,
            "BankTransaction",
            lambda tx: self._bank_transaction_view(org, tx),
            lambda tx: tx.updated,
        )
        return self._envelope(
            "BankTransactions",
            [
                self._render_bank_transaction(org, org.bank_transactions[v["BankTransactionID"]])
                for v in rows
            ],
        )

    def _get_bank_transaction(self, request: Request, org: _Org, params: dict[str, str]):
        tx = _find(org.bank_transactions, params["id"])
        if tx is None:
            raise _not_found()
        return self._envelope("BankTransactions", [self._render_bank_transaction(org, tx)])

    def _put_bank_transactions(self, request: Request, org: _Org, params: dict[str, str]):
        elements = _elements(request, "BankTransactions")
        summarize = not _is_false(request.args.get("summarizeErrors"))
        unitdp = _unitdp(request)
        outcomes = [(dict(e), *self._build_bank_transaction(org, e, unitdp)) for e in elements]
        failed = [(e, errs) for e, errs, _ in outcomes if errs]
        if failed and summarize:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered = []
        for element, errors, tx in outcomes:
            if errors or tx is None:
                rendered.append(
                    {
                        **element,
                        "StatusAttributeString": "ERROR",
                        "ValidationErrors": [{"Message": m} for m in errors],
                    }
                )
                continue
            org.bank_transactions[tx.id] = tx
            rendered.append(
                {**self._render_bank_transaction(org, tx), "StatusAttributeString": "OK"}
            )
        return self._envelope("BankTransactions", rendered)

    def _build_bank_transaction(
        self, org: _Org, element: Mapping[str, Any], unitdp: int
    ) -> tuple[list[str], _BankTransaction | None]:
        kind = str(element.get("Type") or "")
        if kind not in ("SPEND", "RECEIVE"):
            return [_msg("bank_type_unsupported")], None
        errors: list[str] = []
        contact, contact_errors = self._contact_for(org, element.get("Contact"))
        errors += contact_errors
        bank = _account_ref(org, element.get("BankAccount"))
        code = _ref_code(element.get("BankAccount")) or ""
        if bank is None:
            errors.append(_msg("account_invalid", code=code))
        elif bank.status != "ACTIVE":
            errors.append(_msg("account_archived", code=bank.code))
        elif bank.type != "BANK":
            errors.append(_msg("bank_account_invalid", code=bank.code))
        status = str(element.get("Status") or "AUTHORISED")
        if status != "AUTHORISED":
            errors.append("Bank transactions can only be created as AUTHORISED.")
        currency = str(element.get("CurrencyCode") or org.base_currency)
        if currency != org.base_currency and currency not in org.currencies:
            errors.append(_msg("currency_not_enabled", code=currency))
        try:
            on = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
        except XeroValidationError as exc:
            return errors + exc.messages, None
        errors += self._lock_errors(org, on)
        amount_types = str(element.get("LineAmountTypes") or "Exclusive")
        raw_lines = element.get("LineItems") or []
        if not raw_lines:
            errors.append(_msg("line_items_required"))
        purpose = "expenses" if kind == "SPEND" else "revenue"
        lines, line_errors = self._lines(
            org, raw_lines, amount_types, "AUTHORISED", unitdp, purpose=purpose
        )
        errors += line_errors
        if errors:
            return errors, None
        now = self.time.now()
        assert contact is not None and bank is not None
        tx = _BankTransaction(
            id=str(uuid.uuid4()),
            type=kind,
            contact_id=contact.id,
            bank_code=bank.code,
            line_amount_types=amount_types,
            lines=lines,
            on=on,
            reference=element.get("Reference"),
            currency=currency,
            status="AUTHORISED",
            created=now,
            updated=now,
        )
        if tx.total <= 0:
            return [_msg("bank_total")], None
        return [], tx

    # -- credit notes ----------------------------------------------------------------------

    def _remaining_credit(self, org: _Org, note: _CreditNote) -> Decimal:
        allocated = sum((a.amount for a in note.allocations), Decimal("0"))
        refunded = sum(
            (
                p.amount
                for p in org.payments.values()
                if p.credit_note_id == note.id and p.status == "AUTHORISED"
            ),
            Decimal("0"),
        )
        return _round(note.total - allocated - refunded)

    def _settle_credit_note(self, org: _Org, note: _CreditNote, on: date) -> None:
        if note.status == "AUTHORISED" and self._remaining_credit(org, note) <= 0:
            note.status = "PAID"
            note.fully_paid_on = on
        note.updated = self.time.now()

    def _render_credit_note(self, org: _Org, note: _CreditNote) -> dict[str, Any]:
        contact = org.contacts.get(note.contact_id)
        subtotal = sum((_net(ln, note.line_amount_types) for ln in note.lines), Decimal("0"))
        body: dict[str, Any] = {
            "CreditNoteID": note.id,
            "CreditNoteNumber": note.number,
            "Type": note.type,
            "Status": note.status,
            "Reference": note.reference or "",
            "Contact": {
                "ContactID": note.contact_id,
                "Name": contact.name if contact else "",
                "HasValidationErrors": False,
            },
            "Date": ms_date(note.issued),
            "DateString": f"{note.issued.isoformat()}T00:00:00",
            "LineAmountTypes": note.line_amount_types,
            "LineItems": [_render_line(ln) for ln in note.lines],
            "SubTotal": _round(subtotal),
            "TotalTax": _round(sum((ln.tax_amount for ln in note.lines), Decimal("0"))),
            "Total": note.total,
            "RemainingCredit": self._remaining_credit(org, note),
            "CurrencyCode": note.currency,
            "CurrencyRate": Decimal("1"),
            "UpdatedDateUTC": ms_date(note.updated),
            "Allocations": [
                {
                    "AllocationID": a.id,
                    "Amount": a.amount,
                    "Date": ms_date(a.on),
                    "Invoice": {
                        "InvoiceID": a.invoice_id,
                        "InvoiceNumber": org.invoices[a.invoice_id].number,
                    },
                }
                for a in note.allocations
            ],
            "Payments": [
                {
                    "PaymentID": p.id,
                    "Date": ms_date(p.paid_on),
                    "Amount": p.amount,
                    "Reference": p.reference or "",
                    "CurrencyRate": Decimal("1"),
                    "HasAccount": False,
                    "HasValidationErrors": False,
                }
                for p in org.payments.values()
                if p.credit_note_id == note.id and p.status == "AUTHORISED"
            ],
            "SentToContact": False,
            "HasAttachments": False,
            "HasErrors": False,
        }
        if note.fully_paid_on and note.status == "PAID":
            body["FullyPaidOnDate"] = ms_date(note.fully_paid_on)
        return body

    def _credit_note_view(self, org: _Org, note: _CreditNote) -> dict[str, Any]:
        return {
            "CreditNoteID": note.id,
            "CreditNoteNumber": note.number,
            "Type": note.type,
            "Status": note.status,
            "Reference": note.reference,
            "Contact.ContactID": note.contact_id,
            "Date": _midnight(note.issued),
            "Total": note.total,
            "RemainingCredit": self._remaining_credit(org, note),
            "UpdatedDateUTC": note.updated,
        }

    def _get_credit_notes(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        rows = _listed(
            request,
            list(org.credit_notes.values()),
            CREDIT_NOTE_FIELDS,
            "CreditNote",
            lambda note: self._credit_note_view(org, note),
            lambda note: note.updated,
        )
        return self._envelope(
            "CreditNotes",
            [self._render_credit_note(org, org.credit_notes[v["CreditNoteID"]]) for v in rows],
        )

    def _get_credit_note(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        note = _find(org.credit_notes, params["id"])
        if note is None:
            raise _not_found()
        return self._envelope("CreditNotes", [self._render_credit_note(org, note)])

    def _put_credit_notes(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        elements = _elements(request, "CreditNotes")
        summarize = not _is_false(request.args.get("summarizeErrors"))
        unitdp = _unitdp(request)
        outcomes = [(dict(e), *self._build_credit_note(org, e, unitdp)) for e in elements]
        failed = [(e, errs) for e, errs, _ in outcomes if errs]
        if failed and summarize:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered = []
        for element, errors, note in outcomes:
            if errors or note is None:
                rendered.append(
                    {
                        **element,
                        "HasErrors": True,
                        "StatusAttributeString": "ERROR",
                        "ValidationErrors": [{"Message": m} for m in errors],
                    }
                )
                continue
            note.number = note.number or self._next_credit_number(org)
            org.credit_notes[note.id] = note
            rendered.append({**self._render_credit_note(org, note), "StatusAttributeString": "OK"})
        return self._envelope("CreditNotes", rendered)

    def _next_credit_number(self, org: _Org) -> str:
        used = {n.number for n in org.credit_notes.values()}
        while True:
            candidate = f"CN-{org.next_credit_number:04d}"
            org.next_credit_number += 1
            if candidate not in used:
                return candidate

    def _build_credit_note(
        self, org: _Org, element: Mapping[str, Any], unitdp: int
    ) -> tuple[list[str], _CreditNote | None]:
        if element.get("Type") != "ACCRECCREDIT":
            return [_msg("credit_type_unsupported")], None
        errors: list[str] = []
        status = str(element.get("Status") or "DRAFT")
        if status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            errors.append(_msg("credit_status"))
        contact, contact_errors = self._contact_for(org, element.get("Contact"))
        errors += contact_errors
        currency = element.get("CurrencyCode") or (contact.currency if contact else None)
        currency = str(currency or org.base_currency)
        if currency != org.base_currency and currency not in org.currencies:
            errors.append(_msg("currency_not_enabled", code=currency))
        try:
            issued = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
        except XeroValidationError as exc:
            return errors + exc.messages, None
        errors += self._lock_errors(org, issued)
        amount_types = str(element.get("LineAmountTypes") or "Exclusive")
        raw_lines = element.get("LineItems") or []
        if not raw_lines:
            errors.append(_msg("line_items_required"))
        lines, line_errors = self._lines(org, raw_lines, amount_types, status, unitdp)
        errors += line_errors
        if errors:
            return errors, None
        now = self.time.now()
        note = _CreditNote(
            id=str(uuid.uuid4()),
            number=str(element.get("CreditNoteNumber") or ""),
            type="ACCRECCREDIT",
            contact_id=contact.id if contact else "",
            status=status,
            line_amount_types=amount_types,
            lines=lines,
            issued=issued,
            reference=element.get("Reference"),
            currency=currency,
            created=now,
            updated=now,
        )
        if note.total < 0:
            return [_msg("total_negative")], None
        return [], note

    def _put_allocations(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        note = _find(org.credit_notes, params["id"])
        if note is None:
            raise _refuse_validation(_msg("credit_note_missing"))
        elements = _elements(request, "Allocations")
        remaining = self._remaining_credit(org, note)
        planned: list[tuple[_Invoice, Decimal, date]] = []
        for element in elements:
            invoice = self._payment_invoice(org, element.get("Invoice"))
            if invoice is None:
                raise _refuse_validation(_msg("invoice_missing"), element)
            if note.status != "AUTHORISED" or invoice.status != "AUTHORISED":
                raise _refuse_validation(_msg("allocation_status"), element)
            if invoice.contact_id != note.contact_id or invoice.currency != note.currency:
                raise _refuse_validation(_msg("allocation_contact"), element)
            try:
                amount = _dec(element.get("Amount"))
                on = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
            except XeroValidationError as exc:
                raise _refuse_validation(exc.messages, element) from exc
            if amount is None or amount <= 0:
                raise _refuse_validation(_msg("payment_amount"), element)
            amount = _round(amount)
            due = invoice.total - self._amount_settled(org, invoice)
            due -= sum((a for i, a, _ in planned if i is invoice), Decimal("0"))
            if amount > remaining or amount > due:
                raise _refuse_validation(_msg("allocation_exceeds"), element)
            lock = self._lock_errors(org, on)
            if lock:
                raise _refuse_validation(lock, element)
            remaining -= amount
            planned.append((invoice, amount, on))
        rendered = []
        for invoice, amount, on in planned:
            allocation = _Allocation(str(uuid.uuid4()), invoice.id, amount, on)
            note.allocations.append(allocation)
            if invoice.total - self._amount_settled(org, invoice) <= 0:
                invoice.status = "PAID"
                invoice.fully_paid_on = on
            invoice.updated = self.time.now()
            self._settle_credit_note(org, note, on)
            rendered.append(
                {
                    "AllocationID": allocation.id,
                    "Amount": amount,
                    "Date": ms_date(on),
                    "Invoice": {"InvoiceID": invoice.id, "InvoiceNumber": invoice.number},
                    "CreditNote": {"CreditNoteID": note.id, "CreditNoteNumber": note.number},
                }
            )
        return self._envelope("Allocations", rendered)

    # -- the double entry and the trial balance --------------------------------------------

    def _postings(self, org: _Org, until: date) -> Iterable[tuple[str, date, Decimal]]:
        """Every approved document's effect on the accounts up to `until`, debits positive:
        invoices (receivable up, revenue and tax down), credit notes (the reverse), payments
        and refunds (the paying account against the receivable), money spent and received,
        and bank transfers."""
        for invoice in org.invoices.values():
            if invoice.status in ("AUTHORISED", "PAID") and invoice.issued <= until:
                yield AR_CODE, invoice.issued, invoice.total
                yield from _line_postings(
                    invoice.lines, invoice.line_amount_types, invoice.issued, -1
                )
        for note in org.credit_notes.values():
            if note.status in ("AUTHORISED", "PAID") and note.issued <= until:
                yield AR_CODE, note.issued, -note.total
                yield from _line_postings(note.lines, note.line_amount_types, note.issued, 1)
        for payment in org.payments.values():
            if payment.status != "AUTHORISED" or payment.paid_on > until:
                continue
            sign = -1 if payment.credit_note_id else 1  # a refund pays money out
            yield payment.account_code, payment.paid_on, sign * payment.amount
            yield AR_CODE, payment.paid_on, -sign * payment.amount
        for tx in org.bank_transactions.values():
            if tx.status != "AUTHORISED" or tx.on > until:
                continue
            sign = 1 if tx.type == "RECEIVE" else -1
            yield tx.bank_code, tx.on, sign * tx.total
            yield from _line_postings(tx.lines, tx.line_amount_types, tx.on, -sign)
        for transfer in org.bank_transfers.values():
            if transfer.status == "AUTHORISED" and transfer.on <= until:
                yield transfer.to_code, transfer.on, transfer.amount
                yield transfer.from_code, transfer.on, -transfer.amount

    def _balances(self, org: _Org, on: date) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        """(year to date, month) per account code as the trial balance shows them: revenue
        and expense accounts from the financial year's start (1 January here), everything
        else since the beginning, prior years' profit in retained earnings."""
        year_start = date(on.year, 1, 1)
        month_start = on.replace(day=1)
        ytd: dict[str, Decimal] = {}
        month: dict[str, Decimal] = {}
        for code, day, amount in self._postings(org, on):
            account = org.accounts.get(code)
            profit_and_loss = account is not None and account.account_class in (
                "REVENUE",
                "EXPENSE",
            )
            target = RETAINED_CODE if profit_and_loss and day < year_start else code
            ytd[target] = ytd.get(target, Decimal("0")) + amount
            if day >= month_start:
                month[code] = month.get(code, Decimal("0")) + amount
        return ytd, month

    def _get_trial_balance(self, request: Request, org: _Org, params: dict[str, str]):
        raw = request.args.get("date")
        try:
            on = date.fromisoformat(raw[:10]) if raw else self.time.now().date()
        except ValueError as exc:
            raise _query_error(f"The date '{raw}' is not a valid date") from exc
        ytd, month = self._balances(org, on)
        sections: dict[str, list[dict[str, Any]]] = {
            "Revenue": [],
            "Expenses": [],
            "Assets": [],
            "Liabilities": [],
            "Equity": [],
        }
        titles = {
            "REVENUE": "Revenue",
            "EXPENSE": "Expenses",
            "ASSET": "Assets",
            "LIABILITY": "Liabilities",
            "EQUITY": "Equity",
        }
        totals = [Decimal("0")] * 4
        for account in sorted(org.accounts.values(), key=lambda a: a.code):
            year = _round(ytd.get(account.code, Decimal("0")))
            current = _round(month.get(account.code, Decimal("0")))
            if not year and not current:
                continue  # "Accounts will not show ... without a YTD or month balance" [DOC]
            debit_normal = account.account_class in ("ASSET", "EXPENSE")
            cells = [f"{account.name} ({account.code})"]
            for value in (current, year):
                debit, credit = (value, Decimal("0")) if value > 0 else (Decimal("0"), -value)
                if value == 0:
                    cells += ["0.00", ""] if debit_normal else ["", "0.00"]
                else:
                    cells += [f"{debit:.2f}" if debit else "", f"{credit:.2f}" if credit else ""]
            for index, value in enumerate(cells[1:]):
                totals[index] += Decimal(value or "0")
            attributes = [{"Value": account.id, "Id": "account"}]
            sections[titles[account.account_class]].append(
                {
                    "RowType": "Row",
                    "Cells": [{"Value": v, "Attributes": attributes} for v in cells],
                }
            )
        rows: list[dict[str, Any]] = [
            {
                "RowType": "Header",
                "Cells": [
                    {"Value": v} for v in ("Account", "Debit", "Credit", "YTD Debit", "YTD Credit")
                ],
            }
        ]
        rows += [{"RowType": "Section", "Title": t, "Rows": r} for t, r in sections.items()]
        rows.append(
            {
                "RowType": "Section",
                "Title": "",
                "Rows": [
                    {
                        "RowType": "SummaryRow",
                        "Cells": [{"Value": "Total"}] + [{"Value": f"{t:.2f}"} for t in totals],
                    }
                ],
            }
        )
        report = {
            "ReportID": "TrialBalance",
            "ReportName": "Trial Balance",
            "ReportType": "TrialBalance",
            "ReportTitles": ["Trial Balance", org.name, f"As at {_long_date(on)}"],
            "ReportDate": _long_date(self.time.now().date()),
            "UpdatedDateUTC": ms_date(self.time.now()),
            "Fields": [],
            "Rows": rows,
        }
        return self._envelope("Reports", [report])

    # -- payments --------------------------------------------------------------------------

    def _payment_view(self, org: _Org, payment: _Payment) -> dict[str, Any]:
        invoice = org.invoices.get(payment.invoice_id or "")
        note = org.credit_notes.get(payment.credit_note_id or "")
        return {
            "PaymentID": payment.id,
            "Reference": payment.reference,
            "Status": payment.status,
            "PaymentType": payment.kind,
            "Amount": payment.amount,
            "Date": _midnight(payment.paid_on),
            "UpdatedDateUTC": payment.updated,
            "Invoice.InvoiceID": payment.invoice_id,
            "Invoice.InvoiceNumber": invoice.number if invoice else None,
            "CreditNote.CreditNoteID": payment.credit_note_id,
            "CreditNote.CreditNoteNumber": note.number if note else None,
            "Account.Code": payment.account_code,
            "IsReconciled": False,
        }

    def _render_payment(self, org: _Org, payment: _Payment) -> dict[str, Any]:
        account = org.accounts.get(payment.account_code)
        body: dict[str, Any] = {
            "PaymentID": payment.id,
            "Date": ms_date(payment.paid_on),
            "Amount": payment.amount,
            "Reference": payment.reference or "",
            "CurrencyRate": Decimal("1"),
            "PaymentType": payment.kind,
            "Status": payment.status,
            "UpdatedDateUTC": ms_date(payment.updated),
            "HasAccount": True,
            "IsReconciled": False,
            "HasValidationErrors": False,
            "Account": {"AccountID": account.id if account else None, "Code": payment.account_code},
        }
        if payment.invoice_id:
            invoice = org.invoices[payment.invoice_id]
            body["Invoice"] = {
                "InvoiceID": invoice.id,
                "InvoiceNumber": invoice.number,
                "Type": invoice.type,
                "Contact": {"ContactID": invoice.contact_id},
                "CurrencyCode": invoice.currency,
            }
        if payment.credit_note_id:
            note = org.credit_notes[payment.credit_note_id]
            body["CreditNote"] = {
                "CreditNoteID": note.id,
                "CreditNoteNumber": note.number,
                "Type": note.type,
                "Contact": {"ContactID": note.contact_id},
                "CurrencyCode": note.currency,
            }
        return body

    def _get_payments(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        args = request.args
        predicate = (
            parse_where(args["where"], PAYMENT_FIELDS, "Payment") if args.get("where") else None
        )
        since = request.headers.get("If-Modified-Since")
        moment = _parse_moment_header(since) if since else None
        rows = []
        for payment in org.payments.values():
            if moment is not None and payment.updated < moment:
                continue
            view = self._payment_view(org, payment)
            if predicate is None or predicate(view):
                rows.append(view)
        rows = _order_rows(rows, args.get("order"), PAYMENT_FIELDS)
        page, size = _paging(args)
        if page is not None:
            rows = rows[(page - 1) * size : page * size]
        return self._envelope(
            "Payments", [self._render_payment(org, org.payments[v["PaymentID"]]) for v in rows]
        )

    def _get_payment(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        payment = _find(org.payments, params["id"])
        if payment is None:
            raise _not_found()
        return self._envelope("Payments", [self._render_payment(org, payment)])

    def _post_payment(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        body = _body(request)
        elements = body.get("Payments") if isinstance(body.get("Payments"), list) else [body]
        return self._save_payments(request, org, elements)

    def _put_payments(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        return self._save_payments(request, org, _elements(request, "Payments"))

    def _save_payments(
        self, request: Request, org: _Org, elements: Sequence[Mapping[str, Any]]
    ) -> Response:
        summarize = not _is_false(request.args.get("summarizeErrors"))
        checked = [(dict(e), self._payment_errors(org, e)) for e in elements]
        failed = [(e, errs) for e, errs in checked if errs]
        if failed and summarize:
            return _validation_exception(
                [{**e, "ValidationErrors": [{"Message": m} for m in errs]} for e, errs in failed]
            )
        rendered = []
        for element, errors in checked:
            if errors:
                rendered.append(
                    {
                        **element,
                        "HasValidationErrors": True,
                        "StatusAttributeString": "ERROR",
                        "ValidationErrors": [{"Message": m} for m in errors],
                    }
                )
                continue
            payment = self._apply_payment(org, element)
            rendered.append({**self._render_payment(org, payment), "StatusAttributeString": "OK"})
        return self._envelope("Payments", rendered)

    def _payment_errors(self, org: _Org, element: Mapping[str, Any]) -> list[str]:
        note_ref = element.get("CreditNote")
        note = self._payment_credit_note(org, note_ref) if note_ref else None
        invoice = None if note_ref else self._payment_invoice(org, element.get("Invoice"))
        if note_ref and note is None:
            return [_msg("credit_note_missing")]
        if note is None and invoice is None:
            return [_msg("invoice_missing")]
        status = note.status if note else invoice.status  # type: ignore[union-attr]
        if status != "AUTHORISED":
            return [_msg("payment_not_authorised")]
        account = _account_ref(org, element.get("Account"))
        code = _ref_code(element.get("Account"))
        if account is None:
            return [_msg("account_invalid", code=code or "")]
        if account.status != "ACTIVE":
            return [_msg("account_archived", code=account.code)]
        if not account.accepts_payments:
            return [_msg("payment_account", code=account.code)]
        try:
            amount = _dec(element.get("Amount"))
            paid_on = parse_date(element["Date"]) if element.get("Date") else self.time.now().date()
        except XeroValidationError as exc:
            return exc.messages
        if amount is None or amount <= 0:
            return [_msg("payment_amount")]
        if note is not None:
            if _round(amount) > self._remaining_credit(org, note):
                return [_msg("refund_exceeds")]
        elif invoice is not None and _round(amount) > invoice.total - self._amount_settled(
            org, invoice
        ):
            return [_msg("payment_exceeds")]
        return self._lock_errors(org, paid_on)

    @staticmethod
    def _payment_invoice(org: _Org, raw: Any) -> _Invoice | None:
        if not isinstance(raw, Mapping):
            return None
        if raw.get("InvoiceID"):
            return _find(org.invoices, str(raw["InvoiceID"]))
        if raw.get("InvoiceNumber"):
            return next(
                (
                    i
                    for i in org.invoices.values()
                    if i.number == raw["InvoiceNumber"] and i.status != "DELETED"
                ),
                None,
            )
        return None

    @staticmethod
    def _payment_credit_note(org: _Org, raw: Any) -> _CreditNote | None:
        if not isinstance(raw, Mapping):
            return None
        if raw.get("CreditNoteID"):
            return _find(org.credit_notes, str(raw["CreditNoteID"]))
        if raw.get("CreditNoteNumber"):
            return next(
                (n for n in org.credit_notes.values() if n.number == raw["CreditNoteNumber"]),
                None,
            )
        return None

    def _apply_payment(self, org: _Org, element: Mapping[str, Any]) -> _Payment:
        errors = self._payment_errors(org, element)
        if errors:
            raise XeroValidationError(errors)
        note = self._payment_credit_note(org, element.get("CreditNote"))
        invoice = None if note else self._payment_invoice(org, element.get("Invoice"))
        account = _account_ref(org, element.get("Account"))
        assert account is not None and (note is not None or invoice is not None)
        now = self.time.now()
        amount = _round(_dec(element.get("Amount")) or Decimal("0"))
        paid_on = parse_date(element["Date"]) if element.get("Date") else now.date()
        payment = _Payment(
            id=str(uuid.uuid4()),
            invoice_id=invoice.id if invoice else None,
            credit_note_id=note.id if note else None,
            account_code=account.code,
            amount=amount,
            paid_on=paid_on,
            reference=element.get("Reference"),
            status="AUTHORISED",
            created=now,
            updated=now,
        )
        org.payments[payment.id] = payment
        if invoice is not None:
            if invoice.total - self._amount_settled(org, invoice) <= 0:
                invoice.status = "PAID"
                invoice.fully_paid_on = paid_on
            invoice.updated = now  # a payment changes the invoice (If-Modified-Since sees it)
        if note is not None:
            self._settle_credit_note(org, note, paid_on)
        return payment

    def _delete_payment(self, request: Request, org: _Org, params: dict[str, str]) -> Response:
        payment = _find(org.payments, params["id"])
        if payment is None:
            raise _not_found()
        body = _body(request)
        if str(body.get("Status", "")).upper() != "DELETED":
            raise _refuse_validation("Only Status DELETED can be applied to a payment")
        if payment.status == "DELETED":
            raise _refuse_validation(_msg("payment_invalid_status"))
        self._remove_payment(org, payment)
        return self._envelope("Payments", [self._render_payment(org, payment)])

    def _remove_payment(self, org: _Org, payment: _Payment) -> None:
        now = self.time.now()
        payment.status = "DELETED"
        payment.updated = now
        if payment.invoice_id:
            invoice = org.invoices[payment.invoice_id]
            if invoice.status == "PAID":
                invoice.status = "AUTHORISED"
                invoice.fully_paid_on = None
            invoice.updated = now
        if payment.credit_note_id:
            note = org.credit_notes[payment.credit_note_id]
            if note.status == "PAID":
                note.status = "AUTHORISED"
                note.fully_paid_on = None
            note.updated = now


# ---------------------------------------------------------------------------------------------
# Request helpers


def _injected(status: int) -> Response:
    if status == 429:
        return Response(
            "You have exceeded the rate limit",
            status=429,
            headers={"Retry-After": "1", "X-Rate-Limit-Problem": "minute"},
            content_type="text/plain; charset=utf-8",
        )
    if status == 503:
        return Response("Service Unavailable", status=503, content_type="text/plain; charset=utf-8")
    return _json(status, {"Title": "An error occurred", "Status": status, "Detail": "injected"})


def _connection_id(grant: Grant, tenant: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xero-connection:{grant.id}:{tenant}"))


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    for part in (request.method, request.path, request.query_string.decode("latin-1")):
        digest.update(part.encode())
        digest.update(b"\x1f")
    digest.update(request.get_data())
    return digest.hexdigest()


def _body(request: Request) -> dict[str, Any]:
    raw = request.get_data()
    try:
        body = json.loads(raw or b"{}", parse_float=Decimal)
    except ValueError as exc:
        raise _Refusal(
            _api_exception(14, "PostDataInvalidException", f"Invalid JSON: {exc}")
        ) from exc
    if not isinstance(body, dict):
        raise _Refusal(_api_exception(14, "PostDataInvalidException", "The body must be an object"))
    return body


def _elements(request: Request, name: str) -> list[dict[str, Any]]:
    body = _body(request)
    elements = body.get(name)
    if not isinstance(elements, list) or not all(isinstance(e, dict) for e in elements):
        raise _Refusal(
            _api_exception(14, "PostDataInvalidException", f"'{name}' must be a list of objects")
        )
    return elements


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().casefold() == "true"


def _is_false(value: str | None) -> bool:
    """Query booleans are case-insensitive: xero-python sends Python's 'False'."""
    return value is not None and value.strip().casefold() == "false"


def _unitdp(request: Request) -> int:
    return 4 if request.args.get("unitdp", "").strip() == "4" else 2


def _paging(args: Mapping[str, str]) -> tuple[int | None, int]:
    raw_page = args.get("page")
    raw_size = args.get("pageSize")
    try:
        size = min(MAX_PAGE_SIZE, max(1, int(raw_size))) if raw_size else PAGE_SIZE
        page = max(1, int(raw_page)) if raw_page else None
    except ValueError as exc:
        raise _query_error(f"Invalid paging value: {exc}") from exc
    return page, size


def _csv(value: str | None, *, casefold: bool = False) -> set[str]:
    parts = {p.strip().strip('"') for p in (value or "").split(",") if p.strip()}
    return {p.casefold() for p in parts} if casefold else parts


def _find(table: Mapping[str, Any], key: str) -> Any:
    found = table.get(key)
    if found is not None:
        return found
    folded = key.casefold()
    return next((v for k, v in table.items() if k.casefold() == folded), None)


def _filtered(
    request: Request,
    rows: Iterable[tuple[dict[str, Any], dict[str, Any]]],
    fields: Mapping[str, str],
    type_name: str,
) -> list[dict[str, Any]]:
    where = request.args.get("where")
    predicate = parse_where(where, fields, type_name) if where else None
    return [rendered for rendered, view in rows if predicate is None or predicate(view)]


def _render_line(line: _Line) -> dict[str, Any]:
    body: dict[str, Any] = {
        "LineItemID": line.id,
        "Description": line.description or "",
        "Quantity": line.quantity,
        "UnitAmount": line.unit_amount,
        "LineAmount": line.line_amount,
        "TaxAmount": line.tax_amount,
        "Tracking": [
            {"TrackingCategoryID": c, "Name": n, "TrackingOptionID": o, "Option": on}
            for c, n, o, on in line.tracking
        ],
    }
    if line.account_code:
        body["AccountCode"] = line.account_code
    if line.tax_type:
        body["TaxType"] = line.tax_type
    if line.item_code:
        body["ItemCode"] = line.item_code
    if line.discount_rate is not None:
        body["DiscountRate"] = line.discount_rate
    return body


def _long_date(day: date) -> str:
    return f"{day.day} {day.strftime('%B %Y')}"


def _loads(rendered: dict[str, Any]) -> dict[str, Any]:
    """A rendered body as a client would read it (money as Decimal)."""
    parsed: dict[str, Any] = json.loads(
        json.dumps(rendered, default=_json_default), parse_float=Decimal
    )
    return parsed


def _ref_code(raw: Any) -> str | None:
    return str(raw["Code"]) if isinstance(raw, Mapping) and raw.get("Code") else None


def _account_ref(org: _Org, raw: Any) -> _Account | None:
    """The account an `{"Code": ...}` or `{"AccountID": ...}` reference names."""
    if not isinstance(raw, Mapping):
        return None
    if raw.get("Code"):
        return org.accounts.get(str(raw["Code"]))
    if raw.get("AccountID"):
        wanted = str(raw["AccountID"]).casefold()
        return next((a for a in org.accounts.values() if a.id.casefold() == wanted), None)
    return None


def _if_modified_since(request: Request) -> datetime | None:
    since = request.headers.get("If-Modified-Since")
    try:
        return _parse_moment_header(since) if since else None
    except (TypeError, ValueError) as exc:
        raise _query_error(f"If-Modified-Since '{since}' is not a date") from exc


def _line_postings(
    lines: Sequence[_Line], line_amount_types: str, day: date, sign: int
) -> Iterable[tuple[str, date, Decimal]]:
    """Each line's net amount on its account and its tax on the tax account, times `sign`."""
    for line in lines:
        if line.account_code:
            yield line.account_code, day, sign * _net(line, line_amount_types)
        if line.tax_amount:
            yield TAX_CODE, day, sign * line.tax_amount


def _sign(key: str, body: bytes) -> str:
    """x-xero-signature: base64(HMAC-SHA256(webhook key, raw body)) [DOC webhooks]."""
    digest = hmac.new(key.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _entropy() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))


def _webhook_validators() -> dict[str, Any]:
    """JSON Schema validators for Xero's webhook payload (events) and the intent-to-receive
    probe, or {} without the spec file."""
    path = spec_path(WEBHOOKS_SPEC)
    if path is None:
        return {}
    import copy

    import yaml
    from jsonschema import Draft202012Validator, FormatChecker

    spec = yaml.safe_load(path.read_text())
    checker = FormatChecker()

    # Xero's own examples carry no offset ("2024-06-21T01:15:39.902"): the time is UTC
    @checker.checks("date-time", raises=ValueError)
    def _iso(value: object) -> bool:
        if isinstance(value, str):
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    def validator(components: dict[str, Any]) -> Any:
        root = {"$ref": "#/components/schemas/WebhookEvent", "components": components}
        return Draft202012Validator(root, format_checker=checker)

    probe = copy.deepcopy(spec["components"])
    for name in ("firstEventSequence", "lastEventSequence"):
        probe["schemas"]["WebhookEvent"]["properties"][name]["minimum"] = 0
    return {"events": validator(spec["components"]), "probe": validator(probe)}
