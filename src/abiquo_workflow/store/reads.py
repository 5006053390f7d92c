"""The store's reads, written once for the two places they run.

`Store` and `UnitOfWork` are both a `Reader`: they differ only in where a query runs (`_fetch`). On the
Store each query is a short read transaction of its own (on SQLite, on the reader connection, which
never waits for writers); in a UnitOfWork it runs inside that transaction and sees its writes so far.
Code that only reads can take a `Reader` and be handed either.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Executable, RowMapping, Select, select

from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.store.records import (
    AuditRecord,
    JobRecord,
    JobStatus,
    NotificationRecord,
    RequestRecord,
    TaskRecord,
    from_row,
)
from abiquo_workflow.store.tables import audit, jobs, notifications, requests, tasks


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

    async def audit_log(
        self, *, task_id: str | None = None, request_id: str | None = None
    ) -> list[AuditRecord]:
        """Audit lines in the order they were written, about one task and/or one request if given."""
        query = _where_given(select(audit), (audit.c.task_id, task_id), (audit.c.request_id, request_id))
        rows = await self._fetch(query.order_by(audit.c.id))
        return [from_row(AuditRecord, row) for row in rows]

    async def notifications(self, request_id: str) -> list[NotificationRecord]:
        """A request's notifications in the order they were added."""
        rows = await self._fetch(
            select(notifications).where(notifications.c.request_id == request_id).order_by(notifications.c.id)
        )
        return [from_row(NotificationRecord, row) for row in rows]


def _where_given(query: Select[Any], *filters: tuple[ColumnElement[Any], object]) -> Select[Any]:
    """`query` narrowed to rows whose column equals the value, for each (column, value) of `filters`
    whose value is given: a filter left at None does not narrow (the listings' optional filters)."""
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    return query
