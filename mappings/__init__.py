"""The admin's mapping rules: TOML schema, loader (every error with its key path), engine."""
