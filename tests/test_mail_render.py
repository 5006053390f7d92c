"""Approval and outcome emails: what they say, how they are built, and that names cannot break them."""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from abiquo_workflow import display
from abiquo_workflow.config import MailSettings
from abiquo_workflow.domain import (
    Action,
    Datacenter,
    DecidedBy,
    DecisionState,
    DeliveryState,
    Disk,
    Enterprise,
    RequestDetails,
    User,
    VirtualAppliance,
    VirtualDatacenter,
    VirtualMachine,
    VmDetails,
    Volume,
)
from abiquo_workflow.exceptions import ConfigError
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.mail import words
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest, OutcomeNotice, SettledNotice, TaskResult
from abiquo_workflow.mail.render import render_approval, render_outcome, render_settled

if TYPE_CHECKING:
    from playwright.async_api import Browser

# --- A request from the seeded world: John Doe deploys vApp 1 of "Production <EU>" ------------------

JDOE = User("20", "jdoe", "John", "Doe", "john.doe@acme.example", "USER", "2", "Acme & Söhne <Ltd>")
ASMITH = User("10", "asmith", "Alice", "Smith", "alice.smith@acme.example", "ENTERPRISE_ADMIN", "2")
HOSTILE = 'db <primary> & "co"'

WEB = VirtualMachine("1", "web-01", cpu=2, ram_mb=4096, disks=(Disk("1", 0, 20480),))
DB = VirtualMachine(
    "2",
    HOSTILE,
    cpu=4,
    ram_mb=8192,
    disks=(Disk("3", 1, 51200), Disk("2", 0, 20480)),
    volumes=(Volume("7", "db-data", 102400),),
)
CACHE = VirtualMachine("3", "cache-03", cpu=1, ram_mb=1536, disks=(Disk("4", 0, 20480),))


def details(*vms: VmDetails) -> RequestDetails:
    return RequestDetails(
        requester=JDOE,
        enterprise=Enterprise("2", "Acme & Söhne <Ltd>"),
        vdc=VirtualDatacenter("1", "Production <EU>"),
        datacenter=Datacenter("1", "Barcelona DC", "Barcelona, ES"),
        vapp=VirtualAppliance("1", "Web tier & cache"),
        vms=vms,
    )


def task(vm: VirtualMachine, task_type: str = "DEPLOY") -> VmDetails:
    return VmDetails(task_id=f"task-{vm.id}", task_type=task_type, vm=vm)


def links_for(task_id: str) -> ActionLinks:
    return ActionLinks(
        f"https://awf.example/accept?task={task_id}&token=A-{task_id}",
        f"https://awf.example/decline?task={task_id}&token=D-{task_id}",
    )


ALL = ActionLinks(
    "https://awf.example/multiple?action=accept&tasks=all&token=AA",
    "https://awf.example/multiple?action=cancel&tasks=all&token=DD",
)
EXPIRES = datetime(2026, 12, 3, 14, 5, tzinfo=UTC)


def approval(
    *vms: VmDetails, approver: User = ASMITH, request_details: RequestDetails | None = None
) -> ApprovalRequest:
    return ApprovalRequest(
        details=request_details or details(*vms),
        approver=approver,
        task_links={vm.task_id: links_for(vm.task_id) for vm in vms},
        all_links=ALL,
        expires_at=EXPIRES,
        request_id="req-42",
    )


SETTINGS = MailSettings(sender="Approvals <approvals@acme.example>")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


class Tags(HTMLParser):
    """The names of every element of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)


class Anchors(HTMLParser):
    """Every link of an HTML document: (href, visible text)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href, self._text = dict(attrs).get("href") or "", []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def links_of(message: EmailMessage) -> list[tuple[str, str]]:
    return Anchors(html_of(message)).links


# --- The approval email -------------------------------------------------------------------------------


def test_approval_is_text_and_html_alternatives_in_utf8() -> None:
    message = render_approval(approval(task(WEB)), SETTINGS)

    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())


def test_approval_goes_from_the_sender_to_the_approver() -> None:
    message = render_approval(approval(task(WEB)), SETTINGS)

    assert message["From"] == "Approvals <approvals@acme.example>"
    assert message["To"] == "Alice Smith <alice.smith@acme.example>"
    assert message["Message-ID"].endswith("@acme.example>")


def test_approval_css_is_inlined_and_only_the_small_screen_rules_stay_in_a_style_block() -> None:
    html = html_of(render_approval(approval(task(WEB)), SETTINGS))

    [kept] = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert kept.strip().startswith("@media screen and (max-width: 480px)")
    assert kept.count("{") == kept.count("}") and kept.strip().endswith("}")
    assert ".button {" not in kept.split("@media", 1)[0]  # everything outside @media was inlined
    assert 'class="button accept"' in html and "padding: 12px 20px" in html


#: A request under a rule of two approvals and a deadline, as triage's snapshot keeps it.
DEADLINE = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)


def timed(*vms: VmDetails, at_deadline: str = "cancel") -> RequestDetails:
    return dataclasses.replace(
        details(*vms), approvals_needed=2, deadline_at=DEADLINE, at_deadline=at_deadline
    )


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
@pytest.mark.parametrize(("at_deadline", "outcome"), [("cancel", "cancelled"), ("accept", "accepted")])
def test_approval_says_the_deadline_and_what_happens_then(
    part: object, at_deadline: str, outcome: str
) -> None:
    request = approval(task(WEB), request_details=timed(task(WEB), at_deadline=at_deadline))
    body = " ".join(part(render_approval(request, SETTINGS)).split())  # type: ignore[operator]

    assert f"If nobody decides by 5 Dec 2026, 14:00 UTC, it will be {outcome}." in body


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_approval_under_a_quorum_says_how_many_approvals_and_who_gave_them(part: object) -> None:
    request = dataclasses.replace(
        approval(task(WEB), request_details=timed(task(WEB))),
        approved_by=("Bob Jones <bob.jones@acme.example>",),
    )
    body = " ".join(part(render_approval(request, SETTINGS)).split())  # type: ignore[operator]

    assert "1 of 2 approvals, from Bob Jones. One decline cancels it." in body


