"""The token, revoke and connections calls' error paths and request shapes, with `responses`
standing in for the vendor: invalid_grant, bad credentials, 5xx then success, timeouts,
malformed answers, rate limits; and what each provider puts where."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
import requests
import responses

from adapters.oauth.client import OAuthClient
from adapters.oauth.errors import GrantRevoked
from adapters.oauth.providers import ClientCredentials, provider_for
from connector.domain.errors import ConfigError, TransientError

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SECRET = "client-secret-must-stay-hidden"
CREDS = ClientCredentials("the-client-id", SECRET, "APP_ID", "APP_SECRET")
QBO_TOKEN = "https://qbo.test/oauth2/v1/tokens/bearer"
XERO_TOKEN = "https://xero.test/connect/token"
REFRESH = "RT-refresh-token-that-must-stay-hidden"
TOKEN_BODY = {
    "access_token": "AT-new-access-token",
    "refresh_token": "RT-rotated",
    "token_type": "bearer",
    "expires_in": 3600,
    "x_refresh_token_expires_in": 8726400,
}


def client(kind: str = "quickbooks", sleeps: list[float] | None = None) -> OAuthClient:
    base = "https://qbo.test" if kind == "quickbooks" else "https://xero.test"
    return OAuthClient(
        provider_for(kind, base),
        CREDS,
        now=lambda: NOW,
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
    )


def form(call: responses.Call) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else str(body or "")
    return {k: v[0] for k, v in parse_qs(text).items()}


def assert_hidden(text: str) -> None:
    for secret in (SECRET, REFRESH, "AT-new-access-token", "RT-rotated"):
        assert secret not in text


@responses.activate
def test_qbo_refresh_uses_basic_auth_and_reads_both_lifetimes() -> None:
    responses.post(QBO_TOKEN, json=TOKEN_BODY)
    issued = client().refresh(REFRESH)
    assert issued.access_token == "AT-new-access-token"
    assert issued.refresh_token == "RT-rotated"
    assert issued.expires_at == NOW + timedelta(hours=1)
    assert issued.refresh_expires_in == timedelta(seconds=8726400)
    request = responses.calls[0].request
    expected = base64.b64encode(f"the-client-id:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert form(responses.calls[0]) == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert_hidden(repr(issued))


@responses.activate
def test_xero_refresh_sends_the_credentials_in_the_form() -> None:
    responses.post(XERO_TOKEN, json={**TOKEN_BODY, "expires_in": 1800})
    issued = client("xero").refresh(REFRESH)
    assert issued.expires_at == NOW + timedelta(minutes=30)
    assert issued.refresh_expires_in is None  # Xero does not say: 60 days unused
    assert "Authorization" not in responses.calls[0].request.headers
    assert form(responses.calls[0]) == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": "the-client-id",
        "client_secret": SECRET,
    }


@responses.activate
def test_an_answer_without_a_refresh_token_keeps_none() -> None:
    responses.post(QBO_TOKEN, json={"access_token": "AT-2", "token_type": "bearer"})
    issued = client().refresh(REFRESH)
    assert issued.refresh_token is None
    assert issued.expires_at == NOW + timedelta(hours=1)  # the provider's default lifetime


@pytest.mark.parametrize("status", [400, 401])
@responses.activate
def test_invalid_grant_tells_the_admin_to_reconnect(status: int) -> None:
    responses.post(
        QBO_TOKEN,
        status=status,
        json={"error": "invalid_grant", "error_description": "Incorrect or invalid refresh token"},
    )
    with pytest.raises(ConfigError) as caught:
        client().refresh(REFRESH)
    assert isinstance(caught.value, GrantRevoked)
    message = str(caught.value)
    assert "milestone-sync connect quickbooks" in message
    assert "invalid_grant" in message and "Incorrect or invalid refresh token" in message
    assert len(responses.calls) == 1  # not retried: only a person can fix it
    assert_hidden(message)
    assert caught.value.__cause__ is None


@responses.activate
def test_rejected_client_credentials_name_the_variables() -> None:
    responses.post(QBO_TOKEN, status=401, json={"error": "invalid_client"})
    with pytest.raises(ConfigError) as caught:
        client().refresh(REFRESH)
    assert not isinstance(caught.value, GrantRevoked)
    assert "APP_ID and APP_SECRET" in str(caught.value)
    assert "Production keys" in str(caught.value)
    assert_hidden(str(caught.value))


@responses.activate
def test_a_5xx_is_retried_then_succeeds() -> None:
    responses.post(QBO_TOKEN, status=503, body="<html>down</html>")
    responses.post(QBO_TOKEN, status=502, json={"error": "server_error"})
    responses.post(QBO_TOKEN, json=TOKEN_BODY)
    assert client().refresh(REFRESH).access_token == "AT-new-access-token"
    assert len(responses.calls) == 3
    assert {form(call)["refresh_token"] for call in responses.calls} == {REFRESH}


@responses.activate
def test_persistent_5xx_is_a_transient_error_after_a_few_attempts() -> None:
    responses.post(QBO_TOKEN, status=500, json={"error": "server_error"})
    with pytest.raises(TransientError, match="HTTP 500 server_error") as caught:
        client().refresh(REFRESH)
    assert len(responses.calls) == 3
    assert_hidden(str(caught.value))


@responses.activate
def test_a_timeout_is_transient_and_may_have_taken_effect() -> None:
    responses.post(QBO_TOKEN, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(TransientError, match="did not answer in time") as caught:
        client().refresh(REFRESH)
    assert caught.value.outcome_unknown
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(responses.calls) == 3


@responses.activate
def test_a_refused_connection_is_transient() -> None:
    responses.post(QBO_TOKEN, body=requests.ConnectionError("connection refused"))
    with pytest.raises(TransientError, match="unreachable"):
        client().refresh(REFRESH)


@pytest.mark.parametrize(
    "body",
    ["<html>maintenance</html>", '{"access_token": 5}', "[]", '{"token_type": "bearer"}'],
)
@responses.activate
def test_a_malformed_200_is_transient(body: str) -> None:
    responses.post(QBO_TOKEN, body=body, content_type="application/json")
    with pytest.raises(TransientError, match="without a token") as caught:
        client().refresh(REFRESH)
    assert caught.value.outcome_unknown
    assert len(responses.calls) == 3


@responses.activate
def test_a_non_numeric_lifetime_is_transient() -> None:
    responses.post(QBO_TOKEN, json={**TOKEN_BODY, "expires_in": "soon"})
    with pytest.raises(TransientError, match=r"malformed|cannot read"):
        client().refresh(REFRESH)


@responses.activate
def test_a_rate_limit_waits_as_told() -> None:
    sleeps: list[float] = []
    responses.post(QBO_TOKEN, status=429, headers={"Retry-After": "7"}, json={})
    responses.post(QBO_TOKEN, json=TOKEN_BODY)
    client(sleeps=sleeps).refresh(REFRESH)
    assert sleeps == [7.0]


@responses.activate
def test_qbo_revoke_posts_json_with_basic_auth() -> None:
    responses.post("https://qbo.test/v2/oauth2/tokens/revoke", status=200)
    client().revoke(REFRESH)
    request = responses.calls[0].request
    assert json.loads(request.body) == {"token": REFRESH}
    assert request.headers["Authorization"].startswith("Basic ")


@responses.activate
def test_xero_revoke_posts_a_form_with_the_credentials() -> None:
    responses.post("https://xero.test/connect/revocation", status=200)
    client("xero").revoke(REFRESH)
    assert form(responses.calls[0]) == {
        "token": REFRESH,
        "client_id": "the-client-id",
        "client_secret": SECRET,
    }


@responses.activate
def test_a_failed_revoke_is_reported() -> None:
    responses.post(
        "https://xero.test/connect/revocation", status=400, json={"error": "unsupported_token"}
    )
    with pytest.raises(ConfigError, match="unsupported_token"):
        client("xero").revoke(REFRESH)


@responses.activate
def test_xero_connections_become_tenants() -> None:
    responses.get(
        "https://xero.test/Connections",
        json=[
            {"id": "c1", "tenantId": "t-1", "tenantType": "ORGANISATION", "tenantName": "Acme"},
            {"id": "c2", "tenantType": "ORGANISATION"},  # no tenant id: skipped
        ],
    )
    [tenant] = client("xero").tenants("AT-new-access-token")
    assert (tenant.id, tenant.type, tenant.name) == ("t-1", "ORGANISATION", "Acme")
    auth = responses.calls[0].request.headers["Authorization"]
    assert auth == "Bearer AT-new-access-token"


@responses.activate
def test_a_refused_connections_call_says_to_reconnect() -> None:
    responses.get("https://xero.test/Connections", status=403, json={"Title": "Forbidden"})
    with pytest.raises(ConfigError, match="milestone-sync connect xero"):
        client("xero").tenants("AT-new-access-token")
