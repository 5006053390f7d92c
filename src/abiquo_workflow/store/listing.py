"""The lists people page through (the dashboard's and the API's): requests and tasks, filtered, scoped
to whom the viewer may see, newest first, in keyset pages; and one request with its whole story.

Why keyset pages. A page is "the next `limit` rows after this one in the listing's order", read as a
range of an index (migration 0006): the 2,000th page costs what the first does, and rows arriving
meanwhile never shift a page as an offset would. The cursor is opaque to callers (base64 of the last
row's time and id); a cursor that does not decode is `InvalidCursor`, a caller's mistake.

The scope (`Scope`) and the enterprise filter read `requests.enterprise_id`, the column triage fills
from its snapshot, through an index; names shown (requester's nick, enterprise's name) are read from
the snapshot itself for the page's rows only. The text search (`ListingFilter.text`) matches
substrings, so it reads the rows in order until the page is full: cheap when it matches often, a scan
of the listing when it matches nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, RowMapping, Select, false, func, literal, or_, select

from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.store.reads import _ENTERPRISE_NAME, _REQUESTER_NICK, ListedTask, Reader, listed_task
from abiquo_workflow.store.records import (
    AuditRecord,
    NotificationRecord,
    RequestRecord,
    TaskRecord,
    from_row,
)
from abiquo_workflow.store.tables import requests, tasks

T = TypeVar("T")

#: The most rows one page may hold.
MAX_PAGE = 200
#: VM names a request's summary carries (a 100-VM vApp lists its first ones).
SUMMARY_VMS = 5


class InvalidCursor(ValueError):
    """A cursor this listing did not hand out (or for another listing, or mangled)."""


class RequestState(enum.StrEnum):
    """Where a request (or task) stands, as the lists filter it."""

    #: A task still waits for a decision.
    PENDING = "pending"
    #: Every task is decided.
    DECIDED = "decided"
    #: A decision could not be delivered to Abiquo (`tasks retry` / the API's retry queue it again).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose requests a list may show: everyone's (the default), those of some enterprises, and of
    those only one requester's. An empty set of enterprises shows nothing."""

    enterprise_ids: frozenset[str] | None = None
    requester_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListingFilter:
    """What a person narrows a list to; a field left at None does not narrow."""

    state: RequestState | None = None
    #: The enterprise's id (as Abiquo numbers it).
    enterprise_id: str | None = None
    #: One of the task types (DEPLOY, UNDEPLOY, RECONFIGURE…); a request matches if any task does.
    task_type: str | None = None
    #: Only those received at or after this time.
    since: datetime | None = None
    #: Only those received before this time.
    before: datetime | None = None
    #: A VM name or requester nick containing it (ignoring case), a task id or request id starting with
    #: it, or the requester's id.
    text: str | None = None


#: Every column of `requests` but the callback's body, which lists never show (a 100-VM vApp's is
#: 100 KB): a summary's `request.body` is empty; `request_timeline` reads it.
_WITHOUT_BODY = tuple(column for column in requests.c if column.name != "body")


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """One row of the requests list. Its `request.body` is empty (lists do not read callback bodies)."""

    request: RequestRecord
    state: RequestState
    tasks: int
    pending: int
    failed: int
    #: The task types present, in the order of the request's tasks.
    task_types: tuple[str, ...]
    #: The first `SUMMARY_VMS` VM names (None where triage has not named the VM yet).
    vm_names: tuple[str | None, ...]
    requester_nick: str | None
    enterprise_name: str | None

    @property
    def enterprise_id(self) -> str | None:
        return self.request.enterprise_id

    @property
    def requester_id(self) -> str | None:
        return self.request.requester_id


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, and the cursor of the next (None on the last page)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RequestTimeline:
    """A request with everything about it: its tasks in Abiquo's order, its notifications, its audit log."""

    request: RequestRecord
    tasks: list[TaskRecord]
    notifications: list[NotificationRecord]
    audit: list[AuditRecord]
    requester_nick: str | None = None
    enterprise_name: str | None = None

    @property
    def enterprise_id(self) -> str | None:
        return self.request.enterprise_id

    @property
    def requester_id(self) -> str | None:
        return self.request.requester_id

    @property
    def state(self) -> RequestState:
        return _state_of(self.tasks)

    @property
    def summary(self) -> RequestSummary:
        """The request as a row of the requests list shows it (every VM's name, not only the first)."""
        held = self.tasks
        return RequestSummary(
            request=self.request,
            state=self.state,
            tasks=len(held),
            pending=sum(t.decision is DecisionState.PENDING for t in held),
            failed=sum(t.delivery is DeliveryState.FAILED for t in held),
            task_types=tuple(dict.fromkeys(t.task_type for t in held)),
            vm_names=tuple(t.vm_name for t in held),
            requester_nick=self.requester_nick,
            enterprise_name=self.enterprise_name,
        )


