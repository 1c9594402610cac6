"""QuickBooks Online: client, translation, `Ledger` adapter, error table and emulator."""
