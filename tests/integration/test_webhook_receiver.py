"""The webhook receivers over HTTP (starlette's TestClient): signatures, replays, bad payloads,
size limits and dedupe into a real inbox, deliveries carrying several events or none; then pushed
phases through poll and map, exactly once."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient  # over httpx2, as starlette 1.x asks

from adapters.generic.adapter import PushedPhaseSource
from adapters.generic.csv_import import inbox_entry, read_rows
from adapters.generic.webhooks import SIGNATURE_HEADER, PhaseEventReceiver
from adapters.karbon.webhooks import KarbonReceiver
from adapters.memory.clock import FrozenClock
from adapters.memory.gateway import MemoryGateway
from adapters.memory.ledger import MemoryLedger
from adapters.memory.store import MemoryStore
from adapters.signing import sign_body, sign_timestamped
from adapters.store.engine import Store, open_store
from adapters.web.webhooks import MAX_BODY_BYTES, Accepted, create_app, webhook_routes
from connector.domain.ids import SourceId, WorkItemKey
from connector.domain.model import MilestoneState
from connector.ports import DeliveryStatus, PhaseStatus, StoredDelivery, UnitOfWorkFactory
from connector.services import SyncService
from mappings.engine import MappingEngine
from mappings.loader import load_config_text

TENANT = "smith-cpa"
SOURCE = "phases"
SECRET = "whsec-phase-events-test"
KARBON_KEY = "karbon-signing-key-0123456789"
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

CONFIG = f"""
[firm]
id = "{TENANT}"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "{SOURCE}"
kind = "webhook"
webhook_secret_env = "PHASES_WEBHOOK_SECRET"

[ledger]
kind = "memory"

[payments]
kind = "memory"

[[plans]]
id = "tax-return"
name = "Tax return"
match = {{ source = "{SOURCE}", work_type = "Tax Return" }}
fee = "3000.00"

[[plans.milestones]]
id = "kickoff"
name = "Documents received"
trigger = {{ status = "In Progress", secondary = "Documents received" }}
percent = 40

