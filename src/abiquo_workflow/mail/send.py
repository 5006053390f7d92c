"""Sending mail through the configured SMTP relay (aiosmtplib), every failure as one `MailError`.

Sessions are kept and reused. A burst (a 100-VM vApp's approvers, a round of outcome emails) would
otherwise pay a TCP connection, a greeting, often a TLS handshake and a login per message, and take as
many of the relay's connection slots. A `Mailer` keeps at most `mail.max_connections` sessions open;
each carries one message at a time, and the next message takes the session used last, so the sessions
a burst no longer needs sit idle and are closed after `idle_timeout` (30 s). `close()`, or leaving
`async with Mailer(...)`, says QUIT on every one.

A kept session can go stale unnoticed (the relay restarted or dropped it, answers 421, or falls silent
until the timeout). A message whose reused session fails that way is sent once more, on a fresh session,
before the error is raised. A fresh session failing so has met the relay itself failing: its error is
raised at once, and the worker retries the email later, as it did when every message had a connection
of its own. A refusal of this message alone (a 5xx at RCPT, a 4xx at MAIL) fails only this message: the
session answers RSET and carries the next.

Messages name the relay as host:port and say what failed; they never carry the password.

A `MailError` is temporary (the worker retries the email) unless the relay refused with 5xx answers
only: RFC 5321 calls those permanent, and the same message would be refused again. A 4xx answer, a relay
that is down or silent, or a dropped connection may all pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Final, Self

import aiosmtplib
import structlog

from abiquo_workflow import metrics
from abiquo_workflow.config import MailSettings
from abiquo_workflow.exceptions import MailError
from abiquo_workflow.mail.render import render_test

log = structlog.stdlib.get_logger(__name__)

#: Seconds an unused session stays open. Short, because an idle session holds one of the relay's
#: connection slots, and relays hang up on idle clients themselves after a few minutes (RFC 5321
#: §4.5.3.2.7 suggests 5), which would leave us holding dead sessions.
IDLE_TIMEOUT: Final = 30.0

#: "Service not available, closing transmission channel" (RFC 5321 §3.8): the relay is hanging up.
_CLOSING: Final = 421


@dataclass(eq=False, slots=True)
class _Session:
    """One open SMTP session, and when it last finished a message (event-loop time)."""

    client: aiosmtplib.SMTP
    idle_since: float = 0.0


class Mailer:
    """Sends `EmailMessage`s through `mail.smtp_host:smtp_port`, reusing up to `mail.max_connections`
    SMTP sessions. Close it (`await mailer.close()`, or use `async with`) to QUIT them.

    A Mailer belongs to the event loop it sends on. Two messages never share a session: a session is
    either in the idle pool or held by the one `send` that took it from there, and taking it is a step
    with no `await` in it.

    Parameters
    ----------
    settings:
        The `mail` section: host, port, `security` (none, starttls or tls), optional login, `timeout`,
        `max_connections`.
    tls_context:
        Used for STARTTLS and implicit TLS. By default the system's trusted certificates are used (set
        `SSL_CERT_FILE` for a private CA); tests pass a context that trusts their own CA.
    idle_timeout:
        Seconds a session may sit unused before it is closed.
    """

    def __init__(
        self,
        settings: MailSettings,
        *,
        tls_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._settings = settings
        self._tls_context = tls_context
        self._idle_timeout = idle_timeout
        # One permit per session that may be open: held by a `send` while it uses or opens a session, and
        # by the reaper while it closes one, so open sessions never outnumber `max_connections`.
        self._slots = asyncio.Semaphore(settings.max_connections)
        # Idle sessions, oldest first: `send` takes the newest, the reaper closes from the oldest.
        self._idle: list[_Session] = []
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def relay(self) -> str:
        return f"{self._settings.smtp_host}:{self._settings.smtp_port}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            timeout=settings.timeout,
            use_tls=settings.security == "tls",
            # False, not None: with security = "none" never upgrade, even when the relay offers it.
            start_tls=settings.security == "starttls",
            tls_context=self._tls_context,
            username=settings.smtp_user or None,
            password=password if settings.smtp_user else None,
        )

    async def send(self, message: EmailMessage) -> None:
        """Deliver `message` to the relay; raises `MailError` if the relay does not take it for everyone.

        Waits while `mail.max_connections` other messages are being sent. After `close()` it raises
        `RuntimeError`: a message sent then would open a session nobody closes.
        """
        if self._closed:
            raise RuntimeError("the Mailer is closed")
        try:
            async with self._slots:
                refused = await self._timed(message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(self._explain(exc, "send a message"), temporary=_temporary(exc)) from exc
        if refused:
            who = ", ".join(
                f"{address} ({response.code} {response.message})" for address, response in refused.items()
            )
            raise MailError(
                f"the SMTP relay at {self.relay} refused the recipient(s) {who}",
                temporary=_may_pass([response.code for response in refused.values()]),
            )

    async def _timed(self, message: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        """`_send_holding_a_slot`, its time observed in `awf_smtp_send_duration_seconds` by outcome:
        sent, refused (a refusal that waiting cannot mend, or a recipient refused) or failed."""
        started, outcome = time.perf_counter(), "failed"
        try:
            refused = await self._send_holding_a_slot(message)
            outcome = "refused" if refused else "sent"
            return refused
        except (aiosmtplib.SMTPException, OSError) as exc:
            outcome = "failed" if _temporary(exc) else "refused"
            raise
        finally:
            metrics.SMTP_SENDS.labels(outcome).observe(time.perf_counter() - started)

    async def _send_holding_a_slot(self, message: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send on the newest idle session, or on a fresh one; once more on a fresh one if the idle one
        turns out lost. Returns the recipients refused among others; raises aiosmtplib's errors."""
        session = self._take_idle()
        if session is not None:
            try:
                return await self._attempt(session, message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                if not _session_lost(exc):
                    raise
                # Most likely the relay dropped the session while it waited; the log says what happened.
                log.info("mail.session_lost", relay=self.relay, error=self._explain(exc, "send a message"))
        return await self._attempt(await self._open(), message)

    async def _open(self) -> _Session:
        """A fresh session: connected, greeted, secured and logged in as configured."""
        client = self._client()
        await client.connect()  # on any failure, cancellation included, aiosmtplib closes what it opened
        return _Session(client)

    def _take_idle(self) -> _Session | None:
        """The newest idle session still connected; closes those the relay hung up on while they waited."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            session = self._idle.pop()
            if session.client.is_connected and now - session.idle_since < self._idle_timeout:
                return session
            session.client.close()
        return None

    async def _attempt(self, session: _Session, message: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send `message` on `session`, which then goes back to the pool if it is still sound and is
        closed if not. Returns the recipients the relay refused while taking the message for others."""
        try:
            refused, _ = await session.client.send_message(message)
        except BaseException as exc:
            await self._after_failure(session, exc)
            raise
        self._put_idle(session)
        return refused

    async def _after_failure(self, session: _Session, exc: BaseException) -> None:
        """After a refusal of this message alone, keep `session` if it answers RSET; otherwise close it.

        aiosmtplib resets the envelope after a refusal but ignores a reset that fails. Asking again costs
        one round trip, on a rare path, and the next message can never meet a half-open transaction.
        """
        if _refused_this_message(exc):
            try:
                await session.client.rset()
            except (aiosmtplib.SMTPException, OSError):
                pass  # closed below; the refusal is what the caller reports
            except BaseException:
                session.client.close()
                raise
            else:
                self._put_idle(session)
                return
        # Lost, timed out, or cancelled half-way: what state the relay holds the session in is unknown.
        session.client.close()

    def _put_idle(self, session: _Session) -> None:
        """Return `session` to the pool, and make sure the reaper closes it if it stays unused."""
        loop = asyncio.get_running_loop()
        session.idle_since = loop.time()
        self._idle.append(session)
        if self._reaper is None or self._reaper.done():
            self._reaper = loop.create_task(self._reap(), name="mail-idle-sessions")

    async def _reap(self) -> None:
        """Close the sessions unused for `idle_timeout` with QUIT, oldest first; end when none is idle.

        When cancelled (by `close`, or by the event loop ending with the mailer never closed) it hangs up
        on the idle sessions at once, so that no socket outlives its loop.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._idle:
                wait = self._idle[0].idle_since + self._idle_timeout - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with self._slots:  # a session being closed is still open
                    oldest = self._idle[0] if self._idle else None
                    if oldest is not None and oldest.idle_since + self._idle_timeout <= loop.time():
                        self._idle.remove(oldest)
                        await self._quit(oldest)
        finally:
            for session in self._idle:
                session.client.close()
            self._idle.clear()

    async def _quit(self, session: _Session) -> None:
        """Say QUIT and hang up; on a relay that does not answer, hang up all the same."""
        try:
            await session.client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            session.client.close()

    async def close(self) -> None:
        """Wait for the messages being sent, then QUIT every session. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        for _ in range(self._settings.max_connections):
            await self._slots.acquire()  # all of them: no message is in flight, and none can start
        idle, self._idle = self._idle, []
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(self._quit(session) for session in idle))

    async def check(self) -> None:
        """Connect, greet, secure and log in as configured, then quit; `MailError` if any step fails.

        Always on a session of its own, outside the pool: what is checked is that one can be opened.
        """
        try:
            async with self._client():
                pass
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(self._explain(exc, "check the connection"), temporary=_temporary(exc)) from exc

    def _explain(self, exc: BaseException, doing: str) -> str:
        """One sentence for the log or the CLI: where, what step, and the relay's own answer."""
        relay, timeout = self.relay, self._settings.timeout
        match exc:
            case aiosmtplib.SMTPConnectTimeoutError():
                return f"timed out after {timeout:g} s connecting to the SMTP relay at {relay}"
            case aiosmtplib.SMTPTimeoutError():
                return f"the SMTP relay at {relay} did not answer within {timeout:g} s"
            case (
                aiosmtplib.SMTPAuthenticationError()
                | aiosmtplib.SMTPSenderRefused()
                | aiosmtplib.SMTPDataError()
            ):
                return f"the SMTP relay at {relay} refused {self._refused(exc)}: {exc.code} {exc.message}"
            case aiosmtplib.SMTPRecipientsRefused(recipients=recipients):
                who = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in recipients)
                return f"the SMTP relay at {relay} refused every recipient: {who}"
            case aiosmtplib.SMTPNotSupported(message=answer):
                return f"the SMTP relay at {relay} lacks what mail.security or the login needs: {answer}"
            case aiosmtplib.SMTPServerDisconnected():
                return f"the SMTP relay at {relay} closed the connection while we tried to {doing}"
            case aiosmtplib.SMTPResponseException(code=code, message=answer):
                return f"the SMTP relay at {relay} answered {code} {answer} when we tried to {doing}"
            case aiosmtplib.SMTPConnectError(message=answer):
                return f"could not connect to the SMTP relay at {relay}: {answer}"
            case ssl.SSLError():
                return f"the TLS handshake with the SMTP relay at {relay} failed: {exc}"
            case aiosmtplib.SMTPException(message=answer):
                return f"could not {doing} through the SMTP relay at {relay}: {answer}"
            case _:
                return f"could not {doing} through the SMTP relay at {relay}: {exc}"

    def _refused(self, exc: aiosmtplib.SMTPResponseException) -> str:
        """What the relay refused, in `_explain`'s words: the login, the sender or the message."""
        match exc:
            case aiosmtplib.SMTPAuthenticationError():
                return f"the login for user {self._settings.smtp_user!r}"
            case aiosmtplib.SMTPSenderRefused(sender=sender):
                return f"the sender {sender}"
            case _:
                return "the message"


