"""The documented phase event (docs/phase-events.md): one JSON object per completed phase.

Webhook deliveries and CSV rows both become this event before they enter the inbox, so they
share one dedupe and mapping path with Karbon."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import (
    Client,
    Engagement,
    EngagementKind,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money, is_known_currency

MAX_EVENT_BYTES = 64 * 1024


def _decimal_text(value: str) -> str:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'{value!r} is not a decimal amount such as "3000.00"') from None
    if not amount.is_finite():  # Decimal takes "NaN" and "Infinity"; Money does not
        raise ValueError(f'{value!r} is not a decimal amount such as "3000.00"')
    return value


def _known_currency(value: str) -> str:
    if not is_known_currency(value):
        raise ValueError(f"{value!r} is not an ISO 4217 currency code such as USD")
    return value


Amount = Annotated[str, AfterValidator(_decimal_text)]
Key = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkItemPayload(_Strict):
    key: Key
    title: Annotated[str, Field(min_length=1, max_length=500)]
    client_key: Key
    client_name: Annotated[str, Field(min_length=1, max_length=500)]
    ledger_customer_id: Key | None = None
    work_type: str | None = None
    template: str | None = None
    fee: Amount | None = None  # a string, never a float: "3000.00"
    currency: (
        Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_known_currency)] | None
    ) = None
    kind: Literal["work_item", "recurring_close"] = "work_item"
    period: Annotated[str, Field(pattern=r"^\d{4}-(\d{2}|Q[1-4])$")] | None = None
    start_date: date | None = None
    due_date: date | None = None


class PhasePayload(_Strict):
    status: str | None = None
    secondary: str | None = None
    close_status: str | None = None
    section_done: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PhasePayload:
        named = [n for n in ("status", "close_status", "section_done") if getattr(self, n)]
        if len(named) != 1:
            raise ValueError(
                "give exactly one of status (with optional secondary), close_status, section_done"
            )
        if self.secondary and not self.status:
            raise ValueError("secondary goes with status")
        return self


class PhaseEvent(_Strict):
    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    type: Literal["phase.completed", "phase.reopened"] = "phase.completed"
    occurred_at: AwareDatetime
    work_item: WorkItemPayload
    phase: PhasePayload


class BadEvent(ValueError):
    """The payload is not a valid phase event; the message names each bad field."""


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(event)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_event(data: Any) -> PhaseEvent:
    try:
        return PhaseEvent.model_validate(data)
    except ValidationError as exc:
        raise BadEvent(describe(exc)) from None


def parse_event_body(body: bytes) -> PhaseEvent:
    if len(body) > MAX_EVENT_BYTES:
        raise BadEvent(f"the event is {len(body)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadEvent(f"the body is not JSON: {exc}") from None
    return parse_event(data)


def event_json(event: PhaseEvent) -> str:
    return event.model_dump_json(exclude_none=True)


def row_event_id(row: dict[str, str]) -> str:
    """A stable id for a CSV row with no event_id: the same row imported twice dedupes."""
    canonical = json.dumps(sorted((k, v) for k, v in row.items() if v), separators=(",", ":"))
    return "row-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def to_domain(
    source: SourceId, event: PhaseEvent, firm_currency: str
) -> tuple[Client, Engagement, PhaseCompletion]:
    item = event.work_item
    fee = Money(Decimal(item.fee), item.currency or firm_currency) if item.fee else None
    client = Client(
        source=source,
        key=ClientKey(item.client_key),
        name=item.client_name,
        ledger_customer_id=LedgerCustomerId(item.ledger_customer_id)
        if item.ledger_customer_id
        else None,
    )
    engagement = Engagement(
        source=source,
        key=WorkItemKey(item.key),
        client_key=client.key,
        client_name=client.name,
        title=item.title,
        kind=EngagementKind(item.kind),
        work_type=item.work_type,
        template=item.template,
        fee=fee,
        period=item.period,
        start_date=item.start_date,
        due_date=item.due_date,
        ledger_customer_id=client.ledger_customer_id,
    )
    phase = event.phase
    if phase.close_status:
        kind, name = TriggerKind.CLOSE_STATUS, phase.close_status
    elif phase.section_done:
        kind, name = TriggerKind.SECTION_DONE, phase.section_done
    else:
        kind, name = TriggerKind.STATUS, phase.status or ""
    at = event.occurred_at.astimezone(UTC)
    completion = PhaseCompletion(
        source=source,
        work_item=engagement.key,
        kind=kind,
        phase=name,
        completed_at=at,
        completion=at.isoformat(),  # a re-sent event (same time) dedupes; a new one does not
        secondary=phase.secondary,
        reopened=event.type == "phase.reopened",
    )
    return client, engagement, completion
