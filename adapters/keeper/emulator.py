"""A stateful local emulator of the close-checklist contract, for tests and the sandbox.

It checks every /v1 request against close_checklist_api.yaml (violations are logged and answered
400), keeps clients, closes, sections and tasks with Keeper's behaviours (a new close copies the
previous one's tasks; the first task Done starts the close; optional auto-complete), pages with
opaque cursors, limits each token's rate, injects faults, and pushes signed webhooks on `pump()`.
Test controls are Python methods, not HTTP calls, so the request log holds only client traffic.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from werkzeug.wrappers import Request, Response

from adapters.emulation.openapi import OpenAPIContract
from adapters.emulation.server import EmulatorServer, RecordedRequest, RequestLog, ServedEmulator
from adapters.keeper import CONTRACT_PATH
from adapters.keeper.client import SIGNATURE_HEADER, format_time
from adapters.signing import sign_timestamped

DEFAULT_STATUSES = ("Not Started", "In Progress", "Ready for Manager Review", "Stuck", "Done")
TASK_STATUSES = ("Not Started", "In Progress", "Done", "Canceled")
CLOSED_TASK_STATUSES = frozenset({"Done", "Canceled"})
DEFAULT_SECTIONS: Mapping[str, Sequence[str]] = {
    "Pre-close": ("Review bank feeds", "Request missing statements"),
    "Account Reconciliations": (
        "Reconcile operating account",
        "Reconcile credit card",
        "Reconcile loans",
    ),
    "Transaction Review": ("Categorise uncategorised transactions", "Review payee names"),
    "Final Review": ("Review the P&L and balance sheet", "Send financials to the client"),
}
DEFAULT_PAGE_SIZE = 50
WEBHOOK_TIMEOUT = 2.0
WEBHOOK_MAX_ATTEMPTS = 10  # then the event is dropped, as senders give up on a dead receiver
_MONTHLY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_QUARTERLY = re.compile(r"^\d{4}-Q[1-4]$")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Client:
    id: str
    name: str
    ledger: str | None
    ledger_customer_id: str | None
    frequency: str
    updated_at: datetime

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ledger": self.ledger,
            "ledger_customer_id": self.ledger_customer_id,
            "frequency": self.frequency,
            "updated_at": format_time(self.updated_at),
        }


@dataclass
class _Task:
    id: str
    name: str
    status: str = "Not Started"
    completed_at: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_TASK_STATUSES


@dataclass
class _Section:
    name: str
    tasks: list[_Task]

    def summary(self) -> dict[str, Any]:
        closed = [t for t in self.tasks if t.closed]
        done = bool(self.tasks) and len(closed) == len(self.tasks)
        done_at = max(t.completed_at for t in closed if t.completed_at) if done else None
        return {
            "name": self.name,
            "tasks_total": len(self.tasks),
            "tasks_done": len(closed),
            "done_at": format_time(done_at) if done_at else None,
        }


@dataclass
class _Close:
    id: str
    client_id: str
    period: str
    status: str
    status_changed_at: datetime
    updated_at: datetime
    sections: list[_Section]

    def tasks(self) -> list[_Task]:
        return [t for s in self.sections for t in s.tasks]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "period": self.period,
            "status": self.status,
            "status_changed_at": format_time(self.status_changed_at),
            "updated_at": format_time(self.updated_at),
            "sections": [s.summary() for s in self.sections],
        }

    def detail(self) -> dict[str, Any]:
        body = self.summary()
        body["sections"] = [
            {
                **s.summary(),
                "tasks": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "status": t.status,
                        "completed_at": format_time(t.completed_at) if t.completed_at else None,
                    }
                    for t in s.tasks
                ],
            }
            for s in self.sections
        ]
        return body


@dataclass
class _Outgoing:
    event: dict[str, Any]
    body: bytes  # fixed at creation, so a retry sends the same bytes
    attempts: int = 0


@dataclass
class _Fault:
    status: int
    retry_after: int | None


class _Reply(Exception):
    """Answer the request now with this error."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass
class _Routes:
    """The contract's operations, as (method, compiled path, template)."""

    items: list[tuple[str, re.Pattern[str], str]] = field(default_factory=list)

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        for verb, pattern, template in self.items:
            found = pattern.match(path)
            if verb == method and found:
                return template, found.groupdict()
        return None


