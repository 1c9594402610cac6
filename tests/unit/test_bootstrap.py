"""The composition root turns source config into adapters, and says what it left off."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.karbon.adapter import KarbonSource
from mappings.loader import load_config_text
from scheduler.bootstrap import build_adapters, build_receivers

KARBON = """
[firm]
id = "f"
name = "F"
currency = "USD"

[[sources]]
id = "karbon"
kind = "karbon"
token_env = "T_TOKEN"
access_key_env = "T_KEY"
signing_key_env = "T_SIGNING"
options = { backfill_from = "__BACKFILL__" }

[ledger]
kind = "memory"

[server]
public_url = "https://sync.example.com"

[[plans]]
id = "p"
name = "P"
match = { source = "karbon" }
[[plans.milestones]]
id = "m"
name = "M"
trigger = { status = "In Progress", secondary = "Review" }
amount = "10.00"
"""


def _config(backfill: str = "2026-11-01"):  # type: ignore[no-untyped-def]
    return load_config_text(KARBON.replace("__BACKFILL__", backfill), "firm.toml")


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "app-token")
    monkeypatch.setenv("T_KEY", "eyJkey")
    monkeypatch.delenv("T_SIGNING", raising=False)


def test_without_a_signing_key_karbon_is_polled_and_never_subscribed() -> None:
    adapters = build_adapters(_config(), Path("firm.toml"))
    (source,) = adapters.sources
    assert isinstance(source, KarbonSource)
    assert source.options.webhook_url is None
    assert source.options.backfill_from is not None
    assert source.options.backfill_from.isoformat() == "2026-11-01T00:00:00+00:00"
    assert source.options.sweep_statuses == ("In Progress", "Completed")
    receivers, notes = build_receivers(_config())
    assert receivers == {} and "signing_key_env" in notes[0]


def test_with_a_signing_key_webhooks_go_to_the_public_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("T_SIGNING", "signing-key-0123456789")
    (source,) = build_adapters(_config(), Path("firm.toml")).sources
    assert isinstance(source, KarbonSource)
    assert source.options.webhook_url == "https://sync.example.com/webhooks/karbon"
    assert set(build_receivers(_config())[0]) == {"karbon"}


def test_a_missing_secret_or_a_bad_date_skips_the_source_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("T_KEY")
    adapters = build_adapters(_config(), Path("firm.toml"))
    assert adapters.sources == [] and "T_KEY" in adapters.notes[0]
    monkeypatch.setenv("T_KEY", "eyJkey")
    adapters = build_adapters(_config("November"), Path("firm.toml"))
    assert adapters.sources == [] and "options.backfill_from" in adapters.notes[0]