def test_approval_of_one_approval_says_nothing_of_a_quorum_or_a_deadline() -> None:
    body = text_of(render_approval(approval(task(WEB)), SETTINGS))

    assert "approvals" not in body and "If nobody decides" not in body


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_a_reminder_is_marked_as_one_in_its_subject_and_body(part: object) -> None:
    request = dataclasses.replace(approval(task(WEB), request_details=timed(task(WEB))), reminder=1)
    message = render_approval(request, SETTINGS)
    body = " ".join(part(message).split())  # type: ignore[operator]

    assert message["Subject"] == 'Reminder: Approve deploy of "web-01" for John Doe'
    assert "This is a reminder: you have not decided this request yet." in body.replace(
        "<strong>", ""
    ).replace("</strong>", "")
    assert "Reminder: approval still needed" in body or "REMINDER" in body.upper()


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_approval_names_requester_task_type_and_place(part: object) -> None:
    body = part(render_approval(approval(task(WEB)), SETTINGS))  # type: ignore[operator]
    unescaped = body.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    assert "John Doe (jdoe)" in unescaped
    assert "john.doe@acme.example" in unescaped
    assert "Deploy" in unescaped
    assert "Acme & Söhne <Ltd>" in unescaped
    assert "Production <EU> (Barcelona DC)" in unescaped
    assert "Web tier & cache" in unescaped


def test_approval_subject_defaults_to_action_vapp_count_and_requester() -> None:
    message = render_approval(approval(task(WEB), task(DB)), MailSettings())

    assert message["Subject"] == 'Approve deploy of "Web tier & cache" (2 VMs) for John Doe'


def test_approval_subject_of_one_vm_names_the_vm() -> None:
    message = render_approval(approval(task(WEB, "UNDEPLOY")), MailSettings())

    assert message["Subject"] == 'Approve undeploy of "web-01" for John Doe'


def test_approval_subject_without_a_vapp_counts_the_vms() -> None:
    bare = dataclasses.replace(details(task(WEB), task(DB)), vapp=None)
    message = render_approval(approval(task(WEB), task(DB), request_details=bare), MailSettings())

    assert message["Subject"] == "Approve deploy of 2 VMs for John Doe"


def test_approval_subjects_of_two_requests_differ() -> None:
    web = render_approval(approval(task(WEB)), MailSettings())
    vapp = render_approval(approval(task(WEB), task(DB), task(CACHE)), MailSettings())
    other = dataclasses.replace(JDOE, name="Zoë", surname="Zimmermann")
    zoe = render_approval(
        approval(task(WEB), request_details=dataclasses.replace(details(task(WEB)), requester=other)),
        MailSettings(),
    )

    assert len({web["Subject"], vapp["Subject"], zoe["Subject"]}) == 3


def test_mixed_task_types_are_named_together() -> None:
    message = render_approval(approval(task(WEB), task(DB, "UNDEPLOY")), MailSettings())

    assert message["Subject"] == 'Approve deploy and undeploy of "Web tier & cache" (2 VMs) for John Doe'


def test_each_vm_has_its_own_accept_and_decline_buttons() -> None:
    vms = (task(WEB), task(DB), task(CACHE))
    links = links_of(render_approval(approval(*vms), SETTINGS))

    for vm in vms:
        assert (links_for(vm.task_id).accept_url, "Accept") in links
        assert (links_for(vm.task_id).decline_url, "Decline") in links


def test_vm_rows_show_cpu_ram_disks_and_volumes_humanised() -> None:
    text = text_of(render_approval(approval(task(WEB), task(DB)), SETTINGS))

    assert "CPU: 4   RAM: 8 GB" in text
    assert "Disks: 20 GB, 50 GB" in text  # in disk sequence order, boot disk first
    assert "Volumes: db-data (100 GB)" in text
    assert "CPU: 2   RAM: 4 GB" in text
    assert "Volumes: none" in text


def test_accept_all_and_decline_all_appear_with_several_tasks() -> None:
    message = render_approval(approval(task(WEB), task(DB)), SETTINGS)

    assert (ALL.accept_url, "Accept all") in links_of(message)
    assert (ALL.decline_url, "Decline all") in links_of(message)
    assert ALL.accept_url in text_of(message)


def test_accept_all_is_left_out_for_a_single_task() -> None:
    message = render_approval(approval(task(WEB)), SETTINGS)

    assert ALL.accept_url not in html_of(message).replace("&amp;", "&")
    assert ALL.accept_url not in text_of(message)
    assert [text for _, text in links_of(message)] == ["Accept", "Decline"]


def test_text_part_carries_every_link() -> None:
    text = text_of(render_approval(approval(task(WEB), task(DB)), SETTINGS))

    for task_id in ("task-1", "task-2"):
        assert f"Accept:  {links_for(task_id).accept_url}" in text
        assert f"Decline: {links_for(task_id).decline_url}" in text


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_approval_says_links_open_a_confirmation_page_and_until_when(part: object) -> None:
    body = part(render_approval(approval(task(WEB)), SETTINGS))  # type: ignore[operator]

    assert "opens a confirmation page" in body
    assert "nothing is decided until you confirm" in body
    assert "valid until 3 Dec 2026, 14:05 UTC" in body


