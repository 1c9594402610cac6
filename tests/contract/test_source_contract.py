"""The PracticeSource contract, run against every implementation: the memory source, Karbon over
its emulator and the close-checklist source over its emulator.

A driver per implementation plays the practice system (create work, move it to a phase, move it
back); the suite polls like the core does (applying `remember` and the cursor between polls) and
checks what every source must do."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import pytest

from adapters.http import RequestBudget
from adapters.karbon.adapter import KarbonOptions, KarbonSource
from adapters.karbon.client import KarbonClient
from adapters.karbon.emulator import KarbonEmulator
from adapters.keeper.adapter import CloseChecklistSource
from adapters.keeper.client import CloseChecklistClient
from adapters.keeper.emulator import CloseChecklistEmulator
from adapters.memory.clock import FrozenClock
from adapters.memory.source import MemorySource
from connector.domain.ids import ClientKey, SourceId, WorkItemKey
from connector.domain.model import Engagement, PhaseCompletion, normalise_status
from connector.ports import PollBatch, PollContext, PracticeSource

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Driver(Protocol):
    source: PracticeSource
    clock: FrozenClock
    first: str  # a phase work reaches first
    second: str  # a later phase

    def new_work(self, n: int) -> str: ...

    def reach(self, key: str, phase: str) -> None: ...

    def move_back(self, key: str, to: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class DictMemory:
    values: dict[str, str] = field(default_factory=dict)

    def recall(self, keys: Collection[str]) -> Mapping[str, str]:
        return {k: self.values[k] for k in keys if k in self.values}

    def recall_all(self) -> Mapping[str, str]:
        return dict(self.values)


@dataclass
class Poller:
    """Polls like SyncService.poll_sources: the batch's memory and cursor are kept for next time."""

    driver: Driver
    memory: DictMemory = field(default_factory=DictMemory)
    cursor: str | None = None
    seen: list[PhaseCompletion] = field(default_factory=list)
    engagements: dict[str, Engagement] = field(default_factory=dict)

    def poll(self, *, keep: bool = True) -> PollBatch:
        context = PollContext(self.cursor, self.memory, self.driver.clock.now())
        batch = self.driver.source.poll(context)
        if keep:
            self.memory.values.update(batch.remember)
            self.cursor = batch.cursor
            self.seen.extend(batch.phases)
            self.engagements.update({e.key: e for e in batch.engagements})
        return batch

    def keys(self) -> list[tuple[str, str, str, str]]:
        return [p.natural_key for p in self.seen]


class MemoryDriver:
    first, second = "In Progress", "Completed"

    def __init__(self) -> None:
        self.clock = FrozenClock(START)
        self.source = MemorySource("memory")

    def new_work(self, n: int) -> str:
        key = f"WI-{n}"
        self.source.add_engagement(
            Engagement(
                source=SourceId("memory"),
                key=WorkItemKey(key),
                client_key=ClientKey(f"CL-{n}"),
                client_name=f"Client {n}",
                title=f"Return {n}",
            )
        )
        return key

    def reach(self, key: str, phase: str) -> None:
        self.clock.advance(minutes=1)
        self.source.complete(key, phase, self.clock.now())

    def move_back(self, key: str, to: str) -> None:
        self.clock.advance(minutes=1)
        self.source.complete(key, self.second, self.clock.now(), reopened=True)
        self.source.complete(key, to, self.clock.now())

    def close(self) -> None:
        pass


class KarbonDriver:
    first, second = "In Progress", "Completed"

    def __init__(self) -> None:
        self.clock = FrozenClock(START)
        self.emulator = KarbonEmulator(clock=self.clock.now, seed=3)
        self.emulator.start()
        self.client = KarbonClient(
            bearer_token="app-token-0000",
            access_key="eyJfirm",
            base_url=self.emulator.url,
            budget=RequestBudget(10_000),
            sleep=lambda _: None,
        )
        self.source = KarbonSource(
            "karbon",
            self.client,
            KarbonOptions(currency="USD", sweep_statuses=("In Progress", "Completed")),
        )

    def new_work(self, n: int) -> str:
        client = f"CL{n:04d}"
        self.emulator.add_client(client, f"Client {n}")
        return self.emulator.add_work_item(
            client_key=client, title=f"Return {n}", fee=Decimal("1200.00")
        )

    def reach(self, key: str, phase: str) -> None:
        self.clock.advance(minutes=1)
        self.emulator.set_status(key, phase)

    def move_back(self, key: str, to: str) -> None:
        self.reach(key, to)

    def close(self) -> None:
        self.client.close()
        self.emulator.stop()
        assert self.emulator.violations() == []


