"""Xero (ledger): xero-python client, translation, the `Ledger` adapter and a local emulator."""
