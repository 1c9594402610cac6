"""`StripeGateway` over the Stripe emulator (stripe-python talking real HTTP to loopback, every
request checked against spec3.yaml plus endive's changes): invites and saved methods, charge
outcomes, exactly-once under lost answers, and the money trail (payments, fees, refunds,
disputes, returned debits, payouts) adding up to the balance."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs

import pytest

from adapters.stripe.emulator import ACH_RETURN_AFTER_SUCCESS, PayoutSchedule
from connector.domain.errors import RejectedError, TransientError
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey
from connector.domain.money import Money
from connector.ports import (
    ChargeRequest,
    ChargeStatus,
    DeclineKind,
    MoneyMovement,
    MovementKind,
)
from tests.contract.harness_stripe import StripeHarness


@pytest.fixture
def stripe_h() -> Iterator[StripeHarness]:
    harness = StripeHarness()
    try:
        yield harness
        assert harness.violations() == []
    finally:
        harness.close()


def request(client: str = "C1", amount: str = "100.10", n: int = 1) -> ChargeRequest:
    return ChargeRequest(
        client_key=ClientKey(client),
        amount=Money(amount, "USD"),
        description=f"Q{n} bookkeeping",
        metadata={"tenant": "firm", "milestone": f"karbon:wi-{n}:ms-1", "invoice": f"13{n}"},
    )


def key(n: int = 1, attempt: int = 1) -> IdempotencyKey:
    return IdempotencyKey(f"charge:firm:13{n}:{attempt}")


def all_movements(stripe_h: StripeHarness) -> list[MoneyMovement]:
    """Every movement since the account's start, deduplicated by id as the core does."""
    seen: dict[str, MoneyMovement] = {}
    for movement in stripe_h.gateway.movements(None).movements:
        seen.setdefault(movement.id, movement)
    return list(seen.values())


def kinds(movements: list[MoneyMovement]) -> list[MovementKind]:
    return [m.kind for m in movements]


# --------------------------------------------------------------------------- invites, methods


def test_an_invite_completed_makes_the_saved_method(stripe_h: StripeHarness) -> None:
    gateway = stripe_h.gateway
    assert gateway.saved_method(ClientKey("C1")) is None  # no customer yet: nothing created
    assert stripe_h.emulator.customers() == []
    link = gateway.invite(ClientKey("C1"), "Acme LLC", "ap@acme.test")
    assert link.url.startswith(stripe_h.emulator.url)
    assert link.session_id.startswith("cs_")
    assert link.expires_at == stripe_h.time.now().replace(microsecond=0) + timedelta(hours=24)
    assert gateway.saved_method(ClientKey("C1")) is None  # not completed yet
    (session,) = stripe_h.emulator.checkout_sessions()
    assert session["mode"] == "setup"
    assert session["payment_method_types"] == ["card", "us_bank_account"]
    assert session["metadata"] == {"milestone_sync_client": "C1", "milestone_sync_tenant": "firm"}
    (customer,) = stripe_h.emulator.customers()
    assert customer["name"] == "Acme LLC" and customer["email"] == "ap@acme.test"

    stripe_h.emulator.complete_session(link.session_id, "pm_card_visa")
    method = stripe_h.new_gateway().saved_method(ClientKey("C1"))  # no webhook, fresh process
    assert method is not None
    assert method.kind == "card" and method.label == "visa ending 4242"
    assert method.customer_id == customer["id"]
    stored = stripe_h.emulator.object(customer["id"])
    assert stored["invoice_settings"]["default_payment_method"] == method.method_id


def test_a_bank_account_saved_through_the_invite(stripe_h: StripeHarness) -> None:
    method = stripe_h.add_client_with("C1", "pm_usBankAccount_success")
    assert method.kind == "us_bank_account"
    assert method.label == "bank account ending 6789"


def test_a_repeated_invite_the_same_day_is_the_same_link_and_customer() -> None:
    harness = StripeHarness(search_lag_seconds=3600)  # search an hour behind (an outage)
    try:
        first = harness.gateway.invite(ClientKey("C1"), "Acme", None)
        # another process, same day: search cannot see the customer yet
        again = harness.new_gateway().invite(ClientKey("C1"), "Acme", None)
        assert again == first
        harness.advance(days=1)
        later = harness.new_gateway().invite(ClientKey("C1"), "Acme", None)
        assert later.session_id != first.session_id
        assert len(harness.emulator.customers()) == 1
        assert len(harness.emulator.checkout_sessions()) == 2
        assert harness.violations() == []
    finally:
        harness.close()


