"""Stripe, QuickBooks and Xero webhooks over HTTP (starlette's TestClient) into a real inbox:
verified on the raw body (forged, stale, unsigned and tampered deliveries are 401 and leave no
trace), malformed signed bodies 400 naming the field, each event stored once, other companies'
events ignored, Xero's probes answered as it asks; the factory bootstrap calls; no secret in
logs."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
import stripe
import structlog
from quickbooks import QuickBooks
from quickbooks.objects.base import Ref
from quickbooks.objects.detailline import SalesItemLine, SalesItemLineDetail
from quickbooks.objects.invoice import Invoice as QboInvoice
from requests_oauthlib import OAuth2Session
from starlette.testclient import TestClient  # over httpx2, as starlette 1.x asks

from adapters.emulation.clock import EmulatedTime, VirtualTime
from adapters.emulation.specs import missing_reason, spec_path
from adapters.memory.clock import FrozenClock, SystemClock
from adapters.memory.store import MemoryStore
from adapters.quickbooks.emulator import QuickBooksEmulator
from adapters.quickbooks.webhooks import QuickBooksReceiver
from adapters.store.engine import Store, open_store
from adapters.stripe.emulator import StripeEmulator
from adapters.stripe.webhooks import StripeReceiver
from adapters.web.payment_receivers import payment_receivers
from adapters.web.webhooks import Receiver, create_app, webhook_routes
from adapters.xero.emulator import XeroEmulator
from adapters.xero.webhooks import SPEC, XeroReceiver
from connector.ports import Clock, StoredDelivery, UnitOfWorkFactory
from mappings.loader import load_config_text
from scheduler.jobs import WebServer
from scheduler.logging import configure_logging

FIRM = "smith-cpa"
# Long before the wall clock: a check against time.time() instead of the receiver's clock would
# refuse every delivery signed at this time.
NOW = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

STRIPE_SECRET = "whsec_test_5kq0Y3pXbN2vT8rLmW4cJ6dF"
QBO_TOKEN = "qbo-verifier-7f3e9a1c-4b2d-48e6-9c0a-2d5f8e1b7a63"
XERO_KEY = "xero-webhook-key-OSd0eLlVIY9ZhViEqlDUh4+6n6M+Lo+eDaEJheJ6OCC"
SECRETS = (STRIPE_SECRET, QBO_TOKEN, XERO_KEY)
REALM = "9130357296385746"
OTHER_REALM = "4620816365179422850"
TENANT = "aef86862-2015-4b6b-88bc-d89032cecc50"
OTHER_TENANT = "c2cc9b6e-9458-4c7d-93cc-f02b81b0594f"
XERO_SPEC_MISSING = spec_path(SPEC) is None


def body_of(data: object) -> bytes:
    return json.dumps(data).encode()


def stripe_headers(body: bytes, at: datetime = NOW, secret: str = STRIPE_SECRET) -> dict[str, str]:
    signature = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(at.timestamp())
    )
    return {"Stripe-Signature": signature, "Content-Type": "application/json"}


def base64_hmac(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def qbo_headers(body: bytes, token: str = QBO_TOKEN) -> dict[str, str]:
    return {"intuit-signature": base64_hmac(token, body), "Content-Type": "application/json"}


def xero_headers(body: bytes, key: str = XERO_KEY) -> dict[str, str]:
    return {"x-xero-signature": base64_hmac(key, body), "Content-Type": "application/json"}


def stored(uow: UnitOfWorkFactory) -> list[StoredDelivery]:
    with uow() as unit:
        return sorted(unit.inbox.recent(limit=500), key=lambda d: d.delivery.id)


def kept(uow: UnitOfWorkFactory) -> list[tuple[str, str, str]]:
    return [(d.delivery.source, d.delivery.topic, d.delivery.resource) for d in stored(uow)]


class Receiving:
    """One webhook app over a store with the three money-side receivers, and who was woken."""

    def __init__(self, uow: UnitOfWorkFactory, clock: FrozenClock) -> None:
        self.uow = uow
        self.clock = clock
        self.woken: list[str] = []
        receivers = {
            "stripe": StripeReceiver(STRIPE_SECRET),
            "quickbooks": QuickBooksReceiver(QBO_TOKEN, REALM),
            "xero": XeroReceiver(XERO_KEY, TENANT),
        }
        routes = webhook_routes(receivers, uow, clock, on_delivery=self.woken.append)
        self.client = TestClient(create_app(routes))

    def post(self, source: str, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(f"/webhooks/{source}", content=body, headers=headers)

    def stripe(self, data: object, at: datetime | None = None) -> Any:
        body = body_of(data)
        return self.post("stripe", body, stripe_headers(body, at or self.clock.now()))

    def quickbooks(self, data: object) -> Any:
        body = body_of(data)
        return self.post("quickbooks", body, qbo_headers(body))

    def xero(self, data: object) -> Any:
        body = body_of(data)
        return self.post("xero", body, xero_headers(body))


@pytest.fixture
def sql_store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def on_sql(sql_store: Store) -> Receiving:
    return Receiving(sql_store.uow_factory(FIRM), FrozenClock(NOW))


@pytest.fixture
def on_memory() -> Receiving:
    store = MemoryStore()
    return Receiving(lambda: store.unit_of_work(FIRM), FrozenClock(NOW))


# --------------------------------------------------------------------------- Stripe


def stripe_event(
    event_id: str = "evt_1PqR2sT3uV4wX5yZ",
    kind: str = "payment_intent.succeeded",
    object_id: str = "pi_3PqR2sT3uV4wX5yZ0a1b2c3d",
    **object_fields: Any,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(NOW.timestamp()) - 2,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {
            "object": {
                "id": object_id,
                "object": kind.rsplit(".", 1)[0].split(".")[-1],
                **object_fields,
            }
        },
    }


def test_a_stripe_event_is_stored_once_by_its_event_id(on_sql: Receiving) -> None:
    event = stripe_event(amount=250000, currency="usd", status="succeeded")

    first = on_sql.stripe(event)
    on_sql.clock.advance(seconds=40)  # Stripe retries, signing again
    again = on_sql.stripe(event)

    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    [delivery] = stored(on_sql.uow)
    assert (delivery.delivery.source, delivery.delivery.topic, delivery.delivery.resource) == (
        "stripe",
        "payment_intent.succeeded",
        "pi_3PqR2sT3uV4wX5yZ0a1b2c3d",
    )
    assert json.loads(delivery.delivery.body) == event  # the raw body, verbatim
    assert delivery.delivery.received_at == NOW
    assert on_sql.woken == ["stripe"]


@pytest.mark.parametrize(
    ("kind", "object_id"),
    [
        ("payment_intent.processing", "pi_3Pq0000000000000"),
        ("charge.refunded", "ch_3Pq0000000000000"),
        ("refund.updated", "re_3Pq0000000000000"),
        ("charge.dispute.created", "dp_1Pq0000000000000"),
        ("payout.paid", "po_1Pq0000000000000"),
        ("checkout.session.completed", "cs_test_a1Pq0000000000000"),
    ],
)
def test_a_stripe_event_names_the_object_it_is_about(
    on_memory: Receiving, kind: str, object_id: str
) -> None:
    answer = on_memory.stripe(stripe_event(kind=kind, object_id=object_id))

    assert answer.json() == {"status": "accepted"}
    assert kept(on_memory.uow) == [("stripe", kind, object_id)]


def test_stripe_events_out_of_order_are_each_kept_for_the_core_to_refetch(
    on_memory: Receiving,
) -> None:
    # succeeded overtakes processing: both are doorbells for the same payment intent
    succeeded = stripe_event("evt_2", "payment_intent.succeeded", "pi_1", status="succeeded")
    processing = stripe_event("evt_1", "payment_intent.processing", "pi_1", status="processing")

    statuses = [on_memory.stripe(e).json()["status"] for e in (succeeded, processing, succeeded)]

    assert statuses == ["accepted", "accepted", "duplicate"]
    assert kept(on_memory.uow) == [
        ("stripe", "payment_intent.succeeded", "pi_1"),
        ("stripe", "payment_intent.processing", "pi_1"),
    ]
    assert on_memory.woken == ["stripe", "stripe"]


def test_a_forged_tampered_or_unsigned_stripe_delivery_is_401_and_nothing_is_stored(
    on_sql: Receiving,
) -> None:
    body = body_of(stripe_event())
    tampered = body_of(stripe_event(amount=1))
    stamp = int(NOW.timestamp())

    answers = [
        on_sql.post("stripe", body, stripe_headers(body, secret="whsec_someone_elses_secret")),
        on_sql.post("stripe", tampered, stripe_headers(body)),
        on_sql.post("stripe", body + b" ", stripe_headers(body)),
        on_sql.post("stripe", body, {"Content-Type": "application/json"}),
        on_sql.post("stripe", body, {"Stripe-Signature": ""}),
        on_sql.post("stripe", body, {"Stripe-Signature": "garbage"}),
        on_sql.post("stripe", body, {"Stripe-Signature": f"t={stamp}"}),
        # the right MAC under another scheme name is no v1 signature
        on_sql.post(
            "stripe",
            body,
            {"Stripe-Signature": stripe_headers(body)["Stripe-Signature"].replace("v1=", "v0=")},
        ),
        # a timestamped header of our own generic scheme, keyed with Stripe's secret
        on_sql.post("stripe", body, {"X-Milestone-Signature": f"t={stamp},v1=00"}),
    ]

    assert [a.status_code for a in answers] == [401] * len(answers)
    assert {a.json()["error"] for a in answers} == {"invalid signature"}  # no hint for a forger
    assert stored(on_sql.uow) == []
    assert on_sql.woken == []


@pytest.mark.parametrize(
    ("age", "status"),
    [
        (timedelta(seconds=0), 200),
        (timedelta(seconds=300), 200),  # the edge of Stripe's 5-minute tolerance is inside
        (timedelta(seconds=301), 401),  # a captured delivery replayed later
        (timedelta(days=3), 401),
        (timedelta(seconds=-301), 401),  # signed "in the future": our clock or theirs is off
    ],
)
def test_a_stale_stripe_signature_is_401_by_the_receivers_clock(
    on_memory: Receiving, age: timedelta, status: int
) -> None:
    answer = on_memory.stripe(stripe_event(), at=NOW - age)

    assert answer.status_code == status
    assert len(stored(on_memory.uow)) == (1 if status == 200 else 0)


def test_the_stripe_signature_is_checked_before_the_body_is_parsed(on_memory: Receiving) -> None:
    unsigned = on_memory.post("stripe", b"{not json", {"Content-Type": "application/json"})
    not_utf8 = on_memory.post("stripe", b"\xff\xfe{}", stripe_headers(b"{}"))

    assert (unsigned.status_code, not_utf8.status_code) == (401, 401)


def without(data: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of `data` with the field at `a.b.c` removed."""
    copied = copy.deepcopy(data)
    *parents, leaf = path.split(".")
    target = copied
    for parent in parents:
        target = target[parent]
    del target[leaf]
    return copied


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copied = copy.deepcopy(data)
    *parents, leaf = path.split(".")
    target = copied
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return copied


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not JSON"),
        (body_of([stripe_event()]), "JSON object"),
        (body_of(with_value(stripe_event(), "object", "payment_intent")), "object"),
        (body_of(with_value(stripe_event(), "object", "v2.core.event")), "thin"),
        (body_of(without(stripe_event(), "id")), "id"),
        (body_of(with_value(stripe_event(), "id", "pi_123")), "evt_"),
        (body_of(without(stripe_event(), "type")), "type"),
        (body_of(with_value(stripe_event(), "type", "x" * 65)), "type"),
        (body_of(without(stripe_event(), "data")), "data.object"),
        (body_of(with_value(stripe_event(), "data.object", "pi_1")), "data.object"),
        (body_of(without(stripe_event(), "data.object.id")), "data.object.id"),
        (body_of(with_value(stripe_event(), "data.object.id", 42)), "data.object.id"),
    ],
    ids=[
        "not-json",
        "a-list",
        "not-an-event",
        "thin-event",
        "no-id",
        "not-an-event-id",
        "no-type",
        "long-type",
        "no-data",
        "object-not-an-object",
        "no-object-id",
        "number-object-id",
    ],
)
def test_a_signed_but_malformed_stripe_body_is_400_naming_the_field(
    on_memory: Receiving, body: bytes, named: str
) -> None:
    answer = on_memory.post("stripe", body, stripe_headers(body))

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []
    assert on_memory.woken == []


