"""`milestone-sync demo` as a person runs it: child processes (`python -m scheduler demo
--no-serve`), each starting the emulators, writing its directory, running the real daemon
through a short month and printing the summary. Twice with one seed (the same summary), once
on Xero (the same firm, the same outcome).

The seeded firm (adapters/sandbox/firm.py) implies the numbers: 9 tax returns billed in three
milestones, 1 advisory project in two (approved by a partner first), 9 monthly closes: 38
invoices. Harbor Physio pays its 4 by cheque; Juniper Yoga never saved a payment method and
Kestrel Logistics' card was reported lost (1 decline): 38 - 4 - 2 = 32 charged and reconciled.

The three runs start together (two cores: about twenty seconds in all) and run once per CI:
the demo keeps its own SQLite file and opens no test database, so CI's PostgreSQL pass leaves
this module to the SQLite pass (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapters.emulation.specs import SPECS_ENV, specs_dir
from scheduler.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, app

ROOT = Path(__file__).resolve().parents[2]
DAYS = "7"  # the shortest month the schedule fits in: the tail for bank debits is the same
TIMEOUT = 180  # seconds a child may take before the test gives up on it (a hang, not speed)


@dataclass
class Run:
    directory: Path
    code: int
    output: str

    @property
    def summary(self) -> dict[str, Any]:
        path = self.directory / "summary.json"
        assert path.exists(), self.output[-3000:]
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded


def _child_env() -> dict[str, str]:
    # nothing from the developer's own setup (a database URL, faults, a token key) may leak in;
    # where the vendors' specs are, may
    return {
        k: v for k, v in os.environ.items() if not k.startswith("MILESTONE_SYNC_") or k == SPECS_ENV
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    plans = {"first": "quickbooks", "again": "quickbooks", "xero": "xero"}
    started = {}
    for name, ledger in plans.items():
        directory = tmp_path_factory.mktemp("demo") / name
        command = [sys.executable, "-m", "scheduler", "demo", "--no-serve", "--seed", "7"]
        command += ["--days", DAYS, "--ledger", ledger, "--dir", str(directory)]
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started[name] = (directory, child)
    done = {}
    try:
        for name, (directory, child) in started.items():
            output, _ = child.communicate(timeout=TIMEOUT)
            done[name] = Run(directory, child.returncode, output)
    finally:
        for _directory, child in started.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    yield done


def test_the_demo_month_ends_with_every_invoice_paid_or_explained_and_the_books_clean(
    runs: dict[str, Run],
) -> None:
    run = runs["first"]
    assert run.code == EXIT_OK, run.output[-3000:]
    summary = run.summary

    assert summary["ledger"] == "QuickBooks Online"
    assert summary["milestones"] == summary["invoices_created"] == 38
    assert summary["approved_by_a_partner"] == 2
    assert summary["charged"] == summary["reconciled"] == 32
    assert summary["charges_declined"] == 1
    assert (summary["paid"], summary["paid_by_cheque"]) == (36, 4)
    assert summary["charged_amount"] == summary["reconciled_amount"]
    assert summary["phases_unmapped"] == 0
    assert summary["phases_billed"] == 39  # one per milestone, and the project's review too
    assert summary["vendor_refusals"] == summary["daemon_errors"] == 0
    assert summary["vendor_specs_checked"] == (specs_dir() is not None)  # said as it is
    check = summary["reconcile_check"]
    assert check["clean"], check["differences"]
    assert check["clearing"] == check["gateway_balance"] == "0.00"  # every cent paid out
    attention = {row["client"]: row["reason"] for row in summary["needing_attention"]}
    assert set(attention) == {"Juniper Yoga", "Kestrel Logistics"}
    assert "no saved card or bank account" in attention["Juniper Yoga"]
    assert "declined for good (lost_card)" in attention["Kestrel Logistics"]
    assert "clean" in run.output and "Juniper Yoga" in run.output
    assert "dashboard:" in run.output  # served, not served (--no-serve), or not in this build


def test_the_same_seed_prints_the_same_summary(runs: dict[str, Run]) -> None:
    first, again = runs["first"], runs["again"]
    assert (first.code, again.code) == (EXIT_OK, EXIT_OK), again.output[-3000:]

    assert first.summary == again.summary
    assert first.directory != again.directory


def test_the_same_firm_on_xero_ends_the_same_way(runs: dict[str, Run]) -> None:
    run = runs["xero"]
    assert run.code == EXIT_OK, run.output[-3000:]

    summary, quickbooks = run.summary, runs["first"].summary
    assert summary["ledger"] == "Xero"
    counts = (
        "milestones",
        "invoices_created",
        "invoiced_amount",
        "approved_by_a_partner",
        "charged",
        "charged_amount",
        "paid",
        "paid_by_cheque",
        "reconciled",
        "stripe_fees",
        "paid_out_to_bank",
        "needing_attention",
        "vendor_refusals",
    )
    assert {k: summary[k] for k in counts} == {k: quickbooks[k] for k in counts}
    assert summary["reconcile_check"]["clean"], summary["reconcile_check"]["differences"]


def test_the_directory_holds_a_real_config_naming_secrets_and_the_state_it_made(
    runs: dict[str, Run],
) -> None:
    directory = runs["first"].directory
    config = (directory / "milestone-sync.toml").read_text()

    assert 'base_url = "http://127.0.0.1:' in config
    assert 'token_env = "DEMO_KARBON_TOKEN"' in config
    assert "sk_test" not in config and "demo-" not in config  # names of secrets, never values
    assert (directory / "state.db").stat().st_size > 0
    result = CliRunner().invoke(app, ["check", str(directory / "milestone-sync.toml")])
    assert result.exit_code == EXIT_OK, result.output
    # the state outlives the emulators: status reads it without any of the demo's variables
    result = CliRunner().invoke(
        app, ["status", "-c", str(directory / "milestone-sync.toml")], env=_child_env()
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "reconciled" in result.output and "Needs attention (2)" in result.output


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--days", "3"], EXIT_USAGE, "--days"),
        (["--ledger", "sage"], EXIT_USAGE, "--ledger must be one of quickbooks, xero"),
    ],
)
def test_wrong_options_are_refused_before_anything_starts(
    args: list[str], code: int, says: str
) -> None:
    result = CliRunner().invoke(app, ["demo", "--no-serve", *args])

    assert result.exit_code == code, result.output
    assert says in result.output


def test_a_directory_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    result = CliRunner().invoke(app, ["demo", "--no-serve", "--dir", str(tmp_path)])

    assert result.exit_code == EXIT_CONFIG, result.output
    assert "not an empty directory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
