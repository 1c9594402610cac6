"""A stateful local emulator of Karbon's API v3 for tests and the sandbox: work items, clients,
tenant settings, invoices, time entries, webhook subscriptions and signed, coalesced deliveries.

Behaviour follows ../shared/reference/practice-management-apis.md section 1 (cited [REF 1.x]) and
Karbon's own files: the OpenAPI description [SPEC], KARBON_API.md [QREF] and guides/0N [GUIDE N].
Every /v3 request is checked against the OpenAPI description when it is found beside the
checkout."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import random
import re
import string
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import requests
from werkzeug.wrappers import Request, Response

from adapters.emulation.openapi import OpenAPIContract
from adapters.emulation.server import EmulatorServer, RecordedRequest, RequestLog, ServedEmulator
from adapters.emulation.specs import spec_path

__all__ = [
    "DEFAULT_STATUSES",
    "DEFAULT_WORK_TYPES",
    "KARBON_SPEC",
    "Delivery",
    "KarbonEmulator",
]

KARBON_SPEC = "karbon/KarbonAPI.json"

# Canonical (unspaced) primary status -> the spaced form lists and $filter use [REF 1.3, QREF].
PRIMARY_STATUSES: dict[str, str] = {
    "Planned": "Planned",
    "ReadyToStart": "Ready To Start",
    "InProgress": "In Progress",
    "Waiting": "Waiting",
    "Completed": "Completed",
}
DEFAULT_STATUSES: dict[str, tuple[str, ...]] = {
    "Planned": (),
    "Ready To Start": (),
    "In Progress": ("Documents received", "Preparation", "Review"),
    "Waiting": ("Waiting on client",),
    "Completed": ("Filed", "Billed"),
}
# Work type -> the secondary statuses it offers (None: all of them). Not every type offers every
# secondary, so the "valid for the primary but not for this work type" drop can be seen [QREF].
DEFAULT_WORK_TYPES: dict[str, tuple[str, ...] | None] = {
    "Tax Return": None,
    "Bookkeeping": ("Preparation", "Review", "Waiting on client", "Billed"),
    "Advisory": ("Review", "Waiting on client", "Billed"),
    "Payroll": ("Preparation", "Review", "Filed", "Billed"),
}
CONTACT_TYPES = ("Prospect", "Client", "Inactive", "Other")
CLIENT_TYPES = ("Contact", "Organization", "ClientGroup")
FEE_TYPES = ("FixedFee", "TimeAndMaterials", "NonBillable")
INVOICE_STATUSES = ("Approved", "AwaitingPayment", "Paid", "Exported", "Voided")
BILLED_STATUSES = ("Unbilled", "Draft", "InterimBilled", "Billed")
WEBHOOK_TYPES = (
    "Contact",
    "CustomField",
    "Work",
    "Note",
    "User",
    "IntegrationTask",
    "Invoice",
    "EstimateSummary",
)
PATCHABLE_WORK_ITEM_FIELDS = (
    "Title",
    "Description",
    "StartDate",
    "DueDate",
    "DeadlineDate",
    "AssigneeEmailAddress",
    "WorkType",
)
REQUIRED_WORK_ITEM_FIELDS = (
    "AssigneeEmailAddress",
    "Title",
    "ClientKey",
    "ClientType",
    "StartDate",
)
MAX_DELIVERY_ATTEMPTS = 10  # "retried 10 times", then the subscription is cancelled [GUIDE 7]
DELIVERY_TIMEOUT_SECONDS = 2.0
AUTO_DELIVER_INTERVAL_SECONDS = 0.2

_KEY_ALPHABET = string.ascii_letters + string.digits
_LINK_SAFE = "'(),:"  # keep nextLink filters readable, as Karbon's are
_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"

_ALLOWED_OPTION_HINT = (
    "To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or "
    "QueryValidationSettings."
)
_QUERY_OPTION_NAMES = {
    "$select": "Select",
    "$expand": "Expand",
    "$filter": "Filter",
    "$orderby": "OrderBy",
    "$top": "Top",
    "$skip": "Skip",
    "$count": "Count",
    "$search": "Search",
    "$format": "Format",
    "$skiptoken": "SkipToken",
    "$deltatoken": "DeltaToken",
    "$apply": "Apply",
    "$compute": "Compute",
    "$levels": "Levels",
}


# ---------------------------------------------------------------------------------------------
# The vendor description, loaded once per process


_CONTRACTS: dict[Path, OpenAPIContract] = {}
_CONTRACTS_LOCK = threading.Lock()


def karbon_contract() -> OpenAPIContract | None:
    """Karbon's OpenAPI description as a request checker, or None when the file is not found.

    Loaded on first use and shared by every emulator in the process (loading is the slow part)."""
    path = spec_path(KARBON_SPEC)
    if path is None:
        return None
    with _CONTRACTS_LOCK:
        contract = _CONTRACTS.get(path)
        if contract is None:
            spec = json.loads(path.read_text())
            _relax_spec_defects(spec)
            contract = OpenAPIContract(spec)
            _CONTRACTS[path] = contract
        return contract


def _relax_spec_defects(spec: dict[str, Any]) -> None:
    """Loosen the two places where the file refuses what Karbon itself documents as valid.

    - `$skip` is capped at 100 in `SkipRecords`, yet the nextLink of a 323-row list carries
      `$skip=200` and the guides say to follow nextLink verbatim [GUIDE 6, REF 1.1].
    - `PrimaryStatus` in request bodies lists only the unspaced names, yet "either form works"
      in POST/PUT bodies [QREF "PrimaryStatus vs WorkStatus"]."""
    skip = spec.get("components", {}).get("parameters", {}).get("SkipRecords", {})
    skip.get("schema", {}).pop("maximum", None)
    update = spec.get("components", {}).get("schemas", {}).get("WorkItemUpdate", {})
    primary = update.get("properties", {}).get("PrimaryStatus")
    if isinstance(primary, dict) and isinstance(primary.get("enum"), list):
        primary["enum"] = sorted(set(primary["enum"]) | set(PRIMARY_STATUSES.values()))


# ---------------------------------------------------------------------------------------------
# Small helpers


def _fmt(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime(_TIMESTAMP) if moment is not None else None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _parse_moment(text: str, *, allow_date: bool = True) -> datetime:
    """An ISO 8601 date-time (or a plain date, read as midnight UTC); ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        if not allow_date:
            raise ValueError(f"{text!r} is a date, a date-time is required")
        return _midnight(date.fromisoformat(text))
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _stable_key(*parts: str, length: int = 12) -> str:
    """A Karbon-looking key derived from names, so tenant settings are the same on every run."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, index = divmod(digest, len(_KEY_ALPHABET))
        chars.append(_KEY_ALPHABET[index])
    return "".join(chars)


def canonical_primary(value: str) -> str | None:
    """'In Progress', 'InProgress' or 'inprogress' -> 'InProgress'; None for no such status."""
    squashed = "".join(value.split()).casefold()
    for canonical in PRIMARY_STATUSES:
        if canonical.casefold() == squashed:
            return canonical
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # Karbon sends money as JSON numbers (FeeValue 5150.2) [SPEC]
    if isinstance(value, datetime):
        return _fmt(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, default=_json_default),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json; charset=utf-8",
    )


def _error_body(
    code: str, message: str, details: Mapping[str, str] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = dict(details)
    return {"error": error}


class _Refusal(Exception):
    """Stop handling a request and answer with this response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _refuse(
    status: int, code: str, message: str, details: Mapping[str, str] | None = None
) -> _Refusal:
    return _Refusal(_json(status, _error_body(code, message, details)))


def _invalid_model(target: str, message: str) -> _Refusal:
    """Karbon's 4003 "Invalid Model." with one detail [SPEC Bad_Model_WorkItem_* examples]."""
    return _refuse(
        400,
        "4003",
        "Invalid Model.",
        {"code": "InvalidProperty", "target": f"workItem.{target}", "message": message},
    )


# ---------------------------------------------------------------------------------------------
# OData $filter: the small subset Karbon allows, with its own refusals [REF 1.1, QREF]


class ODataError(Exception):
    """A query Karbon refuses; answered 400 with code 4002 and this message."""


_OPERATOR_NAMES = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
    "has": "Has",
    "in": "In",
    "and": "And",
    "or": "Or",
    "not": "Not",
}
_COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le", "has", "in")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<moment>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_./]*)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string | moment | number | name | punct | end
    text: str
    position: int


@dataclass(frozen=True)
class _Clause:
    """One condition of a conjunction: `Field op value` or `contains(Field, value)`."""

    field: str
    operator: str  # eq, gt, ge, lt, le or contains
    value: str | datetime


@dataclass(frozen=True)
class _FilterRules:
    """What one list endpoint lets `$filter` use."""

    type_name: str  # named in "Could not find a property ..." messages
    properties: frozenset[str]  # every property of the DTO, to tell unknown from unfilterable
    equals: frozenset[str]  # string properties that allow `eq`
    contains: frozenset[str]  # string properties that allow `contains()`
    moments: Mapping[str, frozenset[str]]  # date properties -> comparison operators allowed
    operators: frozenset[str]  # logical operators allowed at all (eq, ge, and, ...)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise ODataError(f"Syntax error at position {position} in '{text}'.")
        start = match.start(match.lastgroup)
        tokens.append(_Token(match.lastgroup, match.group(match.lastgroup), start))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _FilterParser:
    """Parse a `$filter` into a conjunction of clauses, refusing what the endpoint does not allow.

    The refusal texts are those of Karbon's OData layer (ASP.NET OData) as Karbon's own tests and
    the spec's examples show them: "Logical operator 'NotEqual' is not allowed...", "Function
    'startswith' is not allowed...", "Could not find a property named 'X' on type '...'"."""

    def __init__(self, text: str, rules: _FilterRules) -> None:
        self._text = text
        self._rules = rules
        self._tokens = _tokenize(text)
        self._index = 0

    def parse(self) -> list[_Clause]:
        clauses = self._conjunction()
        if self._peek().kind != "end":
            self._syntax_error(self._peek())
        return clauses

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _expect(self, punct: str) -> None:
        token = self._next()
        if token.kind != "punct" or token.text != punct:
            self._syntax_error(token)

    def _syntax_error(self, token: _Token) -> None:
        raise ODataError(f"Syntax error at position {token.position} in '{self._text}'.")

    def _allow_operator(self, word: str) -> None:
        if word not in self._rules.operators:
            raise ODataError(
                f"Logical operator '{_OPERATOR_NAMES[word]}' is not allowed. To allow it, set the "
                "'AllowedLogicalOperators' property on EnableQueryAttribute or "
                "QueryValidationSettings."
            )

    def _conjunction(self) -> list[_Clause]:
        clauses = self._operand()
        while self._peek().kind == "name" and self._peek().text in ("and", "or"):
            self._allow_operator(self._next().text)  # `or` is never allowed, so this is `and`
            clauses += self._operand()
        return clauses

    def _operand(self) -> list[_Clause]:
        token = self._next()
        if token.kind == "punct" and token.text == "(":
            inner = self._conjunction()
            self._expect(")")
            return inner
        if token.kind == "name" and token.text == "not":
            self._allow_operator("not")  # no Karbon list allows `not`, so this always refuses
        if token.kind == "name":
            following = self._peek()
            if following.kind == "punct" and following.text == "(":
                return [self._function(token.text)]
            return [self._comparison(token.text)]
        self._syntax_error(token)
        raise AssertionError("unreachable")

    def _function(self, name: str) -> _Clause:
        if name != "contains" or not self._rules.contains:
            raise ODataError(
                f"Function '{name}' is not allowed. To allow it, set the 'AllowedFunctions' "
                "property on EnableQueryAttribute or QueryValidationSettings."
            )
        self._expect("(")
        prop = self._next()
        if prop.kind != "name":
            self._syntax_error(prop)
        self._expect(",")
        literal = self._next()
        self._expect(")")
        if prop.text not in self._rules.contains:
            self._unusable(prop.text)
        if literal.kind != "string":
            self._incompatible(prop.text, "contains", literal)
        return _Clause(prop.text, "contains", _unquote(literal.text))

    def _comparison(self, prop: str) -> _Clause:
        operator = self._next()
        if operator.kind != "name" or operator.text not in _COMPARISONS:
            self._syntax_error(operator)
        self._allow_operator(operator.text)
        literal = self._next()
        if literal.kind not in ("string", "moment", "number", "name"):
            self._syntax_error(literal)
        if prop in self._rules.equals and operator.text == "eq":
            if literal.kind != "string":
                self._incompatible(prop, operator.text, literal)
            return _Clause(prop, "eq", _unquote(literal.text))
        if operator.text in self._rules.moments.get(prop, frozenset()):
            if literal.kind != "moment":
                self._incompatible(prop, operator.text, literal)
            return _Clause(prop, operator.text, _parse_moment(literal.text))
        self._unusable(prop)
        raise AssertionError("unreachable")

    def _unusable(self, prop: str) -> None:
        if prop in self._rules.properties:
            raise ODataError(f"The property '{prop}' cannot be used in the $filter query option.")
        raise ODataError(
            f"Could not find a property named '{prop}' on type '{self._rules.type_name}'."
        )

    def _incompatible(self, prop: str, operator: str, literal: _Token) -> None:
        left = "Edm.DateTimeOffset" if prop in self._rules.moments else "Edm.String"
        right = {"string": "Edm.String", "moment": "Edm.DateTimeOffset", "number": "Edm.Int32"}
        kind = "Contains" if operator == "contains" else _OPERATOR_NAMES[operator]
        raise ODataError(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{left}' and '{right.get(literal.kind, 'Edm.Untyped')}' for operator kind '{kind}'."
        )


