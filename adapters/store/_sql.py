"""SQL helpers shared by the store: dialect INSERT ... ON CONFLICT, and database errors mapped to
the core's error groups (rule 4)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute

from connector.domain.errors import InvariantViolation, TransientError

P = ParamSpec("P")
R = TypeVar("R")


def insert(dialect: Dialect, model: type[DeclarativeBase]) -> postgresql.Insert | sqlite.Insert:
    """A Core INSERT into `model`'s table that supports ON CONFLICT on both backends."""
    table = model.__table__
    assert isinstance(table, Table)
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    raise InvariantViolation(f"the store does not support the {dialect.name} dialect")


def bytewise(
    column: ColumnElement[str] | InstrumentedAttribute[str], dialect: Dialect
) -> ColumnElement[str]:
    """Order by code point on every backend (PostgreSQL's default collation ignores punctuation)."""
    expression: ColumnElement[str] = (
        column.expression if isinstance(column, InstrumentedAttribute) else column
    )
    return expression.collate("C") if dialect.name == "postgresql" else expression


def reason(exc: BaseException) -> str:
    """The driver's message on one line, without the SQL or its parameters."""
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    text = " ".join(str(original).split())
    return text[:300] or type(original).__name__


@contextmanager
def database_errors(what: str, *, keep_cause: bool = True) -> Iterator[None]:
    """Map database errors: busy, locked, gone away or serialisation failure -> TransientError;
    a constraint violated -> InvariantViolation. `keep_cause=False` keeps the failed statement's
    parameters out of the traceback (token ciphertext)."""
    try:
        yield
    except IntegrityError as exc:
        error: Exception = InvariantViolation(f"{what}: constraint violated: {reason(exc)}")
        raise error from (exc if keep_cause else None)
    except OperationalError as exc:
        error = TransientError(f"{what}: database busy or unavailable: {reason(exc)}")
        raise error from (exc if keep_cause else None)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        error = TransientError(f"{what}: lost the database connection: {reason(exc)}")
        raise error from (exc if keep_cause else None)


def translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a repository method so database errors come out as the core's errors."""
    what = fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with database_errors(what):
            return fn(*args, **kwargs)

    return wrapper
