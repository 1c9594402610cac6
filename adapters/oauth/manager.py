"""`AccessTokens` for one ledger connection: hands out the stored access token, refreshes it
shortly before it expires or after a 401, one refresh at a time across threads and processes,
and commits the rotated refresh token before the new access token is used.

Why the lock: QuickBooks invalidates a used refresh token, so two processes refreshing with the
same one would leave the loser with `invalid_grant` and, if the loser's write came last, the
connection lost. Under the lock the second process re-reads the row, finds the rotated token
and uses it. The one unavoidable loss is a crash (or a lost answer) after the server rotated
and before we committed; see `adapters/oauth/__init__.py`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from adapters.http import call_with_retries
from adapters.oauth.client import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT, IssuedToken, OAuthClient
from adapters.oauth.errors import GrantRevoked, reconnect_advice
from adapters.oauth.providers import (
    OAuthProvider,
    client_credentials,
    provider_for_ledger,
)
from adapters.store.engine import Store
from adapters.store.tokens import DEFAULT_TOKEN_KEY_ENV, SqlTokenStore, StoredToken
from connector.config import LedgerConnection
from connector.domain.errors import ConfigError
from connector.domain.ids import TenantId
from connector.ports import Clock, OAuthToken

DEFAULT_MARGIN = timedelta(minutes=5)
log = structlog.get_logger("milestone_sync.oauth")


def refresh_expiry(
    provider: OAuthProvider, issued: IssuedToken, connected_at: datetime | None
) -> datetime:
    """When the refresh token stops working if unused: what the server said (QBO's
    x_refresh_token_expires_in) or the provider's idle lifetime (Xero: 60 days), and never
    later than the provider's maximum since consent (QBO: five years)."""
    expiry = issued.issued_at + (issued.refresh_expires_in or provider.refresh_idle_ttl)
    if provider.refresh_max_age is not None and connected_at is not None:
        expiry = min(expiry, connected_at + provider.refresh_max_age)
    return expiry