def _unquote(literal: str) -> str:
    return literal[1:-1].replace("''", "'")


def _matches(view: Mapping[str, Any], clauses: Sequence[_Clause]) -> bool:
    """String comparisons ignore case, as Karbon's SQL collation does ('pay' finds 'Payroll')."""
    for clause in clauses:
        actual = view.get(clause.field)
        if actual is None:
            return False
        if clause.operator == "contains":
            if str(clause.value).casefold() not in str(actual).casefold():
                return False
        elif isinstance(clause.value, datetime):
            compare = {
                "eq": actual == clause.value,
                "gt": actual > clause.value,
                "ge": actual >= clause.value,
                "lt": actual < clause.value,
                "le": actual <= clause.value,
            }
            if not compare[clause.operator]:
                return False
        elif str(actual).casefold() != clause.value.casefold():
            return False
    return True


@dataclass(frozen=True)
class _Listing:
    """How one list endpoint pages, orders, filters and names itself."""

    entity_set: str  # WorkItems
    element_type: str | None  # KarbonService.WorkItemSummaryDTO; None where items carry no type
    rules: _FilterRules
    orderable: frozenset[str]
    key_field: str
    default_order: str
    max_top: int = 100
    expandable: frozenset[str] = frozenset()
    count_always: bool = True  # some endpoints count only when asked with $count=true [QREF]


def _rules(
    type_name: str,
    properties: Iterable[str],
    *,
    equals: Iterable[str] = (),
    contains: Iterable[str] = (),
    moments: Mapping[str, Iterable[str]] | None = None,
    operators: Iterable[str],
) -> _FilterRules:
    return _FilterRules(
        type_name=type_name,
        properties=frozenset(properties),
        equals=frozenset(equals),
        contains=frozenset(contains),
        moments={name: frozenset(ops) for name, ops in (moments or {}).items()},
        operators=frozenset(operators),
    )


WORK_ITEM_SUMMARY_FIELDS = (
    "WorkItemKey",
    "AssigneeEmailAddress",
    "AssigneeKey",
    "AssigneeName",
    "Title",
    "ClientKey",
    "ClientName",
    "ClientType",
    "ClientUserDefinedIdentifier",
    "RelatedClientGroupKey",
    "ClientGroupKey",
    "RelatedClientGroupName",
    "StartDate",
    "DueDate",
    "DeadlineDate",
    "CompletedDate",
    "ToDoPeriod",
    "WorkType",
    "WorkStatus",
    "PrimaryStatus",
    "SecondaryStatus",
    "WorkTemplateKey",
    "WorkTemplateTile",
    "WorkScheduleKey",
    "EstimatedBudget",
)

# [SPEC getAllWorkItems description, REF 1.3]
_WORK_ITEMS = _Listing(
    entity_set="WorkItems",
    element_type="KarbonService.WorkItemSummaryDTO",
    rules=_rules(
        "KarbonService.WorkItemSummaryDTO",
        WORK_ITEM_SUMMARY_FIELDS,
        equals=(
            "AssigneeEmailAddress",
            "ClientKey",
            "PrimaryStatus",
            "Title",
            "WorkScheduleKey",
            "WorkStatus",
            "WorkTemplateKey",
            "WorkType",
        ),
        contains=("AssigneeEmailAddress", "Title", "WorkStatus", "WorkType"),
        moments={"StartDate": ("ge", "le")},
        operators=("eq", "ge", "le", "and"),
    ),
    orderable=frozenset({"StartDate", "DeadlineDate"}),
    key_field="WorkItemKey",
    default_order="WorkItemKey",
)
_CONTACTS = _Listing(
    entity_set="Contacts",
    element_type="KarbonService.ContactSummaryDTO",
    rules=_rules(
        "KarbonService.ContactSummaryDTO",
        (
            "ContactKey",
            "FullName",
            "PreferredName",
            "Salutation",
            "ClientOwner",
            "ClientManager",
            "Address",
            "EmailAddress",
            "PhoneNumber",
            "RoleOrTitle",
            "ContactType",
            "UserDefinedIdentifier",
            "LastModifiedDateTime",
            "ExternalKey",
        ),
        equals=("FullName", "EmailAddress", "PhoneNumber", "ContactType", "ExternalKey"),
        contains=("FullName", "EmailAddress", "PhoneNumber", "ContactType"),
        operators=("eq", "and"),
    ),
    orderable=frozenset({"FullName", "LastModifiedDateTime"}),
    key_field="ContactKey",
    default_order="ContactKey",
)
_ORGANIZATIONS = _Listing(
    entity_set="Organizations",
    element_type="KarbonService.OrganizationSummaryDTO",
    rules=_rules(
        "KarbonService.OrganizationSummaryDTO",
        (
            "OrganizationKey",
            "FullName",
            "PhoneNumber",
            "EmailAddress",
            "Website",
            "ContactType",
            "LastModifiedDateTime",
            "UserDefinedIdentifier",
            "ExternalKey",
        ),
        equals=("FullName", "EmailAddress", "ContactType", "ExternalKey"),
        contains=("FullName", "EmailAddress", "ContactType"),
        operators=("eq", "and"),
    ),
    orderable=frozenset({"FullName", "LastModifiedDateTime"}),
    key_field="OrganizationKey",
    default_order="OrganizationKey",
)
_CLIENT_GROUPS = _Listing(
    entity_set="ClientGroups",
    element_type="KarbonService.ClientGroupSummaryDTO",
    rules=_rules(
        "KarbonService.ClientGroupSummaryDTO",
        ("ClientGroupKey", "FullName", "PhoneNumber", "Website", "LastModifiedDateTime"),
        equals=("FullName",),
        operators=("eq",),
    ),
    orderable=frozenset({"FullName"}),
    key_field="ClientGroupKey",
    default_order="ClientGroupKey",
)
_INVOICES = _Listing(
    entity_set="Invoices",
    element_type=None,
    rules=_rules(
        "KarbonService.InvoiceDTO",
        (
            "InvoiceKey",
            "InvoiceNumber",
            "TotalAmountDue",
            "InvoiceTotal",
            "InvoiceDate",
            "PaymentDueDate",
            "UpdatedAt",
            "CreatedAt",
            "CurrencyCode",
            "InvoiceStatus",
        ),
        equals=("InvoiceStatus",),
        operators=("eq",),
    ),
    orderable=frozenset({"InvoiceDate", "CreatedAt", "UpdatedAt", "InvoiceNumber"}),
    key_field="InvoiceKey",
    default_order="InvoiceKey",
    expandable=frozenset({"LineItems", "Payments", "Data"}),
)
_TIME_ENTRIES = _Listing(
    entity_set="IndividualTimeEntries",
    element_type=None,
    rules=_rules(
        "KarbonService.IndividualTimeEntryDTO",
        (
            "IndividualTimeEntryKey",
            "TimesheetKey",
            "EntityKey",
            "WorkItemKey",
            "ClientKey",
            "ClientType",
            "UserKey",
            "RoleName",
            "TaskTypeName",
            "TaskTypeIsBillable",
            "Date",
            "Minutes",
            "Description",
            "HourlyRate",
            "TotalCost",
            "BilledStatus",
            "CreatedDate",
            "ModifiedDate",
            "FeeType",
        ),
        equals=(
            "TimesheetKey",
            "EntityKey",
            "WorkItemKey",
            "ClientKey",
            "UserKey",
            "RoleName",
            "TaskTypeName",
        ),
        moments={"Date": ("eq", "gt", "ge", "lt", "le")},
        operators=("eq", "gt", "ge", "lt", "le", "and"),
    ),
    orderable=frozenset({"Date"}),
    key_field="IndividualTimeEntryKey",
    default_order="Date",
    max_top=1000,  # TopRecordsLimitedTo1000 [SPEC]
    count_always=False,
)


# ---------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class _Tenant:
    """The account's configurable statuses and work types (what /v3/TenantSettings reports)."""

    secondaries: dict[str, tuple[str, ...]]  # canonical primary -> its secondary names
    work_types: dict[str, frozenset[tuple[str, str]]]  # work type -> allowed (primary, secondary)

    def allows(self, work_type: str | None, primary: str, secondary: str) -> bool:
        if work_type is None:
            return False
        return (primary, secondary) in self.work_types.get(work_type, frozenset())


def _build_tenant(
    statuses: Mapping[str, Sequence[str]] | None,
    work_types: Mapping[str, Sequence[str] | None] | None,
) -> _Tenant:
    secondaries: dict[str, tuple[str, ...]] = {primary: () for primary in PRIMARY_STATUSES}
    for name, children in (statuses if statuses is not None else DEFAULT_STATUSES).items():
        primary = canonical_primary(name)
        if primary is None:
            raise ValueError(
                f"unknown primary status {name!r}; use one of {list(PRIMARY_STATUSES)}"
            )
        secondaries[primary] = tuple(children)
    if work_types is None:
        # Custom statuses carry their own names, so default work types then offer all of them.
        work_types = DEFAULT_WORK_TYPES if statuses is None else dict.fromkeys(DEFAULT_WORK_TYPES)
    every = frozenset((p, s) for p, names in secondaries.items() for s in names)
    allowed: dict[str, frozenset[tuple[str, str]]] = {}
    for work_type, names in work_types.items():
        allowed[work_type] = (
            every if names is None else frozenset(pair for pair in every if pair[1] in names)
        )
    return _Tenant(secondaries=secondaries, work_types=allowed)


