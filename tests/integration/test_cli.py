"""The command line as a newcomer uses it, on SQLite and PostgreSQL, including a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scheduler.cli import EXIT_ATTENTION, EXIT_CONFIG, app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    config = tmp_path / "milestone-sync.toml"
    code, output = invoke("init", str(config))
    assert code == 0, output
    return config


def ledger_invoices(config: Path) -> list[dict[str, object]]:
    path = config.parent / ".milestone-sync" / "ledger.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text())["invoices"].values())


def test_init_then_check_passes(sandbox: Path) -> None:
    code, output = invoke("check", str(sandbox))
    assert code == 0, output
    assert "ok" in output and "tax-return" in output


def test_check_lists_every_error_with_its_key_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[firm]\nid = "x"\nname = "X"\ncurrency = "USDX"\n\n'
        '[ledger]\nkind = "memory"\n\n[payments]\nkind = "memory"\n\n'
        '[[plans]]\nid = "p"\nname = "P"\nmilestones = []\nsurprise = 1\n'
    )
    code, output = invoke("check", str(bad))
    assert code == EXIT_CONFIG
    assert "firm.currency" in output
    assert "surprise" in output
    assert "milestones" in output
    assert "Traceback" not in output


def test_plan_shows_what_would_be_billed_and_writes_nothing(sandbox: Path) -> None:
    code, output = invoke("plan", "-c", str(sandbox))
    assert code == 0, output
    assert "1200.00 USD" in output  # 40% of Acme's 3000.00 return, twice
    assert "CL-ACME" in output
    assert "[[ignore]]" in output  # advice is printed verbatim, not eaten as markup
    assert sorted(p.name for p in sandbox.parent.iterdir()) == [
        "milestone-sync.toml",
        "sample-work.toml",
    ]  # a dry run writes nothing


def test_sync_bills_once_and_status_reports(sandbox: Path, store_url: str) -> None:
    code, output = invoke("sync", "--once", "-c", str(sandbox), "--database-url", store_url)
    assert code == EXIT_ATTENTION, output  # the payroll work item has no plan
    first = ledger_invoices(sandbox)
    assert len(first) >= 3

    code, output = invoke("sync", "--once", "-c", str(sandbox), "--database-url", store_url)
    assert ledger_invoices(sandbox) == first

    code, output = invoke("status", "-c", str(sandbox), "--database-url", store_url)
    assert code == 0, output
    assert "reconciled" in output
    assert "WI-1003" in output and "Payroll" in output


def test_explain_says_why_nothing_was_billed(sandbox: Path, store_url: str) -> None:
    invoke("sync", "--once", "-c", str(sandbox), "--database-url", store_url)
    code, output = invoke("explain", "WI-1003", "-c", str(sandbox), "--database-url", store_url)
    assert code == 0, output
    assert "Payroll" in output


def test_an_unreachable_database_is_one_clear_line(sandbox: Path) -> None:
    url = "postgresql+psycopg://app:hunter2@127.0.0.1:1/nowhere"
    code, output = invoke("sync", "--once", "-c", str(sandbox), "--database-url", url)
    assert code == EXIT_CONFIG
    assert "database.url" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


def _cli(
    config: Path, *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.mark.parametrize(
    "fault",
    [
        "after_intent:create_invoice",
        "after_call:create_invoice",
        "after_call:charge",
        "after_call:record_payment",
    ],
)
def test_a_process_killed_mid_write_recovers_without_duplicates(
    sandbox: Path, store_url: str, fault: str
) -> None:
    env = {"MILESTONE_SYNC_DATABASE_URL": store_url}
    killed = _cli(sandbox, "sync", "--once", env={**env, "MILESTONE_SYNC_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    _cli(sandbox, "sync", "--once", env=env)
    _cli(sandbox, "sync", "--once", env=env)

    references = [invoice["reference"] for invoice in ledger_invoices(sandbox)]
    assert len(references) == len(set(references)) >= 3
    payments = json.loads((sandbox.parent / ".milestone-sync" / "payments.json").read_text())
    charge_keys = [charge["key"] for charge in payments["charges"].values()]
    assert len(charge_keys) == len(set(charge_keys))
    charged_milestones = [
        charge["metadata"]["milestone"] for charge in payments["charges"].values()
    ]
    assert len(charged_milestones) == len(set(charged_milestones))


def test_the_daemon_runs_and_stops_cleanly_on_sigterm(sandbox: Path, store_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "run", "-c", str(sandbox)],
        env={**os.environ, "MILESTONE_SYNC_DATABASE_URL": store_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ledger = sandbox.parent / ".milestone-sync" / "ledger.json"
        while time.monotonic() < deadline:
            if ledger.exists() and ledger_invoices(sandbox):
                break
            time.sleep(0.2)
        assert ledger_invoices(sandbox), "the daemon billed nothing"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "daemon.stopped" in stderr


def test_the_daemon_serves_signed_webhooks_and_bills_the_pushed_phase(
    sandbox: Path, store_url: str
) -> None:
    import socket
    import tomllib
    from datetime import UTC, datetime

    import requests

    from adapters.signing import sign_timestamped

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tomllib.loads((sandbox.parent / "sample-work.toml").read_text())
    customer = next(w["ledger_customer_id"] for w in work["work_items"])
    secret = "pushed-secret-0123456789"
    with sandbox.open("a") as config:
        config.write(
            f'\n[[sources]]\nid = "pushed"\nkind = "webhook"\n'
            f'webhook_secret_env = "PUSH_SECRET"\n\n'
            f'[[plans]]\nid = "pushed-work"\nname = "Pushed work"\n'
            f'match = {{ source = "pushed" }}\ncollection_mode = "invoice_only"\n\n'
            f'[[plans.milestones]]\nid = "done"\nname = "Done"\n'
            f'trigger = {{ status = "Completed" }}\namount = "500.00"\n\n'
            f"[server]\nport = {port}\n"
        )
    code, output = invoke("check", str(sandbox))
    assert code == 0, output
    event = {
        "event_id": "evt-daemon-1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "work_item": {
            "key": "PUSH-1",
            "title": "Payroll setup",
            "client_key": "CL-PUSH",
            "client_name": "Pushed Client",
            "ledger_customer_id": customer,
        },
        "phase": {"status": "Completed"},
    }
    body = json.dumps(event).encode()
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "run", "-c", str(sandbox)],
        env={**os.environ, "MILESTONE_SYNC_DATABASE_URL": store_url, "PUSH_SECRET": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/webhooks/pushed"
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and answer is None:
            try:
                bad = requests.post(url, data=body, headers={"X-Milestone-Signature": "t=1,v1=0"})
                assert bad.status_code == 401
                header = sign_timestamped(secret, body, datetime.now(UTC))
                answer = requests.post(url, data=body, headers={"X-Milestone-Signature": header})
            except requests.ConnectionError:
                time.sleep(0.2)
        assert answer is not None and answer.json() == {"status": "accepted"}
        while time.monotonic() < deadline:
            if any("Payroll setup" in str(i) for i in ledger_invoices(sandbox)):
                break
            time.sleep(0.2)
        pushed = [i for i in ledger_invoices(sandbox) if "Payroll setup" in str(i)]
        assert len(pushed) == 1, "the pushed phase was not billed once"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "webhook.bad_signature" in stderr and "webhook.received" in stderr
    assert secret not in stderr


def test_a_revoked_karbon_key_shows_in_status_as_needing_an_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.karbon.emulator import KarbonEmulator

    with KarbonEmulator(access_keys=("eyJfirm",)) as karbon:
        config = tmp_path / "firm.toml"
        config.write_text(
            '[firm]\nid = "f"\nname = "F"\ncurrency = "USD"\n\n'
            f'[[sources]]\nid = "karbon"\nkind = "karbon"\nbase_url = "{karbon.url}"\n'
            'token_env = "KARBON_TOKEN"\naccess_key_env = "KARBON_KEY"\n\n'
            '[ledger]\nkind = "memory"\n\n'
            '[[plans]]\nid = "p"\nname = "P"\nmatch = { source = "karbon" }\n'
            '[[plans.milestones]]\nid = "m"\nname = "M"\ntrigger = { status = "Completed" }\n'
            'amount = "10.00"\n'
        )
        monkeypatch.setenv("KARBON_TOKEN", "app-token-0000")
        monkeypatch.setenv("KARBON_KEY", "eyJfirm")
        code, output = invoke("sync", "--once", "-c", str(config))
        assert code == 0, output
        code, output = invoke("status", "-c", str(config))
        assert "source karbon: ok" in output
        karbon.revoke("eyJfirm")
        code, output = invoke("sync", "--once", "-c", str(config))
        assert code == EXIT_ATTENTION
        assert "refused the credentials" in output and "KARBON_KEY" in output
        code, output = invoke("status", "-c", str(config))
        assert "source karbon: needs an admin" in output
        assert "eyJfirm" not in output
        assert karbon.violations() == []
