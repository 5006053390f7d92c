"""Logging: JSON lines or lines for a person, the context each line carries, and what no line may carry.

`configure(settings)` sets up structlog (the connector's own lines) and the standard library's logging
(uvicorn's, Alembic's) to write to stderr in one format: JSON, one object a line, when `log.format` is
`json` (the default when stderr is not a terminal), or human-readable lines (`console`, the default on
a terminal). Every line has `timestamp` (UTC, ISO 8601, in JSON), `level` and `event`, then its fields.

Context. Lines carry what structlog's contextvars hold where they are logged: the web app binds
`http_request_id` (and `task_id` on the decision pages) for each HTTP request, the worker binds
`job_id`, `kind`, `request_id` and `task_id` for each job it runs (web/app.py, worker.py). So a line
logged deep in the Abiquo client during a delivery says which task it was for.

Redaction (`redact`, the last step before a line is rendered, tracebacks included). A field whose name
contains `token`, `password`, `secret` or `authorization` is replaced by `***`, at any depth of dicts
and lists. In every text: `token=` values of query strings, the token segment of `/callback/<token>`,
the credentials of `user:password@` in URLs and of `Bearer …` / `Basic …`, and the configured secrets
themselves (the signing key, the callback token, the Abiquo, SMTP and database passwords: `secrets_of`)
wherever they appear. Tracebacks are plain text and never show local variables.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from abiquo_workflow.config import LogSettings, Settings

REDACTED: Final = "***"

#: A field whose lower-cased name contains one of these holds a secret, whatever its value.
SECRET_FIELD_WORDS: Final = ("token", "password", "secret", "authorization")

#: Secrets shorter than this are not searched for in texts (they would mask ordinary words).
_SHORTEST_SECRET = 6
#: Containers are redacted this deep; deeper values are replaced whole.
_DEEPEST = 6

_IN_TEXT: Final = (
    # ?token=… &token=… (decision links, `?token=` on /callback): the value up to the next separator.
    (re.compile(r"([?&;]token=)[^&#\s\"'<>]*", re.IGNORECASE), r"\1" + REDACTED),
    # /callback/<token>: server.callback_token as a path segment.
    (re.compile(r"(/callback/)[^/?#\s\"'<>]+"), r"\1" + REDACTED),
    # scheme://user:password@host
    (re.compile(r"(://)[^/@\s\"'<>]+@"), r"\1" + REDACTED + "@"),
    # Authorization: Bearer … / Basic …
    (re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE), r"\1\2" + REDACTED),
)

#: Libraries that announce every step at INFO: noise on every command.
_NOISY = ("alembic", "httpcore", "httpcore2", "httpx2", "mail.log", "asyncio")

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Redactor:
    """The structlog processor that keeps secrets out of every line (see the module docstring).

    `secrets` are exact values to mask wherever they appear (`secrets_of(settings)`).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            event_dict[key] = self._value(key, value, 0)
        return event_dict

    def text(self, text: str) -> str:
        """`text` with every secret it shows masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _IN_TEXT:
            text = pattern.sub(replacement, text)
        return text

    def _value(self, key: object, value: Any, depth: int) -> Any:
        if isinstance(key, str) and is_secret_field(key) and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if depth >= _DEEPEST and isinstance(value, MutableMapping | list | tuple | set | frozenset):
            return REDACTED
        if isinstance(value, MutableMapping):
            return {k: self._value(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(None, item, depth + 1) for item in value]
        return value


def is_secret_field(name: str) -> bool:
    """Whether a field called `name` holds a secret (its name says token, password, secret or
    authorization)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_FIELD_WORDS)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """`Redactor` without configured secrets: field names and the patterns of texts only."""
    return _GENERIC(logger, method_name, event_dict)


_GENERIC = Redactor()


def secrets_of(settings: Settings) -> list[str]:
    """The secrets in `settings` that no line may show: the signing key, the callback token, the Abiquo
    and SMTP passwords and the database URL's password."""
    found = [settings.abiquo.password.get_secret_value()]
    for secret in (settings.server.secret_key, settings.server.callback_token, settings.mail.smtp_password):
        if secret is not None:
            found.append(secret.get_secret_value())
    try:
        database_password = urlsplit(settings.database.url).password
    except ValueError:
        database_password = None
    if database_password:
        found.append(database_password)
    return [secret for secret in found if secret]


def resolved_format(settings: LogSettings, stream: TextIO) -> str:
    """`json` or `console`: as set, or by default JSON unless `stream` is a terminal."""
    if settings.format is not None:
        return settings.format
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


def configure(
    settings: Settings | None = None, *, verbose: bool = False, stream: TextIO | None = None
) -> None:
    """Send the connector's lines and the standard library's to `stream` (stderr) as `settings.log`
    says: its format and level (DEBUG with `verbose`), with their secrets redacted (`secrets_of`)."""
    settings = settings or Settings()
    out = stream if stream is not None else sys.stderr
    level = logging.DEBUG if verbose else _LEVELS[settings.log.level]
    as_json = resolved_format(settings.log, out) == "json"
    redactor = Redactor(secrets_of(settings))
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty() if hasattr(out, "isatty") else False,
            # Plain tracebacks: rich's would print every frame's local variables (request bodies,
            # settings, tokens), and rendering them held the event loop for seconds.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    timestamper = (
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if as_json
        else structlog.processors.TimeStamper(fmt="%H:%M:%S")
    )
    # Tracebacks become text before redaction, so that a token in an exception's message is masked too.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redactor, renderer],
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
