"""Pure decisions: what to invoice, charge and post, given state. No I/O, no clock reads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from connector.config import CollectionPolicy, Matched, PricedMilestone, PriceNotice
from connector.domain.ids import ConfigRevision, LedgerCustomerId, LedgerInvoiceId, MilestoneKey
from connector.domain.model import (
    TERMINAL,
    TRANSITIONS,
    CollectionMode,
    Engagement,
    Milestone,
    MilestoneState,
    PhaseCompletion,
)
from connector.domain.money import Money
from connector.ports import (
    AccountRole,
    ChargeResult,
    ChargeStatus,
    DeclineKind,
    FeeEntry,
    InvoiceDraft,
    InvoiceLine,
    LedgerEntry,
    LedgerInvoice,
    LedgerInvoiceStatus,
    LedgerNeeds,
    LedgerProblem,
    MoneyMovement,
    MovementKind,
    NeedKind,
    Notice,
    PaymentPosting,
    RefundEntry,
    ReturnedPaymentEntry,
    SavedMethod,
    TransferEntry,
)

S = MilestoneState


def milestone_key(engagement: Engagement, definition_id: str) -> MilestoneKey:
    """The natural key: one milestone per (source, work item or close, definition)."""
    return MilestoneKey(f"{engagement.source}:{engagement.key}:{definition_id}")


def new_milestones(
    engagement: Engagement, matched: Matched, existing: set[MilestoneKey], revision: ConfigRevision
) -> list[Milestone]:
    """Pending milestones for every priced milestone of the plan not yet stored."""
    created = []
    for priced in matched.milestones:
        key = milestone_key(engagement, priced.definition.id)
        if key in existing:
            continue
        created.append(_milestone_from(engagement, matched, priced, key, revision))
    return created


def _milestone_from(
    engagement: Engagement,
    matched: Matched,
    priced: PricedMilestone,
    key: MilestoneKey,
    revision: ConfigRevision,
) -> Milestone:
    planned = None
    if engagement.start_date is not None:
        planned = engagement.start_date + timedelta(days=priced.definition.offset_days)
    return Milestone(
        key=key,
        source=engagement.source,
        work_item=engagement.key,
        client_key=engagement.client_key,
        plan_id=matched.plan.id,
        definition_id=priced.definition.id,
        description=priced.description,
        amount=priced.amount,
        collection_mode=matched.collection_mode,
        config_revision=revision,
        period=engagement.period,
        planned_date=planned,
        ledger_customer_id=matched.ledger_customer_id,
        item=matched.invoice.item,
        tax_code=matched.invoice.tax_code,
        terms=matched.invoice.terms,
        send_invoice=matched.invoice.send_invoice,
    )


def repriced(milestone: Milestone, matched: Matched, revision: ConfigRevision) -> Milestone | None:
    """The milestone re-priced under the current config, or None when nothing changed.

    Only milestones not yet invoiced may change: an issued invoice is history. An approved
    milestone the ledger could not take yet (blocked, so no invoice was attempted) may change
    too: the admin fixed its mapping.
    """
    blocked = milestone.state is S.INVOICING and "blocked" in milestone.extra
    if milestone.state not in (S.PENDING, S.TRIGGERED, S.AWAITING_APPROVAL) and not blocked:
        return None
    priced = next(
        (p for p in matched.milestones if p.definition.id == milestone.definition_id), None
    )
    if priced is None:
        return None
    changes: dict[str, object] = {
        "amount": priced.amount,
        "description": priced.description,
        "collection_mode": matched.collection_mode,
        "ledger_customer_id": matched.ledger_customer_id,
        "item": matched.invoice.item,
        "tax_code": matched.invoice.tax_code,
        "terms": matched.invoice.terms,
        "send_invoice": matched.invoice.send_invoice,
        "config_revision": revision,
    }
    if all(getattr(milestone, name) == value for name, value in changes.items()):
        return None
    return milestone.with_changes(**changes)


def on_trigger(milestone: Milestone, phase: PhaseCompletion) -> Milestone | None:
    """A completed phase triggers a pending milestone; a repeat is a no-op."""
    if milestone.state is not S.PENDING:
        return None
    return milestone.transition(S.TRIGGERED, triggered_at=phase.completed_at)


def on_reopen(milestone: Milestone) -> Milestone | None:
    """The work moved back out of the phase that triggered this milestone."""
    if milestone.state in (S.TRIGGERED, S.AWAITING_APPROVAL):
        return milestone.transition(S.PENDING, triggered_at=None)
    if milestone.state in (S.PENDING, S.NEEDS_ATTENTION) or milestone.state in TERMINAL:
        return None  # settled history is never rewritten; the audit log records the reopening
    return milestone.transition(
        S.NEEDS_ATTENTION,
        reason=(
            f"work item {milestone.work_item} was reopened after milestone {milestone.key} was "
            "invoiced: void or credit the invoice in the ledger if the work is not done, then "
            "void or retry the milestone"
        ),
    )


def can_void(milestone: Milestone) -> bool:
    """An admin may void a milestone that was never invoiced in the ledger; an invoiced one is
    voided in the ledger (the change feed follows)."""
    if milestone.invoice_id is not None:
        return False
    return S.VOIDED in TRANSITIONS[milestone.state] or (
        milestone.state is S.NEEDS_ATTENTION and milestone.charge_id is None
    )


def after_trigger(milestone: Milestone, *, drafts_in_ledger: bool = False) -> Milestone:
    """Where a triggered milestone goes next: approval first, or straight to invoicing. When
    the ledger keeps drafts (Xero), approval happens there: the invoice is created as a draft
    and approving it in the ledger releases collection."""
    if milestone.collection_mode is CollectionMode.APPROVAL_REQUIRED and not drafts_in_ledger:
        return milestone.transition(S.AWAITING_APPROVAL)
    return milestone.transition(S.INVOICING)


def missing_invoice_fields(milestone: Milestone) -> str | None:
    """Why this milestone cannot be invoiced yet, as an instruction to the admin."""
    if milestone.ledger_customer_id is None:
        return (
            f"client {milestone.client_key} has no ledger customer: set "
            f'[clients."{milestone.client_key}"] ledger_customer_id in the mapping config, or the '
            "client's external key in the practice system"
        )
    if milestone.amount.is_negative():
        return f"milestone {milestone.key} prices to {milestone.amount}: fix the plan's amounts"
    return None


_NET_TERMS = re.compile(r"^\s*net\s*(\d{1,3})\s*$", re.IGNORECASE)


def due_date_for(terms: str | None, issue_date: date) -> date | None:
    """'Net 15' -> 15 days on; 'Due on receipt' -> the issue date; other names: the ledger's."""
    if terms is None:
        return None
    match = _NET_TERMS.match(terms)
    if match:
        return issue_date + timedelta(days=int(match.group(1)))
    if terms.strip().casefold() in {"due on receipt", "due upon receipt"}:
        return issue_date
    return None


