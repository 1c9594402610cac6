"""Read models for the dashboard: pure functions over domain objects (pipeline, attention, client
balances, AR aging, cash forecast, leakage, audit trail). No I/O, no clock reads; money stays Money.

Every total is kept per currency (`Totals`), so a firm billing in two currencies never adds them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from connector import planning
from connector.domain.events import AuditEvent
from connector.domain.ids import ClientKey, MilestoneKey, PlanId, SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, Milestone, MilestoneState
from connector.domain.money import Money
from connector.ports import Operation, PhaseStatus, SavedMethod, StoredPhase
from connector.services import BLOCKED, DUE_ON, INVOICED_ON, PAID_ON

S = MilestoneState

# --------------------------------------------------------------------------- money per currency


@dataclass(frozen=True, slots=True)
class Totals:
    """Amounts summed per currency, in currency order; empty when nothing was summed."""

    amounts: tuple[Money, ...] = ()

    @classmethod
    def of(cls, amounts: Iterable[Money]) -> Totals:
        sums: dict[str, Money] = {}
        for amount in amounts:
            sums[amount.currency] = sums.get(amount.currency, Money.zero(amount.currency)) + amount
        return cls(tuple(sums[c] for c in sorted(sums)))

    def __add__(self, other: Totals) -> Totals:
        return Totals.of((*self.amounts, *other.amounts))

    def get(self, currency: str) -> Money:
        return next((m for m in self.amounts if m.currency == currency), Money.zero(currency))

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(m.currency for m in self.amounts)

    def is_zero(self) -> bool:
        return all(m.is_zero() for m in self.amounts)


# --------------------------------------------------------------------------- dates kept


def _iso_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None  # a hand-edited or older value: shown as unknown rather than breaking a page


def invoiced_on(milestone: Milestone) -> date | None:
    return _iso_date(milestone.extra.get(INVOICED_ON))


def due_on(milestone: Milestone) -> date | None:
    return _iso_date(milestone.extra.get(DUE_ON))


def paid_on(milestone: Milestone) -> date | None:
    return _iso_date(milestone.extra.get(PAID_ON))


def blocked_reason(milestone: Milestone) -> str | None:
    """Why the ledger cannot take this milestone's invoice yet (its mapping is blocked)."""
    if milestone.state is S.INVOICING:
        return milestone.extra.get(BLOCKED) or None
    return None


OPEN_STATES = frozenset({S.INVOICED, S.COLLECTING, S.PROCESSING, S.CHARGE_FAILED})
"""An invoice was issued and the money has not come in yet."""


