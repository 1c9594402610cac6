"""An in-memory notifier: notices are kept (and, for the sandbox, written to a JSON file)
instead of being emailed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.memory._persist import load_state, save_state
from connector.domain.errors import RejectedError
from connector.domain.ids import IdempotencyKey
from connector.ports import Notice


class MemoryNotifier:
    def __init__(self, state_file: Path | None = None) -> None:
        self._file = state_file
        self.sent: list[dict[str, Any]] = load_state(state_file).get("sent", [])

    def send(self, notice: Notice, key: IdempotencyKey) -> str:
        if not notice.email:
            raise RejectedError(
                f"client {notice.client_key} has no email address: set "
                f'[clients."{notice.client_key}"] email, or send the notice by hand'
            )
        for earlier in self.sent:
            if earlier["key"] == key:
                return str(earlier["id"])
        message_id = f"<notice-{len(self.sent) + 1}@milestone-sync.local>"
        self.sent.append(
            {
                "id": message_id,
                "key": key,
                "to": notice.email,
                "subject": notice.subject,
                "body": notice.body,
            }
        )
        save_state(self._file, {"sent": self.sent})
        return message_id
