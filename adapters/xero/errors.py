"""xero-python's exceptions (and urllib3's, underneath it) mapped to our four errors in one table
(STYLE rule 4), with Xero's validation messages turned into what the admin should fix.

Xero answers a refused write with 400 `{"ErrorNumber":10,"Type":"ValidationException",
"Elements":[{"ValidationErrors":[{"Message":...}]}]}` [REF B3], or, with summarizeErrors=false,
200 with `HasErrors` and `ValidationErrors` on each refused element; both end in `rejection`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import urllib3.exceptions
from xero_python.exceptions import (
    ApiException,
    ApiTypeError,
    ApiValueError,
    BadRequestException,
    HTTPStatusException,
    NotFoundException,
    OAuth2Error,
    RateLimitException,
)

from adapters.http import parse_retry_after
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    MilestoneSyncError,
    RejectedError,
    TransientError,
)

RECONNECT = "run `milestone-sync connect xero` and pick the organisation"
IDEMPOTENCY_TTL_SECONDS = 360.0  # Xero keeps an Idempotency-Key about 6 minutes

CUSTOMER_FIX = 'set [clients."KEY"] ledger_customer_id to the ContactID of an active Xero contact'
ACCOUNT_OPTIONS = (
    "the xero sales_account, clearing_account, bank_account, fee_account or disputes_account "
    "option that names it (or the item's sales account in Xero)"
)


@dataclass(frozen=True)
class _Rule:
    """One kind of Xero validation message: how to recognise it and what to tell the admin."""

    pattern: re.Pattern[str]
    code: str
    fix: Callable[[re.Match[str]], str]


def _rule(pattern: str, code: str, fix: str | Callable[[re.Match[str]], str]) -> _Rule:
    return _Rule(
        re.compile(pattern, re.IGNORECASE),
        code,
        fix if callable(fix) else (lambda _m, text=fix: text),
    )


# Most specific first; the first rule that matches a message decides its code and fix.
VALIDATION_RULES: tuple[_Rule, ...] = (
    _rule(
        r"Invoice # must be unique",
        "duplicate_number",
        "the invoice number is already used in Xero: give the milestone another invoice "
        "number, or leave numbering to Xero",
    ),
    _rule(
        r"contact.*archived|archived.*contact",
        "contact_archived",
        f"the Xero contact is archived: restore it in Xero (Contacts, Archived), or {CUSTOMER_FIX}",
    ),
    _rule(
        r"contact.*(could not be found|not found|does not exist)|Contact must be specified",
        "contact_missing",
        f"the customer is not a contact in this Xero organisation: {CUSTOMER_FIX}",
    ),
    _rule(
        r"Item code '([^']*)'",
        "item",
        lambda m: (
            f"item '{m.group(1)}' is not a sellable item in Xero: create or restore it in "
            "Xero (Business, Products and services), or set the milestone's item to an existing "
            "item code"
        ),
    ),
    _rule(
        r"Account code '([^']*)' has been archived",
        "account_archived",
        lambda m: (
            f"account {m.group(1)} is archived in Xero: restore it, or point {ACCOUNT_OPTIONS} "
            "at an active account"
        ),
    ),
    _rule(
        r"Account code '([^']*)' cannot accept payments",
        "clearing_account",
        lambda m: (
            f"account {m.group(1)} cannot receive payments in Xero: set the xero "
            "clearing_account option to a bank account, or tick 'Enable payments to this "
            "account' on it in Xero"
        ),
    ),
    _rule(
        r"Account code '([^']*)' is not a bank account",
        "bank_account",
        lambda m: (
            f"account {m.group(1)} is not a bank account in Xero, and transfers, fees and "
            "refunds move money through bank accounts: set the xero clearing_account (the "
            "Stripe account) and bank_account options to codes of bank accounts (Xero: "
            "Accounting, Bank accounts, Add bank account)"
        ),
    ),
    _rule(
        r"From and To bank accounts must be different",
        "same_account",
        "the transfer's two accounts are the same Xero account: give the xero clearing_account "
        "and bank_account options two different bank accounts",
    ),
    _rule(
        r"already assigned to another contact",
        "contact_name",
        "a Xero contact with that name exists already: archive the duplicate in Xero, or rename "
        "one of them",
    ),
    _rule(
        r"Account code '([^']*)' is not a valid code",
        "account_invalid",
        lambda m: (
            f"account {m.group(1)} cannot be used here in Xero (it does not exist, is a bank "
            "account on a line, or a system account such as Accounts Receivable): point "
            f"{ACCOUNT_OPTIONS} at a suitable account"
        ),
    ),
    _rule(
        r"Account code must be specified",
        "account_missing",
        "the line has no sales account: set the xero sales_account option, or give the Xero "
        "item a sales account",
    ),
    _rule(
        r"TaxType code '([^']*)'",
        "tax_type",
        lambda m: (
            f"tax type {m.group(1)} is not an active sales tax rate in Xero: set the "
            "milestone's tax_code to one listed in Xero (Settings, Tax rates)"
        ),
    ),
    _rule(
        r"not subscribed to currency (\w+)",
        "currency",
        lambda m: (
            f"currency {m.group(1)} is not enabled in Xero: add it in Xero (Settings, "
            "Currencies), or bill in the organisation's base currency"
        ),
    ),
    _rule(
        r"lock date",
        "locked_period",
        "the date falls in a period locked in Xero: move the lock date in Xero (Settings, "
        "Advanced, Financial settings), or post with a later date",
    ),
    _rule(
        r"Due ?Date",
        "due_date",
        "Xero needs a due date: give the milestone terms such as 'Net 30', or set payment "
        "terms on the contact or the organisation in Xero",
    ),
    _rule(
        r"Tracking",
        "tracking",
        "the tracking category or option is not active in Xero: fix the xero tracking option",
    ),
    _rule(
        r"Payment amount exceeds",
        "overpayment",
        "the payment is more than the invoice's amount due in Xero (a payment may have been "
        "recorded there already): check the invoice in Xero",
    ),
    _rule(
        r"Payments can only be made against Authori[sz]ed",
        "not_authorised",
        "the invoice is not awaiting payment in Xero (a draft, paid or voided): check it in Xero",
    ),
    _rule(
        r"SUBMITTED, AUTHORISED or PAID|valid status for sending",
        "not_sendable",
        "only approved invoices can be emailed: approve the invoice in Xero first",
    ),
    _rule(
        r"email address",
        "no_email",
        "the Xero contact has no email address: add one to the contact in Xero",
    ),
    _rule(
        r"not of valid status|cannot be edited",
        "invalid_status",
        "the invoice can no longer be changed in Xero (paid, voided or deleted)",
    ),
)
# Messages that mean "later", not "never"
_DAILY_EMAIL_LIMIT = re.compile(r"daily limit", re.IGNORECASE)
_KEY_REUSED = re.compile(r"used with a different request", re.IGNORECASE)


def validation_messages(body: Any) -> list[str]:
    """Every `Message` of a Xero error body (bytes, text or parsed), outermost last."""
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body or "null", parse_float=Decimal)
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return [text.strip()[:300]] if text.strip() else []
    messages: list[str] = []
    if isinstance(body, dict):
        for element in body.get("Elements") or []:
            if isinstance(element, dict):
                for error in element.get("ValidationErrors") or []:
                    if isinstance(error, dict) and error.get("Message"):
                        messages.append(str(error["Message"]))
        top = body.get("Message") or body.get("Detail")
        if top and not messages:
            messages.append(str(top))
    return messages


def rejection(messages: Sequence[str], what: str) -> MilestoneSyncError:
    """What Xero's validation messages for `what` mean for the caller (usually RejectedError)."""
    text = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip())) or "no reason"
    if _KEY_REUSED.search(text):
        # The same key went out earlier with another body (and its answer is cached for
        # ~6 minutes): nothing was applied now, and the earlier attempt may have been.
        return TransientError(
            f"Xero refused {what}: {text} (the earlier attempt with this key is remembered for "
            "about 6 minutes; look the invoice up, then retry)",
            retry_after=IDEMPOTENCY_TTL_SECONDS,
            outcome_unknown=True,
        )
    if _DAILY_EMAIL_LIMIT.search(text):
        return TransientError(f"Xero refused {what}: {text}", retry_after=3600.0)
    for rule in VALIDATION_RULES:
        for message in messages:
            match = rule.pattern.search(message)
            if match:
                return RejectedError(
                    f"Xero rejected {what}: {text}; to fix: {rule.fix(match)}", code=rule.code
                )
    return RejectedError(f"Xero rejected {what}: {text}", code="validation")


