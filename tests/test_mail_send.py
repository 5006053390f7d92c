"""Sending through a real SMTP server (the aiosmtpd inbox): plain, STARTTLS, implicit TLS, logins, and
every way the relay can fail, each as one MailError naming host:port; then the sessions a Mailer keeps,
reuses, replaces when they fail and closes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_asyncio
import trustme
from pydantic import SecretStr

from abiquo_workflow.config import MailSettings
from abiquo_workflow.exceptions import MailError
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.mail.send import Mailer, send_test_email

# Nothing here may hang: a failure must be an error, never a wait for pytest's patience.
GUARD = 30


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def until(condition: Callable[[], bool]) -> None:
    """Wait for what the inbox's thread does a moment after our side is done (a session closing).

    Polled: the inbox's thread sets no event when a connection ends, it only forgets it.
    """
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def tls_relay(**options: Any) -> AsyncIterator[Inbox]:
    """A relay that speaks TLS and wants a login; at the end of the test it waits, in the test's event
    loop, until every client has hung up. A client closing a TLS session after a refused login first
    exchanges TLS goodbyes, and its socket is closed only then: a loop that ends before that leaves the
    socket to the garbage collector, whose ResourceWarning would fail a later test."""
    with Inbox(auth=("relay-user", RELAY_PASSWORD), **options) as inbox:
        yield inbox
        await until(lambda: inbox.open_sessions == 0)


@pytest_asyncio.fixture
async def starttls_inbox(server_tls: ssl.SSLContext) -> AsyncIterator[Inbox]:
    async with tls_relay(tls_context=server_tls) as inbox:
        yield inbox


@pytest_asyncio.fixture
async def tls_inbox(server_tls: ssl.SSLContext) -> AsyncIterator[Inbox]:
    async with tls_relay(tls_context=server_tls, implicit_tls=True) as inbox:
        yield inbox


def settings_for(inbox: Inbox, **overrides: Any) -> MailSettings:
    values: dict[str, Any] = {"smtp_port": inbox.port, "sender": "approvals@acme.example", "timeout": 5.0}
    return MailSettings(**(values | overrides))


RELAY_PASSWORD = "s3cret-pass"


def login(password: str = RELAY_PASSWORD) -> dict[str, Any]:
    return {"smtp_user": "relay-user", "smtp_password": SecretStr(password)}


def message(to: str = "alice.smith@acme.example") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "approvals@acme.example"
    msg["To"] = to
    msg["Subject"] = "Approval needed: Deploy — Zoë"
    msg.set_content("Hello Zoë\n")
    return msg


async def send(
    settings: MailSettings, tls: ssl.SSLContext | None = None, msg: EmailMessage | None = None
) -> None:
    """One message through a Mailer of its own, closed afterwards (so no session outlives the test)."""
    async with asyncio.timeout(GUARD), Mailer(settings, tls_context=tls) as mailer:
        await mailer.send(msg or message())


async def test_plain_smtp_delivers_the_message_with_its_envelope(smtp_inbox: Inbox) -> None:
    await send(settings_for(smtp_inbox))

    [received] = await smtp_inbox.wait_for(1)
    assert received.mail_from == "approvals@acme.example"
    assert received.rcpt_tos == ("alice.smith@acme.example",)
    assert received.subject == "Approval needed: Deploy — Zoë"
    assert received.text() == "Hello Zoë\n"


async def test_starttls_with_login_delivers(starttls_inbox: Inbox, client_tls: ssl.SSLContext) -> None:
    await send(settings_for(starttls_inbox, security="starttls", **login()), client_tls)

    [received] = await starttls_inbox.wait_for(1)
    assert received.rcpt_tos == ("alice.smith@acme.example",)


async def test_implicit_tls_with_login_delivers(tls_inbox: Inbox, client_tls: ssl.SSLContext) -> None:
    await send(settings_for(tls_inbox, security="tls", **login()), client_tls)

    [received] = await tls_inbox.wait_for(1)
    assert received.rcpt_tos == ("alice.smith@acme.example",)


async def test_wrong_password_is_a_mail_error_not_a_hang(
    starttls_inbox: Inbox, client_tls: ssl.SSLContext
) -> None:
    settings = settings_for(starttls_inbox, security="starttls", **login("wrong-pass"))

    with pytest.raises(MailError) as caught:
        await send(settings, client_tls)

    assert str(caught.value).startswith(
        f"the SMTP relay at 127.0.0.1:{starttls_inbox.port} refused the login"
    )
    assert "'relay-user'" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)


async def test_wrong_password_over_implicit_tls_is_a_mail_error(
    tls_inbox: Inbox, client_tls: ssl.SSLContext
) -> None:
    with pytest.raises(MailError, match="refused the login"):
        await send(settings_for(tls_inbox, security="tls", **login("wrong-pass")), client_tls)


async def test_relay_that_requires_a_login_refuses_anonymous_mail(
    starttls_inbox: Inbox, client_tls: ssl.SSLContext
) -> None:
    with pytest.raises(MailError, match=r"refused the sender approvals@acme\.example: 530"):
        await send(settings_for(starttls_inbox, security="starttls"), client_tls)


async def test_relay_that_is_down_is_a_mail_error_naming_host_and_port(smtp_inbox: Inbox) -> None:
    smtp_inbox.stop()

    with pytest.raises(
        MailError, match=rf"could not connect to the SMTP relay at 127.0.0.1:{smtp_inbox.port}"
    ):
        await send(settings_for(smtp_inbox))


async def test_relay_that_comes_back_up_accepts_mail_again(smtp_inbox: Inbox) -> None:
    settings = settings_for(smtp_inbox)
    smtp_inbox.stop()
    with pytest.raises(MailError):
        await send(settings)

    smtp_inbox.start()
    await send(settings)

    assert len(await smtp_inbox.wait_for(1)) == 1


async def test_relay_that_refuses_temporarily_is_a_mail_error(smtp_inbox: Inbox) -> None:
    smtp_inbox.refuse = True

    with pytest.raises(MailError, match=r"refused the sender approvals@acme.example: 451"):
        await send(settings_for(smtp_inbox))
    assert smtp_inbox.messages == []


async def test_refused_recipient_is_a_mail_error_naming_them(smtp_inbox: Inbox) -> None:
    smtp_inbox.reject_recipients.add("nobody@acme.example")

    with pytest.raises(MailError, match=r"refused every recipient: nobody@acme.example \(550"):
        await send(settings_for(smtp_inbox), msg=message("nobody@acme.example"))


async def test_one_refused_recipient_among_several_is_a_mail_error(smtp_inbox: Inbox) -> None:
    smtp_inbox.reject_recipients.add("nobody@acme.example")

    with pytest.raises(MailError, match=r"refused the recipient\(s\) nobody@acme.example \(550"):
        await send(settings_for(smtp_inbox), msg=message("alice.smith@acme.example, nobody@acme.example"))


async def test_a_recipient_refused_with_5xx_is_a_mail_error_that_is_not_temporary(smtp_inbox: Inbox) -> None:
    smtp_inbox.reject_recipients.add("nobody@acme.example")

    with pytest.raises(MailError) as caught:
        await send(settings_for(smtp_inbox), msg=message("nobody@acme.example"))

    assert caught.value.temporary is False  # 550: sending it again gets the same answer


async def test_one_recipient_refused_with_5xx_among_several_is_not_temporary(smtp_inbox: Inbox) -> None:
    smtp_inbox.reject_recipients.add("nobody@acme.example")

    with pytest.raises(MailError) as caught:
        await send(settings_for(smtp_inbox), msg=message("alice.smith@acme.example, nobody@acme.example"))

    assert caught.value.temporary is False


async def test_a_relay_refusing_with_4xx_is_a_temporary_mail_error(smtp_inbox: Inbox) -> None:
    smtp_inbox.refuse = True

    with pytest.raises(MailError) as caught:
        await send(settings_for(smtp_inbox))

    assert caught.value.temporary is True  # 451: the relay may take it later


async def test_a_relay_that_is_down_is_a_temporary_mail_error(smtp_inbox: Inbox) -> None:
    smtp_inbox.stop()

    with pytest.raises(MailError) as caught:
        await send(settings_for(smtp_inbox))

    assert caught.value.temporary is True


@contextlib.asynccontextmanager
async def stalled_relay(greeting: bytes) -> AsyncIterator[int]:
    """A relay that sends `greeting` (maybe nothing) on connect and then never says another word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_relay_that_never_greets_times_out_as_a_mail_error() -> None:
    async with stalled_relay(b"") as port:
        with pytest.raises(
            MailError, match=rf"timed out after 0.2 s connecting to the SMTP relay at 127.0.0.1:{port}"
        ):
            await send(MailSettings(smtp_port=port, timeout=0.2))