def invoice_draft(
    milestone: Milestone, issue_date: date, *, drafts_in_ledger: bool = False
) -> InvoiceDraft:
    assert milestone.ledger_customer_id is not None  # checked by missing_invoice_fields
    return InvoiceDraft(
        doc_number=milestone.extra.get("doc_number"),
        draft=drafts_in_ledger and milestone.collection_mode is CollectionMode.APPROVAL_REQUIRED,
        customer_id=LedgerCustomerId(milestone.ledger_customer_id),
        reference=milestone.key,
        lines=(
            InvoiceLine(
                description=milestone.description,
                amount=milestone.amount,
                item=milestone.item,
                tax_code=milestone.tax_code,
            ),
        ),
        issue_date=issue_date,
        due_date=due_date_for(milestone.terms, issue_date),
        terms=milestone.terms,
        send=milestone.send_invoice,
    )


def ledger_needs(milestones: Sequence[Milestone]) -> LedgerNeeds:
    """What posting these milestones' invoices depends on in the ledger (for its pre-flight)."""
    return LedgerNeeds(
        customers=frozenset(m.ledger_customer_id for m in milestones if m.ledger_customer_id),
        items=frozenset(m.item for m in milestones if m.item),
        tax_codes=frozenset(m.tax_code for m in milestones if m.tax_code),
        terms=frozenset(m.terms for m in milestones if m.terms),
        currencies=frozenset(m.amount.currency for m in milestones),
    )


