"""`milestone-sync check --ledger`: before anything is posted, what the mapping config and the
known work depend on in the ledger (customers, items, tax codes, terms, currencies, the
connection's accounts), checked against the ledger itself. Writes nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from connector.config import AppConfig, InvoiceTerms, Matched
from connector.ports import LedgerNeeds, LedgerProblem, NeedKind, PracticeSource
from connector.services import SyncService
from scheduler.dryrun import DryRunGateway, DryRunLedger, scratch_copy


@dataclass
class Preflight:
    engagements: int
    needs: LedgerNeeds
    problems: list[LedgerProblem]
    used_by: dict[tuple[NeedKind, str], list[str]]
    unmapped_clients: list[str]  # "CL-1 (Acme LLC, 2 work items)"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unmapped_clients


def _terms_uses(terms: InvoiceTerms, where: str) -> Iterable[tuple[NeedKind, str, str]]:
    if terms.item:
        yield NeedKind.ITEM, terms.item, where
    if terms.tax_code:
        yield NeedKind.TAX_CODE, terms.tax_code, where
    if terms.terms:
        yield NeedKind.TERMS, terms.terms, where


def config_uses(config: AppConfig) -> list[tuple[NeedKind, str, str]]:
    """Every ledger reference written in the config, with where it is written."""
    uses = list(_terms_uses(config.defaults, "[defaults]"))
    uses.append((NeedKind.CURRENCY, config.firm.currency, "[firm] currency"))
    for plan in config.plans:
        uses += _terms_uses(plan.invoice, f"plan {plan.id}")
        if plan.currency:
            uses.append((NeedKind.CURRENCY, plan.currency, f"plan {plan.id}"))
    for key, client in config.clients.items():
        where = f'[clients."{key}"]'
        if client.ledger_customer_id:
            uses.append((NeedKind.CUSTOMER, client.ledger_customer_id, where))
        for kind, value in (
            (NeedKind.ITEM, client.item),
            (NeedKind.TAX_CODE, client.tax_code),
            (NeedKind.TERMS, client.terms),
            (NeedKind.CURRENCY, client.currency),
        ):
            if value:
                uses.append((kind, value, where))
    return uses


def run_preflight(application: Any, real_store: Any) -> Preflight:
    """Poll the sources into a scratch copy of the state (nothing is stored), resolve every
    known engagement's plan, and ask the ledger about everything they and the config name."""
    config: AppConfig = application.config
    ledger = application.adapters.ledger
    if ledger is None:
        from connector.domain.errors import ConfigError

        raise ConfigError(application.adapters.ledger_problem or "no ledger is configured")
    sources: list[PracticeSource] = application.adapters.sources
    scratch = scratch_copy(
        (lambda: real_store.unit_of_work(application.tenant)) if real_store else None,
        application.tenant,
        [s.source_id for s in sources],
    )
    dry = SyncService(
        tenant=application.tenant,
        uow=lambda: scratch.unit_of_work(application.tenant),
        sources=sources,
        ledger=DryRunLedger(ledger),
        gateway=DryRunGateway(None),
        mapper=application.mapper,
        clock=application.clock,
    )
    notes = [f"work not read from the practice system: {p}" for p in dry.poll_sources().problems]
    with scratch.unit_of_work(application.tenant) as uow:
        engagements = uow.engagements.list()
    today = application.clock.now().date()
    uses = config_uses(config)
    missing_customer: dict[str, tuple[str, int]] = {}
    for engagement in engagements:
        resolution = application.mapper.resolve(engagement, None, today)
        if not isinstance(resolution, Matched):
            continue
        where = f"client {engagement.client_key} ({engagement.client_name})"
        if resolution.ledger_customer_id is None:
            name, count = missing_customer.get(engagement.client_key, (engagement.client_name, 0))
            missing_customer[engagement.client_key] = (name, count + 1)
        else:
            uses.append((NeedKind.CUSTOMER, resolution.ledger_customer_id, where))
        uses += _terms_uses(resolution.invoice, where)
        for priced in resolution.milestones[:1]:
            uses.append((NeedKind.CURRENCY, priced.amount.currency, where))
    used_by: dict[tuple[NeedKind, str], list[str]] = defaultdict(list)
    for kind, value, where in uses:
        if where not in used_by[(kind, value)]:
            used_by[(kind, value)].append(where)

    def values(kind: NeedKind) -> frozenset[str]:
        return frozenset(value for k, value in used_by if k is kind)

    needs = LedgerNeeds(
        customers=values(NeedKind.CUSTOMER),
        items=values(NeedKind.ITEM),
        tax_codes=values(NeedKind.TAX_CODE),
        terms=values(NeedKind.TERMS),
        currencies=values(NeedKind.CURRENCY),
    )
    problems = list(ledger.check(needs))
    unmapped = [
        f"{key} ({name}, {count} work item{'s' if count != 1 else ''}): set "
        f'[clients."{key}"] ledger_customer_id, or the client\'s external key in the practice '
        "system"
        for key, (name, count) in sorted(missing_customer.items())
    ]
    return Preflight(len(engagements), needs, problems, dict(used_by), unmapped, notes)
