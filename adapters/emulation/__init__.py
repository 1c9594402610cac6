"""Shared plumbing for the local vendor emulators: a threaded loopback server, a request log, and
validation of every received request against the vendor's official API description."""
