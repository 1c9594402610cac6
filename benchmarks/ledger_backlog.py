"""Ledger calls per milestone, and the time to drain a backlog under the vendors' real rate
limits, for QuickBooks Online and Xero, batched (backlog mode) and one by one.

Each run bills N milestones that all became due at once (a firm switching milestone-sync on
over a busy month), through the real adapters and SDKs, against the emulators with their rate
limits on (QBO: 500 requests/min, 10 at once, 40 batches/min; Xero: 60/min, 5 at once, 5,000 a
day). Time is virtual: it passes only when the adapter waits (back-off, Retry-After, its own
minute budget) or a request takes its modelled network latency, so the drain time is the one a
firm would see, whatever machine runs the benchmark.

    python benchmarks/ledger_backlog.py [--milestones 1000] [--latency 0.3]

Results are written in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from adapters.emulation.clock import VirtualTime
from adapters.memory.clock import FrozenClock
from adapters.memory.source import MemorySource
from adapters.memory.store import MemoryStore
from connector.config import InvoicingPolicy
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Engagement, MilestoneState
from connector.domain.money import Money
from connector.services import SyncService
from mappings.engine import MappingEngine
from mappings.loader import load_config_text

CONFIG = """
[firm]
id = "bench-cpa"
name = "Bench CPAs"
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
match = { source = "karbon" }

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = { status = "Completed" }
remainder = true
"""
CLIENTS = 50
START = datetime(2026, 11, 16, 9, tzinfo=UTC)


@dataclass
class Result:
    ledger: str
    mode: str
    milestones: int
    requests: int
    by_kind: Counter[str]
    throttled: int
    drained_seconds: float
    wall_seconds: float

    @property
    def per_milestone(self) -> float:
        return self.requests / self.milestones


def quickbooks(time_: VirtualTime, latency: float) -> tuple[Any, Any]:
    from adapters.quickbooks.adapter import QuickBooksLedger, QuickBooksOptions
    from adapters.quickbooks.emulator import QuickBooksEmulator
    from tests.contract.harness_quickbooks import EmulatorTokens

    emulator = QuickBooksEmulator(time=time_, limits=True, latency=latency)
    emulator.start()
    emulator.add_item("Tax Preparation")
    ledger = QuickBooksLedger(
        EmulatorTokens(emulator, time_),
        QuickBooksOptions(currency="USD"),
        api_url=emulator.api_url,
        time=time_,
    )
    return emulator, ledger


def xero(time_: VirtualTime, latency: float) -> tuple[Any, Any]:
    from adapters.xero.adapter import XeroLedger, XeroOptions
    from adapters.xero.emulator import XeroEmulator
    from tests.contract.harness_xero import EmulatorTokens

    emulator = XeroEmulator(time=time_, rate_limits=True, latency=latency)
    emulator.start()
    emulator.set_payment_terms(30)
    emulator.add_item("TAX", "Tax Preparation", account_code="200")
    ledger = XeroLedger(
        EmulatorTokens(emulator),
        XeroOptions(currency="USD", sales_account="200"),
        api_url=emulator.api_url,
        identity_url=emulator.url,
        time=time_,
    )
    return emulator, ledger


LEDGERS: dict[str, Callable[[VirtualTime, float], tuple[Any, Any]]] = {
    "quickbooks": quickbooks,
    "xero": xero,
}


def customer(emulator: Any, name: str) -> str:
    if hasattr(emulator, "add_contact"):
        return str(emulator.add_contact(name))
    return str(emulator.add_customer(name))


def kind_of(method: str, path: str) -> str:
    tail = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if tail in {"query", "batch", "cdc"}:
        return tail
    return f"{method} {tail}"


def run(name: str, batched: bool, milestones: int, latency: float) -> Result:
    virtual = VirtualTime(start=START)
    emulator, ledger = LEDGERS[name](virtual, latency)
    item = "Tax Preparation" if name == "quickbooks" else "TAX"
    config = load_config_text(
        CONFIG.replace(
            "[collection]", f'[defaults]\nitem = "{item}"\nterms = "Net 15"\n\n[collection]'
        ),
        "b.toml",
    )
    try:
        ids = [customer(emulator, f"Client {n:02d} LLC") for n in range(CLIENTS)]
        source = MemorySource("karbon")
        for n in range(milestones):
            key = WorkItemKey(f"WI-{n:05d}")
            source.add_engagement(
                Engagement(
                    source=SourceId("karbon"),
                    key=key,
                    client_key=ClientKey(f"CL-{n % CLIENTS:02d}"),
                    client_name=f"Client {n % CLIENTS:02d} LLC",
                    title=f"Engagement {n}",
                    fee=Money(f"{250 + n % 9}.00", "USD"),
                    start_date=date(2026, 11, 2),
                    ledger_customer_id=LedgerCustomerId(ids[n % CLIENTS]),
                )
            )
            source.complete(key, "Completed", START)
        store = MemoryStore()
        service = SyncService(
            tenant=config.firm.id,
            uow=lambda: store.unit_of_work(config.firm.id),
            sources=[source],
            ledger=ledger,
            gateway=None,
            mapper=MappingEngine(config),
            clock=FrozenClock(START),
            invoicing=InvoicingPolicy(batch_from=2 if batched else None),
        )
        service.poll_sources()
        service.map_phases()
        emulator.log.clear()  # count what invoicing costs, not the seeding
        began, wall = virtual.monotonic(), time.perf_counter()
        for _ in range(1000):
            service.issue_invoices()
            with store.unit_of_work(config.firm.id) as uow:
                waiting = uow.milestones.list(frozenset({MilestoneState.INVOICING}))
            if not waiting:
                break
            virtual.sleep(60)  # the daemon's next invoice job
        else:
            raise RuntimeError(f"{name}: the backlog never drained")
        entries = [
            e
            for e in emulator.log.snapshot()
            if "/oauth2/" not in e.path and "/connect/" not in e.path
        ]
        assert emulator.violations() == [], emulator.violations()[:3]
        return Result(
            ledger=name,
            mode="batched" if batched else "one by one",
            milestones=milestones,
            requests=len(entries),
            by_kind=Counter(kind_of(e.method, e.path) for e in entries),
            throttled=sum(1 for e in entries if e.status == 429),
            drained_seconds=virtual.monotonic() - began,
            wall_seconds=time.perf_counter() - wall,
        )
    finally:
        close = getattr(ledger, "close", None)
        if close is not None:
            close()
        emulator.stop()


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--milestones", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per request")
    parser.add_argument("--ledgers", default="quickbooks,xero")
    args = parser.parse_args()
    print(
        f"| ledger | mode | milestones | requests | per milestone | 429s | drained in "
        f"(latency {args.latency} s) | wall |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.ledgers.split(","):
        for batched in (True, False):
            r = run(name, batched, args.milestones, args.latency)
            print(
                f"| {r.ledger} | {r.mode} | {r.milestones} | {r.requests} | "
                f"{r.per_milestone:.3f} | {r.throttled} | {minutes(r.drained_seconds)} | "
                f"{r.wall_seconds:.0f} s |",
                flush=True,
            )
            print(f"<!-- {r.ledger} {r.mode}: {dict(r.by_kind.most_common())} -->", flush=True)


if __name__ == "__main__":
    main()
