"""The close-checklist webhook receiver for the web layer (see docs/close-checklist-api.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from adapters.keeper.client import SIGNATURE_HEADER, verify_webhook
from adapters.keeper.errors import MalformedEvent
from adapters.web.webhooks import Accepted, BadPayload


class CloseChecklistReceiver:
    """The web layer's receiver for this source: a verified delivery becomes an inbox entry
    (topic = event type, resource = close id, dedupe key = event id). Raises BadSignature
    (answered 401) or BadPayload (answered 400, naming the wrong field)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the close-checklist webhook secret must be at least 16 characters")
        self._secret = secret

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        header = headers.get(SIGNATURE_HEADER) or headers.get(SIGNATURE_HEADER.lower())
        try:
            event = verify_webhook(self._secret, header, body, now)
        except MalformedEvent as exc:
            raise BadPayload(str(exc)) from None
        return [
            Accepted(
                topic=event.topic,
                resource=event.resource,
                dedupe_key=event.dedupe_key,
                body=body.decode(),
            )
        ]
