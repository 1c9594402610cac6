"""An OAuth 2 authorization server for the ledger emulators: authorization-code grant with state
and PKCE, refresh-token rotation (with or without a grace period for the previous token),
expiring access tokens, revocation, and a Python API to seed or break a connection.

QuickBooks and Xero differ in where the client authenticates (HTTP Basic vs the form body),
how long tokens live and what happens to a used refresh token; `OAuthPolicy` holds those
differences, each emulator mounts one `OAuthServer` on its own paths."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response


@dataclass(frozen=True)
class OAuthPolicy:
    access_ttl: timedelta
    refresh_ttl: timedelta
    # how long the previous refresh token still works after it was used (Xero: 30 minutes;
    # QuickBooks: none in this emulator, so a lost rotated token is caught by the tests)
    rotation_grace: timedelta = timedelta(0)
    client_auth: Literal["basic", "body"] = "basic"
    scopes: tuple[str, ...] = ()
    require_pkce: bool = False
    refresh_expires_field: str | None = None  # QBO: x_refresh_token_expires_in


@dataclass
class Grant:
    """One connection: the admin consented once; tokens come and go under it."""

    id: str
    client_id: str
    scopes: tuple[str, ...]
    extra: dict[str, str] = field(default_factory=dict)  # e.g. realmId
    revoked: bool = False


@dataclass
class _Refresh:
    grant: str
    expires_at: datetime
    used_at: datetime | None = None
    successor: str | None = None


@dataclass
class _Access:
    grant: str
    expires_at: datetime


@dataclass
class _Code:
    grant: Grant
    redirect_uri: str
    challenge: str | None
    method: str | None
    expires_at: datetime


BearerStatus = Literal["ok", "missing", "invalid", "expired", "revoked"]


class OAuthServer:
    """State and endpoints of one authorization server; thread-safe."""

    def __init__(
        self,
        policy: OAuthPolicy,
        clients: Mapping[str, str],
        *,
        now: Callable[[], datetime],
        grant_extra: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.policy = policy
        self.clients = dict(clients)
        self._now = now
        self._grant_extra = grant_extra or dict
        self._lock = threading.Lock()
        self.grants: dict[str, Grant] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._access: dict[str, _Access] = {}
        self.refresh_calls = 0
        self.failed_refreshes = 0

    # ------------------------------------------------------------------ Python API

    def connect(self, client_id: str | None = None, **extra: str) -> dict[str, object]:
        """Consent without the browser: a new grant and its first token response."""
        client = client_id or next(iter(self.clients))
        with self._lock:
            grant = self._new_grant(client, self.policy.scopes, extra)
            return self._issue(grant)

    def expire_access_tokens(self) -> None:
        with self._lock:
            for access in self._access.values():
                access.expires_at = self._now() - timedelta(seconds=1)

    def revoke_all(self) -> None:
        """The firm disconnected the app on the vendor's side: every grant stops working."""
        with self._lock:
            for grant in self.grants.values():
                grant.revoked = True

    def bearer(self, authorization: str | None) -> tuple[BearerStatus, Grant | None]:
        """Check an `Authorization: Bearer ...` header."""
        if not authorization or not authorization.startswith("Bearer "):
            return "missing", None
        token = authorization[len("Bearer ") :].strip()
        with self._lock:
            access = self._access.get(token)
            if access is None:
                return "invalid", None
            grant = self.grants[access.grant]
            if grant.revoked:
                return "revoked", grant
            if access.expires_at <= self._now():
                return "expired", grant
            return "ok", grant

    # ------------------------------------------------------------------ endpoints

    def authorize(self, request: Request) -> Response:
        """GET authorize: consent is automatic; redirect back with a code (and state)."""
        args = request.args
        client_id = args.get("client_id", "")
        redirect_uri = args.get("redirect_uri", "")
        if client_id not in self.clients or not redirect_uri:
            return Response("unknown client_id or missing redirect_uri", status=400)
        if args.get("response_type") != "code":
            return Response("response_type must be code", status=400)
        challenge = args.get("code_challenge")
        method = args.get("code_challenge_method")
        if self.policy.require_pkce and not challenge:
            return Response("code_challenge is required", status=400)
        if challenge and method not in ("S256", "plain"):
            return Response("code_challenge_method must be S256 or plain", status=400)
        scopes = tuple(args.get("scope", "").split())
        with self._lock:
            grant = self._new_grant(client_id, scopes or self.policy.scopes, self._grant_extra())
            code = secrets.token_urlsafe(24)
            self._codes[code] = _Code(
                grant, redirect_uri, challenge, method, self._now() + timedelta(minutes=5)
            )
        query = {"code": code, **grant.extra}
        if "state" in args:
            query["state"] = args["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return Response(
            status=302, headers={"Location": redirect_uri + separator + urlencode(query)}
        )

    def token(self, request: Request) -> Response:
        """POST token: authorization_code and refresh_token grants."""
        client_id, secret = self._client_credentials(request)
        if client_id is None or self.clients.get(client_id) != secret:
            return _error(401, "invalid_client")
        form = request.form
        grant_type = form.get("grant_type")
        with self._lock:
            if grant_type == "authorization_code":
                return self._exchange_code(client_id, form)
            if grant_type == "refresh_token":
                self.refresh_calls += 1
                response = self._rotate(client_id, form.get("refresh_token", ""))
                if response.status_code != 200:
                    self.failed_refreshes += 1
                return response
        return _error(400, "unsupported_grant_type")

    def revoke(self, request: Request) -> Response:
        """POST revoke: the grant behind a refresh (or access) token stops working."""
        client_id, secret = self._client_credentials(request)
        if client_id is None or self.clients.get(client_id) != secret:
            return _error(401, "invalid_client")
        token = request.form.get("token") or ""
        if not token and request.is_json:
            token = str((request.get_json(silent=True) or {}).get("token", ""))
        with self._lock:
            holder = self._refresh.get(token) or self._access.get(token)
            if holder is not None:
                self.grants[holder.grant].revoked = True
        return Response(status=200)

    # ------------------------------------------------------------------ internals

    def _new_grant(
        self, client_id: str, scopes: tuple[str, ...], extra: Mapping[str, str]
    ) -> Grant:
        grant = Grant(secrets.token_hex(8), client_id, scopes, dict(extra))
        self.grants[grant.id] = grant
        return grant

    def _issue(self, grant: Grant) -> dict[str, object]:
        now = self._now()
        access = "at-" + secrets.token_urlsafe(24)
        refresh = "rt-" + secrets.token_urlsafe(24)
        self._access[access] = _Access(grant.id, now + self.policy.access_ttl)
        self._refresh[refresh] = _Refresh(grant.id, now + self.policy.refresh_ttl)
        body: dict[str, object] = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(self.policy.access_ttl.total_seconds()),
        }
        if grant.scopes:
            body["scope"] = " ".join(grant.scopes)
        if self.policy.refresh_expires_field:
            body[self.policy.refresh_expires_field] = int(self.policy.refresh_ttl.total_seconds())
        return body

    def _exchange_code(self, client_id: str, form: Mapping[str, str]) -> Response:
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.expires_at <= self._now() or code.grant.client_id != client_id:
            return _error(400, "invalid_grant")
        if form.get("redirect_uri") != code.redirect_uri:
            return _error(400, "invalid_grant", "redirect_uri does not match")
        if code.challenge:
            verifier = form.get("code_verifier", "")
            if code.method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            else:
                expected = verifier
            if not verifier or not secrets.compare_digest(expected, code.challenge):
                return _error(400, "invalid_grant", "code_verifier does not match")
        return _json(self._issue(code.grant))

    def _rotate(self, client_id: str, token: str) -> Response:
        held = self._refresh.get(token)
        now = self._now()
        if held is None or held.expires_at <= now:
            return _error(400, "invalid_grant")
        grant = self.grants[held.grant]
        if grant.revoked or grant.client_id != client_id:
            return _error(400, "invalid_grant")
        # a used token is invalid, unless still inside the grace period (then it answers with a
        # fresh pair, as Xero does)
        if held.used_at is not None and now - held.used_at >= self.policy.rotation_grace:
            return _error(400, "invalid_grant")
        body = self._issue(grant)
        held.used_at = held.used_at or now
        held.successor = str(body["refresh_token"])
        return _json(body)

    def _client_credentials(self, request: Request) -> tuple[str | None, str | None]:
        if self.policy.client_auth == "basic":
            auth = request.authorization
            if auth is None or auth.type != "basic":
                return None, None
            return auth.username, auth.password
        return request.form.get("client_id"), request.form.get("client_secret")


def _json(body: Mapping[str, object], status: int = 200) -> Response:
    return Response(
        json.dumps(body),
        status=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, error: str, description: str | None = None) -> Response:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return _json(body, status)
