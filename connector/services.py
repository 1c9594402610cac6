"""Use cases: one sync cycle is poll -> map -> invoice -> collect -> reconcile.

Each stage gathers state through the ports, asks `planning` what to do, and acts one item at a
time, each in its own short transaction. Every external write goes through `_perform`: the intent
is committed before the call, the outcome after it, and a pending intent is resolved by looking
the object up before anything is sent again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

from connector import planning
from connector.config import (
    CollectionPolicy,
    Ignored,
    InvoicingPolicy,
    Mapper,
    Matched,
    PriceNotice,
    Unmapped,
)
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
    TransientError,
)
from connector.domain.events import AuditEvent
from connector.domain.ids import (
    IdempotencyKey,
    LedgerInvoiceId,
    LedgerPaymentId,
    MilestoneKey,
    SourceId,
    TenantId,
)
from connector.domain.model import (
    NOT_YET_INVOICED,
    Milestone,
    MilestoneState,
    PhaseCompletion,
)
from connector.domain.money import Money
from connector.idempotency import make_key, payload_hash
from connector.ports import (
    AccountRole,
    BatchItem,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    Clock,
    DeliveryStatus,
    InvoiceDraft,
    Ledger,
    LedgerEntry,
    LedgerInvoice,
    LedgerInvoiceStatus,
    MoneyMovement,
    MovementKind,
    Notifier,
    Operation,
    OperationKind,
    OperationStatus,
    PaymentGateway,
    PaymentPosting,
    PhaseStatus,
    PollContext,
    PracticeSource,
    StoredPhase,
    UnitOfWork,
    UnitOfWorkFactory,
)

S = MilestoneState
T = TypeVar("T")

BLOCKED = "blocked"  # milestone.extra: why the ledger cannot take its invoice yet
DOC_NUMBER = "doc_number"  # milestone.extra: the invoice number we gave it (firm numbering)
INVOICE_REVISION = "invoice_rev"  # milestone.extra: bumped when an admin retries a rejection
IN_LEDGER_APPROVAL = "ledger_draft"  # milestone.extra: created as a draft, approved in the ledger
INVOICED_ON = "invoiced_on"  # milestone.extra: the day its invoice was created (ISO date)
DUE_ON = "due_on"  # milestone.extra: the invoice's due date, as the ledger set it
PAID_ON = "paid_on"  # milestone.extra: the day it was paid (booked, or noticed paid elsewhere)
AWAITING_SINCE = "awaiting_since"  # milestone.extra: when it began waiting for approval
REMINDERS = "reminders"  # milestone.extra: how many reminders were emailed
SENT = "sent"  # milestone.extra: emailed by the ledger ("yes"), or why not
LEDGER_CHANGES = "changes"  # cursor stream: where the ledger's change feed was read up to
FIRST_FEED_WINDOW = timedelta(days=25)  # first read of the feed (QBO CDC looks back 30 days)
MOVEMENTS = "movements"  # cursor stream: how far the gateway's balance movements are booked
MAX_MOVEMENT_PAGES = 50  # per cycle; the rest waits for the next one
SENDABLE = frozenset({S.INVOICED, S.COLLECTING, S.PROCESSING, S.CHARGE_FAILED})

SOURCE_HEALTH = "health"  # cursor stream holding each source's last poll outcome (JSON)


def _health(at: datetime, error: Exception | None) -> str:
    """A source's last poll outcome, for `status`: a ConfigError means a person must act."""
    if error is None:
        return json.dumps({"at": at.isoformat(), "ok": True})
    kind = (
        "config"
        if isinstance(error, ConfigError)
        else "transient"
        if isinstance(error, TransientError)
        else "rejected"
    )
    return json.dumps({"at": at.isoformat(), "ok": False, "kind": kind, "error": str(error)})


class FaultHook(Protocol):
    """Called at each recovery point; tests arm it to crash the process there."""

    def __call__(self, point: str, kind: OperationKind, subject: str) -> None: ...


def no_faults(point: str, kind: OperationKind, subject: str) -> None:
    """The production fault hook: does nothing."""


@dataclass
class StageReport:
    name: str
    done: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class CycleReport:
    started_at: datetime
    stages: list[StageReport] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [p for stage in self.stages for p in stage.problems]

    def count(self, name: str) -> int:
        return sum(s.done for s in self.stages if s.name == name)


@dataclass
class Reconciliation:
    """What `reconcile --check` found: each difference as (what, detail)."""

    differences: list[tuple[str, str]] = field(default_factory=list)
    movements: int = 0
    clearing: Money | None = None
    balance: Money | None = None

    def add(self, what: str, detail: str) -> None:
        self.differences.append((what, detail))

    @property
    def clean(self) -> bool:
        return not self.differences


def _as_reconciled(milestone: Milestone | None) -> Milestone | None:
    """For the check, a payment that should be booked is planned as if it were (its fee)."""
    if milestone is None or milestone.ledger_payment_id is not None:
        return milestone
    return dataclasses.replace(milestone, ledger_payment_id=LedgerPaymentId("(expected)"))


@dataclass
class _Deferred:
    """The write did not complete; try again later (with the same key)."""

    error: str


@dataclass
class _Rejected:
    error: str