# --------------------------------------------------------------------------- QuickBooks


def legacy(*notifications: tuple[str, list[dict[str, str]]]) -> dict[str, Any]:
    return {
        "eventNotifications": [
            {"realmId": realm, "dataChangeEvent": {"entities": entities}}
            for realm, entities in notifications
        ]
    }


def entity(name: str, entity_id: str, operation: str = "Update", **extra: str) -> dict[str, str]:
    return {
        "name": name,
        "id": entity_id,
        "operation": operation,
        "lastUpdated": "2024-03-01T08:59:31.657Z",
        **extra,
    }


def cloud_event(
    event_id: str, kind: str, entity_id: str, realm: str = REALM, **extra: Any
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "intuit.dsnBgbseACLLRZNxo2dfc4evmEJdxde58xeeYcZliOU=",
        "type": kind,
        "datacontenttype": "application/json",
        "time": "2024-03-01T08:59:31.179851517Z",
        "intuitentityid": entity_id,
        "intuitaccountid": realm,
        "data": {},
        **extra,
    }


def test_a_legacy_quickbooks_delivery_stores_each_change_of_our_company_once(
    on_sql: Receiving,
) -> None:
    delivery = legacy(
        (REALM, [entity("Invoice", "131"), entity("Payment", "72", "Create")]),
        (OTHER_REALM, [entity("Invoice", "131")]),  # another company on the same app
    )

    first = on_sql.quickbooks(delivery)
    again = on_sql.quickbooks(delivery)

    assert first.json() == {"status": "accepted", "accepted": 2, "duplicate": 0}
    assert again.json() == {"status": "duplicate", "accepted": 0, "duplicate": 2}
    assert kept(on_sql.uow) == [
        ("quickbooks", "Invoice.Update", "131"),
        ("quickbooks", "Payment.Create", "72"),
    ]
    invoice = json.loads(stored(on_sql.uow)[0].delivery.body)
    assert invoice == {"realmId": REALM, **entity("Invoice", "131")}
    assert on_sql.woken == ["quickbooks", "quickbooks"]


