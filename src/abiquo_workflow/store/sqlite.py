"""SQLite, run on the event loop's own thread: one writer connection and one reader connection; and the
set-up every SQLite connection gets, the migrations' own included.

Why on the loop's thread. A statement here takes microseconds to a millisecond. Handing each one to a
thread (as aiosqlite did) cost more than the statement itself, and a write transaction paid that once
per statement while holding SQLite's only write lock; pooled connections then fought over the lock in
SQLite's busy handler, which sleeps and retries, and under load some gave up after 5 s. Running the
statements here, one writer at a time, removes both costs.

What that asks of this module and of its callers:

- A statement blocks the loop while it runs. That is fine only because every statement the store makes
  is cheap: an indexed single-row or small-batch statement. A long query here (a scan of a big table, a
  report) would stall every request of the process; give it a connection of its own in a thread.
- Nothing waits inside SQLite: busy_timeout is 0 on these connections. Writers of this process queue in
  asyncio, on a `Mutex`. A write transaction begins with `BEGIN IMMEDIATE`, which takes the write lock
  at once or fails at once (SQLITE_BUSY) when another process holds it: the `tasks retry` command, or a
  second Store on the same file. Then we `asyncio.sleep` a growing delay and try again, for
  the busy timeout (`database.busy_timeout`) in all, while the loop serves everything else.
- Once `BEGIN IMMEDIATE` succeeded, nothing later in the transaction waits for a lock: under WAL a
  writer only appends to the WAL file, so neither its statements nor its COMMIT need another lock (a
  rollback journal would make COMMIT wait for readers; we refuse to run on one). A COMMIT can still
  fail (a disk error, a deferred constraint): the transaction is then rolled back, never left open
  holding the lock, and the caller gets StoreError.
- Reads begin a deferred transaction on the reader connection and read at once, inside the same retry
  as a writer's BEGIN: a WAL reader never waits for writers, but can meet SQLITE_BUSY at rare moments
  (another process recovering the WAL after a crash).
- One transaction at a time per connection: the reader has a lock too. Reads inside a write transaction
  (the UnitOfWork's) run on the writer: they are part of that transaction.
- SQLite's auto-checkpoint (copying the WAL back into the database file, then an fsync) would run inside
  whichever COMMIT crosses 1000 WAL pages, on the loop: 5–10 ms with the whole loop stopped, measured
  here. It is off on these connections: every `CHECKPOINT_EVERY` commits a checkpoint runs in a worker
  thread while this process's writers wait (as they waited behind the auto-checkpoint), and reads and
  everything else go on.
- sqlite3 connections belong to the thread that made them (`check_same_thread` stays on): a Store lives
  on the loop that opened it. Used from another thread, it raises RuntimeError before touching SQLite.

Every SQLite connection, the migrations' too (`configure_sqlite`), begins its transactions itself
(docs/design.md, "Known traps"): the sqlite3 module's own transaction handling starts a transaction lazily,
at the first write, which lets two writers read the same row and lose an update. So it is switched off
(`isolation_level = None`) and every write transaction begins with `BEGIN IMMEDIATE`, which takes the
write lock up front; reads begin a deferred transaction and, under WAL, never wait for writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import Dialect, Engine, Executable, Result, create_engine, event, exc
from sqlalchemy.engine.interfaces import CompiledCacheType
from sqlalchemy.pool import NullPool

from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store.connection import Connection
from abiquo_workflow.store.errors import (
    DEFAULT_BUSY_TIMEOUT,
    is_sqlite_busy,
    stayed_locked,
    translated_errors,
)
from abiquo_workflow.store.urls import display_url, parse_url

logger = logging.getLogger(__name__)

#: Commits between two checkpoints: at the 7–8 WAL pages of a stored callback, near the 1000 pages
#: after which SQLite's own auto-checkpoint would run.
CHECKPOINT_EVERY = 100

#: The first and the longest pause between two attempts to begin while another process holds a lock.
FIRST_RETRY_DELAY = 0.001
LONGEST_RETRY_DELAY = 0.025

_T = TypeVar("_T")

#: The dialect and compiled-statement cache every SQLite engine of this process uses: the first
#: connected engine's (see `_share_compiled_statements`).
_compiled_statements: tuple[Dialect, CompiledCacheType | None] | None = None


class LoopConnection:
    """A synchronous SQLAlchemy connection behind the store's async `Connection` protocol.

    `execute` runs the statement at once, on the calling (the loop's) thread, and never suspends.
    """

    def __init__(self, connection: SyncConnection) -> None:
        self._connection = connection

    @property
    def dialect(self) -> Dialect:
        return self._connection.dialect

    async def execute(self, statement: Executable, parameters: Any = None, /) -> Result[Any]:
        return self._connection.execute(statement, parameters)


class SQLiteDatabase:
    """The writer and the reader connection to one SQLite file, used as the module docstring says."""

    def __init__(
        self,
        url: str,
        engine: Engine,
        *,
        writer: SyncConnection,
        reader: SyncConnection,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        """Use `SQLiteDatabase.open`."""
        self._url = url
        self._busy_timeout = busy_timeout
        self._engine = engine
        self._writer = writer
        self._reader = reader
        self._thread = threading.get_ident()
        self._write_lock = Mutex()
        self._read_lock = Mutex()
        #: The task inside a write transaction, to refuse a nested one (it would wait for itself).
        self._writing: asyncio.Task[Any] | None = None
        self._commits_since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SQLiteDatabase:
        """Open both connections (creating the file if need be). Raises StoreError."""
        path = parse_url(url).database
        assert path is not None  # parse_url refuses SQLite URLs without a file
        engine = create_engine("sqlite+pysqlite://", creator=lambda: _connect(url, path), poolclass=NullPool)
        shared = _compiled_statements
        if shared is not None:
            engine.dialect, engine._compiled_cache = shared
        deadline = _deadline(busy_timeout)
        connections: list[SyncConnection] = []
        try:
            with translated_errors(url, connecting=True):
                for _ in range(2):
                    connections.append(await _retry_while_busy(url, engine.connect, deadline))
        except BaseException:
            for connection in connections:
                connection.close()
            engine.dispose()
            raise
        writer, reader = connections
        _share_compiled_statements(engine)
        return cls(url, engine, writer=writer, reader=reader, busy_timeout=busy_timeout)

    @property
    def dialect(self) -> str:
        return "sqlite"

    @contextlib.asynccontextmanager
    async def transaction(self, *, read_only: bool) -> AsyncIterator[Connection]:
        """A transaction on the reader (deferred) or the writer (`BEGIN IMMEDIATE`); see the module docstring.

        Raises StoreError when the lock stays taken for the busy timeout, and RuntimeError
        when called from another thread or, for a write, from inside this task's own write transaction.
        """
        self._check_thread()
        if read_only:
            connection, lock, begin = self._reader, self._read_lock, _begin_read
        else:
            if self._writing is not None and self._writing is asyncio.current_task():
                raise RuntimeError(
                    "a write transaction is already open in this task, and the store's transactions do "
                    "not nest (on SQLite the second would wait for the first forever): use the "
                    "UnitOfWork of the open one"
                )
            connection, lock, begin = self._writer, self._write_lock, _begin_write
        deadline = _deadline(self._busy_timeout)
        await self._acquire(lock, deadline)
        try:
            if not read_only:
                self._writing = asyncio.current_task()
            with translated_errors(self._url):
                await _retry_while_busy(self._url, lambda: begin(connection), deadline)
                try:
                    yield LoopConnection(connection)
                except BaseException:
                    _end(connection, commit=False)
                    raise
                _end(connection, commit=True)
        finally:
            if not read_only:
                self._writing = None
            lock.release()
        if not read_only:
            self._committed()

    async def close(self) -> None:
        """Let a running checkpoint finish, then close both connections. Safe to call twice."""
        if self._closed:
            return
        self._check_thread()
        self._closed = True
        if self._checkpointing is not None:
            await self._checkpointing
        self._reader.close()
        self._writer.close()
        self._engine.dispose()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "this Store was opened in another thread: its SQLite connections belong to the event "
                "loop that opened it, so open a Store in each thread that needs one"
            )

    async def _acquire(self, lock: Mutex, deadline: float) -> None:
        """Wait for this process's other transaction on the connection to end, until `deadline`."""
        if not await lock.acquire(deadline):
            raise StoreError(
                f"the database at {display_url(self._url)} stayed busy with this process's other "
                f"transactions for more than {self._busy_timeout:g} s: is one of them waiting "
                "on something slow?"
            )

    def _committed(self) -> None:
        """Count a commit; start a checkpoint when enough came since the last one."""
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY and self._checkpointing is None:
            self._commits_since_checkpoint = 0
            self._checkpointing = asyncio.create_task(self._checkpoint(), name="awf-sqlite-checkpoint")

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file in a worker thread, this process's writers queued meanwhile.

        With no writer of ours running, the checkpoint gets every frame (unless a read of another
        process still uses them), so the next writer starts the WAL over instead of growing it.
        """
        path = parse_url(self._url).database
        await self._write_lock.acquire(deadline=None)
        try:
            await asyncio.to_thread(_checkpoint_wal, str(path))
        except sqlite3.Error as error:  # the WAL only grows until the next checkpoint gets through
            logger.warning("could not checkpoint the SQLite WAL of %s: %s", display_url(self._url), error)
        finally:
            self._write_lock.release()
            self._checkpointing = None


class Mutex:
    """One holder at a time. A free mutex is taken at once, and releasing it wakes every waiter.

    Not asyncio.Lock, on purpose: its first-come hand-over gives the lock to one waiter per turn of
    the loop, and newcomers queue behind, so once writers have queued (behind a checkpoint, say) under
    steady load they stay queued, each waiting for the loop to come round: a lock convoy, measured here
    as a third fewer callbacks per second. Here every waiter wakes in the same turn and, as a
    transaction rarely suspends, they all run in it; one that finds the mutex taken again waits again.
    """

    def __init__(self) -> None:
        self._free = asyncio.Event()
        self._free.set()

    async def acquire(self, deadline: float | None) -> bool:
        """Take the mutex, waiting until `deadline` (the loop's clock; None: no limit); False if it passed."""
        if not self._free.is_set():
            try:
                async with asyncio.timeout_at(deadline):
                    while not self._free.is_set():
                        await self._free.wait()
            except TimeoutError:
                return False
        self._free.clear()
        return True

    def release(self) -> None:
        self._free.set()


def configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    """Install SQLAlchemy's documented recipe for real SQLite transactions, plus our pragmas.

    For the migrations' engine, used from a thread: a writer waits in SQLite's busy handler for up to
    `DEFAULT_BUSY_TIMEOUT`. The store's own connections do not use this (see `_connect`).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        apply_sqlite_pragmas(
            dbapi_connection, foreign_keys=foreign_keys, busy_timeout_ms=int(DEFAULT_BUSY_TIMEOUT * 1000)
        )

    @event.listens_for(engine, "begin")
    def _on_begin(connection: SyncConnection) -> None:
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


def _connect(url: str, path: str) -> sqlite3.Connection:
    """A sqlite3 connection set up for the loop: WAL, foreign keys, no busy waiting, no auto-checkpoint."""
    connection = sqlite3.connect(path, timeout=0)
    try:
        journal_mode = apply_sqlite_pragmas(connection, foreign_keys=True, busy_timeout_ms=0)
        connection.execute("PRAGMA wal_autocheckpoint=0")  # SQLiteDatabase checkpoints in a thread
        if journal_mode != "wal":
            raise StoreError(
                f"the SQLite database at {display_url(url)} cannot use the WAL journal (it stays in "
                f"{journal_mode!r} mode), which abiquo-workflow needs: is it on a network file system?"
            )
    except BaseException:
        connection.close()
        raise
    return connection


def _share_compiled_statements(engine: Engine) -> None:
    """Let every later SQLite engine of this process use `engine`'s dialect and compiled statements.

    SQLAlchemy compiles each statement to SQL once per engine, and keys its cache by the engine's
    dialect object. Every SQLite engine of a process has the same dialect (the same sqlite3 library
    under it), so they can share one dialect and its cache. A process that opens many stores (the
    test suite opens hundreds, one per test) then compiles the store's statements once, not once per
    store: that was 8 % of the CPU of the web app's and the worker's SQLite tests. The first
    engine's dialect is kept only once the engine has connected, because the dialect learns the
    library's version then. A later engine is given it before it connects, because a SQLAlchemy
    connection keeps the dialect its engine had when the connection was made.
    """
    global _compiled_statements
    if _compiled_statements is None:
        _compiled_statements = (engine.dialect, engine._compiled_cache)


def _begin_write(connection: SyncConnection) -> None:
    _begin(connection, "BEGIN IMMEDIATE")


def _begin_read(connection: SyncConnection) -> None:
    _begin(connection, "BEGIN")
    try:
        # Read now, inside the caller's retry: the rare SQLITE_BUSY a WAL reader can meet comes here.
        connection.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1").close()
    except BaseException:
        _end(connection, commit=False)
        raise


def _begin(connection: SyncConnection, statement: str) -> None:
    """Begin a transaction; when SQLite refuses, leave the connection outside any transaction."""
    connection.begin()  # SQLAlchemy's bookkeeping only: the driver sends nothing (isolation_level None)
    try:
        connection.exec_driver_sql(statement)
    except BaseException:
        connection.rollback()
        raise


def _end(connection: SyncConnection, *, commit: bool) -> None:
    """Commit or roll back, and never leave the connection inside a transaction.

    When SQLite refuses a COMMIT, its transaction stays open (and, on the writer, keeps the write lock)
    while SQLAlchemy considers it over; so look at the driver's own state and roll back there too.
    """
    try:
        if commit:
            connection.commit()
        else:
            connection.rollback()
    finally:
        if connection.get_transaction() is not None:
            connection.rollback()
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite3.Connection) and driver.in_transaction:
            driver.rollback()


async def _retry_while_busy(url: str, attempt: Callable[[], _T], deadline: float) -> _T:
    """`attempt()`, again after a growing pause while SQLite answers SQLITE_BUSY, until `deadline`."""
    delay = FIRST_RETRY_DELAY
    loop = asyncio.get_running_loop()
    while True:
        try:
            return attempt()
        except exc.OperationalError as error:
            if not is_sqlite_busy(error):
                raise
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreError(stayed_locked(url)) from error
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, LONGEST_RETRY_DELAY)


def _deadline(busy_timeout: float) -> float:
    return asyncio.get_running_loop().time() + busy_timeout


def _checkpoint_wal(path: str) -> None:
    """A PASSIVE checkpoint on a connection of its own: it takes no lock a reader or writer needs."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        connection.close()
