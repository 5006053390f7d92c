"""`/accept`, `/decline` and `/multiple`: the pages behind the links in approval emails.

GET and HEAD show what would be decided and decide nothing (mail scanners open every link); the page's
button POSTs. With `links.one_click = true`, GET decides at once, as the 2013 tool did (HEAD never does).
The POST must come from our own page: a browser's `Sec-Fetch-Site` other than same-origin (or none, a
typed URL), or an `Origin` of another site, is refused with 403, so another site cannot make an
approver's browser decide (the link's token is then not the only guard).

Answers: 200 decided (or, on GET, the confirmation page; or, under a rule of several approvals, an
approval recorded that does not decide yet: "1 of 2 approvals…", nothing sent to Abiquo) · 403 missing,
forged or expired token · 404 unknown task · 410 already decided (the page says by whom and when).
`/multiple` decides the tasks still pending and lists the others; it answers 410 only when none was
left to decide. A POST that the confirmation form could not have sent decides nothing: 400 (no task,
unknown action, a reason over the textarea's `maxlength`), 413 (a body over `FORM_LIMIT`), 415
(anything but a URL-encoded form).
And 503 when the database is not available (app.py answers every StoreError so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import structlog
from fastapi import APIRouter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from abiquo_workflow import display
from abiquo_workflow.approvals import ASKING_KINDS, Decided, details_from_json, task_result
from abiquo_workflow.domain import Action, Channel, DecisionState, RequestDetails
from abiquo_workflow.exceptions import AbiquoError, NotAnApprover, TokenError
from abiquo_workflow.links import MULTIPLE_ACTIONS, Grant, parse_task_list
from abiquo_workflow.mail import words
from abiquo_workflow.store.records import TaskRecord
from abiquo_workflow.web.bodies import BodyTooLarge, NotAForm, TooManyFields, read_form
from abiquo_workflow.web.origin import from_another_site
from abiquo_workflow.web.state import Services, services
from abiquo_workflow.web.templating import page
from abiquo_workflow.web.views import TaskRow, request_context, shared_reason, status_words

log = structlog.stdlib.get_logger(__name__)

router = APIRouter()

_VERBS = {Action.ACCEPT: ("Accept", "accept"), Action.DECLINE: ("Decline", "decline")}

#: The confirmation form's `maxlength` for the reason, and the longest reason a POST may carry.
REASON_LIMIT = 1000
#: The largest form body accepted. The form echoes the link's task list, which had to fit in a URL.
FORM_LIMIT = 64 * 1024
FORM_FIELDS_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Asked:
    """What a link asks for: an action on some tasks, with the token that allows it."""

    action: Action
    #: The tasks the link names; empty for a link to an approval email's tasks (`notice`) until its
    #: token is verified and the store says which they are (`_authorised`).
    task_ids: tuple[str, ...]
    token: str | None
    #: The link's own parameters, echoed in the confirmation form so the POST carries them.
    params: Mapping[str, str]
    #: The approval email (its notification id) whose tasks an "accept all" link acts on.
    notice: int | None = None


#: What a refusal page tells the approver to do next, when its message does not already say.
_NEXT_STEPS = {
    400: "Open the link again from the email, exactly as it is there: if your mail program split it over "
    "two lines, copy the whole address into the browser. If it still fails, decide in Abiquo's Workflow "
    "tasks tab.",
    403: "Open the link again from the newest email about this request. If it still cannot be used, decide "
    "in Abiquo's Workflow tasks tab, or ask your administrator to send the request again.",
    404: "Look for the task in Abiquo's Workflow tasks tab: if Abiquo still holds it, decide it there, or "
    "ask your administrator.",
}
#: What the 410 page ("already decided") tells the approver to do next.
_NEXT_WHEN_GONE = (
    "Nothing is left for you to decide here. If the decision looks wrong, talk to whoever made it; the "
    "requester can ask again in Abiquo."
)


class BadLink(Exception):
    """A refusal: its status, the page's title, what went wrong, and (`next`) what the reader can do."""

    def __init__(self, status: int, title: str, message: str, next_step: str | None = "") -> None:
        self.status, self.title, self.message = status, title, message
        #: "" picks the status's usual next step (`_NEXT_STEPS`); None says nothing more.
        self.next_step = _NEXT_STEPS.get(status) if next_step == "" else next_step


async def _parameters(request: Request) -> dict[str, str]:
    """Query parameters, overridden by form fields on POST."""
    params = dict(request.query_params)
    if request.method == "POST":
        params.update(await _form_fields(request))
    return params


