"""Webhook receivers: verify the raw body before parsing, store each event the delivery carries
in the inbox (deduplicated), answer at once; the next poll acts on it. Nothing is processed
inline, so a slow vendor API never makes a delivery time out, and a crash after the answer loses
nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.signing import BadSignature
from connector.domain.ids import SourceId
from connector.ports import Clock, UnitOfWorkFactory

log = structlog.get_logger("milestone_sync.webhooks")

MAX_BODY_BYTES = 256 * 1024  # vendors send thin payloads; anything bigger is refused unread
# the inbox's column sizes (adapters/store/tables.py InboxRow)
MAX_TOPIC = 64
MAX_KEY = 255


class BadPayload(ValueError):
    """The body is signed correctly but is not what the contract says; the message says why."""


@dataclass(frozen=True)
class Accepted:
    """One event of a verified delivery, as the inbox keeps it."""

    topic: str
    resource: str
    dedupe_key: str
    body: str


class Receiver(Protocol):
    """Checks one source's deliveries: raises BadSignature or BadPayload, else says what to
    store: one entry per event the delivery carries (QuickBooks and Xero batch them), none for
    a probe (Xero's intent-to-receive) or when every event is about someone else."""

    def accept(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Sequence[Accepted]: ...


@dataclass(frozen=True)
class Outcome:
    """What became of one request a receiver judged: 200 (stored, or nothing to store), 400
    (bad payload, `error` says why) or 401 (bad signature)."""

    status: int
    new: tuple[Accepted, ...] = ()
    duplicates: tuple[Accepted, ...] = ()
    error: str | None = None


@runtime_checkable
class ShapesAnswers(Protocol):
    """A receiver whose vendor wants a particular answer (Xero: no body at all)."""

    def answer(self, outcome: Outcome) -> Response: ...


def default_answer(outcome: Outcome) -> Response:
    if outcome.status == 401:
        return JSONResponse({"error": "invalid signature"}, 401)  # no hint for a forger
    if outcome.error is not None:
        return JSONResponse({"error": outcome.error}, outcome.status)
    events = len(outcome.new) + len(outcome.duplicates)
    status = "accepted" if outcome.new else "duplicate" if outcome.duplicates else "ignored"
    if events == 1:
        return JSONResponse({"status": status})
    return JSONResponse(
        {"status": status, "accepted": len(outcome.new), "duplicate": len(outcome.duplicates)}
    )


def dedupe_key(*parts: object) -> str:
    """Join the parts that name one event; hashed when longer than the inbox keeps."""
    key = ":".join(str(p) for p in parts)
    if len(key) <= MAX_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name whatever its case (starlette's headers are case-insensitive already;
    plain dicts, as tests and other servers pass them, are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _oversized(accepted: Accepted) -> str | None:
    if not accepted.topic or len(accepted.topic) > MAX_TOPIC:
        return f"event type {accepted.topic[:80]!r} is empty or over {MAX_TOPIC} characters"
    if not accepted.resource or len(accepted.resource) > MAX_KEY:
        return f"resource id {accepted.resource[:80]!r} is empty or over {MAX_KEY} characters"
    if not accepted.dedupe_key or len(accepted.dedupe_key) > MAX_KEY:
        return f"event id {accepted.dedupe_key[:80]!r} is empty or over {MAX_KEY} characters"
    return None


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_routes(
    receivers: Mapping[str, Receiver],
    uow: UnitOfWorkFactory,
    clock: Clock,
    *,
    on_delivery: Callable[[str], None] | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> list[Route]:
    """POST /webhooks/{source_id}. `on_delivery(source)` is called once per newly stored event
    (a nudge for the poller; duplicates and refusals call nothing)."""

    def store(source: str, events: Sequence[Accepted], now: datetime) -> list[bool]:
        # one transaction per request: a batch is stored whole or not at all, so the vendor's
        # retry after a failure finds nothing half-kept
        with uow() as unit:
            new = [
                unit.inbox.add(SourceId(source), e.topic, e.resource, e.dedupe_key, e.body, now)
                for e in events
            ]
            unit.commit()
        return new

    def answer(receiver: Receiver, outcome: Outcome) -> Response:
        if isinstance(receiver, ShapesAnswers):
            return receiver.answer(outcome)
        return default_answer(outcome)

    async def receive(request: Request) -> Response:
        source = request.path_params["source_id"]
        receiver = receivers.get(source)
        if receiver is None:
            return JSONResponse({"error": f"no webhook source named {source!r}"}, 404)
        try:
            body = await _read_body(request, max_body)
        except _TooLarge:
            log.warning("webhook.too_large", source=source, limit=max_body)
            return JSONResponse({"error": f"body over {max_body} bytes"}, 413)
        now = clock.now()
        try:
            events = list(receiver.accept(request.headers, body, now))
            for event in events:
                if problem := _oversized(event):
                    raise BadPayload(problem)
        except BadSignature as exc:
            log.warning("webhook.bad_signature", source=source, reason=str(exc))
            return answer(receiver, Outcome(401, error=str(exc)))
        except BadPayload as exc:
            log.warning("webhook.bad_payload", source=source, reason=str(exc))
            return answer(receiver, Outcome(400, error=str(exc)))
        if not events:
            log.info("webhook.nothing_to_store", source=source)
            return answer(receiver, Outcome(200))
        stored = await run_in_threadpool(store, source, events, now)
        new: list[Accepted] = []
        duplicates: list[Accepted] = []
        for event, is_new in zip(events, stored, strict=True):
            (new if is_new else duplicates).append(event)
            log.info(
                "webhook.received" if is_new else "webhook.duplicate",
                source=source,
                topic=event.topic,
                resource=event.resource,
            )
        if on_delivery is not None:
            for _ in new:
                on_delivery(source)
        return answer(receiver, Outcome(200, tuple(new), tuple(duplicates)))

    return [Route("/webhooks/{source_id}", receive, methods=["POST"])]


def create_app(routes: list[Route]) -> Starlette:
    return Starlette(routes=routes)
