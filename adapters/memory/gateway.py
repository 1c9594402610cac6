"""An in-memory payment gateway: saved methods whose behaviour is scripted per client.

Method behaviours mirror Stripe's test payment methods: `succeed`, `processing` (ACH),
`requires_action` (3-D Secure), `decline:<code>` (e.g. `decline:insufficient_funds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.memory._persist import load_state, save_state
from adapters.memory.faults import FaultQueue
from connector.domain.errors import RejectedError
from connector.domain.ids import ChargeId, ClientKey, IdempotencyKey
from connector.domain.money import Money
from connector.ports import ChargeRequest, ChargeResult, ChargeStatus, DeclineKind, SavedMethod

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


def classify_decline(code: str) -> DeclineKind:
    return DeclineKind.HARD if code in HARD_DECLINES else DeclineKind.SOFT


class MemoryGateway:
    def __init__(
        self, state_file: Path | None = None, methods: list[dict[str, str]] | None = None
    ) -> None:
        self._file = state_file
        state = load_state(state_file)
        self._methods: dict[str, dict[str, str]] = state.get("methods", {})
        for method in methods or []:
            self._methods[method["client"]] = _method(
                method.get("behaviour", "succeed"), method.get("kind", "card")
            )
        self._charges: dict[str, dict[str, Any]] = state.get("charges", {})
        self._keys: dict[str, str] = state.get("keys", {})
        self.charge_faults = FaultQueue()
        self.calls: list[str] = []

    def add_method(self, client_key: str, behaviour: str = "succeed", kind: str = "card") -> None:
        self._methods[client_key] = _method(behaviour, kind)
        self._save()

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
            "metadata": dict(request.metadata),
        }
        self._keys[key] = charge_id
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

    # ------------------------------------------------------------------ test controls

    def settle(
        self, charge_id: str, *, succeeded: bool = True, code: str = "insufficient_funds"
    ) -> None:
        """Finish a processing (ACH) charge."""
        row = self._charges[charge_id]
        row["status"] = "succeeded" if succeeded else "failed"
        row["decline_code"] = None if succeeded else code
        self._save()

    def charges(self) -> list[ChargeResult]:
        return [self.get_charge(ChargeId(c)) for c in self._charges]

    def _save(self) -> None:
        save_state(
            self._file, {"methods": self._methods, "charges": self._charges, "keys": self._keys}
        )


def _method(behaviour: str, kind: str) -> dict[str, str]:
    label = "bank account ending 6789" if kind == "us_bank_account" else "visa ending 4242"
    return {"behaviour": behaviour, "kind": kind, "label": label}
