"""Every error the connector raises on purpose, in one family.

    AbiquoWorkflowError
    ├── ConfigError            the configuration is invalid (one line per problem, naming the key)
    ├── PayloadError           a callback body we cannot accept (status: 400, 413 or 415)
    ├── AbiquoError            the Abiquo API did not give us what we asked for
    │   ├── AbiquoUnavailable      connection failed, timed out, or 5xx after every retry
    │   ├── AbiquoAuthError        401 / 403: the connector's credentials or privileges are wrong
    │   ├── AbiquoNotFound         404 on something we needed
    │   └── AbiquoProtocolError    an answer we cannot read
    ├── MailError              the SMTP relay refused or could not be reached
    ├── StoreError             the database is unreachable, locked, too old, or refused a statement
    └── TokenError             an action link's token is missing, forged, expired or for another task

Messages are sentences for the person reading a log or a page; each says what went wrong and, where it
can, what to do next. Driver exceptions (httpx2, sqlite3, psycopg, aiosmtplib) are translated at the
boundary with `raise ... from`, so the cause stays visible in tracebacks.
"""

from __future__ import annotations


class AbiquoWorkflowError(Exception):
    """Base of every error abiquo-workflow raises on purpose."""


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
        super().__init__(message)


class AbiquoUnavailable(AbiquoError):
    """Abiquo could not be reached, timed out, or answered 5xx after every retry."""


class AbiquoAuthError(AbiquoError):
    """Abiquo refused the connector's credentials (401) or privileges (403)."""


class AbiquoNotFound(AbiquoError):
    """Abiquo answered 404 for something we needed."""


class AbiquoProtocolError(AbiquoError):
    """Abiquo answered something we cannot read."""


class MailError(AbiquoWorkflowError):
    """The SMTP relay refused the message or could not be reached."""


class StoreError(AbiquoWorkflowError):
    """The database could not do what we asked: unreachable, locked, schema too old, or statement refused."""


class TokenError(AbiquoWorkflowError):
    """An action link's token is missing, forged, expired or for another task."""