def blocking_problems(milestone: Milestone, problems: Sequence[LedgerProblem]) -> str | None:
    """The pre-flight problems that stop this milestone's invoice, as one instruction.

    Problems with the connection's own settings (accounts, tax types) stop every invoice."""
    depends = {
        NeedKind.CUSTOMER: milestone.ledger_customer_id,
        NeedKind.ITEM: milestone.item,
        NeedKind.TAX_CODE: milestone.tax_code,
        NeedKind.TERMS: milestone.terms,
        NeedKind.CURRENCY: milestone.amount.currency,
    }
    hits = [
        p.message
        for p in problems
        if p.kind is NeedKind.ACCOUNT
        or (depends.get(p.kind) is not None and depends[p.kind] == p.value)
    ]
    return "; ".join(dict.fromkeys(hits)) or None


# --------------------------------------------------------------------------- collection


@dataclass(frozen=True, slots=True)
class Charge:
    """Charge this amount now (the invoice's open balance)."""

    invoice: LedgerInvoice


@dataclass(frozen=True, slots=True)
class Move:
    """Change state without charging."""

    milestone: Milestone


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


CollectDecision = Charge | Move | Wait

CHARGEABLE_MODES = frozenset({CollectionMode.AUTO_CHARGE, CollectionMode.APPROVAL_REQUIRED})


def decide_collection(
    milestone: Milestone,
    invoice: LedgerInvoice,
    method: SavedMethod | None,
    now: datetime,
) -> CollectDecision:
    """Given the ledger's current view of the invoice, charge it, settle it, or wait.

    Re-reading the invoice right before charging means an invoice paid, part-paid or voided
    in the ledger is never charged (again).
    """
    if invoice.status is LedgerInvoiceStatus.VOIDED:
        return Move(milestone.transition(S.VOIDED))
    if invoice.status is LedgerInvoiceStatus.PAID or invoice.balance.is_zero():
        return Move(milestone.transition(S.PAID_EXTERNALLY))
    if invoice.status is LedgerInvoiceStatus.DRAFT:
        return Wait("invoice is a draft in the ledger: approve it there to release collection")
    if milestone.collection_mode not in CHARGEABLE_MODES:
        return Wait("invoice only: waiting for the client to pay")
    if milestone.next_charge_at is not None and milestone.next_charge_at > now:
        return Wait(f"next charge attempt at {milestone.next_charge_at.isoformat()}")
    if method is None:
        return Move(
            milestone.transition(
                S.NEEDS_ATTENTION,
                reason=(
                    f"client {milestone.client_key} has no saved card or bank account: invite "
                    f"them (milestone-sync clients invite {milestone.client_key}) or set the "
                    "client's collection_mode to invoice_only"
                ),
            )
        )
    return Charge(invoice)


