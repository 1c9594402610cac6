"""An in-memory payment gateway: saved methods whose behaviour is scripted per client, charges,
and a balance that moves as Stripe's does (payments with fees, refunds, disputes, returned bank
debits, payouts), so the money trail can be exercised without Stripe.

Method behaviours mirror Stripe's test payment methods: `succeed`, `processing` (ACH, settled by
`settle`), `requires_action` (3-D Secure), `decline:<code>` (e.g. `decline:insufficient_funds`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from adapters.memory._persist import load_state, save_state
from adapters.memory.faults import FaultQueue
from connector.domain.errors import RejectedError
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey, LedgerInvoiceId, MilestoneKey
from connector.domain.money import Money
from connector.ports import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    DeclineKind,
    MoneyMovement,
    MovementKind,
    MovementPage,
    SavedMethod,
    SetupLink,
)

HARD_DECLINES = frozenset(
    {
        "stolen_card",
        "lost_card",
        "pickup_card",
        "do_not_honor",
        "fraudulent",
        "restricted_card",
        "invalid_account",
        "account_closed",
        "expired_card",
        "incorrect_number",
        "card_not_supported",
        "transaction_not_allowed",
        "no_account",
        "debit_not_authorized",
    }
)
"""Decline codes that will not succeed on retry (Stripe decline codes and ACH return reasons)."""

DISPUTE_FEE = Decimal("15.00")


def classify_decline(code: str) -> DeclineKind:
    return DeclineKind.HARD if code in HARD_DECLINES else DeclineKind.SOFT


def gateway_fee(amount: Money, kind: str) -> Money:
    """Stripe's US list prices: cards 2.9% + 0.30, ACH 0.8% capped at 5.00 (half up)."""
    if kind == "us_bank_account":
        fee = min(amount.amount * Decimal("0.008"), Decimal("5.00"))
    else:
        fee = amount.amount * Decimal("0.029") + Decimal("0.30")
    return Money(fee.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), amount.currency)


