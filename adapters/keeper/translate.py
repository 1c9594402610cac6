"""Close-checklist JSON -> domain types (Client, Engagement of kind RECURRING_CLOSE), and the
snapshot of a close kept between polls: its status, when it changed, which sections are done."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.keeper.errors import MalformedRecord
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, EngagementKind

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_PERIOD = re.compile(r"^(?P<year>\d{4})-(?:(?P<month>0[1-9]|1[0-2])|Q(?P<quarter>[1-4]))$")


def period_title(period: str) -> str:
    """'2026-10' -> 'October 2026 close'; '2026-Q4' -> 'Q4 2026 close'."""
    match = _PERIOD.match(period)
    if match is None:
        raise MalformedRecord(f"period {period!r} is neither a month (2026-10) nor a quarter")
    year = match["year"]
    if match["quarter"]:
        return f"Q{match['quarter']} {year} close"
    return f"{MONTHS[int(match['month']) - 1]} {year} close"


def parse_time(value: object, where: str) -> datetime:
    """An RFC 3339 time with a zone, in UTC; MalformedRecord says which field is wrong."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
    raise MalformedRecord(f"{where} is {value!r}, not an RFC 3339 time with a zone")


def _text(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{where}: `{name}` is {value!r}, not a non-empty string")
    return value


# --------------------------------------------------------------------------- clients


def client_from_json(source: SourceId, raw: Any) -> Client:
    if not isinstance(raw, dict):
        raise MalformedRecord(f"a client is {type(raw).__name__}, not an object")
    key = _text(raw, "id", "client")
    where = f"client {key}"
    customer = raw.get("ledger_customer_id")
    if customer is not None and not isinstance(customer, str):
        raise MalformedRecord(f"{where}: `ledger_customer_id` is {customer!r}, not a string")
    return Client(
        source=source,
        key=ClientKey(key),
        name=_text(raw, "name", where),
        ledger_customer_id=LedgerCustomerId(customer) if customer else None,
    )


# --------------------------------------------------------------------------- closes


@dataclass(frozen=True, slots=True)
class CloseView:
    """What the adapter needs of a close, from a summary or a full close alike."""

    id: str
    client_id: str
    period: str
    status: str
    status_changed_at: datetime
    updated_at: datetime
    sections: tuple[str, ...]  # every section's name, in order
    done_sections: Mapping[str, datetime | None]  # done sections -> when (None: not said)


def close_from_json(raw: Any) -> CloseView:
    if not isinstance(raw, dict):
        raise MalformedRecord(f"a close is {type(raw).__name__}, not an object")
    close_id = _text(raw, "id", "close")
    where = f"close {close_id}"
    period = _text(raw, "period", where)
    period_title(period)  # refuses a malformed period here, once
    sections = raw.get("sections")
    if not isinstance(sections, list):
        raise MalformedRecord(f"{where}: `sections` is not a list")
    names: list[str] = []
    done: dict[str, datetime | None] = {}
    open_names: set[str] = set()
    for n, section in enumerate(sections):
        at = f"{where}: sections[{n}]"
        if not isinstance(section, dict):
            raise MalformedRecord(f"{at} is not an object")
        name = _text(section, "name", at)
        total, closed = section.get("tasks_total"), section.get("tasks_done")
        if not isinstance(total, int) or not isinstance(closed, int) or not 0 <= closed <= total:
            raise MalformedRecord(
                f"{at} ({name}): tasks_done={closed!r} of tasks_total={total!r} "
                "are not counts with tasks_done <= tasks_total"
            )
        if name not in names:
            names.append(name)
        if total == 0 or closed < total:
            open_names.add(name)  # a section with no tasks is never done
            continue
        done_at = section.get("done_at")
        when = parse_time(done_at, f"{at} ({name}).done_at") if done_at is not None else None
        # two sections of one name: done when both are, at the later time
        done[name] = max((t for t in (done.get(name), when) if t is not None), default=None)
    return CloseView(
        id=close_id,
        client_id=_text(raw, "client_id", where),
        period=period,
        status=_text(raw, "status", where),
        status_changed_at=parse_time(raw.get("status_changed_at"), f"{where}: status_changed_at"),
        updated_at=parse_time(raw.get("updated_at"), f"{where}: updated_at"),
        sections=tuple(names),
        done_sections={k: v for k, v in done.items() if k not in open_names},
    )


def engagement_from_close(source: SourceId, close: CloseView, client: Client) -> Engagement:
    return Engagement(
        source=source,
        key=WorkItemKey(close.id),
        client_key=client.key,
        client_name=client.name,
        title=period_title(close.period),
        kind=EngagementKind.RECURRING_CLOSE,
        period=close.period,
        ledger_customer_id=client.ledger_customer_id,
    )


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class CloseSnapshot:
    """What was last acted on for one close. `status` is the last status that was in the firm's
    list (an unknown status is warned about, not remembered); `sections` maps each done section
    to the completion it was reported with."""

    status: str | None = None
    status_changed_at: str | None = None
    sections: Mapping[str, str] = field(default_factory=dict)


def encode_snapshot(snapshot: CloseSnapshot) -> str:
    return json.dumps(
        {
            "v": 1,
            "status": snapshot.status,
            "status_changed_at": snapshot.status_changed_at,
            "sections": dict(sorted(snapshot.sections.items())),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_snapshot(text: str) -> CloseSnapshot:
    """The snapshot `encode_snapshot` wrote; ValueError for anything else."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ValueError("not a version-1 close snapshot")
    sections = data.get("sections") or {}
    if not isinstance(sections, dict):
        raise ValueError("close snapshot sections are not an object")
    return CloseSnapshot(
        status=data.get("status"),
        status_changed_at=data.get("status_changed_at"),
        sections={str(k): str(v) for k, v in sections.items()},
    )
