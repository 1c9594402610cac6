"""Domain values <-> python-quickbooks objects (invoices, payments and the money trail's
transfers, expenses, deposits, refund receipts and journal entries), and the reference tag in
PrivateNote that lets each be found again (QBO cannot filter on PrivateNote; lookups match it)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from quickbooks.objects.base import LinkedTxn, Ref
from quickbooks.objects.deposit import Deposit, DepositLine, DepositLineDetail
from quickbooks.objects.detailline import (
    AccountBasedExpenseLine,
    AccountBasedExpenseLineDetail,
    SalesItemLine,
    SalesItemLineDetail,
)
from quickbooks.objects.invoice import Invoice
from quickbooks.objects.journalentry import (
    Entity,
    JournalEntry,
    JournalEntryLine,
    JournalEntryLineDetail,
)
from quickbooks.objects.payment import Payment, PaymentLine
from quickbooks.objects.purchase import Purchase
from quickbooks.objects.refundreceipt import RefundReceipt
from quickbooks.objects.transfer import Transfer

from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import (
    FeeEntry,
    InvoiceDraft,
    LedgerInvoice,
    LedgerInvoiceStatus,
    PaymentPosting,
    RefundEntry,
    ReturnedPaymentEntry,
    TransferEntry,
)

TAG = "[milestone-sync]"
PAYMENT_REF_LIMIT = 21  # Payment.PaymentRefNum holds 21 characters at most
DOC_NUMBER_LIMIT = 21  # DocNumber of every transaction
MEMO_LIMIT = 3900  # PrivateNote holds 4000: the memo, then the tag line
_TAG_LINE = re.compile(re.escape(TAG) + r" (.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class QBORef:
    """A resolved name-list reference: the QBO Id (and its display name, when known)."""

    id: str
    name: str | None = None

    def sdk(self, kind: str | None = None) -> Ref:
        ref = Ref()
        ref.value = self.id
        if self.name:
            ref.name = self.name
        if kind:
            ref.type = kind  # EntityRef: Vendor or Customer
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


# --------------------------------------------------------------------------- the money trail


def entry_note(reference: str, memo: str) -> str:
    """PrivateNote of a money-trail entry: the memo an accountant reads, then the tag line."""
    text = " ".join(memo.split())[:MEMO_LIMIT]
    return note_for(reference, text or None)


def entry_doc_number(reference: str) -> str | None:
    """The reference as the DocNumber too, where it fits (a Stripe id of 27 does not)."""
    return reference if len(reference) <= DOC_NUMBER_LIMIT else None


def build_transfer(
    entry: TransferEntry, source: QBORef, target: QBORef, currency: str | None
) -> Transfer:
    """A payout (clearing -> bank), negative payout (bank -> clearing), or a dispute's hold
    (clearing -> disputes) and release: one Transfer, so the bank feed's line matches it."""
    transfer = Transfer()
    transfer.FromAccountRef = source.sdk()
    transfer.ToAccountRef = target.sdk()
    transfer.Amount = entry.amount.amount
    transfer.TxnDate = qbo_date(entry.on)
    transfer.PrivateNote = entry_note(entry.reference, entry.memo)
    if currency is not None:
        transfer.CurrencyRef = QBORef(currency).sdk()
    return transfer


def build_fee_expense(
    entry: FeeEntry,
    paid_from: QBORef,
    fee_account: QBORef,
    vendor: QBORef | None,
    currency: str | None,
) -> Purchase:
    """A fee the gateway kept: an expense (Purchase, PaymentType Cash) paid from the clearing
    account, one line to the fee account, payee the configured vendor (if any)."""
    purchase = Purchase()
    purchase.PaymentType = "Cash"
    purchase.AccountRef = paid_from.sdk()
    if vendor is not None:
        purchase.EntityRef = vendor.sdk("Vendor")
    line = AccountBasedExpenseLine()
    line.Amount = entry.amount.amount
    line.Description = entry.memo
    detail = AccountBasedExpenseLineDetail()
    detail.AccountRef = fee_account.sdk()
    line.AccountBasedExpenseLineDetail = detail
    purchase.Line.append(line)
    purchase.TotalAmt = entry.amount.amount
    purchase.TxnDate = qbo_date(entry.on)
    purchase.PrivateNote = entry_note(entry.reference, entry.memo)
    purchase.DocNumber = entry_doc_number(entry.reference) or ""
    if currency is not None:
        purchase.CurrencyRef = QBORef(currency).sdk()
    return purchase