async def _form_fields(request: Request) -> dict[str, str]:
    """The confirmation form's fields: URL-encoded (as browsers send it) and small.

    Read with a limit because these routes are open to anyone; multipart, which the form never sends,
    is refused rather than parsed.
    """
    try:
        return await read_form(request, FORM_LIMIT, FORM_FIELDS_LIMIT)
    except BodyTooLarge:
        raise BadLink(
            413,
            "Too much data",
            f"This form sent more than {FORM_LIMIT // 1024} KiB; the confirmation page never does. "
            "Open the link in the email again.",
            None,
        ) from None
    except NotAForm:
        raise BadLink(
            415,
            "Not the confirmation form",
            "This address only takes the confirmation page's form (application/x-www-form-urlencoded). "
            "Open the link in the email again.",
            None,
        ) from None
    except TooManyFields:
        raise BadLink(
            400,
            "Not the confirmation form",
            "This form has far more fields than the confirmation page sends.",
        ) from None


def _single(action: Action, params: Mapping[str, str]) -> Asked:
    task = params.get("task", "").strip()
    if not task:
        raise BadLink(
            400, "No task named", "This link names no task. Open it exactly as it appears in the email."
        )
    return Asked(action, (task,), params.get("token"), {"task": task, "token": params.get("token", "")})


def _multiple(params: Mapping[str, str]) -> Asked:
    action = MULTIPLE_ACTIONS.get(params.get("action", "").strip().lower())
    if action is None:
        raise BadLink(400, "Unknown action", "The link's action must be accept or cancel.")
    if "notice" in params:
        return _of_notice(action, params)
    tasks = parse_task_list(params.get("tasks", ""))
    if not tasks:
        raise BadLink(
            400, "No task named", "This link names no task. Open it exactly as it appears in the email."
        )
    echoed = {"action": params["action"], "tasks": ",".join(tasks), "token": params.get("token", "")}
    return Asked(action, tasks, params.get("token"), echoed)


#: The longest approval email id a link may name: a notification id, far below this.
_NOTICE_DIGITS = 18


def _of_notice(action: Action, params: Mapping[str, str]) -> Asked:
    """`/multiple?action=…&notice=42&token=…`: every task of approval email 42 (links.notice_url)."""
    raw = params["notice"].strip()
    if "tasks" in params or not (raw.isascii() and raw.isdigit() and len(raw) <= _NOTICE_DIGITS):
        raise BadLink(
            400,
            "Not a link we sent",
            "This link's list of tasks cannot be read. Open it exactly as it is in the email.",
        )
    echoed = {"action": params["action"], "notice": raw, "token": params.get("token", "")}
    return Asked(action, (), params.get("token"), echoed, notice=int(raw))


async def _authorised(service: Services, asked: Asked) -> tuple[Asked, Grant]:
    """The link's tasks and what its token allows on them, or a 403 saying why it cannot be used.

    A link to an approval email's tasks is checked in two steps: its token must be ours, for that email
    and action; then the email must be an approval email sent to the token's approver (a token signed
    for one approver never reaches another's tasks), and its task list is what the link acts on.
    """
    try:
        if asked.notice is None:
            return asked, service.signer.verify(asked.token, asked.task_ids, asked.action)
        notice = service.signer.verify_notice(asked.token, asked.notice, asked.action)
    except TokenError as exc:
        message = str(exc)
        # Some of links.py's sentences already say what to do (an expired link: ask again).
        says_what_to_do = "Abiquo" in message or "Open the link" in message
        raise BadLink(403, "This link cannot be used", message, None if says_what_to_do else "") from None
    email = await service.store.get_notification(notice.notice_id)
    if email is None or email.kind not in ASKING_KINDS or not email.task_ids:
        raise BadLink(
            404,
            "Unknown request",
            "We have no record of the email this link came from. It may have been removed.",
        )
    if email.recipient.casefold() != parseaddr(notice.approver)[1].casefold():
        raise BadLink(403, "This link cannot be used", "This link was made for another person's email.")
    grant = Grant(email.task_ids, notice.action, notice.approver, notice.expires_at)
    return dataclasses.replace(asked, task_ids=email.task_ids), grant


async def _details(service: Services, tasks: list[TaskRecord]) -> RequestDetails | None:
    """Triage's snapshot of the request, or None when there is none or it cannot be read (one saved by
    another version, say): the page then shows less, but the approver can still decide."""
    request = await service.store.get_request(tasks[0].request_id)
    try:
        return details_from_json(request.details if request else None)
    except ValidationError as exc:
        log.warning("web.unreadable_details", request_id=tasks[0].request_id, error=str(exc))
        return None


