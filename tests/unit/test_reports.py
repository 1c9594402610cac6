"""The dashboard's read models (connector/reports.py): pipeline counts and amounts, attention and
its actions, client balances, AR aging buckets, the weekly cash forecast, leakage and the audit
trail; every total exact and kept per currency."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from connector import reports
from connector.domain.events import AuditEvent
from connector.domain.ids import (
    ClientKey,
    ConfigRevision,
    IdempotencyKey,
    LedgerInvoiceId,
    MilestoneDefId,
    MilestoneKey,
    PlanId,
    SourceId,
    WorkItemKey,
)
from connector.domain.model import (
    Client,
    CollectionMode,
    Engagement,
    Milestone,
    MilestoneState,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money
from connector.ports import (
    Operation,
    OperationKind,
    OperationStatus,
    PhaseStatus,
    SavedMethod,
    StoredPhase,
)
from connector.reports import Action, AttentionKind, Bucket, LeakKind, Totals

S = MilestoneState
TODAY = date(2026, 12, 9)  # a Wednesday: its week starts on Monday 2026-12-07
AT = datetime(2026, 12, 1, 9, tzinfo=UTC)
_counter = iter(range(1, 10_000))


def ms(
    state: S = S.PENDING,
    amount: str = "100.00",
    currency: str = "USD",
    *,
    client: str = "CL-A",
    plan: str = "tax",
    invoice: str | None = None,
    planned: date | None = None,
    resume: S | None = None,
    reason: str | None = None,
    charge: str | None = None,
    key: str | None = None,
    work_item: str = "WI-1",
    **extra: str,
) -> Milestone:
    n = next(_counter)
    if invoice is None and state in (
        S.INVOICED,
        S.COLLECTING,
        S.PROCESSING,
        S.CHARGE_FAILED,
        S.PAID,
        S.RECONCILED,
        S.PAID_EXTERNALLY,
    ):
        invoice = f"inv-{n}"
    return Milestone(
        key=MilestoneKey(key or f"karbon:{work_item}:m{n}"),
        source=SourceId("karbon"),
        work_item=WorkItemKey(work_item),
        client_key=ClientKey(client),
        plan_id=PlanId(plan),
        definition_id=MilestoneDefId(f"m{n}"),
        description=f"milestone {n}",
        amount=Money(amount, currency),
        collection_mode=CollectionMode.AUTO_CHARGE,
        config_revision=ConfigRevision("r1"),
        state=state,
        planned_date=planned,
        triggered_at=AT if state is not S.PENDING else None,
        invoice_id=LedgerInvoiceId(invoice) if invoice else None,
        invoice_number=invoice,
        charge_id=None if charge is None else charge,  # type: ignore[arg-type]
        attention_reason=reason if state is S.NEEDS_ATTENTION else None,
        resume_state=resume,
        extra=dict(extra),
    )


def phase(status: PhaseStatus, work_item: str = "WI-9", reason: str | None = None) -> StoredPhase:
    n = next(_counter)
    return StoredPhase(
        id=n,
        phase=PhaseCompletion(
            source=SourceId("karbon"),
            work_item=WorkItemKey(work_item),
            kind=TriggerKind.STATUS,
            phase="Completed",
            completed_at=AT + timedelta(hours=n),
            completion=str(n),
        ),
        status=status,
        reason=reason,
    )


def usd(amount: str) -> Money:
    return Money(amount, "USD")


# --------------------------------------------------------------------------- totals


def test_totals_are_exact_and_kept_per_currency() -> None:
    amounts = [usd("0.10")] * 10 + [Money("1", "JPY"), Money("2.005", "KWD"), usd("0.01")]
    totals = Totals.of(amounts)
    assert totals.currencies == ("JPY", "KWD", "USD")
    assert totals.get("USD") == usd("1.01")
    assert totals.get("JPY") == Money("1", "JPY")
    assert totals.get("EUR") == Money.zero("EUR")
    assert (totals + Totals.of([usd("0.99")])).get("USD") == usd("2.00")
    assert Totals.of([]).amounts == ()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["USD", "EUR", "JPY"]),
            st.integers(min_value=-10_000_000, max_value=10_000_000),
            st.sampled_from(list(MilestoneState)),
        ),
        max_size=40,
    )
)
def test_pipeline_amounts_sum_exactly_per_currency(rows: list[tuple[str, int, S]]) -> None:
    milestones = [
        ms(state, amount=str(Money.from_minor(minor, cur).amount), currency=cur)
        for cur, minor, state in rows
    ]
    view = reports.pipeline(milestones)
    for currency in {cur for cur, _, _ in rows}:
        exact = sum(
            (Money.from_minor(m, c).amount for c, m, _ in rows if c == currency), Decimal(0)
        )
        assert view.total.get(currency).amount == exact
        by_state = sum((row.amount.get(currency).amount for row in view.by_state), Decimal(0))
        assert by_state == exact
    assert sum(row.count for row in view.by_state) == len(rows)


# --------------------------------------------------------------------------- pipeline


def test_pipeline_counts_by_state_and_filters_by_client_plan_and_state() -> None:
    milestones = [
        ms(S.PENDING, "100.00", client="CL-A", plan="tax"),
        ms(S.PENDING, "50.25", client="CL-A", plan="close"),
        ms(S.INVOICED, "300.00", client="CL-B", plan="tax"),
        ms(S.RECONCILED, "10.00", client="CL-B", plan="tax"),
    ]
    view = reports.pipeline(milestones)
    counts = {row.state: (row.count, row.amount) for row in view.by_state}
    assert [row.state for row in view.by_state] == list(MilestoneState)  # every state shown
    assert counts[S.PENDING] == (2, Totals.of([usd("150.25")]))
    assert counts[S.VOIDED] == (0, Totals())
    assert view.total.get("USD") == usd("460.25")
    assert view.clients == ("CL-A", "CL-B") and view.plans == ("close", "tax")

    only_a = reports.pipeline(milestones, client="CL-A")
    assert {m.client_key for m in only_a.milestones} == {"CL-A"}
    assert only_a.total.get("USD") == usd("150.25")
    assert only_a.clients == ("CL-A", "CL-B")  # the filter still offers every client

    tax_b = reports.pipeline(milestones, client="CL-B", plan="tax", state=S.INVOICED)
    assert [m.state for m in tax_b.milestones] == [S.INVOICED]
    # `state` narrows the list, not the counts
    assert {r.state: r.count for r in tax_b.by_state}[S.RECONCILED] == 1
    assert reports.pipeline(milestones, client="nobody").milestones == ()


# --------------------------------------------------------------------------- attention


def test_attention_lists_stopped_waiting_and_blocked_milestones_with_their_actions() -> None:
    stopped = ms(S.NEEDS_ATTENTION, reason="customer 58 was deleted: fix it", resume=S.INVOICING)
    stopped_invoiced = ms(
        S.NEEDS_ATTENTION, reason="card declined 4 times: ask the client", resume=S.COLLECTING
    )
    stopped_invoiced = stopped_invoiced.with_changes(invoice_id=LedgerInvoiceId("inv-9"))
    waiting = ms(S.AWAITING_APPROVAL)
    blocked = ms(S.INVOICING, blocked="item 'Tax prep' is archived in the ledger")
    invoicing = ms(S.INVOICING)  # on its way, nothing to do
    unmapped = phase(PhaseStatus.UNMAPPED, reason="no plan matches")
    view = reports.attention(
        [invoicing, blocked, waiting, stopped_invoiced, stopped, ms(S.PAID)],
        [unmapped, phase(PhaseStatus.IGNORED), phase(PhaseStatus.MAPPED)],
    )
    by_key = {item.milestone.key: item for item in view.items}
    assert set(by_key) == {stopped.key, stopped_invoiced.key, waiting.key, blocked.key}
    assert by_key[stopped.key].reason == "customer 58 was deleted: fix it"
    assert by_key[stopped.key].actions == (Action.RETRY, Action.VOID)  # never invoiced
    assert by_key[stopped_invoiced.key].actions == (Action.RETRY,)  # void it in the ledger
    assert by_key[waiting.key].actions == (Action.APPROVE, Action.VOID)
    assert by_key[blocked.key].kind is AttentionKind.BLOCKED
    assert by_key[blocked.key].reason == "item 'Tax prep' is archived in the ledger"
    assert by_key[blocked.key].actions == ()  # checked again every cycle by itself
    assert [i.kind for i in view.items] == [
        AttentionKind.NEEDS_ATTENTION,
        AttentionKind.NEEDS_ATTENTION,
        AttentionKind.AWAITING_APPROVAL,
        AttentionKind.BLOCKED,
    ]
    assert view.unmapped == (unmapped,)
    assert view.count == 5


# --------------------------------------------------------------------------- clients


def test_client_summaries_open_balance_next_milestone_and_saved_method() -> None:
    a, b = ClientKey("CL-A"), ClientKey("CL-B")
    milestones = [
        ms(S.INVOICED, "100.00", client=a),
        ms(S.COLLECTING, "200.00", client=a),
        ms(S.CHARGE_FAILED, "0.01", client=a),
        ms(S.NEEDS_ATTENTION, "1000.00", client=a, resume=S.COLLECTING, invoice="inv-x"),
        ms(S.NEEDS_ATTENTION, "7.00", client=a, resume=S.PAID, invoice="inv-y"),  # paid already
        ms(S.RECONCILED, "999.00", client=a),
        ms(S.PENDING, "40.00", client=a, planned=date(2026, 12, 20)),
        ms(S.PENDING, "30.00", client=a, planned=date(2026, 12, 15)),
        ms(S.PENDING, "20.00", client=a),  # no planned date: after the dated ones
        ms(S.INVOICED, "5.00", "EUR", client=b),
        ms(S.PENDING, "1.00", client=ClientKey("CL-GONE")),  # no stored client
    ]
    clients = [
        Client(SourceId("karbon"), a, "Acme LLC"),
        Client(SourceId("karbon"), b, "Bright PC"),
        Client(SourceId("karbon"), ClientKey("CL-NEW"), "New Co"),
    ]
    card = SavedMethod("cus_1", "pm_1", "card", "visa ending 4242")
    rows = {r.key: r for r in reports.client_summaries(clients, milestones, {a: card, b: None})}
    assert rows[a].open_balance == Totals.of([usd("1300.01")])
    assert rows[a].next_milestone is not None and rows[a].next_milestone.amount == usd("30.00")
    assert rows[a].method == card and rows[a].method_known
    assert rows[b].open_balance.get("EUR") == Money("5.00", "EUR")
    assert rows[b].method is None and rows[b].method_known  # asked: none saved
    assert not rows[ClientKey("CL-NEW")].method_known  # not asked (or the gateway failed)
    assert rows[ClientKey("CL-NEW")].open_balance.is_zero()
    assert (
        rows[ClientKey("CL-GONE")].name == "CL-GONE" and rows[ClientKey("CL-GONE")].source is None
    )
    assert [r.name for r in reports.client_summaries(clients, milestones, {})][:2] == [
        "Acme LLC",
        "Bright PC",
    ]


# --------------------------------------------------------------------------- aging


def test_aging_buckets_by_days_past_due_at_their_boundaries() -> None:
    def due(days_ago: int) -> str:
        return (TODAY - timedelta(days=days_ago)).isoformat()

    expected = {
        -5: Bucket.CURRENT,
        0: Bucket.CURRENT,
        1: Bucket.DAYS_1_30,
        30: Bucket.DAYS_1_30,
        31: Bucket.DAYS_31_60,
        60: Bucket.DAYS_31_60,
        61: Bucket.DAYS_61_90,
        90: Bucket.DAYS_61_90,
        91: Bucket.OVER_90,
        400: Bucket.OVER_90,
    }
    for days, bucket in expected.items():
        m = ms(S.INVOICED, due_on=due(days))
        assert reports.bucket_for(reports.days_past_due(m, TODAY)) is bucket, days
    # no due date: due the day it was invoiced; neither: current
    assert reports.days_past_due(ms(S.INVOICED, invoiced_on=due(45)), TODAY) == 45
    assert reports.days_past_due(ms(S.INVOICED), TODAY) == 0
    assert reports.days_past_due(ms(S.INVOICED, due_on="not a date"), TODAY) == 0


def test_aging_groups_open_invoices_per_client_and_currency_and_totals_exactly() -> None:
    def due(days_ago: int) -> str:
        return (TODAY - timedelta(days=days_ago)).isoformat()

    milestones = [
        ms(S.INVOICED, "100.10", client="CL-A", due_on=due(-3)),
        ms(S.COLLECTING, "200.20", client="CL-A", due_on=due(10)),
        ms(S.CHARGE_FAILED, "0.03", client="CL-A", due_on=due(10)),
        ms(S.PROCESSING, "50.00", client="CL-B", due_on=due(75)),
        ms(S.INVOICED, "7000", "JPY", client="CL-B", due_on=due(120)),
        ms(S.RECONCILED, "999.00", client="CL-A", due_on=due(100)),  # paid: not aged
        ms(S.PENDING, "999.00", client="CL-A"),  # not invoiced: not aged
        ms(S.VOIDED, "999.00", client="CL-A"),
    ]
    view = reports.aging(milestones, TODAY)
    rows = {(r.client_key, r.currency): r for r in view.rows}
    assert set(rows) == {("CL-A", "USD"), ("CL-B", "USD"), ("CL-B", "JPY")}
    a = rows[("CL-A", "USD")]
    assert a.buckets == (usd("100.10"), usd("200.23"), usd("0"), usd("0"), usd("0"))
    assert a.total == usd("300.33")
    assert rows[("CL-B", "JPY")].buckets[4] == Money("7000", "JPY")
    totals = {t.currency: t for t in view.totals}
    assert totals["USD"].total == usd("350.33")
    assert totals["USD"].buckets[reports.BUCKETS.index(Bucket.DAYS_61_90)] == usd("50.00")
    assert totals["JPY"].total == Money("7000", "JPY")
    for total in view.totals:
        bucket_sum = sum((b.amount for b in total.buckets), Decimal(0))
        assert bucket_sum == total.total.amount


# --------------------------------------------------------------------------- forecast


def test_forecast_weeks_collected_and_expected() -> None:
    monday = date(2026, 12, 7)
    milestones = [
        ms(S.RECONCILED, "100.00", paid_on="2026-12-01"),  # last week
        ms(S.PAID_EXTERNALLY, "50.00", paid_on="2026-12-07"),  # this week
        ms(S.RECONCILED, "999.00", paid_on="2026-06-01"),  # before the window: left out
        ms(S.INVOICED, "200.00", due_on="2026-12-20"),  # next week (Sunday)
        ms(S.COLLECTING, "25.00", due_on="2026-11-20"),  # overdue: expected this week
        ms(S.PENDING, "300.00", planned=date(2026, 12, 21)),  # in two weeks
        ms(S.PENDING, "40.00", planned=date(2026, 11, 30)),  # late: in no week
        ms(S.AWAITING_APPROVAL, "60.00", planned=date(2026, 11, 2)),  # done, due now
        ms(S.PENDING, "70.00", planned=date(2028, 1, 1)),  # after the last week
        ms(S.PENDING, "80.00"),  # unscheduled
        ms(S.VOIDED, "999.00", planned=date(2026, 12, 21)),
        ms(S.NEEDS_ATTENTION, "999.00", resume=S.INVOICING, planned=date(2026, 12, 21)),
    ]
    (usd_view,) = reports.forecast(milestones, TODAY, weeks=4, history=2)
    starts = [w.start for w in usd_view.weeks]
    assert starts == [monday + timedelta(weeks=i) for i in range(-2, 4)]
    week = {w.start: w for w in usd_view.weeks}
    assert week[date(2026, 11, 30)].collected == usd("100.00")
    assert week[date(2026, 11, 30)].past and not week[monday].past
    assert week[monday].collected == usd("50.00")
    assert week[monday].invoiced == usd("25.00")
    assert week[monday].planned == usd("60.00")
    assert week[date(2026, 12, 14)].invoiced == usd("200.00")
    assert week[date(2026, 12, 21)].planned == usd("300.00")
    assert usd_view.overdue == usd("25.00")
    assert usd_view.late == usd("40.00")
    assert usd_view.later == usd("70.00")
    assert usd_view.unscheduled == usd("80.00")
    assert usd_view.collected == usd("150.00")
    assert usd_view.expected == usd("585.00")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["USD", "JPY"]),
            st.integers(min_value=1, max_value=10_000_000),
            st.sampled_from([S.PENDING, S.TRIGGERED, S.INVOICED, S.COLLECTING, S.RECONCILED]),
            st.integers(min_value=-200, max_value=200),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_forecast_accounts_for_every_amount_exactly(
    rows: list[tuple[str, int, S, int, bool]],
) -> None:
    milestones = []
    for currency, minor, state, offset, dated in rows:
        when = TODAY + timedelta(days=offset)
        amount = str(Money.from_minor(minor, currency).amount)
        if state is S.RECONCILED:
            milestones.append(ms(state, amount, currency, paid_on=when.isoformat()))
        elif state in (S.INVOICED, S.COLLECTING):
            milestones.append(ms(state, amount, currency, due_on=when.isoformat()))
        else:
            milestones.append(ms(state, amount, currency, planned=when if dated else None))
    for view in reports.forecast(milestones, TODAY, weeks=8, history=4):
        first, end = view.weeks[0].start, view.weeks[-1].start + timedelta(weeks=1)
        expected_total = Decimal(0)
        for m in milestones:
            if m.amount.currency != view.currency:
                continue
            paid = reports.paid_on(m)
            if paid is None or first <= reports.week_start(paid) < end:
                expected_total += m.amount.amount
        accounted = (
            view.collected + view.expected + view.late + view.later + view.unscheduled
        ).amount
        assert accounted == expected_total


def test_forecast_is_per_currency_and_refuses_no_weeks() -> None:
    views = reports.forecast([ms(S.INVOICED, "1", "JPY"), ms(S.INVOICED, "1.00")], TODAY)
    assert [v.currency for v in views] == ["JPY", "USD"]
    assert len(views[0].weeks) == 16  # 4 weeks back, 12 ahead
    assert reports.forecast([], TODAY) == ()
    try:
        reports.forecast([], TODAY, weeks=0)
    except ValueError:
        pass
    else:
        raise AssertionError("weeks=0 must be refused")


# --------------------------------------------------------------------------- leakage


def test_leakage_lists_unbilled_work_and_why() -> None:
    engagement = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("WI-9"),
        client_key=ClientKey("CL-P"),
        client_name="Payroll Co",
        title="Payroll setup",
    )
    unmapped = phase(PhaseStatus.UNMAPPED, reason="no plan matches work type 'Payroll'")
    ignored = phase(PhaseStatus.IGNORED, reason="internal work is never billed")
    blocked = ms(S.INVOICING, "120.00", blocked="customer 404 does not exist in the ledger")
    stopped = ms(S.NEEDS_ATTENTION, "80.00", reason="rejected: fix the item", resume=S.INVOICING)
    stopped_invoiced = ms(
        S.NEEDS_ATTENTION, "500.00", reason="declined", resume=S.COLLECTING, invoice="i"
    )
    view = reports.leakage(
        [unmapped, ignored, phase(PhaseStatus.MAPPED)],
        [blocked, stopped, stopped_invoiced, ms(S.INVOICING), ms(S.PENDING)],
        [engagement],
    )
    kinds = [x.kind for x in view.leaks]
    assert kinds == [
        LeakKind.UNMAPPED,
        LeakKind.IGNORED,
        LeakKind.BLOCKED,
        LeakKind.NEEDS_ATTENTION,
        LeakKind.NEEDS_ATTENTION,
    ]
    assert view.leaks[0].reason == "no plan matches work type 'Payroll'"
    assert view.leaks[0].client == "Payroll Co" and view.leaks[0].amount is None
    assert view.leaks[2].reason == "customer 404 does not exist in the ledger"
    assert view.leaks[2].milestone == blocked.key
    # at risk: what is not invoiced yet (the invoiced one is owed, not leaking)
    assert view.at_risk == Totals.of([usd("200.00")])
    assert view.counts[LeakKind.NEEDS_ATTENTION] == 2


# --------------------------------------------------------------------------- audit


def test_audit_trail_is_newest_first_and_filters_by_milestone() -> None:
    def op(subject: str, minutes: int) -> Operation:
        at = AT + timedelta(minutes=minutes)
        return Operation(
            key=IdempotencyKey(f"k-{subject}-{minutes}"),
            kind=OperationKind.CREATE_INVOICE,
            subject=MilestoneKey(subject),
            payload_hash="h",
            status=OperationStatus.SUCCEEDED,
            created_at=at,
            updated_at=at,
        )

    ops = [op("m1", 1), op("m2", 5), op("m1", 9)]
    events = [
        AuditEvent(AT + timedelta(minutes=m), "invoice.created", s, "x") for s, m in ops_events()
    ]
    trail = reports.audit_trail(ops, events)
    assert [o.updated_at.minute for o in trail.operations] == [9, 5, 1]
    assert [e.at.minute for e in trail.events] == [7, 3, 2]
    one = reports.audit_trail(ops, events, MilestoneKey("m1"))
    assert {o.subject for o in one.operations} == {"m1"} and len(one.operations) == 2
    assert [e.subject for e in one.events] == ["m1", "m1"]
    assert one.milestone == "m1" and reports.audit_trail(ops, events, "").milestone is None


def ops_events() -> list[tuple[str, int]]:
    return [("m1", 2), ("m2", 3), ("m1", 7)]
