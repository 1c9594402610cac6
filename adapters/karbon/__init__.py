"""Karbon (practice management) source: HTTP client, translation, adapter and a local emulator."""
