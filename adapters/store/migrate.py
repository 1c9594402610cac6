"""Applies the store's alembic migrations, configured in code (no alembic.ini at run time).

Run as `python -m adapters.store.migrate <alembic command>` (for example `revision -m "..."
--autogenerate`) with MILESTONE_SYNC_DATABASE_URL set, to author a new revision.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import CommandLine, Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Serialises concurrent migrators on PostgreSQL (any constant unique to this app will do).
_PG_LOCK_ID = 0x6D73_796E_6301


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic Config for the packaged migrations, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations packaged"
    return head


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to `revision` in one transaction (also on SQLite)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # sqlite3's legacy transaction control runs DDL outside any transaction; an explicit
            # BEGIN makes the migration atomic and IMMEDIATE keeps a second migrator out.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        command.upgrade(alembic_config(conn), revision)
        conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to `revision` ('base' drops every table of the store)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        command.downgrade(alembic_config(conn), revision)
        conn.commit()


def main(argv: list[str] | None = None) -> None:
    """The alembic command line over the packaged migrations (for authoring revisions)."""
    cli = CommandLine(prog="python -m adapters.store.migrate")
    options = cli.parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cli.run_cmd(alembic_config(), options)


if __name__ == "__main__":
    main()
