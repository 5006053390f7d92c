"""The JSON API under `/api/v1`: list and read requests and tasks, decide them, retry what failed.

A FastAPI application of its own, mounted by `create_app`: its OpenAPI document
(`/api/v1/openapi.json`) describes these routes only, and its errors are always JSON
`{"error": "<a sentence>"}` (401 with `WWW-Authenticate`, 403, 404, 409, 410, 422, 503), never a 500.

Who is asking (access.py): HTTP Basic with Abiquo credentials, checked against Abiquo's `/login` and
trusted for `access.login_ttl`; or `Authorization: Bearer <token>` for a token of `[[api.tokens]]`.
What a viewer may not see is answered 404, as if it did not exist. A decision goes the path an emailed
link's does (`Approvals.check_approver` for approvers, then `Approvals.decide`), on channel `api`, with
the viewer's `actor` in the audit log; a retry is what `tasks retry` does. Under a rule that needs more
than one approval, an accept that does not complete the quorum is answered 202 with the tasks it
`counted`, and a request's detail says where its `quorum` stands and its `deadline_at`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, Field
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from abiquo_workflow import __version__
from abiquo_workflow.access import Role, Viewer
from abiquo_workflow.approvals import details_from_json, retry_delivery, retry_request_jobs
from abiquo_workflow.domain import Action, Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoError, NotAnApprover, StoreError
from abiquo_workflow.store import (
    AuditRecord,
    NotificationRecord,
    NotificationStatus,
    RequestRecord,
    TaskRecord,
)
from abiquo_workflow.store.listing import InvalidCursor, ListingFilter, RequestState, RequestSummary
from abiquo_workflow.store.reads import ListedTask
from abiquo_workflow.web.decisions import REASON_LIMIT
from abiquo_workflow.web.state import Services, services
from abiquo_workflow.web.throttle import SignInThrottle

log = structlog.stdlib.get_logger(__name__)
T = TypeVar("T")

PREFIX = "/api/v1"
#: A task id as Abiquo writes them (the callback parser's rule).
TASK_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_CHALLENGE = 'Basic realm="abiquo-workflow", charset="UTF-8", Bearer realm="abiquo-workflow"'


class ApiError(Exception):
    """An answer other than success: its status, a sentence, and headers (401's challenge)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# --- what the API answers ---------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, as a sentence")


class TaskOut(BaseModel):
    """A held task, its decision and its delivery to Abiquo."""

    task_id: str
    request_id: str
    position: int = Field(description="the task's place in its callback (0 for the first)")
    task_type: str
    vm_name: str | None
    target_href: str | None
    created_at: datetime
    decision: DecisionState
    decided_by: DecidedBy | None
    actor: str | None = Field(description="who decided")
    decided_at: datetime | None
    reason: str | None
    channel: Channel | None
    delivery: DeliveryState | None = Field(description="None while pending")
    delivery_detail: str | None
    delivery_attempts: int
    delivered_at: datetime | None
    requester_id: str | None
    requester_nick: str | None
    enterprise_id: str | None
    enterprise_name: str | None
    may_decide: bool = Field(description="whether the caller may decide it now")


class TaskList(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; None on the last")


class RequestOut(BaseModel):
    """A request (one callback from Abiquo) and where its tasks stand."""

    id: str
    received_at: datetime
    state: RequestState
    tasks: int
    pending: int
    failed: int
    task_types: list[str]
    vm_names: list[str | None] = Field(description="the first few VMs' names")
    requester_id: str | None
    requester_nick: str | None
    enterprise_id: str | None
    enterprise_name: str | None
    triaged_at: datetime | None
    triage_error: str | None
    may_decide: bool = Field(description="whether the caller may decide its pending tasks now")


class RequestList(BaseModel):
    items: list[RequestOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; None on the last")


class NotificationOut(BaseModel):
    id: int
    kind: str
    recipient: str
    status: NotificationStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    task_ids: list[str] | None


class AuditOut(BaseModel):
    at: datetime
    action: str
    actor: str | None
    channel: str | None
    task_id: str | None
    detail: str | None


class QuorumOut(BaseModel):
    """Where the approvals of a request that needs more than one stand (a decline by anyone cancels)."""

    needed: int = Field(description="distinct approvals needed (the rule's `approvals_needed`)")
    accepted: int = Field(description="approvals given so far")
    approved_by: list[str] = Field(description="who has approved")
    waiting_for: list[str] = Field(description="who was asked and has not answered")


class RequestDetail(RequestOut):
    """A request with its tasks, the notifications sent and its timeline (the audit log)."""

    approvers: list[str] | None
    approvals_needed: int = Field(description="distinct approvals that decide it (1 unless a rule says more)")
    quorum: QuorumOut | None = Field(description="where the approvals stand; None when one approval decides")
    deadline_at: datetime | None = Field(description="when the rule decides what is still pending")
    at_deadline: Literal["accept", "cancel"] | None = Field(description="what happens at the deadline")
    task_list: list[TaskOut]
    notifications: list[NotificationOut]
    timeline: list[AuditOut]


class DecisionIn(BaseModel):
    action: Action
    reason: str | None = Field(None, max_length=REASON_LIMIT)


class DecisionOut(BaseModel):
    """200 when the call decided tasks; 202 when it only counted an approval towards a quorum."""

    decided: list[TaskOut] = Field(description="the tasks this call decided")
    already_decided: list[str] = Field(description="ids of tasks decided before this call")
    counted: list[str] = Field(
        description="ids of tasks where this approval was recorded but more approvals are needed "
        "(nothing is sent to Abiquo yet)"
    )


class RetryOut(BaseModel):
    deliveries: list[str] = Field(description="tasks whose delivery to Abiquo is queued again")
    jobs: list[str] = Field(description="kinds of the request's failed jobs queued again (emails, triage)")


class ViewerOut(BaseModel):
    actor: str
    role: Role
    enterprise_hrefs: list[str]
    can_decide: bool


# --- errors -------------------------------------------------------------------------------------------


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, each an `ErrorBody` (401, 422, 429 and 503 always)."""
    codes = sorted({401, 422, 429, 503, *statuses})
    return {code: {"model": ErrorBody, "description": HTTPStatus(code).phrase} for code in codes}


def _counted() -> dict[int | str, dict[str, Any]]:
    """The 202 of a decision that only counted an approval towards a quorum (`DecisionOut.counted`)."""
    return {202: {"model": DecisionOut, "description": "Approval counted; more approvals are needed"}}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail, status = str(exc.detail), exc.status_code
    if status == 400:  # FastAPI's "There was an error parsing the body": refused as bad input, 422
        detail, status = "The body is not the JSON object this operation takes.", 422
    elif status == 404:
        detail = f"There is nothing at {request.url.path}."
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    return JSONResponse({"error": detail}, status_code=status, headers=exc.headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "the request"
    message = f"{where}: {first.get('msg', 'not in the expected form')}."
    return JSONResponse({"error": message}, status_code=422)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.error("api.database_unavailable", path=request.url.path, error=str(exc))
    message = "The database is not available right now, so nothing was shown or changed. Try again later."
    return JSONResponse({"error": message}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("api.unexpected_error", path=request.url.path)
    message = "Something went wrong on our side. The error was logged; please try again in a moment."
    return JSONResponse({"error": message}, status_code=500)


# --- who is asking ------------------------------------------------------------------------------------

_basic = HTTPBasic(auto_error=False, description="Abiquo user name and password (checked at /login)")
_bearer = HTTPBearer(auto_error=False, description="a token of [[api.tokens]]")


async def current_viewer(
    request: Request,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Viewer:
    """The viewer the request's credentials name; 401 (with the challenge) when there are none that work."""
    service = services(request)
    viewer: Viewer | None = None
    if bearer is not None:
        viewer = service.authenticator.token_viewer(bearer.credentials)
    elif basic is not None:
        viewer = await _signed_in(request, service, basic)
    if viewer is None:
        given = "These credentials were refused" if basic or bearer else "Credentials are needed"
        raise ApiError(
            401,
            f"{given}: sign in with your Abiquo user name and password (HTTP Basic), or an API token "
            "(Authorization: Bearer).",
            {"WWW-Authenticate": _CHALLENGE},
        )
    structlog.contextvars.bind_contextvars(api_actor=viewer.actor)
    return viewer


async def _signed_in(request: Request, service: Services, basic: HTTPBasicCredentials) -> Viewer | None:
    """The viewer of Basic credentials, behind the dashboard's brake on guessing passwords (the same
    counts: web/throttle.py), so the API is no way around it; 429 while it holds."""
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    address = request.client.host if request.client else "unknown"
    wait = throttle.wait(basic.username, address)
    if wait > 0:
        raise ApiError(
            429,
            f"Too many wrong passwords for this user name or from this address; try again in {wait:.0f} s.",
            {"Retry-After": str(max(1, round(wait)))},
        )
    try:
        viewer = await service.authenticator.sign_in(basic.username, basic.password)
    except AbiquoError:
        raise ApiError(
            503, "Abiquo cannot be reached to check these credentials right now. Try again later."
        ) from None
    if viewer is None:
        throttle.failed(basic.username, address)
    else:
        throttle.succeeded(basic.username)
    return viewer


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]
Service = Annotated[Services, Depends(services)]
RequestId = Annotated[uuid.UUID, Path(description="the request's id")]
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, description="the task's id, as Abiquo wrote it")]


