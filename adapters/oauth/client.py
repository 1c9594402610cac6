"""The calls milestone-sync makes to a ledger's authorization server, over requests-oauthlib:
authorization URL (state + PKCE), code exchange, refresh, revoke, and the identity lookups
after consent (Xero's connected tenants, the QuickBooks company name). Explicit timeouts,
tenacity retries for transient failures, errors through `adapters.oauth.errors`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import requests
from oauthlib.oauth2 import InsecureTransportError, OAuth2Error
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from adapters.http import call_with_retries
from adapters.oauth.errors import Operation, raise_for, token_body
from adapters.oauth.providers import ClientCredentials, OAuthProvider, allow_plain_http_for
from adapters.observability import api_answer
from connector.domain.errors import ConfigError, TransientError

T = TypeVar("T")
DEFAULT_TIMEOUT = (5.0, 20.0)  # connect, read: a refresh holds the connection's lock meanwhile
DEFAULT_ATTEMPTS = 3


class _DropDebug(logging.Filter):
    """requests-oauthlib logs request bodies and token responses at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_DROP_DEBUG = _DropDebug()


def quiet_token_logs() -> None:
    """Keep requests-oauthlib's DEBUG lines (which print tokens) out of every log handler."""
    for name in ("requests_oauthlib.oauth2_session", "requests_oauthlib"):
        logger = logging.getLogger(name)
        if _DROP_DEBUG not in logger.filters:
            logger.addFilter(_DROP_DEBUG)


