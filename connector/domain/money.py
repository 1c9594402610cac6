"""Money as an exact Decimal amount with an ISO 4217 currency; never a float.

Minor units per currency come from CLDR (via babel), so JPY has 0 decimals, USD 2, KWD 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache

from babel.numbers import get_currency_precision, list_currencies

# CLDR lists some currencies as two-decimal where ISO 4217 says otherwise; ISO wins for money on
# invoices because ledgers and Stripe follow ISO.
_ISO_MINOR_UNIT_OVERRIDES = {"HUF": 2, "TWD": 2, "UGX": 0, "ISK": 0}


@cache
def _known_currencies() -> frozenset[str]:
    return frozenset(list_currencies())


def is_known_currency(code: str) -> bool:
    """True for an ISO 4217 alphabetic code that CLDR knows."""
    return (
        isinstance(code, str) and len(code) == 3 and code.isupper() and code in _known_currencies()
    )


@cache
def minor_units(currency: str) -> int:
    """Number of decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    if not is_known_currency(currency):
        raise ValueError(f"unknown currency {currency!r}: use an ISO 4217 code such as USD")
    if currency in _ISO_MINOR_UNIT_OVERRIDES:
        return _ISO_MINOR_UNIT_OVERRIDES[currency]
    return int(get_currency_precision(currency))


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount of money")
    if isinstance(value, float):
        raise TypeError(
            "money must not be a float: pass a Decimal, an int or a string such as '12.50'"
        )
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | str):
        try:
            result = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a decimal amount") from exc
    else:
        raise TypeError(f"cannot make money from {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite amount")
    return result


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in one currency, always held at the currency's minor-unit precision."""

    amount: Decimal
    currency: str

    def __init__(self, amount: Decimal | int | str, currency: str) -> None:
        value = _to_decimal(amount)
        places = minor_units(currency)
        quantum = Decimal(1).scaleb(-places)
        quantized = value.quantize(quantum, rounding=ROUND_HALF_UP)
        if quantized != value:
            raise ValueError(
                f"{value} {currency} has more than {places} decimal places; round it first "
                "(Money.rounded) or fix the amount"
            )
        object.__setattr__(self, "amount", quantized)
        object.__setattr__(self, "currency", currency)

    @classmethod
    def rounded(cls, amount: Decimal | int | str, currency: str) -> Money:
        """Money from an amount with extra precision, rounded half-up to the minor unit."""
        value = _to_decimal(amount)
        quantum = Decimal(1).scaleb(-minor_units(currency))
        return cls(value.quantize(quantum, rounding=ROUND_HALF_UP), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def from_minor(cls, units: int, currency: str) -> Money:
        """Money from integer minor units (cents for USD, yen for JPY)."""
        if isinstance(units, bool) or not isinstance(units, int):
            raise TypeError("minor units must be an int")
        return cls(Decimal(units).scaleb(-minor_units(currency)), currency)

    @property
    def minor(self) -> int:
        """The amount in integer minor units, for storage and Stripe."""
        return int(self.amount.scaleb(minor_units(self.currency)))

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def abs(self) -> Money:
        return Money(abs(self.amount), self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: Money) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: Money) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: Money) -> bool:
        return self.amount >= self._same(other).amount

    def is_zero(self) -> bool:
        return self.amount == 0

    def is_negative(self) -> bool:
        return self.amount < 0

    def percent(self, percent: Decimal) -> Money:
        """This amount times percent/100, rounded half-up to the minor unit."""
        return Money.rounded(self.amount * _to_decimal(percent) / 100, self.currency)

    def allocate(self, weights: Sequence[Decimal | int]) -> list[Money]:
        """Split into parts proportional to weights, by largest remainder.

        The parts always sum exactly to this amount; leftover minor units go to the parts with the
        largest fractional remainders (ties to the earlier part).
        """
        if not weights:
            raise ValueError("allocate needs at least one weight")
        ws = [_to_decimal(w) for w in weights]
        if any(w < 0 for w in ws):
            raise ValueError("allocation weights must not be negative")
        total_weight = sum(ws, Decimal(0))
        if total_weight == 0:
            raise ValueError("allocation weights must not all be zero")
        total = self.minor
        sign = -1 if total < 0 else 1
        magnitude = abs(total)
        exact = [Decimal(magnitude) * w / total_weight for w in ws]
        floors = [int(e) for e in exact]  # int() truncates toward zero; all values are >= 0
        leftover = magnitude - sum(floors)
        order = sorted(range(len(ws)), key=lambda i: (-(exact[i] - floors[i]), i))
        for i in order[:leftover]:
            floors[i] += 1
        return [Money.from_minor(sign * f, self.currency) for f in floors]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def __repr__(self) -> str:
        return f"Money('{self.amount}', '{self.currency}')"
