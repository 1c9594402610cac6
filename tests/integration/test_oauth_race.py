"""Two threads, and two processes, refresh the same connection at once against a QuickBooks
policy (a used refresh token is invalid at once): on SQLite and PostgreSQL both end with a
working token, exactly one refresh reaches the server, and the connection survives."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

import pytest

from adapters.oauth.manager import TokenManager, token_manager
from adapters.store.engine import Store, open_store
from connector.config import LedgerConnection, LedgerKind
from tests.integration.test_oauth_support import ENV, TENANT, Identity, running, tokens

RACE_DELAY = 0.3  # the token endpoint's think time: the second caller arrives meanwhile


def ledger_at(url: str) -> LedgerConnection:
    return LedgerConnection(
        kind=LedgerKind.QUICKBOOKS,
        base_url=url,
        secret_env={"client_id": "MS_CLIENT_ID", "client_secret": "MS_CLIENT_SECRET"},
    )


def _refresh_in_child(
    store_url: str, identity_url: str, environ: dict[str, str], barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    store = open_store(store_url)
    try:
        # the parent's environment (its token key), not this re-imported module's
        manager = token_manager(store, TENANT, ledger_at(identity_url), environ=environ)
        barrier.wait(timeout=30)
        try:
            token = manager.current()
            results.put((token.access_token, None, manager.refreshes))
        except Exception as exc:
            results.put((None, repr(exc), manager.refreshes))
    finally:
        store.dispose()


def assert_one_refresh_and_connection_kept(
    qbo: Identity, store: Store, outcomes: list[tuple[str | None, str | None]], refreshes: int
) -> None:
    assert [error for _, error in outcomes] == [None, None]
    access = {token for token, _ in outcomes}
    assert len(access) == 1  # the second caller used the token the first one stored
    assert refreshes == 1
    assert qbo.oauth.refresh_calls == 1 and qbo.oauth.failed_refreshes == 0
    stored = tokens(store).load("quickbooks")
    assert stored is not None and stored.access_token in access and qbo.works(stored)
    # the connection is not lost: the stored refresh token still refreshes
    qbo.oauth.expire_access_tokens()
    again = token_manager(store, TENANT, qbo.ledger(), environ=ENV).refresh(stored)
    assert qbo.works(again) and qbo.oauth.failed_refreshes == 0


@pytest.mark.parametrize("sharing", ["one manager", "a manager each"])
def test_two_threads_refresh_once(store: Store, sharing: str) -> None:
    with running("quickbooks", refresh_delay=RACE_DELAY) as qbo:
        qbo.seed(store)
        shared = token_manager(store, TENANT, qbo.ledger(), environ=ENV)
        managers: list[TokenManager] = (
            [shared, shared]
            if sharing == "one manager"
            else [shared, token_manager(store, TENANT, qbo.ledger(), environ=ENV)]
        )
        barrier = threading.Barrier(2)
        outcomes: list[tuple[str | None, str | None]] = []

        def run(manager: TokenManager) -> None:
            barrier.wait(timeout=10)
            try:
                outcomes.append((manager.current().access_token, None))
            except Exception as exc:
                outcomes.append((None, repr(exc)))

        threads = [threading.Thread(target=run, args=(m,)) for m in managers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        refreshes = sum(m.refreshes for m in {id(m): m for m in managers}.values())
        assert_one_refresh_and_connection_kept(qbo, store, outcomes, refreshes)


def test_two_processes_refresh_once(store_url: str, store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    with running("quickbooks", refresh_delay=RACE_DELAY) as qbo:
        qbo.seed(store)
        barrier = context.Barrier(2)
        results = context.Queue()
        children = [
            context.Process(
                target=_refresh_in_child, args=(store_url, qbo.url, ENV, barrier, results)
            )
            for _ in range(2)
        ]
        for child in children:
            child.start()
        try:
            reports = [results.get(timeout=60) for _ in children]
        except queue.Empty:
            pytest.fail("a child process did not report")
        finally:
            for child in children:
                child.join(timeout=30)
        assert [child.exitcode for child in children] == [0, 0]
        outcomes = [(token, error) for token, error, _ in reports]
        refreshes = sum(made for _, _, made in reports)
        assert_one_refresh_and_connection_kept(qbo, store, outcomes, refreshes)
