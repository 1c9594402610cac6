"""Karbon's webhook deliveries: `Signature` = hex HMAC-SHA256 of the raw body with the signing
key we set on the subscription; thin JSON naming the changed record (reference 1.6).

Both spellings seen in the wild are accepted: `TimeStamp`/`Timestamp`, `Work`/`WorkItem`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from adapters.signing import verify_body
from adapters.web.webhooks import Accepted, BadPayload

_TYPES = {
    "work": "Work",
    "workitem": "Work",
    "contact": "Contact",
    "organization": "Organization",
    "clientgroup": "ClientGroup",
}


class KarbonReceiver:
    def __init__(self, signing_key: str) -> None:
        if len(signing_key) < 16:
            raise ValueError("Karbon signing keys are at least 16 characters")
        self._key = signing_key

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        verify_body(self._key, headers.get("Signature") or headers.get("signature"), body)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BadPayload(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadPayload("the body is not a JSON object")
        key = data.get("ResourcePermaKey")
        if not isinstance(key, str) or not key:
            raise BadPayload("ResourcePermaKey is missing")
        raw_type = data.get("ResourceType")
        topic = _TYPES.get(str(raw_type or "").casefold())
        if topic is None:
            raise BadPayload(f"ResourceType {raw_type!r} is not Work, WorkItem or Contact")
        stamp = data.get("TimeStamp") or data.get("Timestamp")
        action = data.get("ActionType") or ""
        # Karbon retries a delivery with the same body: (resource, timestamp) names it
        dedupe = (
            f"{topic}:{key}:{action}:{stamp}"
            if stamp
            else f"{topic}:{key}:{hashlib.sha256(body).hexdigest()[:32]}"
        )
        return [Accepted(topic=topic, resource=key, dedupe_key=dedupe, body=body.decode())]
