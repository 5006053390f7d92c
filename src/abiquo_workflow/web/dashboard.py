"""The dashboard at `/`: sign in with Abiquo credentials, see requests, decide them, retry failures.

Routes (every page server-rendered; no script):

    GET  /                          the sign-in form, or (signed in) the lists of requests
    POST /sign-in                   Abiquo credentials, checked at Abiquo's /login (access.Authenticator)
    POST /sign-out                  ends the session
    GET  /requests/{id}             one request: its VMs, decisions, notifications and timeline
    POST /requests/{id}/decide      accept or decline one task or all pending ones, with a reason
    POST /requests/{id}/retry       queue again a failed delivery and the request's failed emails

What a person sees and may do is `access.Viewer`'s: an administrator everything; an approver their
enterprise's requests; anyone else their own, read-only (no buttons, and a POST is refused with 403).
A request the viewer may not see is answered as if it did not exist (404), so its id says nothing.

A decision goes through `Approvals.decide`, the atomic path of an emailed link's, with the channel
`dashboard` and the viewer as actor; an approver is checked against Abiquo again first, as a link's
approver is. A retry runs the functions of `abiquo-workflow tasks retry`. Every POST must carry the
session's CSRF token (web/sessions.py) and must not come from another site (web/origin.py); both are
refused with 403 and a sentence. Every POST answers with a redirect (303) to the page to show next,
so reloading it decides nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, NoReturn
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from abiquo_workflow import __version__, display
from abiquo_workflow.access import Authenticator, Role, Viewer
from abiquo_workflow.approvals import details_from_json, retry_delivery, retry_request_jobs
from abiquo_workflow.config import Settings
from abiquo_workflow.domain import Action, Channel, DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoError, NotAnApprover
from abiquo_workflow.mail import words
from abiquo_workflow.store import utc_now
from abiquo_workflow.store.listing import InvalidCursor, ListingFilter, RequestState, RequestTimeline
from abiquo_workflow.store.records import NotificationStatus
from abiquo_workflow.web import dashboard_views as views
from abiquo_workflow.web.bodies import BodyTooLarge, NotAForm, TooManyFields, read_form
from abiquo_workflow.web.decisions import REASON_LIMIT, time_and_quorum
from abiquo_workflow.web.origin import from_another_site
from abiquo_workflow.web.sessions import Session, SessionKeeper
from abiquo_workflow.web.state import services
from abiquo_workflow.web.templating import page
from abiquo_workflow.web.throttle import SignInThrottle
from abiquo_workflow.web.views import request_context, shared_reason

log = structlog.stdlib.get_logger(__name__)

router = APIRouter()

#: Requests per page of a list.
PAGE_SIZE = 25
#: A request of more pending tasks than this gets no buttons per VM, only Accept all / Decline all (as
#: its email has none beyond 20).
ROW_BUTTONS_LIMIT = 20
FORM_LIMIT = 16 * 1024
FORM_FIELDS_LIMIT = 10
#: The longest user name or search text taken (Abiquo's nicks are far shorter).
TEXT_LIMIT = 128
#: `?done=` values of the page a POST redirects to, and what the page then says.
_DONE = {
    "accepted": "Accepted {n}. Abiquo is being told now, and the requester will be emailed.",
    "declined": "Declined {n}. Abiquo is being told now, and the requester will be emailed.",
    "already": "Nothing was changed: the tasks were already decided.",
    "counted": "Your approval of {n} is recorded. More approvals are needed before anything is sent to "
    "Abiquo.",
    "retried": "Queued again: {n}. The worker is on it; reload this page in a moment.",
    "nothing": "Nothing had failed, so nothing was queued again.",
}


class Refused(Exception):
    """A refusal shown as a page: its status, title and sentence."""

    def __init__(self, status: int, title: str, message: str) -> None:
        self.status, self.title, self.message = status, title, message


def _refuse(status: int, title: str, message: str) -> NoReturn:
    raise Refused(status, title, message)


def session_keeper(settings: Settings) -> SessionKeeper:
    """The app's sessions, keyed from `server.secret_key` (which `serve` has already checked)."""
    key = settings.server.secret_key.get_secret_value() if settings.server.secret_key else ""
    return SessionKeeper(
        key,
        lifetime=settings.dashboard.session_lifetime,
        secure=settings.server.base_url.startswith("https://"),
    )


