"""What the end-to-end loop tests share: reading the links out of received emails, following them as a
browser would (GET the confirmation page, then POST its form), and waiting for effects by polling.

Nothing here knows the connector's internals beyond its store, which the tests read to check states.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx2

from abiquo_workflow.jobs import TIMERS
from abiquo_workflow.mail.inbox import ReceivedMessage
from abiquo_workflow.store import Clock, Store, utc_now
from abiquo_workflow.store.records import JobRecord, JobStatus, TaskRecord
from tests.conftest import Connector

#: Long enough for a slow CI machine; waits end as soon as their condition holds.
WAIT = 15.0


# --- waiting --------------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
    """Poll `condition` (a function or a coroutine function) until it returns something truthy, and
    return that; fail naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_calls(connector: Connector, count: int) -> list[dict[str, Any]]:
    """The simulator's continue/cancel calls, once there are at least `count` of them."""

    def enough() -> list[dict[str, Any]] | None:
        calls = connector.decision_calls()
        return calls if len(calls) >= count else None

    return await wait_until(enough, f"{count} continue/cancel call(s) at the simulator")


@contextlib.asynccontextmanager
async def open_store(connector: Connector) -> AsyncIterator[Store]:
    """The connector's own database, opened beside it (read it, or act as the CLI does)."""
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        yield store


#: The timer jobs (a deadline, a reminder, an escalation): queued for later, they leave the connector idle.
_TIMERS = frozenset(timer.kind for timer in TIMERS)


async def wait_until_idle(store: Store, clock: Clock = utc_now) -> None:
    """Until no job is queued or running but the timers not due yet by the connector's `clock`: whatever
    the connector was going to do by now, it has done."""

    def waits(job: JobRecord) -> bool:
        return job.status is JobStatus.QUEUED and job.kind in _TIMERS and job.run_after > clock()

    async def idle() -> bool:
        jobs = await store.list_jobs(limit=10_000)
        return bool(jobs) and all(j.status in (JobStatus.DONE, JobStatus.DEAD) or waits(j) for j in jobs)

    await wait_until(idle, "the connector's job queue to be empty")


async def wait_for_task(
    store: Store, task_id: str, settled: Callable[[TaskRecord], bool], what: str
) -> TaskRecord:
    async def check() -> TaskRecord | None:
        task = await store.get_task(task_id)
        return task if task is not None and settled(task) else None

    return await wait_until(check, f"task {task_id} to be {what}")


# --- emails and their links -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """A link found in an email: its full URL, its path (`/accept`…) and its query parameters."""

    url: str
    path: str
    params: dict[str, str]


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _link(url: str) -> Link:
    parts = urlsplit(url)
    return Link(url, parts.path, dict(parse_qsl(parts.query)))


def html_links(message: ReceivedMessage) -> list[Link]:
    """Every `<a href>` of the HTML part that points at a decision page, in order."""
    parser = _Anchors()
    parser.feed(message.html() or "")
    return [
        _link(href) for href in parser.hrefs if urlsplit(href).path in ("/accept", "/decline", "/multiple")
    ]


def text_links(message: ReceivedMessage) -> list[Link]:
    """Every decision-page URL written in the text part, in order."""
    urls = re.findall(r"https?://\S+", message.text() or "")
    return [link for link in map(_link, urls) if link.path in ("/accept", "/decline", "/multiple")]


def task_link(message: ReceivedMessage, path: str, task_id: str) -> Link:
    """The email's link to `path` (`/accept` or `/decline`) for one task; it must be there exactly once."""
    found = [link for link in html_links(message) if link.path == path and link.params.get("task") == task_id]
    assert len(found) == 1, f"expected one {path} link for task {task_id}, found {len(found)}"
    return found[0]


def all_link(message: ReceivedMessage, action: str) -> Link:
    """The email's `/multiple?action=…` link (accept or cancel every task of the email)."""
    found = [
        link
        for link in html_links(message)
        if link.path == "/multiple" and link.params.get("action") == action
    ]
    assert len(found) == 1, f"expected one /multiple?action={action} link, found {len(found)}"
    return found[0]


def to(messages: Sequence[ReceivedMessage], address: str) -> list[ReceivedMessage]:
    """The messages sent to `address`."""
    return [m for m in messages if address in m.rcpt_tos]


def recipients(messages: Sequence[ReceivedMessage]) -> list[str]:
    return sorted(address for m in messages for address in m.rcpt_tos)


# --- the confirmation page and its form -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Form:
    """A page's `<form method=post>`: where it posts and its hidden inputs."""

    action: str
    fields: dict[str, str]


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and values.get("method", "").lower() == "post":
            self.forms.append(Form(values.get("action", ""), {}))
        elif tag == "input" and values.get("type") == "hidden" and self.forms:
            self.forms[-1].fields[values.get("name", "")] = values.get("value", "")


def post_form(html: str) -> Form:
    """The one POST form of a page."""
    parser = _Forms()
    parser.feed(html)
    assert len(parser.forms) == 1, f"expected one POST form on the page, found {len(parser.forms)}"
    return parser.forms[0]


async def open_confirmation(client: httpx2.AsyncClient, link: Link) -> tuple[httpx2.Response, Form]:
    """GET a link as a browser does: the confirmation page (200) and its form."""
    page = await client.get(link.url)
    assert page.status_code == 200, page.text
    return page, post_form(page.text)


async def submit(
    client: httpx2.AsyncClient, page_url: str, form: Form, reason: str | None = None
) -> httpx2.Response:
    """POST a confirmation form as a browser does: its hidden fields, plus the reason typed in."""
    data = dict(form.fields)
    if reason is not None:
        data["reason"] = reason
    return await client.post(urljoin(page_url, form.action), data=data)


async def confirm(client: httpx2.AsyncClient, link: Link, reason: str | None = None) -> httpx2.Response:
    """Open a link and press the button on its confirmation page."""
    _, form = await open_confirmation(client, link)
    return await submit(client, link.url, form, reason)


class _Text(HTMLParser):
    _HIDDEN = ("style", "script", "title")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def page_text(html: str) -> str:
    """A page's visible text, whitespace collapsed and entities decoded, for reading what it says."""
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())
