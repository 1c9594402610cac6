"""A fault hook armed from the environment, for crash tests of the real process.

`MILESTONE_SYNC_FAULT=after_call:create_invoice` makes the process kill itself with SIGKILL the
first time it reaches that recovery point. Never set it in production.
"""

from __future__ import annotations

import os
import signal

from connector.ports import OperationKind
from connector.services import FaultHook

FAULT_ENV = "MILESTONE_SYNC_FAULT"


def fault_from_env() -> FaultHook | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    wanted_point, _, wanted_kind = spec.partition(":")
    if wanted_point not in {"after_intent", "after_call"} or wanted_kind not in set(OperationKind):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected after_intent|after_call:<operation kind>")

    def kill_here(point: str, kind: OperationKind, subject: str) -> None:
        if (point, kind) == (wanted_point, wanted_kind):
            os.kill(os.getpid(), signal.SIGKILL)

    hook: FaultHook = kill_here
    return hook
