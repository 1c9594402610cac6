"""Error paths of the Stripe gateway the emulator does not produce easily, with `responses` in
front of stripe-python (its RequestsClient is requests-based): timeouts and resets, 5xx then
success with the same Idempotency-Key on the wire, unreadable bodies, 401/403, 429, reused keys,
refused parameters, declines, and the error table itself. No secret in any message."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
import stripe

from adapters.emulation.clock import EmulatedTime
from adapters.stripe.adapter import StripeGateway, StripeOptions
from adapters.stripe.client import build_client
from adapters.stripe.errors import translate
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
    TransientError,
)
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey
from connector.domain.money import Money
from connector.ports import ChargeRequest, ChargeStatus, DeclineKind

API = "https://stripe.test"
SECRET = "sk_test_51SECRETdoNotLeak0000"
START = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
KEY = IdempotencyKey("charge:firm:inv-131:1")
REQUEST = ChargeRequest(
    client_key=ClientKey("C1"),
    amount=Money("100.10", "USD"),
    description="Q1 bookkeeping",
    metadata={"tenant": "firm", "milestone": "karbon:wi-1:ms-1", "invoice": "131"},
)


class InstantTime(EmulatedTime):
    """Time that moves only when the adapter sleeps (backoff), recording each sleep."""

    def __init__(self) -> None:
        super().__init__(start=START)
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


@pytest.fixture
def time() -> InstantTime:
    return InstantTime()


@pytest.fixture
def gateway(time: InstantTime) -> StripeGateway:
    client = build_client(SECRET, base_url=API)
    return StripeGateway(client, StripeOptions(currency="USD", tenant="firm"), time=time)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _error(status: int, kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "json": {"error": {"type": kind, "message": message, **extra}}}


def pi(status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 10010,
        "currency": "usd",
        "customer": "cus_1",
        "status": status,
        "description": "Q1 bookkeeping",
        "metadata": {**REQUEST.metadata, "attempt_key": KEY},
        "last_payment_error": None,
        **extra,
    }


def a_client_with_a_card(mocked: responses.RequestsMock) -> None:
    """Search finds C1's customer, whose default method is a visa."""
    mocked.get(
        f"{API}/v1/customers/search",
        json={
            "object": "search_result",
            "data": [{"id": "cus_1", "object": "customer", "created": 1, "metadata": {}}],
            "has_more": False,
            "url": "/v1/customers/search",
        },
    )
    mocked.get(
        f"{API}/v1/customers/cus_1",
        json={
            "id": "cus_1",
            "object": "customer",
            "metadata": {},
            "invoice_settings": {
                "default_payment_method": {
                    "id": "pm_1",
                    "object": "payment_method",
                    "type": "card",
                    "card": {"brand": "visa", "last4": "4242"},
                }
            },
        },
    )
    mocked.get(
        f"{API}/v1/checkout/sessions",
        json={"object": "list", "data": [], "has_more": False, "url": "/v1/checkout/sessions"},
    )


def charge_posts(mocked: responses.RequestsMock) -> list[Any]:
    return [c.request for c in mocked.calls if c.request.url == f"{API}/v1/payment_intents"]


