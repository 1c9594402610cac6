"""`milestone-sync doctor`: checks an installation end to end (config, database, each
connection with one cheap authenticated read, Karbon's webhook subscriptions, token expiry) and
says for each what to do. It creates and changes nothing at the vendors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from connector.config import AppConfig, LedgerKind, PaymentsKind
from connector.domain.errors import ConfigError, MilestoneSyncError, TransientError
from connector.ports import LedgerNeeds

OAUTH_LEDGERS = (LedgerKind.QUICKBOOKS, LedgerKind.XERO)


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str
    fix: str | None = None


def _ok(check: str, message: str) -> Finding:
    return Finding(check, Level.OK, message)


def _warning(check: str, message: str, fix: str | None = None) -> Finding:
    return Finding(check, Level.WARNING, message, fix)


def _problem(check: str, message: str, fix: str | None = None) -> Finding:
    return Finding(check, Level.PROBLEM, message, fix)


def _masked(url: str) -> str:
    from adapters.store.engine import mask_url

    return mask_url(url)


# --------------------------------------------------------------------------- the database


@dataclass
class _Database:
    findings: list[Finding]
    store: Any = None  # the open store, when reachable and current
    exists: bool = True


def _database(url: str, *, migrate: bool) -> _Database:
    from adapters.store.engine import open_store, sqlite_path
    from adapters.store.migrate import head_revision
    from adapters.store.migrate import migrate as apply_migrations
    from adapters.web.health import schema_revision

    shown = _masked(url)
    path = sqlite_path(url)
    if path is not None and not path.exists() and not migrate:
        return _Database(
            [
                _warning(
                    "database",
                    f"{shown} does not exist yet",
                    "it is created and migrated by the first `milestone-sync connect` or "
                    "`milestone-sync run`; or run `milestone-sync doctor --migrate` now",
                )
            ],
            exists=False,
        )
    try:
        store = open_store(url, run_migrations=False)
    except ConfigError as exc:
        return _Database([_problem("database", str(exc))])
    head = head_revision()
    try:
        current = schema_revision(store)
        if migrate and current != head:
            apply_migrations(store.engine)
            migrated = f" (migrated from {current or 'an empty database'})"
            current = schema_revision(store)
        else:
            migrated = ""
    except Exception as exc:
        store.dispose()
        return _Database([_problem("database", f"{shown}: {type(exc).__name__}: {exc}")])
    if current == head:
        return _Database([_ok("database", f"{shown} reachable, schema at {head}{migrated}")], store)
    store.dispose()
    if current is None:
        return _Database(
            [
                _warning(
                    "database",
                    f"{shown} is reachable and empty (milestone-sync has not used it yet)",
                    "its tables are created by the first `milestone-sync connect` or "
                    "`milestone-sync run`; or run `milestone-sync doctor --migrate` now",
                )
            ],
            exists=False,
        )
    from alembic.script import ScriptDirectory

    from adapters.store.migrate import alembic_config

    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current is not None and current not in known:
        return _Database(
            [
                _problem(
                    "database",
                    f"{shown} is at schema {current}, which this version does not know (a newer "
                    "milestone-sync migrated it)",
                    "run that newer version, or restore the backup taken before the upgrade",
                )
            ]
        )
    return _Database(
        [
            _problem(
                "database",
                f"{shown} is at schema {current}, this version needs {head}",
                "migrate it: `milestone-sync doctor --migrate` (or restart `milestone-sync run`, "
                "which migrates on start); take a backup first",
            )
        ]
    )


# --------------------------------------------------------------------------- connections


def _call(check: str, what: str, call: Callable[[], str]) -> Finding:
    """One cheap read; its errors said the way the daemon would say them."""
    try:
        return _ok(check, call())
    except ConfigError as exc:
        return _problem(check, f"{what}: {exc}")
    except TransientError as exc:
        return _problem(
            check,
            f"{what}: {exc}",
            "it may be a passing outage: check the network and the vendor's status page, then "
            "run doctor again",
        )
    except MilestoneSyncError as exc:
        return _problem(check, f"{what}: {exc}")
    except Exception as exc:  # a bug, but the other checks still run
        return _problem(check, f"{what}: unexpected {type(exc).__name__}: {exc}")


def _ledger_connection(config: AppConfig, store: Any) -> tuple[Finding, bool]:
    """The stored ledger connection and its tokens' expiry; True when it can be used."""
    from adapters.web.health import connection_reader

    kind = str(config.ledger.kind)
    connect = f"`milestone-sync connect {kind}`"
    try:
        status = connection_reader(
            config.ledger, store, config.firm.id, lambda: datetime.now(UTC)
        )()
    except ConfigError as exc:
        return _problem("ledger token", f"cannot read the {kind} connection: {exc}"), False
    if not status.connected:
        return _problem("ledger token", f"{kind} is not connected", f"run {connect}"), False
    if status.needs_reconnect:
        return _problem("ledger token", "; ".join(status.warnings), f"run {connect}"), False
    if status.warnings:
        return (
            _warning("ledger token", "; ".join(status.warnings), "; ".join(status.lines)),
            True,
        )
    return _ok("ledger token", "; ".join(status.lines)), True


def _ledger(app: Any) -> Iterator[Finding]:
    ledger = app.adapters.ledger
    kind = app.config.ledger.kind
    if ledger is None:
        yield _problem("ledger", app.adapters.ledger_problem or f"ledger {kind} has no adapter")
        return
    if kind is LedgerKind.MEMORY:
        yield _ok("ledger", "the built-in sandbox ledger (nothing to reach)")
        return
    found: list[Any] = []

    def read() -> str:
        found.extend(ledger.check(LedgerNeeds()))  # company/organisation + configured accounts
        return f"{ledger.name}: an authenticated read worked"

    finding = _call("ledger", f"reading {ledger.name}", read)
    yield finding
    for problem in found:
        yield _problem("ledger", f"{problem.kind} {problem.value!r}: {problem.message}")


