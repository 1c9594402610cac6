"""Connecting and disconnecting a ledger: the authorization-code flow with state and PKCE, the
redirect caught on a loopback listener or pasted by the admin, the Xero organisation picked,
the first token stored encrypted; and revoking it again."""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapters.oauth.client import OAuthClient, PendingAuthorization, Tenant
from adapters.oauth.manager import refresh_expiry
from adapters.store.tokens import SqlTokenStore, StoredToken
from connector.config import LedgerConnection, ServerConfig
from connector.domain.errors import ConfigError, MilestoneSyncError
from connector.ports import OAuthToken

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
DEFAULT_CALLBACK_PATH = "/callback"
LISTEN_TIMEOUT_S = 300.0
ORGANISATION = "ORGANISATION"


@dataclass(frozen=True)
class Redirect:
    """What the authorization server sent back to the redirect URI."""

    code: str
    realm: str | None = None  # QBO realmId

    def __repr__(self) -> str:
        return f"Redirect(realm={self.realm!r})"


@dataclass(frozen=True)
class Connected:
    realm: str
    name: str | None
    replaced: str | None  # the realm of the connection this one replaced, if different

    def describe(self) -> str:
        return f"{self.name} ({self.realm})" if self.name else self.realm


def redirect_uri_for(ledger: LedgerConnection, server: ServerConfig, port: int | None) -> str:
    """`[ledger] options.redirect_uri` (the one registered for the app), else
    http://localhost:<[server] port>/callback; `port` replaces the port."""
    uri = ledger.options.get("redirect_uri") or f"http://localhost:{server.port}/callback"
    if port is not None:
        parts = urlsplit(uri)
        uri = parts._replace(netloc=f"{parts.hostname}:{port}").geturl()
    return uri


def parse_redirect(url: str, pending: PendingAuthorization, realm_param: str | None) -> Redirect:
    """Check the redirect's `state` against the request's and take its code (and realm)."""
    query = parse_qs(urlsplit(url.strip()).query)

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    error = one("error")
    if error:
        description = one("error_description")
        raise ConfigError(
            f"the authorization was not given ({error[:80]}"
            + (f": {' '.join(description.split())[:200]}" if description else "")
            + "): run `milestone-sync connect` again and approve the app"
        )
    state = one("state")
    if not state or not secrets.compare_digest(state, pending.state):
        raise ConfigError(
            "the redirect's state does not match this connection request (a stale browser tab, "
            "another attempt, or a forged link): run `milestone-sync connect` again and use the "
            "newest link"
        )
    code = one("code")
    if not code:
        raise ConfigError("the redirect has no authorization code: paste the whole address")
    realm = one(realm_param) if realm_param else None
    return Redirect(code, realm)


def pick_tenant(
    tenants: Sequence[Tenant],
    wanted: str | None,
    prompt: Callable[[Sequence[Tenant]], int] | None,
) -> Tenant:
    """The Xero organisation to bill into: `wanted` (id or name), the only one, or the admin's
    choice; several and no way to ask is an error that lists them."""
    organisations = [t for t in tenants if t.type.upper() == ORGANISATION] or list(tenants)
    listing = "; ".join(t.describe() for t in organisations)
    if not organisations:
        raise ConfigError(
            "Xero connected no organisation: on the consent screen pick the organisation to "
            "bill into, then run `milestone-sync connect xero` again"
        )
    if wanted:
        for tenant in organisations:
            if wanted.strip().lower() in (tenant.id.lower(), tenant.name.strip().lower()):
                return tenant
        raise ConfigError(
            f"--tenant {wanted!r} is not among the connected organisations: {listing}"
        )
    if len(organisations) == 1:
        return organisations[0]
    if prompt is None:
        raise ConfigError(
            f"Xero connected {len(organisations)} organisations: {listing}; run again with "
            "--tenant <id> to choose one"
        )
    index = prompt(organisations)
    if not 0 <= index < len(organisations):
        raise ConfigError(f"choose a number from 1 to {len(organisations)}")
    return organisations[index]


