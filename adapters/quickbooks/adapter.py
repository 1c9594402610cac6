"""The `Ledger` port over QuickBooks Online: exactly-once invoices (requestid, then lookups),
batches, QBO email, payments, the money trail (transfers, fees, refunds, returned payments),
account balances, the change feed (CDC) and the pre-flight check.

How the money trail reads to an accountant (each entry carries `[milestone-sync] <reference>` in
PrivateNote, and the reference as DocNumber where it fits 21 characters):
- TransferEntry -> a Transfer between the two role accounts (a payout is one Transfer clearing ->
  bank, matching the bank feed's deposit; a dispute's hold is clearing -> disputes).
- FeeEntry > 0 -> a Purchase (PaymentType Cash) paid from the clearing account with one line to
  the fee account; payee the `fee_vendor` when configured (milestone-sync never creates one).
  FeeEntry < 0 (a fee credited back) -> a Deposit into the clearing account from the fee account.
- RefundEntry -> a RefundReceipt for the customer paid from the entry's account (clearing, or the
  disputes account for a lost dispute: QBO takes Bank or Other Current Asset there), with the
  invoice's first item and tax code, so the same revenue line is reversed.
- ReturnedPaymentEntry -> a JournalEntry: debit Accounts Receivable (the customer as Entity),
  credit the clearing account. The invoice and its payment are not edited (Intuit's own recipe
  unapplies the payment; QBO also documents the journal entry way), so the customer's open
  balance shows the amount again as an open journal entry.

Balances: balance-sheet accounts (clearing, bank, disputes) answer Account.CurrentBalance, which
QBO keeps positive for money held in an asset account; the fee account is an expense, whose
CurrentBalance QBO does not keep (the XSD: "Valid for Balance Sheet accounts"), so its balance is
read from the TrialBalance report over every date: debits less credits, positive for fees paid."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote as url_quote

from quickbooks import QuickBooks
from quickbooks.batch import batch_create
from quickbooks.cdc import change_data_capture
from quickbooks.objects.account import Account
from quickbooks.objects.base import Ref
from quickbooks.objects.companycurrency import CompanyCurrency
from quickbooks.objects.customer import Customer
from quickbooks.objects.department import Department
from quickbooks.objects.deposit import Deposit
from quickbooks.objects.invoice import Invoice
from quickbooks.objects.item import Item
from quickbooks.objects.journalentry import JournalEntry
from quickbooks.objects.payment import Payment
from quickbooks.objects.preferences import Preferences
from quickbooks.objects.purchase import Purchase
from quickbooks.objects.refundreceipt import RefundReceipt
from quickbooks.objects.taxcode import TaxCode
from quickbooks.objects.term import Term
from quickbooks.objects.trackingclass import Class
from quickbooks.objects.transfer import Transfer
from quickbooks.objects.vendor import Vendor

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.oauth.tokens import AccessTokens
from adapters.quickbooks.client import QuickBooksClient, resolve_api_url
from adapters.quickbooks.errors import QBOError, Subject, translate
from adapters.quickbooks.translate import (
    InvoiceRefs,
    QBORef,
    RefundRefs,
    build_fee_credit,
    build_fee_expense,
    build_invoice,
    build_payment,
    build_refund_receipt,
    build_returned_payment,
    build_transfer,
    decimal_of,
    deleted_invoice,
    entry_amount,
    first_sales_line,
    in_list,
    linked_invoice_ids,
    linked_payment_ids,
    money_of,
    parse_moment,
    qbo_moment,
    quote,
    ref_value,
    reference_in,
    to_ledger_invoice,
)
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
    TransientError,
)
from connector.domain.ids import IdempotencyKey, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import Money
from connector.idempotency import KeyLimit, fit
from connector.ports import (
    AccountRole,
    BatchItem,
    FeeEntry,
    InvoiceDraft,
    LedgerChanges,
    LedgerEntry,
    LedgerInvoice,
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

BATCH_LIMIT = 30  # python-quickbooks' batch size; Intuit recommends at most 30 payloads
PAGE = 1000  # MAXRESULTS cap
IN_CHUNK = 50  # values per IN (...) list, to keep query texts short
CDC_WINDOW = timedelta(days=30)
CDC_MAX_OBJECTS = 1000
CDC_MARGIN = timedelta(minutes=5)  # stay clear of the 30-day edge (clocks, request time)
CHANGE_OVERLAP = timedelta(seconds=60)  # re-read this much next time: CDC is not a snapshot
CACHE_TTL = 300.0  # seconds the catalog (items, tax codes, accounts, prefs) stays trusted
US_TAX_CODES = frozenset({"TAX", "NON"})
RECEIVING_ACCOUNT_TYPES = frozenset({"Bank", "Other Current Asset"})
SELLABLE = frozenset({"Service", "NonInventory", "Inventory"})
ENTRY_WINDOW = timedelta(days=1)  # find_entry looks a day either side (time zones)
# the TrialBalance over every date: what an expense account holds, as CurrentBalance would
BOOKS_BEGIN = date(1900, 1, 1)
BOOKS_END = date(2999, 12, 31)
BALANCE_SHEET = frozenset({"Asset", "Liability", "Equity"})
ROLE_OPTIONS = {
    AccountRole.CLEARING: "clearing_account",
    AccountRole.BANK: "bank_account",
    AccountRole.FEES: "fee_account",
    AccountRole.DISPUTES: "disputes_account",
}
ROLE_TYPES = {
    AccountRole.CLEARING: RECEIVING_ACCOUNT_TYPES,
    AccountRole.BANK: frozenset({"Bank"}),
    AccountRole.FEES: frozenset({"Expense", "Other Expense"}),
    AccountRole.DISPUTES: frozenset({"Other Current Asset"}),
}
ROLE_NEEDS = {
    AccountRole.CLEARING: "payments need a Bank or Other Current Asset account (such as "
    "Undeposited Funds or a Stripe clearing account)",
    AccountRole.BANK: "payouts land in a Bank account (the one whose bank feed shows them)",
    AccountRole.FEES: "the gateway's fees go to an Expense or Other Expense account (such as "
    "Bank Charges & Fees)",
    AccountRole.DISPUTES: "money held by open disputes sits in an Other Current Asset account "
    "(such as Stripe Disputes)",
}
ROLE_LABELS = {
    AccountRole.CLEARING: "clearing account",
    AccountRole.BANK: "bank account",
    AccountRole.FEES: "fee account",
    AccountRole.DISPUTES: "disputes account",
}
ACCOUNT_OPTION_ROLES = {option: role for role, option in ROLE_OPTIONS.items()}


@dataclass(frozen=True)
class QuickBooksOptions:
    currency: str  # the firm's billing currency
    realm_id: str | None = None  # else the token's realm
    minorversion: int = 75
    environment: str = "production"  # or "sandbox" (picks Intuit's API host)
    clearing_account: str | None = None  # DepositToAccountRef for payments: id or exact name
    bank_account: str | None = None  # where payouts land (a Bank account)
    fee_account: str | None = None  # the gateway's fees (an Expense account)
    disputes_account: str | None = None  # money held by open disputes (Other Current Asset)
    fee_vendor: str | None = None  # payee of fee expenses (a Vendor id or exact name), if any
    class_name: str | None = None  # ClassRef on every line, if the firm tracks classes
    department: str | None = None  # DepartmentRef (location)
    timeout: tuple[float, float] = (5.0, 60.0)
    throttle_wait: float = 60.0  # QBO sends no Retry-After
    max_attempts: int = 5


@dataclass(frozen=True)
class _Company:
    home_currency: str
    multicurrency: bool
    currencies: frozenset[str]  # home plus the active CompanyCurrency codes
    us: bool  # US companies take the TAX / NON line codes


@dataclass
class _Cached:
    value: Any
    expires: float


@dataclass
class _Catalog:
    """Name-list lookups (by Id and by exact name, inactive ones included), cached briefly so a
    backlog resolves each item once and the pre-flight check costs a few IN queries."""

    ttl: float
    monotonic: Callable[[], float]
    entries: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, entity: str, key: str) -> tuple[bool, Any]:
        with self.lock:
            entry = self.entries.get((entity, key))
            if entry is None or entry.expires <= self.monotonic():
                return False, None
            return True, entry.value

    def put(self, entity: str, key: str, value: Any) -> None:
        with self.lock:
            self.entries[(entity, key)] = _Cached(value, self.monotonic() + self.ttl)

    def forget_all(self) -> None:
        with self.lock:
            self.entries.clear()


class QuickBooksLedger:
    """`connector.ports.Ledger` for one QuickBooks Online company."""

    name = "quickbooks"
    batch_limit = BATCH_LIMIT
    supports_drafts = False  # QBO has no draft invoices
    cdc_max_objects = CDC_MAX_OBJECTS  # QBO's cap per CDC answer (an emulator may lower it)

    def __init__(
        self,
        tokens: AccessTokens,
        options: QuickBooksOptions,
        *,
        api_url: str | None = None,
        time: EmulatedTime = REAL_TIME,
    ) -> None:
        self.options = options
        self._time = time
        self.client = QuickBooksClient(
            tokens,
            realm_id=options.realm_id,
            minorversion=options.minorversion,
            api_url=resolve_api_url(api_url, options.environment),
            timeout=options.timeout,
            throttle_wait=options.throttle_wait,
            max_attempts=options.max_attempts,
            time=time,
        )
        self._catalog = _Catalog(CACHE_TTL, time.monotonic)

    # ------------------------------------------------------------------ invoices

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        refs, subject = self._prepare(draft)
        request_id = fit(key, KeyLimit.QUICKBOOKS)

        def create(qb: QuickBooks) -> Invoice:
            saved: Invoice = build_invoice(draft, refs).save(qb=qb, request_id=request_id)
            return saved

        try:
            saved = self.client.run(subject, create, write=True)
        except RejectedError as error:
            # QuickBooks knows better than the cache: the next lookup and check read afresh
            self._catalog.forget_all()
            if error.code == "duplicate_doc_number":
                # our own invoice, created by an attempt whose answer was lost?
                mine = self.find_invoice(draft)
                if mine is not None:
                    return mine
            raise
        return self._ledger_invoice(saved)

    def create_invoices(
        self, items: Sequence[BatchItem]
    ) -> Sequence[LedgerInvoice | RejectedError]:
        if len(items) > BATCH_LIMIT:
            raise ValueError(f"at most {BATCH_LIMIT} invoices per batch, got {len(items)}")
        results: list[LedgerInvoice | RejectedError | None] = [None] * len(items)
        prepared: list[tuple[int, InvoiceRefs, Subject]] = []
        for index, item in enumerate(items):
            try:
                refs, subject = self._prepare(item.draft)
            except RejectedError as error:
                results[index] = error
                continue
            prepared.append((index, refs, subject))
        if prepared:
            answers = self._batch(items, prepared)
            for (index, _refs, subject), answer in zip(prepared, answers, strict=True):
                results[index] = self._batch_result(items[index], subject, answer)
        done: list[LedgerInvoice | RejectedError] = []
        for result in results:
            assert result is not None
            done.append(result)
        return done

    def _batch(
        self, items: Sequence[BatchItem], prepared: list[tuple[int, InvoiceRefs, Subject]]
    ) -> list[Invoice | QBOError]:
        """One /batch request; answer i is item i's saved invoice or its Fault."""

        def send(qb: QuickBooks) -> list[Invoice | QBOError]:
            objects = [build_invoice(items[index].draft, refs) for index, refs, _ in prepared]
            response = batch_create(objects, qb=qb)
            by_object: dict[int, Invoice | QBOError] = {}
            successes = iter(response.successes)
            for answer in response.batch_responses:
                original = answer.get_object()
                if answer.Fault:
                    errors = answer.Fault.Error or []
                    first = errors[0] if errors else None
                    by_object[id(original)] = QBOError(
                        status=400,
                        code=str(first.code) if first is not None and first.code else None,
                        message=str(first.Message) if first is not None else "",
                        detail=str(first.Detail or "") if first is not None else "",
                        element=str(first.element or "") if first is not None else "",
                    )
                else:
                    by_object[id(original)] = next(successes)
            return [by_object[id(obj)] for obj in objects]

        subject = Subject(f"create {len(prepared)} invoices in one QuickBooks batch")
        # no requestid on batch: a lost answer is not resent (the core looks up first)
        return self.client.run(subject, send, write=True, idempotent=False)

    def _batch_result(
        self, item: BatchItem, subject: Subject, answer: Invoice | QBOError
    ) -> LedgerInvoice | RejectedError:
        if isinstance(answer, Invoice):
            return self._ledger_invoice(answer)
        error = translate(answer, subject)
        if isinstance(error, RejectedError) and error.code != "duplicate_doc_number":
            return error
        # a duplicate number may be this very invoice from an earlier, lost batch; an
        # item-level transient fault is retried alone, with its own requestid
        mine = self.find_invoice(item.draft)
        if mine is not None:
            return mine
        if isinstance(error, RejectedError):
            return error
        if isinstance(error, TransientError):
            try:
                return self.create_invoice(item.draft, item.key)
            except RejectedError as rejected:
                return rejected
        raise error

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        return self.find_invoices([draft]).get(draft.reference)

    def find_invoices(self, drafts: Sequence[InvoiceDraft]) -> Mapping[str, LedgerInvoice]:
        wanted = {d.reference for d in drafts}
        found: dict[str, LedgerInvoice] = {}
        numbers = sorted({d.doc_number for d in drafts if d.doc_number})
        for chunk in _chunks(numbers, IN_CHUNK):
            where = f"DocNumber IN {in_list(chunk)}"
            self._scan_invoices(where, wanted, found, what="look up invoices by number")
        customers = sorted({d.customer_id for d in drafts if not d.doc_number})
        for chunk in _chunks(customers, IN_CHUNK):
            refs = {d.reference for d in drafts if not d.doc_number and d.customer_id in chunk}
            # newest first: a lost create is recent, so the scan usually stops on page one
            where = f"CustomerRef IN {in_list(chunk)} ORDERBY MetaData.CreateTime DESC"
            self._scan_invoices(where, refs, found, what="look up invoices by customer")
        return found

    def _scan_invoices(
        self, where: str, wanted: set[str], found: dict[str, LedgerInvoice], *, what: str
    ) -> None:
        start = 1
        while wanted - found.keys():
            select = f"SELECT * FROM Invoice WHERE {where} STARTPOSITION {start} MAXRESULTS {PAGE}"
            page = self._query(Invoice, select, what)
            for invoice in page:
                reference = reference_in(invoice.PrivateNote)
                if reference in wanted and reference not in found:
                    found[reference] = self._ledger_invoice(invoice)
            if len(page) < PAGE:
                return
            start += PAGE

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        subject = Subject(f"read invoice {invoice_id}", invoice=invoice_id)
        invoice = self.client.run(subject, lambda qb: Invoice.get(invoice_id, qb=qb))
        return self._ledger_invoice(invoice)

    def send_invoice(self, invoice_id: LedgerInvoiceId, key: IdempotencyKey) -> LedgerInvoice:
        request_id = fit(key, KeyLimit.QUICKBOOKS)
        subject = Subject(f"email invoice {invoice_id}", invoice=invoice_id)

        def send(qb: QuickBooks) -> Invoice:
            # Invoice.send (SendMixin) with the requestid added; python-quickbooks' own send
            # takes none
            endpoint = f"invoice/{url_quote(invoice_id)}/send?requestid={url_quote(request_id)}"
            answer = qb.misc_operation(endpoint, None, "application/octet-stream")
            sent: Invoice = Invoice.from_json(answer["Invoice"])
            return sent

        # an email cannot be taken back: after a lost answer the core checks `sent` instead
        invoice = self.client.run(subject, send, write=True, idempotent=False)
        return self._ledger_invoice(invoice)

    # ------------------------------------------------------------------ payments

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId:
        company = self._company()
        currency = posting.amount.currency
        self._check_currency(company, currency, f"record payment {posting.reference}")
        deposit = self._option_ref("clearing_account")
        subject = Subject(
            f"record payment {posting.reference} on invoice {posting.invoice_id}",
            customer=posting.customer_id,
            invoice=posting.invoice_id,
            txn_date=posting.paid_on,
            currency=currency,
            options=self._option_values(),
        )
        request_id = fit(key, KeyLimit.QUICKBOOKS)
        send_currency = currency if company.multicurrency else None

        def create(qb: QuickBooks) -> Payment:
            payment = build_payment(posting, deposit_to=deposit, currency=send_currency)
            saved: Payment = payment.save(qb=qb, request_id=request_id)
            return saved

        saved = self.client.run(subject, create, write=True)
        return LedgerPaymentId(str(saved.Id))

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        what = f"look up payment {posting.reference}"
        ids: list[str] = []
        try:
            invoice = self.client.run(
                Subject(what, invoice=posting.invoice_id),
                lambda qb: Invoice.get(posting.invoice_id, qb=qb),
            )
            ids = linked_payment_ids(invoice)
        except RejectedError:
            ids = []  # the invoice is gone: look among the customer's payments below
        for chunk in _chunks(ids, IN_CHUNK):
            select = f"SELECT * FROM Payment WHERE Id IN {in_list(chunk)} MAXRESULTS {PAGE}"
            for payment in self._query(Payment, select, what):
                if reference_in(payment.PrivateNote) == posting.reference:
                    return LedgerPaymentId(str(payment.Id))
        # unlinked (the invoice was voided or deleted since): the customer's newest payments
        start = 1
        while True:
            select = (
                f"SELECT * FROM Payment WHERE CustomerRef = {quote(posting.customer_id)} "
                f"ORDERBY MetaData.CreateTime DESC STARTPOSITION {start} MAXRESULTS {PAGE}"
            )
            page = self._query(Payment, select, what)
            for payment in page:
                if reference_in(payment.PrivateNote) == posting.reference:
                    return LedgerPaymentId(str(payment.Id))
            if len(page) < PAGE:
                return None
            start += PAGE

    # ------------------------------------------------------------------ the money trail

    def post_entry(self, entry: LedgerEntry, key: IdempotencyKey) -> str:
        build, subject = self._entry_plan(entry)
        request_id = fit(key, KeyLimit.QUICKBOOKS)

        def create(qb: QuickBooks) -> Any:
            return build().save(qb=qb, request_id=request_id)

        try:
            saved = self.client.run(subject, create, write=True)
        except RejectedError:
            self._catalog.forget_all()  # an account or item changed in QuickBooks: read afresh
            raise
        return str(saved.Id)

    def find_entry(self, entry: LedgerEntry) -> str | None:
        entity, matches = self._entry_matcher(entry)
        name = entity.qbo_object_name  # type: ignore[attr-defined]
        first = quote((entry.on - ENTRY_WINDOW).isoformat())
        last = quote((entry.on + ENTRY_WINDOW).isoformat())
        wanted = abs(entry.amount.amount)
        start = 1
        while True:
            # QBO cannot filter on PrivateNote: the date narrows, the tag and amount decide
            select = (
                f"SELECT * FROM {name} WHERE TxnDate >= {first} AND TxnDate <= {last} "
                f"STARTPOSITION {start} MAXRESULTS {PAGE}"
            )
            page = self._query(entity, select, f"look up {name} {entry.reference}")
            for obj in page:
                if (
                    reference_in(getattr(obj, "PrivateNote", None)) == entry.reference
                    and entry_amount(obj) == wanted
                    and matches(obj)
                ):
                    return str(obj.Id)
            if len(page) < PAGE:
                return None
            start += PAGE

    def account_balance(self, role: AccountRole) -> Money:
        what = f"read the {ROLE_LABELS[role]}'s balance"
        ref = self._account_ref(role, what)
        subject = Subject(what, options={ROLE_OPTIONS[role]: self._role_value(role)})
        account = self.client.run(subject, lambda qb: Account.get(ref.id, qb=qb))
        home = self._company().home_currency
        currency = ref_value(getattr(account, "CurrencyRef", None)) or home
        classification = getattr(account, "Classification", None)
        if classification in BALANCE_SHEET:
            return money_of(account.CurrentBalance, currency)
        return money_of(self._trial_balance(ref.id, classification, subject), currency)

    def payments_since(self, since: date) -> Sequence[LedgerPayment]:
        clearing = (
            self._account_ref(AccountRole.CLEARING, "read payments").id
            if self.options.clearing_account
            else None
        )
        home = self._company().home_currency
        found: list[LedgerPayment] = []
        start = 1
        while True:
            select = (
                f"SELECT * FROM Payment WHERE TxnDate >= {quote(since.isoformat())} "
                f"STARTPOSITION {start} MAXRESULTS {PAGE}"
            )
            page = self._query(Payment, select, f"read payments since {since.isoformat()}")
            for payment in page:
                invoices = linked_invoice_ids(payment)
                deposit = ref_value(getattr(payment, "DepositToAccountRef", None))
                currency = ref_value(getattr(payment, "CurrencyRef", None)) or home
                found.append(
                    LedgerPayment(
                        id=LedgerPaymentId(str(payment.Id)),
                        reference=reference_in(payment.PrivateNote),
                        invoice_id=LedgerInvoiceId(invoices[0]) if invoices else None,
                        amount=money_of(payment.TotalAmt, currency),
                        paid_on=date.fromisoformat(str(payment.TxnDate)[:10]),
                        account=AccountRole.CLEARING
                        if clearing is not None and deposit == clearing
                        else None,
                    )
                )
            if len(page) < PAGE:
                return found
            start += PAGE

    def _entry_plan(self, entry: LedgerEntry) -> tuple[Callable[[], Any], Subject]:
        """What to create for an entry (a builder: a fresh SDK object per attempt) and what the
        call is about, every reference resolved first (ConfigError for a missing account)."""
        kind = type(entry).__name__
        if isinstance(entry, FeeEntry):
            if entry.amount.is_zero():
                raise InvariantViolation(f"{kind} {entry.reference}: a fee of zero books nothing")
        elif not entry.amount.amount > 0:
            raise InvariantViolation(
                f"{kind} {entry.reference}: the amount must be positive, got {entry.amount}"
            )
        company = self._company()
        currency = entry.amount.currency
        what = f"post {_ENTRY_WORDS[kind]} {entry.reference}"
        self._check_currency(company, currency, what)
        send_currency = currency if company.multicurrency else None
        roles = _entry_roles(entry)
        for role in roles:
            self._check_account_currency(role, currency, company, what)
        if isinstance(entry, TransferEntry):
            source = self._account_ref(entry.from_account, what)
            target = self._account_ref(entry.to_account, what)
            if source.id == target.id:
                raise ConfigError(
                    f"{what}: ledger options {ROLE_OPTIONS[entry.from_account]} and "
                    f"{ROLE_OPTIONS[entry.to_account]} name the same QuickBooks account "
                    f"{source.name or source.id!r}: give each role its own account"
                )
            subject = self._entry_subject(
                what,
                entry,
                (entry.from_account, entry.to_account),
                accounts={
                    "FromAccountRef": ROLE_OPTIONS[entry.from_account],
                    "ToAccountRef": ROLE_OPTIONS[entry.to_account],
                },
            )
            return lambda: build_transfer(entry, source, target, send_currency), subject
        if isinstance(entry, FeeEntry):
            clearing = self._account_ref(AccountRole.CLEARING, what)
            fees = self._account_ref(AccountRole.FEES, what)
            vendor = self._option_ref("fee_vendor")
            subject = self._entry_subject(
                what,
                entry,
                (AccountRole.CLEARING, AccountRole.FEES),
                accounts={
                    "AccountRef": "clearing_account",
                    "Line.AccountBasedExpenseLineDetail.AccountRef": "fee_account",
                    "DepositToAccountRef": "clearing_account",
                    "Line.DepositLineDetail.AccountRef": "fee_account",
                },
            )
            build = build_fee_expense if entry.amount.amount > 0 else build_fee_credit
            return lambda: build(entry, clearing, fees, vendor, send_currency), subject
        if isinstance(entry, RefundEntry):
            paid_from = self._account_ref(entry.from_account, what)
            invoice = self._entry_invoice(entry.invoice_id, what)
            detail = first_sales_line(invoice)
            item = ref_value(getattr(detail, "ItemRef", None))
            tax = ref_value(getattr(detail, "TaxCodeRef", None))
            refs = RefundRefs(
                paid_from=paid_from,
                item=QBORef(item) if item else None,
                tax_code=QBORef(tax) if tax else None,
                class_ref=self._option_ref("class_name"),
                department=self._option_ref("department"),
                currency=send_currency,
                invoice_number=str(invoice.DocNumber) if invoice.DocNumber else None,
            )
            item_name = getattr(getattr(detail, "ItemRef", None), "name", None) or item
            subject = self._entry_subject(
                what,
                entry,
                (entry.from_account,),
                customer=entry.customer_id,
                items={item: str(item_name)} if item else {},
                tax_codes={tax: tax} if tax else {},
                accounts={"DepositToAccountRef": ROLE_OPTIONS[entry.from_account]},
            )
            return lambda: build_refund_receipt(entry, refs), subject
        assert isinstance(entry, ReturnedPaymentEntry)
        clearing = self._account_ref(AccountRole.CLEARING, what)
        invoice = self._entry_invoice(entry.invoice_id, what)
        receivable = self._receivable_ref(invoice, what)
        number = str(invoice.DocNumber) if invoice.DocNumber else None
        subject = self._entry_subject(
            what, entry, (AccountRole.CLEARING,), customer=entry.customer_id
        )
        return (
            lambda: build_returned_payment(entry, receivable, clearing, send_currency, number),
            subject,
        )

    def _check_account_currency(
        self, role: AccountRole, currency: str, company: _Company, what: str
    ) -> None:
        """Money in one currency cannot land in an account kept in another (multicurrency
        companies keep each bank or asset account in one currency)."""
        self._account_ref(role, what)
        value = self._role_value(role)
        row = self._lookup(Account, [value]).get(value)
        kept = ref_value(getattr(row, "CurrencyRef", None)) or company.home_currency
        if kept != currency:
            raise RejectedError(
                f"{what}: the {ROLE_LABELS[role]} {value!r} (ledger option "
                f"{ROLE_OPTIONS[role]}) is kept in {kept}, the amount is in {currency}: point "
                f"the option at a {currency} account",
                code="currency",
            )

    def _entry_subject(
        self,
        what: str,
        entry: LedgerEntry,
        roles: Sequence[AccountRole],
        *,
        customer: str | None = None,
        items: Mapping[str, str] | None = None,
        tax_codes: Mapping[str, str] | None = None,
        accounts: Mapping[str, str] | None = None,
    ) -> Subject:
        options = {ROLE_OPTIONS[role]: self._role_value(role) for role in roles}
        for option in ("fee_vendor", "class_name", "department"):
            value = getattr(self.options, option)
            if value and (option != "fee_vendor" or isinstance(entry, FeeEntry)):
                options[option] = value
        return Subject(
            what,
            customer=customer,
            items=dict(items or {}),
            tax_codes=dict(tax_codes or {}),
            txn_date=entry.on,
            currency=entry.amount.currency,
            invoice=getattr(entry, "invoice_id", None),
            options=options,
            accounts=dict(accounts or {}),
        )

    def _entry_matcher(self, entry: LedgerEntry) -> tuple[type, Callable[[Any], bool]]:
        """The entity an entry is booked as, and what else a candidate must show."""
        if isinstance(entry, TransferEntry):
            source = self._account_ref(entry.from_account, "look up a transfer").id
            target = self._account_ref(entry.to_account, "look up a transfer").id

            def same_accounts(obj: Any) -> bool:
                return (
                    ref_value(getattr(obj, "FromAccountRef", None)) == source
                    and ref_value(getattr(obj, "ToAccountRef", None)) == target
                )

            return Transfer, same_accounts
        if isinstance(entry, FeeEntry):
            return (Purchase if entry.amount.amount > 0 else Deposit), lambda obj: True
        if isinstance(entry, RefundEntry):
            customer = str(entry.customer_id)
            return RefundReceipt, lambda obj: ref_value(obj.CustomerRef) == customer
        return JournalEntry, lambda obj: True

    def _entry_invoice(self, invoice_id: LedgerInvoiceId, what: str) -> Invoice:
        subject = Subject(f"{what}: read invoice {invoice_id}", invoice=invoice_id)
        invoice: Invoice = self.client.run(subject, lambda qb: Invoice.get(invoice_id, qb=qb))
        return invoice

    def _receivable_ref(self, invoice: Invoice, what: str) -> QBORef:
        """The A/R account the invoice was posted to, else the company's (QBO makes one)."""
        own = ref_value(getattr(invoice, "ARAccountRef", None))
        if own:
            return QBORef(own)
        hit, cached = self._catalog.get("receivable", "")
        if not hit:
            rows = self._query(
                Account,
                "SELECT * FROM Account WHERE AccountType = 'Accounts Receivable' "
                f"MAXRESULTS {PAGE}",
                "find the Accounts Receivable account",
            )
            rows.sort(key=lambda row: int(str(row.Id)) if str(row.Id).isdigit() else 0)
            cached = QBORef(str(rows[0].Id), _display(rows[0])) if rows else None
            self._catalog.put("receivable", "", cached)
        if cached is None:
            raise ConfigError(
                f"{what}: the QuickBooks company has no active Accounts Receivable account: "
                "create one (QuickBooks makes it with the first invoice)"
            )
        receivable: QBORef = cached
        return receivable

    def _trial_balance(self, account_id: str, classification: Any, subject: Subject) -> Any:
        """The account's total in the TrialBalance report over every date, in its normal
        direction (an expense: debits less credits)."""
        params = {
            "start_date": BOOKS_BEGIN.isoformat(),
            "end_date": BOOKS_END.isoformat(),
            "accounting_method": "Accrual",
        }
        report = self.client.run(subject, lambda qb: qb.get_report("TrialBalance", params))
        debit = credit = decimal_of(0)
        for row in _report_rows((report or {}).get("Rows") or {}):
            cells = row.get("ColData") or []
            if len(cells) >= 3 and str(cells[0].get("id", "")) == account_id:
                debit = decimal_of(cells[1].get("value"))
                credit = decimal_of(cells[2].get("value"))
                break
        return debit - credit if classification == "Expense" else credit - debit

    def _account_ref(self, role: AccountRole, what: str) -> QBORef:
        """The account configured for a role, checked to exist, be active and fit the role."""
        option = ROLE_OPTIONS[role]
        value = self._role_value(role)
        if not value:
            raise ConfigError(
                f"{what}: no QuickBooks {ROLE_LABELS[role]} is configured: set the ledger "
                f"option {option} to an account id or its exact name ({ROLE_NEEDS[role]})"
            )
        ref = self._option_ref(option)
        assert ref is not None
        kind = getattr(self._lookup(Account, [value]).get(value), "AccountType", None)
        if kind not in ROLE_TYPES[role]:
            raise ConfigError(f"{what}: {self._wrong_type(role, value, kind)}")
        return ref

    def _role_value(self, role: AccountRole) -> str:
        value: str | None = getattr(self.options, ROLE_OPTIONS[role])
        return value or ""

    @staticmethod
    def _wrong_type(role: AccountRole, value: str, kind: Any) -> str:
        article = "an" if str(kind)[:1] in "AEIOU" else "a"
        return (
            f"the {ROLE_LABELS[role]} {value!r} (ledger option {ROLE_OPTIONS[role]}) is "
            f"{article} {kind} account: {ROLE_NEEDS[role]}"
        )

    # ------------------------------------------------------------------ change feed

    def changes(self, since: datetime) -> LedgerChanges:
        if since.tzinfo is None:
            raise ValueError("changes() needs a timezone-aware moment")
        now = self._time.now()
        horizon = now - CDC_WINDOW + CDC_MARGIN
        complete = since >= horizon
        asked = max(since, horizon)
        subject = Subject("read QuickBooks changes (CDC)")
        response = self.client.run(
            subject, lambda qb: change_data_capture([Invoice, Payment], qbo_moment(asked), qb=qb)
        )
        company = self._company()
        invoices: dict[str, Any] = {}
        moments: list[datetime] = []
        count = 0
        for invoice in list(getattr(response, "Invoice", None) or []):
            count += 1
            moments.extend(_updated(invoice))
            if getattr(invoice, "status", None) == "Deleted":
                invoices[str(invoice.Id)] = deleted_invoice(str(invoice.Id), company.home_currency)
            else:
                invoices[str(invoice.Id)] = self._ledger_invoice(invoice)
        linked: set[str] = set()
        for payment in list(getattr(response, "Payment", None) or []):
            count += 1
            moments.extend(_updated(payment))
            linked.update(linked_invoice_ids(payment))
        missing = sorted(linked - invoices.keys())
        for chunk in _chunks(missing, IN_CHUNK):
            select = f"SELECT * FROM Invoice WHERE Id IN {in_list(chunk)} MAXRESULTS {PAGE}"
            for invoice in self._query(Invoice, select, "read invoices of changed payments"):
                invoices[str(invoice.Id)] = self._ledger_invoice(invoice)
        server_time = parse_moment(getattr(response, "time", None)) or now
        until = server_time - CHANGE_OVERLAP
        if count >= self.cdc_max_objects and moments:
            # CDC answers at most 1000 objects, oldest first: go on from the newest one seen
            # (changedSince is inclusive, so objects sharing its moment are read again)
            until = max(moments)
        return LedgerChanges(invoices=list(invoices.values()), until=until, complete=complete)

    # ------------------------------------------------------------------ pre-flight

    def check(self, needs: LedgerNeeds) -> Sequence[LedgerProblem]:
        problems: list[LedgerProblem] = []
        company = self._company()
        problems.extend(self._check_customers(needs.customers, company))
        problems.extend(self._check_items(needs.items))
        problems.extend(self._check_tax_codes(needs.tax_codes, company))
        problems.extend(self._check_terms(needs.terms))
        currencies = set(needs.currencies) | {self.options.currency}
        for code in sorted(currencies):
            message = self._currency_problem(company, code)
            if message is not None:
                problems.append(LedgerProblem(NeedKind.CURRENCY, code, message))
        problems.extend(self._check_options())
        return problems

    def capacity_warning(self, pending_invoices: int) -> str | None:
        # QBO has no daily cap; throttling (500/min) only slows a backlog down
        return None

    # ------------------------------------------------------------------ resolution

    def _prepare(self, draft: InvoiceDraft) -> tuple[InvoiceRefs, Subject]:
        """Resolve what the draft names (cached); RejectedError for what does not exist."""
        company = self._company()
        currency = draft.total.currency
        what = f"create invoice for {draft.reference}"
        self._check_currency(company, currency, what)
        items: list[QBORef | None] = []
        taxes: list[QBORef | None] = []
        shown_items: dict[str, str] = {}
        shown_taxes: dict[str, str] = {}
        for line in draft.lines:
            item = self._item_ref(line.item, what) if line.item else None
            items.append(item)
            if item is not None and line.item:
                shown_items[item.id] = line.item
            tax = self._tax_ref(line.tax_code, company, what) if line.tax_code else None
            taxes.append(tax)
            if tax is not None and line.tax_code:
                shown_taxes[tax.id] = line.tax_code
        terms = self._named_ref(Term, draft.terms, what, "terms") if draft.terms else None
        refs = InvoiceRefs(
            items=items,
            tax_codes=taxes,
            terms=terms,
            class_ref=self._option_ref("class_name"),
            department=self._option_ref("department"),
            currency=currency if company.multicurrency else None,
        )
        subject = Subject(
            what,
            customer=draft.customer_id,
            items=shown_items,
            tax_codes=shown_taxes,
            terms=draft.terms,
            txn_date=draft.issue_date,
            doc_number=draft.doc_number,
            currency=currency,
            options=self._option_values(),
        )
        return refs, subject

    def _option_values(self) -> dict[str, str]:
        values = {
            "clearing_account": self.options.clearing_account,
            "class_name": self.options.class_name,
            "department": self.options.department,
        }
        return {k: v for k, v in values.items() if v}

    def _option_ref(self, option: str) -> QBORef | None:
        value = getattr(self.options, option)
        if not value:
            return None
        entity = {
            "clearing_account": Account,
            "bank_account": Account,
            "fee_account": Account,
            "disputes_account": Account,
            "fee_vendor": Vendor,
            "class_name": Class,
            "department": Department,
        }[option]
        rows = self._lookup(entity, [value])
        row = rows.get(value)
        if row is None:
            raise ConfigError(
                f"QuickBooks has no {_label(entity)} {value!r}: fix the ledger option {option} "
                "(an id or the exact name)"
            )
        if not getattr(row, "Active", True):
            raise ConfigError(
                f"the {_label(entity)} {value!r} (ledger option {option}) is inactive in "
                "QuickBooks: make it active or change the option"
            )
        return QBORef(str(row.Id), _display(row))

    def _item_ref(self, value: str, what: str) -> QBORef:
        row = self._lookup(Item, [value]).get(value)
        if row is None:
            raise RejectedError(
                f"{what}: item {value!r} does not exist in QuickBooks: create it (Sales > "
                "Products and services) or fix the milestone's item in the mapping config "
                "(an item id or its exact name)",
                code="item_not_found",
            )
        if not getattr(row, "Active", True):
            raise RejectedError(
                f"{what}: item {value!r} is inactive (archived) in QuickBooks: reactivate it or "
                "change the milestone's item in the mapping config",
                code="item_inactive",
            )
        if getattr(row, "Type", None) not in SELLABLE:
            raise RejectedError(
                f"{what}: item {value!r} is a {getattr(row, 'Type', '?')} in QuickBooks and "
                "cannot be sold: pick a Service or Non-inventory item in the mapping config",
                code="item_not_sellable",
            )
        return QBORef(str(row.Id), str(row.Name))

    def _tax_ref(self, value: str, company: _Company, what: str) -> QBORef:
        if company.us and value.upper() in US_TAX_CODES:
            return QBORef(value.upper())
        if company.us:
            raise RejectedError(
                f"{what}: tax code {value!r} is not valid on a US QuickBooks invoice line (only "
                "TAX or NON): fix tax_code in the mapping config",
                code="tax_code",
            )
        row = self._lookup(TaxCode, [value]).get(value)
        if row is None or not getattr(row, "Active", True):
            state = "does not exist" if row is None else "is inactive"
            raise RejectedError(
                f"{what}: tax code {value!r} {state} in this QuickBooks company: fix tax_code "
                "in the mapping config (a tax code id or its exact name)",
                code="tax_code",
            )
        return QBORef(str(row.Id), str(row.Name))

    def _named_ref(self, entity: type, value: str, what: str, label: str) -> QBORef:
        row = self._lookup(entity, [value]).get(value)
        if row is None or not getattr(row, "Active", True):
            state = "do not exist" if row is None else "are inactive"
            raise RejectedError(
                f"{what}: {label} {value!r} {state} in QuickBooks: add them (Settings > All "
                f"lists > Terms) or fix {label} in the mapping config",
                code=label,
            )
        return QBORef(str(row.Id), _display(row))

    def _lookup(self, entity: type, values: Iterable[str]) -> dict[str, Any]:
        """Rows of a name list by Id or exact name (inactive included), cached per value."""
        name = entity.qbo_object_name  # type: ignore[attr-defined]
        result: dict[str, Any] = {}
        todo: list[str] = []
        for value in dict.fromkeys(values):
            hit, row = self._catalog.get(name, value)
            if hit:
                if row is not None:
                    result[value] = row
            else:
                todo.append(value)
        if not todo:
            return result
        name_field = {
            "Customer": "DisplayName",
            "Vendor": "DisplayName",
            "CompanyCurrency": "Code",
        }.get(name, "Name")
        rows: list[Any] = []
        ids = [v for v in todo if v.isdigit() or name == "TaxCode"]
        for chunk in _chunks(ids, IN_CHUNK):
            rows += self._query(
                entity,
                f"SELECT * FROM {name} WHERE Id IN {in_list(chunk)} AND Active IN (true, false) "
                f"MAXRESULTS {PAGE}",
                f"look up {_label(entity)}s",
            )
        names = [v for v in todo if name != "Customer"]
        for chunk in _chunks(names, IN_CHUNK):
            rows += self._query(
                entity,
                f"SELECT * FROM {name} WHERE {name_field} IN {in_list(chunk)} "
                f"AND Active IN (true, false) MAXRESULTS {PAGE}",
                f"look up {_label(entity)}s",
            )
        for value in todo:
            # an id wins over a name; names match exactly (QBO compares without case)
            match = next((r for r in rows if str(r.Id) == value), None)
            if match is None:
                match = next((r for r in rows if getattr(r, name_field, None) == value), None)
            self._catalog.put(name, value, match)
            if match is not None:
                result[value] = match
        return result

    def _company(self) -> _Company:
        hit, cached = self._catalog.get("company", "")
        if hit:
            company: _Company = cached
            return company
        prefs = self.client.run(
            Subject("read QuickBooks preferences"), lambda qb: Preferences.get(qb=qb)
        )
        currency_prefs = getattr(prefs, "CurrencyPrefs", None) or {}
        home_ref = _get(currency_prefs, "HomeCurrency")
        home = str(_get(home_ref, "value") or self.options.currency)
        multicurrency = bool(_get(currency_prefs, "MultiCurrencyEnabled"))
        currencies = {home}
        if multicurrency:
            rows = self._query(
                CompanyCurrency,
                f"SELECT * FROM CompanyCurrency MAXRESULTS {PAGE}",
                "read the company's currencies",
            )
            currencies |= {str(r.Code) for r in rows if getattr(r, "Active", True)}
        us = self._country().upper() in ("US", "USA")  # ISO-2, or ISO-3 since 2025
        company = _Company(home, multicurrency, frozenset(currencies), us)
        self._catalog.put("company", "", company)
        return company

    def _country(self) -> str:
        realm = self.client.realm_id
        info = self.client.run(
            Subject("read QuickBooks company info"),
            lambda qb: qb.get_single_object("CompanyInfo", realm),
        )
        return str((info.get("CompanyInfo") or {}).get("Country") or "US")

    def _currency_problem(self, company: _Company, code: str) -> str | None:
        if code in company.currencies:
            return None
        if not company.multicurrency:
            return (
                f"currency {code} is not the QuickBooks company's home currency "
                f"({company.home_currency}) and multicurrency is off: turn it on and add {code} "
                "(Settings > Account and settings > Advanced > Currency), or bill in "
                f"{company.home_currency}"
            )
        return (
            f"currency {code} is not in the QuickBooks company's currency list: add it "
            "(Settings > Currencies)"
        )

    def _check_currency(self, company: _Company, code: str, what: str) -> None:
        problem = self._currency_problem(company, code)
        if problem is not None:
            raise RejectedError(f"{what}: {problem}", code="currency")

    def _check_customers(self, ids: Iterable[str], company: _Company) -> list[LedgerProblem]:
        values = sorted(set(ids))
        rows = self._lookup(Customer, values)
        problems = []
        for value in values:
            row = rows.get(value)
            if row is None:
                problems.append(
                    LedgerProblem(
                        NeedKind.CUSTOMER,
                        value,
                        f"customer {value} does not exist in QuickBooks: set the client's "
                        "ledger_customer_id to an existing customer id",
                    )
                )
                continue
            name = _display(row)
            if not getattr(row, "Active", True):
                problems.append(
                    LedgerProblem(
                        NeedKind.CUSTOMER,
                        value,
                        f"customer {value} ({name}) is inactive in QuickBooks: make it active or "
                        "map the client to another customer",
                    )
                )
                continue
            currency = _get(getattr(row, "CurrencyRef", None), "value")
            if company.multicurrency and currency and currency != self.options.currency:
                problems.append(
                    LedgerProblem(
                        NeedKind.CURRENCY,
                        value,
                        f"customer {value} ({name}) is billed in {currency} in QuickBooks but "
                        f"milestone-sync invoices in {self.options.currency}: use a customer in "
                        f"{self.options.currency} or change the ledger currency",
                    )
                )
        return problems

    def _check_items(self, values: Iterable[str]) -> list[LedgerProblem]:
        problems = []
        wanted = sorted(set(values))
        self._lookup(Item, wanted)  # one pair of IN queries for all of them
        for value in wanted:
            try:
                self._item_ref(value, f"item {value!r}")
            except RejectedError as error:
                message = str(error).split(": ", 1)[1]
                problems.append(LedgerProblem(NeedKind.ITEM, value, message))
        return problems

    def _check_tax_codes(self, values: Iterable[str], company: _Company) -> list[LedgerProblem]:
        problems = []
        wanted = sorted(set(values))
        if not company.us:
            self._lookup(TaxCode, wanted)
        for value in wanted:
            try:
                self._tax_ref(value, company, f"tax code {value!r}")
            except RejectedError as error:
                message = str(error).split(": ", 1)[1]
                problems.append(LedgerProblem(NeedKind.TAX_CODE, value, message))
        return problems

    def _check_terms(self, values: Iterable[str]) -> list[LedgerProblem]:
        problems = []
        wanted = sorted(set(values))
        self._lookup(Term, wanted)
        for value in wanted:
            try:
                self._named_ref(Term, value, f"terms {value!r}", "terms")
            except RejectedError as error:
                message = str(error).split(": ", 1)[1]
                problems.append(LedgerProblem(NeedKind.TERMS, value, message))
        return problems

    def _check_options(self) -> list[LedgerProblem]:
        """The configured options only: an unset account role is checked when an entry needs
        it (post_entry raises a ConfigError naming the option)."""
        problems = []
        options = (*ROLE_OPTIONS.values(), "fee_vendor", "class_name", "department")
        configured = [o for o in options if getattr(self.options, o)]
        accounts = [getattr(self.options, o) for o in configured if o in ACCOUNT_OPTION_ROLES]
        self._lookup(Account, accounts)  # one pair of IN queries for every account option
        used: dict[str, str] = {}  # account id -> the first option naming it
        for option in configured:
            try:
                ref = self._option_ref(option)
            except ConfigError as error:
                problems.append(LedgerProblem(NeedKind.ACCOUNT, option, str(error)))
                continue
            role = ACCOUNT_OPTION_ROLES.get(option)
            if role is None or ref is None:
                continue
            value = self._role_value(role)
            kind = getattr(self._lookup(Account, [value]).get(value), "AccountType", None)
            if kind not in ROLE_TYPES[role]:
                problems.append(
                    LedgerProblem(NeedKind.ACCOUNT, option, self._wrong_type(role, value, kind))
                )
            elif ref.id in used:
                problems.append(
                    LedgerProblem(
                        NeedKind.ACCOUNT,
                        option,
                        f"ledger options {used[ref.id]} and {option} both name the QuickBooks "
                        f"account {value!r}: money would move from an account to itself; give "
                        "each role its own account",
                    )
                )
            else:
                used[ref.id] = option
        return problems

    # ------------------------------------------------------------------ plumbing

    def _query(self, entity: type, select: str, what: str) -> list[Any]:
        subject = Subject(f"{what} ({select})")
        rows: list[Any] = self.client.run(
            subject,
            lambda qb: entity.query(select, qb=qb),  # type: ignore[attr-defined]
        )
        return rows

    def _ledger_invoice(self, invoice: Invoice) -> LedgerInvoice:
        home = self._company().home_currency
        return to_ledger_invoice(invoice, home)


