"""Stripe objects (as plain dicts) to milestone-sync's value types and back: saved methods,
charge outcomes with their decline classification, balance movements, and the movement cursor.

Pure functions: no SDK calls here; the adapter fetches, this module decides what it means."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connector.domain.ids import ChargeId, LedgerInvoiceId, MilestoneKey
from connector.domain.money import Money
from connector.ports import (
    ChargeResult,
    ChargeStatus,
    DeclineKind,
    MoneyMovement,
    MovementKind,
    SavedMethod,
)

Obj = Mapping[str, Any]

CLIENT_KEY = "milestone_sync_client"  # Customer metadata: the practice source's client key
TENANT_KEY = "milestone_sync_tenant"  # Customer metadata: the firm
ATTEMPT_KEY = "attempt_key"  # PaymentIntent metadata: the core's idempotency key of the attempt
ACTION_FOR = "action_for"  # Checkout Session (payment mode) metadata: the attempt it stands in for
DECLINED_CHARGE = "declined_charge"  # ... and the PaymentIntent that needed authentication

PAYMENT_METHOD_TYPES = ("card", "us_bank_account")
AUTHENTICATION_CODES = frozenset({"authentication_required"})


def money(minor: int, currency: str) -> Money:
    return Money.from_minor(int(minor), currency.upper())


def timestamp(seconds: int | float | None) -> datetime:
    return datetime.fromtimestamp(int(seconds or 0), UTC)


# --------------------------------------------------------------------------- saved methods


def method_label(method: Obj) -> tuple[str, str]:
    """(kind, label) of a PaymentMethod: ('card', 'visa ending 4242'),
    ('us_bank_account', 'bank account ending 6789')."""
    kind = str(method.get("type") or "card")
    details = method.get(kind) or {}
    last4 = details.get("last4") or "????"
    if kind == "card":
        brand = str(details.get("display_brand") or details.get("brand") or "card")
        return kind, f"{brand.replace('_', ' ')} ending {last4}"
    if kind == "us_bank_account":
        return kind, f"bank account ending {last4}"
    return kind, f"{kind.replace('_', ' ')} ending {last4}"


def saved_method(customer_id: str, method: Obj) -> SavedMethod:
    kind, label = method_label(method)
    return SavedMethod(customer_id=customer_id, method_id=str(method["id"]), kind=kind, label=label)


# --------------------------------------------------------------------------- declines


@dataclass(frozen=True, slots=True)
class Decline:
    kind: DeclineKind
    reason: str  # what happened, in the admin's words


_HARD = DeclineKind.HARD
_SOFT = DeclineKind.SOFT

# Stripe's card decline codes (docs.stripe.com/declines/codes) and the failure codes of ACH
# Direct Debit (R01 insufficient_funds, R02 account_closed, R03 no_account, R04
# invalid_account_number, R05/R07/R10/R29 debit_not_authorized, R16 account_frozen, R20
# bank_account_restricted). HARD: the same method will not work again (lost, stolen, closed,
# not authorised, or the issuer said never); SOFT: a later attempt may succeed. A code not
# listed is SOFT: the core retries a few times on its schedule, then asks an admin.
DECLINES: dict[str, Decline] = {
    # hard
    "stolen_card": Decline(_HARD, "the card was reported stolen"),
    "lost_card": Decline(_HARD, "the card was reported lost"),
    "pickup_card": Decline(_HARD, "the issuer wants the card retained (lost, stolen or fraud)"),
    "do_not_honor": Decline(_HARD, "the issuer refuses the card without giving a reason"),
    "do_not_try_again": Decline(_HARD, "the issuer says not to try this card again"),
    "fraudulent": Decline(_HARD, "the payment was declined as suspected fraud"),
    "merchant_blacklist": Decline(_HARD, "the payment was declined as suspected fraud"),
    "restricted_card": Decline(_HARD, "the card is restricted (possibly reported lost or stolen)"),
    "security_violation": Decline(_HARD, "the issuer declined for a security violation"),
    "expired_card": Decline(_HARD, "the card has expired"),
    "incorrect_number": Decline(_HARD, "the card number is wrong"),
    "invalid_number": Decline(_HARD, "the card number is wrong"),
    "invalid_expiry_month": Decline(_HARD, "the card's expiry date is wrong"),
    "invalid_expiry_year": Decline(_HARD, "the card's expiry date is wrong"),
    "incorrect_cvc": Decline(_HARD, "the card's security code is wrong"),
    "invalid_cvc": Decline(_HARD, "the card's security code is wrong"),
    "incorrect_zip": Decline(_HARD, "the card's postal code does not match"),
    "invalid_account": Decline(_HARD, "the card or its account is not valid"),
    "new_account_information_available": Decline(_HARD, "the card or account has been replaced"),
    "card_not_supported": Decline(_HARD, "the card does not support this kind of payment"),
    "currency_not_supported": Decline(_HARD, "the card does not support this currency"),
    "transaction_not_allowed": Decline(_HARD, "the issuer does not allow this kind of payment"),
    "not_permitted": Decline(_HARD, "the issuer does not permit this payment"),
    "service_not_allowed": Decline(_HARD, "the issuer does not allow this kind of payment"),
    "invalid_amount": Decline(_HARD, "the issuer refuses this amount"),
    "stop_payment_order": Decline(_HARD, "the client told their bank to stop this payment"),
    "revocation_of_authorization": Decline(_HARD, "the client revoked the authorisation"),
    "revocation_of_all_authorizations": Decline(_HARD, "the client revoked the authorisation"),
    "duplicate_transaction": Decline(
        _HARD, "the issuer saw an identical payment moments ago (check for a duplicate)"
    ),
    "testmode_decline": Decline(_HARD, "a Stripe test card was used in live mode"),
    # ACH Direct Debit returns
    "account_closed": Decline(_HARD, "the bank account is closed"),
    "no_account": Decline(_HARD, "the bank cannot find the account"),
    "invalid_account_number": Decline(_HARD, "the bank account number is not valid"),
    "debit_not_authorized": Decline(_HARD, "the client's bank says the debit was not authorised"),
    "bank_account_restricted": Decline(_HARD, "the bank account cannot be debited"),
    "account_frozen": Decline(_HARD, "the bank account is frozen"),
    "bank_ownership_changed": Decline(_HARD, "the bank account changed owner"),
    "bank_account_unusable": Decline(_HARD, "the bank account cannot be debited"),
    # soft
    "insufficient_funds": Decline(_SOFT, "insufficient funds"),
    "processing_error": Decline(_SOFT, "an error while processing the card"),
    "try_again_later": Decline(_SOFT, "the issuer asks to try again later"),
    "generic_decline": Decline(_SOFT, "the issuer declined without a reason"),
    "card_declined": Decline(_SOFT, "the issuer declined without a reason"),
    "call_issuer": Decline(_SOFT, "the issuer declined; the client should call their bank"),
    "approve_with_id": Decline(_SOFT, "the issuer could not authorise the payment"),
    "issuer_not_available": Decline(_SOFT, "the issuer could not be reached"),
    "reenter_transaction": Decline(_SOFT, "the issuer could not process the payment"),
    "no_action_taken": Decline(_SOFT, "the issuer could not process the payment"),
    "card_velocity_exceeded": Decline(_SOFT, "the card's limit or balance is exceeded"),
    "withdrawal_count_limit_exceeded": Decline(_SOFT, "the card's limit is exceeded"),
    "authentication_required": Decline(_SOFT, "the bank wants the client to authenticate"),
}


def classify_decline(code: str, advice_code: str | None = None) -> DeclineKind:
    """HARD or SOFT for a decline code; Stripe's `advice_code` `do_not_try_again` (the issuer
    forbids retries, and networks fine merchants who retry) makes any decline HARD."""
    if advice_code == "do_not_try_again":
        return DeclineKind.HARD
    decline = DECLINES.get(code)
    return decline.kind if decline else DeclineKind.SOFT


def decline_message(code: str, kind: DeclineKind, stripe_message: str | None = None) -> str:
    """What happened and what the admin can do about it."""
    decline = DECLINES.get(code)
    reason = decline.reason if decline else (stripe_message or f"declined ({code})")
    if kind is DeclineKind.HARD:
        todo = (
            "this card or bank account will not work again: ask the client to save another one "
            "(send them a new invite), then retry"
        )
    else:
        todo = (
            "a later attempt may succeed (milestone-sync retries on its schedule); if it keeps "
            "failing, ask the client for another card or bank account"
        )
    return f"Stripe declined the charge: {reason} ({code}): {todo}"


def error_code(error: Obj | None) -> tuple[str | None, str | None]:
    """(decline code, advice code) of a Stripe error object: `decline_code`, else `code`."""
    if not error:
        return None, None
    code = error.get("decline_code") or error.get("code")
    return (str(code) if code else None), (error.get("advice_code") or None)


def needs_authentication(error: Obj | None) -> bool:
    return bool(error) and bool(
        {error.get("code"), error.get("decline_code")} & AUTHENTICATION_CODES  # type: ignore[union-attr]
    )


# --------------------------------------------------------------------------- charges


def pi_amount(pi: Obj) -> Money:
    return money(pi["amount"], pi["currency"])


def failed(pi: Obj, error: Obj | None) -> ChargeResult:
    """A PaymentIntent whose last attempt failed (a 402, or a bank debit that came back)."""
    code, advice = error_code(error)
    if code is None:
        latest = pi.get("latest_charge")
        if isinstance(latest, Mapping):
            code = latest.get("failure_code")
    code = code or ("canceled" if pi.get("status") == "canceled" else "card_declined")
    kind = DeclineKind.HARD if code == "canceled" else classify_decline(code, advice)
    stripe_message = (error or {}).get("message")
    message = (
        "the PaymentIntent was canceled in Stripe: charge again only after checking why"
        if code == "canceled"
        else decline_message(code, kind, stripe_message)
    )
    return ChargeResult(
        id=ChargeId(str(pi["id"])),
        status=ChargeStatus.FAILED,
        amount=pi_amount(pi),
        decline_code=code,
        decline_kind=kind,
        message=message,
    )


def requires_action(pi: Obj, url: str | None) -> ChargeResult:
    return ChargeResult(
        id=ChargeId(str(pi["id"])),
        status=ChargeStatus.REQUIRES_ACTION,
        amount=pi_amount(pi),
        decline_code="authentication_required",
        message=(
            "the client's bank wants them to authenticate this payment: send them the payment "
            "link so they can pay while present"
        ),
        action_url=url,
    )


def charge_state(pi: Obj) -> str:
    """What a PaymentIntent means for us: 'succeeded', 'processing', 'action' or 'failed'."""
    status = pi.get("status")
    if status == "succeeded":
        return "succeeded"
    if status in ("processing", "requires_capture"):
        return "processing"
    if status == "requires_action" or needs_authentication(pi.get("last_payment_error")):
        return "action"
    return "failed"  # requires_payment_method, requires_confirmation, canceled


def simple_result(pi: Obj) -> ChargeResult:
    """The result for a PaymentIntent that needs no action link."""
    state = charge_state(pi)
    if state == "succeeded":
        return ChargeResult(ChargeId(str(pi["id"])), ChargeStatus.SUCCEEDED, pi_amount(pi))
    if state == "processing":
        return ChargeResult(ChargeId(str(pi["id"])), ChargeStatus.PROCESSING, pi_amount(pi))
    return failed(pi, pi.get("last_payment_error"))


# --------------------------------------------------------------------------- movements

_PAYMENT_TYPES = frozenset({"charge", "payment"})
_REFUND_TYPES = frozenset({"refund", "payment_refund", "refund_failure"})
_PAYOUT_FAILED_TYPES = frozenset({"payout_cancel", "payout_failure"})


def source_object(txn: Obj) -> str:
    """The kind of object behind a balance transaction: 'charge', 'refund', 'dispute',
    'payout', ... (from the expanded source, else from its id prefix)."""
    source = txn.get("source")
    if isinstance(source, Mapping):
        return str(source.get("object") or "")
    text = str(source or "")
    for prefix, kind in (
        ("ch_", "charge"),
        ("py_", "charge"),
        ("pyr_", "refund"),
        ("re_", "refund"),
        ("dp_", "dispute"),
        ("du_", "dispute"),
        ("po_", "payout"),
    ):
        if text.startswith(prefix):
            return kind
    return ""


def is_bank_return(txn: Obj) -> bool:
    """A dispute that is really a bank debit returned after it succeeded. Stripe: "In rare
    situations, Stripe might receive an ACH failure from the bank after a PaymentIntent has
    transitioned to succeeded. If this happens, Stripe creates a dispute with a reason of
    insufficient_funds" (docs.stripe.com/payments/ach-direct-debit). The client still owes the
    money, so it is booked as a returned payment, not as a dispute (and its closing as lost
    moves nothing more)."""
    source = txn.get("source")
    return isinstance(source, Mapping) and is_returned_debit(source)


# a bank failure after an ACH debit succeeded becomes a dispute with one of these reasons
# (Stripe's ACH docs); the client still owes the money, so it is a returned payment
RETURN_REASONS = frozenset(
    {"insufficient_funds", "incorrect_account_details", "bank_cannot_process"}
)


def is_returned_debit(dispute: Obj) -> bool:
    details = dispute.get("payment_method_details") or {}
    return (
        dispute.get("object") == "dispute"
        and details.get("type") == "us_bank_account"
        and dispute.get("reason") in RETURN_REASONS
    )


def movement_kind(txn: Obj) -> MovementKind:
    """The bookkeeping meaning of a balance transaction, from its `type`, refined by its
    `reporting_category` (Stripe's advice for accounting: docs.stripe.com/reports/
    reporting-categories) for adjustments, which cover disputes, their reversals and more."""
    kind = txn.get("type")
    category = txn.get("reporting_category")
    if kind in _PAYMENT_TYPES:
        return MovementKind.PAYMENT
    if kind in _REFUND_TYPES:
        return MovementKind.REFUND  # a refund_failure is a refund coming back (amount > 0)
    if kind == "payment_failure_refund" or category == "charge_failure":
        return MovementKind.PAYMENT_RETURNED
    if kind == "payout" or category == "payout":
        return MovementKind.PAYOUT
    if kind in _PAYOUT_FAILED_TYPES or category == "payout_reversal":
        return MovementKind.PAYOUT_FAILED
    if is_bank_return(txn):
        return MovementKind.PAYMENT_RETURNED
    if category == "dispute":
        return MovementKind.DISPUTE_WITHDRAWN
    if category == "dispute_reversal":
        return MovementKind.DISPUTE_REINSTATED
    if category == "refund_failure":
        return MovementKind.REFUND
    if kind == "adjustment" and source_object(txn) == "dispute":
        amount = int(txn.get("amount") or 0)
        return MovementKind.DISPUTE_WITHDRAWN if amount < 0 else MovementKind.DISPUTE_REINSTATED
    # stripe_fee, stripe_fx_fee, tax_fee, application_fee, fee adjustments, and anything else
    # that moves the balance without a charge behind it: the bookkeeper sees its description
    return MovementKind.FEE


@dataclass(frozen=True, slots=True)
class ChargeLink:
    """The PaymentIntent a movement concerns, and what milestone-sync wrote on it."""

    charge_id: str | None = None
    metadata: Mapping[str, str] | None = None


def movement(txn: Obj, link: ChargeLink) -> MoneyMovement:
    kind = movement_kind(txn)
    currency = str(txn["currency"])
    source = txn.get("source")
    source_id = str(source.get("id")) if isinstance(source, Mapping) else (source or None)
    metadata = link.metadata or {}
    milestone = metadata.get("milestone")
    invoice = metadata.get("invoice")
    payout_id = (
        source_id
        if kind in (MovementKind.PAYOUT, MovementKind.PAYOUT_FAILED)
        and source_object(txn) == "payout"
        else None
    )
    description = str(txn.get("description") or "")
    if not description:
        description = f"stripe {txn.get('type')} ({txn.get('reporting_category') or 'other'})"
    return MoneyMovement(
        id=str(txn["id"]),
        kind=kind,
        amount=money(txn.get("amount") or 0, currency),
        fee=money(txn.get("fee") or 0, currency),
        occurred_at=timestamp(txn.get("created")),
        charge_id=ChargeId(link.charge_id) if link.charge_id else None,
        milestone=MilestoneKey(milestone) if milestone else None,
        invoice_id=LedgerInvoiceId(invoice) if invoice else None,
        source=source_id,
        payout_id=payout_id,
        description=description,
    )


def lost_dispute(dispute: Obj, closed_at: datetime, link: ChargeLink) -> MoneyMovement:
    """A dispute closed as lost: the amount withdrawn when it opened is gone for good (Stripe
    moves no money now, so there is no balance transaction: the movement is the dispute)."""
    currency = str(dispute["currency"])
    metadata = link.metadata or {}
    milestone = metadata.get("milestone")
    invoice = metadata.get("invoice")
    return MoneyMovement(
        id=str(dispute["id"]),
        kind=MovementKind.DISPUTE_LOST,
        amount=money(abs(int(dispute.get("amount") or 0)), currency),
        fee=Money.zero(currency.upper()),
        occurred_at=closed_at,
        charge_id=ChargeId(link.charge_id) if link.charge_id else None,
        milestone=MilestoneKey(milestone) if milestone else None,
        invoice_id=LedgerInvoiceId(invoice) if invoice else None,
        source=str(dispute["id"]),
        description=f"dispute lost ({dispute.get('reason') or 'no reason given'})",
    )


# --------------------------------------------------------------------------- cursor

_CURSOR_PREFIX = "stripe:v1:"


def encode_cursor(created: int) -> str:
    """The movements cursor: the newest `created` (Unix seconds) seen so far."""
    return f"{_CURSOR_PREFIX}{int(created)}"


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.startswith(_CURSOR_PREFIX):
        raise ValueError(f"not a Stripe movements cursor: {cursor!r}")
    return int(cursor[len(_CURSOR_PREFIX) :])
