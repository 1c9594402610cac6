"""Connecting and disconnecting over a real loopback identity service: the redirect caught by the
listener or pasted, state and PKCE checked by the server, QBO's realmId and company name,
Xero's organisation choice, reconnecting after a revoke, and revoking on disconnect."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

import pytest
import requests

from adapters.oauth.client import OAuthClient, Tenant
from adapters.oauth.connect import LoopbackListener, connect, disconnect
from adapters.oauth.errors import GrantRevoked
from adapters.oauth.manager import token_manager
from adapters.oauth.providers import client_credentials, provider_for_ledger
from adapters.store.engine import Store
from connector.domain.errors import ConfigError
from tests.integration.test_oauth_support import (
    ENV,
    REALM,
    TENANT,
    Identity,
    XeroTenant,
    running,
    tokens,
)

TWO_ORGANISATIONS = (
    XeroTenant("0f1e2d3c-aaaa-4bbb-8ccc-000000000001", "Smith & Co CPAs"),
    XeroTenant("0f1e2d3c-aaaa-4bbb-8ccc-000000000002", "Smith Payroll Ltd"),
    XeroTenant("0f1e2d3c-aaaa-4bbb-8ccc-000000000003", "Smith Practice", "PRACTICE"),
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def oauth_client(identity: Identity) -> OAuthClient:
    ledger = identity.ledger()
    return OAuthClient(
        provider_for_ledger(ledger),
        client_credentials(ledger, ENV),
        now=identity.time.now,
        sleep=lambda _seconds: None,
    )


def browser(url: str, outcome: list[requests.Response]) -> threading.Thread:
    """The admin's browser: open the link, consent (automatic), follow the redirect home."""

    def run() -> None:
        outcome.append(requests.get(url, timeout=10))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_qbo_connects_through_the_loopback_listener(store: Store) -> None:
    with running("quickbooks") as qbo:
        client = oauth_client(qbo)
        redirect_uri = f"http://localhost:{free_port()}/callback"
        pending = client.authorization(redirect_uri)
        seen: list[requests.Response] = []
        with LoopbackListener(redirect_uri, pending.state) as listener:
            page = browser(pending.url, seen)
            redirect_url = listener.wait(timeout=10)
            page.join(timeout=10)
        assert seen[0].status_code == 200 and "received the authorization" in seen[0].text
        result = connect(client, tokens(store), pending, redirect_url, now=qbo.time.now())
        assert (result.realm, result.name) == (REALM, "Smith & Co CPAs")
        stored = tokens(store).load_record("quickbooks")
        assert stored is not None and stored.token.realm == REALM
        assert stored.label == "Smith & Co CPAs" and stored.connected_at is not None
        assert qbo.works(stored.token)
        # the code exchange carried the PKCE verifier and the redirect URI (the server checks)
        [exchange] = qbo.token_calls()
        assert b"code_verifier=" in exchange.body and b"redirect_uri=" in exchange.body
        assert exchange.headers["Authorization"].startswith("Basic ")


def test_the_listener_ignores_a_request_with_the_wrong_state(store: Store) -> None:
    with running("quickbooks") as qbo:
        client = oauth_client(qbo)
        port = free_port()
        redirect_uri = f"http://localhost:{port}/callback"
        pending = client.authorization(redirect_uri)
        with LoopbackListener(redirect_uri, pending.state) as listener:
            forged = requests.get(
                f"http://127.0.0.1:{port}/callback?code=evil&state=forged", timeout=5
            )
            other = requests.get(f"http://127.0.0.1:{port}/favicon.ico", timeout=5)
            seen: list[requests.Response] = []
            page = browser(pending.url, seen)
            redirect_url = listener.wait(timeout=10)
            page.join(timeout=10)
        assert (forged.status_code, other.status_code) == (400, 404)
        assert "evil" not in redirect_url
        connect(client, tokens(store), pending, redirect_url, now=qbo.time.now())


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="--paste"):
            LoopbackListener(f"http://localhost:{port}/callback", "state")
    with pytest.raises(ConfigError, match="--paste"):
        LoopbackListener("https://billing.example.com/callback", "state")


