"""An in-memory ledger: customers, invoices with balances, payments, idempotent creates."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.memory._persist import load_state, save_state
from adapters.memory.faults import FaultQueue
from connector.domain.errors import RejectedError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import Money
from connector.ports import InvoiceDraft, LedgerInvoice, LedgerInvoiceStatus, PaymentPosting


class MemoryLedger:
    """Behaves like QuickBooks/Xero where it matters to the core: an idempotency key replays the
    first answer, unknown customers are rejected, payments reduce the balance."""

    name = "memory"

    def __init__(
        self, customers: dict[str, str] | None = None, state_file: Path | None = None
    ) -> None:
        self._file = state_file
        state = load_state(state_file)
        self._customers: dict[str, str] = state.get("customers", {})
        self._customers.update(customers or {})
        self._invoices: dict[str, dict[str, Any]] = state.get("invoices", {})
        self._payments: dict[str, dict[str, Any]] = state.get("payments", {})
        self._keys: dict[str, str] = state.get("keys", {})
        self.create_faults = FaultQueue()
        self.payment_faults = FaultQueue()
        self.calls: list[str] = []

    # ------------------------------------------------------------------ port

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        self.calls.append(f"create_invoice {draft.reference}")
        fault = self.create_faults.before("create invoice")
        if f"invoice:{key}" in self._keys:
            return self.get_invoice(LedgerInvoiceId(self._keys[f"invoice:{key}"]))
        if draft.customer_id not in self._customers:
            raise RejectedError(
                f"customer {draft.customer_id} does not exist in the ledger: map the client to "
                "an existing customer id",
                code="customer_not_found",
            )
        total = draft.total
        number = str(1001 + len(self._invoices))
        invoice_id = f"INV-{len(self._invoices) + 1}"
        self._invoices[invoice_id] = {
            "number": draft.doc_number or number,
            "reference": draft.reference,
            "customer": draft.customer_id,
            "currency": total.currency,
            "total": str(total.amount),
            "paid": "0",
            "status": "draft" if draft.draft else "open",
            "due": draft.due_date.isoformat() if draft.due_date else None,
            "lines": [[line.description, str(line.amount.amount)] for line in draft.lines],
            "sent": draft.send,
        }
        self._keys[f"invoice:{key}"] = invoice_id
        self._save()
        self.create_faults.after(fault, "create invoice")
        return self.get_invoice(LedgerInvoiceId(invoice_id))

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        self.calls.append(f"find_invoice {draft.reference}")
        for invoice_id, row in self._invoices.items():
            if row["reference"] == draft.reference:
                return self.get_invoice(LedgerInvoiceId(invoice_id))
        return None

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        row = self._invoices.get(invoice_id)
        if row is None:
            raise RejectedError(f"invoice {invoice_id} does not exist in the ledger")
        total = Money(row["total"], row["currency"])
        balance = Money(Decimal(row["total"]) - Decimal(row["paid"]), row["currency"])
        status = LedgerInvoiceStatus(row["status"])
        if status is LedgerInvoiceStatus.OPEN and balance.is_zero():
            status = LedgerInvoiceStatus.PAID
        return LedgerInvoice(
            id=invoice_id,
            number=row["number"],
            reference=row["reference"],
            customer_id=LedgerCustomerId(row["customer"]),
            total=total,
            balance=balance,
            status=status,
            due_date=date.fromisoformat(row["due"]) if row["due"] else None,
        )

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId:
        self.calls.append(f"record_payment {posting.reference}")
        fault = self.payment_faults.before("record payment")
        if f"payment:{key}" in self._keys:
            return LedgerPaymentId(self._keys[f"payment:{key}"])
        payment_id = self._apply_payment(posting.invoice_id, posting.amount, posting.reference)
        self._keys[f"payment:{key}"] = payment_id
        self._save()
        self.payment_faults.after(fault, "record payment")
        return payment_id

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        for payment_id, row in self._payments.items():
            if row["reference"] == posting.reference:
                return LedgerPaymentId(payment_id)
        return None

    # ------------------------------------------------------------------ test and sandbox controls

    def add_customer(self, customer_id: str, name: str) -> None:
        self._customers[customer_id] = name
        self._save()

    def pay_externally(self, invoice_id: str, amount: Money, reference: str = "cheque") -> str:
        """A payment recorded in the ledger by someone else (a cheque, the ledger's own gateway)."""
        payment_id = self._apply_payment(LedgerInvoiceId(invoice_id), amount, reference)
        self._save()
        return payment_id

    def approve(self, invoice_id: str) -> None:
        self._invoices[invoice_id]["status"] = "open"
        self._save()

    def void(self, invoice_id: str) -> None:
        self._invoices[invoice_id]["status"] = "voided"
        self._save()

    def invoices(self) -> list[LedgerInvoice]:
        return [self.get_invoice(LedgerInvoiceId(i)) for i in self._invoices]

    def payments(self) -> list[dict[str, Any]]:
        return [dict(row, id=pid) for pid, row in self._payments.items()]

    def _apply_payment(
        self, invoice_id: LedgerInvoiceId, amount: Money, reference: str
    ) -> LedgerPaymentId:
        invoice = self.get_invoice(invoice_id)
        if amount.currency != invoice.total.currency:
            raise RejectedError(
                f"payment in {amount.currency} against a {invoice.total.currency} invoice"
            )
        if amount > invoice.balance:
            raise RejectedError(f"payment of {amount} exceeds the open balance {invoice.balance}")
        payment_id = LedgerPaymentId(f"PMT-{len(self._payments) + 1}")
        self._payments[payment_id] = {
            "invoice": invoice_id,
            "amount": str(amount.amount),
            "currency": amount.currency,
            "reference": reference,
        }
        row = self._invoices[invoice_id]
        row["paid"] = str(Decimal(row["paid"]) + amount.amount)
        return payment_id

    def _save(self) -> None:
        save_state(
            self._file,
            {
                "customers": self._customers,
                "invoices": self._invoices,
                "payments": self._payments,
                "keys": self._keys,
            },
        )
