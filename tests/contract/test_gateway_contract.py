"""One contract for every `PaymentGateway`: the memory gateway and Stripe (the real adapter over
the Stripe emulator). What the core relies on when it charges and books the money trail."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Protocol

import pytest

from adapters.memory.gateway import MemoryGateway
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey
from connector.domain.money import Money
from connector.ports import (
    ChargeRequest,
    ChargeStatus,
    DeclineKind,
    MoneyMovement,
    MovementKind,
    PaymentGateway,
)


class GatewayHarness(Protocol):
    gateway: PaymentGateway
    tenant: str

    def add_client(self, client: str, behaviour: str) -> None:
        """The client saved a method that behaves so: card, ach, soft (declines, insufficient
        funds) or hard (declines for good)."""
        ...

    def settle(self) -> None:
        """Time passes: bank debits settle, card funds become available."""
        ...

    def refund(self, charge: ChargeId, amount: Money) -> None: ...

    def pay_out(self) -> None:
        """The available balance is paid out to the bank now."""
        ...

    def close(self) -> None: ...


class MemoryGatewayHarness:
    tenant = "firm"

    def __init__(self) -> None:
        self.memory = MemoryGateway()
        self.gateway: PaymentGateway = self.memory
        self._processing: list[str] = []

    def add_client(self, client: str, behaviour: str) -> None:
        kind = "us_bank_account" if behaviour == "ach" else "card"
        scripted = {
            "card": "succeed",
            "ach": "processing",
            "soft": "decline:insufficient_funds",
            "hard": "decline:stolen_card",
        }[behaviour]
        self.memory.add_method(client, scripted, kind=kind)

    def settle(self) -> None:
        for charge in self.memory.charges():
            if charge.status is ChargeStatus.PROCESSING:
                self.memory.settle(charge.id)

    def refund(self, charge: ChargeId, amount: Money) -> None:
        self.memory.refund(charge, amount)

    def pay_out(self) -> None:
        self.memory.payout()

    def close(self) -> None:
        pass


class StripeGatewayHarness:
    tokens = {
        "card": "pm_card_visa",
        "ach": "pm_usBankAccount_success",
        "soft": "pm_card_visa_chargeDeclinedInsufficientFunds",
        "hard": "pm_card_visa_chargeDeclinedStolenCard",
    }

    def __init__(self) -> None:
        from adapters.stripe.emulator import PayoutSchedule
        from tests.contract.harness_stripe import StripeHarness

        self.stripe = StripeHarness()
        self.stripe.emulator.set_payout_schedule(PayoutSchedule(interval="manual"))
        self.gateway: PaymentGateway = self.stripe.gateway
        self.tenant = self.stripe.tenant

    def add_client(self, client: str, behaviour: str) -> None:
        self.stripe.add_client_with(client, self.tokens[behaviour])

    def settle(self) -> None:
        self.stripe.advance(days=7)  # ACH settles in 4 business days; card funds in 2

    def refund(self, charge: ChargeId, amount: Money) -> None:
        self.stripe.emulator.refund(charge, amount.minor)

    def pay_out(self) -> None:
        self.stripe.emulator.pay_out_now()

    def close(self) -> None:
        assert self.stripe.violations() == []
        self.stripe.close()


@pytest.fixture(params=["memory", "stripe"])
def harness(request: pytest.FixtureRequest) -> Iterator[GatewayHarness]:
    built: GatewayHarness = (
        MemoryGatewayHarness() if request.param == "memory" else StripeGatewayHarness()
    )
    try:
        yield built
    finally:
        built.close()


def request_for(harness: GatewayHarness, client: str, amount: str = "450.00") -> ChargeRequest:
    return ChargeRequest(
        client_key=ClientKey(client),
        amount=Money(amount, "USD"),
        description=f"Bookkeeping 2026-10 - {client}",
        metadata={
            "tenant": harness.tenant,
            "milestone": f"closes:{client}:2026-10:close",
            "invoice": f"INV-{client}",
        },
    )


def key(name: str) -> IdempotencyKey:
    return IdempotencyKey(f"charge:firm:{name}:1")


def all_movements(harness: GatewayHarness) -> list[MoneyMovement]:
    found: dict[str, MoneyMovement] = {}
    cursor = None
    while True:
        page = harness.gateway.movements(cursor)
        found.update((m.id, m) for m in page.movements)
        if not page.more:
            return list(found.values())
        cursor = page.cursor


def test_a_client_without_a_saved_method_has_none(harness: GatewayHarness) -> None:
    assert harness.gateway.saved_method(ClientKey("CL-NONE")) is None
    harness.add_client("CL-ACH", "ach")
    method = harness.gateway.saved_method(ClientKey("CL-ACH"))
    assert method is not None and method.kind == "us_bank_account"


def test_a_card_is_charged_once_per_key_and_found_again(harness: GatewayHarness) -> None:
    harness.add_client("CL-1", "card")
    request = request_for(harness, "CL-1")

    first = harness.gateway.charge(request, key("a"))
    again = harness.gateway.charge(request, key("a"))
    found = harness.gateway.find_charge(request, key("a"))
    second = harness.gateway.charge(request, key("b"))

    assert first.status is ChargeStatus.SUCCEEDED
    assert first.amount == Money("450.00", "USD")
    assert again.id == first.id and found is not None and found.id == first.id
    assert second.id != first.id
    assert harness.gateway.find_charge(request, key("never")) is None


def test_declines_say_whether_a_retry_can_work(harness: GatewayHarness) -> None:
    harness.add_client("CL-SOFT", "soft")
    harness.add_client("CL-HARD", "hard")

    soft = harness.gateway.charge(request_for(harness, "CL-SOFT"), key("soft"))
    hard = harness.gateway.charge(request_for(harness, "CL-HARD"), key("hard"))

    assert (soft.status, soft.decline_kind) == (ChargeStatus.FAILED, DeclineKind.SOFT)
    assert soft.decline_code == "insufficient_funds"
    assert (hard.status, hard.decline_kind) == (ChargeStatus.FAILED, DeclineKind.HARD)
    assert hard.decline_code == "stolen_card"


def test_a_bank_debit_processes_then_settles(harness: GatewayHarness) -> None:
    harness.add_client("CL-ACH", "ach")

    started = harness.gateway.charge(request_for(harness, "CL-ACH"), key("ach"))
    assert started.status is ChargeStatus.PROCESSING
    harness.settle()

    assert harness.gateway.get_charge(started.id).status is ChargeStatus.SUCCEEDED


def test_the_balance_moves_by_each_movement_and_a_payout_pays_its_movements(
    harness: GatewayHarness,
) -> None:
    harness.add_client("CL-1", "card")
    charge = harness.gateway.charge(request_for(harness, "CL-1", "1000.00"), key("trail"))
    harness.settle()
    harness.refund(charge.id, Money("200.00", "USD"))

    movements = all_movements(harness)
    (payment,) = [m for m in movements if m.kind is MovementKind.PAYMENT]
    (refund,) = [m for m in movements if m.kind is MovementKind.REFUND]
    assert payment.charge_id == charge.id
    assert payment.milestone == "closes:CL-1:2026-10:close" and payment.invoice_id == "INV-CL-1"
    assert payment.amount == Money("1000.00", "USD")
    assert payment.fee > Money("0.00", "USD")
    assert refund.amount == Money("-200.00", "USD") and refund.charge_id == charge.id
    total = sum((m.net for m in movements), Money(Decimal(0), "USD"))
    assert harness.gateway.balance() == total

    harness.pay_out()
    movements = all_movements(harness)
    (payout,) = [m for m in movements if m.kind is MovementKind.PAYOUT]
    assert payout.payout_id is not None
    assert payout.amount == -total
    paid = harness.gateway.payout_movements(payout.payout_id)
    assert sum((m.net for m in paid), Money(Decimal(0), "USD")).is_zero()
    assert harness.gateway.balance().is_zero()


def test_reading_on_from_the_cursor_brings_only_what_is_new(harness: GatewayHarness) -> None:
    harness.add_client("CL-1", "card")
    harness.gateway.charge(request_for(harness, "CL-1"), key("one"))
    first = harness.gateway.movements(None)
    seen = {m.id for m in first.movements}

    harness.gateway.charge(request_for(harness, "CL-1", "120.00"), key("two"))
    later = harness.gateway.movements(first.cursor)

    new = [m for m in later.movements if m.id not in seen]  # an overlap may repeat old ones
    assert [m.amount for m in new if m.kind is MovementKind.PAYMENT] == [Money("120.00", "USD")]
