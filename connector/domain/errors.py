"""Errors grouped by what the caller does about them (see STYLE.md rule 4)."""

from __future__ import annotations


class MilestoneSyncError(Exception):
    """Base of every error milestone-sync raises on purpose."""


class ConfigError(MilestoneSyncError):
    """A person must act: a bad mapping, a missing secret, a revoked token, an unreachable DB."""


class TransientError(MilestoneSyncError):
    """Retry later. `retry_after` is seconds to wait, when the other side said.

    `outcome_unknown` is true when a write may have taken effect (a timeout after sending):
    the caller must look the object up before trying again.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown


class RejectedError(MilestoneSyncError):
    """This item failed for good: flag it for an admin and carry on with the rest."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvariantViolation(MilestoneSyncError):
    """A bug or corrupted state: stop rather than risk money."""
