"""GET /healthz: is the daemon doing its job? The database (reachable, schema current), the
scheduler (each job succeeded lately), the ledger connection (its tokens fresh) and the webhook
inbox (nothing left waiting). Every check reads only our own database: no vendor call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.observability import Backlog
from connector.config import LedgerConnection, LedgerKind
from connector.domain.errors import MilestoneSyncError
from connector.ports import Clock, DeliveryStatus

OAUTH_LEDGERS = (LedgerKind.QUICKBOOKS, LedgerKind.XERO)
LATE_AFTER_INTERVALS = 3  # a job is late after missing this many of its runs
LATE_GRACE = timedelta(minutes=2)  # one worker: a job may queue behind a long one


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but someone should look soon (doctor prints it as a warning)


@dataclass(frozen=True)
class JobState:
    """What the scheduler knows about one job."""

    name: str
    interval: timedelta
    last_success: datetime | None = None
    last_failure: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class SchedulerState:
    running: bool
    started_at: datetime | None
    jobs: tuple[JobState, ...] = ()


# --------------------------------------------------------------------------- the checks


def schema_revision(store: Any) -> str | None:
    """The alembic revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        revision: str | None = MigrationContext.configure(conn).get_current_revision()
        return revision


def check_database(store: Any, head: str) -> Check:
    try:
        current = schema_revision(store)
    except Exception as exc:
        return Check("database", False, f"unreachable: {_reason(exc)}")
    if current != head:
        return Check(
            "database",
            False,
            f"schema at revision {current or 'none'}, this version needs {head}: restart "
            "milestone-sync (it migrates on start), or see `milestone-sync doctor`",
        )
    return Check("database", True, f"reachable, schema at {head}")


def check_scheduler(state: SchedulerState | None, now: datetime) -> Check:
    if state is None:
        return Check("scheduler", False, "no scheduler in this process")
    if not state.running:
        return Check("scheduler", False, "stopped: no job runs")
    late: list[str] = []
    fine: list[str] = []
    for job in state.jobs:
        allowed = job.interval * LATE_AFTER_INTERVALS + LATE_GRACE
        since = job.last_success or state.started_at
        if since is not None and now - since <= allowed:
            fine.append(job.name)
            continue
        what = (
            f"last succeeded {_ago(now - job.last_success)} ago"
            if job.last_success
            else "has not succeeded since the start"
        )
        error = f" ({job.last_error})" if job.last_error else ""
        late.append(f"{job.name} {what}, every {_ago(job.interval)}{error}")
    if late:
        return Check("scheduler", False, "; ".join(late))
    return Check("scheduler", True, f"running; jobs on time: {', '.join(fine)}")


def connection_reader(
    ledger: LedgerConnection, store: Any, tenant: str, now: Callable[[], datetime]
) -> Callable[[], Any]:
    """Reads the ledger connection's status (adapters.oauth.status) from the stored token."""

    def read() -> Any:
        from adapters.oauth.providers import provider_for_ledger
        from adapters.oauth.status import connection_status
        from adapters.store.tokens import SqlTokenStore, stored_connections

        kind = str(ledger.kind)
        provider = provider_for_ledger(ledger)
        record = None
        if kind in stored_connections(store, tenant):
            record = SqlTokenStore(store, tenant).load_record(kind)
        return connection_status(provider, record, now())

    return read


def check_ledger_connection(ledger: LedgerConnection, read: Callable[[], Any] | None) -> Check:
    if ledger.kind not in OAUTH_LEDGERS or read is None:
        return Check("ledger_connection", True, f"ledger {ledger.kind}: no OAuth connection")
    try:
        status = read()
    except Exception as exc:
        return Check("ledger_connection", False, f"cannot read the connection: {_reason(exc)}")
    if status.healthy:
        return Check("ledger_connection", True, "; ".join(status.lines))
    return Check("ledger_connection", False, "; ".join(status.warnings) or "not connected")