[[plans.milestones]]
id = "filed"
name = "Filed"
trigger = {{ status = "Completed" }}
remainder = true
"""

EVENT: dict[str, Any] = {
    "event_id": "evt-0001",
    "type": "phase.completed",
    "occurred_at": "2026-11-02T08:55:00Z",
    "work_item": {
        "key": "WI-1",
        "title": "2026 Form 1120 - Acme",
        "client_key": "CL-ACME",
        "client_name": "Acme LLC",
        "ledger_customer_id": "58",
        "work_type": "Tax Return",
        "fee": "3000.00",
        "currency": "USD",
    },
    "phase": {"status": "Completed"},
}


def event(**changes: Any) -> dict[str, Any]:
    """A copy of EVENT; `work_item__fee=...` style keys change a nested field."""
    data = copy.deepcopy(EVENT)
    for name, value in changes.items():
        target = data
        *parents, leaf = name.split("__")
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return data


def body_of(data: object) -> bytes:
    return json.dumps(data).encode()


def signed(body: bytes, at: datetime = NOW, secret: str = SECRET) -> dict[str, str]:
    return {
        SIGNATURE_HEADER: sign_timestamped(secret, body, at),
        "Content-Type": "application/json",
    }


def karbon_signed(body: bytes, key: str = KARBON_KEY) -> dict[str, str]:
    return {"Signature": sign_body(key, body), "Content-Type": "application/json"}


def stored(uow: UnitOfWorkFactory) -> list[StoredDelivery]:
    with uow() as unit:
        return sorted(unit.inbox.recent(limit=500), key=lambda d: d.delivery.id)


class Receiving:
    """One webhook app over a store: the generic source, a Karbon source, and who was woken."""

    def __init__(self, uow: UnitOfWorkFactory, clock: FrozenClock) -> None:
        self.uow = uow
        self.clock = clock
        self.woken: list[str] = []
        receivers = {
            SOURCE: PhaseEventReceiver(SECRET),
            "karbon": KarbonReceiver(KARBON_KEY),
            "batch": BatchReceiver(),
        }
        routes = webhook_routes(receivers, uow, clock, on_delivery=self.woken.append)
        self.client = TestClient(create_app(routes))

    def post(self, body: bytes, headers: dict[str, str], source: str = SOURCE) -> Any:
        return self.client.post(f"/webhooks/{source}", content=body, headers=headers)

    def deliver(self, data: object) -> Any:
        body = body_of(data)
        return self.post(body, signed(body, self.clock.now()))


@pytest.fixture
def sql_store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def on_sql(sql_store: Store) -> Receiving:
    return Receiving(sql_store.uow_factory(TENANT), FrozenClock(NOW))


@pytest.fixture
def on_memory() -> Receiving:
    store = MemoryStore()
    return Receiving(lambda: store.unit_of_work(TENANT), FrozenClock(NOW))


# --------------------------------------------------------------------------- the generic event


def test_a_valid_event_is_stored_once_and_a_replay_is_answered_duplicate(
    on_sql: Receiving,
) -> None:
    first = on_sql.deliver(EVENT)
    on_sql.clock.advance(seconds=30)  # the sender retries, signing again
    again = on_sql.deliver(EVENT)

    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    [delivery] = stored(on_sql.uow)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.delivery.source == SOURCE
    assert delivery.delivery.topic == "phase.completed"
    assert delivery.delivery.resource == "WI-1"
    assert json.loads(delivery.delivery.body) == EVENT
    assert delivery.delivery.received_at == NOW


def test_a_new_event_id_is_a_new_delivery(on_memory: Receiving) -> None:
    on_memory.deliver(EVENT)
    answer = on_memory.deliver(event(event_id="evt-0002", type="phase.reopened"))

    assert answer.json() == {"status": "accepted"}
    assert [d.delivery.topic for d in stored(on_memory.uow)] == [
        "phase.completed",
        "phase.reopened",
    ]


def test_a_bad_signature_is_401_and_nothing_is_stored(on_sql: Receiving) -> None:
    body = body_of(EVENT)

    wrong_secret = on_sql.post(body, signed(body, secret="someone-elses-secret"))
    tampered = on_sql.post(body_of(event(work_item__fee="30000.00")), signed(body))

    for answer in (wrong_secret, tampered):
        assert answer.status_code == 401
        assert answer.json() == {"error": "invalid signature"}  # no hint for a forger
    assert stored(on_sql.uow) == []
    assert on_sql.woken == []


@pytest.mark.parametrize(
    ("age", "status"),
    [
        (timedelta(seconds=300), 200),  # the edge of the 5-minute window is still inside
        (timedelta(seconds=301), 401),  # a captured delivery replayed later
        (timedelta(seconds=-301), 401),  # a sender clock far ahead is refused too
    ],
)
def test_the_signed_time_must_be_within_five_minutes(
    on_memory: Receiving, age: timedelta, status: int
) -> None:
    body = body_of(EVENT)

    answer = on_memory.post(body, signed(body, at=NOW - age))

    assert answer.status_code == status
    assert len(stored(on_memory.uow)) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=deadbeef", "t=notanumber,v1=deadbeef", "t=1793610000"],
    ids=["missing", "empty", "no-time", "bad-time", "no-v1"],
)
def test_a_missing_or_malformed_signature_header_is_401(
    on_memory: Receiving, header: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers[SIGNATURE_HEADER] = header

    answer = on_memory.post(body_of(EVENT), headers)

    assert answer.status_code == 401
    assert stored(on_memory.uow) == []


def test_the_signature_is_checked_before_the_body_is_parsed(on_memory: Receiving) -> None:
    # an unsigned body that is also malformed gets 401, not 400: nothing of it is looked at
    answer = on_memory.post(b"{not json", {"Content-Type": "application/json"})

    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not JSON"),
        (body_of(["a", "list"]), "(event)"),
        (body_of(event(event_id=None)), "event_id"),
        (body_of(event(occurred_at=None)), "occurred_at"),
        (body_of(event(occurred_at="2026-11-02T08:55:00")), "occurred_at"),  # no time zone
        (body_of(event(work_item__client_key=None)), "work_item.client_key"),
        (body_of(event(work_item__fee=3000.0)), "work_item.fee"),  # a float, not a string
        (body_of(event(work_item__fee="3,000")), "work_item.fee"),
        (body_of(event(work_item__fee="NaN")), "work_item.fee"),
        (body_of(event(work_item__currency="usd")), "work_item.currency"),
        (body_of(event(work_item__currency="XYZ")), "work_item.currency"),
        (body_of(event(type="phase.started")), "type"),
        (body_of(event(phase={})), "phase"),
        (body_of(event(phase={"status": "Completed", "close_status": "Done"})), "phase"),
        (body_of(event(surprise=1)), "surprise"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "no-event-id",
        "no-time",
        "naive-time",
        "no-client",
        "float-fee",
        "comma-fee",
        "nan-fee",
        "lowercase-currency",
        "unknown-currency",
        "unknown-type",
        "no-phase",
        "two-phases",
        "unknown-field",
    ],
)
def test_a_bad_payload_is_400_naming_the_field_and_nothing_is_stored(
    on_memory: Receiving, body: bytes, named: str
) -> None:
    answer = on_memory.post(body, signed(body))

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []
    assert on_memory.woken == []


def test_a_body_over_the_limit_is_413_unread(on_memory: Receiving) -> None:
    body = body_of(event(work_item__title="x" * MAX_BODY_BYTES))

    answer = on_memory.post(body, signed(body))

    assert answer.status_code == 413
    assert stored(on_memory.uow) == []


def test_a_streamed_body_over_the_limit_is_413_too(on_memory: Receiving) -> None:
    chunk = b" " * (64 * 1024)
    chunks = iter([chunk] * 5)  # no Content-Length: the size is counted while reading

    answer = on_memory.client.post(f"/webhooks/{SOURCE}", content=chunks)

    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413


def test_an_event_over_64_kib_is_400_even_under_the_body_limit(on_memory: Receiving) -> None:
    body = body_of(event(work_item__title="x" * (70 * 1024)))
    assert len(body) < MAX_BODY_BYTES

    answer = on_memory.post(body, signed(body))

    assert answer.status_code == 400
    assert "limit" in answer.json()["error"]


def test_an_unknown_source_is_404_and_nothing_is_stored(on_memory: Receiving) -> None:
    body = body_of(EVENT)

    answer = on_memory.post(body, signed(body), source="nobody")

    assert answer.status_code == 404
    assert "nobody" in answer.json()["error"]
    assert stored(on_memory.uow) == []


def test_only_post_is_routed(on_memory: Receiving) -> None:
    assert on_memory.client.get(f"/webhooks/{SOURCE}").status_code == 405


def test_on_delivery_wakes_the_poller_once_per_new_delivery(on_memory: Receiving) -> None:
    on_memory.deliver(EVENT)
    on_memory.deliver(EVENT)  # duplicate
    on_memory.post(b"{}", signed(b"{}"))  # bad payload
    on_memory.post(body_of(EVENT), {SIGNATURE_HEADER: "t=1,v1=00"})  # bad signature
    on_memory.deliver(event(event_id="evt-0002"))

    assert on_memory.woken == [SOURCE, SOURCE]


# --------------------------------------------------------------------------- several events or none


class BatchReceiver:
    """A fake vendor whose body lists the events it carries as [topic, resource, id] triples
    (unsigned: the protocol's shape is under test here, not a signature)."""

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Sequence[Accepted]:
        return [
            Accepted(topic=t, resource=r, dedupe_key=k, body=json.dumps([t, r, k]))
            for t, r, k in json.loads(body)
        ]


def batch(*events: tuple[str, str, str]) -> bytes:
    return body_of([list(e) for e in events])


def test_each_event_of_a_delivery_is_stored_once_and_the_answer_counts_them(
    on_sql: Receiving,
) -> None:
    first = on_sql.post(
        batch(("a.x", "R1", "k1"), ("a.y", "R2", "k2"), ("a.x", "R1", "k1")), {}, "batch"
    )
    again = on_sql.post(batch(("a.y", "R2", "k2"), ("a.z", "R3", "k3")), {}, "batch")

    assert first.json() == {"status": "accepted", "accepted": 2, "duplicate": 1}
    assert again.json() == {"status": "accepted", "accepted": 1, "duplicate": 1}
    assert [(d.delivery.topic, d.delivery.resource) for d in stored(on_sql.uow)] == [
        ("a.x", "R1"),
        ("a.y", "R2"),
        ("a.z", "R3"),
    ]
    assert on_sql.woken == ["batch"] * 3  # once per newly stored event


def test_a_delivery_with_no_event_for_us_is_200_and_stores_nothing(on_memory: Receiving) -> None:
    answer = on_memory.post(batch(), {}, "batch")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ignored", "accepted": 0, "duplicate": 0}
    assert stored(on_memory.uow) == []
    assert on_memory.woken == []


@pytest.mark.parametrize(
    ("event", "named"),
    [
        (("t" * 65, "R9", "k9"), "event type"),
        (("a.x", "R" * 256, "k9"), "resource id"),
        (("a.x", "", "k9"), "resource id"),
        (("a.x", "R9", "k" * 256), "event id"),
    ],
    ids=["long-topic", "long-resource", "no-resource", "long-key"],
)
def test_an_event_the_inbox_cannot_keep_refuses_the_whole_delivery(
    on_sql: Receiving, event: tuple[str, str, str], named: str
) -> None:
    answer = on_sql.post(batch(("a.x", "R1", "k1"), event), {}, "batch")

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_sql.uow) == []  # not even the good first event: stored whole or not at all