def build_fee_credit(
    entry: FeeEntry,
    into: QBORef,
    fee_account: QBORef,
    vendor: QBORef | None,
    currency: str | None,
) -> Deposit:
    """A fee given back (amount < 0): a Deposit into the clearing account whose line comes from
    the fee account, so the expense shrinks by what was returned."""
    amount = -entry.amount.amount
    deposit = Deposit()
    deposit.DepositToAccountRef = into.sdk()
    line = DepositLine()
    line.Amount = amount
    line.Description = entry.memo
    detail = DepositLineDetail()
    detail.AccountRef = fee_account.sdk()
    if vendor is not None:
        detail.Entity = vendor.sdk("Vendor")
    line.DepositLineDetail = detail
    deposit.Line.append(line)
    deposit.TotalAmt = amount
    deposit.TxnDate = qbo_date(entry.on)
    deposit.PrivateNote = entry_note(entry.reference, entry.memo)
    deposit.DocNumber = entry_doc_number(entry.reference) or ""
    if currency is not None:
        deposit.CurrencyRef = QBORef(currency).sdk()
    return deposit


@dataclass(frozen=True)
class RefundRefs:
    """What a refund receipt names: the account it is paid from and the invoice's item and tax
    code, so the refund reverses the same revenue line."""

    paid_from: QBORef
    item: QBORef | None
    tax_code: QBORef | None
    class_ref: QBORef | None = None
    department: QBORef | None = None
    currency: str | None = None
    invoice_number: str | None = None


def build_refund_receipt(entry: RefundEntry, refs: RefundRefs) -> RefundReceipt:
    """Money back to the client for (part of) an invoice: a RefundReceipt paid from the clearing
    account (a refund) or the disputes account (a dispute lost)."""
    receipt = RefundReceipt()
    receipt.CustomerRef = QBORef(entry.customer_id).sdk()
    receipt.DepositToAccountRef = refs.paid_from.sdk()
    line = SalesItemLine()
    line.Amount = entry.amount.amount
    invoice = refs.invoice_number or entry.invoice_id
    line.Description = f"{entry.memo} (invoice {invoice})" if entry.memo else f"Invoice {invoice}"
    detail = SalesItemLineDetail()
    detail.Qty = 1
    detail.UnitPrice = entry.amount.amount
    if refs.item is not None:
        detail.ItemRef = refs.item.sdk()
    if refs.tax_code is not None:
        detail.TaxCodeRef = refs.tax_code.sdk()
    if refs.class_ref is not None:
        detail.ClassRef = refs.class_ref.sdk()
    line.SalesItemLineDetail = detail
    receipt.Line.append(line)
    receipt.TotalAmt = entry.amount.amount
    receipt.TxnDate = qbo_date(entry.on)
    receipt.PrivateNote = entry_note(entry.reference, entry.memo)
    receipt.DocNumber = entry_doc_number(entry.reference) or ""
    if refs.department is not None:
        receipt.DepartmentRef = refs.department.sdk()
    if refs.currency is not None:
        receipt.CurrencyRef = QBORef(refs.currency).sdk()
    return receipt


def build_returned_payment(
    entry: ReturnedPaymentEntry,
    receivable: QBORef,
    clearing: QBORef,
    currency: str | None,
    invoice_number: str | None = None,
) -> JournalEntry:
    """A bank debit returned after its payment was booked: a JournalEntry debiting Accounts
    Receivable for the customer and crediting the clearing account. The paid invoice and its
    payment stay as they were; the customer's open balance shows the amount again."""
    journal = JournalEntry()
    invoice = invoice_number or entry.invoice_id
    text = f"{entry.memo} (invoice {invoice})" if entry.memo else f"Returned payment, {invoice}"
    for posting, account, customer in (
        ("Debit", receivable, entry.customer_id),
        ("Credit", clearing, None),
    ):
        line = JournalEntryLine()
        line.Amount = entry.amount.amount
        line.Description = text
        detail = JournalEntryLineDetail()
        detail.PostingType = posting
        detail.AccountRef = account.sdk()
        if customer is not None:
            who = Entity()
            who.Type = "Customer"
            who.EntityRef = QBORef(customer).sdk()
            detail.Entity = who
        line.JournalEntryLineDetail = detail
        journal.Line.append(line)
    journal.TxnDate = qbo_date(entry.on)
    journal.PrivateNote = entry_note(entry.reference, entry.memo)
    journal.DocNumber = entry_doc_number(entry.reference) or ""
    if currency is not None:
        journal.CurrencyRef = QBORef(currency).sdk()
    return journal


def entry_amount(obj: Any) -> Decimal:
    """What a money-trail object moved: a Transfer's Amount, the others' TotalAmt."""
    if isinstance(obj, Transfer):
        return decimal_of(obj.Amount)
    return decimal_of(getattr(obj, "TotalAmt", None))


def ref_value(ref: Any) -> str | None:
    """The Id a reference holds, whether the SDK parsed it as a Ref or left a dict."""
    if ref is None:
        return None
    value = ref.get("value") if isinstance(ref, dict) else getattr(ref, "value", None)
    return str(value) if value not in (None, "") else None


def first_sales_line(invoice: Invoice) -> Any | None:
    for line in getattr(invoice, "Line", None) or []:
        if getattr(line, "DetailType", None) == "SalesItemLineDetail":
            return getattr(line, "SalesItemLineDetail", None)
    return None


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
