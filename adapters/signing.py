"""Signed pushes: HMAC-SHA256 signatures on webhook bodies, checked in constant time.

Two schemes are in use:
- `timestamped`: header `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, for our own
  generic phase webhook and the close-checklist contract. The timestamp is signed, so a captured
  delivery cannot be replayed outside the tolerance window (and inside it, the event id dedupes).
- `body_only`: hex HMAC-SHA256 of the raw body, as Karbon's `Signature` header (no timestamp).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

DEFAULT_TOLERANCE_SECONDS = 300


class BadSignature(Exception):
    """The push is not from who it claims: answer 401 and do nothing with it."""


def _hex(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def sign_body(secret: str, body: bytes) -> str:
    return _hex(secret, body)


def verify_body(secret: str, signature: str | None, body: bytes) -> None:
    if not signature:
        raise BadSignature("the Signature header is missing")
    if not hmac.compare_digest(_hex(secret, body), signature.strip().lower()):
        raise BadSignature("the signature does not match the body")


def sign_timestamped(secret: str, body: bytes, at: datetime) -> str:
    stamp = int(at.timestamp())
    return f"t={stamp},v1={_hex(secret, str(stamp).encode() + b'.' + body)}"


def verify_timestamped(
    secret: str,
    header: str | None,
    body: bytes,
    now: datetime,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> datetime:
    """Check a `t=...,v1=...` header; returns the signed time. Raises BadSignature."""
    if not header:
        raise BadSignature("the signature header is missing")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        stamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise BadSignature("the signature header has no valid t=<unix seconds>") from None
    expected = _hex(secret, str(stamp).encode() + b"." + body)
    if not any(hmac.compare_digest(expected, given.lower()) for given in parts.get("v1", [])):
        raise BadSignature("the signature does not match the body")
    skew = abs(now.timestamp() - stamp)
    if skew > tolerance_seconds:
        raise BadSignature(
            f"the signature is {int(skew)} s away from now (tolerance {tolerance_seconds} s): "
            "a replay, or a clock out of sync"
        )
    return datetime.fromtimestamp(stamp, tz=now.tzinfo)
