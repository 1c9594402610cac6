"""Webhook receivers: verify the raw body before parsing, store the delivery in the inbox
(deduplicated), answer at once; the next poll acts on it. Nothing is processed inline, so a slow
vendor API never makes a delivery time out, and a crash after the answer loses nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.signing import BadSignature
from connector.domain.ids import SourceId
from connector.ports import Clock, UnitOfWorkFactory

log = structlog.get_logger("milestone_sync.webhooks")

MAX_BODY_BYTES = 256 * 1024  # vendors send thin payloads; anything bigger is refused unread


class BadPayload(ValueError):
    """The body is signed correctly but is not what the contract says; the message says why."""


@dataclass(frozen=True)
class Accepted:
    topic: str
    resource: str
    dedupe_key: str
    body: str


class Receiver(Protocol):
    """Checks one source's deliveries: raises BadSignature or BadPayload, else says what to
    store."""

    def accept(self, headers: Mapping[str, str], body: bytes, now: datetime) -> Accepted: ...


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
    def store(source: str, accepted: Accepted, now: datetime) -> bool:
        with uow() as unit:
            new = unit.inbox.add(
                SourceId(source),
                accepted.topic,
                accepted.resource,
                accepted.dedupe_key,
                accepted.body,
                now,
            )
            unit.commit()
        return new

    async def receive(request: Request) -> JSONResponse:
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
            accepted = receiver.accept(request.headers, body, now)
        except BadSignature as exc:
            log.warning("webhook.bad_signature", source=source, reason=str(exc))
            return JSONResponse({"error": "invalid signature"}, 401)
        except BadPayload as exc:
            log.warning("webhook.bad_payload", source=source, reason=str(exc))
            return JSONResponse({"error": str(exc)}, 400)
        new = await run_in_threadpool(store, source, accepted, now)
        log.info(
            "webhook.received" if new else "webhook.duplicate",
            source=source,
            topic=accepted.topic,
            resource=accepted.resource,
        )
        if new and on_delivery is not None:
            on_delivery(source)
        return JSONResponse({"status": "accepted" if new else "duplicate"})

    return [Route("/webhooks/{source_id}", receive, methods=["POST"])]


def create_app(routes: list[Route]) -> Starlette:
    return Starlette(routes=routes)