def _keeper(request: Request) -> SessionKeeper:
    keeper: SessionKeeper = request.app.state.sessions
    return keeper


def _throttle(request: Request) -> SignInThrottle:
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    return throttle


def _authenticator(request: Request) -> Authenticator:
    return services(request).authenticator


def _viewer_of(session: Session | None) -> Viewer | None:
    if session is None or not session.signed_in:
        return None
    try:
        return Viewer(**session.data)
    except (TypeError, ValueError):  # a cookie of another version: sign in again
        return None


def _session_data(viewer: Viewer) -> dict[str, Any]:
    data = asdict(viewer)
    data["role"] = viewer.role.value
    data["enterprise_hrefs"] = sorted(viewer.enterprise_hrefs)
    return data


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- pages ---------------------------------------------------------------------------------------


def _page(
    request: Request, name: str, context: dict[str, Any], session: Session, *, status: int = 200
) -> Response:
    """A dashboard page, with the session's CSRF token and viewer; a new session is set as the cookie."""
    keeper = _keeper(request)
    viewer = _viewer_of(session)
    context.update(
        version=__version__,
        callback_url=f"{services(request).settings.server.base_url}/callback",
        csrf=keeper.csrf_token(session),
        viewer=viewer,
        viewer_name=words.person_name(viewer.actor) if viewer else "",
        role_name=views.role_name(viewer) if viewer else "",
        role_sentence=views.role_sentence(viewer) if viewer else "",
    )
    response = page(request, name, context, status=status)
    if keeper.from_request(request.cookies) != session:
        keeper.store(response, session)
    return response


def _refusal_page(request: Request, refused: Refused) -> Response:
    session = _keeper(request).from_request(request.cookies) or _keeper(request).new()
    context = {"title": refused.title, "message": refused.message}
    return _page(request, "dashboard/refused.html", context, session, status=refused.status)


def _sign_in_page(
    request: Request,
    session: Session,
    *,
    message: str | None = None,
    status: int = 200,
    username: str = "",
    next_path: str | None = None,
) -> Response:
    """The sign-in form; `next_path` (else `?next=`) is where it leads once signed in."""
    target = _safe_next(next_path or request.query_params.get("next"))
    context = {"message": message, "username": username, "next": target}
    return _page(request, "dashboard/sign_in.html", context, session, status=status)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: only a request's page of ours, never another site."""
    if target and target.startswith("/requests/") and "//" not in target and "\\" not in target:
        return target[:200]
    return "/"


def _filters(params: Mapping[str, str]) -> tuple[ListingFilter, dict[str, str]]:
    """The list's filters from the query string, and the values to show in the form."""
    given = {
        key: params.get(key, "").strip()[:TEXT_LIMIT] for key in ("state", "enterprise", "type", "age", "q")
    }
    given.setdefault("state", "")
    state_key = params.get("state", "pending").strip()
    state = RequestState(state_key) if state_key in {s.value for s in RequestState} else None
    given["state"] = state.value if state else ""
    task_type = given["type"].upper() if given["type"].upper() in dict(views.TASK_TYPES) else None
    given["type"] = task_type or ""
    since, before = views.age_bounds(given["age"], utc_now())
    if since is None and before is None:
        given["age"] = ""
    filters = ListingFilter(
        state=state,
        enterprise_id=given["enterprise"] or None,
        task_type=task_type,
        since=since,
        before=before,
        text=given["q"] or None,
    )
    return filters, given


def _query(given: Mapping[str, str], **changes: str | None) -> str:
    values = {**given, **changes}
    if values.get("state") == "":
        values["state"] = "all"
    return "?" + urlencode({k: v for k, v in values.items() if v})


