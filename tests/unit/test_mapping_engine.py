"""The mapping engine: matching, priority, ignore rules, pricing, triggers and explanations."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from connector.config import Ignored, Mapper, Matched, Resolution, Unmapped
from connector.domain.errors import InvariantViolation
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import (
    CollectionMode,
    Engagement,
    EngagementKind,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money
from mappings.engine import MappingEngine, anniversaries_passed
from mappings.loader import load_config_text

FIRM = """\
[firm]
id = "smith-cpa"
name = "Smith & Co"
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

[defaults]
item = "Professional services"
tax_code = "NON"
terms = "Net 15"

[collection]
default_mode = "auto_charge"
"""

PLANS = """
[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "karbon", work_type = "Tax Return" }
invoice = { item = "Tax preparation" }

[[plans.milestones]]
id = "documents"
name = "Documents received"
trigger = { status = "Ready To Start", secondary = "Documents received" }
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
id = "monthly"
name = "Monthly bookkeeping"
match = { source = "keeper" }
recurring = "monthly"
fee = "1000.00"
description = "Bookkeeping {period} - {client}"
price_increase = { percent = 5, anniversary = 2025-01-01, notice_days = 30 }

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = { close_status = "Done" }
remainder = true

[[plans]]
id = "advisory"
name = "Advisory"
match = { source = "karbon", title_pattern = "(?i)advisory" }
priority = 10
fee = "5000.00"
collection_mode = "approval_required"

[[plans.milestones]]
id = "kickoff"
name = "Kick-off"
trigger = { section_done = "Discovery" }
amount = "2000.00"

[[plans.milestones]]
id = "delivery"
name = "Delivery"
trigger = { status = "Completed" }
amount = "3000.00"

[[plans]]
id = "karbon-other"
name = "Other Karbon work"
match = { source = "karbon", work_type = "Consulting" }

[[plans.milestones]]
id = "done"
name = "Done"
trigger = { status = "Completed" }
percent = 100

[[ignore]]
id = "internal"
match = { work_type = "Internal" }
reason = "internal work is never billed"

[clients."CL-VIP"]
fees = { tax-return = "2000.00", monthly = "650.00" }
collection_mode = "invoice_only"
ledger_customer_id = "QB-77"
terms = "Net 30"

[clients."CL-EUR"]
currency = "EUR"
fees = { tax-return = "900.00" }
"""

ON = date(2026, 3, 15)


def engine(extra: str = "", plans: str = PLANS) -> MappingEngine:
    return MappingEngine(load_config_text(FIRM + plans + extra, "firm.toml"))


def work_item(
    title: str = "2025 Tax Return - Acme",
    *,
    work_type: str | None = "Tax Return",
    client: str = "CL-ACME",
    fee: Money | None = None,
    template: str | None = None,
    ledger_customer_id: str | None = "58",
) -> Engagement:
    return Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("WI-1"),
        client_key=ClientKey(client),
        client_name="Acme LLC",
        title=title,
        work_type=work_type,
        template=template,
        fee=Money("1000.00", "USD") if fee is None else fee,
        ledger_customer_id=LedgerCustomerId(ledger_customer_id) if ledger_customer_id else None,
    )


def close(client: str = "CL-ACME", period: str = "2026-02") -> Engagement:
    return Engagement(
        source=SourceId("keeper"),
        key=WorkItemKey(f"{client}:{period}"),
        client_key=ClientKey(client),
        client_name="Acme LLC",
        title=f"{period} close",
        kind=EngagementKind.RECURRING_CLOSE,
        period=period,
    )


def phase(
    engagement: Engagement,
    status: str,
    secondary: str | None = None,
    *,
    kind: TriggerKind = TriggerKind.STATUS,
    reopened: bool = False,
) -> PhaseCompletion:
    return PhaseCompletion(
        source=engagement.source,
        work_item=engagement.key,
        kind=kind,
        phase=status,
        completed_at=datetime(2026, 3, 15, 12, tzinfo=UTC),
        completion="2026-03-15T12:00:00Z",
        secondary=secondary,
        reopened=reopened,
    )


def matched(resolution: Resolution) -> Matched:
    assert isinstance(resolution, Matched), resolution
    return resolution


def amounts(resolution: Resolution) -> list[str]:
    return [str(m.amount) for m in matched(resolution).milestones]


# --------------------------------------------------------------------------- matching


def test_the_engine_is_a_mapper() -> None:
    mapper: Mapper = engine()
    assert mapper.revision == engine().config.revision


def test_a_tax_return_matches_its_plan_and_is_priced_from_its_fee() -> None:
    result = matched(engine().resolve(work_item(), None, ON))

    assert result.plan.id == "tax-return"
    assert result.rule_id == "plans.tax-return"
    assert amounts(result) == ["400.00 USD", "400.00 USD", "200.00 USD"]
    assert result.triggered == ()
    assert result.milestones[0].description == "2025 Tax Return - Acme - Documents received"


def test_work_types_compare_without_case_or_spaces() -> None:
    result = engine().resolve(work_item(work_type="TAX  return"), None, ON)
    assert matched(result).plan.id == "tax-return"
    result = engine().resolve(work_item(work_type="TaxReturn"), None, ON)
    assert matched(result).plan.id == "tax-return"


def test_templates_and_client_lists_narrow_a_match() -> None:
    extra = """