async def test_relay_that_stops_answering_times_out_as_a_mail_error() -> None:
    async with stalled_relay(b"220 relay.example ESMTP\r\n") as port:
        with pytest.raises(
            MailError, match=rf"the SMTP relay at 127.0.0.1:{port} did not answer within 0.2 s"
        ):
            await send(MailSettings(smtp_port=port, timeout=0.2))


async def test_starttls_required_but_not_offered_is_a_mail_error(smtp_inbox: Inbox) -> None:
    with pytest.raises(MailError, match=rf"127.0.0.1:{smtp_inbox.port}.*STARTTLS"):
        await send(settings_for(smtp_inbox, security="starttls"))


async def test_untrusted_certificate_is_a_mail_error(starttls_inbox: Inbox) -> None:
    # No tls_context: the system's trust store, which does not know the test CA.
    with pytest.raises(MailError, match=r"TLS handshake .* failed: .*CERTIFICATE_VERIFY_FAILED"):
        await send(settings_for(starttls_inbox, security="starttls", **login()))


async def test_check_passes_against_a_working_relay(
    starttls_inbox: Inbox, client_tls: ssl.SSLContext
) -> None:
    settings = settings_for(starttls_inbox, security="starttls", **login())

    async with asyncio.timeout(GUARD):
        await Mailer(settings, tls_context=client_tls).check()

    assert starttls_inbox.messages == []


