"""Dry runs: the real cycle against a scratch copy of state, with writes recorded, not sent."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from adapters.memory.store import MemoryStore
from connector.domain.errors import RejectedError
from connector.domain.ids import (
    ChargeId,
    ClientKey,
    IdempotencyKey,
    LedgerInvoiceId,
    LedgerPaymentId,
)
from connector.domain.money import Money
from connector.ports import (
    AccountRole,
    BatchItem,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    InvoiceDraft,
    Ledger,
    LedgerChanges,
    LedgerEntry,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerNeeds,
    LedgerPayment,
    LedgerProblem,
    MoneyMovement,
    MovementPage,
    PaymentGateway,
    PaymentPosting,
    SavedMethod,
    SetupLink,
    UnitOfWork,
    UnitOfWorkFactory,
)


@dataclass
class DryRunLedger:
    """Reads go to the real ledger (when there is one); creates are recorded and faked."""

    real: Ledger | None
    created: list[InvoiceDraft] = field(default_factory=list)
    payments: list[PaymentPosting] = field(default_factory=list)
    sent: list[LedgerInvoiceId] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)
    _fake: dict[str, LedgerInvoice] = field(default_factory=dict)
    batch_limit = 1  # a dry run records invoices one by one

    @property
    def supports_drafts(self) -> bool:
        return self.real.supports_drafts if self.real else False

    @property
    def name(self) -> str:
        return f"dry run of {self.real.name}" if self.real else "dry run"

    def create_invoices(self, items: Sequence[BatchItem]) -> list[LedgerInvoice | RejectedError]:
        return [self.create_invoice(item.draft, item.key) for item in items]

    def find_invoices(self, drafts: Sequence[InvoiceDraft]) -> Mapping[str, LedgerInvoice]:
        return self.real.find_invoices(drafts) if self.real else {}

    def send_invoice(self, invoice_id: LedgerInvoiceId, key: IdempotencyKey) -> LedgerInvoice:
        self.sent.append(invoice_id)
        return dataclasses.replace(self.get_invoice(invoice_id), sent=True)

    def changes(self, since: datetime) -> LedgerChanges:
        if self.real is None:
            return LedgerChanges(invoices=(), until=since)
        return self.real.changes(since)

    def check(self, needs: LedgerNeeds) -> Sequence[LedgerProblem]:
        return self.real.check(needs) if self.real else ()

    def capacity_warning(self, pending_invoices: int) -> str | None:
        return self.real.capacity_warning(pending_invoices) if self.real else None

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        self.created.append(draft)
        invoice = LedgerInvoice(
            id=LedgerInvoiceId(f"(new {len(self.created)})"),
            number=None,
            reference=draft.reference,
            customer_id=draft.customer_id,
            total=draft.total,
            balance=draft.total,
            status=LedgerInvoiceStatus.DRAFT if draft.draft else LedgerInvoiceStatus.OPEN,
            due_date=draft.due_date,
        )
        self._fake[invoice.id] = invoice
        return invoice

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        return self.real.find_invoice(draft) if self.real else None

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        if invoice_id in self._fake:
            return self._fake[invoice_id]
        if self.real is None:
            raise RejectedError(f"invoice {invoice_id}: no ledger connection to read it from")
        return self.real.get_invoice(invoice_id)

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId:
        self.payments.append(posting)
        return LedgerPaymentId(f"(payment {len(self.payments)})")

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        return self.real.find_payment(posting) if self.real else None

    def post_entry(self, entry: LedgerEntry, key: IdempotencyKey) -> str:
        self.entries.append(entry)
        return f"(entry {len(self.entries)})"

    def find_entry(self, entry: LedgerEntry) -> str | None:
        return self.real.find_entry(entry) if self.real else None

    def account_balance(self, role: AccountRole) -> Money:
        if self.real is None:
            raise RejectedError("no ledger connection to read a balance from")
        return self.real.account_balance(role)

    def payments_since(self, since: date) -> Sequence[LedgerPayment]:
        return self.real.payments_since(since) if self.real else ()


@dataclass
class DryRunGateway:
    real: PaymentGateway | None
    charges: list[ChargeRequest] = field(default_factory=list)

    def saved_method(self, client_key: ClientKey) -> SavedMethod | None:
        return self.real.saved_method(client_key) if self.real else None

    def charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult:
        self.charges.append(request)
        # Reported as processing: a dry run cannot know the outcome, and must not book it.
        return ChargeResult(
            id=ChargeId(f"(charge {len(self.charges)})"),
            status=ChargeStatus.PROCESSING,
            amount=request.amount,
        )

    def find_charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult | None:
        return self.real.find_charge(request, key) if self.real else None

    def get_charge(self, charge_id: ChargeId) -> ChargeResult:
        if self.real is None or charge_id.startswith("("):
            raise RejectedError(f"charge {charge_id} is not known outside this dry run")
        return self.real.get_charge(charge_id)

    def invite(self, client_key: ClientKey, client_name: str, email: str | None) -> SetupLink:
        raise RejectedError("a dry run sends no invitations")

    def movements(self, cursor: str | None) -> MovementPage:
        # reads only: what the trail would book is recorded by the dry-run ledger
        return self.real.movements(cursor) if self.real else MovementPage((), cursor)

    def balance(self) -> Money:
        if self.real is None:
            raise RejectedError("no payment gateway to read a balance from")
        return self.real.balance()

    def payout_movements(self, payout_id: str) -> Sequence[MoneyMovement]:
        return self.real.payout_movements(payout_id) if self.real else ()


def scratch_copy(
    source: UnitOfWorkFactory | None, tenant: str, source_ids: Sequence[str]
) -> MemoryStore:
    """A MemoryStore holding a copy of the tenant's stored state (or empty)."""
    scratch = MemoryStore()
    if source is None:
        return scratch
    with source() as real, scratch.unit_of_work(tenant) as copy:
        for client in real.clients.list():
            copy.clients.upsert(client)
        for engagement in real.engagements.list():
            copy.engagements.upsert(engagement)
        for milestone in real.milestones.list():
            copy.milestones.add(milestone)
        for stored in real.phases.list():
            copy.phases.add(stored.phase)
            copy.phases.mark(_last_phase_id(copy), stored.status, stored.reason)
        for op in real.operations.list():
            copy.operations.add(op)
        for source_id in source_ids:
            copy.cursors.set(source_id, "phases", real.cursors.get(source_id, "phases"))
        copy.commit()
    return scratch


def _last_phase_id(uow: UnitOfWork) -> int:
    return uow.phases.list()[-1].id
