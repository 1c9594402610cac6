"""The demo's sandbox: a small accounting firm (its clients, work and payment habits) and the
emulated outside world it lives in (Karbon, the close checklist, the ledger, Stripe)."""
