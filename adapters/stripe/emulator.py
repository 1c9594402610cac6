"""A stateful local emulator of Stripe's v1 API as stripe 16.1.0 speaks it (2026-10-28.endive), for
tests and the sandbox: customers, test payment methods, PaymentIntents with card and ACH
outcomes, charges with balance transactions and fees, refunds, disputes, ACH settlement and
returns, automatic payouts, balance, Checkout Sessions (setup and payment), events and signed
webhooks, idempotency, rate limits and injected faults, all on an `EmulatedTime` clock.

Every request is checked against Stripe's OpenAPI description (adapters.emulation.stripe_spec):
a request the real API would refuse gets Stripe's 400 and is recorded, so `violations() == []`
in a test proves the client spoke valid Stripe. Facts are tagged where they come from: [DOC]
Stripe's docs or support pages, [SPEC] spec3.yaml, [SDK] stripe-python 16.1.0, [REF]
../shared/reference/ledger-and-payment-apis.md, [INF] our inference where Stripe says nothing.

Python API (stable; the gateway adapter's tests, the reconcile tests and the sandbox use it):

    with StripeEmulator(time=EmulatedTime()) as stripe_emu:
        client = stripe.StripeClient(stripe_emu.api_key, base_addresses={"api": stripe_emu.url},
                                     max_network_retries=0,
                                     http_client=stripe.RequestsClient(timeout=(5, 30)))
        cus = stripe_emu.add_customer(email="a@b.c", metadata={"client_key": "CL-1"})
        pm = stripe_emu.add_payment_method(cus, "pm_usBankAccount_success")  # attached, mandate
        ... client.v1.payment_intents.create(params={...}, options={"idempotency_key": "k"})
        stripe_emu.advance(days=5)          # ACH settles, funds become available, payouts run
        stripe_emu.balance()                # StripeBalance(available=Money, pending=Money)

Admin (a person or the bank acting outside the API): add_customer, add_payment_method,
complete_session, expire_session, authenticate, refund, open_dispute, win_dispute, lose_dispute,
return_ach_payment, fail_next_payout, set_payout_schedule, pay_out_now, set_fees, advance,
run_due. Reads: customers, payment_methods, payment_intents, charges, refunds, disputes,
balance_transactions, payouts, events, checkout_sessions, setup_intents (rendered objects, oldest
first), balance, object(id). Webhooks: add_webhook_endpoint, deliver_pending, deliveries,
set_webhook_faults, start_webhook_delivery. Faults: fail_next, drop_next_writes,
drop_every_write, set_rate_limits, hold_next_write, search_lag_seconds. Contract: violations,
requests, stripe_versions, internal_errors.

Timing (business days skip weekends, no holidays): card funds become available at midnight UTC
two business days after the charge; an ACH debit stays `processing` and settles (or fails) at
midnight four business days later, its `payment` balance transaction pending until then; daily
automatic payouts run at midnight UTC each business day for the whole available balance (a
negative one too) and arrive the next business day. A bank debit returned after it succeeded is,
as at Stripe, a dispute (reason insufficient_funds / incorrect_account_details /
bank_cannot_process, status lost at once), not a `payment_failure_refund`: that type is only for
a debit that fails while processing."""

from __future__ import annotations

import base64
import contextlib
import copy
import fnmatch
import hashlib
import heapq
import hmac
import json
import random
import re
import secrets
import threading
import time as _wall
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from werkzeug.wrappers import Request, Response

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.emulation.server import (
    EmulatorServer,
    RecordedRequest,
    RequestLog,
    ServedEmulator,
    drop_connection,
)
from adapters.emulation.stripe_spec import SPEC, StripeSpec, decode_form, stripe_spec
from connector.domain.money import Money

__all__ = [
    "ACH_RETURN_AFTER_SUCCESS",
    "API_VERSION",
    "DEFAULT_API_KEY",
    "SPEC",
    "TEST_METHODS",
    "Delivery",
    "Fees",
    "PayoutSchedule",
    "StripeBalance",
    "StripeEmulator",
    "StripeEmulatorError",
    "TestMethod",
    "WebhookEndpoint",
    "WriteHold",
]

API_VERSION = "2026-10-28.endive"  # what stripe 16.1.0 pins [SDK][REF C1]
DEFAULT_API_KEY = "sk_test_emulator"
IDEMPOTENCY_TTL = timedelta(hours=24)  # "keys ... at least 24 hours old" are pruned [DOC]
MAX_KEY_LENGTH = 255  # [DOC idempotent_requests]
# Sandbox: "25 operations per second for each [read and write] in test mode"; the Search API
# allows 20 reads per second (docs.stripe.com/rate-limits) [DOC]
READ_LIMIT = 25
WRITE_LIMIT = 25
SEARCH_LIMIT = 20
CHECKOUT_TTL = timedelta(hours=24)  # a Checkout Session expires 24 hours after creation [DOC]
# "A payment typically takes 4 business days to arrive in your account" (ACH docs) [DOC]
ACH_SETTLEMENT_DAYS = 4
CARD_AVAILABLE_DAYS = 2  # US standard payout delay: 2 business days [DOC payouts]
ACH_RETURN_AFTER_SUCCESS_DAYS = 2  # emulator's choice for the "returned later" account [INF]
PAYOUT_ARRIVAL_DAYS = 1  # [INF]: a standard US payout arrives the next business day
# Sandbox: "retries three times over a few hours" (Stripe webhooks docs, as quoted by
# integrators); the spacing is ours [INF]
WEBHOOK_RETRY_DELAYS = (timedelta(minutes=5), timedelta(hours=1), timedelta(hours=3))

ACH_RETURN_AFTER_SUCCESS = "pm_usBankAccount_succeedsThenReturned"


class StripeEmulatorError(ValueError):
    """An admin call the emulated Stripe refuses (unknown id, over-refund, wrong state)."""


# ---------------------------------------------------------------------------------------------
# test payment methods


@dataclass(frozen=True)
class TestMethod:
    """One of Stripe's test PaymentMethod tokens (usable directly or attached) and what a
    payment with it does. `outcome`: succeed | decline | authenticate | authenticate_once |
    ach_succeed | ach_fail | ach_dispute | ach_return | ach_processing."""

    token: str
    type: str  # "card" | "us_bank_account"
    outcome: str
    code: str | None = None  # card error code, or the ACH charge failure_code
    decline_code: str | None = None
    message: str | None = None
    brand: str = "visa"
    last4: str = "4242"
    emulator_only: bool = False

    __test__ = False  # not a pytest test class despite its name


def _card(token: str, last4: str, outcome: str = "decline", **kw: Any) -> TestMethod:
    return TestMethod(token=token, type="card", outcome=outcome, last4=last4, **kw)


def _bank(token: str, last4: str, outcome: str, **kw: Any) -> TestMethod:
    return TestMethod(
        token=token, type="us_bank_account", outcome=outcome, brand="", last4=last4, **kw
    )


_DECLINED = "Your card was declined."
# Card tokens and numbers: docs.stripe.com/testing (both the `pm_card_visa_chargeDeclined*` and
# the older `pm_card_chargeDeclined*` spellings are accepted) [DOC]. Messages are Stripe's
# standard decline texts; lost and stolen cards show the generic text [DOC declines/codes].
_CARD_METHODS = [
    _card("pm_card_visa", "4242", "succeed"),
    _card("pm_card_visa_debit", "5556", "succeed"),
    _card("pm_card_mastercard", "4444", "succeed", brand="mastercard"),
    _card("pm_card_amex", "8431", "succeed", brand="amex"),
    _card(
        "pm_card_visa_chargeDeclined",
        "0002",
        code="card_declined",
        decline_code="generic_decline",
        message=_DECLINED,
    ),
    _card(
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        "9995",
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
    ),
    _card(
        "pm_card_visa_chargeDeclinedLostCard",
        "9987",
        code="card_declined",
        decline_code="lost_card",
        message=_DECLINED,
    ),
    _card(
        "pm_card_visa_chargeDeclinedStolenCard",
        "9979",
        code="card_declined",
        decline_code="stolen_card",
        message=_DECLINED,
    ),
    _card(
        "pm_card_visa_chargeDeclinedVelocityLimitExceeded",
        "6975",
        code="card_declined",
        decline_code="card_velocity_exceeded",
        message="Your card was declined for making repeated attempts too frequently or "
        "exceeding its amount limit.",
    ),
    _card(
        "pm_card_chargeDeclinedExpiredCard",
        "0069",
        code="expired_card",
        decline_code="expired_card",
        message="Your card has expired.",
    ),
    _card(
        "pm_card_chargeDeclinedIncorrectCvc",
        "0127",
        code="incorrect_cvc",
        decline_code="incorrect_cvc",
        message="Your card's security code is incorrect.",
    ),
    _card(
        "pm_card_chargeDeclinedProcessingError",
        "0119",
        code="processing_error",
        decline_code="processing_error",
        message="An error occurred while processing your card. Try again in a little bit.",
    ),
    # "Always authenticate": off-session -> 402 authentication_required, PI
    # requires_payment_method ("When a payment attempt fails, the request also fails with a 402
    # HTTP status code and the status of the PaymentIntent is requires_payment_method"); on
    # session -> requires_action [DOC save-and-reuse, declines/codes]
    _card(
        "pm_card_authenticationRequired",
        "3184",
        "authenticate",
        code="authentication_required",
        decline_code="authentication_required",
        message="Your card was declined. This transaction requires authentication.",
    ),
    # "Authenticate unless set up": off-session succeeds once saved through a setup (Checkout
    # setup mode or a SetupIntent); used raw it needs authentication [DOC testing]
    _card(
        "pm_card_authenticationRequiredOnSetup",
        "3155",
        "authenticate_once",
        code="authentication_required",
        decline_code="authentication_required",
        message="Your card was declined. This transaction requires authentication.",
    ),
]
for _spelling in ("InsufficientFunds", "LostCard", "StolenCard", ""):
    _base = next(m for m in _CARD_METHODS if m.token == f"pm_card_visa_chargeDeclined{_spelling}")
    _CARD_METHODS.append(
        TestMethod(**{**_base.__dict__, "token": f"pm_card_chargeDeclined{_spelling}"})
    )

# US bank accounts: tokens and behaviours from the ACH Direct Debit docs' "Test account numbers"
# table (routing 110000000) [DOC]. Failure codes and messages on the charge are [INF] from the
# behaviours ("fails because the account is closed" -> account_closed). Stripe has no token for
# a payment that succeeds and is returned afterwards; ACH_RETURN_AFTER_SUCCESS is the emulator's
# own: it settles, then Stripe's documented late-failure path runs ("In rare situations, Stripe
# might receive an ACH failure from the bank after a PaymentIntent has transitioned to
# succeeded. If this happens, Stripe creates a dispute with a reason of insufficient_funds ...
# Stripe charges a failure fee in this situation") [DOC ach-direct-debit].
_BANK_METHODS = [
    _bank("pm_usBankAccount_success", "6789", "ach_succeed"),
    _bank(
        "pm_usBankAccount_accountClosed",
        "1113",
        "ach_fail",
        code="account_closed",
        message="The customer's bank account has been closed.",
    ),
    _bank(
        "pm_usBankAccount_noAccount",
        "1116",
        "ach_fail",
        code="no_account",
        message="The customer's bank account could not be located.",
    ),
    _bank(
        "pm_usBankAccount_insufficientFunds",
        "2227",
        "ach_fail",
        code="insufficient_funds",
        message="The customer's account has insufficient funds to cover this payment.",
    ),
    _bank(
        "pm_usBankAccount_debitNotAuthorized",
        "3335",
        "ach_fail",
        code="debit_not_authorized",
        message="The customer has notified their bank that this payment was unauthorized.",
    ),
    _bank(
        "pm_usBankAccount_invalidCurrency",
        "4440",
        "ach_fail",
        code="invalid_currency",
        message="The bank was unable to process this payment because of its currency.",
    ),
    _bank("pm_usBankAccount_dispute", "5559", "ach_dispute", decline_code="customer_initiated"),
    _bank("pm_usBankAccount_processing", "0009", "ach_processing"),
    _bank(
        ACH_RETURN_AFTER_SUCCESS,
        "7777",
        "ach_return",
        code="insufficient_funds",
        emulator_only=True,
    ),
]

TEST_METHODS: dict[str, TestMethod] = {m.token: m for m in _CARD_METHODS + _BANK_METHODS}


# ---------------------------------------------------------------------------------------------
# fees, schedules, balance


def _percent(amount: int, percent: Decimal) -> int:
    """`percent`% of `amount` minor units, rounded half up to the unit [INF: Stripe publishes the
    rates, not its rounding]."""
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class Fees:
    """Stripe's US standard pricing (stripe.com/pricing) [DOC]: cards 2.9% + 30c; ACH Direct
    Debit 0.8% capped at $5.00, a $4.00 failed-payment fee; disputes $15.00. Amounts in cents.
    Since 2025-06 the dispute fee is no longer given back when a dispute is won (Stripe's
    dispute-fees FAQ lost that sentence; integrators report the change) [DOC+INF]: set
    `dispute_fee_returned_on_win` to model the older rule."""

    card_percent: Decimal = Decimal("2.9")
    card_fixed: int = 30
    ach_percent: Decimal = Decimal("0.8")
    ach_cap: int = 500
    ach_failure_fee: int = 400
    dispute_fee: int = 1500
    dispute_fee_returned_on_win: bool = False

    def card(self, amount: int) -> int:
        return _percent(amount, self.card_percent) + self.card_fixed

    def ach(self, amount: int) -> int:
        return min(_percent(amount, self.ach_percent), self.ach_cap)

    def for_method(self, method_type: str, amount: int) -> int:
        return self.ach(amount) if method_type == "us_bank_account" else self.card(amount)


@dataclass
class PayoutSchedule:
    """Automatic payouts: `interval` daily (every business day), weekly (on `weekly_anchor`)
    or manual (none; `pay_out_now()` still works), at `hour` UTC; each pays the whole available
    balance, negative included: "a withdrawal with a negative amount ... created the next day"
    in the US [DOC support: negative balances]."""

    interval: str = "daily"
    weekly_anchor: str = "monday"
    hour: int = 0
    delay_days: int = CARD_AVAILABLE_DAYS
    arrival_days: int = PAYOUT_ARRIVAL_DAYS


