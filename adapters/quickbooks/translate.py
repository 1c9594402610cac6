"""Domain values <-> python-quickbooks objects, and the reference tag in PrivateNote that lets an
invoice or payment be found again (QBO cannot filter on PrivateNote; lookups match it here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from quickbooks.objects.base import LinkedTxn, Ref
from quickbooks.objects.detailline import SalesItemLine, SalesItemLineDetail
from quickbooks.objects.invoice import Invoice
from quickbooks.objects.payment import Payment, PaymentLine

from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import InvoiceDraft, LedgerInvoice, LedgerInvoiceStatus, PaymentPosting

TAG = "[milestone-sync]"
PAYMENT_REF_LIMIT = 21  # Payment.PaymentRefNum holds 21 characters at most
_TAG_LINE = re.compile(re.escape(TAG) + r" (.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class QBORef:
    """A resolved name-list reference: the QBO Id (and its display name, when known)."""

    id: str
    name: str | None = None

    def sdk(self) -> Ref:
        ref = Ref()
        ref.value = self.id
        if self.name:
            ref.name = self.name
        return ref


@dataclass(frozen=True)
class InvoiceRefs:
    """Everything a draft names, resolved to QBO Ids (one item and tax code per line)."""

    items: Sequence[QBORef | None]
    tax_codes: Sequence[QBORef | None]
    terms: QBORef | None = None
    class_ref: QBORef | None = None
    department: QBORef | None = None
    currency: str | None = None  # CurrencyRef, sent when the company uses multicurrency


def note_for(reference: str, existing: str | None = None) -> str:
    """PrivateNote carrying the reference on a line of its own."""
    line = f"{TAG} {reference}"
    return f"{existing}\n{line}" if existing else line


def reference_in(note: Any) -> str | None:
    """The reference a PrivateNote carries, if milestone-sync wrote it."""
    if not isinstance(note, str):
        return None
    found = _TAG_LINE.findall(note)
    return str(found[-1]) if found else None


def payment_ref_num(reference: str) -> str:
    """What fits in PaymentRefNum (a Stripe charge id is 27 characters: cut to 21); the full
    reference goes into PrivateNote."""
    return reference[:PAYMENT_REF_LIMIT]


def qbo_date(day: date) -> str:
    return day.isoformat()


def qbo_moment(moment: datetime) -> str:
    """A timezone-aware moment as QBO reads it (ISO 8601 with offset)."""
    if moment.tzinfo is None:
        raise ValueError("QuickBooks moments must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_moment(text: Any) -> datetime | None:
    """QBO's `2026-01-05T10:00:00-08:00` (or `...Z`, or a naive value read as UTC), as UTC."""
    if not isinstance(text, str) or not text.strip():
        return None
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def decimal_of(value: Any) -> Decimal:
    """Amounts arrive as Decimal (use_decimal=True), int, or numeric strings."""
    if value is None or value == "":
        return Decimal("0")
    if isinstance(value, float):  # never expected with use_decimal; keep exact digits anyway
        return Decimal(repr(value))
    return Decimal(str(value))


def money_of(value: Any, currency: str) -> Money:
    # QBO keeps amounts at the currency's precision; rounding only absorbs a trailing 0.00x
    return Money.rounded(decimal_of(value), currency)


def build_invoice(draft: InvoiceDraft, refs: InvoiceRefs) -> Invoice:
    """A fresh SDK Invoice for the draft (a new object per attempt: never save one twice)."""
    invoice = Invoice()
    invoice.CustomerRef = QBORef(draft.customer_id).sdk()
    for index, line in enumerate(draft.lines):
        sales = SalesItemLine()
        sales.Amount = line.amount.amount
        sales.Description = line.description
        detail = SalesItemLineDetail()
        detail.Qty = 1
        detail.UnitPrice = line.amount.amount
        item = refs.items[index]
        if item is not None:
            detail.ItemRef = item.sdk()
        tax = refs.tax_codes[index]
        if tax is not None:
            detail.TaxCodeRef = tax.sdk()
        if refs.class_ref is not None:
            detail.ClassRef = refs.class_ref.sdk()
        sales.SalesItemLineDetail = detail
        invoice.Line.append(sales)
    invoice.TxnDate = qbo_date(draft.issue_date)
    if draft.due_date is not None:
        invoice.DueDate = qbo_date(draft.due_date)
    if draft.doc_number:
        invoice.DocNumber = draft.doc_number
    invoice.PrivateNote = note_for(draft.reference)
    if refs.terms is not None:
        invoice.SalesTermRef = refs.terms.sdk()
    if refs.department is not None:
        invoice.DepartmentRef = refs.department.sdk()
    if refs.currency is not None:
        invoice.CurrencyRef = QBORef(refs.currency).sdk()
    return invoice


