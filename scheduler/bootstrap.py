"""The composition root: the only place that turns config into adapters and wires the core."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from adapters.emulation.clock import EmulatedTime
from adapters.memory.clock import SystemClock
from adapters.memory.gateway import MemoryGateway
from adapters.memory.ledger import MemoryLedger
from adapters.memory.source import MemorySource, load_work_file
from connector.config import (
    AppConfig,
    InvoicingPolicy,
    LedgerConnection,
    LedgerKind,
    PaymentsKind,
    SourceConnection,
    SourceKind,
)
from connector.domain.errors import ConfigError
from connector.domain.model import TriggerKind
from connector.ports import (
    Clock,
    Ledger,
    Notifier,
    PaymentGateway,
    PracticeSource,
    UnitOfWorkFactory,
)
from connector.services import FaultHook, SyncService, no_faults
from mappings.engine import MappingEngine
from mappings.loader import load_config
from scheduler.faults import fault_from_env

DATABASE_URL_ENV = "MILESTONE_SYNC_DATABASE_URL"


@dataclass
class Overrides:
    """What tests and the sandbox put in place of the configured adapters."""

    sources: Sequence[PracticeSource] | None = None
    ledger: Ledger | None = None
    gateway: PaymentGateway | None = None
    clock: Clock | None = None
    fault: FaultHook | None = None
    database_url: str | None = None
    # one timeline for every vendor adapter's clock, back-off sleeps and rate budgets (the
    # demo's accelerated month over the emulators); the core's clock too unless `clock` is set
    time: EmulatedTime | None = None


@dataclass
class Adapters:
    sources: list[PracticeSource]
    ledger: Ledger | None
    gateway: PaymentGateway | None
    notes: list[str] = field(default_factory=list)
    notifier: Notifier | None = None
    ledger_problem: str | None = None  # why the configured ledger could not be built
    gateway_problem: str | None = None  # why the configured payment gateway could not be built


class StoreHandle:
    """Opens the state store on first use: adapters that keep state there (OAuth tokens) are
    built before the store is opened, and `plan` opens it only if a token is needed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Any = None

    def __call__(self) -> Any:
        if self.store is None:
            from adapters.store.engine import open_store

            self.store = open_store(self.url)
        return self.store

    def dispose(self) -> None:
        if self.store is not None:
            self.store.dispose()
            self.store = None


@dataclass
class App:
    config: AppConfig
    config_path: Path
    database_url: str
    mapper: MappingEngine
    adapters: Adapters
    clock: Clock
    store: Any  # adapters.store Store: opened lazily, closed by close()
    fault: FaultHook = no_faults
    handle: StoreHandle | None = None

    @property
    def tenant(self) -> str:
        return self.config.firm.id

    def uow_factory(self) -> UnitOfWorkFactory:
        store = self.store
        tenant = self.config.firm.id
        return lambda: store.unit_of_work(tenant)

    def service(self) -> SyncService:
        """The sync service over the real adapters; refuses when the ledger has no adapter."""
        if self.adapters.ledger is None:
            raise ConfigError(
                self.adapters.ledger_problem
                or f"ledger.kind = {self.config.ledger.kind!r} has no adapter in this build"
            )
        if self.adapters.gateway is None and self.adapters.gateway_problem:
            raise ConfigError(self.adapters.gateway_problem)
        return SyncService(
            tenant=self.config.firm.id,
            uow=self.uow_factory(),
            sources=self.adapters.sources,
            ledger=self.adapters.ledger,
            gateway=self.adapters.gateway,
            mapper=self.mapper,
            clock=self.clock,
            policy=self.config.collection,
            invoicing=invoicing_policy(self.config),
            notifier=self.adapters.notifier,
            firm_name=self.config.firm.name,
            fault=self.fault,
        )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.dispose()
        elif self.store is not None:
            self.store.dispose()


def invoicing_policy(config: AppConfig) -> InvoicingPolicy:
    """`[ledger] options.batch_from` and `options.invoice_number` (checked by `check`)."""
    options = config.ledger.options
    batch = options.get("batch_from", "10")
    return InvoicingPolicy(
        batch_from=None if batch == "off" else int(batch),
        invoice_number=options.get("invoice_number"),
    )


