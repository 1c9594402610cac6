"""Read the admin's TOML config, validate all of it, and build the frozen `AppConfig`.

Every problem is reported at once, each with its key path and line, in one `ConfigErrors`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

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
    NotificationsConnection,
    PaymentsConnection,
    PercentOfFee,
    Plan,
    PriceIncrease,
    Remainder,
    ScheduleConfig,
    ServerConfig,
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
from connector.domain.model import TriggerKind
from connector.domain.money import Money
from mappings.checks import ConfigParts, Problem, check
from mappings.positions import KeyLines, KeyPath, PathSegment, render_path
from mappings.schema import (
    ENV_SUFFIX,
    ClientSchema,
    CollectionSchema,
    ConfigSchema,
    FirmSchema,
    IgnoreSchema,
    LedgerSchema,
    MatchSchema,
    MilestoneSchema,
    PaymentsSchema,
    PlanSchema,
    SourceSchema,
    toml_type_name,
)

REVISION_CHARS = 12


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the config: where it is and what to change."""

    path: str  # e.g. "plans[1].milestones[0].percent"; "" for the file as a whole
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        what = f"{self.path}: " if self.path else ""
        return f"{where}{what}{self.message}"


class ConfigErrors(ConfigError):
    """Every problem found in one config file, in file order."""

    def __init__(self, issues: Sequence[ConfigIssue], source_name: str) -> None:
        self.issues = list(issues)
        self.source_name = source_name
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.issues)
        head = f"{self.source_name}: {count} problem{'s' if count != 1 else ''} in the config"
        return "\n".join([head, *(f"  - {issue}" for issue in self.issues)])

    def __str__(self) -> str:
        return self._render()


# --------------------------------------------------------------------------- entry points


def load_config(path: str | os.PathLike[str]) -> AppConfig:
    """Load and validate the config file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = f"no such config file: create one with `milestone-sync init {file}`"
        raise ConfigErrors([ConfigIssue("", None, message)], str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors(
            [ConfigIssue("", None, f"cannot read the config: {exc}")], str(file)
        ) from None
    return load_config_text(text, str(file))


def load_config_text(text: str, source_name: str = "<config>") -> AppConfig:
    """Validate config `text` (called `source_name` in messages) into an `AppConfig`.

    An unset `[database] url` stays None: the composition root puts SQLite beside the file.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([_syntax_issue(exc)], source_name) from None
    lines = KeyLines.scan(text)

    data = copy.deepcopy(raw)
    problems: list[Problem] = list(_strip_secrets(data))

    schema: ConfigSchema | None = None
    try:
        schema = ConfigSchema.model_validate(data)
    except ValidationError as exc:
        problems += [_problem_from_error(error) for error in exc.errors()]
    problems += check(_salvage(data, schema))

    if problems:
        raise ConfigErrors(_issues(problems, lines), source_name)
    assert schema is not None  # no problems means the schema validated
    return _build(schema, revision_of(schema))


def revision_of(schema: ConfigSchema) -> ConfigRevision:
    """A short hash of the validated content: any change of meaning gives a new revision.

    Comments, layout and key order do not count; defaults count as written.
    """
    # python-mode dump: JSON mode trips over decimals validated by a plain validator
    content = schema.model_dump()
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return ConfigRevision(hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_CHARS])


# --------------------------------------------------------------------------- problems -> issues


_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _syntax_issue(exc: tomllib.TOMLDecodeError) -> ConfigIssue:
    message = str(exc)
    match = _TOML_POSITION.search(message)
    if match is None:
        return ConfigIssue("", None, f"malformed TOML: {message}")
    line, column = int(match.group(1)), int(match.group(2))
    reason = message[: match.start()].strip()
    return ConfigIssue("", line, f"malformed TOML at line {line}, column {column}: {reason}")


