"""The Karbon source end to end over real HTTP: KarbonClient -> emulator, webhooks from the
emulator -> our receiver (uvicorn) -> inbox -> SyncService.poll_sources.

Every transition of every work item must yield exactly one phase, whether webhooks are on or
off, duplicated, reordered or lost; an unchanged sweep must cost only list calls."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from adapters.http import RequestBudget
from adapters.karbon.adapter import KarbonOptions, KarbonSource, sweep_statuses_for
from adapters.karbon.client import KarbonClient
from adapters.karbon.emulator import KarbonEmulator
from adapters.karbon.webhooks import KarbonReceiver
from adapters.memory.clock import FrozenClock
from adapters.memory.gateway import MemoryGateway
from adapters.memory.ledger import MemoryLedger
from adapters.store.engine import Store, open_store
from adapters.web.webhooks import create_app, webhook_routes
from connector.domain.errors import ConfigError
from connector.domain.ids import TenantId
from connector.domain.model import MilestoneState
from connector.services import SOURCE_HEALTH, SyncService
from mappings.engine import MappingEngine
from scheduler.jobs import WebServer
from tests.support import firm_config

TENANT = TenantId("smith-cpa")
SIGNING_KEY = "karbon-signing-key-0123456789"
ACCESS_KEY = "eyJfirm"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
STAGES = [
    ("In Progress", "Documents received"),
    ("In Progress", "Review"),
    ("Completed", None),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    """One firm: the emulated Karbon, our store, our receiver and the sync service."""

    def __init__(self, store: Store, *, webhooks: bool) -> None:
        self.clock = FrozenClock(START)
        self.store = store
        self.emulator = KarbonEmulator(
            clock=self.clock.now,
            access_keys=(ACCESS_KEY,),
            rate_limit_per_minute=1_000_000,
            seed=7,
        )
        self.emulator.start()
        self.server: WebServer | None = None
        webhook_url = None
        if webhooks:
            port = _free_port()
            routes = webhook_routes({"karbon": KarbonReceiver(SIGNING_KEY)}, self.uow, self.clock)
            self.server = WebServer(create_app(routes), "127.0.0.1", port)
            self.server.start()
            webhook_url = f"http://127.0.0.1:{port}/webhooks/karbon"
        self.client = KarbonClient(
            bearer_token="app-token-0000",
            access_key=ACCESS_KEY,
            base_url=self.emulator.url,
            budget=RequestBudget(1_000_000),
            sleep=lambda _: None,
        )
        config = firm_config()
        self.source = KarbonSource(
            "karbon",
            self.client,
            KarbonOptions(
                currency="USD",
                sweep_statuses=sweep_statuses_for(["In Progress", "Completed"]),
                sweep_every=timedelta(minutes=30),
                webhook_url=webhook_url,
                signing_key=SIGNING_KEY,
            ),
        )
        self.service = SyncService(
            tenant=TENANT,
            uow=self.uow,
            sources=[self.source],
            ledger=MemoryLedger(),
            gateway=MemoryGateway(),
            mapper=MappingEngine(config),
            clock=self.clock,
            policy=config.collection,
        )

    def uow(self):  # type: ignore[no-untyped-def]
        return self.store.unit_of_work(TENANT)

    def close(self) -> None:
        self.client.close()
        self.emulator.stop()
        if self.server is not None:
            self.server.stop()

    def phases(self) -> list[tuple[str, str, str | None, bool]]:
        with self.uow() as uow:
            return [
                (p.phase.work_item, p.phase.phase, p.phase.secondary, p.phase.reopened)
                for p in uow.phases.list()
            ]


@pytest.fixture
def store(make_store_url) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    opened = open_store(make_store_url("sqlite"))
    yield opened
    opened.dispose()


@pytest.fixture
def rig_with_webhooks(store: Store) -> Iterator[Rig]:
    rig = Rig(store, webhooks=True)
    yield rig
    rig.close()
    assert rig.emulator.violations() == []
    assert rig.emulator.internal_errors == []


@pytest.fixture
def rig_polling(store: Store) -> Iterator[Rig]:
    rig = Rig(store, webhooks=False)
    yield rig
    rig.close()
    assert rig.emulator.violations() == []


def _seed(rig: Rig, count: int) -> list[str]:
    for c in range(10):
        rig.emulator.add_client(f"CL{c:03d}", f"Client {c}", client_type="Organization")
    return [
        rig.emulator.add_work_item(
            client_key=f"CL{i % 10:03d}",
            title=f"2026 Form 1040 #{i}",
            work_type="Tax Return",
            fee=Decimal("3000.00"),
            start_date=START.date(),
        )
        for i in range(count)
    ]


def _replay(rig: Rig, deliveries: list) -> None:  # type: ignore[type-arg]
    """Send recorded deliveries again, newest first: duplicates out of order."""
    for delivery in reversed(deliveries):
        response = requests.post(
            delivery.url, data=delivery.body, headers=dict(delivery.headers), timeout=5
        )
        assert response.status_code == 200
        assert response.json()["status"] == "duplicate"


def test_300_work_items_yield_exactly_one_phase_per_transition_with_webhooks(
    rig_with_webhooks: Rig,
) -> None:
    rig = rig_with_webhooks
    keys = _seed(rig, 300)
    report = rig.service.poll_sources()  # baseline; subscribes the webhooks
    assert set(rig.emulator.subscriptions) == {"Work", "Contact"}
    assert rig.phases() == []
    for n, (primary, secondary) in enumerate(STAGES, start=1):
        rig.clock.advance(minutes=5)
        for key in keys:
            rig.emulator.set_status(key, primary, secondary)
        rig.clock.advance(seconds=61)  # past Karbon's 60 s coalescing window
        before = len(rig.emulator.deliveries)
        rig.emulator.pump()
        sent = rig.emulator.deliveries[before:]
        assert len(sent) == 300 and all(d.ok for d in sent)
        _replay(rig, sent[:40])  # duplicated and reordered deliveries change nothing
        report = rig.service.poll_sources()
        assert report.problems == []
        assert len(rig.phases()) == 300 * n
    counts = Counter(rig.phases())
    assert len(counts) == 900 and set(counts.values()) == {1}
    assert {(p, s) for _, p, s, _ in counts} == {(p, s) for p, s in STAGES}


def test_lost_webhooks_are_caught_by_the_sweep_once(rig_with_webhooks: Rig) -> None:
    rig = rig_with_webhooks
    keys = _seed(rig, 120)
    rig.service.poll_sources()
    for key in keys:
        rig.emulator.set_status(key, "In Progress", "Documents received")
    rig.clock.advance(seconds=61)
    rig.emulator.pump()
    rig.service.poll_sources()
    # Karbon loses 20 changes outright: they reach us only through the sweep
    for key in keys[:20]:
        rig.emulator.drop_next_webhooks(1)
        rig.emulator.set_status(key, "Completed")
    rig.clock.advance(seconds=61)
    rig.emulator.pump()
    rig.service.poll_sources()
    assert len(rig.phases()) == 120  # the lost ones are not seen yet
    rig.clock.advance(minutes=31)  # the safety-net sweep is due
    rig.service.poll_sources()
    rig.service.poll_sources()
    counts = Counter(rig.phases())
    assert len(counts) == 140 and set(counts.values()) == {1}
    assert sum(1 for _, p, _, _ in counts if p == "Completed") == 20


def test_polling_alone_sees_every_transition_and_an_unchanged_sweep_costs_list_calls_only(
    rig_polling: Rig,
) -> None:
    rig = rig_polling
    keys = _seed(rig, 300)
    rig.service.poll_sources()
    for primary, secondary in STAGES:
        for key in keys:
            rig.emulator.set_status(key, primary, secondary)
        rig.clock.advance(minutes=10)
        rig.service.poll_sources()
        rig.service.poll_sources()  # a second look changes nothing
    counts = Counter(rig.phases())
    assert len(counts) == 900 and set(counts.values()) == {1}

    rig.emulator.log.clear()
    rig.clock.advance(minutes=10)
    report = rig.service.poll_sources()
    assert report.done == 0
    entries = rig.emulator.log.snapshot()
    completed_lists = [e for e in entries if e.path == "/v3/WorkItems" and "Completed" in e.query]
    assert len(completed_lists) == 3  # 300 items, 100 per page
    assert rig.emulator.detail_calls() == 0
    assert {e.path for e in entries} == {"/v3/WorkItems"}


def test_the_first_poll_is_a_baseline_and_existing_work_is_not_billed(rig_polling: Rig) -> None:
    rig = rig_polling
    done = _seed(rig, 5)
    for key in done:
        rig.emulator.set_status(key, "Completed")
    rig.service.poll_sources()
    assert rig.phases() == []
    assert rig.emulator.detail_calls() == 0  # the baseline costs list calls only
    fresh = rig.emulator.add_work_item(
        client_key="CL001", title="New return", work_type="Tax Return", fee=Decimal("900.00")
    )
    rig.emulator.set_status(fresh, "Completed")
    rig.clock.advance(minutes=1)
    rig.service.poll_sources()
    assert [(k, p) for k, p, _, _ in rig.phases()] == [(fresh, "Completed")]


def test_reopening_before_invoicing_untriggers_and_the_engagement_carries_the_fee(
    rig_polling: Rig,
) -> None:
    rig = rig_polling
    (key,) = _seed(rig, 1)
    rig.service.poll_sources()
    rig.emulator.set_status(key, "Completed")
    rig.clock.advance(minutes=1)
    rig.service.poll_sources()
    rig.service.map_phases()
    with rig.uow() as uow:
        engagement = uow.engagements.get("karbon", key)  # type: ignore[arg-type]
        assert engagement is not None and str(engagement.fee) == "3000.00 USD"
        filed = [m for m in uow.milestones.list() if m.definition_id == "filed"]
        assert [m.state for m in filed] == [MilestoneState.TRIGGERED]
    rig.emulator.set_status(key, "In Progress", "Review")  # moved back
    rig.clock.advance(minutes=1)
    rig.service.poll_sources()
    rig.service.map_phases()
    assert (key, "Completed", None, True) in rig.phases()
    with rig.uow() as uow:
        states = {m.definition_id: m.state for m in uow.milestones.list()}
    assert states["filed"] is MilestoneState.PENDING
    assert states["review"] is MilestoneState.TRIGGERED


def test_a_cancelled_subscription_is_noticed_and_recreated(rig_with_webhooks: Rig) -> None:
    rig = rig_with_webhooks
    (key,) = _seed(rig, 1)
    rig.service.poll_sources()
    rig.emulator.fail_deliveries(10)
    rig.emulator.set_status(key, "In Progress", "Documents received")
    for _ in range(12):  # Karbon retries with growing delays, then gives up
        rig.clock.advance(minutes=300)
        rig.emulator.pump()
    assert "Work" not in rig.emulator.subscriptions
    report = rig.service.poll_sources()  # the sweep is due: it re-subscribes and catches up
    assert "Work" in rig.emulator.subscriptions
    assert any("no Work webhook subscription" in p and "subscribed" in p for p in report.problems)
    assert [(k, s) for k, _, s, _ in rig.phases()] == [(key, "Documents received")]


def test_a_revoked_access_key_is_a_config_error_that_status_can_show(rig_polling: Rig) -> None:
    rig = rig_polling
    _seed(rig, 1)
    rig.emulator.revoke(ACCESS_KEY)
    report = rig.service.poll_sources()
    assert report.problems and "credentials" in report.problems[0]
    with rig.uow() as uow:
        health = json.loads(uow.cursors.get("karbon", SOURCE_HEALTH) or "{}")
    assert health["ok"] is False and health["kind"] == "config"
    with pytest.raises(ConfigError):
        rig.client.work_item("anything")


def test_work_billed_inside_karbon_is_warned_about(rig_polling: Rig) -> None:
    rig = rig_polling
    first, second = _seed(rig, 2)
    rig.service.poll_sources()
    rig.emulator.add_time_entry(first, 90, billed_status="Billed")
    rig.emulator.add_karbon_invoice(client_key="CL001", work_item_keys=[second])
    for key in (first, second):
        rig.emulator.set_status(key, "Completed")
    rig.clock.advance(minutes=1)
    report = rig.service.poll_sources()
    assert any(first in p and "time entries billed in Karbon" in p for p in report.problems)
    assert any(second in p and "Karbon invoice" in p for p in report.problems)