def test_a_later_change_of_the_same_quickbooks_entity_is_a_new_delivery(
    on_memory: Receiving,
) -> None:
    first = legacy((REALM, [entity("Invoice", "131")]))
    later = legacy((REALM, [entity("Invoice", "131", lastUpdated="2024-03-01T09:03:00.000Z")]))
    voided = legacy((REALM, [entity("Invoice", "131", "Void")]))

    statuses = [on_memory.quickbooks(d).json()["status"] for d in (first, later, voided, first)]

    assert statuses == ["accepted", "accepted", "accepted", "duplicate"]
    assert [t for _, t, _ in kept(on_memory.uow)] == [
        "Invoice.Update",
        "Invoice.Update",
        "Invoice.Void",
    ]


def test_a_cloudevents_quickbooks_delivery_keeps_only_our_realm_each_event_once(
    on_sql: Receiving,
) -> None:
    batch = [
        cloud_event("88cd52aa-33b6-4351-9aa4-47572edbd068", "qbo.invoice.updated.v1", "131"),
        cloud_event(
            "a1b2c3d4-0000-1111-2222-333344445555", "qbo.invoice.voided.v1", "99", OTHER_REALM
        ),
        cloud_event("c0ffee00-dead-beef-cafe-000000000001", "qbo.creditmemo.merged.v1", "4"),
        cloud_event("c0ffee00-dead-beef-cafe-000000000002", "qbo.payment.created.v1", "72"),
    ]

    first = on_sql.quickbooks(batch)
    again = on_sql.quickbooks(batch[:2])

    assert first.json() == {"status": "accepted", "accepted": 3, "duplicate": 0}
    assert again.json() == {"status": "duplicate"}  # one event of ours in it, already kept
    assert kept(on_sql.uow) == [
        ("quickbooks", "Invoice.Update", "131"),
        ("quickbooks", "CreditMemo.Merge", "4"),
        ("quickbooks", "Payment.Create", "72"),
    ]
    assert json.loads(stored(on_sql.uow)[0].delivery.body) == batch[0]
    assert on_sql.woken == ["quickbooks"] * 3


def test_cloudevents_and_legacy_name_the_same_change_with_the_same_topic(
    on_memory: Receiving,
) -> None:
    on_memory.quickbooks(legacy((REALM, [entity("Invoice", "131", "Delete")])))
    on_memory.quickbooks([cloud_event("e-1", "qbo.invoice.deleted.v1", "131")])
    on_memory.quickbooks([cloud_event("e-2", "qbo.invoice.emailed.v1", "131")])
    on_memory.quickbooks([cloud_event("e-3", "qbo.newthing.archived.v2", "7")])  # unknown words

    assert [t for _, t, _ in kept(on_memory.uow)] == [
        "Invoice.Delete",
        "Invoice.Delete",
        "Invoice.Emailed",
        "Newthing.Archived",
    ]


