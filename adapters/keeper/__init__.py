"""The close-checklist source: milestone-sync's own small contract for Keeper-style recurring
closes (Keeper/Double has no public API), its client, adapter and a local emulator.

The contract is docs/close-checklist-api.md and, machine-readable, close_checklist_api.yaml."""

from pathlib import Path

CONTRACT_PATH = Path(__file__).with_name("close_checklist_api.yaml")
"""The OpenAPI 3.1 description of the contract (shipped with the package)."""
