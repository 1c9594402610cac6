"""OAuth 2 connections to the ledgers: connect (authorization code + PKCE), tokens kept
encrypted in the state store, refresh under a per-connection lock, revoke."""
