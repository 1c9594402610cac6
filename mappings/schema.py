"""The TOML configuration schema: strict pydantic models checking each key's type and form.

Unknown keys are rejected. Rules that span several keys (totals, duplicates, ambiguity,
references) live in `mappings.checks`; `mappings.loader` runs both and builds the frozen
`connector.config.AppConfig`.
"""

from __future__ import annotations

import re
import string
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    model_validator,
)
from pydantic_core import PydanticCustomError

from connector.config import LedgerKind, PaymentsKind, SourceKind
from connector.domain.model import Cadence, CollectionMode
from connector.domain.money import is_known_currency

PLACEHOLDERS = ("engagement", "milestone", "period", "client")
"""Names a plan's `description` template may use."""

DEFAULT_DESCRIPTION = "{engagement} - {milestone}"

# --------------------------------------------------------------------------- scalar types

_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _ident(value: str) -> str:
    if not _IDENT.fullmatch(value):
        raise PydanticCustomError(
            "ident",
            "'{value}' is not a valid id: use letters, digits, '-' and '_' (at most 48 "
            'characters, starting with a letter or digit), e.g. "tax-return"',
            {"value": value},
        )
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise PydanticCustomError(
            "env_name",
            "'{value}' is not an environment variable name: use letters, digits and '_', "
            'e.g. "KARBON_TOKEN"',
            {"value": value},
        )
    return value


def float_hint(value: float, *, as_percent: bool = False) -> str:
    """How a float should have been written: `"1500.00"` for money, `40` or `"33.33"` for %."""
    exact = Decimal(repr(value))
    if as_percent and exact == exact.to_integral_value():
        return str(int(exact))
    if (
        exact.as_tuple().exponent in (0, -1)
        if isinstance(exact.as_tuple().exponent, int)
        else False
    ):
        exact = exact.quantize(Decimal("0.01"))
    return f'"{exact}"'


def _decimal_text(value: object, what: str) -> Decimal:
    """The exact decimal of a TOML integer or quoted decimal; floats and other types rejected."""
    if isinstance(value, bool):
        raise PydanticCustomError(
            f"{what}_type", 'expected a quoted decimal such as "1500.00", got a boolean'
        )
    if isinstance(value, float):
        raise PydanticCustomError(
            f"float_{what}",
            "TOML floats are inexact: quote the {what}, e.g. {hint}",
            {"what": what, "hint": float_hint(value, as_percent=what == "percent")},
        )
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_TEXT.fullmatch(text):
            raise PydanticCustomError(
                f"{what}_text",
                "'{value}' is not a plain decimal: write digits with an optional point, "
                'such as "1500.00" (no currency signs, commas or exponents)',
                {"value": value},
            )
        return Decimal(text)
    raise PydanticCustomError(
        f"{what}_type",
        'expected a quoted decimal such as "1500.00" or an integer, got {kind}',
        {"kind": toml_type_name(value)},
    )


def _amount(value: object) -> Decimal:
    amount = _decimal_text(value, "amount")
    if amount < 0:
        raise PydanticCustomError("amount_negative", "an amount must not be negative")
    return amount


def _percent(value: object) -> Decimal:
    percent = _decimal_text(value, "percent")
    if not 0 < percent <= 100:
        raise PydanticCustomError(
            "percent_range",
            "a percentage must be more than 0 and at most 100, got {value}",
            {"value": str(percent)},
        )
    return percent


def _currency(value: str) -> str:
    if not is_known_currency(value):
        hint = " (write it in upper case)" if is_known_currency(value.upper()) else ""
        raise PydanticCustomError(
            "currency",
            "unknown currency '{value}': use an ISO 4217 code such as USD, EUR or GBP{hint}",
            {"value": value, "hint": hint},
        )
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "timezone",
            "unknown time zone '{value}': use an IANA name such as America/New_York",
            {"value": value},
        ) from None
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "regex", "not a valid regular expression: {error}", {"error": str(exc)}
        ) from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError(
            "url",
            "'{value}' is not an http(s) URL such as https://api.karbonhq.com",
            {"value": value},
        )
    if parts.password:
        raise PydanticCustomError(
            "url_secret", "the URL holds a password: name an environment variable instead"
        )
    return value


def _database_url(value: str) -> str:
    if "://" not in value:
        raise PydanticCustomError(
            "database_url",
            "'{value}' is not a database URL such as sqlite:///milestone-sync.sqlite3 or "
            "postgresql+psycopg://billing@db.internal/milestone_sync",
            {"value": value},
        )
    if urlsplit(value).password:
        raise PydanticCustomError(
            "database_url_secret",
            "the URL holds a password: remove it and let the driver read it from the "
            "environment (PGPASSWORD) or a .pgpass file",
        )
    return value