class MemoryGateway:
    def __init__(
        self,
        state_file: Path | None = None,
        methods: list[dict[str, str]] | None = None,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._file = state_file
        self._now = now or (lambda: datetime.now(UTC))
        state = load_state(state_file)
        self._methods: dict[str, dict[str, str]] = state.get("methods", {})
        for method in methods or []:
            self._methods[method["client"]] = _method(
                method.get("behaviour", "succeed"), method.get("kind", "card")
            )
        self._charges: dict[str, dict[str, Any]] = state.get("charges", {})
        self._keys: dict[str, str] = state.get("keys", {})
        self._movements: list[dict[str, Any]] = state.get("movements", [])
        self._invites: dict[str, str] = state.get("invites", {})
        self.charge_faults = FaultQueue()
        self.calls: list[str] = []

    # ------------------------------------------------------------------ port

    def saved_method(self, client_key: ClientKey) -> SavedMethod | None:
        method = self._methods.get(client_key)
        if method is None:
            return None
        return SavedMethod(
            customer_id=f"cus_{client_key}",
            method_id=f"pm_{client_key}",
            kind=method["kind"],
            label=method["label"],
        )

    def charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult:
        self.calls.append(f"charge {request.metadata.get('milestone', '')} {request.amount}")
        fault = self.charge_faults.before("charge")
        if key in self._keys:
            return self.get_charge(ChargeId(self._keys[key]))
        method = self._methods.get(request.client_key)
        if method is None:
            raise RejectedError(f"client {request.client_key} has no saved payment method")
        if request.amount.is_zero() or request.amount.is_negative():
            raise RejectedError(f"cannot charge {request.amount}")
        behaviour = method["behaviour"]
        status, code = ChargeStatus.SUCCEEDED, None
        if behaviour == "processing":
            status = ChargeStatus.PROCESSING
        elif behaviour == "requires_action":
            status = ChargeStatus.REQUIRES_ACTION
        elif behaviour.startswith("decline:"):
            status, code = ChargeStatus.FAILED, behaviour.split(":", 1)[1]
        charge_id = f"pi_{len(self._charges) + 1:06d}"
        self._charges[charge_id] = {
            "status": status.value,
            "amount": str(request.amount.amount),
            "currency": request.amount.currency,
            "decline_code": code,
            "key": key,
            "kind": method["kind"],
            "metadata": dict(request.metadata),
            "refunded": "0",
        }
        self._keys[key] = charge_id
        if status is ChargeStatus.SUCCEEDED:
            self._landed(charge_id)
        self._save()
        self.charge_faults.after(fault, "charge")
        return self.get_charge(ChargeId(charge_id))

    def find_charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult | None:
        charge_id = self._keys.get(key)
        return self.get_charge(ChargeId(charge_id)) if charge_id else None

    def get_charge(self, charge_id: ChargeId) -> ChargeResult:
        row = self._charges.get(charge_id)
        if row is None:
            raise RejectedError(f"charge {charge_id} does not exist")
        status = ChargeStatus(row["status"])
        code = row["decline_code"]
        return ChargeResult(
            id=charge_id,
            status=status,
            amount=Money(row["amount"], row["currency"]),
            decline_code=code,
            decline_kind=classify_decline(code) if code else None,
            message=f"card declined: {code}" if code else None,
            action_url=f"https://pay.example.test/{charge_id}"
            if status is ChargeStatus.REQUIRES_ACTION
            else None,
        )

    def invite(self, client_key: ClientKey, client_name: str, email: str | None) -> SetupLink:
        session = self._invites.setdefault(client_key, f"cs_setup_{len(self._invites) + 1:04d}")
        self._save()
        return SetupLink(
            url=f"https://checkout.example.test/{session}",
            session_id=session,
            expires_at=self._now() + timedelta(hours=24),
        )

    def movements(self, cursor: str | None) -> MovementPage:
        start = int(cursor or "0")
        rows = self._movements[start:]
        return MovementPage(
            movements=[self._movement(row) for row in rows],
            cursor=str(len(self._movements)),
            resume=[str(start + n + 1) for n in range(len(rows))],
        )

    def balance(self) -> Money:
        total = Decimal(0)
        currency = "USD"
        for row in self._movements:
            currency = row["currency"]
            if row["net"]:  # a lost dispute moves nothing: its money left when it opened
                total += Decimal(row["amount"]) - Decimal(row["fee"])
        return Money(total, currency)

    def payout_movements(self, payout_id: str) -> Sequence[MoneyMovement]:
        return [self._movement(row) for row in self._movements if row.get("paid_by") == payout_id]

    # ------------------------------------------------------------------ test and sandbox controls

    def add_method(self, client_key: str, behaviour: str = "succeed", kind: str = "card") -> None:
        self._methods[client_key] = _method(behaviour, kind)
        self._save()

    def complete_invite(
        self, client_key: str, behaviour: str = "succeed", kind: str = "card"
    ) -> None:
        """The client saved a card or bank account through the invite link."""
        if client_key not in self._invites:
            raise RejectedError(f"client {client_key} was never invited")
        self.add_method(client_key, behaviour, kind)

    def settle(
        self, charge_id: str, *, succeeded: bool = True, code: str = "insufficient_funds"
    ) -> None:
        """Finish a processing (ACH) charge."""
        row = self._charges[charge_id]
        row["status"] = "succeeded" if succeeded else "failed"
        row["decline_code"] = None if succeeded else code
        if succeeded:
            self._landed(charge_id)
        self._save()

    def refund(self, charge_id: str, amount: Money) -> str:
        row = self._charges[charge_id]
        if Decimal(row["refunded"]) + amount.amount > Decimal(row["amount"]):
            raise RejectedError("a refund cannot exceed what is left of the charge")
        row["refunded"] = str(Decimal(row["refunded"]) + amount.amount)
        return self._move(MovementKind.REFUND, -amount.amount, Decimal(0), charge_id, "re")

    def open_dispute(self, charge_id: str) -> str:
        amount = Decimal(self._charges[charge_id]["amount"])
        return self._move(MovementKind.DISPUTE_WITHDRAWN, -amount, DISPUTE_FEE, charge_id, "dp")

    def win_dispute(self, charge_id: str) -> str:
        amount = Decimal(self._charges[charge_id]["amount"])
        return self._move(MovementKind.DISPUTE_REINSTATED, amount, -DISPUTE_FEE, charge_id, "dp")

    def lose_dispute(self, charge_id: str) -> str:
        """The dispute is lost: no money moves (it was withdrawn when the dispute opened)."""
        amount = Decimal(self._charges[charge_id]["amount"])
        return self._move(MovementKind.DISPUTE_LOST, amount, Decimal(0), charge_id, "dp", net=False)

    def return_payment(self, charge_id: str) -> str:
        """The client's bank returns a bank debit that had already succeeded."""
        amount = Decimal(self._charges[charge_id]["amount"])
        self._charges[charge_id]["status"] = "failed"
        self._charges[charge_id]["decline_code"] = "debit_not_authorized"
        return self._move(MovementKind.PAYMENT_RETURNED, -amount, Decimal(0), charge_id, "pyr")

    def payout(self) -> str | None:
        """Pay the balance out to the bank (a negative balance is pulled from the bank)."""
        unpaid = [row for row in self._movements if "paid_by" not in row and row["net"]]
        total = sum((Decimal(r["amount"]) - Decimal(r["fee"]) for r in unpaid), Decimal(0))
        if not unpaid or total == 0:
            return None
        payout_id = f"po_{sum(1 for r in self._movements if r['kind'] == 'payout') + 1:05d}"
        for row in unpaid:
            row["paid_by"] = payout_id
        movement = self._move(MovementKind.PAYOUT, -total, Decimal(0), None, "po", source=payout_id)
        self._movements[-1]["paid_by"] = payout_id
        self._movements[-1]["payout_id"] = payout_id
        self._save()
        return movement

    def charges(self) -> list[ChargeResult]:
        return [self.get_charge(ChargeId(c)) for c in self._charges]

    # ------------------------------------------------------------------ internals

    def _landed(self, charge_id: str) -> None:
        row = self._charges[charge_id]
        amount = Money(row["amount"], row["currency"])
        fee = gateway_fee(amount, row.get("kind", "card"))
        self._move(MovementKind.PAYMENT, amount.amount, fee.amount, charge_id, "ch")

    def _move(
        self,
        kind: MovementKind,
        amount: Decimal,
        fee: Decimal,
        charge_id: str | None,
        prefix: str,
        *,
        source: str | None = None,
        net: bool = True,
    ) -> str:
        row_id = f"txn_{len(self._movements) + 1:06d}"
        charge = self._charges.get(charge_id or "", {})
        metadata = charge.get("metadata", {})
        self._movements.append(
            {
                "id": row_id if net else f"{prefix}_{len(self._movements) + 1:06d}",
                "kind": kind.value,
                "amount": str(amount),
                "fee": str(fee),
                "currency": charge.get("currency", "USD"),
                "at": self._now().isoformat(),
                "charge": charge_id,
                "milestone": metadata.get("milestone"),
                "invoice": metadata.get("invoice"),
                "source": source or f"{prefix}_{len(self._movements) + 1:06d}",
                "net": net,
            }
        )
        self._save()
        return str(self._movements[-1]["id"])

    def _movement(self, row: dict[str, Any]) -> MoneyMovement:
        return MoneyMovement(
            id=row["id"],
            kind=MovementKind(row["kind"]),
            amount=Money(row["amount"], row["currency"]),
            fee=Money(row["fee"], row["currency"]),
            occurred_at=datetime.fromisoformat(row["at"]),
            charge_id=ChargeId(row["charge"]) if row.get("charge") else None,
            milestone=MilestoneKey(row["milestone"]) if row.get("milestone") else None,
            invoice_id=LedgerInvoiceId(row["invoice"]) if row.get("invoice") else None,
            source=row.get("source"),
            payout_id=row.get("payout_id"),
            description=f"{row['kind']} {row.get('source') or ''}".strip(),
        )

    def _save(self) -> None:
        save_state(
            self._file,
            {
                "methods": self._methods,
                "charges": self._charges,
                "keys": self._keys,
                "movements": self._movements,
                "invites": self._invites,
            },
        )


def _method(behaviour: str, kind: str) -> dict[str, str]:
    label = "bank account ending 6789" if kind == "us_bank_account" else "visa ending 4242"
    return {"behaviour": behaviour, "kind": kind, "label": label}