def read_backlog(store: Any, tenant: str, now: datetime) -> Backlog:
    """Milestones by state and pending webhook deliveries (two grouped counts)."""
    from adapters.store.tables import InboxRow, MilestoneRow

    with store.engine.connect() as conn:
        milestones = {
            str(state): int(count)
            for state, count in conn.execute(
                select(MilestoneRow.state, func.count())
                .where(MilestoneRow.tenant_id == tenant)
                .group_by(MilestoneRow.state)
            )
        }
        pending: dict[str, int] = {}
        oldest: datetime | None = None
        for source, count, first in conn.execute(
            select(InboxRow.source, func.count(), func.min(InboxRow.received_at))
            .where(InboxRow.tenant_id == tenant, InboxRow.status == DeliveryStatus.PENDING)
            .group_by(InboxRow.source)
        ):
            pending[str(source)] = int(count)
            if first is not None:
                first = first if first.tzinfo else first.replace(tzinfo=UTC)
                oldest = first if oldest is None else min(oldest, first)
    age = None if oldest is None else max(0.0, (now - oldest).total_seconds())
    return Backlog(milestones=milestones, pending_deliveries=pending, oldest_pending_seconds=age)


def check_inbox(backlog: Backlog, stale_after: timedelta) -> Check:
    total = sum(backlog.pending_deliveries.values())
    if not total:
        return Check("webhook_inbox", True, "no deliveries waiting")
    age = timedelta(seconds=backlog.oldest_pending_seconds or 0)
    by_source = ", ".join(f"{s} {n}" for s, n in sorted(backlog.pending_deliveries.items()))
    detail = f"{total} deliveries waiting ({by_source}), the oldest for {_ago(age)}"
    if age > stale_after:
        return Check(
            "webhook_inbox",
            False,
            f"{detail}: the poll and reconcile jobs are not acting on them (see scheduler)",
        )
    return Check("webhook_inbox", True, detail)


# --------------------------------------------------------------------------- the probe


class HealthProbe:
    """Runs the checks over one tenant's store; `scheduler` and `ledger_status` are callables
    so the probe reads the live state on every request."""

    def __init__(
        self,
        store: Any,
        tenant: str,
        clock: Clock,
        ledger: LedgerConnection,
        *,
        scheduler: Callable[[], SchedulerState | None] | None = None,
        ledger_status: Callable[[], Any] | None = None,
        inbox_stale_after: timedelta = timedelta(minutes=20),
    ) -> None:
        from adapters.store.migrate import head_revision

        self._store = store
        self._tenant = tenant
        self._clock = clock
        self._ledger = ledger
        self._scheduler = scheduler
        self._ledger_status = ledger_status
        self._stale_after = inbox_stale_after
        self._head = head_revision()  # parses the migration scripts: once, not per probe

    def backlog(self) -> Backlog:
        return read_backlog(self._store, self._tenant, self._clock.now())

    def checks(self) -> list[Check]:
        now = self._clock.now()
        database = check_database(self._store, self._head)
        checks = [database]
        checks.append(check_scheduler(self._scheduler() if self._scheduler else None, now))
        if not database.ok and database.detail.startswith("unreachable"):
            checks.append(Check("ledger_connection", False, "the database is unreachable"))
            checks.append(Check("webhook_inbox", False, "the database is unreachable"))
            return checks
        checks.append(check_ledger_connection(self._ledger, self._ledger_status))
        try:
            checks.append(check_inbox(self.backlog(), self._stale_after))
        except Exception as exc:
            checks.append(Check("webhook_inbox", False, f"cannot read: {_reason(exc)}"))
        return checks


def health_body(checks: Sequence[Check]) -> tuple[int, dict[str, Any]]:
    healthy = all(c.ok for c in checks)
    return (200 if healthy else 503), {
        "status": "ok" if healthy else "unhealthy",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }


def health_routes(probe: HealthProbe) -> list[Route]:
    """GET /healthz: 200 when every check passes, else 503; JSON either way."""

    async def healthz(request: Request) -> Response:
        status, body = health_body(await run_in_threadpool(probe.checks))
        return JSONResponse(body, status, headers={"Cache-Control": "no-store"})

    return [Route("/healthz", healthz, methods=["GET"])]


# --------------------------------------------------------------------------- helpers


def _reason(exc: Exception) -> str:
    if isinstance(exc, MilestoneSyncError):
        return str(exc)
    # a driver's message can carry the URL: keep the class and the first line only, masked
    from adapters.store.engine import mask_url

    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {mask_url(first) if '://' in first else first}"


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