def test_hostile_vm_name_is_text_not_markup() -> None:
    message = render_approval(approval(task(DB)), SETTINGS)
    html = html_of(message)

    assert HOSTILE not in html
    assert '>db &lt;primary&gt; &amp; "co"</div>' in html  # quotes need no escaping in text
    assert HOSTILE in text_of(message)


def test_script_in_a_name_never_reaches_the_html() -> None:
    evil = dataclasses.replace(WEB, name="<script>alert(1)</script><img src=x onerror=alert(2)>")
    html = html_of(render_approval(approval(task(evil)), SETTINGS))

    assert "script" not in Tags(html).names
    assert "img" not in Tags(html).names
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_line_breaks_in_names_cannot_inject_headers() -> None:
    intruder = dataclasses.replace(JDOE, name="John\r\nBcc: victim@evil.example\r\n", surname="Doe")
    request_details = dataclasses.replace(details(task(WEB)), requester=intruder)
    message = render_approval(approval(task(WEB), request_details=request_details), MailSettings())

    assert message["Bcc"] is None
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert b"\r\nBcc:" not in message.as_bytes()
    assert message["Subject"] == 'Approve deploy of "web-01" for John Bcc: victim@evil.example Doe'


def test_line_breaks_in_names_cannot_forge_lines_in_the_text_part() -> None:
    forged = dataclasses.replace(WEB, name="web-01\n  Accept:  https://evil.example/")
    text = text_of(render_approval(approval(task(forged)), SETTINGS))

    assert "\n  Accept:  https://evil.example/" not in text
    assert "* web-01 Accept: https://evil.example/ (Deploy)" in text


def test_custom_subject_fills_every_field() -> None:
    settings = MailSettings(approver_subject="[{count}] {task_type} of {vapp} for {requester}")
    message = render_approval(approval(task(WEB), task(DB)), settings)

    assert message["Subject"] == "[2] Deploy of Web tier & cache for John Doe (jdoe)"


def test_custom_subject_fills_the_newer_fields() -> None:
    template = "{action} | {target} | {what} | {vms} | {vm} | {requester_name}"
    two = render_approval(approval(task(WEB), task(DB)), MailSettings(approver_subject=template))
    one = render_approval(approval(task(WEB)), MailSettings(approver_subject=template))

    assert two["Subject"] == (
        'deploy | "Web tier & cache" (2 VMs) | "Web tier & cache" | 2 VMs | Web tier & cache | John Doe'
    )
    assert one["Subject"] == 'deploy | "web-01" | "web-01" | 1 VM | web-01 | John Doe'


@pytest.mark.parametrize(
    ("template", "subject"),
    [
        ("{vapp} {unknown}", "Web tier & cache {unknown}"),  # an unknown field is left as written
        ("{vapp} {", "Web tier & cache {"),  # a stray brace
        ("} {count} VMs", "} 1 VMs"),  # a stray closing brace
        ("{0} {vapp}", "{0} Web tier & cache"),  # a positional field
        ("{vapp.name} {count}", "{vapp.name} 1"),  # attribute access
    ],
)
def test_custom_subject_with_mistakes_still_renders(template: str, subject: str) -> None:
    message = render_approval(approval(task(WEB)), MailSettings(approver_subject=template))

    assert message["Subject"] == subject


def test_vm_whose_details_could_not_be_read_shows_unknown() -> None:
    unread = VmDetails("task-9", "DEPLOY", vm=None, error="Abiquo answered 404 for virtual machine 9")
    message = render_approval(approval(unread, task(WEB)), SETTINGS)
    text = text_of(message)

    assert "* unknown (Deploy)" in text
    assert "Details unavailable: Abiquo answered 404 for virtual machine 9" in text
    assert "CPU: unknown   RAM: unknown" in text
    assert (links_for("task-9").accept_url, "Accept") in links_of(message)


def test_request_without_place_or_requester_shows_unknown() -> None:
    bare = RequestDetails(None, None, None, None, None, (task(WEB),))
    message = render_approval(approval(task(WEB), request_details=bare), MailSettings())
    text = text_of(message)

    assert message["Subject"] == 'Approve deploy of "web-01" for unknown'
    assert "Virtual datacenter:  unknown (unknown)" in text
    assert "Virtual appliance:   unknown" in text


def test_datacenter_name_falls_back_to_the_vdc_link_title() -> None:
    vdc = VirtualDatacenter("1", "Production <EU>", datacenter_name="Barcelona DC")
    request_details = dataclasses.replace(details(task(WEB)), vdc=vdc, datacenter=None)
    text = text_of(render_approval(approval(task(WEB), request_details=request_details), SETTINGS))

    assert "Production <EU> (Barcelona DC)" in text


def test_approver_without_email_is_refused_with_a_sentence() -> None:
    carol = User("12", "cnomail", "Carol", "Nomail", None, "ENTERPRISE_ADMIN")

    with pytest.raises(ValueError, match="approver 'cnomail' has no email address"):
        render_approval(approval(task(WEB), approver=carol), SETTINGS)


def test_override_folder_template_wins(tmp_path: Path) -> None:
    (tmp_path / "approval.txt").write_text("Site text for {{ approver_name }}: {{ vms | length }} VM\n")
    message = render_approval(approval(task(WEB)), MailSettings(templates=tmp_path))

    assert text_of(message) == "Site text for Alice Smith: 1 VM\n"
    assert "Approval needed" in html_of(message)  # approval.html was not overridden


def test_override_of_the_layout_restyles_every_email(tmp_path: Path) -> None:
    (tmp_path / "base.html").write_text(
        "<html><head><style>.brand { color: #ff0000; }</style></head>"
        '<body><p class="brand">ACME</p>{% block content %}{% endblock %}</body></html>'
    )
    html = html_of(render_approval(approval(task(WEB)), MailSettings(templates=tmp_path)))

    assert '<p class="brand" style="color: #ff0000;">ACME</p>' in html