def test_the_client_sends_the_key_to_the_base_url_without_sdk_retries(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(f"{API}/v1/payment_intents", json=pi())
    result = gateway.charge(REQUEST, KEY)
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.id == "pi_1"
    assert result.amount == Money("100.10", "USD")
    (sent,) = charge_posts(mocked)
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.headers["Idempotency-Key"] == KEY
    assert sent.headers["Stripe-Version"] == "2026-10-28.endive"
    form = parse_qs(sent.body)
    assert form["amount"] == ["10010"]
    assert form["currency"] == ["usd"]
    assert form["customer"] == ["cus_1"]
    assert form["payment_method"] == ["pm_1"]
    assert form["off_session"] == ["true"] and form["confirm"] == ["true"]
    assert form["allowed_payment_method_types[0]"] == ["card"]
    assert form["allowed_payment_method_types[1]"] == ["us_bank_account"]
    assert "payment_method_types[0]" not in form
    assert form["metadata[attempt_key]"] == [KEY]
    assert form["metadata[milestone]"] == ["karbon:wi-1:ms-1"]


def test_5xx_then_success_resends_the_same_idempotency_key(
    mocked: responses.RequestsMock, gateway: StripeGateway, time: InstantTime
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(f"{API}/v1/payment_intents", **_error(500, "api_error", "oops"))
    mocked.post(f"{API}/v1/payment_intents", **_error(502, "api_error", "bad gateway"))
    mocked.post(f"{API}/v1/payment_intents", json=pi())
    result = gateway.charge(REQUEST, KEY)
    assert result.status is ChargeStatus.SUCCEEDED
    keys = [r.headers["Idempotency-Key"] for r in charge_posts(mocked)]
    assert keys == [KEY, KEY, KEY]
    assert len(time.slept) == 2  # backed off between attempts, on the injected clock


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectionError("connection reset by peer"),
    ],
    ids=["timeout", "reset"],
)
def test_no_answer_on_every_attempt_is_an_unknown_outcome(
    mocked: responses.RequestsMock, gateway: StripeGateway, failure: Exception
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(f"{API}/v1/payment_intents", body=failure)
    with pytest.raises(TransientError) as caught:
        gateway.charge(REQUEST, KEY)
    assert caught.value.outcome_unknown
    posts = charge_posts(mocked)
    assert len(posts) == gateway.options.max_attempts
    assert {r.headers["Idempotency-Key"] for r in posts} == {KEY}
    assert SECRET not in str(caught.value)


def test_a_timeout_then_a_rate_limit_stays_an_unknown_outcome(
    mocked: responses.RequestsMock, time: InstantTime
) -> None:
    gateway = StripeGateway(
        build_client(SECRET, base_url=API),
        StripeOptions(currency="USD", tenant="firm", max_attempts=2),
        time=time,
    )
    a_client_with_a_card(mocked)
    mocked.post(f"{API}/v1/payment_intents", body=requests.exceptions.ReadTimeout("slow"))
    mocked.post(
        f"{API}/v1/payment_intents",
        headers={"Retry-After": "3"},
        **_error(429, "invalid_request_error", "Too many requests", code="rate_limit"),
    )
    with pytest.raises(TransientError) as caught:
        gateway.charge(REQUEST, KEY)
    assert caught.value.outcome_unknown  # the first attempt may still have landed
    assert time.slept[0] >= 0  # one wait between the two attempts


def test_a_rate_limit_honours_retry_after_and_is_not_an_unknown_outcome(
    mocked: responses.RequestsMock, gateway: StripeGateway, time: InstantTime
) -> None:
    mocked.get(
        f"{API}/v1/balance",
        headers={"Retry-After": "7"},
        **_error(429, "invalid_request_error", "Too many requests", code="rate_limit"),
    )
    mocked.get(
        f"{API}/v1/balance",
        json={
            "object": "balance",
            "available": [{"amount": 1500, "currency": "usd"}, {"amount": 99, "currency": "eur"}],
            "pending": [{"amount": -200, "currency": "usd"}],
        },
    )
    assert gateway.balance() == Money("13.00", "USD")
    assert time.slept == [7.0]
    error = translate(
        stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "5"}),
        "a write",
        write=True,
    )
    assert isinstance(error, TransientError)
    assert error.retry_after == 5.0 and not error.outcome_unknown


