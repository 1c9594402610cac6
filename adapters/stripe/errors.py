"""stripe-python's exceptions mapped to our four errors in one table (STYLE rule 4), with
messages that say what the admin should do. No secret key ever reaches a message.

The SDK raises by HTTP status [REF C3, read in stripe/_api_requestor.py]: 429 (or 400
`rate_limit`) RateLimitError; 400/404 with type `idempotency_error` IdempotencyError, else
InvalidRequestError; 401 AuthenticationError; 402 CardError; 403 PermissionError; any other
status (409, 5xx) or an unreadable body APIError; transport failures APIConnectionError."""

from __future__ import annotations

import re
from collections.abc import Callable

import stripe

from adapters.http import parse_retry_after
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    MilestoneSyncError,
    RejectedError,
    TransientError,
)

KEY_FIX = (
    "set [payments] secret_key_env to the name of an environment variable holding the "
    "account's secret key (sk_live_... or sk_test_...), or a restricted key (rk_...) with write "
    "access to Customers, PaymentIntents and Checkout Sessions and read access to Balance, "
    "Balance transactions, Charges, Disputes, Events and Payment methods"
)

# Anything that looks like a Stripe key is cut from text we pass on (Stripe's own messages echo
# a mistyped key, e.g. "Invalid API Key provided: sk_test_****1234").
_KEY_PATTERN = re.compile(r"\b(?:sk|rk|pk|whsec)_(?:live|test)?_?[A-Za-z0-9*]+")


def redact(text: str | None) -> str:
    return _KEY_PATTERN.sub("[key]", text or "").strip()


def _message(exc: stripe.StripeError) -> str:
    return redact(exc.user_message) or type(exc).__name__


def _request_id(exc: stripe.StripeError) -> str:
    return f" (Stripe request {exc.request_id})" if exc.request_id else ""


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    return parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))


def _card(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    # The adapter turns a declined charge into a FAILED result before it gets here; a card
    # error anywhere else (e.g. a Checkout Session) is this item's problem.
    assert isinstance(exc, stripe.CardError)
    code = (exc.error.decline_code if exc.error else None) or exc.code or "card_declined"
    return RejectedError(f"Stripe declined {what}: {_message(exc)} ({code})", code=code)


def _rate_limited(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.RateLimitError)
    # Stripe refused before executing (nothing stored under the key): not an unknown outcome
    return TransientError(
        f"Stripe rate limit on {what}{_request_id(exc)}: {_message(exc)}",
        retry_after=_retry_after(exc),
    )


def _idempotency(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.IdempotencyError)
    return InvariantViolation(
        f"Stripe refused {what}: the idempotency key was used before with other parameters "
        f"({_message(exc)}){_request_id(exc)}; this is a milestone-sync bug (a changed payload "
        "must get a new key), please report it"
    )


def _invalid(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.InvalidRequestError)
    param = f" (parameter {exc.param})" if exc.param else ""
    if exc.http_status == 404 or exc.code == "resource_missing":
        return RejectedError(
            f"Stripe has no such object for {what}: {_message(exc)}{param}", code="not_found"
        )
    if "requires a mandate" in _message(exc):
        # Stripe invalidates a bank account's mandate when a debit is returned or disputed
        return RejectedError(
            f"Stripe refused {what}: the client's authorization to debit their bank account "
            "is no longer valid (a debit was returned or disputed): invite them to save a bank "
            "account or card again (milestone-sync clients invite CLIENT), then retry"
            f"{_request_id(exc)}",
            code="mandate_invalid",
        )
    return RejectedError(
        f"Stripe rejected {what}: {_message(exc)}{param}{_request_id(exc)}",
        code=exc.code or "invalid_request",
    )


def _authentication(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return ConfigError(f"Stripe refused the secret key on {what}: {KEY_FIX}")


def _permission(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.PermissionError)
    return ConfigError(
        f"the Stripe key may not do {what} ({_message(exc)}): give the restricted key that "
        f"permission in the Stripe Dashboard (Developers, API keys), or {KEY_FIX}"
    )


def _api(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.APIError)
    status = exc.http_status or 0
    # 409: another request with the same key is still running; 5xx: Stripe may have executed
    # it; an unreadable 2xx body: it did. After a write, only a lookup can tell.
    return TransientError(
        f"Stripe answered {status or 'unreadably'} on {what}{_request_id(exc)}"
        + ("; it may have been applied" if write else ""),
        retry_after=_retry_after(exc),
        outcome_unknown=write,
    )


def _connection(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.APIConnectionError)
    cause = exc.__cause__
    detail = type(cause).__name__ if cause is not None else "no answer"
    return TransientError(
        f"no answer from Stripe on {what} ({detail})"
        + ("; it may have been applied" if write else ""),
        outcome_unknown=write,
    )


def _signature(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return RejectedError(f"bad Stripe signature on {what}", code="signature")


def _other(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, stripe.StripeError)
    return InvariantViolation(
        f"unexpected {type(exc).__name__} from Stripe on {what}: {_message(exc)}"
    )


Translator = Callable[[BaseException, str, bool], MilestoneSyncError]

# Order matters: subclasses before their bases (all derive from StripeError).
TABLE: tuple[tuple[type[BaseException], Translator], ...] = (
    (stripe.CardError, _card),
    (stripe.RateLimitError, _rate_limited),
    (stripe.IdempotencyError, _idempotency),
    (stripe.InvalidRequestError, _invalid),
    (stripe.AuthenticationError, _authentication),
    (stripe.PermissionError, _permission),
    (stripe.APIConnectionError, _connection),
    (stripe.APIError, _api),
    (stripe.SignatureVerificationError, _signature),
    (stripe.StripeError, _other),
)


def translate(exc: BaseException, what: str, *, write: bool) -> MilestoneSyncError:
    """Our error for an exception raised while calling Stripe about `what`."""
    if isinstance(exc, MilestoneSyncError):
        return exc
    for kind, build in TABLE:
        if isinstance(exc, kind):
            return build(exc, what, write)
    return InvariantViolation(f"unexpected {type(exc).__name__} from stripe-python on {what}")
