"""The daemon's Prometheus metrics on a registry of its own (never the process-wide default), the
hooks that count each vendor HTTP answer, the gateway wrapper that counts charge outcomes, and
the `/metrics` route."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.domain.ids import ChargeId
from connector.ports import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    DeclineKind,
    PaymentGateway,
)

VENDORS = ("karbon", "keeper", "quickbooks", "xero", "stripe", "oauth")
CHARGE_OUTCOMES = ("succeeded", "processing", "failed_soft", "failed_hard", "requires_action")
# seconds: a stage is a few API calls (under a second) up to a first sweep of a big account
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
# the stage names of connector.services.StageReport -> what their `done` counts
PHASE_STAGE, INVOICE_STAGE, PAYMENT_STAGE, TRAIL_STAGE = "poll", "invoice", "reconcile", "money"


@dataclass(frozen=True)
class Backlog:
    """What waits in the store: milestones by state, webhook deliveries not yet acted on."""

    milestones: Mapping[str, int] = field(default_factory=dict)
    pending_deliveries: Mapping[str, int] = field(default_factory=dict)  # by source id
    oldest_pending_seconds: float | None = None


class Metrics:
    """Every metric the daemon exports, on `registry` (its own CollectorRegistry).

    Counters start at zero for every known label value, so a rate over a series that has not
    moved yet is 0 rather than absent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.phases_seen = Counter(
            "milestone_sync_phases_seen", "Phase completions read from the sources.", registry=r
        )
        self.invoices_created = Counter(
            "milestone_sync_invoices_created",
            "Milestone invoices created in the ledger.",
            registry=r,
        )
        self.charges = Counter(
            "milestone_sync_charges",
            "Charge outcomes the payment gateway answered (an ACH debit counts as processing, "
            "then again as it settles).",
            ["outcome"],
            registry=r,
        )
        self.ledger_entries = Counter(
            "milestone_sync_ledger_entries_booked",
            "Entries booked in the ledger: payments against invoices and money-trail entries "
            "(fees, refunds, disputes, payouts).",
            ["kind"],
            registry=r,
        )
        self.api_calls = Counter(
            "milestone_sync_api_calls",
            "HTTP answers from vendor APIs, by status class (2xx, 4xx, 5xx).",
            ["vendor", "status"],
            registry=r,
        )
        self.api_rate_limited = Counter(
            "milestone_sync_api_rate_limited",
            "HTTP 429 answers from vendor APIs (also counted in api_calls as 4xx).",
            ["vendor"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "milestone_sync_stage_duration_seconds",
            "How long each stage of the sync cycle took.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stage_problems = Counter(
            "milestone_sync_stage_problems",
            "Items a stage could not finish (each reported to the admin).",
            ["stage"],
            registry=r,
        )
        self.job_runs = Counter(
            "milestone_sync_job_runs",
            "Daemon job runs by result (ok, config_error: a person must act, failed).",
            ["job", "result"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "milestone_sync_job_last_success_timestamp_seconds",
            "Unix time of each job's last run that finished without a config error.",
            ["job"],
            registry=r,
        )
        for outcome in CHARGE_OUTCOMES:
            self.charges.labels(outcome)
        for kind in ("payment", "money_trail"):
            self.ledger_entries.labels(kind)
        for vendor in VENDORS:
            self.api_rate_limited.labels(vendor)
        self._backlog: _BacklogCollector | None = None

    # ------------------------------------------------------------------ feeding

    def stage_finished(self, name: str, done: int, problems: int, seconds: float) -> None:
        """One StageReport: its latency, problems, and what its `done` counts."""
        self.stage_seconds.labels(name).observe(seconds)
        if problems:
            self.stage_problems.labels(name).inc(problems)
        if done <= 0:
            return
        if name == PHASE_STAGE:
            self.phases_seen.inc(done)
        elif name == INVOICE_STAGE:
            self.invoices_created.inc(done)
        elif name == PAYMENT_STAGE:
            self.ledger_entries.labels("payment").inc(done)
        elif name == TRAIL_STAGE:
            self.ledger_entries.labels("money_trail").inc(done)

    def job_finished(self, job: str, result: str, at: float | None = None) -> None:
        self.job_runs.labels(job, result).inc()
        if result == "ok":
            self.job_last_success.labels(job).set(time.time() if at is None else at)

    def charge_outcome(self, result: ChargeResult) -> None:
        self.charges.labels(charge_outcome(result)).inc()

    def api_answer(self, vendor: str, status: int) -> None:
        self.api_calls.labels(vendor, f"{status // 100}xx").inc()
        if status == 429:
            self.api_rate_limited.labels(vendor).inc()

    def watch_backlog(self, read: Callable[[], Backlog]) -> None:
        """Export the backlog gauges, read from the store by `read` at each scrape."""
        if self._backlog is not None:
            self.registry.unregister(self._backlog)
        self._backlog = _BacklogCollector(read)
        self.registry.register(self._backlog)


def charge_outcome(result: ChargeResult) -> str:
    if result.status is ChargeStatus.FAILED:
        return "failed_soft" if result.decline_kind is DeclineKind.SOFT else "failed_hard"
    return str(result.status)


class _BacklogCollector(Collector):
    def __init__(self, read: Callable[[], Backlog]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return []  # read at collect time only: registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        try:
            backlog = self._read()
        except Exception:  # the database is down: /healthz says so; the scrape still works
            return
        milestones = GaugeMetricFamily(
            "milestone_sync_milestones", "Milestones by state.", labels=["state"]
        )
        for state, count in sorted(backlog.milestones.items()):
            milestones.add_metric([state], count)
        yield milestones
        pending = GaugeMetricFamily(
            "milestone_sync_inbox_pending_deliveries",
            "Webhook deliveries stored but not yet acted on, by source.",
            labels=["source"],
        )
        for source, count in sorted(backlog.pending_deliveries.items()):
            pending.add_metric([source], count)
        yield pending
        if backlog.oldest_pending_seconds is not None:
            yield GaugeMetricFamily(
                "milestone_sync_inbox_oldest_pending_seconds",
                "Age of the oldest webhook delivery not yet acted on.",
                value=backlog.oldest_pending_seconds,
            )


# --------------------------------------------------------------------------- vendor API calls


class _ApiCallSink:
    """Where the vendor clients' response hooks report. Process-wide because the clients are
    built deep inside the adapters (and rebuilt on every token refresh): the composition root
    points it at the daemon's Metrics with `report_api_calls_to`; until then hooks do nothing."""

    def __init__(self) -> None:
        self.metrics: Metrics | None = None

    def answer(self, vendor: str, status: int) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.api_answer(vendor, status)


_sink = _ApiCallSink()


def report_api_calls_to(metrics: Metrics | None) -> None:
    """Count every vendor HTTP answer from now on into `metrics` (None: stop counting)."""
    _sink.metrics = metrics


def api_answer(vendor: str, status: int) -> None:
    """Count one HTTP answer (for clients that see a status without a requests session)."""
    _sink.answer(vendor, status)


def count_calls(session: requests.Session, vendor: str) -> requests.Session:
    """Add a response hook counting each answer `session` gets; returns the session."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        _sink.answer(vendor, response.status_code)
        return response

    session.hooks["response"].append(hook)
    return session


class _CountingPoolManager:
    """A urllib3 PoolManager (xero-python's transport) that counts each answer; every other
    attribute is the wrapped manager's."""

    def __init__(self, wrapped: Any, vendor: str) -> None:
        self._wrapped = wrapped
        self._vendor = vendor

    def request(self, *args: Any, **kwargs: Any) -> Any:
        response = self._wrapped.request(*args, **kwargs)
        _sink.answer(self._vendor, int(response.status))
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def count_urllib3_calls(rest_client: Any, vendor: str) -> None:
    """Count the answers of an OpenAPI-generated REST client (`rest_client.pool_manager`)."""
    if not isinstance(rest_client.pool_manager, _CountingPoolManager):
        rest_client.pool_manager = _CountingPoolManager(rest_client.pool_manager, vendor)


# --------------------------------------------------------------------------- charge outcomes


class MeteredGateway:
    """A PaymentGateway that counts each charge outcome it hands the core: the answer to a
    charge (or the lookup after an unknown outcome), and a processing charge once it settles.
    Everything else is the wrapped gateway's."""

    def __init__(self, gateway: PaymentGateway, metrics: Metrics) -> None:
        self._gateway = gateway
        self._metrics = metrics
        self._processing: set[ChargeId] = set()
        self._lock = threading.Lock()

    def charge(self, request: ChargeRequest, key: Any) -> ChargeResult:
        result = self._gateway.charge(request, key)
        self._count(result)
        return result

    def find_charge(self, request: ChargeRequest, key: Any) -> ChargeResult | None:
        result = self._gateway.find_charge(request, key)
        if result is not None:
            self._count(result)
        return result

    def get_charge(self, charge_id: ChargeId) -> ChargeResult:
        result = self._gateway.get_charge(charge_id)
        with self._lock:
            settled = charge_id in self._processing and result.status is not ChargeStatus.PROCESSING
            if settled:
                self._processing.discard(charge_id)
            elif result.status is ChargeStatus.PROCESSING:
                # started before a restart: count it when it settles
                self._processing.add(charge_id)
        if settled:
            self._metrics.charge_outcome(result)
        return result

    def _count(self, result: ChargeResult) -> None:
        if result.status is ChargeStatus.PROCESSING:
            with self._lock:
                self._processing.add(result.id)
        self._metrics.charge_outcome(result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    def __repr__(self) -> str:
        return f"MeteredGateway({self._gateway!r})"


def instrument_service(service: Any, metrics: Metrics) -> Any:
    """The sync service with its payment gateway counting charge outcomes into `metrics`."""
    import dataclasses

    if service.gateway is None or isinstance(service.gateway, MeteredGateway):
        return service
    return dataclasses.replace(service, gateway=MeteredGateway(service.gateway, metrics))


# --------------------------------------------------------------------------- GET /metrics


def metrics_routes(metrics: Metrics) -> list[Route]:
    """GET /metrics: the registry in the text format the scraper asks for."""

    async def endpoint(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, metrics.registry)  # the backlog reads the db
        return Response(body, headers={"Content-Type": content_type})

    return [Route("/metrics", endpoint, methods=["GET"])]
