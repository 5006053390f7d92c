"""The local inbox: a real SMTP server that keeps messages, and the pages that show them to people."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import aiosmtplib
import httpx2
import pytest
import uvicorn

from abiquo_workflow.config import MailSettings
from abiquo_workflow.domain import RequestDetails, User, VirtualAppliance, VirtualMachine, VmDetails
from abiquo_workflow.mail.inbox import Inbox, inbox_app
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest
from abiquo_workflow.mail.render import render_approval

if TYPE_CHECKING:
    from playwright.async_api import Browser


def note(subject: str, to: str = "alice.smith@acme.example", text: str = "Hello\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "approvals@acme.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    return message


def deliver(inbox: Inbox, message: EmailMessage) -> None:
    """Send with the standard library's client, so these tests do not lean on our Mailer."""
    with smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as client:
        client.send_message(message)


async def deliver_async(inbox: Inbox, message: EmailMessage) -> None:
    await aiosmtplib.send(message, hostname="127.0.0.1", port=inbox.port, timeout=10)


# --- The SMTP side --------------------------------------------------------------------------------------


def test_port_zero_gets_a_real_free_port(smtp_inbox: Inbox) -> None:
    assert smtp_inbox.port != 0
    with socket.create_connection(("127.0.0.1", smtp_inbox.port), timeout=5) as conn:
        assert conn.recv(3) == b"220"


def test_two_inboxes_get_different_ports() -> None:
    with Inbox() as first, Inbox() as second:
        assert first.port != second.port


def test_received_message_keeps_envelope_and_parsed_message(smtp_inbox: Inbox) -> None:
    deliver(smtp_inbox, note("Zoë's request", to="zoe.zimmermann@acme.example", text="Grüße\n"))

    [received] = smtp_inbox.wait_for_sync(1)
    assert received.mail_from == "approvals@acme.example"
    assert received.rcpt_tos == ("zoe.zimmermann@acme.example",)
    assert received.subject == "Zoë's request"
    assert received.message["To"] == "zoe.zimmermann@acme.example"
    assert received.text() == "Grüße\n"
    assert received.html() is None
    assert received.raw.startswith(b"From: ") or b"\r\nFrom: " in received.raw


async def test_wait_for_returns_once_enough_messages_arrived(smtp_inbox: Inbox) -> None:
    await deliver_async(smtp_inbox, note("one"))
    await deliver_async(smtp_inbox, note("two"))

    messages = await smtp_inbox.wait_for(2, timeout=10)

    assert [m.subject for m in messages] == ["one", "two"]


async def test_wait_for_gives_up_with_a_count(smtp_inbox: Inbox) -> None:
    await deliver_async(smtp_inbox, note("only one"))

    with pytest.raises(TimeoutError, match=r"expected 2 message\(s\) in the inbox within 0.1 s, got 1"):
        await smtp_inbox.wait_for(2, timeout=0.1)


def test_wait_for_sync_gives_up_with_a_count(smtp_inbox: Inbox) -> None:
    with pytest.raises(TimeoutError, match=r"expected 1 message\(s\) in the inbox within 0.1 s, got 0"):
        smtp_inbox.wait_for_sync(1, timeout=0.1)


def test_clear_forgets_every_message(smtp_inbox: Inbox) -> None:
    deliver(smtp_inbox, note("old"))
    smtp_inbox.wait_for_sync(1)

    smtp_inbox.clear()

    assert smtp_inbox.messages == []


def test_stopped_inbox_refuses_connections_and_restarts_on_the_same_port(smtp_inbox: Inbox) -> None:
    port = smtp_inbox.port
    smtp_inbox.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)

    smtp_inbox.start()
    deliver(smtp_inbox, note("back"))

    assert smtp_inbox.port == port
    assert smtp_inbox.wait_for_sync(1)[0].subject == "back"


def test_refusing_inbox_answers_451_and_keeps_nothing(smtp_inbox: Inbox) -> None:
    smtp_inbox.refuse = True

    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        deliver(smtp_inbox, note("refused"))

    assert caught.value.smtp_code == 451
    assert smtp_inbox.messages == []


