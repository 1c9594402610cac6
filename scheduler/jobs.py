"""The daemon: one APScheduler job per stage, never overlapping, stopped cleanly by signals."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from connector.domain.errors import ConfigError, InvariantViolation
from connector.services import StageReport, SyncService

log = structlog.get_logger("milestone_sync.daemon")


def stage_jobs(service: SyncService) -> dict[str, Callable[[], list[StageReport]]]:
    """The daemon's jobs: each runs one or more stages of the cycle."""
    return {
        "poll": lambda: [service.poll_sources(), service.map_phases(), service.reprice()],
        "invoice": lambda: [service.issue_invoices()],
        "collect": lambda: [service.collect_payments()],
        "reconcile": lambda: _reconcile(service),
    }


def _reconcile(service: SyncService) -> list[StageReport]:
    reports = [service.reconcile_payments(), service.book_money_trail()]
    service.acknowledge_deliveries(VENDOR_SOURCES)  # what they rang about was just re-read
    return reports


VENDOR_SOURCES = frozenset({"stripe", "quickbooks", "xero"})
"""Webhook paths of the payment gateway and the ledgers (doorbells for collect and reconcile)."""


def run_job(name: str, job: Callable[[], list[StageReport]], tenant: str) -> None:
    """Run one job with its context bound to the logs; a bad item never kills the daemon."""
    run_id = uuid.uuid4().hex[:12]
    bound = log.bind(tenant=tenant, job=name, run_id=run_id)
    try:
        reports = job()
    except ConfigError as exc:
        bound.error("job.config_error", error=str(exc))
        return
    except InvariantViolation as exc:
        bound.critical("job.invariant_violation", error=str(exc))
        raise
    for report in reports:
        bound.info(
            "stage.finished", stage=report.name, done=report.done, problems=len(report.problems)
        )
        for problem in report.problems:
            bound.warning("stage.problem", stage=report.name, problem=problem)


class Daemon:
    """Runs the stages on their intervals until SIGTERM or SIGINT, then finishes the current job."""

    def __init__(self, service: SyncService, intervals: dict[str, int], tenant: str) -> None:
        self._service = service
        self._tenant = tenant
        self._stop = threading.Event()
        self._poll_requested = threading.Event()
        # One worker: stages never run at the same time, so they never race on a milestone.
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300},
            timezone="UTC",
        )
        for name, job in stage_jobs(service).items():
            self._scheduler.add_job(
                run_job,
                "interval",
                seconds=intervals[name],
                args=(name, job, tenant),
                id=name,
                name=name,
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
        for name, job in stage_jobs(self._service).items():
            run_job(name, job, self._tenant)
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
            if server is not None:
                server.stop()
        log.info("daemon.stopped", tenant=self._tenant)


class WebServer:
    """uvicorn on a background thread: webhook receivers (and later the dashboard)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
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
                    f"could not serve webhooks on {self.host}:{self.port} (port in use?): "
                    "change [server] port"
                )
            time.sleep(0.05)
        log.info("web.listening", host=self.host, port=self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
