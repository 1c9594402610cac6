"""Karbon as a PracticeSource: phases are transitions of a work item's (PrimaryStatus,
SecondaryStatus), found by diffing each watched work item against the snapshot we keep.

Karbon has no tasks endpoint and no modified-since filter (reference 1.4, 1.7), so:
- webhooks (`Work`, `Contact`) arrive in the inbox; each names a record we fetch fresh, so
  duplicated and out-of-order deliveries are harmless;
- a safety-net sweep lists the statuses that matter (100 per page) and fetches a work item's
  detail (for FeeSettings) only when its list row differs from the snapshot;
- the first poll is a baseline: it records what is already there without billing it, so
  connecting milestone-sync never invoices last year's finished work (unless `backfill_from`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from adapters.karbon.client import KarbonClient
from adapters.karbon.errors import KarbonNotFound
from adapters.karbon.translate import (
    COMPLETED,
    WorkItemSnapshot,
    client_from,
    engagement_from,
    fee_of,
    is_known_primary,
    parse_time,
    primary_rank,
    spaced_primary,
    summary_digest,
)
from connector.domain.errors import RejectedError
from connector.domain.ids import ClientKey, LedgerCustomerId, SourceId, WorkItemKey
from connector.domain.model import Client, Engagement, PhaseCompletion, TriggerKind
from connector.ports import Delivery, PollBatch, PollContext

WORK_TOPICS = {"work", "workitem"}
CONTACT_TOPICS = {"contact", "organization", "clientgroup"}
_BILLED = {"billed", "interimbilled", "draft"}


@dataclass(frozen=True)
class KarbonOptions:
    currency: str
    sweep_statuses: Sequence[str] = (COMPLETED,)
    sweep_every: timedelta = timedelta(minutes=30)  # with webhooks on; 0 = every poll
    backfill_from: datetime | None = None
    webhook_url: str | None = None  # where Karbon should deliver; None = webhooks off
    signing_key: str | None = None
    check_karbon_billing: bool = True


@dataclass(frozen=True)
class _Cursor:
    baseline_done: bool = False
    swept_at: str | None = None

    @staticmethod
    def decode(text: str | None) -> _Cursor:
        if not text:
            return _Cursor()
        try:
            data = json.loads(text)
            return _Cursor(bool(data.get("baseline_done")), data.get("swept_at"))
        except (ValueError, AttributeError):
            return _Cursor()

    def encode(self) -> str:
        return json.dumps({"baseline_done": self.baseline_done, "swept_at": self.swept_at})


@dataclass
class _Poll:
    """What one poll collects before it becomes a PollBatch."""

    context: PollContext
    engagements: dict[str, Engagement] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    phases: list[PhaseCompletion] = field(default_factory=list)
    remember: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    handled: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class KarbonSource:
    def __init__(self, source_id: str, client: KarbonClient, options: KarbonOptions) -> None:
        self._id = SourceId(source_id)
        self.client = client
        self.options = options
        self._secondary_order: dict[str, list[str]] | None = None

    @property
    def source_id(self) -> SourceId:
        return self._id

    # ------------------------------------------------------------------ poll

    def poll(self, context: PollContext) -> PollBatch:
        cursor = _Cursor.decode(context.cursor)
        run = _Poll(context)
        now = context.now
        summaries: dict[str, dict[str, Any]] = {}
        vanished: set[str] = set()
        delivered: dict[str, datetime] = {}

        for delivery in context.deliveries:
            self._take_delivery(delivery, run, delivered)

        swept_at = parse_time(cursor.swept_at)
        sweep_due = (
            not cursor.baseline_done
            or self.options.webhook_url is None
            or swept_at is None
            or now - swept_at >= self.options.sweep_every
        )
        if sweep_due:
            if self.options.webhook_url:
                self._check_subscriptions(run)
            watched = {_norm(s) for s in self.options.sweep_statuses}
            for status in self._sweep_statuses():
                for item in self.client.work_items(f"PrimaryStatus eq '{status}'"):
                    summaries[str(item["WorkItemKey"])] = item
            # items we last saw in a swept status that are no longer listed there moved away
            for key, text in context.memory.recall_all().items():
                if key.startswith("client:") or key in summaries:
                    continue
                snap = WorkItemSnapshot.decode(text)
                if snap and not snap.gone and _norm(snap.primary) in watched:
                    vanished.add(key)

        keys = set(summaries) | vanished | set(delivered)
        snapshots = {
            k: s
            for k, text in context.memory.recall(keys).items()
            if (s := WorkItemSnapshot.decode(text)) is not None
        }
        baseline = not cursor.baseline_done
        for key in sorted(keys):
            summary = summaries.get(key)
            snap = snapshots.get(key)
            if (
                summary is not None
                and key not in delivered
                and snap is not None
                and snap.digest == summary_digest(summary)
            ):
                continue  # unchanged: no detail call
            if baseline and summary is not None and not self._backfills(summary):
                run.remember[key] = self._snapshot(summary, snap, now).encode()
                continue
            try:
                self._examine(key, snap, run, delivered.get(key, now))
            except RejectedError as exc:
                run.warnings.append(f"work item {key}: {exc}")

        if run.phases and self.options.check_karbon_billing:
            self._warn_billed_in_karbon(run)
        new_cursor = _Cursor(
            baseline_done=True,
            swept_at=now.isoformat() if sweep_due else cursor.swept_at,
        )
        return PollBatch(
            engagements=list(run.engagements.values()),
            phases=run.phases,
            cursor=new_cursor.encode(),
            clients=list(run.clients.values()),
            warnings=run.warnings,
            remember=run.remember,
            handled=run.handled,
            failed=run.failed,
        )

    def _take_delivery(
        self, delivery: Delivery, run: _Poll, delivered: dict[str, datetime]
    ) -> None:
        topic = delivery.topic.replace(" ", "").casefold()
        if topic in WORK_TOPICS:
            at = delivered.get(delivery.resource)
            if at is None or delivery.received_at > at:
                delivered[delivery.resource] = delivery.received_at
            run.handled.append(delivery.id)
        elif topic in CONTACT_TOPICS:
            # the client record changed (name, external key): refresh it now
            # Karbon's Contact deliveries also cover organizations and client groups
            client_type = {"organization": "Organization", "clientgroup": "ClientGroup"}.get(topic)
            for kind in (
                [client_type] if client_type else ["Contact", "Organization", "ClientGroup"]
            ):
                record = self.client.client(delivery.resource, kind)
                if record is not None:
                    client = client_from(self._id, delivery.resource, delivery.resource, record)
                    run.clients[client.key] = client
                    run.remember[f"client:{client.key}"] = _encode_client(client, kind)
                    break
            run.handled.append(delivery.id)
        else:
            run.failed[delivery.id] = (
                f"Karbon delivery {delivery.id} has ResourceType {delivery.topic!r}: only Work and "
                "Contact deliveries are used; delete that subscription in Karbon if you made it"
            )

    def _backfills(self, summary: dict[str, Any]) -> bool:
        since = self.options.backfill_from
        completed = parse_time(summary.get("CompletedDate"))
        return bool(since and completed and completed >= since)

    def _sweep_statuses(self) -> list[str]:
        seen: dict[str, str] = {}
        for status in (*self.options.sweep_statuses, COMPLETED):
            spaced = spaced_primary(status) or status
            seen.setdefault(_norm(spaced), spaced)  # $filter matches only the spaced form
        return [s.replace("'", "''") for s in seen.values()]

    def _snapshot(
        self, item: dict[str, Any], previous: WorkItemSnapshot | None, seen_at: datetime
    ) -> WorkItemSnapshot:
        primary = spaced_primary(item.get("PrimaryStatus")) or ""
        secondary = item.get("SecondaryStatus") or None
        completed = item.get("CompletedDate") or None
        if primary != COMPLETED:
            completed = None
        since = seen_at.isoformat()
        if previous is not None and previous.same_status(primary, secondary, completed):
            since = previous.since
        return WorkItemSnapshot(
            primary=primary,
            secondary=secondary,
            completed=completed,
            since=since,
            digest=summary_digest(item),
        )

    def _examine(
        self, key: str, snap: WorkItemSnapshot | None, run: _Poll, seen_at: datetime
    ) -> None:
        """Fetch one work item and turn its change (if any) into phases and an engagement."""
        detail = self.client.work_item(key)
        if detail is None:  # deleted, or hidden from this application
            if snap is not None and not snap.gone:
                run.remember[key] = WorkItemSnapshot(
                    snap.primary, snap.secondary, snap.completed, snap.since, snap.digest, True
                ).encode()
            return
        primary = detail.get("PrimaryStatus")
        if not is_known_primary(primary):
            run.warnings.append(
                f"work item {key} ({detail.get('Title')!r}) has an unknown PrimaryStatus "
                f"{primary!r}: it is skipped until it has one of Planned, Ready To Start, "
                "In Progress, Waiting, Completed"
            )
            return
        client = self._client_for(detail, run)
        fee, problem = fee_of(detail, self.options.currency)
        if problem:
            run.warnings.append(f"work item {key}: {problem}; the engagement has no fee")
        run.engagements[key] = engagement_from(self._id, detail, client, fee)
        new = self._snapshot(detail, snap, seen_at)
        run.remember[key] = new.encode()
        if (
            snap is not None
            and not snap.gone
            and snap.same_status(new.primary, new.secondary, new.completed)
        ):
            return  # the fee, title or dates changed: the engagement update reprices
        if snap is not None and not snap.gone and self._moved_back(snap, new):
            run.phases.append(self._phase(key, snap, run.context.now, reopened=True))
        run.phases.append(self._phase(key, new, run.context.now, reopened=False))

    def _phase(
        self, key: str, snap: WorkItemSnapshot, now: datetime, *, reopened: bool
    ) -> PhaseCompletion:
        completed_at = parse_time(snap.completed) if snap.completed else None
        completion = snap.completed if snap.completed else snap.since
        return PhaseCompletion(
            source=self._id,
            work_item=WorkItemKey(key),
            kind=TriggerKind.STATUS,
            phase=snap.primary,
            completed_at=completed_at or parse_time(snap.since) or now,
            completion=completion,
            secondary=snap.secondary,
            reopened=reopened,
        )

    def _moved_back(self, old: WorkItemSnapshot, new: WorkItemSnapshot) -> bool:
        """Back to an earlier status: out of Completed, to an earlier primary, or to an earlier
        secondary of the same primary (in the firm's TenantSettings order)."""
        old_rank, new_rank = primary_rank(old.primary), primary_rank(new.primary)
        if new_rank != old_rank:
            return new_rank < old_rank
        if _norm(old.primary) != _norm(new.primary) or not old.secondary or not new.secondary:
            return False
        order = self._secondaries().get(_norm(old.primary), [])
        try:
            return order.index(_norm(new.secondary)) < order.index(_norm(old.secondary))
        except ValueError:
            return False

    def _secondaries(self) -> dict[str, list[str]]:
        if self._secondary_order is None:
            order: dict[str, list[str]] = {}
            settings = self.client.tenant_settings()
            for primary in settings.get("WorkStatuses", []) or []:
                children = primary.get("Children") or []
                order[_norm(primary.get("Name"))] = [_norm(c.get("Name")) for c in children]
            self._secondary_order = order
        return self._secondary_order

    def _client_for(self, detail: dict[str, Any], run: _Poll) -> Client:
        key = str(detail.get("ClientKey") or "")
        name = str(detail.get("ClientName") or key)
        if key in run.clients:
            return run.clients[key]
        remembered = run.context.memory.recall([f"client:{key}"]).get(f"client:{key}")
        if remembered:
            client = _decode_client(self._id, key, remembered)
            if client is not None:
                run.clients[key] = client
                return client
        client_type = str(detail.get("ClientType") or "Organization")
        record = self.client.client(key, client_type) if key else None
        client = client_from(self._id, key, name, record)
        run.clients[key] = client
        run.remember[f"client:{key}"] = _encode_client(client, client_type)
        return client

    # ------------------------------------------------------------------ webhooks

    def _check_subscriptions(self, run: _Poll) -> None:
        for note in self.ensure_webhooks():
            run.warnings.append(note)

    def ensure_webhooks(self) -> list[str]:
        """Create or repair the Work and Contact subscriptions; say what was done."""
        url = self.options.webhook_url
        if not url:
            return []
        notes = []
        for webhook_type in ("Work", "Contact"):
            current = self.client.subscription(webhook_type)
            if current is not None and current.get("TargetUrl") == url:
                continue
            self.client.subscribe(webhook_type, url, self.options.signing_key)
            if current is None:
                notes.append(
                    f"Karbon had no {webhook_type} webhook subscription (new, or cancelled by "
                    f"Karbon after 10 failed deliveries): subscribed {url}; the sweep covers "
                    "the gap"
                )
            else:
                notes.append(
                    f"Karbon's {webhook_type} subscription pointed at {current.get('TargetUrl')}: "
                    f"moved it to {url}"
                )
        return notes

    # ------------------------------------------------------------------ double billing

    def _warn_billed_in_karbon(self, run: _Poll) -> None:
        """A firm that also bills inside Karbon must not be billed twice: warn when a work item
        that just reached a phase has billed time or a Karbon invoice line."""
        keys = sorted({p.work_item for p in run.phases if not p.reopened})
        invoiced = self._karbon_invoiced_items(run)
        for key in keys:
            title = run.engagements[key].title if key in run.engagements else key
            try:
                billed = [
                    e
                    for e in self.client.time_entries(key)
                    if _norm(e.get("BilledStatus")) in _BILLED
                ]
            except RejectedError as exc:
                run.warnings.append(f"could not check Karbon billing of {key}: {exc}")
                continue
            if billed:
                run.warnings.append(
                    f"work item {key} ({title}) has {len(billed)} time entries billed in Karbon: "
                    "milestone-sync also invoices it; exclude it with an [[ignore]] rule if Karbon "
                    "bills this work"
                )
            if key in invoiced:
                run.warnings.append(
                    f"work item {key} ({title}) is on Karbon invoice {invoiced[key]}: "
                    "milestone-sync also invoices it; exclude it with an [[ignore]] rule if Karbon "
                    "bills this work"
                )

    def _karbon_invoiced_items(self, run: _Poll) -> dict[str, str]:
        """Work item key -> Karbon invoice number, from invoice line items. Each invoice's lines
        are fetched once and remembered (`inv:<key>`)."""
        found: dict[str, str] = {}
        try:
            rows = list(
                self.client.pages(
                    "/v3/Invoices", "list Karbon invoices", {"$orderby": "UpdatedAt desc"}
                )
            )
        except RejectedError as exc:
            run.warnings.append(f"could not list Karbon invoices: {exc}")
            return found
        keys = [f"inv:{r.get('InvoiceKey')}" for r in rows if r.get("InvoiceKey")]
        known = run.context.memory.recall(keys)
        for row in rows:
            if _norm(row.get("InvoiceStatus")) == "voided" or not row.get("InvoiceKey"):
                continue
            mem_key = f"inv:{row['InvoiceKey']}"
            if mem_key in known:
                items = json.loads(known[mem_key])
            else:
                try:
                    detail = self.client.get(
                        f"/v3/Invoices/{row['InvoiceKey']}",
                        f"Karbon invoice {row['InvoiceKey']}",
                        {"$expand": "LineItems"},
                    )
                except (KarbonNotFound, RejectedError):
                    continue
                items = sorted(
                    {
                        str(line.get("BillableItemEntityKey"))
                        for line in detail.get("LineItems") or []
                        if line.get("BillableItemEntityKey")
                    }
                )
                run.remember[mem_key] = json.dumps(items)
            for item in items:
                found.setdefault(item, str(row.get("InvoiceNumber") or row["InvoiceKey"]))
        return found

    # ------------------------------------------------------------------ lookups

    def get_engagement(self, key: WorkItemKey) -> Engagement | None:
        detail = self.client.work_item(key)
        if detail is None:
            return None
        client_type = str(detail.get("ClientType") or "Organization")
        ckey = str(detail.get("ClientKey") or "")
        record = self.client.client(ckey, client_type) if ckey else None
        client = client_from(self._id, ckey, str(detail.get("ClientName") or ckey), record)
        fee, _ = fee_of(detail, self.options.currency)
        return engagement_from(self._id, detail, client, fee)


def _norm(value: Any) -> str:
    return "".join(str(value or "").split()).casefold()


def _encode_client(client: Client, client_type: str) -> str:
    return json.dumps({"name": client.name, "type": client_type, "ext": client.ledger_customer_id})


def _decode_client(source: SourceId, key: str, text: str) -> Client | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    external = data.get("ext")
    return Client(
        source=source,
        key=ClientKey(key),
        name=str(data.get("name") or key),
        ledger_customer_id=LedgerCustomerId(str(external)) if external else None,
    )


def sweep_statuses_for(triggers: Iterable[str]) -> tuple[str, ...]:
    """The primary statuses a sweep lists: those the mapping's triggers name, and Completed."""
    names = {spaced_primary(t) or t for t in triggers if t}
    names.add(COMPLETED)
    return tuple(sorted(names, key=primary_rank))
