"""A source fed by pushes: signed phase-event webhooks and CSV imports land in the inbox; each
poll turns the pending ones into engagements and phases (same dedupe and mapping path as Karbon)."""

from __future__ import annotations

import json

from adapters.generic.events import BadEvent, parse_event, to_domain
from connector.domain.ids import SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, PhaseCompletion
from connector.ports import PollBatch, PollContext


class PushedPhaseSource:
    def __init__(self, source_id: str, currency: str) -> None:
        self._id = SourceId(source_id)
        self._currency = currency

    @property
    def source_id(self) -> SourceId:
        return self._id

    def poll(self, context: PollContext) -> PollBatch:
        clients: dict[str, Client] = {}
        engagements: dict[str, Engagement] = {}
        phases: list[PhaseCompletion] = []
        handled: list[int] = []
        failed: dict[int, str] = {}
        remember: dict[str, str] = {}
        for delivery in context.deliveries:
            try:
                event = parse_event(json.loads(delivery.body))
                # inside the try: an amount the currency cannot hold (10.005 USD) fails only here
                client, engagement, phase = to_domain(self._id, event, self._currency)
            except (BadEvent, ValueError) as exc:
                failed[delivery.id] = f"phase event {delivery.resource}: {exc}"
                continue
            clients[client.key] = client
            engagements[engagement.key] = engagement  # later deliveries carry newer details
            phases.append(phase)
            remember[engagement.key] = event.work_item.model_dump_json(exclude_none=True)
            handled.append(delivery.id)
        return PollBatch(
            engagements=list(engagements.values()),
            phases=phases,
            cursor=context.cursor,
            clients=list(clients.values()),
            remember=remember,
            handled=handled,
            failed=failed,
        )

    def get_engagement(self, key: WorkItemKey) -> Engagement | None:
        return None  # a push source knows only what was pushed; the store has it
