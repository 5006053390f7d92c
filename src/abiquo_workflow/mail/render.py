"""Approval, outcome and settled emails: Jinja2 templates, inlined CSS, a text and an HTML part.

Templates live in `mail/templates/`; a file of the same name in `mail.templates` (a folder) wins, so a
site can restyle `base.html` or rewrite `approval.txt` without touching the code. Templates receive
plain view values (`ApprovalView`, `OutcomeView`, `SettledView` below), every user-supplied string
already cleaned by `display` (on one line, without format characters such as a right-to-left override,
capped with "…"), so a site's own templates get the same safe text; the HTML templates autoescape, so
a VM called `<b>` shows as text. Subjects are built from the cleaned values, and every header is
flattened again.

The HTML is laid out for mail clients: tables, one column, styles inlined into `style=""` attributes
(css-inline), and only the small-screen `@media` rules left in a `<style>` block (`keep_at_rules`), which
the clients that honour them (Apple Mail, Gmail's apps, Outlook on phones) apply and the others ignore.
A request of more than `COMPACT_AFTER` VMs is listed one line per VM, under a summary and the buttons
that decide them all, so that a 100-VM email stays far below the ~100 KB at which Gmail cuts a message.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import mimetypes
from collections import Counter
from collections.abc import Mapping, Sequence
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
from abiquo_workflow.mail import changes, words
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest, OutcomeNotice, SettledNotice, TaskResult

log = logging.getLogger(__name__)

_PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
# Remote stylesheets are never fetched: rendering must not depend on the network.
_TRAIL_SEPARATOR = " \u203a "
# Rules inside @media cannot be inlined; `keep_at_rules` leaves them, alone, in a <style> block.
_INLINER = css_inline.CSSInliner(keep_style_tags=False, keep_at_rules=True, load_remote_stylesheets=False)

#: A request of more VMs than this is listed one line per VM, without buttons of its own per VM.
COMPACT_AFTER = 20
#: At most this many VMs are listed in an email; the page behind "Accept all" lists every one.
LIST_LIMIT = 200
#: At most this many repeated sizes are named in the summary.
GROUP_LIMIT = 5


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
    #: Its size on one line, volumes included: "2 CPUs · 4 GB RAM · 20 GB disk".
    spec: str = words.UNKNOWN
    #: Its size without volumes, which VMs of one template share; None when its details are unknown.
    size: str | None = None
    #: A reconfigure's sentence before its sizes: what they are compared with, or that Abiquo does not
    #: say what changes (mail/changes.py); None for other tasks.
    note: str | None = None
    #: A reconfigure's `spec` part by part, each marked when it is a change ("2 → 4 CPUs"); else empty.
    parts: tuple[changes.Part, ...] = ()
    #: True when `note` says the change cannot be told (the sizes are the VM's current ones).
    change_unknown: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SizeGroup:
    """VMs of one size, when several share it: "100 x 1 CPU · 1 GB RAM · 20 GB disk" (a multiplication
    sign for the x)."""

    count: int
    size: str


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """What a request of several VMs asks for in total, each part in words."""

    vms: str
    cpu: str
    ram: str
    disk: str
    #: Volumes in total, or None when no VM has one.
    volumes: str | None
    #: VMs whose details could not be read, and are therefore not counted in the totals.
    unknown: int
    #: Sizes shared by several VMs, most common first (at most `GROUP_LIMIT`); empty when none repeats.
    groups: tuple[SizeGroup, ...]
    #: VMs not in one of `groups` (when there are groups).
    others: int


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
    #: The email's title: "Deploy of “Web tier & cache”", "Deploy of “web-01”".
    heading: str = ""
    #: "3 virtual machines", "1 virtual machine".
    count_words: str = ""
    #: Totals and repeated sizes; None for a single VM.
    summary: Summary | None = None
    #: More than `COMPACT_AFTER` VMs: listed one line each, decided all at once.
    compact: bool = False
    #: How many of `vms` the email lists (all of them unless there are more than `LIST_LIMIT`).
    list_limit: int = LIST_LIMIT
    #: VMs beyond `list_limit`, not listed.
    unlisted: int = 0
    #: True when the tasks are not all of one type (each VM then says its own).
    mixed_types: bool = False
    #: The reminder's number when this email is one (the subject and the heading say so).
    reminder: int | None = None
    #: "If nobody decides by 5 Dec 2026, 14:00 UTC, it will be cancelled." (None: no deadline).
    deadline: str | None = None
    #: "1 of 2 approvals, from Alice Smith. …" under a rule that needs several (else None).
    quorum: str | None = None


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
    #: "Deploy of “Web tier & cache”", as in the approval email.
    heading: str = ""
    #: "3 of 3 tasks of your request were accepted.", "Your request was declined."
    sentence: str = ""
    declined_count: int = 0
    #: More than `COMPACT_AFTER` results: one line each.
    compact: bool = False
    #: The verdict and reason every result shares, said once above a compact list; else None.
    shared: OutcomeRow | None = None
    list_limit: int = LIST_LIMIT
    unlisted: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SettledView:
    """What the "settled" email to an approver who did not decide says: who settled it, when, how."""

    subject: str
    #: "Deploy of “Web tier & cache”", as in the approval email.
    heading: str
    requester_name: str
    #: "Settled by Bob Jones on 4 Mar 2025, 10:42 UTC — accepted 3 of 3" (`words.settlement`).
    sentence: str
    reasons: tuple[words.GivenReason, ...]
    more_reasons: int
    #: "accepted", "declined" or "partly accepted": the colour of the band.
    outcome: str
    place: Place
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


def _requester_name(user: User | None) -> str:
    """The requester as a subject names them: "John Doe", or the nick when the name is empty."""
    return _first_name_basis(user) if user is not None else words.UNKNOWN


def _vm_row(vm_details: VmDetails, links: ActionLinks | None) -> VmRow:
    vm = vm_details.vm
    task_type = words.task_word(vm_details.task_type)
    if vm is None:
        error = display.reason(vm_details.error) or "the details could not be read from Abiquo"
        unknown = words.UNKNOWN
        return VmRow(
            vm_details.task_id,
            unknown,
            task_type,
            unknown,
            unknown,
            (unknown,),
            (unknown,),
            error,
            links,
            spec="size unknown",
        )
    row = VmRow(
        task_id=vm_details.task_id,
        name=words.or_unknown(vm.name),
        task_type=task_type,
        cpu=str(vm.cpu) if vm.cpu is not None else words.UNKNOWN,
        ram=words.size_words(vm.ram_mb),
        disks=words.disk_words(vm),
        volumes=words.volume_words(vm),
        error=None,
        links=links,
        spec=words.spec_words(vm),
        size=words.spec_words(vm, volumes=False),
    )
    change = changes.reconfigure(vm_details)
    if change is None:
        return row
    return dataclasses.replace(
        row,
        cpu=change.cpu,
        ram=change.ram,
        disks=change.disks,
        volumes=change.volumes,
        spec=change.spec,
        note=change.note,
        parts=change.parts,
        change_unknown=not change.changed,
    )


def _vapp_name(details: RequestDetails) -> str:
    return words.or_unknown(details.vapp.name if details.vapp else None)


def _named(names: Sequence[str], details: RequestDetails) -> str | None:
    """What a request is about, by name: its one VM, else its vApp; None when neither is known."""
    if len(names) == 1 and names[0] != words.UNKNOWN:
        return names[0]
    vapp = _vapp_name(details)
    return vapp if vapp != words.UNKNOWN else None


def _heading(task_types: str, names: Sequence[str], details: RequestDetails) -> str:
    """ "Deploy of “Web tier & cache”", "Undeploy of “web-01”", or "Deploy of 3 VMs"."""
    named = _named(names, details)
    return f"{task_types} of " + (f"\u201c{named}\u201d" if named else words.counted(len(names), "VM"))


def _subject_fields(
    task_types: str, names: Sequence[str], details: RequestDetails, **more: object
) -> dict[str, object]:
    """The `{fields}` a configured subject may use (README, `mail.approver_subject`)."""
    count = len(names)
    named = _named(names, details)
    what = f'"{named}"' if named else words.counted(count, "VM")
    several = count > 1 and named is not None
    return {
        "task_type": task_types,
        "action": task_types.lower(),
        "requester": _person(details.requester),
        "requester_name": _requester_name(details.requester),
        "vapp": _vapp_name(details),
        "vm": names[0] if count == 1 else _vapp_name(details),
        "count": count,
        "vms": words.counted(count, "VM"),
        "what": what,
        "target": f"{what} ({words.counted(count, 'VM')})" if several else what,
        **more,
    }


def _summary(vms: Sequence[VmDetails], rows: Sequence[VmRow]) -> Summary:
    known = [vm.vm for vm in vms if vm.vm is not None]
    cpu = sum(vm.cpu or 0 for vm in known)
    ram = sum(vm.ram_mb or 0 for vm in known)
    disk = sum(sum(words.disk_sizes(vm)) for vm in known)
    volumes = sum(volume.size_mb for vm in known for volume in vm.volumes)
    sizes = Counter(row.size for row in rows if row.size is not None)
    repeated = [(size, count) for size, count in sizes.most_common() if count > 1][:GROUP_LIMIT]
    groups = tuple(SizeGroup(count, size) for size, count in repeated)
    return Summary(
        vms=words.counted(len(rows), "VM"),
        cpu=words.cpu_words(cpu),
        ram=words.size_words(ram),
        disk=words.size_words(disk),
        volumes=words.size_words(volumes) if any(vm.volumes for vm in known) else None,
        unknown=len(rows) - len(known),
        groups=groups,
        others=len(known) - sum(group.count for group in groups) if groups else 0,
    )


def approval_view(
    request: ApprovalRequest, settings: MailSettings, logo_cid: str | None = None
) -> ApprovalView:
    """The values the approval templates are rendered with."""
    details = request.details
    vms = tuple(_vm_row(vm, request.task_links.get(vm.task_id)) for vm in details.vms)
    task_types = words.task_words(vm.task_type for vm in details.vms)
    names = [vm.name for vm in vms]
    subject = words.format_subject(settings.approver_subject, _subject_fields(task_types, names, details))
    if request.reminder is not None:
        subject = f"Reminder: {subject}"
    approver = request.approver
    return ApprovalView(
        reminder=request.reminder,
        deadline=words.deadline_sentence(details.deadline_at, details.at_deadline),
        quorum=words.quorum_sentence(details.approvals_needed, request.approved_by),
        subject=words.one_line(subject),
        approver_name=_first_name_basis(approver),
        requester_name=_person(details.requester),
        requester_email=display.address(details.requester.email if details.requester else None) or None,
        task_types=task_types,
        place=_place(details),
        vms=vms,
        all_links=request.all_links if len(vms) > 1 else None,
        expires_at=words.moment_words(request.expires_at) if request.expires_at else None,
        request_id=words.one_line(request.request_id),
        logo_cid=logo_cid,
        heading=_heading(task_types, names, details),
        count_words=words.counted(len(vms), "virtual machine"),
        summary=_summary(details.vms, vms) if len(vms) > 1 else None,
        compact=len(vms) > COMPACT_AFTER,
        unlisted=max(0, len(vms) - LIST_LIMIT),
        mixed_types=len({vm.task_type for vm in vms}) > 1,
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
    accepted = sum(1 for r in notice.results if r.decision is DecisionState.ACCEPTED)
    declined = sum(1 for r in notice.results if r.decision is DecisionState.DECLINED)
    shown_names = [row.name for row in results]
    fields = _subject_fields(
        task_types, shown_names, details, outcome=outcome, accepted=accepted, declined=declined
    )
    subject = words.format_subject(settings.requester_subject, fields)
    compact = len(results) > COMPACT_AFTER
    verdicts = {(row.accepted, row.verdict, row.reason, row.note) for row in results}
    return OutcomeView(
        subject=words.one_line(subject),
        requester_name=_first_name_basis(notice.requester),
        task_types=task_types,
        outcome=outcome,
        place=_place(details),
        results=results,
        accepted_count=accepted,
        request_id=words.one_line(notice.request_id),
        logo_cid=logo_cid,
        heading=_heading(task_types, shown_names, details),
        sentence=words.outcome_sentence(accepted, declined, len(results)),
        declined_count=declined,
        compact=compact,
        shared=results[0] if compact and len(verdicts) == 1 else None,
        unlisted=max(0, len(results) - LIST_LIMIT),
    )


def settled_view(notice: SettledNotice, settings: MailSettings, logo_cid: str | None = None) -> SettledView:
    """The values the settled templates are rendered with. `ValueError` when a task is still pending."""
    details = notice.details
    settled = words.settlement(notice.results)
    if settled is None:
        raise ValueError(f"request {notice.request_id} is not settled: a task is still waiting")
    names = {vm.task_id: words.or_unknown(vm.vm.name) for vm in details.vms if vm.vm is not None}
    shown_names = [display.name(r.vm_name) or names.get(r.task_id, words.UNKNOWN) for r in notice.results]
    task_types = words.task_words(result.task_type for result in notice.results)
    fields = _subject_fields(
        task_types,
        shown_names,
        details,
        outcome=settled.outcome,
        accepted=settled.accepted,
        declined=settled.declined,
    )
    return SettledView(
        subject=words.one_line(words.format_subject(settings.settled_subject, fields)),
        heading=_heading(task_types, shown_names, details),
        requester_name=_person(details.requester),
        sentence=settled.sentence,
        reasons=settled.reasons,
        more_reasons=settled.more_reasons,
        outcome=settled.outcome,
        place=_place(details),
        request_id=words.one_line(notice.request_id),
        logo_cid=logo_cid,
    )


# --- Templates and messages ------------------------------------------------------------------------

#: What a template is rendered with.
View = ApprovalView | OutcomeView | SettledView | PingView


@functools.lru_cache(maxsize=8)
def _environment(overrides: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(_PACKAGE_TEMPLATES)]
    if overrides is not None:
        if not overrides.is_dir():
            log.warning("mail.templates %s is not a folder; using the built-in templates", overrides)
        loaders.insert(0, jinja2.FileSystemLoader(overrides))
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # `{{ vm.spec | units }}`: "20 GB" kept on one line in HTML (the text part keeps plain spaces).
    environment.filters["units"] = words.keep_units
    environment.filters["counted"] = words.counted
    return environment


def _render(settings: MailSettings, name: str, view: View) -> str:
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
    view: View,
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


def render_settled(notice: SettledNotice, settings: MailSettings) -> EmailMessage:
    """The short "settled" email to `notice.recipient`, an approver who was asked and did not decide."""
    logo = _logo(settings)
    view = settled_view(notice, settings, _cid(logo))
    return _message(settings, "settled", view, _address("", notice.recipient), logo)


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
