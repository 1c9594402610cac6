"""Adapters: implementations of the core ports for real systems, the store and the sandbox."""