async def test_check_fails_on_a_wrong_password(starttls_inbox: Inbox, client_tls: ssl.SSLContext) -> None:
    settings = settings_for(starttls_inbox, security="starttls", **login("wrong-pass"))

    with pytest.raises(MailError, match="refused the login") as caught:
        async with asyncio.timeout(GUARD):
            await Mailer(settings, tls_context=client_tls).check()
    assert "wrong-pass" not in str(caught.value)


async def test_check_fails_when_the_relay_is_down(smtp_inbox: Inbox) -> None:
    smtp_inbox.stop()

    with pytest.raises(MailError, match="could not connect"):
        async with asyncio.timeout(GUARD):
            await Mailer(settings_for(smtp_inbox)).check()


async def test_send_test_email_arrives_with_both_parts(smtp_inbox: Inbox) -> None:
    async with asyncio.timeout(GUARD):
        await send_test_email(settings_for(smtp_inbox), "ops@acme.example")

    [received] = await smtp_inbox.wait_for(1)
    assert received.rcpt_tos == ("ops@acme.example",)
    assert received.subject == "abiquo-workflow test message"
    assert "send-test-email" in (received.text() or "")
    assert "send-test-email" in (received.html() or "")


async def test_send_test_email_to_a_non_address_is_a_mail_error(smtp_inbox: Inbox) -> None:
    with pytest.raises(MailError, match="is not an email address"):
        await send_test_email(settings_for(smtp_inbox), "not an address <")


# --- Sessions: kept, reused, replaced when they fail, closed ---------------------------------------------


@pytest.fixture
def relay() -> Iterator[Inbox]:
    """An inbox of this test's own: its session counts are this test's alone, where the shared
    `smtp_inbox` may see sessions that other tests' mailers leave open."""
    with Inbox() as inbox:
        yield inbox


def numbered(count: int) -> list[EmailMessage]:
    return [message(f"approver{n}@acme.example") for n in range(count)]


async def test_ten_messages_in_a_row_use_one_session(relay: Inbox) -> None:
    async with asyncio.timeout(GUARD), Mailer(settings_for(relay)) as mailer:
        for msg in numbered(10):
            await mailer.send(msg)

    assert len(await relay.wait_for(10)) == 10
    assert relay.sessions == 1


async def test_messages_sent_at_once_use_at_most_max_connections_sessions(relay: Inbox) -> None:
    async with asyncio.timeout(GUARD), Mailer(settings_for(relay, max_connections=3)) as mailer:
        await asyncio.gather(*(mailer.send(msg) for msg in numbered(12)))

    received = await relay.wait_for(12)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(f"approver{n}@acme.example" for n in range(12))
    assert relay.sessions <= 3


async def test_messages_over_starttls_with_login_reuse_one_session(
    starttls_inbox: Inbox, client_tls: ssl.SSLContext
) -> None:
    settings = settings_for(starttls_inbox, security="starttls", **login())

    async with asyncio.timeout(GUARD), Mailer(settings, tls_context=client_tls) as mailer:
        for msg in numbered(3):
            await mailer.send(msg)

    assert len(await starttls_inbox.wait_for(3)) == 3
    assert starttls_inbox.sessions == 1


async def test_a_relay_restart_between_two_messages_is_survived_on_a_new_session(relay: Inbox) -> None:
    async with asyncio.timeout(GUARD), Mailer(settings_for(relay)) as mailer:
        await mailer.send(message("first@acme.example"))
        relay.stop()
        relay.start()
        await mailer.send(message("second@acme.example"))

    assert [r.rcpt_tos for r in await relay.wait_for(2)] == [
        ("first@acme.example",),
        ("second@acme.example",),
    ]
    assert relay.sessions == 2


async def test_a_refused_recipient_fails_alone_and_the_session_carries_the_next(relay: Inbox) -> None:
    relay.reject_recipients.add("nobody@acme.example")

    async with asyncio.timeout(GUARD), Mailer(settings_for(relay)) as mailer:
        await mailer.send(message("before@acme.example"))
        with pytest.raises(MailError, match=r"nobody@acme.example \(550") as caught:
            await mailer.send(message("nobody@acme.example"))
        await mailer.send(message("after@acme.example"))

    assert caught.value.temporary is False
    assert [r.rcpt_tos for r in await relay.wait_for(2)] == [
        ("before@acme.example",),
        ("after@acme.example",),
    ]
    assert relay.sessions == 1


