"""The close-checklist source over real HTTP: emulator + client + adapter, the signed webhook, the
contract file itself, and one pass through the core's poll and map stages."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate
from werkzeug.wrappers import Request, Response

from adapters.emulation.server import EmulatorServer
from adapters.keeper import CONTRACT_PATH
from adapters.keeper.adapter import CloseChecklistSource
from adapters.keeper.client import CloseChecklistClient, format_time, verify_webhook
from adapters.keeper.emulator import CloseChecklistEmulator
from adapters.keeper.errors import MalformedEvent, MalformedRecord
from adapters.keeper.translate import close_from_json
from adapters.keeper.webhooks import CloseChecklistReceiver
from adapters.memory.clock import FrozenClock
from adapters.memory.ledger import MemoryLedger
from adapters.memory.store import MemoryStore
from adapters.signing import BadSignature, sign_timestamped
from adapters.web.webhooks import BadPayload
from connector.domain.errors import ConfigError, TransientError
from connector.domain.ids import SourceId, WorkItemKey
from connector.domain.model import MilestoneState, PhaseCompletion, TriggerKind
from connector.ports import Delivery, PollBatch, PollContext
from connector.services import SyncService
from mappings.engine import MappingEngine
from tests.support import firm_config

TOKEN = "closes-token"
SECRET = "whsec-close-checklist-test"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TWO_TASKS = {"Bank": ["Reconcile checking", "Reconcile savings"], "Review": ["Review P&L"]}


# --------------------------------------------------------------------------- harness


class DictMemory:
    """The source's snapshots, as the core keeps them: changed only by applying a batch."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def recall(self, keys: Collection[str]) -> Mapping[str, str]:
        return {k: self.values[k] for k in keys if k in self.values}

    def recall_all(self) -> Mapping[str, str]:
        return dict(self.values)