def resolve_database_url(config: AppConfig, config_path: Path, explicit: str | None) -> str:
    from adapters.store.engine import default_sqlite_url

    return (
        explicit
        or os.environ.get(DATABASE_URL_ENV)
        or config.database_url
        or default_sqlite_url(config_path)
    )


def secret(config_key: str, env_name: str | None, *, required: bool = True) -> str | None:
    """The value of the environment variable a `*_env` config key names."""
    if not env_name:
        if required:
            raise ConfigError(f"{config_key}: not set; name the environment variable holding it")
        return None
    value = os.environ.get(env_name)
    if not value and required:
        raise ConfigError(
            f"{config_key} names the environment variable {env_name}, which is not set: "
            f"export {env_name}=... before starting milestone-sync"
        )
    return value or None


def trigger_statuses(config: AppConfig, source_id: str) -> list[str]:
    """Primary statuses named by the triggers of plans that can match this source."""
    return [
        definition.trigger.phase
        for plan in config.plans
        if plan.match.source in (None, source_id)
        for definition in plan.milestones
        if definition.trigger.kind is TriggerKind.STATUS
    ]


def _option(conn: SourceConnection, name: str, default: str | None = None) -> str | None:
    return conn.options.get(name, default)


def _backfill_from(conn: SourceConnection) -> datetime | None:
    """`options.backfill_from` (a date) as the UTC midnight it starts at."""
    text = _option(conn, "backfill_from")
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    except ValueError:
        raise ConfigError(
            f"sources[{conn.id}].options.backfill_from: {text!r} is not a date like 2026-11-01"
        ) from None


def _sleep_on(time: EmulatedTime | None) -> dict[str, Any]:
    """`sleep=` for a client when the adapters run on an emulated timeline."""
    return {} if time is None else {"sleep": time.sleep}


def _time_on(time: EmulatedTime | None) -> dict[str, Any]:
    return {} if time is None else {"time": time}


def karbon_source(
    config: AppConfig, conn: SourceConnection, time: EmulatedTime | None = None
) -> PracticeSource:
    from datetime import timedelta

    from adapters.http import RequestBudget
    from adapters.karbon.adapter import KarbonOptions, KarbonSource, sweep_statuses_for
    from adapters.karbon.client import DEFAULT_BASE_URL, DEFAULT_BUDGET_PER_MINUTE, KarbonClient

    where = f"sources[{conn.id}]"
    token = secret(f"{where}.token_env", conn.secret_env.get("token"))
    access_key = secret(f"{where}.access_key_env", conn.secret_env.get("access_key"))
    signing_key = secret(
        f"{where}.signing_key_env", conn.secret_env.get("signing_key"), required=False
    )
    # without a signing key the daemon never subscribes (build_receivers notes it): it polls
    webhook_url = config.server.webhook_url(conn.id) if signing_key else None
    try:
        sweep_minutes = float(_option(conn, "sweep_minutes", "30") or "30")
        budget = int(_option(conn, "budget_per_minute", str(DEFAULT_BUDGET_PER_MINUTE)) or "0")
    except ValueError as exc:
        raise ConfigError(
            f"{where}.options: {exc} (sweep_minutes: a number of minutes; budget_per_minute: "
            "an integer up to 120)"
        ) from None
    if not 1 <= budget <= 120:
        raise ConfigError(f"{where}.options.budget_per_minute: {budget} must be 1 to 120")
    client = KarbonClient(
        bearer_token=token or "",
        access_key=access_key or "",
        base_url=conn.base_url or DEFAULT_BASE_URL,
        budget=RequestBudget(
            budget, **({} if time is None else {"monotonic": time.monotonic, "sleep": time.sleep})
        ),
        **_sleep_on(time),
        credentials_hint=(
            f"check {conn.secret_env.get('token')} (the API application's token) and "
            f"{conn.secret_env.get('access_key')} (Karbon Settings > Connected Apps); a revoked "
            "access key must be re-issued there"
        ),
    )
    return KarbonSource(
        conn.id,
        client,
        KarbonOptions(
            currency=config.firm.currency,
            sweep_statuses=sweep_statuses_for(trigger_statuses(config, conn.id)),
            sweep_every=timedelta(minutes=sweep_minutes),
            backfill_from=_backfill_from(conn),
            webhook_url=webhook_url,
            signing_key=signing_key,
            check_karbon_billing=(_option(conn, "check_karbon_billing", "true") or "").lower()
            not in {"false", "no", "off", "0"},
        ),
    )