# --------------------------------------------------------------------------- Karbon


KARBON_WORK = {
    "ResourcePermaKey": "4ndV5vGbZ2Wq",
    "ResourceType": "Work",
    "ActionType": "Updated",
    "TimeStamp": "2026-11-02T08:59:58.123Z",
}
KARBON_WORK_ITEM = {  # the other spelling seen in the wild, of the same notification
    "ResourcePermaKey": "4ndV5vGbZ2Wq",
    "ResourceType": "WorkItem",
    "ActionType": "Updated",
    "Timestamp": "2026-11-02T08:59:58.123Z",
}


def test_karbon_deliveries_in_both_spellings_are_one_delivery(on_sql: Receiving) -> None:
    first = body_of(KARBON_WORK)
    second = body_of(KARBON_WORK_ITEM)

    answers = [
        on_sql.post(first, karbon_signed(first), source="karbon"),
        on_sql.post(second, karbon_signed(second), source="karbon"),
    ]

    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate"]
    [delivery] = stored(on_sql.uow)
    assert (delivery.delivery.source, delivery.delivery.topic) == ("karbon", "Work")
    assert delivery.delivery.resource == "4ndV5vGbZ2Wq"
    assert on_sql.woken == ["karbon"]


def test_karbon_dedupes_by_resource_and_timestamp(on_memory: Receiving) -> None:
    later = body_of({**KARBON_WORK, "TimeStamp": "2026-11-02T09:04:00.000Z"})
    other = body_of({**KARBON_WORK, "ResourcePermaKey": "7xQ"})
    contact = body_of({**KARBON_WORK, "ResourceType": "Contact"})
    first = body_of(KARBON_WORK)

    statuses = [
        on_memory.post(body, karbon_signed(body), source="karbon").json()["status"]
        for body in (first, first, later, other, contact)
    ]

    assert statuses == ["accepted", "duplicate", "accepted", "accepted", "accepted"]
    assert [(d.delivery.topic, d.delivery.resource) for d in stored(on_memory.uow)] == [
        ("Work", "4ndV5vGbZ2Wq"),
        ("Work", "4ndV5vGbZ2Wq"),
        ("Work", "7xQ"),
        ("Contact", "4ndV5vGbZ2Wq"),
    ]


