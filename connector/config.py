"""Frozen, validated configuration models (built by `mappings.loader` from the admin's TOML).

Also the result types of the mapping engine (`Matched`, `Unmapped`, `Ignored`), which the core
consumes through the `Mapper` port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from connector.domain.ids import (
    ClientKey,
    ConfigRevision,
    LedgerCustomerId,
    MilestoneDefId,
    PlanId,
    SourceId,
    TenantId,
)
from connector.domain.model import (
    Cadence,
    CollectionMode,
    Engagement,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money


class SourceKind(StrEnum):
    KARBON = "karbon"
    KEEPER = "keeper"
    WEBHOOK = "webhook"
    CSV = "csv"
    MEMORY = "memory"


class LedgerKind(StrEnum):
    QUICKBOOKS = "quickbooks"
    XERO = "xero"
    MEMORY = "memory"


class PaymentsKind(StrEnum):
    STRIPE = "stripe"
    MEMORY = "memory"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class FirmConfig:
    id: TenantId
    name: str
    currency: str
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class SourceConnection:
    id: SourceId
    kind: SourceKind
    base_url: str | None = None
    # names of environment variables holding secrets, never the secrets themselves
    secret_env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerConnection:
    kind: LedgerKind
    base_url: str | None = None
    secret_env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PaymentsConnection:
    kind: PaymentsKind
    base_url: str | None = None
    secret_env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Matcher:
    """Which engagements a plan (or an ignore rule) applies to. Unset fields match anything."""

    source: SourceId | None = None
    work_type: str | None = None
    template: str | None = None
    title_pattern: str | None = None  # a regular expression searched in the title
    clients: tuple[ClientKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    phase: str  # primary status, close status or section name
    secondary: str | None = None  # Karbon secondary status, when the phase needs one


@dataclass(frozen=True, slots=True)
class FixedAmount:
    amount: Money


@dataclass(frozen=True, slots=True)
class PercentOfFee:
    percent: Decimal


@dataclass(frozen=True, slots=True)
class Remainder:
    """Whatever of the fee the other milestones of the plan leave."""


AmountRule = FixedAmount | PercentOfFee | Remainder


@dataclass(frozen=True, slots=True)
class MilestoneDef:
    id: MilestoneDefId
    name: str
    trigger: Trigger
    amount: AmountRule
    offset_days: int = 0  # for forecasting: days after the engagement's start it is expected


@dataclass(frozen=True, slots=True)
class PriceIncrease:
    """Annual increase of the fee on each anniversary, announced `notice_days` ahead."""

    percent: Decimal
    anniversary: date
    notice_days: int = 30


@dataclass(frozen=True, slots=True)
class InvoiceTerms:
    """What goes on the ledger invoice; any field may be overridden per client."""

    item: str | None = None
    tax_code: str | None = None
    terms: str | None = None
    send_invoice: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    id: PlanId
    name: str
    match: Matcher
    milestones: tuple[MilestoneDef, ...]
    priority: int = 0
    recurring: Cadence | None = None
    fee: Money | None = None  # default fee; else the engagement's fee from the source
    currency: str | None = None
    collection_mode: CollectionMode | None = None
    invoice: InvoiceTerms = InvoiceTerms()
    price_increase: PriceIncrease | None = None
    description: str = "{engagement} - {milestone}"


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    id: str
    match: Matcher
    reason: str


@dataclass(frozen=True, slots=True)
class ClientOverride:
    key: ClientKey
    fees: Mapping[PlanId, Money] = field(default_factory=dict)
    collection_mode: CollectionMode | None = None
    ledger_customer_id: LedgerCustomerId | None = None
    terms: str | None = None
    tax_code: str | None = None
    item: str | None = None
    currency: str | None = None
    email: str | None = None  # where notices (price increases) are sent


@dataclass(frozen=True, slots=True)
class NotificationsConnection:
    """SMTP for client notices; kind "none" records them for the admin to send by hand."""

    kind: str = "none"
    host: str | None = None
    port: int = 587
    starttls: bool = True
    from_address: str | None = None
    secret_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CollectionPolicy:
    default_mode: CollectionMode = CollectionMode.INVOICE_ONLY
    retry_days: tuple[int, ...] = (1, 3, 7)  # soft declines: days after each failure
    remind_before_due: tuple[int, ...] = ()  # reminder emails this many days before the due date
    remind_after_due: tuple[int, ...] = ()  # ... and after it, until paid
    auto_approve_after_days: int | None = None  # approval_required: released after this notice

    def reminder_offsets(self) -> tuple[int, ...]:
        """Days relative to the due date (negative: before it), in order."""
        return tuple(-d for d in sorted(self.remind_before_due, reverse=True)) + tuple(
            sorted(self.remind_after_due)
        )


@dataclass(frozen=True, slots=True)
class InvoicingPolicy:
    """How invoices are posted: batched when a backlog builds up, numbered by us or the ledger.

    Read from `[ledger] options` (`batch_from`, `invoice_number`)."""

    batch_from: int | None = 10  # backlog mode from this many due invoices (None: never batch)
    invoice_number: str | None = None  # a template with {seq}, e.g. "MS-{seq:05d}"; None: ledger's

    def number(self, seq: int) -> str | None:
        return None if self.invoice_number is None else self.invoice_number.format(seq=seq)


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    poll_seconds: int = 300
    invoice_seconds: int = 60
    collect_seconds: int = 300
    reconcile_seconds: int = 900


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = None
    dashboard_token_env: str | None = None  # names the env var holding the dashboard token

    def webhook_url(self, source_id: str) -> str | None:
        """Where a vendor should deliver this source's webhooks (None: no public URL set)."""
        if not self.public_url:
            return None
        return f"{self.public_url.rstrip('/')}/webhooks/{source_id}"