def test_xero_connects_from_a_pasted_redirect_with_its_only_organisation(store: Store) -> None:
    with running("xero") as xero:
        client = oauth_client(xero)
        pending = client.authorization("http://localhost:8765/callback")
        pasted = xero.redirect_for(pending.url)  # the admin copies the address bar
        result = connect(client, tokens(store), pending, pasted, now=xero.time.now())
        assert result.realm == xero.tenants[0].id and result.name == "Smith & Co CPAs"
        stored = tokens(store).load("xero")
        assert stored is not None and stored.realm == xero.tenants[0].id
        [exchange] = xero.token_calls()
        assert b"client_secret=" in exchange.body and "Authorization" not in exchange.headers


def test_xero_with_several_organisations_takes_the_named_or_chosen_one(store: Store) -> None:
    with running("xero", tenants=TWO_ORGANISATIONS) as xero:
        client = oauth_client(xero)
        pending = client.authorization("http://localhost:8765/callback")
        result = connect(
            client,
            tokens(store),
            pending,
            xero.redirect_for(pending.url),
            now=xero.time.now(),
            tenant="smith payroll ltd",
        )
        assert result.realm == TWO_ORGANISATIONS[1].id

        offered: list[Sequence[Tenant]] = []

        def ask(options: Sequence[Tenant]) -> int:
            offered.append(options)
            return 0

        pending = client.authorization("http://localhost:8765/callback")
        result = connect(
            client,
            tokens(store),
            pending,
            xero.redirect_for(pending.url),
            now=xero.time.now(),
            prompt=ask,
        )
        assert result.realm == TWO_ORGANISATIONS[0].id
        assert result.replaced == TWO_ORGANISATIONS[1].id
        assert [t.name for t in offered[0]] == ["Smith & Co CPAs", "Smith Payroll Ltd"]


def test_xero_with_several_organisations_and_no_way_to_ask_stores_nothing(store: Store) -> None:
    with running("xero", tenants=TWO_ORGANISATIONS) as xero:
        client = oauth_client(xero)
        pending = client.authorization("http://localhost:8765/callback")
        with pytest.raises(ConfigError) as caught:
            connect(
                client, tokens(store), pending, xero.redirect_for(pending.url), now=xero.time.now()
            )
        message = str(caught.value)
        assert "--tenant" in message
        assert TWO_ORGANISATIONS[0].id in message and TWO_ORGANISATIONS[1].id in message
        assert tokens(store).load("xero") is None


def test_a_code_works_once(store: Store) -> None:
    with running("quickbooks") as qbo:
        client = oauth_client(qbo)
        pending = client.authorization("http://localhost:8765/callback")
        redirect = qbo.redirect_for(pending.url)
        connect(client, tokens(store), pending, redirect, now=qbo.time.now())
        with pytest.raises(ConfigError, match="refused the authorization code"):
            connect(client, tokens(store), pending, redirect, now=qbo.time.now())


def test_reconnecting_clears_needs_reconnect(store: Store) -> None:
    with running("quickbooks") as qbo:
        qbo.seed(store)
        qbo.oauth.revoke_all()
        manager = token_manager(store, TENANT, qbo.ledger(), environ=ENV, now=qbo.time.now)
        with pytest.raises(GrantRevoked):
            manager.current()
        client = oauth_client(qbo)
        pending = client.authorization("http://localhost:8765/callback")
        connect(client, tokens(store), pending, qbo.redirect_for(pending.url), now=qbo.time.now())
        stored = tokens(store).load_record("quickbooks")
        assert stored is not None and stored.needs_reconnect is None
        assert qbo.works(manager.current())


def test_disconnect_revokes_the_grant_and_forgets_the_token(store: Store) -> None:
    with running("xero") as xero:
        seeded = xero.seed(store, expired=False)
        result = disconnect(oauth_client(xero), tokens(store), "xero")
        assert (result.had_connection, result.revoked, result.note) == (True, True, None)
        assert xero.revoked_tokens == [seeded.refresh_token]
        assert not xero.works(seeded)  # the whole grant is gone at Xero
        assert tokens(store).load("xero") is None
        again = disconnect(oauth_client(xero), tokens(store), "xero")
        assert not again.had_connection


def test_disconnect_forgets_the_token_even_when_the_revoke_fails(store: Store) -> None:
    with running("quickbooks") as qbo:
        qbo.seed(store)
        client = oauth_client(qbo)
    # the identity service is gone now
    result = disconnect(client, tokens(store), "quickbooks")
    assert result.had_connection and not result.revoked
    assert result.note and "unreachable" in result.note
    assert tokens(store).load("quickbooks") is None
