"""Generic sources: a signed phase-completed webhook and CSV imports, for tools with no API."""