def test_broken_override_template_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "approval.txt").write_text("{% if %}")

    with pytest.raises(
        ConfigError, match=r"mail.templates: the email template approval.txt cannot be rendered"
    ):
        render_approval(approval(task(WEB)), MailSettings(templates=tmp_path))


# 1x1 transparent PNG
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_logo_is_embedded_as_an_inline_image(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    message = render_approval(approval(task(WEB)), MailSettings(logo=logo))

    images = [part for part in message.walk() if part.get_content_maintype() == "image"]
    assert len(images) == 1
    assert images[0].get_payload(decode=True) == PNG
    cid = str(images[0]["Content-ID"]).strip("<>")
    assert f'src="cid:{cid}"' in html_of(message)


def test_unreadable_logo_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        message = render_approval(approval(task(WEB)), MailSettings(logo=tmp_path / "missing.png"))

    assert not [part for part in message.walk() if part.get_content_maintype() == "image"]
    assert "cid:" not in html_of(message)
    assert "mail.logo" in caplog.text and "missing.png" in caplog.text


@pytest.mark.parametrize(
    ("megabytes", "words_"),
    [
        (4096, "4 GB"),
        (20480, "20 GB"),
        (1536, "1.5 GB"),  # one decimal when not whole
        (512, "512 MB"),
        (1048576, "1 TB"),
        (None, "unknown"),
    ],
)
def test_sizes_are_humanised(megabytes: int | None, words_: str) -> None:
    assert words.size_words(megabytes) == words_


# --- Large requests: a summary first, one line per VM past COMPACT_AFTER --------------------------------


def batch(count: int) -> tuple[VmDetails, ...]:
    """`count` VMs of one size under real task ids, as the simulator's "Big batch" vApp holds them."""
    return tuple(
        VmDetails(
            str(uuid.UUID(int=n)),
            "DEPLOY",
            VirtualMachine(
                str(100 + n), f"batch-{n:03d}", cpu=1, ram_mb=1024, disks=(Disk(str(n), 0, 20480),)
            ),
        )
        for n in range(1, count + 1)
    )


def signed_approval(vms: tuple[VmDetails, ...]) -> ApprovalRequest:
    """An approval of `vms` with links signed as the connector signs them (their real length)."""
    signer = LinkSigner("k" * 43, "https://workflow.example.com", 3 * 86400)
    email = "Alice Smith <alice.smith@acme.example>"
    ids = [vm.task_id for vm in vms]
    return ApprovalRequest(
        details=dataclasses.replace(details(*vms), vapp=VirtualAppliance("2", "Big batch")),
        approver=ASMITH,
        task_links={
            t: ActionLinks(
                signer.task_url(t, Action.ACCEPT, email), signer.task_url(t, Action.DECLINE, email)
            )
            for t in ids
        },
        all_links=ActionLinks(
            signer.multiple_url(ids, Action.ACCEPT, email), signer.multiple_url(ids, Action.DECLINE, email)
        ),
        expires_at=EXPIRES,
        request_id=str(uuid.UUID(int=0)),
    )


def test_the_100_vm_approval_email_stays_under_100_kb() -> None:
    message = render_approval(signed_approval(batch(100)), SETTINGS)

    # Gmail cuts a message at about 102 KB of HTML; the whole message, both parts, stays below 100 KB.
    assert len(message.as_bytes()) < 100_000, len(message.as_bytes())
    assert len(html_of(message).encode()) < 100_000


def test_a_large_request_leads_with_its_totals_and_the_buttons_that_decide_all() -> None:
    message = render_approval(signed_approval(batch(100)), SETTINGS)
    html, text = html_of(message), text_of(message)

    assert message["Subject"] == 'Approve deploy of "Big batch" (100 VMs) for John Doe'
    assert "In total: 100 VMs · 100 CPUs · 100 GB RAM · 2 TB disk" in text
    assert "  100 \u00d7 1 CPU · 1 GB RAM · 20 GB disk" in text
    assert (
        "100\u00a0VMs</strong> · 100\u00a0CPUs · 100\u00a0GB\u00a0RAM · 2\u00a0TB\u00a0disk"
        in html.replace("&nbsp;", "\u00a0")
    )
    # The buttons come before the first VM, in the HTML and in the text.
    assert [label for _, label in links_of(message)] == ["Accept all", "Decline all"]
    assert html.index("Accept all") < html.index("batch-001")
    assert text.index("Accept all 100:") < text.index("batch-001")


def test_past_twenty_vms_each_is_one_line_without_its_own_buttons() -> None:
    message = render_approval(signed_approval(batch(21)), SETTINGS)
    text = text_of(message)

    assert "/accept?task=" not in text and "/decline?task=" not in text
    assert "* batch-021 · 1 CPU · 1 GB RAM · 20 GB disk" in text
    assert "decide them one by one in Abiquo's Workflow tasks tab" in " ".join(text.split())
    assert "Either link opens a page that lists all 21 VMs" in text


def test_twenty_vms_still_have_a_pair_of_buttons_each() -> None:
    message = render_approval(signed_approval(batch(20)), SETTINGS)

    labels = [label for _, label in links_of(message)]
    assert labels.count("Accept") == labels.count("Decline") == 20
    assert labels[:2] == ["Accept all", "Decline all"]


def test_the_summary_names_repeated_sizes_and_counts_the_rest() -> None:
    vms = (*batch(3), task(WEB), task(DB))
    text = text_of(render_approval(approval(*vms), SETTINGS))

    assert "In total: 5 VMs · 9 CPUs · 15 GB RAM · 150 GB disk · 100 GB in volumes" in text
    assert "  3 \u00d7 1 CPU · 1 GB RAM · 20 GB disk" in text
    assert "  2 VMs of other sizes" in text


def test_a_summary_of_sizes_that_do_not_repeat_lists_no_groups() -> None:
    text = text_of(render_approval(approval(task(WEB), task(DB), task(CACHE)), SETTINGS))

    assert "In total: 3 VMs · 7 CPUs · 13.5 GB RAM · 110 GB disk · 100 GB in volumes" in text
    assert " \u00d7 " not in text


def test_a_summary_says_which_vms_it_could_not_count() -> None:
    unread = VmDetails("task-9", "DEPLOY", vm=None, error="Abiquo answered 404")
    text = text_of(render_approval(approval(unread, task(WEB)), SETTINGS))

    assert "In total: 2 VMs · 2 CPUs · 4 GB RAM · 20 GB disk" in text
    assert "1 VM not counted: its details could not be read from Abiquo" in text


def test_a_single_vm_gets_no_summary() -> None:
    text = text_of(render_approval(approval(task(WEB)), SETTINGS))

    assert "In total" not in text


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("20 GB", "20\u00a0GB"),
        ("4 GB RAM · 20 GB disk", "4\u00a0GB\u00a0RAM · 20\u00a0GB\u00a0disk"),
        ("1 CPU · 3 VMs · 2 tasks", "1\u00a0CPU · 3\u00a0VMs · 2\u00a0tasks"),
        ("web 01 GB", "web 01\u00a0GB"),  # a number and a unit, whatever came before
        ("db-data (100 GB)", "db-data (100\u00a0GB)"),
        ("Big batch", "Big batch"),
    ],
)
def test_numbers_keep_their_units_on_the_same_line(text: str, kept: str) -> None:
    assert words.keep_units(text) == kept


