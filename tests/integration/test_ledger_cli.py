"""The ledgers as a firm admin meets them through the CLI: a QuickBooks or Xero connection
(token stored encrypted, as `connect` leaves it), `check --ledger` before the first post, then
`sync --once` posting through the real bootstrap, adapters and SDKs into the emulators."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from adapters.store.engine import open_store
from adapters.store.tokens import SqlTokenStore, StoredToken
from connector.domain.ids import TenantId
from connector.ports import OAuthToken
from scheduler.cli import EXIT_CONFIG, EXIT_OK, app

runner = CliRunner()
TENANT = TenantId("smith-cpa")
TOKEN_KEY = Fernet.generate_key().decode()


@dataclass
class Ledger:
    kind: str
    emulator: Any
    realm: str
    customers: dict[str, str]  # client key -> ledger customer id
    options: str

    def env(self) -> dict[str, str]:
        return {
            "LEDGER_CLIENT_ID": self.emulator.client_id,
            "LEDGER_CLIENT_SECRET": self.emulator.client_secret,
            "MILESTONE_SYNC_TOKEN_KEY": TOKEN_KEY,
        }


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
    work = directory / "work.toml"
    work.write_text(
        "\n".join(
            f"""
[[work_items]]
key = "WI-{n}"
client = "{client}"
client_name = "{client} LLC"
ledger_customer_id = "{ledger.customers[client]}"
title = "2026 Form 1120 - {client}"
work_type = "Tax Return"
fee = "{fee}"
start_date = 2026-11-02
phases = [ {{ status = "Completed", at = 2026-11-10T15:00:00Z }} ]
"""
            for n, (client, fee) in enumerate((("CL-ACME", "1500.00"), ("CL-BETA", "980.50")))
        )
    )
    config = directory / "milestone-sync.toml"
    config.write_text(
        f"""
[firm]
id = "{TENANT}"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "memory"
options = {{ work_file = "work.toml" }}

[ledger]
kind = "{ledger.kind}"
base_url = "{ledger.emulator.url}"
client_id_env = "LEDGER_CLIENT_ID"
client_secret_env = "LEDGER_CLIENT_SECRET"
{ledger.options}

[collection]
default_mode = "invoice_only"

[defaults]
item = "{item}"
tax_code = "{"NONE" if ledger.kind == "xero" else "NON"}"   # professional services: no sales tax
terms = "Net 15"

[[plans]]
id = "tax-return"
name = "Tax return"
match = {{ work_type = "Tax Return" }}

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = {{ status = "Completed" }}
remainder = true
"""
    )
    return config


def connected(ledger: Ledger, database_url: str) -> None:
    """What `milestone-sync connect` leaves behind: the token, encrypted, with its realm."""
    body = ledger.emulator.connect()
    now = datetime.now(UTC)
    store = open_store(database_url)
    try:
        SqlTokenStore(store, TENANT, environ={"MILESTONE_SYNC_TOKEN_KEY": TOKEN_KEY}).save_record(
            ledger.kind,
            StoredToken(
                OAuthToken(
                    access_token=str(body["access_token"]),
                    refresh_token=str(body["refresh_token"]),
                    expires_at=now + timedelta(seconds=int(body["expires_in"])),
                    refresh_expires_at=now + timedelta(days=60),
                    realm=ledger.realm,
                ),
                connected_at=now,
            ),
        )
    finally:
        store.dispose()


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