@dataclass
class _Client:
    key: str
    name: str
    client_type: str
    modified: datetime
    external_key: str | None = None
    user_defined_identifier: str | None = None
    hidden: bool = False
    email_address: str | None = None
    phone_number: str | None = None
    contact_type: str = "Client"


_CLIENT_CHANGES = {
    "name",
    "external_key",
    "user_defined_identifier",
    "hidden",
    "email_address",
    "phone_number",
    "contact_type",
}


@dataclass
class _WorkItem:
    key: str
    title: str
    client_key: str
    work_type: str | None
    primary: str  # canonical, unspaced
    secondary: str | None
    start: datetime
    assignee: str
    due: datetime | None = None
    deadline: datetime | None = None
    completed: datetime | None = None
    description: str | None = None
    fee_type: str = "FixedFee"
    fee_value: Decimal | None = None
    template_key: str | None = None
    schedule_key: str | None = None
    related_group_key: str | None = None
    role_assignments: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Invoice:
    key: str
    number: str
    client_key: str
    work_item_keys: tuple[str, ...]
    status: str
    amount: Decimal
    currency: str
    invoice_date: datetime
    created: datetime
    updated: datetime


@dataclass
class _TimeEntry:
    key: str
    timesheet_key: str
    work_item_key: str
    client_key: str
    client_type: str
    user_key: str
    minutes: int
    hourly_rate: Decimal
    billed_status: str
    day: datetime
    created: datetime
    billable: bool


@dataclass
class _Subscription:
    webhook_type: str
    target_url: str
    signing_key: str | None
    consecutive_failures: int = 0


@dataclass
class _PendingWebhook:
    """One notification Karbon owes a subscriber: coalesced changes of one entity [GUIDE 7]."""

    sequence: int
    webhook_type: str
    resource_type: str
    resource_key: str
    action: str
    first_change: datetime
    last_change: datetime
    due: datetime
    attempts: int = 0
    in_flight: bool = False


@dataclass(frozen=True)
class Delivery:
    """One POST attempt to a subscriber (status None: connection error or injected failure)."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None
    at: datetime
    webhook_type: str
    attempt: int
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _TokenBucket:
    """`per_minute` requests refilled continuously: a burst of a minute's worth, then 1 per slot."""

    def __init__(self, per_minute: int, now: datetime) -> None:
        self._capacity = float(per_minute)
        self._tokens = float(per_minute)
        self._updated = now

    def take(self, now: datetime) -> int | None:
        """None when the request may go; else the whole seconds until one token is back."""
        elapsed = max(0.0, (now - self._updated).total_seconds())
        self._tokens = min(self._capacity, self._tokens + elapsed * self._capacity / 60.0)
        self._updated = max(self._updated, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self._tokens) * 60.0 / self._capacity))


def _merge_action(earlier: str, later: str) -> str:
    """What coalesced changes report: a delete wins, and a new record stays new."""
    if "Deleted" in (earlier, later):
        return "Deleted"
    return "Inserted" if earlier == "Inserted" else later


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    handlers: Mapping[str, Callable[[Request, dict[str, str]], Response]]
    # answers a path parameter that names nothing (404) before body violations are looked at
    resolve: Callable[[dict[str, str]], Response | None] | None = None


# ---------------------------------------------------------------------------------------------
# The emulator


