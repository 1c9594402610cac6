"""python-quickbooks for one company: our access token (the SDK never refreshes), timeouts, one
refresh after a 401, tenacity retries with the same requestid; only our errors leave."""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from quickbooks import QuickBooks
from quickbooks.exceptions import AuthorizationException, QuickbooksException
from requests_oauthlib import OAuth2Session

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.http import call_with_retries
from adapters.oauth.tokens import AccessTokens
from adapters.observability import count_calls
from adapters.quickbooks.errors import (
    RECONNECT,
    QBOError,
    Subject,
    is_throttle,
    parse_error_body,
    translate,
)
from connector.domain.errors import ConfigError, MilestoneSyncError, TransientError
from connector.ports import OAuthToken

T = TypeVar("T")

API_HOSTS = {
    "production": "https://quickbooks.api.intuit.com/v3",
    "sandbox": "https://sandbox-quickbooks.api.intuit.com/v3",
}
TOKEN_MARGIN = timedelta(minutes=5)  # ask `tokens.current()` again this close to expiry
# Transport failures: the request may or may not have reached QuickBooks.
TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass(frozen=True)
class Answer:
    """The last HTTP answer the SDK got on this thread (the SDK hides the status code)."""

    status: int
    text: str
    intuit_tid: str | None


class _Session(OAuth2Session):  # type: ignore[misc]
    """The SDK's session: the bearer token only (the SDK writes the header itself, and
    requests-oauthlib never sees a token dict, so it neither refreshes nor logs it), a timeout
    on every request, and the last answer kept per thread for error translation."""

    def __init__(self, access_token: str, timeout: tuple[float, float]) -> None:
        super().__init__()
        count_calls(self, "quickbooks")
        self.access_token = access_token
        self._timeout = timeout
        self._answers = threading.local()

    def __repr__(self) -> str:  # the token never reaches a log through repr
        return "<QuickBooks session>"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        self._answers.last = None
        response: requests.Response = super().request(method, url, *args, **kwargs)
        self._answers.last = Answer(
            response.status_code, response.text, response.headers.get("intuit_tid")
        )
        return response

    def last_answer(self) -> Answer | None:
        answer: Answer | None = getattr(self._answers, "last", None)
        return answer

    def forget(self) -> None:
        self._answers.last = None


