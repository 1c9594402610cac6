"""structlog setup: JSON in production, readable on a terminal; secrets are redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|access_?key|api_?key|card|iban|"
    r"account_number|routing|cvc|signature)",
    re.IGNORECASE,
)
_SECRET_VALUES = re.compile(
    r"(sk_(live|test)_[A-Za-z0-9]+|rk_(live|test)_[A-Za-z0-9]+|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-.]+|"
    r"Bearer\s+[A-Za-z0-9._\-]+|\b\d{13,19}\b)"
)
REDACTED = "[redacted]"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop values of secret-looking keys and mask secret-looking strings anywhere."""
    for key, value in list(event.items()):
        if key != "event" and _SECRET_KEYS.search(key):
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = _SECRET_VALUES.sub(REDACTED, value)
    return event


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
