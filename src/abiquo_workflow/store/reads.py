"""The store's reads, written once for the two places they run.

`Store` and `UnitOfWork` are both a `Reader`: they differ only in where a query runs (`_fetch`). On the
Store each query is a short read transaction of its own (on SQLite, on the reader connection, which
never waits for writers); in a UnitOfWork it runs inside that transaction and sees its writes so far.
Code that only reads can take a `Reader` and be handed either.

The operator's listing (`find_tasks`, `count_tasks`) filters on who asked, which only the request's
triage snapshot knows (`requests.details`, JSON). It reads the snapshot with SQLAlchemy's JSON path
expressions, which compile to `JSON_EXTRACT` on SQLite and `#>>` on PostgreSQL, rather than adding
columns: the filter, the count and the paging then all run in SQL, and need no migration. Those
queries scan the tasks (joined to their requests) without an index on what they filter; that is a
command an operator runs now and then, not the callback's path.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Executable, RowMapping, Select, and_, func, or_, select

from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.store.records import (
    ApprovalRecord,
    AuditRecord,
    JobRecord,
    JobStatus,
    NotificationRecord,
    RequestRecord,
    TaskRecord,
    from_row,
)
from abiquo_workflow.store.tables import approvals, audit, jobs, notifications, requests, tasks, workers


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks an operator's listing shows. A field left at None does not narrow.

    `enterprise` and `requester` are matched against the request's triage snapshot, so a task whose
    request has not been triaged yet matches them only by the requester's id (the task's user id).
    """

    decision: DecisionState | None = None
    delivery: DeliveryState | None = None
    #: The enterprise's id, or its name (ignoring case: ASCII letters on SQLite, all on PostgreSQL).
    enterprise: str | None = None
    #: The requester's id, or nick (ignoring case, as for `enterprise`).
    requester: str | None = None
    #: Only tasks received before this time.
    created_before: datetime | None = None
    #: Only tasks received at or after this time.
    created_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class ListedTask:
    """A task as the operator's listing shows it, with who asked for it (from the triage snapshot)."""

    task: TaskRecord
    #: None until triage has read the requester from Abiquo.
    requester_nick: str | None
    #: The snapshot's requester id, else the task's user id.
    requester_id: str | None
    enterprise_id: str | None
    enterprise_name: str | None


def listed_task(row: RowMapping) -> ListedTask:
    """A task row read with the `listed_…` columns a listing selects beside it."""
    return ListedTask(
        task=from_row(TaskRecord, row),
        requester_nick=row["listed_requester_nick"],
        requester_id=row["listed_requester_id"],
        enterprise_id=row["listed_enterprise_id"],
        enterprise_name=row["listed_enterprise_name"],
    )


@dataclass(frozen=True, slots=True)
class SeenBefore:
    """A task of an earlier request on the same VM, with that request's triage snapshot (`seen_before`)."""

    task: TaskRecord
    #: `requests.details` as stored: the JSON of a `RequestDetails`.
    details: Any
    #: When that request was triaged, which is when the snapshot was read from Abiquo.
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class PendingTasks:
    """How many tasks wait for a decision, and when the oldest of them was received (`pending_tasks`)."""

    count: int
    #: None when no task is pending.
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class WorkerBeats:
    """What the workers' heartbeats say (`worker_beats`)."""

    #: Workers that beat at or after the time asked about.
    alive: int
    #: The latest beat of any worker; None when no worker is known.
    latest: datetime | None


#: Job states counted by `unfinished_jobs`: those that need something (`done` only ever grows).
UNFINISHED_JOBS = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DEAD)


def _snapshot(*path: str) -> ColumnElement[str]:
    """The text at `path` inside the request's triage snapshot (NULL where any step is missing)."""
    text: ColumnElement[str] = requests.c.details[path].as_string()  # SQLAlchemy types it Any
    return text


