"""Authorization-server answers translated into our errors, in one table: what the admin must do,
what to retry. Messages carry the OAuth error code and description, never a token or secret."""

from __future__ import annotations

import json
from typing import Any, Literal

import requests

from adapters.http import parse_retry_after
from adapters.oauth.providers import ClientCredentials, OAuthProvider
from connector.domain.errors import ConfigError, TransientError

Operation = Literal["refresh", "exchange", "revoke", "connections", "company"]

_WHAT = {
    "refresh": "refreshing the access token",
    "exchange": "exchanging the authorization code",
    "revoke": "revoking the refresh token",
    "connections": "listing the connected organisations",
    "company": "reading the company name",
}


class GrantRevoked(ConfigError):
    """The refresh token no longer works (revoked, expired, or already used): only the admin
    consenting again (`milestone-sync connect`) brings the connection back."""


def reconnect_advice(provider: OAuthProvider) -> str:
    return f"run `milestone-sync connect {provider.name}` to reconnect"


def oauth_error(response: requests.Response) -> tuple[str | None, str | None]:
    """The RFC 6749 `error` and `error_description` of an error answer, if it has them."""
    try:
        body: Any = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        str(error)[:80] if error else None,
        " ".join(str(description).split())[:200] if description else None,
    )


def raise_for(
    response: requests.Response,
    operation: Operation,
    provider: OAuthProvider,
    credentials: ClientCredentials,
) -> None:
    """Raise our error for a non-2xx answer of the authorization server (or the API call
    `operation` names)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    what = _WHAT[operation]
    label = provider.label
    error, description = oauth_error(response)
    detail = (
        f"HTTP {status}"
        + (f" {error}" if error else "")
        + (f" ({description})" if description else "")
    )
    if status == 429 or status >= 500:
        raise TransientError(
            f"{label} answered {detail} while {what}; will retry",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if error == "invalid_grant":
        if operation == "refresh":
            raise GrantRevoked(
                f"{label} refused the stored refresh token ({detail}): it was revoked (the app "
                f"was disconnected in {label}), expired unused, or already used; "
                f"{reconnect_advice(provider)}"
            )
        if operation == "exchange":
            raise ConfigError(
                f"{label} refused the authorization code ({detail}): it expired, was used "
                "already, or the redirect URI differs from the one the app registered; run "
                f"`milestone-sync connect {provider.name}` again and finish within a few minutes"
            )
    if error in ("invalid_client", "unauthorized_client") or (
        status == 401 and operation in ("refresh", "exchange", "revoke")
    ):
        raise ConfigError(
            f"{label} rejected the app's credentials ({detail}) while {what}: check "
            f"{credentials.hint} against {provider.console_hint}"
        )
    if error == "invalid_scope":
        raise ConfigError(
            f"{label} refused the scopes {' '.join(provider.scopes)!r} ({detail}): enable them "
            f"for the app at {provider.console_hint}, or set ledger.options.scopes"
        )
    if status in (401, 403) and operation in ("connections", "company"):
        raise ConfigError(
            f"{label} refused the new access token ({detail}) while {what}; "
            f"{reconnect_advice(provider)}"
        )
    raise ConfigError(f"{label} answered {detail} while {what}")


def token_body(response: requests.Response, provider: OAuthProvider, operation: Operation) -> Any:
    """The JSON token answer of a 2xx response; a body that is not one (a proxy's HTML page, a
    truncated answer) is transient: the server may not have meant it."""
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise TransientError(
            f"{provider.label} answered HTTP {response.status_code} without a token while "
            f"{_WHAT[operation]} (content type {response.headers.get('Content-Type', 'none')!r})",
            outcome_unknown=True,
        )
    return body
