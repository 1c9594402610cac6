"""TokenManager against QuickBooks-like and Xero-like identity services over HTTP, on SQLite and
PostgreSQL: refresh before expiry and after a 401, rotation (QBO: the used token dies at once;
Xero: 30-minute grace), invalid_grant remembered as "needs reconnect", transient failures."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from adapters.emulation.clock import EmulatedTime
from adapters.oauth.errors import GrantRevoked
from adapters.oauth.manager import TokenManager, token_manager
from adapters.store.engine import Store
from connector.domain.errors import ConfigError, TransientError
from tests.integration.test_oauth_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    ENV,
    REALM,
    TENANT,
    Identity,
    running,
    tokens,
)


def manager(identity: Identity, store: Store, **kwargs: object) -> TokenManager:
    return token_manager(
        store,
        TENANT,
        identity.ledger(),
        environ=ENV,
        now=identity.time.now,
        sleep=lambda _seconds: None,
        **kwargs,  # type: ignore[arg-type]
    )


def refresh_directly(identity: Identity, refresh_token: str) -> requests.Response:
    """Use a refresh token outside milestone-sync, as a second copy of the app would."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if identity.kind == "quickbooks":
        return requests.post(
            f"{identity.url}/oauth2/v1/tokens/bearer",
            data=form,
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=5,
        )
    form.update(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    return requests.post(f"{identity.url}/connect/token", data=form, timeout=5)


def test_qbo_refreshes_an_expired_token_once_and_the_used_refresh_token_dies(
    store: Store,
) -> None:
    with running("quickbooks") as qbo:
        seeded = qbo.seed(store)
        tokens_of = manager(qbo, store)
        token = tokens_of.current()
        assert qbo.works(token)
        assert token.realm == REALM
        assert token.refresh_token != seeded.refresh_token
        assert tokens_of.current() is token  # fresh: no second refresh
        assert qbo.oauth.refresh_calls == 1
        stored = tokens(store).load_record("quickbooks")
        assert stored is not None and stored.token == token  # committed before it was handed out
        # x_refresh_token_expires_in: 100 days from now
        assert stored.token.refresh_expires_at is not None
        left = stored.token.refresh_expires_at - qbo.time.now()
        assert timedelta(days=99) < left <= timedelta(days=100)
        answer = refresh_directly(qbo, seeded.refresh_token)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_xero_keeps_the_previous_refresh_token_for_thirty_minutes(store: Store) -> None:
    with running("xero") as xero:
        seeded = xero.seed(store)
        token = manager(xero, store).current()
        assert xero.works(token)
        stored = tokens(store).load_record("xero")
        assert stored is not None and stored.token.refresh_expires_at is not None
        assert stored.token.refresh_expires_at - xero.time.now() > timedelta(days=59)
        xero.time.advance(timedelta(minutes=29))
        assert refresh_directly(xero, seeded.refresh_token).status_code == 200  # grace
        xero.time.advance(timedelta(minutes=2))
        late = refresh_directly(xero, seeded.refresh_token)
        assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("kind", ["quickbooks", "xero"])
def test_refreshes_within_the_margin_not_before(store: Store, kind: str) -> None:
    clock = EmulatedTime()
    with running(kind, clock) as identity:
        identity.seed(store, expired=False)  # 30 minutes left
        tokens_of = manager(identity, store, margin=timedelta(minutes=5))
        first = tokens_of.current()
        assert identity.oauth.refresh_calls == 0
        clock.advance(timedelta(minutes=24))  # 6 minutes left: still fine
        assert tokens_of.current() == first
        assert identity.oauth.refresh_calls == 0
        clock.advance(timedelta(minutes=2))  # 4 minutes left: refresh first
        second = tokens_of.current()
        assert second != first and identity.works(second)
        assert identity.oauth.refresh_calls == 1


def test_a_401_refreshes_once_even_when_several_callers_report_it(store: Store) -> None:
    with running("quickbooks") as qbo:
        qbo.seed(store, expired=False)
        tokens_of = manager(qbo, store)
        first = tokens_of.current()
        qbo.oauth.expire_access_tokens()  # the ledger now answers 401 to `first`
        assert not qbo.works(first)
        second = tokens_of.refresh(first)
        again = tokens_of.refresh(first)  # a second request that failed with the same token
        assert second == again and qbo.works(second)
        assert qbo.oauth.refresh_calls == 1
        # another process (a fresh manager, nothing cached) reports the same stale token
        assert manager(qbo, store).refresh(first) == second
        assert qbo.oauth.refresh_calls == 1


def test_revoked_connection_needs_reconnect_and_stops_calling_the_server(store: Store) -> None:
    with running("quickbooks") as qbo:
        qbo.seed(store)
        qbo.oauth.revoke_all()  # the firm disconnected the app in QuickBooks
        tokens_of = manager(qbo, store)
        with pytest.raises(ConfigError) as caught:
            tokens_of.current()
        assert isinstance(caught.value, GrantRevoked)
        assert "milestone-sync connect quickbooks" in str(caught.value)
        assert "invalid_grant" in str(caught.value)
        calls = qbo.oauth.refresh_calls
        stored = tokens(store).load_record("quickbooks")
        assert stored is not None and stored.needs_reconnect and stored.needs_reconnect_at
        for attempt in (tokens_of, manager(qbo, store)):  # this process, and another one
            with pytest.raises(GrantRevoked, match="milestone-sync connect quickbooks"):
                attempt.current()
        assert qbo.oauth.refresh_calls == calls  # remembered, not retried against the server


def test_not_connected_says_how_to_connect(store: Store) -> None:
    with running("xero") as xero, pytest.raises(ConfigError) as caught:
        manager(xero, store).current()
    assert "not connected" in str(caught.value)
    assert "milestone-sync connect xero" in str(caught.value)


def test_a_5xx_is_retried_with_the_same_token_then_succeeds(store: Store) -> None:
    with running("quickbooks") as qbo:
        qbo.seed(store)
        qbo.token_faults.extend(["500", "html"])  # a 503, then a 200 that is not a token
        token = manager(qbo, store).current()
        assert qbo.works(token)
        assert len(qbo.token_calls()) == 3


def test_persistent_5xx_ends_in_a_transient_error_and_keeps_the_connection(store: Store) -> None:
    with running("quickbooks") as qbo:
        seeded = qbo.seed(store)
        qbo.token_faults.extend(["500"] * 3)
        with pytest.raises(TransientError, match="503"):
            manager(qbo, store).current()
        assert len(qbo.token_calls()) == 3
        assert tokens(store).load("quickbooks") == seeded
        assert qbo.works(manager(qbo, store).current())  # the server is back


def test_a_lost_answer_after_rotation_is_covered_by_xero_grace(store: Store) -> None:
    with running("xero") as xero:
        xero.seed(store)
        xero.token_faults.append("drop")  # Xero rotated, the answer never arrived
        token = manager(xero, store).current()  # retried with the previous refresh token
        assert xero.works(token)
        assert xero.oauth.refresh_calls == 2


def test_a_lost_answer_after_rotation_loses_a_qbo_connection(store: Store) -> None:
    """The one unavoidable loss, with the emulator's strict QBO policy (no grace): documented,
    and reported as needing a reconnect rather than retried forever."""
    with running("quickbooks") as qbo:
        qbo.seed(store)
        qbo.token_faults.append("drop")
        with pytest.raises(GrantRevoked, match="milestone-sync connect quickbooks"):
            manager(qbo, store).current()
        assert qbo.oauth.refresh_calls == 2
