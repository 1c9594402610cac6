"""Exactly-once invoices in the real ledgers' emulators: 500 milestones, every invoice write
committed by the ledger and then its connection dropped, and the process "killed" at random
recovery points (a BaseException that unwinds without committing, then a fresh service and
adapter over the same database, as after a restart). The emulator's own state must end with
exactly one invoice per milestone."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest

from adapters.emulation.clock import EmulatedTime
from adapters.memory.clock import FrozenClock
from adapters.memory.source import MemorySource
from adapters.store.engine import Store
from connector.config import InvoicingPolicy
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Engagement, MilestoneState
from connector.domain.money import Money
from connector.ports import Ledger, OperationKind
from connector.services import SyncService
from mappings.engine import MappingEngine
from mappings.loader import load_config_text
from tests.contract.harness_stripe import SteppedTime
from tests.support import SimulatedCrash

MILESTONES = 500
CLIENTS = 25
CONFIG = """
[firm]
id = "smith-cpa"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "memory"

[ledger]
kind = "memory"

[collection]
default_mode = "invoice_only"

[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "karbon", work_type = "Tax Return" }

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = { status = "Completed" }
remainder = true
"""


class RandomKills:
    """Crashes at a random share of the recovery points (seeded, so a failure replays): around
    a batch call, or between two of its invoices being recorded."""

    def __init__(self, rng: random.Random, per_call: float, per_record: float) -> None:
        self.rng = rng
        self.odds = {"after_intent": per_call, "after_call": per_call, "before_record": per_record}
        self.kills = 0

    def __call__(self, point: str, kind: OperationKind, subject: str) -> None:
        if self.rng.random() < self.odds.get(point, 0.0):
            self.kills += 1
            raise SimulatedCrash(f"killed at {point} of {kind} for {subject}")


def quickbooks_world(time: EmulatedTime) -> tuple[object, object]:
    from tests.contract.harness_quickbooks import QuickBooksHarness

    harness = QuickBooksHarness(time=time)
    return harness, harness.emulator


def xero_world(time: EmulatedTime) -> tuple[object, object]:
    from tests.contract.harness_xero import XeroHarness

    harness = XeroHarness(time=time)
    return harness, harness.emulator


def fresh_ledger(harness: object) -> Ledger:
    """A new adapter over the same emulator and connection: what a restarted process builds."""
    current = harness.ledger  # type: ignore[attr-defined]
    kwargs = {"api_url": harness.emulator.api_url, "time": harness.time}  # type: ignore[attr-defined]
    if current.name == "xero":
        kwargs["identity_url"] = harness.emulator.url  # type: ignore[attr-defined]
    built: Ledger = type(current)(harness.tokens, current.options, **kwargs)  # type: ignore[attr-defined]
    return built


@pytest.fixture(params=["quickbooks", "xero"])
def ledger_world(request: pytest.FixtureRequest) -> Iterator[tuple[object, object]]:
    # adapter back-offs (Xero resends a dropped write under its Idempotency-Key) move the clock
    # instead of sleeping; otherwise time runs at its real pace, so a resend lands well inside
    # the vendor's idempotency window as it would in production (a time scale of 2000 once
    # stretched a resend past Xero's six minutes and made a second batch: a test artefact)
    time = SteppedTime(start=datetime(2026, 11, 16, 9, tzinfo=UTC))
    build = quickbooks_world if request.param == "quickbooks" else xero_world
    harness, emulator = build(time)
    try:
        yield harness, emulator
    finally:
        harness.close()  # type: ignore[attr-defined]


def seed_work(harness: object) -> MemorySource:
    customers = [
        harness.add_customer(f"Client {n:02d} LLC")  # type: ignore[attr-defined]
        for n in range(CLIENTS)
    ]
    source = MemorySource("karbon")
    for n in range(MILESTONES):
        key = WorkItemKey(f"WI-{n:04d}")
        client = n % CLIENTS
        source.add_engagement(
            Engagement(
                source=SourceId("karbon"),
                key=key,
                client_key=ClientKey(f"CL-{client:02d}"),
                client_name=f"Client {client:02d} LLC",
                title=f"2026 Form 1120 #{n}",
                work_type="Tax Return",
                fee=Money(f"{100 + n % 7}.00", "USD"),
                start_date=date(2026, 11, 2),
                ledger_customer_id=LedgerCustomerId(customers[client]),
            )
        )
        source.complete(key, "Completed", datetime(2026, 11, 10, 12, tzinfo=UTC))
    return source


# Both ledgers on SQLite; on PostgreSQL (the intent log's other database) Xero, whose resends
# under one Idempotency-Key are the subtler of the two.
@pytest.mark.parametrize(
    ("ledger_world", "store_url"),
    [
        pytest.param("quickbooks", "sqlite", id="quickbooks-sqlite"),
        pytest.param("xero", "sqlite", id="xero-sqlite"),
        pytest.param("xero", "postgres", id="xero-postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
def test_500_milestones_through_dropped_writes_and_random_kills_make_500_invoices(
    ledger_world: tuple[object, object], store: Store
) -> None:
    harness, emulator = ledger_world
    source = seed_work(harness)
    emulator.drop_every_write(True)  # type: ignore[attr-defined]
    config = load_config_text(CONFIG, "firm.toml")
    clock = FrozenClock(datetime(2026, 11, 16, 9, tzinfo=UTC))
    rng = random.Random(20261201)
    kills = RandomKills(rng, per_call=0.25, per_record=0.01)
    restarts = 0

    def service(ledger: Ledger) -> SyncService:
        return SyncService(
            tenant=config.firm.id,
            uow=lambda: store.unit_of_work(config.firm.id),
            sources=[source],
            ledger=ledger,
            gateway=None,
            mapper=MappingEngine(config),
            clock=clock,
            policy=config.collection,
            invoicing=InvoicingPolicy(batch_from=10),
            fault=kills,
        )

    ledger = harness.ledger  # type: ignore[attr-defined]
    for _ in range(100):
        running = service(ledger)
        try:  # the daemon's poll and invoice jobs
            running.poll_sources()
            running.map_phases()
            running.issue_invoices()
        except SimulatedCrash:
            restarts += 1
            ledger = fresh_ledger(harness)
            continue
        with store.unit_of_work(config.firm.id) as uow:
            left = [m for m in uow.milestones.list() if m.state is not MilestoneState.INVOICED]
        if not left:
            break
        clock.advance(minutes=1)

    invoices = harness.all_invoices()  # type: ignore[attr-defined]  # the emulator's state
    references = Counter(invoice.reference for invoice in invoices)
    assert restarts >= 3, "the run should have been killed several times"
    assert kills.kills == restarts
    assert len(invoices) == MILESTONES
    assert [ref for ref, n in references.items() if n > 1] == []
    with store.unit_of_work(config.firm.id) as uow:
        stored = uow.milestones.list()
    assert len(stored) == MILESTONES
    assert {m.state for m in stored} == {MilestoneState.INVOICED}
    assert len({m.invoice_id for m in stored}) == MILESTONES
    assert emulator.violations() == []  # type: ignore[attr-defined]
