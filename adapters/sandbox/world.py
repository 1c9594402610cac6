"""The demo firm's outside world: the Karbon, close-checklist, ledger (QuickBooks or Xero) and
Stripe emulators on loopback, all on one clock, seeded with the firm's clients, work, books and
accounts; and what people do there during the month (preparers moving work, bookkeepers
ticking off closes, a client posting a cheque, a partner approving a draft in Xero)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from adapters.emulation.clock import EmulatedTime
from adapters.karbon.emulator import KarbonEmulator
from adapters.keeper.emulator import CloseChecklistEmulator
from adapters.sandbox.firm import (
    FIRM_NAME,
    START,
    Close,
    CloseMove,
    Firm,
    Step,
    WorkMove,
)
from adapters.stripe.emulator import StripeEmulator


@dataclass(frozen=True)
class Secrets:
    """Made-up keys the emulators accept, generated per run; never a real credential."""

    karbon_token: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(24))
    karbon_access_key: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(24))
    karbon_signing_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    closes_token: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(24))
    closes_webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ledger_client_id: str = field(default_factory=lambda: "demo-" + secrets.token_hex(12))
    ledger_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    stripe_key: str = field(default_factory=lambda: "sk_test_demo" + secrets.token_hex(16))

    def __repr__(self) -> str:  # never in a log
        return "Secrets()"


@dataclass(frozen=True)
class LedgerSetup:
    """What the config says about the seeded ledger (items, tax code, money-trail accounts)."""

    kind: str
    label: str
    tax_item: str
    bookkeeping_item: str
    advisory_item: str
    tax_code: str
    options: dict[str, str]


class QuickBooksBooks:
    """The QuickBooks Online company: items, the money trail's accounts, one customer each."""

    kind = "quickbooks"

    def __init__(self, time: EmulatedTime, keys: Secrets) -> None:
        from adapters.quickbooks.emulator import QuickBooksEmulator

        self.emulator = QuickBooksEmulator(
            time=time,
            client_id=keys.ledger_client_id,
            client_secret=keys.ledger_client_secret,
            company_name=FIRM_NAME,
        )
        self.setup = LedgerSetup(
            kind="quickbooks",
            label="QuickBooks Online",
            tax_item="Tax Preparation",
            bookkeeping_item="Bookkeeping",
            advisory_item="Advisory",
            tax_code="NON",  # professional services: not taxable
            options={
                "minorversion": "75",
                "invoice_number": "SC-{seq:05d}",
                "clearing_account": "Stripe Clearing",
                "bank_account": "Checking",
                "fee_account": "Stripe Fees",
                "disputes_account": "Stripe Disputes",
            },
        )

    def seed(self) -> None:
        for name, kind in (
            ("Stripe Clearing", "Other Current Asset"),
            ("Stripe Fees", "Expense"),
            ("Stripe Disputes", "Other Current Asset"),
        ):
            self.emulator.add_account(name, kind)  # "Checking" comes with every company
        for item in (self.setup.tax_item, self.setup.bookkeeping_item, self.setup.advisory_item):
            self.emulator.add_item(item)

    def add_customer(self, name: str, email: str) -> str:
        return self.emulator.add_customer(name, email=email)

    def invoices(self) -> list[dict[str, Any]]:
        return self.emulator.invoices()

    def pay_by_cheque(self, invoice_id: str, amount: Decimal, number: int) -> None:
        self.emulator.pay_externally(invoice_id, amount, reference=f"cheque {number}")

    def drafts(self) -> list[str]:
        return []  # QuickBooks Online has no draft invoices: approval happens in milestone-sync

    def approve(self, invoice_id: str) -> None:
        raise NotImplementedError("QuickBooks Online has no draft invoices")

    def violations(self) -> list[str]:
        return self.emulator.violations() + self.emulator.internal_errors


class XeroBooks:
    """The Xero organisation: items on the Sales account, the money trail's accounts."""

    kind = "xero"

    def __init__(self, time: EmulatedTime, keys: Secrets) -> None:
        from adapters.xero.emulator import XeroEmulator

        self.emulator = XeroEmulator(
            time=time,
            organisations=(FIRM_NAME,),
            client_id=keys.ledger_client_id,
            client_secret=keys.ledger_client_secret,
        )
        self.setup = LedgerSetup(
            kind="xero",
            label="Xero",
            tax_item="TAX",
            bookkeeping_item="BOOK",
            advisory_item="ADV",
            tax_code="NONE",
            options={
                "sales_account": "200",
                "invoice_number": "SC-{seq:05d}",
                "clearing_account": "091",
                "bank_account": "092",
                "fee_account": "404",
                "disputes_account": "615",
                "line_amount_types": "Exclusive",
            },
        )

    def seed(self) -> None:
        # as a firm taking Stripe payments sets Xero up (tests/contract/harness_xero.py)
        for code, name, kind, payments in (
            ("091", "Stripe", "BANK", False),
            ("092", "Business Bank", "BANK", False),
            ("404", "Stripe Fees", "EXPENSE", False),
            ("615", "Stripe Disputes", "CURRENT", True),
        ):
            self.emulator.add_account(code, name, kind, enable_payments=payments)
        for code, name in (
            ("TAX", "Tax Preparation"),
            ("BOOK", "Bookkeeping"),
            ("ADV", "Advisory"),
        ):
            self.emulator.add_item(code, name, account_code="200")

    def add_customer(self, name: str, email: str) -> str:
        return self.emulator.add_contact(name, email=email)

    def invoices(self) -> list[dict[str, Any]]:
        return self.emulator.invoices()

    def pay_by_cheque(self, invoice_id: str, amount: Decimal, number: int) -> None:
        # into the organisation's own bank account, never the Stripe clearing account
        self.emulator.pay_externally(
            invoice_id, amount, account_code="090", reference=f"cheque {number}"
        )

    def drafts(self) -> list[str]:
        return [str(i["InvoiceID"]) for i in self.emulator.invoices() if i["Status"] == "DRAFT"]

    def approve(self, invoice_id: str) -> None:
        self.emulator.approve(invoice_id)

    def violations(self) -> list[str]:
        return self.emulator.violations()


