"""QuickBooks Online errors (python-quickbooks exceptions, Fault codes in JSON or XML, bare HTTP
statuses) mapped to ours in one table, each message naming what the admin should fix."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from xml.etree import ElementTree

from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    MilestoneSyncError,
    RejectedError,
    TransientError,
)

RECONNECT = "run `milestone-sync connect quickbooks` to connect the company again"
# the ledger options that name accounts, in the order a message lists them
ACCOUNT_OPTIONS = ("clearing_account", "bank_account", "fee_account", "disputes_account")


@dataclass(frozen=True)
class QBOError:
    """One error as QuickBooks answered it: HTTP status and the first Fault error, whichever
    body shape carried it (JSON `Fault`, lowercase `fault`, XML `IntuitResponse`, or none)."""

    status: int | None
    code: str | None
    message: str
    detail: str = ""
    element: str = ""
    intuit_tid: str | None = None

    @property
    def text(self) -> str:
        parts = [self.message, self.detail]
        return ": ".join(p for p in parts if p) or f"HTTP {self.status}"

    def describe(self) -> str:
        code = f" {self.code}" if self.code else ""
        status = f"HTTP {self.status}" if self.status else "QuickBooks"
        tid = f" (intuit_tid {self.intuit_tid})" if self.intuit_tid else ""
        return f"{status}{code}: {self.text}{tid}"


def parse_error_body(status: int | None, body: str, intuit_tid: str | None = None) -> QBOError:
    """The QBOError in a response body of any of QBO's shapes."""
    text = (body or "").strip()
    if text.startswith("{"):
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, Mapping):
            fault = data.get("Fault") or data.get("fault")
            if isinstance(fault, Mapping):
                errors = fault.get("Error") or fault.get("error") or []
                if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
                    first = errors[0]
                    return QBOError(
                        status=status,
                        code=_str(first.get("code")),
                        message=_str(first.get("Message") or first.get("message")) or "",
                        detail=_str(first.get("Detail") or first.get("detail")) or "",
                        element=_str(first.get("element")) or "",
                        intuit_tid=intuit_tid,
                    )
            if "error" in data and isinstance(data["error"], str):  # OAuth-style bodies
                return QBOError(status, None, data["error"], intuit_tid=intuit_tid)
    if text.startswith("<?xml") or text.startswith("<IntuitResponse"):
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            for node in root.iter():
                if node.tag.rsplit("}", 1)[-1] == "Error":
                    found = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in node}
                    return QBOError(
                        status=status,
                        code=node.get("code"),
                        message=found.get("Message", "").strip(),
                        detail=found.get("Detail", "").strip(),
                        element=node.get("element") or "",
                        intuit_tid=intuit_tid,
                    )
    snippet = re.sub(r"<[^>]+>", " ", text)
    snippet = " ".join(snippet.split())[:200]
    return QBOError(status, None, snippet or "no body", intuit_tid=intuit_tid)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Subject:
    """What a call was about, so an error can say which configured value to fix."""

    what: str  # e.g. "create invoice for ms-1"
    customer: str | None = None
    items: Mapping[str, str] = field(default_factory=dict)  # QBO item id -> as configured
    tax_codes: Mapping[str, str] = field(default_factory=dict)  # QBO code -> as configured
    terms: str | None = None
    txn_date: date | None = None
    doc_number: str | None = None
    currency: str | None = None
    invoice: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)  # option name -> its value
    accounts: Mapping[str, str] = field(default_factory=dict)  # element -> the option naming it


def _listing(values: Mapping[str, str]) -> str:
    shown = sorted({v for v in values.values() if v})
    return ", ".join(repr(v) for v in shown) or "the configured value"


def _element(error: QBOError) -> str:
    return f"{error.element} {error.detail}"


def _about(error: QBOError, *names: str) -> bool:
    haystack = _element(error)
    return any(name in haystack for name in names)


Rule = tuple[Callable[[QBOError], bool], Callable[[QBOError, Subject], MilestoneSyncError]]


def _customer_missing(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: customer {s.customer} does not exist in QuickBooks: set the client's "
        "ledger_customer_id in the mapping config to an existing customer id "
        f"(QuickBooks said {error.describe()})",
        code="customer_not_found",
    )


def _customer_inactive(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: customer {s.customer} is inactive in QuickBooks: make it active again "
        "(Customers > include inactive > Make active) or map the client to another customer "
        f"(QuickBooks said {error.describe()})",
        code="customer_inactive",
    )


def _item_problem(error: QBOError, s: Subject) -> MilestoneSyncError:
    inactive = error.code == "610"
    state = "inactive (archived)" if inactive else "missing or not sellable"
    return RejectedError(
        f"{s.what}: item {_listing(s.items)} is {state} in QuickBooks: "
        + (
            "reactivate it (Products and services > include inactive) or "
            if inactive
            else "create it as a Service or Non-inventory item, or "
        )
        + f"change the milestone's item in the mapping config (QuickBooks said {error.describe()})",
        code="item_inactive" if inactive else "item_not_found",
    )