def test_quickbooks_deliveries_only_about_other_companies_store_nothing(
    on_memory: Receiving,
) -> None:
    answers = [
        on_memory.quickbooks(legacy((OTHER_REALM, [entity("Invoice", "1")]))),
        on_memory.quickbooks([cloud_event("e-9", "qbo.invoice.created.v1", "1", OTHER_REALM)]),
        on_memory.quickbooks(legacy()),
        on_memory.quickbooks([]),
    ]

    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "ignored")] * 4
    assert stored(on_memory.uow) == []
    assert on_memory.woken == []


def test_a_forged_tampered_or_unsigned_quickbooks_delivery_is_401(on_sql: Receiving) -> None:
    body = body_of(legacy((REALM, [entity("Invoice", "131")])))
    tampered = body_of(legacy((REALM, [entity("Invoice", "132")])))
    hex_mac = hmac.new(QBO_TOKEN.encode(), body, hashlib.sha256).hexdigest()

    answers = [
        on_sql.post("quickbooks", body, qbo_headers(body, token="someone-elses-verifier")),
        on_sql.post("quickbooks", tampered, qbo_headers(body)),
        on_sql.post("quickbooks", body, {"Content-Type": "application/json"}),
        on_sql.post("quickbooks", body, {"intuit-signature": ""}),
        on_sql.post("quickbooks", body, {"intuit-signature": hex_mac}),  # hex is not base64
        on_sql.post(
            "quickbooks", body, {"intuit-signature": qbo_headers(body)["intuit-signature"][:-4]}
        ),
    ]

    assert [a.status_code for a in answers] == [401] * len(answers)
    assert stored(on_sql.uow) == []
    assert on_sql.woken == []


def test_the_quickbooks_header_name_is_case_insensitive(on_memory: Receiving) -> None:
    body = body_of(legacy((REALM, [entity("Invoice", "131")])))

    answer = on_memory.post("quickbooks", body, {"Intuit-Signature": base64_hmac(QBO_TOKEN, body)})

    assert answer.status_code == 200


GOOD_CE = cloud_event("e-1", "qbo.invoice.updated.v1", "131")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"something": "else"}, "eventNotifications"),
        ({"eventNotifications": {}}, "eventNotifications is not a list"),
        ({"eventNotifications": [{"dataChangeEvent": {}}]}, "eventNotifications[0].realmId"),
        ({"eventNotifications": [{"realmId": REALM}]}, "eventNotifications[0].dataChangeEvent"),
        (
            legacy((REALM, [without(entity("Invoice", "1"), "lastUpdated")])),
            "eventNotifications[0].dataChangeEvent.entities[0].lastUpdated",
        ),
        (legacy((REALM, [without(entity("Invoice", "1"), "id")])), "entities[0].id"),
        (legacy((REALM, [with_value(entity("Invoice", "1"), "name", "")])), "entities[0].name"),
        (legacy((REALM, [without(entity("Invoice", "1"), "operation")])), "operation"),
        ([GOOD_CE, "not an event"], "[1]"),
        ([without(GOOD_CE, "intuitaccountid")], "[0].intuitaccountid"),
        ([with_value(GOOD_CE, "specversion", "0.3")], "[0].specversion"),
        ([without(GOOD_CE, "id")], "[0].id"),
        ([without(GOOD_CE, "source")], "[0].source"),
        ([with_value(GOOD_CE, "type", "invoice.updated")], "[0].type"),
        ([with_value(GOOD_CE, "type", "qbo.Invoice.Updated.v1")], "[0].type"),
        ([without(GOOD_CE, "intuitentityid")], "[0].intuitentityid"),
        ([with_value(GOOD_CE, "intuitentityid", True)], "[0].intuitentityid"),
    ],
    ids=[
        "neither-format",
        "notifications-not-a-list",
        "no-realm",
        "no-change-event",
        "no-last-updated",
        "no-entity-id",
        "empty-name",
        "no-operation",
        "ce-not-an-object",
        "ce-no-account",
        "ce-specversion",
        "ce-no-id",
        "ce-no-source",
        "ce-type-not-qbo",
        "ce-type-case",
        "ce-no-entity",
        "ce-boolean-entity",
    ],
)
def test_a_signed_but_malformed_quickbooks_body_is_400_naming_the_field(
    on_memory: Receiving, data: object, named: str
) -> None:
    answer = on_memory.quickbooks(data)

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []


def test_one_malformed_change_refuses_the_whole_quickbooks_batch(on_memory: Receiving) -> None:
    # stored whole or not at all: Intuit's retry of the batch then finds nothing half-kept
    batch = [GOOD_CE, without(cloud_event("e-2", "qbo.payment.created.v1", "7"), "id")]

    answer = on_memory.quickbooks(batch)

    assert answer.status_code == 400
    assert stored(on_memory.uow) == []


# --------------------------------------------------------------------------- Xero


def xero_event(
    resource_id: str = "55d84274-a3da-4829-a7c0-0cab601b95cc",
    category: str = "INVOICE",
    kind: str = "UPDATE",
    tenant: str = TENANT,
    at: str = "2024-03-01T08:59:39.902",
) -> dict[str, str]:
    plural = {"INVOICE": "Invoices", "CONTACT": "Contacts", "CREDITNOTE": "CreditNotes"}
    endpoint = plural.get(category, "Subscriptions")
    return {
        "resourceUrl": f"https://api.xero.com/api.xro/2.0/{endpoint}/{resource_id}",
        "resourceId": resource_id,
        "eventDateUtc": at,
        "eventType": kind,
        "eventCategory": category,
        "tenantId": tenant,
        "tenantType": "ORGANISATION",
    }


def xero_delivery(*events: dict[str, str], first: int = 1) -> dict[str, Any]:
    return {
        "events": list(events),
        "firstEventSequence": first if events else 0,
        "lastEventSequence": first + len(events) - 1 if events else 0,
        "entropy": "FXNGWLCCGVANWHKILRUB",
    }


PROBE = xero_delivery()  # what Xero's intent-to-receive validation sends


