"""`milestone-sync demo`: the whole product in one command, without credentials. A small firm's
month over the Karbon, close-checklist, ledger and Stripe emulators, run by the real daemon on
an accelerated clock, ending with a summary and (on a terminal) the dashboard.

How the month passes: one `EmulatedTime` drives every emulator and every adapter (scaled, so
back-offs and rate budgets pass quickly), and jumps to the next morning once the daemon has
finished the day's work. The demo knows that by watching the daemon's own `SyncService`: each
stage call is timestamped on its way through, and a day is done when poll, map, invoice,
collect, reconcile and the money trail have each run after the day's events, in that order.
Counts then never depend on this machine's speed: same seed, same summary."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time as _time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from cryptography.fernet import Fernet
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapters.emulation.clock import EmulatedTime
from adapters.emulation.specs import specs_dir
from adapters.sandbox.firm import (
    ADVISORY_FEE,
    CLOSE_FEE,
    CURRENCY,
    FIRM_ID,
    FIRM_NAME,
    START,
    Firm,
    build_firm,
)
from adapters.sandbox.world import World
from connector.domain.errors import ConfigError, InvariantViolation
from connector.domain.ids import ClientKey, MilestoneKey
from connector.domain.model import Milestone, MilestoneState
from connector.ports import PhaseStatus
from connector.services import no_faults

S = MilestoneState
SCALE = 600.0  # ten simulated minutes a second between the mornings the clock jumps to
INTERVAL = 0.25  # seconds between runs of each daemon job (real, short: the clock is fast)
DAY_TIMEOUT = 90.0  # real seconds a day's work may take before the demo calls itself stuck
TAIL_DAYS = 21  # after the month, quiet days for the last bank debits and payouts, at most
SETTLED = frozenset({S.RECONCILED, S.PAID_EXTERNALLY, S.VOIDED, S.NEEDS_ATTENTION})
# the stages of one cycle in the order the daemon's jobs run them
CHAIN = (
    "poll_sources",
    "map_phases",
    "issue_invoices",
    "collect_payments",
    "reconcile_payments",
    "book_money_trail",
)
SUCCESS_URL, CANCEL_URL = "https://smithcpa.example/thanks", "https://smithcpa.example"
ENV_NAMES = {
    "karbon_token": "DEMO_KARBON_TOKEN",
    "karbon_access_key": "DEMO_KARBON_ACCESS_KEY",
    "karbon_signing_key": "DEMO_KARBON_SIGNING_KEY",
    "closes_token": "DEMO_CLOSES_TOKEN",
    "closes_webhook_secret": "DEMO_CLOSES_WEBHOOK_SECRET",
    "ledger_client_id": "DEMO_LEDGER_CLIENT_ID",
    "ledger_client_secret": "DEMO_LEDGER_CLIENT_SECRET",
    "stripe_key": "DEMO_STRIPE_SECRET_KEY",
}
TOKEN_KEY_ENV = "MILESTONE_SYNC_TOKEN_KEY"  # adapters.store.tokens.DEFAULT_TOKEN_KEY_ENV


class DemoFailed(Exception):
    """The demo firm did not end as it must (a bug: exit 4); the message says what."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during the month."""


@dataclass(frozen=True)
class DemoOptions:
    ledger: str = "quickbooks"
    seed: int = 7
    days: int = 30
    directory: Path | None = None
    serve: bool = True


