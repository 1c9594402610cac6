"""The SQL state store (SQLite or PostgreSQL): tables, migrations, unit of work and token store."""

from adapters.store.engine import Store, default_sqlite_url, mask_url, open_store, sqlite_path
from adapters.store.migrate import migrate
from adapters.store.tokens import DEFAULT_TOKEN_KEY_ENV, SqlTokenStore
from adapters.store.uow import SqlUnitOfWork

__all__ = [
    "DEFAULT_TOKEN_KEY_ENV",
    "SqlTokenStore",
    "SqlUnitOfWork",
    "Store",
    "default_sqlite_url",
    "mask_url",
    "migrate",
    "open_store",
    "sqlite_path",
]