def _tax_problem(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: tax code {_listing(s.tax_codes)} is not valid for this QuickBooks company "
        "(US companies take TAX or NON; others a tax code's id or name from Taxes > Sales tax): "
        f"fix tax_code in the mapping config (QuickBooks said {error.describe()})",
        code="tax_code",
    )


def _named_option(label: str, option: str) -> Callable[[QBOError, Subject], MilestoneSyncError]:
    def build(error: QBOError, s: Subject) -> MilestoneSyncError:
        value = s.options.get(option, "")
        return RejectedError(
            f"{s.what}: the {label} {value!r} is missing or inactive in QuickBooks: fix the "
            f"ledger option {option} or reactivate it in QuickBooks (QuickBooks said "
            f"{error.describe()})",
            code=option,
        )

    return build


def _accounts(error: QBOError, s: Subject) -> MilestoneSyncError:
    """An account reference refused: name the account options this call used."""
    named = [(o, s.options[o]) for o in ACCOUNT_OPTIONS if s.options.get(o)]
    pointed = s.accounts.get(error.element)
    if pointed is not None and s.options.get(pointed):
        named = [(pointed, s.options[pointed])]  # the fault names the field: that option only
    if not named:
        return _something_inactive(error, s)
    listing = " or ".join(f"{value!r} (ledger option {option})" for option, value in named)
    state = (
        "cannot be used here"
        if error.code == "6000"
        else "is inactive"
        if error.code == "610"
        else "does not exist"
    )
    return RejectedError(
        f"{s.what}: QuickBooks says the account {listing} {state}: reactivate it, or set the "
        f"ledger option to an active account of the right type (QuickBooks said "
        f"{error.describe()})",
        code=named[0][0],
    )


def _terms_problem(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: payment terms {s.terms!r} are missing or inactive in QuickBooks: add them "
        "(Settings > All lists > Terms) or fix terms in the mapping config "
        f"(QuickBooks said {error.describe()})",
        code="terms",
    )


def _invoice_missing(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: invoice {s.invoice} does not exist in QuickBooks (deleted there?) "
        f"(QuickBooks said {error.describe()})",
        code="invoice_not_found",
    )


def _something_inactive(error: QBOError, s: Subject) -> MilestoneSyncError:
    """A reference fault that names no field (real QBO often leaves `element` empty)."""
    if s.invoice is not None and s.customer is None:
        return _invoice_missing(error, s)
    named = [f"customer {s.customer}"] if s.customer else []
    if s.items:
        named.append(f"item {_listing(s.items)}")
    named.extend(f"{option} {value!r}" for option, value in s.options.items() if value)
    checked = ", ".join(named) or "the customer and items"
    return RejectedError(
        f"{s.what}: something it uses is missing or inactive in QuickBooks: check {checked} "
        f"and reactivate or fix it (QuickBooks said {error.describe()})",
        code="inactive_reference",
    )


def _period_closed(error: QBOError, s: Subject) -> MilestoneSyncError:
    when = f" dated {s.txn_date.isoformat()}" if s.txn_date else ""
    return RejectedError(
        f"{s.what}: the transaction{when} falls in a closed accounting period in QuickBooks: "
        "reopen the books (Settings > Account and settings > Advanced > Close the books) or let "
        f"the milestone be dated after the closing date (QuickBooks said {error.describe()})",
        code="period_closed",
    )


def _currency(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: QuickBooks refused the currency {s.currency or ''}: turn on multicurrency "
        "and add the currency (Settings > Account and settings > Advanced > Currency), or give "
        "the customer the firm's billing currency, or set ledger currency to match "
        f"(QuickBooks said {error.describe()})",
        code="currency",
    )


def _duplicate_number(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: invoice number {s.doc_number} is already used in QuickBooks: change the "
        "invoice numbering in the mapping config or renumber the other transaction "
        f"(QuickBooks said {error.describe()})",
        code="duplicate_doc_number",
    )


def _overpayment(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: QuickBooks refused the payment against invoice {s.invoice}: it is more than "
        "the invoice's open balance (paid or voided in QuickBooks meanwhile?) "
        f"(QuickBooks said {error.describe()})",
        code="overpayment",
    )


def _no_email(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: QuickBooks has no email address to send invoice {s.invoice} to: add one "
        f"to the customer in QuickBooks (QuickBooks said {error.describe()})",
        code="no_email",
    )


def _too_long(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: {error.element or 'a field'} is longer than QuickBooks allows: shorten it in "
        f"the mapping config (QuickBooks said {error.describe()})",
        code="too_long",
    )