@dataclass
class SyncService:
    """Runs the stages of a sync cycle for one tenant."""

    tenant: TenantId
    uow: UnitOfWorkFactory
    sources: Sequence[PracticeSource]
    ledger: Ledger
    gateway: PaymentGateway | None
    mapper: Mapper
    clock: Clock
    policy: CollectionPolicy = field(default_factory=CollectionPolicy)
    invoicing: InvoicingPolicy = field(default_factory=InvoicingPolicy)
    notifier: Notifier | None = None
    firm_name: str = "Your accountants"
    fault: FaultHook = no_faults

    # ------------------------------------------------------------------ the cycle

    def run_cycle(self) -> CycleReport:
        report = CycleReport(started_at=self.clock.now())
        for stage in (
            self.poll_sources,
            self.map_phases,
            self.reprice,
            self.notify_price_increases,
            self.issue_invoices,
            self.collect_payments,
            self.send_reminders,
            self.reconcile_payments,
            self.book_money_trail,
        ):
            report.stages.append(stage())
        return report

    # ------------------------------------------------------------------ poll

    def poll_sources(self) -> StageReport:
        """Read each source from its stored cursor and inbox; store phases once; then advance
        the cursor, the source's snapshots and the inbox in the same transaction."""
        stage = StageReport("poll")
        for source in self.sources:
            with self.uow() as uow:
                cursor = uow.cursors.get(source.source_id, "phases")
                deliveries = uow.inbox.pending(source.source_id)
            context = PollContext(
                cursor=cursor,
                memory=_StoredMemory(self.uow, source.source_id),
                now=self.clock.now(),
                deliveries=deliveries,
            )
            try:
                batch = source.poll(context)
            except (TransientError, RejectedError, ConfigError) as exc:
                stage.problems.append(f"source {source.source_id}: {exc}")
                with self.uow() as uow:
                    uow.cursors.set(
                        source.source_id,
                        SOURCE_HEALTH,
                        _health(context.now, exc),
                    )
                    uow.commit()
                continue
            stage.problems.extend(f"source {source.source_id}: {w}" for w in batch.warnings)
            with self.uow() as uow:
                for client in batch.clients:
                    uow.clients.upsert(client)
                for engagement in batch.engagements:
                    uow.engagements.upsert(engagement)
                for phase in batch.phases:
                    if uow.phases.add(phase):
                        stage.done += 1
                if batch.remember:
                    uow.source_state.put_many(source.source_id, batch.remember)
                if batch.handled:
                    uow.inbox.mark(batch.handled, DeliveryStatus.DONE)
                for delivery_id, why in batch.failed.items():
                    uow.inbox.mark([delivery_id], DeliveryStatus.FAILED, why)
                    stage.problems.append(f"source {source.source_id}: {why}")
                uow.cursors.set(source.source_id, "phases", batch.cursor)
                uow.cursors.set(source.source_id, SOURCE_HEALTH, _health(context.now, None))
                uow.commit()
        return stage

    # ------------------------------------------------------------------ map

    def map_phases(self) -> StageReport:
        """Turn each new phase into triggered milestones, or flag it for an admin."""
        stage = StageReport("map")
        with self.uow() as uow:
            new = uow.phases.list(PhaseStatus.NEW)
        for stored in new:
            with self.uow() as uow:
                status, reason = self._map_one(uow, stored)
                uow.phases.mark(stored.id, status, reason)
                if status is PhaseStatus.UNMAPPED:
                    stage.problems.append(reason or "unmapped phase")
                    self._audit(uow, "phase.unmapped", stored.phase.work_item, reason or "")
                uow.commit()
            stage.done += status is PhaseStatus.MAPPED
        return stage

    def _map_one(self, uow: UnitOfWork, stored: StoredPhase) -> tuple[PhaseStatus, str | None]:
        phase = stored.phase
        engagement = uow.engagements.get(phase.source, phase.work_item)
        if engagement is None:
            return PhaseStatus.UNMAPPED, (
                f"phase {phase.phase!r} of {phase.source} work item {phase.work_item} arrived "
                "before the work item itself: run the next poll, or check the source connection"
            )
        probe = phase if not phase.reopened else _unreopened(phase)
        resolution = self.mapper.resolve(engagement, probe, phase.completed_at.date())
        if isinstance(resolution, Unmapped):
            return PhaseStatus.UNMAPPED, (
                f"{engagement.client_name} / {engagement.title} ({phase.source} "
                f"{phase.work_item}) reached {phase.phase!r} but was not billed: "
                f"{resolution.reason}"
            )
        if isinstance(resolution, Ignored):
            return PhaseStatus.IGNORED, resolution.reason
        existing = {
            m.key: m for m in uow.milestones.list(work_item=(phase.source, phase.work_item))
        }
        for created in planning.new_milestones(
            engagement, resolution, set(existing), self.mapper.revision
        ):
            uow.milestones.add(created)
            existing[created.key] = created
            self._audit(
                uow,
                "milestone.planned",
                created.key,
                f"{created.description}: {created.amount} under plan {created.plan_id}",
                revision=created.config_revision,
            )
        if not resolution.triggered:
            return PhaseStatus.IGNORED, f"plan {resolution.plan.id} bills nothing at this phase"
        for def_id in resolution.triggered:
            milestone = existing[planning.milestone_key(engagement, def_id)]
            if phase.reopened:
                changed = planning.on_reopen(milestone)
                kind = "milestone.untriggered"
                if changed is None and milestone.state is not S.PENDING:
                    self._audit(
                        uow,
                        "milestone.reopened_after_billing",
                        milestone.key,
                        f"work item reopened while the milestone is {milestone.state}: "
                        "check whether the invoice still stands",
                    )
            else:
                changed = planning.on_trigger(milestone, phase)
                kind = "milestone.triggered"
            if changed is not None:
                uow.milestones.update(changed)
                self._audit(
                    uow,
                    kind,
                    changed.key,
                    changed.attention_reason or f"{phase.phase} at {phase.completed_at}",
                )
        return PhaseStatus.MAPPED, None

    # ------------------------------------------------------------------ amendments

    def reprice(self) -> StageReport:
        """Apply the current config to milestones not yet invoiced; invoiced ones never change."""
        stage = StageReport("reprice")
        today = self.clock.now().date()
        with self.uow() as uow:
            candidates = uow.milestones.list(NOT_YET_INVOICED)
            # approved but blocked before any invoice intent: still free to follow the config
            candidates += [
                m for m in uow.milestones.list(frozenset({S.INVOICING})) if BLOCKED in m.extra
            ]
        for milestone in candidates:
            with self.uow() as uow:
                engagement = uow.engagements.get(milestone.source, milestone.work_item)
                if engagement is None:
                    continue
                on = milestone.triggered_at.date() if milestone.triggered_at else today
                resolution = self.mapper.resolve(engagement, None, on)
                if not isinstance(resolution, Matched) or resolution.plan.id != milestone.plan_id:
                    if milestone.config_revision != self.mapper.revision:
                        what = (
                            resolution.reason
                            if isinstance(resolution, Unmapped | Ignored)
                            else f"it now matches plan {resolution.plan.id}"
                        )
                        stage.problems.append(
                            f"milestone {milestone.key} no longer follows plan "
                            f"{milestone.plan_id}: {what}"
                        )
                    continue
                changed = planning.repriced(milestone, resolution, self.mapper.revision)
                if changed is None:
                    continue
                uow.milestones.update(changed)
                self._audit(
                    uow,
                    "milestone.repriced",
                    milestone.key,
                    f"{milestone.amount} -> {changed.amount} (config {milestone.config_revision} "
                    f"-> {changed.config_revision})",
                    old_amount=str(milestone.amount),
                    new_amount=str(changed.amount),
                    old_revision=milestone.config_revision,
                    new_revision=changed.config_revision,
                )
                uow.commit()
                stage.done += 1
        return stage

    # ------------------------------------------------------------------ notices

    def notify_price_increases(self) -> StageReport:
        """Tell each client of an annual price increase once its notice period begins, once
        per (client, plan, anniversary). Without a notifier (or an address) the notice is
        recorded for the admin to send by hand, and reported once."""
        stage = StageReport("notify")
        today = self.clock.now().date()
        with self.uow() as uow:
            engagements = uow.engagements.list()
        seen: set[IdempotencyKey] = set()
        for engagement in engagements:
            for change in self.mapper.price_notices(engagement, today):
                key = make_key(
                    "notice",
                    self.tenant,
                    f"{change.client_key}:{change.plan_id}:{change.takes_effect}",
                )
                if key in seen:
                    continue
                seen.add(key)
                with self.uow() as uow:
                    earlier = uow.operations.get(key)
                if earlier is not None and earlier.status is not OperationStatus.PENDING:
                    continue  # sent, or reported as unsendable, before
                sent, problem = self._notify(change, key)
                stage.done += sent
                if problem:
                    stage.problems.append(problem)
        return stage

    def _notify(self, change: PriceNotice, key: IdempotencyKey) -> tuple[bool, str | None]:
        notice = planning.price_notice(change, self.firm_name)
        subject = MilestoneKey(f"client:{change.client_key}")
        notifier = self.notifier

        def send() -> str:
            if notifier is None:
                raise RejectedError(
                    "no [notifications] are configured: send the client this notice by hand "
                    f"({notice.subject})"
                )
            return notifier.send(notice, key)

        def record(uow: UnitOfWork, message_id: str) -> None:
            self._audit(
                uow,
                "notice.sent",
                subject,
                f"{notice.subject} sent to {notice.email} ({message_id})",
            )

        def not_found() -> str | None:
            return None  # a sent email leaves no trace to look up: resend after a crash

        outcome = self._perform(
            OperationKind.NOTIFY,
            subject,
            key,
            {"subject": notice.subject, "to": notice.email},
            call=send,
            lookup=not_found,
            external_id=lambda message_id: message_id,
            on_success=record,
        )
        if isinstance(outcome, _Rejected):
            with self.uow() as uow:
                self._audit(uow, "notice.unsent", subject, f"{notice.subject}: {outcome.error}")
                uow.commit()
            return False, f"client {change.client_key}: price notice not sent: {outcome.error}"
        if isinstance(outcome, _Deferred):
            return (
                False,
                f"client {change.client_key}: will retry the price notice: {outcome.error}",
            )
        return outcome is not None, None

    # ------------------------------------------------------------------ approvals

    def approve(self, keys: Sequence[MilestoneKey] | None = None) -> list[MilestoneKey]:
        """Release milestones awaiting approval (all of them when keys is None)."""
        approved = []
        with self.uow() as uow:
            waiting = uow.milestones.list(frozenset({S.AWAITING_APPROVAL}))
        for milestone in waiting:
            if keys is not None and milestone.key not in keys:
                continue
            with self.uow() as uow:
                uow.milestones.update(milestone.transition(S.INVOICING))
                self._audit(uow, "milestone.approved", milestone.key, "approved for invoicing")
                uow.commit()
            approved.append(milestone.key)
        return approved

    def retry(self, keys: Sequence[MilestoneKey] | None = None) -> list[MilestoneKey]:
        """Send milestones needing attention (all of them when keys is None) back to where they
        can safely resume, once the admin has fixed the cause.

        An invoice the ledger rejected gets a new idempotency revision (the rejected request
        created nothing, and a ledger replays a key's first answer) and is checked again before
        it posts, after the next reprice has applied the current config. A collection problem
        starts a new charge attempt from the invoice's balance."""
        retried = []
        with self.uow() as uow:
            stuck = uow.milestones.list(frozenset({S.NEEDS_ATTENTION}))
        for milestone in stuck:
            if keys is not None and milestone.key not in keys:
                continue
            with self.uow() as uow:
                current = self._reload(uow, milestone)
                resumed = self._resumed(uow, current)
                uow.milestones.update(resumed)
                self._audit(
                    uow,
                    "milestone.retried",
                    milestone.key,
                    f"retried by an admin after: {current.attention_reason}; now {resumed.state}",
                )
                uow.commit()
            retried.append(milestone.key)
        return retried

    def _resumed(self, uow: UnitOfWork, milestone: Milestone) -> Milestone:
        back = milestone.resume_state or S.PENDING
        if back in (S.PENDING, S.TRIGGERED, S.AWAITING_APPROVAL):
            return milestone.transition(S.TRIGGERED if milestone.triggered_at else S.PENDING)
        if back is S.INVOICING:
            extra = dict(milestone.extra)
            op = uow.operations.get(self._invoice_key(milestone))
            if op is not None and op.status is OperationStatus.FAILED:
                extra[INVOICE_REVISION] = str(int(extra.get(INVOICE_REVISION, "0")) + 1)
            if op is None or op.status is OperationStatus.FAILED:
                extra[BLOCKED] = "retried by an admin: checking the ledger again"
            return milestone.transition(S.INVOICING, extra=extra)
        if back in (S.INVOICED, S.COLLECTING, S.PROCESSING, S.CHARGE_FAILED):
            return milestone.transition(S.INVOICED, next_charge_at=None)
        return milestone.transition(back)

    def void(self, keys: Sequence[MilestoneKey], reason: str) -> list[MilestoneKey]:
        """Cancel milestones that were never invoiced (or whose invoice the ledger refused), so
        they are never billed. An invoiced milestone is voided in the ledger itself: the change
        feed then makes it `voided` here."""
        voided = []
        for key in keys:
            with self.uow() as uow:
                current = uow.milestones.get(key)
                if current is None or not planning.can_void(current):
                    continue
                uow.milestones.update(current.transition(S.VOIDED))
                self._audit(uow, "milestone.voided", key, f"voided by an admin: {reason}")
                uow.commit()
            voided.append(key)
        return voided

    # ------------------------------------------------------------------ invoice

    def issue_invoices(self) -> StageReport:
        """Create exactly one ledger invoice per triggered (and approved) milestone, then email
        the ones the plan wants sent. A milestone whose mapping the ledger cannot honour (no
        customer, an archived item...) is not posted: it waits, still repriceable, until the
        admin fixes the config or the ledger; the others go on."""
        stage = StageReport("invoice")
        with self.uow() as uow:
            triggered = uow.milestones.list(frozenset({S.TRIGGERED}))
        for milestone in triggered:
            with self.uow() as uow:
                moved = planning.after_trigger(
                    milestone, drafts_in_ledger=self.ledger.supports_drafts
                )
                if moved.state is S.AWAITING_APPROVAL:
                    since = self.clock.now().isoformat()
                    moved = moved.with_changes(extra={**moved.extra, AWAITING_SINCE: since})
                uow.milestones.update(moved)
                uow.commit()
        self._auto_approve(stage)
        with self.uow() as uow:
            invoicing = uow.milestones.list(frozenset({S.INVOICING}))
            started = {
                m.key for m in invoicing if uow.operations.get(self._invoice_key(m)) is not None
            }
        due = [m for m in invoicing if m.key in started]  # resume these before anything new
        due += self._checked(stage, [m for m in invoicing if m.key not in started])
        if due:
            warning = self.ledger.capacity_warning(len(due))
            if warning:
                stage.problems.append(f"ledger {self.ledger.name}: {warning}")
        limit = self.ledger.batch_limit
        batch_from = self.invoicing.batch_from
        if limit > 1 and batch_from is not None and len(due) >= batch_from:
            for start in range(0, len(due), limit):
                stage.done += self._invoice_batch(stage, due[start : start + limit])
        else:
            for milestone in due:
                stage.done += self._guard(stage, milestone, self._invoice_one) is None
        self._send_invoices(stage)
        return stage

    def _invoice_key(self, milestone: Milestone) -> IdempotencyKey:
        revision = milestone.extra.get(INVOICE_REVISION, "0")
        return make_key("invoice", self.tenant, milestone.key, revision)

    def _checked(self, stage: StageReport, fresh: list[Milestone]) -> list[Milestone]:
        """The milestones (with no invoice intent yet) whose invoice the ledger can take, after
        one pre-flight check for all of them. The rest are marked blocked with what to fix; a
        config fix reprices them and a ledger fix releases them on a later cycle."""
        if not fresh:
            return []
        reasons: dict[MilestoneKey, str] = {}
        checkable = []
        for milestone in fresh:
            missing = planning.missing_invoice_fields(milestone)
            if missing:
                reasons[milestone.key] = missing
            else:
                checkable.append(milestone)
        if checkable:
            try:
                problems = self.ledger.check(planning.ledger_needs(checkable))
            except TransientError as exc:
                stage.problems.append(f"ledger {self.ledger.name}: pre-flight check: {exc}")
                return []  # nothing is posted unchecked; the next cycle checks again
            for milestone in checkable:
                why = planning.blocking_problems(milestone, problems)
                if why:
                    reasons[milestone.key] = why
        ready = []
        for milestone in fresh:
            reason = reasons.get(milestone.key)
            if milestone.extra.get(BLOCKED) != reason:
                milestone = self._mark_blocked(milestone, reason)
            if reason:
                stage.problems.append(f"{milestone.key}: not invoiced yet: {reason}")
            else:
                ready.append(milestone)
        return ready

    def _mark_blocked(self, milestone: Milestone, reason: str | None) -> Milestone:
        with self.uow() as uow:
            current = self._reload(uow, milestone)
            extra = {k: v for k, v in current.extra.items() if k != BLOCKED}
            if reason:
                extra[BLOCKED] = reason
            saved = uow.milestones.update(current.with_changes(extra=extra))
            self._audit(
                uow,
                "milestone.blocked" if reason else "milestone.unblocked",
                milestone.key,
                reason or "the ledger now has what this milestone's invoice needs",
            )
            uow.commit()
        return saved

    def _prepared(
        self, milestone: Milestone
    ) -> tuple[InvoiceDraft, IdempotencyKey, dict[str, object]]:
        """The milestone's draft, key and payload; numbers it first when the firm numbers its
        invoices (the number is committed before any call, so a replay reuses it)."""
        if self.invoicing.invoice_number is not None and DOC_NUMBER not in milestone.extra:
            with self.uow() as uow:
                current = self._reload(uow, milestone)
                if DOC_NUMBER not in current.extra:
                    seq = int(uow.cursors.get("ledger", "invoice_seq") or "0") + 1
                    uow.cursors.set("ledger", "invoice_seq", str(seq))
                    number = self.invoicing.number(seq)
                    assert number is not None
                    current = uow.milestones.update(
                        current.with_changes(extra={**current.extra, DOC_NUMBER: number})
                    )
                    uow.commit()
                milestone = current
        draft = planning.invoice_draft(
            milestone, self.clock.now().date(), drafts_in_ledger=self.ledger.supports_drafts
        )
        key = self._invoice_key(milestone)
        payload: dict[str, object] = {
            "customer": draft.customer_id,
            "reference": draft.reference,
            "lines": [(ln.description, str(ln.amount), ln.item, ln.tax_code) for ln in draft.lines],
            "terms": draft.terms,
            "number": draft.doc_number,
            "draft": draft.draft,
        }
        return draft, key, payload

    def _record_invoice(self, milestone: Milestone) -> Callable[[UnitOfWork, LedgerInvoice], None]:
        def record(uow: UnitOfWork, invoice: LedgerInvoice) -> None:
            current = self._reload(uow, milestone)
            extra = dict(current.extra)
            extra[INVOICED_ON] = self.clock.now().date().isoformat()
            if invoice.due_date is not None:
                extra[DUE_ON] = invoice.due_date.isoformat()
            if invoice.status is LedgerInvoiceStatus.DRAFT:
                extra[IN_LEDGER_APPROVAL] = "yes"
            uow.milestones.update(
                current.transition(
                    S.INVOICED, invoice_id=invoice.id, invoice_number=invoice.number, extra=extra
                )
            )
            self._audit(
                uow,
                "invoice.created",
                milestone.key,
                f"invoice {invoice.number or invoice.id} for {invoice.total} in {self.ledger.name}"
                + (" as a draft: approve it there" if IN_LEDGER_APPROVAL in extra else ""),
                invoice_id=invoice.id,
            )

        return record

    def _invoice_one(self, milestone: Milestone) -> str | None:
        missing = planning.missing_invoice_fields(milestone)
        if missing:
            self._attention(milestone, missing)
            return missing
        draft, key, payload = self._prepared(milestone)
        outcome = self._perform(
            OperationKind.CREATE_INVOICE,
            milestone.key,
            key,
            payload,
            call=lambda: self.ledger.create_invoice(draft, key),
            lookup=lambda: self.ledger.find_invoice(draft),
            external_id=lambda invoice: invoice.id,
            on_success=self._record_invoice(milestone),
        )
        return self._settle(milestone, outcome)

    def _invoice_batch(self, stage: StageReport, milestones: Sequence[Milestone]) -> int:
        """Backlog mode: one ledger request for up to `batch_limit` invoices. Intents are
        committed first, pending ones looked up (a batch carries no per-invoice request id on
        QBO), and each invoice's outcome is recorded on its own."""
        prepared: list[tuple[Milestone, InvoiceDraft, IdempotencyKey, Operation]] = []
        resuming: list[InvoiceDraft] = []
        done = 0
        for milestone in milestones:
            missing = planning.missing_invoice_fields(milestone)
            if missing:
                self._attention(milestone, missing)
                stage.problems.append(f"{milestone.key}: {missing}")
                continue
            draft, key, payload = self._prepared(milestone)
            begun = self._begin(OperationKind.CREATE_INVOICE, milestone.key, key, payload)
            if begun is None:
                continue
            if isinstance(begun, _Rejected):
                stage.problems.append(self._settle(milestone, begun) or "")
                continue
            op, was_pending = begun
            prepared.append((milestone, draft, key, op))
            if was_pending:
                resuming.append(draft)
        if not prepared:
            return done
        subject = prepared[0][0].key
        self.fault("after_intent", OperationKind.CREATE_INVOICE, subject)
        try:
            found = self.ledger.find_invoices(resuming) if resuming else {}
            to_create = [p for p in prepared if p[1].reference not in found]
            results: Sequence[LedgerInvoice | RejectedError] = (
                self.ledger.create_invoices([BatchItem(p[1], p[2]) for p in to_create])
                if to_create
                else []
            )
        except TransientError as exc:
            for milestone, _, _, op in prepared:
                self._finish(op, OperationStatus.PENDING, error=str(exc))
                stage.problems.append(f"{milestone.key}: will retry: {exc}")
            return done
        if len(results) != len(to_create):
            raise InvariantViolation(
                f"ledger {self.ledger.name} answered {len(results)} results for a batch of "
                f"{len(to_create)} invoices"
            )
        outcomes: dict[str, LedgerInvoice | RejectedError] = dict(found)
        outcomes.update((p[1].reference, r) for p, r in zip(to_create, results, strict=True))
        self.fault("after_call", OperationKind.CREATE_INVOICE, subject)
        for milestone, draft, _, op in prepared:
            self.fault("before_record", OperationKind.CREATE_INVOICE, milestone.key)
            result = outcomes[draft.reference]
            if isinstance(result, RejectedError):
                self._finish(op, OperationStatus.FAILED, error=str(result))
                stage.problems.append(self._settle(milestone, _Rejected(str(result))) or "")
                continue
            self._succeed(
                op, result, external_id=result.id, on_success=self._record_invoice(milestone)
            )
            done += 1
        return done

    def _send_invoices(self, stage: StageReport) -> None:
        """Email, through the ledger, each invoice whose plan says so: once, even across a
        crash (the intent is recorded; a pending one is resolved by reading `sent`)."""
        with self.uow() as uow:
            candidates = [
                m
                for m in uow.milestones.list(SENDABLE)
                if m.send_invoice
                and SENT not in m.extra
                and IN_LEDGER_APPROVAL not in m.extra  # a draft is emailed once approved
                and m.invoice_id is not None
            ]
        for milestone in candidates:
            self._guard(stage, milestone, self._send_one)

    def _send_one(self, milestone: Milestone) -> str | None:
        assert milestone.invoice_id is not None
        invoice_id = LedgerInvoiceId(milestone.invoice_id)
        key = make_key("send", self.tenant, invoice_id)

        def lookup() -> LedgerInvoice | None:
            invoice = self.ledger.get_invoice(invoice_id)
            return invoice if invoice.sent else None

        def record(uow: UnitOfWork, invoice: LedgerInvoice) -> None:
            current = self._reload(uow, milestone)
            uow.milestones.update(current.with_changes(extra={**current.extra, SENT: "yes"}))
            self._audit(
                uow,
                "invoice.sent",
                milestone.key,
                f"invoice {invoice.number or invoice.id} emailed by {self.ledger.name}",
            )

        outcome = self._perform(
            OperationKind.SEND_INVOICE,
            milestone.key,
            key,
            {"invoice": invoice_id},
            call=lambda: self.ledger.send_invoice(invoice_id, key),
            lookup=lookup,
            external_id=lambda invoice: invoice.id,
            on_success=record,
        )
        if isinstance(outcome, _Rejected):
            # the invoice stands and collection goes on; the admin sends it by hand
            with self.uow() as uow:
                current = self._reload(uow, milestone)
                uow.milestones.update(
                    current.with_changes(extra={**current.extra, SENT: f"failed: {outcome.error}"})
                )
                self._audit(
                    uow,
                    "invoice.not_sent",
                    milestone.key,
                    f"{self.ledger.name} did not email invoice "
                    f"{milestone.invoice_number or invoice_id}: {outcome.error}; send it from "
                    "the ledger",
                )
                uow.commit()
            return f"invoice not emailed: {outcome.error}"
        if isinstance(outcome, _Deferred):
            return f"{milestone.key}: will retry sending: {outcome.error}"
        return None

    def _auto_approve(self, stage: StageReport) -> None:
        """Release approval-required milestones whose notice period passed (when configured)."""
        if self.policy.auto_approve_after_days is None:
            return
        now = self.clock.now()
        with self.uow() as uow:
            waiting = uow.milestones.list(frozenset({S.AWAITING_APPROVAL}))
        for milestone in waiting:
            if not planning.auto_approvable(milestone, now, self.policy):
                continue
            with self.uow() as uow:
                current = self._reload(uow, milestone)
                uow.milestones.update(current.transition(S.INVOICING))
                self._audit(
                    uow,
                    "milestone.approved",
                    milestone.key,
                    f"approved by itself: {self.policy.auto_approve_after_days} days' notice "
                    "passed without an objection",
                )
                uow.commit()

    # ------------------------------------------------------------------ reminders

    def send_reminders(self) -> StageReport:
        """Remind invoice-only clients and failed collections of what they owe, on the
        configured cadence around the due date, through the ledger's own invoice email (so the
        accountant sees every reminder in the ledger); never once the invoice is paid."""
        stage = StageReport("remind")
        if not self.policy.reminder_offsets():
            return stage
        today = self.clock.now().date()
        with self.uow() as uow:
            candidates = uow.milestones.list(planning.REMINDABLE)
        for milestone in candidates:
            due = planning.reminder_due(milestone, today, self.policy)
            if due is not None:
                stage.done += self._guard(stage, milestone, partial(self._remind, due=due)) is None
        return stage

    def _remind(self, milestone: Milestone, due: tuple[int, int]) -> str | None:
        number, offset = due
        assert milestone.invoice_id is not None
        invoice_id = LedgerInvoiceId(milestone.invoice_id)
        invoice = self.ledger.get_invoice(invoice_id)  # paid since the last change feed?
        if invoice.status in (LedgerInvoiceStatus.PAID, LedgerInvoiceStatus.VOIDED):
            return None  # the collect stage settles it
        key = make_key("reminder", self.tenant, f"{invoice_id}:{number}")
        when = f"{-offset} days before" if offset < 0 else f"{offset} days after"

        def record(uow: UnitOfWork, sent: LedgerInvoice) -> None:
            current = self._reload(uow, milestone)
            uow.milestones.update(
                current.with_changes(extra={**current.extra, REMINDERS: str(number)})
            )
            self._audit(
                uow,
                "invoice.reminded",
                milestone.key,
                f"reminder {number} ({when} the due date) for invoice "
                f"{sent.number or sent.id} ({sent.balance} open) emailed by {self.ledger.name}",
            )

        def not_found() -> LedgerInvoice | None:
            # an email leaves no trace to look up; resending under the same key is safe, the
            # ledger replays it (QBO requestid, Xero Idempotency-Key)
            return None

        outcome = self._perform(
            OperationKind.SEND_INVOICE,
            milestone.key,
            key,
            {"invoice": invoice_id, "reminder": number},
            call=lambda: self.ledger.send_invoice(invoice_id, key),
            lookup=not_found,
            external_id=lambda sent: sent.id,
            on_success=record,
        )
        if isinstance(outcome, _Rejected):
            return f"reminder not emailed: {outcome.error}"
        if isinstance(outcome, _Deferred):
            return f"{milestone.key}: will retry the reminder: {outcome.error}"
        return None

    # ------------------------------------------------------------------ collect

    def collect_payments(self) -> StageReport:
        """Charge what is due, at most once per attempt; notice invoices paid some other way.

        The ledger's change feed says which invoices moved (a cheque, a void, an approval)
        since the last cycle, so unchanged invoice-only invoices cost no call; an invoice is
        always re-read right before it is charged."""
        stage = StageReport("collect")
        now = self.clock.now()
        with self.uow() as uow:
            invoiced = uow.milestones.list(frozenset({S.INVOICED, S.CHARGE_FAILED}))
            in_flight = uow.milestones.list(frozenset({S.COLLECTING}))
            processing = uow.milestones.list(frozenset({S.PROCESSING}))
            cursor = uow.cursors.get("ledger", LEDGER_CHANGES)
        for milestone in in_flight:  # an attempt whose outcome was never recorded
            stage.done += self._guard(stage, milestone, self._charge_attempt) is None
        for milestone in processing:
            self._guard(stage, milestone, self._check_processing)
        changed, until = self._ledger_changes(stage, cursor, now) if invoiced else (None, None)
        for milestone in invoiced:
            self._guard(stage, milestone, lambda m: self._collect_one(m, now, changed))
        if until is not None:
            with self.uow() as uow:
                uow.cursors.set("ledger", LEDGER_CHANGES, until.isoformat())
                uow.commit()
        return stage

    def _ledger_changes(
        self, stage: StageReport, cursor: str | None, now: datetime
    ) -> tuple[dict[str, LedgerInvoice] | None, datetime | None]:
        """Invoices changed in the ledger since the cursor, by id, and the next cursor; None
        when the feed could not cover the period (every invoice is then re-read)."""
        since = datetime.fromisoformat(cursor) if cursor else now - FIRST_FEED_WINDOW
        try:
            feed = self.ledger.changes(since)
        except TransientError as exc:
            stage.problems.append(f"ledger {self.ledger.name}: change feed: {exc}")
            return None, None
        if not feed.complete:
            return None, feed.until
        return {invoice.id: invoice for invoice in feed.invoices}, feed.until

    def _collect_one(
        self, milestone: Milestone, now: datetime, changed: Mapping[str, LedgerInvoice] | None
    ) -> str | None:
        assert milestone.invoice_id is not None
        chargeable = (
            self.gateway is not None and milestone.collection_mode in planning.CHARGEABLE_MODES
        )
        due = milestone.next_charge_at is None or milestone.next_charge_at <= now
        invoice = None if changed is None else changed.get(milestone.invoice_id)
        if invoice is None:
            if changed is not None and not (chargeable and due):
                return None  # unchanged in the ledger and nothing to charge yet
            invoice = self.ledger.get_invoice(milestone.invoice_id)
            fresh = True
        else:
            fresh = False
        if (
            IN_LEDGER_APPROVAL in milestone.extra
            and invoice.status is not LedgerInvoiceStatus.DRAFT
        ):
            milestone = self._approved_in_ledger(milestone, invoice)
            if milestone.send_invoice and SENT not in milestone.extra:
                self._send_one(milestone)  # the approved invoice goes out before any charge
                with self.uow() as uow:
                    milestone = self._reload(uow, milestone)
        method = None
        if chargeable:
            assert self.gateway is not None
            method = self.gateway.saved_method(milestone.client_key)
        decision = planning.decide_collection(milestone, invoice, method, now)
        if isinstance(decision, planning.Charge) and not fresh:
            # the feed's copy may be minutes old: re-read right before taking money
            invoice = self.ledger.get_invoice(invoice.id)
            decision = planning.decide_collection(milestone, invoice, method, now)
        if isinstance(decision, planning.Wait):
            return None
        if isinstance(decision, planning.Move):
            moving = decision.milestone
            if moving.state is S.PAID_EXTERNALLY:
                moving = moving.with_changes(
                    extra={**moving.extra, PAID_ON: self.clock.now().date().isoformat()}
                )
            with self.uow() as uow:
                moved = uow.milestones.update(moving)
                self._audit(
                    uow,
                    f"milestone.{moved.state}",
                    moved.key,
                    moved.attention_reason
                    or f"invoice {invoice.number or invoice.id} "
                    f"is {invoice.status} with {invoice.balance} open in the ledger",
                )
                uow.commit()
            return moved.attention_reason
        with self.uow() as uow:
            current = self._reload(uow, milestone)
            started = uow.milestones.update(
                current.transition(
                    S.COLLECTING,
                    charge_attempts=current.charge_attempts + 1,
                    extra={**current.extra, "charge_minor": str(decision.invoice.balance.minor)},
                )
            )
            uow.commit()
        return self._charge_attempt(started)

    def _approved_in_ledger(self, milestone: Milestone, invoice: LedgerInvoice) -> Milestone:
        with self.uow() as uow:
            current = self._reload(uow, milestone)
            extra = {k: v for k, v in current.extra.items() if k != IN_LEDGER_APPROVAL}
            saved = uow.milestones.update(current.with_changes(extra=extra))
            self._audit(
                uow,
                "invoice.approved_in_ledger",
                milestone.key,
                f"invoice {invoice.number or invoice.id} was approved in {self.ledger.name}",
            )
            uow.commit()
        return saved

    def _charge_attempt(self, milestone: Milestone) -> str | None:
        """Charge (or find the charge of) the milestone's current attempt."""
        if self.gateway is None:
            raise ConfigError("a milestone is collecting but no payment gateway is configured")
        gateway = self.gateway
        assert milestone.invoice_id is not None
        amount = planning.charge_amount(milestone)
        key = make_key("charge", self.tenant, f"{milestone.invoice_id}:{milestone.charge_attempts}")
        request = ChargeRequest(
            client_key=milestone.client_key,
            amount=amount,
            description=milestone.description,
            metadata={
                "tenant": self.tenant,
                "milestone": milestone.key,
                "invoice": milestone.invoice_id,
            },
        )

        def record(uow: UnitOfWork, result: ChargeResult) -> None:
            current = self._reload(uow, milestone)
            moved = uow.milestones.update(
                planning.after_charge(current, result, self.clock.now(), self.policy)
            )
            self._audit(
                uow,
                f"charge.{result.status}",
                milestone.key,
                moved.attention_reason or f"{result.amount} charge {result.id}",
                charge_id=result.id,
                decline_code=result.decline_code or "",
            )

        outcome = self._perform(
            OperationKind.CHARGE,
            milestone.key,
            key,
            {
                "amount": str(amount),
                "client": milestone.client_key,
                "invoice": milestone.invoice_id,
            },
            call=lambda: gateway.charge(request, key),
            lookup=lambda: gateway.find_charge(request, key),
            external_id=lambda result: result.id,
            on_success=record,
        )
        return self._settle(milestone, outcome)

    def _check_processing(self, milestone: Milestone) -> str | None:
        assert self.gateway is not None and milestone.charge_id is not None
        result = self.gateway.get_charge(milestone.charge_id)
        if result.status is ChargeStatus.PROCESSING:
            return None
        with self.uow() as uow:
            current = self._reload(uow, milestone)
            moved = uow.milestones.update(
                planning.after_charge(current, result, self.clock.now(), self.policy)
            )
            self._audit(
                uow,
                f"charge.{result.status}",
                milestone.key,
                moved.attention_reason or f"{result.amount} charge {result.id} settled",
            )
            uow.commit()
        return moved.attention_reason

    # ------------------------------------------------------------------ reconcile

    def reconcile_payments(self) -> StageReport:
        """Book each successful charge as a payment against its invoice, once."""
        stage = StageReport("reconcile")
        with self.uow() as uow:
            paid = uow.milestones.list(frozenset({S.PAID}))
        for milestone in paid:
            stage.done += self._guard(stage, milestone, self._reconcile_one) is None
        return stage

    def _reconcile_one(self, milestone: Milestone) -> str | None:
        assert self.gateway is not None
        assert milestone.charge_id and milestone.invoice_id and milestone.ledger_customer_id
        charge = self.gateway.get_charge(milestone.charge_id)
        posting = PaymentPosting(
            invoice_id=LedgerInvoiceId(milestone.invoice_id),
            customer_id=milestone.ledger_customer_id,
            amount=charge.amount,
            paid_on=self.clock.now().date(),
            reference=charge.id,
        )
        key = make_key("payment", self.tenant, charge.id)

        def record(uow: UnitOfWork, payment_id: str) -> None:
            current = self._reload(uow, milestone)
            uow.milestones.update(
                current.transition(
                    S.RECONCILED,
                    ledger_payment_id=payment_id,
                    extra={**current.extra, PAID_ON: posting.paid_on.isoformat()},
                )
            )
            self._audit(
                uow,
                "payment.recorded",
                milestone.key,
                f"payment {payment_id} of {charge.amount} booked against invoice "
                f"{milestone.invoice_number or milestone.invoice_id}",
            )

        outcome = self._perform(
            OperationKind.RECORD_PAYMENT,
            milestone.key,
            key,
            {
                "invoice": posting.invoice_id,
                "amount": str(posting.amount),
                "reference": posting.reference,
            },
            call=lambda: self.ledger.record_payment(posting, key),
            lookup=lambda: self.ledger.find_payment(posting),
            external_id=lambda payment_id: payment_id,
            on_success=record,
        )
        return self._settle(milestone, outcome)

    # ------------------------------------------------------------------ the money trail

    def book_money_trail(self) -> StageReport:
        """Book every movement of the gateway balance into the ledger through the clearing
        account, once each (keyed by the movement id), in the order they happened: fees,
        refunds, dispute holds and releases, lost disputes, returned bank debits, payouts.

        A payment is booked against its invoice by `reconcile_payments`; the trail waits at a
        payment whose milestone has not been recorded as paid yet, so the clearing account
        never sees a fee or payout before the payment it comes from."""
        stage = StageReport("money")
        if self.gateway is None:
            return stage
        gateway = self.gateway
        with self.uow() as uow:
            cursor = uow.cursors.get("gateway", MOVEMENTS)
        for _ in range(MAX_MOVEMENT_PAGES):
            page = gateway.movements(cursor)
            for index, movement in enumerate(page.movements):
                try:
                    waits_for = self._book_movement(stage, movement)
                    waiting = f"waiting: {waits_for}" if waits_for else None
                except TransientError as exc:
                    waiting = f"will retry: {exc}"
                if waiting:
                    stage.problems.append(f"movement {movement.id}: {waiting}")
                    # the next cycle starts here again, or just after what is booked already
                    if index > 0 and len(page.resume) == len(page.movements):
                        with self.uow() as uow:
                            uow.cursors.set("gateway", MOVEMENTS, page.resume[index - 1])
                            uow.commit()
                    return stage
            with self.uow() as uow:
                uow.cursors.set("gateway", MOVEMENTS, page.cursor)
                uow.commit()
            cursor = page.cursor
            if not page.more:
                break
        return stage

    def _book_movement(self, stage: StageReport, movement: MoneyMovement) -> str | None:
        """Book one movement; returns why the trail must wait here, or None to go on."""
        with self.uow() as uow:
            milestone = uow.milestones.get(movement.milestone) if movement.milestone else None
        plan = planning.trail_entries(movement, milestone)
        if isinstance(plan, planning.WaitFor):
            return plan.reason
        if isinstance(plan, planning.Foreign):
            stage.problems.append(f"movement {movement.id}: {plan.reason}")
            return None
        for posting in plan.payments:
            assert milestone is not None
            outcome = self._book_payment(milestone, posting, movement)
            if isinstance(outcome, _Deferred):
                raise TransientError(outcome.error)
            if isinstance(outcome, _Rejected):
                stage.problems.append(f"movement {movement.id}: payment rejected: {outcome.error}")
                return None
        subject = MilestoneKey(milestone.key if milestone else f"money:{movement.id}")
        booked = 0
        for name, entry in plan.entries:
            outcome = self._book_entry(movement, subject, name, entry)
            if isinstance(outcome, _Deferred):
                raise TransientError(outcome.error)
            if isinstance(outcome, _Rejected):
                stage.problems.append(
                    f"movement {movement.id}: {entry.memo} not booked: {outcome.error}"
                )
            elif outcome is not None:
                booked += 1
        stage.done += booked
        if plan.note and milestone is not None and booked:  # said once, when first booked
            with self.uow() as uow:
                self._audit(uow, f"money.{movement.kind}", milestone.key, plan.note)
                uow.commit()
            stage.problems.append(f"{milestone.key}: {plan.note}")
        return None

    def _book_entry(
        self, movement: MoneyMovement, subject: MilestoneKey, name: str, entry: LedgerEntry
    ) -> str | _Deferred | _Rejected | None:
        key = make_key("entry", self.tenant, f"{name}:{movement.id}")

        def record(uow: UnitOfWork, entry_id: str) -> None:
            self._audit(
                uow,
                f"ledger.{name}",
                subject,
                f"{entry.memo}: {entry.amount} booked as {entry_id} in {self.ledger.name}",
                movement=movement.id,
                entry_id=entry_id,
            )

        def entry_id(found: str) -> str:
            return found

        return self._perform(
            OperationKind.POST_ENTRY,
            subject,
            key,
            {"entry": type(entry).__name__, "amount": str(entry.amount), "ref": entry.reference},
            call=lambda: self.ledger.post_entry(entry, key),
            lookup=lambda: self.ledger.find_entry(entry),
            external_id=entry_id,
            on_success=record,
        )

    def _book_payment(
        self, milestone: Milestone, posting: PaymentPosting, movement: MoneyMovement
    ) -> object:
        """A payment that reached the balance outside the usual path (e.g. the client paid
        through the authentication link while the milestone needed attention): booked once,
        under the same key `reconcile_payments` uses."""
        key = make_key("payment", self.tenant, posting.reference)

        def record(uow: UnitOfWork, payment_id: str) -> None:
            current = self._reload(uow, milestone)
            if current.state is S.NEEDS_ATTENTION:
                current = uow.milestones.update(
                    current.transition(S.PAID, charge_id=movement.charge_id)
                )
            if current.state is S.PAID:
                uow.milestones.update(
                    current.transition(
                        S.RECONCILED,
                        ledger_payment_id=payment_id,
                        extra={**current.extra, PAID_ON: posting.paid_on.isoformat()},
                    )
                )
            self._audit(
                uow,
                "payment.recorded",
                milestone.key,
                f"payment {payment_id} of {posting.amount} booked against invoice "
                f"{milestone.invoice_number or milestone.invoice_id}",
            )

        return self._perform(
            OperationKind.RECORD_PAYMENT,
            milestone.key,
            key,
            {
                "invoice": posting.invoice_id,
                "amount": str(posting.amount),
                "reference": posting.reference,
            },
            call=lambda: self.ledger.record_payment(posting, key),
            lookup=lambda: self.ledger.find_payment(posting),
            external_id=lambda payment_id: payment_id,
            on_success=record,
        )

    def acknowledge_deliveries(self, sources: Collection[str]) -> int:
        """Mark webhook deliveries from the gateway and the ledger as handled: they are
        doorbells, and the stages that just ran re-read what they rang about."""
        handled = 0
        with self.uow() as uow:
            for source in sources:
                pending = uow.inbox.pending(SourceId(source))
                if pending:
                    uow.inbox.mark(
                        [d.id for d in pending], DeliveryStatus.DONE, "re-read from the vendor"
                    )
                    handled += len(pending)
            uow.commit()
        return handled

    # ------------------------------------------------------------------ reconcile --check

    def check_reconciliation(self, since: date | None = None) -> Reconciliation:
        """Compare the ledger with the gateway: every movement's ledger entries, every payout's
        movements, payments into the clearing account without a charge, and the clearing
        balance against the gateway balance after each payout and now. Reads only."""
        if self.gateway is None:
            raise ConfigError("reconcile --check needs a payment gateway: set [payments] kind")
        gateway = self.gateway
        result = Reconciliation()
        history: list[MoneyMovement] = []
        cursor: str | None = None
        while True:
            page = gateway.movements(cursor)
            history.extend(page.movements)
            if not page.more or page.cursor == cursor:
                break
            cursor = page.cursor
        movements = list({m.id: m for m in history}.values())  # pages may overlap
        with self.uow() as uow:
            milestones = {m.key: m for m in uow.milestones.list()}
        missing_effect: dict[
            str, Money
        ] = {}  # movement id -> its clearing effect not in the ledger
        charges: set[str] = set()
        for movement in movements:
            milestone = milestones.get(movement.milestone) if movement.milestone else None
            if movement.charge_id and movement.kind is MovementKind.PAYMENT:
                charges.add(movement.charge_id)
            if since is not None and movement.occurred_at.date() < since:
                continue
            plan = planning.trail_entries(movement, _as_reconciled(milestone))
            if isinstance(plan, planning.Foreign | planning.WaitFor):
                result.add(
                    "not booked",
                    f"{movement.kind} {movement.id} of {movement.amount}: {plan.reason}",
                )
                missing_effect[movement.id] = planning.clearing_effect(movement)
                continue
            absent = Money(0, movement.amount.currency)
            if movement.kind is MovementKind.PAYMENT and milestone is not None:
                posting = planning.payment_posting(movement, milestone)
                if self.ledger.find_payment(posting) is None:
                    result.add(
                        "charge without a ledger payment",
                        f"{movement.charge_id} ({milestone.key}) of {movement.amount} on "
                        f"{movement.occurred_at.date()} is not booked in {self.ledger.name}",
                    )
                    absent = absent + movement.amount
            for _, entry in plan.entries:
                if self.ledger.find_entry(entry) is None:
                    result.add(
                        "entry missing",
                        f"{entry.memo} ({entry.amount}, {entry.reference}, {entry.on}) is not in "
                        f"{self.ledger.name}",
                    )
                    absent = absent + planning.entry_clearing_effect(entry)
            if not absent.is_zero():
                missing_effect[movement.id] = absent
            if movement.kind is MovementKind.PAYOUT and movement.payout_id:
                paid = gateway.payout_movements(movement.payout_id)
                total = sum((m.net for m in paid if m.id != movement.id), movement.net)
                if not total.is_zero():
                    result.add(
                        "payout does not match",
                        f"payout {movement.payout_id} of {-movement.amount} does not equal the "
                        f"{len(paid)} movements it paid out (off by {total})",
                    )
        clearing = self.ledger.account_balance(AccountRole.CLEARING)
        balance = gateway.balance()
        result.clearing, result.balance = clearing, balance
        # the running balances after each payout: the gateway's from its movements, the
        # ledger's from its balance now minus what the movements since then booked there
        running = Money(0, balance.currency)
        effects = [
            (m, planning.clearing_effect(m) - missing_effect.get(m.id, Money(0, balance.currency)))
            for m in movements
        ]
        for index, (movement, _) in enumerate(effects):
            running = running + planning.clearing_effect(movement)
            if movement.kind is not MovementKind.PAYOUT:
                continue
            if since is not None and movement.occurred_at.date() < since:
                continue
            booked_after = sum((e for _, e in effects[index + 1 :]), Money(0, balance.currency))
            ledger_then = clearing - booked_after
            if ledger_then != running:
                result.add(
                    "clearing differs at a payout",
                    f"after payout {movement.payout_id} on {movement.occurred_at.date()}: gateway "
                    f"balance {running}, clearing account {ledger_then}",
                )
        if clearing != balance:
            result.add(
                "clearing differs now",
                f"clearing account {clearing} in {self.ledger.name}, gateway balance {balance}",
            )
        for payment in self.ledger.payments_since(since or date(1970, 1, 1)):
            if payment.account is not AccountRole.CLEARING:
                continue  # cheques and the ledger's own gateway land elsewhere
            if payment.reference is None or payment.reference not in charges:
                result.add(
                    "ledger payment without a charge",
                    f"payment {payment.id} of {payment.amount} on {payment.paid_on} into the "
                    "clearing account has no gateway charge "
                    f"({payment.reference or 'no reference'})",
                )
        result.movements = len(movements)
        return result

    # ------------------------------------------------------------------ the one write path

    def _perform(
        self,
        kind: OperationKind,
        subject: MilestoneKey,
        key: IdempotencyKey,
        payload: Mapping[str, object],
        *,
        call: Callable[[], T],
        lookup: Callable[[], T | None],
        external_id: Callable[[T], str],
        on_success: Callable[[UnitOfWork, T], None],
    ) -> T | _Deferred | _Rejected | None:
        """Record the intent, make the call with the deterministic key, record the outcome.

        Returns None when the operation had already succeeded earlier (nothing to do).
        """
        begun = self._begin(kind, subject, key, payload)
        if begun is None or isinstance(begun, _Rejected):
            return begun
        op, resuming = begun
        self.fault("after_intent", kind, subject)
        try:
            result = lookup() if resuming else None
            if result is None:
                result = call()
        except TransientError as exc:
            self._finish(op, OperationStatus.PENDING, error=str(exc))
            return _Deferred(str(exc))
        except RejectedError as exc:
            self._finish(op, OperationStatus.FAILED, error=str(exc))
            return _Rejected(str(exc))
        self.fault("after_call", kind, subject)
        self._succeed(op, result, external_id=external_id(result), on_success=on_success)
        return result

    def _begin(
        self,
        kind: OperationKind,
        subject: MilestoneKey,
        key: IdempotencyKey,
        payload: Mapping[str, object],
    ) -> tuple[Operation, bool] | _Rejected | None:
        """Commit the intent (or count another attempt of a pending one) before any call.

        Returns the operation and whether it was already pending (so the object must be looked
        up before calling again); None when it already succeeded; _Rejected when it failed for
        good earlier."""
        digest = payload_hash(payload)
        now = self.clock.now()
        with self.uow() as uow:
            op = uow.operations.get(key)
            if op is not None and op.status is OperationStatus.SUCCEEDED:
                return None
            if op is not None and op.payload_hash != digest:
                raise InvariantViolation(
                    f"{kind} {key}: the payload changed under the same idempotency key"
                )
            if op is not None and op.status is OperationStatus.FAILED:
                return _Rejected(op.last_error or "rejected earlier")
            resuming = op is not None
            if op is None:
                op = Operation(
                    key=key,
                    kind=kind,
                    subject=subject,
                    payload_hash=digest,
                    status=OperationStatus.PENDING,
                    created_at=now,
                    updated_at=now,
                    attempts=1,
                )
                uow.operations.add(op)
            else:
                op = _op(op, attempts=op.attempts + 1, updated_at=now)
                uow.operations.update(op)
            uow.commit()
        return op, resuming

    def _succeed(
        self,
        op: Operation,
        result: T,
        *,
        external_id: str,
        on_success: Callable[[UnitOfWork, T], None],
    ) -> None:
        """Commit the outcome and the milestone's next state in one transaction."""
        with self.uow() as uow:
            on_success(uow, result)
            uow.operations.update(
                _op(
                    op,
                    status=OperationStatus.SUCCEEDED,
                    external_id=external_id,
                    last_error=None,
                    updated_at=self.clock.now(),
                )
            )
            uow.commit()

    def _finish(self, op: Operation, status: OperationStatus, error: str) -> None:
        with self.uow() as uow:
            uow.operations.update(
                _op(op, status=status, last_error=error[:2000], updated_at=self.clock.now())
            )
            uow.commit()

    def _settle(self, milestone: Milestone, outcome: object) -> str | None:
        """Turn a write's outcome into a problem line (and needs_attention when rejected)."""
        if isinstance(outcome, _Deferred):
            return f"{milestone.key}: will retry: {outcome.error}"
        if isinstance(outcome, _Rejected):
            reason = f"rejected: {outcome.error}"
            self._attention(milestone, reason)
            return reason
        return None

    # ------------------------------------------------------------------ helpers

    def _guard(
        self, stage: StageReport, milestone: Milestone, step: Callable[[Milestone], str | None]
    ) -> str | None:
        """Run one item's step; a problem with one item never stops the others."""
        try:
            problem = step(milestone)
        except TransientError as exc:
            problem = f"{milestone.key}: will retry: {exc}"
        except RejectedError as exc:
            problem = f"rejected: {exc}"
            self._attention(milestone, problem)
        if problem:
            stage.problems.append(
                problem if problem.startswith(milestone.key) else f"{milestone.key}: {problem}"
            )
        return problem

    def _attention(self, milestone: Milestone, reason: str) -> None:
        with self.uow() as uow:
            current = self._reload(uow, milestone)
            if current.state is S.NEEDS_ATTENTION:
                return
            uow.milestones.update(current.transition(S.NEEDS_ATTENTION, reason=reason))
            self._audit(uow, "milestone.needs_attention", milestone.key, reason)
            uow.commit()

    @staticmethod
    def _reload(uow: UnitOfWork, milestone: Milestone) -> Milestone:
        current = uow.milestones.get(milestone.key)
        if current is None:
            raise InvariantViolation(f"milestone {milestone.key} disappeared")
        return current

    def _audit(self, uow: UnitOfWork, kind: str, subject: str, message: str, **detail: str) -> None:
        uow.audit.record(
            AuditEvent(
                at=self.clock.now(),
                kind=kind,
                subject=subject,
                message=message,
                detail=dict(detail),
            )
        )


def _op(op: Operation, **changes: object) -> Operation:
    return dataclasses.replace(op, **changes)  # type: ignore[arg-type]


def _unreopened(phase: PhaseCompletion) -> PhaseCompletion:
    """The same phase as a forward completion, to learn which milestones it had triggered."""
    return dataclasses.replace(phase, reopened=False)


class _StoredMemory:
    """A source's snapshots, read through short transactions while the source polls."""

    def __init__(self, uow: UnitOfWorkFactory, source: SourceId) -> None:
        self._uow = uow
        self._source = source

    def recall(self, keys: Collection[str]) -> Mapping[str, str]:
        with self._uow() as uow:
            return uow.source_state.get_many(self._source, keys)

    def recall_all(self) -> Mapping[str, str]:
        with self._uow() as uow:
            return uow.source_state.all(self._source)