def after_charge(
    milestone: Milestone, result: ChargeResult, now: datetime, policy: CollectionPolicy
) -> Milestone:
    """The milestone after a charge attempt's outcome."""
    if result.status is ChargeStatus.SUCCEEDED:
        return milestone.transition(S.PAID, next_charge_at=None, charge_id=result.id)
    if result.status is ChargeStatus.PROCESSING:
        return milestone.transition(S.PROCESSING, charge_id=result.id)
    if result.status is ChargeStatus.REQUIRES_ACTION:
        link = f" ({result.action_url})" if result.action_url else ""
        return milestone.transition(
            S.NEEDS_ATTENTION,
            reason=(
                f"the client's bank asks them to authenticate the payment: send them the payment "
                f"link{link}; automatic retries are stopped"
            ),
            charge_id=result.id,
        )
    code = result.decline_code or "declined"
    if result.decline_kind is DeclineKind.SOFT and milestone.charge_attempts <= len(
        policy.retry_days
    ):
        delay = policy.retry_days[milestone.charge_attempts - 1]
        return milestone.transition(
            S.CHARGE_FAILED, next_charge_at=now + timedelta(days=delay), charge_id=result.id
        )
    if result.decline_kind is DeclineKind.SOFT:
        reason = (
            f"charge declined ({code}) {milestone.charge_attempts} times: ask the client for "
            "another payment method, then retry"
        )
    else:
        reason = (
            f"charge declined for good ({code}): the client must update their card or bank "
            f"account (milestone-sync clients invite {milestone.client_key}), then retry"
        )
    return milestone.transition(S.NEEDS_ATTENTION, reason=reason, charge_id=result.id)


def charge_amount(milestone: Milestone) -> Money:
    """The amount of the current charge attempt: the invoice balance read before it started."""
    minor = milestone.extra.get("charge_minor")
    if minor is None:
        return milestone.amount
    return Money.from_minor(int(minor), milestone.amount.currency)


# --------------------------------------------------------------------------- the money trail


