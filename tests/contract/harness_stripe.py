"""The gateway contract harness for Stripe: the Stripe emulator on loopback, `StripeGateway`
(stripe-python) talking real HTTP to it, and the emulator's admin API as the back door (a client
completing Checkout, a bank settling or returning a debit, disputes, payouts, time passing)."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.emulation.clock import EmulatedTime
from adapters.stripe.adapter import StripeGateway, StripeOptions
from adapters.stripe.client import build_client
from adapters.stripe.emulator import StripeEmulator
from connector.domain.ids import ClientKey
from connector.ports import SavedMethod

START = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # a Monday afternoon
TENANT = "firm"
CURRENCY = "USD"


class SteppedTime(EmulatedTime):
    """The emulator's clock, where the gateway's backoff sleeps advance time instead of
    waiting (a retry after 2 s happens 2 emulated seconds later, at once)."""

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)


class StripeHarness:
    """`gateway` over a fresh emulator (`emulator`), on a shared `time`.

    Card tokens are Stripe's test payment methods (`pm_card_visa`,
    `pm_card_visa_chargeDeclinedInsufficientFunds`, `pm_card_authenticationRequired`, ...),
    bank tokens its test accounts (`pm_usBankAccount_success`, `..._insufficientFunds`, ...):
    see `adapters.stripe.emulator.TEST_METHODS`."""

    currency = CURRENCY
    tenant = TENANT

    def __init__(
        self,
        *,
        search_lag_seconds: float = 0.0,
        time: EmulatedTime | None = None,
        max_attempts: int = 4,
    ) -> None:
        self.time = time or SteppedTime(start=START)
        self.emulator = StripeEmulator(time=self.time, search_lag_seconds=search_lag_seconds)
        self.emulator.start()
        self.options = StripeOptions(
            currency=CURRENCY,
            tenant=TENANT,
            success_url="https://firm.example/saved",
            cancel_url="https://firm.example/cancelled",
            max_attempts=max_attempts,
        )
        self.gateway = self.new_gateway()

    def new_gateway(self) -> StripeGateway:
        """Another gateway on the same account with an empty memory (a restarted process)."""
        client = build_client(self.emulator.api_key, base_url=self.emulator.url)
        return StripeGateway(client, self.options, time=self.time)

    def add_client_with(self, client_key: str, test_payment_method: str) -> SavedMethod:
        """The client is invited and saves `test_payment_method` through Checkout (setup
        mode); returns the method the gateway now reports."""
        link = self.gateway.invite(ClientKey(client_key), f"Client {client_key}", None)
        self.emulator.complete_session(link.session_id, test_payment_method)
        method = self.gateway.saved_method(ClientKey(client_key))
        assert method is not None, f"{client_key}'s saved method did not take effect"
        return method

    def advance(self, days: float = 0, *, hours: float = 0) -> None:
        """Time passes: ACH debits settle or return, funds become available, payouts run."""
        self.emulator.advance(days=days, hours=hours)

    def violations(self) -> list[str]:
        return self.emulator.violations() + self.emulator.internal_errors

    def close(self) -> None:
        self.emulator.stop()
