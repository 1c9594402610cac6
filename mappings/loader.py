"""Load a mapping config: parse TOML, validate every key, check rules across keys, and build the
frozen `connector.config.AppConfig`. Every problem is reported at once, with its key path and line.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from connector.config import (
    AmountRule,
    AppConfig,
    ClientOverride,
    CollectionPolicy,
    FirmConfig,
    FixedAmount,
    IgnoreRule,
    InvoiceTerms,
    LedgerConnection,
    Matcher,
    MilestoneDef,
    PaymentsConnection,
    PercentOfFee,
    Plan,
    PriceIncrease,
    Remainder,
    ScheduleConfig,
    SourceConnection,
    Trigger,
)
from connector.domain.errors import ConfigError
from connector.domain.ids import (
    ClientKey,
    ConfigRevision,
    LedgerCustomerId,
    MilestoneDefId,
    PlanId,
    SourceId,
    TenantId,
)
from connector.domain.model import TriggerKind, normalise_status
from connector.domain.money import Money, is_known_currency, minor_units
from mappings.positions import KeyLines, PathSegment, render_path
from mappings.schema import ConfigSchema, MatchSchema, PlanSchema

_SECRET_KEY = re.compile(
    r"^(token|secret|password|passwd|api_?key|access_?key|client_secret|secret_key|"
    r"signing_key|webhook_secret|refresh_token|access_token)$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path or "(file)"
        return f"{where}{f' (line {self.line})' if self.line else ''}: {self.message}"


class ConfigErrors(ConfigError):
    """Every problem of one config file, each with its key path and line."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        count = len(self.issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''} in the mapping config\n{lines}"
        )


def load_config(path: str | Path) -> AppConfig:
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{target}: no such config file: create one with `milestone-sync init {target}`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read the config: {exc}") from None
    return load_config_text(text, str(target))


def load_config_text(text: str, source_name: str) -> AppConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        raise ConfigErrors(
            source_name,
            [
                ConfigIssue(
                    "",
                    int(match.group(1)) if match else None,
                    f"not valid TOML: {exc}; fix the syntax (quote text values, one key per line)",
                )
            ],
        ) from None
    lines = KeyLines.scan(text)
    issues: list[ConfigIssue] = []

    def report(path: Sequence[PathSegment], message: str) -> None:
        issues.append(ConfigIssue(render_path(path), lines.nearest(path), message))

    schema: ConfigSchema | None = None
    try:
        schema = ConfigSchema.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            report(loc, _message(error, loc))
    if schema is not None:
        _check(schema, report)
    else:
        _check_plans_individually(data, report)
    if issues:
        raise ConfigErrors(source_name, _dedupe(issues))
    assert schema is not None
    return _build(schema, _revision(data))


# --------------------------------------------------------------------------- messages


def _message(error: Any, loc: tuple[PathSegment, ...]) -> str:
    kind = error["type"]
    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        if _SECRET_KEY.match(key):
            return (
                f"secrets never go in the config file: name the environment variable "
                f'instead, e.g. {key}_env = "{key.upper()}_ENV_NAME"'.replace("_ENV_NAME", "")
            )
        return f"unknown key {key!r}: check the spelling (see config.example.toml)"
    if kind == "missing":
        return f"required key {key!r} is missing"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for issue in issues:
        if (issue.path, issue.message) not in seen:
            seen.add((issue.path, issue.message))
            unique.append(issue)
    return unique


# --------------------------------------------------------------------------- cross-key checks

Report = Any  # Callable[[Sequence[PathSegment], str], None]


def _check_plans_individually(data: dict[str, Any], report: Report) -> None:
    """When the file as a whole is invalid, still check each plan that is valid on its own."""
    plans = data.get("plans")
    if not isinstance(plans, list):
        return
    firm = data.get("firm")
    currency = firm.get("currency") if isinstance(firm, dict) else None
    if not isinstance(currency, str):
        currency = None
    for i, raw in enumerate(plans):
        try:
            plan = PlanSchema.model_validate(raw)
        except ValidationError:
            if isinstance(raw, dict) and not raw.get("milestones"):
                report(("plans", i, "milestones"), f"plan {raw.get('id')!r} has no milestones: "
                       "add at least one [[plans.milestones]]")
            continue
        _check_plan(i, plan, currency, report)


