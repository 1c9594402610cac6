"""A firm as the daemon runs it in production (no tests here): Karbon, QuickBooks and Stripe
emulators, a config naming every secret by environment variable, the stored QuickBooks
connection `milestone-sync connect` would have left, and one client with a saved card."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from adapters.karbon.emulator import KarbonEmulator
from adapters.quickbooks.emulator import QuickBooksEmulator
from adapters.store.engine import open_store
from adapters.store.tokens import SqlTokenStore, StoredToken
from connector.domain.ids import TenantId
from connector.ports import OAuthToken
from tests.contract.harness_stripe import SteppedTime, StripeHarness

TENANT = TenantId("firm")  # the Stripe harness's tenant: its customers carry it
KARBON_TOKEN = "karbon-app-token-7d1f0c2e9b"
KARBON_ACCESS_KEY = "eyJkarbonAccessKey.firm-4c0ffee"
KARBON_SIGNING_KEY = "karbon-signing-key-51ab0c9d"
STRIPE_WEBHOOK_SECRET = "whsec_0a1b2c3d4e5f60718293a4b5c6d7e8f9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpsFirm:
    directory: Path
    config: Path
    database_url: str
    port: int
    karbon: KarbonEmulator
    quickbooks: QuickBooksEmulator
    stripe: StripeHarness
    token_key: str
    env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # the stored OAuth tokens

    @property
    def secrets(self) -> dict[str, str]:
        """Every secret value a log must never show, by what it is."""
        return {
            "karbon token": KARBON_TOKEN,
            "karbon access key": KARBON_ACCESS_KEY,
            "karbon signing key": KARBON_SIGNING_KEY,
            "quickbooks client secret": self.quickbooks.client_secret,
            "stripe secret key": self.stripe.emulator.api_key,
            "stripe webhook secret": STRIPE_WEBHOOK_SECRET,
            "token key": self.token_key,
            **self.tokens,
        }

    def store_connection(self, **changes: Any) -> None:
        """The connection `connect` stores: a fresh token pair from the emulator, encrypted."""
        body = self.quickbooks.connect()
        now = datetime.now(UTC)
        self.tokens["first access token"] = str(body["access_token"])
        self.tokens["first refresh token"] = str(body["refresh_token"])
        record = StoredToken(
            OAuthToken(
                access_token=str(body["access_token"]),
                refresh_token=str(body["refresh_token"]),
                expires_at=changes.pop(
                    "expires_at", now + timedelta(seconds=int(body["expires_in"]))
                ),
                refresh_expires_at=changes.pop("refresh_expires_at", now + timedelta(days=100)),
                realm=self.quickbooks.realm_id,
            ),
            connected_at=now,
            **changes,
        )
        store = open_store(self.database_url)
        try:
            SqlTokenStore(
                store, TENANT, environ={"MILESTONE_SYNC_TOKEN_KEY": self.token_key}
            ).save_record("quickbooks", record)
        finally:
            store.dispose()

    def stored_tokens(self) -> OAuthToken:
        store = open_store(self.database_url)
        try:
            tokens = SqlTokenStore(
                store, TENANT, environ={"MILESTONE_SYNC_TOKEN_KEY": self.token_key}
            )
            record = tokens.load_record("quickbooks")
            assert record is not None
            return record.token
        finally:
            store.dispose()


CONFIG = """
[firm]
id = "{tenant}"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "karbon"
base_url = "{karbon}"
token_env = "KARBON_TOKEN"
access_key_env = "KARBON_ACCESS_KEY"
signing_key_env = "KARBON_SIGNING_KEY"
options = {{ budget_per_minute = "120", check_karbon_billing = "false" }}

[[sources]]
id = "work"
kind = "memory"
options = {{ work_file = "work.toml" }}

[server]
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"

[ledger]
kind = "quickbooks"
base_url = "{quickbooks}"
client_id_env = "QBO_CLIENT_ID"
client_secret_env = "QBO_CLIENT_SECRET"
options.clearing_account = "Stripe Clearing"
options.bank_account = "Checking"
options.fee_account = "Stripe Fees"
options.disputes_account = "Stripe Disputes"

[payments]
kind = "stripe"
base_url = "{stripe}"
secret_key_env = "STRIPE_SECRET_KEY"
webhook_secret_env = "STRIPE_WEBHOOK_SECRET"

[collection]
default_mode = "auto_charge"

[defaults]
item = "Tax Preparation"
tax_code = "NON"
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

WORK = """
[[work_items]]
key = "WI-1"
client = "CL-ACME"
client_name = "Acme LLC"
ledger_customer_id = "{customer}"
title = "2026 Form 1120 - Acme LLC"
work_type = "Tax Return"
fee = "1500.00"
start_date = 2026-11-02
phases = [ {{ status = "Completed", at = 2026-11-10T15:00:00Z }} ]
"""


@contextmanager
def ops_firm(directory: Path, database_url: str) -> Iterator[OpsFirm]:
    """The firm with its emulators running; stopped afterwards."""
    karbon = KarbonEmulator(
        app_token=KARBON_TOKEN, access_keys=(KARBON_ACCESS_KEY,), rate_limit_per_minute=10_000
    )
    quickbooks = QuickBooksEmulator()
    stripe = StripeHarness(time=SteppedTime())
    karbon.start()
    quickbooks.start()
    try:
        for name, kind in (
            ("Stripe Clearing", "Other Current Asset"),
            ("Stripe Fees", "Expense"),
            ("Stripe Disputes", "Other Current Asset"),
        ):
            quickbooks.add_account(name, kind)
        quickbooks.add_item("Tax Preparation")
        customer = quickbooks.add_customer("Acme LLC", email="ap@acme.example")
        karbon.add_client("CL-KARBON", "Karbon Client LLC")
        karbon.add_work_item(client_key="CL-KARBON", title="2026 Form 1040", primary="Planned")
        stripe.add_client_with("CL-ACME", "pm_card_visa")
        port = free_port()
        config = directory / "milestone-sync.toml"
        config.write_text(
            CONFIG.format(
                tenant=TENANT,
                karbon=karbon.url,
                quickbooks=quickbooks.url,
                stripe=stripe.emulator.url,
                port=port,
            )
        )
        (directory / "work.toml").write_text(WORK.format(customer=customer))
        token_key = Fernet.generate_key().decode()
        firm = OpsFirm(
            directory=directory,
            config=config,
            database_url=database_url,
            port=port,
            karbon=karbon,
            quickbooks=quickbooks,
            stripe=stripe,
            token_key=token_key,
            env={
                "KARBON_TOKEN": KARBON_TOKEN,
                "KARBON_ACCESS_KEY": KARBON_ACCESS_KEY,
                "KARBON_SIGNING_KEY": KARBON_SIGNING_KEY,
                "QBO_CLIENT_ID": quickbooks.client_id,
                "QBO_CLIENT_SECRET": quickbooks.client_secret,
                "STRIPE_SECRET_KEY": stripe.emulator.api_key,
                "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
                "MILESTONE_SYNC_TOKEN_KEY": token_key,
                "MILESTONE_SYNC_DATABASE_URL": database_url,
            },
        )
        yield firm
    finally:
        stripe.close()
        quickbooks.stop()
        karbon.stop()