def test_a_reinvite_after_a_dead_card_replaces_the_default(stripe_h: StripeHarness) -> None:
    old = stripe_h.add_client_with("C1", "pm_card_visa_chargeDeclinedStolenCard")
    failed = stripe_h.gateway.charge(request(), key())
    assert failed.decline_kind is DeclineKind.HARD
    stripe_h.advance(days=1)
    new = stripe_h.add_client_with("C1", "pm_card_mastercard")
    assert new.method_id != old.method_id and new.label == "mastercard ending 4444"
    assert stripe_h.gateway.charge(request(), key(attempt=2)).status is ChargeStatus.SUCCEEDED


def test_a_copy_of_the_customer_made_by_hand_is_not_used(stripe_h: StripeHarness) -> None:
    method = stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.advance(days=2)
    copy = stripe_h.emulator.add_customer(
        metadata={"milestone_sync_client": "C1", "milestone_sync_tenant": "firm"}
    )
    stripe_h.emulator.add_payment_method(copy, "pm_card_mastercard")
    again = stripe_h.new_gateway().saved_method(ClientKey("C1"))
    assert again == method  # the oldest customer: the one milestone-sync made


def test_no_saved_method_is_a_rejection_naming_the_invite(stripe_h: StripeHarness) -> None:
    stripe_h.gateway.invite(ClientKey("C1"), "Acme", None)
    with pytest.raises(RejectedError, match="clients invite C1") as caught:
        stripe_h.gateway.charge(request(), key())
    assert caught.value.code == "no_payment_method"
    assert stripe_h.emulator.payment_intents() == []


# --------------------------------------------------------------------------- charges


def test_a_card_charge_succeeds_with_our_metadata(stripe_h: StripeHarness) -> None:
    method = stripe_h.add_client_with("C1", "pm_card_visa")
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.id.startswith("pi_") and result.amount == Money("100.10", "USD")
    (pi,) = stripe_h.emulator.payment_intents()
    assert pi["id"] == result.id and pi["amount"] == 10010 and pi["currency"] == "usd"
    assert pi["customer"] == method.customer_id and pi["payment_method"] == method.method_id
    assert pi["metadata"]["attempt_key"] == key()
    assert (
        pi["metadata"]["milestone"] == "karbon:wi-1:ms-1" and pi["description"] == "Q1 bookkeeping"
    )
    (post,) = stripe_h.emulator.requests("POST", "/v1/payment_intents")
    assert post.headers["Idempotency-Key"] == key()
    assert stripe_h.emulator.stripe_versions()[-1] == "2026-10-28.endive"
    assert stripe_h.gateway.get_charge(result.id) == result


@pytest.mark.parametrize(
    ("token", "code", "kind"),
    [
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "insufficient_funds", DeclineKind.SOFT),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", DeclineKind.SOFT),
        (
            "pm_card_visa_chargeDeclinedVelocityLimitExceeded",
            "card_velocity_exceeded",
            DeclineKind.SOFT,
        ),
        ("pm_card_visa_chargeDeclined", "generic_decline", DeclineKind.SOFT),
        ("pm_card_visa_chargeDeclinedStolenCard", "stolen_card", DeclineKind.HARD),
        ("pm_card_visa_chargeDeclinedLostCard", "lost_card", DeclineKind.HARD),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", DeclineKind.HARD),
    ],
)
def test_declines_are_failed_results_classified_soft_or_hard(
    stripe_h: StripeHarness, token: str, code: str, kind: DeclineKind
) -> None:
    stripe_h.add_client_with("C1", token)
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.FAILED
    assert result.decline_code == code and result.decline_kind is kind
    assert result.message and code in result.message
    assert "another" in result.message  # what the admin can do
    assert stripe_h.gateway.get_charge(result.id) == result  # the same answer later
    (pi,) = stripe_h.emulator.payment_intents()
    assert pi["id"] == result.id and pi["status"] == "requires_payment_method"


