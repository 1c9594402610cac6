"""stripe-python set up the way milestone-sync needs it: one `StripeClient` per firm (no
module-level key), the SDK's own retries off, explicit timeouts, and one retry loop of ours
(tenacity) that resends a write with the same Idempotency-Key so Stripe replays, not repeats it.

Pitfall 8 (../shared/reference/ledger-and-payment-apis.md): stripe 16.x speaks API version
2026-10-28.endive; objects are not dicts (`.get()` is gone), so we read them as `to_dict()`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import requests
import stripe

from adapters.emulation.clock import REAL_TIME, EmulatedTime
from adapters.http import call_with_retries
from adapters.observability import count_calls
from adapters.stripe.errors import translate
from connector.domain.errors import TransientError

T = TypeVar("T")
Obj = dict[str, Any]

PAGE = 100  # the largest page Stripe lists


def build_client(
    secret_key: str,
    *,
    base_url: str | None = None,
    timeout: tuple[float, float] = (5.0, 30.0),
) -> stripe.StripeClient:
    """A client for one Stripe account. `max_network_retries=0`: the SDK would retry with its
    own key handling inside one call; ours retry outside, capped, with the key we were given."""
    return stripe.StripeClient(
        secret_key,
        base_addresses={"api": base_url} if base_url else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(
            timeout=timeout, session=count_calls(requests.Session(), "stripe")
        ),
    )


def plain(obj: Any) -> Obj:
    """A StripeObject as plain nested dicts (the SDK's objects are not dicts since v15)."""
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected a Stripe object, got {type(obj).__name__}")


class StripeApi:
    """The calls the gateway makes, each retried and translated; results are plain dicts.

    A write that may have been applied (timeout, reset, 5xx, 409) is sent again with the same
    idempotency key up to `max_attempts` times; when the outcome is still unknown the last
    error says `outcome_unknown`, even if a later attempt failed in a way that alone would not
    (say, a 429): the first attempt may still have landed."""

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        max_attempts: int = 4,
        max_wait: float = 8.0,
        time: EmulatedTime = REAL_TIME,
    ) -> None:
        self.client = client
        self.v1 = client.v1
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._time = time
        self.calls = 0

    def __repr__(self) -> str:  # the client holds the secret key: never show it
        return "StripeApi()"

    # ------------------------------------------------------------------ the retry loop

    def run(self, call: Callable[[], T], what: str, *, write: bool) -> T:
        maybe_applied = False

        def attempt() -> T:
            nonlocal maybe_applied
            self.calls += 1
            try:
                return call()
            except stripe.CardError:
                raise  # a decline is an answer, not a failure: the caller reads it
            except Exception as exc:  # every SDK error goes through the table
                error = translate(exc, what, write=write)
                if isinstance(error, TransientError) and error.outcome_unknown:
                    maybe_applied = True
                raise error from exc

        try:
            return call_with_retries(
                attempt,
                max_attempts=self._max_attempts,
                max_wait=self._max_wait,
                max_total=max(60.0, self._max_wait * self._max_attempts * 2),
                sleep=self._time.sleep,
            )
        except TransientError as error:
            if maybe_applied and not error.outcome_unknown:
                raise TransientError(
                    f"{error}; an earlier attempt may have been applied",
                    retry_after=error.retry_after,
                    outcome_unknown=True,
                ) from error
            raise

    def read(self, call: Callable[[], Any], what: str) -> Obj:
        return plain(self.run(call, what, write=False))

    def write(self, call: Callable[[], Any], what: str) -> Obj:
        return plain(self.run(call, what, write=True))

    def list_all(self, lister: Callable[[], Any], what: str) -> list[Obj]:
        """Every object of a list (or search) call, page after page, newest first as Stripe
        lists them. A failure mid-way retries the whole listing (reads are free to repeat)."""

        def everything() -> list[Obj]:
            return [plain(item) for item in _pages(lister())]

        return self.run(everything, what, write=False)

    # ------------------------------------------------------------------ options

    @staticmethod
    def keyed(key: str) -> stripe.RequestOptions:
        return {"idempotency_key": key}


def _pages(first: Any) -> Iterator[Any]:
    yield from first.auto_paging_iter()


def expandable_id(value: Any) -> str | None:
    """The id of an expandable field: the string itself, or the expanded object's id."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    return None
