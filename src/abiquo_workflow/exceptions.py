"""Every error the connector raises on purpose, in one family, and which of them are temporary.

    AbiquoWorkflowError
    ├── ConfigError            the configuration is invalid (one line per problem, naming the key)
    ├── PayloadError           a callback body we cannot accept (status: 400, 413 or 415)
    ├── AbiquoError            the Abiquo API did not give us what we asked for
    │   ├── AbiquoUnavailable      TEMPORARY: connection failed, timed out, or 5xx after every retry
    │   ├── AbiquoAuthError        401 / 403: the connector's credentials or privileges are wrong
    │   ├── AbiquoNotFound         404 on something we needed
    │   └── AbiquoProtocolError    an answer we cannot read, a link we will not follow, an unexpected
    │                              4xx (TEMPORARY if 408 or 429: Abiquo asks us to try again later)
    ├── MailError              TEMPORARY unless a 5xx refusal: the SMTP relay refused or was unreachable
    ├── StoreError             TEMPORARY: the database is unreachable, locked, too old, or refused a
    │                          statement
    ├── TokenError             an action link's token is missing, forged, expired or for another task
    └── NotAnApprover          a link's approver no longer approves the request's enterprise in Abiquo

Temporary means the same attempt may succeed later with nobody changing anything: the worker retries a
job that failed with a temporary error and fails the others at once, since repeating them only delays
the failure people need to see (worker.py). `is_temporary` judges any exception, ours or not.

Messages are sentences for the person reading a log or a page; each says what went wrong and, where it
can, what to do next. Driver exceptions (httpx2, sqlite3, psycopg, aiosmtplib) are translated at the
boundary with `raise ... from`, so the cause stays visible in tracebacks.
"""

from __future__ import annotations

from typing import Final

#: Statuses by which an HTTP server asks to be asked again later: 408 Request Timeout, 429 Too Many
#: Requests (a rate-limiting proxy in front of Abiquo, say).
_TRY_AGAIN_LATER: Final = frozenset({408, 429})


class AbiquoWorkflowError(Exception):
    """Base of every error abiquo-workflow raises on purpose.

    `temporary` says whether the same attempt may succeed later without anyone changing anything. Each
    class states its default (most errors are not temporary); an instance may differ from it.
    """

    temporary: bool = False


class ConfigError(AbiquoWorkflowError):
    """The configuration is invalid. `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class PayloadError(AbiquoWorkflowError):
    """A callback body we cannot accept. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class AbiquoError(AbiquoWorkflowError):
    """The Abiquo API did not give us what we asked for."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        self.status = status
        self.url = url
        self.temporary = type(self).temporary or status in _TRY_AGAIN_LATER
        super().__init__(message)


class AbiquoUnavailable(AbiquoError):
    """Abiquo could not be reached, timed out, or answered 5xx after every retry."""

    temporary = True


class AbiquoAuthError(AbiquoError):
    """Abiquo refused the connector's credentials (401) or privileges (403)."""


class AbiquoNotFound(AbiquoError):
    """Abiquo answered 404 for something we needed."""


class AbiquoProtocolError(AbiquoError):
    """Abiquo answered something we cannot read or do not expect, or gave a link we will not follow."""


class MailError(AbiquoWorkflowError):
    """The SMTP relay refused the message or could not be reached.

    Temporary unless the sender says otherwise: a relay that is down, slow or answers 4xx may take the
    message later, but a 5xx refusal (a recipient that does not exist) will be repeated every time.
    """

    temporary = True

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        self.temporary = temporary
        super().__init__(message)


class StoreError(AbiquoWorkflowError):
    """The database could not do what we asked: unreachable, locked, schema too old, or statement refused."""

    temporary = True


class TokenError(AbiquoWorkflowError):
    """An action link's token is missing, forged, expired or for another task."""


class NotAnApprover(AbiquoWorkflowError):
    """The person behind a valid link no longer holds the approver role of the request's enterprise."""


def is_temporary(exc: BaseException) -> bool:
    """Whether retrying what raised `exc` later may succeed, with nobody changing anything meanwhile.

    Our own errors say so themselves (`temporary`). Of the others only `OSError` is temporary: the
    network or the operating system refused for now (ConnectionError and TimeoutError are OSErrors).
    Anything else, a KeyError or a pydantic ValidationError from a stored record we cannot read, or a
    bug, fails the same way on every attempt.
    """
    if isinstance(exc, AbiquoWorkflowError):
        return exc.temporary
    return isinstance(exc, OSError)
