"""xero-python set up the way milestone-sync needs it: a private Configuration and bearer per
client (never the SDK's shared singleton, never an SDK-side refresh), urllib3's hidden retries off,
integer timeouts on every call, at most 5 calls in flight and 60 a minute per organisation, 401 ->
refresh -> one retry, and tenacity retries (same Idempotency-Key) that honour Retry-After.

Pitfalls handled (../shared/reference/ledger-and-payment-apis.md): 2 (refresh races: the SDK
never refreshes, `AccessTokens` does), 3 (hidden duplicate PUTs), 4 (no default timeout; floats
ignored), 9 (Configuration is a metaclass singleton)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from xero_python.accounting import AccountingApi
from xero_python.api_client import ApiClient
from xero_python.api_client.configuration import Configuration
from xero_python.api_client.oauth2 import OAuth2Token
from xero_python.identity import IdentityApi
from xero_python.rest import RESTResponse

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.http import RequestBudget
from adapters.oauth.tokens import AccessTokens
from adapters.observability import count_urllib3_calls
from adapters.xero.errors import TRANSLATED, is_unauthorized, translate
from adapters.xero.translate import parse_ms_datetime
from connector.domain.errors import ConfigError, TransientError
from connector.ports import OAuthToken

T = TypeVar("T")

DEFAULT_API_URL = "https://api.xero.com/api.xro/2.0"
DEFAULT_IDENTITY_URL = "https://api.xero.com"
MINUTE_LIMIT = 60  # Xero: 60 calls a minute per organisation [REF B4]
# one below Xero's limit: our window and Xero's start a few milliseconds apart, so 60 of ours
# could be 61 of theirs at the window's edge
MINUTE_BUDGET = MINUTE_LIMIT - 1
CONCURRENT_CALLS = 5  # Xero: 5 calls in flight per organisation
SLOW_DOWN_BELOW = 5  # X-MinLimit-Remaining under this: space calls out


class _CallToken(OAuth2Token):
    """The bearer xero-python puts on a request: the token bound to the calling thread.

    Replaces the SDK's token logic (which reads a global getter and refreshes inside any call,
    unlocked): this one never refreshes and is private to one client, so two tenants or two
    clients cannot see each other's tokens."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def bind(self, access_token: str | None) -> None:
        self._local.access_token = access_token

    def create_auth_settings(self, api_client: Any) -> dict[str, str]:
        access_token = getattr(self._local, "access_token", None)
        if not access_token:
            raise RuntimeError("no Xero access token bound to this call")
        return {
            "type": "oauth2",
            "in": "header",
            "key": "Authorization",
            "value": f"Bearer {access_token}",
        }

    def __repr__(self) -> str:  # never show a token
        return "_CallToken()"


def private_configuration() -> Configuration:
    """A Configuration of our own: `Configuration()` hands out shallow copies of one process-wide
    default, so every client would share the first one's OAuth2Token (Pitfall 9)."""
    configuration: Configuration = type.__call__(Configuration)
    return configuration


@dataclass
class Budget:
    """What Xero said is left, from the last response's headers."""

    day: int | None = None
    minute: int | None = None
    app_minute: int | None = None
    seen_at: float | None = None  # monotonic time of the response they came from