class CloseChecklistEmulator(ServedEmulator):
    """One firm's close-checklist system on 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str = "closes-token",
        clock: Callable[[], datetime] | None = None,
        rate_limit_per_minute: int = 120,
        validate: bool = True,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        statuses: Sequence[str] = DEFAULT_STATUSES,
        auto_complete: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if webhook_url is not None and not webhook_secret:
            raise ValueError("a webhook_url needs a webhook_secret to sign the pushes with")
        if not statuses:
            raise ValueError("a firm needs at least one close status")
        self.token = token
        self.log = RequestLog()
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._clock = clock or _utc_now
        self._per_minute = rate_limit_per_minute
        self._monotonic = monotonic
        self._validate = validate
        self._initial_statuses = list(statuses)
        self._statuses = list(statuses)
        self._auto_complete = auto_complete
        self._lock = threading.RLock()
        self._server = EmulatorServer(self._handle)
        self._contract: OpenAPIContract | None = None
        self._declared: dict[tuple[str, str], frozenset[str]] | None = None
        self._reject_unknown = False
        self._routes = _routes()
        self._clients: dict[str, _Client] = {}
        self._closes: dict[str, _Close] = {}
        self._ids = itertools.count(1)
        self._events = itertools.count(1)
        self._outbox: list[_Outgoing] = []
        self._drop_webhooks = 0
        self._faults: list[_Fault] = []
        self._buckets: dict[str, tuple[float, float]] = {}  # token -> (tokens, at)
        self.sent_webhooks: list[dict[str, Any]] = []
        self.dropped_webhooks: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget every client, close, push, fault, rate-limit bucket and logged request, and
        restore the initial statuses: a fresh firm on the same port (ids keep counting)."""
        with self._lock:
            self._clients.clear()
            self._closes.clear()
            self._outbox.clear()
            self._faults.clear()
            self._buckets.clear()
            self._drop_webhooks = 0
            self._statuses = list(self._initial_statuses)
            self.sent_webhooks.clear()
            self.dropped_webhooks.clear()
            self.log.clear()

    def violations(self) -> list[str]:
        """Every contract violation in the requests received so far."""
        return self.log.violations()

    def list_calls(self) -> int:
        """Requests received on GET /v1/closes (every page, every answer)."""
        return self.log.count("GET", exact="/v1/closes")

    def detail_calls(self) -> int:
        """Requests received on GET /v1/closes/{id}."""
        return self.log.count("GET", path_prefix="/v1/closes/")

    # ------------------------------------------------------------------ test controls

    def add_client(
        self,
        id: str,
        name: str,
        *,
        ledger_customer_id: str | None = None,
        frequency: str = "monthly",
        ledger: str | None = "quickbooks",
    ) -> None:
        if frequency not in ("monthly", "quarterly"):
            raise ValueError(f"frequency must be monthly or quarterly, not {frequency!r}")
        if ledger not in ("quickbooks", "xero", None):
            raise ValueError(f"ledger must be quickbooks, xero or None, not {ledger!r}")
        with self._lock:
            self._clients[id] = _Client(
                id, name, ledger, ledger_customer_id, frequency, self._now()
            )

    def set_statuses(self, statuses: Sequence[str]) -> None:
        """Replace the firm's ordered close statuses; closes keep the status they have."""
        if not statuses:
            raise ValueError("a firm needs at least one close status")
        with self._lock:
            self._statuses = list(statuses)

    def open_close(
        self,
        client_id: str,
        period: str,
        sections: Mapping[str, Sequence[str]] | None = None,
    ) -> str:
        """A new close in the first status. Without `sections`, the tasks of the client's latest
        close are copied (statuses reset), or the default checklist for a first close."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                raise KeyError(f"unknown client {client_id}")
            pattern = _MONTHLY if client.frequency == "monthly" else _QUARTERLY
            if not pattern.match(period):
                raise ValueError(f"{period!r} is not a {client.frequency} period")
            if any(c.client_id == client_id and c.period == period for c in self._closes.values()):
                raise ValueError(f"client {client_id} already has a close for {period}")
            if sections is None:
                previous = [c for c in self._closes.values() if c.client_id == client_id]
                sections = (
                    {s.name: [t.name for t in s.tasks] for s in previous[-1].sections}
                    if previous
                    else DEFAULT_SECTIONS
                )
            now = self._now()
            close = _Close(
                id=f"close_{next(self._ids):05d}",
                client_id=client_id,
                period=period,
                status=self._statuses[0],
                status_changed_at=now,
                updated_at=now,
                sections=[
                    _Section(name, [_Task(f"task_{next(self._ids):05d}", t) for t in tasks])
                    for name, tasks in sections.items()
                ],
            )
            self._closes[close.id] = close
            return close.id

    def set_task(self, close_id: str, task: str, status: str) -> None:
        """Move a task (by id, or by name when unique in the close) to a status."""
        if status not in TASK_STATUSES:
            raise ValueError(f"task status must be one of {', '.join(TASK_STATUSES)}")
        with self._lock:
            close = self._close(close_id)
            self._set_task(close, self._task(close, task), status)

    def complete_section(self, close_id: str, section: str) -> None:
        """Tick every open task of a section Done."""
        with self._lock:
            close = self._close(close_id)
            found = [s for s in close.sections if s.name == section]
            if not found:
                raise KeyError(f"close {close_id} has no section {section!r}")
            for item in found:
                for task in item.tasks:
                    if not task.closed:
                        self._set_task(close, task, "Done")

    def set_close_status(self, close_id: str, status: str) -> None:
        with self._lock:
            if status not in self._statuses:
                raise ValueError(f"{status!r} is not one of {', '.join(self._statuses)}")
            close = self._close(close_id)
            if close.status != status:
                self._set_status(close, status)

    def close(self, close_id: str) -> dict[str, Any]:
        """The close as GET /v1/closes/{id} answers it."""
        with self._lock:
            return self._close(close_id).detail()

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 500, *, retry_after: int | None = None) -> None:
        """Answer the next `n` authorised requests with `status` (429 always has Retry-After,
        1 s unless `retry_after` says otherwise)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(n))

    def drop_next_webhooks(self, n: int = 1) -> None:
        """Lose the next `n` pushes (never delivered), as a flaky network would."""
        with self._lock:
            self._drop_webhooks += n

    # ------------------------------------------------------------------ webhooks

    def pending_webhooks(self) -> int:
        with self._lock:
            return len(self._outbox)

    def pump(self) -> int:
        """Deliver the queued pushes now, in order; undelivered ones wait for the next pump.
        Returns how many were delivered."""
        with self._lock:
            batch = list(self._outbox)
        delivered = 0
        for item in batch:
            with self._lock:
                drop = self._drop_webhooks > 0
                if drop:
                    self._drop_webhooks -= 1
            if drop:
                self._forget(item)
                self.dropped_webhooks.append(item.event)
                continue
            item.attempts += 1
            ok = self._post(item.body)
            if ok:
                delivered += 1
                self.sent_webhooks.append(item.event)
            if ok or item.attempts >= WEBHOOK_MAX_ATTEMPTS:
                self._forget(item)
        return delivered

    def _post(self, body: bytes) -> bool:
        assert self.webhook_url is not None and self._webhook_secret is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_timestamped(self._webhook_secret, body, self._now()),
        }
        try:
            answer = requests.post(
                self.webhook_url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT
            )
        except requests.RequestException:
            return False
        return 200 <= answer.status_code < 300

    def _forget(self, item: _Outgoing) -> None:
        with self._lock:
            self._outbox = [o for o in self._outbox if o is not item]

    def _emit(self, kind: str, close: _Close) -> None:
        if self.webhook_url is None:
            return
        event = {
            "id": f"evt_{next(self._events):06d}",
            "type": kind,
            "created_at": format_time(self._now()),
            "data": {
                "close_id": close.id,
                "client_id": close.client_id,
                "period": close.period,
                "status": close.status,
            },
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        self._outbox.append(_Outgoing(event, body))

    # ------------------------------------------------------------------ state changes

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the emulator's clock must return timezone-aware datetimes")
        now = now.astimezone(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _close(self, close_id: str) -> _Close:
        close = self._closes.get(close_id)
        if close is None:
            raise KeyError(f"unknown close {close_id}")
        return close

    def _task(self, close: _Close, task: str) -> _Task:
        tasks = close.tasks()
        by_id = [t for t in tasks if t.id == task]
        if by_id:
            return by_id[0]
        named = [t for t in tasks if t.name == task]
        if len(named) == 1:
            return named[0]
        if not named:
            raise KeyError(f"close {close.id} has no task {task!r}")
        ids = ", ".join(t.id for t in named)
        raise KeyError(f"close {close.id} has several tasks named {task!r}: use an id ({ids})")

    def _set_task(self, close: _Close, task: _Task, status: str) -> None:
        if task.status == status:
            return
        was_closed = task.closed
        now = self._now()
        task.status = status
        if task.closed and not was_closed:
            task.completed_at = now
        elif not task.closed:
            task.completed_at = None
        close.updated_at = now
        if task.closed and not was_closed:
            self._emit("task.completed", close)
        # Keeper: the first task ticked Done starts the close
        if (
            status == "Done"
            and close.status == self._statuses[0]
            and "In Progress" in self._statuses
            and close.status != "In Progress"
        ):
            self._set_status(close, "In Progress")
        tasks = close.tasks()
        if (
            self._auto_complete
            and tasks
            and all(t.closed for t in tasks)
            and "Done" in self._statuses
            and close.status != "Done"
        ):
            self._set_status(close, "Done")

    def _set_status(self, close: _Close, status: str) -> None:
        now = self._now()
        close.status = status
        close.status_changed_at = now
        close.updated_at = now
        self._emit("close.status_changed", close)

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: Request) -> Response:
        violations = self._check(request) if self._validate else []
        try:
            status, body, headers = self._answer(request, violations)
        except _Reply as reply:
            status, headers = reply.status, reply.headers
            body = {"error": {"code": reply.code, "message": reply.message}}
        response = _json_response(status, body, headers, request)
        self.log.add(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string.decode("latin-1"),
                headers=dict(request.headers),
                body=request.get_data(),
                status=status,
                violations=tuple(violations),
            )
        )
        return response

    def _answer(self, request: Request, violations: list[str]) -> tuple[int, Any, dict[str, str]]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _Reply(401, "unauthorized", "the bearer token is missing, unknown or revoked")
        if violations:
            raise _Reply(400, "invalid_request", "; ".join(violations))
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            code = "rate_limited" if fault.status == 429 else "injected_fault"
            raise _Reply(fault.status, code, f"injected {fault.status}", headers)
        self._take_token(self.token)
        route = self._routes.match(request.method, request.path)
        if route is None:
            raise _Reply(404, "not_found", f"{request.method} {request.path} is not an operation")
        template, args = route
        with self._lock:
            return 200, self._serve(template, args, request.args), {}

    def _serve(self, template: str, args: Mapping[str, str], query: Mapping[str, str]) -> Any:
        limit = _limit(query.get("limit"))
        if template == "/v1/clients":
            clients = sorted(self._clients.values(), key=lambda c: c.id)
            after = _decode_cursor(query.get("cursor"), "clients")
            if after is not None:
                clients = [c for c in clients if c.id > after[0]]
            shown = clients[:limit]
            return {
                "data": [c.json() for c in shown],
                "next_cursor": _encode_cursor("clients", shown[-1].id)
                if len(clients) > limit
                else None,
            }
        if template == "/v1/clients/{client_id}":
            client = self._clients.get(args["client_id"])
            if client is None:
                raise _Reply(404, "not_found", f"no client {args['client_id']}")
            return client.json()
        if template == "/v1/close-statuses":
            return {"data": [{"name": s} for s in self._statuses]}
        if template == "/v1/closes":
            closes = sorted(self._closes.values(), key=lambda c: (c.updated_at, c.id))
            since = query.get("updated_since")
            if since is not None:
                try:
                    since_at = datetime.fromisoformat(since)
                except ValueError:
                    since_at = None
                if since_at is None or since_at.tzinfo is None:
                    raise _Reply(400, "invalid_request", f"updated_since {since!r} is not RFC 3339")
                closes = [c for c in closes if c.updated_at >= since_at]
            if query.get("period") is not None:
                closes = [c for c in closes if c.period == query["period"]]
            after = _decode_cursor(query.get("cursor"), "closes")
            if after is not None:
                closes = [c for c in closes if (format_time(c.updated_at), c.id) > tuple(after)]
            page = closes[:limit]
            more = len(closes) > limit
            last = page[-1] if page else None
            return {
                "data": [c.summary() for c in page],
                "next_cursor": _encode_cursor("closes", format_time(last.updated_at), last.id)
                if more and last
                else None,
            }
        close = self._closes.get(args["close_id"])
        if close is None:
            raise _Reply(404, "not_found", f"no close {args['close_id']}")
        return close.detail()

    def _take_token(self, token: str) -> None:
        """Token bucket per bearer token: `rate_limit_per_minute` burst, refilled evenly."""
        rate = self._per_minute / 60.0
        with self._lock:
            now = self._monotonic()
            tokens, at = self._buckets.get(token, (float(self._per_minute), now))
            tokens = min(float(self._per_minute), tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[token] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / rate)
                raise _Reply(
                    429,
                    "rate_limited",
                    f"rate limit of {self._per_minute} requests per minute exceeded; "
                    f"try again in {wait} s",
                    {"Retry-After": str(wait)},
                )
            self._buckets[token] = (tokens - 1.0, now)

    # ------------------------------------------------------------------ the contract

    def _check(self, request: Request) -> list[str]:
        with self._lock:
            if self._contract is None:
                self._contract = OpenAPIContract.from_file(CONTRACT_PATH)
                self._declared, self._reject_unknown = _declared_query_parameters()
            contract, declared = self._contract, self._declared or {}
        found = contract.violations(request)
        route = self._routes.match(request.method, request.path)
        if self._reject_unknown and route is not None:
            allowed = declared.get((request.method, route[0]), frozenset())
            for name in sorted(set(request.args) - allowed):
                found.append(
                    f"unknown query parameter {name!r} (the contract lists: "
                    f"{', '.join(sorted(allowed)) or 'none'})"
                )
        return found


