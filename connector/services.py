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
from datetime import datetime
from typing import Protocol, TypeVar

from connector import planning
from connector.config import CollectionPolicy, Ignored, Mapper, Matched, Unmapped
from connector.domain.errors import (
    ConfigError,
    InvariantViolation,
    RejectedError,
    TransientError,
)
from connector.domain.events import AuditEvent
from connector.domain.ids import IdempotencyKey, LedgerInvoiceId, MilestoneKey, SourceId, TenantId
from connector.domain.model import (
    NOT_YET_INVOICED,
    Milestone,
    MilestoneState,
    PhaseCompletion,
)
from connector.idempotency import make_key, payload_hash
from connector.ports import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    Clock,
    DeliveryStatus,
    Ledger,
    LedgerInvoice,
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
    fault: FaultHook = no_faults

    # ------------------------------------------------------------------ the cycle

    def run_cycle(self) -> CycleReport:
        report = CycleReport(started_at=self.clock.now())
        for stage in (
            self.poll_sources,
            self.map_phases,
            self.reprice,
            self.issue_invoices,
            self.collect_payments,
            self.reconcile_payments,
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

    # ------------------------------------------------------------------ invoice

    def issue_invoices(self) -> StageReport:
        """Create exactly one ledger invoice per triggered milestone."""
        stage = StageReport("invoice")
        with self.uow() as uow:
            triggered = uow.milestones.list(frozenset({S.TRIGGERED}))
        for milestone in triggered:
            with self.uow() as uow:
                uow.milestones.update(planning.after_trigger(milestone))
                uow.commit()
        with self.uow() as uow:
            due = uow.milestones.list(frozenset({S.INVOICING}))
        for milestone in due:
            problem = self._guard(stage, milestone, self._invoice_one)
            stage.done += problem is None
        return stage

    def _invoice_one(self, milestone: Milestone) -> str | None:
        missing = planning.missing_invoice_fields(milestone)
        if missing:
            self._attention(milestone, missing)
            return missing
        draft = planning.invoice_draft(milestone, self.clock.now().date())
        key = make_key("invoice", self.tenant, milestone.key)
        payload = {
            "customer": draft.customer_id,
            "reference": draft.reference,
            "lines": [(ln.description, str(ln.amount), ln.item, ln.tax_code) for ln in draft.lines],
            "terms": draft.terms,
        }

        def record(uow: UnitOfWork, invoice: LedgerInvoice) -> None:
            current = self._reload(uow, milestone)
            uow.milestones.update(
                current.transition(S.INVOICED, invoice_id=invoice.id, invoice_number=invoice.number)
            )
            self._audit(
                uow,
                "invoice.created",
                milestone.key,
                f"invoice {invoice.number or invoice.id} for {invoice.total} in {self.ledger.name}",
                invoice_id=invoice.id,
            )

        outcome = self._perform(
            OperationKind.CREATE_INVOICE,
            milestone.key,
            key,
            payload,
            call=lambda: self.ledger.create_invoice(draft, key),
            lookup=lambda: self.ledger.find_invoice(draft),
            external_id=lambda invoice: invoice.id,
            on_success=record,
        )
        return self._settle(milestone, outcome)

    # ------------------------------------------------------------------ collect

    def collect_payments(self) -> StageReport:
        """Charge what is due, at most once per attempt; notice invoices paid some other way."""
        stage = StageReport("collect")
        now = self.clock.now()
        with self.uow() as uow:
            invoiced = uow.milestones.list(frozenset({S.INVOICED, S.CHARGE_FAILED}))
            in_flight = uow.milestones.list(frozenset({S.COLLECTING}))
            processing = uow.milestones.list(frozenset({S.PROCESSING}))
        for milestone in in_flight:  # an attempt whose outcome was never recorded
            stage.done += self._guard(stage, milestone, self._charge_attempt) is None
        for milestone in processing:
            self._guard(stage, milestone, self._check_processing)
        for milestone in invoiced:
            self._guard(stage, milestone, lambda m: self._collect_one(m, now))
        return stage

    def _collect_one(self, milestone: Milestone, now: datetime) -> str | None:
        assert milestone.invoice_id is not None
        invoice = self.ledger.get_invoice(milestone.invoice_id)
        method = None
        if self.gateway is not None and milestone.collection_mode in planning.CHARGEABLE_MODES:
            method = self.gateway.saved_method(milestone.client_key)
        decision = planning.decide_collection(milestone, invoice, method, now)
        if isinstance(decision, planning.Wait):
            return None
        if isinstance(decision, planning.Move):
            with self.uow() as uow:
                moved = uow.milestones.update(decision.milestone)
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
            lookup=lambda: gateway.find_charge(key),
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
            uow.milestones.update(current.transition(S.RECONCILED, ledger_payment_id=payment_id))
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
        with self.uow() as uow:
            on_success(uow, result)
            uow.operations.update(
                _op(
                    op,
                    status=OperationStatus.SUCCEEDED,
                    external_id=external_id(result),
                    last_error=None,
                    updated_at=self.clock.now(),
                )
            )
            uow.commit()
        return result

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
