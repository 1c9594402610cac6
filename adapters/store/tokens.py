"""OAuth tokens kept in the state store, Fernet-encrypted with a key named by an environment
variable; the plaintext never reaches the table, a log or an exception."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

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


def _serialise(token: OAuthToken) -> bytes:
    return json.dumps(
        {
            "access_token": token.access_token,
            "refresh_token": token.refresh_token,
            "expires_at": token.expires_at.isoformat(),
            "refresh_expires_at": (
                None if token.refresh_expires_at is None else token.refresh_expires_at.isoformat()
            ),
            "realm": token.realm,
        }
    ).encode()


def _deserialise(data: bytes) -> OAuthToken:
    fields = json.loads(data)
    refresh_expires_at = fields["refresh_expires_at"]
    return OAuthToken(
        access_token=fields["access_token"],
        refresh_token=fields["refresh_token"],
        expires_at=datetime.fromisoformat(fields["expires_at"]),
        refresh_expires_at=(
            None if refresh_expires_at is None else datetime.fromisoformat(refresh_expires_at)
        ),
        realm=fields["realm"],
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

    def load(self, connection: str) -> OAuthToken | None:
        with (
            _sql.database_errors("load token", keep_cause=False),
            self._store.engine.connect() as conn,
        ):
            ciphertext = conn.scalar(
                select(OAuthTokenRow.ciphertext).where(
                    OAuthTokenRow.tenant_id == self._tenant,
                    OAuthTokenRow.connection == connection,
                )
            )
        if ciphertext is None:
            return None
        try:
            return _deserialise(self._cipher.decrypt(ciphertext.encode("ascii")))
        except InvalidToken:
            raise ConfigError(
                f"cannot decrypt the stored token of connection {connection!r} (tenant "
                f"{self._tenant!r}): {self._key_env} does not hold the key it was saved with; "
                f"put that key back (while rotating, list old keys after the new one, "
                f"comma-separated) or reconnect {connection!r} to store a fresh token"
            ) from None

    def save(self, connection: str, token: OAuthToken) -> None:
        """Encrypt and commit before returning, so a refreshed token is never lost."""
        ciphertext = self._cipher.encrypt(_serialise(token)).decode("ascii")
        now = self._clock.now()
        self._store.ensure_tenant(self._tenant)
        with (
            _sql.database_errors("save token", keep_cause=False),
            self._store.engine.begin() as conn,
        ):
            statement = _sql.insert(conn.dialect, OAuthTokenRow).values(
                tenant_id=self._tenant, connection=connection, ciphertext=ciphertext, updated_at=now
            )
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["tenant_id", "connection"],
                    set_={"ciphertext": ciphertext, "updated_at": now},
                )
            )

    def __repr__(self) -> str:
        return f"SqlTokenStore(tenant={self._tenant!r}, key_env={self._key_env!r})"