@dataclass(frozen=True)
class IssuedToken:
    """A token endpoint's answer, with lifetimes turned into times."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime
    issued_at: datetime
    refresh_expires_in: timedelta | None = None  # as the server reported it (QBO)
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"IssuedToken(expires_at={self.expires_at.isoformat()}, scopes={self.scopes!r})"


@dataclass(frozen=True)
class Tenant:
    """One Xero organisation (or practice) the grant reaches, from GET /Connections."""

    id: str
    type: str
    name: str

    def describe(self) -> str:
        return f"{self.name} ({self.id})"


class PendingAuthorization:
    """An authorization request sent to the admin's browser: its URL, the `state` the
    redirect must echo, and the session holding the PKCE code verifier."""

    def __init__(self, url: str, state: str, redirect_uri: str, session: OAuth2Session) -> None:
        self.url = url
        self.state = state
        self.redirect_uri = redirect_uri
        self._session = session

    @property
    def session(self) -> OAuth2Session:
        return self._session

    def __repr__(self) -> str:
        return f"PendingAuthorization(redirect_uri={self.redirect_uri!r})"


class OAuthClient:
    """One app (client id and secret) at one provider."""

    def __init__(
        self,
        provider: OAuthProvider,
        credentials: ClientCredentials,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = DEFAULT_ATTEMPTS,
        max_wait: float = 10.0,
    ) -> None:
        self.provider = provider
        self.credentials = credentials
        self._timeout = timeout
        self._now = now or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self.max_attempts = max_attempts
        self._max_wait = max_wait
        allow_plain_http_for(provider)
        quiet_token_logs()

    # ------------------------------------------------------------------ authorization code

    def authorization(self, redirect_uri: str, state: str | None = None) -> PendingAuthorization:
        session = OAuth2Session(
            self.credentials.client_id,
            redirect_uri=redirect_uri,
            scope=list(self.provider.scopes),
            pkce=self.provider.pkce,
        )
        url, state = session.authorization_url(self.provider.authorize_url, state=state)
        return PendingAuthorization(url, state, redirect_uri, session)

    def exchange(self, pending: PendingAuthorization, code: str) -> IssuedToken:
        """Trade the redirect's code (and the PKCE verifier) for the first token pair. Not
        retried: a code works once, and a lost answer means consenting again."""
        session = pending.session
        captured: list[Any] = []
        session.register_compliance_hook(
            "access_token_response", self._checking_hook("exchange", captured)
        )
        if self.provider.client_auth == "basic":
            extra: dict[str, Any] = {"auth": self._basic(), "include_client_id": False}
        else:
            extra = {"include_client_id": True, "client_secret": self.credentials.client_secret}
        issued_at = self._now()
        try:
            self._guarded(
                "exchange",
                lambda: session.fetch_token(
                    self.provider.token_url, code=code, timeout=self._timeout, **extra
                ),
            )
        except Warning:
            # oauthlib: the granted scopes differ from the requested ones
            granted = set(str(captured[0].get("scope", "")).split()) if captured else set()
            missing = sorted(set(self.provider.scopes) - granted)
            if missing:
                raise ConfigError(
                    f"{self.provider.label} granted the app fewer scopes than it needs (missing "
                    f"{' '.join(missing)}): enable them for the app at "
                    f"{self.provider.console_hint} and connect again"
                ) from None
        return self._issued(captured[0], issued_at)

    # ------------------------------------------------------------------ refresh / revoke

    def refresh(self, refresh_token: str) -> IssuedToken:
        """A refresh, retried on transient failures (with the same refresh token)."""
        return self._retrying(lambda: self.refresh_once(refresh_token))

    def refresh_once(self, refresh_token: str) -> IssuedToken:
        """One refresh call (`TokenManager` retries it itself, taking its lock anew each time)."""
        session = OAuth2Session(self.credentials.client_id)  # no scope: keep what was granted
        captured: list[Any] = []
        session.register_compliance_hook(
            "refresh_token_response", self._checking_hook("refresh", captured)
        )
        if self.provider.client_auth == "basic":
            extra: dict[str, Any] = {"auth": self._basic()}
        else:
            extra = {
                "client_id": self.credentials.client_id,
                "client_secret": self.credentials.client_secret,
            }
        issued_at = self._now()
        self._guarded(
            "refresh",
            lambda: session.refresh_token(
                self.provider.token_url,
                refresh_token=refresh_token,
                timeout=self._timeout,
                **extra,
            ),
        )
        return self._issued(captured[0], issued_at)

    def revoke(self, token: str) -> None:
        """Revoke the grant behind a refresh token (RFC 7009): QBO takes JSON and HTTP Basic,
        Xero a form with the credentials in it."""

        def attempt() -> None:
            headers = {"Accept": "application/json"}
            kwargs: dict[str, Any]
            if self.provider.revoke_body == "json":
                kwargs = {"json": {"token": token}}
            else:
                kwargs = {"data": {"token": token}}
            if self.provider.client_auth == "basic":
                kwargs["auth"] = self._basic()
            else:
                kwargs["data"].update(
                    client_id=self.credentials.client_id,
                    client_secret=self.credentials.client_secret,
                )
            response = self._http(
                "revoke",
                lambda: requests.post(
                    self.provider.revoke_url, headers=headers, timeout=self._timeout, **kwargs
                ),
            )
            raise_for(response, "revoke", self.provider, self.credentials)

        self._retrying(attempt)

    # ------------------------------------------------------------------ after consent

    def tenants(self, access_token: str) -> list[Tenant]:
        """The organisations the new grant reaches (Xero GET /Connections)."""
        url = self.provider.connections_url
        if url is None:
            return []

        def attempt() -> list[Tenant]:
            response = self._http(
                "connections",
                lambda: requests.get(
                    url,
                    headers={
                        "Authorization": f"Bearer {access_token}",
                        "Accept": "application/json",
                    },
                    timeout=self._timeout,
                ),
            )
            raise_for(response, "connections", self.provider, self.credentials)
            try:
                rows = response.json()
            except ValueError:
                rows = None
            if not isinstance(rows, list):
                raise TransientError(
                    f"{self.provider.label} answered the connections list with something that "
                    "is not a list; will retry"
                )
            return [
                Tenant(
                    str(row.get("tenantId", "")),
                    str(row.get("tenantType", "")),
                    str(row.get("tenantName") or ""),
                )
                for row in rows
                if isinstance(row, dict) and row.get("tenantId")
            ]

        return self._retrying(attempt)

    def company_name(self, realm: str, access_token: str, minorversion: str = "75") -> str | None:
        """The QuickBooks company's name, for the admin's confirmation; None when it cannot
        be read (the connection works without it)."""
        url = f"{self.provider.api_url}/v3/company/{realm}/companyinfo/{realm}"
        try:
            response = requests.get(
                url,
                params={"minorversion": minorversion},
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
            if response.status_code != 200:
                return None
            name = response.json().get("CompanyInfo", {}).get("CompanyName")
        except (requests.RequestException, ValueError, AttributeError):
            return None
        return str(name) if name else None

    # ------------------------------------------------------------------ internals

    def _basic(self) -> HTTPBasicAuth:
        return HTTPBasicAuth(self.credentials.client_id, self.credentials.client_secret)

    def _checking_hook(
        self, operation: Operation, captured: list[Any]
    ) -> Callable[[requests.Response], requests.Response]:
        """Classify the token endpoint's answer before oauthlib parses it (oauthlib reads any
        body as a token, 5xx pages included)."""

        def hook(response: requests.Response) -> requests.Response:
            api_answer("oauth", response.status_code)
            raise_for(response, operation, self.provider, self.credentials)
            captured.append(token_body(response, self.provider, operation))
            return response

        return hook

    def _issued(self, body: Any, issued_at: datetime) -> IssuedToken:
        expires_in = _seconds(body.get("expires_in"))
        access_ttl = (
            timedelta(seconds=expires_in) if expires_in is not None else self.provider.access_ttl
        )
        refresh_in = (
            _seconds(body.get(self.provider.refresh_expires_field))
            if self.provider.refresh_expires_field
            else None
        )
        refresh = body.get("refresh_token")
        return IssuedToken(
            access_token=body["access_token"],
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=issued_at + access_ttl,
            issued_at=issued_at,
            refresh_expires_in=None if refresh_in is None else timedelta(seconds=refresh_in),
            scopes=tuple(str(body.get("scope", "")).split()),
        )

    def _retrying(self, call: Callable[[], T]) -> T:
        return call_with_retries(
            call,
            max_attempts=self.max_attempts,
            max_wait=self._max_wait,
            max_total=60.0,
            sleep=self._sleep,
        )

    def _guarded(self, operation: Operation, call: Callable[[], T]) -> T:
        """Transport and oauthlib failures of a token call as our errors, without the request
        (its body holds the refresh token or the code) in the chained cause."""
        try:
            return self._http(operation, call)
        except InsecureTransportError:
            raise ConfigError(
                f"{self.provider.label}'s token endpoint {self.provider.token_url} must use https"
            ) from None
        except OAuth2Error as exc:
            raise TransientError(
                f"{self.provider.label} answered the token request with something oauthlib "
                f"cannot read ({exc.error}); will retry",
                outcome_unknown=True,
            ) from None
        except (ValueError, TypeError) as exc:
            raise TransientError(
                f"{self.provider.label}'s token answer is malformed ({type(exc).__name__}); "
                "will retry",
                outcome_unknown=True,
            ) from None

    def _http(self, operation: Operation, call: Callable[[], T]) -> T:
        try:
            result = call()
            if isinstance(result, requests.Response):  # token calls count in _checking_hook
                api_answer("oauth", result.status_code)
            return result
        except requests.ConnectTimeout:
            raise TransientError(
                f"{self.provider.label} did not accept a connection in time ({operation})"
            ) from None
        except requests.Timeout:
            raise TransientError(
                f"{self.provider.label} did not answer in time ({operation}): the request may "
                "have taken effect",
                outcome_unknown=True,
            ) from None
        except requests.RequestException as exc:
            raise TransientError(
                f"{self.provider.label} unreachable ({operation}): {type(exc).__name__}",
                outcome_unknown=True,
            ) from None

    def __repr__(self) -> str:
        return f"OAuthClient(provider={self.provider.name!r}, credentials={self.credentials!r})"


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
