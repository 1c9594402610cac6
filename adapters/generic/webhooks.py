"""The generic phase webhook: header `X-Milestone-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>">` with the shared secret; 5-minute tolerance; replays dedupe by `event_id`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from adapters.generic.events import BadEvent, parse_event_body
from adapters.signing import DEFAULT_TOLERANCE_SECONDS, verify_timestamped
from adapters.web.webhooks import Accepted, BadPayload

SIGNATURE_HEADER = "X-Milestone-Signature"


class PhaseEventReceiver:
    def __init__(self, secret: str, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS) -> None:
        self._secret = secret
        self._tolerance = tolerance_seconds

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        verify_timestamped(self._secret, headers.get(SIGNATURE_HEADER), body, now, self._tolerance)
        try:
            event = parse_event_body(body)
        except BadEvent as exc:
            raise BadPayload(str(exc)) from None
        return [
            Accepted(
                topic=event.type,
                resource=event.work_item.key,
                dedupe_key=event.event_id,
                body=body.decode(),
            )
        ]