def is_open(milestone: Milestone) -> bool:
    """Invoiced and not yet paid (also while it needs attention on its way to being paid)."""
    if milestone.invoice_id is None:
        return False
    if milestone.state is S.NEEDS_ATTENTION:
        return milestone.resume_state in OPEN_STATES
    return milestone.state in OPEN_STATES


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True, slots=True)
class StateTotal:
    state: MilestoneState
    count: int
    amount: Totals


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Milestones by state (every state, in the order the state machine moves), the milestones
    themselves (after the filters), and the choices the filters offer."""

    by_state: tuple[StateTotal, ...]
    milestones: tuple[Milestone, ...]
    total: Totals
    clients: tuple[ClientKey, ...]  # every client with a milestone, for the filter
    plans: tuple[PlanId, ...]


def pipeline(
    milestones: Sequence[Milestone],
    client: ClientKey | str | None = None,
    plan: PlanId | str | None = None,
    state: MilestoneState | None = None,
) -> Pipeline:
    """Counts and amounts per state, filtered by client and plan; `state` narrows only the
    list of milestones (the per-state counts still show every state)."""
    chosen = [
        m
        for m in milestones
        if (not client or m.client_key == client) and (not plan or m.plan_id == plan)
    ]
    by_state = tuple(
        StateTotal(
            s,
            sum(1 for m in chosen if m.state is s),
            Totals.of(m.amount for m in chosen if m.state is s),
        )
        for s in MilestoneState
    )
    listed = [m for m in chosen if state is None or m.state is state]
    listed.sort(key=lambda m: (m.client_key, m.planned_date or date.max, m.key))
    return Pipeline(
        by_state=by_state,
        milestones=tuple(listed),
        total=Totals.of(m.amount for m in chosen),
        clients=tuple(sorted({m.client_key for m in milestones})),
        plans=tuple(sorted({m.plan_id for m in milestones})),
    )


# --------------------------------------------------------------------------- needs attention


class Action(StrEnum):
    RETRY = "retry"
    APPROVE = "approve"
    VOID = "void"


class AttentionKind(StrEnum):
    NEEDS_ATTENTION = "needs_attention"  # stopped: the reason says what to fix, then retry
    AWAITING_APPROVAL = "awaiting_approval"  # waits for an admin's approval
    BLOCKED = "blocked"  # its mapping is blocked in the ledger: retried by itself every cycle


@dataclass(frozen=True, slots=True)
class AttentionItem:
    milestone: Milestone
    kind: AttentionKind
    reason: str
    actions: tuple[Action, ...]


@dataclass(frozen=True, slots=True)
class Attention:
    items: tuple[AttentionItem, ...]
    unmapped: tuple[StoredPhase, ...]  # completed phases no plan matched

    @property
    def count(self) -> int:
        return len(self.items) + len(self.unmapped)


def actions_for(milestone: Milestone) -> tuple[Action, ...]:
    """What an admin may do to a milestone from the dashboard."""
    found = []
    if milestone.state is S.NEEDS_ATTENTION:
        found.append(Action.RETRY)
    if milestone.state is S.AWAITING_APPROVAL:
        found.append(Action.APPROVE)
    if planning.can_void(milestone):
        found.append(Action.VOID)
    return tuple(found)


def attention(milestones: Sequence[Milestone], phases: Sequence[StoredPhase]) -> Attention:
    """Everything an admin should look at: milestones needing attention (with their reason),
    awaiting approval, blocked by their mapping, and phases no plan matched."""
    items = []
    for m in milestones:
        if m.state is S.NEEDS_ATTENTION:
            kind, reason = AttentionKind.NEEDS_ATTENTION, m.attention_reason or "no reason recorded"
        elif m.state is S.AWAITING_APPROVAL:
            kind, reason = AttentionKind.AWAITING_APPROVAL, "the plan asks for approval first"
        elif (blocked := blocked_reason(m)) is not None:
            kind, reason = AttentionKind.BLOCKED, blocked
        else:
            continue
        items.append(AttentionItem(m, kind, reason, actions_for(m)))
    order = list(AttentionKind)
    items.sort(key=lambda i: (order.index(i.kind), i.milestone.client_key, i.milestone.key))
    unmapped = sorted(
        (p for p in phases if p.status is PhaseStatus.UNMAPPED),
        key=lambda p: (p.phase.completed_at, p.id),
    )
    return Attention(tuple(items), tuple(unmapped))


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class ClientSummary:
    source: SourceId | None  # None: milestones name a client the store has not kept
    key: ClientKey
    name: str
    method: SavedMethod | None
    method_known: bool  # False: the gateway could not be asked (none configured, or it failed)
    open_balance: Totals
    next_milestone: Milestone | None
    milestones: int


def client_summaries(
    clients: Sequence[Client],
    milestones: Sequence[Milestone],
    methods: Mapping[ClientKey, SavedMethod | None],
) -> tuple[ClientSummary, ...]:
    """Per client: saved method (from `methods`; a client absent from it is unknown), open
    balance (invoiced, unpaid), next milestone (the earliest pending by planned date)."""
    by_client: dict[ClientKey, list[Milestone]] = {}
    for m in milestones:
        by_client.setdefault(m.client_key, []).append(m)
    known: dict[ClientKey, Client] = {}
    for c in clients:
        known.setdefault(c.key, c)
    keys = sorted(set(known) | set(by_client), key=lambda k: known[k].name if k in known else k)
    rows = []
    for key in keys:
        own = by_client.get(key, [])
        pending = [m for m in own if m.state is S.PENDING]
        pending.sort(key=lambda m: (m.planned_date is None, m.planned_date or date.max, m.key))
        client = known.get(key)
        rows.append(
            ClientSummary(
                source=client.source if client else None,
                key=key,
                name=client.name if client else key,
                method=methods.get(key),
                method_known=key in methods,
                open_balance=Totals.of(m.amount for m in own if is_open(m)),
                next_milestone=pending[0] if pending else None,
                milestones=len(own),
            )
        )
    return tuple(rows)


# --------------------------------------------------------------------------- AR aging


class Bucket(StrEnum):
    CURRENT = "current"
    DAYS_1_30 = "1-30"
    DAYS_31_60 = "31-60"
    DAYS_61_90 = "61-90"
    OVER_90 = "90+"


BUCKETS = tuple(Bucket)


def bucket_for(days_past_due: int) -> Bucket:
    if days_past_due <= 0:
        return Bucket.CURRENT
    if days_past_due <= 30:
        return Bucket.DAYS_1_30
    if days_past_due <= 60:
        return Bucket.DAYS_31_60
    if days_past_due <= 90:
        return Bucket.DAYS_61_90
    return Bucket.OVER_90


def days_past_due(milestone: Milestone, today: date) -> int:
    """Days since the invoice fell due (`due_on`; an invoice with no due date is due the day
    it was issued; one with neither counts as current)."""
    due = due_on(milestone) or invoiced_on(milestone)
    return (today - due).days if due is not None else 0


@dataclass(frozen=True, slots=True)
class AgingRow:
    """One client's open invoices in one currency, by bucket."""

    client_key: ClientKey
    currency: str
    buckets: tuple[Money, ...]  # in BUCKETS order
    total: Money
    invoices: tuple[Milestone, ...]


