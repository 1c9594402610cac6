"""Dependencies point inward: the core imports no adapter, mapping, scheduler, DB, HTTP, SDK."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "connector"
FORBIDDEN = (
    "adapters",
    "mappings",
    "scheduler",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg2",
    "requests",
    "requests_oauthlib",
    "httpx",
    "urllib3",
    "urllib.request",
    "http.client",
    "aiohttp",
    "socket",
    "quickbooks",
    "intuitlib",
    "xero_python",
    "stripe",
    "apscheduler",
    "starlette",
    "uvicorn",
    "fastapi",
    "structlog",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 8, "the core package moved: update this test"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_imports_nothing_from_the_outside(path: Path) -> None:
    bad = sorted(
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    )
    assert bad == [], f"{path.name} imports {bad}"


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlalchemy.orm\nfrom adapters.store import open_store\n")
    assert imported_modules(sample) == {"sqlalchemy.orm", "adapters.store"}