class DemoTime(EmulatedTime):
    """The demo's clock: scaled, jumping to each morning, slowed to real time at the end (so the
    dashboard's "today" stays on the month's last day while a person looks at it)."""

    def jump_to(self, moment: datetime) -> None:
        ahead = (moment - self.now()).total_seconds()
        if ahead > 0:
            self.advance(ahead)

    def set_scale(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        with self._lock:
            real = _time.monotonic()
            self._offset += (real - self._real0) * self.scale
            self._real0, self.scale = real, scale


@dataclass(frozen=True)
class _Call:
    stage: str
    began: float
    ended: float
    error: str | None


class WatchedService:
    """The daemon's own SyncService with each stage call timestamped on the way through (how the
    demo knows a day's work is done); every call still goes to the real service."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._cond = threading.Condition()
        self._calls: list[_Call] = []
        self.last_error: str | None = None
        self.errors = 0  # stage calls that raised (none should, in the demo firm's month)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._service, name)
        if name not in CHAIN and name != "reprice":
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = _time.monotonic()
            error = None
            try:
                return attr(*args, **kwargs)
            except BaseException as exc:
                error = f"{name}: {type(exc).__name__}: {exc}"
                raise
            finally:
                with self._cond:
                    self._calls.append(_Call(name, began, _time.monotonic(), error))
                    if error:
                        self.last_error = error
                        self.errors += 1
                    self._cond.notify_all()

        return timed

    def wait_for_cycle(self, after: float, timeout: float, stop: threading.Event) -> bool:
        """True once every stage of CHAIN ran, in order, starting after `after`."""
        deadline = _time.monotonic() + timeout
        mark = after
        with self._cond:
            self._calls = [c for c in self._calls if c.ended >= after]
            for stage in CHAIN:
                while True:
                    found = next(
                        (c for c in self._calls if c.stage == stage and c.began >= mark), None
                    )
                    if found is not None:
                        mark = found.ended
                        break
                    left = deadline - _time.monotonic()
                    if left <= 0 or stop.is_set():
                        return False
                    self._cond.wait(min(left, 0.2))
        return True


# --------------------------------------------------------------------------- the directory


def fresh_directory(given: Path | None) -> Path:
    """`--dir` (new or empty), else ./milestone-sync-demo-<timestamp>."""
    if given is not None:
        if given.exists() and (not given.is_dir() or any(given.iterdir())):
            raise ConfigError(f"--dir {given}: not an empty directory; name a new one")
        given.mkdir(parents=True, exist_ok=True)
        return given.resolve()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path.cwd() / f"milestone-sync-demo-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _inline(options: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in options.items()) + " }"


def write_config(directory: Path, firm: Firm, world: World, port: int) -> Path:
    """milestone-sync.toml: the firm's mapping over the emulators, secrets named by *_env."""
    setup = world.books.setup
    client_tables = []
    for client in firm.clients:
        # Karbon's API does not return the ExternalKey linking a client to the ledger, so a
        # firm names each client's ledger customer here (docs/karbon.md)
        lines = [f'ledger_customer_id = "{world.customers[client.key]}"']
        if client.role.invoice_only:
            lines.append('collection_mode = "invoice_only"')
        if client.close_fee is not None and client.close_fee != CLOSE_FEE:
            lines.append(f'fees = {{ monthly-close = "{client.close_fee}" }}')
        client_tables.append(
            f'[clients."{client.key}"]  # {client.name}\n' + "\n".join(lines) + "\n"
        )
    text = f"""\
# milestone-sync demo: {FIRM_NAME} over the emulators (written by `milestone-sync demo`,
# seed {firm.seed}, {firm.days} days, {setup.label}). The *_env names below were set by the demo in
# its own process, to keys the emulators made up for this run: no real credential is used.

[firm]
id = "{FIRM_ID}"
name = "{FIRM_NAME}"
currency = "{CURRENCY}"
timezone = "America/Chicago"

[database]
url = {_toml("sqlite:///" + str(directory / "state.db"))}

[[sources]]
id = "karbon"
kind = "karbon"
base_url = "{world.karbon.url}"
token_env = "{ENV_NAMES["karbon_token"]}"
access_key_env = "{ENV_NAMES["karbon_access_key"]}"
signing_key_env = "{ENV_NAMES["karbon_signing_key"]}"
options = {{ sweep_minutes = "30", budget_per_minute = "100" }}

[[sources]]
id = "closes"
kind = "keeper"
base_url = "{world.closes.url}"
token_env = "{ENV_NAMES["closes_token"]}"
webhook_secret_env = "{ENV_NAMES["closes_webhook_secret"]}"

[server]
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"

[ledger]
kind = "{setup.kind}"
base_url = "{world.ledger_url}"
client_id_env = "{ENV_NAMES["ledger_client_id"]}"
client_secret_env = "{ENV_NAMES["ledger_client_secret"]}"
options = {_inline(setup.options)}

[payments]
kind = "stripe"
base_url = "{world.stripe.url}"
secret_key_env = "{ENV_NAMES["stripe_key"]}"
options = {{ success_url = "{SUCCESS_URL}", cancel_url = "{CANCEL_URL}" }}

[defaults]
item = "{setup.tax_item}"
tax_code = "{setup.tax_code}"
terms = "Net 15"
send_invoice = true

[collection]
default_mode = "auto_charge"
retry_days = [1, 3, 7]

[schedule]  # `milestone-sync demo` runs each job every {INTERVAL} s of real time
poll_seconds = 1
invoice_seconds = 1
collect_seconds = 1
reconcile_seconds = 1

[[plans]]
id = "tax-return"
name = "Business tax return"
match = {{ source = "karbon", work_type = "Tax Return" }}
description = "{{engagement}} - {{milestone}}"
invoice = {{ item = "{setup.tax_item}" }}

[[plans.milestones]]
id = "documents"
name = "Documents received"
trigger = {{ status = "In Progress", secondary = "Documents received" }}
percent = 40

[[plans.milestones]]
id = "review"
name = "Review complete"
trigger = {{ status = "In Progress", secondary = "Review" }}
percent = 40

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = {{ status = "Completed" }}
remainder = true

[[plans]]
id = "monthly-close"
name = "Monthly bookkeeping"
match = {{ source = "closes" }}
recurring = "monthly"
fee = "{CLOSE_FEE}"
description = "Bookkeeping {{period}} - {{client}}"
invoice = {{ item = "{setup.bookkeeping_item}", send_invoice = false }}

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = {{ close_status = "Done" }}
remainder = true

[[plans]]
id = "advisory"
name = "Advisory project"
match = {{ source = "karbon", work_type = "Advisory", title_pattern = "(?i)cash ?flow" }}
priority = 10
fee = "{ADVISORY_FEE}"
collection_mode = "approval_required"   # a partner approves each invoice before it goes out
invoice = {{ item = "{setup.advisory_item}" }}

[[plans.milestones]]
id = "kickoff"
name = "Kick-off and data review"
trigger = {{ status = "In Progress" }}
amount = "2500.00"

[[plans.milestones]]
id = "delivery"
name = "Forecast delivered"
trigger = {{ status = "Completed" }}
amount = "3500.00"

"""
    path = directory / "milestone-sync.toml"
    path.write_text(text + "\n".join(client_tables))
    return path


# --------------------------------------------------------------------------- connections


def connect_ledger(application: Any, time: EmulatedTime) -> str:
    """What `milestone-sync connect` does, with the browser's consent (automatic at the
    emulator) fetched directly: the real OAuth flow, the token stored encrypted."""
    import requests

    from adapters.oauth.client import OAuthClient
    from adapters.oauth.connect import connect, redirect_uri_for
    from adapters.oauth.providers import client_credentials, provider_for_ledger
    from adapters.store.tokens import SqlTokenStore

    config = application.config
    provider = provider_for_ledger(config.ledger)
    client = OAuthClient(
        provider, client_credentials(config.ledger), now=time.now, sleep=time.sleep
    )
    pending = client.authorization(redirect_uri_for(config.ledger, config.server, None))
    consent = requests.get(pending.url, allow_redirects=False, timeout=10)
    redirect = consent.headers.get("Location")
    if consent.status_code != 302 or not redirect:
        raise DemoFailed(f"the {provider.label} emulator gave no consent ({consent.status_code})")
    tokens = SqlTokenStore(application.store, application.tenant, clock=time)
    result = connect(client, tokens, pending, redirect, now=time.now())
    return result.describe()


def save_payment_methods(application: Any, world: World) -> None:
    """Each client with a payment method saves it through the Checkout link `milestone-sync
    clients invite` makes (card or bank account; the lost card saves fine, it declines later)."""
    gateway = application.adapters.gateway
    for client in world.firm.clients:
        if client.role.method is None or client.role.invoice_only:
            continue
        link = gateway.invite(ClientKey(client.key), client.name, client.email)
        world.stripe.complete_session(link.session_id, client.role.method)


def ensure_karbon_webhooks(application: Any) -> list[str]:
    """`milestone-sync webhooks ensure`: subscribe the daemon's receiver to Karbon."""
    from adapters.karbon.adapter import KarbonSource

    notes: list[str] = []
    for source in application.adapters.sources:
        if isinstance(source, KarbonSource):
            notes += source.ensure_webhooks()
    return notes


def log_to_file(path: Path) -> Any:
    """The daemon's JSON log lines (redacted, as in production) go to daemon.log, not the
    terminal: the progress display has the screen."""
    from scheduler.logging import redact

    stream = path.open("a", encoding="utf-8")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # a job whose last run is still queued behind another is skipped: expected at these
    # quarter-second intervals, not worth a line each time
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    return stream


# --------------------------------------------------------------------------- the month


@dataclass
class Tally:
    """What the progress display shows, read from the store after each day."""

    day: int = 0
    date: str = ""
    phases: int = 0
    invoices: int = 0
    charged: int = 0
    paid: int = 0
    reconciled: int = 0
    attention: int = 0
    waiting: int = 0  # awaiting approval
    happenings: list[str] = field(default_factory=list)


class Month:
    """The world's side of the month, on a thread beside the daemon: each morning the clock
    jumps ahead, people act in the practice systems, the ledger and Stripe, webhooks go out,
    and the demo waits for the daemon to finish the day's work."""

    def __init__(
        self,
        firm: Firm,
        world: World,
        application: Any,
        watched: WatchedService,
        time: DemoTime,
        on_day: Callable[[Tally], None],
    ) -> None:
        self.firm = firm
        self.world = world
        self.application = application
        self.watched = watched
        self.time = time
        self.on_day = on_day
        self.stop = threading.Event()
        self.tally = Tally()
        self.error: BaseException | None = None
        self.finished = False
        self.approved: list[str] = []
        self.settled_on: str | None = None
        self._waiting_since: dict[str, int] = {}  # milestone key or Xero draft -> day seen
        self._invoiced_on: dict[str, int] = {}  # invoice-only invoices -> day first seen
        self._stop_daemon: Callable[[], None] = lambda: None

    def run(self, stop_daemon: Callable[[], None]) -> None:
        self._stop_daemon = stop_daemon
        try:
            self._live()
            self.finished = True
        except BaseException as exc:
            self.error = exc
        finally:
            stop_daemon()

    def _wait(self, what: str) -> None:
        if not self.watched.wait_for_cycle(self._mark, DAY_TIMEOUT, self.stop):
            if self.stop.is_set():
                raise Interrupted(what)
            raise DemoFailed(
                f"the daemon did not finish {what} within {DAY_TIMEOUT:.0f} s"
                + (f" (last error: {self.watched.last_error})" if self.watched.last_error else "")
            )

    def _live(self) -> None:
        self._mark = 0.0
        self._wait("its start-up run")  # the first poll records Karbon's baseline: no events yet
        for day in range(self.firm.days + TAIL_DAYS):
            if day > 0:
                self.time.jump_to(self.firm.moment(day))
                self.world.stripe.run_due()  # overnight: funds available, debits settle, payouts
            happenings = self._morning(day, tail=day >= self.firm.days)
            for step in self.firm.steps_on(day):
                self.world.apply(step)
                happenings.append(step.label)
            self.time.advance(timedelta(minutes=2))  # past Karbon's one-minute coalescing
            self.world.deliver_webhooks()
            self._mark = _time.monotonic()
            self._wait(f"day {day}")
            self._count(day, happenings)
            if day >= self.firm.days - 1 and self._settled():
                self.settled_on = self.time.now().date().isoformat()
                return
        raise DemoFailed(
            f"the books did not settle within {TAIL_DAYS} days after the month: "
            + "; ".join(
                f"{m.key} is {m.state}" for m in self._milestones() if m.state not in SETTLED
            )
        )

    def _milestones(self) -> list[Milestone]:
        with self.application.uow_factory()() as uow:
            return list(uow.milestones.list())

    def _morning(self, day: int, *, tail: bool) -> list[str]:
        """The admins' and clients' part: a partner approves yesterday's advisory invoice, the
        invoice-only client posts its cheques."""
        done: list[str] = []
        names = {c.key: c.name for c in self.firm.clients}
        milestones = self._milestones()
        ready = [k for k, seen in self._waiting_since.items() if seen < day]
        books = self.world.books
        if ready and books.kind == "quickbooks":  # approval happens in milestone-sync
            described = {m.key: m.description for m in milestones}
            approved = self.application.service().approve([MilestoneKey(k) for k in ready])
            for key in approved:
                self.approved.append(key)
                done.append(f"a partner approved {described.get(key, key)}")
        elif ready:  # Xero keeps the invoice as a draft: the partner approves it there
            numbers = {str(i["InvoiceID"]): i.get("InvoiceNumber") for i in books.invoices()}
            for invoice_id in ready:
                books.approve(invoice_id)
                self.approved.append(invoice_id)
                done.append(f"a partner approved draft {numbers.get(invoice_id)} in Xero")
        for key in ready:
            self._waiting_since.pop(key, None)
        invoice_only = {c.key for c in self.firm.clients if c.role.invoice_only}
        for milestone in milestones:
            if milestone.client_key not in invoice_only or milestone.state is not S.INVOICED:
                continue
            assert milestone.invoice_id is not None
            first = self._invoiced_on.setdefault(milestone.invoice_id, day)
            if tail or day - first >= self.firm.cheque_after_days:
                self.world.pay_by_cheque(milestone.invoice_id, milestone.amount.amount)
                self._invoiced_on[milestone.invoice_id] = 10**6  # paid: never again
                done.append(
                    f"{names[milestone.client_key]} paid {milestone.invoice_number} by cheque"
                )
        return done

    def _count(self, day: int, happenings: list[str]) -> None:
        with self.application.uow_factory()() as uow:
            milestones = uow.milestones.list()
            phases = len(uow.phases.list())
        for milestone in milestones:
            if milestone.state is S.AWAITING_APPROVAL:
                self._waiting_since.setdefault(milestone.key, day)
        for draft in self.world.books.drafts():
            self._waiting_since.setdefault(draft, day)
        states = Counter(m.state for m in milestones)
        charged = [pi for pi in self.world.stripe.payment_intents() if pi["status"] == "succeeded"]
        self.tally = Tally(
            day=day,
            date=self.time.now().date().isoformat(),
            phases=phases,
            invoices=sum(1 for m in milestones if m.invoice_id is not None),
            charged=len(charged),
            paid=states[S.RECONCILED] + states[S.PAID_EXTERNALLY] + states[S.PAID],
            reconciled=states[S.RECONCILED],
            attention=states[S.NEEDS_ATTENTION],
            waiting=states[S.AWAITING_APPROVAL] + len(self.world.books.drafts()),
            happenings=happenings,
        )
        self.on_day(self.tally)

    def _settled(self) -> bool:
        """Every milestone final, Stripe's balance paid out and every payout arrived (and, as
        the day's cycle ran after that, booked)."""
        if any(m.state not in SETTLED for m in self._milestones()):
            return False
        if not self.world.stripe.balance().total.is_zero():
            return False
        return all(p["status"] in ("paid", "failed") for p in self.world.stripe.payouts())


# --------------------------------------------------------------------------- progress


class Display:
    """A live bar and table on a terminal; one line a day elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console, firm: Firm, ledger_label: str) -> None:
        self.console = console
        self.firm = firm
        self.live: Live | None = None
        self.recent: list[str] = []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("day {task.completed:>2.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(f"{FIRM_NAME} on {ledger_label}", total=firm.days)

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self.live = Live(self._render(Tally()), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def day(self, tally: Tally) -> None:
        self.recent = (self.recent + tally.happenings)[-5:]
        self.progress.update(self.task, completed=min(tally.day + 1, self.firm.days))
        if self.live is not None:
            self.live.update(self._render(tally))
            return
        when = f"day {tally.day + 1:>2}/{self.firm.days}" if tally.day < self.firm.days else "after"
        self.console.print(
            f"{tally.date}  {when}  phases {tally.phases:>3}  invoices {tally.invoices:>3}  "
            f"charged {tally.charged:>3}  paid {tally.paid:>3}  reconciled {tally.reconciled:>3}"
            f"  attention {tally.attention}",
            highlight=False,
            soft_wrap=True,
        )

    def _render(self, tally: Tally) -> Group:
        table = Table(box=None, show_header=True, header_style="bold")
        for column in (
            "simulated date",
            "phases seen",
            "invoices",
            "charged",
            "paid",
            "reconciled",
            "awaiting approval",
            "needs attention",
        ):
            table.add_column(column, justify="right")
        table.add_row(
            tally.date or START.date().isoformat(),
            str(tally.phases),
            str(tally.invoices),
            str(tally.charged),
            str(tally.paid),
            str(tally.reconciled),
            str(tally.waiting),
            str(tally.attention),
        )
        lines = "\n".join(f"  [dim]·[/dim] {escape(line)}" for line in self.recent)
        return Group(self.progress, table, lines)


# --------------------------------------------------------------------------- the summary


def _money(total: Decimal) -> str:
    return f"{CURRENCY} {total:,.2f}"


def _sum(values: Iterable[Decimal]) -> Decimal:
    return sum(values, Decimal("0.00"))


def summarise(
    firm: Firm, world: World, application: Any, month: Month, check: Any
) -> dict[str, Any]:
    """The month in numbers: only what the seed decides (no ids, paths or wall-clock times), so
    two runs with one seed print the same summary."""
    names = {c.key: c.name for c in firm.clients}
    with application.uow_factory()() as uow:
        milestones = uow.milestones.list()
        phases = uow.phases.list()
    kinds = Counter(p.status for p in phases)
    invoiced = [m for m in milestones if m.invoice_id is not None]
    states = Counter(m.state for m in milestones)
    intents = world.stripe.payment_intents()
    succeeded = [pi for pi in intents if pi["status"] == "succeeded"]
    declined = [pi for pi in intents if pi.get("last_payment_error")]
    fees = _sum(Decimal(bt["fee"]) / 100 for bt in world.stripe.balance_transactions())
    paid_out = _sum(
        Decimal(p["amount"]) / 100 for p in world.stripe.payouts() if p["status"] == "paid"
    )
    attention = sorted(
        (
            {
                "client": names.get(m.client_key, m.client_key),
                "milestone": m.description,
                "amount": str(m.amount.amount),
                "reason": m.attention_reason or "",
            }
            for m in milestones
            if m.state is S.NEEDS_ATTENTION
        ),
        key=lambda row: (row["client"], row["milestone"]),
    )
    by_cheque = [m for m in milestones if m.state is S.PAID_EXTERNALLY]
    reconciled = [m for m in milestones if m.state is S.RECONCILED]
    return {
        "firm": FIRM_NAME,
        "ledger": world.books.setup.label,
        "seed": firm.seed,
        "days": firm.days,
        "period": f"{START.date().isoformat()} to {month.settled_on}",
        "clients": len(firm.clients),
        "phases_seen": len(phases),
        "phases_billed": kinds[PhaseStatus.MAPPED],
        "phases_billing_nothing": kinds[PhaseStatus.IGNORED],
        "phases_unmapped": kinds[PhaseStatus.UNMAPPED],
        "milestones": len(milestones),
        "invoices_created": len(invoiced),
        "invoiced_amount": str(_sum(m.amount.amount for m in invoiced)),
        "approved_by_a_partner": len(month.approved),
        "charged": len(succeeded),
        "charged_amount": str(_sum(Decimal(pi["amount"]) / 100 for pi in succeeded)),
        "charges_declined": len(declined),
        "paid": len(reconciled) + len(by_cheque),
        "paid_by_cheque": len(by_cheque),
        "reconciled": len(reconciled),
        "reconciled_amount": str(_sum(m.amount.amount for m in reconciled)),
        "stripe_fees": str(fees),
        "paid_out_to_bank": str(paid_out),
        "needing_attention": attention,
        "states": {str(state): states[state] for state in MilestoneState if states[state]},
        "reconcile_check": {
            "clean": bool(check.clean),
            "movements": check.movements,
            "clearing": str(check.clearing.amount) if check.clearing is not None else None,
            "gateway_balance": str(check.balance.amount) if check.balance is not None else None,
            "differences": [f"{what}: {detail}" for what, detail in check.differences],
        },
        "vendor_refusals": len(world.violations()),
        "vendor_specs_checked": specs_dir() is not None,
        "daemon_errors": month.watched.errors,
    }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(
        title=f"{summary['firm']}: {summary['period']} on {summary['ledger']} "
        f"(seed {summary['seed']}, {summary['days']} days)",
        title_justify="left",
        show_header=True,
        header_style="bold",
    )
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("amount / detail")
    table.add_row(
        "phases seen",
        str(summary["phases_seen"]),
        f"{summary['phases_billed']} billed a milestone, {summary['phases_billing_nothing']} "
        f"bill nothing, {summary['phases_unmapped']} unmapped",
    )
    table.add_row(
        "invoices created",
        str(summary["invoices_created"]),
        _money(Decimal(summary["invoiced_amount"])),
    )
    table.add_row(
        "  approved by a partner first", str(summary["approved_by_a_partner"]), "advisory project"
    )
    table.add_row(
        "charged through Stripe",
        str(summary["charged"]),
        _money(Decimal(summary["charged_amount"])),
    )
    table.add_row("  declined", str(summary["charges_declined"]), "")
    table.add_row(
        "paid",
        str(summary["paid"]),
        f"{summary['reconciled']} by Stripe, {summary['paid_by_cheque']} by cheque",
    )
    table.add_row(
        "reconciled (payment booked in the ledger)",
        str(summary["reconciled"]),
        _money(Decimal(summary["reconciled_amount"])),
    )
    table.add_row(
        "Stripe fees booked / paid out to the bank",
        "",
        f"{_money(Decimal(summary['stripe_fees']))} / "
        f"{_money(Decimal(summary['paid_out_to_bank']))}",
    )
    table.add_row("needing attention", str(len(summary["needing_attention"])), "see below")
    check = summary["reconcile_check"]
    verdict = (
        f"[green]clean[/green]: the ledger matches Stripe ({check['movements']} movements; "
        f"clearing account {check['clearing']}, Stripe balance {check['gateway_balance']})"
        if check["clean"]
        else f"[red]{len(check['differences'])} difference(s)[/red]"
    )
    table.add_row("reconcile --check", "", verdict)
    table.add_row(
        "requests a vendor would refuse",
        str(summary["vendor_refusals"]),
        "every request checked against the vendors' own specs"
        if summary["vendor_specs_checked"]
        else "not checked: the vendors' specs are not beside the checkout (../shared/specs)",
    )
    console.print(table)
    if summary["needing_attention"]:
        rows = Table(
            title="Needing attention (what an admin does next)",
            title_justify="left",
            header_style="bold",
        )
        for column in ("client", "milestone", "amount", "reason"):
            rows.add_column(column, justify="right" if column == "amount" else "left")
        for row in summary["needing_attention"]:
            rows.add_row(
                escape(row["client"]),
                escape(row["milestone"]),
                _money(Decimal(row["amount"])),
                escape(row["reason"]),
            )
        console.print(rows)
    for difference in check["differences"]:
        console.print(f"  [red]difference:[/red] {escape(difference)}", soft_wrap=True)


# --------------------------------------------------------------------------- the command


def _environment(world: World) -> dict[str, str]:
    keys = world.keys
    env = {name: getattr(keys, attribute) for attribute, name in ENV_NAMES.items()}
    env[TOKEN_KEY_ENV] = Fernet.generate_key().decode()
    return env


def _web_server(application: Any, port: int) -> Any:
    """The daemon's receivers for Karbon's and the close tool's webhooks. They store each
    delivery in the inbox; the next poll (a quarter second away) reads it. The daemon's
    doorbell (`poll_soon`) is left off: it holds the invoice job back two real seconds, which
    on this clock is hours of the firm's day."""
    from adapters.web.webhooks import create_app, webhook_routes
    from scheduler.bootstrap import build_receivers
    from scheduler.jobs import WebServer

    receivers, _notes = build_receivers(application.config)
    routes = webhook_routes(receivers, application.uow_factory(), application.clock)
    return WebServer(create_app(routes), "127.0.0.1", port)


def run_demo(options: DemoOptions, console: Console) -> int:
    """The demo; returns the exit code (0 done, 4 the firm did not end as it must). A
    ConfigError (a person can fix it: a bad --dir) propagates."""
    from scheduler.bootstrap import Overrides, build_app
    from scheduler.jobs import Daemon

    firm = build_firm(options.seed, options.days)
    directory = fresh_directory(options.directory)
    began = _time.monotonic()
    time = DemoTime(SCALE, start=START - timedelta(hours=3))  # the evening before: set-up
    port = free_port()
    world = World(firm, options.ledger, time, port)
    console.print(f"demo directory: {directory}", highlight=False, soft_wrap=True)
    log_stream = log_to_file(directory / "daemon.log")
    application = None
    try:
        world.start()
        world.seed()
        config_path = write_config(directory, firm, world, port)
        os.environ.update(_environment(world))
        application = build_app(
            config_path,
            overrides=Overrides(
                time=time, database_url=f"sqlite:///{directory / 'state.db'}", fault=no_faults
            ),
        )
        for note in application.adapters.notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
        company = connect_ledger(application, time)
        console.print(
            f"connected {world.books.setup.label} {escape(company)} (token stored encrypted)",
            highlight=False,
            soft_wrap=True,
        )
        ensure_karbon_webhooks(application)
        save_payment_methods(application, world)
        time.jump_to(firm.moment(0))

        watched = WatchedService(application.service())
        intervals = dict.fromkeys(("poll", "invoice", "collect", "reconcile"), INTERVAL)
        daemon = Daemon(
            watched,  # type: ignore[arg-type]
            intervals,  # type: ignore[arg-type]
            application.tenant,
            now=time.now,
        )
        server = _web_server(application, port)
        display = Display(console, firm, world.books.setup.label)
        month = Month(firm, world, application, watched, time, display.day)
        driver = threading.Thread(
            target=month.run, args=(daemon.request_stop,), name="demo-month", daemon=True
        )
        with display:
            driver.start()
            try:
                daemon.run_forever(server)  # main thread: it owns SIGINT/SIGTERM
            finally:
                month.stop.set()  # stopped by a signal (or failed to start): so is the month
                driver.join(timeout=DAY_TIMEOUT)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if isinstance(month.error, Interrupted) or (not month.finished and month.error is None):
            console.print(f"interrupted on day {month.tally.day + 1} of {firm.days}")
            return 1
        if month.error is not None:
            raise month.error
        check = application.service().check_reconciliation()
        summary = summarise(firm, world, application, month, check)
        (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(console, summary)
        elapsed = _time.monotonic() - began
        console.print(
            f"{firm.days} days (and {_tail(month, firm)} to settle) in {elapsed:.1f} s. "
            f"Look again later: milestone-sync status -c {directory / 'milestone-sync.toml'}",
            highlight=False,
            soft_wrap=True,
        )
        problems = _problems(summary)
        if problems:
            for problem in problems:
                console.print(f"[red]not as it must be:[/red] {escape(problem)}", soft_wrap=True)
            return 4
        serve = options.serve and sys.stdin.isatty() and sys.stdout.isatty()
        serve_dashboard(application, time, console, serve=serve, no_serve=not options.serve)
        return 0
    except DemoFailed as exc:
        console.print(f"[red]internal error (a bug, please report it):[/red] {escape(str(exc))}")
        return 4
    finally:
        if application is not None:
            application.close()
        world.stop()
        log_stream.close()


def _tail(month: Month, firm: Firm) -> str:
    if month.settled_on is None:
        return "?"
    extra = (
        datetime.fromisoformat(month.settled_on).date() - firm.moment(firm.days - 1).date()
    ).days
    return f"{extra} more day{'s' if extra != 1 else ''}"


def _problems(summary: dict[str, Any]) -> list[str]:
    """What must hold at the end of every demo month (anything else is a bug)."""
    problems = []
    if not summary["reconcile_check"]["clean"]:
        problems.append("reconcile --check found differences between the ledger and Stripe")
    if summary["vendor_refusals"]:
        problems.append(f"{summary['vendor_refusals']} request(s) a vendor would have refused")
    if summary["daemon_errors"]:
        problems.append(f"{summary['daemon_errors']} daemon stage run(s) raised (daemon.log)")
    if summary["phases_unmapped"]:
        problems.append(f"{summary['phases_unmapped']} phase(s) matched no plan")
    return problems


def serve_dashboard(
    application: Any, time: DemoTime, console: Console, *, serve: bool, no_serve: bool
) -> None:
    """After the month: the dashboard on 127.0.0.1 until Ctrl-C (on a terminal)."""
    import importlib.util

    if importlib.util.find_spec("adapters.web.dashboard") is None:
        console.print("dashboard: not in this build yet")
        return
    if not serve:
        why = "--no-serve" if no_serve else "not on a terminal"
        console.print(f"dashboard: not served ({why}); run the demo on a terminal to browse it")
        return
    from adapters.web.dashboard import dashboard_routes
    from adapters.web.webhooks import create_app
    from scheduler.jobs import WebServer

    time.set_scale(1.0)  # the month is over: the dashboard's "today" stays on its last day
    port = free_port()
    routes: list[Any] = list(dashboard_routes(application))
    server = WebServer(create_app(routes), "127.0.0.1", port)
    server.start()
    console.print(
        f"dashboard: [bold]http://127.0.0.1:{port}/[/bold]  (Ctrl-C to stop)", highlight=False
    )
    try:
        while True:
            _time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.stop()


def main(options: DemoOptions, console: Console | None = None) -> int:
    """The `demo` command: run_demo's exit code; a crash is a bug (4), Ctrl-C during the set-up
    is 1. A ConfigError (a person can fix it) propagates to the CLI (1)."""
    import traceback

    # a pipe or CI log gets lines as wide as the summary needs, not rich's 80 columns
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    try:
        return run_demo(options, console)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 1
    except (ConfigError, InvariantViolation):
        raise
    except Exception:
        console.print("[red]internal error (a bug, please report it):[/red]")
        console.print(escape(traceback.format_exc()), highlight=False, soft_wrap=True)
        return 4


__all__: Sequence[str] = ("DemoOptions", "main", "run_demo")
