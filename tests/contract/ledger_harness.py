"""What the ledger contract suite needs around each `Ledger` implementation: the ledger itself,
and a back door into the ledger's own state (an emulator's, or the memory ledger's) to arrange
and inspect what the port cannot: customers, items, cheques paid in the ledger, voids, faults.

One harness per implementation (memory here; QuickBooks and Xero beside their emulators)."""

from __future__ import annotations

from typing import Protocol

from adapters.memory.faults import Fault
from adapters.memory.ledger import MemoryLedger
from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import AccountRole, Ledger, LedgerInvoice


class LedgerHarness(Protocol):
    ledger: Ledger
    currency: str  # the ledger's home currency, used by every contract test
    supports_drafts: bool  # invoices can wait for approval in the ledger (Xero DRAFT)

    def add_customer(self, name: str) -> LedgerCustomerId: ...

    def item(self) -> str:
        """An item (id or exact name, as an admin would configure it) that exists and sells."""
        ...

    def tax_code(self) -> str | None:
        """A tax code the ledger accepts on a sales line, or None where lines need none."""
        ...

    def archive_item(self, item: str) -> None: ...

    def pay_externally(self, invoice_id: LedgerInvoiceId, amount: Money) -> None:
        """Someone records a payment in the ledger itself (a cheque, the ledger's gateway)."""
        ...

    def void(self, invoice_id: LedgerInvoiceId) -> None: ...

    def approve(self, invoice_id: LedgerInvoiceId) -> None:
        """Approve a draft in the ledger (Xero: DRAFT -> AUTHORISED)."""
        ...

    def all_invoices(self) -> list[LedgerInvoice]:
        """Every invoice in the ledger's own state, read without the adapter."""
        ...

    def emailed(self, invoice_id: LedgerInvoiceId) -> int:
        """How many times the ledger emailed this invoice."""
        ...

    def drop_next_writes(self, count: int = 1) -> None:
        """The next `count` writes take effect, then the connection drops before the answer."""
        ...

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """The next `count` requests fail with `status` (503, 429) before anything happens."""
        ...

    def advance(self, seconds: float) -> None:
        """Move the ledger's clock (and the adapter's) forward."""
        ...

    def account(self, role: AccountRole) -> str:
        """The account the adapter is configured with for `role` (the money trail's accounts
        exist in the ledger and are configured)."""
        ...


class MemoryHarness:
    """The in-memory ledger, for the contract suite and as its reference behaviour."""

    currency = "USD"
    supports_drafts = True

    def __init__(self) -> None:
        self.memory = MemoryLedger()
        self.memory.supports_drafts = True
        self.ledger: Ledger = self.memory
        self._customers = 0
        self.memory.add_item("Professional Services")

    def add_customer(self, name: str) -> LedgerCustomerId:
        self._customers += 1
        customer = LedgerCustomerId(f"C{self._customers}")
        self.memory.add_customer(customer, name)
        return customer

    def item(self) -> str:
        return "Professional Services"

    def tax_code(self) -> str | None:
        return None

    def archive_item(self, item: str) -> None:
        self.memory.archive_item(item)

    def pay_externally(self, invoice_id: LedgerInvoiceId, amount: Money) -> None:
        self.memory.pay_externally(invoice_id, amount)

    def void(self, invoice_id: LedgerInvoiceId) -> None:
        self.memory.void(invoice_id)

    def approve(self, invoice_id: LedgerInvoiceId) -> None:
        self.memory.approve(invoice_id)

    def all_invoices(self) -> list[LedgerInvoice]:
        return self.memory.invoices()

    def emailed(self, invoice_id: LedgerInvoiceId) -> int:
        return self.memory.emails.count(invoice_id)

    def drop_next_writes(self, count: int = 1) -> None:
        for _ in range(count):
            self.memory.create_faults.push(Fault.TIMEOUT_AFTER_COMMIT)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        fault = Fault.RATE_LIMITED if status == 429 else Fault.UNAVAILABLE
        for _ in range(count):
            self.memory.create_faults.push(fault)

    def advance(self, seconds: float) -> None:
        self.memory.advance(seconds)

    def account(self, role: AccountRole) -> str:
        return role.value  # the memory ledger keeps its balances by role
