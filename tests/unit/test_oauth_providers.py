"""Provider selection, client credentials, authorization URLs (state, PKCE S256), redirect
parsing, tenant choice and refresh-token lifetimes; no I/O."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from adapters.oauth.client import IssuedToken, OAuthClient, Tenant
from adapters.oauth.connect import parse_redirect, pick_tenant, redirect_uri_for
from adapters.oauth.manager import refresh_expiry
from adapters.oauth.providers import (
    ClientCredentials,
    client_credentials,
    provider_for,
    provider_for_ledger,
)
from connector.config import LedgerConnection, LedgerKind, ServerConfig
from connector.domain.errors import ConfigError

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CREDENTIALS = ClientCredentials("client-123", "very-secret-value", "QBO_CLIENT_ID", "QBO_SECRET")


def ledger(kind: str = "quickbooks", **options: str) -> LedgerConnection:
    return LedgerConnection(
        kind=LedgerKind(kind),
        secret_env={"client_id": "QBO_CLIENT_ID", "client_secret": "QBO_SECRET"},
        options=options,
    )


def test_quickbooks_uses_intuits_endpoints_and_basic_auth() -> None:
    qbo = provider_for("quickbooks", None)
    assert qbo.authorize_url == "https://appcenter.intuit.com/connect/oauth2"
    assert qbo.token_url == "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
    assert qbo.revoke_url == "https://developer.api.intuit.com/v2/oauth2/tokens/revoke"
    assert qbo.api_url == "https://quickbooks.api.intuit.com"
    assert qbo.scopes == ("com.intuit.quickbooks.accounting",)
    assert (qbo.client_auth, qbo.revoke_body, qbo.realm_param) == ("basic", "json", "realmId")
    assert qbo.refresh_idle_ttl == timedelta(days=100)
    assert qbo.refresh_max_age == timedelta(days=5 * 365)
    assert not qbo.needs_tenant_choice
    sandbox = provider_for("quickbooks", None, "sandbox")
    assert sandbox.api_url == "https://sandbox-quickbooks.api.intuit.com"
    assert sandbox.token_url == qbo.token_url  # one authorization server for both


def test_xero_uses_granular_scopes_and_credentials_in_the_body() -> None:
    xero = provider_for("xero", None)
    assert xero.authorize_url == "https://login.xero.com/identity/connect/authorize"
    assert xero.token_url == "https://identity.xero.com/connect/token"
    assert xero.revoke_url == "https://identity.xero.com/connect/revocation"
    assert xero.connections_url == "https://api.xero.com/connections"
    assert "offline_access" in xero.scopes  # else no refresh token
    assert {"accounting.invoices", "accounting.payments", "accounting.contacts"} <= set(xero.scopes)
    assert "accounting.transactions" not in xero.scopes  # refused for apps made since 2026-03
    assert (xero.client_auth, xero.revoke_body) == ("body", "form")
    assert xero.refresh_idle_ttl == timedelta(days=60) and xero.refresh_max_age is None
    assert xero.needs_tenant_choice


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        (
            "quickbooks",
            ("/connect/oauth2", "/oauth2/v1/tokens/bearer", "/v2/oauth2/tokens/revoke", ""),
        ),
        ("xero", ("/identity/connect/authorize", "/connect/token", "/connect/revocation", "")),
    ],
)
def test_a_base_url_derives_every_endpoint(kind: str, paths: tuple[str, ...]) -> None:
    provider = provider_for(kind, "http://127.0.0.1:8080/")
    base = "http://127.0.0.1:8080"
    assert (provider.authorize_url, provider.token_url, provider.revoke_url) == tuple(
        base + p for p in paths[:3]
    )
    assert provider.loopback
    if kind == "xero":
        assert provider.connections_url == f"{base}/Connections"
        assert provider.api_url == f"{base}/api.xro/2.0"
    else:
        assert provider.api_url == base


def test_bad_provider_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="https"):
        provider_for("quickbooks", "http://qbo.example.com")
    with pytest.raises(ConfigError, match="environment"):
        provider_for("quickbooks", None, "staging")
    with pytest.raises(ConfigError, match="only quickbooks and xero"):
        provider_for("memory", None)
    assert not provider_for("xero", "https://xero.example.test").loopback


def test_scopes_and_environment_come_from_ledger_options() -> None:
    provider = provider_for_ledger(
        ledger("xero", scopes="offline_access accounting.transactions", environment="sandbox")
    )
    assert provider.scopes == ("offline_access", "accounting.transactions")


def test_client_credentials_name_the_variable_to_set() -> None:
    creds = client_credentials(ledger(), {"QBO_CLIENT_ID": "abc", "QBO_SECRET": "shh-secret"})
    assert (creds.client_id, creds.client_secret) == ("abc", "shh-secret")
    assert "shh-secret" not in repr(creds) and "QBO_SECRET" in repr(creds)
    with pytest.raises(ConfigError, match="export QBO_SECRET="):
        client_credentials(ledger(), {"QBO_CLIENT_ID": "abc"})
    unnamed = LedgerConnection(kind=LedgerKind.XERO, secret_env={"client_id": "X_ID"})
    with pytest.raises(ConfigError, match="client_secret_env"):
        client_credentials(unnamed, {"X_ID": "abc"})


def test_the_authorization_url_carries_state_and_an_s256_challenge() -> None:
    client = OAuthClient(provider_for("quickbooks", None), CREDENTIALS)
    pending = client.authorization("http://localhost:8765/callback")
    query = {k: v[0] for k, v in parse_qs(urlsplit(pending.url).query).items()}
    assert pending.url.startswith("https://appcenter.intuit.com/connect/oauth2?")
    assert query["response_type"] == "code"
    assert query["client_id"] == "client-123"
    assert query["redirect_uri"] == "http://localhost:8765/callback"
    assert query["scope"] == "com.intuit.quickbooks.accounting"
    assert query["state"] == pending.state and len(pending.state) >= 20
    assert query["code_challenge_method"] == "S256"
    verifier = pending.session._code_verifier
    digest = hashlib.sha256(verifier.encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "very-secret-value" not in pending.url
    other = client.authorization("http://localhost:8765/callback")
    assert other.state != pending.state
    assert other.session._code_verifier != verifier


def test_xero_authorization_asks_for_every_scope() -> None:
    client = OAuthClient(provider_for("xero", None), CREDENTIALS)
    query = parse_qs(urlsplit(client.authorization("http://localhost:1/cb").url).query)
    assert query["scope"][0].split() == list(provider_for("xero", None).scopes)


def test_the_redirect_state_must_match() -> None:
    client = OAuthClient(provider_for("quickbooks", None), CREDENTIALS)
    pending = client.authorization("http://localhost:8765/callback")
    good = f"http://localhost:8765/callback?code=abc&realmId=123&state={pending.state}"
    redirect = parse_redirect(good, pending, "realmId")
    assert (redirect.code, redirect.realm) == ("abc", "123")
    assert "abc" not in repr(redirect)
    for bad in (
        "http://localhost:8765/callback?code=abc&realmId=123&state=forged",
        "http://localhost:8765/callback?code=abc&realmId=123",
    ):
        with pytest.raises(ConfigError, match="state does not match"):
            parse_redirect(bad, pending, "realmId")
    with pytest.raises(ConfigError, match="access_denied"):
        parse_redirect(f"http://x/cb?error=access_denied&state={pending.state}", pending, None)
    with pytest.raises(ConfigError, match="no authorization code"):
        parse_redirect(f"http://x/cb?state={pending.state}", pending, None)


def test_the_redirect_uri_defaults_to_the_server_port() -> None:
    server = ServerConfig(port=9123)
    assert redirect_uri_for(ledger(), server, None) == "http://localhost:9123/callback"
    assert redirect_uri_for(ledger(), server, 8000) == "http://localhost:8000/callback"
    custom = ledger(redirect_uri="https://billing.example.com/oauth/callback")
    assert redirect_uri_for(custom, server, None) == "https://billing.example.com/oauth/callback"


TENANTS = [
    Tenant("t-1", "ORGANISATION", "Smith & Co"),
    Tenant("t-2", "ORGANISATION", "Smith Payroll Ltd"),
    Tenant("p-1", "PRACTICE", "Smith Practice"),
]


def test_a_single_organisation_is_picked_and_practices_are_ignored() -> None:
    assert pick_tenant(TENANTS[:1] + TENANTS[2:], None, None).id == "t-1"


def test_several_organisations_need_a_choice() -> None:
    assert pick_tenant(TENANTS, "t-2", None).name == "Smith Payroll Ltd"
    assert pick_tenant(TENANTS, "smith & co", None).id == "t-1"
    assert pick_tenant(TENANTS, None, lambda options: 1).id == "t-2"
    with pytest.raises(ConfigError) as caught:
        pick_tenant(TENANTS, None, None)
    assert "--tenant" in str(caught.value)
    assert "Smith & Co (t-1)" in str(caught.value) and "(t-2)" in str(caught.value)
    assert "Smith Practice" not in str(caught.value)
    with pytest.raises(ConfigError, match="not among"):
        pick_tenant(TENANTS, "t-9", None)
    with pytest.raises(ConfigError, match="from 1 to 2"):
        pick_tenant(TENANTS, None, lambda options: 5)
    with pytest.raises(ConfigError, match="no organisation"):
        pick_tenant([], None, None)


def issued(refresh_in: timedelta | None) -> IssuedToken:
    return IssuedToken("at", "rt", NOW + timedelta(hours=1), NOW, refresh_in)


def test_refresh_expiry_follows_the_server_and_the_five_year_cap() -> None:
    qbo = provider_for("quickbooks", None)
    assert refresh_expiry(qbo, issued(timedelta(days=100)), NOW) == NOW + timedelta(days=100)
    assert refresh_expiry(qbo, issued(None), NOW) == NOW + timedelta(days=100)
    connected = NOW - timedelta(days=5 * 365 - 30)
    assert refresh_expiry(qbo, issued(timedelta(days=100)), connected) == connected + timedelta(
        days=5 * 365
    )
    xero = provider_for("xero", None)
    assert refresh_expiry(xero, issued(None), NOW - timedelta(days=4000)) == NOW + timedelta(
        days=60
    )
