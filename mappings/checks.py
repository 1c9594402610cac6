"""Rules that span several keys of the config: totals, duplicates, ambiguity and references.

They run on whatever parts of the file passed the schema, so one broken plan does not hide the
problems of the others. Each problem is a key path and a message saying what to change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from connector.config import PaymentsKind
from connector.domain.model import CollectionMode, normalise_status
from connector.domain.money import Money, minor_units
from mappings.positions import KeyPath
from mappings.schema import (
    ClientSchema,
    CollectionSchema,
    FirmSchema,
    IgnoreSchema,
    LedgerSchema,
    PaymentsSchema,
    PlanSchema,
    SourceSchema,
)

Problem = tuple[KeyPath, str]


@dataclass
class ConfigParts:
    """The parts of a config file that passed the schema, with their positions.

    `*_ids` hold every id written in the file, valid item or not, so references to an item
    with an unrelated mistake are not reported as unknown. `partial_plans` are broken plans
    with their broken keys set aside (placeholders instead): only their milestones are checked.
    """

    firm: FirmSchema | None = None
    sources: list[tuple[int, SourceSchema]] = field(default_factory=list)
    payments: PaymentsSchema | None = None
    ledger: LedgerSchema | None = None
    collection: CollectionSchema | None = None
    plans: list[tuple[int, PlanSchema]] = field(default_factory=list)
    partial_plans: list[tuple[int, PlanSchema]] = field(default_factory=list)
    ignore: list[tuple[int, IgnoreSchema]] = field(default_factory=list)
    clients: dict[str, ClientSchema] = field(default_factory=dict)
    source_ids: list[tuple[int, str]] = field(default_factory=list)
    plan_ids: list[tuple[int, str]] = field(default_factory=list)
    ignore_ids: list[tuple[int, str]] = field(default_factory=list)
    sources_written: bool = False


def check(parts: ConfigParts) -> list[Problem]:
    """Every cross-key problem of the config, in no particular order."""
    problems: list[Problem] = []
    problems += _check_sources(parts)
    problems += _duplicates("plans", "plan", parts.plan_ids)
    problems += _duplicates("ignore", "ignore rule", parts.ignore_ids)
    problems += _shared_rule_ids(parts)
    for index, plan in parts.plans:
        problems += _check_plan(index, plan, parts)
    for index, plan in parts.partial_plans:
        problems += _check_plan(index, plan, parts, partial=True)
    problems += _check_ambiguity(parts.plans)
    problems += _check_ignore_rules(parts)
    problems += _check_clients(parts)
    problems += _check_collection(parts)
    problems += _check_ledger(parts)
    return problems


# --------------------------------------------------------------------------- ids and sources


def _duplicates(section: str, noun: str, ids: Sequence[tuple[int, str]]) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for index, ident in ids:
        if ident in first:
            yield (
                (section, index, "id"),
                f"duplicate {noun} id '{ident}' (also {section}[{first[ident]}]): ids must be "
                "unique",
            )
        else:
            first[ident] = index


def _shared_rule_ids(parts: ConfigParts) -> Iterator[Problem]:
    plan_ids = {ident: index for index, ident in parts.plan_ids}
    for index, ident in parts.ignore_ids:
        if ident in plan_ids:
            yield (
                ("ignore", index, "id"),
                f"ignore rule id '{ident}' is also the id of plans[{plan_ids[ident]}]: plans and "
                "ignore rules share one set of rule ids",
            )


def _check_sources(parts: ConfigParts) -> Iterator[Problem]:
    if not parts.sources_written:
        yield (
            ("sources",),
            'no [[sources]]: add one, e.g. [[sources]] id = "karbon" kind = "karbon" '
            'token_env = "KARBON_TOKEN"',
        )
    yield from _duplicates("sources", "source", parts.source_ids)
    yield from _check_source_settings(parts)
    known = {ident for _, ident in parts.source_ids}
    for section, rules in (("plans", parts.plans), ("ignore", parts.ignore)):
        for index, rule in rules:
            source = rule.match.source
            if source is not None and source not in known:
                yield (
                    (section, index, "match", "source"),
                    f"no [[sources]] has id '{source}': use one of "
                    f"{_names(sorted(known)) or '(none configured)'}",
                )


# options each source kind reads, and the secrets (`<name>_env`) it needs or may take
SOURCE_OPTIONS: dict[str, frozenset[str]] = {
    "karbon": frozenset(
        {"sweep_minutes", "budget_per_minute", "backfill_from", "check_karbon_billing"}
    ),
    "keeper": frozenset({"backfill_from"}),
    "memory": frozenset({"work_file"}),
    "webhook": frozenset(),
    "csv": frozenset(),
}
SOURCE_SECRETS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "karbon": (frozenset({"token", "access_key"}), frozenset({"signing_key"})),
    "keeper": (frozenset({"token"}), frozenset({"webhook_secret"})),
    "memory": (frozenset(), frozenset()),
    "webhook": (frozenset({"webhook_secret"}), frozenset()),
    "csv": (frozenset(), frozenset()),
}


def _check_source_settings(parts: ConfigParts) -> Iterator[Problem]:
    for index, source in parts.sources:
        kind = str(source.kind)
        allowed = SOURCE_OPTIONS.get(kind, frozenset())
        for name in sorted(set(source.options) - allowed):
            yield (
                ("sources", index, "options", name),
                f"kind {kind} has no option '{name}'"
                + (f": use one of {_names(sorted(allowed))}" if allowed else ""),
            )
        required, optional = SOURCE_SECRETS.get(kind, (frozenset(), frozenset()))
        for name in sorted(required - set(source.secret_env)):
            yield (
                ("sources", index),
                f'kind {kind} needs {name}_env = "ENV_VAR" naming the environment variable '
                f"that holds its {name.replace('_', ' ')}",
            )
        for name in sorted(set(source.secret_env) - required - optional):
            yield (
                ("sources", index, f"{name}_env"),
                f"kind {kind} does not use {name}_env"
                + (
                    f": it takes {_names(sorted(f'{n}_env' for n in required | optional))}"
                    if required | optional
                    else ""
                ),
            )
        if kind == "keeper" and not source.base_url:
            yield (
                ("sources", index),
                "kind keeper needs base_url, the close-checklist API address",
            )


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"'{item}'" for item in items)


# --------------------------------------------------------------------------- plans


def _plan_currency(plan: PlanSchema, firm: FirmSchema | None) -> str | None:
    return plan.currency or (firm.currency if firm else None)


def _fits(amount: Decimal, currency: str | None) -> str | None:
    """Why `amount` cannot be money in `currency`, or None when it can (or currency unknown)."""
    if currency is None:
        return None
    try:
        Money(amount, currency)
    except ValueError:
        places = minor_units(currency)
        unit = "no decimal places" if places == 0 else f"at most {places} decimal places"
        return f"{amount} has too many decimal places: {currency} amounts take {unit}"
    return None


def _check_plan(
    index: int, plan: PlanSchema, parts: ConfigParts, *, partial: bool = False
) -> Iterator[Problem]:
    """A plan's milestones (their ids, amount rules and totals), then its pricing.

    A `partial` plan had broken keys set aside: only its milestones are checked.
    """
    at: KeyPath = ("plans", index)
    named = not partial or any(ident == plan.id for i, ident in parts.plan_ids if i == index)
    name = f"plan '{plan.id}'" if named else f"plans[{index}]"
    milestones = plan.milestones
    if not milestones:
        yield (
            (*at, "milestones"),
            f"{name} has no milestones: add at least one [[plans.milestones]] with an id, "
            "name, trigger and amount",
        )
        return

    seen: dict[str, int] = {}
    for j, milestone in enumerate(milestones):
        if milestone.id in seen:
            yield (
                (*at, "milestones", j, "id"),
                f"duplicate milestone id '{milestone.id}' in {name} "
                f"(also milestones[{seen[milestone.id]}])",
            )
        else:
            seen[milestone.id] = j

    remainders = [j for j, m in enumerate(milestones) if m.remainder]
    for j in remainders[1:]:
        yield (
            (*at, "milestones", j, "remainder"),
            f"{name} has more than one remainder milestone ('{milestones[remainders[0]].id}' and "
            f"'{milestones[j].id}'): only one can take what the others leave",
        )

    fixed = [m.amount for m in milestones if m.amount is not None]
    percents = [m.percent for m in milestones if m.percent is not None]
    percent_total = sum(percents, Decimal(0))
    needs_fee = bool(percents or remainders)

    if percents and not fixed and not remainders and percent_total != 100:
        yield (
            (*at, "milestones"),
            f"the percentages of {name} total {percent_total}, not 100: adjust them, or make the "
            "last milestone remainder = true",
        )
    if fixed and percents and not remainders:
        yield (
            (*at, "milestones"),
            f"{name} mixes fixed amounts and percentages without a remainder milestone, so its "
            "milestones cannot add up to the fee exactly: make one milestone remainder = true",
        )
    if remainders and percent_total >= 100:
        yield (
            (*at, "milestones"),
            f"the percentages of {name} total {percent_total}, leaving nothing for the remainder "
            f"milestone '{milestones[remainders[0]].id}'",
        )
    if partial:
        return

    currency = _plan_currency(plan, parts.firm)
    for j, milestone in enumerate(milestones):
        if milestone.amount is not None and (why := _fits(milestone.amount, currency)):
            yield (*at, "milestones", j, "amount"), why
    if plan.fee is not None and (why := _fits(plan.fee, currency)):
        yield (*at, "fee"), why

    if needs_fee and plan.recurring is not None and plan.fee is None:
        yield (
            (*at, "fee"),
            f"recurring {name} needs a fee: closes carry no fee of their own, so set "
            'fee = "450.00" on the plan (a client may override it under [clients."KEY"].fees)',
        )
    if not needs_fee and plan.fee is not None and plan.fee != sum(fixed, Decimal(0)):
        yield (
            (*at, "fee"),
            f"every milestone of {name} has a fixed amount, and they total {sum(fixed, Decimal(0))}"
            f", not the fee {plan.fee}: correct the fee or the amounts (or remove the fee)",
        )
    if remainders and plan.fee is not None and percent_total < 100:
        taken = sum(fixed, Decimal(0)) + plan.fee * percent_total / 100
        if taken > plan.fee:
            yield (
                (*at, "milestones"),
                f"the fixed amounts and percentages of {name} come to {taken.quantize(plan.fee)}"
                f", more than its fee {plan.fee}, leaving a negative remainder",
            )

    if plan.price_increase is not None:
        if not needs_fee:
            yield (
                (*at, "price_increase"),
                f"price_increase raises a plan's fee, but every milestone of {name} has a fixed "
                "amount: use percent or remainder milestones with a plan fee",
            )
        elif plan.fee is None:
            yield (
                (*at, "price_increase"),
                f'price_increase raises the plan\'s fee: set fee = "1500.00" on {name} (fees '
                "taken from the practice source are not increased)",
            )


def _match_key(plan: PlanSchema) -> tuple[object, ...]:
    match = plan.match
    return (
        plan.recurring is not None,
        plan.priority,
        match.source,
        normalise_status(match.work_type) if match.work_type else None,
        normalise_status(match.template) if match.template else None,
        match.title_pattern,
        frozenset(match.clients),
    )


def _check_ambiguity(plans: Sequence[tuple[int, PlanSchema]]) -> Iterator[Problem]:
    first: dict[tuple[object, ...], tuple[int, PlanSchema]] = {}
    for index, plan in plans:
        key = _match_key(plan)
        if key in first:
            other_index, other = first[key]
            yield (
                ("plans", index, "match"),
                f"plans '{other.id}' (plans[{other_index}]) and '{plan.id}' (plans[{index}]) match "
                f"the same engagements at priority {plan.priority}, so neither can win: narrow "
                "one plan's match or give one a higher priority",
            )
        else:
            first[key] = (index, plan)


def _check_ignore_rules(parts: ConfigParts) -> Iterator[Problem]:
    for index, rule in parts.ignore:
        if rule.match.is_empty():
            yield (
                ("ignore", index, "match"),
                f"ignore rule '{rule.id}' has an empty match and would ignore every engagement: "
                "name a work_type, template, title_pattern, clients or source",
            )


# --------------------------------------------------------------------------- clients, collection


def _check_clients(parts: ConfigParts) -> Iterator[Problem]:
    written = {ident for _, ident in parts.plan_ids}
    plans = {plan.id: plan for _, plan in parts.plans}
    for key, client in parts.clients.items():
        for plan_id, fee in client.fees.items():
            at: KeyPath = ("clients", key, "fees", plan_id)
            if plan_id not in written:
                yield (
                    at,
                    f"client '{key}' has a fee for unknown plan '{plan_id}': use one of "
                    f"{_names(sorted(written)) or '(no plans configured)'}",
                )
                continue
            plan = plans.get(plan_id)
            if plan is None:
                continue  # the plan itself is broken and reported
            if plan.milestones and all(m.amount is not None for m in plan.milestones):
                yield (
                    at,
                    f"client '{key}' has a fee for plan '{plan_id}', but every milestone of that "
                    "plan has a fixed amount, so the fee would be ignored",
                )
            currency = client.currency or _plan_currency(plan, parts.firm)
            if why := _fits(fee, currency):
                yield at, why


def _check_collection(parts: ConfigParts) -> Iterator[Problem]:
    payments = parts.payments
    if payments is None:
        return
    if payments.kind is PaymentsKind.STRIPE and "secret_key" not in payments.secret_env:
        yield (
            ("payments",),
            "stripe needs its secret key: name the environment variable, e.g. "
            'secret_key_env = "STRIPE_SECRET_KEY"',
        )
    kind = str(payments.kind)
    allowed = PAYMENT_OPTIONS.get(kind, frozenset())
    for name in sorted(set(payments.options) - allowed):
        yield (
            ("payments", "options", name),
            f"payments kind {kind} has no option '{name}'"
            + (f": use one of {_names(sorted(allowed))}" if allowed else ""),
        )
    secrets = PAYMENT_SECRETS.get(kind, frozenset())
    for name in sorted(set(payments.secret_env) - secrets):
        yield (("payments", f"{name}_env"), f"payments kind {kind} does not use {name}_env")
    if payments.kind is not PaymentsKind.NONE:
        return
    auto: list[KeyPath] = []
    if parts.collection and parts.collection.default_mode is CollectionMode.AUTO_CHARGE:
        auto.append(("collection", "default_mode"))
    auto += [
        ("plans", index, "collection_mode")
        for index, plan in parts.plans
        if plan.collection_mode is CollectionMode.AUTO_CHARGE
    ]
    auto += [
        ("clients", key, "collection_mode")
        for key, client in parts.clients.items()
        if client.collection_mode is CollectionMode.AUTO_CHARGE
    ]
    for at in auto:
        yield (
            at,
            'auto_charge needs a payment gateway, but [payments] kind = "none": configure '
            'kind = "stripe" or use invoice_only',
        )


PAYMENT_OPTIONS: dict[str, frozenset[str]] = {
    "stripe": frozenset({"success_url", "cancel_url"}),
    "memory": frozenset(),
    "none": frozenset(),
}
PAYMENT_SECRETS: dict[str, frozenset[str]] = {
    "stripe": frozenset({"secret_key", "webhook_secret"}),
    "memory": frozenset(),
    "none": frozenset(),
}


# --------------------------------------------------------------------------- ledger

_POSTING_OPTIONS = frozenset({"batch_from", "invoice_number"})
# the accounts the money trail moves through (clearing_account: payments; see docs/ledgers.md)
_TRAIL_OPTIONS = frozenset({"clearing_account", "bank_account", "fee_account", "disputes_account"})
# read by adapters/oauth (connect: the redirect URI registered for the app; scopes replacing
# the defaults, space-separated)
_OAUTH_OPTIONS = frozenset({"redirect_uri", "scopes"})
LEDGER_OPTIONS: dict[str, frozenset[str]] = {
    "quickbooks": _POSTING_OPTIONS
    | _OAUTH_OPTIONS
    | _TRAIL_OPTIONS
    | {
        "realm_id",
        "minorversion",
        "environment",
        "clearing_account",
        "fee_vendor",
        "class",
        "department",
        "timeout_seconds",
    },
    "xero": _POSTING_OPTIONS
    | _OAUTH_OPTIONS
    | _TRAIL_OPTIONS
    | {
        "tenant_id",
        "sales_account",
        "returns_account",
        "fee_tax_type",
        "gateway_contact",
        "clearing_account",
        "line_amount_types",
        "tracking",
        "timeout_seconds",
    },
    "memory": _POSTING_OPTIONS,
}
LEDGER_SECRETS: dict[str, frozenset[str]] = {
    "quickbooks": frozenset({"client_id", "client_secret"}),
    "xero": frozenset({"client_id", "client_secret"}),
    "memory": frozenset(),
}
# optional secrets: the webhook signing keys (QBO's verifier token, Xero's webhook key)
LEDGER_OPTIONAL_SECRETS: dict[str, frozenset[str]] = {
    "quickbooks": frozenset({"webhook_verifier"}),
    "xero": frozenset({"webhook_key"}),
    "memory": frozenset(),
}
# the longest invoice number each ledger stores (QBO DocNumber: 21 characters)
NUMBER_LIMITS = {"quickbooks": 21, "xero": 255, "memory": 255}
_CHOICES = {
    ("quickbooks", "environment"): ("production", "sandbox"),
    ("xero", "line_amount_types"): ("Exclusive", "Inclusive", "NoTax"),
}


def _check_ledger(parts: ConfigParts) -> Iterator[Problem]:
    ledger = parts.ledger
    if ledger is None:
        return
    kind = str(ledger.kind)
    allowed = LEDGER_OPTIONS.get(kind, frozenset())
    for name in sorted(set(ledger.options) - allowed):
        yield (
            ("ledger", "options", name),
            f"ledger kind {kind} has no option '{name}'"
            + (f": use one of {_names(sorted(allowed))}" if allowed else ""),
        )
    needed = LEDGER_SECRETS.get(kind, frozenset())
    for name in sorted(needed - set(ledger.secret_env)):
        yield (
            ("ledger",),
            f'ledger kind {kind} needs {name}_env = "ENV_VAR" naming the environment variable '
            f"that holds its OAuth {name.replace('_', ' ')} (from the app's developer portal)",
        )
    optional = LEDGER_OPTIONAL_SECRETS.get(kind, frozenset())
    for name in sorted(set(ledger.secret_env) - needed - optional):
        yield (("ledger", f"{name}_env"), f"ledger kind {kind} does not use {name}_env")
    options = ledger.options
    for (for_kind, name), choices in _CHOICES.items():
        if for_kind == kind and name in options and options[name] not in choices:
            yield (("ledger", "options", name), f"use one of {_names(choices)}")
    for name in ("minorversion", "timeout_seconds"):
        value = options.get(name)
        if value is not None and not (value.isdigit() and int(value) > 0):
            yield (("ledger", "options", name), f"{value!r} must be a whole number above 0")
    if options.get("minorversion", "75").isdigit() and int(options.get("minorversion", "75")) < 75:
        yield (
            ("ledger", "options", "minorversion"),
            "QuickBooks ignores minor versions below 75 since August 2025: use 75 or above",
        )
    batch_from = options.get("batch_from")
    if (
        batch_from is not None
        and batch_from != "off"
        and not (batch_from.isdigit() and int(batch_from) >= 2)
    ):
        yield (
            ("ledger", "options", "batch_from"),
            f"{batch_from!r}: give the number of due invoices (2 or more) from which they are "
            'posted in batches, or "off"',
        )
    template = options.get("invoice_number")
    if template is not None:
        yield from _check_number_template(kind, template)


def _check_number_template(kind: str, template: str) -> Iterator[Problem]:
    at: KeyPath = ("ledger", "options", "invoice_number")
    if "{seq" not in template:
        yield at, f'{template!r} must contain {{seq}}, e.g. "MS-{{seq:05d}}"'
        return
    try:
        widest = template.format(seq=9_999_999)
    except (KeyError, IndexError, ValueError) as exc:
        yield at, f'{template!r} is not a valid number template ({exc}): e.g. "MS-{{seq:05d}}"'
        return
    limit = NUMBER_LIMITS.get(kind, 255)
    if len(widest) > limit:
        yield at, f"{template!r} makes numbers like {widest!r}, longer than {kind}'s {limit}"
