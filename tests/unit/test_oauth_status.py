"""What status says about the ledger connection: expiries, the 14-day warning, QBO's five-year
maximum, and "needs reconnect"; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.oauth.providers import provider_for
from adapters.oauth.status import connection_status
from adapters.store.tokens import StoredToken
from connector.ports import OAuthToken

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
QBO = provider_for("quickbooks", None)
XERO = provider_for("xero", None)


def record(
    *,
    access_in: timedelta = timedelta(minutes=40),
    refresh_in: timedelta | None = timedelta(days=90),
    connected_ago: timedelta = timedelta(days=10),
    **extra: object,
) -> StoredToken:
    token = OAuthToken(
        "secret-access",
        "secret-refresh",
        NOW + access_in,
        None if refresh_in is None else NOW + refresh_in,
        "9130357766554321",
    )
    return StoredToken(
        token,
        connected_at=NOW - connected_ago,
        refreshed_at=NOW - timedelta(minutes=20),
        label="Smith & Co CPAs",
        **extra,  # type: ignore[arg-type]
    )


def text(status: object) -> str:
    return " | ".join((*status.lines, *status.warnings))  # type: ignore[attr-defined]


def test_not_connected_says_how_to_connect() -> None:
    status = connection_status(QBO, None, NOW)
    assert not status.connected and not status.healthy
    assert "milestone-sync connect quickbooks" in text(status)


def test_a_healthy_connection_shows_company_and_expiries() -> None:
    status = connection_status(QBO, record(), NOW)
    assert status.healthy
    shown = text(status)
    assert "Smith & Co CPAs (9130357766554321)" in shown
    assert "access token valid until 2026-12-01 09:40 UTC" in shown
    assert "refresh token valid until about 2027-03-01" in shown and "100 days" in shown
    assert "5-year maximum" in shown
    assert "secret" not in shown


def test_an_expired_access_token_is_not_a_warning() -> None:
    status = connection_status(QBO, record(access_in=-timedelta(hours=3)), NOW)
    assert status.healthy and "renewed on next use" in text(status)


def test_a_refresh_token_unused_for_long_warns_within_fourteen_days() -> None:
    assert connection_status(XERO, record(refresh_in=timedelta(days=15)), NOW).healthy
    status = connection_status(XERO, record(refresh_in=timedelta(days=13)), NOW)
    assert not status.healthy
    assert "expires in 13 days unless it is used" in status.warnings[0]
    expired = connection_status(XERO, record(refresh_in=-timedelta(days=1)), NOW)
    assert "expired unused" in expired.warnings[0]
    assert "milestone-sync connect xero" in expired.warnings[0]


def test_qbo_five_year_maximum_asks_for_a_reconnect_in_time() -> None:
    near = record(connected_ago=timedelta(days=5 * 365 - 10))
    status = connection_status(QBO, near, NOW)
    assert not status.healthy
    assert "maximum age in 10 days" in status.warnings[0]
    assert "milestone-sync connect quickbooks" in status.warnings[0]


def test_needs_reconnect_is_shown_with_its_reason() -> None:
    broken = record(
        needs_reconnect="QuickBooks refused the stored refresh token (HTTP 400 invalid_grant)",
        needs_reconnect_at=NOW - timedelta(hours=2),
    )
    status = connection_status(QBO, broken, NOW)
    assert status.needs_reconnect and not status.healthy
    assert "needs reconnect since 2026-12-01 07:00 UTC" in status.warnings[0]
    assert "invalid_grant" in status.warnings[0]
