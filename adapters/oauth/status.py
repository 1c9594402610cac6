"""What `milestone-sync status` says about the ledger connection: connected or not, to which
company, when the tokens expire, and a warning while there is still time to act."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from adapters.oauth.providers import OAuthProvider
from adapters.store.tokens import StoredToken

WARN_WITHIN = timedelta(days=14)


@dataclass(frozen=True)
class ConnectionStatus:
    provider: str
    connected: bool
    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    needs_reconnect: bool = False

    @property
    def healthy(self) -> bool:
        return self.connected and not self.needs_reconnect and not self.warnings


def _day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 2 else f"{delta.total_seconds() / 3600:.0f} hours"


def connection_status(
    provider: OAuthProvider, record: StoredToken | None, now: datetime
) -> ConnectionStatus:
    """The ledger connection's state as lines for an admin (pure: the caller reads the row)."""
    connect = f"`milestone-sync connect {provider.name}`"
    if record is None:
        return ConnectionStatus(
            provider.name,
            connected=False,
            warnings=(f"{provider.label} is not connected: run {connect}",),
        )
    token = record.token
    what = "organisation" if provider.needs_tenant_choice else "company"
    name = f"{record.label} ({token.realm})" if record.label else str(token.realm)
    lines = [f"{provider.label} {what} {name}"]
    if record.connected_at is not None:
        lines.append(f"connected {_day(record.connected_at)}")
    if record.needs_reconnect:
        since = f" since {_day(record.needs_reconnect_at)}" if record.needs_reconnect_at else ""
        return ConnectionStatus(
            provider.name,
            connected=True,
            lines=tuple(lines),
            warnings=(f"needs reconnect{since}: {record.needs_reconnect}",),
            needs_reconnect=True,
        )
    if token.expires_at > now:
        lines.append(f"access token valid until {_day(token.expires_at)} (renewed automatically)")
    else:
        lines.append(f"access token expired {_day(token.expires_at)} (renewed on next use)")
    warnings: list[str] = []
    idle_end = token.refresh_expires_at
    if idle_end is None and record.refreshed_at is not None:
        idle_end = record.refreshed_at + provider.refresh_idle_ttl
    hard_end = (
        record.connected_at + provider.refresh_max_age
        if provider.refresh_max_age is not None and record.connected_at is not None
        else None
    )
    idle_days = provider.refresh_idle_ttl.days
    if idle_end is not None:
        lines.append(
            f"refresh token valid until about {_day(idle_end)} ({idle_days} days after its last "
            "use; every refresh extends it)"
        )
    if hard_end is not None:
        lines.append(
            f"the connection ends at the latest {_day(hard_end)} ({provider.label}'s "
            f"{provider.refresh_max_age.days // 365 if provider.refresh_max_age else 0}-year "
            "maximum since consent)"
        )
    if hard_end is not None and hard_end - now <= WARN_WITHIN:
        left = hard_end - now
        warnings.append(
            f"the connection reaches {provider.label}'s maximum age "
            + (f"in {_days(left)}" if left > timedelta(0) else "and has ended")
            + f": run {connect} before {_day(hard_end)}"
        )
    elif idle_end is not None and idle_end - now <= WARN_WITHIN:
        left = idle_end - now
        if left > timedelta(0):
            warnings.append(
                f"the refresh token expires in {_days(left)} unless it is used: keep "
                f"`milestone-sync run` going (or run `milestone-sync sync --once`) before "
                f"{_day(idle_end)}, or the admin must run {connect}"
            )
        else:
            warnings.append(f"the refresh token expired unused on {_day(idle_end)}: run {connect}")
    return ConnectionStatus(
        provider.name, connected=True, lines=tuple(lines), warnings=tuple(warnings)
    )