@dataclass(frozen=True, slots=True)
class AppConfig:
    firm: FirmConfig
    revision: ConfigRevision
    sources: tuple[SourceConnection, ...]
    ledger: LedgerConnection
    payments: PaymentsConnection
    plans: tuple[Plan, ...]
    database_url: str | None = None
    notifications: NotificationsConnection = NotificationsConnection()
    ignore: tuple[IgnoreRule, ...] = ()
    clients: Mapping[ClientKey, ClientOverride] = field(default_factory=dict)
    defaults: InvoiceTerms = InvoiceTerms()
    collection: CollectionPolicy = CollectionPolicy()
    schedule: ScheduleConfig = ScheduleConfig()
    server: ServerConfig = ServerConfig()

    def plan(self, plan_id: PlanId) -> Plan | None:
        return next((p for p in self.plans if p.id == plan_id), None)


# --------------------------------------------------------------------------- mapping results


@dataclass(frozen=True, slots=True)
class PricedMilestone:
    """One milestone of a plan, priced for one engagement under one config revision."""

    definition: MilestoneDef
    amount: Money
    description: str


@dataclass(frozen=True, slots=True)
class Matched:
    plan: Plan
    rule_id: str
    milestones: tuple[PricedMilestone, ...]  # every milestone of the plan, priced
    triggered: tuple[MilestoneDefId, ...]  # the ones the phase completes (may be empty)
    collection_mode: CollectionMode
    ledger_customer_id: LedgerCustomerId | None
    invoice: InvoiceTerms
    notes: tuple[str, ...] = ()  # e.g. a price increase applied


@dataclass(frozen=True, slots=True)
class Unmapped:
    reason: str  # says what the admin can do about it


@dataclass(frozen=True, slots=True)
class Ignored:
    rule_id: str
    reason: str


Resolution = Matched | Unmapped | Ignored


@dataclass(frozen=True, slots=True)
class PriceNotice:
    """A client's fee rises on its anniversary and the notice period has begun: tell them."""

    plan_id: PlanId
    plan_name: str
    client_key: ClientKey
    client_name: str
    email: str | None
    takes_effect: date
    percent: Decimal
    current_fee: Money
    new_fee: Money


class Mapper(Protocol):
    """The mapping engine as the core sees it (implemented in `mappings.engine`)."""

    @property
    def revision(self) -> ConfigRevision: ...

    def resolve(
        self, engagement: Engagement, phase: PhaseCompletion | None, on: date
    ) -> Resolution:
        """Which plan applies to the engagement and, given a phase, which milestones it triggers.

        Prices are as of `on` (the phase's completion date: annual increases apply from their
        anniversary)."""
        ...

    def price_notices(self, engagement: Engagement, on: date) -> Sequence[PriceNotice]:
        """The increases of this engagement's fee whose notice period includes `on`."""
        ...
