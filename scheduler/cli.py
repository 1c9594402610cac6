"""The `milestone-sync` command line.

Exit codes: 0 done; 1 a person must act (bad config or input, unreachable database; nothing was
written); 2 wrong usage of the command; 3 the run finished but some items need attention;
4 an internal error (a bug: please report it).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from connector.domain.errors import ConfigError, InvariantViolation
from connector.domain.ids import ClientKey, MilestoneKey, WorkItemKey
from connector.domain.model import Milestone, MilestoneState
from connector.domain.money import Money
from connector.ports import DeliveryStatus, PhaseStatus
from connector.services import BLOCKED, SOURCE_HEALTH, CycleReport, SyncService

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_ATTENTION, EXIT_BUG = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "milestone-sync.toml"

app = typer.Typer(
    name="milestone-sync",
    help="Bill milestones of finished work, collect them, and book the money in the ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="MILESTONE_SYNC_CONFIG", help="The mapping config (TOML)."
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MILESTONE_SYNC_DATABASE_URL",
        help="SQLAlchemy URL of the state store (default: SQLite beside the config).",
        show_default=False,
    ),
]


def user_errors(func: F) -> F:
    """One clear line for a person's mistake, no traceback; exit codes as documented."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        except InvariantViolation as exc:
            err.print(f"[red]internal error (a bug, please report it):[/red] {escape(str(exc))}")
            raise typer.Exit(EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


def _app(config: Path, database_url: str | None, *, open_store: bool = True) -> Any:
    from scheduler.bootstrap import Overrides, build_app

    return build_app(config, overrides=Overrides(database_url=database_url), open_store=open_store)


# --------------------------------------------------------------------------- init / check


@app.command()
@user_errors
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path(DEFAULT_CONFIG),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter config (and sample work for the built-in sandbox)."""
    from adapters.memory.sample import SAMPLE_WORK
    from mappings.starter import STARTER_CONFIG

    work = path.parent / "sample-work.toml"
    for target in (path, work):
        if target.exists() and not force:
            raise ConfigError(f"{target} already exists: pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER_CONFIG)
    work.write_text(SAMPLE_WORK)
    out.print(f"wrote {path} and {work}")
    out.print(f"next: milestone-sync check {path}  then  milestone-sync plan -c {path}")


@app.command()
@user_errors
def check(
    path: Annotated[
        Path | None, typer.Argument(help="Config to check.", show_default=False)
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    ledger: Annotated[
        bool,
        typer.Option(
            "--ledger",
            help="Also ask the ledger for every customer, item, tax code, term, currency and "
            "account the config and the known work need (writes nothing).",
        ),
    ] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Validate a mapping config; every error is listed with its key (exit 1)."""
    from mappings.loader import load_config

    target = path or config
    cfg = load_config(target)
    out.print(f"[green]ok[/green] {target}: firm {cfg.firm.id!r}, revision {cfg.revision}")
    out.print(f"  sources: {', '.join(f'{s.id} ({s.kind})' for s in cfg.sources) or 'none'}")
    out.print(f"  ledger: {cfg.ledger.kind}; payments: {cfg.payments.kind}")
    for plan in cfg.plans:
        what = f"{plan.recurring} recurring" if plan.recurring else "per work item"
        out.print(f"  plan {plan.id}: {len(plan.milestones)} milestone(s), {what}")
    out.print(f"  client overrides: {len(cfg.clients)}; ignore rules: {len(cfg.ignore)}")
    if ledger:
        _check_ledger(target, database_url)


def _check_ledger(target: Path, database_url: str | None) -> None:
    """The pre-flight check: exit 1 when the ledger lacks anything a post would need."""
    from scheduler.preflight import run_preflight

    application = _app(target, database_url, open_store=False)
    real_store = _existing_store(application)
    try:
        report = run_preflight(application, real_store)
    finally:
        if real_store is not None:
            real_store.dispose()
        application.close()
    for note in report.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    needs = report.needs
    out.print(
        f"ledger {application.config.ledger.kind}: checked {len(needs.customers)} customer(s), "
        f"{len(needs.items)} item(s), {len(needs.tax_codes)} tax code(s), {len(needs.terms)} "
        f"term(s), {len(needs.currencies)} currenc{'y' if len(needs.currencies) == 1 else 'ies'}"
        f" for {report.engagements} known work item(s)"
    )
    if report.ok:
        out.print("[green]ok[/green] the ledger has everything the mapping needs")
        return
    count = len(report.problems) + len(report.unmapped_clients)
    out.print(f"[bold]{count} problem(s): nothing depending on them will be posted[/bold]")
    for line in report.unmapped_clients:
        out.print(f"  client with no ledger customer: {escape(line)}")
    for problem in report.problems:
        where = report.used_by.get((problem.kind, problem.value), [])
        used = (
            f" (used by {', '.join(where[:3])}{'...' if len(where) > 3 else ''})" if where else ""
        )
        out.print(f"  {problem.kind} {problem.value!r}{escape(used)}: {escape(problem.message)}")
    raise typer.Exit(EXIT_CONFIG)


# --------------------------------------------------------------------------- plan / explain


@app.command()
@user_errors
def plan(config: ConfigOption = Path(DEFAULT_CONFIG), database_url: DatabaseOption = None) -> None:
    """Dry run: what would be invoiced and charged now. Nothing is written or sent."""
    from scheduler.dryrun import DryRunGateway, DryRunLedger, scratch_copy

    application = _app(config, database_url, open_store=False)
    for note in application.adapters.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    real_store = _existing_store(application)
    try:
        scratch = scratch_copy(
            (lambda: real_store.unit_of_work(application.tenant)) if real_store else None,
            application.tenant,
            [s.source_id for s in application.adapters.sources],
        )
    finally:
        if real_store is not None:
            real_store.dispose()
    ledger = DryRunLedger(application.adapters.ledger)
    gateway = DryRunGateway(application.adapters.gateway)
    service = SyncService(
        tenant=application.tenant,
        uow=lambda: scratch.unit_of_work(application.tenant),
        sources=application.adapters.sources,
        ledger=ledger,
        gateway=gateway,
        mapper=application.mapper,
        clock=application.clock,
        policy=application.config.collection,
    )
    report = service.run_cycle()
    table = Table(title="Would invoice", show_lines=False)
    for column in ("customer", "reference", "description", "amount", "terms"):
        table.add_column(
            column,
            justify="right" if column == "amount" else "left",
            overflow="fold",
            no_wrap=column == "amount",
        )
    for draft in ledger.created:
        table.add_row(
            draft.customer_id,
            draft.reference,
            draft.lines[0].description,
            str(draft.total),
            draft.terms or "",
        )
    out.print(table if ledger.created else "Would invoice: nothing")
    if gateway.charges:
        charges = Table(title="Would charge")
        for column in ("client", "milestone", "amount"):
            charges.add_column(column)
        for request in gateway.charges:
            charges.add_row(
                request.client_key, request.metadata.get("milestone", ""), str(request.amount)
            )
        out.print(charges)
    else:
        out.print("Would charge: nothing")
    with scratch.unit_of_work(application.tenant) as uow:
        waiting = uow.milestones.list(frozenset({MilestoneState.AWAITING_APPROVAL}))
    for milestone in waiting:
        out.print(
            f"awaiting approval: {milestone.key} {milestone.amount} ({milestone.description})"
        )
    _print_problems(report)


def _existing_store(application: Any) -> Any:
    """The real store, but only if it already exists: a dry run never creates one."""
    from adapters.store.engine import open_store, sqlite_path

    path = sqlite_path(application.database_url)
    if path is not None and not path.exists():
        return None
    return open_store(application.database_url)


@app.command()
@user_errors
def explain(
    work_item: Annotated[str, typer.Argument(help="A work item key (or a close key).")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Which plan and milestones apply to a work item, or why none does."""
    application = _app(config, database_url)
    try:
        engagement = None
        with application.uow_factory()() as uow:
            for candidate in uow.engagements.list():
                if candidate.key == work_item:
                    engagement = candidate
            milestones = [m for m in uow.milestones.list() if m.work_item == work_item]
        if engagement is None:
            for source in application.adapters.sources:
                engagement = source.get_engagement(WorkItemKey(work_item))
                if engagement is not None:
                    break
        if engagement is None:
            raise ConfigError(
                f"work item {work_item!r} is not known: run `milestone-sync sync --once` first, "
                "or check the key"
            )
        out.print(
            f"[bold]{engagement.title}[/bold] ({engagement.source} {engagement.key}), "
            f"client {engagement.client_name} ({engagement.client_key}), "
            f"work type {engagement.work_type!r}, fee {engagement.fee or 'none'}"
        )
        for line in application.mapper.explain(engagement, None, application.clock.now().date()):
            out.print(f"  {escape(line)}")
        for milestone in milestones:
            out.print(
                f"  milestone {milestone.key}: {milestone.state}, {milestone.amount}"
                f" (config {milestone.config_revision})"
                + (f": {escape(milestone.attention_reason)}" if milestone.attention_reason else "")
            )
    finally:
        application.close()


# --------------------------------------------------------------------------- sync / run


@app.command()
@user_errors
def sync(
    once: Annotated[bool, typer.Option("--once", help="Run one full cycle and exit.")] = False,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Run one full cycle: poll -> map -> invoice -> collect -> reconcile."""
    if not once:
        err.print("use `milestone-sync sync --once` for one cycle, or `milestone-sync run`")
        raise typer.Exit(EXIT_USAGE)
    application = _app(config, database_url)
    try:
        for note in application.adapters.notes:
            err.print(f"[yellow]note:[/yellow] {escape(note)}")
        report = application.service().run_cycle()
    finally:
        application.close()
    for stage in report.stages:
        out.print(f"{stage.name:<10} {stage.done}")
    _print_problems(report)
    if report.problems:
        raise typer.Exit(EXIT_ATTENTION)


@app.command()
@user_errors
def run(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
    log_json: Annotated[
        bool | None,
        typer.Option(
            "--log-json/--log-console",
            help="Log JSON lines, or readable lines (default: readable on a terminal, else JSON).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the daemon: every stage on its schedule until SIGTERM or Ctrl-C; serves webhooks,
    the dashboard, /healthz and /metrics on [server] host:port."""
    from adapters.observability import instrument_service, report_api_calls_to
    from scheduler.jobs import Daemon
    from scheduler.logging import configure_logging

    configure_logging(json=log_json, level=os.environ.get("MILESTONE_SYNC_LOG_LEVEL", "INFO"))
    application = _app(config, database_url)
    try:
        schedule = application.config.schedule
        intervals = {
            "poll": schedule.poll_seconds,
            "invoice": schedule.invoice_seconds,
            "collect": schedule.collect_seconds,
            "reconcile": schedule.reconcile_seconds,
        }
        metrics = daemon_metrics(application)
        service = instrument_service(application.service(), metrics)
        daemon = Daemon(service, intervals, application.tenant, metrics=metrics)
        server = _web_server(application, daemon, metrics)
        daemon.run_forever(server)
    finally:
        report_api_calls_to(None)
        application.close()


def daemon_metrics(application: Any) -> Any:
    """The daemon's metrics (adapters.observability.Metrics, a registry of its own): vendor API
    calls counted from now on, backlog gauges read from the store at each scrape."""
    from adapters.observability import Metrics, report_api_calls_to
    from adapters.web.health import read_backlog

    metrics = Metrics()
    report_api_calls_to(metrics)
    store, tenant, clock = application.store, application.tenant, application.clock
    metrics.watch_backlog(lambda: read_backlog(store, tenant, clock.now()))
    return metrics


def _web_server(application: Any, daemon: Any, metrics: Any = None) -> Any:
    """The daemon's HTTP surface on [server] host:port: the webhook receivers (for the sources,
    the gateway and the ledger that push), /healthz, /metrics and the dashboard."""
    from datetime import timedelta

    from adapters.observability import metrics_routes
    from adapters.web.health import LATE_GRACE, HealthProbe, connection_reader, health_routes
    from adapters.web.webhooks import create_app, webhook_routes
    from scheduler.bootstrap import build_receivers
    from scheduler.jobs import WebServer

    receivers, notes = build_receivers(application.config)
    money, money_notes = _payment_receivers(application)
    receivers.update(money)
    notes += money_notes
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    routes: list[Any] = []
    if receivers:
        routes += webhook_routes(
            receivers, application.uow_factory(), application.clock, on_delivery=daemon.poll_soon
        )
    cfg = application.config
    schedule = cfg.schedule
    probe = HealthProbe(
        application.store,
        application.tenant,
        application.clock,
        cfg.ledger,
        scheduler=daemon.state,
        ledger_status=connection_reader(
            cfg.ledger, application.store, application.tenant, application.clock.now
        ),
        # deliveries wait for the poll (sources) or reconcile (gateway, ledger) job
        inbox_stale_after=timedelta(
            seconds=3 * max(schedule.poll_seconds, schedule.reconcile_seconds)
        )
        + LATE_GRACE,
    )
    routes += health_routes(probe)
    if metrics is not None:
        routes += metrics_routes(metrics)
    routes += _dashboard(application)
    return WebServer(create_app(routes), cfg.server.host, cfg.server.port)


def _dashboard(application: Any) -> list[Any]:
    """The dashboard's routes (adapters/web/dashboard.py), after ours: it owns `/`. It reads
    its token from [server] dashboard_token_env and refuses a non-loopback host without one."""
    import importlib.util

    if importlib.util.find_spec("adapters.web.dashboard") is None:
        return []  # a build without the dashboard: webhooks, /healthz and /metrics only
    from adapters.web.dashboard import dashboard_routes

    return list(dashboard_routes(application))


def _payment_receivers(application: Any) -> tuple[dict[str, Any], list[str]]:
    """Stripe's and the ledger's receivers; the ledger's realm or tenant is read from the
    stored connection when the config names none."""
    from adapters.store.tokens import SqlTokenStore, stored_connections
    from adapters.web.payment_receivers import payment_receivers

    kind = str(application.config.ledger.kind)
    connected: dict[str, str] = {}
    if kind in OAUTH_LEDGERS:
        try:
            if kind in stored_connections(application.store, application.tenant):
                record = SqlTokenStore(application.store, application.tenant).load_record(kind)
                if record is not None and record.token.realm:
                    connected[kind] = record.token.realm
        except ConfigError as exc:
            return {}, [f"ledger and payment webhooks are off: {exc}"]
    return payment_receivers(application.config, connected=connected)


# --------------------------------------------------------------------------- webhooks / import


@app.command()
@user_errors
def reconcile(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Compare the ledger with the payment gateway and print every difference "
            "(exit 1 when anything differs); writes nothing.",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--from", help="Only movements and payments from this date (2026-11-01)."),
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Book what moved in the payment gateway into the ledger, or check that it all matches."""
    from datetime import date

    start = None
    if since is not None:
        try:
            start = date.fromisoformat(since)
        except ValueError:
            err.print(f"--from {since!r} is not a date like 2026-11-01")
            raise typer.Exit(EXIT_USAGE) from None
    application = _app(config, database_url)
    try:
        service = application.service()
        if not check:
            stages = [service.reconcile_payments(), service.book_money_trail()]
            for stage in stages:
                out.print(f"{stage.name:<10} {stage.done}")
            problems = [p for stage in stages for p in stage.problems]
            for problem in problems:
                err.print(f"  - {escape(problem)}", soft_wrap=True)
            if problems:
                raise typer.Exit(EXIT_ATTENTION)
            return
        result = service.check_reconciliation(start)
    finally:
        application.close()
    out.print(
        f"checked {result.movements} gateway movement(s)"
        + (f" from {start}" if start else "")
        + f": clearing account {result.clearing}, gateway balance {result.balance}"
    )
    if result.clean:
        out.print("[green]clean[/green]: the ledger matches the payment gateway")
        return
    out.print(f"[bold]{len(result.differences)} difference(s)[/bold]")
    for what, detail in result.differences:
        out.print(f"  {what}: {escape(detail)}", soft_wrap=True)
    raise typer.Exit(EXIT_CONFIG)


clients_app = typer.Typer(help="The firm's clients at the payment gateway.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")


@clients_app.command("invite")
@user_errors
def clients_invite(
    client: Annotated[str, typer.Argument(help="The client's key in the practice system.")],
    email: Annotated[
        str | None, typer.Option("--email", help="Prefill the client's email address.")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Print a link where the client saves a card or US bank account for automatic payment."""
    application = _app(config, database_url)
    try:
        gateway = application.adapters.gateway
        if gateway is None:
            raise ConfigError(
                'inviting clients needs a payment gateway: set [payments] kind = "stripe"'
            )
        with application.uow_factory()() as uow:
            known = [c for c in uow.clients.list() if c.key == client]
        if not known:
            raise ConfigError(
                f"no client {client!r} is known yet: run `milestone-sync sync --once` so the "
                "practice system's clients are read, or check the key"
            )
        link = gateway.invite(ClientKey(client), known[0].name, email)
    finally:
        application.close()
    out.print(f"Send {escape(known[0].name)} this link to save a card or bank account:")
    out.print(link.url, soft_wrap=True, markup=False, highlight=False)
    if link.expires_at is not None:
        out.print(f"(it expires {link.expires_at:%Y-%m-%d %H:%M} UTC; invite again for a new one)")


webhooks_app = typer.Typer(
    help="Webhook subscriptions at the practice systems.", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")
import_app = typer.Typer(help="Import completed phases from files.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@webhooks_app.command("ensure")
@user_errors
def webhooks_ensure(
    config: ConfigOption = Path(DEFAULT_CONFIG), database_url: DatabaseOption = None
) -> None:
    """Create or repair each Karbon source's Work and Contact subscriptions."""
    from adapters.karbon.adapter import KarbonSource

    application = _app(config, database_url, open_store=False)
    try:
        for note in application.adapters.notes:
            err.print(f"[yellow]note:[/yellow] {escape(note)}")
        karbon = [s for s in application.adapters.sources if isinstance(s, KarbonSource)]
        if not karbon:
            raise ConfigError("no Karbon source is configured (with its credentials set)")
        for source in karbon:
            url = source.options.webhook_url
            if not url:
                raise ConfigError(
                    f"sources[{source.source_id}]: set [server] public_url (the address Karbon "
                    "can reach this daemon at) and signing_key_env, then run this again"
                )
            notes = source.ensure_webhooks()
            for note in notes:
                out.print(f"{source.source_id}: {escape(note)}")
            if not notes:
                out.print(f"{source.source_id}: Work and Contact webhooks already go to {url}")
    finally:
        application.close()


@import_app.command("phases")
@user_errors
def import_phases(
    file: Annotated[Path, typer.Argument(help="CSV of completed phases (docs/phase-events.md).")],
    source: Annotated[
        str | None,
        typer.Option(help="The csv or webhook source to import into (default: the only one)."),
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Queue completed phases from a CSV export; the next poll maps and bills them."""
    from adapters.generic.csv_import import inbox_entry, read_file
    from connector.config import SourceKind
    from connector.domain.ids import SourceId

    application = _app(config, database_url)
    try:
        candidates = [
            s.id
            for s in application.config.sources
            if s.kind in (SourceKind.CSV, SourceKind.WEBHOOK)
        ]
        if source is None and len(candidates) == 1:
            source = candidates[0]
        if source not in candidates:
            raise ConfigError(
                f"--source must name a source of kind csv or webhook "
                f"(configured: {', '.join(candidates) or 'none'})"
            )
        result = read_file(file)
        added = duplicates = 0
        now = application.clock.now()
        with application.uow_factory()() as uow:
            for _line, event in result.events:
                topic, resource, dedupe, body = inbox_entry(event)
                if uow.inbox.add(SourceId(source), topic, resource, dedupe, body, now):
                    added += 1
                else:
                    duplicates += 1
            uow.commit()
    finally:
        application.close()
    out.print(f"queued {added} phase(s) for {source}; {duplicates} already imported")
    if result.problems:
        err.print(f"[yellow]{len(result.problems)} row(s) skipped:[/yellow]")
        for problem in result.problems:
            err.print(f"  - {escape(problem)}", soft_wrap=True)
        raise typer.Exit(EXIT_ATTENTION)


# --------------------------------------------------------------------------- status / approve


@app.command()
@user_errors
def status(
    config: ConfigOption = Path(DEFAULT_CONFIG), database_url: DatabaseOption = None
) -> None:
    """Milestones by state, and everything that needs an admin, with what to do."""
    application = _app(config, database_url)
    try:
        with application.uow_factory()() as uow:
            milestones = uow.milestones.list()
            unmapped = uow.phases.list(PhaseStatus.UNMAPPED)
            health = {
                conn.id: uow.cursors.get(conn.id, SOURCE_HEALTH)
                for conn in application.config.sources
            }
            inbox = uow.inbox.counts()
            failed = [d for d in uow.inbox.recent(limit=200) if d.status is DeliveryStatus.FAILED]
        ledger_connection = _ledger_connection_state(application)
    finally:
        application.close()
    _print_sources(application, health, inbox, failed[:10])
    _print_ledger_connection(ledger_connection)
    counts = Counter(m.state for m in milestones)
    table = Table(title=f"Milestones of {application.config.firm.name}")
    table.add_column("state")
    table.add_column("count", justify="right")
    table.add_column("amount", justify="right")
    for state in MilestoneState:
        if counts[state]:
            amounts = _sum_by_currency(m for m in milestones if m.state is state)
            table.add_row(state.value, str(counts[state]), amounts)
    out.print(table if milestones else "No milestones yet.")
    blocked = [m for m in milestones if m.state is MilestoneState.INVOICING and BLOCKED in m.extra]
    if blocked:
        out.print(f"[bold]Not invoiced until the mapping is fixed ({len(blocked)})[/bold]")
        for milestone in blocked:
            reason = escape(milestone.extra[BLOCKED])
            out.print(f"  {milestone.key} ({milestone.amount}): {reason}")
    attention = [m for m in milestones if m.state is MilestoneState.NEEDS_ATTENTION]
    if attention or unmapped:
        out.print(f"[bold]Needs attention ({len(attention) + len(unmapped)})[/bold]")
        for milestone in attention:
            reason = escape(milestone.attention_reason or "")
            out.print(f"  {milestone.key} ({milestone.amount}): {reason}")
        for phase in unmapped:
            out.print(
                f"  phase {phase.phase.source}:{phase.phase.work_item} "
                f"{phase.phase.phase!r}: {escape(phase.reason or '')}"
            )


@app.command()
@user_errors
def approve(
    keys: Annotated[list[str] | None, typer.Argument(help="Milestone keys to approve.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Approve everything waiting.")] = False,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Release milestones awaiting approval to be invoiced."""
    if not keys and not all_:
        err.print("name milestone keys to approve, or pass --all")
        raise typer.Exit(EXIT_USAGE)
    application = _app(config, database_url)
    try:
        approved = application.service().approve(
            None if all_ else [MilestoneKey(k) for k in keys or []]
        )
    finally:
        application.close()
    for key in approved:
        out.print(f"approved {key}")
    missing = set(keys or []) - set(approved)
    if missing:
        raise ConfigError(f"not awaiting approval: {', '.join(sorted(missing))}")


@app.command()
@user_errors
def retry(
    keys: Annotated[list[str] | None, typer.Argument(help="Milestone keys to retry.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Retry everything needing attention.")
    ] = False,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """After fixing what `status` said, send milestones needing attention back to work."""
    if not keys and not all_:
        err.print("name milestone keys to retry, or pass --all")
        raise typer.Exit(EXIT_USAGE)
    application = _app(config, database_url)
    try:
        retried = application.service().retry(
            None if all_ else [MilestoneKey(k) for k in keys or []]
        )
        with application.uow_factory()() as uow:
            states = {key: uow.milestones.get(key) for key in retried}
    finally:
        application.close()
    for key, milestone in states.items():
        out.print(f"retrying {key}: now {milestone.state if milestone else '?'}")
    missing = set(keys or []) - set(retried)
    if missing:
        raise ConfigError(f"not needing attention: {', '.join(sorted(missing))}")


# --------------------------------------------------------------------------- ledger connection

OAUTH_LEDGERS = ("quickbooks", "xero")
LedgerArgument = Annotated[
    str, typer.Argument(help="The ledger to connect: quickbooks or xero.", metavar="LEDGER")
]
_MANAGE_APPS = {
    "quickbooks": "in QuickBooks: Settings (gear) > Manage apps",
    "xero": "in Xero: Settings > Connected apps",
}


@app.command("connect")
@user_errors
def connect_command(
    ledger: LedgerArgument,
    paste: Annotated[
        bool,
        typer.Option("--paste", help="Headless server: paste the address the browser was sent to."),
    ] = False,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Xero: the organisation (tenant id or name) to bill into."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Listen for the redirect on this port (as registered)."),
    ] = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the link; do not open a browser.")
    ] = False,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Connect QuickBooks or Xero: approve the app in a browser; the token is stored encrypted."""
    import sys
    from datetime import UTC, datetime

    from adapters.oauth.client import OAuthClient
    from adapters.oauth.connect import LoopbackListener, connect, redirect_uri_for
    from adapters.oauth.providers import client_credentials, provider_for_ledger
    from adapters.store.tokens import SqlTokenStore

    cfg, store = _ledger_store(ledger, config, database_url)
    try:
        if tenant and ledger != "xero":
            raise ConfigError("--tenant picks a Xero organisation; QuickBooks names the company")
        provider = provider_for_ledger(cfg.ledger)
        client = OAuthClient(provider, client_credentials(cfg.ledger))
        tokens = SqlTokenStore(store, cfg.firm.id)
        redirect_uri = redirect_uri_for(cfg.ledger, cfg.server, port)
        pending = client.authorization(redirect_uri)
        if paste:
            _show_authorization_link(provider.label, pending.url, no_browser, paste=True)
            redirect_url = typer.prompt("Address the browser was sent to")
        else:
            with LoopbackListener(redirect_uri, pending.state) as listener:
                _show_authorization_link(provider.label, pending.url, no_browser, paste=False)
                redirect_url = listener.wait()
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        result = connect(
            client,
            tokens,
            pending,
            redirect_url,
            now=datetime.now(UTC),
            tenant=tenant or cfg.ledger.options.get("tenant_id"),
            prompt=_choose_tenant if interactive else None,
            minorversion=cfg.ledger.options.get("minorversion", "75"),
        )
    finally:
        store.dispose()
    what = "organisation" if ledger == "xero" else "company"
    out.print(
        f"[green]connected[/green] {provider.label} {what} {escape(result.describe())} "
        f"for firm {cfg.firm.id!r}; the token is stored encrypted",
        soft_wrap=True,
    )
    if result.replaced:
        out.print(f"  (this replaces the connection to {escape(result.replaced)})")
    configured = cfg.ledger.options.get("realm_id")
    if ledger == "quickbooks" and configured and configured != result.realm:
        err.print(
            f"[yellow]note:[/yellow] ledger.options.realm_id is {configured!r} but you "
            f"connected company {result.realm!r}: update or remove realm_id",
            soft_wrap=True,
        )


@app.command("disconnect")
@user_errors
def disconnect_command(
    ledger: LedgerArgument,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
) -> None:
    """Revoke the ledger connection at QuickBooks or Xero and delete the stored token."""
    from adapters.oauth.client import OAuthClient
    from adapters.oauth.connect import disconnect
    from adapters.oauth.providers import client_credentials, provider_for_ledger
    from adapters.store.tokens import SqlTokenStore

    cfg, store = _ledger_store(ledger, config, database_url)
    try:
        provider = provider_for_ledger(cfg.ledger)
        tokens = SqlTokenStore(store, cfg.firm.id)
        client, why = None, ""
        try:
            client = OAuthClient(provider, client_credentials(cfg.ledger))
        except ConfigError as exc:
            why = str(exc)
        result = disconnect(client, tokens, ledger, why)
    finally:
        store.dispose()
    if not result.had_connection:
        out.print(f"{provider.label} was not connected for firm {cfg.firm.id!r}: nothing to do")
        return
    if result.revoked:
        out.print(
            f"revoked the {provider.label} connection and deleted the stored token "
            f"(firm {cfg.firm.id!r})",
            soft_wrap=True,
        )
        return
    out.print(f"deleted the stored {provider.label} token (firm {cfg.firm.id!r})")
    err.print(
        f"[yellow]note:[/yellow] {escape(result.note or '')}; to be sure the app has no access, "
        f"disconnect it {_MANAGE_APPS[ledger]}",
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_ATTENTION)


def _ledger_store(ledger: str, config: Path, database_url: str | None) -> tuple[Any, Any]:
    """The config and the opened store, without building adapters (a ledger adapter may need
    the very connection this command makes)."""
    from adapters.store.engine import open_store
    from mappings.loader import load_config
    from scheduler.bootstrap import resolve_database_url

    if ledger not in OAUTH_LEDGERS:
        err.print(f"LEDGER must be one of {', '.join(OAUTH_LEDGERS)}, not {ledger!r}")
        raise typer.Exit(EXIT_USAGE)
    cfg = load_config(config)
    if str(cfg.ledger.kind) != ledger:
        raise ConfigError(
            f"{config}: [ledger] kind is {str(cfg.ledger.kind)!r}: set kind = {ledger!r} (with "
            f"client_id_env and client_secret_env) before connecting {ledger}"
        )
    return cfg, open_store(resolve_database_url(cfg, config, database_url))


def _show_authorization_link(label: str, url: str, no_browser: bool, *, paste: bool) -> None:
    import contextlib
    import os
    import sys
    import webbrowser

    out.print(f"Open this link, sign in to {label} and approve milestone-sync:")
    out.print(url, soft_wrap=True, markup=False, highlight=False)
    if paste:
        out.print(
            "Then copy the whole address your browser ends on (it may show an error page: that "
            "is fine) and paste it here."
        )
    else:
        out.print("Waiting for the browser to come back...")
    sys.stdout.flush()
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if not no_browser and not headless:
        with contextlib.suppress(webbrowser.Error):
            webbrowser.open(url)


def _choose_tenant(tenants: Any) -> int:
    out.print("Xero connected several organisations:")
    for number, tenant in enumerate(tenants, start=1):
        out.print(f"  {number}. {escape(tenant.describe())}")
    choice: int = typer.prompt("Bill into which one (number)", type=int)
    return choice - 1


def _ledger_connection_state(application: Any) -> Any:
    """The ledger connection's status, or a line saying why it cannot be read; None for a
    ledger without OAuth."""
    from adapters.oauth.providers import provider_for_ledger
    from adapters.oauth.status import connection_status
    from adapters.store.tokens import SqlTokenStore, stored_connections

    kind = str(application.config.ledger.kind)
    if kind not in OAUTH_LEDGERS:
        return None
    try:
        provider = provider_for_ledger(application.config.ledger)
        record = None
        if kind in stored_connections(application.store, application.tenant):
            record = SqlTokenStore(application.store, application.tenant).load_record(kind)
    except ConfigError as exc:
        return f"cannot read the {kind} connection: {exc}"
    return connection_status(provider, record, application.clock.now())


def _print_ledger_connection(state: Any) -> None:
    if state is None:
        return
    if isinstance(state, str):
        out.print(f"ledger connection: [red]unreadable[/red]: {escape(state)}", soft_wrap=True)
        return
    if not state.connected:
        label = "[red]not connected[/red]"
    elif state.needs_reconnect:
        label = "[red]needs reconnect[/red]"
    else:
        label = "[yellow]warning[/yellow]" if state.warnings else "[green]connected[/green]"
    out.print(f"ledger connection ({state.provider}): {label}")
    for line in state.lines:
        out.print(f"  {escape(line)}", soft_wrap=True)
    for warning in state.warnings:
        out.print(f"  [yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)


# --------------------------------------------------------------------------- doctor

_DOCTOR_LABELS = {
    "ok": "[green]ok[/green]     ",
    "warning": "[yellow]warning[/yellow]",
    "problem": "[red]problem[/red]",
}


@app.command()
@user_errors
def doctor(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    database_url: DatabaseOption = None,
    migrate: Annotated[
        bool,
        typer.Option("--migrate", help="Apply pending database migrations first (back up first)."),
    ] = False,
) -> None:
    """Check the installation: config, database, each connection (one cheap read), Karbon
    webhooks, token expiry; says what to do about each (exit 1 on any problem)."""
    from scheduler.doctor import Level, run_doctor

    findings = run_doctor(config, database_url, migrate=migrate)
    for finding in findings:
        label = _DOCTOR_LABELS[finding.level]
        out.print(f"{label} {finding.check}: {escape(finding.message)}", soft_wrap=True)
        if finding.fix:
            out.print(f"         -> {escape(finding.fix)}", soft_wrap=True)
    problems = sum(f.level is Level.PROBLEM for f in findings)
    warnings = sum(f.level is Level.WARNING for f in findings)
    out.print(f"{problems} problem(s), {warnings} warning(s)")
    if problems:
        raise typer.Exit(EXIT_CONFIG)


# --------------------------------------------------------------------------- demo


@app.command()
@user_errors
def demo(
    ledger: Annotated[
        str, typer.Option("--ledger", help="The ledger to emulate: quickbooks or xero.")
    ] = "quickbooks",
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Picks the firm's fees, keys and days: same seed, same summary."
        ),
    ] = 7,
    days: Annotated[
        int,
        typer.Option(
            "--days", min=7, max=90, help="How long the month is (its schedule is fitted in)."
        ),
    ] = 30,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="A new or empty directory for the config, state and log "
            "(default: ./milestone-sync-demo-<timestamp>).",
            show_default=False,
        ),
    ] = None,
    no_serve: Annotated[
        bool,
        typer.Option("--no-serve", help="Print the summary and exit; do not serve the dashboard."),
    ] = False,
) -> None:
    """The whole product without credentials: a small firm's month over emulated Karbon, close
    checklist, QuickBooks or Xero and Stripe, run by the real daemon on a fast clock; then a
    summary and (on a terminal) the dashboard (docs/demo.md)."""
    from scheduler.demo import DemoOptions
    from scheduler.demo import main as run_demo

    if ledger not in OAUTH_LEDGERS:
        err.print(f"--ledger must be one of {', '.join(OAUTH_LEDGERS)}, not {ledger!r}")
        raise typer.Exit(EXIT_USAGE)
    options = DemoOptions(
        ledger=ledger, seed=seed, days=days, directory=directory, serve=not no_serve
    )
    code = run_demo(options)
    if code != EXIT_OK:
        raise typer.Exit(code)


# --------------------------------------------------------------------------- helpers


def _sum_by_currency(milestones: Iterable[Milestone]) -> str:
    totals: dict[str, Money] = {}
    for m in milestones:
        totals[m.amount.currency] = (
            totals.get(m.amount.currency, Money.zero(m.amount.currency)) + m.amount
        )
    return ", ".join(str(v) for v in totals.values())


def _print_sources(
    application: Any,
    health: dict[str, str | None],
    inbox: dict[tuple[str, DeliveryStatus], int],
    failed: list[Any],
) -> None:
    import json

    for note in application.adapters.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for source_id, text in health.items():
        pending = inbox.get((source_id, DeliveryStatus.PENDING), 0)
        queued = f"; {pending} webhook deliveries waiting" if pending else ""
        if not text:
            out.print(f"source {source_id}: not polled yet{queued}")
            continue
        state = json.loads(text)
        if state.get("ok"):
            out.print(f"source {source_id}: ok at {state['at']}{queued}")
        else:
            label = "needs an admin" if state.get("kind") == "config" else "failing"
            out.print(
                f"source {source_id}: [red]{label}[/red] since {state['at']}: "
                f"{escape(state.get('error', ''))}{queued}",
                soft_wrap=True,
            )
    for stored in failed:
        delivery = stored.delivery
        out.print(
            f"  delivery {delivery.id} ({delivery.source} {delivery.topic} {delivery.resource}) "
            f"could not be used: {escape(stored.note or '')}",
            soft_wrap=True,
        )


def _print_problems(report: CycleReport) -> None:
    if report.problems:
        err.print(f"[yellow]{len(report.problems)} item(s) need attention:[/yellow]")
        for problem in report.problems:
            err.print(f"  - {escape(problem)}", soft_wrap=True)


def main() -> None:
    app()
