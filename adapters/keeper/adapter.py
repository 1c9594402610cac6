"""The close-checklist source (PracticeSource): lists closes changed since the cursor, re-fetches
the closes pending pushes name, and diffs each close against its snapshot to emit phases: a close
status reached, a section done, and the reopening of either."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from adapters.keeper.client import EVENT_TYPES, CloseChecklistClient, format_time, parse_event
from adapters.keeper.errors import MalformedEvent, MalformedRecord
from adapters.keeper.translate import (
    CloseSnapshot,
    CloseView,
    client_from_json,
    close_from_json,
    decode_snapshot,
    encode_snapshot,
    engagement_from_close,
    parse_time,
)
from connector.domain.errors import RejectedError
from connector.domain.ids import ClientKey, SourceId, WorkItemKey
from connector.domain.model import (
    Client,
    Engagement,
    PhaseCompletion,
    TriggerKind,
    normalise_status,
)
from connector.ports import Delivery, PollBatch, PollContext


class CloseChecklistSource:
    """Cursor = the latest `updated_at` listed (RFC 3339); each poll re-reads an overlap window
    before it, and the snapshots make re-reading harmless."""

    def __init__(
        self,
        source_id: str,
        client: CloseChecklistClient,
        *,
        overlap: timedelta = timedelta(minutes=5),
        backfill_from: datetime | None = None,
    ) -> None:
        """`backfill_from` bounds the first poll (no cursor yet) to closes changed since then,
        so connecting a firm with years of finished closes does not report each as new."""
        self._id = SourceId(source_id)
        self._client = client
        self._overlap = overlap
        self._backfill_from = backfill_from

    @property
    def source_id(self) -> SourceId:
        return self._id

    # ------------------------------------------------------------------ poll

    def poll(self, context: PollContext) -> PollBatch:
        warnings: list[str] = []
        statuses = self._client.close_statuses()
        cursor = self._read_cursor(context.cursor, warnings)
        since = cursor - self._overlap if cursor is not None else self._backfill_from

        seen: dict[str, Any] = {}  # close id -> its JSON (summary or full close)
        latest = cursor
        for raw in self._client.list_closes(updated_since=since):
            try:
                close_id = str(raw["id"])
                updated = parse_time(raw.get("updated_at"), f"close {close_id}: updated_at")
            except (KeyError, TypeError, MalformedRecord) as exc:
                warnings.append(f"skipped a listed close that does not follow the contract: {exc}")
                continue
            seen[close_id] = raw
            latest = updated if latest is None else max(latest, updated)

        handled_by_close, failed = self._fetch_delivered(context.deliveries, seen)
        clients = self._clients(warnings) if seen else {}
        memory = context.memory.recall(list(seen))
        out = _Batch()
        for close_id in sorted(seen):
            problem = self._one(seen[close_id], memory.get(close_id), statuses, clients, out)
            if problem is not None:
                warnings.append(problem)
                for delivery_id in handled_by_close.pop(close_id, []):
                    failed[delivery_id] = f"delivery {delivery_id}: {problem}"
        return PollBatch(
            engagements=out.engagements,
            phases=out.phases,
            cursor=format_time(latest) if latest is not None else None,
            clients=list(out.clients.values()),
            warnings=[*warnings, *out.warnings],
            remember=out.remember,
            handled=sorted(d for ids in handled_by_close.values() for d in ids),
            failed=failed,
        )

    def _fetch_delivered(
        self, deliveries: Sequence[Delivery], seen: dict[str, Any]
    ) -> tuple[dict[str, list[int]], dict[int, str]]:
        """Add the closes pending pushes name to `seen`; return the delivery ids by close id,
        and the deliveries that cannot be acted on with the reason."""
        handled: dict[str, list[int]] = {}
        failed: dict[int, str] = {}
        missing: dict[str, str] = {}
        for delivery in deliveries:
            where = f"delivery {delivery.id} ({delivery.topic} {delivery.resource})"
            if delivery.topic not in EVENT_TYPES:
                failed[delivery.id] = (
                    f"{where}: topic {delivery.topic!r} is not one this source acts on "
                    f"({', '.join(EVENT_TYPES)})"
                )
                continue
            try:
                event = parse_event(delivery.body)
            except MalformedEvent as exc:
                failed[delivery.id] = f"{where}: malformed body: {exc}"
                continue
            close_id = delivery.resource or event.resource
            # the pushed data may be stale or out of order: act on the close's current state,
            # which the list already holds when the close changed inside the window
            if close_id not in seen and close_id not in missing:
                try:
                    detail = self._client.get_close(close_id)
                except RejectedError as exc:
                    missing[close_id] = str(exc)
                else:
                    if detail is None:
                        missing[close_id] = f"close {close_id} does not exist (deleted?)"
                    else:
                        seen[close_id] = detail
            if close_id in missing:
                failed[delivery.id] = f"{where}: {missing[close_id]}"
            else:
                handled.setdefault(close_id, []).append(delivery.id)
        return handled, failed

    def _one(
        self,
        raw: Any,
        remembered: str | None,
        statuses: Sequence[str],
        clients: Mapping[str, Client],
        out: _Batch,
    ) -> str | None:
        """Translate and diff one close into `out`; the reason it was skipped, if it was."""
        try:
            close = close_from_json(raw)
        except MalformedRecord as exc:
            return f"skipped a close that does not follow the contract: {exc}"
        client = clients.get(close.client_id)
        if client is None:
            return (
                f"skipped close {close.id} ({close.period}): its client {close.client_id} is "
                "not among the clients /v1/clients lists"
            )
        previous: CloseSnapshot | None = None
        if remembered is not None:
            try:
                previous = decode_snapshot(remembered)
            except ValueError as exc:
                out.warnings.append(
                    f"close {close.id}: the remembered snapshot is unreadable ({exc}); "
                    "treating the close as new"
                )
        phases, snapshot, warnings = transitions(self._id, close, previous, statuses)
        out.phases.extend(phases)
        out.warnings.extend(warnings)
        encoded = encode_snapshot(snapshot)
        if encoded != remembered:
            out.remember[close.id] = encoded
        out.engagements.append(engagement_from_close(self._id, close, client))
        out.clients[client.key] = client
        return None

    def _clients(self, warnings: list[str]) -> dict[str, Client]:
        found: dict[str, Client] = {}
        for raw in self._client.list_clients():
            try:
                client = client_from_json(self._id, raw)
            except MalformedRecord as exc:
                warnings.append(f"skipped a client that does not follow the contract: {exc}")
                continue
            found[client.key] = client
        return found

    def _read_cursor(self, cursor: str | None, warnings: list[str]) -> datetime | None:
        if cursor is None:
            return None
        try:
            return parse_time(cursor, "the stored cursor")
        except MalformedRecord as exc:
            warnings.append(f"{exc}; reading every close again (snapshots prevent repeats)")
            return None

    # ------------------------------------------------------------------ lookups

    def get_engagement(self, key: WorkItemKey) -> Engagement | None:
        raw = self._client.get_close(key)
        if raw is None:
            return None
        close = close_from_json(raw)
        client_raw = self._client.get_client(close.client_id)
        if client_raw is None:
            raise MalformedRecord(
                f"close {close.id} names client {close.client_id}, which does not exist"
            )
        return engagement_from_close(self._id, close, client_from_json(self._id, client_raw))


@dataclass
class _Batch:
    engagements: list[Engagement] = field(default_factory=list)
    phases: list[PhaseCompletion] = field(default_factory=list)
    clients: dict[ClientKey, Client] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    remember: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the diff


def status_completion(at: datetime) -> str:
    return at.isoformat()


def section_completion(close: CloseView, done_at: datetime | None) -> str:
    return f"{close.id}@{done_at.isoformat() if done_at is not None else close.period}"


def reopened_completion(original: str, at: datetime) -> str:
    """Distinct from the original completion: the core stores phases once per natural key
    (which ignores `reopened`), so reusing it verbatim would drop the reopening."""
    return f"{original}|reopened@{at.isoformat()}"


def transitions(
    source: SourceId,
    close: CloseView,
    previous: CloseSnapshot | None,
    statuses: Sequence[str],
) -> tuple[list[PhaseCompletion], CloseSnapshot, list[str]]:
    """Phases between what was remembered of a close and its current state (pure).

    First sight is a transition from nothing. A move to an earlier status of the firm's ordered
    list reopens the status left; a done section that is no longer done is reopened."""
    previous = previous or CloseSnapshot()
    position = {normalise_status(s): n for n, s in enumerate(statuses)}
    work_item = WorkItemKey(close.id)
    phases: list[PhaseCompletion] = []
    warnings: list[str] = []

    def phase(
        kind: TriggerKind, name: str, at: datetime, completion: str, reopened: bool = False
    ) -> None:
        phases.append(
            PhaseCompletion(source, work_item, kind, name, at, completion, reopened=reopened)
        )

    status, changed_at = previous.status, previous.status_changed_at
    now_at = close.status_changed_at
    if normalise_status(close.status) not in position:
        warnings.append(
            f"close {close.id} ({close.period}) is in status {close.status!r}, which is not one "
            f"of the firm's close statuses ({', '.join(statuses)}): no phase emitted"
        )
    elif (
        status is None
        or normalise_status(status) != normalise_status(close.status)
        or changed_at != status_completion(now_at)
    ):
        before = position.get(normalise_status(status)) if status else None
        if (
            status
            and changed_at
            and before is not None
            and position[normalise_status(close.status)] < before
        ):
            phase(
                TriggerKind.CLOSE_STATUS,
                status,
                now_at,
                reopened_completion(changed_at, now_at),
                reopened=True,
            )
        phase(TriggerKind.CLOSE_STATUS, close.status, now_at, status_completion(now_at))
        status, changed_at = close.status, status_completion(now_at)

    sections: dict[str, str] = {}
    for name, done_at in close.done_sections.items():
        completion = section_completion(close, done_at)
        sections[name] = completion
        if previous.sections.get(name) != completion:
            phase(TriggerKind.SECTION_DONE, name, done_at or close.updated_at, completion)
    for name, completion in previous.sections.items():
        if name in close.done_sections:
            continue
        if name in close.sections:
            phase(
                TriggerKind.SECTION_DONE,
                name,
                close.updated_at,
                reopened_completion(completion, close.updated_at),
                reopened=True,
            )
        # a section deleted from the close is forgotten without a phase
    return phases, CloseSnapshot(status, changed_at, sections), warnings
