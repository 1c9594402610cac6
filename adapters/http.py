"""Shared pieces of the requests-based vendor clients: a client-side request budget, parsing of
`Retry-After`, and one tenacity retry policy (honour the server's wait, else exponential backoff
with jitter; cap attempts and total time)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from connector.domain.errors import TransientError

T = TypeVar("T")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # float() also reads "nan" and "inf", which would mean "retry now" or "wait the cap"
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RequestBudget:
    """At most `per_minute` requests in any 60-second window (sliding), shared by threads.

    Vendors count per account (Karbon: 120/min); staying under the limit on our side avoids 429s
    rather than recovering from them."""

    def __init__(
        self,
        per_minute: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._monotonic = monotonic
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self.waited = 0.0  # total seconds spent waiting, for metrics and tests

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._monotonic()
                while self._sent and now - self._sent[0] >= 60.0:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return
                wait = 60.0 - (now - self._sent[0])
                self.waited += wait
            self._sleep(wait)


def _wait_for(max_wait: float) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(multiplier=0.5, max=max_wait)

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, max_wait)
        return float(backoff(state))

    return wait


def call_with_retries(
    call: Callable[[], T],
    *,
    max_attempts: int = 5,
    max_wait: float = 60.0,
    max_total: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying on TransientError; the last TransientError propagates."""
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(max_attempts) | stop_after_delay(max_total),
        wait=_wait_for(max_wait),
        sleep=sleep,
        reraise=True,
    )
    return retrying(call)
