"""Domain values <-> xero-python models: drafts become ACCREC invoices, Xero invoices become
`LedgerInvoice`s, payment terms become due dates; the money trail's bank transfers, spend and
receive money, credit notes and refunds; Xero payments and trial balance rows back into the
port's terms. Pure functions; no I/O."""

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
    BankTransaction,
    BankTransfer,
    Contact,
    CreditNote,
    CurrencyCode,
    Invoice,
    LineAmountTypes,
    LineItem,
    LineItemTracking,
    Payment,
)

from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import Money
from connector.ports import (
    AccountRole,
    InvoiceDraft,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerPayment,
    PaymentPosting,
)

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


# ---------------------------------------------------------------------------------------------
# The money trail


@dataclass(frozen=True, slots=True)
class LineTemplate:
    """What a refund's credit note copies from the invoice it refunds (its first line)."""

    item_code: str | None
    account_code: str | None
    tax_type: str | None
    tracking: tuple[tuple[str, str], ...]
    line_amount_types: str


def bank_transfer_model(
    from_code: str, to_code: str, amount: Money, on: date, reference: str
) -> BankTransfer:
    return BankTransfer(
        from_bank_account=Account(code=from_code),
        to_bank_account=Account(code=to_code),
        amount=amount.amount,
        date=on,
        reference=reference,
    )


def bank_transaction_model(
    kind: str,
    *,
    bank_code: str,
    contact_id: str,
    line_account: str,
    amount: Money,
    on: date,
    reference: str,
    description: str,
    tax_type: str | None,
) -> BankTransaction:
    """Spend (`SPEND`) or receive (`RECEIVE`) money on a bank account, one line to another
    account, no tax (a gateway fee or a transfer to a holding account is not a taxable
    supply; `tax_type` only names the rate the line shows)."""
    return BankTransaction(
        type=kind,
        contact=Contact(contact_id=contact_id),
        bank_account=Account(code=bank_code),
        line_items=[
            LineItem(
                description=description,
                quantity=Decimal(1),
                unit_amount=amount.amount,
                account_code=line_account,
                tax_type=tax_type or None,
            )
        ],
        line_amount_types=LineAmountTypes.NOTAX,
        date=on,
        reference=reference,
        currency_code=CurrencyCode(amount.currency),
        status="AUTHORISED",
    )


def line_template(invoice: Invoice) -> LineTemplate:
    """The refunded invoice's first line: its item, account, tax type and tracking."""
    lines = list(invoice.line_items or [])
    first = lines[0] if lines else None
    return LineTemplate(
        item_code=(first.item_code if first else None) or None,
        account_code=(first.account_code if first else None) or None,
        tax_type=(first.tax_type if first else None) or None,
        tracking=tuple(
            (str(t.name), str(t.option)) for t in (first.tracking or []) if t.name and t.option
        )
        if first
        else (),
        line_amount_types=enum_value(invoice.line_amount_types) or "Exclusive",
    )


def credit_note_model(
    *,
    customer_id: str,
    template: LineTemplate,
    amount: Money,
    on: date,
    reference: str,
    description: str,
) -> CreditNote:
    """An AUTHORISED ACCRECCREDIT for `amount` with the invoice's item, account, tax type and
    tracking. Amounts are tax inclusive (unless the invoice had no tax at all) so the credit
    note's total is exactly the money given back."""
    amount_types = "NoTax" if template.line_amount_types == "NoTax" else "Inclusive"
    return CreditNote(
        type="ACCRECCREDIT",
        contact=Contact(contact_id=customer_id),
        date=on,
        status="AUTHORISED",
        line_amount_types=LINE_AMOUNT_TYPES[amount_types],
        line_items=[
            LineItem(
                description=description,
                quantity=Decimal(1),
                unit_amount=amount.amount,
                item_code=template.item_code,
                account_code=template.account_code,
                tax_type=template.tax_type,
                tracking=[LineItemTracking(name=n, option=o) for n, o in template.tracking] or None,
            )
        ],
        reference=reference,
        currency_code=CurrencyCode(amount.currency),
    )


def refund_payment_model(
    credit_note_id: str, account_code: str, amount: Money, on: date, reference: str
) -> Payment:
    """A cash refund: a payment on the credit note, out of `account_code`."""
    return Payment(
        credit_note=CreditNote(credit_note_id=credit_note_id),
        account=Account(code=account_code),
        amount=amount.amount,
        date=on,
        reference=reference,
    )


def receivable_model(
    *,
    customer_id: str,
    holding_account: str,
    amount: Money,
    on: date,
    reference: str,
    description: str,
) -> Invoice:
    """A returned payment's new receivable: an ACCREC invoice due at once, coded to the
    holding account the matching spend money is coded to (so that account nets to zero)."""
    return Invoice(
        type="ACCREC",
        contact=Contact(contact_id=customer_id),
        line_items=[
            LineItem(
                description=description,
                quantity=Decimal(1),
                unit_amount=amount.amount,
                account_code=holding_account,
            )
        ],
        date=on,
        due_date=on,
        line_amount_types=LineAmountTypes.NOTAX,
        reference=reference,
        status="AUTHORISED",
        currency_code=CurrencyCode(amount.currency),
    )


def ledger_payment(
    payment: Payment, *, clearing_account: str | None, currency: str
) -> LedgerPayment:
    invoice = payment.invoice
    account = payment.account
    code = str(account.code) if account is not None and account.code else None
    paid = payment.date
    return LedgerPayment(
        id=LedgerPaymentId(str(payment.payment_id)),
        reference=payment.reference or None,
        invoice_id=LedgerInvoiceId(str(invoice.invoice_id))
        if invoice is not None and invoice.invoice_id
        else None,
        amount=_money(
            payment.amount, enum_value(getattr(invoice, "currency_code", None)) or currency
        ),
        paid_on=paid.date() if isinstance(paid, datetime) else paid,
        account=AccountRole.CLEARING if code and code == clearing_account else None,
    )


def trial_balance_amount(report: Any, account_id: str | None, code: str) -> Decimal | None:
    """An account's year-to-date balance in a Xero Trial Balance (YTD Debit - YTD Credit), or
    None when the report has no row for it (Xero leaves out accounts without a balance).

    Rows are found by the `account` attribute (the AccountID), else by the "Name (Code)"
    label; the YTD columns by the header's titles."""
    rows = list(getattr(report, "rows", None) or [])
    header = next((r for r in rows if enum_value(r.row_type) == "Header"), None)
    titles = [str(c.value or "") for c in (header.cells or [])] if header else []
    try:
        debit_at, credit_at = titles.index("YTD Debit"), titles.index("YTD Credit")
    except ValueError:
        debit_at, credit_at = 3, 4
    for section in rows:
        for row in list(section.rows or []):
            cells = list(row.cells or [])
            if enum_value(row.row_type) != "Row" or len(cells) <= max(debit_at, credit_at):
                continue
            ids = {
                str(a.value).casefold()
                for a in (cells[0].attributes or [])
                if a.id == "account" and a.value
            }
            label = str(cells[0].value or "")
            if (account_id and account_id.casefold() in ids) or label.endswith(f"({code})"):
                return _report_amount(cells[debit_at].value) - _report_amount(
                    cells[credit_at].value
                )
    return None


def _report_amount(value: Any) -> Decimal:
    text = str(value or "").replace(",", "").strip()
    return Decimal(text) if text else Decimal("0")