def test_failed_login_is_answered_535_at_once() -> None:
    with (
        Inbox(auth=("user", "right")) as inbox,
        smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPAuthenticationError) as caught,
    ):
        client.login("user", "wrong")

    assert caught.value.smtp_code == 535


def test_inbox_with_a_login_refuses_anonymous_mail() -> None:
    with (
        Inbox(auth=("user", "right")) as inbox,
        smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as anonymous,
        pytest.raises(smtplib.SMTPSenderRefused) as caught,
    ):
        anonymous.send_message(note("anonymous"))

    assert caught.value.smtp_code == 530


def test_inbox_with_a_login_accepts_logged_in_mail() -> None:
    with Inbox(auth=("user", "right")) as inbox, smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as client:
        client.login("user", "right")
        client.send_message(note("logged in"))

        assert [m.subject for m in inbox.wait_for_sync(1)] == ["logged in"]


async def test_inbox_works_as_an_async_context_manager() -> None:
    async with Inbox() as inbox:
        await deliver_async(inbox, note("async"))
        assert (await inbox.wait_for(1))[0].subject == "async"

    assert not inbox.running


def test_a_started_inbox_has_counted_no_session() -> None:
    with Inbox() as inbox:  # aiosmtpd's probe at start connects, but never says EHLO
        assert inbox.sessions == 0


def test_sessions_count_a_client_once_however_often_it_says_ehlo() -> None:
    with Inbox() as inbox, smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as client:
        client.ehlo()
        client.ehlo()

        assert inbox.sessions == 1


def test_open_sessions_drop_when_a_client_leaves() -> None:
    with Inbox() as inbox:
        with smtplib.SMTP("127.0.0.1", inbox.port, timeout=10) as client:
            client.ehlo()
            assert inbox.open_sessions == 1

        deadline = time.monotonic() + 10  # the server's thread sees the QUIT a moment later
        while inbox.open_sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (inbox.sessions, inbox.open_sessions) == (1, 0)


# --- The pages --------------------------------------------------------------------------------------------


def approval_for(base_url: str) -> EmailMessage:
    """A real approval email whose buttons point back at `base_url` (so a browser can follow them)."""
    vm = VirtualMachine("2", 'db <primary> & "co"', cpu=2, ram_mb=4096)
    details = RequestDetails(
        requester=User("20", "jdoe", "John", "Doe", "john.doe@acme.example"),
        enterprise=None,
        vdc=None,
        datacenter=None,
        vapp=VirtualAppliance("1", "Web tier & cache"),
        vms=(VmDetails("task-2", "DEPLOY", vm),),
    )
    request = ApprovalRequest(
        details=details,
        approver=User("10", "asmith", "Alice", "Smith", "alice.smith@acme.example"),
        task_links={"task-2": ActionLinks(f"{base_url}/?accept=task-2", f"{base_url}/?decline=task-2")},
    )
    return render_approval(request, MailSettings(sender="approvals@acme.example"))


def client_for(inbox: Inbox) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=inbox_app(inbox)), base_url="http://inbox")


async def test_index_lists_messages_newest_first(smtp_inbox: Inbox) -> None:
    for subject in ("first", "second"):
        await deliver_async(smtp_inbox, note(subject))
    await smtp_inbox.wait_for(2)

    async with client_for(smtp_inbox) as client:
        page = (await client.get("/")).text

    assert page.index('href="/messages/2">second') < page.index('href="/messages/1">first')
    assert "alice.smith@acme.example" in page


async def test_message_page_escapes_subject_text_and_headers(smtp_inbox: Inbox) -> None:
    await deliver_async(smtp_inbox, note("<script>alert(1)</script>", text="<b>bold?</b>\n"))
    await smtp_inbox.wait_for(1)

    async with client_for(smtp_inbox) as client:
        page = (await client.get("/messages/1")).text

    assert "<script>" not in page and "<b>bold?</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page