class _Final(Exception):
    """Carries a TransientError past the retry loop: resending could apply the write twice."""

    def __init__(self, error: TransientError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_url(api_url: str | None, environment: str) -> str:
    """Intuit's API host for the environment, or `api_url` (an emulator's .../v3)."""
    if api_url is None:
        try:
            return API_HOSTS[environment]
        except KeyError:
            raise ConfigError(
                f"ledger option environment {environment!r} must be production or sandbox"
            ) from None
    url = api_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme == "http":
        if not _is_loopback(url):
            raise ConfigError(f"QuickBooks API address {url} must use https")
        # oauthlib refuses plain http; an emulator on this machine is the only exception
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
    elif parts.scheme != "https":
        raise ConfigError(f"QuickBooks API address {url!r} is not an http(s) address")
    return url


class QuickBooksClient:
    """python-quickbooks for one company, with our token handling, timeouts and retries."""

    def __init__(
        self,
        tokens: AccessTokens,
        *,
        realm_id: str | None,
        minorversion: int,
        api_url: str,
        timeout: tuple[float, float],
        throttle_wait: float,
        max_attempts: int,
        time: EmulatedTime = REAL_TIME,
    ) -> None:
        self._tokens = tokens
        self._realm_id = realm_id
        self._minorversion = minorversion
        self._api_url = api_url
        self._timeout = timeout
        self.throttle_wait = throttle_wait
        self._max_attempts = max_attempts
        self._time = time
        self._lock = threading.Lock()
        self._token: OAuthToken | None = None
        self._qb: QuickBooks | None = None
        self._session: _Session | None = None
        self.refreshes = 0
        self.calls = 0

    # ------------------------------------------------------------------ SDK client

    @property
    def realm_id(self) -> str:
        self._sdk()
        assert self._realm_id is not None
        return self._realm_id

    def _sdk(self, *, after: OAuthToken | None = None) -> tuple[QuickBooks, _Session]:
        """The SDK client with a valid token; after a 401, one built on a refreshed token."""
        with self._lock:
            if after is not None:
                self._token = self._tokens.refresh(after)
                self.refreshes += 1
                self._qb = None
            elif self._token is None or self._qb is None or self._expiring(self._token):
                self._token = self._tokens.current()
                self._qb = None
            if self._qb is None or self._session is None:
                token = self._token
                realm = self._realm_id or token.realm
                if not realm:
                    raise ConfigError(
                        "QuickBooks: no company (realm id) is known: set the ledger option "
                        f"realm_id or {RECONNECT}"
                    )
                self._realm_id = realm
                qb = QuickBooks(company_id=realm, minorversion=self._minorversion, use_decimal=True)
                qb.api_url_v3 = self._api_url
                qb.sandbox_api_url_v3 = self._api_url
                self._session = _Session(token.access_token, self._timeout)
                qb.session = self._session
                self._qb = qb
            return self._qb, self._session

    def _expiring(self, token: OAuthToken) -> bool:
        return token.expires_at - self._time.now() < TOKEN_MARGIN

    def token_changed(self) -> None:
        """Use `tokens.current()` again on the next call (e.g. between sync cycles)."""
        with self._lock:
            self._qb = None
            self._token = None

    # ------------------------------------------------------------------ calls

    def run(
        self,
        subject: Subject,
        operation: Callable[[QuickBooks], T],
        *,
        write: bool = False,
        idempotent: bool = True,
    ) -> T:
        """Run one SDK operation with retries; `write` marks calls that change QuickBooks and
        `idempotent=False` those that must not be resent after QuickBooks may have acted
        (writes without a requestid: batch). Raises only our errors."""
        maybe_applied = False

        def attempt() -> T:
            nonlocal maybe_applied
            try:
                return self._once(subject, operation, write=write)
            except TransientError as error:
                if write and error.outcome_unknown:
                    maybe_applied = True
                    if not idempotent:
                        raise _Final(error) from error
                raise

        try:
            return call_with_retries(
                attempt,
                max_attempts=self._max_attempts,
                max_wait=max(self.throttle_wait, 1.0),
                sleep=self._time.sleep,
            )
        except _Final as final:
            raise final.error from None
        except TransientError as error:
            if maybe_applied and not error.outcome_unknown:
                raise TransientError(
                    f"{error} (an earlier attempt may have reached QuickBooks)",
                    retry_after=error.retry_after,
                    outcome_unknown=True,
                ) from error
            raise

    def _once(self, subject: Subject, operation: Callable[[QuickBooks], T], *, write: bool) -> T:
        qb, session = self._sdk()
        for refreshed in (False, True):
            self.calls += 1
            try:
                return operation(qb)
            except TRANSPORT_ERRORS as exc:
                raise TransientError(
                    f"{subject.what}: QuickBooks did not answer ({type(exc).__name__})"
                    + ("; the write may have been applied" if write else ""),
                    outcome_unknown=write,
                ) from exc
            except AuthorizationException as exc:
                answer = session.last_answer()
                if answer is not None and answer.status == 401 and not refreshed:
                    assert self._token is not None
                    qb, session = self._sdk(after=self._token)
                    continue
                raise self._translate(subject, exc, answer, write=write) from exc
            except QuickbooksException as exc:
                raise self._translate(subject, exc, session.last_answer(), write=write) from exc
            except TypeError as exc:
                # python-quickbooks crashes on a Fault Error without a code; the answer tells
                answer = session.last_answer()
                if answer is None or (answer.status < 300 and "Fault" not in answer.text):
                    raise
                raise self._translate(subject, exc, answer, write=write) from exc
        raise AssertionError("unreachable")

    def _translate(
        self, subject: Subject, exc: Exception, answer: Answer | None, *, write: bool
    ) -> MilestoneSyncError:
        error = describe(exc, answer)
        if error.status == 401:
            return ConfigError(
                f"{subject.what}: QuickBooks refused the access token even after a refresh "
                f"({error.describe()}): {RECONNECT}"
            )
        if is_throttle(error):
            return TransientError(
                f"{subject.what}: QuickBooks throttled the request ({error.describe()})",
                retry_after=self.throttle_wait,
            )
        translated = translate(error, subject)
        if isinstance(translated, TransientError) and write and (error.status or 500) >= 500:
            # a server error may come after the write was applied
            return TransientError(str(translated), outcome_unknown=True)
        return translated


def describe(exc: Exception, answer: Answer | None) -> QBOError:
    """One QBOError from the SDK's exception and the HTTP answer behind it."""
    if answer is not None and (answer.status >= 300 or "Fault" in answer.text):
        parsed = parse_error_body(answer.status, answer.text, answer.intuit_tid)
        if parsed.code is not None or not isinstance(exc, QuickbooksException):
            return parsed
        code = _sdk_code(exc)
        return QBOError(
            answer.status, code, parsed.message, parsed.detail, parsed.element, answer.intuit_tid
        )
    if isinstance(exc, QuickbooksException):
        return QBOError(
            status=answer.status if answer else None,
            code=_sdk_code(exc),
            message=str(exc.message),
            detail=str(exc.detail or ""),
        )
    return QBOError(answer.status if answer else None, None, str(exc))


def _sdk_code(exc: QuickbooksException) -> str | None:
    code = exc.error_code
    if code in (None, "", 0, 10000):  # 10000: the SDK's "could not read the body"
        return None
    return str(code)