class KarbonEmulator(ServedEmulator):
    """Karbon API v3 on a loopback port, with the state and test controls to drive it.

    Use as a context manager or call `start()` / `stop()`. Python methods seed and change state the
    way Karbon's UI and automators would; the same controls are JSON POSTs under `/__admin/`."""

    def __init__(
        self,
        *,
        app_token: str = "app-token-0000",
        access_keys: Iterable[str] = ("eyJfirm",),
        clock: Callable[[], datetime] | None = None,
        rate_limit_per_minute: int = 120,
        top_over_100: Literal["error", "cap"] = "error",
        validate: bool = True,
        coalesce_seconds: float = 60.0,
        timestamp_key: str = "TimeStamp",
        work_resource_type: str = "Work",
        auto_deliver: bool = False,
        statuses: Mapping[str, Sequence[str]] | None = None,
        work_types: Mapping[str, Sequence[str] | None] | None = None,
        seed: int | None = None,
    ) -> None:
        if rate_limit_per_minute < 1:
            raise ValueError("rate_limit_per_minute must be at least 1")
        if top_over_100 not in ("error", "cap"):
            raise ValueError("top_over_100 must be 'error' or 'cap'")
        if timestamp_key not in ("TimeStamp", "Timestamp"):
            raise ValueError("timestamp_key must be 'TimeStamp' or 'Timestamp' (both seen live)")
        if work_resource_type not in ("Work", "WorkItem"):
            raise ValueError("work_resource_type must be 'Work' or 'WorkItem' (both seen live)")
        if coalesce_seconds < 0:
            raise ValueError("coalesce_seconds cannot be negative")
        self._app_token = app_token
        self._access_keys = set(access_keys)
        self._revoked: set[str] = set()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._clock_offset = timedelta()
        self._rate_limit = rate_limit_per_minute
        self._top_over_100 = top_over_100
        self._validate = validate
        self._coalesce = timedelta(seconds=coalesce_seconds)
        self._timestamp_key = timestamp_key
        self._work_resource_type = work_resource_type
        self._auto_deliver = auto_deliver
        self._tenant = _build_tenant(statuses, work_types)
        self._random = random.Random(seed)

        self.log = RequestLog()
        self.internal_errors: list[str] = []  # tracebacks of emulator bugs answered as 5001
        self._lock = threading.RLock()
        self._pump_lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._work_items: dict[str, _WorkItem] = {}
        self._invoices: dict[str, _Invoice] = {}
        self._time_entries: dict[str, _TimeEntry] = {}
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self._injected: list[int] = []
        self._subscriptions: dict[str, _Subscription] = {}
        self._pending: list[_PendingWebhook] = []
        self._deliveries: list[Delivery] = []
        self._failing_deliveries = 0
        self._dropping_changes = 0
        self._sequence = 0
        self._invoice_numbers = 1000

        self._contract: OpenAPIContract | None = None
        self._contract_resolved = False
        self._server = EmulatorServer(self._handle)
        self._stop_delivering = threading.Event()
        self._deliverer: threading.Thread | None = None
        self._routes = self._build_routes()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 (a free port) and deliver webhooks; return the base URL."""
        url = super().start()
        if self._auto_deliver and self._deliverer is None:
            self._stop_delivering.clear()
            self._deliverer = threading.Thread(
                target=self._deliver_forever, name="karbon-emulator-webhooks", daemon=True
            )
            self._deliverer.start()
        return url

    def stop(self) -> None:
        self._stop_delivering.set()
        if self._deliverer is not None:
            self._deliverer.join(timeout=5)
            self._deliverer = None
        super().stop()

    def _deliver_forever(self) -> None:
        while not self._stop_delivering.wait(AUTO_DELIVER_INTERVAL_SECONDS):
            try:
                self.pump()
            except Exception:  # keep delivering; a sandbox must not lose its webhook thread
                self.internal_errors.append(traceback.format_exc())

    # -- observation -----------------------------------------------------------------------

    def violations(self) -> list[str]:
        return self.log.violations()

    def list_calls(self, path: str = "/v3/WorkItems") -> int:
        """GET requests to exactly `path` (list pages, including followed nextLinks)."""
        return self.log.count(method="GET", exact=path)

    def detail_calls(self, prefix: str = "/v3/WorkItems/") -> int:
        return self.log.count(method="GET", path_prefix=prefix)

    def work_item(self, key: str) -> dict[str, Any]:
        """The work item as a detail GET would show it (unspaced PrimaryStatus, FeeSettings)."""
        with self._lock:
            item = self._work_items[key]
            detail = self._work_item_detail(item, base="")
        shown: dict[str, Any] = json.loads(json.dumps(detail, default=_json_default))
        return shown

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def subscriptions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: {
                    "TargetUrl": sub.target_url,
                    "WebhookType": sub.webhook_type,
                    "SigningKey": sub.signing_key,
                    "ConsecutiveFailures": sub.consecutive_failures,
                }
                for name, sub in self._subscriptions.items()
            }

    # -- clock -----------------------------------------------------------------------------

    def _now(self) -> datetime:
        return _utc(self._clock()) + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's time forward on top of `clock` (for the sandbox's admin calls)."""
        with self._lock:
            self._clock_offset += timedelta(seconds=seconds)

    # -- seeding and Karbon-side changes -----------------------------------------------------

    def add_client(
        self,
        key: str,
        name: str,
        *,
        client_type: str = "Organization",
        external_key: str | None = None,
        user_defined_identifier: str | None = None,
        hidden: bool = False,
        email_address: str | None = None,
        phone_number: str | None = None,
        contact_type: str = "Client",
    ) -> None:
        if client_type not in CLIENT_TYPES:
            raise ValueError(f"client_type must be one of {CLIENT_TYPES}")
        with self._lock:
            if key in self._clients:
                raise ValueError(f"client {key} already exists")
            self._clients[key] = _Client(
                key=key,
                name=name,
                client_type=client_type,
                modified=self._now(),
                external_key=external_key,
                user_defined_identifier=user_defined_identifier,
                hidden=hidden,
                email_address=email_address,
                phone_number=phone_number,
                contact_type=contact_type,
            )
            self._queue_change("Contact", "Contact", key, "Inserted")

    def update_client(self, key: str, **changes: Any) -> None:
        """Change a client as a Karbon user would (e.g. external_key=...); queues a webhook."""
        unknown = set(changes) - _CLIENT_CHANGES
        if unknown:
            raise TypeError(f"cannot change {sorted(unknown)}; use {sorted(_CLIENT_CHANGES)}")
        with self._lock:
            client = self._clients[key]
            for name, value in changes.items():
                setattr(client, name, value)
            client.modified = self._now()
            self._queue_change("Contact", "Contact", key, "Updated")

    def add_work_item(
        self,
        *,
        client_key: str,
        title: str,
        key: str | None = None,
        work_type: str = "Tax Return",
        primary: str = "Planned",
        secondary: str | None = None,
        start_date: date | None = None,
        fee: Decimal | None = None,
        fee_type: str = "FixedFee",
        template_key: str | None = None,
        assignee: str = "preparer@example.com",
    ) -> str:
        """Create a work item (as a person would in Karbon); return its key. Queues Inserted."""
        canonical = canonical_primary(primary)
        if canonical is None:
            raise ValueError(f"unknown primary status {primary!r}")
        if fee_type not in FEE_TYPES:
            raise ValueError(f"fee_type must be one of {FEE_TYPES}")
        with self._lock:
            if client_key not in self._clients:
                raise KeyError(f"no client {client_key}; add_client first")
            if key is None:
                key = self._new_key(self._work_items)
            elif key in self._work_items:
                raise ValueError(f"work item {key} already exists")
            now = self._now()
            start = _midnight(start_date) if start_date is not None else _midnight(now.date())
            item = _WorkItem(
                key=key,
                title=title,
                client_key=client_key,
                work_type=work_type,
                primary=canonical,
                secondary=None,
                start=start,
                assignee=assignee,
                fee_type=fee_type,
                fee_value=_fee_value(fee_type, fee),
                template_key=template_key,
            )
            item.secondary = self._valid_secondary(item.work_type, canonical, secondary)
            if canonical == "Completed":
                item.completed = now
            self._work_items[key] = item
            self._queue_change("Work", self._work_resource_type, key, "Inserted")
            return key

    def set_status(
        self,
        key: str,
        primary: str,
        secondary: str | None = None,
        *,
        completed_date: datetime | None = None,
    ) -> None:
        """Move a work item as a Karbon automator would; queues an Updated webhook.

        Reaching Completed sets CompletedDate (the given one, else now); staying Completed keeps
        it; leaving Completed clears it. A secondary the work type does not offer is dropped to
        None, as Karbon does [QREF]."""
        canonical = canonical_primary(primary)
        if canonical is None:
            raise ValueError(f"unknown primary status {primary!r}")
        with self._lock:
            item = self._work_items[key]
            self._apply_status(item, canonical, secondary, completed_date)
            self._queue_change("Work", self._work_resource_type, key, "Updated")

    def set_fee(self, key: str, fee: Decimal | None, fee_type: str = "FixedFee") -> None:
        """Change FeeSettings; FeeValue stays null unless FixedFee [SPEC]. Queues a webhook."""
        if fee_type not in FEE_TYPES:
            raise ValueError(f"fee_type must be one of {FEE_TYPES}")
        with self._lock:
            item = self._work_items[key]
            item.fee_type = fee_type
            item.fee_value = _fee_value(fee_type, fee)
            self._queue_change("Work", self._work_resource_type, key, "Updated")

    def delete_work_item(self, key: str) -> None:
        with self._lock:
            del self._work_items[key]
            self._queue_change("Work", self._work_resource_type, key, "Deleted")

    def add_karbon_invoice(
        self,
        *,
        client_key: str,
        work_item_keys: Sequence[str],
        status: str = "AwaitingPayment",
        amount: Decimal | None = None,
        currency: str = "USD",
        invoice_date: date | None = None,
    ) -> str:
        """An invoice raised in Karbon Billing, one line per work item (BillableItemEntityKey).

        `amount` defaults to the work items' fixed fees. Queues an Invoice webhook (Updated only
        [GUIDE 4])."""
        if status not in INVOICE_STATUSES:
            raise ValueError(f"status must be one of {INVOICE_STATUSES}")
        with self._lock:
            if client_key not in self._clients:
                raise KeyError(f"no client {client_key}")
            if amount is None:
                amount = sum(
                    (
                        self._work_items[k].fee_value or Decimal(0)
                        for k in work_item_keys
                        if k in self._work_items
                    ),
                    Decimal(0),
                )
            now = self._now()
            self._invoice_numbers += 1
            key = self._new_key(self._invoices, length=11)
            self._invoices[key] = _Invoice(
                key=key,
                number=f"KIN-{self._invoice_numbers}",
                client_key=client_key,
                work_item_keys=tuple(work_item_keys),
                status=status,
                amount=Decimal(amount),
                currency=currency,
                invoice_date=_midnight(invoice_date or now.date()),
                created=now,
                updated=now,
            )
            self._queue_change("Invoice", "Invoice", key, "Updated")
            return key

    def add_time_entry(
        self,
        work_item_key: str,
        minutes: int,
        billed_status: str = "Unbilled",
        *,
        entry_date: date | None = None,
        hourly_rate: Decimal = Decimal("150"),
        user_key: str = "2xfLMq5PFqb7",
        billable: bool = True,
    ) -> str:
        if billed_status not in BILLED_STATUSES:
            raise ValueError(f"billed_status must be one of {BILLED_STATUSES}")
        with self._lock:
            item = self._work_items[work_item_key]
            client = self._clients[item.client_key]
            now = self._now()
            key = "".join(self._random.choice("0123456789abcdef") for _ in range(32))
            self._time_entries[key] = _TimeEntry(
                key=key,
                timesheet_key=_stable_key(
                    "timesheet", user_key, (entry_date or now.date()).isoformat()
                ),
                work_item_key=work_item_key,
                client_key=client.key,
                client_type=client.client_type,
                user_key=user_key,
                minutes=minutes,
                hourly_rate=Decimal(hourly_rate),
                billed_status=billed_status,
                day=_midnight(entry_date or now.date()),
                created=now,
                billable=billable,
            )
            return key

    # -- fault controls --------------------------------------------------------------------

    def revoke(self, access_key: str) -> None:
        """Later requests with this AccessKey get 401 (the firm disconnected the app)."""
        with self._lock:
            self._revoked.add(access_key)

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next `count` authenticated API requests answer `status` (5xx: Karbon's 5001 body
        with an API Request Id; 429 with Retry-After; 409 with the 4020 conflict body)."""
        with self._lock:
            self._injected.extend([status] * count)

    def fail_deliveries(self, count: int) -> None:
        """The next `count` delivery attempts fail without reaching the target (target is down)."""
        with self._lock:
            self._failing_deliveries += count

    def drop_next_webhooks(self, count: int) -> None:
        """The next `count` changes produce no delivery at all (lost by Karbon)."""
        with self._lock:
            self._dropping_changes += count

    # -- webhooks --------------------------------------------------------------------------

    def _queue_change(self, webhook_type: str, resource_type: str, key: str, action: str) -> None:
        """Schedule (or coalesce into) a notification; the caller holds the lock.

        Changes to one entity within `coalesce_seconds` of the first pending one make a single
        notification, sent at first change + window [GUIDE 7]."""
        if webhook_type not in self._subscriptions:
            return
        if self._dropping_changes:
            self._dropping_changes -= 1
            return
        now = self._now()
        for pending in self._pending:
            if (
                pending.webhook_type == webhook_type
                and pending.resource_key == key
                and pending.attempts == 0
                and not pending.in_flight
                and now <= pending.first_change + self._coalesce
            ):
                pending.action = _merge_action(pending.action, action)
                pending.last_change = now
                return
        self._sequence += 1
        self._pending.append(
            _PendingWebhook(
                sequence=self._sequence,
                webhook_type=webhook_type,
                resource_type=resource_type,
                resource_key=key,
                action=action,
                first_change=now,
                last_change=now,
                due=now + self._coalesce,
            )
        )

    def pump(self) -> int:
        """Attempt every delivery due at the emulator's clock; return the number of attempts.

        A failed attempt (no 2xx, connection error) is retried after 1, 2, 4, ... minutes; after
        10 failed attempts of a delivery, or 10 consecutive failures of a subscription, the
        subscription is cancelled and GET answers 404 [GUIDE 7, REF 1.6]."""
        with self._pump_lock:
            now = self._now()
            with self._lock:
                due = sorted(
                    (p for p in self._pending if p.due <= now and not p.in_flight),
                    key=lambda p: (p.due, p.sequence),
                )
                for pending in due:
                    pending.in_flight = True
            attempts = 0
            for pending in due:
                with self._lock:
                    subscription = self._subscriptions.get(pending.webhook_type)
                    if subscription is None:
                        self._pending.remove(pending)
                        continue
                    target = subscription.target_url
                    signing_key = subscription.signing_key
                    injected = self._failing_deliveries > 0
                    if injected:
                        self._failing_deliveries -= 1
                body = json.dumps(
                    {
                        "ResourcePermaKey": pending.resource_key,
                        "ResourceType": pending.resource_type,
                        "ActionType": pending.action,
                        self._timestamp_key: _fmt(pending.last_change),
                    },
                    separators=(",", ":"),
                ).encode()
                headers = {"Content-Type": "application/json"}
                if signing_key:
                    headers["Signature"] = hmac.new(
                        signing_key.encode(), body, hashlib.sha256
                    ).hexdigest()
                status, error = self._post(target, body, headers, injected=injected)
                attempts += 1
                with self._lock:
                    pending.in_flight = False
                    pending.attempts += 1
                    self._deliveries.append(
                        Delivery(
                            url=target,
                            body=body,
                            headers=headers,
                            status=status,
                            at=now,
                            webhook_type=pending.webhook_type,
                            attempt=pending.attempts,
                            error=error,
                        )
                    )
                    self._settle(pending, status, now)
            return attempts

    def _post(
        self, target: str, body: bytes, headers: Mapping[str, str], *, injected: bool
    ) -> tuple[int | None, str | None]:
        if injected:
            return None, "injected failure (fail_deliveries)"
        try:
            answer = requests.post(
                target, data=body, headers=dict(headers), timeout=DELIVERY_TIMEOUT_SECONDS
            )
        except Exception as exc:  # any failure to deliver is a failed attempt, as for Karbon
            return None, f"{type(exc).__name__}: {exc}"
        answer.close()
        return answer.status_code, None

    def _settle(self, pending: _PendingWebhook, status: int | None, now: datetime) -> None:
        subscription = self._subscriptions.get(pending.webhook_type)
        if status is not None and 200 <= status < 300:
            if pending in self._pending:
                self._pending.remove(pending)
            if subscription is not None:
                subscription.consecutive_failures = 0
            return
        if subscription is None:
            return
        subscription.consecutive_failures += 1
        if (
            pending.attempts >= MAX_DELIVERY_ATTEMPTS
            or subscription.consecutive_failures >= MAX_DELIVERY_ATTEMPTS
        ):
            self._cancel_subscription(pending.webhook_type)
            return
        pending.due = now + timedelta(minutes=2 ** (pending.attempts - 1))

    def _cancel_subscription(self, webhook_type: str) -> None:
        self._subscriptions.pop(webhook_type, None)
        self._pending = [p for p in self._pending if p.webhook_type != webhook_type or p.in_flight]

    # -- state rules -----------------------------------------------------------------------

    def _new_key(self, taken: Mapping[str, Any], *, length: int = 12) -> str:
        while True:
            key = "".join(self._random.choice(_KEY_ALPHABET) for _ in range(length))
            if key not in taken:
                return key

    def _valid_secondary(
        self, work_type: str | None, primary: str, secondary: str | None
    ) -> str | None:
        if not secondary:
            return None
        return secondary if self._tenant.allows(work_type, primary, secondary) else None

    def _apply_status(
        self,
        item: _WorkItem,
        primary: str,
        secondary: str | None,
        completed_date: datetime | None,
    ) -> None:
        was_completed = item.primary == "Completed"
        item.primary = primary
        item.secondary = self._valid_secondary(item.work_type, primary, secondary)
        if primary == "Completed":
            if completed_date is not None:
                item.completed = _utc(completed_date)
            elif not was_completed or item.completed is None:
                item.completed = self._now()
        else:
            item.completed = None

    def _visible_client(self, key: str) -> _Client | None:
        """Hidden clients (and so their work) answer 404 to API applications [REF 1.5]."""
        client = self._clients.get(key)
        return None if client is None or client.hidden else client

    def _visible_work_item(self, key: str) -> _WorkItem | None:
        item = self._work_items.get(key)
        if item is None or self._visible_client(item.client_key) is None:
            return None
        return item

    # -- rendering -------------------------------------------------------------------------

    def _work_item_summary(self, item: _WorkItem) -> dict[str, Any]:
        """The list shape (WorkItemSummaryDTO): spaced PrimaryStatus, no FeeSettings [REF 1.3]."""
        client = self._clients.get(item.client_key)
        group = self._clients.get(item.related_group_key or "")
        spaced = PRIMARY_STATUSES[item.primary]
        local_part = item.assignee.split("@", 1)[0]
        return {
            "WorkItemKey": item.key,
            "AssigneeEmailAddress": item.assignee,
            "AssigneeKey": _stable_key("user", item.assignee.casefold()),
            "AssigneeName": " ".join(p.capitalize() for p in re.split(r"[._-]+", local_part)),
            "Title": item.title,
            "ClientKey": item.client_key,
            "ClientName": client.name if client else None,
            "ClientType": client.client_type if client else None,
            "ClientUserDefinedIdentifier": client.user_defined_identifier if client else None,
            "RelatedClientGroupKey": item.related_group_key,
            "ClientGroupKey": (
                client.key if client and client.client_type == "ClientGroup" else None
            ),
            "RelatedClientGroupName": group.name if group else None,
            "StartDate": _fmt(item.start),
            "DueDate": _fmt(item.due),
            "DeadlineDate": _fmt(item.deadline),
            "CompletedDate": _fmt(item.completed),
            "ToDoPeriod": _fmt(item.start),
            "WorkType": item.work_type,
            "WorkStatus": f"{spaced} - {item.secondary}" if item.secondary else spaced,
            "PrimaryStatus": spaced,
            "SecondaryStatus": item.secondary,
            "WorkTemplateKey": item.template_key,
            "WorkTemplateTile": None,  # sic, Karbon's spelling [SPEC]
            "WorkScheduleKey": item.schedule_key,
            "EstimatedBudget": 0.0,
        }

    def _work_item_view(self, item: _WorkItem) -> dict[str, Any]:
        view = self._work_item_summary(item)
        view["StartDate"] = item.start
        view["DeadlineDate"] = item.deadline
        return view

    def _work_item_detail(self, item: _WorkItem, *, base: str) -> dict[str, Any]:
        """The detail shape (WorkItemDTO): unspaced PrimaryStatus, FeeSettings, role assignments."""
        detail: dict[str, Any] = {
            "@odata.context": f"{base}/v3/$metadata#WorkItems/KarbonService.WorkItemDTO/$entity",
            "@odata.type": "#KarbonService.WorkItemDTO",
        }
        detail.update(self._work_item_summary(item))
        detail["PrimaryStatus"] = item.primary
        detail["Description"] = item.description
        detail["ClientTaskRecipient"] = None  # "will always return null" [SPEC]
        detail["FeeSettings"] = {"FeeType": item.fee_type, "FeeValue": item.fee_value}
        detail["UserRoleAssignments"] = [dict(a) for a in item.role_assignments]
        return detail

    def _client_summary(self, client: _Client) -> dict[str, Any]:
        modified = _fmt(client.modified)
        if client.client_type == "Contact":
            return {
                "ContactKey": client.key,
                "FullName": client.name,
                "PreferredName": client.name.split(" ", 1)[0],
                "Salutation": None,
                "ClientOwner": None,
                "ClientManager": None,
                "Address": None,
                "EmailAddress": client.email_address,
                "PhoneNumber": client.phone_number,
                "RoleOrTitle": None,
                "ContactType": client.contact_type,
                "UserDefinedIdentifier": client.user_defined_identifier,
                "LastModifiedDateTime": modified,
            }
        if client.client_type == "Organization":
            return {
                "OrganizationKey": client.key,
                "FullName": client.name,
                "PhoneNumber": client.phone_number,
                "EmailAddress": client.email_address,
                "Website": None,
                "ContactType": client.contact_type,
                "LastModifiedDateTime": modified,
                "UserDefinedIdentifier": client.user_defined_identifier,
            }
        return {
            "ClientGroupKey": client.key,
            "FullName": client.name,
            "PhoneNumber": client.phone_number,
            "Website": None,
            "LastModifiedDateTime": modified,
        }

    def _client_view(self, client: _Client) -> dict[str, Any]:
        # ExternalKey is filterable but appears in no response shape of the spec [SPEC].
        view = self._client_summary(client)
        view["LastModifiedDateTime"] = client.modified
        view["ExternalKey"] = client.external_key
        return view

    def _client_detail(self, client: _Client, expand: set[str], *, base: str) -> dict[str, Any]:
        card = {
            "BusinessCardKey": _stable_key("card", client.key),
            "EntityType": client.client_type,
            "EntityKey": client.key,
            "IsPrimaryCard": True,
            "WebSites": [],
            "EmailAddresses": [client.email_address] if client.email_address else [],
            "OrganizationKey": None,
            "RoleOrTitle": None,
            "FacebookLink": None,
            "LinkedInLink": None,
            "TwitterLink": None,
            "SkypeLink": None,
            "Addresses": [],
            "PhoneNumbers": (
                [
                    {
                        "PhoneNumberKey": _stable_key("phone", client.key),
                        "Number": client.phone_number,
                        "CountryCode": None,
                        "Label": "Work",
                    }
                ]
                if client.phone_number
                else []
            ),
        }
        common = {
            "FullName": client.name,
            "ClientOwner": None,
            "ClientManager": None,
            "ContactType": client.contact_type,
            "UserDefinedIdentifier": client.user_defined_identifier,
            "RestrictionLevel": "Public",  # Hidden ones never get this far
            "LastModifiedDateTime": _fmt(client.modified),
            "EntityDescription": {"Text": ""},
        }
        accounting: dict[str, Any] = {
            "ContactPermaKey": client.key if client.client_type == "Contact" else None,
            "OrganizationPermaKey": client.key if client.client_type == "Organization" else None,
            "LegalName": client.name if client.client_type == "Organization" else None,
            "TradingName": None,
            "BaseCurrency": None,
            "FinancialYearEndDay": None,
            "FinancialYearEndMonth": None,
            "RegistrationNumbers": [],
            "Notes": [],
        }
        if client.client_type == "Contact":
            first, _, last = client.name.partition(" ")
            detail: dict[str, Any] = {
                "@odata.context": f"{base}/v3/$metadata#Contacts/KarbonService.ContactDTO/$entity",
                "@odata.type": "#KarbonService.ContactDTO",
                "ContactKey": client.key,
                "FirstName": first,
                "MiddleName": None,
                "LastName": last or first,
                "PreferredName": first,
                "Salutation": None,
                "Suffix": None,
                **common,
                "AvatarUrl": None,
                "AccountingDetail": accounting,
            }
            if "BusinessCards" in expand:
                detail["BusinessCards"] = [card]
            if "ClientTeam" in expand:
                detail["ClientTeam"] = []
            if "ClientAccess" in expand:
                detail["ClientAccess"] = []
            return detail
        if client.client_type == "Organization":
            detail = {
                "@odata.context": (
                    f"{base}/v3/$metadata#Organizations/KarbonService.OrganizationDTO/$entity"
                ),
                "@odata.type": "#KarbonService.OrganizationDTO",
                "OrganizationKey": client.key,
                **common,
                "AccountingDetail": accounting,
            }
            if "BusinessCards" in expand:
                detail["BusinessCards"] = [card]
            if "ClientTeam" in expand:
                detail["ClientTeam"] = []
            if "Contacts" in expand:
                detail["Contacts"] = []
            return detail
        detail = {
            "@odata.context": f"{base}/v3/$metadata#ClientGroups/$entity",
            "@odata.type": "#KarbonService.ClientGroupDTO",
            "ClientGroupKey": client.key,
            **common,
            "PrimaryContact": None,
            "Members": [],
            "AccountingDetails": None,
        }
        if "BusinessCard" in expand:
            detail["BusinessCard"] = card
        if "ClientTeam" in expand:
            detail["ClientTeam"] = []
        return detail

    def _invoice_render(self, invoice: _Invoice, expand: set[str]) -> dict[str, Any]:
        client = self._clients.get(invoice.client_key)
        amount = invoice.amount
        body: dict[str, Any] = {
            "InvoiceKey": invoice.key,
            "InvoiceNumber": invoice.number,
            "TotalAmountDue": Decimal(0) if invoice.status == "Paid" else amount,
            "InvoiceTotal": amount,
            "InvoiceSubTotal": amount,
            "InvoiceTaxTotal": Decimal(0),
            "InvoiceDate": _fmt(invoice.invoice_date),
            "PaymentDueDate": _fmt(invoice.invoice_date + timedelta(days=7)),
            "UpdatedAt": _fmt(invoice.updated),
            "CurrencyCode": invoice.currency,
            "PaymentInstructions": None,
            "InvoiceStatus": invoice.status,
            "Client": {
                "ClientKey": invoice.client_key,
                "ClientType": client.client_type if client else None,
                "Name": client.name if client else None,
                "AddressLine": None,
                "City": None,
                "StateProvinceCounty": None,
                "ZipCode": None,
                "Country": None,
                "EmailAddress": client.email_address if client else None,
            },
            "TaxLineItems": [],
        }
        if "LineItems" in expand:
            # A line made from a work item names it in BillableItemEntityKey (type "Entity");
            # Karbon's line items have no WorkItemKey field [SPEC BillingInvoiceLineItems].
            shares = _split(amount, len(invoice.work_item_keys))
            body["LineItems"] = [
                {
                    "LineItemKey": _uuid_like(_stable_key("line", invoice.key, key, length=32)),
                    "BillableItemEntityKey": key,
                    "BillableItemType": "Entity",
                    "Description": (
                        self._work_items[key].title if key in self._work_items else key
                    ),
                    "Quantity": 1,
                    "UnitPrice": str(share),
                    "Amount": share,
                    "TaxRate": None,
                    "TaxRateName": None,
                }
                for key, share in zip(invoice.work_item_keys, shares, strict=True)
            ]
        if "Payments" in expand:
            body["Payments"] = []
        if "Data" in expand:
            body["Data"] = []
        return body

    def _invoice_view(self, invoice: _Invoice) -> dict[str, Any]:
        return {
            "InvoiceKey": invoice.key,
            "InvoiceNumber": invoice.number,
            "InvoiceStatus": invoice.status,
            "InvoiceDate": invoice.invoice_date,
            "CreatedAt": invoice.created,
            "UpdatedAt": invoice.updated,
        }

    def _time_entry_render(self, entry: _TimeEntry) -> dict[str, Any]:
        total = (entry.hourly_rate * entry.minutes / 60).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )
        return {
            "IndividualTimeEntryKey": entry.key,
            "TimesheetKey": entry.timesheet_key,
            "EntityKey": entry.work_item_key,
            "WorkItemKey": entry.work_item_key,
            "ClientKey": entry.client_key,
            "ClientType": entry.client_type,
            "UserKey": entry.user_key,
            "RoleName": "Preparer",
            "TaskTypeName": "Tax Return",
            "TaskTypeIsBillable": entry.billable,
            "Date": _fmt(entry.day),
            "Minutes": entry.minutes,
            "Description": "",
            "HourlyRate": entry.hourly_rate,
            "TotalCost": total,
            "BilledStatus": entry.billed_status,
            "CreatedDate": _fmt(entry.created),
            "ModifiedDate": _fmt(entry.created),
            "FeeType": "Time and Materials",
        }

    def _time_entry_view(self, entry: _TimeEntry) -> dict[str, Any]:
        view = self._time_entry_render(entry)
        view["Date"] = entry.day
        return view

    # -- HTTP entry ------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/__admin/"):
            return self._admin(request)
        violations: list[str] = []
        try:
            response = self._answer(request, violations)
        except Exception:  # an emulator bug: answer like Karbon does, keep the traceback
            self.internal_errors.append(traceback.format_exc())
            response = self._internal_error(500)
        self.log.add(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string.decode("latin-1"),
                headers=dict(request.headers),
                body=request.get_data(),
                status=response.status_code,
                violations=tuple(violations),
            )
        )
        return _compressed(request, response)

    def _answer(self, request: Request, violations: list[str]) -> Response:
        if not request.path.startswith("/v3/"):
            return self._no_resource(request)
        contract = self._resolve_contract()
        if contract is not None:
            violations.extend(contract.violations(request))
        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        with self._lock:
            access_key = request.headers.get("AccessKey", "").strip()
            bucket = self._buckets.get((self._app_token, access_key))
            now = self._now()
            if bucket is None:
                bucket = _TokenBucket(self._rate_limit, now)
                self._buckets[(self._app_token, access_key)] = bucket
            wait = bucket.take(now)
            injected = self._injected.pop(0) if wait is None and self._injected else None
        if wait is not None:
            return _rate_limited(wait)
        if injected is not None:
            return self._injected_response(injected)
        route, params = self._route(request.path)
        if route is None:
            return self._no_resource(request)
        handler = route.handlers.get(request.method)
        if handler is None:
            return _json(
                405,
                _error_body(
                    "4002",
                    f"The requested resource does not support http method '{request.method}'.",
                ),
            )
        if route.resolve is not None:
            unresolved = route.resolve(params)
            if unresolved is not None:
                return unresolved
        if violations:
            return _violation_response(violations)
        try:
            with self._lock:
                return handler(request, params)
        except _Refusal as refused:
            return refused.response
        except ODataError as exc:
            return _json(400, _error_body("4002", str(exc)))

    def _resolve_contract(self) -> OpenAPIContract | None:
        if not self._validate:
            return None
        with self._lock:
            if not self._contract_resolved:
                self._contract = karbon_contract()
                self._contract_resolved = True
            return self._contract

    def _authenticate(self, request: Request) -> Response | None:
        """Both headers on every call [REF 1.1]; a revoked or unknown key is refused too."""
        authorization = request.headers.get("Authorization", "").strip()
        access_key = request.headers.get("AccessKey", "").strip()
        if not authorization or not access_key:
            return _json(401, {"error": {"statusCode": "401", "message": "JWT not present."}})
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            known = access_key in self._access_keys and access_key not in self._revoked
        if scheme.casefold() != "bearer" or token.strip() != self._app_token or not known:
            return _json(
                401,
                {
                    "error": {
                        "statusCode": "401",
                        "message": "Authorization has been denied for this request.",
                    }
                },
            )
        return None

    def _internal_error(self, status: int) -> Response:
        request_id = self._random.randrange(10**19, 10**20)
        return _json(
            status,
            _error_body(
                "5001",
                "Unexpected Internal Error. Please contact Karbon HQ Technical support with API "
                f"Request Id of {request_id}.",
            ),
        )

    def _injected_response(self, status: int) -> Response:
        if status == 429:
            return _rate_limited(10)
        if status == 409:
            return _json(
                409,
                _error_body(
                    "4020",
                    "The resource was modified by another request. Refetch the latest version "
                    "and retry.",
                ),
            )
        if status >= 500:
            return self._internal_error(status)
        return _json(status, _error_body(str(status), "Injected failure."))

    def _no_resource(self, request: Request) -> Response:
        return _json(
            404,
            _error_body(
                "4002", f"No HTTP resource was found that matches the request URI '{request.url}'."
            ),
        )

    def _route(self, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                return route, match.groupdict()
        return None, {}

    def _build_routes(self) -> list[_Route]:
        def at(pattern: str) -> re.Pattern[str]:
            return re.compile(pattern)

        def udi(entity_set: str, function: str) -> re.Pattern[str]:
            return at(
                rf"/v3/{entity_set}/{function}\(UserDefinedIdentifier='(?P<udi>(?:[^']|'')*)'\)"
            )

        return [
            _Route(
                at(r"/v3/WorkItems"), {"GET": self._list_work_items, "POST": self._post_work_item}
            ),
            _Route(
                at(r"/v3/WorkItems/(?P<key>[^/]+)"),
                {
                    "GET": self._get_work_item,
                    "PUT": self._put_work_item,
                    "PATCH": self._patch_work_item,
                },
            ),
            _Route(at(r"/v3/Contacts"), {"GET": self._lister("Contact", _CONTACTS)}),
            _Route(
                udi("Contacts", "GetContactByUserDefinedIdentifier"),
                {"GET": self._udi_getter("Contact")},
            ),
            _Route(
                at(r"/v3/Contacts/(?P<key>[^/]+)"),
                {
                    "GET": self._client_getter(
                        "Contact", {"BusinessCards", "ClientTeam", "ClientAccess"}
                    )
                },
            ),
            _Route(at(r"/v3/Organizations"), {"GET": self._lister("Organization", _ORGANIZATIONS)}),
            _Route(
                udi("Organizations", "GetOrganizationByUserDefinedIdentifier"),
                {"GET": self._udi_getter("Organization")},
            ),
            _Route(
                at(r"/v3/Organizations/(?P<key>[^/]+)"),
                {
                    "GET": self._client_getter(
                        "Organization", {"BusinessCards", "ClientTeam", "Contacts"}
                    )
                },
            ),
            _Route(at(r"/v3/ClientGroups"), {"GET": self._lister("ClientGroup", _CLIENT_GROUPS)}),
            _Route(
                udi("ClientGroups", "GetClientGroupByUserDefinedIdentifier"),
                {"GET": self._udi_getter("ClientGroup")},
            ),
            _Route(
                at(r"/v3/ClientGroups/(?P<key>[^/]+)"),
                {"GET": self._client_getter("ClientGroup", {"BusinessCard", "ClientTeam"})},
            ),
            _Route(at(r"/v3/TenantSettings"), {"GET": self._get_tenant_settings}),
            _Route(
                at(r"/v3/WebhookSubscriptions"),
                {"POST": self._post_subscription, "DELETE": self._delete_subscriptions},
            ),
            _Route(
                at(r"/v3/WebhookSubscriptions/(?P<type>[^/]+)"),
                {"GET": self._get_subscription, "DELETE": self._delete_subscription},
                resolve=_resolve_webhook_type,
            ),
            _Route(at(r"/v3/Invoices"), {"GET": self._list_invoices}),
            _Route(at(r"/v3/Invoices/(?P<key>[^/]+)"), {"GET": self._get_invoice}),
            _Route(at(r"/v3/IndividualTimeEntries"), {"GET": self._list_time_entries}),
            _Route(at(r"/v3/IndividualTimeEntries/(?P<key>[^/]+)"), {"GET": self._get_time_entry}),
        ]

    # -- lists -----------------------------------------------------------------------------

    def _list(
        self,
        request: Request,
        listing: _Listing,
        records: Iterable[Any],
        view: Callable[[Any], dict[str, Any]],
        render: Callable[[Any, set[str]], dict[str, Any]],
    ) -> Response:
        """Filter, order and page like Karbon's OData lists [REF 1.1, GUIDE 6]."""
        args = request.args
        allowed = {"$filter", "$orderby", "$top", "$skip", "$count"}
        if listing.expandable:
            allowed.add("$expand")
        _check_query_options(args.keys(), allowed)
        text = args.get("$filter", "")
        clauses = _FilterParser(text, listing.rules).parse() if text.strip() else []
        expand = _parse_expand(args.get("$expand"), listing.expandable, listing.rules.type_name)
        rows = [(view(record), record) for record in records]
        rows = [row for row in rows if _matches(row[0], clauses)]
        rows.sort(key=lambda row: str(row[0][listing.key_field]))
        rows.sort(key=lambda row: _order_key(row[0].get(listing.default_order)))
        order = args.get("$orderby", "").strip()
        if order:
            prop, _, direction = order.partition(" ")
            direction = direction.strip().casefold()
            if prop not in listing.orderable or direction not in ("", "asc", "desc"):
                raise ODataError(
                    f"The property '{prop}' cannot be used in the $orderby query option."
                )
            rows.sort(key=lambda row: _order_key(row[0].get(prop)), reverse=direction == "desc")
        top = _int_option(args, "$top", listing.max_top)
        if top > listing.max_top:
            if self._top_over_100 == "error":
                raise ODataError(
                    f"The limit of '{listing.max_top}' for Top query has been exceeded. The "
                    f"value from the incoming request is '{top}'."
                )
            top = listing.max_top  # "silently capped" [GUIDE 6]
        skip = _int_option(args, "$skip", 0)
        page = rows[skip : skip + top]
        base = request.host_url.rstrip("/")
        envelope: dict[str, Any] = {
            "@odata.context": f"{base}/v3/$metadata#{listing.entity_set}"
            + (f"/{listing.element_type}" if listing.element_type else "")
        }
        if listing.count_always or args.get("$count", "").casefold() == "true":
            envelope["@odata.count"] = len(rows)
        if page and skip + len(page) < len(rows):
            envelope["@odata.nextLink"] = _next_link(
                f"{base}{request.path}", args, skip + len(page)
            )
        items = []
        for _, record in page:
            rendered = render(record, expand)
            if listing.element_type:
                rendered = {"@odata.type": f"#{listing.element_type}", **rendered}
            items.append(rendered)
        envelope["value"] = items
        return _json(200, envelope)

    def _list_work_items(self, request: Request, params: dict[str, str]) -> Response:
        visible = [
            item
            for item in self._work_items.values()
            if self._visible_client(item.client_key) is not None
        ]
        return self._list(
            request,
            _WORK_ITEMS,
            visible,
            self._work_item_view,
            lambda item, _expand: self._work_item_summary(item),
        )

    def _lister(
        self, client_type: str, listing: _Listing
    ) -> Callable[[Request, dict[str, str]], Response]:
        def handle(request: Request, params: dict[str, str]) -> Response:
            clients = [
                c for c in self._clients.values() if c.client_type == client_type and not c.hidden
            ]
            return self._list(
                request,
                listing,
                clients,
                self._client_view,
                lambda client, _expand: self._client_summary(client),
            )

        return handle

    def _list_invoices(self, request: Request, params: dict[str, str]) -> Response:
        return self._list(
            request, _INVOICES, self._invoices.values(), self._invoice_view, self._invoice_render
        )

    def _list_time_entries(self, request: Request, params: dict[str, str]) -> Response:
        return self._list(
            request,
            _TIME_ENTRIES,
            self._time_entries.values(),
            self._time_entry_view,
            lambda entry, _expand: self._time_entry_render(entry),
        )

    # -- details ---------------------------------------------------------------------------

    def _get_work_item(self, request: Request, params: dict[str, str]) -> Response:
        _check_query_options(request.args.keys(), set())
        item = self._visible_work_item(params["key"])
        if item is None:
            raise _work_item_not_found()
        return _json(200, self._work_item_detail(item, base=request.host_url.rstrip("/")))

    def _client_getter(
        self, client_type: str, expandable: set[str]
    ) -> Callable[[Request, dict[str, str]], Response]:
        def handle(request: Request, params: dict[str, str]) -> Response:
            return self._client_response(request, client_type, expandable, params["key"])

        return handle

    def _udi_getter(self, client_type: str) -> Callable[[Request, dict[str, str]], Response]:
        expandable = {"BusinessCard" if client_type == "ClientGroup" else "BusinessCards"}

        def handle(request: Request, params: dict[str, str]) -> Response:
            wanted = params["udi"].replace("''", "'")
            if not wanted:
                raise _refuse(400, "4002", "UserDefinedIdentifier is missing or empty")
            for client in self._clients.values():
                if (
                    client.client_type == client_type
                    and not client.hidden
                    and client.user_defined_identifier == wanted
                ):
                    return self._client_response(request, client_type, expandable, client.key)
            label = {"ClientGroup": "Client Group"}.get(client_type, client_type)
            raise _refuse(
                404, "4004", f"No {label} found for provided UserDefinedIdentifer"
            )  # sic [SPEC UDI_Not_Found*]

        return handle

    def _client_response(
        self, request: Request, client_type: str, expandable: set[str], key: str
    ) -> Response:
        _check_query_options(request.args.keys(), {"$expand"})
        client = self._visible_client(key)
        if client is None or client.client_type != client_type:
            message = {
                "Contact": "No Contact found for provided key",
                "Organization": f"No organization exists with a key of {key}.",
                "ClientGroup": "No Client Group found for provided key",
            }[client_type]
            raise _refuse(404, "4004", message)
        expand = _parse_expand(
            request.args.get("$expand"), frozenset(expandable), f"KarbonService.{client_type}DTO"
        )
        return _json(200, self._client_detail(client, expand, base=request.host_url.rstrip("/")))

    def _get_invoice(self, request: Request, params: dict[str, str]) -> Response:
        _check_query_options(request.args.keys(), {"$expand"})
        invoice = self._invoices.get(params["key"])
        if invoice is None:
            raise _refuse(404, "4004", f"Invoice with key {params['key']} not found.")
        expand = _parse_expand(request.args.get("$expand"), _INVOICES.expandable, "InvoiceDTO")
        body = {
            "@odata.context": f"{request.host_url.rstrip('/')}/v3/$metadata#Invoices/$entity",
            **self._invoice_render(invoice, expand),
            "InvoiceMagicLink": None,
            "InvoicePdfUrl": None,
        }
        return _json(200, body)

    def _get_time_entry(self, request: Request, params: dict[str, str]) -> Response:
        _check_query_options(request.args.keys(), set())
        entry = self._time_entries.get(params["key"])
        if entry is None:
            raise _refuse(404, "4004", "No Individual Time Entry found for provided key")
        return _json(200, self._time_entry_render(entry))

    def _get_tenant_settings(self, request: Request, params: dict[str, str]) -> Response:
        """Statuses and work types; names unspaced in WorkStatuses but spaced in
        AvailableStatuses.Primary, as Karbon's own example mixes them [SPEC, REF 1.5]."""
        base = request.host_url.rstrip("/")
        work_statuses = [
            {
                "Name": primary,
                "Type": "Primary",
                "Children": [
                    {
                        "Name": secondary,
                        "Type": "Secondary",
                        "WorkStatusKey": _stable_key("status", primary, secondary),
                    }
                    for secondary in self._tenant.secondaries[primary]
                ],
            }
            for primary in PRIMARY_STATUSES
        ]
        work_types = [
            {
                "Name": name,
                "WorkTypeKey": _stable_key("worktype", name),
                "AvailableStatuses": {
                    "Primary": list(PRIMARY_STATUSES.values()),
                    "Secondary": [
                        _stable_key("status", p, s)
                        for p in PRIMARY_STATUSES
                        for s in self._tenant.secondaries[p]
                        if (p, s) in allowed
                    ],
                },
            }
            for name, allowed in self._tenant.work_types.items()
        ]
        return _json(
            200,
            {
                "@odata.context": f"{base}/v3/$metadata#TenantSettings/$entity",
                "TenantKey": _stable_key("tenant", self._app_token),
                "ClientAccessActivated": False,
                "WorkStatuses": work_statuses,
                "WorkTypes": work_types,
                "ContactTypes": [
                    {"Name": name, "ContactTypeKey": _stable_key("contacttype", name)}
                    for name in CONTACT_TYPES
                ],
                "ServiceTypes": [
                    {
                        "Name": "Compliance",
                        "ServiceTypeKey": _stable_key("servicetype", "Compliance"),
                        "WorkTypeKeys": [
                            _stable_key("worktype", name) for name in self._tenant.work_types
                        ],
                    }
                ],
            },
        )

    # -- work item writes ------------------------------------------------------------------

    def _post_work_item(self, request: Request, params: dict[str, str]) -> Response:
        """201 with Location and the detail (unspaced) [REF 1.3]; queues Inserted."""
        body = _json_body(request, "workItem")
        item = self._work_item_from_body(body, key=self._new_key(self._work_items), current=None)
        self._work_items[item.key] = item
        self._queue_change("Work", self._work_resource_type, item.key, "Inserted")
        base = request.host_url.rstrip("/")
        return _json(
            201,
            self._work_item_detail(item, base=base),
            {"Location": f"{base}/v3/WorkItems('{item.key}')/KarbonService.WorkItemDTO"},
        )

    def _put_work_item(self, request: Request, params: dict[str, str]) -> Response:
        """Full replace, status included; 204 [REF 1.3].

        Omitted Description, dates, schedule and related group are cleared (GET-modify-PUT
        [GUIDE 3]). An omitted status (a lone SecondaryStatus applies to the current primary),
        FeeSettings, role assignments and template are kept: the docs do not say they reset."""
        current = self._visible_work_item(params["key"])
        if current is None:
            raise _work_item_not_found()
        body = _json_body(request, "update")
        self._work_items[current.key] = self._work_item_from_body(
            body, key=current.key, current=current
        )
        self._queue_change("Work", self._work_resource_type, current.key, "Updated")
        return Response(status=204)

    def _patch_work_item(self, request: Request, params: dict[str, str]) -> Response:
        """Only the seven patchable fields; anything else (status!) is 400 4002 [SPEC]."""
        current = self._visible_work_item(params["key"])
        if current is None:
            raise _work_item_not_found()
        body = _json_body(request, "update")
        if not isinstance(body, dict) or not body:
            raise _refuse(400, "4005", "Required payload data is missing: update")
        refused = [name for name in body if name not in PATCHABLE_WORK_ITEM_FIELDS]
        if refused:
            raise _refuse(
                400,
                "4002",
                "Invalid property to update. Only "
                f"{', '.join(PATCHABLE_WORK_ITEM_FIELDS)} can be patched.",
            )
        item = replace(current, role_assignments=list(current.role_assignments))
        if "Title" in body:
            item.title = _required_text(body, "Title")
        if "Description" in body:
            item.description = _optional_text(body, "Description")
        if "StartDate" in body:
            item.start = _required_moment(body, "StartDate", allow_date=True)
        if "DueDate" in body:
            item.due = _optional_moment(body, "DueDate", allow_date=True)
        if "DeadlineDate" in body:
            item.deadline = _optional_moment(body, "DeadlineDate", allow_date=True)
        if "AssigneeEmailAddress" in body:
            item.assignee = _assignee(body)
        if "WorkType" in body:
            item.work_type = self._work_type(body)
            item.secondary = self._valid_secondary(item.work_type, item.primary, item.secondary)
        self._work_items[item.key] = item
        self._queue_change("Work", self._work_resource_type, item.key, "Updated")
        return Response(status=204)

    def _work_item_from_body(self, body: Any, *, key: str, current: _WorkItem | None) -> _WorkItem:
        """Check a POST/PUT body like Karbon does (4003 "Invalid Model." with one detail)."""
        if not isinstance(body, dict):
            raise _refuse(400, "4005", "Required payload data is missing: workItem")
        for name in REQUIRED_WORK_ITEM_FIELDS:
            if body.get(name) in (None, ""):
                raise _invalid_model(name, f"The {name} field is required.")
        client_type = body["ClientType"]
        if client_type not in CLIENT_TYPES:
            raise _invalid_model(
                "ClientType", "ClientType must be Contact, Organization, or ClientGroup"
            )
        client = self._visible_client(str(body["ClientKey"]))
        if client is None or client.client_type != client_type:
            raise _invalid_model("ClientKey", f"ClientKey is not a valid {client_type} Key")
        work_type = self._work_type(body) if body.get("WorkType") else None
        primary, secondary = _status_from_body(body)
        if primary is None:  # no status sent: keep the primary, take a secondary if one came
            sent = body.get("SecondaryStatus")
            primary = current.primary if current is not None else "Planned"
            if isinstance(sent, str):
                secondary = sent
            elif current is not None:
                secondary = current.secondary
        fee_type, fee = _fee_from_body(body)
        if fee_type is None and current is not None:
            fee_type, fee = current.fee_type, current.fee_value
        assignments = body.get("UserRoleAssignments")
        item = _WorkItem(
            key=key,
            title=_required_text(body, "Title"),
            client_key=client.key,
            work_type=work_type,
            primary="Planned",
            secondary=None,
            start=_required_moment(body, "StartDate", allow_date=False),
            assignee=_assignee(body),
            due=_optional_moment(body, "DueDate", allow_date=False),
            deadline=_optional_moment(body, "DeadlineDate", allow_date=False),
            completed=current.completed if current is not None else None,
            description=_optional_text(body, "Description"),
            fee_type=fee_type or "FixedFee",
            fee_value=fee,
            template_key=(
                body.get("WorkTemplateKey") or (current.template_key if current else None)
            ),
            schedule_key=body.get("WorkScheduleKey"),
            related_group_key=body.get("RelatedClientGroupKey"),
            role_assignments=(
                [dict(a) for a in assignments]
                if isinstance(assignments, list)
                else list(current.role_assignments if current else [])
            ),
        )
        if current is not None:
            item.primary = current.primary
        self._apply_status(item, primary, secondary, None)
        return item

    def _work_type(self, body: Mapping[str, Any]) -> str:
        work_type = body.get("WorkType")
        if not isinstance(work_type, str) or work_type not in self._tenant.work_types:
            raise _invalid_model("WorkType", "Work Type is not valid")
        return work_type

    # -- webhook subscriptions -------------------------------------------------------------

    def _post_subscription(self, request: Request, params: dict[str, str]) -> Response:
        """One per type; a second POST replaces it, as Karbon's 2022 tests show [REF 1.6]."""
        body = _json_body(request, "WebhookSubscription")
        if not isinstance(body, dict):
            raise _refuse(400, "4002", "WebhookSubscription model cannot be null.")
        webhook_type = body.get("WebhookType")
        target = body.get("TargetUrl")
        signing_key = body.get("SigningKey")
        if webhook_type not in WEBHOOK_TYPES:
            raise _refuse(400, "4004", _unknown_webhook_type(str(webhook_type)))
        if not isinstance(target, str) or not re.match(r"https?://", target):
            raise _refuse(400, "4003", "Invalid Model. TargetUrl must be an absolute URL.")
        if signing_key is not None and (
            not isinstance(signing_key, str)
            or len(signing_key) < 16
            or not re.fullmatch(r"[A-Za-z0-9_-]+", signing_key)
        ):
            raise _refuse(
                400,
                "4003",
                "Invalid Model. SigningKey must be at least 16 letters, digits, '-' or '_'.",
            )
        self._subscriptions[webhook_type] = _Subscription(webhook_type, target, signing_key)
        base = request.host_url.rstrip("/")
        return _json(
            201,
            {
                "@odata.context": f"{base}/v3/$metadata#WebhookSubscriptions/$entity",
                "TargetUrl": target,
                "WebhookType": webhook_type,
            },
            {"Location": f"{base}/v3/WebhookSubscriptions('{target}')"},
        )

    def _get_subscription(self, request: Request, params: dict[str, str]) -> Response:
        subscription = self._subscriptions.get(params["type"])
        if subscription is None:
            raise _refuse(404, "4004", f"No existing webhook subscription for {params['type']}")
        base = request.host_url.rstrip("/")
        return _json(
            200,
            {
                "@odata.context": f"{base}/v3/$metadata#WebhookSubscriptions/$entity",
                "TargetUrl": subscription.target_url,
                "WebhookType": subscription.webhook_type,
            },
        )

    def _delete_subscription(self, request: Request, params: dict[str, str]) -> Response:
        if params["type"] not in self._subscriptions:
            raise _refuse(404, "4004", f"No existing webhook subscription for {params['type']}")
        self._cancel_subscription(params["type"])
        return Response(status=204)

    def _delete_subscriptions(self, request: Request, params: dict[str, str]) -> Response:
        for webhook_type in list(self._subscriptions):
            self._cancel_subscription(webhook_type)
        return Response(status=204)

    # -- admin (test controls over HTTP; not logged, not rate limited, no auth) ----------------

    def _admin(self, request: Request) -> Response:
        parts = [p for p in request.path.removeprefix("/__admin/").split("/") if p]
        try:
            body = json.loads(request.get_data() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = self._admin_dispatch(request.method, parts, body)
        except KeyError as exc:
            return _json(404, {"error": f"not found: {exc}"})
        except (TypeError, ValueError, InvalidOperation) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, result)

    def _admin_dispatch(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        match method, parts:
            case "POST", ["clients"]:
                self.add_client(**body)
                return {"key": body["key"]}
            case "POST", ["clients", key]:
                self.update_client(key, **body)
                return {"key": key}
            case "POST", ["work_items"]:
                return {"key": self.add_work_item(**_admin_work_item(body))}
            case "GET", ["work_items", key]:
                return self.work_item(key)
            case "POST", ["work_items", key, "status"]:
                completed = body.get("completed_date")
                self.set_status(
                    key,
                    body["primary"],
                    body.get("secondary"),
                    completed_date=_parse_moment(completed) if completed else None,
                )
                return self.work_item(key)
            case "POST", ["work_items", key, "fee"]:
                fee = body.get("fee")
                self.set_fee(
                    key,
                    Decimal(str(fee)) if fee is not None else None,
                    body.get("fee_type", "FixedFee"),
                )
                return self.work_item(key)
            case ("POST", ["work_items", key, "delete"]) | ("DELETE", ["work_items", key]):
                self.delete_work_item(key)
                return {"deleted": key}
            case "POST", ["invoices"]:
                amount = body.pop("amount", None)
                invoice_date = body.pop("invoice_date", None)
                key = self.add_karbon_invoice(
                    **body,
                    amount=Decimal(str(amount)) if amount is not None else None,
                    invoice_date=date.fromisoformat(invoice_date) if invoice_date else None,
                )
                return {"key": key}
            case "POST", ["time_entries"]:
                rate = body.pop("hourly_rate", None)
                entry_date = body.pop("entry_date", None)
                extra: dict[str, Any] = {}
                if rate is not None:
                    extra["hourly_rate"] = Decimal(str(rate))
                if entry_date:
                    extra["entry_date"] = date.fromisoformat(entry_date)
                return {"key": self.add_time_entry(**body, **extra)}
            case "POST", ["revoke"]:
                self.revoke(body["access_key"])
                return {"revoked": body["access_key"]}
            case "POST", ["fail_next"]:
                self.fail_next(int(body.get("count", 1)), int(body.get("status", 500)))
                return {}
            case "POST", ["fail_deliveries"]:
                self.fail_deliveries(int(body["count"]))
                return {}
            case "POST", ["drop_next_webhooks"]:
                self.drop_next_webhooks(int(body["count"]))
                return {}
            case "POST", ["pump"]:
                return {"attempts": self.pump()}
            case "POST", ["clock", "advance"]:
                self.advance_clock(float(body["seconds"]))
                return {"now": _fmt(self._now())}
            case "GET", ["deliveries"]:
                return [
                    {
                        "url": d.url,
                        "body": d.body.decode(),
                        "headers": d.headers,
                        "status": d.status,
                        "at": _fmt(d.at),
                        "attempt": d.attempt,
                        "error": d.error,
                    }
                    for d in self.deliveries
                ]
            case "GET", ["subscriptions"]:
                return self.subscriptions
            case "GET", ["requests"]:
                return [
                    {
                        "method": e.method,
                        "path": e.path,
                        "query": e.query,
                        "status": e.status,
                        "violations": list(e.violations),
                    }
                    for e in self.log.snapshot()
                ]
            case "GET", ["violations"]:
                return self.violations()
        raise KeyError(f"{method} /__admin/{'/'.join(parts)}")


# ---------------------------------------------------------------------------------------------
# Request helpers


def _check_query_options(names: Iterable[str], allowed: set[str]) -> None:
    for name in names:
        if not name.startswith("$") or name in allowed:
            continue
        option = _QUERY_OPTION_NAMES.get(name)
        if option is None:
            raise ODataError(f"The query parameter '{name}' is not supported.")
        raise ODataError(f"Query option '{option}' is not allowed. {_ALLOWED_OPTION_HINT}")


def _parse_expand(raw: str | None, allowed: frozenset[str], type_name: str) -> set[str]:
    if not raw:
        return set()
    wanted = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = sorted(wanted - allowed)
    if unknown:
        raise ODataError(f"Could not find a property named '{unknown[0]}' on type '{type_name}'.")
    return wanted


def _int_option(args: Mapping[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ODataError(
            f"Invalid value '{raw}' for {name} query option found. The {name} query option "
            "requires a non-negative integer value."
        )
    return value


def _order_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else "")


def _next_link(base_path: str, args: Mapping[str, str], skip: int) -> str:
    """Absolute, on the emulator's own address, keeping the query but the next $skip."""
    params = [
        (k, args[k]) for k in ("$filter", "$orderby", "$top", "$expand", "$count") if k in args
    ]
    params.append(("$skip", str(skip)))
    return base_path + "?" + "&".join(f"{k}={quote(v, safe=_LINK_SAFE)}" for k, v in params)


def _json_body(request: Request, entity: str) -> Any:
    raw = request.get_data()
    if not raw.strip():
        raise _refuse(400, "4005", f"Required payload data is missing: {entity}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _refuse(400, "4005", f"Required payload data is missing: {entity}") from exc


def _required_text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _invalid_model(name, f"The {name} field is required.")
    return value


def _optional_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


def _required_moment(body: Mapping[str, Any], name: str, *, allow_date: bool) -> datetime:
    value = _optional_moment(body, name, allow_date=allow_date)
    if value is None:
        raise _invalid_model(name, f"The {name} field is required.")
    return value


def _optional_moment(body: Mapping[str, Any], name: str, *, allow_date: bool) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return _parse_moment(str(value), allow_date=allow_date)
    except ValueError as exc:
        raise _invalid_model(name, f"The {name} field is not a valid date.") from exc


def _assignee(body: Mapping[str, Any]) -> str:
    value = body.get("AssigneeEmailAddress")
    if not isinstance(value, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise _invalid_model(
            "AssigneeEmailAddress", "Assignee Email Address is not a valid Email Address"
        )
    return value


def _status_from_body(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """PrimaryStatus (spaced or not) wins over the legacy WorkStatus "Primary - Secondary"."""
    raw_primary = body.get("PrimaryStatus")
    secondary = body.get("SecondaryStatus")
    legacy = body.get("WorkStatus")
    legacy_primary, legacy_secondary = None, None
    if isinstance(legacy, str) and legacy.strip():
        head, _, tail = legacy.partition(" - ")
        legacy_primary, legacy_secondary = canonical_primary(head), tail.strip() or None
    if isinstance(raw_primary, str) and raw_primary.strip():
        primary = canonical_primary(raw_primary)
        if primary is None:
            raise _invalid_model("PrimaryStatus", "PrimaryStatus is not valid")
        return primary, secondary if isinstance(secondary, str) else None
    if legacy_primary is not None:
        return legacy_primary, secondary if isinstance(secondary, str) else legacy_secondary
    return None, None


def _fee_from_body(body: Mapping[str, Any]) -> tuple[str | None, Decimal | None]:
    settings = body.get("FeeSettings")
    if settings is None:
        return None, None
    if not isinstance(settings, dict) or settings.get("FeeType") not in FEE_TYPES:
        raise _invalid_model(
            "FeeSettings.FeeType", f"FeeType must be one of {', '.join(FEE_TYPES)}"
        )
    fee_type = settings["FeeType"]
    value = settings.get("FeeValue")
    if value is not None and fee_type != "FixedFee":
        raise _invalid_model(
            "FeeSettings.FeeValue", "FeeValue must be null unless FeeType is FixedFee"
        )
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _invalid_model("FeeSettings.FeeValue", "FeeValue must be a number")
    return fee_type, Decimal(str(value)) if value is not None else None


def _fee_value(fee_type: str, fee: Decimal | None) -> Decimal | None:
    """FeeValue is null unless the fee is fixed [SPEC WorkFeeSettings, QREF]."""
    return Decimal(fee) if fee is not None and fee_type == "FixedFee" else None


def _split(amount: Decimal, parts: int) -> list[Decimal]:
    """Cents shared out so the lines always add up to the invoice total."""
    if parts == 0:
        return []
    cents = int((amount * 100).to_integral_value(rounding=ROUND_HALF_UP))
    each, remainder = divmod(cents, parts)
    return [Decimal(each + (1 if i < remainder else 0)) / 100 for i in range(parts)]


def _uuid_like(hex32: str) -> str:
    digits = "".join(f"{ord(c) % 16:x}" for c in hex32)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


def _work_item_not_found() -> _Refusal:
    return _refuse(404, "4004", "No Work Item found for provided key")


def _unknown_webhook_type(value: str) -> str:
    return (
        f"No Webhook Type found for the provided WebhookType input value : {value}. "
        f"Valid WebhookTypes are {', '.join(WEBHOOK_TYPES)}"
    )


def _resolve_webhook_type(params: dict[str, str]) -> Response | None:
    """An unknown type in the path is Karbon's 404 4004, not a 400 [SPEC examples]."""
    if params["type"] in WEBHOOK_TYPES:
        return None
    return _json(404, _error_body("4004", _unknown_webhook_type(params["type"])))


def _compressed(request: Request, response: Response) -> Response:
    """Gzip the body when the caller accepts it, as Karbon does (~90% smaller [GUIDE 5])."""
    body = response.get_data()
    if not body or "gzip" not in request.headers.get("Accept-Encoding", "").casefold():
        return response
    response.set_data(gzip.compress(body))
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _rate_limited(wait: int) -> Response:
    """429 with delta-seconds Retry-After and Karbon's body [REF 1.2]."""
    return _json(
        429,
        {"statusCode": "429", "message": f"Rate limit is exceeded. Try again in {wait} seconds."},
        {"Retry-After": str(wait)},
    )


def _violation_response(violations: Sequence[str]) -> Response:
    """Refuse what the OpenAPI description refuses: bodies 4003, query and path 4002."""
    message = "; ".join(violations)
    if any(v.startswith("security:") for v in violations):
        return _json(401, {"error": {"statusCode": "401", "message": message}})
    body_fault = any("RequestBody" in v.split(" ", 1)[0] for v in violations)
    return _json(400, _error_body("4003" if body_fault else "4002", message))


def _admin_work_item(body: dict[str, Any]) -> dict[str, Any]:
    converted = dict(body)
    if converted.get("start_date"):
        converted["start_date"] = date.fromisoformat(converted["start_date"])
    if converted.get("fee") is not None:
        converted["fee"] = Decimal(str(converted["fee"]))
    return converted
