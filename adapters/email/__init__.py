"""Email to clients (notices), over SMTP."""
