"""Shared by the test_oauth_* files (no tests here): a QuickBooks-like or Xero-like identity
service on a loopback `EmulatorServer`, built on the emulators' `OAuthServer`, with the
endpoints on the paths the ledger emulators use, and a few faults."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from cryptography.fernet import Fernet
from werkzeug.wrappers import Request, Response

from adapters.emulation.clock import EmulatedTime
from adapters.emulation.oauth import OAuthPolicy, OAuthServer
from adapters.emulation.server import EmulatorServer, RecordedRequest, RequestLog, drop_connection
from adapters.oauth.providers import QBO_SCOPES, XERO_SCOPES
from adapters.store.engine import Store
from adapters.store.tokens import SqlTokenStore, StoredToken
from connector.config import LedgerConnection, LedgerKind
from connector.domain.ids import TenantId
from connector.ports import OAuthToken

CLIENT_ID = "ABqbo-client-id-1234"
CLIENT_SECRET = "s3cr3t-client-secret-do-not-log"
TOKEN_KEY = Fernet.generate_key().decode()
TENANT = TenantId("smith-cpa")
REALM = "9130357766554321"
ENV = {
    "MS_CLIENT_ID": CLIENT_ID,
    "MS_CLIENT_SECRET": CLIENT_SECRET,
    "MILESTONE_SYNC_TOKEN_KEY": TOKEN_KEY,
}

QBO_POLICY = OAuthPolicy(
    access_ttl=timedelta(hours=1),
    refresh_ttl=timedelta(days=100),
    rotation_grace=timedelta(0),  # a used refresh token is invalid at once
    client_auth="basic",
    scopes=QBO_SCOPES,
    require_pkce=True,
    refresh_expires_field="x_refresh_token_expires_in",
)
XERO_POLICY = OAuthPolicy(
    access_ttl=timedelta(minutes=30),
    refresh_ttl=timedelta(days=60),
    rotation_grace=timedelta(minutes=30),
    client_auth="body",
    scopes=XERO_SCOPES,
    require_pkce=True,
)


@dataclass(frozen=True)
class XeroTenant:
    id: str
    name: str
    type: str = "ORGANISATION"


DEFAULT_TENANTS = (XeroTenant("a3f9c2de-0000-4c1b-9d7e-6f0e1b2c3d4e", "Smith & Co CPAs"),)


@dataclass
class Identity:
    """One identity service. `issued` collects every token the server handed out (for the
    tests that prove none reaches a log); `token_faults` are consumed one per token call."""

    kind: str
    time: EmulatedTime
    tenants: tuple[XeroTenant, ...] = DEFAULT_TENANTS
    refresh_delay: float = 0.0  # seconds the token endpoint takes on a refresh (races)
    company_name: str = "Smith & Co CPAs"
    log: RequestLog = field(default_factory=RequestLog)
    issued: list[str] = field(default_factory=list)
    token_faults: deque[str] = field(default_factory=deque)
    revoked_tokens: list[str] = field(default_factory=list)
    after_rotation: Callable[[], None] | None = None  # runs once the server has rotated

    def __post_init__(self) -> None:
        policy = QBO_POLICY if self.kind == "quickbooks" else XERO_POLICY
        self.oauth = OAuthServer(
            policy,
            {CLIENT_ID: CLIENT_SECRET},
            now=self.time.now,
            grant_extra=(lambda: {"realmId": REALM}) if self.kind == "quickbooks" else None,
        )
        self._server = EmulatorServer(self._handle)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def ledger(self, **options: str) -> LedgerConnection:
        return LedgerConnection(
            kind=LedgerKind(self.kind),
            base_url=self.url,
            secret_env={"client_id": "MS_CLIENT_ID", "client_secret": "MS_CLIENT_SECRET"},
            options=options,
        )

    # ------------------------------------------------------------------ helpers for tests

    def seed(self, store: Store, *, expired: bool = True) -> OAuthToken:
        """A connection made without the browser, stored as `connect` would store it; with
        `expired` its access token needs a refresh at once."""
        body = self.oauth.connect(**({"realmId": REALM} if self.kind == "quickbooks" else {}))
        self._remember(body)
        now = self.time.now()
        token = OAuthToken(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_at=now - timedelta(seconds=1) if expired else now + timedelta(minutes=30),
            refresh_expires_at=now + timedelta(days=60),
            realm=REALM if self.kind == "quickbooks" else self.tenants[0].id,
        )
        tokens(store, self.time).save_record(
            self.kind, StoredToken(token, connected_at=now, refreshed_at=now)
        )
        return token

    def works(self, token: OAuthToken) -> bool:
        return self.oauth.bearer(f"Bearer {token.access_token}")[0] == "ok"

    def redirect_for(self, authorize_url: str) -> str:
        """What the admin's browser does: GET the authorize URL, consent (automatic), and
        come back with the Location the server redirects to."""
        response = requests.get(authorize_url, allow_redirects=False, timeout=5)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def token_calls(self) -> list[RecordedRequest]:
        return [e for e in self.log.snapshot() if e.path == self._paths()["token"]]

    # ------------------------------------------------------------------ the service

    def _paths(self) -> dict[str, str]:
        if self.kind == "quickbooks":
            return {
                "authorize": "/connect/oauth2",
                "token": "/oauth2/v1/tokens/bearer",
                "revoke": "/v2/oauth2/tokens/revoke",
            }
        return {
            "authorize": "/identity/connect/authorize",
            "token": "/connect/token",
            "revoke": "/connect/revocation",
            "connections": "/Connections",
        }

    def _handle(self, request: Request) -> Response:
        body = request.get_data(cache=True)
        response = self._route(request)
        self.log.add(
            RecordedRequest(
                request.method,
                request.path,
                request.query_string.decode(),
                dict(request.headers),
                body,
                response.status_code,
            )
        )
        return response

    def _route(self, request: Request) -> Response:
        paths = self._paths()
        if request.path == paths["authorize"] and request.method == "GET":
            return self.oauth.authorize(request)
        if request.path == paths["token"] and request.method == "POST":
            return self._token(request)
        if request.path == paths["revoke"] and request.method == "POST":
            token = request.form.get("token") or ""
            if not token and request.is_json:
                token = str((request.get_json(silent=True) or {}).get("token", ""))
            self.revoked_tokens.append(token)
            return self.oauth.revoke(request)
        if self.kind == "xero" and request.path == paths["connections"]:
            status, _grant = self.oauth.bearer(request.headers.get("Authorization"))
            if status != "ok":
                return Response(json.dumps({"Status": 401}), status=401)
            rows = [
                {
                    "id": f"conn-{t.id[:8]}",
                    "authEventId": "b7e1c0de-1111-2222-3333-444455556666",
                    "tenantId": t.id,
                    "tenantType": t.type,
                    "tenantName": t.name,
                    "createdDateUtc": "2026-11-20T10:00:00.0000000",
                    "updatedDateUtc": "2026-11-20T10:00:00.0000000",
                }
                for t in self.tenants
            ]
            return Response(json.dumps(rows), mimetype="application/json")
        if self.kind == "quickbooks" and request.path.endswith(f"/companyinfo/{REALM}"):
            status, _grant = self.oauth.bearer(request.headers.get("Authorization"))
            if status != "ok":
                return Response(json.dumps({"fault": {"type": "AUTHENTICATION"}}), status=401)
            info = {"CompanyInfo": {"CompanyName": self.company_name, "Id": "1"}}
            return Response(json.dumps(info), mimetype="application/json")
        return Response("not found", status=404)

    def _token(self, request: Request) -> Response:
        with self._lock:
            fault = self.token_faults.popleft() if self.token_faults else None
        if fault == "500":
            return Response(json.dumps({"error": "server_error"}), status=503)
        if fault == "html":
            return Response("<html>maintenance</html>", status=200, mimetype="text/html")
        if request.form.get("grant_type") == "refresh_token" and self.refresh_delay:
            time.sleep(self.refresh_delay)
        response = self.oauth.token(request)
        if response.status_code == 200:
            self._remember(json.loads(response.get_data()))
        if response.status_code == 200 and self.after_rotation is not None:
            self.after_rotation()
        if fault == "drop":  # rotated, then the answer is lost
            raise drop_connection(request)
        return response

    def _remember(self, body: dict[str, Any]) -> None:
        self.issued.extend(str(body[k]) for k in ("access_token", "refresh_token") if k in body)


def tokens(store: Store, clock: EmulatedTime | None = None) -> SqlTokenStore:
    return SqlTokenStore(store, TENANT, environ=ENV, clock=clock)


@contextmanager
def running(kind: str, clock: EmulatedTime | None = None, **kwargs: Any) -> Iterator[Identity]:
    identity = Identity(kind, clock or EmulatedTime(start=datetime.now(UTC)), **kwargs)
    identity.start()
    try:
        yield identity
    finally:
        identity.stop()