def test_authentication_required_gives_a_payment_link_per_attempt(
    stripe_h: StripeHarness,
) -> None:
    method = stripe_h.add_client_with("C1", "pm_card_authenticationRequired")
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.action_url and result.action_url.startswith(stripe_h.emulator.url)
    (link,) = [s for s in stripe_h.emulator.checkout_sessions() if s["mode"] == "payment"]
    assert link["url"] == result.action_url
    assert link["amount_total"] == 10010 and link["currency"] == "usd"
    assert link["customer"] == method.customer_id
    assert link["metadata"]["milestone"] == "karbon:wi-1:ms-1"
    assert link["metadata"]["action_for"] == key()
    assert link["metadata"]["declined_charge"] == result.id
    # the same attempt again (a replay, a lookup, a later read): the same link, no second one
    assert stripe_h.gateway.charge(request(), key()) == result
    assert stripe_h.new_gateway().get_charge(result.id) == result
    assert stripe_h.new_gateway().find_charge(request(), key()) == result
    assert len([s for s in stripe_h.emulator.checkout_sessions() if s["mode"] == "payment"]) == 1
    assert len(stripe_h.emulator.payment_intents()) == 1

    # the client pays through the link, present: a new PaymentIntent with the milestone on it
    stripe_h.emulator.complete_session(link["id"], "pm_card_visa")
    payments = [m for m in all_movements(stripe_h) if m.kind is MovementKind.PAYMENT]
    (paid,) = payments
    assert paid.charge_id != result.id and paid.amount == Money("100.10", "USD")
    assert paid.milestone == "karbon:wi-1:ms-1" and paid.invoice_id == "131"
    # find_charge still names the attempt's own PaymentIntent, never the link's
    assert stripe_h.gateway.find_charge(request(), key()) == result