# ---------------------------------------------------------------------------------------------
# The table: SDK / transport exception -> our error


def _headers(exc: ApiException) -> Any:
    try:
        return exc.headers or {}
    except AttributeError:
        return {}


def _rate_limited(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, RateLimitException)
    headers = _headers(exc)
    problem = headers.get("X-Rate-Limit-Problem") or "minute"
    return TransientError(
        f"Xero rate limit ({problem}) reached on {what}",
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def _bad_request(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, BadRequestException)
    body = exc.body
    try:
        parsed = json.loads(body or b"null", parse_float=Decimal)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("Type") in (
        "PostDataInvalidException",
        "QueryParseException",
    ):
        return RejectedError(
            f"Xero could not read {what} ({parsed.get('Type')}): {parsed.get('Message')}; this "
            "is a milestone-sync bug, please report it",
            code="malformed",
        )
    return rejection(validation_messages(parsed if parsed is not None else body), what)


def _not_found(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return RejectedError(f"{what}: not found in Xero", code="not_found")


def _status(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    assert isinstance(exc, HTTPStatusException)
    status = exc.status or 0
    headers = _headers(exc)
    detail = "; ".join(validation_messages(exc.body)) or str(exc.reason or "")
    if status == 401:
        return ConfigError(f"Xero refused the access token on {what} ({detail}): {RECONNECT}")
    if status == 403:
        return ConfigError(
            f"the Xero connection may not use this organisation ({what}: {detail}): {RECONNECT}"
            ", or set the xero tenant_id option to an organisation the connection includes"
        )
    if status == 413:
        return RejectedError(f"{what} is larger than Xero accepts (3.5 MB)", code="too_large")
    if status == 429:
        return TransientError(
            f"Xero rate limit on {what}", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    if status >= 500 or status in (408, 409):
        # 503 means Xero did not take the request; after other errors a write may have landed
        return TransientError(
            f"Xero answered {status} on {what}",
            retry_after=parse_retry_after(headers.get("Retry-After")),
            outcome_unknown=write and status != 503,
        )
    return RejectedError(f"Xero answered {status} on {what}: {detail}", code=str(status))


def _not_sent(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return TransientError(f"Xero unreachable on {what}: {type(exc).__name__}")


def _lost(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        exc.reason, urllib3.exceptions.NewConnectionError
    ):
        return _not_sent(exc.reason, what, write)
    return TransientError(
        f"no answer from Xero on {what} ({type(exc).__name__})"
        + ("; it may have been applied" if write else ""),
        outcome_unknown=write,
    )


def _api(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return TransientError(
        f"Xero call failed on {what}: {getattr(exc, 'reason', '')}", outcome_unknown=write
    )


def _bug(exc: BaseException, what: str, write: bool) -> MilestoneSyncError:
    return InvariantViolation(f"xero-python refused {what}: {type(exc).__name__}: {exc}")


Translator = Callable[[BaseException, str, bool], MilestoneSyncError]

# Order matters: subclasses before their bases.
TABLE: tuple[tuple[tuple[type[BaseException], ...], Translator], ...] = (
    ((RateLimitException,), _rate_limited),
    ((BadRequestException,), _bad_request),  # incl. AccountingBadRequestException
    ((NotFoundException,), _not_found),
    ((HTTPStatusException,), _status),
    ((ApiTypeError, ApiValueError, OAuth2Error), _bug),
    ((ApiException,), _api),  # status 0: SSL and request-building failures
    # connecting failed: the request never left (NewConnectionError is a ConnectTimeoutError)
    ((urllib3.exceptions.ConnectTimeoutError,), _not_sent),
    # sent, but no (complete) answer: a read timeout, a dropped or reset connection
    (
        (
            urllib3.exceptions.ReadTimeoutError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.MaxRetryError,
            urllib3.exceptions.HTTPError,
            ConnectionError,
        ),
        _lost,
    ),
)


def translate(exc: BaseException, what: str, *, write: bool) -> MilestoneSyncError:
    """Our error for an exception raised while calling Xero about `what`."""
    if isinstance(exc, MilestoneSyncError):
        return exc
    for kinds, build in TABLE:
        if isinstance(exc, kinds):
            return build(exc, what, write)
    return InvariantViolation(f"unexpected {type(exc).__name__} from xero-python on {what}")


def is_unauthorized(exc: BaseException) -> bool:
    return isinstance(exc, HTTPStatusException) and exc.status == 401


TRANSLATED: tuple[type[BaseException], ...] = tuple(k for kinds, _ in TABLE for k in kinds)