class TokenManager:
    """`adapters.oauth.tokens.AccessTokens` over the token store, for one connection."""

    def __init__(
        self,
        tokens: SqlTokenStore,
        client: OAuthClient,
        *,
        connection: str | None = None,
        now: Callable[[], datetime] | None = None,
        margin: timedelta = DEFAULT_MARGIN,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self._tokens = tokens
        self._client = client
        self._provider = client.provider
        self._connection = connection or client.provider.name
        self._now = now or (lambda: datetime.now(UTC))
        self._margin = margin
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._lock = threading.Lock()  # threads of this process; the database lock does the rest
        self._cached: OAuthToken | None = None
        # a refresh whose answer we got but could not commit (database down): saved first next
        # time, if the row still holds the refresh token it replaced
        self._unsaved: tuple[str, StoredToken] | None = None
        self.refreshes = 0  # refresh calls this manager made that succeeded

    @property
    def connection(self) -> str:
        return self._connection

    def current(self) -> OAuthToken:
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached
        with self._lock:
            cached = self._cached
            if cached is not None and self._fresh(cached):
                return cached
            record = self._tokens.load_record(self._connection)
            self._check_usable(record)
            assert record is not None
            if self._fresh(record.token) and self._unsaved is None:
                self._cached = record.token
                return record.token
            return self._refresh_under_lock(rejected=None)

    def refresh(self, rejected: OAuthToken) -> OAuthToken:
        with self._lock:
            cached = self._cached
            if (
                cached is not None
                and cached.access_token != rejected.access_token
                and self._fresh(cached)
            ):
                return cached  # another thread of ours refreshed meanwhile
            return self._refresh_under_lock(rejected=rejected)

    # ------------------------------------------------------------------ internals

    def _fresh(self, token: OAuthToken) -> bool:
        return token.expires_at - self._now() > self._margin

    def _refresh_under_lock(self, rejected: OAuthToken | None) -> OAuthToken:
        # each attempt takes the database lock anew: the backoff between attempts holds nothing
        return call_with_retries(
            lambda: self._attempt(rejected),
            max_attempts=self._max_attempts,
            max_wait=10.0,
            max_total=120.0,
            sleep=self._sleep,
        )

    def _attempt(self, rejected: OAuthToken | None) -> OAuthToken:
        with self._tokens.locked(self._connection) as lock:
            record = lock.record
            self._check_usable(record)
            assert record is not None
            stored = record.token
            if self._unsaved is not None:
                replaced, pending = self._unsaved
                if stored.refresh_token == replaced:
                    lock.commit(pending)
                    self._unsaved = None
                    self._cached = pending.token
                    log.info("oauth.saved_late", connection=self._connection)
                    return pending.token
                self._unsaved = None  # someone stored a newer connection meanwhile
            if self._fresh(stored) and (
                rejected is None or stored.access_token != rejected.access_token
            ):
                # another process refreshed while we waited for the lock: use its token
                self._cached = stored
                log.info("oauth.refreshed_elsewhere", connection=self._connection)
                return stored
            try:
                issued = self._client.refresh_once(stored.refresh_token)
            except GrantRevoked as exc:
                now = self._now()
                lock.commit(replace(record, needs_reconnect=str(exc), needs_reconnect_at=now))
                self._cached = None
                log.warning(
                    "oauth.needs_reconnect", connection=self._connection, realm=stored.realm
                )
                raise GrantRevoked(self._reconnect_message(record, str(exc))) from None
            token = OAuthToken(
                access_token=issued.access_token,
                # a provider may answer without a new refresh token: the old one stays valid
                refresh_token=issued.refresh_token or stored.refresh_token,
                expires_at=issued.expires_at,
                refresh_expires_at=refresh_expiry(self._provider, issued, record.connected_at),
                realm=stored.realm,
            )
            updated = replace(record, token=token, refreshed_at=issued.issued_at)
            try:
                lock.commit(updated)  # committed before anyone sees the new access token
            except BaseException:
                self._unsaved = (stored.refresh_token, updated)
                raise
        self._cached = token
        self.refreshes += 1
        log.info(
            "oauth.refreshed",
            connection=self._connection,
            realm=token.realm,
            expires_at=token.expires_at.isoformat(),
        )
        return token

    def _check_usable(self, record: StoredToken | None) -> None:
        label = self._provider.label
        if record is None:
            raise ConfigError(
                f"{label} is not connected yet for firm {self._tokens.tenant!r}: run "
                f"`milestone-sync connect {self._provider.name}`"
            )
        if record.needs_reconnect:
            raise GrantRevoked(self._reconnect_message(record, record.needs_reconnect))

    def _reconnect_message(self, record: StoredToken, reason: str) -> str:
        which = f" ({record.label or record.token.realm})" if record.token.realm else ""
        advice = reconnect_advice(self._provider)
        text = f"the {self._provider.label} connection{which} needs reconnecting: {reason}"
        return text if reason.endswith(advice) else f"{text}; {advice}"

    def __repr__(self) -> str:
        return f"TokenManager(connection={self._connection!r}, tenant={self._tokens.tenant!r})"


def token_manager(
    store: Store | Callable[[], Store],
    tenant: str,
    ledger: LedgerConnection,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Clock | None = None,
    now: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    margin: timedelta = DEFAULT_MARGIN,
) -> TokenManager:
    """The `AccessTokens` of the firm's ledger connection (named by the ledger kind), for the
    ledger adapter. Raises ConfigError at once when the app's client id/secret variables or the
    token key (MILESTONE_SYNC_TOKEN_KEY) are not set; a missing or broken connection is only
    reported when a token is asked for.

    `store` may be a zero-argument callable returning the store, for a composition root that
    opens the store after building the adapters: it is called on the first token request."""
    now_fn = now or (clock.now if clock is not None else (lambda: datetime.now(UTC)))
    provider = provider_for_ledger(ledger)
    credentials = client_credentials(ledger, environ)
    opened: Any = store if isinstance(store, Store) else _LazyStore(store)
    tokens = SqlTokenStore(
        opened, TenantId(tenant), DEFAULT_TOKEN_KEY_ENV, environ=environ, clock=_NowClock(now_fn)
    )
    client = OAuthClient(provider, credentials, timeout=timeout, now=now_fn, sleep=sleep)
    return TokenManager(tokens, client, now=now_fn, margin=margin, sleep=sleep)


class _NowClock:
    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now


class _LazyStore:
    """The parts of `Store` the token store uses, opened on first use."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open = open_store
        self._store: Store | None = None

    def _get(self) -> Store:
        if self._store is None:
            self._store = self._open()
        return self._store

    @property
    def engine(self) -> Any:
        return self._get().engine

    def ensure_tenant(self, tenant_id: TenantId) -> None:
        self._get().ensure_tenant(tenant_id)