class ClosesDriver:
    first, second = "In Progress", "Done"

    def __init__(self) -> None:
        self.clock = FrozenClock(START)
        self.emulator = CloseChecklistEmulator(clock=self.clock.now, auto_complete=False)
        self.emulator.start()
        self.client = CloseChecklistClient(self.emulator.url, "closes-token", sleep=lambda _: None)
        self.source = CloseChecklistSource("closes", self.client)

    def new_work(self, n: int) -> str:
        client = f"c-{n}"
        self.emulator.add_client(client, f"Client {n}", ledger_customer_id=str(100 + n))
        return self.emulator.open_close(client, "2026-10")

    def reach(self, key: str, phase: str) -> None:
        self.clock.advance(minutes=1)
        self.emulator.set_close_status(key, phase)

    def move_back(self, key: str, to: str) -> None:
        self.reach(key, to)

    def close(self) -> None:
        self.client.close()
        self.emulator.stop()
        assert self.emulator.violations() == []


DRIVERS: dict[str, Callable[[], Driver]] = {
    "memory": MemoryDriver,
    "karbon": KarbonDriver,
    "closes": ClosesDriver,
}


@pytest.fixture(params=sorted(DRIVERS))
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    made = DRIVERS[request.param]()
    yield made
    made.close()


def _started(driver: Driver) -> Poller:
    poller = Poller(driver)
    poller.poll()  # sources that baseline do it now, before any work exists
    return poller


def test_each_phase_reached_is_reported_exactly_once(driver: Driver) -> None:
    poller = _started(driver)
    keys = [driver.new_work(n) for n in range(3)]
    for key in keys:
        driver.reach(key, driver.first)
    poller.poll()
    poller.poll()
    for key in keys[:2]:
        driver.reach(key, driver.second)
    poller.poll()
    poller.poll()
    reported = [(p.work_item, normalise_status(p.phase)) for p in poller.seen if not p.reopened]
    expected = [(k, normalise_status(driver.first)) for k in keys] + [
        (k, normalise_status(driver.second)) for k in keys[:2]
    ]
    assert sorted(reported) == sorted(expected)
    assert len(set(poller.keys())) == len(poller.keys())


def test_polling_again_with_the_same_context_reports_the_same_phases(driver: Driver) -> None:
    poller = _started(driver)
    key = driver.new_work(1)
    driver.reach(key, driver.first)
    first = poller.poll(keep=False)
    again = poller.poll(keep=False)
    assert [p.natural_key for p in first.phases] == [p.natural_key for p in again.phases]
    assert [p.work_item for p in first.phases] == [key]


def test_a_phase_comes_with_its_engagement_and_client(driver: Driver) -> None:
    poller = _started(driver)
    key = driver.new_work(7)
    driver.reach(key, driver.first)
    batch = poller.poll()
    engagement = poller.engagements[key]
    assert engagement.source == driver.source.source_id
    assert engagement.client_key and engagement.client_name == "Client 7"
    assert {c.key for c in batch.clients} >= {engagement.client_key}
    found = driver.source.get_engagement(WorkItemKey(key))
    assert found is not None and found.key == key and found.client_key == engagement.client_key


def test_moving_back_reports_the_phase_left_as_reopened(driver: Driver) -> None:
    poller = _started(driver)
    key = driver.new_work(2)
    driver.reach(key, driver.first)
    poller.poll()
    driver.reach(key, driver.second)
    poller.poll()
    driver.move_back(key, driver.first)
    batch = poller.poll()
    reopened = [p for p in batch.phases if p.reopened]
    assert [normalise_status(p.phase) for p in reopened] == [normalise_status(driver.second)]
    original = next(p for p in poller.seen if not p.reopened and p.phase == reopened[0].phase)
    assert reopened[0].natural_key != original.natural_key  # so the core stores both
    poller.poll()
    assert len(set(poller.keys())) == len(poller.keys())


def test_nothing_new_reports_nothing(driver: Driver) -> None:
    poller = _started(driver)
    key = driver.new_work(3)
    driver.reach(key, driver.first)
    poller.poll()
    driver.clock.advance(hours=1)
    assert poller.poll().phases == []