def test_an_unreadable_answer_to_a_write_is_an_unknown_outcome(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(f"{API}/v1/payment_intents", body="<html>not json</html>", status=200)
    with pytest.raises(TransientError) as caught:
        gateway.charge(REQUEST, KEY)
    assert caught.value.outcome_unknown


def test_an_unreadable_answer_to_a_read_is_transient_and_known(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    mocked.get(f"{API}/v1/payment_intents/pi_1", body="{truncated", status=200)
    with pytest.raises(TransientError) as caught:
        gateway.get_charge(ChargeId("pi_1"))
    assert not caught.value.outcome_unknown


def test_a_refused_key_names_the_setting_and_never_the_key(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    mocked.get(
        f"{API}/v1/balance",
        **_error(401, "invalid_request_error", f"Invalid API Key provided: {SECRET[:12]}****0000"),
    )
    with pytest.raises(ConfigError) as caught:
        gateway.balance()
    text = str(caught.value)
    assert "[payments] secret_key_env" in text
    assert SECRET not in text and SECRET[:12] not in text
    assert len(mocked.calls) == 1  # a bad key is not retried


def test_a_restricted_key_without_permission_is_a_config_error(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    mocked.get(
        f"{API}/v1/balance",
        **_error(403, "invalid_request_error", "The provided key does not have access"),
    )
    with pytest.raises(ConfigError, match="restricted key"):
        gateway.balance()


def test_a_key_reused_with_other_parameters_is_our_bug(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(
        f"{API}/v1/payment_intents",
        **_error(
            400,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with.",
        ),
    )
    with pytest.raises(InvariantViolation, match="idempotency key"):
        gateway.charge(REQUEST, KEY)
    assert len(charge_posts(mocked)) == 1


def test_a_refused_parameter_is_rejected_with_stripes_message_and_param(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    a_client_with_a_card(mocked)
    mocked.post(
        f"{API}/v1/payment_intents",
        **_error(
            400,
            "invalid_request_error",
            "Amount must be at least $0.50 usd",
            param="amount",
            code="amount_too_small",
        ),
    )
    with pytest.raises(RejectedError) as caught:
        gateway.charge(REQUEST, KEY)
    assert "Amount must be at least $0.50 usd" in str(caught.value)
    assert "parameter amount" in str(caught.value)
    assert caught.value.code == "amount_too_small"


def test_a_missing_charge_is_rejected_as_not_found(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    mocked.get(
        f"{API}/v1/payment_intents/pi_nope",
        **_error(
            404,
            "invalid_request_error",
            "No such payment_intent: 'pi_nope'",
            code="resource_missing",
            param="intent",
        ),
    )
    with pytest.raises(RejectedError) as caught:
        gateway.get_charge(ChargeId("pi_nope"))
    assert caught.value.code == "not_found"


@pytest.mark.parametrize(
    ("decline_code", "code", "advice", "kind"),
    [
        ("insufficient_funds", "card_declined", None, DeclineKind.SOFT),
        ("stolen_card", "card_declined", None, DeclineKind.HARD),
        ("generic_decline", "card_declined", "do_not_try_again", DeclineKind.HARD),
        (None, "expired_card", None, DeclineKind.HARD),
    ],
)
def test_a_decline_is_a_failed_result_not_an_error(
    mocked: responses.RequestsMock,
    gateway: StripeGateway,
    decline_code: str | None,
    code: str,
    advice: str | None,
    kind: DeclineKind,
) -> None:
    a_client_with_a_card(mocked)
    failed = pi(
        "requires_payment_method",
        last_payment_error={"type": "card_error", "code": code, "decline_code": decline_code},
    )
    mocked.post(
        f"{API}/v1/payment_intents",
        **_error(
            402,
            "card_error",
            "Your card was declined.",
            code=code,
            decline_code=decline_code,
            advice_code=advice,
            payment_intent=failed,
        ),
    )
    result = gateway.charge(REQUEST, KEY)
    assert result.status is ChargeStatus.FAILED
    assert result.id == "pi_1"
    assert result.decline_code == (decline_code or code)
    assert result.decline_kind is kind
    assert result.message and (decline_code or code) in result.message
    assert len(charge_posts(mocked)) == 1  # a decline is an answer: never retried


def test_authentication_required_gives_a_payment_link_for_the_same_amount(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    a_client_with_a_card(mocked)
    error = {"type": "card_error", "code": "authentication_required"}
    mocked.post(
        f"{API}/v1/payment_intents",
        **_error(
            402,
            "card_error",
            "Your card requires authentication.",
            code="authentication_required",
            decline_code="authentication_required",
            payment_intent=pi("requires_payment_method", last_payment_error=error),
        ),
    )
    mocked.post(
        f"{API}/v1/checkout/sessions",
        json={"id": "cs_pay_1", "object": "checkout.session", "url": "https://pay.test/cs_pay_1"},
    )
    result = gateway.charge(REQUEST, KEY)
    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.id == "pi_1"
    assert result.action_url == "https://pay.test/cs_pay_1"
    (created,) = [c.request for c in mocked.calls if c.request.url == f"{API}/v1/checkout/sessions"]
    form = parse_qs(created.body)
    assert form["mode"] == ["payment"]
    assert form["customer"] == ["cus_1"]
    assert form["line_items[0][price_data][unit_amount]"] == ["10010"]
    assert form["line_items[0][price_data][currency]"] == ["usd"]
    assert form["payment_intent_data[metadata][milestone]"] == ["karbon:wi-1:ms-1"]
    assert form["payment_intent_data[metadata][action_for]"] == [KEY]
    assert "payment_intent_data[metadata][attempt_key]" not in form  # find_charge sees one PI
    assert created.headers["Idempotency-Key"] == f"action:{KEY}"


def test_a_connection_refused_read_is_transient(time: InstantTime) -> None:
    gateway = StripeGateway(
        build_client(SECRET, base_url="http://127.0.0.1:9", timeout=(0.5, 0.5)),
        StripeOptions(currency="USD", tenant="firm", max_attempts=2),
        time=time,
    )
    with pytest.raises(TransientError) as caught:
        gateway.balance()
    assert not caught.value.outcome_unknown


def test_no_secret_in_reprs(gateway: StripeGateway) -> None:
    assert SECRET not in repr(gateway)
    assert SECRET not in repr(gateway.api)


def test_the_error_table_covers_every_stripe_error() -> None:
    def made(kind: type[stripe.StripeError], **kwargs: Any) -> stripe.StripeError:
        body = {"error": {"message": "m"}}
        if kind in (stripe.CardError, stripe.InvalidRequestError):
            return kind("m", None, "c", json_body=body, **kwargs)
        return kind("m", json_body=body, **kwargs)

    expected: list[tuple[stripe.StripeError, type[Exception], bool]] = [
        (made(stripe.CardError, http_status=402), RejectedError, False),
        (made(stripe.RateLimitError, http_status=429), TransientError, False),
        (made(stripe.IdempotencyError, http_status=400), InvariantViolation, False),
        (made(stripe.InvalidRequestError, http_status=400), RejectedError, False),
        (made(stripe.AuthenticationError, http_status=401), ConfigError, False),
        (made(stripe.PermissionError, http_status=403), ConfigError, False),
        (made(stripe.APIConnectionError), TransientError, True),
        (made(stripe.APIError, http_status=503), TransientError, True),
        (made(stripe.APIError, http_status=409), TransientError, True),
    ]
    for exc, kind, unknown_after_write in expected:
        error = translate(exc, "a write", write=True)
        assert isinstance(error, kind), (exc, error)
        if isinstance(error, TransientError):
            assert error.outcome_unknown is unknown_after_write
            read = translate(exc, "a read", write=False)
            assert isinstance(read, TransientError) and not read.outcome_unknown
    assert isinstance(translate(ValueError("x"), "a read", write=False), InvariantViolation)


def test_a_key_echoed_in_stripes_message_is_cut_out() -> None:
    exc = stripe.InvalidRequestError(
        f"No such key: {SECRET}", "key", "invalid", json_body={"error": {}}, http_status=400
    )
    error = translate(exc, "a read", write=False)
    assert SECRET not in str(error) and "[key]" in str(error)


def _txn(n: int, kind: str, category: str, amount: int, fee: int, source: Any) -> dict[str, Any]:
    return {
        "id": f"txn_{n}",
        "object": "balance_transaction",
        "type": kind,
        "reporting_category": category,
        "amount": amount,
        "fee": fee,
        "net": amount - fee,
        "currency": "usd",
        "created": 1_780_000_000 + n,
        "description": None,
        "source": source,
    }


def test_movements_map_every_kind_of_balance_transaction(
    mocked: responses.RequestsMock, gateway: StripeGateway
) -> None:
    charge = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "metadata": {}}
    refund = {"id": "re_1", "object": "refund", "payment_intent": "pi_1", "charge": "ch_1"}
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "payment_intent": "pi_1",
        "charge": "ch_1",
        "reason": "fraudulent",
        "payment_method_details": {"type": "card"},
    }
    returned = {**dispute, "id": "dp_2", "reason": "insufficient_funds"}
    returned["payment_method_details"] = {"type": "us_bank_account"}
    payout = {"id": "po_1", "object": "payout"}
    txns = [
        _txn(1, "charge", "charge", 10010, 320, charge),
        _txn(2, "refund", "refund", -2000, 0, refund),
        _txn(3, "adjustment", "dispute", -8010, 1500, dispute),
        _txn(4, "adjustment", "dispute_reversal", 8010, -1500, dispute),
        _txn(5, "adjustment", "dispute", -8010, 1500, returned),
        _txn(6, "payment_failure_refund", "charge_failure", -5000, 0, charge),
        _txn(7, "payout", "payout", -7000, 0, payout),
        _txn(8, "payout_failure", "payout_reversal", 7000, 0, payout),
        _txn(9, "stripe_fee", "fee", -500, 0, None),
        _txn(10, "refund_failure", "refund_failure", 2000, 0, refund),
    ]
    mocked.get(
        f"{API}/v1/balance_transactions",
        json={"object": "list", "data": txns[::-1], "has_more": False, "url": "/v1/x"},
    )
    mocked.get(f"{API}/v1/payment_intents/pi_1", json=pi())
    closed = {
        "id": "evt_1",
        "object": "event",
        "type": "charge.dispute.closed",
        "created": 1_780_000_100,
        "data": {"object": {**dispute, "status": "lost", "amount": 8010, "currency": "usd"}},
    }
    closed_return = {**closed, "id": "evt_2"}
    closed_return["data"] = {"object": {**returned, "status": "lost", "amount": 8010}}
    mocked.get(
        f"{API}/v1/events",
        json={"object": "list", "data": [closed_return, closed], "has_more": False, "url": "/v1/x"},
    )
    old = {**dispute, "id": "dp_old", "status": "lost", "amount": 1000, "currency": "usd"}
    old["created"] = 1_780_000_050  # lost before the 30 days events go back
    mocked.get(
        f"{API}/v1/disputes",
        json={
            "object": "list",
            "data": [
                {**returned, "status": "lost", "amount": 8010, "currency": "usd", "created": 3},
                {**dispute, "status": "lost", "amount": 8010, "currency": "usd", "created": 2},
                old,
            ],
            "has_more": False,
            "url": "/v1/disputes",
        },
    )
    page = gateway.movements(None)
    kinds = [(m.id, m.kind.value) for m in page.movements]
    assert kinds == [
        ("txn_1", "payment"),
        ("txn_2", "refund"),
        ("txn_3", "dispute_withdrawn"),
        ("txn_4", "dispute_reinstated"),
        ("txn_5", "payment_returned"),  # an ACH debit returned after success (a dispute)
        ("txn_6", "payment_returned"),
        ("txn_7", "payout"),
        ("txn_8", "payout_failed"),
        ("txn_9", "fee"),
        ("txn_10", "refund"),
        ("dp_old", "dispute_lost"),  # from the disputes list, on the first read only
        ("dp_1", "dispute_lost"),  # the returned debit's closing is not a second loss
    ]
    first = page.movements[0]
    assert first.amount == Money("100.10", "USD") and first.fee == Money("3.20", "USD")
    assert first.charge_id == "pi_1" and first.milestone == "karbon:wi-1:ms-1"
    assert first.invoice_id == "131"
    assert page.movements[6].payout_id == "po_1"
    lost = page.movements[-1]
    assert lost.amount == Money("80.10", "USD") and lost.fee.is_zero()
    assert lost.invoice_id == "131"
    assert page.cursor is not None and not page.more
    # the next read starts an overlap before the newest object seen
    mocked.replace(
        responses.GET,
        f"{API}/v1/balance_transactions",
        json={"object": "list", "data": [], "has_more": False, "url": "/v1/x"},
    )
    again = gateway.movements(page.cursor)
    assert [m.id for m in again.movements] == ["dp_1"]  # the closing event, again (overlap)
    listed = [c.request for c in mocked.calls if "/v1/balance_transactions" in c.request.url]
    query = parse_qs(listed[-1].url.split("?", 1)[1])
    assert int(query["created[gte]"][0]) == 1_780_000_100 - 3600
    assert again.cursor == page.cursor  # nothing newer: the cursor stays