async def test_sessions_are_closed_when_the_mailer_closes(relay: Inbox) -> None:
    mailer = Mailer(settings_for(relay, max_connections=3))
    async with asyncio.timeout(GUARD):
        await asyncio.gather(*(mailer.send(msg) for msg in numbered(6)))
        assert relay.open_sessions > 0  # kept for the next message

        await mailer.close()

    await until(lambda: relay.open_sessions == 0)


async def test_a_session_left_unused_is_closed_after_the_idle_timeout(relay: Inbox) -> None:
    async with asyncio.timeout(GUARD), Mailer(settings_for(relay), idle_timeout=0.2) as mailer:
        await mailer.send(message())

        await until(lambda: relay.open_sessions == 0)

    assert relay.sessions == 1


def test_a_mailer_never_closed_hangs_up_when_its_event_loop_ends(relay: Inbox) -> None:
    async def send_and_forget() -> None:
        await Mailer(settings_for(relay)).send(message())

    asyncio.run(send_and_forget())  # the loop's end cancels the mailer's reaper, which hangs up

    relay.wait_for_sync(1, timeout=GUARD)
    deadline = time.monotonic() + GUARD
    while relay.open_sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (relay.sessions, relay.open_sessions) == (1, 0)


async def test_a_closed_mailer_refuses_to_send(relay: Inbox) -> None:
    mailer = Mailer(settings_for(relay))
    await mailer.close()

    with pytest.raises(RuntimeError, match="closed"):
        await mailer.send(message())
    assert relay.sessions == 0


class ScriptedRelay:
    """A bare-bones SMTP relay on the test's event loop that meets chosen MAIL FROMs with `failure`:
    "421" (answered so, then hangs up), "hang-up" (no answer, connection closed) or "silence" (no
    answer, ever). The aiosmtpd inbox cannot fail a session it has already served, this one can.

    `fails(relay, carried)` decides, given how many messages this session has carried so far.
    """

    def __init__(self, failure: str, fails: Callable[[ScriptedRelay, int], bool]) -> None:
        self.failure = failure
        self.fails = fails
        self.sessions = 0
        self.delivered = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        carried = 0
        writer.write(b"220 scripted.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"MAIL" and self.fails(self, carried):
                    if self.failure == "421":
                        writer.write(b"421 4.3.2 Closing this channel\r\n")
                        await writer.drain()
                    elif self.failure == "silence":
                        await reader.read()  # until the client gives up and hangs up
                    return
                if verb == b"DATA":
                    writer.write(b"354 Go ahead\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    carried += 1
                    self.delivered += 1
                if verb == b"QUIT":
                    writer.write(b"221 Bye\r\n")
                    return
                writer.write(
                    b"250-scripted.example\r\n250 8BITMIME\r\n" if verb == b"EHLO" else b"250 OK\r\n"
                )
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MailSettings]:
        """Serve on a free port; yields settings that point a Mailer at it."""
        server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        try:
            yield MailSettings(smtp_port=server.sockets[0].getsockname()[1], timeout=0.5)
        finally:
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize("failure", ["421", "hang-up", "silence"])
async def test_a_reused_session_that_fails_is_replaced_and_the_message_sent_on_a_fresh_one(
    failure: str,
) -> None:
    scripted = ScriptedRelay(failure, fails=lambda _, carried: carried >= 1)  # a session's 2nd message

    async with asyncio.timeout(GUARD), scripted.running() as settings, Mailer(settings) as mailer:
        await mailer.send(message("first@acme.example"))
        await mailer.send(message("second@acme.example"))

    assert (scripted.delivered, scripted.sessions) == (2, 2)


async def test_a_message_is_retried_on_a_fresh_session_only_once() -> None:
    scripted = ScriptedRelay("421", fails=lambda relay, _: relay.delivered >= 1)  # all after the 1st

    async with asyncio.timeout(GUARD), scripted.running() as settings, Mailer(settings) as mailer:
        await mailer.send(message("first@acme.example"))
        with pytest.raises(MailError, match=r"refused the sender .*: 421") as caught:
            await mailer.send(message("second@acme.example"))

    assert caught.value.temporary is True
    assert (scripted.delivered, scripted.sessions) == (1, 2)


async def test_a_fresh_session_that_fails_is_not_retried() -> None:
    scripted = ScriptedRelay("421", fails=lambda _, __: True)

    async with asyncio.timeout(GUARD), scripted.running() as settings, Mailer(settings) as mailer:
        with pytest.raises(MailError, match="421"):
            await mailer.send(message())

    assert (
        scripted.sessions == 1
    )  # the relay itself fails: the worker's backoff retries, not a second try now
