"""Money: exact amounts per currency, and splits that always sum to the whole (property tests)."""

from __future__ import annotations

import itertools
from datetime import date
from decimal import Decimal
from fractions import Fraction

import pytest
from babel.numbers import list_currencies
from hypothesis import given
from hypothesis import strategies as st

from connector.config import (
    AppConfig,
    FirmConfig,
    LedgerConnection,
    LedgerKind,
    Matched,
    Matcher,
    MilestoneDef,
    PaymentsConnection,
    PaymentsKind,
    PercentOfFee,
    Plan,
    SourceConnection,
    SourceKind,
    Trigger,
)
from connector.domain.ids import (
    ClientKey,
    ConfigRevision,
    MilestoneDefId,
    PlanId,
    SourceId,
    TenantId,
    WorkItemKey,
)
from connector.domain.model import Engagement, TriggerKind
from connector.domain.money import Money, is_known_currency, minor_units
from mappings.engine import MappingEngine

CURRENCIES = sorted(code for code in list_currencies() if is_known_currency(code))


# --------------------------------------------------------------------------- basics


def test_a_float_is_never_money() -> None:
    with pytest.raises(TypeError):
        Money(12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money.rounded(12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money("1.00", "USD") + 1.5  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money(True, "USD")


def test_strings_ints_and_decimals_are_exact() -> None:
    assert Money("12.50", "USD") == Money(Decimal("12.5"), "USD")
    assert Money(12, "USD").amount == Decimal("12.00")
    assert str(Money("1500", "USD")) == "1500.00 USD"


def test_cross_currency_arithmetic_raises() -> None:
    with pytest.raises(ValueError, match="USD with EUR"):
        Money("1.00", "USD") + Money("1.00", "EUR")
    with pytest.raises(ValueError):
        Money("1.00", "USD") - Money("1.00", "GBP")
    with pytest.raises(ValueError):
        assert Money("1.00", "USD") < Money("2.00", "EUR")


def test_minor_units_follow_iso_4217() -> None:
    assert minor_units("USD") == 2
    assert minor_units("JPY") == 0
    assert minor_units("KWD") == 3
    assert Money("1500", "JPY").minor == 1500
    assert Money("1.234", "KWD").minor == 1234
    with pytest.raises(ValueError, match="decimal places"):
        Money("100.5", "JPY")
    assert Money.rounded("100.5", "JPY") == Money(101, "JPY")


def test_unknown_currency_is_refused() -> None:
    for code in ("XYZ", "usd", "US", "DOLLARS"):
        assert not is_known_currency(code)
        with pytest.raises(ValueError, match="unknown currency"):
            Money("1.00", code)


def test_too_many_decimals_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        Money("1.005", "USD")
    assert Money.rounded("1.005", "USD") == Money("1.01", "USD")


def test_percent_rounds_half_up_to_the_minor_unit() -> None:
    assert Money("100.00", "USD").percent(Decimal("33.335")) == Money("33.34", "USD")
    assert Money("1000", "JPY").percent(Decimal("33.33")) == Money(333, "JPY")


def test_allocate_gives_leftover_units_to_the_largest_remainders() -> None:
    assert Money("100.00", "USD").allocate([1, 1, 1]) == [
        Money("33.34", "USD"),
        Money("33.33", "USD"),
        Money("33.33", "USD"),
    ]
    assert Money("0.05", "USD").allocate([Decimal("70"), Decimal("30")]) == [
        Money("0.04", "USD"),
        Money("0.01", "USD"),
    ]
    assert Money(10, "JPY").allocate([1, 2]) == [Money(3, "JPY"), Money(7, "JPY")]


def test_allocate_refuses_bad_weights() -> None:
    fee = Money("10.00", "USD")
    with pytest.raises(ValueError):
        fee.allocate([])
    with pytest.raises(ValueError):
        fee.allocate([0, 0])
    with pytest.raises(ValueError):
        fee.allocate([1, -1])
    with pytest.raises(TypeError):
        fee.allocate([0.5, 0.5])  # type: ignore[list-item]


# --------------------------------------------------------------------------- properties

currencies = st.sampled_from(CURRENCIES)
minor_amounts = st.one_of(
    st.just(0),
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=0, max_value=10**18),
)
weights = st.lists(
    st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=12,
).filter(lambda ws: sum(ws) > 0)


@given(currency=currencies, units=st.integers(min_value=-(10**18), max_value=10**18))
def test_minor_units_round_trip(currency: str, units: int) -> None:
    money = Money.from_minor(units, currency)
    assert money.minor == units
    assert Money(money.amount, currency) == money


@given(currency=currencies, units=minor_amounts, ws=weights)
def test_allocate_sums_exactly_and_each_part_is_within_one_unit(
    currency: str, units: int, ws: list[Decimal]
) -> None:
    fee = Money.from_minor(units, currency)
    parts = fee.allocate(ws)

    assert len(parts) == len(ws)
    assert all(p.currency == currency for p in parts)
    assert sum(p.minor for p in parts) == fee.minor
    total_weight = sum(Fraction(w) for w in ws)
    for part, weight in zip(parts, ws, strict=True):
        exact_share = Fraction(units) * Fraction(weight) / total_weight
        assert abs(part.minor - exact_share) < 1


@st.composite
def percent_lists(draw: st.DrawFn) -> list[Decimal]:
    """1..12 percentages with two decimals, each above 0, totalling exactly 100."""
    count = draw(st.integers(min_value=1, max_value=12))
    cuts = draw(
        st.lists(
            st.integers(min_value=1, max_value=9999),
            min_size=count - 1,
            max_size=count - 1,
            unique=True,
        )
    )
    bounds = [0, *sorted(cuts), 10000]
    return [Decimal(b - a) / 100 for a, b in itertools.pairwise(bounds)]


def _percent_plan_config(fee: Money, percents: list[Decimal]) -> AppConfig:
    milestones = tuple(
        MilestoneDef(
            id=MilestoneDefId(f"m{n}"),
            name=f"Part {n}",
            trigger=Trigger(TriggerKind.STATUS, "Completed"),
            amount=PercentOfFee(p),
        )
        for n, p in enumerate(percents)
    )
    return AppConfig(
        firm=FirmConfig(TenantId("firm"), "Firm", fee.currency),
        revision=ConfigRevision("property"),
        sources=(SourceConnection(SourceId("karbon"), SourceKind.MEMORY),),
        ledger=LedgerConnection(LedgerKind.MEMORY),
        payments=PaymentsConnection(PaymentsKind.MEMORY),
        plans=(
            Plan(
                id=PlanId("split"),
                name="Split",
                match=Matcher(),
                milestones=milestones,
                fee=fee,
                currency=fee.currency,
            ),
        ),
    )


@given(currency=currencies, units=minor_amounts, percents=percent_lists())
def test_engine_prices_percent_plans_to_exactly_the_fee(
    currency: str, units: int, percents: list[Decimal]
) -> None:
    assert sum(percents) == 100
    fee = Money.from_minor(units, currency)
    engine = MappingEngine(_percent_plan_config(fee, percents))
    engagement = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("WI-1"),
        client_key=ClientKey("CL-1"),
        client_name="Client",
        title="Work",
    )

    result = engine.resolve(engagement, None, date(2026, 1, 1))

    assert isinstance(result, Matched)
    amounts = [m.amount for m in result.milestones]
    assert sum(a.minor for a in amounts) == fee.minor
    for amount, percent in zip(amounts, percents, strict=True):
        assert abs(amount.minor - Fraction(units) * Fraction(percent) / 100) < 1
