"""Driver errors turned into StoreError: a sentence a person can act on, with the driver's error chained.

The sentences name what to fix: the database is unreachable, its schema is older or newer than this
code, another writer kept the lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from sqlalchemy import exc

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store.urls import display_url

#: How long a SQLite writer waits for another to finish before giving up, seconds, unless the Store is
#: told otherwise (`database.busy_timeout`).
DEFAULT_BUSY_TIMEOUT = 5.0


@contextlib.contextmanager
def translated_errors(url: str, *, connecting: bool = False) -> Iterator[None]:
    """Turn driver errors raised inside the block into a StoreError with a sentence, keeping the cause.

    `connecting` marks the block that opens a connection: any failure there means the database is not
    reachable (wrong host, refused, missing directory, bad credentials).
    """
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise StoreError(_sentence(url, error, connecting=connecting)) from error
    except OSError as error:
        raise StoreError(f"the database at {display_url(url)} is not reachable: {error}") from error


def schema_too_old(url: str) -> str:
    return (
        f"the database schema at {display_url(url)} is older than this version of abiquo-workflow: "
        "run `abiquo-workflow migrate`"
    )


def schema_too_new(url: str) -> str:
    return (
        f"the database schema at {display_url(url)} is newer than this version of abiquo-workflow: "
        "upgrade abiquo-workflow, or point it at another database"
    )


def stayed_locked(url: str) -> str:
    return (
        f"the database at {display_url(url)} stayed locked by another writer for longer than "
        "database.busy_timeout: is another process using the same SQLite file?"
    )


def unreachable(url: str, error: BaseException) -> str:
    return f"the database at {display_url(url)} is not reachable: {_detail(error)}"


def is_sqlite_busy(error: BaseException) -> bool:
    """True for SQLITE_BUSY ("database is locked"): another connection holds a lock this one needs."""
    cause = getattr(error, "orig", None) or error
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


def is_schema_missing(error: BaseException) -> bool:
    """True when the database lacks a table or column the statement names: its schema is too old."""
    cause = getattr(error, "orig", None) or error
    lowered = str(cause).lower()
    # SQLite says "no such table/column"; PostgreSQL raises UndefinedTable (42P01) / UndefinedColumn (42703).
    return "no such table" in lowered or "no such column" in lowered or _sqlstate(cause) in {"42P01", "42703"}


def _sentence(url: str, error: exc.SQLAlchemyError, *, connecting: bool) -> str:
    if connecting or (isinstance(error, exc.DBAPIError) and error.connection_invalidated):
        return unreachable(url, error)
    if is_schema_missing(error):
        return schema_too_old(url)
    if is_sqlite_busy(error):
        return stayed_locked(url)
    return f"the database at {display_url(url)} refused the operation: {_detail(error)}"


def _detail(error: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy's wrapper adds SQL and a link to its docs)."""
    cause = getattr(error, "orig", None) or error
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


def _sqlstate(cause: object) -> str | None:
    state = getattr(cause, "sqlstate", None)
    return state if isinstance(state, str) else None
