"""/healthz and /metrics as the daemon serves them: after a cycle over the Karbon, QuickBooks and
Stripe emulators every check passes and the counters say what happened (one invoice, one card
charge, one payment and its fee booked, API calls and a 429 per vendor, stage latencies, the
backlog); and each check fails, with a 503 and the reason, when its part is unwell."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from adapters.memory.clock import FrozenClock
from adapters.observability import Metrics, instrument_service, report_api_calls_to
from adapters.store.engine import Store
from adapters.store.migrate import downgrade
from adapters.store.tokens import SqlTokenStore, StoredToken
from adapters.web.health import (
    HealthProbe,
    JobState,
    SchedulerState,
    connection_reader,
    health_routes,
)
from connector.config import LedgerConnection, LedgerKind
from connector.domain.ids import SourceId, TenantId
from connector.ports import OAuthToken
from scheduler.bootstrap import Overrides, build_app
from scheduler.cli import _web_server, daemon_metrics
from scheduler.jobs import Daemon
from tests.integration.ops_firm import OpsFirm, ops_firm

INTERVALS = {"poll": 300, "invoice": 60, "collect": 300, "reconcile": 900}
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TENANT = TenantId("firm")


@pytest.fixture
def firm(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpsFirm]:
    with ops_firm(tmp_path, store_url) as started:
        for name, value in started.env.items():
            monkeypatch.setenv(name, value)
        yield started


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_after_a_cycle_healthz_is_ok_and_metrics_count_what_happened(firm: OpsFirm) -> None:
    firm.store_connection(expires_at=datetime.now(UTC) - timedelta(minutes=1))  # one refresh
    firm.karbon.fail_next(1, status=429)  # Karbon asks us to slow down once (Retry-After: 10)
    # one timeline for the adapters and Stripe: the 429's wait passes at once
    application = build_app(firm.config, overrides=Overrides(time=firm.stripe.time))
    server = None
    try:
        metrics = daemon_metrics(application)
        daemon = Daemon(
            instrument_service(application.service(), metrics),
            INTERVALS,
            application.tenant,
            metrics=metrics,
            now=application.clock.now,
        )
        server = _web_server(application, daemon, metrics)
        server.start()
        base = f"http://127.0.0.1:{firm.port}"
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 503  # not started
        daemon.start()  # the start-up run: every job once, then scheduling
        health = requests.get(f"{base}/healthz", timeout=10)
        scrape = requests.get(f"{base}/metrics", timeout=10)
        daemon._scheduler.shutdown(wait=True)
    finally:
        if server is not None:
            server.stop()
        report_api_calls_to(None)
        application.close()

    assert health.status_code == 200, health.text
    checks = health.json()["checks"]
    assert health.json()["status"] == "ok"
    assert set(checks) == {"database", "scheduler", "ledger_connection", "webhook_inbox"}
    assert all(check["ok"] for check in checks.values()), checks
    assert "QuickBooks company" in checks["ledger_connection"]["detail"]
    assert "poll, invoice, collect, reconcile" in checks["scheduler"]["detail"]

    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    got = samples(scrape.text)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("milestone_sync_phases_seen_total") >= 1
    assert value("milestone_sync_invoices_created_total") == 1
    assert value("milestone_sync_charges_total", outcome="succeeded") == 1
    assert value("milestone_sync_charges_total", outcome="failed_hard") == 0
    assert value("milestone_sync_ledger_entries_booked_total", kind="payment") == 1
    assert value("milestone_sync_ledger_entries_booked_total", kind="money_trail") >= 1  # fee
    for vendor in ("karbon", "quickbooks", "stripe", "oauth"):
        assert value("milestone_sync_api_calls_total", vendor=vendor, status="2xx") >= 1, vendor
    assert value("milestone_sync_api_calls_total", vendor="oauth", status="2xx") == 1
    assert value("milestone_sync_api_rate_limited_total", vendor="karbon") == 1
    # the 429, and the two 404s of looking up webhook subscriptions that are not there yet
    assert value("milestone_sync_api_calls_total", vendor="karbon", status="4xx") == 3
    assert value("milestone_sync_api_rate_limited_total", vendor="stripe") == 0
    for stage in ("poll", "map", "invoice", "collect", "reconcile", "money"):
        assert value("milestone_sync_stage_duration_seconds_count", stage=stage) == 1, stage
    for job in INTERVALS:
        assert value("milestone_sync_job_runs_total", job=job, result="ok") == 1, job
        assert value("milestone_sync_job_last_success_timestamp_seconds", job=job) > 0
    assert value("milestone_sync_milestones", state="reconciled") == 1
    # the Stripe events were acknowledged by the reconcile job: nothing waits
    assert "# TYPE milestone_sync_inbox_pending_deliveries gauge" in scrape.text
    assert value("milestone_sync_inbox_pending_deliveries", source="stripe") == 0
    # the daemon's registry is its own: nothing of ours on the process-wide default
    assert "milestone_sync" not in prometheus_client.generate_latest().decode()


def test_counting_stops_when_the_root_says_so(firm: OpsFirm) -> None:
    metrics = Metrics()
    report_api_calls_to(metrics)
    try:
        assert requests.get(f"{firm.karbon.url}/v3/WorkItems", timeout=10).status_code == 401
        from adapters.karbon.client import KarbonClient

        client = KarbonClient(
            bearer_token=firm.env["KARBON_TOKEN"],
            access_key=firm.env["KARBON_ACCESS_KEY"],
            base_url=firm.karbon.url,
        )
        client.get("/v3/WorkItems", "one", {"$top": "1"})
    finally:
        report_api_calls_to(None)
    client.get("/v3/WorkItems", "one more", {"$top": "1"})  # after: not counted

    assert metrics.api_calls.labels("karbon", "2xx")._value.get() == 1  # plain requests: no


# --------------------------------------------------------------------------- each check failing


def probe_over(store: Store, clock: FrozenClock, state: SchedulerState | None) -> HealthProbe:
    ledger = LedgerConnection(kind=LedgerKind.QUICKBOOKS, base_url="http://127.0.0.1:9")
    return HealthProbe(
        store,
        TENANT,
        clock,
        ledger,
        scheduler=lambda: state,
        ledger_status=connection_reader(ledger, store, TENANT, clock.now),
        inbox_stale_after=timedelta(minutes=20),
    )


def jobs(last_success: datetime | None, error: str | None = None) -> SchedulerState:
    return SchedulerState(
        running=True,
        started_at=NOW - timedelta(days=1),
        jobs=tuple(
            JobState(name, timedelta(seconds=seconds), last_success, last_error=error)
            for name, seconds in INTERVALS.items()
        ),
    )


def save_token(store: Store, token_key: str, **changes: object) -> None:
    refresh_expires_at = changes.pop("refresh_expires_at", NOW + timedelta(days=90))
    SqlTokenStore(store, TENANT, environ={"MILESTONE_SYNC_TOKEN_KEY": token_key}).save_record(
        "quickbooks",
        StoredToken(
            OAuthToken(
                access_token="at-health",
                refresh_token="rt-health",
                expires_at=NOW + timedelta(hours=1),
                refresh_expires_at=refresh_expires_at,  # type: ignore[arg-type]
                realm="9130",
            ),
            connected_at=NOW - timedelta(days=30),
            **changes,  # type: ignore[arg-type]
        ),
    )


def by_name(probe: HealthProbe) -> dict[str, tuple[bool, str]]:
    return {check.name: (check.ok, check.detail) for check in probe.checks()}


def test_each_check_fails_with_its_reason_and_healthz_answers_503(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    token_key = Fernet.generate_key().decode()
    monkeypatch.setenv("MILESTONE_SYNC_TOKEN_KEY", token_key)
    clock = FrozenClock(NOW)
    store.ensure_tenant(TENANT)

    checks = by_name(probe_over(store, clock, jobs(NOW - timedelta(minutes=1))))
    assert checks["database"][0] and checks["scheduler"][0] and checks["webhook_inbox"][0]
    assert checks["ledger_connection"] == (
        False,
        "QuickBooks is not connected: run `milestone-sync connect quickbooks`",
    )

    save_token(store, token_key)
    assert by_name(probe_over(store, clock, jobs(NOW)))["ledger_connection"][0]

    # the refresh token runs out in 5 days unless used
    save_token(store, token_key, refreshed_at=NOW, refresh_expires_at=NOW + timedelta(days=5))
    ok, detail = by_name(probe_over(store, clock, jobs(NOW)))["ledger_connection"]
    assert not ok and "expires in 5 days" in detail

    save_token(store, token_key, needs_reconnect="QuickBooks refused the refresh token")
    ok, detail = by_name(probe_over(store, clock, jobs(NOW)))["ledger_connection"]
    assert not ok and "needs reconnect" in detail and "refused the refresh token" in detail
    save_token(store, token_key)

    # a job that has not succeeded for four of its intervals (and what it last said)
    late = jobs(NOW - timedelta(minutes=4 * 15 + 3), error="QuickBooks needs reconnecting")
    ok, detail = by_name(probe_over(store, clock, late))["scheduler"]
    assert not ok and "reconcile last succeeded" in detail and "needs reconnecting" in detail
    assert "invoice last succeeded 63 min ago, every 60 s" in detail
    ok, detail = by_name(probe_over(store, clock, SchedulerState(False, NOW)))["scheduler"]
    assert not ok and "stopped" in detail
    assert not by_name(probe_over(store, clock, None))["scheduler"][0]

    # a webhook delivery nobody acted on for an hour
    with store.unit_of_work(TENANT) as uow:
        uow.inbox.add(SourceId("karbon"), "Work", "WI-1", "d-old", "{}", NOW - timedelta(hours=1))
        uow.inbox.add(SourceId("stripe"), "charge", "ch_1", "d-new", "{}", NOW)
        uow.commit()
    ok, detail = by_name(probe_over(store, clock, jobs(NOW)))["webhook_inbox"]
    assert not ok and "2 deliveries waiting (karbon 1, stripe 1), the oldest for 60 min" in detail
    clock.advance(minutes=-50)  # only 10 minutes old: still fine
    assert by_name(probe_over(store, clock, jobs(clock.now())))["webhook_inbox"][0]
    clock.advance(minutes=50)

    # over HTTP: 503 and every check with ok and detail
    app = Starlette(routes=health_routes(probe_over(store, clock, late)))
    with TestClient(app) as client:
        answer = client.get("/healthz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["scheduler"]["ok"] is False
    assert body["checks"]["database"] == {
        "ok": True,
        "detail": body["checks"]["database"]["detail"],
    }
    assert answer.headers["cache-control"] == "no-store"

    # the schema behind the code (an older backup restored under a newer version)
    downgrade(store.engine, "0001")
    ok, detail = by_name(probe_over(store, clock, jobs(NOW)))["database"]
    assert not ok and "schema at revision 0001, this version needs 0002" in detail
