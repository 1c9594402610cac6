"""The token store encrypts at rest, commits on save, rotates keys, and never shows a secret."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from adapters.store.engine import Store, open_store
from adapters.store.tables import OAuthTokenRow
from adapters.store.tokens import DEFAULT_TOKEN_KEY_ENV, SqlTokenStore
from connector.domain.errors import ConfigError
from connector.domain.ids import TenantId
from connector.ports import OAuthToken

TENANT = TenantId("smith-cpa")
KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()
TOKEN = OAuthToken(
    access_token="eyJ-access-token-very-secret",
    refresh_token="AB11-refresh-token-very-secret",
    expires_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    refresh_expires_at=datetime(2026, 6, 1, 10, 0, tzinfo=UTC),
    realm="9130349820348",
)


def tokens(store: Store, key: str = KEY, tenant: TenantId = TENANT) -> SqlTokenStore:
    return SqlTokenStore(store, tenant, "QBO_TOKEN_KEY", environ={"QBO_TOKEN_KEY": key})


def test_a_token_round_trips(store: Store) -> None:
    token_store = tokens(store)
    assert token_store.load("quickbooks") is None
    token_store.save("quickbooks", TOKEN)
    assert token_store.load("quickbooks") == TOKEN
    minimal = OAuthToken("a2", "r2", datetime(2026, 3, 2, tzinfo=UTC))
    token_store.save("quickbooks", minimal)
    assert token_store.load("quickbooks") == minimal
    assert tokens(store, tenant=TenantId("jones-llp")).load("quickbooks") is None


def test_the_table_holds_only_ciphertext(store: Store) -> None:
    tokens(store).save("xero", TOKEN)
    with store.engine.connect() as conn:
        [ciphertext] = conn.scalars(select(OAuthTokenRow.ciphertext))
    for secret in (TOKEN.access_token, TOKEN.refresh_token, "very-secret", TOKEN.realm or ""):
        assert secret not in ciphertext
    assert Fernet(KEY.encode()).decrypt(ciphertext.encode())  # it is a Fernet token


def test_save_commits_before_returning(store_url: str, store: Store) -> None:
    tokens(store).save("xero", TOKEN)
    with open_store(store_url) as elsewhere:  # another process, another connection pool
        assert tokens(elsewhere).load("xero") == TOKEN


def test_a_wrong_key_is_a_config_error_that_shows_no_secret(store: Store) -> None:
    tokens(store).save("xero", TOKEN)
    with pytest.raises(ConfigError) as caught:
        tokens(store, key=OTHER_KEY).load("xero")
    message = str(caught.value)
    assert "QBO_TOKEN_KEY" in message and "'xero'" in message
    for secret in (KEY, OTHER_KEY, TOKEN.access_token, TOKEN.refresh_token):
        assert secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_old_keys_still_decrypt_while_rotating(store: Store) -> None:
    tokens(store, key=KEY).save("xero", TOKEN)
    rotating = tokens(store, key=f"{OTHER_KEY},{KEY}")
    assert rotating.load("xero") == TOKEN
    rotating.save("xero", TOKEN)  # re-encrypted with the new key
    assert tokens(store, key=OTHER_KEY).load("xero") == TOKEN


def test_a_missing_key_tells_the_admin_how_to_make_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEFAULT_TOKEN_KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as caught:
        SqlTokenStore(store, TENANT)
    message = str(caught.value)
    assert f"{DEFAULT_TOKEN_KEY_ENV} is not set" in message
    assert "Fernet.generate_key()" in message
    monkeypatch.setenv(DEFAULT_TOKEN_KEY_ENV, KEY)
    SqlTokenStore(store, TENANT).save("xero", TOKEN)
    assert tokens(store).load("xero") == TOKEN


@pytest.mark.parametrize("bad_key", ["not-a-fernet-key", "c2hvcnQ=", "   "])
def test_an_invalid_key_is_a_config_error(store: Store, bad_key: str) -> None:
    with pytest.raises(ConfigError, match="QBO_TOKEN_KEY") as caught:
        tokens(store, key=bad_key)
    assert "Fernet.generate_key()" in str(caught.value)
    if bad_key.strip():
        assert bad_key not in str(caught.value)


def test_no_secret_in_reprs(store: Store) -> None:
    token_store = tokens(store)
    for text in (repr(token_store), repr(TOKEN), str(TOKEN)):
        for secret in (KEY, TOKEN.access_token, TOKEN.refresh_token):
            assert secret not in text
