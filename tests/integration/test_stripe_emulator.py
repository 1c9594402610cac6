"""The Stripe emulator driven by the real SDK (stripe 16.1.0) over loopback HTTP: spec validation
and the endive refusal, customers and search, test payment methods, card and ACH outcomes, fees,
refunds, disputes, ACH failures and returns, payouts, balance, Checkout, events, signed webhooks,
idempotency and injected faults, all on a virtual clock that moves only when a test says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import stripe
from werkzeug.wrappers import Request, Response

from adapters.emulation.clock import VirtualTime
from adapters.emulation.server import EmulatorServer
from adapters.emulation.specs import missing_reason, spec_path
from adapters.emulation.stripe_spec import decode_form, stripe_spec
from adapters.stripe.emulator import (
    ACH_RETURN_AFTER_SUCCESS,
    API_VERSION,
    SPEC,
    PayoutSchedule,
    StripeEmulator,
    StripeEmulatorError,
)
from connector.domain.money import Money

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def midnight(year: int, month: int, day: int) -> int:
    return ts(datetime(year, month, day, tzinfo=UTC))


def require_spec() -> None:
    if spec_path(SPEC) is None:
        pytest.skip(missing_reason(SPEC))


@pytest.fixture
def clock() -> VirtualTime:
    return VirtualTime(start=START)


@pytest.fixture
def emu(clock: VirtualTime) -> Iterator[StripeEmulator]:
    with StripeEmulator(time=clock) as emulator:
        yield emulator
        assert emulator.internal_errors == []


def make_client(emulator: StripeEmulator, retries: int = 0, key: str | None = None):
    return stripe.StripeClient(
        key or emulator.api_key,
        base_addresses={"api": emulator.url},
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=10),
    )


@pytest.fixture
def client(emu: StripeEmulator) -> stripe.StripeClient:
    return make_client(emu)


def charge(
    client: stripe.StripeClient,
    customer: str,
    method: str,
    amount: int = 10_000,
    key: str | None = None,
    **extra: Any,
) -> Any:
    params = {
        "amount": amount,
        "currency": "usd",
        "customer": customer,
        "payment_method": method,
        "confirm": True,
        "off_session": True,
        "allowed_payment_method_types": ["card", "us_bank_account"],
        "metadata": {"milestone": "M-1", "qbo_invoice_id": "131"},
        "description": "Milestone 1",
        **extra,
    }
    options = {"idempotency_key": key} if key else None
    return client.v1.payment_intents.create(params=params, options=options)


def raw(emulator: StripeEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {emulator.api_key}", **kwargs.pop("headers", {})}
    return requests.request(method, emulator.url + path, headers=headers, timeout=10, **kwargs)


# ---------------------------------------------------------------------------------------------
# spec validation


def test_form_decoding_nests_brackets_and_keeps_digit_metadata_a_dict() -> None:
    decoded = decode_form("a[b][0][c]=1&a[b][1][c]=2&metadata[0]=x&e[]=p&e[]=q&blank=")
    assert decoded == {
        "a": {"b": {"0": {"c": "1"}, "1": {"c": "2"}}},
        "metadata": {"0": "x"},
        "e": {"0": "p", "1": "q"},
        "blank": "",
    }
    require_spec()
    spec = stripe_spec()
    assert spec is not None
    check = spec.check(
        "POST",
        "/v1/payment_intents",
        "",
        "amount=1000&currency=usd&confirm=true&metadata[0]=x&allowed_payment_method_types[0]=card",
    )
    assert check.violations == []
    assert check.params["amount"] == 1000 and check.params["confirm"] is True
    assert check.params["metadata"] == {"0": "x"}  # metadata is an object: never a list
    assert check.params["allowed_payment_method_types"] == ["card"]
    unset = spec.check("POST", "/v1/customers/cus_1", "", "metadata=&address=")
    assert unset.violations == [] and unset.template == "/v1/customers/{customer}"


def test_valid_sdk_calls_pass_the_spec(emu: StripeEmulator, client: stripe.StripeClient) -> None:
    require_spec()
    customer = client.v1.customers.create(
        params={"email": "a@firm.test", "name": "Ada", "metadata": {"client_key": "CL-1"}}
    )
    method = emu.add_payment_method(customer.id, "pm_card_visa")
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": method}}
    )
    intent = charge(client, customer.id, method, key="k-1")
    client.v1.payment_intents.retrieve(
        intent.id, params={"expand": ["latest_charge.balance_transaction"]}
    )
    client.v1.payment_intents.list(params={"customer": customer.id, "created": {"gte": 0}})
    client.v1.payment_intents.search(params={"query": "metadata['milestone']:'M-1'"})
    client.v1.customers.search(params={"query": "metadata['client_key']:'CL-1'"})
    client.v1.customers.list(params={"email": "a@firm.test", "limit": 3})
    client.v1.customers.payment_methods.list(customer.id, params={"type": "card"})
    client.v1.payment_methods.list(params={"customer": customer.id, "type": "card"})
    client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    client.v1.balance_transactions.list(
        params={"expand": ["data.source", "data.source.payment_intent"], "limit": 100}
    )
    client.v1.balance.retrieve()
    client.v1.events.list(params={"types": ["charge.succeeded", "refund.created"]})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "setup",
            "customer": customer.id,
            "currency": "usd",
            "success_url": "https://firm.test/ok",
            "cancel_url": "https://firm.test/cancel",
            "allowed_payment_method_types": ["card", "us_bank_account"],
            "metadata": {"client_key": "CL-1"},
        }
    )
    client.v1.checkout.sessions.list(params={"customer": customer.id, "status": "open"})
    client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["setup_intent.payment_method"]}
    )
    client.v1.setup_intents.retrieve(session.setup_intent)
    client.v1.checkout.sessions.expire(session.id)
    setup = client.v1.setup_intents.create(
        params={
            "customer": customer.id,
            "usage": "off_session",
            "allowed_payment_method_types": ["card"],
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    assert setup.status == "succeeded"
    open_intent = client.v1.payment_intents.create(
        params={"amount": 2_000, "currency": "usd", "customer": customer.id}
    )
    client.v1.payment_intents.update(open_intent.id, params={"metadata": {"note": "x"}})
    confirmed = client.v1.payment_intents.confirm(
        open_intent.id, params={"payment_method": method, "off_session": True}
    )
    assert confirmed.status == "succeeded"
    spare = client.v1.payment_intents.create(params={"amount": 900, "currency": "usd"})
    assert client.v1.payment_intents.cancel(spare.id).status == "canceled"
    client.v1.charges.list(params={"payment_intent": intent.id})
    client.v1.refunds.list(params={"charge": intent.latest_charge})
    client.v1.disputes.list(params={"limit": 5})
    client.v1.payouts.list(params={"status": "paid"})
    client.v1.customers.payment_methods.retrieve(customer.id, method)
    extra = client.v1.payment_methods.attach("pm_card_mastercard", params={"customer": customer.id})
    client.v1.payment_methods.detach(extra.id)
    client.v1.events.retrieve(client.v1.events.list(params={"limit": 1}).data[0].id)
    gone = client.v1.customers.create(params={"email": "gone@firm.test"})
    assert client.v1.customers.delete(gone.id).deleted is True
    assert emu.violations() == []
    assert set(emu.stripe_versions()) == {API_VERSION}


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        (
            {"amount": 1000, "currency": "usd", "not_a_param": "1"},
            "not_a_param",
            "parameter_unknown",
        ),
        ({"amount": "abc", "currency": "usd"}, "amount", "parameter_invalid_integer"),
        (
            {"amount": 1000, "currency": "usd", "capture_method": "sometimes"},
            "capture_method",
            None,
        ),
        ({"amount": 1000}, "currency", "parameter_missing"),
        (
            {"amount": 1000, "currency": "usd", "metadata": {"k": {"deep": "x"}}},
            "metadata[k]",
            None,
        ),
    ],
)
def test_spec_violations_get_stripes_400_and_are_recorded(
    emu: StripeEmulator, client: stripe.StripeClient, params: dict, param: str, code: str | None
) -> None:
    require_spec()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.create(params=params)
    assert raised.value.http_status == 400
    assert raised.value.param == param
    assert raised.value.code == code
    assert raised.value.error.type == "invalid_request_error"
    assert len(emu.violations()) == 1 and param in emu.violations()[0]
    assert emu.payment_intents() == []  # nothing ran


def test_query_parameters_are_checked_too(emu: StripeEmulator) -> None:
    require_spec()
    answer = raw(emu, "GET", "/v1/payment_intents", params={"limit": "many", "bogus": "1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "limit"
    assert any("bogus" in v for v in emu.violations())
    assert raw(emu, "GET", "/v1/customers/search").json()["error"]["code"] == "parameter_missing"


def test_endive_refuses_payment_method_types(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    require_spec()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.create(
            params={"amount": 1000, "currency": "usd", "payment_method_types": ["card"]}
        )
    assert raised.value.code == "payment_method_types_no_longer_supported"
    assert raised.value.param == "payment_method_types"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create(
            params={
                "mode": "setup",
                "currency": "usd",
                "success_url": "https://firm.test/ok",
                "payment_method_types": ["us_bank_account"],
            }
        )
    assert raised.value.code == "payment_method_types_no_longer_supported"
    assert emu.payment_intents() == [] and emu.checkout_sessions() == []
    assert len(emu.violations()) == 2


def test_without_the_spec_requests_still_work_unvalidated(clock: VirtualTime) -> None:
    with StripeEmulator(time=clock, validate=False) as emulator:
        client = make_client(emulator)
        customer = client.v1.customers.create(params={"email": "a@firm.test"})
        intent = charge(client, customer.id, "pm_card_visa", amount=2_000)
        assert intent.status == "succeeded" and intent.amount == 2_000
        assert emulator.spec is None and emulator.violations() == []


# ---------------------------------------------------------------------------------------------
# auth, headers, customers


def test_keys_request_ids_and_versions(emu: StripeEmulator) -> None:
    with pytest.raises(stripe.AuthenticationError) as raised:
        make_client(emu, key="sk_test_unknown1234").v1.customers.list()
    assert raised.value.http_status == 401
    assert "sk_test_****1234" in raised.value.user_message
    assert raw(emu, "GET", "/v1/customers", headers={"Authorization": ""}).status_code == 401
    answer = raw(emu, "GET", "/v1/balance", headers={"Stripe-Version": API_VERSION})
    assert answer.headers["Request-Id"].startswith("req_")
    assert emu.stripe_versions()[-1] == API_VERSION


def test_customers_create_update_list_search(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = client.v1.customers.create(
        params={"email": "ada@firm.test", "name": "Ada", "metadata": {"client_key": "CL-1"}}
    )
    assert customer.id.startswith("cus_") and customer.livemode is False
    assert customer.created == ts(START) and customer.metadata.to_dict() == {"client_key": "CL-1"}
    client.v1.customers.create(params={"email": "bob@firm.test"})
    with pytest.raises(stripe.InvalidRequestError) as raised:  # not attached to this customer
        client.v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": "pm_nope"}}
        )
    assert raised.value.code == "resource_missing"
    method = emu.add_payment_method(customer.id, "pm_card_visa", default=False)
    updated = client.v1.customers.update(
        customer.id,
        params={
            "invoice_settings": {"default_payment_method": method},
            "metadata": {"extra": "1"},
        },
    )
    assert updated.invoice_settings.default_payment_method == method
    assert updated.metadata.to_dict() == {"client_key": "CL-1", "extra": "1"}
    listed = client.v1.customers.list(params={"email": "ada@firm.test"})
    assert [c.id for c in listed.data] == [customer.id]
    found = client.v1.customers.search(params={"query": "metadata['client_key']:'CL-1'"})
    assert [c.id for c in found.data] == [customer.id] and found.object == "search_result"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve("cus_missing")
    assert raised.value.http_status == 404 and raised.value.code == "resource_missing"


def test_search_lags_behind_writes_but_lists_do_not(clock: VirtualTime) -> None:
    with StripeEmulator(time=clock, search_lag_seconds=60) as emulator:
        client = make_client(emulator)
        customer = client.v1.customers.create(
            params={"email": "ada@firm.test", "metadata": {"client_key": "CL-1"}}
        )
        query = {"query": "metadata['client_key']:'CL-1'"}
        assert client.v1.customers.search(params=query).data == []
        assert client.v1.customers.list(params={"email": "ada@firm.test"}).data[0].id == customer.id
        emulator.advance(seconds=61)
        assert client.v1.customers.search(params=query).data[0].id == customer.id


# ---------------------------------------------------------------------------------------------
# payment methods and card outcomes


def test_test_payment_methods_attach_detach_and_list(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = client.v1.customers.create(params={"email": "a@firm.test"})
    attached = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    assert attached.id.startswith("pm_") and attached.id != "pm_card_visa"
    assert attached.customer == customer.id and attached.card.last4 == "4242"
    bank = emu.add_payment_method(customer.id, "pm_usBankAccount_success", default=False)
    cards = client.v1.customers.payment_methods.list(customer.id, params={"type": "card"})
    assert [m.id for m in cards.data] == [attached.id]
    every = client.v1.payment_methods.list(params={"customer": customer.id})
    assert {m.id for m in every.data} == {attached.id, bank}
    assert client.v1.payment_methods.retrieve(bank).us_bank_account.routing_number == "110000000"
    detached = client.v1.payment_methods.detach(attached.id)
    assert detached.customer is None
    assert [
        m.id for m in client.v1.payment_methods.list(params={"customer": customer.id}).data
    ] == [bank]
    with pytest.raises(stripe.InvalidRequestError):  # a detached method cannot be used again
        charge(client, customer.id, attached.id)


def test_card_payment_succeeds_with_charge_and_exact_fee(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer, "pm_card_visa")
    intent = charge(client, customer, method, amount=10_010)
    assert intent.status == "succeeded" and intent.amount_received == 10_010
    assert intent.payment_method_types == ["card", "us_bank_account"]
    full = client.v1.payment_intents.retrieve(
        intent.id, params={"expand": ["latest_charge.balance_transaction"]}
    )
    txn = full.latest_charge.balance_transaction
    # 2.9% of 100.10 = 2.9029 -> 2.90, + 0.30
    assert (txn.amount, txn.fee, txn.net) == (10_010, 320, 9_690)
    assert txn.type == "charge" and txn.reporting_category == "charge"
    assert txn.fee_details[0].type == "stripe_fee" and txn.fee_details[0].amount == 320
    assert txn.available_on == midnight(2026, 3, 4) and txn.status == "pending"
    assert full.latest_charge.paid and full.latest_charge.metadata.to_dict()["milestone"] == "M-1"
    assert emu.balance().pending == Money(Decimal("96.90"), "USD")
    emu.advance(days=2)
    assert client.v1.balance_transactions.retrieve(txn.id).status == "available"
    kinds = [e["type"] for e in emu.events("*payment_intent*")]
    assert kinds == ["payment_intent.created", "payment_intent.succeeded"]


@pytest.mark.parametrize(
    ("token", "code", "decline_code"),
    [
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
        ("pm_card_visa_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ],
)
def test_card_declines_are_402_with_the_intent_left_requiring_a_method(
    emu: StripeEmulator, client: stripe.StripeClient, token: str, code: str, decline_code: str
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer, token)
    with pytest.raises(stripe.CardError) as raised:
        charge(client, customer, method)
    error = raised.value
    assert error.http_status == 402 and error.code == code
    assert error.error.decline_code == decline_code
    assert error.error.payment_intent.status == "requires_payment_method"
    assert error.request_id.startswith("req_")
    intent = client.v1.payment_intents.retrieve(error.error.payment_intent.id)
    assert intent.last_payment_error.decline_code == decline_code
    assert client.v1.charges.retrieve(intent.latest_charge).status == "failed"
    assert emu.balance_transactions() == []
    assert [e["type"] for e in emu.events("charge.*")] == ["charge.failed"]
    assert emu.events("payment_intent.payment_failed")


def test_authentication_required_off_session_fails_and_on_session_asks(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    with pytest.raises(stripe.CardError) as raised:
        charge(client, customer, "pm_card_authenticationRequired")
    assert raised.value.code == "authentication_required"
    assert raised.value.error.payment_intent.status == "requires_payment_method"
    on_session = charge(client, customer, "pm_card_authenticationRequired", off_session=False)
    assert on_session.status == "requires_action"
    assert on_session.next_action.type == "redirect_to_url"
    assert emu.authenticate(on_session.id)["status"] == "succeeded"
    other = charge(client, customer, "pm_card_authenticationRequired", off_session=False)
    page = other.next_action.redirect_to_url.url  # the emulator's stand-in for the bank's page
    assert requests.get(page, timeout=5).status_code == 200
    assert requests.post(page, data={"result": "fail"}, timeout=5).status_code == 200
    failed = client.v1.payment_intents.retrieve(other.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"
    # "authenticate unless set up": saved through a setup, it then works off session
    saved = emu.add_payment_method(customer, "pm_card_authenticationRequiredOnSetup")
    assert charge(client, customer, saved).status == "succeeded"


# ---------------------------------------------------------------------------------------------
# ACH


def test_ach_settles_after_four_business_days_with_capped_fee(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    bank = emu.add_payment_method(customer, "pm_usBankAccount_success")
    big = charge(client, customer, bank, amount=100_000)  # 0.8% = 8.00 -> capped at 5.00
    small = charge(client, customer, bank, amount=10_050)  # 0.8% = 0.804 -> 0.80
    assert big.status == small.status == "processing"
    txns = {t["source"]: t for t in emu.balance_transactions()}
    big_txn = txns[big.latest_charge]
    assert big.latest_charge.startswith("py_")
    assert (big_txn["fee"], big_txn["net"], big_txn["type"]) == (500, 99_500, "payment")
    assert txns[small.latest_charge]["fee"] == 80
    assert big_txn["available_on"] == midnight(2026, 3, 6)  # Monday + 4 business days
    emu.advance(days=3)  # Thursday: still processing
    assert client.v1.payment_intents.retrieve(big.id).status == "processing"
    assert emu.balance().available == Money(Decimal("0.00"), "USD")
    emu.advance(days=1)
    assert client.v1.payment_intents.retrieve(big.id).status == "succeeded"
    assert client.v1.charges.retrieve(big.latest_charge).status == "succeeded"
    kinds = [e["type"] for e in emu.events() if e["data"]["object"].get("id") == big.id]
    assert kinds == [
        "payment_intent.created",
        "payment_intent.processing",
        "payment_intent.succeeded",
    ]


def test_ach_failure_reverses_the_payment_and_charges_the_failure_fee(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    bank = emu.add_payment_method(customer, "pm_usBankAccount_insufficientFunds")
    intent = charge(client, customer, bank, amount=20_000)
    assert intent.status == "processing"
    emu.advance(days=4)
    failed = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error.code == "insufficient_funds"
    assert failed.latest_charge.status == "failed"
    assert failed.latest_charge.failure_code == "insufficient_funds"
    reversal = client.v1.balance_transactions.retrieve(
        failed.latest_charge.failure_balance_transaction
    )
    assert reversal.type == "payment_failure_refund"
    assert reversal.reporting_category == "charge_failure"
    assert reversal.amount == -20_000 and reversal.fee == 400 - 160
    # the payment and its failure net out to the $4.00 failure fee, which the next payout
    # (a withdrawal: the available balance is negative) takes from the bank
    payment = client.v1.balance_transactions.retrieve(failed.latest_charge.balance_transaction)
    assert payment.net + reversal.net == -400
    assert [p["amount"] for p in emu.payouts()] == [-400]
    assert emu.events("payment_intent.payment_failed") and emu.events("charge.failed")


def test_ach_return_after_success_is_a_lost_dispute(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    bank = emu.add_payment_method(customer, ACH_RETURN_AFTER_SUCCESS)
    intent = charge(client, customer, bank, amount=50_000)
    emu.advance(days=4)
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    assert emu.disputes() == []
    emu.advance(days=4)  # returned two business days after it succeeded
    (dispute,) = client.v1.disputes.list(params={"payment_intent": intent.id}).data
    assert dispute.status == "lost" and dispute.reason == "insufficient_funds"
    assert dispute.amount == 50_000 and dispute.charge == intent.latest_charge
    (withdrawal,) = dispute.balance_transactions
    assert withdrawal.type == "adjustment" and withdrawal.reporting_category == "dispute"
    assert (withdrawal.amount, withdrawal.fee) == (-50_000, 400)
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    assert client.v1.charges.retrieve(intent.latest_charge).disputed is True
    kinds = [e["type"] for e in emu.events("charge.dispute.*")]
    assert kinds == ["charge.dispute.created", "charge.dispute.closed"]
    # the return invalidated the mandate: the next debit asks for a new one
    with pytest.raises(stripe.InvalidRequestError) as raised:
        charge(client, customer, bank)
    assert "requires a mandate" in raised.value.user_message


def test_ach_dispute_from_the_customer_costs_the_dispute_fee(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    intent = charge(client, customer, emu.add_payment_method(customer, "pm_usBankAccount_dispute"))
    emu.advance(days=4)  # Friday: succeeded
    assert emu.disputes() == []
    emu.advance(days=3)  # the next business day: disputed
    (dispute,) = emu.disputes()
    assert dispute["status"] == "lost" and dispute["payment_intent"] == intent.id
    assert dispute["balance_transactions"][0]["fee"] == 1_500


def test_ach_needs_a_mandate(emu: StripeEmulator, client: stripe.StripeClient) -> None:
    customer = emu.add_customer(email="a@firm.test")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        charge(client, customer, "pm_usBankAccount_success")
    assert "requires a mandate" in raised.value.user_message
    intent = charge(
        client,
        customer,
        "pm_usBankAccount_success",
        off_session=False,
        mandate_data={"customer_acceptance": {"type": "offline"}},
    )
    assert intent.status == "processing"


# ---------------------------------------------------------------------------------------------
# refunds and disputes


def test_refunds_partial_and_full_never_over_the_charge(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    intent = charge(client, customer, emu.add_payment_method(customer), amount=10_000)
    first = client.v1.refunds.create(params={"charge": intent.latest_charge, "amount": 3_000})
    second = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 2_000})
    assert first.status == "succeeded" and first.id.startswith("re_")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"charge": intent.latest_charge, "amount": 5_001})
    assert raised.value.code == "amount_too_large"
    third = emu.refund(intent.id)  # the rest, from the Dashboard
    refunded = client.v1.charges.retrieve(intent.latest_charge)
    assert refunded.amount_refunded == 10_000 and refunded.refunded is True
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"charge": intent.latest_charge})
    assert raised.value.code == "charge_already_refunded"
    txn = client.v1.balance_transactions.retrieve(second.balance_transaction)
    assert (txn.type, txn.amount, txn.fee, txn.reporting_category) == (
        "refund",
        -2_000,
        0,
        "refund",
    )
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [third, second.id, first.id]
    assert len(emu.events("charge.refunded")) == 3 and len(emu.events("refund.created")) == 3
    # what is left is the fee kept on the charge: 10,000 - 320 - 10,000
    assert emu.balance().total == Money(Decimal("-3.20"), "USD")


def test_a_processing_bank_debit_refund_waits_for_the_payment(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    good = charge(client, customer, emu.add_payment_method(customer, "pm_usBankAccount_success"))
    bad = charge(client, customer, emu.add_payment_method(customer, "pm_usBankAccount_noAccount"))
    waiting = client.v1.refunds.create(params={"payment_intent": good.id, "amount": 4_000})
    doomed = client.v1.refunds.create(params={"payment_intent": bad.id})
    assert waiting.status == "pending" and waiting.balance_transaction is None
    assert waiting.id.startswith("pyr_")
    emu.advance(days=4)  # both debits settle (or fail)
    sent = client.v1.refunds.retrieve(waiting.id, params={"expand": ["balance_transaction"]})
    assert sent.balance_transaction.type == "payment_refund"
    assert sent.balance_transaction.amount == -4_000
    assert client.v1.refunds.retrieve(doomed.id).status == "canceled"
    assert client.v1.charges.retrieve(bad.latest_charge).amount_refunded == 0
    emu.advance(days=6)  # four business days after it was sent
    assert client.v1.refunds.retrieve(waiting.id).status == "succeeded"


def test_disputes_withdraw_then_win_or_lose(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer)
    won = charge(client, customer, method, amount=10_000)
    lost = charge(client, customer, method, amount=20_000)
    won_id = emu.open_dispute(won.id)
    lost_id = emu.open_dispute(lost.latest_charge, reason="product_not_received")
    opened = client.v1.disputes.retrieve(won_id)
    assert opened.status == "needs_response" and opened.amount == 10_000
    (withdrawal,) = opened.balance_transactions
    assert (withdrawal.amount, withdrawal.fee, withdrawal.net) == (-10_000, 1_500, -11_500)
    assert withdrawal.type == "adjustment" and withdrawal.reporting_category == "dispute"
    emu.win_dispute(won_id)
    emu.lose_dispute(lost_id)
    after = client.v1.disputes.retrieve(won_id)
    assert after.status == "won"
    reinstated = after.balance_transactions[1]
    assert reinstated.reporting_category == "dispute_reversal" and reinstated.type == "adjustment"
    assert (reinstated.amount, reinstated.fee) == (10_000, 0)  # the fee is not given back
    closed = client.v1.disputes.retrieve(lost_id)
    assert closed.status == "lost" and len(closed.balance_transactions) == 1
    assert {d.id for d in client.v1.disputes.list().data} == {won_id, lost_id}
    with pytest.raises(StripeEmulatorError):
        emu.win_dispute(lost_id)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"payment_intent": lost.id})
    assert raised.value.code == "charge_disputed"
    kinds = [e["type"] for e in emu.events("charge.dispute.*")]
    assert kinds.count("charge.dispute.funds_reinstated") == 1
    assert kinds.count("charge.dispute.closed") == 2


# ---------------------------------------------------------------------------------------------
# payouts and balance


def test_daily_payouts_pay_what_became_available(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer)
    first = charge(client, customer, method, amount=10_000)
    second = charge(client, customer, method, amount=5_000)
    client.v1.refunds.create(params={"payment_intent": second.id, "amount": 1_000})
    emu.advance(days=1)  # Tuesday: nothing available yet except the refund's debit
    first_payout = client.v1.payouts.list().data
    assert [p.amount for p in first_payout] == [-1_000]  # a negative payout (a withdrawal)
    emu.advance(days=1)  # Wednesday midnight: both charges available, paid out
    payout = client.v1.payouts.list(params={"limit": 1}).data[0]
    assert payout.amount == (10_000 - 320) + (5_000 - 175) and payout.status == "in_transit"
    assert payout.automatic and payout.arrival_date == midnight(2026, 3, 5)
    txns = client.v1.balance_transactions.list(
        params={"payout": payout.id, "expand": ["data.source"], "limit": 100}
    ).data
    paid_out = [t for t in txns if t.type != "payout"]
    assert sum(t.net for t in paid_out) == payout.amount
    assert sum(t.net for t in txns) == 0  # the payout's own transaction nets it out
    assert {t.source.id for t in paid_out} == {first.latest_charge, second.latest_charge}
    (own,) = [t for t in txns if t.type == "payout"]
    assert own.reporting_category == "payout" and own.amount == -payout.amount
    emu.advance(days=1)
    assert client.v1.payouts.retrieve(payout.id).status == "paid"
    assert emu.events("payout.paid")
    balance = client.v1.balance.retrieve()
    assert balance.available[0].amount == 0 and balance.pending[0].amount == 0


def test_failed_payout_returns_the_funds_to_the_next_one(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    charge(client, customer, emu.add_payment_method(customer), amount=10_000)
    emu.fail_next_payout("account_closed")
    emu.advance(days=2)  # Wednesday: paid out
    (payout,) = client.v1.payouts.list().data
    emu.advance(days=1)  # Thursday: it failed on arrival, and the funds went out again
    failed = client.v1.payouts.retrieve(
        payout.id, params={"expand": ["failure_balance_transaction"]}
    )
    assert failed.status == "failed" and failed.failure_code == "account_closed"
    reversal = failed.failure_balance_transaction
    assert reversal.type == "payout_failure" and reversal.reporting_category == "payout_reversal"
    assert reversal.amount == 9_680
    again = client.v1.payouts.list(params={"limit": 1}).data[0]
    assert again.id != payout.id and again.amount == 9_680
    assert [t["id"] for t in emu.balance_transactions(payout=again.id)] == [
        reversal.id,
        again.balance_transaction,
    ]
    assert [e["type"] for e in emu.events("payout.*")] == [
        "payout.created",
        "payout.failed",
        "payout.created",
    ]


def test_payout_schedule_can_be_manual_and_weekly(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    emu.set_payout_schedule(PayoutSchedule(interval="manual"))
    customer = emu.add_customer(email="a@firm.test")
    charge(client, customer, emu.add_payment_method(customer), amount=10_000)
    emu.advance(days=10)
    assert emu.payouts() == [] and emu.balance().available == Money(Decimal("96.80"), "USD")
    payout_id = emu.pay_out_now()
    assert emu.object(payout_id)["amount"] == 9_680
    emu.set_payout_schedule(PayoutSchedule(interval="weekly", weekly_anchor="friday"))
    charge(client, customer, emu.add_payment_method(customer), amount=1_000)  # Thursday
    emu.advance(days=9)  # available Monday; paid out on the Friday after
    weekly = emu.payouts()[-1]
    assert datetime.fromtimestamp(weekly["created"], UTC) == datetime(2026, 3, 20, tzinfo=UTC)
    assert weekly["amount"] == 1_000 - 59


# ---------------------------------------------------------------------------------------------
# Checkout


def test_checkout_setup_saves_a_bank_account_with_a_mandate(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = client.v1.customers.create(params={"email": "a@firm.test", "name": "Ada"})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "setup",
            "customer": customer.id,
            "currency": "usd",
            "success_url": "https://firm.test/ok",
            "cancel_url": "https://firm.test/cancel",
            "allowed_payment_method_types": ["card", "us_bank_account"],
            "metadata": {"client_key": "CL-1"},
        }
    )
    assert session.id.startswith("cs_test_") and session.status == "open"
    assert session.url.startswith(emu.url) and session.expires_at == ts(START) + 86_400
    assert (
        client.v1.setup_intents.retrieve(session.setup_intent).status == "requires_payment_method"
    )
    assert requests.get(session.url, timeout=5).status_code == 200  # the emulator's page
    emu.complete_session(session.id, "pm_usBankAccount_success")
    done = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["setup_intent", "setup_intent.payment_method"]}
    )
    assert done.status == "complete" and done.setup_intent.status == "succeeded"
    method = done.setup_intent.payment_method
    assert method.type == "us_bank_account" and method.customer == customer.id
    assert client.v1.mandates.retrieve(done.setup_intent.mandate).status == "active"
    listed = client.v1.checkout.sessions.list(
        params={"customer": customer.id, "status": "complete"}
    )
    assert [s.id for s in listed.data] == [session.id]
    assert emu.events("checkout.session.completed") and emu.events("setup_intent.succeeded")
    assert charge(client, customer.id, method.id).status == "processing"  # usable off session
    with pytest.raises(StripeEmulatorError):
        emu.complete_session(session.id)


def test_checkout_payment_for_a_client_who_must_authenticate(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": customer,
            "success_url": "https://firm.test/ok",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 25_000,
                        "product_data": {"name": "Milestone 2"},
                    },
                    "quantity": 1,
                }
            ],
            "payment_intent_data": {"metadata": {"milestone": "M-2"}},
            "metadata": {"milestone": "M-2"},
        }
    )
    assert session.amount_total == 25_000 and session.payment_status == "unpaid"
    assert session.payment_intent is None
    emu.complete_session(session.id, "pm_card_authenticationRequired")
    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert done.status == "complete" and done.payment_status == "paid"
    assert done.payment_intent.status == "succeeded"
    assert done.payment_intent.metadata.to_dict() == {"milestone": "M-2"}
    expired = client.v1.checkout.sessions.create(
        params={"mode": "setup", "currency": "usd", "success_url": "https://firm.test/ok"}
    )
    emu.advance(hours=25)
    assert client.v1.checkout.sessions.retrieve(expired.id).status == "expired"
    assert emu.events("checkout.session.expired")


# ---------------------------------------------------------------------------------------------
# lists, expansions, events


def test_lists_page_newest_first_with_cursors_and_created_filters(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    ids = []
    for index in range(5):
        ids.append(client.v1.customers.create(params={"email": f"c{index}@firm.test"}).id)
        emu.advance(minutes=1)
    page = client.v1.customers.list(params={"limit": 2})
    assert [c.id for c in page.data] == [ids[4], ids[3]] and page.has_more
    assert page.url == "/v1/customers"
    nxt = client.v1.customers.list(params={"limit": 2, "starting_after": ids[3]})
    assert [c.id for c in nxt.data] == [ids[2], ids[1]] and nxt.has_more
    back = client.v1.customers.list(params={"limit": 2, "ending_before": ids[1]})
    assert [c.id for c in back.data] == [ids[3], ids[2]] and back.has_more
    since = client.v1.customers.list(params={"created": {"gte": ts(START) + 120}})
    assert [c.id for c in since.data] == [ids[4], ids[3], ids[2]]
    every = [c.id for c in client.v1.customers.list(params={"limit": 2}).auto_paging_iter()]
    assert every == ids[::-1]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.list(params={"limit": 101})


def test_expansions_and_events_filters(emu: StripeEmulator, client: stripe.StripeClient) -> None:
    customer = emu.add_customer(email="a@firm.test")
    intent = charge(client, customer, emu.add_payment_method(customer), amount=10_000)
    refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    txns = client.v1.balance_transactions.list(
        params={"expand": ["data.source", "data.source.payment_intent"]}
    ).data
    by_type = {t.type: t for t in txns}
    assert by_type["charge"].source.payment_intent.id == intent.id
    assert by_type["refund"].source.id == refund.id
    assert by_type["refund"].source.payment_intent.id == intent.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.retrieve(intent.id, params={"expand": ["amount"]})
    one = client.v1.events.list(params={"type": "refund.created"}).data
    assert [e.data.object.id for e in one] == [refund.id]
    several = client.v1.events.list(params={"types": ["refund.created", "charge.succeeded"]})
    assert [e.type for e in several.data] == ["refund.created", "charge.succeeded"]
    wildcard = client.v1.events.list(params={"type": "payment_intent.*"}).data
    assert {e.type for e in wildcard} == {"payment_intent.created", "payment_intent.succeeded"}
    assert client.v1.events.list(params={"created": {"gt": ts(START)}}).data == []
    event = client.v1.events.retrieve(one[0].id)
    assert event.api_version == API_VERSION and event.request.id.startswith("req_")


# ---------------------------------------------------------------------------------------------
# webhooks


class Receiver:
    """A loopback webhook endpoint that keeps what it got and answers `statuses` in turn."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = statuses or []
        self.received: list[tuple[bytes, str]] = []
        self.server = EmulatorServer(self._handle)

    def _handle(self, request: Request) -> Response:
        self.received.append((request.get_data(), request.headers.get("Stripe-Signature", "")))
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("ok", status=status)

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def test_webhooks_are_signed_so_construct_event_accepts_them(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    with Receiver() as receiver:
        endpoint = emu.add_webhook_endpoint(
            receiver.server.url + "/hooks", enabled_events=["payment_intent.*"]
        )
        customer = emu.add_customer(email="a@firm.test")
        intent = charge(client, customer, emu.add_payment_method(customer))
        delivered = emu.deliver_pending()
        assert [d.status for d in delivered] == ["delivered", "delivered"]
        events = [
            stripe.Webhook.construct_event(body.decode(), header, endpoint.secret)
            for body, header in receiver.received
        ]
        assert [e.type for e in events] == ["payment_intent.created", "payment_intent.succeeded"]
        assert events[1].data.object.id == intent.id
        body, header = receiver.received[1]
        tampered = body.decode().replace('"succeeded"', '"canceled"')
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(tampered, header, endpoint.secret)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body.decode(), header, "whsec_wrong")
        assert emu.deliver_pending() == []  # nothing owed twice
        assert "secret" not in repr(endpoint) and endpoint.secret not in repr(endpoint)