@dataclass(frozen=True)
class StripeBalance:
    """The account balance as Money: `available`, `pending`, and their sum."""

    available: Money
    pending: Money

    @property
    def total(self) -> Money:
        return self.available + self.pending


@dataclass
class WebhookEndpoint:
    id: str
    url: str
    secret: str
    enabled_events: tuple[str, ...] = ("*",)

    def __repr__(self) -> str:  # the signing secret never reaches a log
        return f"WebhookEndpoint(id={self.id!r}, url={self.url!r})"


@dataclass
class WriteHold:
    """A write held after claiming its idempotency key (`StripeEmulator.hold_next_write`)."""

    claimed: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class Delivery:
    """One event owed to one endpoint: attempts so far, when the next is due, how it ended."""

    event_id: str
    endpoint_id: str
    next_at: datetime
    attempts: int = 0
    status: str = "pending"  # pending | delivered | failed
    last_status: int | None = None
    last_error: str | None = None
    seq: int = 0


# ---------------------------------------------------------------------------------------------
# helpers


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _add_business_days(moment: datetime, days: int) -> date:
    day = moment.astimezone(UTC).date()
    while days > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            days -= 1
    return day


def _next_business_day(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _invalid(f"Invalid integer: {value}", name, "parameter_invalid_integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    raise _invalid(f"Invalid integer: {value}", name, "parameter_invalid_integer")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def _str_map(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    raise _invalid("Invalid metadata: must be a dictionary (hash)", "metadata")


def _merge_metadata(current: dict[str, str], update: Any) -> dict[str, str]:
    """Stripe merges metadata keys; an empty value unsets a key, `metadata=` unsets all [DOC]."""
    if update == "":
        return {}
    merged = dict(current)
    for key, value in _str_map(update).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _list_of_str(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 0)]
    return [str(value)]


class _ApiError(Exception):
    """A Stripe error answer: HTTP status and the `error` object."""

    def __init__(
        self, status: int, error: dict[str, Any], headers: Mapping[str, str] | None = None
    ):
        super().__init__(error.get("message"))
        self.status = status
        self.error = error
        self.headers = dict(headers or {})


def _invalid(
    message: str, param: str | None = None, code: str | None = None, status: int = 400
) -> _ApiError:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    return _ApiError(status, error)


def _missing(kind: str, object_id: str, param: str | None = None) -> _ApiError:
    return _invalid(f"No such {kind}: '{object_id}'", param, "resource_missing", 404)


@dataclass
class _Ctx:
    """One request being executed: its parameters (cast by the spec), path parameters, and
    what events it causes carry in `request`."""

    params: dict[str, Any]
    path: dict[str, str]
    request_id: str | None
    idempotency_key: str | None


@dataclass
class _Stored:
    fingerprint: str
    at: datetime
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False


@dataclass(order=True)
class _Job:
    at: float
    priority: int
    seq: int
    name: str = field(compare=False)
    run: Callable[[], None] = field(compare=False)


_SUPPORTED_TYPES = ("card", "us_bank_account")
_READ_METHODS = frozenset({"GET", "HEAD"})
_INJECTED: dict[int, tuple[str, str | None, str, bool]] = {
    # status -> (type, code, message, Stripe-Should-Retry); injected before anything ran
    500: ("api_error", None, "An unknown error occurred on Stripe's end.", True),
    502: ("api_error", None, "Bad gateway.", True),
    503: ("api_error", None, "Stripe is temporarily unavailable. Please try again.", True),
    # lock timeouts: "This object cannot be accessed right now because another API request or
    # Stripe process is currently accessing it" (409 lock_timeout; the SDK retries 409) [DOC]
    409: (
        "invalid_request_error",
        "lock_timeout",
        "This object cannot be accessed right now because another API request or Stripe "
        "process is currently accessing it. If you see this error intermittently, retry the "
        "request.",
        True,
    ),
    # rate limited: 429 code rate_limit; the SDK never retries a plain 429 [REF C3]
    429: (
        "invalid_request_error",
        "rate_limit",
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        False,
    ),
}


class StripeEmulator(ServedEmulator):
    """Stripe on loopback: `with StripeEmulator() as emu: client = StripeClient(emu.api_key,
    base_addresses={"api": emu.url}, ...)`. See the module docstring for the admin API.

    `time`: the clock every timestamp, settlement and payout decision reads (default real
    time; tests pass `EmulatedTime()` and `advance()` it). `api_keys`: the secret keys accepted
    (others get 401). `validate`: check requests against spec3.yaml when it is found.
    `search_lag_seconds`: how long a new object stays invisible to the Search API ("don't use
    search for read-after-write flows" [DOC search]); 0 means searchable at once.
    `ach_settlement_days`: business days an ACH debit stays processing. `fees`, `payouts`:
    pricing and the automatic payout schedule. `rate_limits`: enforce 25/25 per second."""

    def __init__(
        self,
        *,
        time: EmulatedTime = REAL_TIME,
        api_keys: Sequence[str] = (DEFAULT_API_KEY,),
        validate: bool = True,
        search_lag_seconds: float = 0.0,
        ach_settlement_days: int = ACH_SETTLEMENT_DAYS,
        ach_return_days: int = ACH_RETURN_AFTER_SUCCESS_DAYS,
        fees: Fees | None = None,
        payouts: PayoutSchedule | None = None,
        rate_limits: bool = False,
        currency: str = "usd",
    ) -> None:
        if not api_keys:
            raise ValueError("an emulator needs at least one API key")
        self.time = time
        self.api_keys = tuple(api_keys)
        self.search_lag_seconds = search_lag_seconds
        self.ach_settlement_days = ach_settlement_days
        self.ach_return_days = ach_return_days
        self.fees = fees or Fees()
        self.payout_schedule = payouts or PayoutSchedule()
        self.rate_limits = rate_limits
        self.currency = currency
        self.log = RequestLog()
        self.internal_errors: list[str] = []
        self._validate = validate
        self._spec: StripeSpec | None = None
        self._spec_resolved = False
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, Any]] = {}
        self._by_type: dict[str, list[str]] = {}
        self._seq = 0
        self._jobs: list[_Job] = []
        self._virtual_now: datetime | None = None
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._injected: list[tuple[int, str | None, str]] = []
        self._drop_writes = 0
        self._drop_every_write = False
        self._holds: deque[WriteHold] = deque()
        self._windows: dict[str, deque[float]] = {}
        self._fail_payouts: deque[str] = deque()
        self._versions: list[str] = []
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._deliveries: list[Delivery] = []
        self._webhook_shuffle = False
        self._webhook_duplicates = False
        self._webhook_delay = timedelta(0)
        self._random = random.Random(0)
        self._delivery_lock = threading.Lock()
        self._delivery_thread: threading.Thread | None = None
        self._delivery_stop = threading.Event()
        self._request_ctx: _Ctx | None = None
        self._routes = self._build_routes()
        self._server = EmulatorServer(self._handle)
        self._schedule_next_payout(self._now())

    @property
    def api_key(self) -> str:
        """The first accepted secret key (what tests hand to `StripeClient`)."""
        return self.api_keys[0]

    def __repr__(self) -> str:  # keys never reach a log
        return "StripeEmulator()"

    def stop(self) -> None:
        self._delivery_stop.set()
        if self._delivery_thread is not None:
            self._delivery_thread.join(timeout=5)
            self._delivery_thread = None
        super().stop()

    # -- contract --------------------------------------------------------------------------

    def violations(self) -> list[str]:
        """Every request Stripe would have refused, one line each (empty: all valid)."""
        return self.log.violations()

    def requests(self, method: str | None = None, path: str = "") -> list[RecordedRequest]:
        return [
            r
            for r in self.log.snapshot()
            if (method is None or r.method == method) and r.path.startswith(path)
        ]

    def stripe_versions(self) -> list[str]:
        """The `Stripe-Version` header of each API request, in order ("" when absent)."""
        with self._lock:
            return list(self._versions)

    @property
    def spec(self) -> StripeSpec | None:
        with self._lock:
            if not self._spec_resolved:
                self._spec = stripe_spec() if self._validate else None
                self._spec_resolved = True
            return self._spec

    # -- the clock -------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._virtual_now or self.time.now()

    def _now_ts(self) -> int:
        return _ts(self._now())

    def advance(self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0):
        """Move the shared clock forward and run everything that fell due on the way (ACH
        settlements and returns, payouts and their arrival, session expiry, webhook retries)."""
        self.time.advance(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds))
        self.run_due()

    def run_due(self) -> int:
        """Run every job due by now, in time order, each at its own moment; returns how many."""
        count = 0
        with self._lock:
            while self._jobs and self._jobs[0].at <= self.time.now().timestamp():
                job = heapq.heappop(self._jobs)
                self._virtual_now = datetime.fromtimestamp(job.at, UTC)
                try:
                    job.run()
                except Exception:  # an emulator bug: keep it for the test to see
                    self.internal_errors.append(f"job {job.name}: {traceback.format_exc()}")
                finally:
                    self._virtual_now = None
                count += 1
        return count

    def _schedule(self, at: datetime, name: str, run: Callable[[], None], priority: int = 0):
        self._seq += 1
        heapq.heappush(self._jobs, _Job(at.timestamp(), priority, self._seq, name, run))

    # -- faults ----------------------------------------------------------------------------

    def fail_next(
        self, count: int = 1, status: int = 500, *, method: str | None = None, path: str = ""
    ) -> None:
        """The next `count` API requests (only those with `method` and a path starting with
        `path`, when given) answer `status` before anything runs: 500/502/503 (api_error,
        `Stripe-Should-Retry: true`), 409 (lock_timeout), 429 (rate_limit)."""
        with self._lock:
            self._injected.extend([(status, method.upper() if method else None, path)] * count)

    def drop_next_writes(self, count: int = 1) -> None:
        """The next `count` POSTs take effect (and their idempotent answer is kept), then the
        connection drops before the client reads the answer."""
        with self._lock:
            self._drop_writes += count

    def drop_every_write(self, enabled: bool = True) -> None:
        with self._lock:
            self._drop_every_write = enabled

    def set_rate_limits(self, enabled: bool) -> None:
        """Enforce Stripe's sandbox limits (25 reads, 25 writes, 20 searches a second) on the
        emulated clock: past them, 429 `rate_limit`."""
        with self._lock:
            self.rate_limits = enabled

    def hold_next_write(self) -> WriteHold:
        """The next POST with an idempotency key claims its key, sets `hold.claimed`, then
        waits for `hold.release()` (10 s at most) before running: a concurrent request with the
        same key meanwhile gets Stripe's 409 `idempotency_key_in_use`."""
        hold = WriteHold()
        with self._lock:
            self._holds.append(hold)
        return hold

    # -- request handling ------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        request_id = _new_id("req")
        violations: list[str] = []
        drop = False
        try:
            response, drop = self._answer(request, request_id, violations)
        except Exception:  # an emulator bug: Stripe's 500 shape, traceback kept
            self.internal_errors.append(traceback.format_exc())
            response = self._error_response(
                _ApiError(500, {"type": "api_error", "message": "emulator error"})
            )
        response.headers["Request-Id"] = request_id
        self.log.add(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string.decode("latin-1"),
                headers=dict(request.headers),
                body=request.get_data(),
                status=0 if drop else response.status_code,
                violations=tuple(violations),
            )
        )
        if drop:
            raise drop_connection(request)
        return response

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
        return Response(
            json.dumps(body, indent=2),
            status=status,
            headers=dict(headers or {}),
            content_type="application/json",
        )

    def _error_response(self, error: _ApiError) -> Response:
        headers = dict(error.headers)
        return self._json(error.status, {"error": error.error}, headers)

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        key = ""
        if header.startswith("Bearer "):
            key = header[len("Bearer ") :].strip()
        elif header.startswith("Basic "):
            try:
                key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            raise _invalid(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details.",
                status=401,
            )
        if key not in self.api_keys:
            # the error type of a 401 is invalid_request_error: the spec's error object knows
            # only api_error, card_error, idempotency_error, invalid_request_error [SPEC]
            raise _invalid(f"Invalid API Key provided: {key[:8]}****{key[-4:]}", status=401)
        return key

    def _answer(
        self, request: Request, request_id: str, violations: list[str]
    ) -> tuple[Response, bool]:
        if request.path.startswith("/c/pay/"):
            return self._hosted_checkout(request), False
        if request.path.startswith("/c/authenticate/"):
            return self._hosted_authentication(request), False
        if not request.path.startswith("/v1/"):
            return self._unrecognized(request), False
        try:
            api_key = self._authenticate(request)
        except _ApiError as refused:
            return self._error_response(refused), False
        version = request.headers.get("Stripe-Version", "")
        with self._lock:
            self._versions.append(version)
        self.run_due()
        with self._lock:
            for index, (status, method, prefix) in enumerate(self._injected):
                if (method is None or method == request.method) and request.path.startswith(prefix):
                    del self._injected[index]
                    return self._injected_response(status), False
            limited = self._rate_limited(request)
        if limited is not None:
            return limited, False
        body = request.get_data(as_text=True)
        query = request.query_string.decode("latin-1")
        template, path_params, params, refusal = self._decode(request, query, body, violations)
        if template is None:
            return self._unrecognized(request), False
        if refusal is not None:
            return self._error_response(refusal), False
        handler = self._routes.get((request.method, template))
        if handler is None:
            return self._unrecognized(request, emulated=False), False
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        ctx = _Ctx(params=params, path=path_params, request_id=request_id, idempotency_key=key)
        headers = {"Stripe-Version": version or API_VERSION}
        if key is None:
            with self._lock:
                response = self._execute(handler, ctx, headers)
                drop = request.method == "POST" and self._should_drop()
            return response, drop
        return self._idempotent(request, api_key, key, handler, ctx, headers, body)

    def _idempotent(
        self,
        request: Request,
        api_key: str,
        key: str,
        handler: Callable[[_Ctx], Any],
        ctx: _Ctx,
        headers: dict[str, str],
        body: str,
    ) -> tuple[Response, bool]:
        if len(key) > MAX_KEY_LENGTH:
            return self._error_response(
                _invalid(
                    f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.",
                    "Idempotency-Key",
                )
            ), False
        fingerprint = hashlib.sha256(
            f"{request.method} {request.path} ".encode()
            + json.dumps(sorted(decode_pairs(body))).encode()
        ).hexdigest()
        slot = (api_key, key)
        with self._lock:
            stored = self._idempotency.get(slot)
            if stored is not None and self._now() - stored.at >= IDEMPOTENCY_TTL:
                stored = None  # pruned: the key counts as new [DOC]
            if stored is not None and not stored.done:
                return self._error_response(
                    _ApiError(
                        409,
                        {
                            "type": "idempotency_error",
                            "code": "idempotency_key_in_use",
                            "message": "There is currently another in-progress request using "
                            "this Idempotent Key (that probably means you submitted twice, and "
                            f"the other request is still going through): {key}. Please try "
                            "again later.",
                        },
                        {"Stripe-Should-Retry": "true"},
                    )
                ), False
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    return self._error_response(
                        _ApiError(
                            400,
                            {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with "
                                "the same parameters they were first used with. Try using a key"
                                f" other than '{key}' if you meant to execute a different "
                                "request.",
                            },
                        )
                    ), False
                replay = Response(stored.body, status=stored.status, headers=stored.headers)
                replay.headers["Idempotent-Replayed"] = "true"
                return replay, self._should_drop()
            stored = _Stored(fingerprint=fingerprint, at=self._now())
            self._idempotency[slot] = stored
            hold = self._holds.popleft() if self._holds else None
        if hold is not None:
            hold.claimed.set()
            hold.released.wait(timeout=10)
        with self._lock:
            response = self._execute(handler, ctx, headers)
            # results are saved once execution began, errors included [DOC idempotent_requests]
            stored.status = response.status_code
            stored.body = response.get_data()
            stored.headers = {
                k: v for k, v in response.headers.items() if k.lower() != "content-length"
            }
            stored.headers["Original-Request"] = ctx.request_id or ""
            stored.done = True
            return response, self._should_drop()

    def _should_drop(self) -> bool:
        if self._drop_every_write:
            return True
        if self._drop_writes > 0:
            self._drop_writes -= 1
            return True
        return False

    def _execute(self, handler: Callable[[_Ctx], Any], ctx: _Ctx, headers: dict[str, str]):
        self._request_ctx = ctx
        try:
            body = handler(ctx)
            return self._json(200, body, headers)
        except _ApiError as refused:
            return self._json(
                refused.status, {"error": refused.error}, {**headers, **refused.headers}
            )
        finally:
            self._request_ctx = None

    def _decode(
        self, request: Request, query: str, body: str, violations: list[str]
    ) -> tuple[str | None, dict[str, str], dict[str, Any], _ApiError | None]:
        spec = self.spec
        if spec is not None:
            check = spec.check(request.method, request.path, query, body)
            if check.template is None:
                return None, {}, {}, None
            refusal = None
            if check.violations:
                violations.extend(str(v) for v in check.violations)
                first = check.violations[0]
                refusal = _invalid(first.message, first.param, first.code)
            return check.template, check.path_params, check.params, refusal
        # without the spec: our own routes, values left as strings (handlers convert)
        for (method, template), _handler in self._routes.items():
            if method != request.method:
                continue
            match = _route_pattern(template).match(request.path)
            if match:
                params = decode_form(body if request.method == "POST" else query)
                return template, match.groupdict(), params, None
        return None, {}, {}, None

    def _unrecognized(self, request: Request, *, emulated: bool = True) -> Response:
        note = "" if emulated else " (a Stripe operation this emulator does not implement)"
        return self._error_response(
            _invalid(
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                f"https://stripe.com/docs or we can help at https://support.stripe.com/.{note}",
                status=404,
            )
        )

    def _injected_response(self, status: int) -> Response:
        kind, code, message, retry = _INJECTED.get(
            status, ("api_error", None, "An unknown error occurred.", True)
        )
        error: dict[str, Any] = {"type": kind, "message": message}
        if code:
            error["code"] = code
        headers = {"Stripe-Should-Retry": "true"} if retry else {}
        return self._json(status, {"error": error}, headers)

    def _rate_limited(self, request: Request) -> Response | None:
        if not self.rate_limits:
            return None
        if request.path.endswith("/search"):
            kind, limit = "search", SEARCH_LIMIT
        elif request.method in _READ_METHODS:
            kind, limit = "read", READ_LIMIT
        else:
            kind, limit = "write", WRITE_LIMIT
        now = self.time.monotonic()
        window = self._windows.setdefault(kind, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= limit:
            return self._injected_response(429)
        window.append(now)
        return None

    # -- objects ---------------------------------------------------------------------------

    def _store(self, obj: dict[str, Any], *, searchable: bool = False) -> dict[str, Any]:
        self._seq += 1
        obj["_seq"] = self._seq
        if searchable:
            obj["_indexed_at"] = self._now().timestamp() + self.search_lag_seconds
        self._objects[obj["id"]] = obj
        self._by_type.setdefault(obj["object"], []).append(obj["id"])
        return obj

    def _get(self, object_id: Any, kind: str, label: str, param: str | None = "id"):
        obj = self._objects.get(object_id) if isinstance(object_id, str) else None
        if obj is None or obj["object"] != kind:
            raise _missing(label, str(object_id), param)
        return obj

    def _all(self, kind: str) -> list[dict[str, Any]]:
        return [self._objects[i] for i in self._by_type.get(kind, [])]

    def _render(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        if obj["object"] == "balance_transaction":
            out["status"] = "available" if self._now_ts() >= obj["available_on"] else "pending"
        elif obj["object"] == "dispute":
            out["balance_transactions"] = [self._render(self._objects[t]) for t in obj["_bts"]]
        return out

    def _expand(self, data: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
        for path in paths:
            self._expand_path(data, path.split("."), path)
        return data

    def _expand_path(self, node: Any, parts: list[str], full: str) -> None:
        if isinstance(node, list):
            for item in node:
                self._expand_path(item, parts, full)
            return
        if not isinstance(node, dict):
            return
        key = parts[0]
        value = node.get(key, _ABSENT)
        if isinstance(value, str) and value in self._objects:
            value = self._render(self._objects[value])
            node[key] = value
        elif value is _ABSENT or not (value is None or isinstance(value, dict | list)):
            raise _invalid(f"This property cannot be expanded ({full}).", "expand")
        if len(parts) > 1 and value is not None:
            self._expand_path(value, parts[1:], full)

    def _one(self, obj: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        return self._expand(self._render(obj), _list_of_str(ctx.params.get("expand")))

    def _list(self, url: str, items: list[dict[str, Any]], ctx: _Ctx) -> dict[str, Any]:
        """Stripe's list: newest first, `limit` (1-100, default 10), `starting_after` /
        `ending_before` cursors, `created` filter, `expand` on `data.`."""
        params = ctx.params
        items = sorted(_created_filter(items, params.get("created")), key=lambda o: -o["_seq"])
        limit = _limit(params.get("limit"))
        after, before = params.get("starting_after"), params.get("ending_before")
        if after and before:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
                code="parameters_exclusive",
            )
        ids = [o["id"] for o in items]
        if after:
            if after not in self._objects:
                raise _missing("object", after, "starting_after")
            start = ids.index(after) + 1 if after in ids else len(ids)
            page, has_more = items[start : start + limit], len(items) > start + limit
        elif before:
            if before not in self._objects:
                raise _missing("object", before, "ending_before")
            end = ids.index(before) if before in ids else 0
            begin = max(0, end - limit)
            page, has_more = items[begin:end], begin > 0
        else:
            page, has_more = items[:limit], len(items) > limit
        data = {
            "object": "list",
            "data": [self._render(o) for o in page],
            "has_more": has_more,
            "url": url,
        }
        return self._expand(data, _list_of_str(params.get("expand")))

    def _search(
        self, url: str, items: list[dict[str, Any]], ctx: _Ctx, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        """Stripe's Search API subset: `field:'value'` and `metadata['key']:'value'` clauses
        joined by AND (or OR, not both), newest first, `limit`, `page` tokens. Objects become
        searchable `search_lag_seconds` after creation."""
        clauses, joiner = _parse_search(str(ctx.params.get("query", "")), fields)
        now = self._now().timestamp()

        def hit(obj: dict[str, Any]) -> bool:
            results = []
            for name, value in clauses:
                if name.startswith("metadata."):
                    actual = obj.get("metadata", {}).get(name[len("metadata.") :])
                else:
                    actual = obj.get(fields[name])
                if isinstance(actual, str) and fields.get(name) in {"email", "name"}:
                    results.append(actual.casefold() == value.casefold())
                else:
                    results.append(actual is not None and str(actual) == value)
            return all(results) if joiner == "AND" else any(results)

        found = [o for o in items if o.get("_indexed_at", 0) <= now and hit(o)]
        found.sort(key=lambda o: -o["_seq"])
        limit = _limit(ctx.params.get("limit"))
        offset = 0
        page_token = ctx.params.get("page")
        if page_token:
            try:
                offset = int(base64.urlsafe_b64decode(str(page_token)).decode())
            except ValueError as exc:
                raise _invalid("Invalid page token.", "page") from exc
        page = found[offset : offset + limit]
        more = len(found) > offset + limit
        data = {
            "object": "search_result",
            "data": [self._render(o) for o in page],
            "has_more": more,
            "next_page": base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            if more
            else None,
            "url": url,
        }
        return self._expand(data, _list_of_str(ctx.params.get("expand")))

    # -- events and webhooks ---------------------------------------------------------------

    def _emit(
        self, kind: str, obj: dict[str, Any], previous: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record a Stripe event for a state change (its data is the object as it is now)
        and owe it to every endpoint that wants it."""
        ctx = self._request_ctx
        data: dict[str, Any] = {"object": self._render(obj)}
        if previous:
            data["previous_attributes"] = dict(previous)
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self._now_ts(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": {
                "id": ctx.request_id if ctx else None,
                "idempotency_key": ctx.idempotency_key if ctx else None,
            },
            "type": kind,
        }
        self._store(event)
        for endpoint in self._endpoints.values():
            if any(fnmatch.fnmatchcase(kind, p) for p in endpoint.enabled_events):
                copies = 2 if self._webhook_duplicates else 1
                for _ in range(copies):
                    self._seq += 1
                    self._deliveries.append(
                        Delivery(
                            event_id=event["id"],
                            endpoint_id=endpoint.id,
                            next_at=self._now() + self._webhook_delay,
                            seq=self._seq,
                        )
                    )
                event["pending_webhooks"] += 1
        return event

    def add_webhook_endpoint(
        self, url: str, secret: str | None = None, *, enabled_events: Sequence[str] = ("*",)
    ) -> WebhookEndpoint:
        """Deliver events (matching `enabled_events`, `*` wildcards) to `url`, signed with
        `secret` (a new `whsec_...` when None) the way Stripe signs: header
        `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>` [REF C4]."""
        endpoint = WebhookEndpoint(
            id=_new_id("we"),
            url=url,
            secret=secret or "whsec_" + secrets.token_hex(16),
            enabled_events=tuple(enabled_events),
        )
        with self._lock:
            self._endpoints[endpoint.id] = endpoint
        return endpoint

    def set_webhook_faults(
        self,
        *,
        shuffle: bool = False,
        duplicates: bool = False,
        delay: timedelta = timedelta(0),
        seed: int = 0,
    ) -> None:
        """Stripe delivers at least once and in no particular order [DOC webhooks]: `shuffle`
        sends each batch in random order, `duplicates` owes every event twice, `delay` holds
        new events back on the emulated clock."""
        with self._lock:
            self._webhook_shuffle = shuffle
            self._webhook_duplicates = duplicates
            self._webhook_delay = delay
            self._random = random.Random(seed)

    def deliver_pending(self, *, timeout: float = 5.0) -> list[Delivery]:
        """POST every delivery that is due now (the caller's thread; no lock is held while
        sending, so a receiver may call the API back). A non-2xx answer or a transport error
        schedules a retry (5 min, 1 h, 3 h on the emulated clock), then gives up."""
        import requests

        with self._delivery_lock:
            with self._lock:
                now = self._now()
                due = [d for d in self._deliveries if d.status == "pending" and d.next_at <= now]
                due.sort(key=lambda d: (self._objects[d.event_id]["_seq"], d.seq))
                if self._webhook_shuffle:
                    self._random.shuffle(due)
                batch = [
                    (d, self._endpoints[d.endpoint_id], self._event_body(d.event_id)) for d in due
                ]
            for delivery, endpoint, body in batch:
                header = _signature_header(body, endpoint.secret, int(_wall.time()))
                status: int | None = None
                error: str | None = None
                try:
                    answer = requests.post(
                        endpoint.url,
                        data=body.encode(),
                        headers={
                            "Content-Type": "application/json; charset=utf-8",
                            "Stripe-Signature": header,
                            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                        },
                        timeout=timeout,
                    )
                    status = answer.status_code
                except requests.RequestException as exc:
                    error = type(exc).__name__
                with self._lock:
                    delivery.attempts += 1
                    delivery.last_status, delivery.last_error = status, error
                    event = self._objects[delivery.event_id]
                    if status is not None and 200 <= status < 300:
                        delivery.status = "delivered"
                        event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)
                    elif delivery.attempts > len(WEBHOOK_RETRY_DELAYS):
                        delivery.status = "failed"
                    else:
                        delivery.next_at = self._now() + WEBHOOK_RETRY_DELAYS[delivery.attempts - 1]
        return [d for d, _, _ in batch]

    def _event_body(self, event_id: str) -> str:
        return json.dumps(self._render(self._objects[event_id]), indent=2)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def start_webhook_delivery(self, interval: float = 0.5) -> None:
        """Deliver in the background every `interval` real seconds (the sandbox; tests call
        `deliver_pending()` instead)."""
        if self._delivery_thread is not None:
            return
        self._delivery_stop.clear()

        def loop() -> None:
            while not self._delivery_stop.wait(interval):
                try:
                    self.run_due()
                    self.deliver_pending()
                except Exception:
                    self.internal_errors.append(traceback.format_exc())

        self._delivery_thread = threading.Thread(target=loop, name="stripe-webhooks", daemon=True)
        self._delivery_thread.start()

    # -- routes ----------------------------------------------------------------------------

    def _build_routes(self) -> dict[tuple[str, str], Callable[[_Ctx], Any]]:
        return {
            ("GET", "/v1/balance"): self._h_balance,
            ("GET", "/v1/balance_transactions"): self._h_list_bts,
            ("GET", "/v1/balance_transactions/{id}"): self._getter("balance_transaction", "id"),
            ("POST", "/v1/customers"): self._h_create_customer,
            ("GET", "/v1/customers"): self._h_list_customers,
            ("GET", "/v1/customers/search"): self._h_search_customers,
            ("GET", "/v1/customers/{customer}"): self._h_get_customer,
            ("POST", "/v1/customers/{customer}"): self._h_update_customer,
            ("DELETE", "/v1/customers/{customer}"): self._h_delete_customer,
            ("GET", "/v1/customers/{customer}/payment_methods"): self._h_customer_pms,
            (
                "GET",
                "/v1/customers/{customer}/payment_methods/{payment_method}",
            ): self._h_customer_pm,
            ("GET", "/v1/payment_methods"): self._h_list_pms,
            ("GET", "/v1/payment_methods/{payment_method}"): self._h_get_pm,
            ("POST", "/v1/payment_methods/{payment_method}/attach"): self._h_attach_pm,
            ("POST", "/v1/payment_methods/{payment_method}/detach"): self._h_detach_pm,
            ("POST", "/v1/payment_intents"): self._h_create_pi,
            ("GET", "/v1/payment_intents"): self._h_list_pis,
            ("GET", "/v1/payment_intents/search"): self._h_search_pis,
            ("GET", "/v1/payment_intents/{intent}"): self._getter("payment_intent", "intent"),
            ("POST", "/v1/payment_intents/{intent}"): self._h_update_pi,
            ("POST", "/v1/payment_intents/{intent}/confirm"): self._h_confirm_pi,
            ("POST", "/v1/payment_intents/{intent}/cancel"): self._h_cancel_pi,
            ("GET", "/v1/charges"): self._h_list_charges,
            ("GET", "/v1/charges/{charge}"): self._getter("charge", "charge"),
            ("POST", "/v1/refunds"): self._h_create_refund,
            ("GET", "/v1/refunds"): self._h_list_refunds,
            ("GET", "/v1/refunds/{refund}"): self._getter("refund", "refund"),
            ("GET", "/v1/disputes"): self._h_list_disputes,
            ("GET", "/v1/disputes/{dispute}"): self._getter("dispute", "dispute"),
            ("GET", "/v1/payouts"): self._h_list_payouts,
            ("GET", "/v1/payouts/{payout}"): self._getter("payout", "payout"),
            ("POST", "/v1/checkout/sessions"): self._h_create_session,
            ("GET", "/v1/checkout/sessions"): self._h_list_sessions,
            ("GET", "/v1/checkout/sessions/{session}"): self._getter("checkout.session", "session"),
            ("POST", "/v1/checkout/sessions/{session}/expire"): self._h_expire_session,
            ("POST", "/v1/setup_intents"): self._h_create_setup_intent,
            ("GET", "/v1/setup_intents"): self._h_list_setup_intents,
            ("GET", "/v1/setup_intents/{intent}"): self._getter("setup_intent", "intent"),
            ("GET", "/v1/events"): self._h_list_events,
            ("GET", "/v1/events/{id}"): self._getter("event", "id"),
            ("GET", "/v1/mandates/{mandate}"): self._getter("mandate", "mandate"),
        }

    _LABELS = {
        "balance_transaction": "balance transaction",
        "customer": "customer",
        "payment_method": "PaymentMethod",
        "payment_intent": "payment_intent",
        "charge": "charge",
        "refund": "refund",
        "dispute": "dispute",
        "payout": "payout",
        "checkout.session": "checkout.session",
        "setup_intent": "setupintent",
        "event": "event",
        "mandate": "mandate",
    }

    def _getter(self, kind: str, name: str) -> Callable[[_Ctx], Any]:
        def get(ctx: _Ctx) -> dict[str, Any]:
            return self._one(self._get(ctx.path[name], kind, self._LABELS[kind], "id"), ctx)

        return get

    # -- customers -------------------------------------------------------------------------

    def _new_customer(
        self,
        email: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        description: str | None = None,
        phone: str | None = None,
    ) -> dict[str, Any]:
        customer_id = _new_id("cus")
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now_ts(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": description,
            "discount": None,
            "email": email,
            "invoice_prefix": customer_id[4:12].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(metadata or {}),
            "name": name,
            "next_invoice_sequence": 1,
            "phone": phone,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._store(customer, searchable=True)
        self._emit("customer.created", customer)
        return customer

    def _h_create_customer(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        settings = p.get("invoice_settings")
        if isinstance(settings, dict) and settings.get("default_payment_method"):
            # a new customer has no attached method yet: Stripe refuses, nothing is created
            self._set_default_method({"id": None}, settings["default_payment_method"])
        customer = self._new_customer(
            email=p.get("email") or None,
            name=p.get("name") or None,
            metadata=_str_map(p.get("metadata")),
            description=p.get("description") or None,
            phone=p.get("phone") or None,
        )
        return self._one(customer, ctx)

    def _set_default_method(self, customer: dict[str, Any], method_id: str) -> None:
        method = self._objects.get(method_id)
        if method is None or customer["id"] is None or method.get("customer") != customer["id"]:
            raise _invalid(
                f"The customer does not have a payment method with the ID {method_id}. The "
                "payment method must be attached to the customer.",
                "invoice_settings[default_payment_method]",
                "resource_missing",
            )
        customer["invoice_settings"]["default_payment_method"] = method_id

    def _live_customer(self, customer_id: Any, param: str | None = "id") -> dict[str, Any]:
        customer = self._get(customer_id, "customer", "customer", param)
        if customer.get("_deleted"):
            raise _missing("customer", str(customer_id), param)
        return customer

    def _h_get_customer(self, ctx: _Ctx) -> dict[str, Any]:
        customer = self._get(ctx.path["customer"], "customer", "customer")
        if customer.get("_deleted"):  # a deleted customer still answers, as a stub [DOC]
            return {"id": customer["id"], "object": "customer", "deleted": True}
        return self._one(customer, ctx)

    def _h_delete_customer(self, ctx: _Ctx) -> dict[str, Any]:
        customer = self._live_customer(ctx.path["customer"])
        customer["_deleted"] = True
        for method in self._methods_of(customer["id"], None):
            method["customer"] = None
            method["_detached"] = True
        self._emit("customer.deleted", customer)
        return {"id": customer["id"], "object": "customer", "deleted": True}

    def _h_update_customer(self, ctx: _Ctx) -> dict[str, Any]:
        customer = self._live_customer(ctx.path["customer"])
        p = ctx.params
        settings = p.get("invoice_settings")
        if isinstance(settings, dict) and settings.get("default_payment_method"):
            self._set_default_method(dict(customer), settings["default_payment_method"])
        previous: dict[str, Any] = {}
        for name in ("email", "name", "description", "phone"):
            if name in p:
                previous[name] = customer[name]
                customer[name] = p[name] or None
        if "metadata" in p:
            previous["metadata"] = dict(customer["metadata"])
            customer["metadata"] = _merge_metadata(customer["metadata"], p["metadata"])
        settings = p.get("invoice_settings")
        if isinstance(settings, dict) and "default_payment_method" in settings:
            previous["invoice_settings"] = dict(customer["invoice_settings"])
            if settings["default_payment_method"]:
                self._set_default_method(customer, settings["default_payment_method"])
            else:
                customer["invoice_settings"]["default_payment_method"] = None
        self._emit("customer.updated", customer, previous)
        return self._one(customer, ctx)

    def _h_list_customers(self, ctx: _Ctx) -> dict[str, Any]:
        items = [c for c in self._all("customer") if not c.get("_deleted")]
        if ctx.params.get("email"):  # "A case-sensitive filter on the list" [SPEC]
            items = [c for c in items if c["email"] == ctx.params["email"]]
        return self._list("/v1/customers", items, ctx)

    def _h_search_customers(self, ctx: _Ctx) -> dict[str, Any]:
        return self._search(
            "/v1/customers/search",
            [c for c in self._all("customer") if not c.get("_deleted")],
            ctx,
            {"email": "email", "name": "name", "phone": "phone", "created": "created"},
        )

    # -- payment methods -------------------------------------------------------------------

    def _materialise(self, token_or_id: Any, param: str = "payment_method") -> dict[str, Any]:
        """A stored PaymentMethod for an id, or a new one cloned from a test token
        (`pm_card_visa` becomes a fresh `pm_...` each time it is used, as at Stripe [DOC])."""
        if isinstance(token_or_id, str) and token_or_id in self._objects:
            method = self._objects[token_or_id]
            if method["object"] == "payment_method":
                return method
        test = TEST_METHODS.get(token_or_id) if isinstance(token_or_id, str) else None
        if test is None:
            raise _missing("PaymentMethod", str(token_or_id), param)
        now = self._now()
        method: dict[str, Any] = {
            "id": _new_id("pm"),
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": None,
                    "state": None,
                },
                "email": None,
                "name": None,
                "phone": None,
            },
            "created": _ts(now),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": test.type,
            "_token": test.token,
        }
        fingerprint = hashlib.sha256(test.token.encode()).hexdigest()[:16]
        if test.type == "card":
            method["card"] = {
                "brand": test.brand,
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                    "cvc_check": "pass",
                },
                "country": "US",
                "display_brand": test.brand,
                "exp_month": 12,
                "exp_year": now.year + 3,
                "fingerprint": fingerprint,
                "funding": "credit",
                "last4": test.last4,
                "networks": {"available": [test.brand], "preferred": None},
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            }
        else:
            method["us_bank_account"] = {
                "account_holder_type": "individual",
                "account_type": "checking",
                "bank_name": "STRIPE TEST BANK",
                "financial_connections_account": None,
                "fingerprint": fingerprint,
                "last4": test.last4,
                "networks": {"preferred": "ach", "supported": ["ach"]},
                "routing_number": "110000000",
                "status_details": {},
            }
        return self._store(method)

    def _test_method(self, method: dict[str, Any]) -> TestMethod:
        return TEST_METHODS[method["_token"]]

    def _attach(self, method: dict[str, Any], customer: dict[str, Any]) -> None:
        if method.get("customer") == customer["id"]:
            return
        if method.get("customer"):
            raise _invalid(
                "The payment method you provided has already been attached to a customer.",
                "payment_method",
                "payment_method_unexpected_state",
            )
        if method.get("_detached"):
            raise _invalid(
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again. To use "
                "a PaymentMethod multiple times, you must attach it to a Customer first.",
                "payment_method",
            )
        method["customer"] = customer["id"]
        self._emit("payment_method.attached", method)

    def _h_get_pm(self, ctx: _Ctx) -> dict[str, Any]:
        return self._one(self._materialise(ctx.path["payment_method"], "id"), ctx)

    def _h_attach_pm(self, ctx: _Ctx) -> dict[str, Any]:
        method = self._materialise(ctx.path["payment_method"], "payment_method")
        customer = self._live_customer(ctx.params.get("customer"), "customer")
        self._attach(method, customer)
        return self._one(method, ctx)

    def _h_detach_pm(self, ctx: _Ctx) -> dict[str, Any]:
        method = self._materialise(ctx.path["payment_method"], "payment_method")
        owner = method.get("customer")
        if not owner:
            raise _invalid(
                "The payment method you provided is not attached to a customer so detachment "
                "is impossible.",
                "payment_method",
                "payment_method_unexpected_state",
            )
        customer = self._objects[owner]
        if customer["invoice_settings"]["default_payment_method"] == method["id"]:
            customer["invoice_settings"]["default_payment_method"] = None
        method["customer"] = None
        method["_detached"] = True
        self._emit("payment_method.detached", method, {"customer": owner})
        return self._one(method, ctx)

    def _methods_of(self, customer_id: str | None, kind: str | None) -> list[dict[str, Any]]:
        return [
            m
            for m in self._all("payment_method")
            if (customer_id is None or m.get("customer") == customer_id)
            and (kind is None or m["type"] == kind)
            and (customer_id is not None or m.get("customer"))
        ]

    def _h_list_pms(self, ctx: _Ctx) -> dict[str, Any]:
        customer = ctx.params.get("customer")
        if customer:
            self._live_customer(customer, "customer")
        items = self._methods_of(customer or None, ctx.params.get("type") or None)
        return self._list("/v1/payment_methods", items, ctx)

    def _h_customer_pm(self, ctx: _Ctx) -> dict[str, Any]:
        customer = self._live_customer(ctx.path["customer"], "customer")
        method = self._objects.get(ctx.path["payment_method"])
        if method is None or method.get("customer") != customer["id"]:
            raise _missing("PaymentMethod", ctx.path["payment_method"], "payment_method")
        return self._one(method, ctx)

    def _h_customer_pms(self, ctx: _Ctx) -> dict[str, Any]:
        customer = self._live_customer(ctx.path["customer"], "customer")
        items = self._methods_of(customer["id"], ctx.params.get("type") or None)
        return self._list(f"/v1/customers/{customer['id']}/payment_methods", items, ctx)

    # -- payment intents -------------------------------------------------------------------

    def _method_types(self, allowed: Any, currency: str) -> list[str]:
        """The read-only `payment_method_types`: `allowed_payment_method_types` filtered to
        what the emulator supports ("filters incompatible types silently" [DOC dahlia]), or the
        account's dynamic default (card, plus ACH for usd) [INF]."""
        wanted = _list_of_str(allowed)
        if wanted:
            types = [t for t in wanted if t in _SUPPORTED_TYPES]
            if currency != "usd":
                types = [t for t in types if t != "us_bank_account"]
            if not types:
                raise _invalid(
                    "None of the allowed_payment_method_types can be used with this payment "
                    f"(supported here: {', '.join(_SUPPORTED_TYPES)}).",
                    "allowed_payment_method_types",
                )
            return types
        return ["card", "us_bank_account"] if currency == "usd" else ["card"]

    def _new_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: dict[str, Any] | None,
        method: dict[str, Any] | None,
        metadata: Mapping[str, str],
        description: str | None,
        method_types: list[str],
        setup_future_usage: str | None = None,
    ) -> dict[str, Any]:
        if amount < 50 and currency == "usd":
            raise _invalid("Amount must be at least $0.50 usd", "amount", "amount_too_small")
        intent_id = _new_id("pi")
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{intent_id}_secret_{secrets.token_urlsafe(18)}",
            "confirmation_method": "automatic",
            "created": self._now_ts(),
            "currency": currency,
            "customer": customer["id"] if customer else None,
            "description": description,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(metadata),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": method["id"] if method else None,
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": method_types,
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": setup_future_usage,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_confirmation" if method else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
        self._store(intent, searchable=True)
        self._emit("payment_intent.created", intent)
        return intent

    def _h_create_pi(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        if p.get("automatic_payment_methods") and p.get("allowed_payment_method_types"):
            raise _invalid(
                "You may only specify one of these parameters: allowed_payment_method_types, "
                "automatic_payment_methods.",
                code="parameters_exclusive",
            )
        if p.get("capture_method") == "manual":
            raise _invalid("capture_method=manual is not emulated.", "capture_method")
        currency = str(p.get("currency", "")).lower()
        customer = self._live_customer(p["customer"], "customer") if p.get("customer") else None
        method = self._materialise(p["payment_method"]) if p.get("payment_method") else None
        intent = self._new_payment_intent(
            amount=_int(p.get("amount"), "amount"),
            currency=currency,
            customer=customer,
            method=method,
            metadata=_str_map(p.get("metadata")),
            description=p.get("description") or None,
            method_types=self._method_types(p.get("allowed_payment_method_types"), currency),
            setup_future_usage=p.get("setup_future_usage") or None,
        )
        if _bool(p.get("confirm", False)):
            self._confirm(intent, p)
        return self._one(intent, ctx)

    def _h_update_pi(self, ctx: _Ctx) -> dict[str, Any]:
        intent = self._get(ctx.path["intent"], "payment_intent", "payment_intent")
        p = ctx.params
        if intent["status"] in {"succeeded", "canceled", "processing"}:
            raise _invalid(
                f"This PaymentIntent's status is {intent['status']}; it cannot be updated.",
                code="payment_intent_unexpected_state",
            )
        previous: dict[str, Any] = {}
        if "metadata" in p:
            previous["metadata"] = dict(intent["metadata"])
            intent["metadata"] = _merge_metadata(intent["metadata"], p["metadata"])
        if "description" in p:
            previous["description"] = intent["description"]
            intent["description"] = p["description"] or None
        if "amount" in p:
            previous["amount"] = intent["amount"]
            intent["amount"] = _int(p["amount"], "amount")
        if "allowed_payment_method_types" in p:
            intent["payment_method_types"] = self._method_types(
                p["allowed_payment_method_types"], intent["currency"]
            )
        if p.get("payment_method"):
            intent["payment_method"] = self._materialise(p["payment_method"])["id"]
            intent["status"] = "requires_confirmation"
        if p.get("customer"):
            intent["customer"] = self._live_customer(p["customer"], "customer")["id"]
        self._emit("payment_intent.updated", intent, previous)
        return self._one(intent, ctx)

    def _h_confirm_pi(self, ctx: _Ctx) -> dict[str, Any]:
        intent = self._get(ctx.path["intent"], "payment_intent", "payment_intent")
        if intent["status"] not in {
            "requires_payment_method",
            "requires_confirmation",
            "requires_action",
        }:
            raise _invalid(
                f"You cannot confirm this PaymentIntent because it has a status of "
                f"{intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        p = ctx.params
        if p.get("payment_method"):
            intent["payment_method"] = self._materialise(p["payment_method"])["id"]
        if "allowed_payment_method_types" in p:
            intent["payment_method_types"] = self._method_types(
                p["allowed_payment_method_types"], intent["currency"]
            )
        self._confirm(intent, p)
        return self._one(intent, ctx)

    def _h_cancel_pi(self, ctx: _Ctx) -> dict[str, Any]:
        intent = self._get(ctx.path["intent"], "payment_intent", "payment_intent")
        if intent["status"] in {"succeeded", "canceled", "processing"}:
            raise _invalid(
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following statuses "
                "may be canceled: requires_payment_method, requires_capture, "
                "requires_confirmation, requires_action.",
                code="payment_intent_unexpected_state",
            )
        intent["status"] = "canceled"
        intent["canceled_at"] = self._now_ts()
        intent["cancellation_reason"] = ctx.params.get("cancellation_reason") or None
        self._emit("payment_intent.canceled", intent)
        return self._one(intent, ctx)

    def _h_list_pis(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("payment_intent")
        if ctx.params.get("customer"):
            items = [i for i in items if i["customer"] == ctx.params["customer"]]
        return self._list("/v1/payment_intents", items, ctx)

    def _h_search_pis(self, ctx: _Ctx) -> dict[str, Any]:
        return self._search(
            "/v1/payment_intents/search",
            self._all("payment_intent"),
            ctx,
            {
                "customer": "customer",
                "status": "status",
                "amount": "amount",
                "currency": "currency",
                "created": "created",
            },
        )

    def _confirm(
        self, intent: dict[str, Any], p: Mapping[str, Any], *, on_session: bool | None = None
    ) -> None:
        """Attempt the payment. Raises the 402 card error after the failed state is kept."""
        if not intent["payment_method"]:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "To confirm the PaymentIntent, specify a payment method.",
                "payment_method",
                "payment_intent_unexpected_state",
            )
        method = self._objects[intent["payment_method"]]
        test = self._test_method(method)
        if method["type"] not in intent["payment_method_types"]:
            raise _invalid(
                f"The PaymentMethod provided ({method['type']}) is not allowed by this "
                "PaymentIntent's allowed_payment_method_types "
                f"({', '.join(intent['payment_method_types'])}).",
                "payment_method",
                "payment_intent_incompatible_payment_method",
            )
        if intent["customer"] and method.get("customer") not in (None, intent["customer"]):
            raise _invalid(
                f"The customer does not have a payment method with the ID {method['id']}. The "
                "payment method must be attached to the customer.",
                "payment_method",
                "resource_missing",
            )
        if method.get("_detached"):
            raise _invalid(
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again.",
                "payment_method",
            )
        if on_session is not None:
            off_session = not on_session
        else:  # off_session=true, or "one_off" / "recurring" [SPEC]
            off_session = p.get("off_session") not in (None, False, "", "false")
        if method["type"] == "us_bank_account":
            self._confirm_ach(intent, method, test, p)
            return
        outcome = test.outcome
        if outcome == "authenticate_once" and method.get("_set_up"):
            outcome = "succeed"
        if outcome in {"authenticate", "authenticate_once"} and on_session is True:
            outcome = "succeed"  # the client authenticated (hosted checkout)
        if outcome in {"authenticate", "authenticate_once"}:
            if off_session or _bool(p.get("error_on_requires_action", False)):
                self._decline(intent, method, test)
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": p.get("return_url"),
                    "url": f"{self._base()}/c/authenticate/{intent['id']}",
                },
            }
            self._emit("payment_intent.requires_action", intent)
            return
        if outcome == "decline":
            self._decline(intent, method, test)
        self._succeed_card(intent, method)

    def _base(self) -> str:
        try:
            return self.url
        except RuntimeError:
            return "http://127.0.0.1"

    def _new_charge(
        self, intent: dict[str, Any], method: dict[str, Any], status: str
    ) -> dict[str, Any]:
        bank = method["type"] == "us_bank_account"
        details: dict[str, Any] = {"type": method["type"]}
        if bank:
            details["us_bank_account"] = {
                k: method["us_bank_account"][k]
                for k in ("account_holder_type", "account_type", "bank_name", "fingerprint")
            } | {
                "last4": method["us_bank_account"]["last4"],
                "routing_number": "110000000",
            }
        else:
            details["card"] = {
                k: method["card"][k]
                for k in ("brand", "country", "exp_month", "exp_year", "fingerprint", "funding")
            } | {"last4": method["card"]["last4"], "network": method["card"]["brand"]}
        charge = {
            # non-card payments have `py_` ids [INF from Stripe objects seen in the wild]
            "id": _new_id("py" if bank else "ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if status == "succeeded" else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": copy.deepcopy(method["billing_details"]),
            "calculated_statement_descriptor": "MILESTONE-SYNC",
            "captured": status == "succeeded",
            "created": self._now_ts(),
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "invoice": None,
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "on_behalf_of": None,
            "outcome": None,
            "paid": status == "succeeded",
            "payment_intent": intent["id"],
            "payment_method": method["id"],
            "payment_method_details": details,
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": status,
            "transfer_data": None,
            "transfer_group": None,
        }
        if status != "failed":
            charge["outcome"] = {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
        self._store(charge)
        intent["latest_charge"] = charge["id"]
        return charge

    def _new_bt(
        self,
        *,
        kind: str,
        category: str,
        amount: int,
        fee_details: Sequence[tuple[int, str]] = (),
        source: str | None,
        available_on: datetime,
        description: str | None,
        currency: str | None = None,
        source_type: str = "card",
    ) -> dict[str, Any]:
        fee = sum(a for a, _ in fee_details)
        currency = currency or self.currency
        bt = {
            "id": _new_id("txn"),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": _ts(available_on),
            "created": self._now_ts(),
            "currency": currency,
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": [
                {
                    "amount": a,
                    "application": None,
                    "currency": currency,
                    "description": d,
                    "type": "stripe_fee",
                }
                for a, d in fee_details
            ],
            "net": amount - fee,
            "reporting_category": category,
            "source": source,
            "status": "pending",
            "type": kind,
            "_payout": None,
            "_source_type": source_type,
        }
        return self._store(bt)

    def _succeed_card(self, intent: dict[str, Any], method: dict[str, Any]) -> None:
        charge = self._new_charge(intent, method, "succeeded")
        fee = self.fees.card(intent["amount"])
        available = _midnight(_add_business_days(self._now(), self.payout_schedule.delay_days))
        bt = self._new_bt(
            kind="charge",
            category="charge",
            amount=intent["amount"],
            fee_details=[(fee, "Stripe processing fees")],
            source=charge["id"],
            available_on=available,
            description=intent["description"],
            currency=intent["currency"],
        )
        charge["balance_transaction"] = bt["id"]
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            last_payment_error=None,
            next_action=None,
        )
        self._saved_for_future(intent, method)
        self._emit("charge.succeeded", charge)
        self._emit("payment_intent.succeeded", intent)
        self._session_paid(intent)

    def _saved_for_future(self, intent: dict[str, Any], method: dict[str, Any]) -> None:
        if intent.get("setup_future_usage") and intent["customer"] and not method.get("customer"):
            self._attach(method, self._objects[intent["customer"]])
            method["_set_up"] = True

    def _decline(self, intent: dict[str, Any], method: dict[str, Any], test: TestMethod):
        charge = self._new_charge(intent, method, "failed")
        charge["failure_code"] = test.code
        charge["failure_message"] = test.message
        charge["outcome"] = {
            "network_status": "declined_by_network",
            "reason": test.decline_code,
            "risk_level": "normal",
            "seller_message": "The bank did not return any further details with this decline.",
            "type": "issuer_declined",
        }
        code = test.code or "card_declined"
        error: dict[str, Any] = {
            "charge": charge["id"],
            "code": code,
            "decline_code": test.decline_code,
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "message": test.message,
            "payment_method": self._render(method),
            "type": "card_error",
        }
        intent.update(
            status="requires_payment_method",
            last_payment_error=error,
            payment_method=None,
            next_action=None,
        )
        self._emit("charge.failed", charge)
        self._emit("payment_intent.payment_failed", intent)
        raise _ApiError(402, {**error, "payment_intent": self._render(intent)})

    def _confirm_ach(
        self, intent: dict[str, Any], method: dict[str, Any], test: TestMethod, p: Mapping[str, Any]
    ) -> None:
        mandate = method.get("_mandate")
        if p.get("mandate"):
            mandate = self._get(p["mandate"], "mandate", "mandate", "mandate")["id"]
        elif isinstance(p.get("mandate_data"), dict):
            mandate = self._new_mandate(method, p["mandate_data"])["id"]
        if not mandate:
            # "This PaymentIntent requires a mandate, but no existing mandate was found ..."
            # with the PaymentIntent in requires_confirmation [DOC ach-direct-debit]
            intent["status"] = "requires_confirmation"
            raise _ApiError(
                400,
                {
                    "message": "This PaymentIntent requires a mandate, but no existing mandate "
                    "was found. Collect mandate acceptance from the customer and try again, "
                    "providing acceptance data in the mandate_data parameter.",
                    "payment_intent": self._render(intent),
                    "type": "invalid_request_error",
                },
            )
        charge = self._new_charge(intent, method, "pending")
        fee = self.fees.ach(intent["amount"])
        settle_at = _midnight(_add_business_days(self._now(), self.ach_settlement_days))
        # "You'll see a pending Balance transaction of type payment when the payment is
        # created" (reporting_category charge) [DOC balance-transaction-types]
        bt = self._new_bt(
            kind="payment",
            category="charge",
            amount=intent["amount"],
            fee_details=[(fee, "Stripe processing fees")],
            source=charge["id"],
            available_on=settle_at,
            description=intent["description"],
            currency=intent["currency"],
            source_type="bank_account",
        )
        charge["balance_transaction"] = bt["id"]
        intent.update(status="processing", last_payment_error=None, next_action=None)
        intent["processing"] = None
        method["_mandate"] = mandate
        self._saved_for_future(intent, method)
        self._emit("payment_intent.processing", intent)
        self._emit("charge.pending", charge)
        if test.outcome != "ach_processing":  # that one stays processing indefinitely [DOC]
            self._schedule(
                settle_at, f"ach settle {intent['id']}", lambda: self._ach_settle(intent)
            )

    def _ach_settle(self, intent: dict[str, Any]) -> None:
        if intent["status"] != "processing":
            return
        charge = self._objects[intent["latest_charge"]]
        method = self._objects[charge["payment_method"]]
        test = self._test_method(method)
        if test.outcome == "ach_fail":
            self._ach_fail(intent, charge, method, test)
            return
        charge.update(status="succeeded", paid=True, captured=True)
        charge["amount_captured"] = charge["amount"]
        intent.update(status="succeeded", amount_received=intent["amount"])
        self._emit("charge.succeeded", charge)
        self._emit("payment_intent.succeeded", intent)
        self._session_paid(intent)
        for refund in self._waiting_refunds(charge):
            self._submit_refund(refund, charge)
        if test.outcome == "ach_return":
            at = _midnight(_add_business_days(self._now(), self.ach_return_days))
            self._schedule(
                at,
                f"ach return {charge['id']}",
                lambda: self._bank_dispute(charge, test.code or "insufficient_funds", late=True),
            )
        elif test.outcome == "ach_dispute":
            at = _midnight(_add_business_days(self._now(), 1))
            self._schedule(
                at,
                f"ach dispute {charge['id']}",
                lambda: self._bank_dispute(charge, test.decline_code or "customer_initiated"),
            )

    def _ach_fail(
        self,
        intent: dict[str, Any],
        charge: dict[str, Any],
        method: dict[str, Any],
        test: TestMethod,
    ) -> None:
        payment = self._objects[charge["balance_transaction"]]
        # "Another Balance transaction of type payment_failure_refund appears if the pending
        # payment later fails" (reporting_category charge_failure) [DOC]; the processing fee is
        # given back (fees are charged on successful payments) and the $4 failure fee taken
        # [DOC pricing, INF that both sit on this transaction]
        fees = [(-payment["fee"], "Stripe processing fees (returned)")]
        if self.fees.ach_failure_fee:
            fees.append((self.fees.ach_failure_fee, "ACH Direct Debit failed payment fee"))
        failure = self._new_bt(
            kind="payment_failure_refund",
            category="charge_failure",
            amount=-charge["amount"],
            fee_details=fees,
            source=charge["id"],
            available_on=max(self._now(), datetime.fromtimestamp(payment["available_on"], UTC)),
            description=f"Payment failure refund for {charge['id']}",
            currency=charge["currency"],
            source_type="bank_account",
        )
        charge.update(
            status="failed",
            failure_code=test.code,
            failure_message=test.message,
            failure_balance_transaction=failure["id"],
        )
        for refund in self._waiting_refunds(charge):  # nothing was paid: nothing to give back
            refund.update(status="canceled", _waiting=False)
            charge["amount_refunded"] -= refund["amount"]
            self._emit("refund.updated", refund, {"status": "pending"})
        charge["refunded"] = False
        charge["outcome"] = {
            "network_status": "declined_by_network",
            "reason": test.code,
            "risk_level": "normal",
            "seller_message": test.message,
            "type": "issuer_declined",
        }
        # [INF] the shape of an ACH failure on the PaymentIntent: its code is the bank's reason
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            last_payment_error={
                "code": test.code,
                "message": test.message,
                "payment_method": self._render(method),
                "type": "invalid_request_error",
            },
        )
        self._emit("charge.failed", charge)
        self._emit("payment_intent.payment_failed", intent)
        self._session_failed(intent)

    # -- charges, balance transactions, balance --------------------------------------------

    def _h_list_charges(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("charge")
        for name in ("customer", "payment_intent"):
            if ctx.params.get(name):
                items = [c for c in items if c[name] == ctx.params[name]]
        return self._list("/v1/charges", items, ctx)

    def _h_list_bts(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        items = self._all("balance_transaction")
        if p.get("payout"):
            payout = self._get(p["payout"], "payout", "payout", "payout")
            items = [t for t in items if t["_payout"] == payout["id"]]
        if p.get("type"):
            items = [t for t in items if t["type"] == p["type"]]
        if p.get("source"):
            items = [t for t in items if t["source"] == p["source"]]
        if p.get("currency"):
            items = [t for t in items if t["currency"] == p["currency"]]
        return self._list("/v1/balance_transactions", items, ctx)

    def _balance_parts(self, currency: str) -> tuple[dict[str, int], dict[str, int]]:
        now = self._now_ts()
        available = {"card": 0, "bank_account": 0}
        pending = {"card": 0, "bank_account": 0}
        for bt in self._all("balance_transaction"):
            if bt["currency"] != currency:
                continue
            bucket = available if bt["available_on"] <= now else pending
            bucket[bt["_source_type"]] += bt["net"]
        return available, pending

    def _h_balance(self, ctx: _Ctx) -> dict[str, Any]:
        currencies = sorted({bt["currency"] for bt in self._all("balance_transaction")}) or [
            self.currency
        ]
        available, pending = [], []
        for currency in currencies:
            a, p = self._balance_parts(currency)
            available.append({"amount": sum(a.values()), "currency": currency, "source_types": a})
            pending.append({"amount": sum(p.values()), "currency": currency, "source_types": p})
        return {
            "object": "balance",
            "available": available,
            "connect_reserved": [{"amount": 0, "currency": c} for c in currencies],
            "livemode": False,
            "pending": pending,
        }

    # -- refunds ---------------------------------------------------------------------------

    def _charge_of(self, charge_id: Any, intent_id: Any) -> dict[str, Any]:
        if charge_id:
            return self._get(charge_id, "charge", "charge", "charge")
        if intent_id:
            intent = self._get(intent_id, "payment_intent", "payment_intent", "payment_intent")
            if not intent["latest_charge"]:
                raise _invalid(
                    f"This PaymentIntent ({intent['id']}) does not have a successful charge to "
                    "refund.",
                    "payment_intent",
                    "charge_not_refundable",
                )
            return self._objects[intent["latest_charge"]]
        raise _invalid(
            "One of the following params should be provided for this request: payment_intent "
            "or charge.",
            code="parameter_missing",
        )

    def _refund(
        self,
        charge: dict[str, Any],
        amount: int | None,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if charge["disputed"]:
            raise _invalid(
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                "charge",
                "charge_disputed",
            )
        bank = charge["payment_method_details"]["type"] == "us_bank_account"
        # a bank debit still processing may be refunded: "Stripe waits for the original
        # payment to succeed before submitting the refund" [DOC ach-direct-debit]
        waiting = bank and charge["status"] == "pending"
        if charge["status"] != "succeeded" and not waiting:
            raise _invalid(
                f"Charge {charge['id']} cannot be refunded: its status is {charge['status']}.",
                "charge",
                "charge_not_refundable",
            )
        left = charge["amount"] - charge["amount_refunded"]
        if left <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                "charge",
                "charge_already_refunded",
            )
        amount = left if amount is None else amount
        if amount <= 0:
            raise _invalid("Invalid positive integer", "amount")
        if amount > left:
            raise _invalid(
                f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
                f"charge (${left / 100:.2f})",
                "amount",
                "amount_too_large",
            )
        refund = {
            "id": _new_id("pyr" if bank else "re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": self._now_ts(),
            "currency": charge["currency"],
            "destination_details": {"type": charge["payment_method_details"]["type"]},
            "metadata": dict(metadata or {}),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "pending" if bank else "succeeded",
            "transfer_reversal": None,
        }
        refund["_waiting"] = waiting
        self._store(refund)
        if not waiting:
            self._submit_refund(refund, charge)
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge, previous)
        return refund

    def _submit_refund(self, refund: dict[str, Any], charge: dict[str, Any]) -> None:
        """The refund leaves the balance: at once, processing fees not returned [DOC refunds];
        a bank refund then settles like a debit [INF: same business days]."""
        bank = charge["payment_method_details"]["type"] == "us_bank_account"
        refund["_waiting"] = False
        bt = self._new_bt(
            kind="payment_refund" if bank else "refund",
            category="refund",
            amount=-refund["amount"],
            source=refund["id"],
            available_on=self._now(),
            description="REFUND FOR PAYMENT" if bank else "REFUND FOR CHARGE",
            currency=charge["currency"],
            source_type="bank_account" if bank else "card",
        )
        refund["balance_transaction"] = bt["id"]
        if bank:
            at = _midnight(_add_business_days(self._now(), self.ach_settlement_days))
            self._schedule(at, f"refund {refund['id']}", lambda: self._refund_settled(refund))

    def _waiting_refunds(self, charge: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in self._all("refund") if r["charge"] == charge["id"] and r["_waiting"]]

    def _refund_settled(self, refund: dict[str, Any]) -> None:
        if refund["status"] == "pending":
            refund["status"] = "succeeded"
            self._emit("refund.updated", refund, {"status": "pending"})

    def _h_create_refund(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        charge = self._charge_of(p.get("charge"), p.get("payment_intent"))
        amount = _int(p["amount"], "amount") if p.get("amount") not in (None, "") else None
        refund = self._refund(
            charge,
            amount,
            reason=p.get("reason") or None,
            metadata=_str_map(p.get("metadata")),
        )
        return self._one(refund, ctx)

    def _h_list_refunds(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("refund")
        for name in ("charge", "payment_intent"):
            if ctx.params.get(name):
                items = [r for r in items if r[name] == ctx.params[name]]
        return self._list("/v1/refunds", items, ctx)

    # -- disputes --------------------------------------------------------------------------

    def _new_dispute(
        self,
        charge: dict[str, Any],
        reason: str,
        amount: int | None,
        fee: int,
        status: str,
        *,
        bank: bool = False,
    ) -> dict[str, Any]:
        if charge["status"] != "succeeded":
            raise StripeEmulatorError(f"charge {charge['id']} has not succeeded: no dispute")
        if charge["disputed"]:
            raise StripeEmulatorError(f"charge {charge['id']} is already disputed")
        amount = charge["amount"] - charge["amount_refunded"] if amount is None else amount
        if amount <= 0 or amount > charge["amount"] - charge["amount_refunded"]:
            raise StripeEmulatorError(f"a dispute of {amount} exceeds what charge kept")
        bank = charge["payment_method_details"]["type"] == "us_bank_account"
        dispute = {
            "id": _new_id("dp"),
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [],
            "charge": charge["id"],
            "created": self._now_ts(),
            "currency": charge["currency"],
            "evidence": {"customer_email_address": None, "uncategorized_text": None},
            "evidence_details": {
                "due_by": _ts(self._now() + timedelta(days=7)) if status != "lost" else None,
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {"type": charge["payment_method_details"]["type"]},
            "reason": reason,
            "status": status,
            "_bts": [],
        }
        self._store(dispute)
        # "Stripe deducts the disputed amount from your balance" plus the fee, as one balance
        # transaction: type adjustment, reporting_category dispute [DOC reporting categories,
        # support: dispute fees FAQ]
        fees = [(fee, "Dispute fee")] if fee else []
        bt = self._new_bt(
            kind="adjustment",
            category="dispute",
            amount=-amount,
            fee_details=fees,
            source=dispute["id"],
            available_on=self._now(),
            description=f"Chargeback withdrawal for {charge['id']}",
            currency=charge["currency"],
            source_type="bank_account" if bank else "card",
        )
        dispute["_bts"].append(bt["id"])
        dispute["balance_transactions"] = [bt["id"]]
        charge["disputed"] = True
        self._emit("charge.dispute.created", dispute)
        if not bank:  # an ACH dispute sends created and closed only [DOC ach-direct-debit]
            self._emit("charge.dispute.funds_withdrawn", dispute)
        return dispute

    def _bank_dispute(self, charge: dict[str, Any], reason: str, *, late: bool = False):
        """An ACH debit that fails after success, or a customer's bank dispute. "All ACH Direct
        Debit disputes are final and there is no process for appeal": Stripe sends
        charge.dispute.created and charge.dispute.closed and deducts the amount and the fee; the
        dispute "invalidates the mandate", so later payments with the method ask for a new one.
        A late failure costs the failure fee ("Stripe charges a failure fee in this situation"),
        a dispute the dispute fee [DOC ach-direct-debit, pricing]."""
        if charge["disputed"] or charge["status"] != "succeeded":
            return None
        fee = self.fees.ach_failure_fee if late else self.fees.dispute_fee
        dispute = self._new_dispute(charge, reason, None, fee, "lost", bank=True)
        self._emit("charge.dispute.closed", dispute)
        method = self._objects[charge["payment_method"]]
        mandate = method.pop("_mandate", None)
        if mandate in self._objects:
            self._objects[mandate]["status"] = "inactive"
        return dispute

    def _close_dispute(self, dispute: dict[str, Any], won: bool) -> None:
        if dispute["status"] not in {"needs_response", "under_review", "warning_needs_response"}:
            raise StripeEmulatorError(f"dispute {dispute['id']} is already {dispute['status']}")
        previous = {"status": dispute["status"]}
        charge = self._objects[dispute["charge"]]
        if won:
            withdrawal = self._objects[dispute["_bts"][0]]
            fees = []
            if self.fees.dispute_fee_returned_on_win and withdrawal["fee"]:
                fees = [(-withdrawal["fee"], "Dispute fee (returned)")]
            # "When you win a dispute, the disputed amount is returned to your balance":
            # type adjustment, reporting_category dispute_reversal [DOC]
            bt = self._new_bt(
                kind="adjustment",
                category="dispute_reversal",
                amount=dispute["amount"],
                fee_details=fees,
                source=dispute["id"],
                available_on=self._now(),
                description=f"Chargeback reversal for {charge['id']}",
                currency=dispute["currency"],
                source_type=withdrawal["_source_type"],
            )
            dispute["_bts"].append(bt["id"])
            dispute["balance_transactions"].append(bt["id"])
            dispute["status"] = "won"
            self._emit("charge.dispute.funds_reinstated", dispute)
        else:
            dispute["status"] = "lost"  # the funds stay withdrawn: no new balance transaction
        self._emit("charge.dispute.closed", dispute, previous)

    def _h_list_disputes(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("dispute")
        for name in ("charge", "payment_intent"):
            if ctx.params.get(name):
                items = [d for d in items if d[name] == ctx.params[name]]
        return self._list("/v1/disputes", items, ctx)

    # -- payouts ---------------------------------------------------------------------------

    def _next_payout_time(self, after: datetime) -> datetime | None:
        schedule = self.payout_schedule
        if schedule.interval == "manual":
            return None
        day = after.astimezone(UTC).date()
        candidate = _midnight(day) + timedelta(hours=schedule.hour)
        if candidate <= after:
            candidate += timedelta(days=1)
        anchors = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        for _ in range(14):
            weekday = candidate.weekday()
            if schedule.interval == "weekly":
                if weekday == anchors.index(schedule.weekly_anchor):
                    return candidate
            elif weekday < 5:
                return candidate
            candidate += timedelta(days=1)
        return candidate

    def _schedule_next_payout(self, after: datetime) -> None:
        at = self._next_payout_time(after)
        if at is not None:
            # after settlements and expiries due at the same moment (lower priority runs first)
            self._schedule(at, "automatic payout", self._automatic_payout, priority=10)

    def _automatic_payout(self) -> None:
        self._pay_out(automatic=True)
        self._schedule_next_payout(self._now())

    def _pay_out(self, *, automatic: bool) -> dict[str, Any] | None:
        now = self._now_ts()
        due = [
            t
            for t in self._all("balance_transaction")
            if t["_payout"] is None and t["available_on"] <= now and t["currency"] == self.currency
        ]
        amount = sum(t["net"] for t in due)
        if amount == 0:
            return None
        arrival = _midnight(_add_business_days(self._now(), self.payout_schedule.arrival_days))
        payout = {
            "id": _new_id("po"),
            "object": "payout",
            "amount": amount,
            "arrival_date": _ts(arrival),
            "automatic": automatic,
            "balance_transaction": None,
            "created": now,
            "currency": self.currency,
            "description": "STRIPE PAYOUT",
            "destination": "ba_emulatorbankaccount",
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": {},
            "method": "standard",
            "original_payout": None,
            "reconciliation_status": "completed" if automatic else "not_applicable",
            "reversed_by": None,
            "source_type": "card",
            "statement_descriptor": None,
            "status": "in_transit",
            "type": "bank_account",
        }
        self._store(payout)
        bt = self._new_bt(
            kind="payout",
            category="payout",
            amount=-amount,
            source=payout["id"],
            available_on=self._now(),
            description="STRIPE PAYOUT",
        )
        payout["balance_transaction"] = bt["id"]
        for t in [*due, bt]:
            t["_payout"] = payout["id"]
        failing = self._fail_payouts.popleft() if self._fail_payouts else None
        self._emit("payout.created", payout)
        self._schedule(
            arrival, f"payout {payout['id']}", lambda: self._payout_arrived(payout, failing)
        )
        return payout

    def _payout_arrived(self, payout: dict[str, Any], failure: str | None) -> None:
        if payout["status"] != "in_transit":
            return
        if failure is None:
            payout["status"] = "paid"
            self._emit("payout.paid", payout, {"status": "in_transit"})
            return
        # "Funds returned to your balance if a payout fails": type payout_failure,
        # reporting_category payout_reversal [DOC reporting categories]
        bt = self._new_bt(
            kind="payout_failure",
            category="payout_reversal",
            amount=payout["amount"],
            source=payout["id"],
            available_on=self._now(),
            description="STRIPE PAYOUT FAILURE",
        )
        payout.update(
            status="failed",
            failure_balance_transaction=bt["id"],
            failure_code=failure,
            failure_message=_PAYOUT_FAILURES.get(failure, "The payout failed."),
        )
        self._emit("payout.failed", payout, {"status": "in_transit"})

    def _h_list_payouts(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("payout")
        if ctx.params.get("status"):
            items = [o for o in items if o["status"] == ctx.params["status"]]
        return self._list("/v1/payouts", items, ctx)

    # -- checkout sessions and setup intents -----------------------------------------------

    def _new_setup_intent(
        self,
        customer: dict[str, Any] | None,
        method_types: list[str],
        metadata: Mapping[str, str],
        usage: str = "off_session",
    ) -> dict[str, Any]:
        intent_id = _new_id("seti")
        intent = {
            "id": intent_id,
            "object": "setup_intent",
            "application": None,
            "automatic_payment_methods": None,
            "cancellation_reason": None,
            "client_secret": f"{intent_id}_secret_{secrets.token_urlsafe(18)}",
            "created": self._now_ts(),
            "customer": customer["id"] if customer else None,
            "description": None,
            "flow_directions": None,
            "last_setup_error": None,
            "latest_attempt": None,
            "livemode": False,
            "mandate": None,
            "metadata": dict(metadata),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_options": {},
            "payment_method_types": method_types,
            "single_use_mandate": None,
            "status": "requires_payment_method",
            "usage": usage,  # "usage defaults to off_session" [REF C2]
        }
        self._store(intent)
        self._emit("setup_intent.created", intent)
        return intent

    def _new_mandate(self, method: dict[str, Any], data: Mapping[str, Any] | None = None):
        acceptance = (data or {}).get("customer_acceptance") or {}
        kind = acceptance.get("type") or "online"
        mandate = {
            "id": _new_id("mandate"),
            "object": "mandate",
            "customer_acceptance": {
                "accepted_at": self._now_ts(),
                "online": {"ip_address": "127.0.0.1", "user_agent": "emulated-checkout"}
                if kind == "online"
                else None,
                "offline": {} if kind == "offline" else None,
                "type": kind,
            },
            "livemode": False,
            "multi_use": {},
            "payment_method": method["id"],
            "payment_method_details": {
                "type": "us_bank_account",
                "us_bank_account": {"collection_method": "paper"},
            },
            "status": "active",
            "type": "multi_use",
        }
        self._store(mandate)
        method["_mandate"] = mandate["id"]
        return mandate

    def _h_create_setup_intent(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        customer = self._live_customer(p["customer"], "customer") if p.get("customer") else None
        intent = self._new_setup_intent(
            customer,
            self._method_types(p.get("allowed_payment_method_types"), self.currency),
            _str_map(p.get("metadata")),
            p.get("usage") or "off_session",
        )
        if p.get("payment_method"):
            method = self._materialise(p["payment_method"])
            intent["payment_method"] = method["id"]
            intent["status"] = "requires_confirmation"
            if _bool(p.get("confirm", False)):
                self._complete_setup(intent, method, p.get("mandate_data"))
        return self._one(intent, ctx)

    def _complete_setup(
        self, intent: dict[str, Any], method: dict[str, Any], mandate_data: Any = None
    ) -> None:
        if intent["customer"]:
            self._attach(method, self._objects[intent["customer"]])
        method["_set_up"] = True
        if method["type"] == "us_bank_account" and not method.get("_mandate"):
            mandate_data = mandate_data if isinstance(mandate_data, dict) else None
            intent["mandate"] = self._new_mandate(method, mandate_data)["id"]
        intent.update(status="succeeded", payment_method=method["id"])
        self._emit("setup_intent.succeeded", intent)

    def _h_list_setup_intents(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("setup_intent")
        for name in ("customer", "payment_method"):
            if ctx.params.get(name):
                items = [i for i in items if i[name] == ctx.params[name]]
        return self._list("/v1/setup_intents", items, ctx)

    def _h_create_session(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        mode = p.get("mode")
        if mode not in {"setup", "payment"}:
            if not mode:
                raise _invalid("Missing required param: mode.", "mode", "parameter_missing")
            raise _invalid(f"mode={mode} is not emulated (setup and payment are).", "mode")
        customer = self._live_customer(p["customer"], "customer") if p.get("customer") else None
        allowed = p.get("allowed_payment_method_types")
        currency = str(p.get("currency") or "").lower() or None
        amount_total = None
        if mode == "setup":
            if not currency and not allowed:
                # "Required in setup mode when allowed_payment_method_types is not set" [SDK]
                raise _invalid("Missing required param: currency.", "currency", "parameter_missing")
        else:
            items = p.get("line_items")
            items = list(items.values()) if isinstance(items, dict) else items
            if not items:
                raise _invalid(
                    "Missing required param: line_items.", "line_items", "parameter_missing"
                )
            amount_total = 0
            for index, item in enumerate(items):
                price = item.get("price_data") if isinstance(item, dict) else None
                if not isinstance(price, dict):
                    raise _invalid(
                        "Only line_items with price_data are emulated.",
                        f"line_items[{index}][price_data]",
                    )
                currency = str(price.get("currency", "")).lower()
                amount_total += _int(price.get("unit_amount"), "unit_amount") * _int(
                    item.get("quantity", 1), "quantity"
                )
        method_types = self._method_types(allowed, currency or self.currency)
        session_id = "cs_test_" + "".join(secrets.choice(_ALPHABET) for _ in range(58))
        now = self._now()
        intent_data = (
            p.get("payment_intent_data") if isinstance(p.get("payment_intent_data"), dict) else {}
        )
        setup_data = (
            p.get("setup_intent_data") if isinstance(p.get("setup_intent_data"), dict) else {}
        )
        session = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": p.get("cancel_url"),
            "client_reference_id": p.get("client_reference_id"),
            "created": _ts(now),
            "currency": currency,
            "customer": customer["id"] if customer else None,
            "customer_creation": None if customer else "if_required",
            "customer_details": {"email": customer["email"], "name": customer["name"]}
            if customer
            else None,
            "customer_email": p.get("customer_email"),
            "expires_at": _ts(now + CHECKOUT_TTL),
            "invoice": None,
            "livemode": False,
            "locale": None,
            "metadata": _str_map(p.get("metadata")),
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always",
            "payment_method_types": method_types,
            "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
            "setup_intent": None,
            "status": "open",
            "success_url": p.get("success_url"),
            # Stripe's hosted page lives at checkout.stripe.com; the emulator serves a small
            # page of its own at this address for the sandbox [emulator]
            "url": f"{self._base()}/c/pay/{session_id}",
            "_intent_data": {
                "metadata": _str_map(intent_data.get("metadata")),
                "description": intent_data.get("description"),
                "setup_future_usage": intent_data.get("setup_future_usage"),
            },
        }
        if mode == "setup":
            intent = self._new_setup_intent(
                customer, method_types, _str_map(setup_data.get("metadata"))
            )
            session["setup_intent"] = intent["id"]
        self._store(session)
        self._schedule(now + CHECKOUT_TTL, f"expire {session_id}", lambda: self._expire(session))
        return self._one(session, ctx)

    def _expire(self, session: dict[str, Any]) -> None:
        if session["status"] == "open":
            session["status"] = "expired"
            self._emit("checkout.session.expired", session)

    def _h_expire_session(self, ctx: _Ctx) -> dict[str, Any]:
        session = self._get(ctx.path["session"], "checkout.session", "checkout.session")
        if session["status"] != "open":
            raise _invalid(
                f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f'Checkout Session has a status of "{session["status"]}".',
            )
        self._expire(session)
        return self._one(session, ctx)

    def _h_list_sessions(self, ctx: _Ctx) -> dict[str, Any]:
        items = self._all("checkout.session")
        for name in ("customer", "status", "payment_intent"):
            if ctx.params.get(name):
                items = [s for s in items if s[name] == ctx.params[name]]
        return self._list("/v1/checkout/sessions", items, ctx)

    def _session_of(self, intent: dict[str, Any]) -> dict[str, Any] | None:
        for session in self._all("checkout.session"):
            if session["payment_intent"] == intent["id"]:
                return session
        return None

    def _session_paid(self, intent: dict[str, Any]) -> None:
        session = self._session_of(intent)
        if session is not None and session["payment_status"] == "unpaid":
            was_complete = session["status"] == "complete"
            session["payment_status"] = "paid"
            if was_complete:  # an ACH payment finished after the session completed
                self._emit("checkout.session.async_payment_succeeded", session)

    def _session_failed(self, intent: dict[str, Any]) -> None:
        session = self._session_of(intent)
        if session is not None and session["status"] == "complete":
            self._emit("checkout.session.async_payment_failed", session)

    # -- events ----------------------------------------------------------------------------

    def _h_list_events(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.params
        items = self._all("event")
        if p.get("type") and p.get("types"):
            raise _invalid(
                "You may only specify one of these parameters: type, types.",
                code="parameters_exclusive",
            )
        if p.get("type"):
            items = [e for e in items if fnmatch.fnmatchcase(e["type"], str(p["type"]))]
        if p.get("types"):
            wanted = set(_list_of_str(p["types"]))
            items = [e for e in items if e["type"] in wanted]
        return self._list("/v1/events", items, ctx)

    # -- the emulator's hosted pages (sandbox) ---------------------------------------------

    def _hosted_checkout(self, request: Request) -> Response:
        session_id = request.path.rsplit("/", 1)[-1]
        with self._lock:
            session = self._objects.get(session_id)
        if session is None or session.get("object") != "checkout.session":
            return Response("No such Checkout Session", status=404, content_type="text/plain")
        if request.method == "POST":
            token = request.form.get("payment_method", "pm_card_visa")
            try:
                self.complete_session(session_id, token)
                message = "Done: the session is complete."
            except StripeEmulatorError as exc:
                message = f"Not completed: {exc}"
            return Response(
                f"<html><body><p>{_html(message)}</p></body></html>", content_type="text/html"
            )
        options = "".join(
            f'<button name="payment_method" value="{m.token}">{m.token}</button><br>'
            for m in TEST_METHODS.values()
            if m.type in session["payment_method_types"]
        )
        return Response(
            "<html><body><h1>Emulated Stripe Checkout</h1>"
            f"<p>Session {_html(session_id)} ({session['mode']}, {session['status']})</p>"
            f'<form method="post">{options}</form></body></html>',
            content_type="text/html",
        )

    def _hosted_authentication(self, request: Request) -> Response:
        intent_id = request.path.rsplit("/", 1)[-1]
        with self._lock:
            intent = self._objects.get(intent_id)
        if intent is None or intent.get("object") != "payment_intent":
            return Response("No such PaymentIntent", status=404, content_type="text/plain")
        if request.method == "POST":
            try:
                done = self.authenticate(intent_id, succeed=request.form.get("result") != "fail")
                message = f"The payment is {done['status']}."
            except StripeEmulatorError as exc:
                message = f"Nothing to do: {exc}"
            return Response(
                f"<html><body><p>{_html(message)}</p></body></html>", content_type="text/html"
            )
        return Response(
            "<html><body><h1>Emulated 3D Secure</h1>"
            f"<p>PaymentIntent {_html(intent_id)} ({intent['status']})</p>"
            '<form method="post"><button name="result" value="pass">Complete</button>'
            '<button name="result" value="fail">Fail</button></form></body></html>',
            content_type="text/html",
        )

    # -- admin API: what a person, a client or a bank does outside the API -----------------

    def _admin(self) -> None:
        """Admin calls first run what fell due, like any request."""
        self.run_due()

    def add_customer(
        self,
        *,
        email: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """A customer made in the Dashboard; returns its id."""
        self._admin()
        with self._lock:
            return self._new_customer(email=email, name=name, metadata=metadata)["id"]

    def add_payment_method(
        self, customer_id: str, token: str = "pm_card_visa", *, default: bool = True
    ) -> str:
        """The client saved `token`'s method (as through Checkout setup mode): a new
        PaymentMethod attached to the customer, set up for off-session use, with an active
        mandate for a US bank account; made the customer's default unless `default=False`."""
        self._admin()
        with self._lock:
            customer = self._get(customer_id, "customer", "customer")
            method = self._materialise(token)
            self._attach(method, customer)
            method["_set_up"] = True
            if method["type"] == "us_bank_account" and not method.get("_mandate"):
                self._new_mandate(method)
            if default:
                customer["invoice_settings"]["default_payment_method"] = method["id"]
                self._emit("customer.updated", customer)
            return method["id"]

    def complete_session(self, session_id: str, payment_method: str = "pm_card_visa") -> dict:
        """The client finished Checkout with `payment_method` (a test token or id). Setup
        mode: the SetupIntent succeeds (a mandate for a bank account), the method is attached
        to the customer (one is created when the session had none). Payment mode: a
        PaymentIntent for the total is confirmed on session (the client authenticates); a
        decline leaves the session open and raises StripeEmulatorError. Returns the session."""
        self._admin()
        with self._lock:
            session = self._get(session_id, "checkout.session", "checkout.session")
            if session["status"] != "open":
                raise StripeEmulatorError(f"session {session_id} is {session['status']}")
            method = self._materialise(payment_method)
            if method["type"] not in session["payment_method_types"]:
                raise StripeEmulatorError(
                    f"{method['type']} is not offered by session {session_id} "
                    f"({', '.join(session['payment_method_types'])})"
                )
            if session["customer"] is None:
                customer = self._new_customer(email=session["customer_email"])
                session["customer"] = customer["id"]
            customer = self._objects[session["customer"]]
            session["customer_details"] = {"email": customer["email"], "name": customer["name"]}
            if session["mode"] == "setup":
                intent = self._objects[session["setup_intent"]]
                intent["customer"] = customer["id"]
                self._complete_setup(intent, method)
            else:
                data = session["_intent_data"]
                intent = self._new_payment_intent(
                    amount=session["amount_total"],
                    currency=session["currency"],
                    customer=customer,
                    method=method,
                    metadata=data["metadata"],
                    description=data["description"],
                    method_types=session["payment_method_types"],
                    setup_future_usage=data["setup_future_usage"],
                )
                session["payment_intent"] = intent["id"]
                try:
                    self._confirm(
                        intent,
                        {"mandate_data": {"customer_acceptance": {"type": "online"}}},
                        on_session=True,
                    )
                except _ApiError as declined:
                    session["payment_intent"] = None
                    raise StripeEmulatorError(
                        f"payment declined: {declined.error.get('message')}"
                    ) from None
            session["status"] = "complete"
            self._emit("checkout.session.completed", session)
            return self._render(session)

    def expire_session(self, session_id: str) -> None:
        self._admin()
        with self._lock:
            self._expire(self._get(session_id, "checkout.session", "checkout.session"))

    def authenticate(self, payment_intent_id: str, *, succeed: bool = True) -> dict[str, Any]:
        """The client completed (or failed) the authentication a `requires_action`
        PaymentIntent asked for."""
        self._admin()
        with self._lock:
            intent = self._get(payment_intent_id, "payment_intent", "payment_intent")
            if intent["status"] != "requires_action":
                raise StripeEmulatorError(f"{payment_intent_id} is {intent['status']}")
            method = self._objects[intent["payment_method"]]
            if succeed:
                self._succeed_card(intent, method)
            else:
                test = TestMethod(
                    token=method["_token"],
                    type="card",
                    outcome="decline",
                    code="payment_intent_authentication_failure",
                    message="The provided PaymentMethod has failed authentication.",
                )
                with contextlib.suppress(_ApiError):  # the client is not waiting for a 402
                    self._decline(intent, method, test)
            return self._render(intent)

    def _charge_ref(self, charge_or_intent: str) -> dict[str, Any]:
        obj = self._objects.get(charge_or_intent)
        if obj is not None and obj["object"] == "payment_intent" and obj["latest_charge"]:
            return self._objects[obj["latest_charge"]]
        if obj is not None and obj["object"] == "charge":
            return obj
        raise StripeEmulatorError(f"no charge for {charge_or_intent}")

    def refund(
        self, charge_or_intent: str, amount: int | None = None, *, reason: str | None = None
    ) -> str:
        """A refund made in the Dashboard (`amount` in minor units; None: what is left)."""
        self._admin()
        with self._lock:
            try:
                return self._refund(self._charge_ref(charge_or_intent), amount, reason=reason)["id"]
            except _ApiError as refused:
                raise StripeEmulatorError(refused.error["message"]) from None

    def open_dispute(
        self, charge_or_intent: str, *, reason: str = "fraudulent", amount: int | None = None
    ) -> str:
        """The cardholder disputes the charge: status needs_response, the amount and the dispute
        fee withdrawn (one `adjustment` balance transaction)."""
        self._admin()
        with self._lock:
            charge = self._charge_ref(charge_or_intent)
            return self._new_dispute(
                charge, reason, amount, self.fees.dispute_fee, "needs_response"
            )["id"]

    def win_dispute(self, dispute_id: str) -> None:
        """The dispute is decided for the merchant: the amount comes back (a
        `dispute_reversal` adjustment; the fee only when `fees.dispute_fee_returned_on_win`)."""
        self._admin()
        with self._lock:
            self._close_dispute(self._get(dispute_id, "dispute", "dispute"), won=True)

    def lose_dispute(self, dispute_id: str) -> None:
        """The dispute is lost: status lost, no new balance transaction."""
        self._admin()
        with self._lock:
            self._close_dispute(self._get(dispute_id, "dispute", "dispute"), won=False)

    def return_ach_payment(self, charge_or_intent: str, reason: str = "insufficient_funds") -> str:
        """The bank returns a succeeded ACH debit now: Stripe's late-failure dispute (lost,
        the failure fee charged). Returns the dispute id."""
        self._admin()
        with self._lock:
            charge = self._charge_ref(charge_or_intent)
            if charge["payment_method_details"]["type"] != "us_bank_account":
                raise StripeEmulatorError(f"{charge['id']} is not a bank debit")
            dispute = self._bank_dispute(charge, reason, late=True)
            if dispute is None:
                raise StripeEmulatorError(f"{charge['id']} cannot be returned now")
            return dispute["id"]

    def fail_next_payout(self, code: str = "account_closed") -> None:
        """The next payout fails when it should arrive (`failure_code` = code): status failed,
        a `payout_failure` balance transaction gives the funds back."""
        with self._lock:
            self._fail_payouts.append(code)

    def set_payout_schedule(self, schedule: PayoutSchedule) -> None:
        """Change the automatic payout schedule from now on."""
        with self._lock:
            self.payout_schedule = schedule
            self._jobs = [j for j in self._jobs if j.name != "automatic payout"]
            heapq.heapify(self._jobs)
            self._schedule_next_payout(self._now())

    def pay_out_now(self) -> str | None:
        """Pay out the available balance now (as the next automatic payout would); returns the
        payout id, or None when the available balance is zero."""
        self._admin()
        with self._lock:
            payout = self._pay_out(automatic=True)
            return payout["id"] if payout else None

    def set_fees(self, **changes: Any) -> None:
        """Change pricing, e.g. `set_fees(card_percent=Decimal("3.4"), card_fixed=30)`."""
        with self._lock:
            for name, value in changes.items():
                if not hasattr(self.fees, name):
                    raise TypeError(f"unknown fee {name!r}")
                setattr(self.fees, name, value)

    # -- admin reads -----------------------------------------------------------------------

    def _rendered(self, kind: str) -> list[dict[str, Any]]:
        self._admin()
        with self._lock:
            return [self._render(o) for o in self._all(kind)]

    def object(self, object_id: str) -> dict[str, Any]:
        """Any object by id, rendered as the API would return it."""
        self._admin()
        with self._lock:
            if object_id not in self._objects:
                raise StripeEmulatorError(f"no object {object_id}")
            return self._render(self._objects[object_id])

    def customers(self) -> list[dict[str, Any]]:
        return self._rendered("customer")

    def payment_methods(self) -> list[dict[str, Any]]:
        return self._rendered("payment_method")

    def payment_intents(self) -> list[dict[str, Any]]:
        return self._rendered("payment_intent")

    def charges(self) -> list[dict[str, Any]]:
        return self._rendered("charge")

    def refunds(self) -> list[dict[str, Any]]:
        return self._rendered("refund")

    def disputes(self) -> list[dict[str, Any]]:
        return self._rendered("dispute")

    def balance_transactions(self, payout: str | None = None) -> list[dict[str, Any]]:
        """Every balance transaction, oldest first (only those `payout` paid out, if given)."""
        self._admin()
        with self._lock:
            return [
                self._render(t)
                for t in self._all("balance_transaction")
                if payout is None or t["_payout"] == payout
            ]

    def payouts(self) -> list[dict[str, Any]]:
        return self._rendered("payout")

    def checkout_sessions(self) -> list[dict[str, Any]]:
        return self._rendered("checkout.session")

    def setup_intents(self) -> list[dict[str, Any]]:
        return self._rendered("setup_intent")

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Events oldest first, optionally of one type (`*` wildcards allowed)."""
        return [
            e
            for e in self._rendered("event")
            if type is None or fnmatch.fnmatchcase(e["type"], type)
        ]

    def balance(self, currency: str | None = None) -> StripeBalance:
        """The balance as Money (Decimal with the currency, e.g. USD 12.34)."""
        self._admin()
        currency = (currency or self.currency).lower()
        with self._lock:
            available, pending = self._balance_parts(currency)
        code = currency.upper()
        return StripeBalance(
            available=Money.from_minor(sum(available.values()), code),
            pending=Money.from_minor(sum(pending.values()), code),
        )


# ---------------------------------------------------------------------------------------------
# module helpers


_ABSENT = object()

_PAYOUT_FAILURES = {  # Stripe's payout failure codes and texts [DOC payouts#payout-failures]
    "account_closed": "The bank account has been closed.",
    "account_frozen": "The bank account has been frozen.",
    "bank_account_restricted": "The bank account has restrictions on either the type, or the "
    "number, of payouts allowed.",
    "could_not_process": "The bank could not process this payout.",
    "insufficient_funds": "Your Stripe account has insufficient funds to cover the payout.",
    "invalid_account_number": "The routing number seems correct, but the account number is "
    "invalid.",
    "no_account": "The bank account details on file are probably incorrect.",
}


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def decode_pairs(body: str) -> list[tuple[str, str]]:
    """The form body as (key, value) pairs, for idempotency fingerprints."""
    from urllib.parse import parse_qsl

    return parse_qsl(body, keep_blank_values=True)


def _route_pattern(template: str) -> re.Pattern[str]:
    pieces = re.split(r"\{([^}]+)\}", template)
    regex = "".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>[^/]+)" for i, piece in enumerate(pieces)
    )
    return re.compile(f"^{regex}$")


def _limit(value: Any) -> int:
    if value in (None, ""):
        return 10
    limit = _int(value, "limit")
    if limit < 1:
        raise _invalid("This value must be greater than or equal to 1.", "limit")
    if limit > 100:
        raise _invalid("This value must be less than or equal to 100.", "limit")
    return limit


def _created_filter(items: list[dict[str, Any]], created: Any) -> list[dict[str, Any]]:
    if created in (None, ""):
        return items
    if not isinstance(created, dict):
        exact = _int(created, "created")
        return [o for o in items if o["created"] == exact]
    bounds = {k: _int(v, f"created[{k}]") for k, v in created.items()}
    checks: dict[str, Callable[[int, int], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return [
        o
        for o in items
        if all(checks[k](o["created"], v) for k, v in bounds.items() if k in checks)
    ]


_CLAUSE = re.compile(
    r"""\s*(?:metadata\[(?P<q1>['"])(?P<key>(?:\\.|(?!(?P=q1)).)+)(?P=q1)\]|(?P<field>[a-z_]+))"""
    r"""\s*:\s*(?P<q2>['"])(?P<value>(?:\\.|(?!(?P=q2)).)*)(?P=q2)\s*"""
)
_JOINER = re.compile(r"(AND|OR)(?=\s)")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_search(query: str, fields: Mapping[str, str]) -> tuple[list[tuple[str, str]], str]:
    """`metadata['k']:'v' AND email:'x'` -> ([("metadata.k", "v"), ("email", "x")], "AND").
    Values may escape quotes with a backslash (`'O\\'Brien'`) [DOC search-query-language]."""
    if not query.strip():
        raise _invalid("Missing required param: query.", "query", "parameter_missing")
    clauses: list[tuple[str, str]] = []
    joiners: set[str] = set()
    position = 0
    while True:
        match = _CLAUSE.match(query, position)
        if match is None:
            raise _invalid(
                f"We were unable to parse your search query at {query[position:]!r}. The "
                "emulator supports field:'value' and metadata['key']:'value' clauses joined by "
                "AND or OR.",
                "query",
            )
        if match.group("key") is not None:
            clauses.append((f"metadata.{_unescape(match.group('key'))}", _unescape(match["value"])))
        else:
            name = match.group("field")
            if name not in fields:
                raise _invalid(f"Field '{name}' is an unsupported search field.", "query")
            clauses.append((name, _unescape(match.group("value"))))
        position = match.end()
        if position >= len(query):
            break
        joiner = _JOINER.match(query, position)
        if joiner is None:
            raise _invalid(f"Expected AND or OR at {query[position:]!r}.", "query")
        joiners.add(joiner.group(1))
        position = joiner.end()
    if len(joiners) > 1:
        raise _invalid("Search queries cannot mix AND and OR; use one or the other.", "query")
    return clauses, joiners.pop() if joiners else "AND"


def _signature_header(payload: str, secret: str, timestamp: int) -> str:
    signed = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={signed.hexdigest()}"