[[plans]]
id = "tax-1040"
name = "Individual return"
match = { source = "karbon", template = "Form 1040", clients = ["CL-ACME"] }
priority = 5

[[plans.milestones]]
id = "all"
name = "All"
trigger = { status = "Completed" }
percent = 100
"""
    mapper = engine(extra)
    assert matched(mapper.resolve(work_item(template="form1040"), None, ON)).plan.id == "tax-1040"
    other = work_item(template="Form 1040", client="CL-OTHER")
    assert matched(mapper.resolve(other, None, ON)).plan.id == "tax-return"


def test_the_highest_priority_wins() -> None:
    advisory = work_item("Advisory: cash flow", work_type="Tax Return")

    result = matched(engine().resolve(advisory, None, ON))

    assert result.plan.id == "advisory"
    assert amounts(result) == ["2000.00 USD", "3000.00 USD"]
    assert result.collection_mode is CollectionMode.APPROVAL_REQUIRED


def test_two_plans_matching_at_the_same_priority_are_ambiguous_at_runtime() -> None:
    extra = """
[[plans]]
id = "returns-by-title"
name = "Returns by title"
match = { title_pattern = "Tax Return" }

[[plans.milestones]]
id = "all"
name = "All"
trigger = { status = "Completed" }
percent = 100
"""
    result = engine(extra).resolve(work_item(), None, ON)

    assert isinstance(result, Unmapped)
    assert "'tax-return'" in result.reason and "'returns-by-title'" in result.reason
    assert "narrow" in result.reason and "priority" in result.reason


def test_ignore_rules_come_first() -> None:
    result = engine().resolve(work_item("Team offsite", work_type="Internal"), None, ON)

    assert result == Ignored("ignore.internal", "internal work is never billed")


def test_unmatched_work_says_what_had_no_plan_and_what_to_do() -> None:
    result = engine().resolve(work_item("Payroll setup", work_type="Payroll"), None, ON)

    assert isinstance(result, Unmapped)
    assert "'Payroll'" in result.reason and "'Payroll setup'" in result.reason
    assert "[[plans]]" in result.reason and "[[ignore]]" in result.reason


def test_recurring_plans_bill_only_closes_and_work_item_plans_only_work_items() -> None:
    mapper = engine()
    assert matched(mapper.resolve(close(), None, ON)).plan.id == "monthly"

    keeper_item = Engagement(
        source=SourceId("keeper"),
        key=WorkItemKey("K-1"),
        client_key=ClientKey("CL-ACME"),
        client_name="Acme LLC",
        title="Catch-up bookkeeping",
    )
    assert isinstance(mapper.resolve(keeper_item, None, ON), Unmapped)
    why = "\n".join(mapper.explain(keeper_item, None, ON))
    assert "plan 'monthly' (priority 0): no match (a recurring plan bills only" in why

    karbon_close = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("CL-ACME:2026-02"),
        client_key=ClientKey("CL-ACME"),
        client_name="Acme LLC",
        title="Consulting close",
        kind=EngagementKind.RECURRING_CLOSE,
        work_type="Consulting",
    )
    assert isinstance(mapper.resolve(karbon_close, None, ON), Unmapped)


# --------------------------------------------------------------------------- pricing


def test_a_client_fee_beats_the_plan_fee_which_beats_the_engagement_fee() -> None:
    mapper = engine()

    vip = matched(mapper.resolve(work_item(client="CL-VIP"), None, ON))
    assert amounts(vip) == ["800.00 USD", "800.00 USD", "400.00 USD"]

    monthly = matched(mapper.resolve(close(), None, date(2024, 6, 1)))
    assert amounts(monthly) == ["1000.00 USD"]  # plan fee; closes have none of their own

    vip_close = matched(mapper.resolve(close("CL-VIP"), None, date(2024, 6, 1)))
    assert amounts(vip_close) == ["650.00 USD"]


def test_client_terms_mode_and_customer_override_the_plan_and_defaults() -> None:
    mapper = engine()

    plain = matched(mapper.resolve(work_item(), None, ON))
    assert plain.collection_mode is CollectionMode.AUTO_CHARGE  # [collection] default
    assert plain.ledger_customer_id == "58"  # from the engagement
    assert plain.invoice.item == "Tax preparation"  # plan
    assert plain.invoice.tax_code == "NON" and plain.invoice.terms == "Net 15"  # defaults

    vip = matched(mapper.resolve(work_item(client="CL-VIP"), None, ON))
    assert vip.collection_mode is CollectionMode.INVOICE_ONLY
    assert vip.ledger_customer_id == "QB-77"
    assert vip.invoice.terms == "Net 30"
    assert vip.invoice.item == "Tax preparation"


def test_a_client_currency_prices_in_that_currency() -> None:
    eur = matched(engine().resolve(work_item(client="CL-EUR"), None, ON))
    assert amounts(eur) == ["360.00 EUR", "360.00 EUR", "180.00 EUR"]


def test_an_engagement_fee_in_the_wrong_currency_is_unmapped_with_a_reason() -> None:
    plans = PLANS.replace('invoice = { item = "Tax preparation" }', 'currency = "USD"')
    foreign = work_item(fee=Money("1000.00", "CAD"))

    result = engine(plans=plans).resolve(foreign, None, ON)

    assert isinstance(result, Unmapped)
    assert "CAD" in result.reason and "USD" in result.reason


def test_an_engagement_fee_sets_the_currency_when_nothing_else_does() -> None:
    result = engine().resolve(work_item(fee=Money("1000.00", "CAD")), None, ON)
    assert amounts(result) == ["400.00 CAD", "400.00 CAD", "200.00 CAD"]


def test_a_client_currency_without_a_client_fee_cannot_use_the_plan_fee() -> None:
    result = engine().resolve(close("CL-EUR"), None, ON)

    assert isinstance(result, Unmapped)
    assert "EUR" in result.reason and 'fees = { monthly = "..." }' in result.reason


def test_a_missing_or_zero_fee_is_unmapped_with_what_to_set() -> None:
    no_fee = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("WI-2"),
        client_key=ClientKey("CL-ACME"),
        client_name="Acme LLC",
        title="2025 Tax Return",
        work_type="Tax Return",
    )
    for engagement in (no_fee, work_item(fee=Money("0.00", "USD"))):
        result = engine().resolve(engagement, None, ON)
        assert isinstance(result, Unmapped)
        assert "fee" in result.reason and "tax-return" in result.reason


def test_percentages_split_exactly_by_largest_remainder() -> None:
    plans = PLANS.replace("percent = 40", 'percent = "33.33"').replace(
        'remainder = true\n\n[[plans]]\nid = "monthly"',
        'percent = "33.34"\n\n[[plans]]\nid = "monthly"',
    )
    mapper = engine(plans=plans)

    thousand = mapper.resolve(work_item(fee=Money("1000.00", "USD")), None, ON)
    assert amounts(thousand) == ["333.30 USD", "333.30 USD", "333.40 USD"]
    hundred = mapper.resolve(work_item(fee=Money("100.00", "USD")), None, ON)
    assert amounts(hundred) == ["33.33 USD", "33.33 USD", "33.34 USD"]
    odd = mapper.resolve(work_item(fee=Money("0.10", "USD")), None, ON)
    assert sum(Money(a.split()[0], "USD").minor for a in amounts(odd)) == 10


def test_a_remainder_takes_what_the_percentages_leave() -> None:
    plans = PLANS.replace("percent = 40", 'percent = "33.33"')

    result = engine(plans=plans).resolve(work_item(fee=Money("100.00", "USD")), None, ON)

    assert amounts(result) == ["33.33 USD", "33.33 USD", "33.34 USD"]


def test_a_remainder_after_fixed_amounts() -> None:
    plans = PLANS.replace("percent = 40", 'amount = "300.00"')

    result = engine(plans=plans).resolve(work_item(fee=Money("1000.00", "USD")), None, ON)
    assert amounts(result) == ["300.00 USD", "300.00 USD", "400.00 USD"]

    short = engine(plans=plans).resolve(work_item(fee=Money("500.00", "USD")), None, ON)
    assert isinstance(short, Unmapped)
    assert "negative" in short.reason and "500.00 USD" in short.reason


def test_yen_have_no_minor_unit() -> None:
    plans = PLANS.replace("percent = 40", 'percent = "33.33"').replace(
        'remainder = true\n\n[[plans]]\nid = "monthly"',
        'percent = "33.34"\n\n[[plans]]\nid = "monthly"',
    )
    result = engine(plans=plans).resolve(work_item(fee=Money(10000, "JPY")), None, ON)

    assert amounts(result) == ["3333 JPY", "3333 JPY", "3334 JPY"]


def test_the_annual_increase_applies_once_per_anniversary_passed() -> None:
    mapper = engine()

    def fee_on(on: date) -> str:
        return amounts(mapper.resolve(close(), None, on))[0]

    assert fee_on(date(2024, 12, 31)) == "1000.00 USD"
    assert fee_on(date(2025, 1, 1)) == "1050.00 USD"
    assert fee_on(date(2025, 12, 31)) == "1050.00 USD"
    assert fee_on(date(2026, 1, 1)) == "1102.50 USD"
    assert fee_on(date(2026, 6, 1)) == "1102.50 USD"
    result = matched(mapper.resolve(close(), None, date(2026, 6, 1)))
    assert any("5%" in note and "2 time(s)" in note for note in result.notes)

    vip = matched(mapper.resolve(close("CL-VIP"), None, date(2026, 6, 1)))
    assert amounts(vip) == ["716.63 USD"]  # 650.00 -> 682.50 -> 716.625, rounded


def test_the_notice_period_before_an_increase_is_noted() -> None:
    result = matched(engine().resolve(close(), None, date(2026, 12, 15)))
    assert any("next increase" in note and "2027-01-01" in note for note in result.notes)


def test_a_leap_day_anniversary_falls_on_the_first_of_march() -> None:
    leap = date(2024, 2, 29)
    assert anniversaries_passed(leap, date(2024, 2, 28)) == 0
    assert anniversaries_passed(leap, date(2024, 2, 29)) == 1
    assert anniversaries_passed(leap, date(2025, 2, 28)) == 1
    assert anniversaries_passed(leap, date(2025, 3, 1)) == 2


def test_descriptions_fill_their_placeholders() -> None:
    result = matched(engine().resolve(close(period="2026-02"), None, ON))
    assert result.milestones[0].description == "Bookkeeping 2026-02 - Acme LLC"


# --------------------------------------------------------------------------- triggers


def test_a_phase_triggers_the_milestones_it_completes() -> None:
    mapper = engine()
    item = work_item()

    review = mapper.resolve(item, phase(item, "In Progress", "Review"), ON)
    assert matched(review).triggered == ("review",)
    filed = mapper.resolve(item, phase(item, "Completed"), ON)
    assert matched(filed).triggered == ("filed",)
    no_secondary = mapper.resolve(item, phase(item, "In Progress"), ON)
    assert matched(no_secondary).triggered == ()


def test_statuses_compare_without_case_or_spaces() -> None:
    mapper = engine()
    item = work_item()

    result = mapper.resolve(item, phase(item, "InProgress", "review"), ON)
    assert matched(result).triggered == ("review",)
    result = mapper.resolve(item, phase(item, "ready to start", "Documents  Received"), ON)
    assert matched(result).triggered == ("documents",)


def test_trigger_kinds_must_agree() -> None:
    mapper = engine()
    item = work_item("Advisory project")

    section = phase(item, "Discovery", kind=TriggerKind.SECTION_DONE)
    assert matched(mapper.resolve(item, section, ON)).triggered == ("kickoff",)
    as_status = phase(item, "Discovery")
    assert matched(mapper.resolve(item, as_status, ON)).triggered == ()

    month = close()
    done = phase(month, "Done", kind=TriggerKind.CLOSE_STATUS)
    assert matched(mapper.resolve(month, done, ON)).triggered == ("close",)


def test_a_reopened_phase_triggers_nothing() -> None:
    item = work_item()
    reopened = phase(item, "Completed", reopened=True)

    result = matched(engine().resolve(item, reopened, ON))

    assert result.triggered == ()
    assert len(result.milestones) == 3  # still priced


def test_a_phase_of_another_work_item_is_a_bug() -> None:
    other = Engagement(
        source=SourceId("karbon"),
        key=WorkItemKey("WI-OTHER"),
        client_key=ClientKey("CL-ACME"),
        client_name="Acme LLC",
        title="x",
    )
    with pytest.raises(InvariantViolation):
        engine().resolve(work_item(), phase(other, "Completed"), ON)


# --------------------------------------------------------------------------- explain


def test_explain_shows_every_rule_and_the_outcome() -> None:
    item = work_item()

    lines = engine().explain(item, phase(item, "In Progress", "Review"), ON)
    text = "\n".join(lines)

    assert "ignore rule 'internal': no match (work type is 'Tax Return', not 'Internal')" in text
    assert "plan 'tax-return' (priority 0): matches" in text
    assert "plan 'monthly' (priority 0): no match (a recurring plan bills only" in text
    assert "plan 'advisory' (priority 10): no match (title '2025 Tax Return - Acme'" in text
    assert "plan 'karbon-other' (priority 0): no match (work type is 'Tax Return'" in text
    assert "=> billed under plan 'tax-return'" in text
    assert "fee 1000.00 USD from the karbon work item" in text
    assert "milestone 'review' 400.00 USD" in text and "<- triggered by this phase" in text


def test_explain_says_why_nothing_was_billed() -> None:
    mapper = engine()

    unmatched = "\n".join(mapper.explain(work_item(work_type="Payroll"), None, ON))
    assert "=> not billed: no plan matches" in unmatched and "'Payroll'" in unmatched

    ignored = "\n".join(mapper.explain(work_item(work_type="Internal"), None, ON))
    assert "ignore rule 'internal': matches" in ignored
    assert "=> ignored by rule 'internal': internal work is never billed" in ignored


def test_explain_and_resolve_agree() -> None:
    mapper = engine()
    for item in (work_item(), work_item(work_type="Payroll"), work_item(work_type="Internal")):
        result = mapper.resolve(item, None, ON)
        last = mapper.explain(item, None, ON)[-1] if not isinstance(result, Matched) else None
        if isinstance(result, Unmapped):
            assert last == f"=> not billed: {result.reason}"
        elif isinstance(result, Ignored):
            assert last is not None and result.reason in last