def build_receivers(config: AppConfig) -> tuple[dict[str, Any], list[str]]:
    """Webhook receivers by source id, for sources that take pushes; notes say what is off."""
    receivers: dict[str, Any] = {}
    notes: list[str] = []
    for conn in config.sources:
        where = f"sources[{conn.id}]"
        try:
            if conn.kind is SourceKind.KARBON:
                key = secret(
                    f"{where}.signing_key_env", conn.secret_env.get("signing_key"), required=False
                )
                if key:
                    from adapters.karbon.webhooks import KarbonReceiver

                    receivers[conn.id] = KarbonReceiver(key)
                elif config.server.public_url:
                    notes.append(
                        f"{where}: webhooks are off until signing_key_env names a key of at "
                        "least 16 characters; the sweep still finds every change"
                    )
            elif conn.kind is SourceKind.KEEPER:
                shared = secret(
                    f"{where}.webhook_secret_env",
                    conn.secret_env.get("webhook_secret"),
                    required=False,
                )
                if shared:
                    from adapters.keeper.webhooks import CloseChecklistReceiver

                    receivers[conn.id] = CloseChecklistReceiver(shared)
            elif conn.kind is SourceKind.WEBHOOK:
                from adapters.generic.webhooks import PhaseEventReceiver

                shared = secret(
                    f"{where}.webhook_secret_env", conn.secret_env.get("webhook_secret")
                )
                receivers[conn.id] = PhaseEventReceiver(shared or "")
        except (ConfigError, ValueError) as exc:
            notes.append(f"{where}: webhooks off: {exc}")
    return receivers, notes


def keeper_source(
    config: AppConfig, conn: SourceConnection, time: EmulatedTime | None = None
) -> PracticeSource:
    from adapters.keeper.adapter import CloseChecklistSource
    from adapters.keeper.client import CloseChecklistClient

    where = f"sources[{conn.id}]"
    if not conn.base_url:
        raise ConfigError(f"{where}.base_url: set the close-checklist API address")
    token_env = conn.secret_env.get("token")
    token = secret(f"{where}.token_env", token_env)
    client = CloseChecklistClient(
        conn.base_url, token or "", token_env=token_env or "", **_sleep_on(time)
    )
    return CloseChecklistSource(conn.id, client, backfill_from=_backfill_from(conn))


def _seconds(conn: LedgerConnection, default: float) -> float:
    text = conn.options.get("timeout_seconds")
    return float(text) if text else default


def quickbooks_ledger(
    config: AppConfig, store: Callable[[], Any], time: EmulatedTime | None = None
) -> Ledger:
    from adapters.oauth.manager import token_manager
    from adapters.quickbooks.adapter import QuickBooksLedger, QuickBooksOptions

    conn = config.ledger
    options = conn.options
    tokens = token_manager(
        store,
        config.firm.id,
        conn,
        **({} if time is None else {"now": time.now, "sleep": time.sleep}),
    )
    return QuickBooksLedger(
        tokens,
        QuickBooksOptions(
            currency=config.firm.currency,
            realm_id=options.get("realm_id"),
            minorversion=int(options.get("minorversion", "75")),
            environment=options.get("environment", "production"),
            clearing_account=options.get("clearing_account"),
            bank_account=options.get("bank_account"),
            fee_account=options.get("fee_account"),
            disputes_account=options.get("disputes_account"),
            fee_vendor=options.get("fee_vendor"),
            class_name=options.get("class"),
            department=options.get("department"),
            timeout=(5.0, _seconds(conn, 60.0)),
        ),
        api_url=f"{conn.base_url.rstrip('/')}/v3" if conn.base_url else None,
        **_time_on(time),
    )