def _issues(problems: Sequence[Problem], lines: KeyLines) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: set[tuple[KeyPath, str]] = set()
    for path, message in problems:
        if (path, message) in seen:
            continue
        seen.add((path, message))
        issues.append(ConfigIssue(render_path(path), lines.nearest(path), message))
    # file order; problems without a line (missing tables) first, in the order found
    order = {id(issue): n for n, issue in enumerate(issues)}
    return sorted(issues, key=lambda i: (i.line or 0, order[id(i)]))


def _translate_loc(loc: Sequence[PathSegment]) -> KeyPath:
    """A pydantic error location as a key path of the file (`secret_env.token` is `token_env`)."""
    out: list[PathSegment] = []
    segments = list(loc)
    n = 0
    while n < len(segments):
        segment = segments[n]
        if segment == "secret_env" and n + 1 < len(segments) and isinstance(segments[n + 1], str):
            out.append(f"{segments[n + 1]}{ENV_SUFFIX}")
            n += 2
            continue
        out.append(segment)
        n += 1
    return tuple(out)


def _problem_from_error(error: ErrorDetails) -> Problem:
    loc: tuple[PathSegment, ...] = tuple(error["loc"])
    path = _translate_loc(loc)
    kind = error["type"]
    value = error.get("input")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    key = next((s for s in reversed(path) if isinstance(s, str)), "value")
    got = toml_type_name(value)

    if kind == "extra_forbidden":
        return path, _unknown_key(loc)
    if kind == "missing":
        if len(path) == 1:
            return path, f"missing the [{key}] table"
        return path, f"missing required key '{key}'"
    if kind in ("float_amount", "float_percent"):
        return path, f"TOML floats are inexact: write {key} = {ctx['hint']}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return path, f"expected a table, got {got}"
    if kind == "list_type":
        if len(path) == 1 and path[0] in ("sources", "plans", "ignore"):
            return path, f"expected an array of tables: write each entry under [[{key}]]"
        return path, f"expected an array, got {got}"
    if kind == "string_type":
        return path, f"expected a quoted string, got {got}"
    if kind == "int_type":
        return path, f"expected an integer, got {got}"
    if kind == "bool_type":
        return path, f"expected true or false, got {got}"
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return path, f"expected one of {expected}; got {value!r}"
    if kind == "string_too_short":
        return path, "must not be empty"
    if kind == "greater_than_equal":
        return path, f"must be at least {ctx.get('ge')}, got {value!r}"
    if kind == "too_long":
        return path, f"at most {ctx.get('max_length')} entries"
    return path, error["msg"]


def _unknown_key(loc: Sequence[PathSegment]) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown key '{key}'"
    allowed = [name for name in model.model_fields if name != "secret_env"]
    hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if hint:
        return f"unknown key '{key}' (did you mean '{hint[0]}'?)"
    if "secret_env" in model.model_fields:
        allowed.append(f"<name>{ENV_SUFFIX}")
    return f"unknown key '{key}': expected one of {', '.join(allowed)}"


def _model_at(loc: Sequence[PathSegment]) -> type[BaseModel] | None:
    """The schema model validating the table at `loc`, to suggest its keys."""
    current: Any = ConfigSchema
    for segment in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(segment, str) or segment not in current.model_fields:
                return None
            current = current.model_fields[segment].annotation
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip `Annotated[...]` and `X | None` down to the type that holds the fields."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


# --------------------------------------------------------------------------- secrets

_SECRET_WORDS = re.compile(
    r"(^|_)(token|secret|password|passwd|pwd|passphrase|api_?key|access_?key|private_?key|"
    r"secret_?key|credentials?)($|_)"
)
_SECRET_VALUES = re.compile(r"^(sk|rk)_(live|test)_[A-Za-z0-9]{8,}|^whsec_[A-Za-z0-9]{8,}")


def _strip_secrets(data: dict[str, Any]) -> Iterator[Problem]:
    """Find (and remove, so they are reported once) secrets written into the file."""
    yield from _walk_secrets(data, (), data)


