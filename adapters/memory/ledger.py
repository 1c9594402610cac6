"""An in-memory ledger: customers, items, invoices with balances, payments, idempotent creates,
batches, emails, a change feed and a pre-flight check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapters.memory._persist import load_state, save_state
from adapters.memory.faults import FaultQueue
from connector.domain.errors import RejectedError
from connector.domain.ids import IdempotencyKey, LedgerCustomerId, LedgerInvoiceId, LedgerPaymentId
from connector.domain.money import Money
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


class MemoryLedger:
    """Behaves like QuickBooks/Xero where it matters to the core: an idempotency key replays the
    first answer, unknown customers and archived items are rejected, payments reduce the
    balance, every change shows in the change feed.

    Items are checked only once one is added (`add_item`): the sandbox accepts any item name."""

    name = "memory"
    batch_limit = 25
    supports_drafts = False  # the sandbox approves in milestone-sync; tests may switch

    def __init__(
        self,
        customers: dict[str, str] | None = None,
        state_file: Path | None = None,
        *,
        currency: str = "USD",
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._file = state_file
        self._now = now or (lambda: datetime.now(UTC))
        self._offset = 0.0
        state = load_state(state_file)
        self._customers: dict[str, str] = state.get("customers", {})
        self._customers.update(customers or {})
        self._items: dict[str, bool] = state.get("items", {})  # name -> active
        self._currencies: list[str] = state.get("currencies", [currency])
        self._invoices: dict[str, dict[str, Any]] = state.get("invoices", {})
        self._payments: dict[str, dict[str, Any]] = state.get("payments", {})
        self._keys: dict[str, str] = state.get("keys", {})
        self.emails: list[str] = state.get("emails", [])
        self._entries: dict[str, dict[str, Any]] = state.get("entries", {})
        # balances of the accounts the money trail moves through, by role (clearing, bank...)
        self._balances: dict[str, str] = state.get("balances", {})
        self._currency = currency
        self.create_faults = FaultQueue()
        self.payment_faults = FaultQueue()
        self.calls: list[str] = []
        self.calls_left_today: int | None = None  # a daily request budget, like Xero's

    # ------------------------------------------------------------------ port

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        self.calls.append(f"create_invoice {draft.reference}")
        fault = self.create_faults.before("create invoice")
        invoice = self._create(draft, key)
        self._save()
        self.create_faults.after(fault, "create invoice")
        return invoice

    def create_invoices(self, items: Sequence[BatchItem]) -> list[LedgerInvoice | RejectedError]:
        if len(items) > self.batch_limit:
            raise ValueError(f"a batch holds at most {self.batch_limit} invoices")
        self.calls.append(f"create_invoices {len(items)}")
        fault = self.create_faults.before("create invoices")
        results: list[LedgerInvoice | RejectedError] = []
        for item in items:
            try:
                results.append(self._create(item.draft, item.key))
            except RejectedError as exc:
                results.append(exc)
        self._save()
        self.create_faults.after(fault, "create invoices")
        return results

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        self.calls.append(f"find_invoice {draft.reference}")
        return self._by_reference().get(draft.reference)

    def find_invoices(self, drafts: Sequence[InvoiceDraft]) -> dict[str, LedgerInvoice]:
        self.calls.append(f"find_invoices {len(drafts)}")
        wanted = {draft.reference for draft in drafts}
        return {ref: inv for ref, inv in self._by_reference().items() if ref in wanted}

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        self.calls.append(f"get_invoice {invoice_id}")
        return self._invoice(invoice_id)

    def send_invoice(self, invoice_id: LedgerInvoiceId, key: IdempotencyKey) -> LedgerInvoice:
        self.calls.append(f"send_invoice {invoice_id}")
        if f"send:{key}" not in self._keys:
            row = self._row(invoice_id)
            if row["status"] != "open":
                raise RejectedError(
                    f"invoice {row['number']} is {row['status']}: only an approved, open invoice "
                    "can be emailed"
                )
            row["sent"] = True
            self._touch(row)
            self.emails.append(invoice_id)
            self._keys[f"send:{key}"] = invoice_id
            self._save()
        return self._invoice(invoice_id)

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId:
        self.calls.append(f"record_payment {posting.reference}")
        fault = self.payment_faults.before("record payment")
        if f"payment:{key}" in self._keys:
            return LedgerPaymentId(self._keys[f"payment:{key}"])
        payment_id = self._apply_payment(
            posting.invoice_id, posting.amount, posting.reference, posting.paid_on, clearing=True
        )
        self._keys[f"payment:{key}"] = payment_id
        self._save()
        self.payment_faults.after(fault, "record payment")
        return payment_id

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        for payment_id, row in self._payments.items():
            if row["reference"] == posting.reference:
                return LedgerPaymentId(payment_id)
        return None

    def changes(self, since: datetime) -> LedgerChanges:
        self.calls.append("changes")
        now = self.now()
        changed = [
            self._invoice(LedgerInvoiceId(invoice_id))
            for invoice_id, row in self._invoices.items()
            if datetime.fromisoformat(row.get("updated", now.isoformat())) >= since
        ]
        return LedgerChanges(invoices=changed, until=now)

    def check(self, needs: LedgerNeeds) -> list[LedgerProblem]:
        self.calls.append("check")
        problems = [
            LedgerProblem(
                NeedKind.CUSTOMER,
                customer,
                f"customer {customer} does not exist in the ledger: map the client to an "
                "existing customer id",
            )
            for customer in sorted(needs.customers - set(self._customers))
        ]
        if self._items:
            for item in sorted(needs.items):
                if item not in self._items:
                    problems.append(
                        LedgerProblem(
                            NeedKind.ITEM,
                            item,
                            f"item {item!r} does not exist in the ledger: create it or fix the "
                            "item in the mapping config",
                        )
                    )
                elif not self._items[item]:
                    problems.append(
                        LedgerProblem(
                            NeedKind.ITEM,
                            item,
                            f"item {item!r} is archived in the ledger: restore it or use "
                            "another item in the mapping config",
                        )
                    )
        problems += [
            LedgerProblem(
                NeedKind.CURRENCY,
                currency,
                f"currency {currency} is not enabled in the ledger: enable it there, or bill "
                f"in {self._currencies[0]}",
            )
            for currency in sorted(needs.currencies - set(self._currencies))
        ]
        return problems

    def post_entry(self, entry: LedgerEntry, key: IdempotencyKey) -> str:
        self.calls.append(f"post_entry {type(entry).__name__} {entry.reference}")
        fault = self.payment_faults.before("post entry")
        if f"entry:{key}" in self._keys:
            return self._keys[f"entry:{key}"]
        amount = entry.amount.amount
        effects: list[tuple[AccountRole, Decimal]] = []
        if isinstance(entry, TransferEntry):
            effects = [(entry.from_account, -amount), (entry.to_account, amount)]
        elif isinstance(entry, FeeEntry):
            effects = [(AccountRole.CLEARING, -amount), (AccountRole.FEES, amount)]
        elif isinstance(entry, RefundEntry):
            self._row(entry.invoice_id)  # refunds belong to an invoice of ours
            effects = [(entry.from_account, -amount)]
        elif isinstance(entry, ReturnedPaymentEntry):
            self._row(entry.invoice_id)
            effects = [(AccountRole.CLEARING, -amount)]
        for role, change in effects:
            self._add(role, change)
        entry_id = f"ENT-{len(self._entries) + 1}"
        self._entries[entry_id] = {
            "type": type(entry).__name__,
            "reference": entry.reference,
            "amount": str(amount),
            "currency": entry.amount.currency,
            "on": entry.on.isoformat(),
            "effects": [[role.value, str(change)] for role, change in effects],
        }
        self._keys[f"entry:{key}"] = entry_id
        self._save()
        self.payment_faults.after(fault, "post entry")
        return entry_id

    def find_entry(self, entry: LedgerEntry) -> str | None:
        for entry_id, row in self._entries.items():
            if row["type"] == type(entry).__name__ and row["reference"] == entry.reference:
                return entry_id
        return None

    def account_balance(self, role: AccountRole) -> Money:
        return Money(self._balances.get(role.value, "0"), self._currency)

    def payments_since(self, since: date) -> list[LedgerPayment]:
        return [
            LedgerPayment(
                id=LedgerPaymentId(payment_id),
                reference=row["reference"] if row.get("clearing") else None,
                invoice_id=LedgerInvoiceId(row["invoice"]),
                amount=Money(row["amount"], row["currency"]),
                paid_on=date.fromisoformat(row["paid_on"]),
                account=AccountRole.CLEARING if row.get("clearing") else None,
            )
            for payment_id, row in self._payments.items()
            if date.fromisoformat(row.get("paid_on", "1970-01-01")) >= since
        ]

    def delete_entry(self, entry_id: str) -> None:
        """Someone deleted one of our entries in the ledger by hand (for reconcile tests)."""
        row = self._entries.pop(entry_id)
        for role, change in row["effects"]:
            self._add(AccountRole(role), -Decimal(change))
        self._save()

    def entries(self) -> list[dict[str, Any]]:
        return [dict(row, id=entry_id) for entry_id, row in self._entries.items()]

    def capacity_warning(self, pending_invoices: int) -> str | None:
        if self.calls_left_today is None or pending_invoices <= self.calls_left_today:
            return None
        return (
            f"{pending_invoices} invoices need about {pending_invoices} calls, "
            f"{self.calls_left_today} are left today: the rest post tomorrow"
        )

    # ------------------------------------------------------------------ test and sandbox controls

    def now(self) -> datetime:
        return self._now() + timedelta(seconds=self._offset)

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def add_customer(self, customer_id: str, name: str) -> None:
        self._customers[customer_id] = name
        self._save()

    def add_item(self, name: str) -> None:
        self._items[name] = True
        self._save()

    def archive_item(self, name: str) -> None:
        self._items[name] = False
        self._save()

    def pay_externally(self, invoice_id: str, amount: Money, reference: str = "cheque") -> str:
        """A payment recorded in the ledger by someone else (a cheque, the ledger's own gateway)."""
        payment_id = self._apply_payment(
            LedgerInvoiceId(invoice_id), amount, reference, self.now().date(), clearing=False
        )
        self._save()
        return payment_id

    def approve(self, invoice_id: str) -> None:
        row = self._row(LedgerInvoiceId(invoice_id))
        row["status"] = "open"
        self._touch(row)
        self._save()

    def void(self, invoice_id: str) -> None:
        row = self._row(LedgerInvoiceId(invoice_id))
        row["status"] = "voided"
        self._touch(row)
        self._save()

    def invoices(self) -> list[LedgerInvoice]:
        return [self._invoice(LedgerInvoiceId(i)) for i in self._invoices]

    def payments(self) -> list[dict[str, Any]]:
        return [dict(row, id=pid) for pid, row in self._payments.items()]

    # ------------------------------------------------------------------ internals

    def _create(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        if f"invoice:{key}" in self._keys:
            return self._invoice(LedgerInvoiceId(self._keys[f"invoice:{key}"]))
        if draft.customer_id not in self._customers:
            raise RejectedError(
                f"customer {draft.customer_id} does not exist in the ledger: map the client to "
                "an existing customer id",
                code="customer_not_found",
            )
        for line in draft.lines:
            if self._items and line.item is not None and not self._items.get(line.item, False):
                raise RejectedError(
                    f"item {line.item!r} does not exist or is archived in the ledger: restore "
                    "it or use another item in the mapping config",
                    code="item_not_found",
                )
        total = draft.total
        if total.currency not in self._currencies:
            raise RejectedError(f"currency {total.currency} is not enabled in the ledger")
        if draft.doc_number and any(
            r["number"] == draft.doc_number for r in self._invoices.values()
        ):
            raise RejectedError(
                f"invoice number {draft.doc_number} is already used in the ledger",
                code="duplicate_number",
            )
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
            "sent": False,
            "updated": self.now().isoformat(),
        }
        self._keys[f"invoice:{key}"] = invoice_id
        return self._invoice(LedgerInvoiceId(invoice_id))

    def _row(self, invoice_id: LedgerInvoiceId) -> dict[str, Any]:
        row = self._invoices.get(invoice_id)
        if row is None:
            raise RejectedError(f"invoice {invoice_id} does not exist in the ledger")
        return row

    def _touch(self, row: dict[str, Any]) -> None:
        row["updated"] = self.now().isoformat()

    def _invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice:
        row = self._row(invoice_id)
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
            sent=bool(row.get("sent")),
        )

    def _by_reference(self) -> dict[str, LedgerInvoice]:
        return {
            row["reference"]: self._invoice(LedgerInvoiceId(invoice_id))
            for invoice_id, row in self._invoices.items()
        }

    def _apply_payment(
        self,
        invoice_id: LedgerInvoiceId,
        amount: Money,
        reference: str,
        paid_on: date,
        *,
        clearing: bool,
    ) -> LedgerPaymentId:
        invoice = self._invoice(invoice_id)
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
            "paid_on": paid_on.isoformat(),
            "clearing": clearing,
        }
        if clearing:
            self._add(AccountRole.CLEARING, amount.amount)
        row = self._invoices[invoice_id]
        row["paid"] = str(Decimal(row["paid"]) + amount.amount)
        self._touch(row)
        return payment_id

    def _add(self, role: AccountRole, amount: Decimal) -> None:
        self._balances[role.value] = str(Decimal(self._balances.get(role.value, "0")) + amount)

    def _save(self) -> None:
        save_state(
            self._file,
            {
                "customers": self._customers,
                "items": self._items,
                "currencies": self._currencies,
                "invoices": self._invoices,
                "payments": self._payments,
                "keys": self._keys,
                "emails": self.emails,
                "entries": self._entries,
                "balances": self._balances,
            },
        )
