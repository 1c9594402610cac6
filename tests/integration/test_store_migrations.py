"""The packaged migrations build exactly the schema of tables.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from adapters.store.engine import Store, open_store
from adapters.store.migrate import downgrade, head_revision, migrate
from adapters.store.tables import Base
from connector.domain.errors import ConfigError
from connector.domain.ids import TenantId

STORE_TABLES = set(Base.metadata.tables)


def schema_diff(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_migrations_produce_exactly_the_tables_of_the_metadata(store: Store) -> None:
    assert schema_diff(store) == []
    assert current_revision(store) == head_revision()
    assert set(inspect(store.engine).get_table_names()) == STORE_TABLES | {"alembic_version"}


def test_reopening_a_migrated_store_keeps_its_data(store_url: str) -> None:
    with open_store(store_url) as first, first.unit_of_work(TenantId("t")) as uow:
        uow.cursors.set("karbon", "work_items", "c1")
        uow.commit()
    with open_store(store_url) as second, second.unit_of_work(TenantId("t")) as uow:
        assert uow.cursors.get("karbon", "work_items") == "c1"


def test_downgrade_to_base_removes_the_schema_and_upgrade_rebuilds_it(store: Store) -> None:
    downgrade(store.engine, "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(store) is None
    migrate(store.engine)
    assert schema_diff(store) == []


def test_a_schema_from_a_newer_release_is_a_config_error(store_url: str, store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(ConfigError, match=r"^database\.url: .*newer milestone-sync"):
        open_store(store_url)