def _is_user_key_table(path: KeyPath) -> bool:
    """Tables whose keys are the admin's data (client keys, plan ids), not config keys."""
    return path == ("clients",) or (len(path) == 3 and path[0] == "clients" and path[2] == "fees")


def _walk_secrets(node: Any, path: KeyPath, root: Mapping[str, Any]) -> Iterator[Problem]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk_secrets(item, (*path, index), root)
        return
    if not isinstance(node, dict):
        if isinstance(node, str) and _SECRET_VALUES.match(node):
            yield (
                path,
                "this looks like an API secret written in the file: name the environment "
                f"variable instead: {_env_suggestion(path, root)}",
            )
        return
    for key in list(node):
        child = (*path, key)
        normalised = key.lower().replace("-", "_")
        if (
            not _is_user_key_table(path)
            and not normalised.endswith(ENV_SUFFIX)
            and _SECRET_WORDS.search(normalised)
        ):
            del node[key]
            yield (
                child,
                f"'{key}' looks like a secret written in the file: name the environment "
                f"variable instead: {_env_suggestion(child, root)}",
            )
            continue
        yield from _walk_secrets(node[key], child, root)


_DEFAULT_PREFIX = {"sources": "KARBON", "ledger": "QUICKBOOKS", "payments": "STRIPE"}


def _env_suggestion(path: KeyPath, root: Mapping[str, Any]) -> str:
    """`<key>_env = "<CONNECTION>_<KEY>"` for the connection the secret was found in."""
    section = path[0] if path else ""
    if section not in _DEFAULT_PREFIX:
        return 'token_env = "KARBON_TOKEN" in a [[sources]], [ledger] or [payments] table'
    table: Any = root.get(str(section))
    if section == "sources" and len(path) > 1 and isinstance(table, list):
        index = path[1]
        table = table[index] if isinstance(index, int) and index < len(table) else None
    name_from = "id" if section == "sources" else "kind"
    label = table.get(name_from) if isinstance(table, dict) else None
    prefix = _DEFAULT_PREFIX[str(section)]
    if isinstance(label, str) and label not in ("memory", "none"):
        prefix = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").upper() or prefix
    key = str(path[-1]) if path and not isinstance(path[-1], int) else "token"
    if key.lower() == "url" or _SECRET_WORDS.search(key.lower().replace("-", "_")) is None:
        key = "token"
    name = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_").lower() or "token"
    return f'{name}{ENV_SUFFIX} = "{prefix}_{name.upper()}"'


# --------------------------------------------------------------------------- salvage for checks

M = TypeVar("M", bound=BaseModel)


def _try(model: type[M], value: Any) -> M | None:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _items(data: Mapping[str, Any], key: str) -> list[tuple[int, Any]]:
    value = data.get(key)
    return list(enumerate(value)) if isinstance(value, list) else []


def _ids(data: Mapping[str, Any], key: str) -> list[tuple[int, str]]:
    return [
        (index, item["id"])
        for index, item in _items(data, key)
        if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]


def _valid_items(data: Mapping[str, Any], key: str, model: type[M]) -> list[tuple[int, M]]:
    out: list[tuple[int, M]] = []
    for index, item in _items(data, key):
        parsed = _try(model, item)
        if parsed is not None:
            out.append((index, parsed))
    return out


_PLAN_PLACEHOLDERS: dict[str, Any] = {"id": "unnamed", "name": "unnamed", "match": {}}


def _partial_plan(raw: Any) -> PlanSchema | None:
    """A broken plan with its broken keys set aside, so its milestones can still be checked.

    Only when its milestones are valid: totals over a partial list would mislead.
    """
    if not isinstance(raw, dict):
        return None
    try:
        PlanSchema.model_validate(raw)
    except ValidationError as exc:
        broken = {error["loc"][0] for error in exc.errors() if error["loc"]}
    else:
        return None
    if "milestones" in broken:
        return None
    kept = {k: v for k, v in raw.items() if k not in broken}
    for key, placeholder in _PLAN_PLACEHOLDERS.items():
        kept.setdefault(key, placeholder)
    return _try(PlanSchema, kept)


