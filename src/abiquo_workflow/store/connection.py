"""What the store needs of a database, whichever it is: transactions, each on one connection.

`sqlite.py` (sqlite3 on the event loop's thread) and `postgres.py` (psycopg, async) provide them; the
store's reads, writes and queue operations are written once, against these two protocols.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Dialect, Executable, Result, Table
from sqlalchemy.dialects import sqlite

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql


class Connection(Protocol):
    """One connection, inside one transaction (SQLAlchemy's AsyncConnection is one)."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None, /) -> Result[Any]: ...


class Database(Protocol):
    """Where transactions come from: one process's connections to one database."""

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        ...

    def transaction(self, *, read_only: bool) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection in a transaction, committed when the block ends normally and rolled back if it
        raises. Driver errors raised in the block come out as StoreError."""
        ...

    async def close(self) -> None: ...


def insert_on_conflict(connection: Connection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that can say ON CONFLICT, for the connection's database (SQLAlchemy has one per dialect)."""
    return insert_on_conflict_for(connection.dialect.name, table)


def insert_on_conflict_for(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """`insert_on_conflict` by dialect name (`sqlite` or `postgresql`).

    PostgreSQL's is imported only when used: a process on SQLite never loads that dialect (1.3 MiB).
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    return sqlite.insert(table)
