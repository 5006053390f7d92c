"""A local SMTP inbox: a real SMTP server (aiosmtpd) that keeps what it receives in memory.

Two users: the tests, which send through `Mailer` and read what arrived; and the demo, where people
read the approval emails in a browser (`inbox_app`) and click their buttons.

Switches for failure tests: `stop()` then `start()` again takes the server down and back up on the same
port ("SMTP down, then up"); `refuse = True` keeps it up but answers 451 to every message; addresses in
`reject_recipients` get 550.

`sessions` and `open_sessions` count the clients' SMTP sessions, so tests can see a client reuse one.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import secrets
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from abiquo_workflow.lifecycle import Startable
from abiquo_workflow.mail import words


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the inbox received it: parsed, with its SMTP envelope and arrival time."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: tuple[str, ...]
    received_at: datetime
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    def text(self) -> str | None:
        """The text/plain body, decoded; None when there is none."""
        return self._body("plain")

    def html(self) -> str | None:
        """The text/html body, decoded; None when there is none."""
        return self._body("html")

    def _body(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None:
            return None
        content = part.get_content()
        return content if isinstance(content, str) else None

    def inline_images(self) -> dict[str, tuple[str, bytes]]:
        """Related images by Content-ID (without angle brackets): content type and bytes."""
        images: dict[str, tuple[str, bytes]] = {}
        for part in self.message.walk():
            cid = part.get("Content-ID")
            if cid and part.get_content_maintype() == "image":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    images[str(cid).strip().strip("<>")] = (part.get_content_type(), payload)
        return images


class _Handler:
    """aiosmtpd handler hooks; they run on the controller's thread."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # With this hook aiosmtpd leaves recording the greeting to us, and MAIL needs it recorded.
        session.host_name = hostname
        self._inbox._greeted(server)
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self._inbox.refuse:
            return "451 4.3.0 Mail temporarily refused (the test inbox is set to refuse)"
        if self._inbox.requires_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self._inbox.reject_recipients:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._inbox._receive(envelope)
        return "250 2.0.0 Message accepted"


class _Controller(Controller):
    """A Controller that can listen on port 0: it learns the real port from the bound socket.

    aiosmtpd's own start-up check connects to `self.port`, so the port must be known before it runs.
    """

    def _create_server(self) -> Any:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
        )
        self.port = server.sockets[0].getsockname()[1]
        return server