def _check(schema: ConfigSchema, report: Report) -> None:
    firm_currency = schema.firm.currency
    source_ids = [s.id for s in schema.sources]
    _duplicates([("sources", i, s.id) for i, s in enumerate(schema.sources)], "source", report)
    _duplicates([("plans", i, p.id) for i, p in enumerate(schema.plans)], "plan", report)
    _duplicates([("ignore", i, r.id) for i, r in enumerate(schema.ignore)], "ignore rule", report)
    for i, plan in enumerate(schema.plans):
        _check_plan(i, plan, firm_currency, report)
        if plan.match.source is not None and plan.match.source not in source_ids:
            report(
                ("plans", i, "match", "source"),
                f"no source has id {plan.match.source!r}: use one of {source_ids}",
            )
    for i, rule in enumerate(schema.ignore):
        if rule.match.is_empty():
            report(
                ("ignore", i, "match"),
                "an ignore rule must match something: an empty match would ignore all work",
            )
    _check_ambiguity(schema.plans, report)
    plan_ids = {p.id: p for p in schema.plans}
    for key, client in schema.clients.items():
        for plan_id, fee in client.fees.items():
            if plan_id not in plan_ids:
                report(
                    ("clients", key, "fees", plan_id),
                    f"no plan has id {plan_id!r}: use one of {sorted(plan_ids)}",
                )
                continue
            plan = plan_ids[plan_id]
            currency = client.currency or plan.currency or firm_currency
            _money(fee, currency, ("clients", key, "fees", plan_id), report)


def _check_plan(i: int, plan: PlanSchema, firm_currency: str | None, report: Report) -> None:
    where: tuple[PathSegment, ...] = ("plans", i)
    currency = plan.currency or firm_currency
    if currency is not None and not is_known_currency(currency):
        currency = None  # reported on its own key
    if not plan.milestones:
        report(
            (*where, "milestones"),
            f"plan {plan.id!r} has no milestones: add at least one [[plans.milestones]]",
        )
        return
    _duplicates(
        [(*where, "milestones", j, m.id) for j, m in enumerate(plan.milestones)],
        "milestone",
        report,
    )
    remainders = [j for j, m in enumerate(plan.milestones) if m.remainder]
    percents = [m.percent for m in plan.milestones if m.percent is not None]
    fixed = [(j, m.amount) for j, m in enumerate(plan.milestones) if m.amount is not None]
    if len(remainders) > 1:
        report(
            (*where, "milestones", remainders[1], "remainder"),
            "only one milestone of a plan can take the remainder",
        )
    if percents and not remainders and fixed:
        report(
            (*where, "milestones"),
            "fixed amounts and percentages cannot sum exactly to the fee: add a milestone "
            "with remainder = true, or use only percentages",
        )
    total = sum(percents, Decimal(0))
    if percents and not remainders and not fixed and total != 100:
        report(
            (*where, "milestones"),
            f"percentages total {total}, not 100: fix them or give "
            "the last milestone remainder = true",
        )
    if remainders and total > 100:
        report((*where, "milestones"), f"percentages total {total}: more than the whole fee")
    if currency is not None:
        fee = _money(plan.fee, currency, (*where, "fee"), report) if plan.fee is not None else None
        fixed_money = [
            _money(a, currency, (*where, "milestones", j, "amount"), report) for j, a in fixed
        ]
        known = [m for m in fixed_money if m is not None]
        if fee is not None and known:
            fixed_total = sum((m.amount for m in known), Decimal(0))
            if not percents and not remainders and fixed_total != fee.amount:
                report(
                    (*where, "fee"),
                    f"the fixed amounts sum to {fixed_total} {currency} but "
                    f"the fee is {fee}: make them agree, or drop the fee",
                )
            if remainders and fixed_total > fee.amount:
                report(
                    (*where, "milestones"),
                    f"the fixed amounts ({fixed_total} {currency}) exceed the fee {fee}",
                )
    if plan.recurring and (percents or remainders) and plan.fee is None:
        report(
            (*where, "fee"),
            "a recurring plan billed by percentage or remainder needs a "
            'fee per period, e.g. fee = "450.00"',
        )
    if plan.match.is_empty() and not plan.recurring:
        report(
            (*where, "match"),
            'a plan must match something, e.g. match = { work_type = "Tax Return" }',
        )


def _money(
    amount: Decimal, currency: str, path: tuple[PathSegment, ...], report: Report
) -> Money | None:
    try:
        return Money(amount, currency)
    except ValueError:
        report(path, f"{amount} has more decimals than {currency} allows ({minor_units(currency)})")
        return None


def _duplicates(entries: list[tuple[Any, ...]], what: str, report: Report) -> None:
    seen: dict[str, tuple[Any, ...]] = {}
    for entry in entries:
        *path, ident = entry
        if ident in seen:
            report(
                (*path, "id"),
                f"duplicate {what} id {ident!r} (also at "
                f"{render_path(seen[ident])}): ids must be unique",
            )
        else:
            seen[ident] = tuple(path)


def _match_signature(match: MatchSchema) -> tuple[Any, ...]:
    return (
        match.source,
        normalise_status(match.work_type) if match.work_type else None,
        normalise_status(match.template) if match.template else None,
        match.title_pattern,
        tuple(sorted(match.clients)),
    )


