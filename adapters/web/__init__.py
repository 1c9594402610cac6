"""The daemon's HTTP surface: webhook receivers (dashboard, health and metrics come later)."""
