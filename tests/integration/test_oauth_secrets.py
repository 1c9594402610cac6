"""No token, authorization code, PKCE verifier, client secret or token key reaches a log line
(stdlib logging at DEBUG, structlog as the daemon configures it), stdout/stderr, an exception's
text or a repr, through connect, refresh, failures, status and disconnect."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog

from adapters.oauth.client import OAuthClient
from adapters.oauth.connect import connect, disconnect
from adapters.oauth.manager import token_manager
from adapters.oauth.providers import client_credentials, provider_for_ledger
from adapters.oauth.status import connection_status
from adapters.store.engine import Store
from connector.domain.errors import MilestoneSyncError
from scheduler.logging import configure_logging
from tests.integration.test_oauth_support import (
    CLIENT_SECRET,
    ENV,
    TENANT,
    TOKEN_KEY,
    running,
    tokens,
)


@pytest.fixture
def daemon_logging() -> Iterator[None]:
    """Put structlog back after the test configures it as `milestone-sync run` does."""
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("kind", ["quickbooks", "xero"])
def test_no_secret_reaches_logs_output_or_errors(
    kind: str,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    daemon_logging: None,
) -> None:
    configure_logging(json=True, level="DEBUG")  # binds the stderr capsys put in place
    caplog.set_level(logging.DEBUG)  # every library's debug lines, requests-oauthlib's too
    texts: list[str] = []
    secrets = [CLIENT_SECRET, TOKEN_KEY]
    with running(kind) as identity:
        ledger = identity.ledger()
        client = OAuthClient(
            provider_for_ledger(ledger),
            client_credentials(ledger, ENV),
            now=identity.time.now,
            sleep=lambda _seconds: None,
        )
        pending = client.authorization("http://localhost:8765/callback")
        redirect = identity.redirect_for(pending.url)
        secrets += [parse_qs(urlsplit(redirect).query)["code"][0], pending.session._code_verifier]
        connect(client, tokens(store), pending, redirect, now=identity.time.now())

        manager = token_manager(
            store, TENANT, ledger, environ=ENV, now=identity.time.now, sleep=lambda _s: None
        )
        first = manager.current()
        identity.oauth.expire_access_tokens()
        second = manager.refresh(first)  # a 401, refreshed
        identity.oauth.expire_access_tokens()
        identity.token_faults.extend(["500", "html"])
        third = manager.refresh(second)  # transient failures, then a refresh
        texts += [repr(x) for x in (manager, client, tokens(store), first, pending)]
        texts.append(repr(tokens(store).load_record(kind)))

        identity.oauth.revoke_all()
        identity.oauth.expire_access_tokens()
        for attempt in (lambda: manager.refresh(third), manager.current):
            with pytest.raises(MilestoneSyncError) as caught:
                attempt()
            texts += [str(caught.value), repr(caught.value)]
        status = connection_status(
            client.provider, tokens(store).load_record(kind), identity.time.now()
        )
        texts += [*status.lines, *status.warnings]
        result = disconnect(client, tokens(store), kind)
        texts.append(repr(result))
        secrets += identity.issued
    captured = capsys.readouterr()
    assert "oauth.refreshed" in captured.err  # the daemon's log lines were captured
    haystack = "\n".join([caplog.text, captured.out, captured.err, *texts])
    assert len(secrets) > 8
    for secret in secrets:
        assert secret not in haystack