def _template(value: str) -> str:
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise PydanticCustomError(
            "template",
            "not a valid template ({error}); write a literal brace as '{{{{' or '}}}}'",
            {"error": str(exc)},
        ) from None
    unknown = [
        f"{{{field}}}"
        for _, field, _, _ in parsed
        if field is not None and field not in PLACEHOLDERS
    ]
    if unknown:
        allowed = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        raise PydanticCustomError(
            "template_placeholder",
            "unknown placeholder {unknown}: use {allowed}",
            {"unknown": ", ".join(unknown), "allowed": allowed},
        )
    if any(spec or conversion for _, field, spec, conversion in parsed if field is not None):
        raise PydanticCustomError(
            "template_format", "placeholders take no format or conversion: write {{client}}"
        )
    return value


def _text_option(value: object) -> str:
    """Adapter options are free-form scalars, handed to the adapter as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise PydanticCustomError(
        "option_type",
        "an option must be a string, number or boolean, got {kind}",
        {"kind": toml_type_name(value)},
    )


def _toml_date(value: object) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise PydanticCustomError(
            "toml_date",
            "expected a TOML date without quotes or time, e.g. anniversary = 2025-01-01",
        )
    return value


def toml_type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for messages."""
    names: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (datetime, "a datetime"),
        (date, "a date"),
        (dict, "a table"),
        (list, "an array"),
    ]
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