def _what(pending: list[TaskRecord], rows: list[TaskRow]) -> str:
    """ "the deploy of web-01", or "the deploy of 3 virtual machines"."""
    operation = words.task_words(t.task_type for t in pending).lower()
    if len(pending) == 1:
        name = next((row.name for row in rows if row.task_id == pending[0].task_id), pending[0].task_id)
        return f"the {operation} of {name}"
    return f"the {operation} of {len(pending)} virtual machines"


def _already_message(tasks: list[TaskRecord], settled: words.Settlement | None) -> str:
    if len(tasks) == 1:
        if settled is not None:  # the settlement says how and by whom
            return "This task was already decided, so nothing was changed."
        return f"This task was already decided: {status_words(tasks[0])}."
    return f"All {len(tasks):,} tasks of this link were already decided; nothing was changed."


def _gone(context: dict[str, Any], tasks: list[TaskRecord]) -> dict[str, Any]:
    """The 410 page's words: who settled the link's tasks, when, what they decided and why (as the
    "settled" email says it), and that nothing is left to do."""
    settled = words.settlement([task_result(t) for t in tasks if t.decision is not DecisionState.REJECTED])
    one_reason = settled.reasons[0].text if settled and len(settled.reasons) == 1 else None
    context.update(
        title="Already decided",
        message=_already_message(tasks, settled),
        settled=settled,
        tone="gone",
        next_step=_NEXT_WHEN_GONE,
        # Said once, in the notice, rather than again on each row.
        shared_reason=one_reason or shared_reason(context["rows"]),
    )
    context.setdefault("unknown", [])
    return context


def _left_alone(count: int) -> str:
    """ "1 of these tasks was already decided and is left as it is." (and the plural)."""
    if count == 1:
        return "1 of these tasks was already decided and is left as it is."
    return f"{count:,} of these tasks were already decided and are left as they are."


async def _show(request: Request, asked: Asked) -> Response:
    service = services(request)
    asked, grant = await _authorised(service, asked)
    tasks = await service.store.get_tasks(asked.task_ids)
    if not tasks:
        raise BadLink(404, "Unknown task", "We have no record of this task. It may have been removed.")
    details = await _details(service, tasks)
    context = request_context(tasks, details)
    pending = [t for t in tasks if t.decision is DecisionState.PENDING]
    if not pending:
        return page(request, "decided.html", _gone(context, tasks), status=410)
    verb, css = _VERBS[asked.action]
    already = [t for t in tasks if t.decision is not DecisionState.PENDING]
    context.update(
        verb=verb,
        css=css,
        what=_what(pending, context["rows"]),
        operation=words.task_words(t.task_type for t in pending).lower(),
        count_words=("all " + words.counted(len(pending), "task")) if len(pending) > 1 else "",
        already=already,
        already_words=_left_alone(len(already)) if already else "",
        hidden=asked.params,
        form_action=request.url.path,
        approver=display.name(grant.approver),
        expires=words.moment_words(grant.expires_at),
        reason_limit=REASON_LIMIT,
        **await time_and_quorum(service, pending, details),
    )
    return page(request, "confirm.html", context)


async def time_and_quorum(
    service: Services, pending: list[TaskRecord], details: RequestDetails | None
) -> dict[str, str | None]:
    """The deadline and what happens then, and where the quorum stands, for the pages (None: not so)."""
    quorum = await service.approvals.quorum([t.task_id for t in pending])
    return {
        "deadline": words.deadline_sentence(details.deadline_at, details.at_deadline) if details else None,
        "quorum": words.quorum_sentence(quorum.needed, quorum.approved_by, quorum.waiting_for)
        if quorum is not None
        else None,
    }


async def _check_approver(service: Services, asked: Asked, grant: Grant) -> None:
    """The link's approver must still approve the request's enterprise in Abiquo (403 otherwise)."""
    try:
        await service.approvals.check_approver(asked.task_ids, grant.approver)
    except NotAnApprover as exc:
        log.warning("decision.not_an_approver", approver=grant.approver, tasks=len(asked.task_ids))
        raise BadLink(403, "You can no longer decide this", str(exc), None) from None
    except AbiquoError:
        raise BadLink(
            503,
            "Try again in a few minutes",
            "Abiquo cannot be reached right now to confirm that you still approve this request's "
            "enterprise, so nothing was decided. Open the link again in a few minutes.",
            None,
        ) from None