class XeroClient:
    """One Xero organisation through xero-python, for one connection's tokens."""

    def __init__(
        self,
        tokens: AccessTokens,
        *,
        tenant_id: str | None = None,
        api_url: str | None = None,
        identity_url: str | None = None,
        timeout: tuple[int, int] = (5, 60),
        max_attempts: int = 5,
        max_wait: float = 60.0,
        time: EmulatedTime = REAL_TIME,
        per_minute: int = MINUTE_BUDGET,
        concurrency: int = CONCURRENT_CALLS,
    ) -> None:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in timeout):
            raise ValueError("timeout must be two integers: xero-python ignores float timeouts")
        self._tokens = tokens
        self._tenant_id = tenant_id
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self.time = time
        self._token = _CallToken()
        configuration = private_configuration()
        configuration.oauth2_token = self._token
        self.api_client = ApiClient(configuration, pool_threads=1)
        # Pitfall 3: urllib3 would silently resend GET/PUT/DELETE (up to 3 times, and sleep out
        # a 429's Retry-After inside one call); retries belong to us, with the same key.
        self.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
        count_urllib3_calls(self.api_client.rest_client, "xero")
        self.accounting = AccountingApi(self.api_client, base_url=api_url or DEFAULT_API_URL)
        self.identity = IdentityApi(
            self.api_client, base_url=(identity_url or DEFAULT_IDENTITY_URL).rstrip("/")
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._minute = RequestBudget(per_minute, monotonic=time.monotonic, sleep=time.sleep)
        self._lock = threading.Lock()
        self.budget = Budget()
        self.calls = 0

    def close(self) -> None:
        self.api_client.rest_client.pool_manager.clear()

    # ------------------------------------------------------------------ tenant

    @property
    def tenant(self) -> str:
        """The organisation every call goes to: the configured one, else the token's realm,
        else the connection's only organisation."""
        with self._lock:
            if self._tenant_id:
                return self._tenant_id
        realm = self._tokens.current().realm
        if realm:
            chosen = realm
        else:
            connections = self.call("list Xero connections", self.identity.get_connections)
            organisations = [c for c in connections if c.tenant_type == "ORGANISATION"]
            if len(organisations) != 1:
                names = ", ".join(f"{c.tenant_name} ({c.tenant_id})" for c in organisations)
                raise ConfigError(
                    f"the Xero connection has {len(organisations)} organisations"
                    + (f" ({names})" if names else "")
                    + ": set the xero tenant_id option to the one to invoice from"
                )
            chosen = str(organisations[0].tenant_id)
        with self._lock:
            self._tenant_id = self._tenant_id or chosen
            return self._tenant_id

    # ------------------------------------------------------------------ calls

    def call(
        self,
        what: str,
        operation: Callable[..., Any],
        *args: Any,
        write: bool = False,
        **kwargs: Any,
    ) -> Any:
        """`operation(*args, **kwargs)` with our timeout; returns its data. Retries transient
        failures (a write with the same Idempotency-Key, which the caller put in kwargs);
        raises only our errors."""
        return self._retrying()(self._attempt, what, operation, args, kwargs, write, False)[0]

    def call_raw(
        self,
        what: str,
        operation: Callable[..., Any],
        response_type: str,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """A read whose JSON envelope matters too (DateTimeUTC): (model, envelope)."""
        response, _ = self._retrying()(self._attempt, what, operation, args, kwargs, False, True)
        try:
            envelope = json.loads(response.data or b"{}", parse_float=Decimal)
        finally:
            response.release_conn()  # a response read with preload_content=False holds a socket
        model = self.api_client.deserialize(
            RESTResponse(response), response_type, self.accounting.get_model_finder()
        )
        return model, envelope

    @staticmethod
    def server_time(envelope: dict[str, Any]) -> datetime | None:
        return parse_ms_datetime(envelope.get("DateTimeUTC"))

    def _retrying(self) -> Retrying:
        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, TransientError) and (
                exc.retry_after is None or exc.retry_after <= self._max_wait
            )

        backoff = wait_exponential_jitter(multiplier=0.5, max=self._max_wait)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                return exc.retry_after
            return float(backoff(state))

        return Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self._max_attempts),
            wait=wait,
            sleep=self.time.sleep,
            reraise=True,
        )

    def _attempt(
        self,
        what: str,
        operation: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        write: bool,
        raw: bool,
    ) -> tuple[Any, Any]:
        token = self._tokens.current()
        try:
            return self._send(token, what, operation, args, kwargs, write, raw)
        except _Unauthorized:
            fresh = self._tokens.refresh(token)
        try:
            return self._send(fresh, what, operation, args, kwargs, write, raw)
        except _Unauthorized as exc:
            raise exc.error from None

    def _send(
        self,
        token: OAuthToken,
        what: str,
        operation: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        write: bool,
        raw: bool,
    ) -> tuple[Any, Any]:
        self._pace()
        with self._slots:
            self._minute.acquire()
            self._token.bind(token.access_token)
            try:
                with self._lock:
                    self.calls += 1
                result = operation(
                    *args,
                    **kwargs,
                    _request_timeout=self._timeout,
                    _return_http_data_only=False,
                    **({"_preload_content": False} if raw else {}),
                )
            except TRANSLATED as exc:
                self._note(getattr(exc, "headers", None) if hasattr(exc, "http_resp") else None)
                if is_unauthorized(exc):
                    raise _Unauthorized(translate(exc, what, write=write)) from None
                raise translate(exc, what, write=write) from None
            finally:
                self._token.bind(None)
        data, _status, headers = result
        self._note(headers)
        return data, headers

    # ------------------------------------------------------------------ pacing

    def _note(self, headers: Any) -> None:
        if not headers:
            return
        with self._lock:
            for name, attribute in (
                ("X-DayLimit-Remaining", "day"),
                ("X-MinLimit-Remaining", "minute"),
                ("X-AppMinLimit-Remaining", "app_minute"),
            ):
                value = headers.get(name)
                if value is not None and str(value).strip().isdigit():
                    setattr(self.budget, attribute, int(value))
            self.budget.seen_at = self.time.monotonic()

    def _pace(self) -> None:
        """Spread calls out as the minute budget runs low (someone else may be using this
        organisation's 60 calls too); our own RequestBudget keeps us under 60 a minute."""
        with self._lock:
            left = self.budget.minute
            seen = self.budget.seen_at
        if seen is not None and self.time.monotonic() - seen >= 60.0:
            return  # that minute is over
        if left is not None and left < SLOW_DOWN_BELOW:
            self.time.sleep((SLOW_DOWN_BELOW - left) * 60.0 / MINUTE_LIMIT)


class _Unauthorized(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
