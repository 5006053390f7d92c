"""Approval and outcome emails: Jinja2 templates, inlined CSS, a text and an HTML part.

Templates live in `mail/templates/`; a file of the same name in `mail.templates` (a folder) wins, so a
site can restyle `base.html` or rewrite `approval.txt` without touching the code. Templates receive
plain view values (`ApprovalView`, `OutcomeView` below), every user-supplied string already cleaned by
`display` (on one line, without format characters such as a right-to-left override, capped with "…"),
so a site's own templates get the same safe text; the HTML templates autoescape, so a VM called `<b>`
shows as text. Subjects are built from the cleaned values, and every header is flattened again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import mimetypes
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import css_inline
import jinja2

from abiquo_workflow import display
from abiquo_workflow.config import MailSettings
from abiquo_workflow.domain import DecisionState, RequestDetails, User, VmDetails
from abiquo_workflow.exceptions import ConfigError
from abiquo_workflow.mail import words
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest, OutcomeNotice, TaskResult

log = logging.getLogger(__name__)

_PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
# Remote stylesheets are never fetched: rendering must not depend on the network.
_TRAIL_SEPARATOR = " \u203a "
_INLINER = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


# --- What templates see ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """Where a request lives, each part a cleaned name or "unknown"."""

    enterprise: str
    vdc: str
    datacenter: str
    vapp: str

    @property
    def trail(self) -> str:
        """Enterprise, VDC (datacenter), vApp on one line, separated by single right angle quotes."""
        return _TRAIL_SEPARATOR.join((self.enterprise, f"{self.vdc} ({self.datacenter})", self.vapp))


@dataclasses.dataclass(frozen=True, slots=True)
class VmRow:
    """One VM of an approval email. `links` is None when no link was made for its task."""

    task_id: str
    name: str
    task_type: str
    cpu: str
    ram: str
    disks: tuple[str, ...]
    volumes: tuple[str, ...]
    error: str | None
    links: ActionLinks | None


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalView:
    subject: str
    approver_name: str
    requester_name: str
    requester_email: str | None
    task_types: str
    place: Place
    vms: tuple[VmRow, ...]
    #: Links for every task at once; None unless the request has several tasks.
    all_links: ActionLinks | None
    expires_at: str | None
    request_id: str
    logo_cid: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeRow:
    task_id: str
    name: str
    task_type: str
    #: True accepted, False declined, None still pending: for colouring only.
    accepted: bool | None
    verdict: str
    reason: str | None
    note: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeView:
    subject: str
    requester_name: str
    task_types: str
    outcome: str
    place: Place
    results: tuple[OutcomeRow, ...]
    accepted_count: int
    request_id: str
    logo_cid: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class PingView:
    subject: str
    sender: str
    to: str
    sent_at: str
    logo_cid: str | None


# --- Building the views ----------------------------------------------------------------------------


def _place(details: RequestDetails) -> Place:
    datacenter = details.datacenter.name if details.datacenter else None
    if datacenter is None and details.vdc is not None:
        datacenter = details.vdc.datacenter_name
    return Place(
        enterprise=words.or_unknown(details.enterprise.name if details.enterprise else None),
        vdc=words.or_unknown(details.vdc.name if details.vdc else None),
        datacenter=words.or_unknown(datacenter),
        vapp=words.or_unknown(details.vapp.name if details.vapp else None),
    )


def _person(user: User | None) -> str:
    return words.or_unknown(user.display_name if user is not None else None)


def _first_name_basis(user: User) -> str:
    """How an email greets someone: "Alice Smith", or the nick when the name is empty."""
    return display.name(f"{user.name} {user.surname}") or words.or_unknown(user.nick)


def _vm_row(vm_details: VmDetails, links: ActionLinks | None) -> VmRow:
    vm = vm_details.vm
    task_type = words.task_word(vm_details.task_type)
    if vm is None:
        error = display.reason(vm_details.error) or "the details could not be read from Abiquo"
        unknown = words.UNKNOWN
        return VmRow(
            vm_details.task_id, unknown, task_type, unknown, unknown, (unknown,), (unknown,), error, links
        )
    return VmRow(
        task_id=vm_details.task_id,
        name=words.or_unknown(vm.name),
        task_type=task_type,
        cpu=str(vm.cpu) if vm.cpu is not None else words.UNKNOWN,
        ram=words.size_words(vm.ram_mb),
        disks=words.disk_words(vm),
        volumes=words.volume_words(vm),
        error=None,
        links=links,
    )


def _vapp_name(details: RequestDetails) -> str:
    return words.or_unknown(details.vapp.name if details.vapp else None)


def approval_view(
    request: ApprovalRequest, settings: MailSettings, logo_cid: str | None = None
) -> ApprovalView:
    """The values the approval templates are rendered with."""
    details = request.details
    vms = tuple(_vm_row(vm, request.task_links.get(vm.task_id)) for vm in details.vms)
    task_types = words.task_words(vm.task_type for vm in details.vms)
    requester = _person(details.requester)
    subject = words.format_subject(
        settings.approver_subject,
        {"task_type": task_types, "requester": requester, "vapp": _vapp_name(details), "count": len(vms)},
    )
    approver = request.approver
    return ApprovalView(
        subject=words.one_line(subject),
        approver_name=_first_name_basis(approver),
        requester_name=requester,
        requester_email=display.address(details.requester.email if details.requester else None) or None,
        task_types=task_types,
        place=_place(details),
        vms=vms,
        all_links=request.all_links if len(vms) > 1 else None,
        expires_at=words.moment_words(request.expires_at) if request.expires_at else None,
        request_id=words.one_line(request.request_id),
        logo_cid=logo_cid,
    )


def _outcome_row(result: TaskResult, names: Mapping[str, str]) -> OutcomeRow:
    verdict, reason = words.verdict(result)
    return OutcomeRow(
        task_id=result.task_id,
        name=display.name(result.vm_name) or names.get(result.task_id, words.UNKNOWN),
        task_type=words.task_word(result.task_type),
        accepted=None
        if result.decision is DecisionState.PENDING
        else result.decision is DecisionState.ACCEPTED,
        verdict=verdict,
        reason=reason,
        note=words.delivery_note(result),
    )


def outcome_view(notice: OutcomeNotice, settings: MailSettings, logo_cid: str | None = None) -> OutcomeView:
    """The values the outcome templates are rendered with."""
    details = notice.details
    names = {vm.task_id: words.or_unknown(vm.vm.name) for vm in details.vms if vm.vm is not None}
    results = tuple(_outcome_row(result, names) for result in notice.results)
    task_types = words.task_words(result.task_type for result in notice.results)
    outcome = words.overall_outcome(notice.results)
    subject = words.format_subject(
        settings.requester_subject,
        {"task_type": task_types, "outcome": outcome, "vapp": _vapp_name(details), "count": len(results)},
    )
    return OutcomeView(
        subject=words.one_line(subject),
        requester_name=_first_name_basis(notice.requester),
        task_types=task_types,
        outcome=outcome,
        place=_place(details),
        results=results,
        accepted_count=sum(1 for r in notice.results if r.decision is DecisionState.ACCEPTED),
        request_id=words.one_line(notice.request_id),
        logo_cid=logo_cid,
    )


# --- Templates and messages ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _environment(overrides: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(_PACKAGE_TEMPLATES)]
    if overrides is not None:
        if not overrides.is_dir():
            log.warning("mail.templates %s is not a folder; using the built-in templates", overrides)
        loaders.insert(0, jinja2.FileSystemLoader(overrides))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _render(settings: MailSettings, name: str, view: ApprovalView | OutcomeView | PingView) -> str:
    context: dict[str, Any] = {field.name: getattr(view, field.name) for field in dataclasses.fields(view)}
    try:
        return _environment(settings.templates).get_template(name).render(context)
    except jinja2.TemplateError as exc:
        # Only a site's override can be broken in practice; name the key that points at it.
        raise ConfigError([f"mail.templates: the email template {name} cannot be rendered ({exc})"]) from exc


def _read_logo(path: Path | None) -> tuple[bytes, str] | None:
    """The logo's bytes and image subtype, or None (with a warning) when it cannot be used."""
    if path is None:
        return None
    mime, _ = mimetypes.guess_type(path.name)
    if mime is None or not mime.startswith("image/"):
        log.warning("mail.logo %s is not an image file (by its name); sending emails without a logo", path)
        return None
    try:
        return path.read_bytes(), mime.removeprefix("image/")
    except OSError as exc:
        log.warning("mail.logo %s cannot be read (%s); sending emails without a logo", path, exc.strerror)
        return None