def _temporary(exc: BaseException) -> bool:
    """Whether the relay may take the message later: yes, unless all its answers were 5xx refusals."""
    match exc:
        case aiosmtplib.SMTPRecipientsRefused(recipients=recipients):
            return _may_pass([recipient.code for recipient in recipients])
        case aiosmtplib.SMTPResponseException(code=code):
            return _may_pass([code])
        case _:  # down, silent, disconnected: it may be back later
            return True


def _may_pass(codes: Sequence[int]) -> bool:
    """False when every code is a 5xx (permanent, RFC 5321 §4.2.1); a single 4xx may pass later."""
    return not all(500 <= code <= 599 for code in codes)


def _session_lost(exc: BaseException) -> bool:
    """Whether `exc` says the session is gone (hung up, silent, or closing with 421), so that the message
    may go through on a fresh one."""
    match exc:
        case aiosmtplib.SMTPResponseException(code=code):
            return code == _CLOSING
        case aiosmtplib.SMTPRecipientsRefused(recipients=recipients):
            return any(recipient.code == _CLOSING for recipient in recipients)
        case _:  # aiosmtplib's disconnects and timeouts are OSErrors too, as are resets and TLS errors
            return isinstance(exc, OSError)


def _refused_this_message(exc: BaseException) -> bool:
    """Whether the relay (or aiosmtplib, before a word was sent) refused this message and nothing more,
    leaving the session fit for the next one."""
    refusals = (
        aiosmtplib.SMTPResponseException,
        aiosmtplib.SMTPRecipientsRefused,
        aiosmtplib.SMTPNotSupported,  # SMTPUTF8 needed but not offered
        ValueError,  # an address aiosmtplib will not put on the wire
    )
    return isinstance(exc, refusals) and not _session_lost(exc)


async def send_test_email(
    settings: MailSettings, to: str, *, tls_context: ssl.SSLContext | None = None
) -> None:
    """What `abiquo-workflow send-test-email TO` does: render the test message and send it."""
    try:
        message = render_test(settings, to)
    except ValueError as exc:
        raise MailError(str(exc), temporary=False) from None
    async with Mailer(settings, tls_context=tls_context) as mailer:
        await mailer.send(message)
