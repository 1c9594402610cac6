"""OAuth 2 connections to the ledgers: connect (authorization code + PKCE), tokens kept
encrypted in the state store, refresh under a per-connection lock, revoke.

Modules: `providers` (endpoints, scopes, lifetimes; the app's client credentials), `client`
(the authorization server's calls over requests-oauthlib), `errors` (its answers as our errors),
`manager` (`TokenManager`, the `AccessTokens` a ledger adapter gets; `token_manager()` builds
it from config), `connect` (connect, disconnect, the loopback listener), `status`.

The lock. A refresh holds the connection's lock from reading the stored refresh token until
the rotated one is committed: on PostgreSQL `SELECT ... FOR UPDATE` on its `oauth_tokens` row
(the transaction stays open over the one HTTP call; waiters give up after `lock_timeout` 60 s),
on SQLite the database write lock (`BEGIN IMMEDIATE`; waiters give up after the store's 10 s
busy timeout; other writers of the same file wait meanwhile, so the call has short timeouts),
plus a `threading.Lock` per manager. Under the lock the row is read again: a token another
process already rotated is used, not refreshed again. Backoff between attempts holds no lock.

The one unavoidable loss: the server rotated the refresh token and we never stored the answer
(a crash, a dropped connection, the database gone at that moment; the last case is retried
from memory). We only ever commit what the server answered, so the row keeps the previous
refresh token, and the next refresh uses it:
- Xero allows it: "If you don't receive a response from a token refresh you can retry using
  your existing refresh token for up to 30 minutes" (developer.xero.com/faq/oauth2). The
  emulator's 30-minute grace proves it (test_oauth_refresh).
- QuickBooks: most refreshes return the same refresh token (its value changes about every 24
  to 26 hours), so most lost answers lose nothing. When it did rotate, Intuit's "Validity of
  Refresh Token" article says the previous token expires once a new one is returned (its older
  docs said 24 hours later). The emulator takes the strict reading: the connection needs a
  reconnect, which status shows.

"Needs reconnect" (after `invalid_grant`) is remembered inside the encrypted token row
(`StoredToken.needs_reconnect`), so no process keeps retrying; `connect` clears it.

Plain http:// endpoints are refused by oauthlib; for a loopback `[ledger] base_url` (tests,
the sandbox) `OAUTHLIB_INSECURE_TRANSPORT` is set for the process, and only then.
"""