def _email_of(user: User, role: str) -> str:
    """Where `user` (the approver or the requester: `role`) gets their email; `ValueError` when nowhere.
    Checked first, so that nothing is rendered for an email nobody can receive."""
    if not user.email:
        raise ValueError(f"{role} {user.nick!r} has no email address to send to")
    return user.email


def _address(name: str, email: str) -> Address:
    try:
        return Address(display_name=words.one_line(name), addr_spec=words.one_line(email))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{email!r} is not an email address we can send to ({exc})") from None


@dataclasses.dataclass(frozen=True, slots=True)
class _Logo:
    """The logo attached to an email, and the content id by which its HTML part shows it."""

    data: bytes
    subtype: str
    cid: str


def _logo(settings: MailSettings) -> _Logo | None:
    """`mail.logo` ready to attach, under a fresh content id; None when there is none to use."""
    read = _read_logo(settings.logo)
    if read is None:
        return None
    return _Logo(*read, cid=make_msgid(idstring="logo", domain="abiquo-workflow").strip("<>"))


def _cid(logo: _Logo | None) -> str | None:
    return logo.cid if logo is not None else None


def _message(
    settings: MailSettings,
    template: str,
    view: ApprovalView | OutcomeView | PingView,
    to: Address | str,
    logo: _Logo | None,
) -> EmailMessage:
    """One email from `template`.txt and `template`.html rendered with `view`: the text part, the HTML
    part with its CSS inlined and the logo attached to it, and headers flattened to one line each."""
    message = EmailMessage()
    message["Subject"] = words.one_line(view.subject)
    message["From"] = words.one_line(settings.sender)
    message["To"] = to
    message["Date"] = format_datetime(datetime.now(UTC))
    sender_domain = words.one_line(settings.sender).rpartition("@")[2].strip("<> ") or "localhost"
    message["Message-ID"] = make_msgid(domain=sender_domain)
    message.set_content(_render(settings, f"{template}.txt", view), charset="utf-8")
    html = _INLINER.inline(_render(settings, f"{template}.html", view))
    message.add_alternative(html, subtype="html", charset="utf-8")
    if logo is not None:
        html_part = message.get_body(preferencelist=("html",))
        assert html_part is not None  # added just above
        html_part.add_related(logo.data, maintype="image", subtype=logo.subtype, cid=f"<{logo.cid}>")
    return message