def build_payment(
    posting: PaymentPosting,
    *,
    deposit_to: QBORef | None,
    currency: str | None,
) -> Payment:
    """A fresh SDK Payment applying `posting.amount` to its invoice."""
    payment = Payment()
    payment.CustomerRef = QBORef(posting.customer_id).sdk()
    payment.TotalAmt = posting.amount.amount
    payment.TxnDate = qbo_date(posting.paid_on)
    payment.PaymentRefNum = payment_ref_num(posting.reference)
    payment.PrivateNote = note_for(posting.reference)
    if deposit_to is not None:
        payment.DepositToAccountRef = deposit_to.sdk()
    if currency is not None:
        payment.CurrencyRef = QBORef(currency).sdk()
    line = PaymentLine()
    line.Amount = posting.amount.amount
    link = LinkedTxn()
    link.TxnId = posting.invoice_id
    link.TxnType = "Invoice"
    line.LinkedTxn.append(link)
    payment.Line.append(line)
    return payment


def is_voided(invoice: Invoice) -> bool:
    """QBO keeps a voided invoice with zero amounts and 'Voided' in PrivateNote."""
    note = invoice.PrivateNote if isinstance(invoice.PrivateNote, str) else ""
    return note.strip().startswith("Voided") and decimal_of(invoice.TotalAmt) == 0


def invoice_currency(invoice: Invoice, home: str) -> str:
    ref = getattr(invoice, "CurrencyRef", None)
    value = getattr(ref, "value", None) if ref is not None else None
    return str(value) if value else home


def to_ledger_invoice(invoice: Invoice, home_currency: str) -> LedgerInvoice:
    currency = invoice_currency(invoice, home_currency)
    total = money_of(invoice.TotalAmt, currency)
    balance = money_of(invoice.Balance, currency)
    if is_voided(invoice):
        status = LedgerInvoiceStatus.VOIDED
    elif balance.is_zero():
        status = LedgerInvoiceStatus.PAID
    else:
        status = LedgerInvoiceStatus.OPEN
    due = getattr(invoice, "DueDate", None)
    customer = getattr(invoice.CustomerRef, "value", None) if invoice.CustomerRef else None
    return LedgerInvoice(
        id=LedgerInvoiceId(str(invoice.Id)),
        number=str(invoice.DocNumber) if invoice.DocNumber else None,
        reference=reference_in(invoice.PrivateNote) or "",
        customer_id=LedgerCustomerId(str(customer or "")),
        total=total,
        balance=balance,
        status=status,
        due_date=date.fromisoformat(due[:10]) if isinstance(due, str) and due else None,
        sent=getattr(invoice, "EmailStatus", None) == "EmailSent",
    )


def deleted_invoice(invoice_id: str, home_currency: str) -> LedgerInvoice:
    """A deletion seen in the change feed: QBO sends only the Id, so amounts are zero."""
    zero = Money.zero(home_currency)
    return LedgerInvoice(
        id=LedgerInvoiceId(invoice_id),
        number=None,
        reference="",
        customer_id=LedgerCustomerId(""),
        total=zero,
        balance=zero,
        status=LedgerInvoiceStatus.VOIDED,
    )


def linked_invoice_ids(payment: Payment) -> list[str]:
    ids: list[str] = []
    for line in getattr(payment, "Line", None) or []:
        for link in getattr(line, "LinkedTxn", None) or []:
            txn_type = link.get("TxnType") if isinstance(link, dict) else link.TxnType
            txn_id = link.get("TxnId") if isinstance(link, dict) else link.TxnId
            if txn_type == "Invoice" and txn_id:
                ids.append(str(txn_id))
    return ids


def linked_payment_ids(invoice: Invoice) -> list[str]:
    ids = []
    for link in getattr(invoice, "LinkedTxn", None) or []:
        txn_type = link.get("TxnType") if isinstance(link, dict) else link.TxnType
        txn_id = link.get("TxnId") if isinstance(link, dict) else link.TxnId
        if txn_type == "Payment" and txn_id:
            ids.append(str(txn_id))
    return ids


def quote(value: str) -> str:
    """A QBO query string literal (backslash escapes, as python-quickbooks' helpers do)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_list(values: Sequence[str]) -> str:
    return "(" + ", ".join(quote(v) for v in values) + ")"