def _chunks(values: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _label(entity: type) -> str:
    name: str = entity.qbo_object_name  # type: ignore[attr-defined]
    return {
        "Account": "account",
        "Vendor": "vendor",
        "Class": "class",
        "Department": "location",
        "Customer": "customer",
        "Item": "item",
        "TaxCode": "tax code",
        "Term": "terms",
        "CompanyCurrency": "currency",
    }.get(name, name)


_ENTRY_WORDS = {
    "TransferEntry": "transfer",
    "FeeEntry": "fee",
    "RefundEntry": "refund",
    "ReturnedPaymentEntry": "returned payment",
}


def _entry_roles(entry: LedgerEntry) -> tuple[AccountRole, ...]:
    """The role accounts an entry moves money through."""
    if isinstance(entry, TransferEntry):
        return (entry.from_account, entry.to_account)
    if isinstance(entry, FeeEntry):
        return (AccountRole.CLEARING, AccountRole.FEES)
    if isinstance(entry, RefundEntry):
        return (entry.from_account,)
    return (AccountRole.CLEARING,)


def _report_rows(rows: Any) -> Iterable[dict[str, Any]]:
    """Every data row of a QBO report, sections flattened."""
    for row in (rows or {}).get("Row") or []:
        if not isinstance(row, dict):
            continue
        if "ColData" in row:
            yield row
        if "Rows" in row:
            yield from _report_rows(row["Rows"])


def _display(row: Any) -> str:
    return str(getattr(row, "DisplayName", None) or getattr(row, "Name", None) or row.Id)


def _get(value: Any, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(key)
    if isinstance(value, Ref) and key == "value":
        return value.value
    return getattr(value, key, None)


def _updated(obj: Any) -> list[datetime]:
    meta = getattr(obj, "MetaData", None)
    moment = parse_moment(_get(meta, "LastUpdatedTime"))
    return [moment] if moment is not None else []