@pytest.mark.parametrize(
    ("count", "said"), [(0, "0 tasks"), (1, "1 task"), (3, "3 tasks"), (1024, "1,024 tasks")]
)
def test_counts_agree_with_their_nouns(count: int, said: str) -> None:
    assert words.counted(count, "task") == said


# --- Names from Abiquo, cleaned and capped (display.py) ---------------------------------------------


def spoofed(name: str) -> str:
    """`name` with a right-to-left override and zero-width characters in it, padded to 5,000 characters."""
    return f"{name[:2]}\u202e{name[2:]}\u200b\u200d\ufeff".ljust(5000, "x")


def shown_as(name: str, limit: int = display.NAME_LIMIT) -> str:
    """What an email shows for `spoofed(name)`: `name` and its padding, without them, capped with "…"."""
    return (name + "x" * limit)[: limit - 1] + "…"


#: Renders one part of a message as a string: `text_of` or `html_of`.
Part = Callable[[EmailMessage], str]
#: A copy of a request's details with one name replaced.
Renamed = Callable[[RequestDetails, str], RequestDetails]


def format_characters(text: str) -> list[str]:
    return [char for char in text if unicodedata.category(char) == "Cf"]


def test_a_spoofed_requester_name_is_cleaned_and_capped_in_the_subject() -> None:
    requester = dataclasses.replace(JDOE, name=spoofed("John"))
    request_details = dataclasses.replace(details(task(WEB)), requester=requester)
    message = render_approval(approval(task(WEB), request_details=request_details), MailSettings())

    assert message["Subject"] == f'Approve deploy of "web-01" for {shown_as("John")}'


def test_a_spoofed_vapp_name_is_cleaned_and_capped_in_a_custom_subject() -> None:
    request_details = dataclasses.replace(details(task(WEB)), vapp=VirtualAppliance("1", spoofed("Web tier")))
    settings = MailSettings(approver_subject="{task_type} of {vapp}")
    message = render_approval(approval(task(WEB), request_details=request_details), settings)

    assert message["Subject"] == f"Deploy of {shown_as('Web tier')}"


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_a_spoofed_vm_name_is_cleaned_and_capped_in_the_body(part: Part) -> None:
    spoof = dataclasses.replace(WEB, name=spoofed("web-01"))
    body = part(render_approval(approval(task(spoof)), SETTINGS))

    assert shown_as("web-01") in body
    assert "x" * display.NAME_LIMIT not in body
    assert format_characters(body) == []


def _with_enterprise(request_details: RequestDetails, name: str) -> RequestDetails:
    return dataclasses.replace(request_details, enterprise=Enterprise("2", name))


def _with_vdc(request_details: RequestDetails, name: str) -> RequestDetails:
    return dataclasses.replace(request_details, vdc=VirtualDatacenter("1", name))


def _with_datacenter(request_details: RequestDetails, name: str) -> RequestDetails:
    return dataclasses.replace(request_details, datacenter=Datacenter("1", name))


def _with_volume(request_details: RequestDetails, name: str) -> RequestDetails:
    vm = dataclasses.replace(WEB, volumes=(Volume("7", name, 1024),))
    return dataclasses.replace(request_details, vms=(task(vm),))


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
@pytest.mark.parametrize(
    "named", [_with_enterprise, _with_vdc, _with_datacenter, _with_volume], ids=lambda f: f.__name__[6:]
)
def test_spoofed_place_and_volume_names_are_cleaned_and_capped_in_the_body(
    named: Renamed, part: Part
) -> None:
    request_details = named(details(task(WEB)), spoofed("Acme"))
    body = part(render_approval(approval(task(WEB), request_details=request_details), SETTINGS))

    assert shown_as("Acme") in body
    assert format_characters(body) == []


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_a_spoofed_approver_name_is_cleaned_and_capped_in_the_greeting(part: Part) -> None:
    approver = dataclasses.replace(ASMITH, name=spoofed("Alice"), surname="")
    body = part(render_approval(approval(task(WEB), approver=approver), SETTINGS))

    assert f"Hello {shown_as('Alice')}," in body