class Receiver:
    """Our webhook endpoint as the web layer runs it: the source's receiver verifies each push,
    which is kept once per dedupe key in an inbox."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        self.inbox: list[Delivery] = []
        self.answers: list[int] = []
        self.fail_next = 0
        self._seen: set[str] = set()
        self.receiver = CloseChecklistReceiver(SECRET)
        self._ids = itertools.count(1)
        self.server = EmulatorServer(self.handle)

    def reset(self) -> None:
        self.inbox.clear()
        self.answers.clear()
        self.fail_next = 0
        self._seen.clear()

    def handle(self, request: Request) -> Response:
        if self.fail_next:
            self.fail_next -= 1
            return self._answer(503)
        try:
            [accepted] = self.receiver.accept(request.headers, request.get_data(), self.clock.now())
        except BadSignature:
            return self._answer(401)
        except BadPayload:
            return self._answer(400)
        if accepted.dedupe_key not in self._seen:
            self._seen.add(accepted.dedupe_key)
            self.inbox.append(
                Delivery(
                    id=next(self._ids),
                    source=SourceId("keeper"),
                    topic=accepted.topic,
                    resource=accepted.resource,
                    received_at=self.clock.now(),
                    body=accepted.body,
                )
            )
        return self._answer(200)

    def _answer(self, status: int) -> Response:
        self.answers.append(status)
        return Response(status=status)


@dataclass
class Poller:
    """Polls as the core does: applies `remember`, the cursor and the handled deliveries only
    after each batch, as if committed."""

    source: CloseChecklistSource
    clock: FrozenClock
    memory: DictMemory = field(default_factory=DictMemory)
    cursor: str | None = None
    pending: list[Delivery] = field(default_factory=list)

    def context(self) -> PollContext:
        return PollContext(self.cursor, self.memory, self.clock.now(), tuple(self.pending))

    def poll(self) -> PollBatch:
        batch = self.source.poll(self.context())
        self.commit(batch)
        return batch

    def commit(self, batch: PollBatch) -> None:
        self.memory.values.update(batch.remember)
        self.cursor = batch.cursor
        done = set(batch.handled) | set(batch.failed)
        self.pending = [d for d in self.pending if d.id not in done]


# Stopping a loopback server takes about half a second (its poll interval), so one emulator and
# one receiver serve the whole module, reset to a fresh firm before each test.


@pytest.fixture(scope="module")
def shared_clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(scope="module")
def shared_receiver(shared_clock: FrozenClock) -> Iterator[Receiver]:
    made = Receiver(shared_clock)
    made.server.start()
    try:
        yield made
    finally:
        made.server.stop()


@pytest.fixture(scope="module")
def shared_emulator(
    shared_clock: FrozenClock, shared_receiver: Receiver
) -> Iterator[CloseChecklistEmulator]:
    with CloseChecklistEmulator(
        token=TOKEN,
        clock=shared_clock.now,
        webhook_url=shared_receiver.server.url + "/webhooks/keeper",
        webhook_secret=SECRET,
    ) as emu:
        yield emu


@pytest.fixture
def clock(shared_clock: FrozenClock) -> FrozenClock:
    shared_clock.set(START)
    return shared_clock


@pytest.fixture
def receiver(shared_receiver: Receiver) -> Receiver:
    shared_receiver.reset()
    return shared_receiver


@pytest.fixture
def emulator(
    shared_emulator: CloseChecklistEmulator, clock: FrozenClock, receiver: Receiver
) -> Iterator[CloseChecklistEmulator]:
    shared_emulator.reset()
    yield shared_emulator
    # every request our client sent, in every test using this fixture, follows the contract
    assert shared_emulator.violations() == []


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(emulator: CloseChecklistEmulator, sleeps: list[float]) -> Iterator[CloseChecklistClient]:
    made = CloseChecklistClient(emulator.url, TOKEN, max_attempts=4, sleep=sleeps.append)
    yield made
    made.close()


@pytest.fixture
def source(client: CloseChecklistClient) -> CloseChecklistSource:
    return CloseChecklistSource("keeper", client)


@pytest.fixture
def poller(source: CloseChecklistSource, clock: FrozenClock) -> Poller:
    return Poller(source, clock)


def later(clock: FrozenClock, minutes: float = 1) -> None:
    clock.advance(minutes=minutes)


def summary(phases: Sequence[PhaseCompletion]) -> list[tuple[str, str, str, bool]]:
    return [(p.work_item, p.kind.value, p.phase, p.reopened) for p in phases]


def finish(emulator: CloseChecklistEmulator, close_id: str) -> None:
    for section in emulator.close(close_id)["sections"]:
        emulator.complete_section(close_id, section["name"])


# --------------------------------------------------------------------------- the contract


def test_the_contract_file_is_a_valid_openapi_31_document() -> None:
    spec = yaml.safe_load(CONTRACT_PATH.read_text())
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any structural fault
    assert {"/v1/clients", "/v1/close-statuses", "/v1/closes", "/v1/closes/{close_id}"} <= set(
        spec["paths"]
    )


def test_a_request_outside_the_contract_is_a_violation_and_refused(clock: FrozenClock) -> None:
    with CloseChecklistEmulator(token=TOKEN, clock=clock.now) as emu:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        typo = requests.get(
            f"{emu.url}/v1/closes", params={"updated_after": "x"}, headers=auth, timeout=5
        )
        too_big = requests.get(
            f"{emu.url}/v1/closes", params={"limit": "500"}, headers=auth, timeout=5
        )
        no_token = requests.get(f"{emu.url}/v1/close-statuses", timeout=5)
        good = requests.get(f"{emu.url}/v1/closes", params={"limit": "10"}, headers=auth, timeout=5)

        assert (typo.status_code, too_big.status_code, no_token.status_code) == (400, 400, 401)
        assert good.status_code == 200
        assert typo.json()["error"]["code"] == "invalid_request"
        found = emu.violations()
        assert any("unknown query parameter 'updated_after'" in v for v in found)
        assert any("limit" in v and "500" in v for v in found)
        assert any("security" in v for v in found)
        assert len(found) == 3  # the good request added none


def test_the_emulators_answers_follow_the_contract(emulator: CloseChecklistEmulator) -> None:
    spec = yaml.safe_load(CONTRACT_PATH.read_text())
    spec["servers"] = [{"url": emulator.url}]
    api = OpenAPI.from_dict(spec)
    emulator.add_client("CL-1", "Acme LLC", ledger_customer_id="58")
    emulator.add_client("CL-2", "Beta Inc", frequency="quarterly", ledger=None)
    close_id = emulator.open_close("CL-1", "2026-10")
    emulator.open_close("CL-2", "2026-Q4")
    emulator.set_task(close_id, "Reconcile credit card", "Canceled")
    emulator.complete_section(close_id, "Pre-close")
    emulator.fail_next(1, 429, retry_after=3)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    checked = []
    for path in (
        "/v1/closes",  # the injected 429
        "/v1/clients?limit=1",
        "/v1/clients/CL-1",
        "/v1/close-statuses",
        "/v1/closes?limit=1",
        f"/v1/closes/{close_id}",
        "/v1/closes/nope",
        "/v1/closes?limit=0",
    ):
        answer = session.get(emulator.url + path, timeout=5)
        api.validate_response(
            RequestsOpenAPIRequest(answer.request), RequestsOpenAPIResponse(answer)
        )
        checked.append(answer.status_code)
    session.headers["Authorization"] = "Bearer wrong"
    answer = session.get(emulator.url + "/v1/closes", timeout=5)
    api.validate_response(RequestsOpenAPIRequest(answer.request), RequestsOpenAPIResponse(answer))
    checked.append(answer.status_code)
    session.close()
    assert checked == [429, 200, 200, 200, 200, 200, 404, 400, 401]
    emulator.log.clear()  # the deliberate bad requests above are not the client's


# --------------------------------------------------------------------------- polling


def test_paging_follows_the_cursor_over_more_than_100_closes(
    emulator: CloseChecklistEmulator, poller: Poller
) -> None:
    ids = []
    for n in range(65):
        emulator.add_client(f"CL-{n:03d}", f"Client {n}")
        ids += [emulator.open_close(f"CL-{n:03d}", p, TWO_TASKS) for p in ("2026-09", "2026-10")]

    batch = poller.poll()

    assert sorted(e.key for e in batch.engagements) == sorted(ids)
    assert len({p.work_item for p in batch.phases}) == 130  # each first seen in Not Started
    assert len(batch.clients) == 65
    assert emulator.list_calls() == 2  # 100 + 30
    pages = [e.query for e in emulator.log.snapshot() if e.path == "/v1/closes"]
    assert "cursor=" not in pages[0] and "cursor=" in pages[1]


def test_a_close_status_phase_is_emitted_once_across_polls(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    assert summary(poller.poll().phases) == [(close_id, "close_status", "Not Started", False)]

    later(clock)
    emulator.set_task(close_id, "Reconcile checking", "Done")  # Keeper starts the close
    first = poller.poll()
    later(clock)
    again = poller.poll()  # still inside the overlap window: listed again
    later(clock, 10)
    third = poller.poll()

    assert summary(first.phases) == [(close_id, "close_status", "In Progress", False)]
    assert first.phases[0].completed_at == clock.now() - timedelta(minutes=11)
    assert again.phases == [] and third.phases == []
    assert again.engagements  # the overlap really re-read the close
    assert again.remember == {}  # nothing changed, nothing to write


def test_repeating_a_poll_with_the_same_context_gives_the_same_phases(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    poller.poll()
    later(clock)
    emulator.set_close_status(close_id, "Ready for Manager Review")
    context = poller.context()

    first = poller.source.poll(context)
    second = poller.source.poll(context)  # e.g. the first batch's commit failed

    assert [p.natural_key for p in first.phases] == [p.natural_key for p in second.phases]
    assert summary(first.phases) == [(close_id, "close_status", "Ready for Manager Review", False)]
    poller.commit(second)
    assert poller.poll().phases == []


def test_a_webhook_and_the_poll_seeing_one_change_give_one_phase(
    emulator: CloseChecklistEmulator, poller: Poller, receiver: Receiver, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    poller.poll()
    later(clock)
    emulator.set_close_status(close_id, "Done")
    emulator.set_close_status(close_id, "Done")  # no change, no push
    assert emulator.pump() == 1
    assert emulator.pump() == 0  # nothing left
    poller.pending = list(receiver.inbox)
    assert [(d.topic, d.resource) for d in poller.pending] == [("close.status_changed", close_id)]

    batch = poller.poll()

    assert summary(batch.phases) == [(close_id, "close_status", "Done", False)]
    assert batch.handled == [receiver.inbox[0].id] and batch.failed == {}
    assert emulator.detail_calls() == 0  # the list already held the close's current state
    later(clock)
    assert poller.poll().phases == []


def test_a_push_for_a_close_outside_the_window_is_fetched_and_the_cursor_holds(
    emulator: CloseChecklistEmulator, poller: Poller, receiver: Receiver, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    poller.poll()
    ahead = "2026-12-01T00:00:00.000Z"  # e.g. a clock that ran ahead once
    poller.cursor = ahead
    later(clock)
    emulator.set_task(close_id, "Review P&L", "Done")  # task.completed, then In Progress
    emulator.pump()
    poller.pending = list(receiver.inbox)
    assert [d.topic for d in poller.pending] == ["task.completed", "close.status_changed"]

    batch = poller.poll()

    assert emulator.detail_calls() == 1  # one fetch for two pushes about one close
    assert summary(batch.phases) == [
        (close_id, "close_status", "In Progress", False),
        (close_id, "section_done", "Review", False),
    ]
    assert batch.handled == [d.id for d in receiver.inbox]
    assert batch.cursor == ahead  # never moves backwards


def test_the_cursor_is_the_latest_update_listed_and_never_moves_backwards(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    later(clock, 2)
    emulator.set_task(close_id, "Review P&L", "In Progress")
    assert poller.poll().cursor == format_time(clock.now())

    ahead = format_time(clock.now() + timedelta(minutes=3))
    poller.cursor = ahead  # the close's last update is inside the 5-minute overlap before it
    batch = poller.poll()

    assert [e.key for e in batch.engagements] == [close_id]
    assert batch.cursor == ahead


def test_pushes_that_cannot_be_acted_on_fail_with_a_reason_and_the_rest_goes_on(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    poller.poll()
    poller.cursor = "2026-12-01T00:00:00.000Z"
    later(clock)
    emulator.set_close_status(close_id, "Stuck")

    def push(n: int, topic: str, resource: str, body: str) -> Delivery:
        return Delivery(n, SourceId("keeper"), topic, resource, clock.now(), body)

    def event(close: str) -> str:
        data = {"close_id": close, "client_id": "CL-1", "period": "2026-10", "status": "Stuck"}
        return json.dumps(
            {
                "id": f"evt_{close}",
                "type": "close.status_changed",
                "created_at": START.isoformat(),
                "data": data,
            }
        )

    poller.pending = [
        push(1, "close.status_changed", "close_99999", event("close_99999")),
        push(2, "close.status_changed", close_id, "{not json"),
        push(3, "close.deleted", close_id, event(close_id)),
        push(4, "close.status_changed", close_id, event(close_id)),
    ]

    batch = poller.poll()

    assert batch.handled == [4]
    assert set(batch.failed) == {1, 2, 3}
    assert "close_99999 does not exist" in batch.failed[1]
    assert "malformed body" in batch.failed[2] and "not JSON" in batch.failed[2]
    assert "'close.deleted' is not one this source acts on" in batch.failed[3]
    assert summary(batch.phases) == [(close_id, "close_status", "Stuck", False)]


def test_a_section_is_done_when_every_task_is_done_or_canceled(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    poller.poll()
    later(clock)
    emulator.set_task(close_id, "Reconcile checking", "Done")
    section_phases = [p for p in poller.poll().phases if p.kind is TriggerKind.SECTION_DONE]
    assert section_phases == []  # one of two tasks: not done yet

    later(clock, 20)
    emulator.set_task(close_id, "Reconcile savings", "Canceled")
    batch = poller.poll()

    assert summary(batch.phases) == [(close_id, "section_done", "Bank", False)]
    assert batch.phases[0].completed_at == clock.now()
    assert batch.phases[0].completion == f"{close_id}@{clock.now().isoformat()}"
    later(clock)
    assert poller.poll().phases == []


def test_reopening_emits_reopened_phases_the_core_keeps(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    finish(emulator, close_id)  # auto-complete: Done
    done = poller.poll()
    done_phase = next(p for p in done.phases if p.phase == "Done")
    bank_phase = next(p for p in done.phases if p.phase == "Bank")

    later(clock, 30)
    emulator.set_task(close_id, "Reconcile savings", "In Progress")
    emulator.set_close_status(close_id, "In Progress")
    batch = poller.poll()

    assert sorted(summary(batch.phases)) == [
        (close_id, "close_status", "Done", True),
        (close_id, "close_status", "In Progress", False),
        (close_id, "section_done", "Bank", True),
    ]
    reopened_done = next(p for p in batch.phases if p.reopened and p.phase == "Done")
    reopened_bank = next(p for p in batch.phases if p.reopened and p.phase == "Bank")
    # the core stores phases once per natural key: a reopening must not collide with the
    # completion it reverses, or it would be dropped as a duplicate
    assert reopened_done.natural_key != done_phase.natural_key
    assert reopened_done.completion.startswith(done_phase.completion)
    assert reopened_bank.natural_key != bank_phase.natural_key
    assert reopened_done.completed_at == clock.now()
    later(clock)
    assert poller.poll().phases == []

    later(clock, 30)
    finish(emulator, close_id)  # done again: new completions, billed again if the plan says so
    again = poller.poll()
    assert sorted(summary(again.phases)) == [
        (close_id, "close_status", "Done", False),
        (close_id, "section_done", "Bank", False),
    ]
    assert {p.natural_key for p in again.phases}.isdisjoint(p.natural_key for p in done.phases)


def test_a_brand_new_close_already_done_emits_its_status_and_sections_once(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC", ledger_customer_id="58")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    emulator.complete_section(close_id, "Bank")
    emulator.complete_section(close_id, "Review")

    batch = poller.poll()

    assert sorted(summary(batch.phases)) == [
        (close_id, "close_status", "Done", False),
        (close_id, "section_done", "Bank", False),
        (close_id, "section_done", "Review", False),
    ]
    assert [e.ledger_customer_id for e in batch.engagements] == ["58"]
    assert batch.remember.keys() == {close_id}
    later(clock)
    assert poller.poll().phases == []


def test_an_unknown_status_warns_and_the_rest_of_the_batch_goes_on(
    emulator: CloseChecklistEmulator, poller: Poller, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    stuck = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    fine = emulator.open_close("CL-1", "2026-11", TWO_TASKS)
    poller.poll()
    later(clock)
    emulator.set_close_status(stuck, "Stuck")
    emulator.set_close_status(fine, "Ready for Manager Review")
    emulator.set_statuses(["Not Started", "In Progress", "Ready for Manager Review", "Done"])

    batch = poller.poll()

    assert summary(batch.phases) == [(fine, "close_status", "Ready for Manager Review", False)]
    assert len(batch.warnings) == 1
    assert stuck in batch.warnings[0] and "'Stuck'" in batch.warnings[0]
    assert "not one of the firm's close statuses" in batch.warnings[0]

    later(clock)
    emulator.set_statuses(["Not Started", "In Progress", "Stuck", "Done"])  # the firm fixes it
    emulator.set_task(stuck, "Review P&L", "Done")  # a change brings it into the window again
    assert (stuck, "close_status", "Stuck", False) in summary(poller.poll().phases)


def test_backfill_from_bounds_the_first_poll(
    emulator: CloseChecklistEmulator, client: CloseChecklistClient, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    old = emulator.open_close("CL-1", "2026-09", TWO_TASKS)
    finish(emulator, old)
    later(clock, 60 * 24)
    recent = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    source = CloseChecklistSource("keeper", client, backfill_from=clock.now() - timedelta(hours=1))

    batch = source.poll(PollContext(None, DictMemory(), clock.now()))

    assert [e.key for e in batch.engagements] == [recent]
    assert summary(batch.phases) == [(recent, "close_status", "Not Started", False)]


def test_get_engagement_translates_the_close_and_its_client(
    emulator: CloseChecklistEmulator, source: CloseChecklistSource
) -> None:
    emulator.add_client("CL-1", "Acme LLC", ledger_customer_id="58")
    emulator.add_client("CL-2", "Beta Inc", frequency="quarterly", ledger=None)
    monthly = emulator.open_close("CL-1", "2026-10")
    quarterly = emulator.open_close("CL-2", "2026-Q4")

    first = source.get_engagement(WorkItemKey(monthly))
    second = source.get_engagement(WorkItemKey(quarterly))

    assert first is not None and second is not None
    assert (first.title, first.period, first.client_name) == (
        "October 2026 close",
        "2026-10",
        "Acme LLC",
    )
    assert first.kind.value == "recurring_close" and first.ledger_customer_id == "58"
    assert (second.title, second.ledger_customer_id) == ("Q4 2026 close", None)
    assert source.get_engagement(WorkItemKey("close_99999")) is None


def test_a_malformed_close_names_the_field_that_is_wrong() -> None:
    good = {
        "id": "close_1",
        "client_id": "CL-1",
        "period": "2026-10",
        "status": "Done",
        "status_changed_at": "2026-11-02T09:00:00.000Z",
        "updated_at": "2026-11-02T09:00:00.000Z",
        "sections": [{"name": "Bank", "tasks_total": 2, "tasks_done": 2, "done_at": None}],
    }
    assert close_from_json(good).done_sections == {"Bank": None}
    for change, expected in (
        ({"period": "2026-13"}, "period '2026-13'"),
        ({"status_changed_at": "yesterday"}, "status_changed_at is 'yesterday'"),
        ({"sections": [{"name": "Bank", "tasks_total": 1, "tasks_done": 2}]}, "sections[0] (Bank)"),
        ({"client_id": None}, "`client_id` is None"),
    ):
        with pytest.raises(MalformedRecord, match=re.escape(expected)):
            close_from_json({**good, **change})


# --------------------------------------------------------------------------- errors and retries


def test_a_refused_token_is_a_config_error_naming_the_env_var(
    emulator: CloseChecklistEmulator,
) -> None:
    wrong = CloseChecklistClient(emulator.url, "revoked", token_env="ACME_CLOSES_TOKEN")
    with pytest.raises(ConfigError, match="token in ACME_CLOSES_TOKEN was refused"):
        CloseChecklistSource("keeper", wrong).poll(PollContext(None, DictMemory(), START))
    assert emulator.log.count() == 1  # a refused token is not retried


@pytest.mark.parametrize(("cap", "expected"), [(60.0, 7.0), (0.25, 0.25)])
def test_a_429_waits_the_servers_retry_after_then_succeeds(
    emulator: CloseChecklistEmulator, cap: float, expected: float
) -> None:
    waits: list[float] = []
    client = CloseChecklistClient(emulator.url, TOKEN, max_wait=cap, sleep=waits.append)
    emulator.fail_next(1, 429, retry_after=7)

    assert client.close_statuses()[0] == "Not Started"
    assert waits == [expected]
    assert [e.status for e in emulator.log.snapshot()] == [429, 200]


def test_the_rate_limit_answers_429_and_a_transient_error_carries_retry_after(
    clock: FrozenClock,
) -> None:
    with CloseChecklistEmulator(token=TOKEN, clock=clock.now, rate_limit_per_minute=2) as emu:
        waits: list[float] = []
        client = CloseChecklistClient(emu.url, TOKEN, max_attempts=2, sleep=waits.append)
        client.close_statuses()
        client.close_statuses()
        with pytest.raises(TransientError) as caught:
            client.close_statuses()
        assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30
        assert len(waits) == 1 and 25 <= waits[0] <= 30
        assert emu.log.snapshot()[-1].status == 429
        assert emu.violations() == []


def test_5xx_is_retried_with_backoff_then_gives_a_transient_error(
    emulator: CloseChecklistEmulator, client: CloseChecklistClient, sleeps: list[float]
) -> None:
    emulator.fail_next(2, 500)
    assert client.close_statuses()
    assert len(sleeps) == 2 and all(0 < s <= 60 for s in sleeps)

    emulator.fail_next(4, 503)
    with pytest.raises(TransientError, match="503"):
        client.close_statuses()
    assert [e.status for e in emulator.log.snapshot()] == [500, 500, 200, 503, 503, 503, 503]


def test_an_unreachable_server_is_a_transient_error(sleeps: list[float]) -> None:
    server = EmulatorServer(lambda request: Response(status=200))
    url = server.start()
    server.stop()  # nothing listens on that port now
    client = CloseChecklistClient(url, TOKEN, max_attempts=2, sleep=sleeps.append)
    with pytest.raises(TransientError, match="unreachable"):
        client.close_statuses()
    assert len(sleeps) == 1


# --------------------------------------------------------------------------- webhooks


def signed(body: bytes, at: datetime, secret: str = SECRET) -> str:
    return sign_timestamped(secret, body, at)


EVENT: dict[str, Any] = {
    "id": "evt_000001",
    "type": "close.status_changed",
    "created_at": "2026-11-02T09:00:00.000Z",
    "data": {"close_id": "close_00001", "client_id": "CL-1", "period": "2026-10", "status": "Done"},
}


def test_a_signed_event_verifies_to_topic_resource_and_dedupe_key() -> None:
    body = json.dumps(EVENT).encode()
    event = verify_webhook(SECRET, signed(body, START), body, START + timedelta(minutes=4))
    assert event == ("close.status_changed", "close_00001", "evt_000001")
    assert (event.topic, event.resource, event.dedupe_key) == tuple(event)


@pytest.mark.parametrize(
    ("header", "body_change", "now_offset", "message"),
    [
        ("other-secret", None, 0, "does not match"),
        (None, {"id": "evt_tampered"}, 0, "does not match"),
        ("missing", None, 0, "missing"),
        (SECRET, None, 6, "away from now"),
        (SECRET, None, -6, "away from now"),
    ],
    ids=["wrong-secret", "tampered-body", "no-header", "stale", "from-the-future"],
)
def test_a_bad_signature_is_refused(
    header: str | None, body_change: dict[str, str] | None, now_offset: int, message: str
) -> None:
    body = json.dumps(EVENT).encode()
    signature = None if header == "missing" else signed(body, START, header or SECRET)
    if body_change:
        body = json.dumps({**EVENT, **body_change}).encode()
    with pytest.raises(BadSignature, match=re.escape(message)):
        verify_webhook(SECRET, signature, body, START + timedelta(minutes=now_offset))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({**EVENT, "id": 7}).encode(), "`id`"),
        (json.dumps({**EVENT, "type": "close.deleted"}).encode(), "`type` 'close.deleted'"),
        (json.dumps({**EVENT, "created_at": "soon"}).encode(), "`created_at` 'soon'"),
        (
            json.dumps({**EVENT, "data": {**EVENT["data"], "close_id": ""}}).encode(),
            "data.close_id",
        ),
        (json.dumps({k: v for k, v in EVENT.items() if k != "data"}).encode(), "no `data` object"),
    ],
    ids=["not-json", "not-object", "id", "type", "created_at", "close_id", "no-data"],
)
def test_a_malformed_event_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(message)):
        verify_webhook(SECRET, signed(body, START), body, START)


def test_the_receiver_turns_a_push_into_an_inbox_entry_or_refuses_it() -> None:
    receiver = CloseChecklistReceiver(SECRET)
    body = json.dumps(EVENT).encode()

    [accepted] = receiver.accept({"x-close-signature": signed(body, START)}, body, START)

    assert (accepted.topic, accepted.resource, accepted.dedupe_key) == (
        "close.status_changed",
        "close_00001",
        "evt_000001",
    )
    assert accepted.body == body.decode()
    bad = json.dumps({**EVENT, "type": "close.deleted"}).encode()
    with pytest.raises(BadPayload, match=re.escape("close.deleted")):
        receiver.accept({"X-Close-Signature": signed(bad, START)}, bad, START)
    with pytest.raises(BadSignature):
        receiver.accept(
            {"X-Close-Signature": signed(body, START, "another-secret-value")}, body, START
        )
    with pytest.raises(ValueError, match="at least 16"):
        CloseChecklistReceiver("short")


def test_undelivered_pushes_are_retried_and_lost_ones_are_caught_by_the_poll(
    emulator: CloseChecklistEmulator, poller: Poller, receiver: Receiver, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    emulator.set_close_status(close_id, "Stuck")
    receiver.fail_next = 1
    assert emulator.pump() == 0 and emulator.pending_webhooks() == 1
    assert emulator.pump() == 1 and emulator.pending_webhooks() == 0
    assert receiver.answers == [503, 200]

    later(clock)
    emulator.drop_next_webhooks(1)
    emulator.set_close_status(close_id, "Done")
    assert emulator.pump() == 0 and len(emulator.dropped_webhooks) == 1
    assert len(receiver.inbox) == 1  # only the Stuck push arrived
    poller.pending = list(receiver.inbox)

    batch = poller.poll()

    assert summary(batch.phases) == [(close_id, "close_status", "Done", False)]  # from the list
    assert batch.handled == [receiver.inbox[0].id]


# --------------------------------------------------------------------------- the emulator


def test_the_emulator_behaves_like_keeper(
    emulator: CloseChecklistEmulator, clock: FrozenClock
) -> None:
    emulator.add_client("CL-1", "Acme LLC")
    october = emulator.open_close("CL-1", "2026-10", {"Bank": ["Reconcile", "Statements"]})
    emulator.set_task(october, "Statements", "Canceled")
    assert emulator.close(october)["status"] == "Not Started"  # only Done starts a close
    emulator.set_task(october, "Reconcile", "Done")
    assert emulator.close(october)["status"] == "Done"  # all tasks closed: auto-complete

    later(clock)
    november = emulator.open_close("CL-1", "2026-11")  # copies October's checklist
    copied = emulator.close(november)
    assert [
        (t["name"], t["status"], t["completed_at"]) for t in copied["sections"][0]["tasks"]
    ] == [
        ("Reconcile", "Not Started", None),
        ("Statements", "Not Started", None),
    ]
    emulator.set_task(november, "Reconcile", "Done")
    assert emulator.close(november)["status"] == "In Progress"
    assert (
        copied["sections"][0]["tasks"][0]["id"]
        != emulator.close(october)["sections"][0]["tasks"][0]["id"]
    )
    with pytest.raises(ValueError, match="already has a close"):
        emulator.open_close("CL-1", "2026-11")
    with pytest.raises(ValueError, match="not a monthly period"):
        emulator.open_close("CL-1", "2026-Q4")


def test_without_auto_complete_a_finished_close_stays_in_progress(clock: FrozenClock) -> None:
    with CloseChecklistEmulator(token=TOKEN, clock=clock.now, auto_complete=False) as emu:
        emu.add_client("CL-1", "Acme LLC")
        close_id = emu.open_close("CL-1", "2026-10", TWO_TASKS)
        finish(emu, close_id)
        assert emu.close(close_id)["status"] == "In Progress"
        assert all(s["done_at"] for s in emu.close(close_id)["sections"])


# --------------------------------------------------------------------------- through the core


def test_the_core_bills_the_close_once_and_untriggers_it_on_reopening(
    emulator: CloseChecklistEmulator, source: CloseChecklistSource, clock: FrozenClock
) -> None:
    store = MemoryStore()
    config = firm_config()
    service = SyncService(
        tenant=config.firm.id,
        uow=lambda: store.unit_of_work(config.firm.id),
        sources=[source],
        ledger=MemoryLedger(),
        gateway=None,
        mapper=MappingEngine(config),
        clock=clock,
        policy=config.collection,
    )

    def close_milestone() -> MilestoneState:
        with store.unit_of_work(config.firm.id) as uow:
            (found,) = [m for m in uow.milestones.list() if m.definition_id == "close"]
        return found.state

    emulator.add_client("CL-1", "Acme LLC", ledger_customer_id="70")
    close_id = emulator.open_close("CL-1", "2026-10", TWO_TASKS)
    later(clock)
    finish(emulator, close_id)
    for _ in range(2):
        later(clock)
        assert service.poll_sources().problems == []
        service.map_phases()
    assert close_milestone() is MilestoneState.TRIGGERED

    later(clock)
    emulator.set_close_status(close_id, "In Progress")
    later(clock)
    service.poll_sources()
    service.map_phases()
    assert close_milestone() is MilestoneState.PENDING

    with store.unit_of_work(config.firm.id) as uow:
        stored = [p.phase for p in uow.phases.list() if p.phase.phase == "Done"]
    assert [p.reopened for p in stored] == [False, True]