def _salvage(data: Mapping[str, Any], schema: ConfigSchema | None) -> ConfigParts:
    """The parts of the file that are valid on their own, for the cross-key checks."""
    parts = ConfigParts(
        source_ids=_ids(data, "sources"),
        plan_ids=_ids(data, "plans"),
        ignore_ids=_ids(data, "ignore"),
        sources_written=bool(data.get("sources")),
    )
    if schema is not None:
        parts.firm = schema.firm
        parts.sources = list(enumerate(schema.sources))
        parts.payments = schema.payments
        parts.ledger = schema.ledger
        parts.collection = schema.collection
        parts.plans = list(enumerate(schema.plans))
        parts.ignore = list(enumerate(schema.ignore))
        parts.clients = dict(schema.clients)
        return parts
    parts.firm = _try(FirmSchema, data.get("firm"))
    parts.sources = _valid_items(data, "sources", SourceSchema)
    parts.payments = _try(PaymentsSchema, data.get("payments", {}))
    parts.ledger = _try(LedgerSchema, data.get("ledger", {}))
    parts.collection = _try(CollectionSchema, data.get("collection", {}))
    parts.plans = _valid_items(data, "plans", PlanSchema)
    valid = {index for index, _ in parts.plans}
    for index, item in _items(data, "plans"):
        if index not in valid and (partial := _partial_plan(item)) is not None:
            parts.partial_plans.append((index, partial))
    parts.ignore = _valid_items(data, "ignore", IgnoreSchema)
    clients = data.get("clients")
    if isinstance(clients, dict):
        for key, value in clients.items():
            parsed = _try(ClientSchema, value)
            if parsed is not None:
                parts.clients[key] = parsed
    return parts


# --------------------------------------------------------------------------- build AppConfig


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return types.MappingProxyType(dict(mapping))


def _matcher(match: MatchSchema) -> Matcher:
    return Matcher(
        source=SourceId(match.source) if match.source else None,
        work_type=match.work_type,
        template=match.template,
        title_pattern=match.title_pattern,
        clients=tuple(ClientKey(c) for c in match.clients),
    )


def _milestone(milestone: MilestoneSchema, currency: str) -> MilestoneDef:
    trig = milestone.trigger
    if trig.status is not None:
        trigger = Trigger(TriggerKind.STATUS, trig.status, trig.secondary)
    elif trig.close_status is not None:
        trigger = Trigger(TriggerKind.CLOSE_STATUS, trig.close_status)
    else:
        assert trig.section_done is not None  # the schema demands exactly one
        trigger = Trigger(TriggerKind.SECTION_DONE, trig.section_done)
    amount: AmountRule
    if milestone.amount is not None:
        amount = FixedAmount(Money(milestone.amount, currency))
    elif milestone.percent is not None:
        amount = PercentOfFee(milestone.percent)
    else:
        amount = Remainder()
    return MilestoneDef(
        id=MilestoneDefId(milestone.id),
        name=milestone.name,
        trigger=trigger,
        amount=amount,
        offset_days=milestone.offset_days,
    )


def _plan(plan: PlanSchema, schema: ConfigSchema) -> Plan:
    currency = plan.currency or schema.firm.currency
    invoice = plan.invoice
    # send_invoice is a plain bool on InvoiceTerms, so "unset" is resolved against [defaults] here
    send = schema.defaults.send_invoice
    if invoice is not None and invoice.send_invoice is not None:
        send = invoice.send_invoice
    terms = InvoiceTerms(
        item=invoice.item if invoice else None,
        tax_code=invoice.tax_code if invoice else None,
        terms=invoice.terms if invoice else None,
        send_invoice=send,
    )
    increase = plan.price_increase
    return Plan(
        id=PlanId(plan.id),
        name=plan.name,
        match=_matcher(plan.match),
        milestones=tuple(_milestone(m, currency) for m in plan.milestones),
        priority=plan.priority,
        recurring=plan.recurring,
        fee=Money(plan.fee, currency) if plan.fee is not None else None,
        currency=plan.currency,
        collection_mode=plan.collection_mode,
        invoice=terms,
        price_increase=PriceIncrease(increase.percent, increase.anniversary, increase.notice_days)
        if increase
        else None,
        description=plan.description,
    )


