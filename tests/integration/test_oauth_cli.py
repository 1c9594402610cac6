"""`milestone-sync connect`, `disconnect` and the ledger section of `status`, as an admin runs
them: `connect` in a real process without a terminal (the test plays the browser), over a
loopback identity service."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from adapters.oauth.errors import GrantRevoked
from adapters.oauth.manager import token_manager
from adapters.store.engine import open_store
from scheduler.cli import EXIT_ATTENTION, EXIT_CONFIG, EXIT_USAGE, app
from tests.integration.test_oauth_connect import TWO_ORGANISATIONS, free_port
from tests.integration.test_oauth_support import ENV, REALM, TENANT, Identity, running, tokens

PROJECT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def write_config(directory: Path, identity: Identity, port: int) -> Path:
    config = directory / "milestone-sync.toml"
    config.write_text(
        f"""
[firm]
id = "{TENANT}"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "work"
kind = "memory"

[ledger]
kind = "{identity.kind}"
base_url = "{identity.url}"
client_id_env = "MS_CLIENT_ID"
client_secret_env = "MS_CLIENT_SECRET"
options = {{ redirect_uri = "http://localhost:{port}/callback" }}

[payments]
kind = "none"
"""
    )
    return config


class Command:
    """milestone-sync in a child process with pipes (no terminal, no display)."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(ENV)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", *args],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def line_starting(self, prefix: str, timeout: float = 30) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line starting {prefix!r}; got {self.output}")
            self.output.append(line)
            if line.startswith(prefix):
                return line.strip()

    def finish(self, stdin: str | None = None) -> tuple[int, str, str]:
        assert self.process.stdin is not None and self.process.stderr is not None
        if stdin is not None:
            self.process.stdin.write(stdin)
        self.process.stdin.close()
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        while not self._lines.empty():
            self.output.append(self._lines.get())
        return code, "".join(self.output), self.process.stderr.read()


@pytest.fixture
def database(make_store_url: object) -> str:
    return make_store_url("sqlite")  # type: ignore[operator]


def test_connect_quickbooks_catches_the_redirect_on_the_loopback_listener(
    tmp_path: Path, database: str
) -> None:
    with running("quickbooks") as qbo:
        config = write_config(tmp_path, qbo, free_port())
        args = ("-c", str(config), "--database-url", database)
        with Command("connect", "quickbooks", "--no-browser", *args) as command:
            link = command.line_starting(qbo.url)
            page = requests.get(link, timeout=10)  # the browser: consent, back to the listener
            code, output, errors = command.finish()
        assert code == 0, output + errors
        assert "received the authorization" in page.text
        assert f"connected QuickBooks company Smith & Co CPAs ({REALM})" in output
        with open_store(database) as store:
            stored = tokens(store).load("quickbooks")
            assert stored is not None and stored.realm == REALM and qbo.works(stored)
        for secret in qbo.issued:
            assert secret not in output + errors


def test_connect_xero_on_a_headless_server_from_a_pasted_address(
    tmp_path: Path, database: str
) -> None:
    with running("xero", tenants=TWO_ORGANISATIONS) as xero:
        config = write_config(tmp_path, xero, free_port())
        chosen = TWO_ORGANISATIONS[1]
        args = ("-c", str(config), "--database-url", database)
        with Command("connect", "xero", "--paste", "--tenant", chosen.id, *args) as command:
            link = command.line_starting(xero.url)
            code, output, errors = command.finish(stdin=xero.redirect_for(link) + "\n")
        assert code == 0, output + errors
        assert f"connected Xero organisation Smith Payroll Ltd ({chosen.id})" in output
        with open_store(database) as store:
            stored = tokens(store).load("xero")
            assert stored is not None and stored.realm == chosen.id


