"""The `Ledger` port over Xero: sales invoices (one at a time or 50 per request), lookups by
reference or number, emailing, payments into a clearing account, the money trail (bank
transfers, spend/receive money, credit notes with cash refunds, returned payments as new
receivables; see docs/xero-money-trail.md), account balances from the Trial Balance, the
If-Modified-Since change feed, a pre-flight check of what the organisation has, and the daily
call budget."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from xero_python.accounting import (
    BankTransactions,
    BankTransfers,
    Contact,
    Contacts,
    CreditNotes,
    Invoices,
    RequestEmpty,
)

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.oauth.tokens import AccessTokens
from adapters.xero.client import XeroClient
from adapters.xero.errors import CUSTOMER_FIX, rejection
from adapters.xero.translate import (
    LINE_AMOUNT_TYPES,
    ItemInfo,
    Terms,
    bank_transaction_model,
    bank_transfer_model,
    credit_note_model,
    due_from_terms,
    enum_value,
    invoice_model,
    is_guid,
    ledger_invoice,
    ledger_payment,
    line_template,
    payment_model,
    receivable_model,
    refund_payment_model,
    terms_of,
    trial_balance_amount,
    where_literal,
)
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
)
from connector.domain.ids import IdempotencyKey, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import Money, is_known_currency
from connector.idempotency import KeyLimit, fit
from connector.planning import due_date_for
from connector.ports import (
    AccountRole,
    BatchItem,
    FeeEntry,
    InvoiceDraft,
    LedgerChanges,
    LedgerEntry,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerNeeds,
    LedgerPayment,
    LedgerProblem,
    NeedKind,
    PaymentPosting,
    RefundEntry,
    ReturnedPaymentEntry,
    TransferEntry,
)

T = TypeVar("T")

BATCH_LIMIT = 50  # elements per POST/PUT Xero recommends [REF B4]
DAY_LIMIT = 5000
PAGE_SIZE = 100
REFERENCES_PER_QUERY = 10  # keeps a `where` of OR'ed references well inside URL limits
NUMBERS_PER_QUERY = 25
CHANGES_OVERLAP = timedelta(minutes=2)
CACHE_TTL = timedelta(minutes=5)
MISS_REFRESH = timedelta(seconds=30)  # an unknown item re-reads the items at most this often
BATCH_FROM = 10  # the core's default backlog threshold (InvoicingConfig.batch_from)
SALES_ACCOUNT_TYPES = frozenset({"REVENUE", "SALES", "OTHERINCOME"})
EXPENSE_ACCOUNT_TYPES = frozenset({"EXPENSE", "OVERHEADS", "DIRECTCOSTS"})
# where money may be held while a dispute is open (or a returned payment is sorted out): a bank
# account, or a current asset (with payments enabled, a lost dispute is refunded from it)
HOLDING_ACCOUNT_TYPES = frozenset({"BANK", "CURRENT", "PREPAYMENT"})
ROLE_OPTIONS: dict[AccountRole, str] = {
    AccountRole.CLEARING: "clearing_account",
    AccountRole.BANK: "bank_account",
    AccountRole.FEES: "fee_account",
    AccountRole.DISPUTES: "disputes_account",
}
ROLE_NEEDS: dict[AccountRole, str] = {
    AccountRole.CLEARING: "the bank account named after the gateway (e.g. 'Stripe')",
    AccountRole.BANK: "the bank account payouts land in",
    AccountRole.FEES: "an expense account for the gateway's fees",
    AccountRole.DISPUTES: "a current asset account holding disputed money",
}


@dataclass(frozen=True)
class XeroOptions:
    currency: str  # the firm's billing currency
    tenant_id: str | None = None  # else the token's realm
    sales_account: str | None = None  # AccountCode on lines whose item has none
    clearing_account: str | None = None  # Account code payments are booked into
    # the money trail (docs/xero-money-trail.md): account codes, checked by check()
    bank_account: str | None = None  # BANK account payouts land in
    fee_account: str | None = None  # EXPENSE account for the gateway's fees
    disputes_account: str | None = None  # money held by open disputes (CURRENT asset or BANK)
    returns_account: str | None = None  # holding account for returned payments; else disputes
    fee_tax_type: str = "NONE"  # TaxType on fee lines (LineAmountTypes NoTax)
    gateway_contact: str = "Stripe"  # the contact on spend/receive money; found or created
    line_amount_types: str = "Exclusive"  # Exclusive | Inclusive | NoTax
    tracking: tuple[tuple[str, str], ...] = ()  # (category name, option name) on every line
    timeout: tuple[int, int] = (5, 60)  # integers: xero-python ignores floats
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if not is_known_currency(self.currency):
            raise ValueError(f"currency {self.currency!r} is not an ISO 4217 code")
        if self.line_amount_types not in LINE_AMOUNT_TYPES:
            raise ValueError(f"line_amount_types must be one of {sorted(LINE_AMOUNT_TYPES)}")
        if len(self.timeout) != 2 or not all(
            isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in self.timeout
        ):
            raise ValueError("timeout must be two positive integers (connect, read) in seconds")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if len(self.tracking) > 2:
            raise ValueError("Xero allows at most two tracking categories on a line")
        if not self.gateway_contact.strip():
            raise ValueError("gateway_contact must name a Xero contact")


@dataclass
class _Cached:
    value: Any
    at: datetime


class XeroLedger:
    """One Xero organisation as the firm's ledger."""

    name = "xero"
    batch_limit = BATCH_LIMIT
    supports_drafts = True  # DRAFT, approved in Xero (AUTHORISED)

    def __init__(
        self,
        tokens: AccessTokens,
        options: XeroOptions,
        *,
        api_url: str | None = None,
        identity_url: str | None = None,
        time: EmulatedTime = REAL_TIME,
    ) -> None:
        self.options = options
        self.time = time
        self.client = XeroClient(
            tokens,
            tenant_id=options.tenant_id,
            api_url=api_url,
            identity_url=identity_url,
            timeout=options.timeout,
            max_attempts=options.max_attempts,
            time=time,
        )
        self._api = self.client.accounting
        self._cache: dict[str, _Cached] = {}
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ invoices

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        self._contacts_terms([draft])
        invoice = self._invoice(draft)
        what = f"invoice {draft.reference}"
        result = self.client.call(
            f"create {what}",
            self._api.create_invoices,
            self.client.tenant,
            Invoices(invoices=[invoice]),
            summarize_errors=False,
            idempotency_key=fit(key, KeyLimit.XERO),
            write=True,
        )
        return self._outcome(self._elements(result, 1)[0], what)

    def create_invoices(
        self, items: Sequence[BatchItem]
    ) -> Sequence[LedgerInvoice | RejectedError]:
        if len(items) > self.batch_limit:
            raise InvariantViolation(f"a Xero batch carries at most {self.batch_limit} invoices")
        results: list[LedgerInvoice | RejectedError | None] = [None] * len(items)
        self._contacts_terms([item.draft for item in items])
        sent: list[tuple[int, Any]] = []
        for index, item in enumerate(items):
            try:
                sent.append((index, self._invoice(item.draft)))
            except RejectedError as exc:
                results[index] = exc
        if sent:
            # one key for the whole request, derived from its invoices' own keys: a replay of
            # the same batch is answered from Xero's idempotency store
            digest = hashlib.sha256("\n".join(i.key for i in items).encode()).hexdigest()
            try:
                result = self.client.call(
                    f"create {len(sent)} invoices",
                    self._api.create_invoices,
                    self.client.tenant,
                    Invoices(invoices=[invoice for _, invoice in sent]),
                    summarize_errors=False,
                    idempotency_key=fit(f"batch:{digest}", KeyLimit.XERO),
                    write=True,
                )
            except RejectedError as refused:  # the request as a whole: every invoice in it
                for index, _ in sent:
                    results[index] = refused
                return [r for r in results if r is not None]
            for (index, _), element in zip(sent, self._elements(result, len(sent)), strict=True):
                what = f"invoice {items[index].draft.reference}"
                try:
                    results[index] = self._outcome(element, what)
                except RejectedError as exc:
                    results[index] = exc
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    @staticmethod
    def _elements(result: Any, expected: int) -> list[Any]:
        elements = list(getattr(result, "invoices", None) or [])
        if len(elements) != expected:
            raise InvariantViolation(
                f"Xero answered {len(elements)} invoices for a request of {expected}"
            )
        return elements

    @staticmethod
    def _outcome(element: Any, what: str) -> LedgerInvoice:
        if element.has_errors or element.validation_errors:
            raise rejection([e.message for e in element.validation_errors or [] if e.message], what)
        return ledger_invoice(element)

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        return self.find_invoices([draft]).get(draft.reference)

    def find_invoices(self, drafts: Sequence[InvoiceDraft]) -> Mapping[str, LedgerInvoice]:
        found: dict[str, LedgerInvoice] = {}
        wanted = {d.reference for d in drafts}
        numbered = sorted({d.doc_number for d in drafts if d.doc_number})
        for chunk in _chunks(numbered, NUMBERS_PER_QUERY):
            for invoice in self._list_invoices(
                f"look up invoices {', '.join(chunk)}", invoice_numbers=chunk
            ):
                self._keep(found, invoice, wanted)
        rest = sorted({d.reference for d in drafts if d.reference not in found})
        for chunk in _chunks(rest, REFERENCES_PER_QUERY):
            where = " OR ".join(f"Reference=={where_literal(r)}" for r in chunk)
            for invoice in self._list_invoices(
                f"look up invoices by reference ({len(chunk)})",
                where=f'Type=="ACCREC" AND ({where})',
            ):
                self._keep(found, invoice, wanted)
        return found

    @staticmethod
    def _keep(found: dict[str, LedgerInvoice], invoice: LedgerInvoice, wanted: set[str]) -> None:
        """Exact match only (Xero compares strings without case); a live invoice wins over a
        voided or deleted one with the same reference."""
        if invoice.reference not in wanted:
            return
        current = found.get(invoice.reference)
        if current is None or (
            current.status is LedgerInvoiceStatus.VOIDED
            and invoice.status is not LedgerInvoiceStatus.VOIDED
        ):
            found[invoice.reference] = invoice

    def _list_invoices(self, what: str, **query: Any) -> list[LedgerInvoice]:
        invoices: list[LedgerInvoice] = []
        page = 1
        while True:
            result = self.client.call(
                what,
                self._api.get_invoices,
                self.client.tenant,
                page=page,
                page_size=PAGE_SIZE,
                **query,
            )
            rows = list(result.invoices or [])
            invoices += [ledger_invoice(i) for i in rows if enum_value(i.type) == "ACCREC"]
            if len(rows) < PAGE_SIZE:
                return invoices
            page += 1

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        if not is_guid(invoice_id):
            raise RejectedError(
                f"invoice {invoice_id} is not a Xero InvoiceID (a GUID)", code="not_found"
            )
        result = self.client.call(
            f"read invoice {invoice_id}", self._api.get_invoice, self.client.tenant, invoice_id
        )
        return ledger_invoice(self._elements(result, 1)[0])

    def send_invoice(self, invoice_id: LedgerInvoiceId, key: IdempotencyKey) -> LedgerInvoice:
        invoice = self.get_invoice(invoice_id)
        if invoice.status is LedgerInvoiceStatus.DRAFT:
            raise RejectedError(
                f"invoice {invoice.number or invoice_id} is a draft awaiting approval in Xero: "
                "approve it in Xero, then it can be emailed",
                code="not_approved",
            )
        if invoice.status is LedgerInvoiceStatus.VOIDED:
            raise RejectedError(
                f"invoice {invoice.number or invoice_id} is voided in Xero", code="voided"
            )
        self.client.call(
            f"email invoice {invoice.number or invoice_id}",
            self._api.email_invoice,
            self.client.tenant,
            invoice_id,
            RequestEmpty(),
            idempotency_key=fit(key, KeyLimit.XERO),
            write=True,
        )
        return replace(invoice, sent=True)

    # ------------------------------------------------------------------ building an invoice

    def _invoice(self, draft: InvoiceDraft) -> Any:
        """The xero-python invoice for a draft, or RejectedError for what Xero cannot take."""
        what = f"invoice {draft.reference}"
        if not is_guid(draft.customer_id):
            raise RejectedError(
                f"{what}: customer {draft.customer_id} is not a Xero ContactID (a GUID): "
                'set [clients."KEY"] ledger_customer_id to the contact\'s ContactID',
                code="contact_missing",
            )
        currencies = {line.amount.currency for line in draft.lines}
        if len(currencies) != 1:
            raise RejectedError(f"{what} mixes currencies {sorted(currencies)}", code="currency")
        items = [self._item(line.item, what) if line.item else None for line in draft.lines]
        due = draft.due_date or self._due_from_terms(draft)
        if due is None and not draft.draft:
            raise RejectedError(
                f"{what}: Xero needs a due date and none can be worked out: give the milestone "
                "terms such as 'Net 30', or set payment terms on the contact or the "
                "organisation in Xero",
                code="due_date",
            )
        return invoice_model(
            draft,
            items=items,
            sales_account=self.options.sales_account,
            line_amount_types=self.options.line_amount_types,
            tracking=self.options.tracking,
            due_date=due,
        )

    def _item(self, wanted: str, what: str) -> ItemInfo:
        for fresh in (False, True):
            if fresh and not self._older_than("items", MISS_REFRESH):
                break  # just read: the item really is missing
            items = self._items(fresh=fresh)
            found = items.get(wanted) or next((i for i in items.values() if i.name == wanted), None)
            if found is not None:
                if not found.is_sold:
                    raise RejectedError(
                        f"{what + ': ' if what else ''}item {wanted} is not sold in Xero: tick "
                        "'I sell this item' on it in Xero, or choose another item",
                        code="item",
                    )
                return found
        raise RejectedError(
            f"{what + ': ' if what else ''}item {wanted} does not exist in Xero (or was "
            "archived): set the milestone's item to an existing Xero item code or exact name",
            code="item",
        )

    def _due_from_terms(self, draft: InvoiceDraft) -> date | None:
        by_name = due_date_for(draft.terms, draft.issue_date) if draft.terms else None
        if by_name is not None:
            return by_name
        terms = self._cached_terms().get(draft.customer_id.casefold())
        if terms is None:
            terms = terms_of(self._organisation().payment_terms)
        return due_from_terms(draft.issue_date, terms) if terms is not None else None

    def _contacts_terms(self, drafts: Iterable[InvoiceDraft]) -> None:
        """Read, in one call, the payment terms of the contacts whose drafts lack a due date."""
        missing = sorted(
            {
                d.customer_id.casefold()
                for d in drafts
                if d.due_date is None
                and is_guid(d.customer_id)
                and not (d.terms and due_date_for(d.terms, d.issue_date))
            }
            - set(self._cached_terms())
        )
        if missing:
            contacts = self._contacts(missing)
            with self._cache_lock:
                known = dict(self._cached_value("terms") or {})
                for contact_id in missing:
                    contact = contacts.get(contact_id)
                    known[contact_id] = terms_of(contact.payment_terms) if contact else None
                self._cache["terms"] = _Cached(known, self.time.now())

    def _cached_terms(self) -> dict[str, Terms | None]:
        with self._cache_lock:
            return dict(self._cached_value("terms") or {})

    # ------------------------------------------------------------------ payments

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId:
        account = self.options.clearing_account
        if not account:
            raise ConfigError(
                "no Xero account to book payments into: set the xero clearing_account option "
                "to the code of a bank account (or an account with payments enabled)"
            )
        if not is_guid(posting.invoice_id):
            raise RejectedError(f"invoice {posting.invoice_id} is not a Xero InvoiceID")
        result = self.client.call(
            f"record payment {posting.reference}",
            self._api.create_payment,
            self.client.tenant,
            payment_model(posting, account),
            idempotency_key=fit(key, KeyLimit.XERO),
            write=True,
        )
        payments = list(result.payments or [])
        if len(payments) != 1:
            raise InvariantViolation(f"Xero answered {len(payments)} payments for one")
        payment = payments[0]
        if payment.validation_errors:
            raise rejection(
                [e.message for e in payment.validation_errors if e.message],
                f"payment {posting.reference}",
            )
        return LedgerPaymentId(str(payment.payment_id))

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        page = 1
        while True:
            result = self.client.call(
                f"look up payment {posting.reference}",
                self._api.get_payments,
                self.client.tenant,
                where=f"Reference=={where_literal(posting.reference)}",
                page=page,
                page_size=PAGE_SIZE,
            )
            rows = list(result.payments or [])
            for payment in rows:
                invoice = payment.invoice
                if (
                    payment.reference == posting.reference
                    and enum_value(payment.status) != "DELETED"
                    and invoice is not None
                    and str(invoice.invoice_id).casefold() == posting.invoice_id.casefold()
                ):
                    return LedgerPaymentId(str(payment.payment_id))
            if len(rows) < PAGE_SIZE:
                return None
            page += 1

    # ------------------------------------------------------------------ the money trail

    def post_entry(self, entry: LedgerEntry, key: IdempotencyKey) -> str:
        """Book one money-trail entry (docs/xero-money-trail.md has the mapping). Entries of
        two or three documents look their earlier documents up first (by Reference), so a
        retry after a failure part-way finishes the entry instead of doubling it."""
        self._entry_currency(entry)
        if isinstance(entry, TransferEntry):
            return self._post_transfer(entry, key)
        if isinstance(entry, FeeEntry):
            return self._post_fee(entry, key)
        if isinstance(entry, RefundEntry):
            return self._post_refund(entry, key)
        if isinstance(entry, ReturnedPaymentEntry):
            return self._post_returned(entry, key)
        raise InvariantViolation(f"unknown ledger entry {type(entry).__name__}")

    def find_entry(self, entry: LedgerEntry) -> str | None:
        if isinstance(entry, TransferEntry):
            plan = self._transfer_plan(entry)
            if plan[0] == "transfer":
                return self._find_transfer(entry.reference, entry.amount, entry.on)
            kind, bank, _ = plan
            return self._find_bank_transaction(kind, bank, entry.reference, entry.amount, entry.on)
        if isinstance(entry, FeeEntry):
            kind = "SPEND" if entry.amount.amount > 0 else "RECEIVE"
            clearing = self._bank_role(AccountRole.CLEARING, "book gateway fees")
            return self._find_bank_transaction(
                kind, clearing, entry.reference, entry.amount.abs(), entry.on
            )
        if isinstance(entry, RefundEntry):
            note = self._find_credit_note(entry)
            # a credit note not yet fully refunded is an unfinished entry: post_entry finishes it
            if note is None or _decimal(note.remaining_credit) > 0:
                return None
            return str(note.credit_note_id)
        if isinstance(entry, ReturnedPaymentEntry):
            invoice = self._find_receivable(entry)
            clearing = self._bank_role(AccountRole.CLEARING, "book returned payments")
            spent = self._find_bank_transaction(
                "SPEND", clearing, entry.reference, entry.amount, entry.on
            )
            return str(invoice.invoice_id) if invoice is not None and spent else None
        raise InvariantViolation(f"unknown ledger entry {type(entry).__name__}")

    def account_balance(self, role: AccountRole) -> Money:
        """The account's year-to-date balance in Xero's Trial Balance as at today: YTD Debit
        minus YTD Credit, so money in the clearing, bank or disputes account is positive and
        fees are positive (an expense, counted from the financial year's start)."""
        code = self._account_code(role, "read its balance")
        account = self._account_info(code)
        today = self.time.now().date()
        result = self.client.call(
            f"read the Trial Balance for account {code}",
            self._api.get_report_trial_balance,
            self.client.tenant,
            date=today,
        )
        reports = list(result.reports or [])
        if not reports:
            raise InvariantViolation("Xero answered no Trial Balance report")
        amount = trial_balance_amount(reports[0], account.get("id") if account else None, code)
        return Money.rounded(amount or Decimal("0"), self.options.currency)

    def payments_since(self, since: date) -> Sequence[LedgerPayment]:
        where = (
            f"Date>=DateTime({since.year}, {since.month:02d}, {since.day:02d})"
            ' AND PaymentType=="ACCRECPAYMENT" AND Status=="AUTHORISED"'
        )
        found: list[LedgerPayment] = []
        page = 1
        while True:
            result = self.client.call(
                f"read payments since {since.isoformat()}",
                self._api.get_payments,
                self.client.tenant,
                where=where,
                order="Date",
                page=page,
                page_size=PAGE_SIZE,
            )
            rows = list(result.payments or [])
            found += [
                ledger_payment(
                    p,
                    clearing_account=self.options.clearing_account,
                    currency=self.options.currency,
                )
                for p in rows
            ]
            if len(rows) < PAGE_SIZE:
                return found
            page += 1

    # -- transfers and fees

    def _transfer_plan(self, entry: TransferEntry) -> tuple[str, str, str]:
        """("transfer", from, to) between two bank accounts; else (SPEND|RECEIVE, the bank
        account, the other account): money out of or into the bank side, one line to the
        other side (Xero moves money between bank accounts only with a bank transfer, and
        never puts a bank account on a line)."""
        what = f"book {entry.from_account} -> {entry.to_account} transfer {entry.reference}"
        source = self._account_code(entry.from_account, what)
        target = self._account_code(entry.to_account, what)
        if source == target:
            raise ConfigError(
                f"the xero {ROLE_OPTIONS[entry.from_account]} and "
                f"{ROLE_OPTIONS[entry.to_account]} options name the same account {source}: "
                "give each its own account"
            )
        source_bank = self._is_bank(source)
        target_bank = self._is_bank(target)
        if source_bank and target_bank:
            return "transfer", source, target
        if source_bank:
            return "SPEND", source, target
        if target_bank:
            return "RECEIVE", target, source
        raise ConfigError(
            f"neither account of the {entry.from_account} -> {entry.to_account} transfer is a "
            f"bank account in Xero ({source}, {target}): set the xero clearing_account option to "
            "the code of the gateway's bank account (e.g. 'Stripe')"
        )

    def _post_transfer(self, entry: TransferEntry, key: IdempotencyKey) -> str:
        if entry.amount.amount <= 0:
            raise InvariantViolation(f"transfer {entry.reference} must move a positive amount")
        plan = self._transfer_plan(entry)
        what = f"transfer {entry.reference}"
        if plan[0] == "transfer":
            _, source, target = plan
            result = self._write(
                what,
                self._api.create_bank_transfer,
                BankTransfers(
                    bank_transfers=[
                        bank_transfer_model(source, target, entry.amount, entry.on, entry.reference)
                    ]
                ),
                key=fit(key, KeyLimit.XERO),
            )
            return str(self._one(result.bank_transfers, what).bank_transfer_id)
        kind, bank, other = plan
        return self._bank_transaction(
            kind,
            bank=bank,
            line_account=other,
            contact_id=self._gateway_contact_id(),
            amount=entry.amount,
            on=entry.on,
            reference=entry.reference,
            description=entry.memo,
            tax_type=None,
            key=fit(key, KeyLimit.XERO),
        )

    def _post_fee(self, entry: FeeEntry, key: IdempotencyKey) -> str:
        if entry.amount.is_zero():
            raise InvariantViolation(f"fee {entry.reference} has no amount")
        clearing = self._bank_role(AccountRole.CLEARING, "book gateway fees")
        fees = self._account_code(AccountRole.FEES, f"book fee {entry.reference}")
        return self._bank_transaction(
            "SPEND" if entry.amount.amount > 0 else "RECEIVE",
            bank=clearing,
            line_account=fees,
            contact_id=self._gateway_contact_id(),
            amount=entry.amount.abs(),
            on=entry.on,
            reference=entry.reference,
            description=entry.memo,
            tax_type=self.options.fee_tax_type,
            key=fit(key, KeyLimit.XERO),
        )

    def _bank_transaction(
        self,
        kind: str,
        *,
        bank: str,
        line_account: str,
        contact_id: str,
        amount: Money,
        on: date,
        reference: str,
        description: str,
        tax_type: str | None,
        key: str,
    ) -> str:
        what = f"{'spend' if kind == 'SPEND' else 'receive'} money {reference}"
        model = bank_transaction_model(
            kind,
            bank_code=bank,
            contact_id=contact_id,
            line_account=line_account,
            amount=amount,
            on=on,
            reference=reference,
            description=description or reference,
            tax_type=tax_type,
        )
        result = self._write(
            what,
            self._api.create_bank_transactions,
            BankTransactions(bank_transactions=[model]),
            key=key,
            summarize_errors=False,
        )
        element = self._one(result.bank_transactions, what)
        self._refused(element, what)
        return str(element.bank_transaction_id)

    # -- refunds

    def _post_refund(self, entry: RefundEntry, key: IdempotencyKey) -> str:
        """A credit note like the invoice's line for the amount, then a cash refund of it from
        the entry's account; when that account takes no payments (a disputes holding account
        without 'Enable payments'), the money first comes back into clearing from it with a
        receive money, and the refund is paid from clearing."""
        if entry.amount.amount <= 0:
            raise InvariantViolation(f"refund {entry.reference} must be a positive amount")
        if not is_guid(entry.invoice_id) or not is_guid(entry.customer_id):
            raise RejectedError(
                f"refund {entry.reference}: invoice {entry.invoice_id} or customer "
                f"{entry.customer_id} is not a Xero id (a GUID)",
                code="not_found",
            )
        what = f"refund {entry.reference}"
        source = self._account_code(entry.from_account, what)
        pays = self._takes_payments(source)
        clearing = None
        if not pays:
            clearing = self._bank_role(AccountRole.CLEARING, "pay refunds")
        note = self._find_credit_note(entry)
        if note is None:
            invoice = self._elements(
                self.client.call(
                    f"read invoice {entry.invoice_id} to refund it",
                    self._api.get_invoice,
                    self.client.tenant,
                    entry.invoice_id,
                ),
                1,
            )[0]
            model = credit_note_model(
                customer_id=entry.customer_id,
                template=line_template(invoice),
                amount=entry.amount,
                on=entry.on,
                reference=entry.reference,
                description=entry.memo or f"Refund {entry.reference}",
            )
            result = self._write(
                f"credit note for {what}",
                self._api.create_credit_notes,
                CreditNotes(credit_notes=[model]),
                key=fit(key, KeyLimit.XERO),
                summarize_errors=False,
            )
            note = self._one(result.credit_notes, what)
            self._refused(note, f"credit note for {what}")
        note_id = str(note.credit_note_id)
        remaining = Money.rounded(_decimal(note.remaining_credit), entry.amount.currency)
        if remaining.amount <= 0:
            return note_id
        paid_from = source
        if clearing is not None:
            if not self._find_bank_transaction(
                "RECEIVE", clearing, entry.reference, remaining, entry.on
            ):
                self._bank_transaction(
                    "RECEIVE",
                    bank=clearing,
                    line_account=source,
                    contact_id=self._gateway_contact_id(),
                    amount=remaining,
                    on=entry.on,
                    reference=entry.reference,
                    description=entry.memo or f"Released for refund {entry.reference}",
                    tax_type=None,
                    key=fit(f"{key}:release", KeyLimit.XERO),
                )
            paid_from = clearing
        result = self._write(
            f"cash refund {entry.reference}",
            self._api.create_payment,
            refund_payment_model(note_id, paid_from, remaining, entry.on, entry.reference),
            key=fit(f"{key}:refund", KeyLimit.XERO),
        )
        self._refused(self._one(result.payments, what), f"cash refund {entry.reference}")
        return note_id

    def _find_credit_note(self, entry: RefundEntry) -> Any:
        where = (
            f'Type=="ACCRECCREDIT" AND Reference=={where_literal(entry.reference)}'
            f' AND Contact.ContactID==Guid("{entry.customer_id}")'
            if is_guid(entry.customer_id)
            else f'Type=="ACCRECCREDIT" AND Reference=={where_literal(entry.reference)}'
        )
        result = self.client.call(
            f"look up the credit note of refund {entry.reference}",
            self._api.get_credit_notes,
            self.client.tenant,
            where=where,
            page=1,
            page_size=PAGE_SIZE,
        )
        notes = [
            n
            for n in result.credit_notes or []
            if n.reference == entry.reference and enum_value(n.status) in ("AUTHORISED", "PAID")
        ]
        return _closest(notes, entry.amount.amount, entry.on, lambda n: (n.total, n.date))

    # -- returned payments

    def _post_returned(self, entry: ReturnedPaymentEntry, key: IdempotencyKey) -> str:
        """The customer owes the amount again on a new invoice coded to the holding account,
        and a spend money takes it out of clearing into the same holding account: clearing
        down, receivables up, the holding account back to zero, the original payment
        untouched (docs/xero-money-trail.md)."""
        if entry.amount.amount <= 0:
            raise InvariantViolation(f"returned payment {entry.reference} must be positive")
        if not is_guid(entry.customer_id):
            raise RejectedError(
                f"returned payment {entry.reference}: customer {entry.customer_id} is not a "
                f"Xero ContactID: {CUSTOMER_FIX}",
                code="contact_missing",
            )
        what = f"returned payment {entry.reference}"
        clearing = self._bank_role(AccountRole.CLEARING, "book returned payments")
        holding = self._holding_account(what)
        invoice = self._find_receivable(entry)
        if invoice is None:
            result = self._write(
                f"new receivable for {what}",
                self._api.create_invoices,
                Invoices(
                    invoices=[
                        receivable_model(
                            customer_id=entry.customer_id,
                            holding_account=holding,
                            amount=entry.amount,
                            on=entry.on,
                            reference=entry.reference,
                            description=entry.memo or f"Returned payment {entry.reference}",
                        )
                    ]
                ),
                key=fit(key, KeyLimit.XERO),
                summarize_errors=False,
            )
            invoice = self._elements(result, 1)[0]
            self._outcome(invoice, f"new receivable for {what}")
        if not self._find_bank_transaction(
            "SPEND", clearing, entry.reference, entry.amount, entry.on
        ):
            self._bank_transaction(
                "SPEND",
                bank=clearing,
                line_account=holding,
                contact_id=entry.customer_id,
                amount=entry.amount,
                on=entry.on,
                reference=entry.reference,
                description=entry.memo or f"Returned payment {entry.reference}",
                tax_type=None,
                key=fit(f"{key}:return", KeyLimit.XERO),
            )
        return str(invoice.invoice_id)

    def _holding_account(self, what: str) -> str:
        code = self.options.returns_account or self.options.disputes_account
        if not code:
            raise ConfigError(
                f"no Xero account to {what} through: set the xero returns_account option (or "
                "disputes_account) to the code of a current asset account such as "
                "'Dishonoured payments'"
            )
        if self._is_bank(code):
            option = "returns_account" if self.options.returns_account else "disputes_account"
            raise ConfigError(
                f"the xero {option} {code} is a bank account: returned payments need a non-bank "
                "holding account (a current asset) that both an invoice line and a spend money "
                "line can use; set returns_account to one"
            )
        return code

    def _find_receivable(self, entry: ReturnedPaymentEntry) -> Any:
        where = f'Type=="ACCREC" AND Reference=={where_literal(entry.reference)}'
        result = self.client.call(
            f"look up the receivable of returned payment {entry.reference}",
            self._api.get_invoices,
            self.client.tenant,
            where=where,
            page=1,
            page_size=PAGE_SIZE,
        )
        invoices = [
            i
            for i in result.invoices or []
            if i.reference == entry.reference
            and enum_value(i.status) not in ("VOIDED", "DELETED")
            and str(i.contact.contact_id).casefold() == entry.customer_id.casefold()
        ]
        return _closest(invoices, entry.amount.amount, entry.on, lambda i: (i.total, i.date))

    # -- lookups

    def _find_transfer(self, reference: str, amount: Money, on: date) -> str | None:
        result = self.client.call(
            f"look up bank transfer {reference}",
            self._api.get_bank_transfers,
            self.client.tenant,
            where=f"Reference=={where_literal(reference)}",
        )
        transfers = [
            t
            for t in result.bank_transfers or []
            if t.reference == reference and enum_value(t.status) != "DELETED"
        ]
        found = _closest(transfers, amount.amount, on, lambda t: (t.amount, t.date))
        return str(found.bank_transfer_id) if found is not None else None

    def _find_bank_transaction(
        self, kind: str, bank: str, reference: str, amount: Money, on: date
    ) -> str | None:
        result = self.client.call(
            f"look up {kind.lower()} money {reference}",
            self._api.get_bank_transactions,
            self.client.tenant,
            where=f'Type=="{kind}" AND Reference=={where_literal(reference)}',
            page=1,
            page_size=PAGE_SIZE,
        )
        found = _closest(
            [
                t
                for t in result.bank_transactions or []
                if t.reference == reference
                and enum_value(t.status) == "AUTHORISED"
                and t.bank_account is not None
                and str(t.bank_account.code) == bank
            ],
            amount.amount,
            on,
            lambda t: (t.total, t.date),
        )
        return str(found.bank_transaction_id) if found is not None else None

    # -- accounts and the gateway's contact

    def _entry_currency(self, entry: LedgerEntry) -> None:
        if entry.amount.currency != self.options.currency:
            raise RejectedError(
                f"entry {entry.reference} is in {entry.amount.currency}, the Xero accounts are "
                f"kept in {self.options.currency}",
                code="currency",
            )

    def _account_code(self, role: AccountRole, what: str) -> str:
        option = ROLE_OPTIONS[role]
        code = getattr(self.options, option)
        if not code:
            raise ConfigError(
                f"no Xero account to {what}: set the xero {option} option to the code of "
                f"{ROLE_NEEDS[role]}"
            )
        return str(code)

    def _bank_role(self, role: AccountRole, what: str) -> str:
        code = self._account_code(role, what)
        if not self._is_bank(code):
            raise ConfigError(
                f"the xero {ROLE_OPTIONS[role]} {code} is not a bank account in Xero, and Xero "
                f"can only {what} on a bank account: add a bank account for the gateway (e.g. "
                f"'Stripe') in Xero and set {ROLE_OPTIONS[role]} to its code"
            )
        return code

    def _account_info(self, code: str) -> dict[str, Any] | None:
        accounts = self._reference("accounts", self._fetch_accounts)
        if code not in accounts:
            accounts = self._reference("accounts", self._fetch_accounts, fresh=True)
        return accounts.get(code)

    def _is_bank(self, code: str) -> bool:
        account = self._account_info(code)
        return account is not None and account["type"] == "BANK"

    def _takes_payments(self, code: str) -> bool:
        account = self._account_info(code)
        return account is not None and bool(account["payments"])

    def _gateway_contact_id(self) -> str:
        """The contact spend and receive money carry (Xero needs one on every bank
        transaction): the active contact named `gateway_contact`, created once if missing."""
        with self._cache_lock:
            cached = self._cached_value("gateway_contact")
        if cached is not None:
            return str(cached)
        name = self.options.gateway_contact
        contact_id = self._lookup_contact(name)
        if contact_id is None:
            try:
                result = self._write(
                    f"create the Xero contact {name!r}",
                    self._api.create_contacts,
                    Contacts(contacts=[Contact(name=name)]),
                    key=fit(f"contact:{self.client.tenant}:{name}", KeyLimit.XERO),
                )
                contact_id = str(self._one(result.contacts, f"contact {name}").contact_id)
            except RejectedError as exc:
                if exc.code != "contact_name":
                    raise
                contact_id = self._lookup_contact(name)  # made meanwhile by someone else
                if contact_id is None:
                    raise
        with self._cache_lock:
            self._cache["gateway_contact"] = _Cached(contact_id, self.time.now())
        return contact_id

    def _lookup_contact(self, name: str) -> str | None:
        result = self.client.call(
            f"look up the Xero contact {name!r}",
            self._api.get_contacts,
            self.client.tenant,
            where=f"Name=={where_literal(name)}",
            page=1,
            page_size=PAGE_SIZE,
        )
        for contact in result.contacts or []:
            if enum_value(contact.contact_status) == "ACTIVE":
                return str(contact.contact_id)
        return None

    # -- writing

    def _write(
        self,
        what: str,
        operation: Callable[..., Any],
        body: Any,
        *,
        key: str,
        **kwargs: Any,
    ) -> Any:
        """One money-trail write with its Idempotency-Key; an account Xero refuses is named by
        the option that points at it."""
        try:
            return self.client.call(
                what,
                operation,
                self.client.tenant,
                body,
                idempotency_key=key,
                write=True,
                **kwargs,
            )
        except RejectedError as exc:
            raise self._name_option(exc) from None

    def _refused(self, element: Any, what: str) -> None:
        errors = [e.message for e in getattr(element, "validation_errors", None) or [] if e.message]
        if errors or getattr(element, "has_errors", False):
            raise self._name_option(rejection(errors, what))

    def _name_option(self, exc: Exception) -> Exception:
        if not isinstance(exc, RejectedError):
            return exc
        text = str(exc)
        named = [
            f"{code} is the xero {option}"
            for option in (*ROLE_OPTIONS.values(), "returns_account", "sales_account")
            if (code := getattr(self.options, option)) and f"account {code} " in text
        ]
        if not named:
            return exc
        return RejectedError(f"{text} ({'; '.join(named)})", code=exc.code)

    @staticmethod
    def _one(elements: Any, what: str) -> Any:
        listed = list(elements or [])
        if len(listed) != 1:
            raise InvariantViolation(f"Xero answered {len(listed)} results for {what}")
        return listed[0]

    # ------------------------------------------------------------------ change feed

    def changes(self, since: datetime) -> LedgerChanges:
        if since.tzinfo is None:
            raise ValueError("changes() needs a timezone-aware datetime")
        since = since.astimezone(UTC)
        invoices: list[LedgerInvoice] = []
        server_now: datetime | None = None
        page = 1
        while True:
            result, envelope = self.client.call_raw(
                f"read invoices changed since {since.isoformat()}",
                self._api.get_invoices,
                "Invoices",
                self.client.tenant,
                if_modified_since=since,
                where='Type=="ACCREC"',
                page=page,
                page_size=PAGE_SIZE,
            )
            if server_now is None:
                server_now = self.client.server_time(envelope)
            rows = list(result.invoices or [])
            invoices += [ledger_invoice(i) for i in rows]
            if len(rows) < PAGE_SIZE:
                break
            page += 1
        until = (server_now or self.time.now()) - CHANGES_OVERLAP
        return LedgerChanges(invoices=invoices, until=until, complete=True)

    # ------------------------------------------------------------------ pre-flight

    def check(self, needs: LedgerNeeds) -> Sequence[LedgerProblem]:
        problems: list[LedgerProblem] = []
        organisation = self._organisation()
        base = enum_value(organisation.base_currency) or ""
        currencies = set(needs.currencies) | {self.options.currency}
        if currencies - {base}:
            enabled = self._reference("currencies", self._fetch_currencies)
            for code in sorted(currencies - {base} - enabled):
                problems.append(
                    LedgerProblem(
                        NeedKind.CURRENCY,
                        code,
                        f"currency {code} is not enabled in Xero (the base currency is {base}): "
                        "add it in Xero (Settings, Currencies), or bill in "
                        f"{base}",
                    )
                )
        problems += self._check_customers(needs.customers)
        problems += self._check_items(needs.items)
        problems += self._check_tax_types(needs.tax_codes)
        problems += self._check_terms(needs.terms, organisation)
        problems += self._check_accounts()
        problems += self._check_tracking()
        return problems

    def _check_customers(self, customers: Iterable[str]) -> list[LedgerProblem]:
        problems = []
        wanted = sorted(set(customers))
        found = self._contacts_cached([c.casefold() for c in wanted if is_guid(c)])
        for customer in wanted:
            contact = found.get(customer.casefold()) if is_guid(customer) else None
            if contact is None:
                problems.append(
                    LedgerProblem(
                        NeedKind.CUSTOMER,
                        customer,
                        f"customer {customer} is not a contact in this Xero organisation: set "
                        '[clients."KEY"] ledger_customer_id to an existing ContactID',
                    )
                )
            elif enum_value(contact.contact_status) != "ACTIVE":
                problems.append(
                    LedgerProblem(
                        NeedKind.CUSTOMER,
                        customer,
                        f"Xero contact {contact.name} ({customer}) is archived: restore it in "
                        'Xero, or set [clients."KEY"] ledger_customer_id to an active contact',
                    )
                )
        return problems

    def _check_items(self, items: Iterable[str]) -> list[LedgerProblem]:
        problems = []
        for wanted in sorted(set(items)):
            try:
                item = self._item(wanted, "")
            except RejectedError as exc:
                problems.append(LedgerProblem(NeedKind.ITEM, wanted, str(exc)))
                continue
            if not item.account_code and not self.options.sales_account:
                problems.append(
                    LedgerProblem(
                        NeedKind.ITEM,
                        wanted,
                        f"Xero item {wanted} has no sales account and the xero sales_account "
                        "option is not set: give the item a sales account in Xero, or set "
                        "sales_account",
                    )
                )
        return problems

    def _check_tax_types(self, tax_codes: Iterable[str]) -> list[LedgerProblem]:
        wanted = sorted(set(tax_codes))
        if not wanted:
            return []
        rates = self._reference("tax_rates", self._fetch_tax_rates)
        problems = []
        for code in wanted:
            rate = rates.get(code)
            if rate is None or rate[0] != "ACTIVE" or not rate[1]:
                state = (
                    "does not exist"
                    if rate is None
                    else ("is archived" if rate[0] != "ACTIVE" else "cannot be used on sales")
                )
                problems.append(
                    LedgerProblem(
                        NeedKind.TAX_CODE,
                        code,
                        f"Xero tax type {code} {state}: set the milestone's tax_code to an active "
                        "sales tax type from Xero (Settings, Tax rates)",
                    )
                )
        return problems

    def _check_terms(self, terms: Iterable[str], organisation: Any) -> list[LedgerProblem]:
        problems = []
        for name in sorted(set(terms)):
            if due_date_for(name, date(2000, 1, 1)) is not None:
                continue
            if terms_of(organisation.payment_terms) is None:
                problems.append(
                    LedgerProblem(
                        NeedKind.TERMS,
                        name,
                        f"Xero has no named payment terms such as {name!r}: use 'Net N' or "
                        "'Due on receipt', or set default payment terms in Xero (Settings, "
                        "Invoice settings)",
                    )
                )
        return problems

    def _check_accounts(self) -> list[LedgerProblem]:
        """Each configured account: present, active, and of a type its role can use."""
        options = self.options
        trail = [options.bank_account, options.fee_account, options.disputes_account]
        wanted = [
            a
            for a in (
                options.sales_account,
                options.clearing_account,
                *trail,
                options.returns_account,
            )
            if a
        ]
        if not wanted:
            return []
        accounts = self._reference("accounts", self._fetch_accounts)
        problems: list[LedgerProblem] = []

        def problem(option: str, message: str) -> None:
            problems.append(LedgerProblem(NeedKind.ACCOUNT, option, message))

        def present(option: str, code: str | None, needs: str) -> dict[str, Any] | None:
            if not code:
                return None
            account = accounts.get(code)
            if account is None or account["status"] != "ACTIVE":
                state = "does not exist" if account is None else "is archived"
                problem(
                    option,
                    f"the xero {option} {code} {state} in Xero: "
                    + ("restore it, or " if account is not None else "")
                    + f"set {option} to the code of {needs}",
                )
                return None
            return account

        sales = present("sales_account", options.sales_account, "an active revenue account")
        if sales is not None and sales["type"] not in SALES_ACCOUNT_TYPES:
            problem(
                "sales_account",
                f"the xero sales_account {options.sales_account} is a {sales['type']} account: "
                "set it to the code of a revenue account",
            )
        clearing = present(
            "clearing_account",
            options.clearing_account,
            "an active bank account (or one with payments enabled)",
        )
        if clearing is not None and not clearing["payments"]:
            problem(
                "clearing_account",
                f"Xero account {options.clearing_account} cannot receive payments: tick 'Enable "
                "payments to this account' on it in Xero, or set clearing_account to a bank "
                "account",
            )
        elif clearing is not None and any(trail) and clearing["type"] != "BANK":
            problem(
                "clearing_account",
                f"the xero clearing_account {options.clearing_account} is a {clearing['type']} "
                "account: fees, payouts and refunds are booked as bank transactions and "
                "transfers, which Xero allows on bank accounts only; add a bank account for the "
                "gateway (e.g. 'Stripe') in Xero and set clearing_account to its code",
            )
        bank = present("bank_account", options.bank_account, "the bank account payouts land in")
        if bank is not None and bank["type"] != "BANK":
            problem(
                "bank_account",
                f"the xero bank_account {options.bank_account} is a {bank['type']} account: set "
                "it to the code of the bank account payouts land in",
            )
        fees = present("fee_account", options.fee_account, "an expense account for gateway fees")
        if fees is not None and fees["type"] not in EXPENSE_ACCOUNT_TYPES:
            problem(
                "fee_account",
                f"the xero fee_account {options.fee_account} is a {fees['type']} account: set "
                "it to the code of an expense account such as 'Bank fees'",
            )
        if options.fee_account and options.fee_tax_type:
            rates = self._reference("tax_rates", self._fetch_tax_rates)
            rate = rates.get(options.fee_tax_type)
            if rate is None or rate[0] != "ACTIVE" or not rate[2]:
                problem(
                    "fee_tax_type",
                    f"Xero tax type {options.fee_tax_type} is not an active tax rate for "
                    "expenses: set the xero fee_tax_type option to one listed in Xero "
                    "(Settings, Tax rates)",
                )
        disputes = present(
            "disputes_account",
            options.disputes_account,
            "a current asset account holding disputed money",
        )
        if disputes is not None and disputes["type"] not in HOLDING_ACCOUNT_TYPES:
            problem(
                "disputes_account",
                f"the xero disputes_account {options.disputes_account} is a "
                f"{disputes['type']} account: set it to the code of a current asset account "
                "(e.g. 'Stripe disputes') where disputed money is held",
            )
        returns = present(
            "returns_account",
            options.returns_account,
            "a current asset account for returned payments",
        )
        holding_option = "returns_account" if options.returns_account else "disputes_account"
        holding = returns if options.returns_account else disputes
        if holding is not None and holding["type"] == "BANK":
            problem(
                holding_option,
                f"the xero {holding_option} {getattr(options, holding_option)} is a bank account: "
                "returned payments go through a non-bank holding account (invoice lines and "
                "spend money lines cannot use a bank account); set returns_account to a "
                "current asset account such as 'Dishonoured payments'",
            )
        return problems

    def _check_tracking(self) -> list[LedgerProblem]:
        if not self.options.tracking:
            return []
        categories = self._reference("tracking", self._fetch_tracking)
        problems = []
        for name, option in self.options.tracking:
            options = categories.get(name)
            if options is None:
                message = f"tracking category {name!r} is not active in Xero"
            elif option not in options:
                message = f"tracking option {option!r} of {name!r} is not active in Xero"
            else:
                continue
            problems.append(
                LedgerProblem(
                    NeedKind.ACCOUNT,
                    "tracking",
                    f"{message}: fix the xero tracking option, or add it in Xero (Settings, "
                    "Tracking categories)",
                )
            )
        return problems

    # ------------------------------------------------------------------ capacity

    def capacity_warning(self, pending_invoices: int) -> str | None:
        """Each invoice costs one call to create (one per 50 in backlog batches) and one to
        email; lookups, the change feed and payments come on top but mostly later."""
        if pending_invoices <= 0:
            return None
        left = self.client.budget.day
        if left is None:  # nothing read yet today: one cheap call tells
            self._reference("currencies", self._fetch_currencies)
            left = self.client.budget.day
        if left is None:
            return None
        batched = pending_invoices >= BATCH_FROM
        creates = math.ceil(pending_invoices / BATCH_LIMIT) if batched else pending_invoices
        needed = creates + pending_invoices + 2
        if left >= needed:
            return None
        how = f"{creates} to create them" + (f" in batches of {BATCH_LIMIT}" if batched else "")
        return (
            f"Xero allows {left} more API calls today for this organisation (of {DAY_LIMIT} a "
            f"day); {pending_invoices} invoices need about {needed} ({how}, up to "
            f"{pending_invoices} to email them, and a few lookups): the rest waits for "
            "tomorrow's allowance"
        )

    # ------------------------------------------------------------------ reference data

    def _older_than(self, name: str, age: timedelta) -> bool:
        with self._cache_lock:
            cached = self._cache.get(name)
            return cached is None or self.time.now() - cached.at >= age

    def _cached_value(self, name: str) -> Any:
        cached = self._cache.get(name)
        if cached is None or self.time.now() - cached.at >= CACHE_TTL:
            return None
        return cached.value

    def _reference(self, name: str, fetch: Callable[[], T], *, fresh: bool = False) -> T:
        with self._cache_lock:
            value = None if fresh else self._cached_value(name)
        if value is not None:
            return value  # type: ignore[no-any-return]
        value = fetch()
        with self._cache_lock:
            self._cache[name] = _Cached(value, self.time.now())
        return value

    def _organisation(self) -> Any:
        return self._reference("organisation", self._fetch_organisation)

    def _fetch_organisation(self) -> Any:
        result = self.client.call(
            "read the Xero organisation", self._api.get_organisations, self.client.tenant
        )
        organisations = list(result.organisations or [])
        if not organisations:
            raise ConfigError(f"Xero returned no organisation for tenant {self.client.tenant}")
        return organisations[0]

    def _items(self, *, fresh: bool = False) -> dict[str, ItemInfo]:
        return self._reference("items", self._fetch_items, fresh=fresh)

    def _fetch_items(self) -> dict[str, ItemInfo]:
        result = self.client.call("read Xero items", self._api.get_items, self.client.tenant)
        items = {}
        for item in result.items or []:
            sales = item.sales_details
            items[str(item.code)] = ItemInfo(
                code=str(item.code),
                name=str(item.name or item.code),
                is_sold=item.is_sold is not False,
                account_code=(sales.account_code if sales else None) or None,
                tax_type=(sales.tax_type if sales else None) or None,
            )
        return items

    def _fetch_currencies(self) -> set[str]:
        result = self.client.call(
            "read Xero currencies", self._api.get_currencies, self.client.tenant
        )
        return {str(enum_value(c.code)) for c in result.currencies or []}

    def _fetch_tax_rates(self) -> dict[str, tuple[str, bool, bool]]:
        """Tax type -> (status, applies to revenue, applies to expenses)."""
        result = self.client.call(
            "read Xero tax rates", self._api.get_tax_rates, self.client.tenant
        )
        return {
            str(rate.tax_type): (
                str(enum_value(rate.status)),
                rate.can_apply_to_revenue is not False,
                rate.can_apply_to_expenses is not False,
            )
            for rate in result.tax_rates or []
        }

    def _fetch_accounts(self) -> dict[str, dict[str, Any]]:
        result = self.client.call("read Xero accounts", self._api.get_accounts, self.client.tenant)
        accounts = {}
        for account in result.accounts or []:
            kind = enum_value(account.type)
            accounts[str(account.code)] = {
                "id": str(account.account_id) if account.account_id else None,
                "status": enum_value(account.status),
                "type": kind,
                "payments": kind == "BANK" or bool(account.enable_payments_to_account),
            }
        return accounts

    def _fetch_tracking(self) -> dict[str, set[str]]:
        result = self.client.call(
            "read Xero tracking categories", self._api.get_tracking_categories, self.client.tenant
        )
        return {
            str(category.name): {
                str(option.name)
                for option in category.options or []
                if enum_value(option.status) == "ACTIVE"
            }
            for category in result.tracking_categories or []
            if enum_value(category.status) == "ACTIVE"
        }

    def _contacts_cached(self, ids: Sequence[str]) -> dict[str, Any]:
        """Contacts by lower-case ContactID, read at most once per cache period."""
        with self._cache_lock:
            known: dict[str, Any] = dict(self._cached_value("contacts") or {})
        missing = [i for i in ids if i not in known]
        if missing:
            fetched = self._contacts(missing)
            with self._cache_lock:
                known = dict(self._cached_value("contacts") or {})
                known.update({i: fetched.get(i) for i in missing})
                self._cache["contacts"] = _Cached(known, self.time.now())
        return {i: known[i] for i in ids if known.get(i) is not None}

    def _contacts(self, ids: Sequence[str]) -> dict[str, Any]:
        """Contacts by lower-case ContactID, archived ones included, in as few calls as ids
        allow (IDs is a comma-separated filter)."""
        found: dict[str, Any] = {}
        for chunk in _chunks(sorted(set(ids)), PAGE_SIZE):
            result = self.client.call(
                f"read {len(chunk)} Xero contacts",
                self._api.get_contacts,
                self.client.tenant,
                i_ds=chunk,
                include_archived=True,
                page=1,
                page_size=PAGE_SIZE,
            )
            for contact in result.contacts or []:
                found[str(contact.contact_id).casefold()] = contact
        return found


def _chunks(values: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value or 0))


def _closest(
    candidates: Sequence[T], amount: Decimal, on: date, key: Callable[[T], tuple[Any, Any]]
) -> T | None:
    """The candidate for an entry: same amount, the same date first (a retry may carry
    another date), else None."""
    same = [c for c in candidates if _decimal(key(c)[0]) == amount]
    for candidate in same:
        day = key(candidate)[1]
        if (day.date() if isinstance(day, datetime) else day) == on:
            return candidate
    return same[0] if same else None
