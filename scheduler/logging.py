"""structlog setup: JSON in production, readable on a terminal, and one redaction processor
applied to our events and to the standard library's records (urllib3, requests-oauthlib,
uvicorn) alike, so no token, key, card or bank number reaches a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Keys whose whole value is a secret, wherever they appear (nested too).
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|access_?key|api_?key|card|iban|"
    r"account_number|account_no|routing|cvc|cvv|signature|signing_?key|code_verifier|"
    r"cookie|fernet|private_key|bank_account)",
    re.IGNORECASE,
)
_SECRET_NAMES = (
    r"access_token|refresh_token|id_token|client_secret|code_verifier|api_key|secret_key|"
    r"signing_key|webhook_secret|password|secret|token|SigningKey|AccessKey"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Stripe secret and restricted keys, webhook signing secrets
    (re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]+"), REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), REDACTED),
    # an Authorization header's credentials (OAuth bearer tokens, HTTP Basic client secrets)
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\1 {REDACTED}"),
    # name=value in query strings and form bodies (token requests, redirects with ?code=)
    (re.compile(rf"\b({_SECRET_NAMES})=[^&\s\"',;]+", re.IGNORECASE), rf"\1={REDACTED}"),
    (re.compile(r"([?&]code)=[^&\s\"',;]+"), rf"\1={REDACTED}"),
    # "name": "value" in JSON bodies and reprs of dicts
    (
        re.compile(rf"([\"']({_SECRET_NAMES})[\"']\s*:\s*)([\"'])[^\"']*\3", re.IGNORECASE),
        rf"\1\3{REDACTED}\3",
    ),
    # JWTs (QuickBooks' and Xero's access tokens, Karbon's access keys)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    # Fernet keys (MILESTONE_SYNC_TOKEN_KEY) and Fernet tokens (the stored, encrypted tokens)
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}="), REDACTED),
    (re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}"), REDACTED),
    # bank account, routing, sort code and IBAN numbers named as such
    (
        re.compile(
            r"\b(account|acct|routing|aba|sort code|bsb|iban)(\s*(?:number|num|no\.?|#))?"
            r"(\s*[:=#]?\s*)\d[\d -]{2,20}\d",
            re.IGNORECASE,
        ),
        rf"\1\2\3{REDACTED}",
    ),
)
_CARDISH = re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])")
_IBANISH = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return REDACTED
    return match.group(0)


def _mask_iban(match: re.Match[str]) -> str:
    return REDACTED if _iban_valid(match.group(0)) else match.group(0)


def redact_text(text: str) -> str:
    """`text` with every secret-looking part masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    text = _CARDISH.sub(_mask_card, text)
    return _IBANISH.sub(_mask_iban, text)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and _SECRET_KEYS.search(k)
            else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, int) and not isinstance(value, bool) and 10**12 <= value < 10**19:
        return REDACTED if luhn_valid(str(value)) else value  # a card number as an integer
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop values of secret-looking keys and mask secret-looking strings anywhere (a
    structlog processor; keys starting with `_` are structlog's own, left alone)."""
    for key, value in list(event.items()):
        if key.startswith("_"):
            continue
        if key not in ("event", "exception") and _SECRET_KEYS.search(key):
            event[key] = REDACTED
        else:
            event[key] = _redact_value(value)
    return event


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler: stdlib records through the same processors, to the current
    stderr. It leaves when structlog is reset (tests), restoring the root logger's level."""

    def __init__(self, previous_level: int) -> None:
        super().__init__()
        self.previous_level = previous_level

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the stderr of the moment (pytest swaps it per test)

    def emit(self, record: logging.LogRecord) -> None:
        if not structlog.is_configured():
            self.detach()
            return
        super().emit(record)

    def detach(self) -> None:
        root = logging.getLogger()
        if self in root.handlers:
            root.removeHandler(self)
            root.setLevel(self.previous_level)


# libraries that narrate routine work at INFO (migration plugins, job scheduling): their INFO
# lines are dropped unless the level is DEBUG; warnings and errors always pass
_CHATTY = ("alembic", "apscheduler")


def _quiet_chatty(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(_CHATTY)


class _CurrentStderr:
    """sys.stderr as it is at each write (tests and tools swap it), for structlog's printer."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def reset_logging() -> None:
    """Undo `configure_logging` (for tests): structlog's defaults, the root logger as it was."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, _StdlibHandler):
            handler.detach()
    structlog.reset_defaults()


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Logs to stderr: JSON lines when `json` (None: JSON unless stderr is a terminal), else
    readable console lines; every line redacted, and job context (tenant, job, run_id) merged
    from contextvars."""
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # tracebacks as plain text (never with locals), then redacted like everything else
        structlog.processors.format_exc_info,
        redact,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibHandler):
            handler.detach()
    handler = _StdlibHandler(root.level)
    handler.setLevel(numeric)
    if numeric > logging.DEBUG:
        handler.addFilter(_quiet_chatty)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root.addHandler(handler)
    root.setLevel(numeric)