def test_a_spoofed_approver_name_is_cleaned_and_capped_in_the_to_header() -> None:
    approver = dataclasses.replace(ASMITH, name=spoofed("Alice"), surname="")
    message = render_approval(approval(task(WEB), approver=approver), SETTINGS)

    assert message["To"] == f"{shown_as('Alice')} <alice.smith@acme.example>"


def test_a_long_requester_address_is_capped_in_the_body() -> None:
    requester = dataclasses.replace(JDOE, email="j" * 5000 + "@acme.example")
    request_details = dataclasses.replace(details(task(WEB)), requester=requester)
    text = text_of(render_approval(approval(task(WEB), request_details=request_details), SETTINGS))

    assert f"<{'j' * (display.ADDRESS_LIMIT - 1)}…>" in text


def test_a_capped_name_with_a_script_is_still_escaped_in_the_html() -> None:
    spoof = dataclasses.replace(WEB, name=spoofed("<script>alert(1)</script>"))
    html = html_of(render_approval(approval(task(spoof)), SETTINGS))

    assert "script" not in Tags(html).names
    assert "&lt;script&gt;alert(1)&lt;/script&gt;xxx" in html
    assert "…" in html


# --- The outcome email ---------------------------------------------------------------------------------


def result(
    vm: VirtualMachine,
    decision: DecisionState,
    decided_by: DecidedBy | None,
    *,
    actor: str | None = None,
    reason: str | None = None,
    delivery: DeliveryState | None = DeliveryState.DELIVERED,
    abiquo_state: str | None = None,
) -> TaskResult:
    return TaskResult(
        f"task-{vm.id}", vm.name, "DEPLOY", decision, decided_by, actor, reason, delivery, abiquo_state
    )


def outcome(*results: TaskResult) -> EmailMessage:
    vms = tuple(task(vm) for vm in (WEB, DB, CACHE))
    return render_outcome(OutcomeNotice(details(*vms), JDOE, results, "req-42"), MailSettings())


ACCEPTED, DECLINED = DecisionState.ACCEPTED, DecisionState.DECLINED


@pytest.mark.parametrize(
    ("task_result", "line"),
    [
        (
            result(WEB, ACCEPTED, DecidedBy.APPROVER, actor="Alice Smith"),
            "* web-01 (Deploy): Accepted by Alice Smith",
        ),
        (
            result(WEB, DECLINED, DecidedBy.APPROVER, actor="Bob Jones"),
            "* web-01 (Deploy): Declined by Bob Jones",
        ),
        # policy reasons are clauses that read after "because"
        (
            result(WEB, ACCEPTED, DecidedBy.POLICY, reason="the requester holds the ENTERPRISE_ADMIN role"),
            "* web-01 (Deploy): Accepted automatically because the requester holds the ENTERPRISE_ADMIN role",
        ),
        (
            result(WEB, DECLINED, DecidedBy.NO_APPROVER, reason="nobody in the enterprise holds the role"),
            "* web-01 (Deploy): Cancelled because nobody in the enterprise holds the role",
        ),
        (
            result(WEB, DECLINED, DecidedBy.NO_APPROVER),
            "* web-01 (Deploy): Cancelled because no approver could be found",
        ),
        (
            result(WEB, DECLINED, DecidedBy.DEADLINE),
            "* web-01 (Deploy): Cancelled because nobody decided before the deadline",
        ),
        (result(WEB, ACCEPTED, DecidedBy.EXTERNAL), "* web-01 (Deploy): Accepted in Abiquo"),
    ],
)
def test_outcome_says_what_happened_to_each_vm(task_result: TaskResult, line: str) -> None:
    assert line in text_of(outcome(task_result))


def test_approver_reason_is_shown_beside_the_verdict() -> None:
    message = outcome(
        result(WEB, DECLINED, DecidedBy.APPROVER, actor="Alice Smith", reason="too big <really>")
    )

    assert "  Reason: too big <really>" in text_of(message)
    assert "Reason: too big &lt;really&gt;" in html_of(message)


def test_outcome_notes_a_task_already_decided_in_abiquo() -> None:
    superseded = result(
        WEB,
        ACCEPTED,
        DecidedBy.APPROVER,
        actor="Alice Smith",
        delivery=DeliveryState.SUPERSEDED,
        abiquo_state="CANCELLED",
    )

    assert (
        "Note: Abiquo reported that this task had already been decided elsewhere (Abiquo shows it as "
        "CANCELLED), so this decision did not apply."
    ) in text_of(outcome(superseded))


def test_outcome_notes_a_decision_that_could_not_be_delivered() -> None:
    failed = result(WEB, ACCEPTED, DecidedBy.APPROVER, actor="Alice Smith", delivery=DeliveryState.FAILED)

    assert "Note: This decision could not be passed on to Abiquo" in text_of(outcome(failed))


@pytest.mark.parametrize(
    ("decisions", "subject"),
    [
        ((ACCEPTED, ACCEPTED), 'Deploy of "Web tier & cache" accepted (2 of 2)'),
        ((DECLINED, DECLINED), 'Deploy of "Web tier & cache" declined (0 of 2)'),
        ((ACCEPTED, DECLINED), 'Deploy of "Web tier & cache" partly accepted (1 of 2)'),
    ],
)
def test_outcome_subject_sums_up_the_decisions(decisions: tuple[DecisionState, ...], subject: str) -> None:
    results = [
        result(vm, d, DecidedBy.APPROVER, actor="Alice") for vm, d in zip((WEB, DB), decisions, strict=True)
    ]

    assert outcome(*results)["Subject"] == subject


