"""The `Ledger` port over Xero: sales invoices (one at a time or 50 per request), lookups by
reference or number, emailing, payments into a clearing account, the If-Modified-Since change
feed, a pre-flight check of what the organisation has, and the daily call budget."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from xero_python.accounting import Invoices, RequestEmpty

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.oauth.tokens import AccessTokens
from adapters.xero.client import XeroClient
from adapters.xero.errors import rejection
from adapters.xero.translate import (
    LINE_AMOUNT_TYPES,
    ItemInfo,
    Terms,
    due_from_terms,
    enum_value,
    invoice_model,
    is_guid,
    ledger_invoice,
    payment_model,
    terms_of,
    where_literal,
)
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
)
from connector.domain.ids import IdempotencyKey, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import is_known_currency
from connector.idempotency import KeyLimit, fit
from connector.planning import due_date_for
from connector.ports import (
    BatchItem,
    InvoiceDraft,
    LedgerChanges,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerNeeds,
    LedgerProblem,
    NeedKind,
    PaymentPosting,
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


@dataclass(frozen=True)
class XeroOptions:
    currency: str  # the firm's billing currency
    tenant_id: str | None = None  # else the token's realm
    sales_account: str | None = None  # AccountCode on lines whose item has none
    clearing_account: str | None = None  # Account code payments are booked into
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
        wanted = [a for a in (self.options.sales_account, self.options.clearing_account) if a]
        if not wanted:
            return []
        accounts = self._reference("accounts", self._fetch_accounts)
        problems = []
        sales = self.options.sales_account
        if sales:
            account = accounts.get(sales)
            if account is None or account["status"] != "ACTIVE":
                state = "does not exist" if account is None else "is archived"
                problems.append(
                    LedgerProblem(
                        NeedKind.ACCOUNT,
                        "sales_account",
                        f"the xero sales_account {sales} {state} in Xero: set it to the code of "
                        "an active revenue account",
                    )
                )
            elif account["type"] not in SALES_ACCOUNT_TYPES:
                problems.append(
                    LedgerProblem(
                        NeedKind.ACCOUNT,
                        "sales_account",
                        f"the xero sales_account {sales} is a {account['type']} account: set it "
                        "to the code of a revenue account",
                    )
                )
        clearing = self.options.clearing_account
        if clearing:
            account = accounts.get(clearing)
            if account is None or account["status"] != "ACTIVE":
                state = "does not exist" if account is None else "is archived"
                problems.append(
                    LedgerProblem(
                        NeedKind.ACCOUNT,
                        "clearing_account",
                        f"the xero clearing_account {clearing} {state} in Xero: set it to the "
                        "code of an active bank account (or one with payments enabled)",
                    )
                )
            elif not account["payments"]:
                problems.append(
                    LedgerProblem(
                        NeedKind.ACCOUNT,
                        "clearing_account",
                        f"Xero account {clearing} cannot receive payments: tick 'Enable "
                        "payments to this account' on it in Xero, or set clearing_account to a "
                        "bank account",
                    )
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

    def _fetch_tax_rates(self) -> dict[str, tuple[str, bool]]:
        result = self.client.call(
            "read Xero tax rates", self._api.get_tax_rates, self.client.tenant
        )
        return {
            str(rate.tax_type): (
                str(enum_value(rate.status)),
                rate.can_apply_to_revenue is not False,
            )
            for rate in result.tax_rates or []
        }

    def _fetch_accounts(self) -> dict[str, dict[str, Any]]:
        result = self.client.call("read Xero accounts", self._api.get_accounts, self.client.tenant)
        accounts = {}
        for account in result.accounts or []:
            kind = enum_value(account.type)
            accounts[str(account.code)] = {
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
