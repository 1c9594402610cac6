"""Idempotency keys: deterministic, fitted to each vendor's limit, distinct for distinct writes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.idempotency import KeyLimit, fit, make_key, payload_hash

# Kinds, tenants and revisions are our own short ids (no ':'); domain ids may contain anything,
# including the ':' of milestone keys such as 'karbon:WI-1:filed'.
parts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=":"), min_size=1, max_size=40
)
domain_ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300)
revisions = st.one_of(st.integers(min_value=0, max_value=10**6), st.from_regex(r"[0-9a-f]{12}"))
keys = st.tuples(parts, parts, domain_ids, revisions)


def test_the_same_write_gets_the_same_key() -> None:
    first = make_key("invoice", "smith-cpa", "karbon:WI-1:filed", 3)
    again = make_key("invoice", "smith-cpa", "karbon:WI-1:filed", 3)
    assert first == again == "invoice:smith-cpa:karbon:WI-1:filed:3"


def test_a_short_key_is_kept_readable_and_a_long_one_keeps_a_prefix() -> None:
    short = "invoice:smith-cpa:karbon:WI-1:filed:0"
    assert fit(short, KeyLimit.QUICKBOOKS) == short
    long_key = "invoice:smith-cpa:" + "karbon:" + "W" * 80 + ":filed:0"
    fitted = fit(long_key, KeyLimit.QUICKBOOKS)
    assert len(fitted) == KeyLimit.QUICKBOOKS
    assert fitted.startswith("invoice:smith-cpa")
    assert "~" in fitted


def test_limits_match_the_vendors() -> None:
    assert KeyLimit.QUICKBOOKS == 50
    assert KeyLimit.XERO == 128
    assert KeyLimit.STRIPE == 255


def test_empty_parts_and_impossible_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        make_key("", "smith-cpa", "x")
    with pytest.raises(ValueError):
        make_key("invoice", "", "x")
    with pytest.raises(ValueError):
        make_key("invoice", "smith-cpa", "")
    with pytest.raises(ValueError):
        fit("anything", 20)


@given(key=keys)
def test_keys_are_deterministic_and_fit_every_limit(key: tuple[str, str, str, int | str]) -> None:
    made = make_key(*key)
    assert made == make_key(*key)
    assert len(made) <= KeyLimit.STORE
    for limit in KeyLimit:
        fitted = fit(made, limit)
        assert len(fitted) <= limit
        assert fitted == fit(made, limit)


@given(a=keys, b=keys)
def test_distinct_writes_get_distinct_keys_at_every_limit(
    a: tuple[str, str, str, int | str], b: tuple[str, str, str, int | str]
) -> None:
    if (a[0], a[1], a[2], str(a[3])) == (b[0], b[1], b[2], str(b[3])):
        return
    for limit in KeyLimit:
        assert fit(make_key(*a), limit) != fit(make_key(*b), limit)


def test_keys_differing_only_past_the_prefix_stay_distinct_for_quickbooks() -> None:
    base = "charge:smith-cpa:" + "x" * 60
    fitted = {fit(f"{base}:{n}", KeyLimit.QUICKBOOKS) for n in range(1000)}
    assert len(fitted) == 1000


def test_payload_hash_ignores_key_order_but_not_values() -> None:
    assert payload_hash({"a": 1, "b": "2"}) == payload_hash({"b": "2", "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})