def _malformed(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: QuickBooks refused the request as malformed ({error.describe()}): this is "
        "a milestone-sync bug, please report it with this message",
        code=f"qbo_{error.code or error.status}",
    )


def _bad_query(error: QBOError, s: Subject) -> MilestoneSyncError:
    return InvariantViolation(
        f"{s.what}: QuickBooks refused milestone-sync's query ({error.describe()}): a bug, "
        "stopping rather than guessing whether the object exists"
    )


def _reconnect(error: QBOError, s: Subject) -> MilestoneSyncError:
    return ConfigError(
        f"{s.what}: QuickBooks refused the connection ({error.describe()}): {RECONNECT}"
    )


def _subscription(error: QBOError, s: Subject) -> MilestoneSyncError:
    return ConfigError(
        f"{s.what}: the QuickBooks company cannot take new data ({error.describe()}): renew "
        "the QuickBooks subscription, then retry"
    )


def _stale(error: QBOError, s: Subject) -> MilestoneSyncError:
    return TransientError(f"{s.what}: someone changed the object meanwhile ({error.describe()})")


def _server(error: QBOError, s: Subject) -> MilestoneSyncError:
    return TransientError(f"{s.what}: QuickBooks failed ({error.describe()}), retry later")


def _rejected(error: QBOError, s: Subject) -> MilestoneSyncError:
    return RejectedError(
        f"{s.what}: QuickBooks refused it: {error.describe()}", code=f"qbo_{error.code}"
    )


def _code(*codes: str) -> Callable[[QBOError], bool]:
    return lambda e: e.code in codes


def _ref(*names: str, inactive: bool | None = None) -> Callable[[QBOError], bool]:
    """A reference fault (2500 missing, 610 inactive, 620 unlinkable) about one of `names`."""

    def matches(e: QBOError) -> bool:
        if e.code not in ("2500", "610", "620") or not _about(e, *names):
            return False
        return inactive is None or (e.code == "610") == inactive

    return matches


def _business(*words: str) -> Callable[[QBOError], bool]:
    return lambda e: e.code == "6000" and _about(e, *words)


# First match wins. Throttling (429 / 3001) is answered by the client before this table.
TABLE: list[Rule] = [
    (lambda e: e.status == 401 or e.code in ("3200", "100"), _reconnect),
    (lambda e: e.status == 403 or e.code in ("3100", "120"), _reconnect),
    (_code("6190"), _subscription),
    (_code("5010"), _stale),
    (_ref("CustomerRef", "JournalEntryLineDetail.Entity", inactive=True), _customer_inactive),
    (_ref("CustomerRef", "JournalEntryLineDetail.Entity"), _customer_missing),
    (_ref("EntityRef", "DepositLineDetail.Entity"), _named_option("vendor", "fee_vendor")),
    (_ref("ItemRef"), _item_problem),
    (_ref("TaxCodeRef"), _tax_problem),
    (_code("6100"), _tax_problem),
    (_ref("DepositToAccountRef", "FromAccountRef", "ToAccountRef", "AccountRef"), _accounts),
    (_ref("ClassRef"), _named_option("class", "class_name")),
    (_ref("DepartmentRef"), _named_option("location", "department")),
    (_ref("SalesTermRef"), _terms_problem),
    (_ref("LinkedTxn"), _invoice_missing),
    (_code("610", "2500"), _something_inactive),
    (_code("6210"), _period_closed),
    (_code("6140"), _duplicate_number),
    (_business("CurrencyRef"), _currency),
    (_business("DepositToAccountRef", "FromAccountRef", "ToAccountRef", "AccountRef"), _accounts),
    (_business("BillEmail"), _no_email),
    (_code("2210"), _no_email),
    (_business("exceeds", "Line.Amount"), _overpayment),
    (_business("TaxCodeRef", "VAT", "GST"), _tax_problem),
    (_code("2050"), _too_long),
    (_code("4000", "4001", "4002"), _bad_query),
    (_code("2010", "2020", "2170", "500"), _malformed),
    (lambda e: e.status is not None and e.status >= 500, _server),
    (lambda e: e.code is not None and e.code.isdigit() and int(e.code) >= 10000, _server),
]


def translate(error: QBOError, subject: Subject) -> MilestoneSyncError:
    """The error the core should react to, for a QBO error met while doing `subject`."""
    for matches, build in TABLE:
        if matches(error):
            return build(error, subject)
    return _rejected(error, subject)


def is_throttle(error: QBOError) -> bool:
    """429, or Fault 3001 ThrottleExceeded in either body shape (no Retry-After is sent)."""
    return error.status == 429 or error.code == "3001" or "ThrottleExceeded" in error.message
