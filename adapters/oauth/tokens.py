"""What a ledger adapter needs from its OAuth connection: a valid access token, and a fresh one
after the ledger said 401."""

from __future__ import annotations

from typing import Protocol

from connector.ports import OAuthToken


class AccessTokens(Protocol):
    """The tokens of one ledger connection (one QBO realm or one Xero tenant).

    Implementations refresh under a per-connection lock (a row lock on PostgreSQL) and commit
    the rotated refresh token before handing out the new access token, so two processes
    refreshing at once never lose the connection."""

    @property
    def connection(self) -> str:
        """The connection's name in the token store, e.g. 'quickbooks' or 'xero'."""
        ...

    def current(self) -> OAuthToken:
        """A token whose access token stays valid for a few minutes more, refreshed first if
        needed. `realm` holds the QBO realm id or the Xero tenant id.

        Raises ConfigError when there is no connection yet or the grant is revoked or expired:
        the message tells the admin to run `milestone-sync connect <ledger>`."""
        ...

    def refresh(self, rejected: OAuthToken) -> OAuthToken:
        """The ledger answered 401 to `rejected`: refresh (unless another process already did)
        and return the token to retry with. Raises ConfigError as `current` does."""
        ...
