"""Karbon's error responses mapped to our errors, in one table (STYLE rule 4).

Karbon answers errors as `{"error":{"code":"4004","message":...}}` and sometimes
`{"statusCode":"401","message":...}` (see ../shared/reference/practice-management-apis.md 1.1)."""

from __future__ import annotations

from typing import Any

import requests

from adapters.http import parse_retry_after
from connector.domain.errors import ConfigError, RejectedError, TransientError


class KarbonNotFound(Exception):
    """404: the record does not exist, or is Hidden/Private to this API application."""


def karbon_message(response: requests.Response) -> tuple[str | None, str]:
    """(code, message) from any of Karbon's error body shapes."""
    try:
        body: Any = response.json()
    except ValueError:
        return None, (response.text or response.reason or "").strip()[:300]
    if isinstance(body, dict):
        error = body.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else body
        code = inner.get("code") or inner.get("statusCode")
        message = inner.get("message") or ""
        details = inner.get("details")
        if isinstance(details, dict) and details.get("target"):
            message = f"{message} ({details.get('target')}: {details.get('message', '')})"
        return (str(code) if code is not None else None), str(message)
    return None, str(body)[:300]


def raise_for(response: requests.Response, what: str, credentials_hint: str) -> None:
    """Raise the error a caller should react to; return quietly on 2xx."""
    status = response.status_code
    if status < 300:
        return
    code, message = karbon_message(response)
    if status == 404:
        raise KarbonNotFound(f"{what}: {message or 'not found'}")
    if status in (401, 403):
        raise ConfigError(
            f"Karbon refused the credentials ({status} {message or 'unauthorised'}) on {what}: "
            f"{credentials_hint}"
        )
    if status == 429:
        raise TransientError(
            f"Karbon rate limit on {what}: {message}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        raise TransientError(
            f"Karbon answered {status} on {what}: {message or response.reason}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise RejectedError(f"Karbon rejected {what} ({status} {code or ''}): {message}", code=code)
