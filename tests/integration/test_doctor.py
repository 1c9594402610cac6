"""`milestone-sync doctor` over the Karbon, QuickBooks and Stripe emulators: all ok on a healthy
installation; a revoked QuickBooks grant, a wrong Stripe key, missing Karbon subscriptions, an
expiring refresh token, a database behind the code and a broken config each said with what to
do. Doctor writes nothing at the vendors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.store.engine import open_store
from adapters.store.migrate import downgrade
from scheduler.cli import EXIT_CONFIG, EXIT_OK, app
from tests.integration.ops_firm import OpsFirm, ops_firm

runner = CliRunner()


@pytest.fixture
def firm(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpsFirm]:
    with ops_firm(tmp_path, store_url) as started:
        for name, value in started.env.items():
            monkeypatch.setenv(name, value)
        yield started


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def doctor(firm: OpsFirm, *args: str) -> tuple[int, str]:
    return invoke("doctor", "-c", str(firm.config), *args)


def lines(output: str, level: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(level)]


def test_a_healthy_installation_is_all_ok_and_doctor_writes_nothing(firm: OpsFirm) -> None:
    firm.store_connection()
    code, output = invoke("webhooks", "ensure", "-c", str(firm.config))
    assert code == EXIT_OK, output
    subscriptions = firm.karbon.subscriptions
    firm.karbon.log.clear()

    code, output = doctor(firm)

    assert code == EXIT_OK, output
    assert output.rstrip().endswith("0 problem(s), 0 warning(s)"), output
    ok = "\n".join(lines(output, "ok"))
    assert "config:" in ok and "firm 'firm'" in ok
    assert "database:" in ok and "reachable, schema at" in ok
    assert "ledger token: QuickBooks company" in ok
    assert "ledger: quickbooks: an authenticated read worked" in ok
    assert "payments: Stripe balance" in ok
    assert "source karbon: Karbon: an authenticated read worked" in ok
    assert f"Work and Contact webhooks go to http://127.0.0.1:{firm.port}/webhooks/karbon" in ok
    assert "source work: nothing to reach" in ok
    assert firm.karbon.subscriptions == subscriptions
    assert firm.karbon.log.count("POST") == 0  # one list call and two subscription reads
    assert firm.karbon.log.count("GET", "/v3/WorkItems") == 1
    assert firm.quickbooks.invoices() == []
    assert firm.karbon.violations() == [] and firm.quickbooks.violations() == []


def test_a_revoked_grant_a_wrong_stripe_key_and_no_subscriptions_are_problems(
    firm: OpsFirm, monkeypatch: pytest.MonkeyPatch
) -> None:
    firm.store_connection()
    firm.quickbooks.revoke_all()  # the admin disconnected the app in QuickBooks
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_not_the_firms_key_0000")

    code, output = doctor(firm)

    assert code == EXIT_CONFIG, output
    problems = "\n".join(lines(output, "problem"))
    assert "ledger: reading quickbooks:" in problems and "connect quickbooks" in problems
    assert "payments: reading the Stripe balance:" in problems
    assert "STRIPE_SECRET_KEY" in problems or "key" in problems
    warnings = "\n".join(lines(output, "warning"))
    assert "no Work subscription" in warnings and "no Contact subscription" in warnings
    assert "milestone-sync webhooks ensure" in output
    assert firm.karbon.subscriptions == {}  # doctor only looked
    assert "sk_test_not_the_firms_key_0000" not in output
    for secret in firm.secrets.values():
        assert secret not in output


def test_a_refresh_token_expiring_within_14_days_is_a_warning(firm: OpsFirm) -> None:
    firm.store_connection(refresh_expires_at=datetime.now(UTC) + timedelta(days=5, hours=1))

    code, output = doctor(firm)

    assert code == EXIT_OK, output
    token = [line for line in lines(output, "warning") if "ledger token" in line]
    assert token and "the refresh token expires in 5 days" in token[0], output


def test_a_ledger_never_connected_says_to_connect(firm: OpsFirm) -> None:
    code, output = doctor(firm)

    assert code == EXIT_CONFIG, output
    problems = lines(output, "problem")
    assert any("ledger token: quickbooks is not connected" in line for line in problems), output
    assert "run `milestone-sync connect quickbooks`" in output


def test_a_database_behind_the_code_is_a_problem_until_migrated(tmp_path: Path) -> None:
    config = tmp_path / "milestone-sync.toml"
    assert invoke("init", str(config))[0] == EXIT_OK
    database = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(database)
    downgrade(store.engine, "0001")
    store.dispose()

    code, output = invoke("doctor", "-c", str(config), "--database-url", database)
    assert code == EXIT_CONFIG, output
    assert "is at schema 0001, this version needs 0002" in output
    assert "milestone-sync doctor --migrate" in output

    code, output = invoke("doctor", "-c", str(config), "--database-url", database, "--migrate")
    assert code == EXIT_OK, output
    assert "schema at 0002 (migrated from 0001)" in output


def test_a_broken_config_is_one_problem(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[firm]\nid = "x"\n')

    code, output = invoke("doctor", "-c", str(config))

    assert code == EXIT_CONFIG, output
    assert lines(output, "problem") and "config:" in lines(output, "problem")[0]
    assert "milestone-sync check" in output


def test_the_deployment_files_name_every_variable_the_example_config_uses() -> None:
    import configparser
    import re

    root = Path(__file__).resolve().parents[2]
    example = (root / "config.example.toml").read_text()
    named = set(re.findall(r'_env\s*=\s*"([A-Z][A-Z0-9_]*)"', example))
    listed = set(
        re.findall(r"^([A-Z][A-Z0-9_]*)=$", (root / "deploy/env.example").read_text(), re.M)
    )
    assert named and not named - listed, f"missing from deploy/env.example: {named - listed}"
    assert {"MILESTONE_SYNC_DATABASE_URL", "MILESTONE_SYNC_TOKEN_KEY"} <= listed

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(root / "deploy/milestone-sync.service")
    service = unit["Service"]
    assert service["User"] == "milestone-sync" and service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/milestone-sync/env"
    assert service["ExecStart"].endswith(
        "run -c /etc/milestone-sync/milestone-sync.toml --log-json"
    )
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"

    dockerfile = (root / "deploy/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)  # not root
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert (
        'CMD ["milestone-sync", "run", "-c", "/etc/milestone-sync/milestone-sync.toml"'
        in dockerfile
    )
