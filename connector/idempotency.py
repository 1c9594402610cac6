"""Deterministic idempotency keys from domain ids, fitted to each vendor's length limit.

Shape: `kind:tenant:domain-id:revision`. A key longer than the vendor allows keeps a readable
prefix and ends with a SHA-256 digest of the whole, so distinct inputs never collide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import IntEnum

from connector.domain.ids import IdempotencyKey


class KeyLimit(IntEnum):
    QUICKBOOKS = 50  # requestid
    XERO = 128  # Idempotency-Key header
    STRIPE = 255  # Idempotency-Key header
    STORE = 255


_DIGEST_CHARS = 32


def make_key(kind: str, tenant: str, domain_id: str, revision: int | str = 0) -> IdempotencyKey:
    """The canonical key for one intended write (stored in the intent log)."""
    for part in (kind, tenant, domain_id):
        if not part:
            raise ValueError("idempotency key parts must not be empty")
    return fit(f"{kind}:{tenant}:{domain_id}:{revision}", KeyLimit.STORE)


def fit(key: str, limit: int) -> IdempotencyKey:
    """The key itself when it fits; else a prefix and a digest of the whole key, `limit` long."""
    if limit <= _DIGEST_CHARS + 1:
        raise ValueError(f"limit {limit} is too short for a digest")
    if len(key) <= limit:
        return IdempotencyKey(key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:_DIGEST_CHARS]
    prefix = key[: limit - _DIGEST_CHARS - 1]
    return IdempotencyKey(f"{prefix}~{digest}")


def payload_hash(payload: Mapping[str, object]) -> str:
    """Stable hash of a write's payload: the same key must never carry a different payload."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
