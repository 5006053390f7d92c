"""PostgreSQL: the async psycopg 3 engine the store runs on, and the LISTEN connection that wakes workers.

Everything that needs psycopg lives here, and the store imports this module only for a `postgresql://`
URL: a process on SQLite never loads psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store.connection import Connection
from abiquo_workflow.store.errors import translated_errors, unreachable
from abiquo_workflow.store.queue import JOBS_CHANNEL, Wakeup
from abiquo_workflow.store.urls import libpq_conninfo, parse_url

logger = logging.getLogger(__name__)

#: How the listener's connection shows in `pg_stat_activity`.
LISTENER_APPLICATION_NAME = "abiquo-workflow job listener"


class PostgresDatabase:
    """A pool of async psycopg connections, and a JobListener setting the store's Wakeup on NOTIFY."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        """Use `PostgresDatabase.open`."""
        self._url = url
        self._engine = engine
        self._listener: JobListener | None = None

    @classmethod
    async def open(cls, url: str, wakeup: Wakeup) -> PostgresDatabase:
        """Make the engine and start listening for jobs enqueued by other processes. Raises StoreError."""
        engine = create_async_engine(parse_url(url).set(drivername="postgresql+psycopg"), pool_pre_ping=True)
        database = cls(url, engine)
        try:
            listener = JobListener(libpq_conninfo(url), wakeup)
            try:
                await listener.start()
            except psycopg.Error as error:
                raise StoreError(unreachable(url, error)) from error
            database._listener = listener
        except BaseException:
            await database.close()
            raise
        return database

    @property
    def dialect(self) -> str:
        return "postgresql"

    @contextlib.asynccontextmanager
    async def transaction(self, *, read_only: bool) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction (READ COMMITTED; `read_only` changes nothing here)."""
        with translated_errors(self._url, connecting=True):
            conn = await self._engine.connect()
        try:
            with translated_errors(self._url):
                async with conn.begin():
                    yield conn
        finally:
            await conn.close()

    async def close(self) -> None:
        """Stop listening and close every connection. Safe to call twice."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        await self._engine.dispose()


class JobListener:
    """LISTENs on `JOBS_CHANNEL` over its own PostgreSQL connection and sets a Wakeup on each NOTIFY.

    If the connection drops, it tries again every `reconnect_delay` seconds and sets the Wakeup once
    back (jobs may have arrived meanwhile); until then workers fall back to polling.
    """

    def __init__(self, conninfo: str, wakeup: Wakeup, *, reconnect_delay: float = 5.0) -> None:
        self._conninfo = conninfo
        self._wakeup = wakeup
        self._reconnect_delay = reconnect_delay
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and LISTEN now, so no NOTIFY sent after `start` returns is missed. Raises psycopg.Error."""
        connection = await self._listen()
        self._task = asyncio.create_task(self._run(connection), name="awf-job-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name=LISTENER_APPLICATION_NAME
        )
        try:
            await connection.execute(f"LISTEN {JOBS_CHANNEL}")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _run(self, connection: psycopg.AsyncConnection[Any]) -> None:
        while True:
            try:
                async with connection:
                    async for _ in connection.notifies():
                        self._wakeup.set()
            except psycopg.Error as error:
                logger.warning("lost the PostgreSQL connection listening for jobs: %s", error)
            connection = await self._reconnect()
            self._wakeup.set()

    async def _reconnect(self) -> psycopg.AsyncConnection[Any]:
        while True:
            await asyncio.sleep(self._reconnect_delay)
            try:
                return await self._listen()
            except psycopg.Error as error:
                logger.warning("cannot listen for jobs on PostgreSQL yet: %s", error)
