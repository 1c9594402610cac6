"""TokenManager against QuickBooks-like and Xero-like identity services over HTTP, on SQLite and
PostgreSQL: refresh before expiry and after a 401, rotation (QBO: the used token dies at once;
Xero: 30-minute grace), invalid_grant remembered as "needs reconnect", transient failures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
import responses
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from adapters.emulation.clock import EmulatedTime
from adapters.oauth.errors import GrantRevoked
from adapters.oauth.manager import TokenManager, token_manager
from adapters.store.engine import Store, open_store
from adapters.store.tokens import StoredToken
from connector.config import LedgerConnection, LedgerKind
from connector.domain.errors import ConfigError, TransientError
from connector.ports import OAuthToken
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


@responses.activate
def test_an_answer_without_a_refresh_token_keeps_the_stored_one(store: Store) -> None:
    """Some servers omit an unchanged refresh token; the stored one must survive the save. The
    QBO five-year maximum caps the refresh expiry estimate on every refresh."""
    clock = EmulatedTime()
    ledger = LedgerConnection(
        kind=LedgerKind.QUICKBOOKS,
        base_url="https://qbo.test",
        secret_env={"client_id": "MS_CLIENT_ID", "client_secret": "MS_CLIENT_SECRET"},
    )
    connected = clock.now() - timedelta(days=5 * 365 - 20)
    seeded = OAuthToken("AT-old", "RT-kept", clock.now() - timedelta(minutes=1), None, REALM)
    tokens(store).save_record("quickbooks", StoredToken(seeded, connected_at=connected))
    responses.post(
        "https://qbo.test/oauth2/v1/tokens/bearer",
        json={
            "access_token": "AT-new",
            "token_type": "bearer",
            "expires_in": 3600,
            "x_refresh_token_expires_in": 8726400,
        },
    )
    token = token_manager(store, TENANT, ledger, environ=ENV, now=clock.now).current()
    assert (token.access_token, token.refresh_token, token.realm) == ("AT-new", "RT-kept", REALM)
    assert token.refresh_expires_at == connected + timedelta(days=5 * 365)
    assert tokens(store).load("quickbooks") == token


@pytest.mark.postgres
def test_a_database_lost_after_rotation_is_saved_from_memory(make_store_url: Any) -> None:
    """QBO rotated, then our database connection died before the commit: the answer is kept in
    memory and stored on the retry (the row still holds the token it replaces), so the strict
    QBO policy loses nothing."""
    url = make_store_url("postgres")
    with open_store(url) as store, running("quickbooks") as qbo:
        seeded = qbo.seed(store)
        admin = create_engine(url, poolclass=NullPool)
        killed: list[int] = []

        def kill_the_lock_holder() -> None:
            if killed:
                return
            with admin.begin() as conn:
                pids = conn.scalars(
                    text(
                        "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'oauth_tokens' AND l.mode = 'RowShareLock'"
                    )
                ).all()
                for pid in pids:
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                killed.extend(pids)

        qbo.after_rotation = kill_the_lock_holder
        try:
            token = manager(qbo, store).current()
        finally:
            admin.dispose()
        assert killed  # the holder really was cut off mid-refresh
        assert qbo.oauth.refresh_calls == 1 and qbo.works(token)
        stored = tokens(store).load("quickbooks")
        assert stored == token and stored.refresh_token != seeded.refresh_token
        qbo.oauth.expire_access_tokens()
        assert qbo.works(manager(qbo, store).refresh(token))  # the connection lives on


def test_the_store_may_be_opened_on_the_first_token_request(store: Store) -> None:
    with running("xero") as xero:
        xero.seed(store)
        opened: list[Store] = []

        def open_later() -> Store:
            opened.append(store)
            return store

        lazy = token_manager(open_later, TENANT, xero.ledger(), environ=ENV, now=xero.time.now)
        assert opened == []  # building the adapters opens nothing
        assert xero.works(lazy.current()) and len(opened) == 1