def test_karbon_with_a_bad_or_missing_signature_is_401(on_memory: Receiving) -> None:
    body = body_of(KARBON_WORK)

    answers = [
        on_memory.post(body, karbon_signed(body, key="not-the-karbon-signing-key"), "karbon"),
        on_memory.post(body, {"Signature": sign_body(KARBON_KEY, body + b" ")}, "karbon"),
        on_memory.post(body, {"Content-Type": "application/json"}, "karbon"),
        # the generic scheme's header is no Karbon signature
        on_memory.post(body, signed(body, secret=KARBON_KEY), "karbon"),
    ]

    assert [a.status_code for a in answers] == [401, 401, 401, 401]
    assert stored(on_memory.uow) == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({**KARBON_WORK, "ResourcePermaKey": ""}, "ResourcePermaKey"),
        ({**KARBON_WORK, "ResourceType": "Invoice"}, "ResourceType"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_karbon_payloads_without_a_resource_are_400(
    on_memory: Receiving, data: object, named: str
) -> None:
    body = body_of(data)

    answer = on_memory.post(body, karbon_signed(body), source="karbon")

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert stored(on_memory.uow) == []


# --------------------------------------------------------------------------- end to end


def sync_service(uow: UnitOfWorkFactory, clock: FrozenClock) -> SyncService:
    config = load_config_text(CONFIG, "phases-test.toml")
    return SyncService(
        tenant=config.firm.id,
        uow=uow,
        sources=[PushedPhaseSource(SOURCE, config.firm.currency)],
        ledger=MemoryLedger(),
        gateway=MemoryGateway(),
        mapper=MappingEngine(config),
        clock=clock,
        policy=config.collection,
    )


def milestone_states(uow: UnitOfWorkFactory) -> dict[str, MilestoneState]:
    with uow() as unit:
        return {m.definition_id: m.state for m in unit.milestones.list()}


def test_a_phase_delivered_twice_and_imported_again_triggers_one_milestone(
    on_sql: Receiving,
) -> None:
    service = sync_service(on_sql.uow, on_sql.clock)
    assert on_sql.deliver(EVENT).json() == {"status": "accepted"}
    assert on_sql.deliver(EVENT).json() == {"status": "duplicate"}
    # the same completion in a CSV export: once with its event id, once without one
    csv_text = (
        "event_id,completed_at,work_item_key,title,client_key,client_name,ledger_customer_id,"
        "work_type,fee,status\n"
        "evt-0001,2026-11-02T08:55:00Z,WI-1,2026 Form 1120 - Acme,CL-ACME,Acme LLC,58,"
        "Tax Return,3000.00,Completed\n"
        ",2026-11-02T08:55:00Z,WI-1,2026 Form 1120 - Acme,CL-ACME,Acme LLC,58,"
        "Tax Return,3000.00,Completed\n"
    )
    imported = read_rows(csv_text, "export.csv")
    assert imported.problems == []
    with on_sql.uow() as unit:
        added = [
            unit.inbox.add(SourceId(SOURCE), *inbox_entry(e), on_sql.clock.now())
            for _, e in imported.events
        ]
        unit.commit()
    assert added == [False, True]  # the event id dedupes; the id-less row is a new delivery

    polled = service.poll_sources()
    mapped = service.map_phases()

    assert (polled.done, polled.problems) == (1, [])  # one phase, though two deliveries
    assert (mapped.done, mapped.problems) == (1, [])
    with on_sql.uow() as unit:
        phases = unit.phases.list()
        engagement = unit.engagements.get(SourceId(SOURCE), WorkItemKey("WI-1"))
    assert [(p.phase.phase, p.status) for p in phases] == [("Completed", PhaseStatus.MAPPED)]
    assert phases[0].phase.completed_at == datetime(2026, 11, 2, 8, 55, tzinfo=UTC)
    assert engagement is not None and engagement.ledger_customer_id == "58"
    assert milestone_states(on_sql.uow) == {
        "kickoff": MilestoneState.PENDING,
        "filed": MilestoneState.TRIGGERED,
    }
    assert {d.status for d in stored(on_sql.uow)} == {DeliveryStatus.DONE}

    on_sql.clock.advance(minutes=10)
    assert on_sql.deliver(event(event_id="evt-0001-resent")).json()["status"] == "accepted"
    assert service.poll_sources().done == 0  # same work item, phase and time: no new phase
    assert service.map_phases().done == 0
    assert milestone_states(on_sql.uow)["filed"] is MilestoneState.TRIGGERED


def test_a_bad_inbox_body_is_failed_with_a_reason_and_the_batch_goes_on(
    on_sql: Receiving,
) -> None:
    service = sync_service(on_sql.uow, on_sql.clock)
    source = SourceId(SOURCE)
    kickoff = event(
        event_id="evt-kickoff",
        occurred_at="2026-11-01T12:00:00Z",
        phase={"status": "In Progress", "secondary": "Documents received"},
    )
    with on_sql.uow() as unit:
        # stored by an older version, or by hand: the poll must not trust the inbox blindly
        unit.inbox.add(source, "phase.completed", "WI-BAD", "bad-1", "{not json", NOW)
        unit.inbox.add(source, "phase.completed", "WI-1", "good-1", json.dumps(kickoff), NOW)
        unit.inbox.add(source, "phase.completed", "WI-2", "bad-2", json.dumps(event(phase={})), NOW)
        # valid as an event, but USD has no third decimal: only the firm's currency says so
        sub_cent = event(event_id="evt-sub", work_item__key="WI-3", work_item__fee="10.005")
        unit.inbox.add(source, "phase.completed", "WI-3", "bad-3", json.dumps(sub_cent), NOW)
        unit.inbox.add(source, "phase.completed", "WI-1", "good-2", json.dumps(EVENT), NOW)
        unit.commit()

    polled = service.poll_sources()
    mapped = service.map_phases()

    assert (polled.done, mapped.done) == (2, 2)
    outcome = {d.delivery.resource: d for d in stored(on_sql.uow) if d.delivery.resource != "WI-1"}
    assert {r: d.status for r, d in outcome.items()} == {
        "WI-BAD": DeliveryStatus.FAILED,
        "WI-2": DeliveryStatus.FAILED,
        "WI-3": DeliveryStatus.FAILED,
    }
    assert "WI-BAD" in (outcome["WI-BAD"].note or "")
    assert "phase: " in (outcome["WI-2"].note or "")
    assert "decimal places" in (outcome["WI-3"].note or "")
    assert len(polled.problems) == 3
    assert all(
        d.status is DeliveryStatus.DONE for d in stored(on_sql.uow) if d.delivery.resource == "WI-1"
    )
    assert milestone_states(on_sql.uow) == {
        "kickoff": MilestoneState.TRIGGERED,
        "filed": MilestoneState.TRIGGERED,
    }
