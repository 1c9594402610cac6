"""The close-checklist contract over `requests`: bearer token, gzip, explicit timeouts, cursor
paging, retries (tenacity) honouring `Retry-After`; and verification of the signed webhook."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote

import requests

from adapters.http import call_with_retries
from adapters.keeper.errors import (
    DEFAULT_TOKEN_ENV,
    CloseChecklistNotFound,
    MalformedEvent,
    raise_for,
)
from adapters.observability import count_calls
from adapters.signing import verify_timestamped
from connector.domain.errors import TransientError

PAGE_SIZE = 100  # the contract's maximum `limit`
SIGNATURE_HEADER = "X-Close-Signature"
EVENT_TYPES = ("close.status_changed", "task.completed")


def format_time(at: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, as the contract writes times."""
    if at.tzinfo is None:
        raise ValueError("close-checklist times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CloseChecklistClient:
    """One firm's close-checklist API (one bearer token)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 20.0),
        max_attempts: int = 5,
        max_wait: float = 60.0,
        max_total: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        token_env: str = DEFAULT_TOKEN_ENV,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = count_calls(session or requests.Session(), "keeper")
        self._session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
            }
        )
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._max_total = max_total
        self._sleep = sleep
        self._token_env = token_env
        self.requests_sent = 0

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()

    # ------------------------------------------------------------------ transport

    def _get(self, path: str, what: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{self.base_url}{path}"

        def attempt() -> Any:
            self.requests_sent += 1
            try:
                response = self._session.get(url, params=params, timeout=self._timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(
                    f"the close-checklist server is unreachable on {what}: {exc}"
                ) from exc
            raise_for(response, what, self._token_env)
            try:
                return response.json()
            except ValueError as exc:
                # a proxy's HTML error page with a 200: retrying may reach the real server
                raise TransientError(f"{what}: the answer is not JSON ({exc})") from exc

        return call_with_retries(
            attempt,
            max_attempts=self._max_attempts,
            max_wait=self._max_wait,
            max_total=self._max_total,
            sleep=self._sleep,
        )

    def _pages(
        self, path: str, what: str, params: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every row of a paged list, following `next_cursor` with the same filters."""
        query = {**(params or {}), "limit": str(PAGE_SIZE)}
        while True:
            body = self._get(path, what, query)
            rows = body.get("data") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise TransientError(f"{what}: the answer has no `data` list")
            yield from rows
            cursor = body.get("next_cursor")
            if not cursor:
                return
            query = {**query, "cursor": str(cursor)}

    # ------------------------------------------------------------------ resources

    def list_clients(self) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/clients", "list clients")

    def get_client(self, client_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._get(
                f"/v1/clients/{_segment(client_id)}", f"client {client_id}"
            )
        except CloseChecklistNotFound:
            return None
        return found

    def close_statuses(self) -> list[str]:
        """The firm's close statuses in progress order."""
        body = self._get("/v1/close-statuses", "list close statuses")
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise TransientError("list close statuses: the answer has no `data` list")
        return [str(row["name"]) for row in rows if isinstance(row, dict) and row.get("name")]

    def list_closes(
        self, *, updated_since: datetime | None = None, period: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Close summaries ordered by (updated_at, id), optionally changed since a time."""
        params: dict[str, str] = {}
        if updated_since is not None:
            params["updated_since"] = format_time(updated_since)
        if period is not None:
            params["period"] = period
        what = "list closes" + (f" updated since {params['updated_since']}" if params else "")
        return self._pages("/v1/closes", what, params)

    def get_close(self, close_id: str) -> dict[str, Any] | None:
        """One close with its sections and tasks; None when it does not exist."""
        try:
            found: dict[str, Any] = self._get(
                f"/v1/closes/{_segment(close_id)}", f"close {close_id}"
            )
        except CloseChecklistNotFound:
            return None
        return found


def _segment(value: str) -> str:
    return quote(value, safe="")


# --------------------------------------------------------------------------- webhooks


class VerifiedEvent(NamedTuple):
    """What the inbox needs from a verified push."""

    topic: str  # the event type, e.g. 'close.status_changed'
    resource: str  # the close id
    dedupe_key: str  # the event id


def parse_event(body: bytes | str) -> VerifiedEvent:
    """The event a (verified) body describes; MalformedEvent names the field that is wrong."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"the close-checklist event is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise MalformedEvent("the close-checklist event is not a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) < 5:
        raise MalformedEvent("the close-checklist event's `id` must be a string like 'evt_...'")
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise MalformedEvent(
            f"the close-checklist event {event_id} has `type` {kind!r}; "
            f"expected one of {', '.join(EVENT_TYPES)}"
        )
    created = event.get("created_at")
    try:
        if not isinstance(created, str) or datetime.fromisoformat(created).tzinfo is None:
            raise ValueError
    except ValueError:
        raise MalformedEvent(
            f"the close-checklist event {event_id} has `created_at` {created!r}; "
            "expected an RFC 3339 time with a zone"
        ) from None
    data = event.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent(f"the close-checklist event {event_id} has no `data` object")
    for name in ("close_id", "client_id", "period", "status"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(
                f"the close-checklist event {event_id} has `data.{name}` {value!r}; "
                "expected a non-empty string"
            )
    return VerifiedEvent(topic=kind, resource=data["close_id"], dedupe_key=event_id)


def verify_webhook(secret: str, header: str | None, body: bytes, now: datetime) -> VerifiedEvent:
    """Check `X-Close-Signature` (adapters.signing's timestamped scheme, 5-minute tolerance) and
    parse the event. Raises BadSignature (answer 401) or MalformedEvent (answer 400)."""
    verify_timestamped(secret, header, body, now)
    return parse_event(body)
