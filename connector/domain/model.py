"""The milestone model: clients, engagements, phase completions, milestones, the state machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from connector.domain.errors import InvariantViolation
from connector.domain.ids import (
    ChargeId,
    ClientKey,
    ConfigRevision,
    LedgerCustomerId,
    LedgerInvoiceId,
    LedgerPaymentId,
    MilestoneDefId,
    MilestoneKey,
    PlanId,
    SourceId,
    WorkItemKey,
)
from connector.domain.money import Money


class CollectionMode(StrEnum):
    AUTO_CHARGE = "auto_charge"
    INVOICE_ONLY = "invoice_only"
    APPROVAL_REQUIRED = "approval_required"


class EngagementKind(StrEnum):
    WORK_ITEM = "work_item"
    RECURRING_CLOSE = "recurring_close"


class Cadence(StrEnum):
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"


class TriggerKind(StrEnum):
    STATUS = "status"  # a work item reached a (primary[, secondary]) status
    CLOSE_STATUS = "close_status"  # a recurring close reached a close status
    SECTION_DONE = "section_done"  # every task of a named section is done


def normalise_status(value: str | None) -> str:
    """Compare statuses without case or spaces: Karbon spells 'In Progress' and 'InProgress'."""
    return "".join((value or "").split()).casefold()


@dataclass(frozen=True, slots=True)
class Client:
    source: SourceId
    key: ClientKey
    name: str
    ledger_customer_id: LedgerCustomerId | None = None


@dataclass(frozen=True, slots=True)
class Engagement:
    """A work item (one job with a fee) or one recurring close (a client's period)."""

    source: SourceId
    key: WorkItemKey
    client_key: ClientKey
    client_name: str
    title: str
    kind: EngagementKind = EngagementKind.WORK_ITEM
    work_type: str | None = None
    template: str | None = None
    fee: Money | None = None
    period: str | None = None  # '2026-10' or '2026-Q4' for recurring closes
    start_date: date | None = None
    due_date: date | None = None
    ledger_customer_id: LedgerCustomerId | None = None  # e.g. Karbon ExternalKey


@dataclass(frozen=True, slots=True)
class PhaseCompletion:
    """A phase of an engagement was completed in the source: a status, a close, a section."""

    source: SourceId
    work_item: WorkItemKey
    kind: TriggerKind
    phase: str  # status name, close status or section name, as the source spells it
    completed_at: datetime
    completion: str  # distinguishes repeated completions (e.g. a timestamp or a period)
    secondary: str | None = None
    reopened: bool = False  # the engagement moved back out of a previously completed phase

    @property
    def natural_key(self) -> tuple[str, str, str, str]:
        return (
            self.source,
            self.work_item,
            f"{self.kind}:{normalise_status(self.phase)}"
            f"{':' + normalise_status(self.secondary) if self.secondary else ''}"
            # a reopening names the completion it undoes, so it must not dedupe against it
            f"{':reopened' if self.reopened else ''}",
            self.completion,
        )


class MilestoneState(StrEnum):
    PENDING = "pending"
    TRIGGERED = "triggered"
    AWAITING_APPROVAL = "awaiting_approval"
    INVOICING = "invoicing"
    INVOICED = "invoiced"
    COLLECTING = "collecting"
    PROCESSING = "processing"
    PAID = "paid"
    RECONCILED = "reconciled"
    PAID_EXTERNALLY = "paid_externally"
    CHARGE_FAILED = "charge_failed"
    VOIDED = "voided"
    NEEDS_ATTENTION = "needs_attention"


S = MilestoneState

TRANSITIONS: dict[MilestoneState, frozenset[MilestoneState]] = {
    S.PENDING: frozenset({S.TRIGGERED, S.VOIDED, S.NEEDS_ATTENTION}),
    S.TRIGGERED: frozenset(
        {S.AWAITING_APPROVAL, S.INVOICING, S.PENDING, S.VOIDED, S.NEEDS_ATTENTION}
    ),
    S.AWAITING_APPROVAL: frozenset({S.INVOICING, S.PENDING, S.VOIDED, S.NEEDS_ATTENTION}),
    S.INVOICING: frozenset({S.INVOICED, S.NEEDS_ATTENTION}),
    S.INVOICED: frozenset({S.COLLECTING, S.PAID_EXTERNALLY, S.VOIDED, S.NEEDS_ATTENTION}),
    S.COLLECTING: frozenset(
        {S.PROCESSING, S.PAID, S.CHARGE_FAILED, S.PAID_EXTERNALLY, S.NEEDS_ATTENTION}
    ),
    S.PROCESSING: frozenset({S.PAID, S.CHARGE_FAILED, S.NEEDS_ATTENTION}),
    S.CHARGE_FAILED: frozenset({S.COLLECTING, S.PAID_EXTERNALLY, S.VOIDED, S.NEEDS_ATTENTION}),
    S.PAID: frozenset({S.RECONCILED, S.NEEDS_ATTENTION}),
    S.RECONCILED: frozenset(),
    S.PAID_EXTERNALLY: frozenset(),
    S.VOIDED: frozenset(),
    # An admin's retry sends a milestone back to where it can safely resume.
    S.NEEDS_ATTENTION: frozenset(
        {
            S.PENDING,
            S.TRIGGERED,
            S.INVOICING,
            S.INVOICED,
            S.COLLECTING,
            S.PAID,
            S.PAID_EXTERNALLY,
            S.VOIDED,
        }
    ),
}

NOT_YET_INVOICED = frozenset({S.PENDING, S.TRIGGERED, S.AWAITING_APPROVAL})
"""States in which a config amendment may still change a milestone's price and terms."""

TERMINAL = frozenset({S.RECONCILED, S.PAID_EXTERNALLY, S.VOIDED})


@dataclass(frozen=True, slots=True)
class Milestone:
    """One billable milestone of one engagement (and period), priced under one config revision."""

    key: MilestoneKey
    source: SourceId
    work_item: WorkItemKey
    client_key: ClientKey
    plan_id: PlanId
    definition_id: MilestoneDefId
    description: str
    amount: Money
    collection_mode: CollectionMode
    config_revision: ConfigRevision
    state: MilestoneState = MilestoneState.PENDING
    period: str | None = None
    planned_date: date | None = None
    triggered_at: datetime | None = None
    ledger_customer_id: LedgerCustomerId | None = None
    item: str | None = None
    tax_code: str | None = None
    terms: str | None = None
    send_invoice: bool = False
    invoice_id: LedgerInvoiceId | None = None
    invoice_number: str | None = None
    charge_id: ChargeId | None = None
    charge_attempts: int = 0
    next_charge_at: datetime | None = None
    ledger_payment_id: LedgerPaymentId | None = None
    attention_reason: str | None = None
    resume_state: MilestoneState | None = None
    version: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def transition(
        self, to: MilestoneState, *, reason: str | None = None, **changes: object
    ) -> Milestone:
        """A copy in state `to`; an illegal move raises InvariantViolation."""
        if to not in TRANSITIONS[self.state]:
            raise InvariantViolation(
                f"milestone {self.key}: illegal transition {self.state} -> {to}"
            )
        if to is MilestoneState.NEEDS_ATTENTION:
            if not reason:
                raise InvariantViolation(f"milestone {self.key}: needs_attention requires a reason")
            changes.setdefault("resume_state", self.state)
            changes["attention_reason"] = reason
        else:
            changes.setdefault("attention_reason", None)
            changes.setdefault("resume_state", None)
        return dataclasses.replace(self, state=to, **changes)  # type: ignore[arg-type]

    def with_changes(self, **changes: object) -> Milestone:
        """A copy with data changed but the state kept (prices, ids, retry times)."""
        if "state" in changes:
            raise InvariantViolation("use transition() to change a milestone's state")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
