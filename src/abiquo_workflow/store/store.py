"""The Store: every read and write of the connector's state, and the unit of work that groups writes.

The approvals layer composes a use case from the fine-grained operations of a `UnitOfWork`, which all
run in one database transaction: a state change and the job that acts on it commit together or not at
all (the outbox, docs/design.md "State of a task"). Each transition is one conditional statement
(`UPDATE … WHERE decision = 'pending' … RETURNING`), so a click, callback or job that arrives twice
changes nothing the second time, and the caller learns that from the rows returned.

Driver errors never leave the store: they become `StoreError`, with a sentence and the cause chained.

The reads are written once, in `reads.py`, for the Store and the UnitOfWork alike; the worker's side of
the queue is `job_queue.py`. The connections come from `sqlite.py` (sqlite3 on the event loop's thread:
read its docstring before adding a statement, which must stay cheap) or `postgres.py` (psycopg, async;
imported only for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Executable, Result, RowMapping, bindparam, func, insert, select, text, update

from abiquo_workflow import metrics
from abiquo_workflow.domain import (
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryState,
    HeldTask,
)
from abiquo_workflow.exceptions import StoreError
from abiquo_workflow.store import queue, schema
from abiquo_workflow.store.clock import Clock, utc_now
from abiquo_workflow.store.connection import Connection, Database, insert_on_conflict
from abiquo_workflow.store.errors import (
    DEFAULT_BUSY_TIMEOUT,
    is_schema_missing,
    schema_too_new,
    schema_too_old,
    translated_errors,
)
from abiquo_workflow.store.job_queue import JobQueue
from abiquo_workflow.store.listing import Listing
from abiquo_workflow.store.reads import Reader
from abiquo_workflow.store.records import (
    NotificationRecord,
    NotificationStatus,
    RequestRecord,
    TaskRecord,
    from_row,
)
from abiquo_workflow.store.sqlite import SQLiteDatabase
from abiquo_workflow.store.tables import approvals, audit, notifications, requests, tasks
from abiquo_workflow.store.urls import display_url, parse_url

# Statements on the callback's path, built once and run with parameters: building an INSERT with
# `.values(...)` each time coerced every value and keyed the compiled-statement cache on them, which
# profiling showed as a fifth of a callback's CPU time.
_INSERT_REQUEST = insert(requests)
_INSERT_AUDIT = insert(audit).returning(audit.c.id)
_INSERT_AUDIT_LINES = insert(audit)
#: Rows written by one statement of a large batch; the event loop gets a turn between two.
_ROWS_PER_STATEMENT = 100
#: What `confirm_tasks` takes from Abiquo's answer, by HeldTask field (= column) name.
_CONFIRMED_COLUMNS = (
    "task_type",
    "user_id",
    "owner_id",
    "state",
    "self_href",
    "target_href",
    "user_href",
    "continue_href",
    "cancel_href",
    "verified_at",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Approved:
    """What one approver's answer did (`UnitOfWork.approve`): the tasks it decided, those where it was
    counted but more approvals are needed, and those where this approver had already answered so."""

    decided: list[TaskRecord]
    waiting: list[str]
    repeated: list[str]


class UnitOfWork(Reader):
    """The operations of one database transaction; obtained from `Store.transaction()`, valid inside it.

    Nothing is visible to others until the `async with` block ends without an exception; then all of
    it commits at once. If the block raises, everything written in it is rolled back, jobs included.
    Its reads (`Reader`) run inside the transaction and see what it wrote so far.
    """

    def __init__(self, conn: Connection, *, url: str, clock: Clock) -> None:
        self._conn = conn
        self._url = url
        self._clock = clock
        #: True once a job was enqueued or requeued: the store wakes workers after the COMMIT.
        self.enqueued = False
        #: Tasks this transaction decided: their time to decision is observed once it commits.
        self.decided: list[TaskRecord] = []

    async def _execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        with translated_errors(self._url):
            return await self._conn.execute(statement, parameters)

    async def _fetch(self, query: Executable) -> Sequence[RowMapping]:
        return (await self._execute(query)).mappings().all()

    async def insert_request(
        self, callback: Callback, *, body: str, content_type: str | None, source: str | None
    ) -> str:
        """Store one callback as received and return its new id.

        The requester is the first task's user (Abiquo sends one user for the whole callback).
        """
        request_id = str(uuid.uuid4())
        first = callback.tasks[0] if callback.tasks else None
        await self._execute(
            _INSERT_REQUEST,
            {
                "id": request_id,
                "received_at": self._clock(),
                "format": callback.format,
                "single_root": callback.single_root,
                "content_type": content_type,
                "source": source,
                "body": body,
                "requester_id": first.user_id if first else None,
                "requester_href": first.user_href if first else None,
            },
        )
        return request_id

    async def insert_tasks(self, request_id: str, held: Sequence[HeldTask]) -> list[str]:
        """Store a request's held tasks and return the ids actually inserted, in the order given.

        A task id we already have (Abiquo sent the same task again) is skipped, not overwritten: it
        keeps its first request and its decision.
        """
        first_of_each: dict[str, HeldTask] = {}
        for task in held:
            first_of_each.setdefault(task.task_id, task)
        unique = list(first_of_each.values())
        if not unique:
            return []
        now = self._clock()
        rows = [
            {
                "task_id": task.task_id,
                "request_id": request_id,
                "position": position,
                "task_type": task.task_type,
                "user_id": task.user_id,
                "owner_id": task.owner_id,
                "state": task.state,
                "target_href": task.target_href,
                "user_href": task.user_href,
                "self_href": task.self_href,
                "continue_href": task.continue_href,
                "cancel_href": task.cancel_href,
                "created_at": now,
                "decision": DecisionState.PENDING,
                "delivery_attempts": 0,
            }
            for position, task in enumerate(unique)
        ]
        statement = (
            insert_on_conflict(self._conn, tasks)
            .on_conflict_do_nothing(index_elements=[tasks.c.task_id])
            .returning(tasks.c.task_id)
        )
        # Many rows at once (SQLAlchemy batches them into multi-row INSERTs within the driver's limits),
        # in slices with a pause between, so that a vApp of hundreds of VMs never holds the event loop
        # (SQLite runs on its thread) for long.
        inserted: set[str] = set()
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            if start:
                await asyncio.sleep(0)
            result = await self._execute(statement, rows[start : start + _ROWS_PER_STATEMENT])
            inserted.update(result.scalars())
        return [task.task_id for task in unique if task.task_id in inserted]

    async def decide(
        self,
        task_ids: Iterable[str],
        state: DecisionState,
        *,
        decided_by: DecidedBy,
        actor: str,
        reason: str | None,
        channel: Channel,
        delivery: DeliveryState = DeliveryState.QUEUED,
    ) -> list[TaskRecord]:
        """Decide the tasks among `task_ids` that are still pending; return only those this call changed.

        One conditional UPDATE: of two concurrent decisions on a task exactly one wins, and the loser
        gets an empty list. Delivery starts as `queued` (enqueue the delivery job in the same
        transaction); a decision already taken in Abiquo (`DecidedBy.EXTERNAL`) may pass
        `delivery=DeliveryState.SUPERSEDED` instead, as there is nothing left to deliver.
        """
        if state not in (DecisionState.ACCEPTED, DecisionState.DECLINED):
            raise ValueError(f"decide() needs a decision: accepted or declined, not {state}")
        return await self._settle_pending(
            task_ids,
            decision=state,
            decided_by=decided_by,
            actor=actor,
            reason=reason,
            channel=channel,
            delivery=delivery,
        )

    async def approve(
        self,
        task_ids: Iterable[str],
        state: DecisionState,
        *,
        approver: str,
        actor: str,
        reason: str | None,
        channel: Channel,
        needed: int,
    ) -> Approved:
        """Record one approver's answer on the tasks among `task_ids` still pending, and decide those
        it settles: a decline at once (a veto), an accept once `needed` distinct approvers accepted.

        The pending tasks are locked first (`FOR UPDATE` on PostgreSQL; SQLite has one writer at a
        time), so of concurrent answers each counts the ones committed before it: two last accepts
        cannot both decide, nor can two accepts that are each one short both miss it. A second answer
        of the same approver (`approver`: the email, lower-cased) counts once.
        """
        wanted = sorted(dict.fromkeys(task_ids))
        if not wanted:
            return Approved([], [], [])
        if state not in (DecisionState.ACCEPTED, DecisionState.DECLINED):
            raise ValueError(f"approve() needs an answer: accepted or declined, not {state}")
        locked = await self._execute(
            select(tasks.c.task_id, tasks.c.request_id)
            .where(tasks.c.task_id.in_(wanted), tasks.c.decision == DecisionState.PENDING)
            .order_by(tasks.c.task_id)
            .with_for_update()
        )
        pending = {row.task_id: row.request_id for row in locked}
        if not pending:
            return Approved([], [], [])
        action = "accept" if state is DecisionState.ACCEPTED else "decline"
        now = self._clock()
        recorded = await self._execute(
            insert_on_conflict(self._conn, approvals)
            .values(
                [
                    {
                        "task_id": task_id,
                        "request_id": request_id,
                        "approver": approver,
                        "actor": actor,
                        "action": action,
                        "at": now,
                        "channel": channel,
                        "reason": reason,
                    }
                    for task_id, request_id in pending.items()
                ]
            )
            .on_conflict_do_nothing(index_elements=["task_id", "approver", "action"])
            .returning(approvals.c.task_id)
        )
        new = set(recorded.scalars())
        if state is DecisionState.DECLINED:
            settled = list(pending)
        else:
            counts = await self._fetch(
                select(approvals.c.task_id, func.count(approvals.c.approver.distinct()).label("accepts"))
                .where(approvals.c.task_id.in_(list(pending)), approvals.c.action == "accept")
                .group_by(approvals.c.task_id)
            )
            settled = [row["task_id"] for row in counts if row["accepts"] >= needed]
        decided = await self._settle_pending(
            settled,
            decision=state,
            decided_by=DecidedBy.APPROVER,
            actor=actor,
            reason=reason,
            channel=channel,
            delivery=DeliveryState.QUEUED,
        )
        decided_ids = {t.task_id for t in decided}
        waiting = [t for t in pending if t not in decided_ids and t in new]
        repeated = [t for t in pending if t not in decided_ids and t not in new]
        return Approved(decided, waiting, repeated)

    async def confirm_tasks(self, confirmed: Sequence[HeldTask]) -> list[TaskRecord]:
        """Replace what the callback said of pending tasks with Abiquo's own view of them (`confirmed`,
        built from Abiquo's answers), and mark them verified.

        Only pending tasks change (a task decided meanwhile keeps what it was decided on); returns the
        confirmed tasks that are still pending, in the order given. One statement for all of them.
        """
        if not confirmed:
            return []
        now = self._clock()
        await self._execute(
            update(tasks)
            .where(tasks.c.task_id == bindparam("confirmed_id"), tasks.c.decision == DecisionState.PENDING)
            .values({name: bindparam(f"new_{name}") for name in _CONFIRMED_COLUMNS}),
            [
                {"confirmed_id": held.task_id, "new_verified_at": now}
                | {f"new_{name}": getattr(held, name) for name in _CONFIRMED_COLUMNS if name != "verified_at"}
                for held in confirmed
            ],
        )
        still_pending = await self.get_tasks(held.task_id for held in confirmed)
        return [t for t in still_pending if t.decision is DecisionState.PENDING and t.verified_at == now]

    async def reject(self, task_ids: Sequence[str], reason: str) -> list[TaskRecord]:
        """Mark pending tasks rejected (Abiquo does not hold them as described), all for one reason;
        return those this call changed. A rejected task has no delivery: nothing is sent to Abiquo."""
        return await self._settle_pending(
            task_ids,
            decision=DecisionState.REJECTED,
            decided_by=DecidedBy.VERIFICATION,
            actor="abiquo-workflow",
            reason=reason,
            channel=Channel.SYSTEM,
        )

    async def _settle_pending(self, task_ids: Iterable[str], **outcome: Any) -> list[TaskRecord]:
        """Set `outcome` (decision columns) on the tasks among `task_ids` still pending, decided now; return
        those this call changed, in the order given. `decide` and `reject` differ only in the outcome."""
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return []
        result = await self._execute(
            update(tasks)
            .where(tasks.c.task_id.in_(wanted), tasks.c.decision == DecisionState.PENDING)
            .values(decided_at=self._clock(), **outcome)
            .returning(*tasks.c)
        )
        changed = {row["task_id"]: from_row(TaskRecord, row) for row in result.mappings()}
        self.decided.extend(changed.values())
        return [changed[task_id] for task_id in wanted if task_id in changed]

    async def set_delivery(
        self,
        task_id: str,
        state: DeliveryState,
        *,
        detail: str | None,
        abiquo_state: str | None = None,
        expect: DeliveryState | None = None,
        attempted: bool = True,
    ) -> TaskRecord | None:
        """Move a decided task's delivery to `state`; return the task, or None if nothing changed.

        With `expect`, only a task whose delivery is in that state changes (for example
        `expect=QUEUED`, so a delivery job that runs twice records its outcome once). Pending tasks
        never change: they have nothing to deliver. `attempted` counts one more POST to Abiquo;
        pass False for changes that are not an attempt (requeueing a failed delivery by hand).
        `abiquo_state`, when given, records the task state Abiquo reported.
        """
        conditions = [tasks.c.task_id == task_id, tasks.c.delivery.is_not(None)]
        if expect is not None:
            conditions.append(tasks.c.delivery == expect)
        values: dict[str, Any] = {"delivery": state, "delivery_detail": detail}
        if attempted:
            values["delivery_attempts"] = tasks.c.delivery_attempts + 1
        if abiquo_state is not None:
            values["abiquo_state"] = abiquo_state
        if state is DeliveryState.DELIVERED:
            values["delivered_at"] = self._clock()
        result = await self._execute(update(tasks).where(*conditions).values(values).returning(*tasks.c))
        row = result.mappings().one_or_none()
        return None if row is None else from_row(TaskRecord, row)

    async def save_triage(
        self,
        request_id: str,
        details: Mapping[str, Any] | None,
        approvers: Sequence[str],
        vm_names: Mapping[str, str],
        *,
        error: str | None = None,
    ) -> RequestRecord | None:
        """Record what triage learned: the enriched snapshot, the approvers, each task's VM name.

        `error` says what triage could not find out (the request still goes ahead with what it has).
        Running it again overwrites the earlier result. Returns None for an unknown request.
        """
        result = await self._execute(
            update(requests)
            .where(requests.c.id == request_id)
            .values(
                details=None if details is None else dict(details),
                enterprise_id=_enterprise_id(details),
                approvers=list(approvers),
                triaged_at=self._clock(),
                triage_error=error,
            )
            .returning(*requests.c)
        )
        row = result.mappings().one_or_none()
        if row is None:
            return None
        if vm_names:
            await self._execute(
                update(tasks)
                .where(tasks.c.request_id == request_id, tasks.c.task_id == bindparam("named_task"))
                .values(vm_name=bindparam("vm_name")),
                [{"named_task": task_id, "vm_name": name} for task_id, name in vm_names.items()],
            )
        return from_row(RequestRecord, row)

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        run_after: datetime | None = None,
        dedupe_key: str | None = None,
        max_attempts: int = queue.DEFAULT_MAX_ATTEMPTS,
        priority: int = 0,
    ) -> int | None:
        """Add a job, due at `run_after` (now if None); return its id.

        With `dedupe_key`, a second job with the same key is not added and None is returned: "enqueue
        once" (the key stays taken after the job is done). `payload` must be JSON-serialisable.
        `priority` 0 is the most urgent; of due jobs, claims take the lowest priority first, aged by
        how long each has waited (queue.py). Workers are woken after this transaction commits.
        """
        with translated_errors(self._url):
            job_id = await queue.enqueue(
                self._conn,
                self._clock(),
                kind,
                payload,
                run_after=run_after,
                dedupe_key=dedupe_key,
                max_attempts=max_attempts,
                priority=priority,
            )
        self.enqueued = self.enqueued or job_id is not None
        return job_id

    async def requeue(self, job_id: int) -> bool:
        """Give a dead job a fresh set of attempts, due now (`tasks retry`). False if it is not dead."""
        with translated_errors(self._url):
            requeued = await queue.requeue(self._conn, self._clock(), job_id)
        self.enqueued = self.enqueued or requeued
        return requeued

    async def audit(
        self,
        action: str,
        *,
        actor: str | None = None,
        channel: Channel | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
        detail: str | None = None,
    ) -> int:
        """Append one line to the audit log and return its id. Lines are never changed or removed."""
        result = await self._execute(
            _INSERT_AUDIT,
            {
                "at": self._clock(),
                "request_id": request_id,
                "task_id": task_id,
                "actor": actor,
                "action": action,
                "channel": channel,
                "detail": detail,
            },
        )
        return int(result.scalar_one())

    async def audit_each(
        self,
        action: str,
        task_ids: Sequence[str],
        *,
        channel: Channel | None = None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """The same audit line for each of many tasks, in one statement."""
        if not task_ids:
            return
        at = self._clock()
        await self._execute(
            _INSERT_AUDIT_LINES,
            [
                {
                    "at": at,
                    "request_id": request_id,
                    "task_id": task_id,
                    "actor": None,
                    "action": action,
                    "channel": channel,
                    "detail": detail,
                }
                for task_id in task_ids
            ],
        )

    async def add_notification(
        self, request_id: str, *, kind: str, recipient: str, task_ids: Sequence[str] | None = None
    ) -> int:
        """Record an email to send (status queued) and return its id."""
        result = await self._execute(
            insert(notifications)
            .values(
                request_id=request_id,
                task_ids=None if task_ids is None else list(task_ids),
                kind=kind,
                recipient=recipient,
                status=NotificationStatus.QUEUED,
                attempts=0,
                created_at=self._clock(),
            )
            .returning(notifications.c.id)
        )
        return int(result.scalar_one())

    async def set_notification(
        self, notification_id: int, status: NotificationStatus, *, error: str | None = None
    ) -> NotificationRecord | None:
        """Record one attempt to send: `sent`, `failed` for good, or still `queued` after a passing error.

        Each call counts one attempt. `error` becomes the last error (kept when None).
        """
        values: dict[str, Any] = {"status": status, "attempts": notifications.c.attempts + 1}
        if error is not None:
            values["last_error"] = error
        if status is NotificationStatus.SENT:
            values["sent_at"] = self._clock()
        result = await self._execute(
            update(notifications)
            .where(notifications.c.id == notification_id)
            .values(values)
            .returning(*notifications.c)
        )
        row = result.mappings().one_or_none()
        return None if row is None else from_row(NotificationRecord, row)


class Store(Listing):
    """The connector's state, on SQLite (one instance) or PostgreSQL (several).

    Open it with `await Store.open(url)` (or `async with await Store.open(url) as store:`) and close it
    with `await store.close()`. Every method is a coroutine and returns frozen records. The reads
    (`Reader`) each run in a short read transaction of their own; writes go through `transaction()`;
    workers take `queue`.
    """

    def __init__(self, database: Database, *, url: str, clock: Clock, wakeup: queue.Wakeup) -> None:
        """Use `Store.open`, which also migrates, checks the schema and starts the job listener."""
        self._database = database
        self._url = url
        self._clock = clock
        #: The workers' side of the queue; woken after the COMMIT of any transaction that enqueued a job
        #: (and, on PostgreSQL, on NOTIFY).
        self.queue = JobQueue(database, clock=clock, wakeup=wakeup)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        clock: Clock = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> Store:
        """Connect to the database at `url` (`sqlite:///path` or `postgresql://…`).

        Parameters
        ----------
        migrate:
            Upgrade the schema first if it is not this version's (the default, right for a single
            instance). Replicas sharing a PostgreSQL database pass False and run `abiquo-workflow
            migrate` once per release.
        clock:
            Where "now" comes from; tests pass a clock they can move.
        busy_timeout:
            SQLite only: seconds a transaction waits for another process's lock before it fails
            (`database.busy_timeout`).

        On SQLite the Store belongs to the event loop (and thread) that opened it: see `sqlite.py`.
        Raises StoreError when the database is unreachable or its schema is not this version's.
        """
        wakeup = queue.Wakeup()
        database: Database
        if parse_url(url).drivername == "sqlite":
            database = await SQLiteDatabase.open(url, busy_timeout=busy_timeout)
        else:
            from abiquo_workflow.store.postgres import PostgresDatabase  # psycopg: PostgreSQL only

            database = await PostgresDatabase.open(url, wakeup)
        store = cls(database, url=url, clock=clock, wakeup=wakeup)
        try:
            await store._ensure_schema(migrate=migrate)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Stop listening for jobs and close every connection. Safe to call twice."""
        await self._database.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Store {display_url(self._url)}>"

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._database.dialect

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """A unit of work: one transaction (on SQLite, `BEGIN IMMEDIATE`) for the writes made through it.

        Commits when the block ends normally; rolls everything back if it raises. Workers are woken
        after the COMMIT when the block enqueued a job, never before and never after a rollback.

        Keep the block short and free of network I/O (Abiquo, SMTP): on SQLite it holds the one write
        lock, and this process's other writers queue behind it (giving up after the busy timeout).
        For the same reason never open a second transaction inside the block (on SQLite that raises
        RuntimeError); the store's reads outside it are fine, and see the state before the block.
        """
        async with self._database.transaction(read_only=False) as conn:
            work = UnitOfWork(conn, url=self._url, clock=self._clock)
            yield work
        for task in work.decided:
            _observe_decision(task)
        if work.enqueued:
            self.queue.wake()

    async def _fetch(self, query: Executable) -> Sequence[RowMapping]:
        async with self._database.transaction(read_only=True) as conn:
            return (await conn.execute(query)).mappings().all()

    async def _ensure_schema(self, *, migrate: bool) -> None:
        """Check the database is at `schema.HEAD_REVISION`, migrating it first if allowed and needed.

        Alembic is imported only when the database is not at the head (see `schema.py`).
        """
        revisions = await self._schema_revisions()
        if revisions == {schema.HEAD_REVISION}:
            return
        if migrate:
            await asyncio.to_thread(schema.migrate, self._url)  # StoreError if the schema is newer
            revisions = await self._schema_revisions()
            if revisions == {schema.HEAD_REVISION}:
                return
        if revisions and not revisions <= await asyncio.to_thread(schema.known_revisions):
            raise StoreError(schema_too_new(self._url))
        raise StoreError(schema_too_old(self._url))

    async def _schema_revisions(self) -> set[str]:
        """The revisions in Alembic's version table (one, or none when the database was never migrated)."""
        try:
            async with self._database.transaction(read_only=True) as conn:
                result = await conn.execute(select(schema.alembic_version.c.version_num))
                return set(result.scalars())
        except StoreError as error:
            if error.__cause__ is not None and is_schema_missing(error.__cause__):
                return set()
            raise

    async def schema_status(self) -> SchemaStatus:
        """Whether the database's schema is this version's (`/readyz`): one query when it is; the
        migration scripts are read, once per process, only when it is not. Raises StoreError when the
        database does not answer."""
        revisions = await self._schema_revisions()
        if revisions == {schema.HEAD_REVISION}:
            return SchemaStatus.CURRENT
        if revisions and not revisions <= await asyncio.to_thread(_known_revisions):
            return SchemaStatus.NEWER
        return SchemaStatus.OLDER

    async def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial query (for readiness checks)."""
        await self._fetch(text("SELECT 1"))


class SchemaStatus(enum.StrEnum):
    """How the database's schema stands to this version's (`Store.schema_status`)."""

    #: At `schema.HEAD_REVISION`.
    CURRENT = "current"
    #: Older, or never migrated: `abiquo-workflow migrate` brings it up to date.
    OLDER = "older"
    #: Migrated by a newer release (a rolling upgrade under way): this one keeps working on it.
    NEWER = "newer"


@functools.cache
def _known_revisions() -> frozenset[str]:
    """The revisions of this version's migration scripts, read once (they do not change while we run)."""
    return frozenset(schema.known_revisions())


def _observe_decision(task: TaskRecord) -> None:
    """Count a committed decision in the time-to-decision histogram, by who decided."""
    if task.decided_at is None:
        return
    waited = (task.decided_at - task.created_at).total_seconds()
    metrics.TIME_TO_DECISION.labels(str(task.decided_by or "unknown")).observe(max(waited, 0.0))


def _enterprise_id(details: Mapping[str, Any] | None) -> str | None:
    """The enterprise of a triage snapshot (a `RequestDetails` as JSON): the VM's, else the requester's.

    Kept in `requests.enterprise_id` for the listings' scope; the same paths as `reads._ENTERPRISE_ID`.
    """
    for part, key in (("enterprise", "id"), ("requester", "enterprise_id")):
        value = (details or {}).get(part)
        if isinstance(value, Mapping) and value.get(key) not in (None, ""):
            return str(value[key])
    return None