def _check_ambiguity(plans: Sequence[PlanSchema], report: Report) -> None:
    seen: dict[tuple[Any, ...], tuple[int, PlanSchema]] = {}
    for i, plan in enumerate(plans):
        signature = (_match_signature(plan.match), plan.priority, plan.recurring is not None)
        if signature in seen:
            _j, other = seen[signature]
            report(
                ("plans", i, "match"),
                f"plans {other.id!r} and {plan.id!r} match the same engagements at the same "
                "priority: narrow one match, or give one a higher priority",
            )
        else:
            seen[signature] = (i, plan)


# --------------------------------------------------------------------------- build


def _revision(data: dict[str, Any]) -> ConfigRevision:
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return ConfigRevision(hashlib.sha256(blob.encode()).hexdigest()[:12])


def _matcher(match: MatchSchema) -> Matcher:
    return Matcher(
        source=SourceId(match.source) if match.source else None,
        work_type=match.work_type,
        template=match.template,
        title_pattern=match.title_pattern,
        clients=tuple(ClientKey(c) for c in match.clients),
    )


def _trigger(plan_milestone: Any) -> Trigger:
    t = plan_milestone.trigger
    if t.close_status is not None:
        return Trigger(TriggerKind.CLOSE_STATUS, t.close_status)
    if t.section_done is not None:
        return Trigger(TriggerKind.SECTION_DONE, t.section_done)
    return Trigger(TriggerKind.STATUS, t.status, t.secondary)


def _build(schema: ConfigSchema, revision: ConfigRevision) -> AppConfig:
    firm_currency = schema.firm.currency
    defaults = InvoiceTerms(
        item=schema.defaults.item,
        tax_code=schema.defaults.tax_code,
        terms=schema.defaults.terms,
        send_invoice=schema.defaults.send_invoice,
    )
    plans = []
    for p in schema.plans:
        currency = p.currency or firm_currency
        milestones = []
        for m in p.milestones:
            rule: AmountRule
            if m.amount is not None:
                rule = FixedAmount(Money(m.amount, currency))
            elif m.percent is not None:
                rule = PercentOfFee(m.percent)
            else:
                rule = Remainder()
            milestones.append(
                MilestoneDef(MilestoneDefId(m.id), m.name, _trigger(m), rule, m.offset_days)
            )
        invoice = p.invoice
        plans.append(
            Plan(
                id=PlanId(p.id),
                name=p.name,
                match=_matcher(p.match),
                milestones=tuple(milestones),
                priority=p.priority,
                recurring=p.recurring,
                fee=Money(p.fee, currency) if p.fee is not None else None,
                currency=p.currency,
                collection_mode=p.collection_mode,
                invoice=InvoiceTerms(
                    item=invoice.item if invoice and invoice.item else defaults.item,
                    tax_code=invoice.tax_code
                    if invoice and invoice.tax_code
                    else defaults.tax_code,
                    terms=invoice.terms if invoice and invoice.terms else defaults.terms,
                    send_invoice=invoice.send_invoice
                    if invoice and invoice.send_invoice is not None
                    else defaults.send_invoice,
                ),
                price_increase=PriceIncrease(
                    p.price_increase.percent,
                    p.price_increase.anniversary,
                    p.price_increase.notice_days,
                )
                if p.price_increase
                else None,
                description=p.description,
            )
        )
    plan_currency = {p.id: p.currency or firm_currency for p in schema.plans}
    clients = {
        ClientKey(key): ClientOverride(
            key=ClientKey(key),
            fees={
                PlanId(pid): Money(fee, c.currency or plan_currency[pid])
                for pid, fee in c.fees.items()
            },
            collection_mode=c.collection_mode,
            ledger_customer_id=LedgerCustomerId(c.ledger_customer_id)
            if c.ledger_customer_id
            else None,
            terms=c.terms,
            tax_code=c.tax_code,
            item=c.item,
            currency=c.currency,
        )
        for key, c in schema.clients.items()
    }
    return AppConfig(
        firm=FirmConfig(
            TenantId(schema.firm.id), schema.firm.name, firm_currency, schema.firm.timezone
        ),
        revision=revision,
        sources=tuple(
            SourceConnection(
                SourceId(s.id), s.kind, s.base_url, dict(s.secret_env), dict(s.options)
            )
            for s in schema.sources
        ),
        ledger=LedgerConnection(
            schema.ledger.kind,
            schema.ledger.base_url,
            dict(schema.ledger.secret_env),
            dict(schema.ledger.options),
        ),
        payments=PaymentsConnection(
            schema.payments.kind, schema.payments.base_url, dict(schema.payments.secret_env)
        ),
        plans=tuple(plans),
        database_url=schema.database.url,
        ignore=tuple(IgnoreRule(r.id, _matcher(r.match), r.reason) for r in schema.ignore),
        clients=clients,
        defaults=defaults,
        collection=CollectionPolicy(
            schema.collection.default_mode, tuple(schema.collection.retry_days)
        ),
        schedule=ScheduleConfig(
            schema.schedule.poll_seconds,
            schema.schedule.invoice_seconds,
            schema.schedule.collect_seconds,
            schema.schedule.reconcile_seconds,
        ),
    )