def xero_tracking(text: str | None) -> tuple[tuple[str, str], ...]:
    """`options.tracking = "Region:West, Service line:Tax"` -> (category, option) pairs."""
    pairs = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        category, sep, option = part.partition(":")
        if not sep or not category.strip() or not option.strip():
            raise ConfigError(
                f"ledger.options.tracking: {part.strip()!r} must be 'Category:Option', e.g. "
                '"Region:West" (several separated by commas)'
            )
        pairs.append((category.strip(), option.strip()))
    return tuple(pairs)


def xero_ledger(
    config: AppConfig, store: Callable[[], Any], time: EmulatedTime | None = None
) -> Ledger:
    from adapters.oauth.manager import token_manager
    from adapters.xero.adapter import XeroLedger, XeroOptions

    conn = config.ledger
    options = conn.options
    tokens = token_manager(
        store,
        config.firm.id,
        conn,
        **({} if time is None else {"now": time.now, "sleep": time.sleep}),
    )
    base = conn.base_url.rstrip("/") if conn.base_url else None
    return XeroLedger(
        tokens,
        XeroOptions(
            currency=config.firm.currency,
            tenant_id=options.get("tenant_id"),
            sales_account=options.get("sales_account"),
            clearing_account=options.get("clearing_account"),
            bank_account=options.get("bank_account"),
            fee_account=options.get("fee_account"),
            disputes_account=options.get("disputes_account"),
            returns_account=options.get("returns_account"),
            fee_tax_type=options.get("fee_tax_type", "NONE"),
            gateway_contact=options.get("gateway_contact", "Stripe"),
            line_amount_types=options.get("line_amount_types", "Exclusive"),
            tracking=xero_tracking(options.get("tracking")),
            timeout=(5, int(_seconds(conn, 60))),
        ),
        api_url=f"{base}/api.xro/2.0" if base else None,
        identity_url=base,
        **_time_on(time),
    )


def notifier(config: AppConfig, sandbox_dir: Path) -> Notifier | None:
    """Client notices: SMTP, the sandbox's file, or none (recorded for the admin)."""
    conn = config.notifications
    if conn.kind == "memory":
        from adapters.memory.notifier import MemoryNotifier

        return MemoryNotifier(sandbox_dir / "notices.json")
    if conn.kind != "smtp":
        return None
    from adapters.email.smtp import SmtpNotifier, SmtpOptions

    if not conn.host or not conn.from_address:
        raise ConfigError("[notifications] kind smtp needs host and from_address")
    return SmtpNotifier(
        SmtpOptions(
            host=conn.host,
            port=conn.port,
            starttls=conn.starttls,
            from_address=conn.from_address,
            from_name=config.firm.name,
            username=secret(
                "notifications.username_env", conn.secret_env.get("username"), required=False
            ),
            password=secret(
                "notifications.password_env", conn.secret_env.get("password"), required=False
            ),
        )
    )


def stripe_gateway(config: AppConfig, time: EmulatedTime | None = None) -> PaymentGateway:
    from adapters.stripe.adapter import StripeGateway, StripeOptions
    from adapters.stripe.client import build_client

    conn = config.payments
    key = secret("payments.secret_key_env", conn.secret_env.get("secret_key"))
    defaults = StripeOptions(currency=config.firm.currency, tenant=config.firm.id)
    return StripeGateway(
        build_client(key or "", base_url=conn.base_url),
        StripeOptions(
            currency=config.firm.currency,
            tenant=config.firm.id,
            success_url=conn.options.get("success_url", defaults.success_url),
            cancel_url=conn.options.get("cancel_url", defaults.cancel_url),
        ),
        **_time_on(time),
    )