async def _list_page(request: Request, session: Session, viewer: Viewer) -> Response:
    filters, given = _filters(request.query_params)
    cursor = request.query_params.get("cursor") or None
    try:
        listed = await services(request).store.request_page(
            filters, scope=viewer.scope, limit=PAGE_SIZE, cursor=cursor
        )
    except InvalidCursor:
        _refuse(
            400,
            "Not a page of this list",
            "This list's page link is not one we made. Start again from the list.",
        )
    rows = [views.summary_row(summary) for summary in listed.items if viewer.sees(summary)]
    enterprises = {row.enterprise_id: row.enterprise for row in rows if row.enterprise_id}
    if given["enterprise"]:
        enterprises.setdefault(given["enterprise"], f"Enterprise #{display.name(given['enterprise'])}")
    context = {
        "rows": rows,
        "given": given,
        "tabs": [
            (label, _query(given, state=key or "all", cursor=None), key == given["state"])
            for key, label in views.TABS
        ],
        "task_types": views.TASK_TYPES,
        "ages": [(key, label) for key, label, _s, _b in views.AGES],
        "enterprises": sorted(enterprises.items(), key=lambda item: item[1].casefold()),
        "show_enterprises": viewer.role is Role.ADMIN or len(viewer.enterprise_ids) > 1,
        "next_href": _query(given, cursor=listed.next_cursor) if listed.next_cursor else None,
        "first_href": _query(given, cursor=None) if cursor else None,
        "filter_query": {k: v for k, v in given.items() if v},
    }
    return _page(request, "dashboard/list.html", context, session)


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    keeper = _keeper(request)
    cookie_sent = keeper.cookie in request.cookies
    session = keeper.from_request(request.cookies)
    viewer = _viewer_of(session)
    if session is None or viewer is None:
        ended = cookie_sent and (session is None or session.signed_in)
        message = "Your sign-in has ended. Sign in again to go on." if ended else None
        return _sign_in_page(request, session if session and not ended else keeper.new(), message=message)
    try:
        return await _list_page(request, session, viewer)
    except Refused as refused:
        return _refusal_page(request, refused)


def _own(viewer: Viewer, timeline: RequestTimeline) -> bool:
    """An approver's own request, which the other approvers decide (access.Viewer.may_decide)."""
    return (
        viewer.role is Role.APPROVER
        and viewer.user_id is not None
        and timeline.requester_id == viewer.user_id
    )


async def _timeline(request: Request, viewer: Viewer, request_id: str) -> RequestTimeline:
    timeline = await services(request).store.request_timeline(request_id)
    if timeline is None or not viewer.sees(timeline):
        _refuse(
            404,
            "No such request",
            f"There is no request {display.name(request_id)} that you can see. It may belong to another "
            "enterprise, or the link is mistyped.",
        )
    return timeline


def _signed_in(request: Request) -> tuple[Session, Viewer] | None:
    session = _keeper(request).from_request(request.cookies)
    viewer = _viewer_of(session)
    return (session, viewer) if session is not None and viewer is not None else None


@router.get("/requests/{request_id}", response_class=HTMLResponse)
async def request_page(request: Request, request_id: str) -> Response:
    signed = _signed_in(request)
    if signed is None:
        return RedirectResponse("/?" + urlencode({"next": f"/requests/{request_id}"}), status_code=303)
    session, viewer = signed
    try:
        timeline = await _timeline(request, viewer, request_id)
    except Refused as refused:
        return _refusal_page(request, refused)
    details = None
    try:
        details = details_from_json(timeline.request.details)
    except ValueError:
        log.warning("dashboard.unreadable_details", request_id=request_id)
    context = request_context(timeline.tasks, details)
    context["rows"] = views.with_delivery(context["rows"], timeline.tasks)
    context["shared_reason"] = shared_reason(context["rows"])  # said once, not on every row
    pending = [t for t in timeline.tasks if t.decision is DecisionState.PENDING]
    may_decide = bool(pending) and viewer.may_decide(timeline)
    already_approved = may_decide and await services(request).approvals.has_accepted(
        [t.task_id for t in pending], viewer.actor
    )
    failed_deliveries = [t for t in timeline.tasks if t.delivery is DeliveryState.FAILED]
    failed_emails = [n for n in timeline.notifications if n.status is NotificationStatus.FAILED]
    done = request.query_params.get("done", "")
    count = request.query_params.get("n", "")
    context.update(
        request_id=timeline.request.id,
        title=views.request_title(
            timeline.request.details,
            [t.vm_name for t in timeline.tasks],
            len(timeline.tasks),
            timeline.request.id,
        ),
        operation=words.task_words(t.task_type for t in timeline.tasks),
        vm_count=words.counted(len(timeline.tasks), "VM"),
        state=timeline.state.value,
        state_words=views.state_words(timeline.state),
        pending_count=len(pending),
        requester=views.requester_words(
            timeline.request.details, timeline.requester_nick, timeline.request.requester_id
        ),
        received=words.moment_words(timeline.request.received_at),
        may_decide=may_decide,
        row_buttons=may_decide and not already_approved and 1 < len(pending) <= ROW_BUTTONS_LIMIT,
        already_approved=already_approved,
        pending_ids={t.task_id for t in pending},
        may_retry=viewer.can_decide and bool(failed_deliveries or failed_emails),
        failed_deliveries=len(failed_deliveries),
        failed_emails=len(failed_emails),
        read_only=not viewer.can_decide,
        own_request=_own(viewer, timeline),
        notifications=views.notification_rows(timeline.notifications),
        timeline=views.timeline_rows(timeline.audit),
        reason_limit=REASON_LIMIT,
        done=_DONE[done].format(n=display.name(count)) if done in _DONE else None,
        done_tone=done,
        **(await time_and_quorum(services(request), pending, details) if pending else {}),
    )
    return _page(request, "dashboard/request.html", context, session)


