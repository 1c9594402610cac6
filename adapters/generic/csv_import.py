"""`milestone-sync import phases FILE.csv`: rows of completed phases into the inbox of a
push source. Bad rows are reported with their line and column; good rows go on."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapters.generic.events import PhaseEvent, event_json, row_event_id

COLUMNS = (
    "event_id",
    "type",
    "completed_at",
    "work_item_key",
    "title",
    "client_key",
    "client_name",
    "ledger_customer_id",
    "work_type",
    "template",
    "fee",
    "currency",
    "kind",
    "period",
    "start_date",
    "due_date",
    "status",
    "secondary",
    "close_status",
    "section_done",
)
REQUIRED = ("completed_at", "work_item_key", "title", "client_key", "client_name")
_WORK_ITEM = {
    "work_item_key": "key",
    "title": "title",
    "client_key": "client_key",
    "client_name": "client_name",
    "ledger_customer_id": "ledger_customer_id",
    "work_type": "work_type",
    "template": "template",
    "fee": "fee",
    "currency": "currency",
    "kind": "kind",
    "period": "period",
    "start_date": "start_date",
    "due_date": "due_date",
}


@dataclass
class ImportResult:
    events: list[tuple[int, PhaseEvent]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _event_data(row: dict[str, str]) -> dict[str, Any]:
    clean = {k.strip(): (v or "").strip() for k, v in row.items() if k}
    work_item = {dst: clean[src] for src, dst in _WORK_ITEM.items() if clean.get(src)}
    phase = {
        k: clean[k] for k in ("status", "secondary", "close_status", "section_done") if clean.get(k)
    }
    data: dict[str, Any] = {
        "event_id": clean.get("event_id") or row_event_id(clean),
        "occurred_at": clean.get("completed_at", ""),
        "work_item": work_item,
        "phase": phase,
    }
    if clean.get("type"):
        data["type"] = clean["type"]
    return data


def read_rows(text: str, name: str) -> ImportResult:
    result = ImportResult()
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h and h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if missing or unknown:
        if missing:
            result.problems.append(
                f"{name}: the header lacks {', '.join(missing)} (columns: {', '.join(COLUMNS)})"
            )
        if unknown:
            result.problems.append(
                f"{name}: unknown columns {', '.join(unknown)} (columns: {', '.join(COLUMNS)})"
            )
        return result
    for row in _rows(reader):
        line, values = row
        try:
            result.events.append((line, PhaseEvent.model_validate(_event_data(values))))
        except ValidationError as exc:
            result.problems.append(f"{name}, line {line}: {_columns(exc)}")
    return result


def _rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    for values in reader:
        if not any((v or "").strip() for v in values.values() if isinstance(v, str)):
            continue
        yield reader.line_num, values


_COLUMN_OF: dict[tuple[str, ...], str] = {
    **{("work_item", dst): src for src, dst in _WORK_ITEM.items()},
    **{("phase", c): c for c in ("status", "secondary", "close_status", "section_done")},
    ("occurred_at",): "completed_at",
    ("phase",): "status/close_status/section_done",
    ("work_item",): "work item columns",
}


def _columns(exc: ValidationError) -> str:
    """Speak in CSV column names, not the event's field paths. Only the location is renamed: the
    message itself may quote allowed values ('phase.completed', 'work_item') that must stay."""
    parts = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        where = _COLUMN_OF.get(loc[:2]) or _COLUMN_OF.get(loc[:1]) or ".".join(loc) or "(row)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def read_file(path: Path) -> ImportResult:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return ImportResult(problems=[f"{path}: no such file"])
    except UnicodeDecodeError as exc:
        return ImportResult(problems=[f"{path}: not UTF-8 text ({exc}); export it as CSV UTF-8"])
    return read_rows(text, str(path))


def inbox_entry(event: PhaseEvent) -> tuple[str, str, str, str]:
    """(topic, resource, dedupe key, body) for the inbox."""
    return ("phase.completed", event.work_item.key, event.event_id, event_json(event))