def test_a_xero_delivery_stores_each_event_of_our_tenant_once_and_answers_with_no_body(
    on_sql: Receiving,
) -> None:
    contact = "717f2bfc-c6d4-41fd-b238-3f2f0c0cf777"
    delivery = xero_delivery(
        xero_event(),
        xero_event(contact, "CONTACT", "CREATE"),
        xero_event(tenant=OTHER_TENANT),  # another organisation on the same app
    )

    first = on_sql.xero(delivery)
    again = on_sql.xero(delivery)

    for answer in (first, again):
        assert (answer.status_code, answer.content) == (200, b"")
        assert "set-cookie" not in answer.headers
    assert kept(on_sql.uow) == [
        ("xero", "INVOICE.UPDATE", "55d84274-a3da-4829-a7c0-0cab601b95cc"),
        ("xero", "CONTACT.CREATE", contact),
    ]
    assert json.loads(stored(on_sql.uow)[0].delivery.body) == xero_event()
    assert on_sql.woken == ["xero", "xero"]


def test_xero_dedupes_by_resource_time_type_and_category(on_memory: Receiving) -> None:
    later = xero_event(at="2024-03-01T09:02:00.000")
    created = xero_event(kind="CREATE")

    for delivery in (
        xero_delivery(xero_event()),
        xero_delivery(xero_event(), first=7),  # redelivered in another batch
        xero_delivery(later, created),
    ):
        assert on_memory.xero(delivery).status_code == 200

    assert [t for _, t, _ in kept(on_memory.uow)] == [
        "INVOICE.UPDATE",
        "INVOICE.UPDATE",
        "INVOICE.CREATE",
    ]
    assert on_memory.woken == ["xero"] * 3


def test_a_valid_intent_to_receive_probe_is_200_with_no_body_and_stores_nothing(
    on_memory: Receiving,
) -> None:
    answer = on_memory.xero(PROBE)

    assert (answer.status_code, answer.content) == (200, b"")
    assert stored(on_memory.uow) == []
    assert on_memory.woken == []


def test_an_invalid_intent_to_receive_probe_is_401_with_no_body(on_memory: Receiving) -> None:
    body = body_of(PROBE)

    answers = [
        on_memory.post("xero", body, xero_headers(body, key="not-the-webhook-key")),
        on_memory.post("xero", body, {"x-xero-signature": "ubUJMsDNGuunnCBc/n1g0wc2SpjplAb"}),
        on_memory.post("xero", body, {"Content-Type": "application/json"}),
    ]

    assert [(a.status_code, a.content) for a in answers] == [(401, b"")] * 3
    assert stored(on_memory.uow) == []


def test_a_forged_tampered_or_unsigned_xero_delivery_is_401(on_sql: Receiving) -> None:
    body = body_of(xero_delivery(xero_event()))
    tampered = body_of(xero_delivery(xero_event(kind="CREATE")))

    answers = [
        on_sql.post("xero", body, xero_headers(body, key="someone-elses-webhook-key")),
        on_sql.post("xero", tampered, xero_headers(body)),
        on_sql.post("xero", body, {"x-xero-signature": ""}),
        on_sql.post("xero", body, {"Content-Type": "application/json"}),
        # Intuit's header with the right MAC is no Xero signature
        on_sql.post("xero", body, {"intuit-signature": base64_hmac(XERO_KEY, body)}),
    ]

    assert [a.status_code for a in answers] == [401] * len(answers)
    assert stored(on_sql.uow) == []
    assert on_sql.woken == []


def test_xero_events_of_other_tenants_only_store_nothing(on_memory: Receiving) -> None:
    subscription = {
        **xero_event("0f3e54b5-4b2e-4c1a-9a49-5a2b7b0b8a11", "SUBSCRIPTION", "CREATE"),
        "tenantId": "5b8c3d1e-aaaa-4bbb-8ccc-111122223333",  # the app itself
        "tenantType": "APPLICATION",
    }

    answer = on_memory.xero(xero_delivery(xero_event(tenant=OTHER_TENANT), subscription))

    assert (answer.status_code, answer.content) == (200, b"")
    assert stored(on_memory.uow) == []


def test_the_xero_tenant_is_compared_without_regard_to_case(on_memory: Receiving) -> None:
    answer = on_memory.xero(xero_delivery(xero_event(tenant=TENANT.upper())))

    assert answer.status_code == 200
    assert len(stored(on_memory.uow)) == 1


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (["not", "an", "object"], "events"),
        ({"firstEventSequence": 1, "lastEventSequence": 1, "entropy": "X"}, "events"),
        ({**xero_delivery(xero_event()), "events": ["x"]}, "events[0]"),
        (xero_delivery(without(xero_event(), "tenantId")), "tenantId"),
        (xero_delivery(without(xero_event(), "resourceId")), "resourceId"),
        (xero_delivery(without(xero_event(), "eventDateUtc")), "eventDateUtc"),
        (xero_delivery(with_value(xero_event(), "eventCategory", 7)), "eventCategory"),
    ],
    ids=[
        "a-list",
        "no-events",
        "event-not-an-object",
        "no-tenant",
        "no-resource",
        "no-time",
        "number-category",
    ],
)
def test_a_signed_but_malformed_xero_body_is_400_naming_the_field(
    on_memory: Receiving, data: object, named: str
) -> None:
    answer = on_memory.xero(data)

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []


@pytest.mark.skipif(XERO_SPEC_MISSING, reason=missing_reason(SPEC))
@pytest.mark.parametrize(
    ("data", "named"),
    [
        (without(xero_delivery(xero_event()), "entropy"), "entropy"),
        (without(xero_delivery(xero_event()), "firstEventSequence"), "firstEventSequence"),
        (with_value(xero_delivery(xero_event()), "lastEventSequence", "1"), "lastEventSequence"),
        (xero_delivery(without(xero_event(), "resourceUrl")), "resourceUrl"),
        (xero_delivery(without(xero_event(), "tenantType")), "tenantType"),
        (xero_delivery(with_value(xero_event(), "eventType", "DELETE")), "events[0].eventType"),
        (xero_delivery(with_value(xero_event(), "tenantType", "PERSON")), "events[0].tenantType"),
        # the probe's sequence numbers are 0; a delivery with events is held to the spec's 1
        (xero_delivery(xero_event(), first=0), "EventSequence: 0 is less than the minimum"),
    ],
    ids=[
        "no-entropy",
        "no-first-sequence",
        "string-sequence",
        "no-resource-url",
        "no-tenant-type",
        "unknown-event-type",
        "unknown-tenant-type",
        "sequence-zero-with-events",
    ],
)
def test_the_xero_body_is_held_to_xeros_openapi_file(
    on_memory: Receiving, data: object, named: str
) -> None:
    answer = on_memory.xero(data)

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []


