"""The mapping engine: which plan applies to an engagement, what each milestone costs, and which
milestones a completed phase triggers. Pure; every answer can explain itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from functools import cache

from connector.config import (
    AppConfig,
    ClientOverride,
    FixedAmount,
    Ignored,
    InvoiceTerms,
    Matched,
    Matcher,
    PercentOfFee,
    Plan,
    PricedMilestone,
    Remainder,
    Resolution,
    Trigger,
    Unmapped,
)
from connector.domain.ids import ConfigRevision, LedgerCustomerId, MilestoneDefId
from connector.domain.model import (
    Engagement,
    EngagementKind,
    PhaseCompletion,
    normalise_status,
)
from connector.domain.money import Money


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def mismatch(match: Matcher, engagement: Engagement) -> str | None:
    """Why the matcher does not match the engagement, or None when it does."""
    if match.source is not None and match.source != engagement.source:
        return f"source is {engagement.source!r}, not {match.source!r}"
    if match.work_type is not None and normalise_status(match.work_type) != normalise_status(
        engagement.work_type
    ):
        return f"work type is {engagement.work_type!r}, not {match.work_type!r}"
    if match.template is not None and normalise_status(match.template) != normalise_status(
        engagement.template
    ):
        return f"template is {engagement.template!r}, not {match.template!r}"
    if match.title_pattern is not None and not _pattern(match.title_pattern).search(
        engagement.title
    ):
        return f"title {engagement.title!r} does not match /{match.title_pattern}/"
    if match.clients and engagement.client_key not in match.clients:
        return f"client {engagement.client_key!r} is not in {list(match.clients)}"
    return None


def _plan_mismatch(plan: Plan, engagement: Engagement) -> str | None:
    recurring = engagement.kind is EngagementKind.RECURRING_CLOSE
    if plan.recurring is not None and not recurring:
        return "a recurring plan only bills recurring closes"
    if plan.recurring is None and recurring:
        return "a recurring close needs a recurring plan"
    return mismatch(plan.match, engagement)


def triggers(trigger: Trigger, phase: PhaseCompletion) -> bool:
    if phase.reopened or trigger.kind is not phase.kind:
        return False
    if normalise_status(trigger.phase) != normalise_status(phase.phase):
        return False
    return trigger.secondary is None or normalise_status(trigger.secondary) == normalise_status(
        phase.secondary
    )


def anniversaries_passed(anniversary: date, on: date) -> int:
    """How many anniversaries (the date itself, then yearly) fall on or before `on`."""
    if on < anniversary:
        return 0
    years = on.year - anniversary.year
    try:
        this_year = anniversary.replace(year=on.year)
    except ValueError:  # 29 February in a common year: the increase comes on 1 March
        this_year = date(on.year, 3, 1)
    return years + (1 if this_year <= on else 0)


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
        for rule in self._config.ignore:
            if mismatch(rule.match, engagement) is None:
                return Ignored(f"ignore.{rule.id}", rule.reason)
        candidates = [p for p in self._config.plans if _plan_mismatch(p, engagement) is None]
        if not candidates:
            return Unmapped(
                f"no plan matches (source {engagement.source!r}, work type "
                f"{engagement.work_type!r}, template {engagement.template!r}, title "
                f"{engagement.title!r}): add a plan for it, or an [[ignore]] rule if it is "
                "never billed"
            )
        top = max(p.priority for p in candidates)
        best = [p for p in candidates if p.priority == top]
        if len(best) > 1:
            names = ", ".join(repr(p.id) for p in best)
            return Unmapped(
                f"plans {names} all match at priority {top}: narrow their match, or give one a "
                "higher priority"
            )
        return self._price(best[0], engagement, phase, on)

    def _price(
        self, plan: Plan, engagement: Engagement, phase: PhaseCompletion | None, on: date
    ) -> Matched | Unmapped:
        override = self._config.clients.get(engagement.client_key)
        currency = (
            (override.currency if override else None)
            or plan.currency
            or (engagement.fee.currency if engagement.fee else None)
            or self._config.firm.currency
        )
        notes: list[str] = []
        configured_fee = (override.fees.get(plan.id) if override else None) or plan.fee
        fee = configured_fee or engagement.fee
        if fee is not None and fee.currency != currency:
            return Unmapped(
                f"the fee is in {fee.currency} but plan {plan.id!r} bills in {currency}: set "
                "the plan's or the client's currency to match"
            )
        factor = self._increase(plan, on, notes)

        def raised(amount: Money, configured: bool) -> Money:
            return Money.rounded(amount.amount * factor, amount.currency) if configured else amount

        if fee is not None:
            fee = raised(fee, configured_fee is not None)
        rules = [m.amount for m in plan.milestones]
        needs_fee = any(isinstance(r, PercentOfFee | Remainder) for r in rules)
        if needs_fee and fee is None:
            return Unmapped(
                f"plan {plan.id!r} bills shares of the fee but {engagement.title!r} has no fee: "
                f'set fee on the plan, a client fee ([clients."{engagement.client_key}"] fees), '
                "or a fixed fee in the practice system"
            )
        amounts = self._amounts(plan, fee, raised)
        if isinstance(amounts, Unmapped):
            return amounts
        priced = tuple(
            PricedMilestone(
                definition=m,
                amount=amount,
                description=plan.description.format(
                    engagement=engagement.title,
                    milestone=m.name,
                    period=engagement.period or "",
                    client=engagement.client_name,
                ),
            )
            for m, amount in zip(plan.milestones, amounts, strict=True)
        )
        triggered: tuple[MilestoneDefId, ...] = ()
        if phase is not None:
            triggered = tuple(m.id for m in plan.milestones if triggers(m.trigger, phase))
        return Matched(
            plan=plan,
            rule_id=f"plans.{plan.id}",
            milestones=priced,
            triggered=triggered,
            collection_mode=(override.collection_mode if override else None)
            or plan.collection_mode
            or self._config.collection.default_mode,
            ledger_customer_id=self._customer(override, engagement),
            invoice=self._terms(plan.invoice, override),
            notes=tuple(notes),
        )

    @staticmethod
    def _increase(plan: Plan, on: date, notes: list[str]) -> Decimal:
        increase = plan.price_increase
        if increase is None:
            return Decimal(1)
        times = anniversaries_passed(increase.anniversary, on)
        if times:
            notes.append(
                f"{increase.percent}% annual increase applied {times} time(s) since "
                f"{increase.anniversary.isoformat()}"
            )
        return (1 + increase.percent / 100) ** times

    @staticmethod
    def _amounts(
        plan: Plan, fee: Money | None, raised: Callable[[Money, bool], Money]
    ) -> list[Money] | Unmapped:
        rules = [m.amount for m in plan.milestones]
        percents = [r.percent for r in rules if isinstance(r, PercentOfFee)]
        if fee is not None and percents and not any(isinstance(r, Remainder) for r in rules):
            # percentages only (they total 100): split by largest remainder, exact to the cent
            return fee.allocate(percents)
        amounts: list[Money | None] = []
        for rule in rules:
            if isinstance(rule, FixedAmount):
                amounts.append(raised(rule.amount, True))
            elif isinstance(rule, PercentOfFee):
                assert fee is not None
                amounts.append(fee.percent(rule.percent))
            else:
                amounts.append(None)
        if fee is not None and any(a is None for a in amounts):
            others = [a for a in amounts if a is not None]
            rest = fee
            for amount in others:
                if amount.currency != fee.currency:
                    return Unmapped(
                        f"plan {plan.id!r} mixes {amount.currency} amounts with a "
                        f"{fee.currency} fee: set the plan's currency"
                    )
                rest = rest - amount
            if rest.is_negative():
                return Unmapped(
                    f"the other milestones of plan {plan.id!r} add up to more than the fee "
                    f"{fee}: raise the fee or lower the fixed amounts"
                )
            amounts = [rest if a is None else a for a in amounts]
        return [a for a in amounts if a is not None]

    @staticmethod
    def _customer(
        override: ClientOverride | None, engagement: Engagement
    ) -> LedgerCustomerId | None:
        if override is not None and override.ledger_customer_id:
            return override.ledger_customer_id
        return engagement.ledger_customer_id

    @staticmethod
    def _terms(plan_terms: InvoiceTerms, override: ClientOverride | None) -> InvoiceTerms:
        if override is None:
            return plan_terms
        return InvoiceTerms(
            item=override.item or plan_terms.item,
            tax_code=override.tax_code or plan_terms.tax_code,
            terms=override.terms or plan_terms.terms,
            send_invoice=plan_terms.send_invoice,
        )

    def explain(self, engagement: Engagement, phase: PhaseCompletion | None, on: date) -> list[str]:
        """Every rule considered, and why it did or did not apply."""
        lines = []
        for rule in self._config.ignore:
            why = mismatch(rule.match, engagement)
            lines.append(
                f"ignore.{rule.id}: "
                + ("MATCHES: " + rule.reason if why is None else f"no ({why})")
            )
        for plan in self._config.plans:
            why = _plan_mismatch(plan, engagement)
            lines.append(
                f"plans.{plan.id} (priority {plan.priority}): "
                + ("matches" if why is None else f"no ({why})")
            )
        resolution = self.resolve(engagement, phase, on)
        if isinstance(resolution, Matched):
            lines.append(
                f"=> billed under plan {resolution.plan.id!r} ({resolution.collection_mode}):"
            )
            lines.extend(
                f"   {p.definition.id}: {p.amount} on {p.definition.trigger.kind} "
                f"{p.definition.trigger.phase!r}"
                + (f"/{p.definition.trigger.secondary!r}" if p.definition.trigger.secondary else "")
                for p in resolution.milestones
            )
            lines.extend(f"   note: {note}" for note in resolution.notes)
        elif isinstance(resolution, Ignored):
            lines.append(f"=> ignored: {resolution.reason}")
        else:
            lines.append(f"=> not billed: {resolution.reason}")
        return lines