def _payments(app: Any) -> Finding:
    kind = app.config.payments.kind
    gateway = app.adapters.gateway
    if kind is PaymentsKind.NONE:
        return _ok("payments", "no payment gateway configured (invoices only)")
    if gateway is None:
        return _problem("payments", app.adapters.gateway_problem or f"payments {kind}: not built")
    if kind is PaymentsKind.MEMORY:
        return _ok("payments", "the built-in sandbox gateway (nothing to reach)")
    return _call(
        "payments", "reading the Stripe balance", lambda: f"Stripe balance {gateway.balance()}"
    )


def _sources(app: Any) -> Iterator[Finding]:
    from adapters.karbon.adapter import KarbonSource
    from adapters.keeper.adapter import CloseChecklistSource

    for source in app.adapters.sources:
        check = f"source {source.source_id}"
        if isinstance(source, KarbonSource):
            yield _call(check, "listing one Karbon work item", lambda s=source: _karbon_read(s))
            yield from _karbon_webhooks(source)
        elif isinstance(source, CloseChecklistSource):
            yield _call(check, "listing the close statuses", lambda s=source: _keeper_read(s))
        else:
            yield _ok(check, "nothing to reach (phases arrive in files, pushes or the sandbox)")


def _karbon_read(source: Any) -> str:
    page = source.client.get("/v3/WorkItems", "doctor: one work item", {"$top": "1"})
    return f"Karbon: an authenticated read worked ({len(page.get('value', []))} work item listed)"


def _keeper_read(source: Any) -> str:
    client = source._client  # the adapter keeps its client private; one read is enough
    return (
        f"close checklist: an authenticated read worked ({len(client.close_statuses())} statuses)"
    )


def _karbon_webhooks(source: Any) -> Iterator[Finding]:
    check = f"source {source.source_id} webhooks"
    url = source.options.webhook_url
    if not url:
        yield _ok(
            check,
            "off: the sweep polls Karbon (set [server] public_url and signing_key_env for pushes)",
        )
        return
    missing: list[str] = []
    try:
        for webhook_type in ("Work", "Contact"):
            current = source.client.subscription(webhook_type)
            if current is None:
                missing.append(f"no {webhook_type} subscription")
            elif current.get("TargetUrl") != url:
                missing.append(
                    f"the {webhook_type} subscription goes to {current.get('TargetUrl')}"
                )
    except MilestoneSyncError as exc:
        yield _problem(check, f"reading the webhook subscriptions: {exc}")
        return
    if missing:
        yield _warning(
            check,
            f"{'; '.join(missing)} (Karbon cancels a subscription after 10 failed deliveries)",
            "run `milestone-sync webhooks ensure` (the daemon also repairs it at its next sweep)",
        )
    else:
        yield _ok(check, f"Work and Contact webhooks go to {url}")


# --------------------------------------------------------------------------- all of it


def run_doctor(
    config_path: Path,
    database_url: str | None = None,
    *,
    migrate: bool = False,
    overrides: Any = None,
) -> list[Finding]:
    """Every check, in order; later checks are skipped (and said so) when an earlier one they
    depend on failed. `overrides`: scheduler.bootstrap.Overrides (tests)."""
    from mappings.loader import load_config
    from scheduler.bootstrap import Overrides, build_app, build_receivers, resolve_database_url

    findings: list[Finding] = []
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [_problem("config", str(exc), "fix the config; `milestone-sync check` lists it all")]
    findings.append(
        _ok(
            "config",
            f"{config_path}: firm {config.firm.id!r}, {len(config.sources)} source(s), ledger "
            f"{config.ledger.kind}, payments {config.payments.kind}",
        )
    )
    overrides = dataclasses.replace(
        overrides or Overrides(),
        database_url=(overrides and overrides.database_url) or database_url,
    )
    url = resolve_database_url(config, config_path, overrides.database_url)
    database = _database(url, migrate=migrate)
    findings += database.findings
    usable = database.store is not None
    if database.store is not None:
        database.store.dispose()  # build_app opens its own (already current: no migration)
    if not usable and config.ledger.kind in OAUTH_LEDGERS:
        kind = config.ledger.kind
        findings.append(
            _problem(
                "ledger token",
                f"{kind} is not connected (there is no database yet)",
                f"run `milestone-sync connect {kind}` (it creates the database)",
            )
            if not database.exists
            else _problem(
                "ledger",
                "not checked: the ledger's tokens are kept in the database",
                "fix the database first",
            )
        )
    app = build_app(config_path, overrides=overrides, open_store=usable)
    try:
        for note in app.adapters.notes:
            findings.append(_problem("connections", note))
        _, receiver_notes = build_receivers(config)
        findings += [_warning("webhooks", note) for note in receiver_notes]
        ledger_ok = True
        if usable and config.ledger.kind in OAUTH_LEDGERS:
            token, ledger_ok = _ledger_connection(config, app.store)
            findings.append(token)
        if usable or config.ledger.kind not in OAUTH_LEDGERS:
            if ledger_ok:
                findings += list(_ledger(app))
            else:
                findings.append(
                    _problem("ledger", "not checked until the connection is fixed (see above)")
                )
        findings.append(_payments(app))
        findings += list(_sources(app))
    finally:
        app.close()
    return findings