def test_connect_xero_without_a_terminal_lists_the_organisations_to_choose_from(
    tmp_path: Path, database: str
) -> None:
    with running("xero", tenants=TWO_ORGANISATIONS) as xero:
        config = write_config(tmp_path, xero, free_port())
        args = ("-c", str(config), "--database-url", database)
        with Command("connect", "xero", "--paste", *args) as command:
            link = command.line_starting(xero.url)
            code, output, errors = command.finish(stdin=xero.redirect_for(link) + "\n")
        assert code == EXIT_CONFIG, output + errors
        assert "--tenant" in errors
        assert TWO_ORGANISATIONS[0].id in errors and TWO_ORGANISATIONS[1].id in errors
        assert "Traceback" not in errors


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def test_connect_checks_the_ledger_named(tmp_path: Path, database: str) -> None:
    with running("quickbooks") as qbo:
        config = write_config(tmp_path, qbo, free_port())
        code, output = invoke("connect", "xero", "-c", str(config), "--database-url", database)
        assert code == EXIT_CONFIG and "kind is 'quickbooks'" in output
        code, output = invoke("connect", "sage", "-c", str(config), "--database-url", database)
        assert code == EXIT_USAGE and "quickbooks, xero" in output


def test_status_shows_the_connection_then_that_it_needs_a_reconnect(
    tmp_path: Path, database: str
) -> None:
    with running("quickbooks") as qbo:
        config = write_config(tmp_path, qbo, free_port())
        code, output = invoke("status", "-c", str(config), "--database-url", database)
        assert code == 0, output
        assert "ledger connection (quickbooks): not connected" in output
        assert "milestone-sync connect quickbooks" in output
        with open_store(database) as store:
            qbo.seed(store)
            manager = token_manager(store, TENANT, qbo.ledger(), environ=ENV, now=qbo.time.now)
            manager.current()
        code, output = invoke("status", "-c", str(config), "--database-url", database)
        assert code == 0, output
        assert "ledger connection (quickbooks): connected" in output
        assert REALM in output and "access token valid until" in output
        assert "refresh token valid until about" in output
        qbo.oauth.revoke_all()
        qbo.oauth.expire_access_tokens()
        with open_store(database) as store:
            stale = tokens(store).load("quickbooks")
            assert stale is not None
            manager = token_manager(store, TENANT, qbo.ledger(), environ=ENV, now=qbo.time.now)
            with pytest.raises(GrantRevoked, match="connect quickbooks"):
                manager.refresh(stale)
        code, output = invoke("status", "-c", str(config), "--database-url", database)
        assert "ledger connection (quickbooks): needs reconnect" in output
        assert "invalid_grant" in output
        for secret in qbo.issued:
            assert secret not in output


def test_disconnect_revokes_then_has_nothing_to_do(tmp_path: Path, database: str) -> None:
    with running("quickbooks") as qbo:
        config = write_config(tmp_path, qbo, free_port())
        with open_store(database) as store:
            seeded = qbo.seed(store, expired=False)
        args = ("-c", str(config), "--database-url", database)
        code, output = invoke("disconnect", "quickbooks", *args)
        assert code == 0, output
        assert "revoked the QuickBooks connection and deleted the stored token" in output
        assert qbo.revoked_tokens == [seeded.refresh_token] and not qbo.works(seeded)
        code, output = invoke("disconnect", "quickbooks", *args)
        assert code == 0 and "nothing to do" in output


def test_disconnect_still_forgets_the_token_when_the_revoke_fails(
    tmp_path: Path, database: str
) -> None:
    with running("xero") as xero:
        config = write_config(tmp_path, xero, free_port())
        with open_store(database) as store:
            xero.seed(store)
    # Xero is unreachable now; and without client credentials nothing could be revoked anyway
    result = runner.invoke(
        app,
        ["disconnect", "xero", "-c", str(config), "--database-url", database],
        env={"MILESTONE_SYNC_TOKEN_KEY": ENV["MILESTONE_SYNC_TOKEN_KEY"], "MS_CLIENT_ID": ""},
    )
    assert result.exit_code == EXIT_ATTENTION, result.output
    assert "deleted the stored Xero token" in result.output
    assert "not revoked" in result.output and "MS_CLIENT_ID" in result.output
    assert "Settings > Connected apps" in result.output
    with open_store(database) as store:
        assert tokens(store).load("xero") is None
