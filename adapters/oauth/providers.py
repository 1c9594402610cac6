"""Where and how each ledger's OAuth 2 authorization server is reached (endpoints, scopes, client
authentication, token lifetimes), and the app's client credentials read from the environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from connector.config import LedgerConnection
from connector.domain.errors import ConfigError

ClientAuth = Literal["basic", "body"]

# Intuit: one authorization server for sandbox and production companies; only the API host
# differs (developer.intuit.com, "OAuth 2.0" and the discovery documents).
QBO_AUTHORIZE = "https://appcenter.intuit.com/connect/oauth2"
QBO_TOKEN = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
QBO_REVOKE = "https://developer.api.intuit.com/v2/oauth2/tokens/revoke"
QBO_API = {
    "production": "https://quickbooks.api.intuit.com",
    "sandbox": "https://sandbox-quickbooks.api.intuit.com",
}
QBO_SCOPES = ("com.intuit.quickbooks.accounting",)

XERO_AUTHORIZE = "https://login.xero.com/identity/connect/authorize"
XERO_TOKEN = "https://identity.xero.com/connect/token"
XERO_REVOKE = "https://identity.xero.com/connect/revocation"
XERO_CONNECTIONS = "https://api.xero.com/connections"
XERO_API = "https://api.xero.com/api.xro/2.0"
# Apps created on or after 2 March 2026 cannot ask for the broad `accounting.transactions`;
# older apps may use these granular scopes since April 2026 and must by September 2027.
XERO_SCOPES = (
    "offline_access",
    "accounting.invoices",
    "accounting.payments",
    "accounting.banktransactions",
    "accounting.contacts",
    "accounting.settings",
    # reconcile --check reads account balances from the trial balance report (the granular name
    # for apps created after March 2026 was not found; options.scopes can replace it)
    "accounting.reports.read",
)

ENVIRONMENTS = ("production", "sandbox")


@dataclass(frozen=True)
class OAuthProvider:
    """One ledger's authorization server as milestone-sync uses it."""

    name: str  # the ledger kind, also the connection's name in the token store
    label: str  # what the admin calls it
    authorize_url: str
    token_url: str
    revoke_url: str
    api_url: str  # the ledger API's base (QBO: before /v3/company/{realm}; Xero: /api.xro/2.0)
    scopes: tuple[str, ...]
    client_auth: ClientAuth  # where the client id and secret go on token and revoke calls
    revoke_body: Literal["json", "form"]
    access_ttl: timedelta  # used when a token response has no expires_in
    refresh_idle_ttl: timedelta  # a refresh token dies after this long unused
    refresh_max_age: timedelta | None = None  # QBO: five years after the first consent
    refresh_expires_field: str | None = None  # QBO reports the refresh token's remaining life
    realm_param: str | None = None  # QBO: the redirect names the company as realmId
    connections_url: str | None = None  # Xero: the tenants the grant reaches
    pkce: Literal["S256"] | None = "S256"
    loopback: bool = False  # an emulator on this machine: plain http is allowed
    console_hint: str = field(default="", compare=False)  # where the admin manages the app

    @property
    def needs_tenant_choice(self) -> bool:
        return self.connections_url is not None


