"""`PaymentGateway` over Stripe: customers per client, saved methods collected by Checkout in setup
mode, off-session PaymentIntents charged at most once per key, and the balance's money trail.

Customers. One Stripe Customer per (firm, client), marked with metadata `milestone_sync_client`
and `milestone_sync_tenant`. Customer search is eventually consistent (usually under a minute,
up to an hour in outages: docs.stripe.com/search), so a customer is found by, in order: this
process's memory; search; and, where a customer must exist, a create whose parameters and
idempotency key depend on (tenant, client) alone. Within Stripe's 24 h idempotency window that
create replays the first one (the same customer, never a second); after it, search has long
indexed the customer. Names and emails are set by a separate update, so the create's parameters
never change under its key.

Saved methods. An invite is a setup-mode Checkout Session; when the client completes it, the
next `saved_method` makes that session's payment method the customer's default (and notes the
session in the customer's metadata), with or without the `checkout.session.completed` webhook.
A later completed invite (a re-invite after a dead card) replaces the default the same way.

Exactly once. Each charge attempt is one PaymentIntent created with the core's key as
Idempotency-Key and as metadata `attempt_key`; retries resend the same key. `find_charge` lists
the customer's PaymentIntents (lists are strongly consistent, search is not) and matches that
metadata. When the bank wants the client present, the attempt's payment link (a payment-mode
Checkout Session, one per attempt) makes a PaymentIntent of its own, marked `action_for`, never
`attempt_key`: its money reaches the trail with the milestone on it.

Money trail. Balance transactions (oldest first, from an overlap before the cursor), each tied
to its PaymentIntent's metadata, plus lost disputes from `charge.dispute.closed` events (Stripe
keeps events 30 days: the core reads the trail every cycle)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import stripe

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.stripe import translate as tr
from adapters.stripe.client import PAGE, Obj, StripeApi, expandable_id
from adapters.stripe.errors import redact
from connector.domain.errors import InvariantViolation, RejectedError
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey
from connector.domain.money import Money
from connector.idempotency import KeyLimit, fit
from connector.ports import (
    ChargeRequest,
    ChargeResult,
    MoneyMovement,
    MovementPage,
    SavedMethod,
    SetupLink,
)

# Re-read this much before the cursor: balance transactions committed in the same second (or a
# little out of order) are not missed; the core deduplicates by movement id.
MOVEMENT_OVERLAP = timedelta(hours=1)
APPLIED_SETUP = "milestone_sync_setup"  # Customer metadata: the setup session made default


@dataclass(frozen=True)
class StripeOptions:
    currency: str  # the firm's billing currency
    tenant: str  # the firm id (metadata)
    success_url: str = "https://example.invalid/saved"  # from [payments] options
    cancel_url: str = "https://example.invalid/cancelled"
    max_attempts: int = 4
    # How far back `find_charge` looks. Longer than Stripe's 24 h idempotency window on purpose:
    # a lookup that misses a charge made before a long outage would lead to a second charge.
    find_window: timedelta = timedelta(days=30)


class StripeGateway:
    """The payment gateway of one firm's Stripe account."""

    name = "stripe"

    def __init__(
        self,
        client: stripe.StripeClient,
        options: StripeOptions,
        *,
        time: EmulatedTime = REAL_TIME,
    ) -> None:
        self.options = options
        self.time = time
        self.api = StripeApi(client, max_attempts=options.max_attempts, time=time)
        self._currency = options.currency.upper()
        self._customers: dict[str, str] = {}
        self._pi_metadata: dict[str, Mapping[str, str]] = {}

    def __repr__(self) -> str:
        return f"StripeGateway(tenant={self.options.tenant!r})"

    # ------------------------------------------------------------------ customers

    def _customer_key(self, client_key: str) -> IdempotencyKey:
        return fit(f"customer:{self.options.tenant}:{client_key}", KeyLimit.STRIPE)

    def _find_customer(self, client_key: str) -> str | None:
        """The client's customer from memory or search, never creating one."""
        known = self._customers.get(client_key)
        if known:
            return known
        query = (
            f"metadata['{tr.CLIENT_KEY}']:'{_quoted(client_key)}' AND "
            f"metadata['{tr.TENANT_KEY}']:'{_quoted(self.options.tenant)}'"
        )
        found = self.api.list_all(
            lambda: self.api.v1.customers.search(params={"query": query, "limit": PAGE}),
            f"the search for client {client_key}'s customer",
        )
        alive = [c for c in found if not c.get("deleted")]
        if not alive:
            return None
        # several (a copy made by hand in the Dashboard): the oldest, the one the idempotent
        # create made
        chosen = min(alive, key=lambda c: (int(c.get("created") or 0), str(c["id"])))
        self._customers[client_key] = str(chosen["id"])
        return self._customers[client_key]

    def _ensure_customer(self, client_key: str) -> str:
        """The client's customer, created (once, under a key of (tenant, client)) if none."""
        found = self._find_customer(client_key)
        if found:
            return found
        params: dict[str, Any] = {
            "metadata": {tr.CLIENT_KEY: client_key, tr.TENANT_KEY: self.options.tenant},
        }
        customer = self.api.write(
            lambda: self.api.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options=self.api.keyed(self._customer_key(client_key)),
            ),
            f"creating client {client_key}'s customer",
        )
        self._customers[client_key] = str(customer["id"])
        return self._customers[client_key]

    def _customer(self, customer_id: str, client_key: str) -> Obj | None:
        customer = self.api.read(
            lambda: self.api.v1.customers.retrieve(
                customer_id, params={"expand": ["invoice_settings.default_payment_method"]}
            ),
            f"client {client_key}'s customer {customer_id}",
        )
        if customer.get("deleted"):
            self._customers.pop(client_key, None)
            return None
        return customer

    # ------------------------------------------------------------------ saved methods

    def saved_method(self, client_key: ClientKey) -> SavedMethod | None:
        customer_id = self._find_customer(client_key)
        if customer_id is None:
            return None
        return self._method_of(customer_id, client_key)

    def _method_of(self, customer_id: str, client_key: str) -> SavedMethod | None:
        customer = self._customer(customer_id, client_key)
        if customer is None:
            return None
        setup = self._newest_completed_setup(customer_id, client_key)
        applied = (customer.get("metadata") or {}).get(APPLIED_SETUP)
        if setup is not None and setup[0] != applied:
            # an invite completed since we last looked (the first, or a re-invite after a hard
            # decline): its method becomes the default, whether or not the webhook came
            session_id, method_id = setup
            customer = self.api.write(
                lambda: self.api.v1.customers.update(
                    customer_id,
                    params={
                        "invoice_settings": {"default_payment_method": method_id},
                        "metadata": {APPLIED_SETUP: session_id},
                        "expand": ["invoice_settings.default_payment_method"],
                    },
                ),
                f"making client {client_key}'s saved method the default",
            )
        default = (customer.get("invoice_settings") or {}).get("default_payment_method")
        if default is None:
            return None
        if isinstance(default, str):
            default = self.api.read(
                lambda: self.api.v1.payment_methods.retrieve(default),
                f"client {client_key}'s payment method",
            )
        return tr.saved_method(customer_id, default)

    def _newest_completed_setup(self, customer_id: str, client_key: str) -> tuple[str, str] | None:
        """(session id, payment method id) of the customer's newest completed setup-mode
        Checkout Session of ours, if any."""
        sessions = self.api.list_all(
            lambda: self.api.v1.checkout.sessions.list(
                params={"customer": customer_id, "limit": PAGE}
            ),
            f"client {client_key}'s Checkout Sessions",
        )
        for session in sessions:  # newest first
            metadata = session.get("metadata") or {}
            if (
                session.get("mode") != "setup"
                or session.get("status") != "complete"
                or metadata.get(tr.TENANT_KEY, self.options.tenant) != self.options.tenant
            ):
                continue
            intent = session.get("setup_intent")
            if isinstance(intent, str):
                intent = self._setup_intent(intent, str(session["id"]))
            method_id = expandable_id((intent or {}).get("payment_method"))
            if intent and intent.get("status") == "succeeded" and method_id:
                return str(session["id"]), method_id
        return None

    def _setup_intent(self, intent_id: str, session_id: str) -> Obj:
        return self.api.read(
            lambda: self.api.v1.setup_intents.retrieve(intent_id),
            f"the SetupIntent of Checkout Session {session_id}",
        )

    def invite(self, client_key: ClientKey, client_name: str, email: str | None) -> SetupLink:
        customer_id = self._ensure_customer(client_key)
        details: dict[str, Any] = {"name": client_name} if client_name else {}
        if email:
            details["email"] = email
        if details:
            self.api.write(
                lambda: self.api.v1.customers.update(customer_id, params=details),  # type: ignore[arg-type]
                f"naming client {client_key}'s customer",
            )
        day = self.time.now().date().isoformat()
        metadata = {tr.CLIENT_KEY: client_key, tr.TENANT_KEY: self.options.tenant}
        params: dict[str, Any] = {
            "mode": "setup",
            "customer": customer_id,
            "currency": self.options.currency.lower(),
            # endive refuses payment_method_types; Checkout shows the ACH mandate text and
            # records the client's acceptance itself when they save a bank account
            "allowed_payment_method_types": list(tr.PAYMENT_METHOD_TYPES),
            "success_url": self.options.success_url,
            "cancel_url": self.options.cancel_url,
            "metadata": metadata,
            "setup_intent_data": {"metadata": metadata},
        }
        session = self.api.write(
            lambda: self.api.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options=self.api.keyed(
                    fit(f"invite:{self.options.tenant}:{client_key}:{day}", KeyLimit.STRIPE)
                ),
            ),
            f"the invite for client {client_key}",
        )
        expires = session.get("expires_at")
        return SetupLink(
            url=str(session["url"]),
            session_id=str(session["id"]),
            expires_at=tr.timestamp(expires) if expires else None,
        )

    # ------------------------------------------------------------------ charges

    def charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult:
        amount = request.amount
        if amount.is_zero() or amount.is_negative():
            raise RejectedError(f"cannot charge {amount}: the amount must be positive")
        # ensure, not find: a customer another process made a moment ago may not be searchable
        # yet, and the idempotent create finds it (or makes the empty one charge then refuses)
        customer_id = self._ensure_customer(request.client_key)
        method = self._method_of(customer_id, request.client_key)
        if method is None:
            raise RejectedError(
                f"client {request.client_key} has no saved card or bank account in Stripe: "
                f"invite them (milestone-sync clients invite {request.client_key})",
                code="no_payment_method",
            )
        metadata = {**request.metadata, tr.ATTEMPT_KEY: key}
        params: dict[str, Any] = {
            "amount": amount.minor,
            "currency": amount.currency.lower(),
            "customer": method.customer_id,
            "payment_method": method.method_id,
            "off_session": True,
            "confirm": True,
            "allowed_payment_method_types": list(tr.PAYMENT_METHOD_TYPES),
            "metadata": metadata,
            "description": request.description,
        }
        what = f"the charge of {amount} to client {request.client_key}"
        try:
            pi = self.api.write(
                lambda: self.api.v1.payment_intents.create(
                    params=params,  # type: ignore[arg-type]
                    options=self.api.keyed(fit(key, KeyLimit.STRIPE)),
                ),
                what,
            )
        except stripe.CardError as exc:
            return self._declined(exc, what)
        self._pi_metadata[str(pi["id"])] = pi.get("metadata") or {}
        return self._result(pi)

    def _declined(self, exc: stripe.CardError, what: str) -> ChargeResult:
        """A 402: the PaymentIntent exists (requires_payment_method) and says why."""
        body = exc.json_body if isinstance(exc.json_body, dict) else {}
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        pi = error.get("payment_intent")
        if not isinstance(pi, dict) or not pi.get("id"):
            raise RejectedError(
                f"Stripe declined {what} without a PaymentIntent: {redact(exc.user_message)}",
                code=exc.code or "card_declined",
            )
        self._pi_metadata[str(pi["id"])] = pi.get("metadata") or {}
        if tr.needs_authentication(error):
            return tr.requires_action(pi, self._action_link(pi))
        return tr.failed(pi, error)

    def _result(self, pi: Obj) -> ChargeResult:
        if tr.charge_state(pi) == "action":
            return tr.requires_action(pi, self._action_link(pi))
        return tr.simple_result(pi)

    def _action_link(self, pi: Obj) -> str | None:
        """A Checkout Session (payment mode) for the same amount and customer, where the client
        pays while present and their bank can authenticate them; one per attempt."""
        metadata = dict(pi.get("metadata") or {})
        attempt = metadata.pop(tr.ATTEMPT_KEY, None) or str(pi["id"])
        customer = expandable_id(pi.get("customer"))
        if customer is None:
            return None
        for session in self.api.list_all(
            lambda: self.api.v1.checkout.sessions.list(
                params={"customer": customer, "limit": PAGE}
            ),
            f"the payment links of {pi['id']}",
        ):
            if (session.get("metadata") or {}).get(tr.ACTION_FOR) == attempt and session.get(
                "status"
            ) in ("open", "complete"):
                return str(session.get("url") or "") or None
        link_metadata = {**metadata, tr.ACTION_FOR: attempt, tr.DECLINED_CHARGE: str(pi["id"])}
        description = str(pi.get("description") or "Payment")
        params: dict[str, Any] = {
            "mode": "payment",
            "customer": customer,
            "line_items": [
                {
                    "price_data": {
                        "currency": str(pi["currency"]),
                        "unit_amount": int(pi["amount"]),
                        "product_data": {"name": description[:250]},
                    },
                    "quantity": 1,
                }
            ],
            "allowed_payment_method_types": list(tr.PAYMENT_METHOD_TYPES),
            "payment_intent_data": {"description": description, "metadata": link_metadata},
            "metadata": link_metadata,
            "success_url": self.options.success_url,
            "cancel_url": self.options.cancel_url,
        }
        session = self.api.write(
            lambda: self.api.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options=self.api.keyed(fit(f"action:{attempt}", KeyLimit.STRIPE)),
            ),
            f"the payment link for {pi['id']}",
        )
        return str(session.get("url") or "") or None

    def find_charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult | None:
        # a customer made moments ago may not be searchable yet: the idempotent create finds it
        customer_id = self._ensure_customer(request.client_key)
        since = int((self.time.now() - self.options.find_window).timestamp())
        intents = self.api.list_all(
            lambda: self.api.v1.payment_intents.list(
                params={"customer": customer_id, "created": {"gte": since}, "limit": PAGE}
            ),
            f"the charges of client {request.client_key}",
        )
        matches = [pi for pi in intents if (pi.get("metadata") or {}).get(tr.ATTEMPT_KEY) == key]
        if not matches:
            return None
        if len(matches) > 1:
            ids = ", ".join(str(pi["id"]) for pi in matches)
            raise InvariantViolation(
                f"Stripe holds {len(matches)} PaymentIntents for one charge attempt ({ids}): "
                "refund the extra ones in the Stripe Dashboard and report this"
            )
        return self.get_charge(ChargeId(str(matches[0]["id"])))

    def get_charge(self, charge_id: ChargeId) -> ChargeResult:
        pi = self.api.read(
            lambda: self.api.v1.payment_intents.retrieve(
                charge_id, params={"expand": ["latest_charge"]}
            ),
            f"charge {charge_id}",
        )
        self._pi_metadata[str(pi["id"])] = pi.get("metadata") or {}
        return self._result(pi)

    # ------------------------------------------------------------------ the money trail

    def movements(self, cursor: str | None) -> MovementPage:
        since = tr.decode_cursor(cursor)
        start = None if since is None else since - int(MOVEMENT_OVERLAP.total_seconds())
        params: dict[str, Any] = {"limit": PAGE, "expand": ["data.source"]}
        if start is not None:
            params["created"] = {"gte": start}
        txns = self.api.list_all(
            lambda: self.api.v1.balance_transactions.list(params=params),  # type: ignore[arg-type]
            "the balance transactions",
        )
        txns.reverse()  # Stripe lists newest first
        txns.sort(key=lambda t: int(t.get("created") or 0))  # stable: keeps Stripe's order
        found: list[MoneyMovement] = [tr.movement(txn, self._link(txn)) for txn in txns]
        lost, newest_event = self._lost_disputes(start)
        found.extend(lost)
        found.sort(key=lambda m: m.occurred_at)  # stable
        newest = max(
            [int(t.get("created") or 0) for t in txns]
            + ([newest_event] if newest_event else [])
            + ([since] if since is not None else []),
            default=None,
        )
        return MovementPage(
            movements=found,
            cursor=tr.encode_cursor(newest) if newest is not None else None,
            more=False,
            # once a movement is booked, reading on from its time (less the overlap) is safe
            resume=[tr.encode_cursor(int(m.occurred_at.timestamp())) for m in found],
        )

    def _lost_disputes(self, start: int | None) -> tuple[list[MoneyMovement], int | None]:
        """Disputes closed as lost since `start`, from `charge.dispute.closed` events (a lost
        dispute moves no money, so no balance transaction marks it), and the newest event's
        time."""
        params: dict[str, Any] = {"type": "charge.dispute.closed", "limit": PAGE}
        if start is not None:
            params["created"] = {"gte": start}
        events = self.api.list_all(
            lambda: self.api.v1.events.list(params=params),  # type: ignore[arg-type]
            "the closed disputes",
        )
        lost: dict[str, MoneyMovement] = {}
        newest: int | None = None
        for event in reversed(events):  # oldest first
            created = int(event.get("created") or 0)
            newest = max(newest or created, created)
            dispute = (event.get("data") or {}).get("object") or {}
            if (
                dispute.get("status") != "lost"
                or dispute.get("id") in lost
                or tr.is_returned_debit(dispute)  # booked as PAYMENT_RETURNED when it opened
            ):
                continue
            link = self._dispute_link(dispute)
            lost[str(dispute["id"])] = tr.lost_dispute(dispute, tr.timestamp(created), link)
        if start is None:
            # from the account's start: events go back 30 days only, so disputes lost before
            # that come from the disputes themselves (dated when they opened: Stripe records
            # no closing time on a dispute)
            for dispute in reversed(
                self.api.list_all(
                    lambda: self.api.v1.disputes.list(params={"limit": PAGE}), "the disputes"
                )
            ):
                if (
                    dispute.get("status") == "lost"
                    and dispute.get("id") not in lost
                    and not tr.is_returned_debit(dispute)
                ):
                    lost[str(dispute["id"])] = tr.lost_dispute(
                        dispute, tr.timestamp(dispute.get("created")), self._dispute_link(dispute)
                    )
        return list(lost.values()), newest

    def _link(self, txn: Obj) -> tr.ChargeLink:
        """The PaymentIntent behind a balance transaction (charge, refund, dispute) and its
        metadata; nothing for payouts and fees."""
        source = txn.get("source")
        if not isinstance(source, Mapping):
            return tr.ChargeLink()
        kind = source.get("object")
        if kind == "charge":
            return self._charge_link(source)
        if kind == "dispute":
            return self._dispute_link(source)
        if kind == "refund":
            pi_id = expandable_id(source.get("payment_intent"))
            if pi_id:
                return tr.ChargeLink(pi_id, self._metadata_of(pi_id))
            charge_id = expandable_id(source.get("charge"))
            return self._charge_link(self._charge(charge_id)) if charge_id else tr.ChargeLink()
        return tr.ChargeLink()

    def _dispute_link(self, dispute: Mapping[str, Any]) -> tr.ChargeLink:
        pi_id = expandable_id(dispute.get("payment_intent"))
        if pi_id:
            return tr.ChargeLink(pi_id, self._metadata_of(pi_id))
        charge_id = expandable_id(dispute.get("charge"))
        return self._charge_link(self._charge(charge_id)) if charge_id else tr.ChargeLink()

    def _charge_link(self, charge: Mapping[str, Any]) -> tr.ChargeLink:
        pi_id = expandable_id(charge.get("payment_intent"))
        if pi_id:
            return tr.ChargeLink(pi_id, self._metadata_of(pi_id))
        # a charge made without a PaymentIntent (not by milestone-sync): its own metadata
        return tr.ChargeLink(None, self._ours(charge.get("metadata") or {}))

    def _charge(self, charge_id: str) -> Obj:
        return self.api.read(lambda: self.api.v1.charges.retrieve(charge_id), f"charge {charge_id}")

    def _metadata_of(self, pi_id: str) -> Mapping[str, str]:
        """The PaymentIntent's metadata (fetched once per process: ours never changes)."""
        if pi_id not in self._pi_metadata:
            pi = self.api.read(
                lambda: self.api.v1.payment_intents.retrieve(pi_id), f"charge {pi_id}"
            )
            self._pi_metadata[pi_id] = pi.get("metadata") or {}
        return self._ours(self._pi_metadata[pi_id])

    def _ours(self, metadata: Mapping[str, str]) -> Mapping[str, str]:
        """Metadata naming a milestone of another firm sharing the account is not ours."""
        tenant = metadata.get("tenant")
        if tenant is not None and tenant != self.options.tenant:
            return {}
        return metadata

    def balance(self) -> Money:
        balance = self.api.read(lambda: self.api.v1.balance.retrieve(), "the Stripe balance")
        currency = self._currency.lower()
        total = sum(
            int(entry.get("amount") or 0)
            for part in ("available", "pending")
            for entry in balance.get(part) or []
            if str(entry.get("currency")).lower() == currency
        )
        return Money.from_minor(total, self._currency)

    def payout_movements(self, payout_id: str) -> Sequence[MoneyMovement]:
        txns = self.api.list_all(
            lambda: self.api.v1.balance_transactions.list(
                params={"payout": payout_id, "limit": PAGE, "expand": ["data.source"]}
            ),
            f"the balance transactions of payout {payout_id}",
        )
        txns.reverse()
        txns.sort(key=lambda t: int(t.get("created") or 0))
        return [tr.movement(txn, self._link(txn)) for txn in txns]


def _quoted(value: str) -> str:
    """A value inside single quotes in Stripe's search query language."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
