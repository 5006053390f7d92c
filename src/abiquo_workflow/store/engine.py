"""Turning a user's database URL into a configured SQLAlchemy engine, and driver errors into StoreError.

Users write `sqlite:///path` or `postgresql://…` (DESIGN.md, `database.url`). The store runs on
sqlite3 from the event loop's thread (`sqlite.py`) or on psycopg 3, async (`postgres.py`); migrations
run on a synchronous engine made here (sqlite3 or psycopg).

SQLite needs care (DESIGN.md, "Known traps"): the sqlite3 module's own transaction handling starts a
transaction lazily, at the first write, which lets two writers read the same row and lose an update. So
we switch it off (`isolation_level = None`) and begin every write transaction ourselves with
`BEGIN IMMEDIATE`, which takes the write lock up front; reads begin a deferred transaction and, under
WAL, never wait for writers.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool

from abiquo_workflow.exceptions import StoreError

#: How long a SQLite writer waits for another to finish before giving up, milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5000

_SQLITE_DRIVERS = {"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}


def parse_url(url: str) -> URL:
    """Check a user's database URL and return it with its driver left out (`sqlite` or `postgresql`)."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StoreError(
            f"{url!r} is not a database URL: expected sqlite:///path or postgresql://…"
        ) from error
    if parsed.drivername in _SQLITE_DRIVERS:
        if not parsed.database or ":memory:" in parsed.database or parsed.query.get("mode") == "memory":
            raise StoreError(
                "an in-memory SQLite database cannot be shared by the server and its worker: "
                "give a file, for example sqlite:///./abiquo-workflow.db"
            )
        return parsed.set(drivername="sqlite")
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql")
    raise StoreError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///path or postgresql://user@host/db"
    )


def display_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def libpq_conninfo(url: str) -> str:
    """A `postgresql://` URL psycopg can connect with directly (password included)."""
    return parse_url(url).render_as_string(hide_password=False)


def create_sync_engine(url: str) -> Engine:
    """The engine migrations run on: sqlite3 or psycopg (sync), without pooling.

    Foreign keys stay off on SQLite here: Alembic's batch mode rebuilds tables by copy, drop and rename,
    which enforced foreign keys would refuse (SQLite ignores the pragma inside a transaction anyway).
    """
    parsed = parse_url(url)
    if parsed.drivername == "sqlite":
        engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), poolclass=NullPool)
        configure_sqlite(engine, foreign_keys=False)
        return engine
    return create_engine(parsed.set(drivername="postgresql+psycopg"), poolclass=NullPool)


def configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    """Install SQLAlchemy's documented recipe for real SQLite transactions, plus our pragmas.

    For the migrations' engine, used from a thread: a writer waits in SQLite's busy handler for up to
    `SQLITE_BUSY_TIMEOUT_MS`. The store's own connections do not use this (see `sqlite.py`).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        apply_sqlite_pragmas(
            dbapi_connection, foreign_keys=foreign_keys, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS
        )

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def apply_sqlite_pragmas(dbapi_connection: Any, *, foreign_keys: bool, busy_timeout_ms: int) -> str:
    """Set up a fresh sqlite3 connection as this module's docstring says; return the journal mode in force.

    The journal mode is asked for, not assumed: SQLite keeps the old one when it cannot switch to WAL.
    """
    # Stop the driver from issuing BEGIN itself (it would do so late, at the first write).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        journal_mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe under WAL; FULL only adds fsyncs
    finally:
        cursor.close()
    return journal_mode


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
        f"the database at {display_url(url)} stayed locked by another writer for more than "
        f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s: is another process using the same SQLite file?"
    )


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


def unreachable(url: str, error: BaseException) -> str:
    return f"the database at {display_url(url)} is not reachable: {_detail(error)}"


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