@pytest.mark.skipif(XERO_SPEC_MISSING, reason=missing_reason(SPEC))
def test_a_xero_receiver_without_the_spec_checks_only_what_it_reads() -> None:
    store = MemoryStore()
    receivers = {"xero": XeroReceiver(XERO_KEY, TENANT, spec=None)}
    routes = webhook_routes(receivers, lambda: store.unit_of_work(FIRM), FrozenClock(NOW))
    client = TestClient(create_app(routes))
    loose = without(xero_delivery(xero_event()), "entropy")
    body = body_of(loose)

    answer = client.post("/webhooks/xero", content=body, headers=xero_headers(body))

    assert XeroReceiver(XERO_KEY, TENANT).checks_spec
    assert not receivers["xero"].checks_spec
    assert answer.status_code == 200


# --------------------------------------------------------------------------- the factory


def config_text(payments: str, ledger: str, sources: str = "") -> str:
    return f"""
[firm]
id = "{FIRM}"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "memory"
{sources}

{ledger}

{payments}

[[plans]]
id = "tax-return"
name = "Tax return"
match = {{ source = "karbon" }}
fee = "3000.00"

[[plans.milestones]]
id = "filed"
name = "Filed"
trigger = {{ status = "Completed" }}
remainder = true
"""


STRIPE = """
[payments]
kind = "stripe"
secret_key_env = "STRIPE_SECRET_KEY"
webhook_secret_env = "STRIPE_WEBHOOK_SECRET"
"""
STRIPE_NO_WEBHOOKS = """
[payments]
kind = "stripe"
secret_key_env = "STRIPE_SECRET_KEY"
"""
QUICKBOOKS = f"""
[ledger]
kind = "quickbooks"
client_id_env = "QBO_CLIENT_ID"
client_secret_env = "QBO_CLIENT_SECRET"
webhook_verifier_env = "QBO_WEBHOOK_VERIFIER"
options = {{ realm_id = "{REALM}" }}
"""
XERO = """
[ledger]
kind = "xero"
client_id_env = "XERO_CLIENT_ID"
client_secret_env = "XERO_CLIENT_SECRET"
webhook_key_env = "XERO_WEBHOOK_KEY"
"""
ENV = {
    "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    "QBO_WEBHOOK_VERIFIER": QBO_TOKEN,
    "XERO_WEBHOOK_KEY": XERO_KEY,
}


def test_the_factory_serves_stripe_and_the_ledger_when_their_secrets_are_set() -> None:
    config = load_config_text(config_text(STRIPE, QUICKBOOKS))

    receivers, notes = payment_receivers(config, ENV)

    assert notes == []
    assert sorted(receivers) == ["quickbooks", "stripe"]
    assert isinstance(receivers["stripe"], StripeReceiver)
    assert isinstance(receivers["quickbooks"], QuickBooksReceiver)
    assert receivers["quickbooks"].realm_id == REALM
    assert all(s not in repr(r) for r in receivers.values() for s in SECRETS)


def test_the_factory_takes_the_xero_tenant_from_the_connection_when_options_name_none() -> None:
    config = load_config_text(config_text(STRIPE_NO_WEBHOOKS, XERO))

    unknown, unknown_notes = payment_receivers(config, ENV)
    receivers, notes = payment_receivers(config, ENV, connected={"xero": TENANT})

    assert unknown == {}
    assert any("tenant_id" in n and n.startswith("xero webhooks are off") for n in unknown_notes)
    assert isinstance(receivers["xero"], XeroReceiver)
    assert receivers["xero"].tenant_id == TENANT
    assert notes == [
        "stripe webhooks are off until [payments] webhook_secret_env names the environment "
        "variable holding the endpoint's signing secret (whsec_...); polling still finds every "
        "change"
    ]


def test_the_factory_says_which_variable_to_set_and_never_a_secret() -> None:
    config = load_config_text(config_text(STRIPE, QUICKBOOKS))

    receivers, notes = payment_receivers(config, {"STRIPE_WEBHOOK_SECRET": "  "})

    assert receivers == {}
    assert [n.split(" ")[0] for n in notes] == ["stripe", "quickbooks"]
    assert "STRIPE_WEBHOOK_SECRET (named by [payments] webhook_secret_env) is set" in notes[0]
    assert "QBO_WEBHOOK_VERIFIER (named by [ledger] webhook_verifier_env)" in notes[1]
    assert all("polling still finds every change" in n for n in notes)


def test_the_factory_serves_nothing_for_memory_connections() -> None:
    config = load_config_text(
        config_text('[payments]\nkind = "memory"', '[ledger]\nkind = "memory"')
    )

    assert payment_receivers(config, ENV) == ({}, [])


def test_a_source_named_like_a_path_id_keeps_its_path() -> None:
    clash = '\n[[sources]]\nid = "stripe"\nkind = "memory"\n'
    config = load_config_text(config_text(STRIPE, QUICKBOOKS, sources=clash))

    receivers, notes = payment_receivers(config, ENV)

    assert sorted(receivers) == ["quickbooks"]
    assert len(notes) == 1 and "a source is named 'stripe'" in notes[0]


# --------------------------------------------------------------------------- no secret in logs