def connect(
    client: OAuthClient,
    tokens: SqlTokenStore,
    pending: PendingAuthorization,
    redirect_url: str,
    *,
    now: datetime,
    tenant: str | None = None,
    prompt: Callable[[Sequence[Tenant]], int] | None = None,
    minorversion: str = "75",
) -> Connected:
    """Finish a connection: check the redirect, exchange the code, find the realm (QBO's
    realmId, or the Xero organisation), store the token encrypted."""
    provider = client.provider
    redirect = parse_redirect(redirect_url, pending, provider.realm_param)
    issued = client.exchange(pending, redirect.code)
    if issued.refresh_token is None:
        raise ConfigError(
            f"{provider.label} issued no refresh token: the app must ask for offline access "
            f"(scopes {' '.join(provider.scopes)!r}); check ledger.options.scopes"
        )
    name: str | None
    if provider.needs_tenant_choice:
        chosen = pick_tenant(client.tenants(issued.access_token), tenant, prompt)
        realm, name = chosen.id, chosen.name or None
    else:
        if not redirect.realm:
            raise ConfigError(
                f"{provider.label}'s redirect carries no {provider.realm_param}: connect from "
                "the company's admin account and pick the company on the consent screen"
            )
        realm = redirect.realm
        name = client.company_name(realm, issued.access_token, minorversion)
    previous = tokens.load_record(provider.name)
    token = OAuthToken(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_at=issued.expires_at,
        refresh_expires_at=refresh_expiry(provider, issued, now),
        realm=realm,
    )
    tokens.save_record(
        provider.name,
        StoredToken(token, connected_at=now, refreshed_at=issued.issued_at, label=name),
    )
    replaced = None
    if previous is not None and previous.token.realm != realm:
        replaced = previous.token.realm
    return Connected(realm, name, replaced)


@dataclass(frozen=True)
class Disconnected:
    had_connection: bool
    revoked: bool
    note: str | None = None


def disconnect(
    client: OAuthClient | None, tokens: SqlTokenStore, connection: str, why_no_client: str = ""
) -> Disconnected:
    """Revoke the grant at the provider and forget the token; the token is forgotten even when
    the revoke fails (the note says what to do on the provider's side)."""
    with tokens.locked(connection) as lock:  # no refresh may rotate it while we revoke
        record = lock.record
        if record is None:
            return Disconnected(False, False)
        note = None
        revoked = False
        if client is None:
            note = f"not revoked at the provider ({why_no_client})"
        else:
            try:
                client.revoke(record.token.refresh_token)
                revoked = True
            except MilestoneSyncError as exc:
                note = f"the provider did not confirm the revoke: {exc}"
        lock.delete()
    return Disconnected(True, revoked, note)


# --------------------------------------------------------------------------- loopback listener


class LoopbackListener:
    """Waits for the browser's redirect on 127.0.0.1:<port><path> (the redirect URI's port and
    path). A request whose state does not match is answered 400 and ignored."""

    def __init__(self, redirect_uri: str, state: str) -> None:
        parts = urlsplit(redirect_uri)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"the redirect URI {redirect_uri} is not a loopback http address, so this "
                "machine cannot catch the redirect: use --paste (or set ledger.options."
                "redirect_uri to http://localhost:<port>/callback and register it for the app)"
            )
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._state = state
        self._received: str | None = None
        self._arrived = threading.Event()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # the request line holds the authorization code

        try:
            self._server = HTTPServer(("127.0.0.1", self.port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on 127.0.0.1:{self.port} for the redirect ({exc.strerror}): is "
                "milestone-sync's daemon running there? Pass --port N with another port "
                "registered as a redirect URI for the app, or use --paste"
            ) from None
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait(self, timeout: float = LISTEN_TIMEOUT_S) -> str:
        if not self._arrived.wait(timeout):
            raise ConfigError(
                f"no redirect arrived within {int(timeout)} s: open the link in a browser on "
                "this machine, or run again with --paste"
            )
        assert self._received is not None
        return self._received

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        state = (query.get("state") or [""])[0]
        if parts.path != self.path or not ("code" in query or "error" in query):
            self._answer(request, 404, "Not the milestone-sync redirect.")
            return
        if not state or not secrets.compare_digest(state, self._state):
            self._answer(request, 400, "This link belongs to another connection attempt.")
            return
        self._received = f"http://127.0.0.1:{self.port}{request.path}"
        if "error" in query:
            self._answer(request, 200, "The app was not authorized. You can close this tab.")
        else:
            self._answer(
                request, 200, "milestone-sync received the authorization. You can close this tab."
            )
        self._arrived.set()

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, text: str) -> None:
        body = f"<!doctype html><title>milestone-sync</title><p>{html.escape(text)}</p>".encode()
        request.send_response(status)
        request.send_header("Content-Type", "text/html; charset=utf-8")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)
