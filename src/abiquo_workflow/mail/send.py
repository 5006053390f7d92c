"""Sending mail through the configured SMTP relay (aiosmtplib), every failure as one `MailError`.

One connection per message: approval emails are few and far between, and a fresh connection means a
relay restart between two messages costs nothing. Messages name the relay as host:port and say what
failed; they never carry the password.

A `MailError` is temporary (the worker retries the email) unless the relay refused with 5xx answers
only: RFC 5321 calls those permanent, and the same message would be refused again. A 4xx answer, a relay
that is down or silent, or a dropped connection may all pass.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from email.message import EmailMessage

import aiosmtplib

from abiquo_workflow.config import MailSettings
from abiquo_workflow.exceptions import MailError
from abiquo_workflow.mail.render import render_test


class Mailer:
    """Sends `EmailMessage`s through `mail.smtp_host:smtp_port`.

    Parameters
    ----------
    settings:
        The `mail` section: host, port, `security` (none, starttls or tls), optional login, `timeout`.
    tls_context:
        Used for STARTTLS and implicit TLS. By default the system's trusted certificates are used (set
        `SSL_CERT_FILE` for a private CA); tests pass a context that trusts their own CA.
    """

    def __init__(self, settings: MailSettings, *, tls_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._tls_context = tls_context

    @property
    def relay(self) -> str:
        return f"{self._settings.smtp_host}:{self._settings.smtp_port}"

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
        """Deliver `message` to the relay; raises `MailError` if the relay does not take it for everyone."""
        try:
            async with self._client() as client:
                refused, _ = await client.send_message(message)
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

    async def check(self) -> None:
        """Connect, greet, secure and log in as configured, then quit; `MailError` if any step fails."""
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


async def send_test_email(
    settings: MailSettings, to: str, *, tls_context: ssl.SSLContext | None = None
) -> None:
    """What `abiquo-workflow send-test-email TO` does: render the test message and send it."""
    try:
        message = render_test(settings, to)
    except ValueError as exc:
        raise MailError(str(exc), temporary=False) from None
    await Mailer(settings, tls_context=tls_context).send(message)