def _client(key: str, client: ClientSchema, schema: ConfigSchema) -> ClientOverride:
    plans = {p.id: p for p in schema.plans}
    fees: dict[PlanId, Money] = {}
    for plan_id, fee in client.fees.items():
        plan = plans[plan_id]
        fees[PlanId(plan_id)] = Money(fee, client.currency or plan.currency or schema.firm.currency)
    return ClientOverride(
        key=ClientKey(key),
        fees=_frozen(fees),
        collection_mode=client.collection_mode,
        ledger_customer_id=LedgerCustomerId(client.ledger_customer_id)
        if client.ledger_customer_id
        else None,
        terms=client.terms,
        tax_code=client.tax_code,
        item=client.item,
        currency=client.currency,
        email=client.email,
    )


def _build(schema: ConfigSchema, revision: ConfigRevision) -> AppConfig:
    firm = schema.firm
    return AppConfig(
        firm=FirmConfig(TenantId(firm.id), firm.name, firm.currency, firm.timezone),
        revision=revision,
        sources=tuple(
            SourceConnection(
                id=SourceId(s.id),
                kind=s.kind,
                base_url=s.base_url,
                secret_env=_frozen(s.secret_env),
                options=_frozen(s.options),
            )
            for s in schema.sources
        ),
        ledger=LedgerConnection(
            kind=schema.ledger.kind,
            base_url=schema.ledger.base_url,
            secret_env=_frozen(schema.ledger.secret_env),
            options=_frozen(schema.ledger.options),
        ),
        payments=PaymentsConnection(
            kind=schema.payments.kind,
            base_url=schema.payments.base_url,
            secret_env=_frozen(schema.payments.secret_env),
            options=_frozen(schema.payments.options),
        ),
        plans=tuple(_plan(p, schema) for p in schema.plans),
        database_url=schema.database.url,
        ignore=tuple(
            IgnoreRule(id=rule.id, match=_matcher(rule.match), reason=rule.reason)
            for rule in schema.ignore
        ),
        clients=_frozen(
            {ClientKey(key): _client(key, c, schema) for key, c in schema.clients.items()}
        ),
        defaults=InvoiceTerms(
            item=schema.defaults.item,
            tax_code=schema.defaults.tax_code,
            terms=schema.defaults.terms,
            send_invoice=schema.defaults.send_invoice,
        ),
        collection=CollectionPolicy(
            default_mode=schema.collection.default_mode,
            retry_days=tuple(schema.collection.retry_days),
            remind_before_due=tuple(sorted(set(schema.collection.remind_before_due))),
            remind_after_due=tuple(sorted(set(schema.collection.remind_after_due))),
            auto_approve_after_days=schema.collection.auto_approve_after_days,
        ),
        schedule=ScheduleConfig(
            poll_seconds=schema.schedule.poll_seconds,
            invoice_seconds=schema.schedule.invoice_seconds,
            collect_seconds=schema.schedule.collect_seconds,
            reconcile_seconds=schema.schedule.reconcile_seconds,
        ),
        notifications=NotificationsConnection(
            kind=schema.notifications.kind,
            host=schema.notifications.host,
            port=schema.notifications.port,
            starttls=schema.notifications.starttls,
            from_address=schema.notifications.from_address,
            secret_env=_frozen(schema.notifications.secret_env),
        ),
        server=ServerConfig(
            host=schema.server.host,
            port=schema.server.port,
            public_url=schema.server.public_url,
            dashboard_token_env=schema.server.dashboard_token_env,
        ),
    )