def render_approval(request: ApprovalRequest, settings: MailSettings) -> EmailMessage:
    """The approval email to `request.approver`, with a text and an HTML part.

    Raises `ValueError` when the approver has no usable email address (the policy never picks one).
    """
    email = _email_of(request.approver, "approver")
    logo = _logo(settings)
    view = approval_view(request, settings, _cid(logo))
    return _message(settings, "approval", view, _address(view.approver_name, email), logo)


def render_outcome(notice: OutcomeNotice, settings: MailSettings) -> EmailMessage:
    """The outcome email to `notice.requester`. Raises `ValueError` when they have no email address."""
    email = _email_of(notice.requester, "requester")
    logo = _logo(settings)
    view = outcome_view(notice, settings, _cid(logo))
    return _message(settings, "outcome", view, _address(view.requester_name, email), logo)


def render_test(settings: MailSettings, to: str) -> EmailMessage:
    """The message `send-test-email` sends: proves the relay, the sender and the templates work."""
    logo = _logo(settings)
    view = PingView(
        subject="abiquo-workflow test message",
        sender=words.one_line(settings.sender),
        to=words.one_line(to),
        sent_at=words.moment_words(datetime.now(UTC)),
        logo_cid=_cid(logo),
    )
    return _message(settings, "test", view, _address("", to), logo)