@pytest.fixture
def daemon_logging() -> Iterator[None]:
    """Put structlog back after the test configures it as `milestone-sync run` does."""
    yield
    structlog.reset_defaults()


def test_no_secret_reaches_the_logs_or_the_answers(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    daemon_logging: None,
) -> None:
    configure_logging(json=True, level="DEBUG")  # binds the stderr capsys put in place
    caplog.set_level(logging.DEBUG)
    store = MemoryStore()
    receiving = Receiving(lambda: store.unit_of_work(FIRM), FrozenClock(NOW))
    texts: list[str] = []
    stripe_body = body_of(stripe_event())
    qbo_body = body_of(legacy((REALM, [entity("Invoice", "131")])))
    xero_body = body_of(xero_delivery(xero_event()))
    for source, body, good, forged in (
        ("stripe", stripe_body, stripe_headers(stripe_body), stripe_headers(stripe_body + b"x")),
        ("quickbooks", qbo_body, qbo_headers(qbo_body), qbo_headers(qbo_body, token="x" * 20)),
        ("xero", xero_body, xero_headers(xero_body), xero_headers(xero_body, key="y" * 20)),
    ):
        for headers, data in ((good, body), (good, body), (forged, body), (good, b"[]")):
            texts.append(receiving.post(source, data, headers).text)
    texts.append(receiving.stripe(stripe_event(), at=NOW - timedelta(hours=1)).text)
    texts.append(receiving.post("stripe", b"{}", stripe_headers(b"{}")).text)

    captured = capsys.readouterr()
    assert "webhook.bad_signature" in captured.err  # the daemon's log lines were captured
    assert "webhook.received" in captured.err
    haystack = "\n".join([caplog.text, captured.out, captured.err, *texts])
    for secret in SECRETS:
        assert secret not in haystack
    assert len(stored(receiving.uow)) == 3


