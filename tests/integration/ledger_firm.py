"""A small firm billing into a ledger emulator through the CLI (no tests here): its work file,
its config, and the stored connection `milestone-sync connect` would have left."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from adapters.store.engine import open_store
from adapters.store.tokens import SqlTokenStore, StoredToken
from connector.domain.ids import TenantId
from connector.ports import OAuthToken

TENANT = TenantId("smith-cpa")
TOKEN_KEY = Fernet.generate_key().decode()


def write_work(directory: Path, items: Iterable[tuple[str, str, str, str]]) -> None:
    """work.toml: (work item key, client key, ledger customer id, fee), each completed."""
    directory.joinpath("work.toml").write_text(
        "\n".join(
            f"""
[[work_items]]
key = "{key}"
client = "{client}"
client_name = "{client} LLC"
ledger_customer_id = "{customer}"
title = "2026 Form 1120 - {client} ({key})"
work_type = "Tax Return"
fee = "{fee}"
start_date = 2026-11-02
phases = [ {{ status = "Completed", at = 2026-11-10T15:00:00Z }} ]
"""
            for key, client, customer, fee in items
        )
    )


def write_config(
    directory: Path, kind: str, emulator: Any, ledger_extra: str, defaults: str
) -> Path:
    """milestone-sync.toml over work.toml: one milestone per completed tax return."""
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
kind = "{kind}"
base_url = "{emulator.url}"
client_id_env = "LEDGER_CLIENT_ID"
client_secret_env = "LEDGER_CLIENT_SECRET"
{ledger_extra}

[collection]
default_mode = "invoice_only"

[defaults]
{defaults}

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


def environment(emulator: Any) -> dict[str, str]:
    return {
        "LEDGER_CLIENT_ID": emulator.client_id,
        "LEDGER_CLIENT_SECRET": emulator.client_secret,
        "MILESTONE_SYNC_TOKEN_KEY": TOKEN_KEY,
    }


def store_connection(emulator: Any, kind: str, realm: str, database_url: str) -> None:
    """What `milestone-sync connect` leaves behind: the token, encrypted, with its realm."""
    body = emulator.connect()
    now = datetime.now(UTC)
    store = open_store(database_url)
    try:
        SqlTokenStore(store, TENANT, environ={"MILESTONE_SYNC_TOKEN_KEY": TOKEN_KEY}).save_record(
            kind,
            StoredToken(
                OAuthToken(
                    access_token=str(body["access_token"]),
                    refresh_token=str(body["refresh_token"]),
                    expires_at=now + timedelta(seconds=int(body["expires_in"])),
                    refresh_expires_at=now + timedelta(days=60),
                    realm=realm,
                ),
                connected_at=now,
            ),
        )
    finally:
        store.dispose()