@dataclass(frozen=True, slots=True)
class Aging:
    today: date
    rows: tuple[AgingRow, ...]
    totals: tuple[AgingRow, ...]  # one per currency, client_key ''


def aging(milestones: Sequence[Milestone], today: date) -> Aging:
    """Open invoiced milestones, bucketed by days past due, per client and currency."""
    groups: dict[tuple[ClientKey, str], list[Milestone]] = {}
    for m in milestones:
        if is_open(m):
            groups.setdefault((m.client_key, m.amount.currency), []).append(m)
    rows = tuple(
        _aging_row(client, currency, groups[(client, currency)], today)
        for client, currency in sorted(groups)
    )
    currencies = sorted({currency for _, currency in groups})
    totals = tuple(
        _aging_row(
            ClientKey(""),
            currency,
            [m for (_, c), ms in groups.items() if c == currency for m in ms],
            today,
        )
        for currency in currencies
    )
    return Aging(today, rows, totals)


def _aging_row(
    client: ClientKey, currency: str, invoices: list[Milestone], today: date
) -> AgingRow:
    sums = {b: Money.zero(currency) for b in BUCKETS}
    for m in invoices:
        bucket = bucket_for(days_past_due(m, today))
        sums[bucket] = sums[bucket] + m.amount
    total = Money.zero(currency)
    for m in invoices:
        total = total + m.amount
    ordered = sorted(invoices, key=lambda m: (-days_past_due(m, today), m.key))
    return AgingRow(client, currency, tuple(sums[b] for b in BUCKETS), total, tuple(ordered))


# --------------------------------------------------------------------------- cash forecast


def week_start(day: date) -> date:
    """The Monday of the day's week."""
    return day - timedelta(days=day.weekday())


