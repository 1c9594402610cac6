"""Where the vendors' official API descriptions live. They are never copied into the project:
the project finds them beside the checkout (`../shared/specs`) or at `MILESTONE_SYNC_SPECS_DIR`."""

from __future__ import annotations

import os
from pathlib import Path

SPECS_ENV = "MILESTONE_SYNC_SPECS_DIR"


def specs_dir() -> Path | None:
    """The directory holding `karbon/`, `xero/`, `stripe/` and `quickbooks/`, or None."""
    explicit = os.environ.get(SPECS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "specs"
        if (parent / "pyproject.toml").exists() and candidate.is_dir():
            return candidate
    cwd_candidate = Path.cwd().parent / "shared" / "specs"
    return cwd_candidate if cwd_candidate.is_dir() else None


def spec_path(relative: str) -> Path | None:
    """`relative` (e.g. 'karbon/KarbonAPI.json') inside the specs directory, if present."""
    base = specs_dir()
    if base is None:
        return None
    path = base / relative
    return path if path.is_file() else None


def missing_reason(relative: str) -> str:
    return (
        f"vendor spec {relative} not found: put the shared specs at ../shared/specs beside the "
        f"checkout or set {SPECS_ENV}; spec validation is skipped"
    )
