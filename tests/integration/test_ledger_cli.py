"""The ledgers as a firm admin meets them through the CLI: a QuickBooks or Xero connection
(token stored encrypted, as `connect` leaves it), `check --ledger` before the first post, then
`sync --once` posting through the real bootstrap, adapters and SDKs into the emulators."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scheduler.cli import EXIT_CONFIG, EXIT_OK, app
from tests.integration.ledger_firm import (
    environment,
    store_connection,
    write_config,
    write_work,
)

runner = CliRunner()


@dataclass
class Ledger:
    kind: str
    emulator: Any
    realm: str
    customers: dict[str, str]  # client key -> ledger customer id
    options: str

    def env(self) -> dict[str, str]:
        return environment(self.emulator)


def start_quickbooks() -> Ledger:
    from adapters.quickbooks.emulator import QuickBooksEmulator

    emulator = QuickBooksEmulator()
    emulator.start()
    emulator.add_account("Stripe Clearing", "Other Current Asset")
    emulator.add_item("Tax Preparation")
    customers = {
        "CL-ACME": emulator.add_customer("Acme LLC", email="ap@acme.example"),
        "CL-BETA": emulator.add_customer("Beta Dental", email="office@beta.example"),
    }
    return Ledger(
        "quickbooks",
        emulator,
        emulator.realm_id,
        customers,
        'options = { clearing_account = "Stripe Clearing", invoice_number = "MS-{seq:04d}" }',
    )


def start_xero() -> Ledger:
    from adapters.xero.emulator import XeroEmulator

    emulator = XeroEmulator()
    emulator.start()
    emulator.set_payment_terms(30)
    emulator.add_item("TAX", "Tax Preparation", account_code="200")
    customers = {
        "CL-ACME": emulator.add_contact("Acme LLC", email="ap@acme.example"),
        "CL-BETA": emulator.add_contact("Beta Dental", email="office@beta.example"),
    }
    return Ledger(
        "xero",
        emulator,
        emulator.tenants[0],
        customers,
        'options = { sales_account = "200", clearing_account = "090", '
        'invoice_number = "MS-{seq:04d}" }',
    )


@pytest.fixture(params=["quickbooks", "xero"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    started = start_quickbooks() if request.param == "quickbooks" else start_xero()
    try:
        yield started
    finally:
        started.emulator.stop()


def write_firm(directory: Path, ledger: Ledger, item: str) -> Path:
    write_work(
        directory,
        [
            ("WI-0", "CL-ACME", ledger.customers["CL-ACME"], "1500.00"),
            ("WI-1", "CL-BETA", ledger.customers["CL-BETA"], "980.50"),
        ],
    )
    no_tax = "NONE" if ledger.kind == "xero" else "NON"  # professional services: no sales tax
    defaults = f'item = "{item}"\ntax_code = "{no_tax}"\nterms = "Net 15"'
    return write_config(directory, ledger.kind, ledger.emulator, ledger.options, defaults)


def connected(ledger: Ledger, database_url: str) -> None:
    store_connection(ledger.emulator, ledger.kind, ledger.realm, database_url)


def run(ledger: Ledger, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=ledger.env())
    return result.exit_code, result.output


def item_name(ledger: Ledger) -> str:
    return "Tax Preparation" if ledger.kind == "quickbooks" else "TAX"


def test_check_ledger_names_what_is_missing_then_sync_posts_numbered_invoices(
    ledger: Ledger, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_firm(tmp_path, ledger, item="Bookkeeping")
    connected(ledger, database)
    common = ("-c", str(config), "--database-url", database)

    code, output = run(ledger, "check", "--ledger", *common)

    assert code == EXIT_CONFIG, output
    assert "item 'Bookkeeping'" in output and "[defaults]" in output
    assert ledger.emulator.invoices() == []

    config = write_firm(tmp_path, ledger, item=item_name(ledger))
    code, output = run(ledger, "check", "--ledger", *common)
    assert code == EXIT_OK, output
    assert "checked 2 customer(s), 1 item(s), 1 tax code(s)" in output
    assert "ok the ledger has everything" in output

    code, output = run(ledger, "sync", "--once", *common)
    assert code == EXIT_OK, output
    assert "invoice    2" in output

    invoices = ledger.emulator.invoices()
    numbers = sorted(i.get("DocNumber") or i.get("InvoiceNumber") for i in invoices)
    assert numbers == ["MS-0001", "MS-0002"]
    totals = sorted(Decimal(str(i.get("TotalAmt") or i.get("Total"))) for i in invoices)
    assert totals == [Decimal("980.50"), Decimal("1500.00")]
    assert ledger.emulator.violations() == []

    code, output = run(ledger, "sync", "--once", *common)  # nothing new: nothing posted twice
    assert code == EXIT_OK, output
    assert len(ledger.emulator.invoices()) == 2

    code, output = run(ledger, "status", *common)
    assert code == EXIT_OK, output
    assert "invoiced" in output and "2480.50 USD" in output
    assert f"ledger connection ({ledger.kind}): connected" in output


def test_a_ledger_that_was_never_connected_says_to_connect(ledger: Ledger, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_firm(tmp_path, ledger, item=item_name(ledger))

    code, output = run(ledger, "sync", "--once", "-c", str(config), "--database-url", database)

    assert code == EXIT_CONFIG, output
    assert f"milestone-sync connect {ledger.kind}" in output
    assert ledger.emulator.invoices() == []
