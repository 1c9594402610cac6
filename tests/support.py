"""Shared test helpers: a small firm's config, the in-memory world, and an armable fault hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from adapters.memory.clock import FrozenClock
from adapters.memory.gateway import MemoryGateway
from adapters.memory.ledger import MemoryLedger
from adapters.memory.source import MemorySource
from connector.config import AppConfig, InvoicingPolicy
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Engagement, EngagementKind, TriggerKind
from connector.domain.money import Money
from connector.ports import OperationKind, UnitOfWorkFactory
from connector.services import SyncService
from mappings.engine import MappingEngine
from mappings.loader import load_config_text

FIRM_TOML = """
[firm]
id = "smith-cpa"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "memory"

[[sources]]
id = "keeper"
kind = "memory"

[ledger]
kind = "memory"

[payments]
kind = "memory"

[collection]
default_mode = "auto_charge"
retry_days = [1, 3, 7]

[defaults]
terms = "Net 15"

[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "karbon", work_type = "Tax Return" }
fee = "__TAX_FEE__"

[[plans.milestones]]
id = "kickoff"
name = "Documents received"
trigger = { status = "In Progress", secondary = "Documents received" }
percent = 40

[[plans.milestones]]
id = "review"
name = "Review"
trigger = { status = "In Progress", secondary = "Review" }
percent = 40

[[plans.milestones]]
id = "filed"
name = "Filed"
trigger = { status = "Completed" }
remainder = true

[[plans]]
id = "monthly-close"
name = "Monthly bookkeeping"
match = { source = "keeper" }
recurring = "monthly"
fee = "450.00"

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = { close_status = "Done" }
remainder = true

[[ignore]]
id = "internal"
match = { work_type = "Internal" }
reason = "internal work is never billed"

[clients."CL-APPROVE"]
collection_mode = "approval_required"

[clients."CL-INVOICE"]
collection_mode = "invoice_only"
"""

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def firm_config(tax_fee: str = "3000.00", extra: str = "") -> AppConfig:
    return load_config_text(FIRM_TOML.replace("__TAX_FEE__", tax_fee) + extra, "test-firm.toml")


class SimulatedCrash(BaseException):
    """The process 'dies' here: a BaseException, so no `except Exception` swallows it."""


@dataclass
class ArmedFault:
    """Crashes once at (point, kind); every other call passes."""

    point: str
    kind: OperationKind
    fired: bool = False
    seen: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, point: str, kind: OperationKind, subject: str) -> None:
        self.seen.append((point, kind))
        if not self.fired and point == self.point and kind is self.kind:
            self.fired = True
            raise SimulatedCrash(f"crash at {point} of {kind} for {subject}")


@dataclass
class World:
    """The outside world of one firm: sources, ledger and gateway survive our restarts."""

    clock: FrozenClock
    karbon: MemorySource
    keeper: MemorySource
    ledger: MemoryLedger
    gateway: MemoryGateway

    def service(
        self,
        uow: UnitOfWorkFactory,
        config: AppConfig | None = None,
        fault: object = None,
        invoicing: InvoicingPolicy | None = None,
    ) -> SyncService:
        config = config or firm_config()
        kwargs: dict[str, object] = {"fault": fault} if fault is not None else {}
        if invoicing is not None:
            kwargs["invoicing"] = invoicing
        return SyncService(
            tenant=config.firm.id,
            uow=uow,
            sources=[self.karbon, self.keeper],
            ledger=self.ledger,
            gateway=self.gateway,
            mapper=MappingEngine(config),
            clock=self.clock,
            policy=config.collection,
            **kwargs,  # type: ignore[arg-type]
        )

    def tax_return(
        self,
        key: str = "WI-1",
        client: str = "CL-ACME",
        *,
        customer: str | None = "58",
        fee: str | None = None,
        work_type: str = "Tax Return",
    ) -> Engagement:
        engagement = Engagement(
            source=SourceId("karbon"),
            key=WorkItemKey(key),
            client_key=ClientKey(client),
            client_name=f"{client} LLC",
            title=f"2026 Form 1120 - {client}",
            kind=EngagementKind.WORK_ITEM,
            work_type=work_type,
            fee=Money(fee, "USD") if fee else None,
            start_date=date(2026, 11, 2),
            ledger_customer_id=LedgerCustomerId(customer) if customer else None,
        )
        self.karbon.add_engagement(engagement)
        if customer:
            self.ledger.add_customer(customer, engagement.client_name)
        return engagement

    def close(self, client: str, period: str, *, customer: str = "70") -> Engagement:
        engagement = Engagement(
            source=SourceId("keeper"),
            key=WorkItemKey(f"{client}:{period}"),
            client_key=ClientKey(client),
            client_name=f"{client} Inc",
            title=f"{period} close",
            kind=EngagementKind.RECURRING_CLOSE,
            period=period,
            ledger_customer_id=LedgerCustomerId(customer),
        )
        self.keeper.add_engagement(engagement)
        self.ledger.add_customer(customer, engagement.client_name)
        return engagement

    def reach(
        self, key: str, status: str, secondary: str | None = None, *, reopened: bool = False
    ) -> None:
        self.clock.advance(hours=1)
        self.karbon.complete(key, status, self.clock.now(), secondary=secondary, reopened=reopened)

    def finish_all_phases(self, key: str) -> None:
        self.reach(key, "In Progress", "Documents received")
        self.reach(key, "In Progress", "Review")
        self.reach(key, "Completed")

    def close_done(self, key: str) -> None:
        self.clock.advance(hours=1)
        self.keeper.complete(key, "Done", self.clock.now(), kind=TriggerKind.CLOSE_STATUS)


def new_world() -> World:
    clock = FrozenClock(START)
    return World(
        clock=clock,
        karbon=MemorySource("karbon"),
        keeper=MemorySource("keeper"),
        ledger=MemoryLedger(now=clock.now),
        gateway=MemoryGateway(now=clock.now),
    )


def total(amounts: list[Money]) -> Decimal:
    return sum((m.amount for m in amounts), Decimal(0))
