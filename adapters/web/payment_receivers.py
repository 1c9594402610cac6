"""Webhook receivers for the money side (Stripe, the QuickBooks or Xero ledger), from the config
and the environment variables it names; notes say which are off and why. Secrets are read here
and handed to the receivers only: never logged, never in a note."""

from __future__ import annotations

import os
from collections.abc import Mapping

from adapters.web.webhooks import Receiver
from connector.config import AppConfig, LedgerKind, PaymentsKind

POLLING = "polling still finds every change"


def payment_receivers(
    config: AppConfig,
    environ: Mapping[str, str] = os.environ,
    *,
    connected: Mapping[str, str] | None = None,
) -> tuple[dict[str, Receiver], list[str]]:
    """Receivers keyed by the path id they are served at (`/webhooks/stripe`,
    `/webhooks/quickbooks`, `/webhooks/xero`), and notes.

    `connected` gives the QuickBooks realm / Xero tenant id the stored OAuth connection holds
    (by ledger kind), used when `[ledger] options` name none: a receiver must know which
    company's events are ours."""
    receivers: dict[str, Receiver] = {}
    notes: list[str] = []
    taken = {str(source.id) for source in config.sources}

    def add(path_id: str, make: Receiver) -> None:
        if path_id in taken:
            notes.append(
                f"{path_id} webhooks are off: a source is named {path_id!r} and is served at "
                f"/webhooks/{path_id}; rename that source; {POLLING}"
            )
        else:
            receivers[path_id] = make

    payments = config.payments
    if payments.kind is PaymentsKind.STRIPE:
        value, why = _secret(
            environ,
            payments.secret_env.get("webhook_secret"),
            "[payments] webhook_secret_env",
            "the endpoint's signing secret (whsec_...)",
        )
        if value is None:
            notes.append(f"stripe webhooks are off until {why}; {POLLING}")
        else:
            from adapters.stripe.webhooks import StripeReceiver

            add("stripe", StripeReceiver(value))

    ledger = config.ledger
    if ledger.kind is LedgerKind.QUICKBOOKS:
        value, why = _secret(
            environ,
            ledger.secret_env.get("webhook_verifier"),
            "[ledger] webhook_verifier_env",
            "the app's webhook verifier token (developer portal, Webhooks)",
        )
        realm = ledger.options.get("realm_id") or (connected or {}).get("quickbooks")
        if value is None:
            notes.append(f"quickbooks webhooks are off until {why}; {POLLING}")
        elif not realm:
            notes.append(
                "quickbooks webhooks are off until the company is known: connect the ledger "
                f"or set [ledger] options realm_id; {POLLING}"
            )
        else:
            from adapters.quickbooks.webhooks import QuickBooksReceiver

            add("quickbooks", QuickBooksReceiver(value, realm))
    elif ledger.kind is LedgerKind.XERO:
        value, why = _secret(
            environ,
            ledger.secret_env.get("webhook_key"),
            "[ledger] webhook_key_env",
            "the app's webhooks key (developer portal, Webhooks)",
        )
        tenant = ledger.options.get("tenant_id") or (connected or {}).get("xero")
        if value is None:
            notes.append(f"xero webhooks are off until {why}; {POLLING}")
        elif not tenant:
            notes.append(
                "xero webhooks are off until the organisation is known: connect the ledger "
                f"or set [ledger] options tenant_id; {POLLING}"
            )
        else:
            from adapters.xero.webhooks import XeroReceiver

            add("xero", XeroReceiver(value, tenant))
    return receivers, notes


def _secret(
    environ: Mapping[str, str], env_name: str | None, key: str, what: str
) -> tuple[str | None, str]:
    """The secret, or None and what the admin must do (naming the variable, never a value)."""
    if not env_name:
        return None, f"{key} names the environment variable holding {what}"
    value = environ.get(env_name, "").strip()
    if not value:
        return None, f"{env_name} (named by {key}) is set to {what}"
    return value, ""