def test_webhooks_retry_on_errors_and_can_duplicate_and_shuffle(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    with Receiver(statuses=[500]) as receiver:
        emu.add_webhook_endpoint(receiver.server.url, enabled_events=["customer.created"])
        emu.add_customer(email="a@firm.test")
        (first,) = emu.deliver_pending()
        assert first.status == "pending" and first.last_status == 500
        assert emu.deliver_pending() == []  # the retry waits on the emulated clock
        emu.advance(minutes=5)
        (retry,) = emu.deliver_pending()
        assert retry.status == "delivered" and retry.attempts == 2
        assert len(receiver.received) == 2
        emu.set_webhook_faults(duplicates=True, shuffle=True, seed=3)
        for index in range(6):
            emu.add_customer(email=f"c{index}@firm.test")
        emu.deliver_pending()
        ids = [json.loads(body)["id"] for body, _ in receiver.received[2:]]
        assert len(ids) == 12 and len(set(ids)) == 6  # each event twice
        assert ids != sorted(ids, key=ids.index)  # not in creation order


def test_a_receiver_may_call_the_api_back_while_being_delivered_to(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    seen: list[str] = []

    def handle(request: Request) -> Response:
        event = json.loads(request.get_data())
        seen.append(client.v1.events.retrieve(event["id"]).type)  # no deadlock
        return Response("ok")

    receiver = EmulatorServer(handle)
    receiver.start()
    try:
        emu.add_webhook_endpoint(receiver.url)
        emu.add_customer(email="a@firm.test")
        assert [d.status for d in emu.deliver_pending()] == ["delivered"]
        assert seen == ["customer.created"]
    finally:
        receiver.stop()


def test_webhook_delay_holds_events_back(emu: StripeEmulator) -> None:
    with Receiver() as receiver:
        emu.add_webhook_endpoint(receiver.server.url)
        emu.set_webhook_faults(delay=timedelta(minutes=10))
        emu.add_customer(email="a@firm.test")
        assert emu.deliver_pending() == []
        emu.advance(minutes=10)
        assert len(emu.deliver_pending()) == 1 and len(receiver.received) == 1


# ---------------------------------------------------------------------------------------------
# idempotency


def test_idempotent_replay_and_the_mismatch_error(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer)
    first = charge(client, customer, method, key="charge:M-1:1")
    again = charge(client, customer, method, key="charge:M-1:1")
    assert again.id == first.id and len(emu.payment_intents()) == 1
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers
    with pytest.raises(stripe.IdempotencyError) as raised:
        charge(client, customer, method, amount=10_001, key="charge:M-1:1")
    assert raised.value.http_status == 400 and "charge:M-1:1" in raised.value.user_message
    emu.advance(hours=24)  # pruned: the key is new again
    assert charge(client, customer, method, amount=10_001, key="charge:M-1:1").id != first.id


def test_declines_are_replayed_too(emu: StripeEmulator, client: stripe.StripeClient) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer, "pm_card_visa_chargeDeclined")
    replies = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as raised:
            charge(client, customer, method, key="decline-1")
        replies.append(raised.value)
    assert replies[0].error.payment_intent.id == replies[1].error.payment_intent.id
    assert replies[1].headers["Idempotent-Replayed"] == "true"
    assert len(emu.charges()) == 1


def test_concurrent_use_of_a_key_is_409(emu: StripeEmulator) -> None:
    body = {"email": "a@firm.test"}
    headers = {"Idempotency-Key": "same"}
    hold = emu.hold_next_write()
    results: list[requests.Response] = []
    first = threading.Thread(
        target=lambda: results.append(raw(emu, "POST", "/v1/customers", data=body, headers=headers))
    )
    first.start()
    assert hold.claimed.wait(timeout=10)
    conflict = raw(emu, "POST", "/v1/customers", data=body, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_in_use"
    assert conflict.json()["error"]["type"] == "idempotency_error"
    assert conflict.headers["Stripe-Should-Retry"] == "true"
    hold.release()
    first.join(timeout=10)
    assert results[0].status_code == 200 and len(emu.customers()) == 1
    replay = raw(emu, "POST", "/v1/customers", data=body, headers=headers)
    assert replay.json()["id"] == results[0].json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"


# ---------------------------------------------------------------------------------------------
# faults and rate limits


def test_injected_errors_and_what_the_sdk_does_with_them(emu: StripeEmulator) -> None:
    client = make_client(emu)
    emu.fail_next(1, 500)
    with pytest.raises(stripe.APIError) as raised:
        client.v1.customers.create(params={"email": "a@firm.test"})
    assert raised.value.http_status == 500
    assert raised.value.headers["Stripe-Should-Retry"] == "true"
    emu.fail_next(1, 429)
    with pytest.raises(stripe.RateLimitError) as limited:
        client.v1.customers.list()
    assert limited.value.json_body["error"]["code"] == "rate_limit"
    assert emu.customers() == []
    retrying = make_client(emu, retries=2)
    emu.fail_next(1, 503, method="POST", path="/v1/customers")
    emu.fail_next(1, 409, method="POST")
    client.v1.balance.retrieve()  # not a matching request: answered normally
    created = retrying.v1.customers.create(params={"email": "a@firm.test"})
    assert created.id and len(emu.customers()) == 1
    posts = emu.requests("POST", "/v1/customers")
    assert [p.status for p in posts] == [500, 503, 409, 200]
    assert len({p.headers["Idempotency-Key"] for p in posts[1:]}) == 1  # the SDK kept its key


def test_dropped_writes_commit_and_a_retry_with_the_key_replays(
    emu: StripeEmulator, client: stripe.StripeClient
) -> None:
    customer = emu.add_customer(email="a@firm.test")
    method = emu.add_payment_method(customer)
    emu.drop_next_writes(1)
    with pytest.raises(stripe.APIConnectionError):
        charge(client, customer, method, key="charge:M-9:1")
    (kept,) = emu.payment_intents()
    assert kept["status"] == "succeeded"  # it happened; the client just never heard
    found = client.v1.payment_intents.search(params={"query": "metadata['milestone']:'M-1'"})
    assert [i.id for i in found.data] == [kept["id"]]
    assert charge(client, customer, method, key="charge:M-9:1").id == kept["id"]
    emu.drop_every_write(True)
    for _ in range(2):
        with pytest.raises(stripe.APIConnectionError):
            charge(client, customer, method, key="charge:M-10:1")
    emu.drop_every_write(False)
    assert len(emu.payment_intents()) == 2
    assert emu.requests("POST", "/v1/payment_intents")[-1].status == 0


def test_rate_limits_25_per_second_in_test_mode(clock: VirtualTime) -> None:
    with StripeEmulator(time=clock, rate_limits=True) as emulator:
        client = make_client(emulator)
        for _ in range(25):
            client.v1.customers.list()
        with pytest.raises(stripe.RateLimitError):
            client.v1.customers.list()
        client.v1.customers.create(params={"email": "writes@firm.test"})  # a separate budget
        emulator.advance(seconds=1)
        client.v1.customers.list()
