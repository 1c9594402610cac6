"""The ledger contract harness for Xero: the Xero emulator on loopback, `XeroLedger` (xero-python)
talking real HTTP to it, and the emulator's admin API as the back door. Also `EmulatorTokens`,
a small `AccessTokens` for tests until the real TokenManager (adapters/oauth) is wired in."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests

from adapters.emulation.clock import EmulatedTime
from adapters.xero.adapter import XeroLedger, XeroOptions
from adapters.xero.emulator import XeroEmulator
from adapters.xero.translate import STATUSES, parse_ms_datetime
from connector.domain.errors import ConfigError
from connector.domain.ids import LedgerCustomerId, LedgerInvoiceId
from connector.domain.money import Money
from connector.ports import AccountRole, LedgerInvoice, OAuthToken

ITEM_CODE = "PS"
ITEM_NAME = "Professional Services"
SALES_ACCOUNT = "200"
# the money trail's four accounts, as a firm taking Stripe payments sets them up in Xero
CLEARING_ACCOUNT = "091"  # "Stripe", a bank account mirroring the Stripe balance
BANK_ACCOUNT = "092"  # "Business Bank", where payouts land
FEE_ACCOUNT = "404"  # "Stripe Fees", an expense
DISPUTES_ACCOUNT = "615"  # "Stripe Disputes", a current asset with payments enabled
ACCOUNTS: dict[AccountRole, tuple[str, str, str, bool]] = {
    AccountRole.CLEARING: (CLEARING_ACCOUNT, "Stripe", "BANK", False),
    AccountRole.BANK: (BANK_ACCOUNT, "Business Bank", "BANK", False),
    AccountRole.FEES: (FEE_ACCOUNT, "Stripe Fees", "EXPENSE", False),
    AccountRole.DISPUTES: (DISPUTES_ACCOUNT, "Stripe Disputes", "CURRENT", True),
}
OPTION_OF_ROLE = {
    AccountRole.CLEARING: "clearing_account",
    AccountRole.BANK: "bank_account",
    AccountRole.FEES: "fee_account",
    AccountRole.DISPUTES: "disputes_account",
}


class EmulatorTokens:
    """`AccessTokens` over the emulator: the first token from `connect()` (no browser), then
    refresh-token rotation at the emulator's token endpoint, a few minutes before expiry on the
    emulated clock, or when the ledger reports a 401."""

    connection = "xero"

    def __init__(
        self,
        emulator: XeroEmulator,
        *,
        tenants: list[str] | None = None,
        realm: str | None = "first",
        margin: timedelta = timedelta(minutes=2),
    ) -> None:
        self._emulator = emulator
        self._margin = margin
        chosen = tenants if tenants is not None else emulator.tenants
        self._realm = chosen[0] if realm == "first" else realm
        self._lock = threading.Lock()
        self._token = self._token_from(emulator.connect(chosen))
        self.refreshes = 0

    def current(self) -> OAuthToken:
        with self._lock:
            if self._token.expires_at - self._emulator.time.now() <= self._margin:
                self._refresh()
            return self._token

    def refresh(self, rejected: OAuthToken) -> OAuthToken:
        with self._lock:
            if rejected.access_token == self._token.access_token:
                self._refresh()
            return self._token

    def _refresh(self) -> None:
        answer = requests.post(
            self._emulator.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": self._token.refresh_token,
                "client_id": self._emulator.client_id,
                "client_secret": self._emulator.client_secret,
            },
            timeout=5,
        )
        if answer.status_code != 200:
            raise ConfigError(
                f"Xero refused to refresh the connection ({answer.status_code}): run "
                "`milestone-sync connect xero`"
            )
        self.refreshes += 1
        self._token = self._token_from(answer.json())

    def _token_from(self, body: dict[str, Any]) -> OAuthToken:
        now = self._emulator.time.now()
        return OAuthToken(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_at=now + timedelta(seconds=int(str(body["expires_in"]))),
            realm=self._realm,
        )


def ledger_invoice_from(body: dict[str, Any]) -> LedgerInvoice:
    """An invoice as the emulator holds it (JSON, money as Decimal), as the port shows it."""
    currency = str(body["CurrencyCode"])
    due = parse_ms_datetime(body.get("DueDate"))
    return LedgerInvoice(
        id=LedgerInvoiceId(str(body["InvoiceID"])),
        number=body.get("InvoiceNumber") or None,
        reference=body.get("Reference") or "",
        customer_id=LedgerCustomerId(str(body["Contact"]["ContactID"])),
        total=Money.rounded(Decimal(body["Total"]), currency),
        balance=Money.rounded(Decimal(body["AmountDue"]), currency),
        status=STATUSES[str(body["Status"])],
        due_date=due.date() if due else None,
        sent=bool(body.get("SentToContact")),
    )


class XeroHarness:
    """`LedgerHarness` over the Xero emulator. Time runs 20x faster than the wall clock so
    Retry-After waits and token lifetimes pass quickly; `advance` jumps ahead."""

    currency = "USD"
    supports_drafts = True

    def __init__(
        self,
        *,
        time: EmulatedTime | None = None,
        emulator: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """`emulator`: XeroEmulator settings (rate_limits, limits, latency, organisations...);
        `options`: XeroOptions fields over the defaults below."""
        # after the dates the contract suite books on (Xero's Trial Balance, like its
        # reports, counts what is dated up to today)
        self.time = time or EmulatedTime(scale=20.0, start=datetime(2026, 11, 30, 9, tzinfo=UTC))
        self.emulator = XeroEmulator(time=self.time, **(emulator or {}))
        self.emulator.start()
        self.emulator.set_payment_terms(30)
        self.emulator.add_item(ITEM_CODE, ITEM_NAME, account_code=SALES_ACCOUNT)
        for code, name, kind, payments in ACCOUNTS.values():
            self.emulator.add_account(code, name, kind, enable_payments=payments)
        self.tokens = EmulatorTokens(self.emulator)
        settings: dict[str, Any] = {
            "currency": self.currency,
            "sales_account": SALES_ACCOUNT,
            **{OPTION_OF_ROLE[role]: code for role, (code, *_) in ACCOUNTS.items()},
            **options,
        }
        self.xero = XeroLedger(
            self.tokens,
            XeroOptions(**settings),
            api_url=self.emulator.api_url,
            identity_url=self.emulator.url,
            time=self.time,
        )
        self.ledger = self.xero

    def close(self) -> None:
        self.xero.close()
        self.emulator.stop()

    def account(self, role: AccountRole) -> str:
        """The account code the adapter is configured with for `role`."""
        code = getattr(self.xero.options, OPTION_OF_ROLE[role])
        if not code:
            raise KeyError(f"no {role} account configured")
        return str(code)

    def account_balance(self, role: AccountRole) -> Money:
        """The account's balance by the emulator's double entry (debits positive), read
        without the adapter."""
        return Money.rounded(self.emulator.account_balance(self.account(role)), self.currency)

    def add_customer(self, name: str) -> LedgerCustomerId:
        slug = re.sub(r"[^a-z0-9]+", ".", name.casefold()).strip(".") or "customer"
        return LedgerCustomerId(self.emulator.add_contact(name, email=f"{slug}@example.com"))

    def item(self) -> str:
        return ITEM_CODE

    def tax_code(self) -> str | None:
        return "NONE"

    def archive_item(self, item: str) -> None:
        self.emulator.archive_item(item)

    def pay_externally(self, invoice_id: LedgerInvoiceId, amount: Money) -> None:
        self.emulator.pay_externally(invoice_id, amount.amount)

    def void(self, invoice_id: LedgerInvoiceId) -> None:
        self.emulator.void(invoice_id)

    def approve(self, invoice_id: LedgerInvoiceId) -> None:
        self.emulator.approve(invoice_id)

    def all_invoices(self) -> list[LedgerInvoice]:
        return [ledger_invoice_from(body) for body in self.emulator.invoices()]

    def emailed(self, invoice_id: LedgerInvoiceId) -> int:
        return self.emulator.emails(invoice_id)

    def drop_next_writes(self, count: int = 1) -> None:
        """The next `count` writes take effect and their answers are lost, retries included:
        XeroLedger retries a lost write itself (Xero replays it by its Idempotency-Key), so
        every attempt is dropped for the caller to see the unknown outcome, as with the memory
        ledger. `emulator.drop_next_writes` drops single requests."""
        self.emulator.drop_next_writes(count * self.xero.options.max_attempts)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """The next `count` ledger operations fail with `status`, every retry included (see
        `drop_next_writes`); `emulator.fail_next` fails single requests."""
        self.emulator.fail_next(count * self.xero.options.max_attempts, status)

    def advance(self, seconds: float) -> None:
        self.time.advance(seconds)

    def violations(self) -> list[str]:
        return self.emulator.violations()
