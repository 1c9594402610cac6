"""Close-checklist error responses and malformed payloads mapped to our errors, in one table
(STYLE rule 4): 401/403 -> ConfigError, 429/5xx -> TransientError, 404 -> CloseChecklistNotFound,
other 4xx -> RejectedError with the server's message."""

from __future__ import annotations

from typing import Any

import requests

from adapters.http import parse_retry_after
from connector.domain.errors import ConfigError, RejectedError, TransientError

DEFAULT_TOKEN_ENV = "CLOSE_CHECKLIST_TOKEN"


class CloseChecklistNotFound(RejectedError):
    """404: the close or client does not exist (or was deleted)."""


class MalformedRecord(RejectedError):
    """A close or client the server sent does not follow the contract; skip it and say why."""


class MalformedEvent(RejectedError):
    """A pushed event's body is not a contract event (answer 400; the sender should not retry)."""


def error_message(response: requests.Response) -> tuple[str | None, str]:
    """(code, message) from the contract's `{"error":{"code","message"}}`, or the raw text."""
    try:
        body: Any = response.json()
    except ValueError:
        return None, (response.text or response.reason or "").strip()[:300]
    inner = body.get("error") if isinstance(body, dict) else None
    if isinstance(inner, dict):
        code = inner.get("code")
        return (str(code) if code is not None else None), str(inner.get("message") or "")
    return None, str(body)[:300]


def raise_for(response: requests.Response, what: str, token_env: str = DEFAULT_TOKEN_ENV) -> None:
    """Raise the error a caller should react to; return quietly on 2xx."""
    status = response.status_code
    if status < 300:
        return
    code, message = error_message(response)
    detail = message or response.reason or "no message"
    if status in (401, 403):
        raise ConfigError(
            f"the close-checklist token in {token_env} was refused ({status}: {detail}) on "
            f"{what}: create a new token in the close-checklist system and update {token_env}"
        )
    if status == 404:
        raise CloseChecklistNotFound(f"{what}: not found ({detail})", code=code)
    if status == 429:
        raise TransientError(
            f"close-checklist rate limit on {what}: {detail}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        raise TransientError(
            f"the close-checklist server answered {status} on {what}: {detail}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise RejectedError(
        f"the close-checklist server rejected {what} ({status} {code or ''}): {detail}",
        code=code,
    )