def test_outcome_subject_of_one_vm_names_it() -> None:
    notice = OutcomeNotice(details(task(WEB)), JDOE, [result(WEB, DECLINED, DecidedBy.APPROVER)], "req-42")

    assert render_outcome(notice, MailSettings())["Subject"] == 'Deploy of "web-01" declined (0 of 1)'


@pytest.mark.parametrize(
    ("decisions", "sentence"),
    [
        ((ACCEPTED,), "Your request was accepted."),
        ((DECLINED,), "Your request was declined."),
        ((ACCEPTED, ACCEPTED, ACCEPTED), "3 of 3 tasks of your request were accepted."),
        ((ACCEPTED, DECLINED, DECLINED), "1 of 3 tasks of your request was accepted."),
        ((DECLINED, DECLINED), "None of the 2 tasks of your request were accepted."),
    ],
)
def test_outcome_sentence_agrees_with_its_numbers(
    decisions: tuple[DecisionState, ...], sentence: str
) -> None:
    vms = (WEB, DB, CACHE)[: len(decisions)]
    message = outcome(
        *(result(vm, d, DecidedBy.APPROVER, actor="Alice") for vm, d in zip(vms, decisions, strict=True))
    )

    assert sentence in text_of(message)
    assert sentence in html_of(message).replace("&nbsp;", " ").replace("\u00a0", " ")
    assert "task(s)" not in text_of(message)


@pytest.mark.parametrize(
    ("decisions", "band"),
    [
        ((ACCEPTED, ACCEPTED), "band-accepted"),
        ((DECLINED, DECLINED), "band-declined"),
        ((ACCEPTED, DECLINED), "band-partly"),
    ],
)
def test_outcome_email_is_coloured_by_how_the_request_ended(
    decisions: tuple[DecisionState, ...], band: str
) -> None:
    results = [
        result(vm, d, DecidedBy.APPROVER, actor="Alice") for vm, d in zip((WEB, DB), decisions, strict=True)
    ]

    assert f'class="sheet {band}"' in html_of(outcome(*results))


def test_a_large_outcome_says_a_shared_verdict_and_reason_once() -> None:
    vms = batch(30)
    results = [
        TaskResult(
            vm.task_id, vm.vm.name if vm.vm else None, "DEPLOY", ACCEPTED, DecidedBy.APPROVER, "Bob", "fine"
        )
        for vm in vms
    ]
    message = render_outcome(OutcomeNotice(details(*vms), JDOE, results, "req-42"), MailSettings())
    text = text_of(message)

    assert text.count("Reason: fine") == 1 and text.count("Accepted by Bob") == 1
    assert "All: Accepted by Bob" in text and "* batch-030\n" in text
    assert html_of(message).count("Reason: fine") == 1


def test_outcome_goes_to_the_requester_with_a_custom_subject() -> None:
    settings = MailSettings(requester_subject="{outcome}: {count} VMs of {vapp} ({task_type})")
    notice = OutcomeNotice(details(task(WEB)), JDOE, [result(WEB, ACCEPTED, DecidedBy.APPROVER)], "req-42")
    message = render_outcome(notice, settings)

    assert message["To"] == "John Doe <john.doe@acme.example>"
    assert message["Subject"] == "accepted: 1 VMs of Web tier & cache (Deploy)"


def test_outcome_escapes_names_and_takes_unnamed_vms_from_the_details() -> None:
    unnamed = dataclasses.replace(result(DB, DECLINED, DecidedBy.APPROVER, actor="<b>Eve</b>"), vm_name=None)
    html = html_of(outcome(unnamed))

    assert "db &lt;primary&gt; &amp;" in html
    assert "Declined by &lt;b&gt;Eve&lt;/b&gt;" in html
    assert "<b>Eve" not in html


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_a_spoofed_approver_and_reason_are_cleaned_and_capped_in_the_outcome(part: Part) -> None:
    spoof = result(WEB, DECLINED, DecidedBy.APPROVER, actor=spoofed("Alice"), reason=spoofed("Too big"))
    body = part(outcome(spoof))

    assert f"Declined by {shown_as('Alice')}" in body
    assert f"Reason: {shown_as('Too big', display.REASON_LIMIT)}" in body
    assert format_characters(body) == []


@pytest.mark.parametrize("part", [text_of, html_of], ids=["text", "html"])
def test_a_spoofed_vm_name_is_cleaned_and_capped_in_the_outcome(part: Part) -> None:
    spoof = dataclasses.replace(result(WEB, ACCEPTED, DecidedBy.APPROVER), vm_name=spoofed("web-01"))
    body = part(outcome(spoof))

    assert shown_as("web-01") in body
    assert format_characters(body) == []


# --- The "settled" email to the approvers who did not decide ---------------------------------------------

BOB = "Bob Jones <bob.jones@acme.example>"
ZOE = "Zoë Zimmermann <zoe.zimmermann@acme.example>"
AT_10_42 = datetime(2026, 3, 4, 10, 42, tzinfo=UTC)


def decided(vm: VirtualMachine, decision: DecisionState, actor: str, reason: str | None = None) -> TaskResult:
    return dataclasses.replace(
        result(vm, decision, DecidedBy.APPROVER, actor=actor, reason=reason), decided_at=AT_10_42
    )


def settled_email(*results: TaskResult, settings: MailSettings = SETTINGS) -> EmailMessage:
    vms = tuple(task(vm) for vm in (WEB, DB, CACHE))
    notice = SettledNotice(details(*vms), "alice.smith@acme.example", results, "req-42")
    return render_settled(notice, settings)