def test_ach_is_processing_then_settles(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_usBankAccount_success")
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.PROCESSING
    stripe_h.advance(days=1)
    assert stripe_h.gateway.get_charge(result.id).status is ChargeStatus.PROCESSING
    stripe_h.advance(days=6)
    settled = stripe_h.gateway.get_charge(result.id)
    assert settled.status is ChargeStatus.SUCCEEDED and settled.amount == result.amount


@pytest.mark.parametrize(
    ("token", "code", "kind"),
    [
        ("pm_usBankAccount_insufficientFunds", "insufficient_funds", DeclineKind.SOFT),
        ("pm_usBankAccount_accountClosed", "account_closed", DeclineKind.HARD),
        ("pm_usBankAccount_debitNotAuthorized", "debit_not_authorized", DeclineKind.HARD),
    ],
)
def test_ach_is_processing_then_fails(
    stripe_h: StripeHarness, token: str, code: str, kind: DeclineKind
) -> None:
    stripe_h.add_client_with("C1", token)
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.PROCESSING
    stripe_h.advance(days=7)
    failed = stripe_h.gateway.get_charge(result.id)
    assert failed.status is ChargeStatus.FAILED
    assert failed.decline_code == code and failed.decline_kind is kind
    returned = [m for m in all_movements(stripe_h) if m.charge_id == result.id]
    assert kinds(returned) == [MovementKind.PAYMENT, MovementKind.PAYMENT_RETURNED]
    assert sum((m.net for m in returned), Money.zero("USD")) == Money("-4.00", "USD")  # the fee


# --------------------------------------------------------------------------- exactly once


def test_a_lost_answer_is_replayed_with_the_same_key(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.emulator.drop_next_writes(1)
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.SUCCEEDED
    posts = stripe_h.emulator.requests("POST", "/v1/payment_intents")
    assert [p.headers["Idempotency-Key"] for p in posts] == [key(), key()]
    assert len(stripe_h.emulator.payment_intents()) == 1


def test_at_most_once_when_every_answer_is_lost(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.emulator.drop_every_write(True)
    with pytest.raises(TransientError) as caught:
        stripe_h.gateway.charge(request(), key())
    assert caught.value.outcome_unknown
    stripe_h.emulator.drop_every_write(False)
    # the core's next move after an unknown outcome: look it up, in a fresh process
    found = stripe_h.new_gateway().find_charge(request(), key())
    assert found is not None and found.status is ChargeStatus.SUCCEEDED
    (pi,) = stripe_h.emulator.payment_intents()
    assert found.id == pi["id"]
    posts = stripe_h.emulator.requests("POST", "/v1/payment_intents")
    assert len(posts) == stripe_h.options.max_attempts  # all with the one key
    assert {p.headers["Idempotency-Key"] for p in posts} == {key()}


@pytest.mark.parametrize("status", [500, 503, 409, 429])
def test_failed_answers_are_retried(stripe_h: StripeHarness, status: int) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.emulator.fail_next(2, status)  # whatever the charge sends next
    result = stripe_h.gateway.charge(request(), key())
    assert result.status is ChargeStatus.SUCCEEDED
    assert [r.status for r in stripe_h.emulator.requests()].count(status) == 2
    (pi,) = stripe_h.emulator.payment_intents()
    assert pi["id"] == result.id
    posts = stripe_h.emulator.requests("POST", "/v1/payment_intents")
    assert {p.headers["Idempotency-Key"] for p in posts} == {key()}


def test_rate_limits_are_waited_out(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.emulator.set_rate_limits(True)
    for n in range(1, 31):  # ~120 requests in a burst, over the sandbox's 25 a second
        stripe_h.gateway.charge(request("C1", "1.00", n), key(n))
    statuses = [r.status for r in stripe_h.emulator.requests()]
    assert 429 in statuses  # the limit was hit, and waited out
    assert len(stripe_h.emulator.payment_intents()) == 30


def test_find_charge_is_none_only_when_there_is_none(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    assert stripe_h.gateway.find_charge(request(), key()) is None
    charged = stripe_h.gateway.charge(request(), key())
    assert stripe_h.gateway.find_charge(request(), key(attempt=2)) is None
    stripe_h.advance(days=20)  # past Stripe's 24 h idempotency window
    assert stripe_h.new_gateway().find_charge(request(), key()) == charged


def test_find_charge_sees_a_customer_search_cannot_yet() -> None:
    harness = StripeHarness(search_lag_seconds=3600)
    try:
        harness.add_client_with("C1", "pm_card_visa")
        harness.emulator.drop_every_write(True)
        with pytest.raises(TransientError):
            harness.gateway.charge(request(), key())
        harness.emulator.drop_every_write(False)
        found = harness.new_gateway().find_charge(request(), key())  # search still lags
        assert found is not None and found.status is ChargeStatus.SUCCEEDED
        assert len(harness.emulator.customers()) == 1
        assert harness.violations() == []
    finally:
        harness.close()


def test_a_replayed_charge_is_the_same_charge(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa_chargeDeclinedInsufficientFunds")
    first = stripe_h.gateway.charge(request(), key())
    again = stripe_h.new_gateway().charge(request(), key())
    assert again == first
    assert len(stripe_h.emulator.payment_intents()) == 1


# --------------------------------------------------------------------------- the money trail


def test_payments_with_their_fees(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.add_client_with("C2", "pm_usBankAccount_success")
    card = stripe_h.gateway.charge(request("C1", "100.10", 1), key(1))
    bank = stripe_h.gateway.charge(request("C2", "1000.00", 2), key(2))
    page = stripe_h.gateway.movements(None)
    by_charge = {m.charge_id: m for m in page.movements}
    assert by_charge[card.id].kind is MovementKind.PAYMENT
    assert by_charge[card.id].fee == Money("3.20", "USD")  # 2.9% + 30c
    assert by_charge[card.id].milestone == "karbon:wi-1:ms-1"
    assert by_charge[card.id].invoice_id == "131"
    assert by_charge[card.id].source and by_charge[card.id].source.startswith("ch_")
    assert by_charge[bank.id].fee == Money("5.00", "USD")  # 0.8% capped at $5
    assert by_charge[bank.id].milestone == "karbon:wi-2:ms-1"
    # a charge milestone-sync did not make still shows, with nothing of ours on it
    customer = stripe_h.emulator.add_customer(email="walk-in@example.test")
    stripe_h.emulator.add_payment_method(customer, "pm_card_visa")
    client = stripe_h.gateway.api.v1
    client.payment_intents.create(
        params={
            "amount": 5000,
            "currency": "usd",
            "customer": customer,
            "payment_method": stripe_h.emulator.customers()[-1]["invoice_settings"][
                "default_payment_method"
            ],
            "confirm": True,
            "off_session": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    (foreign,) = [
        m for m in stripe_h.gateway.movements(page.cursor).movements if m.milestone is None
    ]
    assert foreign.kind is MovementKind.PAYMENT and foreign.invoice_id is None


def test_partial_refunds(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    charged = stripe_h.gateway.charge(request(), key())
    stripe_h.emulator.refund(charged.id, 2000)
    stripe_h.emulator.refund(charged.id, 1010)
    refunds = [m for m in all_movements(stripe_h) if m.kind is MovementKind.REFUND]
    assert [m.amount for m in refunds] == [Money("-20.00", "USD"), Money("-10.10", "USD")]
    assert {m.charge_id for m in refunds} == {charged.id}
    assert {m.invoice_id for m in refunds} == {"131"}
    assert all(m.source and m.source.startswith("re_") for m in refunds)


def test_a_dispute_opened_then_won(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    charged = stripe_h.gateway.charge(request(), key())
    dispute = stripe_h.emulator.open_dispute(charged.id)
    stripe_h.advance(days=3)
    stripe_h.emulator.win_dispute(dispute)
    trail = [m for m in all_movements(stripe_h) if m.charge_id == charged.id]
    assert kinds(trail) == [
        MovementKind.PAYMENT,
        MovementKind.DISPUTE_WITHDRAWN,
        MovementKind.DISPUTE_REINSTATED,
    ]
    withdrawn, reinstated = trail[1], trail[2]
    assert withdrawn.amount == Money("-100.10", "USD") and withdrawn.fee == Money("15.00", "USD")
    assert reinstated.amount == Money("100.10", "USD") and reinstated.fee.is_zero()
    assert withdrawn.source == dispute and withdrawn.milestone == "karbon:wi-1:ms-1"


def test_a_dispute_lost(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    charged = stripe_h.gateway.charge(request(), key())
    dispute = stripe_h.emulator.open_dispute(charged.id)
    stripe_h.advance(days=5)
    stripe_h.emulator.lose_dispute(dispute)
    trail = [m for m in all_movements(stripe_h) if m.charge_id == charged.id]
    assert kinds(trail) == [
        MovementKind.PAYMENT,
        MovementKind.DISPUTE_WITHDRAWN,
        MovementKind.DISPUTE_LOST,
    ]
    lost = trail[-1]
    assert lost.id == dispute and lost.amount == Money("100.10", "USD") and lost.fee.is_zero()
    assert lost.invoice_id == "131"
    assert lost.occurred_at >= trail[1].occurred_at + timedelta(days=5)


def test_an_ach_debit_returned_after_it_succeeded(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", ACH_RETURN_AFTER_SUCCESS)
    charged = stripe_h.gateway.charge(request(), key())
    stripe_h.advance(days=14)  # settles, then the bank returns it
    assert stripe_h.gateway.get_charge(charged.id).status is ChargeStatus.SUCCEEDED
    trail = [m for m in all_movements(stripe_h) if m.charge_id == charged.id]
    assert kinds(trail) == [MovementKind.PAYMENT, MovementKind.PAYMENT_RETURNED]
    returned = trail[-1]
    assert returned.amount == Money("-100.10", "USD") and returned.invoice_id == "131"


def test_payouts_including_a_failed_and_a_negative_one(stripe_h: StripeHarness) -> None:
    stripe_h.emulator.set_payout_schedule(PayoutSchedule(interval="manual"))
    stripe_h.add_client_with("C1", "pm_card_visa")
    charged = stripe_h.gateway.charge(request(), key())
    stripe_h.advance(days=3)
    payout = stripe_h.emulator.pay_out_now()
    assert payout is not None
    paid_out = stripe_h.gateway.payout_movements(payout)
    assert {m.kind for m in paid_out} == {MovementKind.PAYMENT, MovementKind.PAYOUT}
    assert sum((m.net for m in paid_out), Money.zero("USD")).is_zero()
    (out,) = [m for m in all_movements(stripe_h) if m.kind is MovementKind.PAYOUT]
    assert out.payout_id == payout and out.amount == Money("-96.90", "USD")

    # the balance goes negative (a refund after the payout): the bank is debited
    stripe_h.emulator.refund(charged.id, 5000)
    stripe_h.advance(days=1)
    debit = stripe_h.emulator.pay_out_now()
    assert debit is not None
    negative = [m for m in all_movements(stripe_h) if m.payout_id == debit]
    assert [(m.kind, m.amount) for m in negative] == [(MovementKind.PAYOUT, Money("50.00", "USD"))]

    # a payout the bank sends back
    stripe_h.add_client_with("C2", "pm_card_visa")
    stripe_h.gateway.charge(request("C2", "200.00", 2), key(2))
    stripe_h.advance(days=5)  # two business days after a Friday
    stripe_h.emulator.fail_next_payout()
    failing = stripe_h.emulator.pay_out_now()
    assert failing is not None
    stripe_h.advance(days=2)
    back = [m for m in all_movements(stripe_h) if m.payout_id == failing]
    assert kinds(back) == [MovementKind.PAYOUT, MovementKind.PAYOUT_FAILED]
    assert back[0].amount == -back[1].amount


def test_the_balance_is_the_sum_of_the_movements(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.add_client_with("C2", "pm_usBankAccount_success")
    stripe_h.add_client_with("C3", "pm_usBankAccount_insufficientFunds")
    one = stripe_h.gateway.charge(request("C1", "100.10", 1), key(1))
    stripe_h.gateway.charge(request("C2", "400.00", 2), key(2))
    stripe_h.gateway.charge(request("C3", "75.00", 3), key(3))
    stripe_h.emulator.refund(one.id, 1010)
    dispute = stripe_h.emulator.open_dispute(one.id, amount=5000)
    stripe_h.advance(days=8)  # ACH settles or fails, payouts run daily
    stripe_h.emulator.lose_dispute(dispute)
    movements = all_movements(stripe_h)
    assert MovementKind.PAYOUT in kinds(movements)
    assert MovementKind.DISPUTE_LOST in kinds(movements)
    moved = sum(
        (m.net for m in movements if m.kind is not MovementKind.DISPUTE_LOST), Money.zero("USD")
    )
    assert stripe_h.gateway.balance() == moved == stripe_h.emulator.balance().total


def test_movements_continue_from_their_cursor(stripe_h: StripeHarness) -> None:
    stripe_h.add_client_with("C1", "pm_card_visa")
    stripe_h.gateway.charge(request("C1", "10.00", 1), key(1))
    first = stripe_h.gateway.movements(None)
    assert [m.amount for m in first.movements] == [Money("10.00", "USD")]
    assert first.cursor and not first.more
    stripe_h.advance(hours=3)
    stripe_h.gateway.charge(request("C1", "20.00", 2), key(2))
    second = stripe_h.gateway.movements(first.cursor)
    # from an hour before the cursor: the first one again (the core dedupes), then the new one
    assert [m.amount for m in second.movements] == [Money("10.00", "USD"), Money("20.00", "USD")]
    stripe_h.advance(hours=3)
    stripe_h.gateway.charge(request("C1", "30.00", 3), key(3))
    third = stripe_h.gateway.movements(second.cursor)
    assert [m.amount for m in third.movements] == [Money("20.00", "USD"), Money("30.00", "USD")]
    query = parse_qs(stripe_h.emulator.requests("GET", "/v1/balance_transactions")[-1].query)
    assert query["created[gte]"] == [str(int(third.movements[0].occurred_at.timestamp()) - 3600)]
    again = stripe_h.gateway.movements(third.cursor)  # nothing new: the cursor stays
    assert again.cursor == third.cursor


def test_get_charge_of_an_unknown_id_is_rejected(stripe_h: StripeHarness) -> None:
    with pytest.raises(RejectedError):
        stripe_h.gateway.get_charge(ChargeId("pi_doesnotexist"))


def test_after_a_returned_debit_the_next_charge_asks_for_a_new_bank_account(
    stripe_h: StripeHarness,
) -> None:
    from adapters.stripe.emulator import ACH_RETURN_AFTER_SUCCESS
    from connector.domain.errors import RejectedError

    stripe_h.add_client_with("C1", ACH_RETURN_AFTER_SUCCESS)
    first = stripe_h.gateway.charge(request("C1"), key(1))
    stripe_h.advance(days=10)  # settles, then the bank returns it
    assert [m.kind for m in all_movements(stripe_h) if m.charge_id == first.id][-1] is (
        MovementKind.PAYMENT_RETURNED
    )

    with pytest.raises(RejectedError) as refused:
        stripe_h.gateway.charge(request("C1", n=2), key(2))

    assert refused.value.code == "mandate_invalid"
    assert "clients invite" in str(refused.value)
    assert stripe_h.violations() == []
