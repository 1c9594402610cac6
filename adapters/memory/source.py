"""An in-memory practice source: engagements and an append-only feed of phase completions.

It can also load a small TOML file of work items (see `load_work_file`), so a newcomer can run
`plan` and `sync --once` with no credentials.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from connector.domain.errors import ConfigError, TransientError
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import (
    Client,
    Engagement,
    EngagementKind,
    PhaseCompletion,
    TriggerKind,
)
from connector.domain.money import Money
from connector.ports import PollBatch, PollContext


class MemorySource:
    """Cursor = number of feed entries already returned."""

    def __init__(self, source_id: str = "memory") -> None:
        self._id = SourceId(source_id)
        self._engagements: dict[WorkItemKey, Engagement] = {}
        self._clients: dict[ClientKey, Client] = {}
        self._feed: list[tuple[WorkItemKey, PhaseCompletion | None]] = []
        self.unavailable = False
        # sandbox only: saved payment methods a work file declares for the in-memory gateway
        self.payment_methods: list[dict[str, str]] = []

    @property
    def source_id(self) -> SourceId:
        return self._id

    def add_engagement(self, engagement: Engagement) -> None:
        self._engagements[engagement.key] = engagement
        self._clients.setdefault(
            engagement.client_key,
            Client(
                self._id,
                engagement.client_key,
                engagement.client_name,
                engagement.ledger_customer_id,
            ),
        )
        self._feed.append((engagement.key, None))

    def complete(
        self,
        work_item: str,
        phase: str,
        at: datetime,
        *,
        kind: TriggerKind = TriggerKind.STATUS,
        secondary: str | None = None,
        reopened: bool = False,
    ) -> PhaseCompletion:
        key = WorkItemKey(work_item)
        if key not in self._engagements:
            raise KeyError(f"unknown work item {work_item}")
        completion = PhaseCompletion(
            source=self._id,
            work_item=key,
            kind=kind,
            phase=phase,
            completed_at=at,
            completion=at.isoformat(),
            secondary=secondary,
            reopened=reopened,
        )
        self._feed.append((key, completion))
        return completion

    def poll(self, context: PollContext) -> PollBatch:
        if self.unavailable:
            raise TransientError(f"source {self._id} is unavailable")
        start = int(context.cursor or 0)
        entries = self._feed[start:]
        keys = {key for key, _ in entries}
        engagements = [self._engagements[k] for k in sorted(keys)]
        clients = list({e.client_key: self._clients[e.client_key] for e in engagements}.values())
        phases = [p for _, p in entries if p is not None]
        return PollBatch(
            engagements=engagements, phases=phases, cursor=str(len(self._feed)), clients=clients
        )

    def get_engagement(self, key: WorkItemKey) -> Engagement | None:
        return self._engagements.get(key)

    def ledger_customers(self) -> dict[str, str]:
        """Ledger customer ids the engagements point at, with client names (sandbox seeding)."""
        return {
            str(e.ledger_customer_id): e.client_name
            for e in self._engagements.values()
            if e.ledger_customer_id
        }


def load_work_file(path: Path, source_id: str, currency: str) -> MemorySource:
    """A MemorySource seeded from a TOML file of work items and the phases they completed.

    ```toml
    [[work_items]]
    key = "WI-1001"
    client = "CL-ACME"
    client_name = "Acme LLC"
    ledger_customer_id = "58"
    title = "2026 Form 1120 - Acme LLC"
    work_type = "Tax Return"
    fee = "3000.00"
    start_date = 2026-11-02
    phases = [
      { status = "In Progress", secondary = "Documents received", at = 2026-11-10T15:00:00Z },
    ]
    ```
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"sources.options.work_file: {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    source = MemorySource(source_id)
    for i, item in enumerate(data.get("work_items", [])):
        where = f"{path}: work_items[{i}]"
        try:
            source.add_engagement(_engagement(item, source_id, currency))
            for phase in item.get("phases", []):
                kind = TriggerKind.STATUS
                name = phase.get("status")
                if "close_status" in phase:
                    kind, name = TriggerKind.CLOSE_STATUS, phase["close_status"]
                elif "section_done" in phase:
                    kind, name = TriggerKind.SECTION_DONE, phase["section_done"]
                at = phase["at"]
                if not isinstance(at, datetime):
                    raise ValueError(
                        "phases[].at must be a TOML datetime such as 2026-11-10T15:00:00Z"
                    )
                source.complete(
                    item["key"],
                    name,
                    at.astimezone(UTC),
                    kind=kind,
                    secondary=phase.get("secondary"),
                    reopened=bool(phase.get("reopened", False)),
                )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    source.payment_methods = [
        {k: str(v) for k, v in method.items()} for method in data.get("payment_methods", [])
    ]
    return source


def _engagement(item: dict[str, Any], source_id: str, currency: str) -> Engagement:
    fee = item.get("fee")
    if isinstance(fee, float):
        raise ValueError('fee must be quoted, e.g. fee = "3000.00"')
    start = item.get("start_date")
    return Engagement(
        source=SourceId(source_id),
        key=WorkItemKey(item["key"]),
        client_key=ClientKey(item["client"]),
        client_name=item.get("client_name", item["client"]),
        title=item["title"],
        kind=EngagementKind(item.get("kind", EngagementKind.WORK_ITEM)),
        work_type=item.get("work_type"),
        template=item.get("template"),
        fee=Money(Decimal(str(fee)), item.get("currency", currency)) if fee is not None else None,
        period=item.get("period"),
        start_date=start if isinstance(start, date) else None,
        ledger_customer_id=LedgerCustomerId(item["ledger_customer_id"])
        if item.get("ledger_customer_id")
        else None,
    )
