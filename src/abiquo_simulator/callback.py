"""The POST Abiquo makes to the workflow endpoint when it holds tasks (docs/protocol.md §2.5, §3, §11.1 to
11.5).

Style "xml" is Abiquo 2.6: `application/vnd.abiquo.tasks+xml`, a `<tasks>` root (a single `<task>` root
with `task+xml` for a reconfigure), no `creationTimestamp`. Style "json" is 3.x:
`application/vnd.abiquo.tasks+json; version=3.10`, a `collection` object (a single task object with
`task+json` for a reconfigure), `creationTimestamp` present. Abiquo gives up waiting for the answer after
`workflow.read.timeout` (10 s) and never retries.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx2

from .rendering import Format, media_type, render
from .representations import Representer
from .tasks import Task

#: Abiquo's defaults for `workflow.connect.timeout` and `workflow.read.timeout` (docs/protocol.md §2.3).
CONNECT_TIMEOUT = 60.0
READ_TIMEOUT = 10.0
#: The API version a 3.x Abiquo names in the callback's Content-Type.
JSON_VERSION = "3.10"


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    url: str
    content_type: str
    status: int | None  # the endpoint's HTTP status, None when no answer came
    error: str | None  # what went wrong on the way, None when an answer came
    elapsed_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def callback_body(representer: Representer, tasks: list[Task], style: str, single: bool) -> tuple[bytes, str]:
    """The body and Content-Type of the callback for `tasks` (one task when `single`)."""
    fmt: Format = "json" if style == "json" else "xml"
    with_creation = style == "json"
    if single:
        body = render(representer.task(tasks[0], listing=True, with_creation=with_creation), fmt)
        kind = "task"
    else:
        body = render(representer.tasks(tasks, (), None, listing=True, with_creation=with_creation), fmt)
        kind = "tasks"
    return body, media_type(kind, fmt, JSON_VERSION if fmt == "json" else None)


async def post_callback(
    url: str,
    body: bytes,
    content_type: str,
    tls: ssl.SSLContext,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> CallbackOutcome:
    """POST the callback and report what happened; transport failures are reported, never raised.

    `transport` replaces the network (httpx2's seam): a test hands the ASGI transport of an app it
    drives in-process, so that the callback reaches that app with no server in between.
    """
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    timeout = httpx2.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    try:
        # trust_env=False: proxies from the environment have no business between Abiquo and its endpoint,
        # and reading them costs ~10 ms per client.
        async with httpx2.AsyncClient(
            timeout=timeout, verify=tls, trust_env=False, transport=transport
        ) as client:
            response = await client.post(url, content=body, headers={"Content-Type": content_type})
        status = response.status_code
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    return CallbackOutcome(url, content_type, status, error, elapsed_ms)
