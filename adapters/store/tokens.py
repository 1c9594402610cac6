"""OAuth tokens kept in the state store, Fernet-encrypted with a key named by an environment
variable; the plaintext never reaches the table, a log or an exception. Also the per-connection
lock a refresh holds (a row lock on PostgreSQL, the write lock on SQLite)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, delete, select, text

from adapters.store import _sql
from adapters.store.engine import Store
from adapters.store.tables import OAuthTokenRow
from connector.domain.errors import ConfigError
from connector.domain.ids import TenantId
from connector.ports import Clock, OAuthToken

DEFAULT_TOKEN_KEY_ENV = "MILESTONE_SYNC_TOKEN_KEY"
GENERATE_KEY_COMMAND = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def load_cipher(key_env: str, environ: Mapping[str, str] | None = None) -> MultiFernet:
    """The Fernet keys in `key_env`: one key, or several comma-separated while rotating (the
    first encrypts; all decrypt). Raises ConfigError saying how to make a key."""
    raw = (os.environ if environ is None else environ).get(key_env, "").strip()
    if not raw:
        raise ConfigError(
            f"{key_env} is not set: it holds the key that encrypts OAuth tokens at rest; "
            f"generate one with {GENERATE_KEY_COMMAND} and set {key_env} to it"
        )
    try:
        keys = [Fernet(part.strip()) for part in raw.split(",") if part.strip()]
    except (ValueError, TypeError):
        raise ConfigError(  # the key itself stays out of the message and the traceback
            f"{key_env} does not hold a valid Fernet key (32 url-safe base64-encoded bytes); "
            f"generate one with {GENERATE_KEY_COMMAND}"
        ) from None
    return MultiFernet(keys)


# PostgreSQL: how long a refresh waits for another process's refresh of the same connection
# (which holds the row lock over one HTTP call with explicit timeouts) before it gives up.
PG_LOCK_TIMEOUT = "60s"


@dataclass(frozen=True)
class StoredToken:
    """A connection's token and what status needs to know about it; all of it is encrypted."""

    token: OAuthToken
    connected_at: datetime | None = None  # the admin's consent (QBO's 5-year maximum counts)
    refreshed_at: datetime | None = None
    # set after the authorization server refused the refresh token (invalid_grant): the
    # connection needs `milestone-sync connect` again; cleared by storing a new connection
    needs_reconnect: str | None = None
    needs_reconnect_at: datetime | None = None
    label: str | None = None  # the company or organisation name, for status


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _serialise(token: OAuthToken, record: StoredToken | None = None) -> bytes:
    fields: dict[str, Any] = {
        "access_token": token.access_token,
        "refresh_token": token.refresh_token,
        "expires_at": token.expires_at.isoformat(),
        "refresh_expires_at": _iso(token.refresh_expires_at),
        "realm": token.realm,
    }
    if record is not None:  # optional keys: rows written before they existed still load
        fields.update(
            connected_at=_iso(record.connected_at),
            refreshed_at=_iso(record.refreshed_at),
            needs_reconnect=record.needs_reconnect,
            needs_reconnect_at=_iso(record.needs_reconnect_at),
            label=record.label,
        )
    return json.dumps(fields).encode()


def _deserialise_record(data: bytes) -> StoredToken:
    fields = json.loads(data)
    token = OAuthToken(
        access_token=fields["access_token"],
        refresh_token=fields["refresh_token"],
        expires_at=datetime.fromisoformat(fields["expires_at"]),
        refresh_expires_at=_from_iso(fields["refresh_expires_at"]),
        realm=fields["realm"],
    )
    return StoredToken(
        token=token,
        connected_at=_from_iso(fields.get("connected_at")),
        refreshed_at=_from_iso(fields.get("refreshed_at")),
        needs_reconnect=fields.get("needs_reconnect"),
        needs_reconnect_at=_from_iso(fields.get("needs_reconnect_at")),
        label=fields.get("label"),
    )


def _deserialise(data: bytes) -> OAuthToken:
    return _deserialise_record(data).token


def stored_connections(store: Store, tenant: TenantId) -> list[str]:
    """The names of the connections with a stored token (no key needed: nothing is decrypted)."""
    with _sql.database_errors("list tokens"), store.engine.connect() as conn:
        return sorted(
            conn.scalars(select(OAuthTokenRow.connection).where(OAuthTokenRow.tenant_id == tenant))
        )