@dataclass(frozen=True, slots=True)
class TrailPlan:
    """What one gateway movement books in the ledger: payments against invoices, then entries
    (named so each gets its own idempotency key), and a note for the admin."""

    payments: tuple[PaymentPosting, ...] = ()
    entries: tuple[tuple[str, LedgerEntry], ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Do not book this movement (nor any after it) yet."""

    reason: str


@dataclass(frozen=True, slots=True)
class Foreign:
    """Not money milestone-sync moved: reported, not booked."""

    reason: str


def trail_entries(
    movement: MoneyMovement, milestone: Milestone | None
) -> TrailPlan | WaitFor | Foreign:
    """How a movement of the gateway balance is booked through the clearing account, so the
    clearing account always equals the gateway balance. Reversals are new entries, never edits."""
    on = movement.occurred_at.date()
    kind = movement.kind
    fee = _fee_entry(movement, on)
    if kind in (MovementKind.PAYOUT, MovementKind.PAYOUT_FAILED, MovementKind.FEE):
        return _bank_plan(movement, on, fee)
    if milestone is None or milestone.invoice_id is None or milestone.ledger_customer_id is None:
        return Foreign(
            f"{kind} of {movement.amount} ({movement.source or movement.id}) is not money "
            "milestone-sync charged: book it in the ledger by hand, or the clearing account will "
            "not match the gateway balance"
        )
    invoice = LedgerInvoiceId(movement.invoice_id or milestone.invoice_id)
    customer = milestone.ledger_customer_id
    amount = movement.amount.abs()
    label = f"{milestone.description} (invoice {milestone.invoice_number or invoice})"
    if kind is MovementKind.PAYMENT:
        ours = movement.charge_id is not None and movement.charge_id == milestone.charge_id
        if ours and milestone.ledger_payment_id is not None:
            return TrailPlan(entries=fee)
        if milestone.state in (S.COLLECTING, S.PROCESSING, S.PAID):
            return WaitFor(
                f"the payment of {movement.amount} for {milestone.key} is booked once the "
                "milestone is recorded as paid"
            )
        assert movement.charge_id is not None
        posting = PaymentPosting(invoice, customer, movement.amount, on, movement.charge_id)
        return TrailPlan(payments=(posting,), entries=fee)
    reference = movement.source or movement.id
    if kind is MovementKind.REFUND and not movement.amount.is_negative():
        return Foreign(
            f"a refund of {amount} for {milestone.key} failed and the money came back to the "
            "gateway balance: refund the client another way and book both by hand"
        )
    if kind is MovementKind.REFUND:
        refund = RefundEntry(invoice, customer, amount, on, reference, f"Refund: {label}")
        return TrailPlan(entries=(("refund", refund), *fee))
    if kind is MovementKind.DISPUTE_WITHDRAWN:
        hold = TransferEntry(
            AccountRole.CLEARING, AccountRole.DISPUTES, amount, on, movement.id,
            f"Disputed payment held: {label}",
        )  # fmt: skip
        note = (
            f"the client disputed the payment of {amount}: the gateway holds it until the "
            "dispute is decided; answer the dispute in the gateway's dashboard"
        )
        return TrailPlan(entries=(("hold", hold), *fee), note=note)
    if kind is MovementKind.DISPUTE_REINSTATED:
        release = TransferEntry(
            AccountRole.DISPUTES, AccountRole.CLEARING, amount, on, movement.id,
            f"Dispute won, payment reinstated: {label}",
        )  # fmt: skip
        return TrailPlan(entries=(("release", release), *fee))
    if kind is MovementKind.DISPUTE_LOST:
        lost = RefundEntry(
            invoice, customer, amount, on, reference, f"Dispute lost: {label}",
            from_account=AccountRole.DISPUTES,
        )  # fmt: skip
        return TrailPlan(entries=(("refund", lost),), note=f"the dispute over {amount} was lost")
    if kind is MovementKind.PAYMENT_RETURNED:
        returned = ReturnedPaymentEntry(
            invoice, customer, amount, on, reference, f"Returned bank payment: {label}"
        )
        note = (
            f"the client's bank returned the payment of {amount}: the ledger shows it owed "
            f"again by the client; collect it another way, or ask for a new bank account "
            f"(milestone-sync clients invite {milestone.client_key})"
        )
        return TrailPlan(entries=(("returned", returned), *fee), note=note)
    raise ValueError(f"unknown movement kind {kind}")


def _fee_entry(movement: MoneyMovement, on: date) -> tuple[tuple[str, LedgerEntry], ...]:
    if movement.fee.is_zero() or movement.kind is MovementKind.FEE:
        return ()
    what = movement.source or movement.charge_id or movement.id
    verb = "fee" if not movement.fee.is_negative() else "fee returned"
    return (("fee", FeeEntry(movement.fee, on, movement.id, f"Payment gateway {verb} ({what})")),)


def _bank_plan(
    movement: MoneyMovement, on: date, fee: tuple[tuple[str, LedgerEntry], ...]
) -> TrailPlan:
    if movement.kind is MovementKind.FEE:
        charged = FeeEntry(-movement.amount, on, movement.id, movement.description or "Gateway fee")
        return TrailPlan(entries=(("fee", charged),))
    reference = movement.payout_id or movement.source or movement.id
    amount = movement.amount.abs()
    if movement.amount.is_negative():
        transfer = TransferEntry(
            AccountRole.CLEARING, AccountRole.BANK, amount, on, reference,
            f"Payout {reference} to the bank",
        )  # fmt: skip
    else:
        what = "failed, returned" if movement.kind is MovementKind.PAYOUT_FAILED else "debited"
        transfer = TransferEntry(
            AccountRole.BANK, AccountRole.CLEARING, amount, on, reference,
            f"Payout {reference} {what} from the bank",
        )  # fmt: skip
    return TrailPlan(entries=(("payout", transfer), *fee))


def payment_posting(movement: MoneyMovement, milestone: Milestone) -> PaymentPosting:
    """The payment a PAYMENT movement books against its milestone's invoice."""
    assert movement.charge_id is not None and milestone.ledger_customer_id is not None
    invoice = LedgerInvoiceId(movement.invoice_id or milestone.invoice_id or "")
    return PaymentPosting(
        invoice, milestone.ledger_customer_id, movement.amount, movement.occurred_at.date(),
        movement.charge_id,
    )  # fmt: skip


def clearing_effect(movement: MoneyMovement) -> Money:
    """How the movement changes the clearing account once booked: the gateway balance's change
    (a lost dispute moves nothing: its money left when the dispute opened)."""
    if movement.kind is MovementKind.DISPUTE_LOST:
        return Money(0, movement.amount.currency)
    return movement.net


def entry_clearing_effect(entry: LedgerEntry) -> Money:
    """How one entry changes the clearing account (for what a missing entry leaves out)."""
    zero = Money(0, entry.amount.currency)
    if isinstance(entry, FeeEntry):
        return -entry.amount
    if isinstance(entry, TransferEntry):
        if entry.from_account is AccountRole.CLEARING:
            return -entry.amount
        return entry.amount if entry.to_account is AccountRole.CLEARING else zero
    if isinstance(entry, RefundEntry):
        return -entry.amount if entry.from_account is AccountRole.CLEARING else zero
    return -entry.amount  # a returned payment leaves the clearing account


# --------------------------------------------------------------------------- reminders

REMINDABLE = frozenset({S.INVOICED, S.CHARGE_FAILED, S.NEEDS_ATTENTION})


def reminder_due(
    milestone: Milestone, today: date, policy: CollectionPolicy
) -> tuple[int, int] | None:
    """The reminder to send now, as (its number, days from the due date), or None.

    Invoice-only clients and failed collections are reminded on the policy's cadence around
    the due date, through the ledger's own invoice email; a milestone the gateway will charge
    is not (it is about to be paid), nor an invoice still a draft in the ledger. Only the
    latest reminder that has come due is sent: a daemon down for a week sends one, not five."""
    offsets = policy.reminder_offsets()
    due_text = milestone.extra.get("due_on")
    if not offsets or due_text is None or milestone.invoice_id is None:
        return None
    if milestone.state not in REMINDABLE or "ledger_draft" in milestone.extra:
        return None
    failed = milestone.charge_attempts > 0
    if milestone.state is S.INVOICED and milestone.collection_mode in CHARGEABLE_MODES:
        return None  # the charge comes first
    if milestone.state is S.NEEDS_ATTENTION and not (failed or "no saved" in _reason(milestone)):
        return None  # stuck for another reason: the admin acts, not the client
    sent = int(milestone.extra.get("reminders", "0"))
    days = (today - date.fromisoformat(due_text)).days
    reached = [n for n, offset in enumerate(offsets, start=1) if days >= offset]
    if not reached or reached[-1] <= sent:
        return None
    return reached[-1], offsets[reached[-1] - 1]


def _reason(milestone: Milestone) -> str:
    return milestone.attention_reason or ""


def auto_approvable(milestone: Milestone, now: datetime, policy: CollectionPolicy) -> bool:
    """An approval-required milestone whose notice period has passed without an objection."""
    since = milestone.extra.get("awaiting_since")
    if policy.auto_approve_after_days is None or since is None:
        return False
    if milestone.state is not S.AWAITING_APPROVAL:
        return False
    return now - datetime.fromisoformat(since) >= timedelta(days=policy.auto_approve_after_days)


# --------------------------------------------------------------------------- notices


def price_notice(change: PriceNotice, firm_name: str) -> Notice:
    """The client's notice of a price increase, in plain words."""
    when = change.takes_effect.strftime("%d %B %Y").lstrip("0")
    return Notice(
        client_key=change.client_key,
        client_name=change.client_name,
        email=change.email,
        subject=f"{firm_name}: your {change.plan_name} fee from {when}",
        body=(
            f"Dear {change.client_name},\n\n"
            f"From {when}, your fee for {change.plan_name} changes from {change.current_fee} "
            f"to {change.new_fee} (our annual adjustment of {change.percent}%).\n\n"
            "Nothing needs doing on your side. If you have questions, just reply to this email.\n"
            f"\n{firm_name}\n"
        ),
    )