Ident = Annotated[str, AfterValidator(_ident)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Text = Annotated[str, Field(min_length=1)]
Amount = Annotated[Decimal, PlainValidator(_amount)]
Percent = Annotated[Decimal, PlainValidator(_percent)]
Currency = Annotated[str, AfterValidator(_currency)]
Timezone = Annotated[str, AfterValidator(_timezone)]
Regex = Annotated[str, Field(min_length=1), AfterValidator(_regex)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
Template = Annotated[str, Field(min_length=1), AfterValidator(_template)]
OptionText = Annotated[str, PlainValidator(_text_option)]
TomlDate = Annotated[date, PlainValidator(_toml_date)]
# enums are written as strings in TOML, so they are the one lax exception to strict types
SourceKindField = Annotated[SourceKind, Strict(False)]
LedgerKindField = Annotated[LedgerKind, Strict(False)]
PaymentsKindField = Annotated[PaymentsKind, Strict(False)]
CadenceField = Annotated[Cadence, Strict(False)]
CollectionModeField = Annotated[CollectionMode, Strict(False)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Connection(_Model):
    """A connection to an outside system; secrets are named as `<name>_env = "ENV_VAR"`."""

    @model_validator(mode="before")
    @classmethod
    def _collect_env_keys(cls, data: Any) -> Any:
        """Move `<name>_env = "VAR"` keys into `secret_env = {name = "VAR"}`."""
        if not isinstance(data, dict):
            return data
        rest = {k: v for k, v in data.items() if not _is_env_key(k)}
        env = {k[: -len(ENV_SUFFIX)]: v for k, v in data.items() if _is_env_key(k)}
        if env:
            rest["secret_env"] = env
        return rest


ENV_SUFFIX = "_env"


def _is_env_key(key: object) -> bool:
    return isinstance(key, str) and key.endswith(ENV_SUFFIX) and len(key) > len(ENV_SUFFIX)


# --------------------------------------------------------------------------- sections


class FirmSchema(_Model):
    id: Ident
    name: Text
    currency: Currency
    timezone: Timezone = "UTC"


class DatabaseSchema(_Model):
    url: DatabaseUrl | None = None


class SourceSchema(_Connection):
    id: Ident
    kind: SourceKindField
    base_url: HttpUrl | None = None
    secret_env: dict[str, EnvName] = {}
    options: dict[str, OptionText] = {}


class LedgerSchema(_Connection):
    kind: LedgerKindField
    base_url: HttpUrl | None = None
    secret_env: dict[str, EnvName] = {}
    options: dict[str, OptionText] = {}


class PaymentsSchema(_Connection):
    kind: PaymentsKindField = PaymentsKind.NONE
    base_url: HttpUrl | None = None
    secret_env: dict[str, EnvName] = {}
    options: dict[str, OptionText] = {}


class InvoiceSchema(_Model):
    """Invoice fields on a plan; unset fields fall back to `[defaults]`."""

    item: Text | None = None
    tax_code: Text | None = None
    terms: Text | None = None
    send_invoice: bool | None = None


class DefaultsSchema(_Model):
    item: Text | None = None
    tax_code: Text | None = None
    terms: Text | None = None
    send_invoice: bool = False


class CollectionSchema(_Model):
    default_mode: CollectionModeField = CollectionMode.INVOICE_ONLY
    retry_days: Annotated[list[PositiveInt], Field(max_length=10)] = [1, 3, 7]
    # reminders through the ledger's own invoice email, days before / after the due date
    remind_before_due: Annotated[list[PositiveInt], Field(max_length=5)] = []
    remind_after_due: Annotated[list[PositiveInt], Field(max_length=10)] = []
    # approval_required milestones approved by themselves after this many days' notice
    auto_approve_after_days: PositiveInt | None = None


class ScheduleSchema(_Model):
    poll_seconds: PositiveInt = 300
    invoice_seconds: PositiveInt = 60
    collect_seconds: PositiveInt = 300
    reconcile_seconds: PositiveInt = 900


class ServerSchema(_Model):
    """The daemon's HTTP surface: webhook receivers (and later the dashboard)."""

    host: Text = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 8765
    public_url: HttpUrl | None = None  # how the vendors reach us, e.g. https://sync.firm.com
    # the environment variable holding the dashboard's token (required off loopback)
    dashboard_token_env: EnvName | None = None


class MatchSchema(_Model):
    """Which engagements a plan or ignore rule covers; unset keys match anything."""

    source: Ident | None = None
    work_type: Text | None = None
    template: Text | None = None
    title_pattern: Regex | None = None
    clients: list[Text] = []

    def is_empty(self) -> bool:
        return not (
            self.source or self.work_type or self.template or self.title_pattern or self.clients
        )


class TriggerSchema(_Model):
    """Exactly one of `status` (with optional `secondary`), `close_status`, `section_done`."""

    status: Text | None = None
    secondary: Text | None = None
    close_status: Text | None = None
    section_done: Text | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TriggerSchema:
        named = [v for v in (self.status, self.close_status, self.section_done) if v is not None]
        if len(named) != 1:
            raise PydanticCustomError(
                "trigger_kind",
                "a trigger names exactly one of status, close_status or section_done, e.g. "
                'trigger = { status = "Completed" } or trigger = { close_status = "Done" }',
            )
        if self.secondary is not None and self.status is None:
            raise PydanticCustomError(
                "trigger_secondary",
                'secondary goes with status: trigger = { status = "In Progress", '
                'secondary = "Review" }',
            )
        return self


class MilestoneSchema(_Model):
    id: Ident
    name: Text
    trigger: TriggerSchema
    amount: Amount | None = None
    percent: Percent | None = None
    remainder: bool = False
    offset_days: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_amount_rule(self) -> MilestoneSchema:
        given = [self.amount is not None, self.percent is not None, self.remainder]
        if sum(given) != 1:
            raise PydanticCustomError(
                "milestone_amount",
                'give exactly one of amount = "500.00", percent = 40 or remainder = true',
            )
        return self


class PriceIncreaseSchema(_Model):
    percent: Percent
    anniversary: TomlDate
    notice_days: NonNegativeInt = 30


class PlanSchema(_Model):
    id: Ident
    name: Text
    match: MatchSchema
    priority: int = 0
    recurring: CadenceField | None = None
    fee: Amount | None = None
    currency: Currency | None = None
    collection_mode: CollectionModeField | None = None
    invoice: InvoiceSchema | None = None
    price_increase: PriceIncreaseSchema | None = None
    description: Template = DEFAULT_DESCRIPTION
    milestones: list[MilestoneSchema] = []


class IgnoreSchema(_Model):
    id: Ident
    match: MatchSchema
    reason: Text


class ClientSchema(_Model):
    fees: dict[str, Amount] = {}
    collection_mode: CollectionModeField | None = None
    ledger_customer_id: Text | None = None
    terms: Text | None = None
    tax_code: Text | None = None
    item: Text | None = None
    currency: Currency | None = None
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None


class NotificationsSchema(_Connection):
    """How clients are told of price increases before they take effect (SMTP), or not."""

    kind: Literal["none", "smtp", "memory"] = "none"
    host: Text | None = None
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 587
    starttls: bool = True
    from_address: Text | None = None
    secret_env: dict[str, EnvName] = {}

    @model_validator(mode="after")
    def _smtp_settings(self) -> NotificationsSchema:
        if self.kind == "smtp" and not (self.host and self.from_address):
            raise PydanticCustomError(
                "notifications_smtp",
                'smtp needs host and from_address, e.g. host = "smtp.example.com" '
                'from_address = "billing@smithcpa.example"',
            )
        unknown = sorted(set(self.secret_env) - {"username", "password"})
        if unknown:
            raise PydanticCustomError(
                "notifications_secret",
                "notifications take username_env and password_env only, not {names}",
                {"names": ", ".join(f"{name}_env" for name in unknown)},
            )
        return self


class ConfigSchema(_Model):
    """The whole file."""

    firm: FirmSchema
    database: DatabaseSchema = DatabaseSchema()
    sources: list[SourceSchema] = []
    ledger: LedgerSchema
    payments: PaymentsSchema = PaymentsSchema()
    notifications: NotificationsSchema = NotificationsSchema()
    defaults: DefaultsSchema = DefaultsSchema()
    collection: CollectionSchema = CollectionSchema()
    schedule: ScheduleSchema = ScheduleSchema()
    server: ServerSchema = ServerSchema()
    plans: list[PlanSchema] = []
    ignore: list[IgnoreSchema] = []
    clients: dict[str, ClientSchema] = {}