class SqlTokenStore:
    """`connector.ports.TokenStore` for one tenant over the SQL store."""

    def __init__(
        self,
        store: Store,
        tenant: TenantId,
        key_env: str = DEFAULT_TOKEN_KEY_ENV,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._tenant = tenant
        self._key_env = key_env
        self._cipher = load_cipher(key_env, environ)
        self._clock: Clock = clock or _SystemClock()

    @property
    def tenant(self) -> TenantId:
        return self._tenant

    def load(self, connection: str) -> OAuthToken | None:
        record = self.load_record(connection)
        return None if record is None else record.token

    def save(self, connection: str, token: OAuthToken) -> None:
        """Encrypt and commit before returning, so a refreshed token is never lost."""
        self.save_record(connection, StoredToken(token))

    def load_record(self, connection: str) -> StoredToken | None:
        with (
            _sql.database_errors("load token", keep_cause=False),
            self._store.engine.connect() as conn,
        ):
            ciphertext = conn.scalar(self._select(connection))
        return None if ciphertext is None else self._decrypt(connection, ciphertext)

    def save_record(self, connection: str, record: StoredToken) -> None:
        """Encrypt and commit the token with its status fields (a new connection, a refresh)."""
        self._store.ensure_tenant(self._tenant)
        with (
            _sql.database_errors("save token", keep_cause=False),
            self._store.engine.begin() as conn,
        ):
            self._write(conn, connection, record)

    def delete(self, connection: str) -> bool:
        """Forget the connection's token; False when there was none."""
        with _sql.database_errors("delete token"), self._store.engine.begin() as conn:
            deleted = conn.execute(self._delete(connection)).rowcount
        return bool(deleted)

    @contextmanager
    def locked(self, connection: str) -> Iterator[TokenLock]:
        """Hold the connection's lock for one refresh: on PostgreSQL `SELECT ... FOR UPDATE` on
        its row, on SQLite the database write lock (`BEGIN IMMEDIATE`), in a transaction that
        stays open until `TokenLock.commit`/`delete`, or rolls back when the block ends.

        Another process waiting here reads the row only once the holder has committed, so it
        sees the rotated token instead of refreshing again. Waiting too long (another holder
        stuck: PostgreSQL lock_timeout, SQLite busy_timeout) is a TransientError."""
        with (
            _sql.database_errors("lock token", keep_cause=False),
            self._store.engine.connect() as conn,
        ):
            if conn.dialect.name == "sqlite":
                # pysqlite starts transactions lazily (deferred) and a deferred one only takes
                # the write lock at its first write: too late for a read-then-refresh
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                ciphertext = conn.scalar(self._select(connection))
            else:
                conn.execute(text(f"SET LOCAL lock_timeout = '{PG_LOCK_TIMEOUT}'"))
                ciphertext = conn.scalar(self._select(connection).with_for_update())
            record = None if ciphertext is None else self._decrypt(connection, ciphertext)
            lock = TokenLock(self, conn, connection, record)
            try:
                yield lock
            finally:
                if conn.in_transaction():
                    conn.rollback()

    # ------------------------------------------------------------------ internals

    def _select(self, connection: str) -> Any:
        return select(OAuthTokenRow.ciphertext).where(
            OAuthTokenRow.tenant_id == self._tenant, OAuthTokenRow.connection == connection
        )

    def _delete(self, connection: str) -> Any:
        return delete(OAuthTokenRow).where(
            OAuthTokenRow.tenant_id == self._tenant, OAuthTokenRow.connection == connection
        )

    def _write(self, conn: Connection, connection: str, record: StoredToken) -> None:
        ciphertext = self._cipher.encrypt(_serialise(record.token, record)).decode("ascii")
        now = self._clock.now()
        statement = _sql.insert(conn.dialect, OAuthTokenRow).values(
            tenant_id=self._tenant, connection=connection, ciphertext=ciphertext, updated_at=now
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "connection"],
                set_={"ciphertext": ciphertext, "updated_at": now},
            )
        )

    def _decrypt(self, connection: str, ciphertext: str) -> StoredToken:
        try:
            return _deserialise_record(self._cipher.decrypt(ciphertext.encode("ascii")))
        except InvalidToken:
            raise ConfigError(
                f"cannot decrypt the stored token of connection {connection!r} (tenant "
                f"{self._tenant!r}): {self._key_env} does not hold the key it was saved with; "
                f"put that key back (while rotating, list old keys after the new one, "
                f"comma-separated) or reconnect {connection!r} to store a fresh token"
            ) from None

    def __repr__(self) -> str:
        return f"SqlTokenStore(tenant={self._tenant!r}, key_env={self._key_env!r})"


class TokenLock:
    """A connection's row as read under `SqlTokenStore.locked`; `commit` or `delete` writes and
    commits at once (ending the lock), so nothing after it can roll the rotated token back."""

    def __init__(
        self, tokens: SqlTokenStore, conn: Connection, connection: str, record: StoredToken | None
    ) -> None:
        self._tokens = tokens
        self._conn = conn
        self._connection = connection
        self.record = record
        self.done = False

    def commit(self, record: StoredToken) -> None:
        self._finish(lambda: self._tokens._write(self._conn, self._connection, record))
        self.record = record

    def delete(self) -> None:
        self._finish(lambda: self._conn.execute(self._tokens._delete(self._connection)))
        self.record = None

    def _finish(self, write: Any) -> None:
        if self.done:
            raise RuntimeError("the token lock was already released")
        with _sql.database_errors("save token", keep_cause=False):
            write()
            self._conn.commit()
        self.done = True

    def __repr__(self) -> str:
        return f"TokenLock(connection={self._connection!r}, held={not self.done})"
