"""No secret reaches a log line: a daemon cycle over the Karbon, QuickBooks and Stripe emulators
(an invoice, a card charge, a token refresh, a signed Stripe webhook, the payment booked) with
every logger at DEBUG, everything written to stderr captured; none of the tokens, API keys,
webhook secrets, client secrets or the token key appears. The redaction processor's patterns
(card numbers by Luhn, bank numbers, keys, bearer tokens) are checked on their own as well."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from adapters.observability import instrument_service, report_api_calls_to
from scheduler.bootstrap import build_app
from scheduler.cli import _web_server, daemon_metrics
from scheduler.jobs import Daemon
from scheduler.logging import REDACTED, configure_logging, redact, redact_text, reset_logging
from tests.integration.ops_firm import STRIPE_WEBHOOK_SECRET, OpsFirm, ops_firm

INTERVALS = {"poll": 3600, "invoice": 3600, "collect": 3600, "reconcile": 3600}


@pytest.fixture
def firm(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpsFirm]:
    with ops_firm(tmp_path, store_url) as started:
        for name, value in started.env.items():
            monkeypatch.setenv(name, value)
        yield started


@pytest.fixture
def daemon_logging() -> Iterator[None]:
    configure_logging(json=True, level="DEBUG")  # as `milestone-sync run`, but at DEBUG
    try:
        yield
    finally:
        reset_logging()


def a_daemon_cycle(firm: OpsFirm) -> None:
    """What `milestone-sync run` does, twice over, with a signed Stripe webhook between."""
    application = build_app(firm.config)
    server = None
    try:
        metrics = daemon_metrics(application)
        service = instrument_service(application.service(), metrics)
        daemon = Daemon(service, INTERVALS, application.tenant, metrics=metrics)
        server = _web_server(application, daemon, metrics)
        server.start()
        base = f"http://127.0.0.1:{firm.port}"
        firm.stripe.emulator.add_webhook_endpoint(f"{base}/webhooks/stripe", STRIPE_WEBHOOK_SECRET)
        with daemon._lock:
            daemon._started_at = daemon._now()
        daemon.run_all()
        delivered = firm.stripe.emulator.deliver_pending()
        assert delivered and all(d.last_status == 200 for d in delivered)
        daemon.run_all()
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 200
        # a refused webhook: a forged signature names the secret nowhere
        forged = requests.post(
            f"{base}/webhooks/stripe",
            data=b"{}",
            headers={"Stripe-Signature": f"t=1,v1={STRIPE_WEBHOOK_SECRET}"},
            timeout=10,
        )
        assert forged.status_code == 401
    finally:
        if server is not None:
            server.stop()
        report_api_calls_to(None)
        application.close()


def test_no_secret_reaches_a_log_line_through_a_daemon_cycle(
    firm: OpsFirm, capsys: pytest.CaptureFixture[str], daemon_logging: None
) -> None:
    # stored as expired: the first ledger call refreshes, so new tokens cross the wire too
    firm.store_connection(expires_at=datetime.now(UTC) - timedelta(minutes=1))

    a_daemon_cycle(firm)

    # and what a careless line would print, through structlog and through the stdlib
    refreshed = firm.stored_tokens()
    assert refreshed.access_token != firm.tokens["first access token"]  # it did refresh
    secrets = {
        **firm.secrets,
        "refreshed access token": refreshed.access_token,
        "refreshed refresh token": str(refreshed.refresh_token),
    }
    structlog.get_logger("test").info(
        "careless.line",
        note=f"Authorization: Bearer {refreshed.access_token}",
        body={"refresh_token": refreshed.refresh_token, "client_id": "abc"},
        key=firm.stripe.emulator.api_key,
    )
    logging.getLogger("uvicorn.error").warning(
        "sent %s",
        f"refresh_token={refreshed.refresh_token}&client_secret={firm.env['QBO_CLIENT_SECRET']}",
    )
    logging.getLogger("urllib3.connectionpool").debug(
        "headers %r", {"AccessKey": firm.env["KARBON_ACCESS_KEY"], "Authorization": "x"}
    )
    text = capsys.readouterr().err

    # (the few lines not JSON are the command line's notes, printed for the admin)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, "nothing was logged"
    loggers = {line.get("logger") for line in lines}
    assert "urllib3.connectionpool" in loggers  # the libraries' DEBUG lines were captured
    charged = [line for line in lines if line.get("event") == "stage.finished"]
    assert {line["job"] for line in charged} == set(INTERVALS)
    assert all(line["tenant"] == "firm" and len(line["run_id"]) == 12 for line in charged)
    assert any(
        line.get("logger") == "urllib3.connectionpool" and line.get("job") == "collect"
        for line in lines
    ), "library lines made during a job carry its context"
    assert any(line.get("stage") == "invoice" and line.get("done") == 1 for line in charged)
    assert any(line.get("stage") == "reconcile" and line.get("done") == 1 for line in charged)
    assert any(line.get("event") == "webhook.received" for line in lines)
    leaked = {name for name, secret in secrets.items() if secret and secret in text}
    assert not leaked, f"in the logs: {sorted(leaked)}"
    assert text.count(REDACTED) >= 4


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("charge on 4242 4242 4242 4242 declined", "charge on"),
        ("card 4000-0566-5566-5556", "card"),
        ("routing number 110000000, account 000123456789", "routing number"),
        ("IBAN DE89370400440532013000", "IBAN"),
        ("key sk_live_51HxAbcDEF123 and rk_test_9zz", "key"),
        ("whsec_0a1b2c3d4e5f6 was the secret", "was the secret"),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "Authorization: Bearer"),
        ("POST body grant_type=refresh_token&refresh_token=AB11xyz", "grant_type=refresh_token"),
        ('{"access_token": "opaque-token-value", "expires_in": 3600}', '"expires_in": 3600'),
        ("redirected to /callback?code=AB-123&state=s1", "state=s1"),
        ("token key hLzVfBPC9m2kT5c1Xn0oWq8sE3yZ4rU6aJ7dG_iK-lM=", "token key"),
    ],
)
def test_the_patterns_mask_the_secret_and_keep_the_rest(text: str, kept: str) -> None:
    masked = redact_text(text)

    assert REDACTED in masked and kept in masked
    secret_parts = [
        "4242 4242",
        "5566-5556",
        "110000000",
        "000123456789",
        "DE8937",
        "51HxAbc",
        "9zz",
        "0a1b2c",
        "eyJhbG",
        "AB11xyz",
        "opaque-token",
        "AB-123",
        "hLzVfBPC",
    ]
    assert not [part for part in secret_parts if part in masked]


def test_what_is_not_secret_is_left_alone() -> None:
    text = (
        "invoice 1042 of 1500.00 USD for customer 58 (ap@acme.example), charge ch_3Abc, "
        "at 1762099200000 ms, work item 4ndGjF"
    )
    assert redact_text(text) == text  # 1762099200000 fails Luhn: a timestamp, not a card


def test_secret_keys_are_dropped_at_any_depth() -> None:
    event: dict[str, Any] = {
        "event": "token.refreshed",
        "refresh_token": "rt-1",
        "headers": {"Authorization": "Bearer at-1", "Accept": "application/json"},
        "cards": [{"card_number": "4242424242424242"}],
        "amount": 4242424242424242,  # a card number as an integer
        "count": 3,
    }

    redact(None, "info", event)

    assert event["event"] == "token.refreshed" and event["count"] == 3
    assert event["refresh_token"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "Accept": "application/json"}
    assert event["cards"] == REDACTED  # the key itself says card
    assert event["amount"] == REDACTED