# --------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """The receivers the factory builds from a firm's config, served by uvicorn as the daemon
    serves them, over a SQLite store."""

    def __init__(self, store: Store, receivers: Mapping[str, Receiver], clock: Clock) -> None:
        self.uow = store.uow_factory(FIRM)
        self.woken: list[str] = []
        self._woken_lock = threading.Lock()
        port = _free_port()
        routes = webhook_routes(receivers, self.uow, clock, on_delivery=self._wake)
        self.server = WebServer(create_app(routes), "127.0.0.1", port)
        self.server.start()
        self.base = f"http://127.0.0.1:{port}/webhooks"

    def _wake(self, source: str) -> None:
        with self._woken_lock:
            self.woken.append(source)

    def url(self, source: str) -> str:
        return f"{self.base}/{source}"


@pytest.fixture
def sqlite_store(make_store_url: Callable[[str], str]) -> Iterator[Store]:
    opened = open_store(make_store_url("sqlite"))
    yield opened
    opened.dispose()


@contextmanager
def serving(store: Store, receivers: Mapping[str, Receiver], clock: Clock) -> Iterator[Served]:
    served = Served(store, receivers, clock)
    try:
        yield served
    finally:
        served.server.stop()


def qbo_sdk(emulator: QuickBooksEmulator) -> QuickBooks:
    """python-quickbooks on the emulator, with a token from its consent shortcut."""
    qb = QuickBooks(company_id=emulator.realm_id, minorversion=75, use_decimal=True)
    session = OAuth2Session()
    session.access_token = str(emulator.connect()["access_token"])
    qb.session = session
    qb.api_url_v3 = emulator.api_url
    return qb


def qbo_invoice(qb: QuickBooks, customer: str, amount: str) -> str:
    invoice = QboInvoice()
    invoice.CustomerRef = Ref()
    invoice.CustomerRef.value = customer
    line = SalesItemLine()
    line.Amount = Decimal(amount)
    line.SalesItemLineDetail = detail = SalesItemLineDetail()
    detail.ItemRef = Ref()
    detail.ItemRef.value = "1"
    detail.Qty = 1
    detail.UnitPrice = Decimal(amount)
    invoice.Line.append(line)
    invoice.save(qb=qb)
    return str(invoice.Id)


@pytest.mark.parametrize("payload", ["cloudevents", "legacy"])
def test_quickbooks_emulator_notifications_reach_the_inbox_once_each(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch, payload: Literal["cloudevents", "legacy"]
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http to loopback only
    clock = EmulatedTime(start=NOW)
    config = load_config_text(config_text('[payments]\nkind = "none"', QUICKBOOKS))
    receivers, notes = payment_receivers(config, ENV)
    assert (sorted(receivers), notes) == (["quickbooks"], [])
    entities = ("Customer", "Invoice", "Payment")
    with (
        serving(sqlite_store, receivers, FrozenClock(NOW)) as served,
        QuickBooksEmulator(realm_id=REALM, time=clock) as ours,
        QuickBooksEmulator(realm_id=OTHER_REALM, time=clock) as theirs,
    ):
        url = served.url("quickbooks")
        # at least once: every notification is POSTed twice
        ours.add_webhook(url, QBO_TOKEN, payload, entities=entities, duplicates=True)
        theirs.add_webhook(url, QBO_TOKEN, payload, entities=entities)  # same app, same token
        customer = ours.add_customer("Acme LLC")
        theirs.add_customer("Someone Else Inc")
        clock.advance(1)
        invoice = qbo_invoice(qbo_sdk(ours), customer, "250.00")
        clock.advance(1)
        payment = ours.pay_externally(invoice, "250.00")

        sent = ours.deliver_pending() + theirs.deliver_pending()
        clock.advance(1)
        ours.void_invoice(invoice)
        sent += ours.deliver_pending()

        assert [d.status for d in sent] == [200] * len(sent) and len(sent) == 5
        assert ours.pending_notifications() == theirs.pending_notifications() == 0
        assert ours.violations() == []
    topics = {(topic, resource) for _, topic, resource in kept(served.uow)}
    assert {
        ("Customer.Create", customer),
        ("Invoice.Create", invoice),
        ("Payment.Create", payment),
        ("Invoice.Void", invoice),
    } <= topics
    bodies = {d.body for d in ours.webhook_deliveries}  # each one POSTed twice
    distinct = {json.dumps(e, sort_keys=True) for body in bodies for e in events_in(body)}
    assert len(bodies) == 2 and len(stored(served.uow)) == len(distinct)  # once each, none theirs
    for delivery in stored(served.uow):
        event = json.loads(delivery.delivery.body)
        assert event.get("realmId", event.get("intuitaccountid")) == REALM
    assert served.woken == ["quickbooks"] * len(distinct)


def events_in(body: bytes) -> list[Any]:
    """The entity changes one QuickBooks notification carries, in either format."""
    data = json.loads(body)
    if isinstance(data, list):
        return data
    return [e for n in data["eventNotifications"] for e in n["dataChangeEvent"]["entities"]]


def test_a_quickbooks_notification_signed_with_another_token_is_refused_and_retried(
    sqlite_store: Store,
) -> None:
    receivers = {"quickbooks": QuickBooksReceiver(QBO_TOKEN, REALM)}
    with (
        serving(sqlite_store, receivers, FrozenClock(NOW)) as served,
        QuickBooksEmulator(realm_id=REALM) as emulator,
    ):
        emulator.add_webhook(
            served.url("quickbooks"), "not-our-verifier-token", entities=["Customer"]
        )
        emulator.add_customer("Acme LLC")

        [refused] = emulator.deliver_pending()

        assert refused.status == 401
        assert emulator.pending_notifications() == 1  # Intuit keeps it for the next attempt
    assert stored(served.uow) == []


def test_xero_emulator_probes_and_events_reach_the_inbox_once_each(sqlite_store: Store) -> None:
    clock = EmulatedTime(start=NOW)
    with XeroEmulator(time=clock, organisations=("Smith & Co CPAs", "Someone Else Ltd")) as xero:
        ours, theirs = xero.tenants
        config = load_config_text(config_text('[payments]\nkind = "none"', XERO))
        receivers, notes = payment_receivers(config, ENV, connected={"xero": ours})
        assert (sorted(receivers), notes) == (["xero"], [])
        with serving(sqlite_store, receivers, FrozenClock(NOW)) as served:
            xero.add_webhook(served.url("xero"), XERO_KEY)

            probes = [xero.send_intent_to_receive(valid) for valid in (True, False, True)]

            assert probes == [200, 401, 200]  # what gains Intent to receive validation
            assert stored(served.uow) == []
            xero.webhook_duplicates(True)
            acme = xero.add_contact("Acme LLC", tenant=ours)
            xero.add_contact("Their customer", tenant=theirs)
            first = xero.deliver_pending()
            clock.advance(2)
            xero.archive_contact(acme, tenant=ours)
            second = xero.deliver_pending()

            assert (first, second) == ([200, 200], [200, 200])
            assert xero.pending_webhook_events() == 0
            assert xero.violations() == []
    assert kept(served.uow) == [("xero", "CONTACT.CREATE", acme), ("xero", "CONTACT.UPDATE", acme)]
    assert served.woken == ["xero", "xero"]


def test_xero_emulator_events_signed_with_another_key_stay_queued(sqlite_store: Store) -> None:
    with XeroEmulator() as xero:
        receivers = {"xero": XeroReceiver(XERO_KEY, xero.tenants[0])}
        with serving(sqlite_store, receivers, FrozenClock(NOW)) as served:
            xero.add_webhook(served.url("xero"), "a-key-from-another-app-entirely")
            xero.add_contact("Acme LLC")

            assert xero.deliver_pending() == [401]
            assert xero.pending_webhook_events() == 1  # Xero retries for up to 24 hours
    assert stored(served.uow) == []


def test_stripe_emulator_events_reach_the_inbox_once_each_whatever_the_order(
    sqlite_store: Store,
) -> None:
    config = load_config_text(config_text(STRIPE, '[ledger]\nkind = "memory"'))
    receivers, notes = payment_receivers(config, ENV)
    assert (sorted(receivers), notes) == (["stripe"], [])
    # Stripe signs with the time it sends at (the wall clock), so the receiver reads that too
    with (
        serving(sqlite_store, receivers, SystemClock()) as served,
        StripeEmulator(time=VirtualTime(start=NOW)) as emu,
    ):
        ours = emu.add_webhook_endpoint(served.url("stripe"), STRIPE_SECRET)
        forged = emu.add_webhook_endpoint(served.url("stripe"), "whsec_not_this_endpoints")
        emu.set_webhook_faults(duplicates=True, shuffle=True, seed=5)  # at least once, any order
        client = stripe.StripeClient(
            emu.api_key, base_addresses={"api": emu.url}, max_network_retries=0
        )
        customer = emu.add_customer(email="ap@acme.test")
        method = emu.add_payment_method(customer)
        intent = client.v1.payment_intents.create(
            params={
                "amount": 250_000,
                "currency": "usd",
                "customer": customer,
                "payment_method": method,
                "confirm": True,
                "off_session": True,
                "allowed_payment_method_types": ["card"],
            }
        )
        refund = emu.refund(intent.id, 50_000)

        emu.deliver_pending()

        outcomes = {(d.endpoint_id, d.status, d.last_status) for d in emu.deliveries()}
        events = emu.events()
        assert emu.violations() == [] and emu.internal_errors == []
    assert outcomes == {(ours.id, "delivered", 200), (forged.id, "pending", 401)}
    kept_ids = [json.loads(d.delivery.body)["id"] for d in stored(served.uow)]
    assert sorted(kept_ids) == sorted(e["id"] for e in events)  # each once, though sent twice
    topics = {(topic, resource) for _, topic, resource in kept(served.uow)}
    assert {
        ("payment_intent.succeeded", intent.id),
        ("charge.refunded", intent.latest_charge),
        ("refund.created", refund),
    } <= topics
    assert served.woken == ["stripe"] * len(events)