NOT_INVOICED_YET = frozenset({S.PENDING, S.TRIGGERED, S.AWAITING_APPROVAL, S.INVOICING})


@dataclass(frozen=True, slots=True)
class ForecastWeek:
    start: date
    collected: Money  # paid in this week (past and current weeks)
    invoiced: Money  # expected from open invoices falling due this week
    planned: Money  # expected from milestones not invoiced yet, by planned date
    past: bool  # the week ended before today's week

    @property
    def expected(self) -> Money:
        return self.invoiced + self.planned

    @property
    def total(self) -> Money:
        return self.collected + self.invoiced + self.planned


@dataclass(frozen=True, slots=True)
class Forecast:
    """One currency's weeks: `history` weeks of collections before today's week, then `weeks`
    weeks from today's week on.

    An invoice that fell due before today's week is expected in today's week (and counted in
    `overdue` too), as is work done but not yet invoiced whose planned date has passed. Work
    not done by its planned date is in `late`, in no week: when it will be done is unknown.
    What falls after the last week is in `later`; work with no planned date in `unscheduled`."""

    currency: str
    today: date
    weeks: tuple[ForecastWeek, ...]
    overdue: Money
    late: Money
    later: Money
    unscheduled: Money

    @property
    def collected(self) -> Money:
        return _sum((w.collected for w in self.weeks), self.currency)

    @property
    def expected(self) -> Money:
        return _sum((w.expected for w in self.weeks), self.currency)


def _sum(amounts: Iterable[Money], currency: str) -> Money:
    total = Money.zero(currency)
    for amount in amounts:
        total = total + amount
    return total


def forecast(
    milestones: Sequence[Milestone], today: date, weeks: int = 12, history: int = 4
) -> tuple[Forecast, ...]:
    """Cash per week, one Forecast per currency: collected (by `paid_on`), expected from open
    invoices (by `due_on`) and from milestones not yet invoiced (by `planned_date`)."""
    if weeks < 1 or history < 0:
        raise ValueError("a forecast needs at least one week ahead and no negative history")
    this_week = week_start(today)
    first = this_week - timedelta(weeks=history)
    end = this_week + timedelta(weeks=weeks)  # exclusive
    starts = [first + timedelta(weeks=i) for i in range(history + weeks)]
    currencies = sorted({m.amount.currency for m in milestones})
    result = []
    for currency in currencies:
        zero = Money.zero(currency)
        collected = dict.fromkeys(starts, zero)
        invoiced = dict.fromkeys(starts, zero)
        planned = dict.fromkeys(starts, zero)
        overdue = late = later = unscheduled = zero
        for m in milestones:
            if m.amount.currency != currency:
                continue
            paid = paid_on(m)
            if paid is not None and not is_open(m):
                week = week_start(paid)
                if first <= week < end:
                    collected[week] = collected[week] + m.amount
                continue
            if is_open(m):
                target, when = invoiced, due_on(m) or invoiced_on(m) or today
            elif m.state in NOT_INVOICED_YET:
                if m.planned_date is None:
                    unscheduled = unscheduled + m.amount
                    continue
                target, when = planned, m.planned_date
            else:
                continue  # voided, or stopped with no invoice to collect
            week = week_start(when)
            if week < this_week:
                if m.state is S.PENDING:
                    late = late + m.amount
                    continue
                if target is invoiced:
                    overdue = overdue + m.amount
                week = this_week
            if week >= end:
                later = later + m.amount
                continue
            target[week] = target[week] + m.amount
        result.append(
            Forecast(
                currency=currency,
                today=today,
                weeks=tuple(
                    ForecastWeek(s, collected[s], invoiced[s], planned[s], s < this_week)
                    for s in starts
                ),
                overdue=overdue,
                late=late,
                later=later,
                unscheduled=unscheduled,
            )
        )
    return tuple(result)


# --------------------------------------------------------------------------- leakage


