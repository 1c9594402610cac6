"""Xero's webhook deliveries: `x-xero-signature` = base64(HMAC-SHA256(webhook key, raw body)),
compared in constant time; one inbox entry per event of our organisation (tenant); signed
intent-to-receive probes (no events) answered 200, badly signed ones 401, both with no body, as
Xero asks of every answer.

The body is checked against Xero's `xero-webhooks.yaml` (WebhookEvent) when the shared specs are
present, with two of the file's own mistakes set aside: `eventDateUtc` is not RFC 3339 (Xero sends
no zone, as the file's examples show), so formats are not enforced; and the probe Xero documents
carries sequence numbers 0, below the file's minimum of 1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.responses import JSONResponse, Response

from adapters.emulation.specs import spec_path
from adapters.signing import BadSignature
from adapters.web.webhooks import (
    MAX_KEY,
    MAX_TOPIC,
    Accepted,
    BadPayload,
    Outcome,
    dedupe_key,
    header,
)

SIGNATURE_HEADER = "x-xero-signature"
SPEC = "xero/xero-webhooks.yaml"
_SPEC_URI = "urn:xero-webhooks"
_PROBE_SEQUENCES = {"firstEventSequence", "lastEventSequence"}
_FIELDS = ("resourceId", "eventDateUtc", "eventType", "eventCategory")


class _SpecCheck:
    """The WebhookEvent schema of Xero's OpenAPI file, as a JSON Schema 2020-12 validator."""

    def __init__(self, path: Path) -> None:
        document = yaml.safe_load(path.read_text())
        registry: Registry[Any] = Registry().with_resource(
            _SPEC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self._validator = Draft202012Validator(
            {"$ref": f"{_SPEC_URI}#/components/schemas/WebhookEvent"}, registry=registry
        )

    def problem(self, data: object) -> str | None:
        probe = isinstance(data, dict) and data.get("events") == []
        errors = [
            error
            for error in self._validator.iter_errors(data)
            if not (
                probe
                and error.validator == "minimum"
                and list(error.absolute_path) in ([name] for name in _PROBE_SEQUENCES)
                and error.instance == 0
            )
        ]
        if not errors:
            return None
        error = best_match(errors)
        return f"{_path(error.absolute_path)}: {error.message}"


def _path(parts: Sequence[str | int] | Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(body)"


class XeroReceiver:
    """One organisation's deliveries: topic like `INVOICE.UPDATE`, resource = resourceId, dedupe
    key from resourceId, eventDateUtc, eventType and eventCategory. Events for other tenants
    (other organisations on the same app, the app's own subscription events) are ignored.
    `spec` is the OpenAPI file to check bodies against: found in the shared specs by default,
    None to skip the check."""

    def __init__(
        self,
        webhook_key: str,
        tenant_id: str,
        *,
        spec: Path | Literal["shared"] | None = "shared",
    ) -> None:
        if not webhook_key.strip():
            raise ValueError("the Xero webhook key is empty")
        if not tenant_id.strip():
            raise ValueError("the Xero tenant (organisation) id is empty")
        self._key = webhook_key.encode()
        self.tenant_id = tenant_id.strip()
        path = spec_path(SPEC) if spec == "shared" else spec
        self._spec = _SpecCheck(path) if path is not None else None

    def __repr__(self) -> str:
        return f"XeroReceiver(tenant_id={self.tenant_id!r}, spec={self._spec is not None})"

    @property
    def checks_spec(self) -> bool:
        return self._spec is not None

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        self._verify(header(headers, SIGNATURE_HEADER), body)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BadPayload(f"the body is not JSON: {exc}") from None
        if self._spec is not None and (problem := self._spec.problem(data)):
            raise BadPayload(problem)
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise BadPayload("events is missing or not a list")
        # an empty list is an intent-to-receive probe: nothing to keep, 200 says we can verify
        return list(self._events(data["events"]))

    def answer(self, outcome: Outcome) -> Response:
        if outcome.status == 400:
            return JSONResponse({"error": outcome.error}, 400)  # Xero retries it regardless
        return Response(status_code=outcome.status)  # no body, no cookies, as Xero asks

    def _verify(self, signature: str | None, body: bytes) -> None:
        if not signature:
            raise BadSignature("the x-xero-signature header is missing")
        expected = base64.b64encode(hmac.new(self._key, body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace")):
            raise BadSignature("the signature does not match the body")

    def _events(self, events: list[Any]) -> Iterator[Accepted]:
        for n, event in enumerate(events):
            where = f"events[{n}]"
            if not isinstance(event, dict):
                raise BadPayload(f"{where} is not an object")
            tenant = event.get("tenantId")
            if not isinstance(tenant, str) or not tenant:
                raise BadPayload(f"{where}.tenantId is missing or not a string")
            if tenant.lower() != self.tenant_id.lower():
                continue
            values = {}
            for name in _FIELDS:
                value = event.get(name)
                if not isinstance(value, str) or not value or len(value) > MAX_KEY:
                    raise BadPayload(f"{where}.{name} is missing or not a string")
                values[name] = value
            topic = f"{values['eventCategory']}.{values['eventType']}"
            if len(topic) > MAX_TOPIC:
                raise BadPayload(f"{where}.eventCategory/eventType is over {MAX_TOPIC} characters")
            yield Accepted(
                topic=topic,
                resource=values["resourceId"],
                dedupe_key=dedupe_key(*(values[name] for name in _FIELDS)),
                body=json.dumps(event, separators=(",", ":")),
            )