# --------------------------------------------------------------------------- helpers


def _routes() -> _Routes:
    routes = _Routes()
    for template in (
        "/v1/clients",
        "/v1/clients/{client_id}",
        "/v1/close-statuses",
        "/v1/closes",
        "/v1/closes/{close_id}",
    ):
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        routes.items.append(("GET", re.compile(f"^{pattern}$"), template))
    return routes


def _declared_query_parameters() -> tuple[dict[tuple[str, str], frozenset[str]], bool]:
    """(method, path) -> the query parameter names the contract declares; and whether the
    contract says unknown ones are refused."""
    import yaml

    spec = yaml.safe_load(CONTRACT_PATH.read_text())
    shared = spec.get("components", {}).get("parameters", {})
    declared: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method == "parameters" or not isinstance(operation, dict):
                continue
            names = set()
            for param in [*item.get("parameters", []), *operation.get("parameters", [])]:
                if "$ref" in param:
                    param = shared[param["$ref"].rsplit("/", 1)[1]]
                if param.get("in") == "query":
                    names.add(param["name"])
            declared[(method.upper(), path)] = frozenset(names)
    return declared, spec.get("x-unknown-query-parameters") == "reject"


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise _Reply(400, "invalid_request", f"limit must be 1..100, not {value!r}")
    return limit


def _encode_cursor(kind: str, *position: str) -> str:
    raw = json.dumps([kind, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str | None, kind: str) -> list[str] | None:
    if value is None:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        decoded = None
    if not isinstance(decoded, list) or not decoded or decoded[0] != kind:
        raise _Reply(400, "invalid_request", f"cursor {value!r} was not issued for this list")
    return [str(p) for p in decoded[1:]]


def _json_response(
    status: int, body: Any, headers: Mapping[str, str], request: Request
) -> Response:
    data = json.dumps(body).encode()
    response = Response(status=status, headers=dict(headers), content_type="application/json")
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        data = gzip.compress(data)
        response.headers["Content-Encoding"] = "gzip"
    response.set_data(data)
    return response
