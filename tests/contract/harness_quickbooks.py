"""The ledger contract harness for QuickBooks Online: the QuickBooks emulator on loopback, the
real adapter (python-quickbooks over HTTP) in front of it, and the emulator's admin API as the
back door. `EmulatorTokens` stands in for adapters/oauth's TokenManager: it takes its first
token from the emulator's `connect()` and refreshes at the emulator's token endpoint."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import requests
from quickbooks.objects.invoice import Invoice

from adapters.emulation.clock import EmulatedTime
from adapters.quickbooks.adapter import QuickBooksLedger, QuickBooksOptions
from adapters.quickbooks.emulator import QuickBooksEmulator
from adapters.quickbooks.translate import to_ledger_invoice
from connector.domain.errors import ConfigError
from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import AccountRole, LedgerInvoice, OAuthToken

REFRESH_MARGIN = timedelta(minutes=5)


class EmulatorTokens:
    """`AccessTokens` over the emulator's OAuth server (test helper, not the real manager)."""

    connection = "quickbooks"

    def __init__(self, emulator: QuickBooksEmulator, time: EmulatedTime) -> None:
        self._emulator = emulator
        self._time = time
        self._lock = threading.Lock()
        self._token = self._from_body(emulator.connect(), emulator.realm_id)
        self.refreshes = 0

    def _from_body(self, body: dict[str, object], realm: str | None) -> OAuthToken:
        now = self._time.now()
        return OAuthToken(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_at=now + timedelta(seconds=int(str(body["expires_in"]))),
            refresh_expires_at=now
            + timedelta(seconds=int(str(body.get("x_refresh_token_expires_in", 0)))),
            realm=realm,
        )

    def current(self) -> OAuthToken:
        with self._lock:
            if self._token.expires_at - self._time.now() < REFRESH_MARGIN:
                self._token = self._refresh_locked()
            return self._token

    def refresh(self, rejected: OAuthToken) -> OAuthToken:
        with self._lock:
            if rejected.access_token != self._token.access_token:
                return self._token  # someone else refreshed meanwhile
            self._token = self._refresh_locked()
            return self._token

    def _refresh_locked(self) -> OAuthToken:
        answer = requests.post(
            self._emulator.token_url,
            data={"grant_type": "refresh_token", "refresh_token": self._token.refresh_token},
            auth=(self._emulator.client_id, self._emulator.client_secret),
            timeout=10,
        )
        if answer.status_code != 200:
            raise ConfigError(
                f"QuickBooks refused the refresh ({answer.status_code}): run "
                "`milestone-sync connect quickbooks`"
            )
        self.refreshes += 1
        return self._from_body(answer.json(), self._token.realm)


# The money trail's accounts as a firm would name them ("Checking" comes with every company)
ACCOUNTS = {
    AccountRole.CLEARING: ("Stripe Clearing", "Other Current Asset"),
    AccountRole.BANK: ("Checking", "Bank"),
    AccountRole.FEES: ("Stripe Fees", "Expense"),
    AccountRole.DISPUTES: ("Stripe Disputes", "Other Current Asset"),
}


class QuickBooksHarness:
    """`LedgerHarness` over the QuickBooks emulator and the real adapter, configured with all
    four money-trail accounts (by exact name, as an admin would)."""

    currency = "USD"
    supports_drafts = False  # QBO invoices are never drafts

    def __init__(
        self,
        *,
        scale: float = 60.0,
        time: EmulatedTime | None = None,
        options: QuickBooksOptions | None = None,
        **emulator_options: object,
    ) -> None:
        # scaled time: QBO's 60-second throttle waits pass in a second
        self.time = time or EmulatedTime(scale=scale)
        self.emulator = QuickBooksEmulator(time=self.time, **emulator_options)  # type: ignore[arg-type]
        self.emulator.start()
        self.tokens = EmulatorTokens(self.emulator, self.time)
        for name, account_type in ACCOUNTS.values():
            if name != "Checking":  # seeded
                self.emulator.add_account(name, account_type)
        self._item = "Professional Services"
        self.emulator.add_item(self._item)
        self.options = options or QuickBooksOptions(
            currency=self.currency,
            clearing_account=ACCOUNTS[AccountRole.CLEARING][0],
            bank_account=ACCOUNTS[AccountRole.BANK][0],
            fee_account=ACCOUNTS[AccountRole.FEES][0],
            disputes_account=ACCOUNTS[AccountRole.DISPUTES][0],
        )
        self.quickbooks = QuickBooksLedger(
            self.tokens, self.options, api_url=self.emulator.api_url, time=self.time
        )
        self.ledger = self.quickbooks

    def close(self) -> None:
        self.emulator.stop()

    def add_customer(self, name: str) -> LedgerCustomerId:
        slug = re.sub(r"[^a-z0-9]+", ".", name.lower()).strip(".") or "customer"
        return LedgerCustomerId(self.emulator.add_customer(name, email=f"{slug}@example.com"))

    def item(self) -> str:
        return self._item

    def account(self, role: AccountRole) -> str:
        """The account configured for a money-trail role (its exact name)."""
        return ACCOUNTS[role][0]

    def balance(self, role: AccountRole) -> Money:
        """What the emulator's books hold in the role's account (read without the adapter)."""
        return Money(self.emulator.account_total(self.account(role)), self.currency)

    def tax_code(self) -> str | None:
        return "NON"  # a US company: lines take TAX or NON

    def archive_item(self, item: str) -> None:
        self.emulator.archive_item(item)

    def pay_externally(self, invoice_id: LedgerInvoiceId, amount: Money) -> None:
        self.emulator.pay_externally(invoice_id, amount.amount)

    def void(self, invoice_id: LedgerInvoiceId) -> None:
        self.emulator.void_invoice(invoice_id)

    def approve(self, invoice_id: LedgerInvoiceId) -> None:
        raise NotImplementedError("QuickBooks Online has no draft invoices to approve")

    def all_invoices(self) -> list[LedgerInvoice]:
        return [
            to_ledger_invoice(Invoice.from_json(row), self.currency)
            for row in self.emulator.invoices()
        ]

    def emailed(self, invoice_id: LedgerInvoiceId) -> int:
        return self.emulator.emails(invoice_id)

    def drop_next_writes(self, count: int = 1) -> None:
        self.emulator.drop_next_writes(count)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        self.emulator.fail_next(count, status)

    def advance(self, seconds: float) -> None:
        self.time.advance(seconds)

    def now(self) -> datetime:
        return self.time.now().astimezone(UTC)