class Inbox(Startable):
    """An SMTP server on `host:port` that keeps received messages in memory (thread-safe).

    Parameters
    ----------
    host, port:
        Where to listen; port 0 picks a free port, readable as `inbox.port` once started.
    auth:
        (login, password) the server requires before accepting mail; AUTH PLAIN and LOGIN.
    tls_context:
        A server-side context. Offered through STARTTLS, or used from the first byte with `implicit_tls`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auth: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.host = host
        self._port = port
        self._auth = auth
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self._controller: _Controller | None = None
        self._messages: list[ReceivedMessage] = []
        self._arrived = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        #: While True the server stays up but answers 451 to every MAIL FROM.
        self.refuse = False
        #: Lower-case addresses answered with 550 at RCPT TO.
        self.reject_recipients: set[str] = set()
        # The sessions are counted on the server's thread and read on the tests' thread.
        self._sessions_lock = threading.Lock()
        self._sessions_seen = 0
        self._connected: list[SMTP] = []

    @property
    def port(self) -> int:
        return self._port

    @property
    def requires_auth(self) -> bool:
        return self._auth is not None

    @property
    def running(self) -> bool:
        return self._controller is not None

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again). After `stop()`, the same port is used, so clients configured for it reconnect."""
        if self._controller is not None:
            raise RuntimeError("the inbox is already running")
        starttls = self._tls_context if not self._implicit_tls else None
        controller = _Controller(
            _Handler(self),
            hostname=self.host,
            port=self._port,
            ssl_context=self._tls_context if self._implicit_tls else None,
            server_hostname="inbox.localhost",
            tls_context=starttls,
            authenticator=self._authenticate if self._auth else None,
            # AUTH is offered only after STARTTLS when STARTTLS exists; over implicit TLS aiosmtpd does not
            # see the TLS layer and would never offer AUTH, and without TLS at all tests may still log in.
            auth_require_tls=starttls is not None,
        )
        controller.start()
        self._port = controller.port
        self._controller = controller

    def stop(self) -> None:
        """Stop listening: clients now get "connection refused". Received messages are kept."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            # Stopping drops every connection, but the stopped loop may never tell their protocols.
            with self._sessions_lock:
                self._connected.clear()

    # --- sessions -----------------------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        """SMTP sessions clients have opened (connected and said EHLO) since the inbox was made.

        Counted across `stop()` and `start()`, and not emptied by `clear()`. A session that upgrades with
        STARTTLS, and so says EHLO twice, counts once; aiosmtpd's own probe at start never says EHLO.
        """
        with self._sessions_lock:
            return self._sessions_seen

    @property
    def open_sessions(self) -> int:
        """How many of those sessions are still connected."""
        with self._sessions_lock:
            self._drop_disconnected()
            return len(self._connected)

    def _greeted(self, server: SMTP) -> None:
        """Called on the server's thread at each EHLO, with the connection's protocol object."""
        with self._sessions_lock:
            self._drop_disconnected()
            if not any(known is server for known in self._connected):
                self._connected.append(server)
                self._sessions_seen += 1

    def _drop_disconnected(self) -> None:
        # aiosmtpd clears `transport` when the connection is lost. Dropping those keeps the list as short
        # as the open connections, however long the demo runs. Caller holds the lock.
        self._connected = [server for server in self._connected if server.transport is not None]

    # --- messages -----------------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the received messages, oldest first."""
        with self._arrived:
            return list(self._messages)

    def clear(self) -> None:
        with self._arrived:
            self._messages.clear()

    def wait_for_sync(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; `TimeoutError` after `timeout` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(self._too_few(count, timeout))
            return list(self._messages)

    # The timeout is part of what is waited for (and mirrors wait_for_sync), not a cancellation scope.
    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:  # noqa: ASYNC109
        """Wait until at least `count` messages arrived; `TimeoutError` after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            arrived = asyncio.Event()
            with self._arrived:
                if len(self._messages) >= count:
                    return list(self._messages)
                self._waiters.append((loop, arrived))
            try:
                await asyncio.wait_for(arrived.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise TimeoutError(self._too_few(count, timeout)) from None
            finally:
                with self._arrived:
                    self._waiters.remove((loop, arrived))

    def _too_few(self, count: int, timeout: float) -> str:
        return f"expected {count} message(s) in the inbox within {timeout:g} s, got {len(self._messages)}"

    def _receive(self, envelope: Envelope) -> None:
        raw = envelope.original_content or b""
        # SMTP carries CRLF line ends; parse with Python's "\n" so decoded bodies read as they were written.
        parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)  # policy.default always builds EmailMessage
        received = ReceivedMessage(
            message=parsed,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            received_at=datetime.now(UTC),
            raw=raw,
        )
        with self._arrived:
            self._messages.append(received)
            self._arrived.notify_all()
            for loop, event in self._waiters:
                loop.call_soon_threadsafe(event.set)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._auth is not None
        if isinstance(auth_data, LoginPassword):
            login_ok = secrets.compare_digest(auth_data.login, self._auth[0].encode())
            password_ok = secrets.compare_digest(auth_data.password, self._auth[1].encode())
            if login_ok and password_ok:
                return AuthResult(success=True)
        # handled=False lets aiosmtpd answer 535 itself; handled=True would leave the client waiting.
        return AuthResult(success=False, handled=False)


# --- The inbox in a browser -----------------------------------------------------------------------

_PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates" / "inbox"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)

# The HTML part is served on its own route, inside a sandboxed iframe, with this policy: no scripts, no
# remote fetches (images come inline as data: URIs), no forms. Links still open, in a new tab.
_SANDBOX = "allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation"
_MESSAGE_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; form-action 'none'; "
    f"frame-ancestors 'self'; sandbox {_SANDBOX}"
)
_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; img-src data:; form-action 'none'"
)
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def _base_target_blank(html: str) -> str:
    """`<base target="_blank">` first thing in the head, so every link opens in a new tab."""
    base = '<base target="_blank">'
    match = _HEAD.search(html)
    if match is None:
        return base + html
    return html[: match.end()] + base + html[match.end() :]


def _inline_cid_images(html: str, received: ReceivedMessage) -> str:
    images = received.inline_images()

    def data_uri(match: re.Match[str]) -> str:
        found = images.get(match[1])
        if found is None:
            return match[0]
        return f"data:{found[0]};base64,{base64.b64encode(found[1]).decode()}"

    return _CID.sub(data_uri, html)


def _headers(received: ReceivedMessage) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in received.message.items()]


def inbox_app(inbox: Inbox) -> Starlette:
    """An ASGI app to read `inbox` in a browser.

    `/` lists messages, newest first; `/messages/{n}` shows message n (1 is the first received) with its
    HTML part in a sandboxed iframe (`/messages/{n}/html`), its text part and headers;
    `/messages/{n}/source` is the raw message.
    """

    def _message(request: Request) -> tuple[int, ReceivedMessage] | None:
        number = int(request.path_params["n"])
        messages = inbox.messages
        return (number, messages[number - 1]) if 1 <= number <= len(messages) else None

    def _page(name: str, status: int = 200, **context: object) -> HTMLResponse:
        body = _PAGES.get_template(name).render(context)
        return HTMLResponse(body, status, headers={"Content-Security-Policy": _PAGE_CSP})

    def _not_found(number: object) -> HTMLResponse:
        return _page("missing.html", 404, number=number, count=len(inbox.messages))

    async def index(request: Request) -> Response:
        messages = inbox.messages
        rows = [(number, m) for number, m in enumerate(messages, start=1)]
        return _page("index.html", rows=list(reversed(rows)), moment=words.moment_words)

    async def show(request: Request) -> Response:
        found = _message(request)
        if found is None:
            return _not_found(request.path_params["n"])
        number, received = found
        return _page(
            "message.html",
            number=number,
            received=received,
            headers=_headers(received),
            text=received.text(),
            has_html=received.html() is not None,
            sandbox=_SANDBOX,
            moment=words.moment_words,
        )

    async def html(request: Request) -> Response:
        found = _message(request)
        body = found[1].html() if found is not None else None
        if found is None or body is None:
            return PlainTextResponse("no such HTML part", 404)
        body = _base_target_blank(_inline_cid_images(body, found[1]))
        return HTMLResponse(body, headers={"Content-Security-Policy": _MESSAGE_CSP})

    async def source(request: Request) -> Response:
        found = _message(request)
        if found is None:
            return PlainTextResponse("no such message", 404)
        return PlainTextResponse(found[1].raw.decode("utf-8", errors="replace"))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/messages/{n:int}", show),
            Route("/messages/{n:int}/html", html),
            Route("/messages/{n:int}/source", source),
        ]
    )
