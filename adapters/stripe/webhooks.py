"""Stripe's webhook deliveries: `Stripe-Signature` checked over the raw bytes with the stripe SDK,
the signed time against our clock; one inbox entry per event id, naming the object it is about.

Events are doorbells: the core re-fetches the object, so duplicated and out-of-order deliveries
are harmless and the payload's copy of the object is never trusted."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import stripe

from adapters.signing import DEFAULT_TOLERANCE_SECONDS, BadSignature
from adapters.web.webhooks import MAX_KEY, MAX_TOPIC, Accepted, BadPayload, header

SIGNATURE_HEADER = "Stripe-Signature"


def _signed_at(value: str) -> int:
    """The `t=` of a header the SDK has already verified (so it is there and numeric)."""
    for item in value.split(","):
        name, _, stamp = item.strip().partition("=")
        if name == "t":
            return int(stamp)
    raise BadSignature("the Stripe-Signature header has no t=<unix seconds>")


def _field(data: Mapping[str, Any], name: str, where: str = "") -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadPayload(f"{where}{name} is missing or not a string")
    return value


class StripeReceiver:
    """One endpoint's deliveries (its `whsec_...` signing secret): topic = event type,
    resource = the object's id (pi_, ch_, re_, dp_, po_, cs_, seti_ ...), dedupe key = event id.
    Raises BadSignature (forged, tampered, unsigned, or signed outside the tolerance) or
    BadPayload (a signed body that is not a Stripe event, naming the field)."""

    def __init__(
        self, signing_secret: str, *, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    ) -> None:
        if not signing_secret.strip():
            raise ValueError("the Stripe webhook signing secret is empty")
        self._secret = signing_secret
        self._tolerance = tolerance_seconds

    def __repr__(self) -> str:
        return f"StripeReceiver(tolerance_seconds={self._tolerance})"

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        signature = header(headers, SIGNATURE_HEADER)
        try:
            # tolerance=None: the SDK would compare with the wall clock, one-sidedly; the
            # receiver's clock decides instead (below), as every receiver here does
            stripe.WebhookSignature.verify_header(body, signature, self._secret, tolerance=None)
        except stripe.SignatureVerificationError as exc:
            raise BadSignature(exc.user_message or "the signature does not match") from None
        except UnicodeDecodeError:
            raise BadSignature("the body is not UTF-8, so Stripe did not sign it") from None
        skew = now.timestamp() - _signed_at(signature or "")  # verified: it is there
        if abs(skew) > self._tolerance:
            raise BadSignature(
                f"the signature is {int(abs(skew))} s away from now (tolerance "
                f"{self._tolerance} s): a replay, or a clock out of sync"
            )
        return [self._event(body)]

    def _event(self, body: bytes) -> Accepted:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BadPayload(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadPayload("the body is not a JSON object (an event)")
        kind = data.get("object")
        if kind == "v2.core.event":
            raise BadPayload(
                "object: a thin (v2) event notification; point a snapshot (v1) event "
                "destination at this endpoint"
            )
        if kind != "event":
            raise BadPayload(f"object is {kind!r}, not 'event'")
        event_id = _field(data, "id")
        if not event_id.startswith("evt_") or len(event_id) > MAX_KEY:
            raise BadPayload(f"id {event_id[:80]!r} is not a Stripe event id (evt_...)")
        topic = _field(data, "type")
        if len(topic) > MAX_TOPIC:
            raise BadPayload(f"type {topic[:80]!r} is over {MAX_TOPIC} characters")
        inner = data.get("data")
        if not isinstance(inner, dict) or not isinstance(inner.get("object"), dict):
            raise BadPayload("data.object is missing or not an object")
        resource = _field(inner["object"], "id", "data.object.")
        if len(resource) > MAX_KEY:
            raise BadPayload(f"data.object.id is over {MAX_KEY} characters")
        return Accepted(topic=topic, resource=resource, dedupe_key=event_id, body=body.decode())
