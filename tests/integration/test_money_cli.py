"""`reconcile`, `reconcile --check` and `clients invite` as an admin uses them, on the built-in
sandbox (the in-memory gateway and ledger, kept in JSON files beside the config)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scheduler.cli import EXIT_ATTENTION, EXIT_CONFIG, EXIT_USAGE, app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    config = tmp_path / "milestone-sync.toml"
    assert invoke("init", str(config))[0] == 0
    code, output = invoke("sync", "--once", "-c", str(config))
    assert code == EXIT_ATTENTION, output  # the sample payroll job has no plan
    return config


def test_after_a_cycle_the_ledger_matches_the_gateway(sandbox: Path) -> None:
    code, output = invoke("reconcile", "--check", "-c", str(sandbox))

    assert code == 0, output
    assert "checked 4 gateway movement(s)" in output
    assert "clean" in output


def test_a_deleted_fee_in_the_ledger_is_a_difference(sandbox: Path) -> None:
    path = sandbox.parent / ".milestone-sync" / "ledger.json"
    state = json.loads(path.read_text())
    entry_id, entry = next(iter(state["entries"].items()))
    del state["entries"][entry_id]  # someone deleted our fee entry in the ledger
    for role, change in entry["effects"]:
        state["balances"][role] = str(Decimal(state["balances"][role]) - Decimal(change))
    path.write_text(json.dumps(state))

    code, output = invoke("reconcile", "--check", "-c", str(sandbox))

    assert code == EXIT_CONFIG, output
    assert "entry missing" in output and entry["reference"] in output
    assert "clearing differs now" in output


def test_reconcile_books_and_a_bad_date_is_refused(sandbox: Path) -> None:
    code, output = invoke("reconcile", "-c", str(sandbox))
    assert code == 0, output
    assert "money      0" in output  # the cycle already booked everything

    code, output = invoke("reconcile", "--check", "--from", "yesterday", "-c", str(sandbox))
    assert code == EXIT_USAGE and "2026-11-01" in output


def test_invite_prints_a_link_for_a_known_client_only(sandbox: Path) -> None:
    code, output = invoke("clients", "invite", "CL-COVE", "-c", str(sandbox))
    assert code == 0, output
    assert "https://" in output and "Cove Cafe" in output

    code, output = invoke("clients", "invite", "CL-NOBODY", "-c", str(sandbox))
    assert code == EXIT_CONFIG and "no client 'CL-NOBODY'" in output