async def test_message_page_shows_the_html_part_in_a_sandboxed_iframe(smtp_inbox: Inbox) -> None:
    await deliver_async(smtp_inbox, approval_for("http://awf.example"))
    await smtp_inbox.wait_for(1)

    async with client_for(smtp_inbox) as client:
        page = (await client.get("/messages/1")).text

    assert (
        '<iframe title="HTML part of the message" src="/messages/1/html" sandbox="allow-popups '
        'allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation"'
    ) in page
    assert "Accept:  http://awf.example/?accept=task-2" in page  # the text part, below


async def test_html_part_is_served_with_a_strict_policy_and_links_opening_in_new_tabs(
    smtp_inbox: Inbox,
) -> None:
    await deliver_async(smtp_inbox, approval_for("http://awf.example"))
    await smtp_inbox.wait_for(1)

    async with client_for(smtp_inbox) as client:
        response = await client.get("/messages/1/html")

    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "sandbox allow-popups" in policy
    assert "script-src" not in policy
    assert '<head><base target="_blank">' in response.text
    assert 'href="http://awf.example/?accept=task-2"' in response.text


async def test_inline_logo_is_shown_as_a_data_uri(smtp_inbox: Inbox, tmp_path: Path) -> None:
    logo = tmp_path / "logo.gif"
    logo.write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    with_logo = render_approval(
        ApprovalRequest(
            details=RequestDetails(None, None, None, None, None),
            approver=User("10", "asmith", "Alice", "Smith", "alice.smith@acme.example"),
        ),
        MailSettings(logo=logo),
    )
    await deliver_async(smtp_inbox, with_logo)
    await smtp_inbox.wait_for(1)

    async with client_for(smtp_inbox) as client:
        html = (await client.get("/messages/1/html")).text

    assert 'src="data:image/gif;base64,' in html
    assert "cid:" not in html


async def test_unknown_message_is_404(smtp_inbox: Inbox) -> None:
    async with client_for(smtp_inbox) as client:
        responses = [
            await client.get(path) for path in ("/messages/1", "/messages/1/html", "/messages/1/source")
        ]

    assert [r.status_code for r in responses] == [404, 404, 404]
    assert "No message 1" in responses[0].text


async def test_source_is_the_raw_message(smtp_inbox: Inbox) -> None:
    await deliver_async(smtp_inbox, note("raw one"))
    await smtp_inbox.wait_for(1)

    async with client_for(smtp_inbox) as client:
        response = await client.get("/messages/1/source")

    assert response.headers["content-type"].startswith("text/plain")
    assert "Subject: raw one" in response.text


# --- In a real browser, over a real HTTP server ----------------------------------------------------------


@pytest.fixture
def inbox_site(smtp_inbox: Inbox) -> Iterator[str]:
    """`inbox_app(smtp_inbox)` served by uvicorn on a free port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(inbox_app(smtp_inbox), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ready = threading.Event()
    while not server.started and thread.is_alive():
        ready.wait(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_a_person_reads_the_approval_and_its_button_opens_in_a_new_tab(
    chromium_browser: Browser, smtp_inbox: Inbox, inbox_site: str
) -> None:
    await deliver_async(smtp_inbox, approval_for(inbox_site))
    await smtp_inbox.wait_for(1)
    context = await chromium_browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{inbox_site}/")
        await page.get_by_role("link", name='Approve deploy of "db <primary> & "co"" for John Doe').click()
        await page.wait_for_url(f"{inbox_site}/messages/1")

        frame = page.frame_locator("iframe")
        accept = frame.get_by_role("link", name="Accept", exact=True)
        assert await accept.is_visible()
        assert await accept.get_attribute("href") == f"{inbox_site}/?accept=task-2"
        assert await frame.get_by_text('db <primary> & "co"', exact=True).is_visible()

        async with context.expect_page() as opened:
            await accept.click()
        tab = await opened.value
        await tab.wait_for_load_state()
        assert tab.url == f"{inbox_site}/?accept=task-2"
        assert page.url == f"{inbox_site}/messages/1"  # the inbox page stays where it was
    finally:
        await context.close()
