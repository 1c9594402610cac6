"""Domain values <-> xero-python models: drafts become ACCREC invoices, Xero invoices become
`LedgerInvoice`s, payment terms become due dates. Pure functions; no I/O."""

from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from xero_python.accounting import (
    Account,
    Contact,
    CurrencyCode,
    Invoice,
    LineAmountTypes,
    LineItem,
    LineItemTracking,
    Payment,
)

from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import InvoiceDraft, LedgerInvoice, LedgerInvoiceStatus, PaymentPosting

# Xero's six invoice statuses in the port's four [SPEC Invoice.Status]: SUBMITTED is "awaiting
# approval", a draft to us; DELETED (a removed draft) is as gone as VOIDED.
STATUSES: dict[str, LedgerInvoiceStatus] = {
    "DRAFT": LedgerInvoiceStatus.DRAFT,
    "SUBMITTED": LedgerInvoiceStatus.DRAFT,
    "AUTHORISED": LedgerInvoiceStatus.OPEN,
    "PAID": LedgerInvoiceStatus.PAID,
    "VOIDED": LedgerInvoiceStatus.VOIDED,
    "DELETED": LedgerInvoiceStatus.VOIDED,
}
LINE_AMOUNT_TYPES = {member.value: member for member in LineAmountTypes}

_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What an invoice line needs from a Xero item."""

    code: str
    name: str
    is_sold: bool
    account_code: str | None
    tax_type: str | None


@dataclass(frozen=True, slots=True)
class Terms:
    """Xero PaymentTerms.Sales: `day` and one of DAYSAFTERBILLDATE, DAYSAFTERBILLMONTH,
    OFCURRENTMONTH, OFFOLLOWINGMONTH."""

    day: int
    kind: str


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def enum_value(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.value) if isinstance(value, Enum) else str(value)


def due_from_terms(issued: date, terms: Terms) -> date:
    """The due date Xero's payment terms give an invoice issued on `issued`."""

    def on_day(year: int, month: int, day: int) -> date:
        return date(year, month, min(max(day, 1), calendar.monthrange(year, month)[1]))

    next_year, next_month = (
        (issued.year + 1, 1)
        if issued.month == 12
        else (
            issued.year,
            issued.month + 1,
        )
    )
    if terms.kind == "DAYSAFTERBILLDATE":
        return issued + timedelta(days=terms.day)
    if terms.kind == "DAYSAFTERBILLMONTH":
        month_end = date(
            issued.year, issued.month, calendar.monthrange(issued.year, issued.month)[1]
        )
        return month_end + timedelta(days=terms.day)
    if terms.kind == "OFCURRENTMONTH":
        return on_day(issued.year, issued.month, terms.day)
    if terms.kind == "OFFOLLOWINGMONTH":
        return on_day(next_year, next_month, terms.day)
    raise ValueError(f"unknown Xero payment terms type {terms.kind!r}")


def terms_of(payment_terms: Any) -> Terms | None:
    """Terms from a xero-python PaymentTerm (Contact or Organisation), if sales terms are set."""
    sales = getattr(payment_terms, "sales", None) if payment_terms is not None else None
    if sales is None or sales.day is None or sales.type is None:
        return None
    return Terms(int(sales.day), str(enum_value(sales.type)))


def invoice_model(
    draft: InvoiceDraft,
    *,
    items: Sequence[ItemInfo | None],
    sales_account: str | None,
    line_amount_types: str,
    tracking: Sequence[tuple[str, str]],
    due_date: date | None,
) -> Invoice:
    """The ACCREC invoice for a draft; `items[i]` is line i's resolved item (or None)."""
    currency = draft.total.currency
    lines = []
    for line, item in zip(draft.lines, items, strict=True):
        lines.append(
            LineItem(
                description=line.description,
                quantity=Decimal(1),
                unit_amount=line.amount.amount,
                item_code=item.code if item else None,
                account_code=(item.account_code if item else None) or sales_account,
                tax_type=line.tax_code or None,
                tracking=[LineItemTracking(name=n, option=o) for n, o in tracking] or None,
            )
        )
    return Invoice(
        type="ACCREC",
        contact=Contact(contact_id=draft.customer_id),
        line_items=lines,
        date=draft.issue_date,
        due_date=due_date,
        line_amount_types=LINE_AMOUNT_TYPES[line_amount_types],
        invoice_number=draft.doc_number or None,
        reference=draft.reference,
        status="DRAFT" if draft.draft else "AUTHORISED",
        currency_code=CurrencyCode(currency),
    )


def _money(value: Any, currency: str) -> Money:
    amount = value if isinstance(value, Decimal) else Decimal(str(value or 0))
    return Money.rounded(amount, currency)


def ledger_invoice(invoice: Invoice) -> LedgerInvoice:
    currency = enum_value(invoice.currency_code) or "USD"
    contact = invoice.contact
    due = invoice.due_date
    return LedgerInvoice(
        id=LedgerInvoiceId(str(invoice.invoice_id)),
        number=invoice.invoice_number or None,
        reference=invoice.reference or "",
        customer_id=LedgerCustomerId(str(contact.contact_id) if contact else ""),
        total=_money(invoice.total, currency),
        balance=_money(invoice.amount_due, currency),
        status=STATUSES[str(invoice.status)],
        due_date=due.date() if isinstance(due, datetime) else due,
        sent=bool(invoice.sent_to_contact),
    )


def payment_model(posting: PaymentPosting, account_code: str) -> Payment:
    return Payment(
        invoice=Invoice(invoice_id=posting.invoice_id),
        account=Account(code=account_code),
        amount=posting.amount.amount,
        date=posting.paid_on,
        reference=posting.reference,
    )


def where_literal(text: str) -> str:
    """A string literal of Xero's `where` language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_ms_datetime(text: Any) -> datetime | None:
    """Xero's /Date(ms+0000)/ as an aware UTC datetime."""
    match = _MS_DATE.match(str(text or "").strip())
    if match is None:
        return None
    return datetime.fromtimestamp(int(match.group(1)) / 1000, tz=UTC)