# --- forms -----------------------------------------------------------------------------------------


async def _form(request: Request, session: Session | None) -> dict[str, str]:
    """A POST's fields, once it is known to come from our own page of this session (CSRF, origin)."""
    if from_another_site(request, services(request).settings.server.base_url):
        _refuse(
            403, "Not sent from this site", "This form was sent from another web site, so nothing was done."
        )
    try:
        fields = await read_form(request, FORM_LIMIT, FORM_FIELDS_LIMIT)
    except BodyTooLarge:
        _refuse(
            413, "Too much data", "This form sent far more than the dashboard's forms do; nothing was done."
        )
    except (NotAForm, TooManyFields):
        _refuse(
            400, "Not the dashboard's form", "This is not what the dashboard's forms send; nothing was done."
        )
    if not _keeper(request).csrf_ok(session, fields.get("csrf")):
        _refuse(
            403,
            "This form has expired",
            "This form does not belong to your current sign-in (it was opened before you signed in or out, "
            "or in another browser), so nothing was done. Open the page again and send it from there.",
        )
    return fields


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    keeper = _keeper(request)
    session = keeper.from_request(request.cookies)
    try:
        fields = await _form(request, session)
    except Refused as refused:
        return _refusal_page(request, refused)
    assert session is not None  # _form checked its CSRF token
    username = fields.get("username", "").strip()[:TEXT_LIMIT]
    password = fields.get("password", "")[:1024]
    target = _safe_next(fields.get("next"))
    throttle, address = _throttle(request), _address(request)
    wait = throttle.wait(username, address)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        message = (
            f"Too many wrong passwords for this user name or from this address. Try again in about "
            f"{words.counted(minutes, 'minute')}."
        )
        return _sign_in_page(
            request, session, message=message, status=429, username=username, next_path=target
        )
    try:
        viewer = await _authenticator(request).sign_in(username, password)
    except AbiquoError:
        log.warning("dashboard.sign_in_unavailable")
        message = "Abiquo cannot be reached right now to check your password. Try again in a few minutes."
        return _sign_in_page(
            request, session, message=message, status=503, username=username, next_path=target
        )
    if viewer is None:
        throttle.failed(username, address)
        log.info("dashboard.sign_in_refused")
        message = "Abiquo did not accept that user name and password. Check them and try again."
        return _sign_in_page(
            request, session, message=message, status=401, username=username, next_path=target
        )
    throttle.succeeded(username)
    log.info("dashboard.signed_in", actor=viewer.actor, role=viewer.role.value)
    response = RedirectResponse(target, status_code=303)
    keeper.store(response, keeper.new(_session_data(viewer)))
    return response


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request) -> Response:
    keeper = _keeper(request)
    session = keeper.from_request(request.cookies)
    try:
        await _form(request, session)
    except Refused as refused:
        return _refusal_page(request, refused)
    response = RedirectResponse("/", status_code=303)
    keeper.clear(response)
    return response


def _acting(request: Request) -> tuple[Session, Viewer]:
    signed = _signed_in(request)
    if signed is None:
        _refuse(
            403,
            "Not signed in",
            "You are not signed in (or your sign-in has ended), so nothing was done. Sign in and try again.",
        )
    return signed


def _done(request_id: str, done: str, count: int = 0, noun: str = "task") -> Response:
    query = {"done": done} | ({"n": words.counted(count, noun)} if count else {})
    return RedirectResponse(f"/requests/{request_id}?{urlencode(query)}", status_code=303)


