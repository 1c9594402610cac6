"""Opens the state store: validates `database.url`, creates the engine, migrates, and hands out
units of work per tenant."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic.util.exc import CommandError
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from adapters.store import _sql
from adapters.store.migrate import migrate
from adapters.store.tables import TenantRow
from adapters.store.uow import SqlUnitOfWork
from connector.domain.errors import ConfigError, InvariantViolation
from connector.domain.ids import TenantId
from connector.ports import UnitOfWorkFactory

SETTING = "database.url"
SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10
_EXAMPLES = "sqlite:////var/lib/milestone-sync/firm.db or postgresql+psycopg://user@host:5432/db"


class Store:
    """An open state store: one engine, and a unit-of-work factory per tenant."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._known_tenants: set[str] = set()
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def unit_of_work(self, tenant_id: TenantId) -> SqlUnitOfWork:
        """A new unit of work over `tenant_id`'s rows; use it as a context manager."""
        return SqlUnitOfWork(self, tenant_id)

    def uow_factory(self, tenant_id: TenantId) -> UnitOfWorkFactory:
        """The zero-argument factory the services take (`connector.ports.UnitOfWorkFactory`)."""
        return lambda: self.unit_of_work(tenant_id)

    def ensure_tenant(self, tenant_id: TenantId) -> None:
        """Create the tenant's row on first use, in its own transaction."""
        if not tenant_id:
            raise InvariantViolation("a tenant id must not be empty")
        with self._lock:
            if tenant_id in self._known_tenants:
                return
        with _sql.database_errors("create tenant"), self._engine.begin() as conn:
            statement = _sql.insert(conn.dialect, TenantRow).values(id=tenant_id)
            conn.execute(statement.on_conflict_do_nothing(index_elements=["id"]))
        with self._lock:
            self._known_tenants.add(tenant_id)

    def dispose(self) -> None:
        """Close every pooled connection (the store cannot be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Store({mask_url(self._engine.url)!r})"


def open_store(url: str, *, run_migrations: bool = True, echo: bool = False) -> Store:
    """Open the store at `url` (the `database.url` setting) and migrate it to the current schema.

    Raises ConfigError, with the password masked, when the URL is malformed or unsupported, or
    the database cannot be reached or migrated.
    """
    parsed = _parse(url)
    engine = _create_engine(parsed, echo=echo)
    try:
        _check_connection(engine, parsed)
        if run_migrations:
            _migrate(engine, parsed)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


def default_sqlite_url(config_path: str | os.PathLike[str]) -> str:
    """A SQLite database beside the config file: /etc/ms/firm.toml -> sqlite:////etc/ms/firm.db."""
    database = Path(config_path).resolve().with_suffix(".db")
    return URL.create("sqlite", database=str(database)).render_as_string()


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory, non-SQLite or malformed URL."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError, AttributeError):
        return None
    if parsed.get_backend_name() != "sqlite" or _is_memory_sqlite(parsed):
        return None
    return Path(str(parsed.database))


def mask_url(url: URL | str) -> str:
    """The URL with its password replaced by ***, safe to show and log."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError, AttributeError):
        raise ConfigError(
            f"{SETTING}: {mask_url(url)!r} is not a database URL; write it like {_EXAMPLES}"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we ship
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"{SETTING}: {mask_url(parsed)} uses {parsed.drivername!r}, which milestone-sync "
            f"does not support; use SQLite or PostgreSQL, e.g. {_EXAMPLES}"
        )
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _create_engine(url: URL, *, echo: bool) -> Engine:
    options: dict[str, Any] = {"echo": echo}
    if url.get_backend_name() == "sqlite":
        if _is_memory_sqlite(url):  # one shared connection, or every checkout sees an empty db
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        options["pool_pre_ping"] = True
        if "connect_timeout" not in url.query:
            options["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(url, **options)
    except (ArgumentError, NoSuchModuleError, ImportError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{SETTING}: cannot use {mask_url(url)}: {_redact(str(exc), url)}; "
            f"write it like {_EXAMPLES}"
        ) from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers work while one writer commits; foreign keys are off unless asked.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _check_connection(engine: Engine, url: URL) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise ConfigError(
            f"{SETTING}: cannot connect to {mask_url(url)}: {_redact(_sql.reason(exc), url)}; "
            "check that the database is running and reachable, and that the host, port, "
            "database name, user and password in database.url are right"
        ) from None


def _migrate(engine: Engine, url: URL) -> None:
    try:
        migrate(engine)
    except CommandError as exc:
        raise ConfigError(
            f"{SETTING}: the schema of {mask_url(url)} is not one this version knows "
            f"({_redact(' '.join(str(exc).split()), url)}); it was probably migrated by a newer "
            "milestone-sync: run that version, or restore a backup taken before the upgrade"
        ) from None
    except DBAPIError as exc:
        raise ConfigError(
            f"{SETTING}: cannot migrate {mask_url(url)} to the current schema: "
            f"{_redact(_sql.reason(exc), url)}; check that the user in database.url may create "
            "and alter tables"
        ) from None


def _redact(message: str, url: URL) -> str:
    password = url.password
    if password:
        message = message.replace(str(password), "***")
    return message