Books = QuickBooksBooks | XeroBooks


class World:
    """Every emulator the demo firm's systems run on, started on loopback on one clock."""

    def __init__(self, firm: Firm, ledger: str, time: EmulatedTime, daemon_port: int) -> None:
        if ledger not in ("quickbooks", "xero"):
            raise ValueError(f"ledger must be quickbooks or xero, not {ledger!r}")
        self.firm = firm
        self.time = time
        self.keys = Secrets()
        self.daemon_url = f"http://127.0.0.1:{daemon_port}"
        self.karbon = KarbonEmulator(
            app_token=self.keys.karbon_token,
            access_keys=(self.keys.karbon_access_key,),
            clock=time.now,
            seed=firm.seed,
        )
        self.closes = CloseChecklistEmulator(
            token=self.keys.closes_token,
            clock=time.now,
            monotonic=time.monotonic,  # its rate limit counts minutes of the demo's clock
            webhook_url=f"{self.daemon_url}/webhooks/closes",
            webhook_secret=self.keys.closes_webhook_secret,
        )
        self.books: Books = (
            QuickBooksBooks(time, self.keys)
            if ledger == "quickbooks"
            else XeroBooks(time, self.keys)
        )
        self.stripe = StripeEmulator(time=time, api_keys=(self.keys.stripe_key,))
        self.customers: dict[str, str] = {}  # client key -> ledger customer id
        self.close_ids: dict[tuple[str, str], str] = {}  # (client key, period) -> close id
        self.cheques = 0
        self._started: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for emulator in (self.karbon, self.closes, self.books.emulator, self.stripe):
            emulator.start()
            self._started.append(emulator)

    def stop(self) -> None:
        while self._started:
            self._started.pop().stop()

    @property
    def ledger_url(self) -> str:
        return self.books.emulator.url

    # -- seeding -----------------------------------------------------------------------------

    def seed(self) -> None:
        """The firm as it stands the evening before the month begins: the ledger's items,
        accounts and customers; every client in Karbon (linked to its ledger customer by
        ExternalKey); each tax return and project Planned; each close Not Started."""
        self.books.seed()
        for client in self.firm.clients:
            self.customers[client.key] = self.books.add_customer(client.name, client.email)
        for client in self.firm.clients:
            self.karbon.add_client(
                client.key,
                client.name,
                external_key=self.customers[client.key],
                email_address=client.email,
            )
        for item in self.firm.work:
            self.karbon.add_work_item(
                key=item.key,
                client_key=item.client.key,
                title=item.title,
                work_type=item.work_type,
                start_date=START.date(),
                fee=item.fee,
            )
        for close in self.firm.closes:
            self.closes.add_client(
                close.client.key,
                close.client.name,
                ledger_customer_id=self.customers[close.client.key],
                ledger=self.books.kind,
            )
            self.close_ids[(close.client.key, close.period)] = self.closes.open_close(
                close.client.key, close.period
            )

    def close_id(self, close: Close) -> str:
        return self.close_ids[(close.client.key, close.period)]

    # -- the month ---------------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        """One person's move in the practice systems."""
        move = step.move
        if isinstance(move, WorkMove):
            self.karbon.set_status(move.item.key, move.primary, move.secondary)
        elif isinstance(move, CloseMove):
            close_id = self.close_id(move.close)
            for section in move.sections:
                self.closes.complete_section(close_id, section)
            if move.status is not None:
                self.closes.set_close_status(close_id, move.status)

    def deliver_webhooks(self) -> int:
        """Karbon's and the close tool's pushes that are due, to the daemon's receivers."""
        return self.karbon.pump() + self.closes.pump()

    def pay_by_cheque(self, invoice_id: str, amount: Decimal) -> None:
        self.cheques += 1
        self.books.pay_by_cheque(invoice_id, amount, 1000 + self.cheques)

    def violations(self) -> list[str]:
        """Requests a vendor would have refused, and emulator bugs: both must stay empty."""
        return (
            self.karbon.violations()
            + self.karbon.internal_errors
            + self.closes.violations()
            + self.books.violations()
            + self.stripe.violations()
            + self.stripe.internal_errors
        )