# The VM's enterprise as triage read it; the requester's own enterprise when the VM's was not read.
_ENTERPRISE_ID = func.coalesce(_snapshot("enterprise", "id"), _snapshot("requester", "enterprise_id"))
_ENTERPRISE_NAME = func.coalesce(_snapshot("enterprise", "name"), _snapshot("requester", "enterprise_name"))
_REQUESTER_NICK = _snapshot("requester", "nick")
_REQUESTER_ID = func.coalesce(_snapshot("requester", "id"), tasks.c.user_id)

#: The operator's listing order, newest first; a vApp's tasks (received together) in Abiquo's order.
#: The last two columns make it a total order, which keyset paging needs.
_LISTING_ORDER = (tasks.c.created_at.desc(), tasks.c.request_id, tasks.c.position, tasks.c.task_id)


class Reader(abc.ABC):
    """Every read of the connector's state; each method is a coroutine returning frozen records."""

    @abc.abstractmethod
    async def _fetch(self, query: Executable) -> Sequence[RowMapping]:
        """The rows `query` returns, fetched before its transaction ends. Raises StoreError."""

    async def get_request(self, request_id: str) -> RequestRecord | None:
        rows = await self._fetch(select(requests).where(requests.c.id == request_id))
        return from_row(RequestRecord, rows[0]) if rows else None

    async def get_task(self, task_id: str) -> TaskRecord | None:
        found = await self.get_tasks([task_id])
        return found[0] if found else None

    async def get_tasks(self, task_ids: Iterable[str]) -> list[TaskRecord]:
        """The known tasks among `task_ids`, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return []
        rows = await self._fetch(select(tasks).where(tasks.c.task_id.in_(wanted)))
        found = {row["task_id"]: from_row(TaskRecord, row) for row in rows}
        return [found[task_id] for task_id in wanted if task_id in found]

    async def tasks_of_request(self, request_id: str) -> list[TaskRecord]:
        """A request's tasks in the order Abiquo sent them."""
        rows = await self._fetch(
            select(tasks).where(tasks.c.request_id == request_id).order_by(tasks.c.position)
        )
        return [from_row(TaskRecord, row) for row in rows]

    async def list_tasks(
        self,
        *,
        decision: DecisionState | None = None,
        delivery: DeliveryState | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only those in one decision and/or delivery state."""
        query = _where_given(select(tasks), (tasks.c.decision, decision), (tasks.c.delivery, delivery))
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.request_id, tasks.c.position)
        rows = await self._fetch(query.limit(limit).offset(offset))
        return [from_row(TaskRecord, row) for row in rows]

    async def find_tasks(
        self, filters: TaskFilter | None = None, *, limit: int = 50, after: TaskRecord | None = None
    ) -> list[ListedTask]:
        """At most `limit` tasks matching `filters`, newest first, each with its requester.

        `after` is the last task of the previous page (keyset paging): the page starts right after it
        in the listing's order, whether or not it matches `filters`, so tasks received meanwhile never
        shift a page as an offset would.
        """
        query = select(
            tasks,
            _REQUESTER_NICK.label("listed_requester_nick"),
            _REQUESTER_ID.label("listed_requester_id"),
            _ENTERPRISE_ID.label("listed_enterprise_id"),
            _ENTERPRISE_NAME.label("listed_enterprise_name"),
        ).join_from(tasks, requests)
        query = _listing_where(query, filters or TaskFilter(), after)
        rows = await self._fetch(query.order_by(*_LISTING_ORDER).limit(limit))
        return [listed_task(row) for row in rows]

    async def count_tasks(self, filters: TaskFilter | None = None, *, after: TaskRecord | None = None) -> int:
        """How many tasks match `filters` (only those after `after` in the listing's order, if given):
        what a page of `find_tasks` leaves out, so the listing can say how many more there are."""
        query = select(func.count().label("matching")).select_from(tasks.join(requests))
        rows = await self._fetch(_listing_where(query, filters or TaskFilter(), after))
        return int(rows[0]["matching"])

    async def task_ids_starting_with(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of stored tasks that begin with `prefix` (case matters), in order, at most `limit`.

        Compared with `substr`, not LIKE: task ids may hold `_`, a LIKE wildcard, and SQLite's LIKE
        ignores case where PostgreSQL's does not.
        """
        if not prefix:
            return []
        query = (
            select(tasks.c.task_id)
            .where(func.substr(tasks.c.task_id, 1, len(prefix)) == prefix)
            .order_by(tasks.c.task_id)
            .limit(limit)
        )
        return [row["task_id"] for row in await self._fetch(query)]

    async def get_job(self, job_id: int) -> JobRecord | None:
        rows = await self._fetch(select(jobs).where(jobs.c.id == job_id))
        return from_row(JobRecord, rows[0]) if rows else None

    async def list_jobs(
        self, *, status: JobStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs in the order they were enqueued, optionally only those in one status."""
        query = _where_given(select(jobs), (jobs.c.status, status))
        rows = await self._fetch(query.order_by(jobs.c.id).limit(limit).offset(offset))
        return [from_row(JobRecord, row) for row in rows]

    async def latest_job(self, kind: str) -> JobRecord | None:
        """The job of this kind queued last (the highest id), in whatever status; None if there is none."""
        rows = await self._fetch(select(jobs).where(jobs.c.kind == kind).order_by(jobs.c.id.desc()).limit(1))
        return from_row(JobRecord, rows[0]) if rows else None

    async def pending_tasks(self) -> PendingTasks:
        """How many tasks are pending and the oldest one's time: one statement over the (decision,
        created_at) index, cheap enough for every scrape of `/metrics`."""
        query = select(func.count().label("pending"), func.min(tasks.c.created_at).label("oldest")).where(
            tasks.c.decision == DecisionState.PENDING
        )
        row = (await self._fetch(query))[0]
        return PendingTasks(int(row["pending"]), row["oldest"])

    async def unfinished_jobs(self) -> dict[tuple[str, JobStatus], int]:
        """How many jobs are queued, running and dead, by kind and status (only those with any).

        One statement over the status-led index of the claims; done jobs, which only accumulate, are
        not counted."""
        query = (
            select(jobs.c.kind, jobs.c.status, func.count().label("jobs"))
            .where(jobs.c.status.in_(UNFINISHED_JOBS))
            .group_by(jobs.c.kind, jobs.c.status)
        )
        return {(row["kind"], JobStatus(row["status"])): int(row["jobs"]) for row in await self._fetch(query)}

    async def worker_beats(self, since: datetime) -> WorkerBeats:
        """How many workers have beaten at or after `since`, and the latest beat of any (`/readyz`)."""
        query = select(
            func.count().filter(workers.c.beat_at >= since).label("alive"),
            func.max(workers.c.beat_at).label("latest"),
        )
        row = (await self._fetch(query))[0]
        return WorkerBeats(int(row["alive"] or 0), row["latest"])

    async def audit_log(
        self, *, task_id: str | None = None, request_id: str | None = None
    ) -> list[AuditRecord]:
        """Audit lines in the order they were written, about one task and/or one request if given."""
        query = _where_given(select(audit), (audit.c.task_id, task_id), (audit.c.request_id, request_id))
        rows = await self._fetch(query.order_by(audit.c.id))
        return [from_row(AuditRecord, row) for row in rows]

    async def job_with_key(self, dedupe_key: str) -> JobRecord | None:
        """The job queued under `dedupe_key`, whatever its status; None when there is none."""
        rows = await self._fetch(select(jobs).where(jobs.c.dedupe_key == dedupe_key))
        return from_row(JobRecord, rows[0]) if rows else None

    async def approvals_of(self, task_ids: Iterable[str]) -> list[ApprovalRecord]:
        """The approvers' answers on these tasks, in the order they were given."""
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return []
        rows = await self._fetch(
            select(approvals).where(approvals.c.task_id.in_(wanted)).order_by(approvals.c.id)
        )
        return [from_row(ApprovalRecord, row) for row in rows]

    async def get_notification(self, notification_id: int) -> NotificationRecord | None:
        rows = await self._fetch(select(notifications).where(notifications.c.id == notification_id))
        return from_row(NotificationRecord, rows[0]) if rows else None

    async def notifications(self, request_id: str) -> list[NotificationRecord]:
        """A request's notifications in the order they were added."""
        rows = await self._fetch(
            select(notifications).where(notifications.c.request_id == request_id).order_by(notifications.c.id)
        )
        return [from_row(NotificationRecord, row) for row in rows]

    async def seen_before(
        self, target_hrefs: Iterable[str], *, besides: str, limit: int = 5
    ) -> list[SeenBefore]:
        """The latest triaged requests (other than `besides`) with a verified task on one of
        `target_hrefs` (a VM as Abiquo links it), newest first, each with its triage snapshot.

        What a reconfigure is compared with (enrichment.py). Only verified tasks count: their target is
        the one Abiquo gave, never a callback's claim. The tasks' `target_href` has no index: this scans
        the tasks, once per reconfigure triaged (a rare task, and one VM each).
        """
        hrefs = list(dict.fromkeys(target_hrefs))
        if not hrefs:
            return []
        query = (
            select(tasks, requests.c.details.label("seen_details"), requests.c.triaged_at.label("seen_at"))
            .join_from(tasks, requests)
            .where(
                tasks.c.target_href.in_(hrefs),
                tasks.c.request_id != besides,
                tasks.c.verified_at.is_not(None),
                requests.c.triaged_at.is_not(None),
                requests.c.details.is_not(None),
            )
            .order_by(requests.c.triaged_at.desc(), tasks.c.request_id)
            .limit(limit)
        )
        return [
            SeenBefore(from_row(TaskRecord, row), row["seen_details"], row["seen_at"])
            for row in await self._fetch(query)
        ]


def _where_given(query: Select[Any], *filters: tuple[ColumnElement[Any], object]) -> Select[Any]:
    """`query` narrowed to rows whose column equals the value, for each (column, value) of `filters`
    whose value is given: a filter left at None does not narrow (the listings' optional filters)."""
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    return query


def _listing_where(query: Select[Any], filters: TaskFilter, after: TaskRecord | None) -> Select[Any]:
    """`query` (over tasks joined to their requests) narrowed to `filters`, and to the tasks after
    `after` in `_LISTING_ORDER`."""
    query = _where_given(query, (tasks.c.decision, filters.decision), (tasks.c.delivery, filters.delivery))
    if filters.enterprise is not None:
        query = query.where(_id_or_name(_ENTERPRISE_ID, _ENTERPRISE_NAME, filters.enterprise))
    if filters.requester is not None:
        query = query.where(_id_or_name(_REQUESTER_ID, _REQUESTER_NICK, filters.requester))
    if filters.created_before is not None:
        query = query.where(tasks.c.created_at < filters.created_before)
    if filters.created_since is not None:
        query = query.where(tasks.c.created_at >= filters.created_since)
    if after is not None:
        query = query.where(_after(after))
    return query


def _id_or_name(
    id_column: ColumnElement[str], name_column: ColumnElement[str], given: str
) -> ColumnElement[bool]:
    """Rows whose id is `given` exactly, or whose name is `given` ignoring case.

    Both sides are lower-cased by the database, so the name and the given value are folded alike
    (SQLite folds only ASCII letters; PostgreSQL all of them).
    """
    return or_(id_column == given, func.lower(name_column) == func.lower(given))


def _after(cursor: TaskRecord) -> ColumnElement[bool]:
    """Rows after `cursor` in `_LISTING_ORDER` (created_at descending, the rest ascending).

    Spelled out column by column: a row-value comparison `(a, b) > (x, y)` cannot mix directions.
    """
    created, request, position = tasks.c.created_at, tasks.c.request_id, tasks.c.position
    same_request = and_(created == cursor.created_at, request == cursor.request_id)
    return or_(
        created < cursor.created_at,
        and_(created == cursor.created_at, request > cursor.request_id),
        and_(same_request, position > cursor.position),
        and_(same_request, position == cursor.position, tasks.c.task_id > cursor.task_id),
    )
