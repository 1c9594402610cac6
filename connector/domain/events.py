"""Audit events: what milestone-sync did, in the past tense, for the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the audit log. `kind` is a dotted noun.verb such as `invoice.created`."""

    at: datetime
    kind: str
    subject: str
    message: str
    detail: dict[str, str] = field(default_factory=dict)
