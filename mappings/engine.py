"""The mapping engine: which plan bills an engagement, what each milestone costs, and which
milestones a completed phase triggers. Pure functions of the config; every answer explains itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from connector.config import (
    AppConfig,
    ClientOverride,
    FixedAmount,
    Ignored,
    IgnoreRule,
    InvoiceTerms,
    Matched,
    Matcher,
    MilestoneDef,
    PercentOfFee,
    Plan,
    PricedMilestone,
    PriceIncrease,
    PriceNotice,
    Remainder,
    Resolution,
    Trigger,
    Unmapped,
)
from connector.domain.errors import InvariantViolation
from connector.domain.ids import ConfigRevision, LedgerCustomerId, MilestoneDefId
from connector.domain.model import (
    CollectionMode,
    Engagement,
    EngagementKind,
    PhaseCompletion,
    normalise_status,
)
from connector.domain.money import Money

FALLBACK_DESCRIPTION = "{engagement} - {milestone}"


def plan_rule_id(plan: Plan) -> str:
    """The rule id a plan is reported under (`Matched.rule_id`, audit, explain)."""
    return f"plans.{plan.id}"


def ignore_rule_id(rule: IgnoreRule) -> str:
    return f"ignore.{rule.id}"


# --------------------------------------------------------------------------- matching


def _same(expected: str, actual: str | None) -> bool:
    return normalise_status(expected) == normalise_status(actual)


def _shown(value: str | None) -> str:
    return "none" if value is None else repr(value)


def matcher_mismatches(match: Matcher, engagement: Engagement) -> list[str]:
    """Every reason the matcher does not cover the engagement; empty when it does."""
    reasons: list[str] = []
    if match.source is not None and match.source != engagement.source:
        reasons.append(f"source is {engagement.source!r}, not {match.source!r}")
    if match.work_type is not None and not _same(match.work_type, engagement.work_type):
        reasons.append(f"work type is {_shown(engagement.work_type)}, not {match.work_type!r}")
    if match.template is not None and not _same(match.template, engagement.template):
        reasons.append(f"template is {_shown(engagement.template)}, not {match.template!r}")
    if match.title_pattern is not None and not re.search(match.title_pattern, engagement.title):
        reasons.append(f"title {engagement.title!r} does not match /{match.title_pattern}/")
    if match.clients and engagement.client_key not in match.clients:
        listed = ", ".join(match.clients)
        reasons.append(f"client {engagement.client_key!r} is not one of {listed}")
    return reasons


def plan_mismatches(plan: Plan, engagement: Engagement) -> list[str]:
    """Why the plan does not bill the engagement (kind first, then its matcher)."""
    recurring = engagement.kind is EngagementKind.RECURRING_CLOSE
    if plan.recurring is not None and not recurring:
        return ["a recurring plan bills only recurring closes, and this is a work item"]
    if plan.recurring is None and recurring:
        return ["the plan bills work items, and this is a recurring close"]
    return matcher_mismatches(plan.match, engagement)


def triggers(trigger: Trigger, phase: PhaseCompletion) -> bool:
    """Whether completing `phase` completes a milestone with this trigger (never when reopened)."""
    if phase.reopened or trigger.kind != phase.kind or not _same(trigger.phase, phase.phase):
        return False
    return trigger.secondary is None or _same(trigger.secondary, phase.secondary)


def describe_trigger(trigger: Trigger) -> str:
    secondary = f" / {trigger.secondary!r}" if trigger.secondary else ""
    return f"{trigger.kind} {trigger.phase!r}{secondary}"


def describe_engagement(engagement: Engagement) -> str:
    """One line naming the engagement by everything a plan can match on."""
    kind = "recurring close" if engagement.kind is EngagementKind.RECURRING_CLOSE else "work item"
    period = f", period {engagement.period}" if engagement.period else ""
    return (
        f"{kind} {engagement.title!r} ({engagement.source} {engagement.key}{period}; work type "
        f"{_shown(engagement.work_type)}, template {_shown(engagement.template)}, client "
        f"{engagement.client_key} {engagement.client_name!r})"
    )


# --------------------------------------------------------------------------- price increases


def anniversary_in(anniversary: date, year: int) -> date:
    """The anniversary in `year`; 29 February falls on 1 March in common years."""
    try:
        return anniversary.replace(year=year)
    except ValueError:
        return date(year, 3, 1)


def anniversaries_passed(anniversary: date, on: date) -> int:
    """How many anniversaries (the date itself, then yearly) fall on or before `on`."""
    if on < anniversary:
        return 0
    years = on.year - anniversary.year
    return years + (1 if anniversary_in(anniversary, on.year) <= on else 0)


def increased(fee: Money, increase: PriceIncrease, on: date) -> tuple[Money, list[str]]:
    """The fee after every annual increase up to `on`, each rounded to the minor unit (as each
    year's published price is), with notes saying what was applied and what comes next."""
    times = anniversaries_passed(increase.anniversary, on)
    raised = fee
    factor = 1 + increase.percent / 100
    for _ in range(times):
        raised = Money.rounded(raised.amount * factor, fee.currency)
    notes: list[str] = []
    if times:
        last = anniversary_in(increase.anniversary, increase.anniversary.year + times - 1)
        notes.append(
            f"annual increase of {increase.percent}% applied {times} time(s) (anniversaries "
            f"{increase.anniversary.isoformat()} to {last.isoformat()}): fee {fee} -> {raised}"
        )
    upcoming = anniversary_in(increase.anniversary, increase.anniversary.year + times)
    if upcoming - timedelta(days=increase.notice_days) <= on < upcoming:
        notes.append(
            f"next increase of {increase.percent}% on {upcoming.isoformat()}: clients are due "
            f"{increase.notice_days} days' notice"
        )
    return raised, notes


# --------------------------------------------------------------------------- pricing


@dataclass(frozen=True, slots=True)
class PlanPrice:
    """A plan priced for one engagement: one amount per milestone, in plan order."""

    amounts: tuple[Money, ...]
    currency: str
    fee: Money | None  # the fee shared out, after increases; None for an all-fixed plan
    fee_source: str
    notes: tuple[str, ...] = ()


def split_fee(milestones: Sequence[MilestoneDef], fee: Money | None) -> list[Money] | str:
    """Each milestone's amount, or why the plan cannot be priced.

    Percent-only plans totalling 100 are split by largest remainder, so the parts sum exactly to
    the fee; otherwise percentages are rounded each, fixed amounts are taken as written, and the
    remainder milestone takes the fee minus all the others.
    """
    rules = [m.amount for m in milestones]
    percents = [r.percent for r in rules if isinstance(r, PercentOfFee)]
    has_fixed = any(isinstance(r, FixedAmount) for r in rules)
    has_remainder = any(isinstance(r, Remainder) for r in rules)
    if (percents or has_remainder) and fee is None:
        return "the plan shares out a fee, but there is none"
    percent_only = percents and not has_fixed and not has_remainder
    if fee is not None and percent_only and sum(percents, Decimal(0)) == 100:
        return fee.allocate(percents)
    amounts: list[Money | None] = []
    for rule in rules:
        if isinstance(rule, FixedAmount):
            amounts.append(rule.amount)
        elif isinstance(rule, PercentOfFee):
            assert fee is not None
            amounts.append(fee.percent(rule.percent))
        else:
            amounts.append(None)
    if has_remainder:
        assert fee is not None
        others = [a for a in amounts if a is not None]
        rest = fee
        for amount in others:
            rest = rest - amount
        if rest.is_negative():
            taken = sum((a.amount for a in others), Decimal(0))
            return (
                f"the other milestones come to {taken} {fee.currency}, more than the fee {fee}, "
                "so the remainder would be negative: raise the fee or lower the fixed amounts "
                "and percentages"
            )
        amounts = [rest if a is None else a for a in amounts]
    return [a for a in amounts if a is not None]


# --------------------------------------------------------------------------- the engine


@dataclass
class _Considered:
    """What the engine looked at for one engagement, for `resolve` and `explain` alike."""

    lines: list[str] = field(default_factory=list)
    resolution: Resolution | None = None
    price: PlanPrice | None = None


class MappingEngine:
    """Implements `connector.config.Mapper` over one validated config."""

    def __init__(self, config: AppConfig) -> None:
        self._config = config

    @property
    def revision(self) -> ConfigRevision:
        return self._config.revision

    @property
    def config(self) -> AppConfig:
        return self._config

    def resolve(
        self, engagement: Engagement, phase: PhaseCompletion | None, on: date
    ) -> Resolution:
        """Ignored, Unmapped (with what the admin can do) or Matched with every milestone priced
        as of `on` and the ones `phase` completes."""
        resolution = self._consider(engagement, phase, on).resolution
        assert resolution is not None
        return resolution

    def price_notices(self, engagement: Engagement, on: date) -> list[PriceNotice]:
        """The coming annual increase of this engagement's fee, when its notice period has
        begun: the fee now and the fee from the anniversary (fees from the practice system are
        the firm's own there, and never raised here)."""
        resolution = self.resolve(engagement, None, on)
        if not isinstance(resolution, Matched) or resolution.plan.price_increase is None:
            return []
        plan, increase = resolution.plan, resolution.plan.price_increase
        override = self._config.clients.get(engagement.client_key)
        now = self._price(plan, engagement, override, on)
        times = anniversaries_passed(increase.anniversary, on)
        upcoming = anniversary_in(increase.anniversary, increase.anniversary.year + times)
        if not upcoming - timedelta(days=increase.notice_days) <= on < upcoming:
            return []
        later = self._price(plan, engagement, override, upcoming)
        if isinstance(now, str) or isinstance(later, str) or now.fee is None or later.fee is None:
            return []
        if later.fee == now.fee:  # the fee comes from the practice system: not raised here
            return []
        return [
            PriceNotice(
                plan_id=plan.id,
                plan_name=plan.name,
                client_key=engagement.client_key,
                client_name=engagement.client_name,
                email=override.email if override else None,
                takes_effect=upcoming,
                percent=increase.percent,
                current_fee=now.fee,
                new_fee=later.fee,
            )
        ]

    def explain(self, engagement: Engagement, phase: PhaseCompletion | None, on: date) -> list[str]:
        """Human lines: every rule considered, why it did or did not apply, and the outcome."""
        return self._consider(engagement, phase, on).lines

    # ------------------------------------------------------------------ steps

    def _consider(
        self, engagement: Engagement, phase: PhaseCompletion | None, on: date
    ) -> _Considered:
        if phase is not None and (phase.source, phase.work_item) != (
            engagement.source,
            engagement.key,
        ):
            raise InvariantViolation(
                f"phase of {phase.source} {phase.work_item} resolved against engagement "
                f"{engagement.source} {engagement.key}"
            )
        seen = _Considered()
        seen.lines.append(describe_engagement(engagement))
        if engagement.fee is not None:
            seen.lines.append(f"fee in the practice system: {engagement.fee}")
        if phase is not None:
            reopened = " (reopened: triggers nothing)" if phase.reopened else ""
            secondary = f" / {phase.secondary!r}" if phase.secondary else ""
            seen.lines.append(f"phase: {phase.kind} {phase.phase!r}{secondary}{reopened}")

        ignored = self._ignore_rules(engagement, seen)
        candidates = self._plans(engagement, seen)
        if ignored is not None:
            seen.resolution = Ignored(ignore_rule_id(ignored), ignored.reason)
            seen.lines.append(f"=> ignored by rule {ignored.id!r}: {ignored.reason}")
            return seen
        if not candidates:
            return self._unmapped(
                seen,
                f"no plan matches {describe_engagement(engagement)}: add a [[plans]] entry whose "
                "match covers it, or an [[ignore]] rule if it is never billed",
            )
        top = max(plan.priority for plan in candidates)
        best = [plan for plan in candidates if plan.priority == top]
        if len(best) > 1:
            names = " and ".join(repr(plan.id) for plan in best)
            verb = "both match" if len(best) == 2 else "all match"
            return self._unmapped(
                seen,
                f"plans {names} {verb} {describe_engagement(engagement)} at priority {top}: "
                "narrow one plan's match or give one a higher priority",
            )
        plan = best[0]
        if len(candidates) > 1:
            seen.lines.append(f"plan {plan.id!r} wins with the highest priority ({top})")
        override = self._config.clients.get(engagement.client_key)
        price = self._price(plan, engagement, override, on)
        if isinstance(price, str):
            return self._unmapped(
                seen, f"plan {plan.id!r} cannot price {engagement.title!r}: {price}"
            )
        seen.price = price
        seen.resolution = self._matched(plan, engagement, override, phase, price)
        self._explain_match(seen, seen.resolution, price)
        return seen

    @staticmethod
    def _unmapped(seen: _Considered, reason: str) -> _Considered:
        seen.resolution = Unmapped(reason)
        seen.lines.append(f"=> not billed: {reason}")
        return seen

    def _ignore_rules(self, engagement: Engagement, seen: _Considered) -> IgnoreRule | None:
        hit: IgnoreRule | None = None
        for rule in self._config.ignore:
            why = matcher_mismatches(rule.match, engagement)
            if why:
                seen.lines.append(f"ignore rule {rule.id!r}: no match ({'; '.join(why)})")
            elif hit is None:
                seen.lines.append(f"ignore rule {rule.id!r}: matches ({rule.reason})")
                hit = rule
            else:
                seen.lines.append(
                    f"ignore rule {rule.id!r}: matches too (rule {hit.id!r} is first)"
                )
        return hit

    def _plans(self, engagement: Engagement, seen: _Considered) -> list[Plan]:
        candidates: list[Plan] = []
        for plan in self._config.plans:
            why = plan_mismatches(plan, engagement)
            head = f"plan {plan.id!r} (priority {plan.priority})"
            if why:
                seen.lines.append(f"{head}: no match ({'; '.join(why)})")
            else:
                seen.lines.append(f"{head}: matches")
                candidates.append(plan)
        if not self._config.plans:
            seen.lines.append("no plans are configured")
        return candidates

    def _price(
        self,
        plan: Plan,
        engagement: Engagement,
        override: ClientOverride | None,
        on: date,
    ) -> PlanPrice | str:
        """The plan's amounts for this engagement, or why it cannot be priced (for the admin).

        Fee: the client's fee for the plan, else the plan's fee, else the engagement's. Currency:
        the client's, else the plan's, else that of the engagement's fee when that fee is used,
        else the firm's. Annual increases apply to fees from the config.
        """
        client = f'[clients."{engagement.client_key}"]'
        rules = [m.amount for m in plan.milestones]
        needs_fee = any(isinstance(r, PercentOfFee | Remainder) for r in rules)
        fee: Money | None = None
        source = "the fixed amounts of the plan"
        from_engagement = False
        if needs_fee:
            if override is not None and plan.id in override.fees:
                fee, source = override.fees[plan.id], f"{client} fees"
            elif plan.fee is not None:
                fee, source = plan.fee, f"plan {plan.id!r}"
            elif engagement.fee is not None and engagement.fee.amount > 0:
                fee, source = engagement.fee, f"the {engagement.source} work item"
                from_engagement = True
            else:
                what = "a zero fee" if engagement.fee is not None else "no fee"
                return (
                    f"it shares out a fee, but the engagement has {what} in {engagement.source}: "
                    f"set the fee on the work item, give the plan a fee, or give the client one "
                    f'under {client} fees = {{ {plan.id} = "1500.00" }}'
                )
        currency = (
            (override.currency if override else None)
            or plan.currency
            or (fee.currency if from_engagement and fee is not None else None)
            or self._config.firm.currency
        )
        if fee is not None and fee.currency != currency:
            if from_engagement:
                return (
                    f"the engagement's fee is in {fee.currency}, but the plan bills in {currency}: "
                    f"set the fee in {currency} in {engagement.source}, or give the client a fee "
                    f"under {client} fees"
                )
            return (
                f"the fee from {source} is {fee}, but this client is billed in {currency}: give "
                f'the client a fee in {currency} under {client} fees = {{ {plan.id} = "..." }}'
            )
        for milestone in plan.milestones:
            rule = milestone.amount
            if isinstance(rule, FixedAmount) and rule.amount.currency != currency:
                return (
                    f"milestone {milestone.id!r} is a fixed {rule.amount}, but this engagement "
                    f"is billed in {currency}: set currency on the plan, or make a separate plan "
                    f"for {currency} clients"
                )
        notes: list[str] = []
        if fee is not None and plan.price_increase is not None:
            if from_engagement:
                notes.append("annual increase not applied: the fee comes from the practice system")
            else:
                fee, increase_notes = increased(fee, plan.price_increase, on)
                notes += increase_notes
        amounts = split_fee(plan.milestones, fee)
        if isinstance(amounts, str):
            return amounts
        for milestone, amount in zip(plan.milestones, amounts, strict=True):
            if isinstance(milestone.amount, Remainder) and amount.is_zero():
                notes.append(f"remainder milestone {milestone.id!r} comes to zero")
        return PlanPrice(tuple(amounts), currency, fee, source, tuple(notes))

    def _matched(
        self,
        plan: Plan,
        engagement: Engagement,
        override: ClientOverride | None,
        phase: PhaseCompletion | None,
        price: PlanPrice,
    ) -> Matched:
        priced = tuple(
            PricedMilestone(m, amount, self._description(plan, m, engagement))
            for m, amount in zip(plan.milestones, price.amounts, strict=True)
        )
        triggered: tuple[MilestoneDefId, ...] = ()
        if phase is not None:
            triggered = tuple(m.id for m in plan.milestones if triggers(m.trigger, phase))
        mode: CollectionMode = (
            (override.collection_mode if override else None)
            or plan.collection_mode
            or self._config.collection.default_mode
        )
        customer: LedgerCustomerId | None = (
            override.ledger_customer_id if override else None
        ) or engagement.ledger_customer_id
        return Matched(
            plan=plan,
            rule_id=plan_rule_id(plan),
            milestones=priced,
            triggered=triggered,
            collection_mode=mode,
            ledger_customer_id=customer,
            invoice=self._terms(plan, override),
            notes=price.notes,
        )

    @staticmethod
    def _description(plan: Plan, milestone: MilestoneDef, engagement: Engagement) -> str:
        values = {
            "engagement": engagement.title,
            "milestone": milestone.name,
            "period": engagement.period or "",
            "client": engagement.client_name,
        }
        try:
            text = plan.description.format_map(values)
        except (KeyError, IndexError, ValueError):  # the loader rejects these; built by hand?
            text = FALLBACK_DESCRIPTION.format_map(values)
        return " ".join(text.split())

    def _terms(self, plan: Plan, override: ClientOverride | None) -> InvoiceTerms:
        """Field by field: the client's, else the plan's, else `[defaults]`."""
        defaults = self._config.defaults
        own = plan.invoice
        # send_invoice is a plain bool: the loader resolves it against [defaults] into the plan;
        # a plan built without invoice terms takes the defaults'
        send = own.send_invoice if own != InvoiceTerms() else defaults.send_invoice
        return InvoiceTerms(
            item=(override.item if override else None) or own.item or defaults.item,
            tax_code=(override.tax_code if override else None) or own.tax_code or defaults.tax_code,
            terms=(override.terms if override else None) or own.terms or defaults.terms,
            send_invoice=send,
        )

    @staticmethod
    def _explain_match(seen: _Considered, matched: Matched, price: PlanPrice) -> None:
        plan = matched.plan
        seen.lines.append(f"=> billed under plan {plan.id!r} ({plan.name}), rule {matched.rule_id}")
        fee = f"fee {price.fee} from {price.fee_source}" if price.fee else "fixed amounts"
        seen.lines.append(
            f"   {fee}; currency {price.currency}; collection {matched.collection_mode}; ledger "
            f"customer {matched.ledger_customer_id or 'not known'}"
        )
        for item in matched.milestones:
            definition = item.definition
            fired = " <- triggered by this phase" if definition.id in matched.triggered else ""
            seen.lines.append(
                f"   milestone {definition.id!r} {item.amount} when "
                f"{describe_trigger(definition.trigger)}: {item.description!r}{fired}"
            )
        seen.lines.extend(f"   note: {note}" for note in matched.notes)
