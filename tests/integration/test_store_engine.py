"""Opening the store: `database.url` errors a person can act on (password masked), SQLite
settings, UTC datetimes and what the SQL store adds to the UnitOfWork contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from adapters.store.engine import Store, default_sqlite_url, mask_url, open_store, sqlite_path
from adapters.store.tables import OperationRow, TenantRow
from connector.domain.errors import ConfigError, InvariantViolation
from connector.domain.events import AuditEvent
from connector.domain.ids import IdempotencyKey, MilestoneKey, TenantId
from connector.ports import Operation, OperationKind, OperationStatus, PhaseStatus

PASSWORD = "hunter2-s3cret"


def assert_actionable(error: ConfigError) -> str:
    message = str(error)
    assert message.startswith("database.url: ")
    assert "\n" not in message
    assert PASSWORD not in message
    assert error.__cause__ is None  # the driver's exception (and its details) stays behind
    assert error.__context__ is None or error.__suppress_context__
    return message


def test_an_unreachable_database_is_a_config_error_with_the_password_masked() -> None:
    url = f"postgresql+psycopg://milestone:{PASSWORD}@127.0.0.1:1/books?connect_timeout=3"
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = assert_actionable(caught.value)
    assert "cannot connect to postgresql+psycopg://milestone:***@127.0.0.1:1/books" in message
    assert "check that the database is running" in message


@pytest.mark.parametrize(
    "url",
    [
        "not a database url",
        "",
        f"postgresql+psycopg://admin:{PASSWORD}@db:notaport/books",
        f"mysql://admin:{PASSWORD}@db/books",
        f"postgresql+psycopg2://admin:{PASSWORD}@db/books",
    ],
    ids=["text", "empty", "bad-port", "mysql", "psycopg2"],
)
def test_a_malformed_or_unsupported_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = assert_actionable(caught.value)
    assert "sqlite:///" in message  # shows what a good URL looks like


def test_a_sqlite_file_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^database\.url: cannot connect to sqlite:///"):
        open_store(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")


def test_a_postgresql_url_without_a_driver_uses_psycopg() -> None:
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg://u:\*\*\*@127\.0\.0\.1:1/db"):
        open_store(f"postgresql://u:{PASSWORD}@127.0.0.1:1/db?connect_timeout=3")


def test_mask_url_hides_the_password_even_in_an_unparsable_url() -> None:
    assert mask_url(f"postgresql+psycopg://u:{PASSWORD}@h/db") == "postgresql+psycopg://u:***@h/db"
    assert PASSWORD not in mask_url(f"postgresql+psycopg://u:{PASSWORD}@h:port/db")


def test_the_default_database_is_a_sqlite_file_beside_the_config(tmp_path: Path) -> None:
    config = tmp_path / "firm config" / "smith-cpa.toml"
    url = default_sqlite_url(config)
    assert sqlite_path(url) == config.with_suffix(".db")
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql+psycopg://h/db") is None
    config.parent.mkdir()
    with open_store(url) as store:
        assert store.engine.url.database == str(config.with_suffix(".db"))
    assert config.with_suffix(".db").exists()


def test_an_in_memory_sqlite_store_keeps_its_data_across_units_of_work() -> None:
    with open_store("sqlite://") as store:
        with store.unit_of_work(TenantId("t")) as uow:
            uow.cursors.set("karbon", "work_items", "c1")
            uow.commit()
        with store.unit_of_work(TenantId("t")) as uow:
            assert uow.cursors.get("karbon", "work_items") == "c1"


def test_sqlite_runs_with_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


# --------------------------------------------------------------------------- behaviour on both dbs


def an_operation(created_at: datetime) -> Operation:
    return Operation(
        key=IdempotencyKey("op-1"),
        kind=OperationKind.CHARGE,
        subject=MilestoneKey("m1"),
        payload_hash="h",
        status=OperationStatus.PENDING,
        created_at=created_at,
        updated_at=created_at,
    )


def test_the_tenant_row_is_created_on_first_use(store: Store) -> None:
    with store.unit_of_work(TenantId("smith-cpa")) as uow:
        uow.cursors.set("karbon", "work_items", "c1")
        uow.commit()
    with store.unit_of_work(TenantId("smith-cpa")):
        pass
    with store.engine.connect() as conn:
        assert list(conn.scalars(select(TenantRow.id))) == ["smith-cpa"]


def test_datetimes_are_stored_and_read_back_as_utc(store: Store) -> None:
    local = datetime(2026, 3, 1, 18, 0, tzinfo=timezone(timedelta(hours=-5)))
    with store.unit_of_work(TenantId("t")) as uow:
        uow.operations.add(an_operation(local))
        uow.commit()
    with store.unit_of_work(TenantId("t")) as uow:
        stored = uow.operations.get(IdempotencyKey("op-1"))
    assert stored is not None
    assert stored.created_at == local
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored.created_at == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    with store.engine.connect() as conn:
        raw = conn.scalar(select(OperationRow.created_at))
    assert raw == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)


def test_a_naive_datetime_is_refused(store: Store) -> None:
    with store.unit_of_work(TenantId("t")) as uow:
        with pytest.raises(InvariantViolation, match="timezone-aware"):
            uow.operations.add(an_operation(datetime(2026, 3, 1, 18, 0)))
        with pytest.raises(InvariantViolation, match="timezone-aware"):
            uow.audit.record(AuditEvent(datetime(2026, 3, 1), "x.y", "s", "m"))


def test_updating_what_was_never_stored_is_refused(store: Store) -> None:
    with store.unit_of_work(TenantId("t")) as uow:
        with pytest.raises(InvariantViolation):
            uow.operations.update(an_operation(datetime(2026, 3, 1, tzinfo=UTC)))
        with pytest.raises(InvariantViolation):
            uow.phases.mark(12345, PhaseStatus.MAPPED)


def test_a_unit_of_work_is_used_inside_a_with_block(store: Store) -> None:
    uow = store.unit_of_work(TenantId("t"))
    with pytest.raises(InvariantViolation):
        uow.commit()
    with uow, pytest.raises(InvariantViolation):
        uow.__enter__()


def test_a_store_never_shows_its_password() -> None:
    engine = create_engine(f"postgresql+psycopg://u:{PASSWORD}@db.example/books")  # not connected
    store = Store(engine)
    try:
        assert PASSWORD not in repr(store)
        assert "u:***@db.example" in repr(store)
    finally:
        store.dispose()