def _iso_8601(value: object) -> object:
    """A time must be ISO 8601 text, as the OpenAPI document's `date-time` says: pydantic would also
    read a bare number (`before=1.5e9`) as a Unix timestamp."""
    if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected a time in ISO 8601, such as 2026-12-03T14:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_8601)]


def listing_filter(
    state: Annotated[RequestState | None, Query(description="pending, decided or failed (delivery)")] = None,
    enterprise: Annotated[
        str | None, Query(max_length=64, pattern=r"^[0-9A-Za-z._-]+$", description="an enterprise's id")
    ] = None,
    task_type: Annotated[
        str | None, Query(max_length=64, pattern=r"^[A-Za-z_]+$", description="DEPLOY, UNDEPLOY…")
    ] = None,
    since: Annotated[IsoTime | None, Query(description="received at or after (ISO 8601)")] = None,
    before: Annotated[IsoTime | None, Query(description="received before (ISO 8601)")] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="VM name or requester nick contains; task or request id starts",
        ),
    ] = None,
) -> ListingFilter:
    return ListingFilter(
        state=state,
        enterprise_id=enterprise,
        task_type=task_type,
        since=_utc(since),
        before=_utc(before),
        text=q or None,
    )


def _utc(moment: datetime | None) -> datetime | None:
    """A time given without a zone counts as UTC; one just past the ends of what UTC can hold (year 1
    or 9999 with an offset) becomes that end."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


Filters = Annotated[ListingFilter, Depends(listing_filter)]
Limit = Annotated[int, Query(ge=1, le=200, description="rows per page")]
Cursor = Annotated[
    str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$", description="from next_cursor")
]


# --- reads --------------------------------------------------------------------------------------------


def _task_out(
    task: TaskRecord, owner: RequestRecord | ListedTask, viewer: Viewer, **names: str | None
) -> TaskOut:
    row = ListedTask(
        task=task,
        requester_nick=names.get("requester_nick"),
        requester_id=owner.requester_id,
        enterprise_id=owner.enterprise_id,
        enterprise_name=names.get("enterprise_name"),
    )
    return _listed_out(row, viewer)


def _listed_out(row: ListedTask, viewer: Viewer) -> TaskOut:
    task = row.task
    return TaskOut(
        task_id=task.task_id,
        request_id=task.request_id,
        position=task.position,
        task_type=task.task_type,
        vm_name=task.vm_name,
        target_href=task.target_href,
        created_at=task.created_at,
        decision=task.decision,
        decided_by=task.decided_by,
        actor=task.actor,
        decided_at=task.decided_at,
        reason=task.reason,
        channel=task.channel,
        delivery=task.delivery,
        delivery_detail=task.delivery_detail,
        delivery_attempts=task.delivery_attempts,
        delivered_at=task.delivered_at,
        requester_id=row.requester_id,
        requester_nick=row.requester_nick,
        enterprise_id=row.enterprise_id,
        enterprise_name=row.enterprise_name,
        may_decide=viewer.may_decide(row),
    )


def _request_fields(summary: RequestSummary, viewer: Viewer) -> dict[str, Any]:
    request = summary.request
    return {
        "id": request.id,
        "received_at": request.received_at,
        "state": summary.state,
        "tasks": summary.tasks,
        "pending": summary.pending,
        "failed": summary.failed,
        "task_types": list(summary.task_types),
        "vm_names": list(summary.vm_names),
        "requester_id": request.requester_id,
        "requester_nick": summary.requester_nick,
        "enterprise_id": request.enterprise_id,
        "enterprise_name": summary.enterprise_name,
        "triaged_at": request.triaged_at,
        "triage_error": request.triage_error,
        "may_decide": summary.pending > 0 and viewer.may_decide(summary),
    }


async def _page(read: Callable[[], Awaitable[T]]) -> T:
    try:
        return await read()
    except InvalidCursor as exc:
        raise ApiError(422, f"cursor: {exc}") from None


async def _visible_request(service: Services, viewer: Viewer, request_id: uuid.UUID) -> RequestDetail:
    timeline = await service.store.request_timeline(str(request_id))
    if timeline is None or not viewer.sees(timeline):
        raise ApiError(404, f"There is no request {request_id} that you may see.")
    held, summary = timeline.tasks, timeline.summary
    names = {"requester_nick": timeline.requester_nick, "enterprise_name": timeline.enterprise_name}
    try:
        details = details_from_json(timeline.request.details)
    except ValueError:
        details = None  # a snapshot this version cannot read: the rest of the request still answers
    pending = [t.task_id for t in held if t.decision is DecisionState.PENDING]
    quorum = await service.approvals.quorum(pending) if pending else None
    return RequestDetail(
        **_request_fields(summary, viewer),
        approvers=list(timeline.request.approvers) if timeline.request.approvers is not None else None,
        approvals_needed=details.approvals_needed if details is not None else 1,
        quorum=QuorumOut(
            needed=quorum.needed,
            accepted=quorum.accepted,
            approved_by=list(quorum.approved_by),
            waiting_for=list(quorum.waiting_for),
        )
        if quorum is not None
        else None,
        deadline_at=details.deadline_at if details is not None else None,
        at_deadline=_at_deadline(details.at_deadline) if details is not None else None,
        task_list=[_task_out(t, timeline.request, viewer, **names) for t in held],
        notifications=[_notification_out(n) for n in timeline.notifications],
        timeline=[_audit_out(line) for line in timeline.audit],
    )


def _at_deadline(value: str | None) -> Literal["accept", "cancel"] | None:
    if value == "accept":
        return "accept"
    return "cancel" if value is not None else None


def _notification_out(n: NotificationRecord) -> NotificationOut:
    return NotificationOut(
        id=n.id,
        kind=n.kind,
        recipient=n.recipient,
        status=n.status,
        attempts=n.attempts,
        last_error=n.last_error,
        created_at=n.created_at,
        sent_at=n.sent_at,
        task_ids=list(n.task_ids) if n.task_ids is not None else None,
    )


def _audit_out(line: AuditRecord) -> AuditOut:
    return AuditOut(
        at=line.at,
        action=line.action,
        actor=line.actor,
        channel=str(line.channel) if line.channel is not None else None,
        task_id=line.task_id,
        detail=line.detail,
    )


async def _visible_task(service: Services, viewer: Viewer, task_id: str) -> tuple[TaskRecord, RequestRecord]:
    task = await service.store.get_task(task_id)
    request = await service.store.get_request(task.request_id) if task is not None else None
    if task is None or request is None or not viewer.sees(request):
        raise ApiError(404, f"There is no task {task_id} that you may see.")
    return task, request


# --- decisions and retries ----------------------------------------------------------------------------


def _not_decidable(task: TaskRecord) -> ApiError:
    """409 for a task someone decided; 410 for one Abiquo no longer holds (settled there, or rejected)."""
    if task.decision is DecisionState.REJECTED or task.decided_by is DecidedBy.EXTERNAL:
        return ApiError(
            410, f"Task {task.task_id} is no longer held by Abiquo ({task.decision}); nothing to decide."
        )
    who = f" by {task.actor}" if task.actor else ""
    return ApiError(409, f"Task {task.task_id} was already {task.decision}{who}; nothing was changed.")


async def _decide(
    service: Services, viewer: Viewer, owner: RequestRecord, held: Sequence[TaskRecord], body: DecisionIn
) -> DecisionOut:
    """Decide the pending tasks among `held` (all of one request) for `viewer`, as an emailed link does."""
    if not viewer.can_decide:
        raise ApiError(403, "You may read requests here but not decide them.")
    if not viewer.may_decide(owner):
        raise ApiError(
            403, "You asked for this request, so the other approvers decide it (separation of duties)."
        )
    pending = [t for t in held if t.decision is DecisionState.PENDING]
    if not pending:
        raise _not_decidable(held[0])
    task_ids = [t.task_id for t in pending]
    if viewer.role is Role.APPROVER:
        try:
            await service.approvals.check_approver(task_ids, viewer.actor)
        except NotAnApprover as exc:
            raise ApiError(403, str(exc)) from None
        except AbiquoError:
            raise ApiError(
                503,
                "Abiquo cannot be reached to confirm that you still approve here, so nothing was decided.",
            ) from None
    decided = await service.approvals.decide(
        task_ids, body.action, actor=viewer.actor, reason=body.reason, channel=Channel.API
    )
    if not decided.decided and not decided.waiting:
        raise _not_decidable(decided.already[0] if decided.already else pending[0])
    return DecisionOut(
        decided=[_task_out(t, owner, viewer) for t in decided.decided],
        already_decided=[t.task_id for t in decided.already],
        counted=[t.task_id for t in decided.waiting],
    )


def _decision_status(response: Response, decision: DecisionOut) -> DecisionOut:
    """202 for an approval that only counted towards a quorum: recorded, but nothing is decided yet."""
    if not decision.decided:
        response.status_code = HTTPStatus.ACCEPTED
    return decision


async def _retry(service: Services, viewer: Viewer, request_id: str, task_ids: Sequence[str]) -> RetryOut:
    if not viewer.can_decide:
        raise ApiError(403, "You may read requests here but not retry what failed.")
    settings = service.settings
    deliveries = [
        task.task_id
        for task_id in task_ids
        if (
            task := await retry_delivery(
                service.store,
                task_id,
                max_attempts=settings.worker.max_attempts,
                channel=Channel.API,
                actor=viewer.actor,
            )
        )
        is not None
    ]
    jobs = await retry_request_jobs(service.store, request_id, channel=Channel.API, actor=viewer.actor)
    if not deliveries and not jobs:
        raise ApiError(409, "Nothing of this has failed, so there is nothing to retry.")
    return RetryOut(deliveries=deliveries, jobs=[job.kind for job in jobs])


# --- the routes -------------------------------------------------------------------------------------

#: The API's routes, built once per process and shared by every API application (`create_api`):
#: FastAPI compiles a route's parameters and models into pydantic adapters when it is added, about
#: 80 ms for these nine, which an app built per test or per replica would pay each time.
router = APIRouter()


@router.get("/me", response_model=ViewerOut, responses=_errors(), summary="Who the credentials are")
async def me(viewer: CurrentViewer) -> ViewerOut:
    return ViewerOut(
        actor=viewer.actor,
        role=viewer.role,
        enterprise_hrefs=sorted(viewer.enterprise_hrefs),
        can_decide=viewer.can_decide,
    )


@router.get("/requests", response_model=RequestList, responses=_errors(), summary="Requests, newest first")
async def list_requests(
    viewer: CurrentViewer, service: Service, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> RequestList:
    page = await _page(
        lambda: service.store.request_page(filters, scope=viewer.scope, limit=limit, cursor=cursor or None)
    )
    return RequestList(
        items=[RequestOut(**_request_fields(s, viewer)) for s in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/requests/{request_id}",
    response_model=RequestDetail,
    responses=_errors(404),
    summary="A request with its tasks, notifications and timeline",
)
async def read_request(viewer: CurrentViewer, service: Service, request_id: RequestId) -> RequestDetail:
    return await _visible_request(service, viewer, request_id)


@router.post(
    "/requests/{request_id}/decision",
    response_model=DecisionOut,
    responses=_counted() | _errors(403, 404, 409, 410),
    summary="Accept or decline every pending task of a request",
)
async def decide_request(
    viewer: CurrentViewer, service: Service, request_id: RequestId, body: DecisionIn, response: Response
) -> DecisionOut:
    timeline = await service.store.request_timeline(str(request_id))
    if timeline is None or not viewer.sees(timeline) or not timeline.tasks:
        raise ApiError(404, f"There is no request {request_id} that you may see.")
    return _decision_status(response, await _decide(service, viewer, timeline.request, timeline.tasks, body))


@router.post(
    "/requests/{request_id}/retry",
    response_model=RetryOut,
    responses=_errors(403, 404, 409),
    summary="Queue again a request's failed deliveries and emails",
)
async def retry_request(viewer: CurrentViewer, service: Service, request_id: RequestId) -> RetryOut:
    timeline = await service.store.request_timeline(str(request_id))
    if timeline is None or not viewer.sees(timeline):
        raise ApiError(404, f"There is no request {request_id} that you may see.")
    failed = [t.task_id for t in timeline.tasks if t.delivery is DeliveryState.FAILED]
    return await _retry(service, viewer, timeline.request.id, failed)


@router.get("/tasks", response_model=TaskList, responses=_errors(), summary="Tasks, newest first")
async def list_tasks(
    viewer: CurrentViewer, service: Service, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> TaskList:
    page = await _page(
        lambda: service.store.task_page(filters, scope=viewer.scope, limit=limit, cursor=cursor or None)
    )
    return TaskList(items=[_listed_out(row, viewer) for row in page.items], next_cursor=page.next_cursor)


@router.get("/tasks/{task_id}", response_model=TaskOut, responses=_errors(404), summary="One task")
async def read_task(viewer: CurrentViewer, service: Service, task_id: TaskId) -> TaskOut:
    task, request = await _visible_task(service, viewer, task_id)
    return _task_out(task, request, viewer)


@router.post(
    "/tasks/{task_id}/decision",
    response_model=DecisionOut,
    responses=_counted() | _errors(403, 404, 409, 410),
    summary="Accept or decline one task",
)
async def decide_task(
    viewer: CurrentViewer, service: Service, task_id: TaskId, body: DecisionIn, response: Response
) -> DecisionOut:
    task, request = await _visible_task(service, viewer, task_id)
    return _decision_status(response, await _decide(service, viewer, request, [task], body))


@router.post(
    "/tasks/{task_id}/retry",
    response_model=RetryOut,
    responses=_errors(403, 404, 409),
    summary="Queue again a task's failed delivery (and its request's failed emails)",
)
async def retry_task(viewer: CurrentViewer, service: Service, task_id: TaskId) -> RetryOut:
    task, request = await _visible_task(service, viewer, task_id)
    return await _retry(service, viewer, request.id, [task.task_id])


# --- the application ----------------------------------------------------------------------------------


def create_api(state: State) -> FastAPI:
    """The API application, mounted at `PREFIX` by `create_app`; `state` is the parent's, where its
    lifespan puts the Services (a mounted app's own lifespan never runs)."""
    api = FastAPI(
        title="abiquo-workflow API",
        version=__version__,
        description=__doc__,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        servers=[{"url": PREFIX}],
    )
    api.state = state
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(StoreError, _store_unavailable)
    api.add_exception_handler(Exception, _unexpected)
    # The routes as built, not rebuilt: `include_router` would compile each one again (see `router`).
    api.router.routes.extend(router.routes)
    return api
