"""Store fixtures: a database URL per backend (a SQLite file, or a fresh PostgreSQL schema per
test) and an open store.

MILESTONE_SYNC_TEST_DB=sqlite keeps every test but the PostgreSQL cases of tests parametrized
over the database; MILESTONE_SYNC_TEST_DB=postgres keeps only those PostgreSQL cases, so a CI
run of both passes runs every test once and every database test on both databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from adapters.store.engine import Store, open_store

DATABASE_URL_ENV = "MILESTONE_SYNC_TEST_DATABASE_URL"
ONLY_DATABASE_ENV = "MILESTONE_SYNC_TEST_DB"
DATABASES = ("sqlite", "postgres")
DATABASE_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect what MILESTONE_SYNC_TEST_DB leaves out: the other database's cases and, for the
    PostgreSQL pass, the tests that never open a PostgreSQL store (the SQLite pass runs them)."""
    only = os.environ.get(ONLY_DATABASE_ENV, "").strip()
    if not only:
        return
    if only not in DATABASES:
        raise pytest.UsageError(f"{ONLY_DATABASE_ENV} must be one of {', '.join(DATABASES)}")
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        databases = {p for p in params if isinstance(p, str) and p in DATABASES}
        other = bool(databases - {only})
        unrelated = only == "postgres" and not databases
        (dropped if other or unrelated else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def make_store_url(
    tmp_path: os.PathLike[str], request: pytest.FixtureRequest
) -> Callable[[str], str]:
    """Make an empty database of one kind ('sqlite' or 'postgres') for this test; return its URL."""

    def make(database: str) -> str:
        if database == "sqlite":
            return f"sqlite:///{os.path.join(tmp_path, f'store-{uuid.uuid4().hex[:8]}.db')}"
        base = os.environ.get(DATABASE_URL_ENV, "").strip()
        if not base:
            if os.environ.get(ONLY_DATABASE_ENV) == "postgres":
                pytest.fail(f"{ONLY_DATABASE_ENV}=postgres needs {DATABASE_URL_ENV}")
            pytest.skip(f"set {DATABASE_URL_ENV} to run PostgreSQL tests")
        url = make_url(base)
        if "+" not in url.drivername:
            url = url.set(drivername="postgresql+psycopg")
        # A schema per test, first on the search_path, isolates tests at a fraction of the cost
        # of a database per test; the store and its migrations never name a schema.
        schema = f"test_{uuid.uuid4().hex[:16]}"
        admin = create_engine(url, poolclass=NullPool)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))

        def drop() -> None:
            try:
                with admin.begin() as conn:
                    conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            finally:
                admin.dispose()

        request.addfinalizer(drop)
        isolated = url.update_query_dict({"options": f"-csearch_path={schema}"})
        return isolated.render_as_string(hide_password=False)

    return make


@pytest.fixture(params=DATABASE_PARAMS)
def store_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    """An empty database's URL, once per backend."""
    database: str = request.param
    return make_store_url(database)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """The store opened (and migrated) on `store_url`, disposed after the test."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.dispose()
