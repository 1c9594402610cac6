"""The daemon: one APScheduler job per stage, never overlapping, stopped cleanly by signals."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from adapters.web.health import JobState, SchedulerState
from connector.domain.errors import ConfigError, InvariantViolation
from connector.services import StageReport, SyncService

log = structlog.get_logger("milestone_sync.daemon")

Step = Callable[[], StageReport | None]
"""One stage of a job: its report (None for housekeeping that reports nothing)."""


def stage_jobs(service: SyncService) -> dict[str, Sequence[Step]]:
    """The daemon's jobs: each runs one or more stages of the cycle, in the cycle's order."""
    return {
        "poll": (
            service.poll_sources,
            service.map_phases,
            service.reprice,
            service.notify_price_increases,
        ),
        "invoice": (service.issue_invoices,),
        "collect": (service.collect_payments, service.send_reminders),
        "reconcile": (
            service.reconcile_payments,
            service.book_money_trail,
            lambda: _acknowledge(service),
        ),
    }


def _acknowledge(service: SyncService) -> None:
    service.acknowledge_deliveries(VENDOR_SOURCES)  # what they rang about was just re-read


VENDOR_SOURCES = frozenset({"stripe", "quickbooks", "xero"})
"""Webhook paths of the payment gateway and the ledgers (doorbells for collect and reconcile)."""


class JobObserver:
    """Told how each job run ended (the daemon keeps it for /healthz); metrics come apart."""

    def job_finished(self, job: str, result: str, error: str | None) -> None:
        """`result`: ok, config_error (a person must act) or failed (a crash, logged)."""


def run_job(
    name: str,
    steps: Sequence[Step],
    tenant: str,
    *,
    metrics: Any = None,
    observer: JobObserver | None = None,
) -> None:
    """Run one job's stages with tenant, job and run_id bound to every log line made meanwhile
    (ours, the adapters' and the libraries'); a bad item never kills the daemon, a bug does.

    `metrics`: an adapters.observability.Metrics fed from each StageReport."""
    run_id = uuid.uuid4().hex[:12]
    result, error = "ok", None
    with structlog.contextvars.bound_contextvars(tenant=tenant, job=name, run_id=run_id):
        try:
            for step in steps:
                began = time.perf_counter()
                report = step()
                seconds = time.perf_counter() - began
                if report is None:
                    continue
                if metrics is not None:
                    metrics.stage_finished(report.name, report.done, len(report.problems), seconds)
                log.info(
                    "stage.finished",
                    stage=report.name,
                    done=report.done,
                    problems=len(report.problems),
                    seconds=round(seconds, 3),
                )
                for problem in report.problems:
                    log.warning("stage.problem", stage=report.name, problem=problem)
        except ConfigError as exc:
            result, error = "config_error", str(exc)
            log.error("job.config_error", error=error)
        except InvariantViolation as exc:
            result, error = "failed", str(exc)
            log.critical("job.invariant_violation", error=error)
            raise
        except Exception as exc:  # the next run tries again; the traceback is in the log
            result, error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("job.failed", error=error, exc_info=True)
        finally:
            if metrics is not None:
                metrics.job_finished(name, result)
            if observer is not None:
                observer.job_finished(name, result, error)


@dataclass
class _JobRecord:
    interval: timedelta
    last_success: datetime | None = None
    last_failure: datetime | None = None
    last_error: str | None = None


class Daemon(JobObserver):
    """Runs the stages on their intervals until SIGTERM or SIGINT, then finishes the current job.

    `metrics` (adapters.observability.Metrics) is fed from every stage report; `state()` is what
    /healthz reads."""

    def __init__(
        self,
        service: SyncService,
        intervals: dict[str, int],
        tenant: str,
        *,
        metrics: Any = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._service = service
        self._tenant = tenant
        self._metrics = metrics
        self._now = now
        self._jobs = stage_jobs(service)
        self._records = {
            name: _JobRecord(timedelta(seconds=intervals[name])) for name in self._jobs
        }
        self._lock = threading.Lock()
        self._started_at: datetime | None = None
        self._stopped = False
        self._stop = threading.Event()
        self._poll_requested = threading.Event()
        # One worker: stages never run at the same time, so they never race on a milestone.
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300},
            timezone="UTC",
        )
        for name in self._jobs:
            self._scheduler.add_job(
                self.run,
                "interval",
                seconds=intervals[name],
                args=(name,),
                id=name,
                name=name,
            )

    def run(self, name: str) -> None:
        """Run one job now, on the calling thread."""
        run_job(name, self._jobs[name], self._tenant, metrics=self._metrics, observer=self)

    def run_all(self) -> None:
        """Every job once, in cycle order (the start-up run)."""
        for name in self._jobs:
            self.run(name)

    def job_finished(self, job: str, result: str, error: str | None) -> None:
        with self._lock:
            record = self._records[job]
            if result == "ok":
                record.last_success, record.last_error = self._now(), None
            else:
                record.last_failure, record.last_error = self._now(), error

    def state(self) -> SchedulerState:
        """For /healthz: running (from the start-up run until stopped) and each job's runs."""
        with self._lock:
            return SchedulerState(
                running=self._started_at is not None and not self._stopped,
                started_at=self._started_at,
                jobs=tuple(
                    JobState(
                        name,
                        record.interval,
                        record.last_success,
                        record.last_failure,
                        record.last_error,
                    )
                    for name, record in self._records.items()
                ),
            )

    def poll_soon(self, source: str | None = None) -> None:
        """A webhook arrived: run the poll job now instead of at its next interval, and the
        invoice job right after it (coalesced, so a burst of deliveries costs one extra poll);
        a delivery from the payment gateway or the ledger runs collect and reconcile instead.
        A delivery during the start-up run is remembered and honoured once scheduling starts."""
        if not self._scheduler.running:
            self._poll_requested.set()
            return
        now = datetime.now(UTC)
        jobs = (("poll", 0.0), ("invoice", 2.0))
        if source in VENDOR_SOURCES:
            jobs = (("collect", 0.0), ("reconcile", 2.0))
        for name, delay in jobs:
            job = self._scheduler.get_job(name)
            if job is not None:
                job.modify(next_run_time=now + timedelta(seconds=delay))

    def start(self) -> None:
        """Resolve pending intents first (a crash may have left some), then schedule."""
        log.info("daemon.starting", tenant=self._tenant)
        with self._lock:
            self._started_at, self._stopped = self._now(), False
        self.run_all()
        self._scheduler.start()
        if self._poll_requested.is_set():
            self._poll_requested.clear()
            self.poll_soon()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        log.info("daemon.stopping", signal=signum)
        self._stop.set()

    def run_forever(self, server: WebServer | None = None) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if server is not None:
            server.start()  # deliveries queue in the inbox while the first stages run
        try:
            self.start()
            self._stop.wait()
            self._scheduler.shutdown(wait=True)  # lets the running job finish its item
        finally:
            with self._lock:
                self._stopped = True
            if server is not None:
                server.stop()
        log.info("daemon.stopped", tenant=self._tenant)


class WebServer:
    """uvicorn on a background thread: webhook receivers, the dashboard, /healthz, /metrics.
    uvicorn's own log records go to the root logger (scheduler.logging redacts them)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, log_config=None
            )
        )
        # uvicorn leaves signals alone off the main thread: the daemon owns SIGTERM/SIGINT
        self._thread: threading.Thread | None = None
        self.host, self.port = host, port

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(
                    f"could not serve HTTP (webhooks, /healthz) on {self.host}:{self.port} "
                    "(port in use?): "
                    "change [server] port"
                )
            time.sleep(0.05)
        log.info("web.listening", host=self.host, port=self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