def provider_for(
    kind: str,
    base_url: str | None,
    environment: str = "production",
    *,
    scopes: Sequence[str] | None = None,
) -> OAuthProvider:
    """The provider of ledger `kind` ("quickbooks" or "xero"). With `base_url` (tests, the
    sandbox, a local emulator) every endpoint is derived from that one address."""
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"ledger.options.environment: {environment!r} must be one of {', '.join(ENVIRONMENTS)}"
        )
    base = _checked_base(base_url) if base_url else None
    loopback = base is not None and _is_loopback(base)
    if kind == "quickbooks":
        return OAuthProvider(
            name="quickbooks",
            label="QuickBooks",
            authorize_url=f"{base}/connect/oauth2" if base else QBO_AUTHORIZE,
            token_url=f"{base}/oauth2/v1/tokens/bearer" if base else QBO_TOKEN,
            revoke_url=f"{base}/v2/oauth2/tokens/revoke" if base else QBO_REVOKE,
            api_url=base or QBO_API[environment],
            scopes=tuple(scopes) if scopes else QBO_SCOPES,
            client_auth="basic",
            revoke_body="json",
            access_ttl=timedelta(hours=1),
            refresh_idle_ttl=timedelta(days=100),
            refresh_max_age=timedelta(days=5 * 365),
            refresh_expires_field="x_refresh_token_expires_in",
            realm_param="realmId",
            loopback=loopback,
            console_hint="developer.intuit.com > My Apps > Keys & credentials "
            f"({'Development' if environment == 'sandbox' else 'Production'} keys)",
        )
    if kind == "xero":
        return OAuthProvider(
            name="xero",
            label="Xero",
            authorize_url=f"{base}/identity/connect/authorize" if base else XERO_AUTHORIZE,
            token_url=f"{base}/connect/token" if base else XERO_TOKEN,
            revoke_url=f"{base}/connect/revocation" if base else XERO_REVOKE,
            api_url=f"{base}/api.xro/2.0" if base else XERO_API,
            scopes=tuple(scopes) if scopes else XERO_SCOPES,
            client_auth="body",
            revoke_body="form",
            access_ttl=timedelta(minutes=30),
            refresh_idle_ttl=timedelta(days=60),
            connections_url=f"{base}/Connections" if base else XERO_CONNECTIONS,
            loopback=loopback,
            console_hint="developer.xero.com > My Apps > Configuration",
        )
    raise ConfigError(
        f"ledger kind {kind!r} has no OAuth connection: only quickbooks and xero connect this way"
    )


def provider_for_ledger(ledger: LedgerConnection) -> OAuthProvider:
    """The provider for the `[ledger]` table: kind, base_url, options.environment and
    options.scopes (space-separated, replacing the defaults)."""
    scopes = (ledger.options.get("scopes") or "").split()
    return provider_for(
        str(ledger.kind),
        ledger.base_url,
        ledger.options.get("environment", "production"),
        scopes=scopes or None,
    )


@dataclass(frozen=True)
class ClientCredentials:
    """The app's client id and secret, and the variables they came from (for messages)."""

    client_id: str
    client_secret: str = field(repr=False)
    id_env: str = ""
    secret_env: str = ""

    def __repr__(self) -> str:  # the secret never reaches a log through repr
        return f"ClientCredentials(id_env={self.id_env!r}, secret_env={self.secret_env!r})"

    @property
    def hint(self) -> str:
        return f"{self.id_env} and {self.secret_env}"


def client_credentials(
    ledger: LedgerConnection, environ: Mapping[str, str] | None = None
) -> ClientCredentials:
    """Read the variables named by `[ledger] client_id_env` and `client_secret_env`; ConfigError
    names what to set."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    names: dict[str, str] = {}
    for key in ("client_id", "client_secret"):
        name = ledger.secret_env.get(key)
        if not name:
            raise ConfigError(
                f"ledger.{key}_env: not set; name the environment variable holding the "
                f"{ledger.kind} app's {key.replace('_', ' ')}, e.g. "
                f'{key}_env = "{str(ledger.kind).upper()}_{key.upper()}"'
            )
        value = env.get(name, "").strip()
        if not value:
            raise ConfigError(
                f"ledger.{key}_env names the environment variable {name}, which is not set: "
                f"export {name}=... (the {ledger.kind} app's {key.replace('_', ' ')})"
            )
        values[key], names[key] = value, name
    return ClientCredentials(
        values["client_id"], values["client_secret"], names["client_id"], names["client_secret"]
    )


def allow_plain_http_for(provider: OAuthProvider) -> None:
    """oauthlib refuses http:// token endpoints unless OAUTHLIB_INSECURE_TRANSPORT is set; a
    loopback emulator (tests, the sandbox) is the only place milestone-sync allows that."""
    if provider.loopback:
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")


def _checked_base(base_url: str) -> str:
    base = base_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"ledger.base_url: {base_url!r} is not an http(s) address")
    if parts.scheme == "http" and not _is_loopback(base):
        raise ConfigError(
            f"ledger.base_url: {base_url!r} must use https (plain http is only allowed for an "
            "emulator on this machine, e.g. http://127.0.0.1:8080)"
        )
    return base


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
