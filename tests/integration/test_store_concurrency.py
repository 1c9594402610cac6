"""Units of work racing on one milestone, in threads: optimistic locking lets exactly one win
and never loses an update."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from adapters.store.engine import Store
from connector.domain.errors import InvariantViolation
from connector.domain.ids import (
    ClientKey,
    ConfigRevision,
    MilestoneDefId,
    MilestoneKey,
    PlanId,
    SourceId,
    TenantId,
    WorkItemKey,
)
from connector.domain.model import CollectionMode, Milestone
from connector.domain.money import Money

TENANT = TenantId("smith-cpa")
KEY = MilestoneKey("karbon:WI-1:kickoff")


def add_milestone(store: Store) -> None:
    with store.unit_of_work(TENANT) as uow:
        uow.milestones.add(
            Milestone(
                key=KEY,
                source=SourceId("karbon"),
                work_item=WorkItemKey("WI-1"),
                client_key=ClientKey("CL-ACME"),
                plan_id=PlanId("tax-return"),
                definition_id=MilestoneDefId("kickoff"),
                description="Documents received",
                amount=Money("1200.00", "USD"),
                collection_mode=CollectionMode.AUTO_CHARGE,
                config_revision=ConfigRevision("rev-1"),
            )
        )
        uow.commit()


def test_two_threads_updating_the_same_version_let_exactly_one_win(store: Store) -> None:
    add_milestone(store)
    both_read = threading.Barrier(2, timeout=30)

    def attempt(name: str) -> str:
        with store.unit_of_work(TENANT) as uow:
            milestone = uow.milestones.get(KEY)
            assert milestone is not None
            both_read.wait()
            try:
                uow.milestones.update(milestone.with_changes(description=name))
                uow.commit()
            except InvariantViolation:
                return "lost"
            return "won"

    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(("a", "b"), pool.map(attempt, ("a", "b")), strict=True))
    assert sorted(outcomes.values()) == ["lost", "won"]
    winner = next(name for name, outcome in outcomes.items() if outcome == "won")
    with store.unit_of_work(TENANT) as uow:
        stored = uow.milestones.get(KEY)
    assert stored is not None
    assert (stored.description, stored.version) == (winner, 1)


def test_concurrent_increments_with_retry_lose_no_update(store: Store) -> None:
    add_milestone(store)
    workers, conflicts = 6, []

    def increment() -> None:
        while True:
            with store.unit_of_work(TENANT) as uow:
                milestone = uow.milestones.get(KEY)
                assert milestone is not None
                try:
                    uow.milestones.update(
                        milestone.with_changes(charge_attempts=milestone.charge_attempts + 1)
                    )
                    uow.commit()
                    return
                except InvariantViolation:
                    conflicts.append(1)

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(increment) for _ in range(workers)]:
            future.result()
    with store.unit_of_work(TENANT) as uow:
        stored = uow.milestones.get(KEY)
    assert stored is not None
    assert stored.charge_attempts == workers
    assert stored.version == workers