@dataclass(frozen=True, slots=True)
class _Cursor:
    at: datetime
    id: str


def encode_cursor(kind: str, at: datetime, row_id: str) -> str:
    raw = json.dumps([kind, at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> _Cursor:
    """The position a cursor of `encode_cursor(kind, …)` names; `InvalidCursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        given_kind, at, row_id = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidCursor("The cursor is not one this list handed out.") from None
    if given_kind != kind or not isinstance(row_id, str) or when.tzinfo is None:
        raise InvalidCursor("The cursor is not one this list handed out.")
    return _Cursor(when, row_id)


class Listing(Reader):
    """The listings, on top of every other read (`Store` is one)."""

    async def request_page(
        self,
        filters: ListingFilter | None = None,
        *,
        scope: Scope | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[RequestSummary]:
        """At most `limit` requests matching `filters` within `scope`, newest first, from `cursor` on.

        Raises `InvalidCursor` for a cursor not handed out by this listing.
        """
        filters = filters or ListingFilter()
        query: Select[Any] = select(
            *_WITHOUT_BODY,
            literal("").label("body"),
            _REQUESTER_NICK.label("listed_requester_nick"),
            _ENTERPRISE_NAME.label("listed_enterprise_name"),
        )
        query = _request_filters(_scoped(query, scope or Scope()), filters)
        rows, more = await self._keyset_page(query, "r", requests.c.received_at, requests.c.id, cursor, limit)
        items = await self._summaries(rows)
        last = items[-1].request if more and items else None
        return Page(items, encode_cursor("r", last.received_at, last.id) if last else None)

    async def task_page(
        self,
        filters: ListingFilter | None = None,
        *,
        scope: Scope | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[ListedTask]:
        """At most `limit` tasks matching `filters` within `scope`, newest first, from `cursor` on; each
        with its requester and enterprise. Raises `InvalidCursor`."""
        filters = filters or ListingFilter()
        query = select(
            tasks,
            _REQUESTER_NICK.label("listed_requester_nick"),
            func.coalesce(requests.c.requester_id, tasks.c.user_id).label("listed_requester_id"),
            requests.c.enterprise_id.label("listed_enterprise_id"),
            _ENTERPRISE_NAME.label("listed_enterprise_name"),
        ).join_from(tasks, requests)
        query = _task_filters(_scoped(query, scope or Scope()), filters)
        rows, more = await self._keyset_page(query, "t", tasks.c.created_at, tasks.c.task_id, cursor, limit)
        items = [listed_task(row) for row in rows]
        last = items[-1].task if more and items else None
        return Page(items, encode_cursor("t", last.created_at, last.task_id) if last else None)

    async def request_timeline(self, request_id: str) -> RequestTimeline | None:
        """One request with its tasks, notifications and audit log; None when there is no such request."""
        query = select(
            requests,
            _REQUESTER_NICK.label("listed_requester_nick"),
            _ENTERPRISE_NAME.label("listed_enterprise_name"),
        ).where(requests.c.id == request_id)
        rows = await self._fetch(query)
        if not rows:
            return None
        return RequestTimeline(
            request=from_row(RequestRecord, rows[0]),
            tasks=await self.tasks_of_request(request_id),
            notifications=await self.notifications(request_id),
            audit=await self.audit_log(request_id=request_id),
            requester_nick=rows[0]["listed_requester_nick"],
            enterprise_name=rows[0]["listed_enterprise_name"],
        )

    async def _keyset_page(
        self,
        query: Select[Any],
        kind: str,
        at: ColumnElement[datetime],
        key: ColumnElement[str],
        cursor: str | None,
        limit: int,
    ) -> tuple[Sequence[RowMapping], bool]:
        """One page of `query`, newest `(at, key)` first, after `cursor` (a `kind` cursor: "r" or "t"),
        and whether there are more rows after it."""
        if cursor is not None:
            query = query.where(*_before(at, key, decode_cursor(kind, cursor)))
        limit = _page_size(limit)
        rows = await self._fetch(query.order_by(at.desc(), key.desc()).limit(limit + 1))
        return rows[:limit], len(rows) > limit

    async def _summaries(self, rows: Sequence[RowMapping]) -> list[RequestSummary]:
        """The summaries of the requests in `rows`: their tasks counted in SQL, by request and type (a
        100-VM vApp is one row per type, not 100 tasks read), and the first VMs' names."""
        ids = [row["id"] for row in rows]
        if not ids:
            return []
        counts = await self._fetch(
            select(
                tasks.c.request_id,
                tasks.c.task_type,
                func.count().label("tasks"),
                func.count().filter(tasks.c.decision == DecisionState.PENDING).label("pending"),
                func.count().filter(tasks.c.delivery == DeliveryState.FAILED).label("failed"),
            )
            .where(tasks.c.request_id.in_(ids))
            .group_by(tasks.c.request_id, tasks.c.task_type)
            .order_by(tasks.c.request_id, func.min(tasks.c.position))
        )
        names = await self._fetch(
            select(tasks.c.request_id, tasks.c.vm_name)
            .where(tasks.c.request_id.in_(ids), tasks.c.position < SUMMARY_VMS)
            .order_by(tasks.c.request_id, tasks.c.position)
        )
        by_request: dict[str, list[RowMapping]] = {}
        for count in counts:
            by_request.setdefault(count["request_id"], []).append(count)
        vm_names: dict[str, list[str | None]] = {}
        for name in names:
            vm_names.setdefault(name["request_id"], []).append(name["vm_name"])
        return [_summary(row, by_request.get(row["id"], []), vm_names.get(row["id"], [])) for row in rows]


def _before(
    at: ColumnElement[datetime], row_id: ColumnElement[str], cursor: _Cursor
) -> tuple[ColumnElement[bool], ...]:
    """The rows after `cursor` in newest-first order: `(at, id) < (cursor.at, cursor.id)`.

    Spelled `at <= c.at AND (at < c.at OR id < c.id)`: the first term alone is a range of the
    listing's index (SQLite plans no range from the OR alone, and scanned the index from its start)."""
    return (at <= cursor.at, or_(at < cursor.at, row_id < cursor.id))


def _page_size(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


def _state_of(held: Sequence[TaskRecord]) -> RequestState:
    if any(t.delivery is DeliveryState.FAILED for t in held):
        return RequestState.FAILED
    if any(t.decision is DecisionState.PENDING for t in held):
        return RequestState.PENDING
    return RequestState.DECIDED


def _summary(row: RowMapping, counts: Sequence[RowMapping], vm_names: Sequence[str | None]) -> RequestSummary:
    pending = sum(int(c["pending"]) for c in counts)
    failed = sum(int(c["failed"]) for c in counts)
    state = RequestState.FAILED if failed else RequestState.PENDING if pending else RequestState.DECIDED
    return RequestSummary(
        request=from_row(RequestRecord, row),
        state=state,
        tasks=sum(int(c["tasks"]) for c in counts),
        pending=pending,
        failed=failed,
        task_types=tuple(c["task_type"] for c in counts),
        vm_names=tuple(vm_names),
        requester_nick=row["listed_requester_nick"],
        enterprise_name=row["listed_enterprise_name"],
    )


def _scoped(query: Select[Any], scope: Scope) -> Select[Any]:
    if scope.enterprise_ids is not None:
        ids = sorted(scope.enterprise_ids)
        query = query.where(requests.c.enterprise_id.in_(ids) if ids else false())
    if scope.requester_id is not None:
        query = query.where(requests.c.requester_id == scope.requester_id)
    return query


def _has_task(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """The request has a task meeting `conditions`.

    A correlated EXISTS, not `id IN (SELECT request_id …)`: given the IN list, SQLite fetched every
    request in it (5,000 of them for the pending list at 100,000 tasks) and sorted them; with EXISTS it
    walks the requests newest first along their index and stops at the page's end, probing each one's
    tasks by `request_id`."""
    return select(tasks.c.request_id).where(tasks.c.request_id == requests.c.id, *conditions).exists()


def _request_filters(query: Select[Any], filters: ListingFilter) -> Select[Any]:
    pending = _has_task(tasks.c.decision == DecisionState.PENDING)
    if filters.state is RequestState.PENDING:
        query = query.where(pending)
    elif filters.state is RequestState.DECIDED:
        query = query.where(~pending, _has_task())
    elif filters.state is RequestState.FAILED:
        query = query.where(_has_task(tasks.c.delivery == DeliveryState.FAILED))
    if filters.enterprise_id is not None:
        query = query.where(requests.c.enterprise_id == filters.enterprise_id)
    if filters.task_type is not None:
        query = query.where(_has_task(tasks.c.task_type == filters.task_type.upper()))
    if filters.since is not None:
        query = query.where(requests.c.received_at >= filters.since)
    if filters.before is not None:
        query = query.where(requests.c.received_at < filters.before)
    if filters.text:
        text = filters.text
        query = query.where(
            or_(
                _starts_with(requests.c.id, text),
                requests.c.requester_id == text,
                func.lower(_REQUESTER_NICK).contains(text.lower(), autoescape=True),
                _has_task(_vm_or_task(text)),
            )
        )
    return query


def _task_filters(query: Select[Any], filters: ListingFilter) -> Select[Any]:
    if filters.state is RequestState.PENDING:
        query = query.where(tasks.c.decision == DecisionState.PENDING)
    elif filters.state is RequestState.DECIDED:
        query = query.where(tasks.c.decision != DecisionState.PENDING)
    elif filters.state is RequestState.FAILED:
        query = query.where(tasks.c.delivery == DeliveryState.FAILED)
    if filters.enterprise_id is not None:
        query = query.where(requests.c.enterprise_id == filters.enterprise_id)
    if filters.task_type is not None:
        query = query.where(tasks.c.task_type == filters.task_type.upper())
    if filters.since is not None:
        query = query.where(tasks.c.created_at >= filters.since)
    if filters.before is not None:
        query = query.where(tasks.c.created_at < filters.before)
    if filters.text:
        text = filters.text
        query = query.where(
            or_(
                _vm_or_task(text),
                requests.c.requester_id == text,
                func.lower(_REQUESTER_NICK).contains(text.lower(), autoescape=True),
            )
        )
    return query


def _vm_or_task(text: str) -> ColumnElement[bool]:
    """Tasks whose VM name contains `text` (ignoring case) or whose id starts with it (case matters)."""
    return or_(
        func.lower(tasks.c.vm_name).contains(text.lower(), autoescape=True),
        _starts_with(tasks.c.task_id, text),
    )


def _starts_with(column: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    """Compared with `substr`, not LIKE: ids may hold `_`, and SQLite's LIKE ignores case."""
    return func.substr(column, 1, len(prefix)) == prefix