class LeakKind(StrEnum):
    UNMAPPED = "unmapped"  # a completed phase no plan matched
    IGNORED = "ignored"  # a completed phase a plan or ignore rule deliberately does not bill
    BLOCKED = "blocked"  # a milestone its mapping keeps from being invoiced
    NEEDS_ATTENTION = "needs_attention"  # a milestone stopped before it was billed or paid


@dataclass(frozen=True, slots=True)
class Leak:
    kind: LeakKind
    source: SourceId
    work_item: WorkItemKey
    client: str  # the client's name (from the engagement), else its key; '' when unknown
    subject: str  # the phase name, or the milestone's description
    reason: str
    at: datetime | None
    amount: Money | None  # what is not billed yet (None for phases: no price without a plan)
    milestone: MilestoneKey | None = None


@dataclass(frozen=True, slots=True)
class Leakage:
    leaks: tuple[Leak, ...]
    at_risk: Totals  # the amounts of blocked and stopped milestones not yet invoiced
    counts: Mapping[LeakKind, int] = field(default_factory=dict)


def leakage(
    phases: Sequence[StoredPhase],
    milestones: Sequence[Milestone],
    engagements: Sequence[Engagement] = (),
) -> Leakage:
    """Completed work not billed, and why: unmapped and ignored phases (with the mapping's
    reason), blocked milestones, and milestones needing attention."""
    names = {(e.source, e.key): e for e in engagements}
    leaks = []
    for stored in phases:
        if stored.status not in (PhaseStatus.UNMAPPED, PhaseStatus.IGNORED):
            continue
        p = stored.phase
        engagement = names.get((p.source, p.work_item))
        leaks.append(
            Leak(
                kind=LeakKind(stored.status.value),
                source=p.source,
                work_item=p.work_item,
                client=engagement.client_name if engagement else "",
                subject=p.phase + (f" / {p.secondary}" if p.secondary else ""),
                reason=stored.reason or "no reason recorded",
                at=p.completed_at,
                amount=None,
            )
        )
    at_risk = []
    for m in milestones:
        if (blocked := blocked_reason(m)) is not None:
            kind, reason = LeakKind.BLOCKED, blocked
        elif m.state is S.NEEDS_ATTENTION:
            kind, reason = LeakKind.NEEDS_ATTENTION, m.attention_reason or "no reason recorded"
        else:
            continue
        if m.invoice_id is None:
            at_risk.append(m.amount)
        engagement = names.get((m.source, m.work_item))
        leaks.append(
            Leak(
                kind=kind,
                source=m.source,
                work_item=m.work_item,
                client=engagement.client_name if engagement else m.client_key,
                subject=m.description,
                reason=reason,
                at=m.triggered_at,
                amount=m.amount,
                milestone=m.key,
            )
        )
    order = list(LeakKind)
    leaks.sort(key=lambda x: (order.index(x.kind), x.client, x.work_item, x.subject))
    counts = {k: sum(1 for x in leaks if x.kind is k) for k in LeakKind}
    return Leakage(tuple(leaks), Totals.of(at_risk), counts)


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class AuditTrail:
    operations: tuple[Operation, ...]  # newest first
    events: tuple[AuditEvent, ...]  # newest first
    milestone: str | None


def audit_trail(
    operations: Sequence[Operation],
    events: Sequence[AuditEvent],
    milestone: MilestoneKey | str | None = None,
) -> AuditTrail:
    """Every external write and every audit event, newest first, optionally for one milestone."""
    ops = [op for op in operations if not milestone or op.subject == milestone]
    ops.sort(key=lambda op: (op.updated_at, op.created_at, op.key), reverse=True)
    evs = [e for e in events if not milestone or e.subject == milestone]
    evs.sort(key=lambda e: e.at, reverse=True)  # stable: equal times keep the log's order
    return AuditTrail(tuple(ops), tuple(evs), milestone or None)
