"""Scripted faults for the in-memory vendors: fail before or after the write takes effect."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from connector.domain.errors import RejectedError, TransientError


class Fault(StrEnum):
    UNAVAILABLE = "unavailable"  # 503 before anything happened
    RATE_LIMITED = "rate_limited"  # 429 before anything happened
    TIMEOUT_AFTER_COMMIT = "timeout_after_commit"  # the write happened, the answer was lost
    REJECT = "reject"  # 400: this request will never succeed


@dataclass
class FaultQueue:
    """Faults to inject on the next calls of one operation, in order."""

    pending: deque[Fault]

    def __init__(self) -> None:
        self.pending = deque()

    def push(self, *faults: Fault) -> None:
        self.pending.extend(faults)

    def before(self, what: str) -> Fault | None:
        """Raise a fault that strikes before the write; return one that strikes after it."""
        if not self.pending:
            return None
        fault = self.pending.popleft()
        if fault is Fault.UNAVAILABLE:
            raise TransientError(f"{what}: service unavailable (503)")
        if fault is Fault.RATE_LIMITED:
            raise TransientError(f"{what}: rate limited (429)", retry_after=1.0)
        if fault is Fault.REJECT:
            raise RejectedError(f"{what}: rejected by the service (400)", code="400")
        return fault

    @staticmethod
    def after(fault: Fault | None, what: str) -> None:
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            raise TransientError(f"{what}: timed out waiting for the answer", outcome_unknown=True)
