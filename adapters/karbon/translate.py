"""Karbon JSON <-> domain values, and the snapshot we keep of each watched work item.

Karbon spells primary statuses two ways ("In Progress" in lists and filters, "InProgress" in
detail responses); everything here is compared through `normalise_status` and shown spaced."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, EngagementKind, normalise_status
from connector.domain.money import Money

PRIMARY_STATUSES = ("Planned", "Ready To Start", "In Progress", "Waiting", "Completed")
_SPACED = {normalise_status(s): s for s in PRIMARY_STATUSES}
# how far along a work item is; Waiting sits beside In Progress (work goes back and forth)
_RANK = {"planned": 0, "readytostart": 1, "inprogress": 2, "waiting": 2, "completed": 3}
COMPLETED = "Completed"


def spaced_primary(value: str | None) -> str | None:
    """The list spelling ('In Progress') of a primary status, whichever way it came."""
    if value is None:
        return None
    return _SPACED.get(normalise_status(value), value)


def is_known_primary(value: str | None) -> bool:
    return normalise_status(value) in _SPACED


def primary_rank(value: str | None) -> int:
    return _RANK.get(normalise_status(value), -1)


def parse_time(value: Any) -> datetime | None:
    """Karbon datetimes ('2022-02-01T00:00:00Z', sometimes with 7 fractional digits)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Python takes at most 6 fractional digits
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _date(value: Any) -> date | None:
    parsed = parse_time(value)
    return parsed.date() if parsed else None


@dataclass(frozen=True)
class WorkItemSnapshot:
    """What we last saw of one work item: its status, when we saw it get there, and a digest
    of the summary fields so an unchanged item costs no detail call."""

    primary: str
    secondary: str | None
    completed: str | None  # CompletedDate as Karbon gave it
    since: str  # the completion id of the current status (ISO time it was first seen)
    digest: str
    gone: bool = False

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def decode(text: str) -> WorkItemSnapshot | None:
        try:
            data = json.loads(text)
            return WorkItemSnapshot(**data)
        except (ValueError, TypeError):
            return None

    def same_status(self, primary: str, secondary: str | None, completed: str | None) -> bool:
        return (
            normalise_status(self.primary) == normalise_status(primary)
            and normalise_status(self.secondary) == normalise_status(secondary)
            and (self.completed or None) == (completed or None)
        )


def summary_digest(item: dict[str, Any]) -> str:
    """A digest of the fields a list row and a detail response share (not FeeSettings)."""
    fields = (
        normalise_status(item.get("PrimaryStatus")),
        normalise_status(item.get("SecondaryStatus")),
        item.get("CompletedDate") or "",
        item.get("Title") or "",
        item.get("ClientKey") or "",
        item.get("WorkType") or "",
        item.get("WorkTemplateKey") or "",
        (item.get("StartDate") or "")[:10],
        (item.get("DueDate") or "")[:10],
    )
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:16]


def fee_of(detail: dict[str, Any], currency: str) -> tuple[Money | None, str | None]:
    """(fee, problem): a FixedFee amount as exact Money; other fee types have no fee."""
    settings = detail.get("FeeSettings") or {}
    fee_type = settings.get("FeeType")
    value = settings.get("FeeValue")
    if fee_type != "FixedFee" or value is None:
        return None, None
    try:
        # JSON numbers arrive as float or int; str() of the parsed value keeps what was sent
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None, f"FeeSettings.FeeValue {value!r} is not a number"
    return Money.rounded(amount, currency), None


def client_from(source: SourceId, key: str, name: str, record: dict[str, Any] | None) -> Client:
    external = None
    if record is not None:
        # Karbon documents ExternalKey (the QBO customer / Xero contact id it syncs with) as a
        # filter; we read it when the record carries it. A config override always wins.
        external = record.get("ExternalKey") or None
        name = record.get("FullName") or record.get("Name") or name
    return Client(
        source=source,
        key=ClientKey(key),
        name=name,
        ledger_customer_id=LedgerCustomerId(str(external)) if external else None,
    )


def engagement_from(
    source: SourceId, detail: dict[str, Any], client: Client, fee: Money | None
) -> Engagement:
    return Engagement(
        source=source,
        key=WorkItemKey(str(detail["WorkItemKey"])),
        client_key=client.key,
        client_name=client.name,
        title=str(detail.get("Title") or detail["WorkItemKey"]),
        kind=EngagementKind.WORK_ITEM,
        work_type=detail.get("WorkType") or None,
        template=detail.get("WorkTemplateKey") or None,
        fee=fee,
        start_date=_date(detail.get("StartDate")),
        due_date=_date(detail.get("DueDate")),
        ledger_customer_id=client.ledger_customer_id,
    )