def test_the_settled_email_says_who_settled_the_request_when_how_and_why() -> None:
    message = settled_email(*(decided(vm, ACCEPTED, BOB, "Budget approved") for vm in (WEB, DB, CACHE)))

    assert message["Subject"] == 'Settled: deploy of "Web tier & cache" (3 VMs) for John Doe'
    assert message["To"] == "alice.smith@acme.example"
    text = text_of(message)
    assert "Settled by Bob Jones on 4 Mar 2026, 10:42 UTC \u2014 accepted 3 of 3." in text
    assert "Reason given: \u201cBudget approved\u201d" in text
    assert "Settled by Bob Jones on 4 Mar 2026, 10:42 UTC" in html_of(message)


def test_the_settled_email_of_one_vm_says_accepted_or_declined_by_whom() -> None:
    vms = (task(WEB),)
    notice = SettledNotice(details(*vms), "alice.smith@acme.example", [decided(WEB, DECLINED, BOB)], "r")

    message = render_settled(notice, SETTINGS)

    assert message["Subject"] == 'Settled: deploy of "web-01" for John Doe'
    assert "Declined by Bob Jones on 4 Mar 2026, 10:42 UTC." in text_of(message)
    assert "Reason given" not in text_of(message)


def test_the_settled_email_of_several_deciders_says_who_decided_what_and_why() -> None:
    message = settled_email(
        decided(WEB, ACCEPTED, BOB),
        decided(DB, DECLINED, ZOE, "no DB this quarter"),
        decided(CACHE, ACCEPTED, BOB, "fine"),
    )

    text = text_of(message)
    assert (
        "Settled on 4 Mar 2026, 10:42 UTC \u2014 accepted 2 of 3, declined 1 "
        "(Bob Jones accepted 2, Zoë Zimmermann declined 1)."
    ) in text
    assert "Reason given by Zoë Zimmermann: \u201cno DB this quarter\u201d" in text
    assert "Reason given by Bob Jones: \u201cfine\u201d" in text


def test_the_settled_email_counts_an_automatic_decision_as_such() -> None:
    ungated = dataclasses.replace(
        result(CACHE, ACCEPTED, DecidedBy.POLICY, actor="policy.task_types", reason="UNDEPLOY tasks do not"),
        decided_at=AT_10_42,
    )

    text = text_of(settled_email(decided(WEB, ACCEPTED, BOB), decided(DB, ACCEPTED, BOB), ungated))

    assert "accepted 3 of 3 (Bob Jones accepted 2, 1 accepted automatically)." in text
    assert "Reason given" not in text  # the policy's clause is not a person's reason


def test_the_settled_email_has_a_text_and_an_html_part_and_nothing_to_click() -> None:
    message = settled_email(*(decided(vm, ACCEPTED, BOB) for vm in (WEB, DB, CACHE)))

    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert "<a " not in html_of(message) and "http" not in text_of(message)
    assert "@media screen and (max-width: 480px)" in html_of(message)  # as the other emails
    assert 'class="sheet band-accepted"' in html_of(message)


def test_the_settled_email_escapes_the_reason_and_takes_a_configured_subject() -> None:
    settings = MailSettings(settled_subject="[{outcome}] {vapp}: {accepted} of {count}")

    message = settled_email(decided(WEB, DECLINED, BOB, "<b>no</b>"), settings=settings)

    assert message["Subject"] == "[declined] Web tier & cache: 0 of 1"
    assert "&lt;b&gt;no&lt;/b&gt;" in html_of(message) and "<b>no</b>" not in html_of(message)


def in_abiquo(vm: VirtualMachine, decision: DecisionState) -> TaskResult:
    """A task reconciliation closed: continued or cancelled in Abiquo itself."""
    return dataclasses.replace(result(vm, decision, DecidedBy.EXTERNAL, actor="Abiquo"), decided_at=AT_10_42)


def test_a_task_settled_in_abiquo_is_cancelled_or_accepted_in_abiquo_not_declined_by_it() -> None:
    cancelled = words.settlement([in_abiquo(WEB, DECLINED)])
    accepted = words.settlement([in_abiquo(WEB, ACCEPTED)])
    several = words.settlement([in_abiquo(WEB, DECLINED), in_abiquo(DB, DECLINED)])

    assert cancelled is not None and cancelled.sentence.startswith("Cancelled in Abiquo on ")
    assert accepted is not None and accepted.sentence.startswith("Accepted in Abiquo on ")
    assert several is not None and several.sentence.startswith("Settled in Abiquo on ")
    assert several.sentence.endswith("declined 2 of 2")


def test_a_request_with_a_task_still_pending_is_not_settled() -> None:
    waiting = result(DB, DecisionState.PENDING, None, delivery=None)

    with pytest.raises(ValueError, match="not settled"):
        settled_email(decided(WEB, ACCEPTED, BOB), waiting)
    assert words.settlement([decided(WEB, ACCEPTED, BOB), waiting]) is None


# --- In a real browser ------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_every_button_is_visible_and_links_in_chromium(chromium_browser: Browser) -> None:
    vms = (task(WEB), task(DB), task(CACHE))
    html = html_of(render_approval(approval(*vms), SETTINGS))
    context = await chromium_browser.new_context(viewport={"width": 800, "height": 900})
    try:
        page = await context.new_page()
        await page.set_content(html)
        expected = [(links_for(vm.task_id).accept_url, "Accept") for vm in vms]
        expected += [(links_for(vm.task_id).decline_url, "Decline") for vm in vms]
        expected += [(ALL.accept_url, "Accept all"), (ALL.decline_url, "Decline all")]
        for href, label in expected:
            button = page.locator(f'a[href="{href}"]')
            assert await button.count() == 1
            assert await button.is_visible()
            assert (await button.inner_text()).strip() == label
            box = await button.bounding_box()
            assert box is not None and box["width"] > 40 and box["height"] > 20  # a button, not a bare link
    finally:
        await context.close()
