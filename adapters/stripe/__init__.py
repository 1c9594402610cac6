"""Stripe: the payment gateway adapter (client, translate, adapter, errors) and its emulator."""
