"""QuickBooks Online's webhook deliveries: `intuit-signature` = base64(HMAC-SHA256(verifier token,
raw body)), compared in constant time; both payloads Intuit sends, one inbox entry per entity
change of our company (realm).

- Legacy: `{"eventNotifications": [{"realmId", "dataChangeEvent": {"entities": [{"name", "id",
  "operation", "lastUpdated"}]}}]}`.
- CloudEvents (mandatory since 2026): a JSON array of `{"specversion": "1.0", "id", "source",
  "type": "qbo.invoice.updated.v1", "time", "intuitentityid", "intuitaccountid": <realm>,
  "data"}`, possibly mixing realms.

Ids only: the core fetches the entity (or reads the CDC feed) afterwards."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from adapters.signing import BadSignature
from adapters.web.webhooks import MAX_KEY, MAX_TOPIC, Accepted, BadPayload, dedupe_key, header

SIGNATURE_HEADER = "intuit-signature"

# the entities Intuit's webhooks cover, by the lowercase name CloudEvents types use
ENTITIES = {
    name.lower(): name
    for name in [
        "Account",
        "Bill",
        "BillPayment",
        "Budget",
        "Class",
        "CreditMemo",
        "Currency",
        "Customer",
        "Department",
        "Deposit",
        "Employee",
        "Estimate",
        "Invoice",
        "Item",
        "JournalCode",
        "JournalEntry",
        "Payment",
        "PaymentMethod",
        "Preferences",
        "Purchase",
        "PurchaseOrder",
        "RefundReceipt",
        "SalesReceipt",
        "TaxAgency",
        "Term",
        "TimeActivity",
        "Transfer",
        "Vendor",
        "VendorCredit",
    ]
}
# CloudEvents verbs -> the legacy operation names, so both formats give one topic
OPERATIONS = {
    "created": "Create",
    "updated": "Update",
    "deleted": "Delete",
    "merged": "Merge",
    "voided": "Void",
    "emailed": "Emailed",
}
_TYPE = re.compile(r"qbo\.([a-z]+)\.([a-z]+)\.v[0-9]+")


def _text(data: Mapping[str, Any], name: str, where: str) -> str:
    """A required id-like field; Intuit sends strings, numbers are tolerated."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise BadPayload(f"{where}{name} is missing or not a string")
    text = str(value)
    if len(text) > MAX_KEY:
        raise BadPayload(f"{where}{name} is over {MAX_KEY} characters")
    return text


def _topic(entity: str, operation: str, where: str) -> str:
    topic = f"{entity}.{operation}"
    if len(topic) > MAX_TOPIC:
        raise BadPayload(f"{where}: {topic[:80]!r} is over {MAX_TOPIC} characters")
    return topic


def _compact(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


class QuickBooksReceiver:
    """One company's (realm's) deliveries: topic like `Invoice.Update`, resource = the entity
    id. Dedupe key: realm, entity, id, operation and lastUpdated (legacy), or realm and the
    CloudEvent id (`<realm>:ce:<id>`). Events of other realms are ignored."""

    def __init__(self, verifier_token: str, realm_id: str) -> None:
        if not verifier_token.strip():
            raise ValueError("the QuickBooks webhook verifier token is empty")
        if not str(realm_id).strip():
            raise ValueError("the QuickBooks realm (company) id is empty")
        self._token = verifier_token.encode()
        self.realm_id = str(realm_id).strip()

    def __repr__(self) -> str:
        return f"QuickBooksReceiver(realm_id={self.realm_id!r})"

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        self._verify(header(headers, SIGNATURE_HEADER), body)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BadPayload(f"the body is not JSON: {exc}") from None
        if isinstance(data, list):
            return list(self._cloud_events(data))
        if isinstance(data, dict) and "eventNotifications" in data:
            return list(self._legacy(data["eventNotifications"]))
        raise BadPayload(
            "the body is neither a CloudEvents array nor an object with eventNotifications"
        )

    def _verify(self, signature: str | None, body: bytes) -> None:
        if not signature:
            raise BadSignature("the intuit-signature header is missing")
        expected = base64.b64encode(hmac.new(self._token, body, hashlib.sha256).digest())
        # python-quickbooks compares with ==, which leaks the match length through timing
        if not hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace")):
            raise BadSignature("the signature does not match the body")

    def _legacy(self, notifications: object) -> Iterator[Accepted]:
        if not isinstance(notifications, list):
            raise BadPayload("eventNotifications is not a list")
        for n, notification in enumerate(notifications):
            where = f"eventNotifications[{n}]"
            if not isinstance(notification, dict):
                raise BadPayload(f"{where} is not an object")
            realm = _text(notification, "realmId", f"{where}.")
            if realm != self.realm_id:
                continue  # another company connected to the same app
            change = notification.get("dataChangeEvent")
            entities = change.get("entities") if isinstance(change, dict) else None
            if not isinstance(entities, list):
                raise BadPayload(f"{where}.dataChangeEvent.entities is missing or not a list")
            for e, entity in enumerate(entities):
                at = f"{where}.dataChangeEvent.entities[{e}]"
                if not isinstance(entity, dict):
                    raise BadPayload(f"{at} is not an object")
                name = _text(entity, "name", f"{at}.")
                entity_id = _text(entity, "id", f"{at}.")
                operation = _text(entity, "operation", f"{at}.")
                updated = _text(entity, "lastUpdated", f"{at}.")
                yield Accepted(
                    topic=_topic(name, operation, at),
                    resource=entity_id,
                    dedupe_key=dedupe_key(realm, name, entity_id, operation, updated),
                    body=_compact({"realmId": realm, **entity}),
                )

    def _cloud_events(self, events: list[Any]) -> Iterator[Accepted]:
        for n, event in enumerate(events):
            where = f"[{n}]"
            if not isinstance(event, dict):
                raise BadPayload(f"{where} is not an object (a CloudEvent)")
            realm = _text(event, "intuitaccountid", f"{where}.")
            if realm != self.realm_id:
                continue  # a batch may mix the companies connected to the app
            if event.get("specversion") != "1.0":
                raise BadPayload(f"{where}.specversion is {event.get('specversion')!r}, not '1.0'")
            event_id = _text(event, "id", f"{where}.")
            _text(event, "source", f"{where}.")
            kind = _text(event, "type", f"{where}.")
            matched = _TYPE.fullmatch(kind)
            if matched is None:
                raise BadPayload(f"{where}.type {kind!r} is not qbo.<entity>.<operation>.v<n>")
            entity, verb = matched.groups()
            name = ENTITIES.get(entity, entity[:1].upper() + entity[1:])
            operation = OPERATIONS.get(verb, verb[:1].upper() + verb[1:])
            yield Accepted(
                topic=_topic(name, operation, f"{where}.type"),
                resource=_text(event, "intuitentityid", f"{where}."),
                dedupe_key=dedupe_key(realm, "ce", event_id),
                body=_compact(event),
            )