def build_adapters(
    config: AppConfig,
    config_path: Path,
    store: Callable[[], Any] | None = None,
    time: EmulatedTime | None = None,
) -> Adapters:
    """Adapters for the configured connections. Kinds without an adapter yet are noted, not
    faked: `plan` can still run without them, `sync` refuses. `time`: see Overrides.time."""
    base = config_path.parent
    sandbox_dir = base / ".milestone-sync"
    notes: list[str] = []
    sources: list[PracticeSource] = []
    customers: dict[str, str] = {}
    methods: list[dict[str, str]] = []
    for conn in config.sources:
        if conn.kind is SourceKind.MEMORY:
            work_file = conn.options.get("work_file")
            if work_file:
                path = (base / work_file).resolve()
                source = load_work_file(path, conn.id, config.firm.currency)
                customers.update(source.ledger_customers())
                methods.extend(source.payment_methods)
            else:
                source = MemorySource(conn.id)
            sources.append(source)
        elif conn.kind is SourceKind.KARBON:
            try:
                sources.append(karbon_source(config, conn, time))
            except ConfigError as exc:
                notes.append(f"source {conn.id!r} is skipped: {exc}")
        elif conn.kind is SourceKind.KEEPER:
            try:
                sources.append(keeper_source(config, conn, time))
            except ConfigError as exc:
                notes.append(f"source {conn.id!r} is skipped: {exc}")
        elif conn.kind in (SourceKind.WEBHOOK, SourceKind.CSV):
            from adapters.generic.adapter import PushedPhaseSource

            sources.append(PushedPhaseSource(conn.id, config.firm.currency))
        else:
            notes.append(
                f"source {conn.id!r} (kind {conn.kind}) has no adapter in this build yet: "
                "it is skipped"
            )
    ledger: Ledger | None = None
    ledger_problem = None
    if config.ledger.kind is LedgerKind.MEMORY:
        ledger = MemoryLedger(customers=customers, state_file=sandbox_dir / "ledger.json")
    elif store is None:
        ledger_problem = f"ledger {config.ledger.kind} needs the state store for its tokens"
    else:
        build = quickbooks_ledger if config.ledger.kind is LedgerKind.QUICKBOOKS else xero_ledger
        try:
            ledger = build(config, store, time)
        except ConfigError as exc:
            ledger_problem = f"ledger {config.ledger.kind}: {exc}"
            notes.append(f"ledger {config.ledger.kind} is not connected: {exc}")
    gateway: PaymentGateway | None = None
    gateway_problem = None
    if config.payments.kind is PaymentsKind.MEMORY:
        gateway = MemoryGateway(state_file=sandbox_dir / "payments.json", methods=methods)
    elif config.payments.kind is PaymentsKind.STRIPE:
        try:
            gateway = stripe_gateway(config, time)
        except ConfigError as exc:
            gateway_problem = f"payments stripe: {exc}"
            notes.append(gateway_problem)
    return Adapters(
        sources=sources,
        ledger=ledger,
        gateway=gateway,
        notifier=notifier(config, sandbox_dir),
        gateway_problem=gateway_problem,
        notes=notes,
        ledger_problem=ledger_problem,
    )


def build_app(
    config_path: Path,
    *,
    overrides: Overrides | None = None,
    open_store: bool = True,
) -> App:
    """Load and validate the config, open (and migrate) the store, wire the adapters."""
    overrides = overrides or Overrides()
    config = load_config(config_path)
    database_url = resolve_database_url(config, config_path, overrides.database_url)
    handle = StoreHandle(database_url)
    adapters = build_adapters(config, config_path, handle, overrides.time)
    if overrides.sources is not None:
        adapters.sources = list(overrides.sources)
    if overrides.ledger is not None:
        adapters.ledger = overrides.ledger
    if overrides.gateway is not None:
        adapters.gateway = overrides.gateway
    store = handle() if open_store else None
    return App(
        config=config,
        config_path=config_path,
        database_url=database_url,
        mapper=MappingEngine(config),
        adapters=adapters,
        clock=overrides.clock or overrides.time or SystemClock(),
        store=store,
        fault=overrides.fault or fault_from_env() or no_faults,
        handle=handle,
    )