def _checked_reason(reason: str | None) -> str | None:
    """The reason with browsers' CRLF line breaks made LF, or BadLink when it is longer than the form allows.

    The textarea counts a line break as one character but submits it as two; a longer reason than that
    was not typed into our form, and cutting it short would change what the approver said.
    """
    if reason is None:
        return None
    reason = reason.replace("\r\n", "\n")
    if len(reason) > REASON_LIMIT:
        raise BadLink(
            400,
            "Reason too long",
            f"The reason is {len(reason):,} characters long; the limit is {REASON_LIMIT:,} characters. "
            "Nothing was decided: go back, shorten it, and send it again.",
            None,
        )
    return reason


async def _decide(request: Request, asked: Asked, reason: str | None) -> Response:
    service = services(request)
    asked, grant = await _authorised(service, asked)
    reason = _checked_reason(reason)
    await _check_approver(service, asked, grant)
    result = await service.approvals.decide(
        asked.task_ids, asked.action, actor=grant.approver, reason=reason, channel=Channel.EMAIL
    )
    if not result.decided and not result.already and not result.waiting:
        raise BadLink(404, "Unknown task", "We have no record of this task. It may have been removed.")
    shown = list(result.decided) + list(result.waiting) + list(result.already)
    details = await _details(service, shown)
    context = request_context(shown, details)
    context["unknown"] = list(result.unknown)
    if not result.decided and result.waiting:
        return page(request, "decided.html", await _counted(service, context, result, details))
    if not result.decided:
        return page(request, "decided.html", _gone(context, list(result.already)), status=410)
    done = "Accepted" if asked.action is Action.ACCEPT else "Declined"
    message = (
        f"{done} {words.counted(len(result.decided), 'task')}. Abiquo is being told now, and the requester "
        "will be emailed."
    )
    if others := len(result.already):
        message += (
            " 1 other task had already been decided and was left as it was."
            if others == 1
            else f" {others:,} other tasks had already been decided and were left as they were."
        )
    context.update(
        title=done,
        message=message,
        tone="accepted" if asked.action is Action.ACCEPT else "declined",
        given_reason=display.reason(reason) or None,
        shared_reason=display.reason(reason) or None,
        next_step="Nothing else is needed from you: you can close this page.",
    )
    return page(request, "decided.html", context)


async def _counted(
    service: Services, context: dict[str, Any], result: Decided, details: RequestDetails | None
) -> dict[str, Any]:
    """The page of an approval that counted but did not decide: more approvals are needed, nothing is
    sent to Abiquo yet. "1 of 2 approvals, from Alice Smith; still waiting for Bob Jones or …"."""
    extra = await time_and_quorum(service, list(result.waiting), details)
    context.update(
        title="Approval recorded",
        message=extra["quorum"] or "Your approval is recorded; more approvals are needed.",
        tone="waiting",
        deadline=extra["deadline"],
        next_step="Nothing is sent to Abiquo until enough approvers accept. You will be emailed once it is "
        "settled; you can close this page.",
    )
    return context


def _check_same_origin(request: Request, public_url: str) -> None:
    """Refuse a POST another site made a browser send (see the module docstring)."""
    if from_another_site(request, public_url):
        raise BadLink(
            403,
            "Not sent from this site",
            "This decision was sent from another web site, so nothing was decided. "
            "Open the link in the email and press the button on its page.",
            None,
        )


async def _handle(request: Request, asked_from: Callable[[Mapping[str, str]], Asked]) -> Response:
    try:
        if request.method == "POST":
            _check_same_origin(request, services(request).settings.server.base_url)
        params = await _parameters(request)
        asked = asked_from(params)
        if request.method == "POST":
            return await _decide(request, asked, params.get("reason"))
        if request.method == "GET" and services(request).settings.links.one_click:
            return await _decide(request, asked, None)
        return await _show(request, asked)
    except BadLink as bad:
        context = {"title": bad.title, "message": bad.message, "next_step": bad.next_step}
        return page(request, "error.html", context, status=bad.status)


@router.api_route("/accept", methods=["GET", "HEAD", "POST"], response_class=HTMLResponse)
async def accept(request: Request) -> Response:
    return await _handle(request, lambda params: _single(Action.ACCEPT, params))


@router.api_route("/decline", methods=["GET", "HEAD", "POST"], response_class=HTMLResponse)
async def decline(request: Request) -> Response:
    return await _handle(request, lambda params: _single(Action.DECLINE, params))


@router.api_route("/multiple", methods=["GET", "HEAD", "POST"], response_class=HTMLResponse)
async def multiple(request: Request) -> Response:
    return await _handle(request, _multiple)