def _choice(value: str) -> tuple[Action, list[str] | None]:
    """`accept:all`, `decline:<task id>`… → the action and the tasks (None: every pending one)."""
    verb, _sep, target = value.partition(":")
    action = {"accept": Action.ACCEPT, "decline": Action.DECLINE}.get(verb)
    if action is None or not target:
        _refuse(
            400,
            "Not the dashboard's form",
            "The form did not say whether to accept or decline; nothing was decided.",
        )
    return action, None if target == "all" else [target]


@router.post("/requests/{request_id}/decide", response_class=HTMLResponse)
async def decide(request: Request, request_id: str) -> Response:
    try:
        session, viewer = _acting(request)
        fields = await _form(request, session)
        timeline = await _timeline(request, viewer, request_id)
        if not viewer.may_decide(timeline):
            _refuse(
                403,
                "You cannot decide this request",
                "You asked for this request yourself, so its enterprise's other approvers decide it. "
                "Nothing was decided."
                if _own(viewer, timeline)
                else "You can see this request, but deciding it is for the approvers of its enterprise "
                "and for administrators. Nothing was decided.",
            )
        pending = {t.task_id for t in timeline.tasks if t.decision is DecisionState.PENDING}
        action, chosen = _choice(fields.get("choice", ""))
        task_ids = sorted(pending) if chosen is None else chosen
        if chosen is not None and chosen[0] not in {t.task_id for t in timeline.tasks}:
            _refuse(404, "No such task", "That task is not one of this request's; nothing was decided.")
        reason = fields.get("reason", "").replace("\r\n", "\n")
        if len(reason) > REASON_LIMIT:
            _refuse(
                400,
                "Reason too long",
                f"The reason is {len(reason):,} characters long; the limit is {REASON_LIMIT:,}. "
                "Nothing was decided.",
            )
        if not task_ids:
            return _done(request_id, "already")
        await _check_approver(request, viewer, task_ids)
        result = await services(request).approvals.decide(
            task_ids, action, actor=viewer.actor, reason=reason, channel=Channel.DASHBOARD
        )
    except Refused as refused:
        return _refusal_page(request, refused)
    if not result.decided:
        if result.waiting:  # an approval that counted towards a quorum and decided nothing yet
            return _done(request_id, "counted", len(result.waiting))
        return _done(request_id, "already")
    return _done(request_id, "accepted" if action is Action.ACCEPT else "declined", len(result.decided))


async def _check_approver(request: Request, viewer: Viewer, task_ids: list[str]) -> None:
    """An approver must still approve the request in Abiquo now, as an emailed link's approver must."""
    if viewer.role is not Role.APPROVER:
        return
    try:
        await services(request).approvals.check_approver(task_ids, viewer.actor)
    except NotAnApprover as exc:
        _refuse(403, "You can no longer decide this", str(exc))
    except AbiquoError:
        _refuse(
            503,
            "Try again in a few minutes",
            "Abiquo cannot be reached right now to confirm that you still approve this request's "
            "enterprise, so nothing was decided.",
        )


@router.post("/requests/{request_id}/retry", response_class=HTMLResponse)
async def retry(request: Request, request_id: str) -> Response:
    try:
        session, viewer = _acting(request)
        await _form(request, session)
        timeline = await _timeline(request, viewer, request_id)
        if not viewer.can_decide:
            _refuse(
                403,
                "You cannot retry this request",
                "Retrying a failed delivery or email is for the approvers of the request's enterprise "
                "and for administrators. Nothing was queued.",
            )
    except Refused as refused:
        return _refusal_page(request, refused)
    service = services(request)
    queued = 0
    for task in timeline.tasks:
        if task.delivery is DeliveryState.FAILED:
            again = await retry_delivery(
                service.store,
                task.task_id,
                max_attempts=service.settings.worker.max_attempts,
                channel=Channel.DASHBOARD,
                actor=viewer.actor,
            )
            queued += again is not None
    jobs = await retry_request_jobs(service.store, request_id, channel=Channel.DASHBOARD, actor=viewer.actor)
    queued += len(jobs)
    log.info("dashboard.retried", request_id=request_id, queued=queued, actor=viewer.actor)
    return _done(request_id, "retried" if queued else "nothing", queued, "job")
