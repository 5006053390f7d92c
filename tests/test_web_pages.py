"""What every response of the web app carries, and the pages around the decisions (web/app.py, health.py).

Security headers on every answer, the stylesheet, the index page, `/healthz`, `/readyz`, `/metrics`,
404/405/500 answers as sentences (JSON, or a page on the page routes), and a real Chromium rendering
the confirmation page under the Content-Security-Policy.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import pytest
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from abiquo_workflow import __version__, display
from abiquo_workflow.config import build_settings
from abiquo_workflow.domain import Action
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.servers import BackgroundServer
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.web.app import create_app
from tests.conftest import (
    CLIENT_TLS,
    TEST_SECRET_KEY,
    App,
    Connector,
    ConnectorFactory,
    Running,
    drop_database,
    free_port,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser

ALICE = "Alice Smith <alice.smith@acme.example>"
BOB = "Bob Jones <bob.jones@acme.example>"
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")
DEPLOY_XML = (Path(__file__).parent / "payloads" / "protocol_11_1_vm_deploy.xml").read_bytes()


@pytest.fixture
def connector(app: App) -> App:
    """The app in-process (conftest `app`); pages a browser opens are served for real (`served`)."""
    return app


@pytest.fixture
def served(connector_factory: ConnectorFactory) -> Iterator[Connector]:
    """A real connector, for the browser tests (Chromium needs a URL)."""
    with connector_factory() as running:
        yield running


def signer_for(connector: Running) -> LinkSigner:
    return LinkSigner(TEST_SECRET_KEY, connector.settings.server.base_url, 3600)


def relative(url: str) -> str:
    """`http://host/accept?task=…` → `/accept?task=…`."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def fetch(target: Running | str, method: str, path: str, **kw: Any) -> httpx2.Response:
    """A request to the app (in-process), to a connector, or to a server's URL."""
    client = (
        httpx2.AsyncClient(verify=CLIENT_TLS, base_url=target, timeout=30)
        if isinstance(target, str)
        else target.client()
    )
    async with client:
        return await client.request(method, path, **kw)


async def held_task(connector: Running) -> str:
    """A task held by the simulator and checked with it by triage (as before any real email)."""
    result = await connector.request(action="deploy", vm=1)
    await connector.inbox.wait_for(3)  # triage verified the task and emailed Alice, Bob and Zoë
    return str(result["tasks"][0]["task_id"])


def assert_sentence_json(response: httpx2.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = str(response.json()["error"])
    assert message[:1].isupper() and message.endswith("."), message
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS), response.text
    return message


def assert_error_page(response: httpx2.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<p class="notice error">' in response.text
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS), response.text
    return response.text


# --- security headers on every answer -------------------------------------------------------------------

#: Each entry makes one request against a running connector and returns its response.
Probe = Callable[[Connector], Awaitable[httpx2.Response]]


async def _confirmation_page(connector: Running) -> httpx2.Response:
    url = signer_for(connector).task_url(await held_task(connector), Action.ACCEPT, ALICE)
    return await fetch(connector, "GET", relative(url))


async def _done_page(connector: Running) -> httpx2.Response:
    url = signer_for(connector).task_url(await held_task(connector), Action.ACCEPT, ALICE)
    return await fetch(connector, "POST", relative(url))


PROBES: dict[str, Probe] = {
    "index": lambda c: fetch(c, "GET", "/"),
    "confirmation-page": _confirmation_page,
    "done-page": _done_page,
    "forbidden-page": lambda c: fetch(c, "GET", "/accept", params={"task": "t", "token": "x"}),
    "callback-200": lambda c: fetch(
        c, "POST", "/callback", content=DEPLOY_XML, headers={"content-type": "application/xml"}
    ),
    "callback-400": lambda c: fetch(c, "POST", "/callback", content=b"nonsense"),
    "not-found": lambda c: fetch(c, "GET", "/no/such/page"),
    "method-not-allowed": lambda c: fetch(c, "GET", "/callback"),
    "healthz": lambda c: fetch(c, "GET", "/healthz"),
    "readyz": lambda c: fetch(c, "GET", "/readyz"),
    "metrics": lambda c: fetch(c, "GET", "/metrics"),
}


@pytest.mark.parametrize("probe", list(PROBES))
async def test_every_answer_carries_the_security_headers(connector: Running, probe: str) -> None:
    response = await PROBES[probe](connector)

    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_stylesheet_is_served(connector: Running) -> None:
    response = await fetch(connector, "GET", "/static/style.css")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert "button.accept" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_pages_link_the_stylesheet_by_path_not_by_the_host_they_were_asked_as(
    connector: Running,
) -> None:
    response = await fetch(connector, "GET", "/", headers={"host": "evil.example"})

    assert '<link rel="stylesheet" href="/static/style.css">' in response.text
    assert "evil.example" not in response.text


# --- index, health, readiness, metrics ---------------------------------------------------------------------


async def test_the_index_page_names_the_version_and_the_callback_url(connector: Running) -> None:
    response = await fetch(connector, "GET", "/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert __version__ in response.text
    assert f"<code>{connector.settings.server.base_url}/callback</code>" in response.text
    assert 'href="/healthz"' in response.text and 'href="/readyz"' in response.text


async def test_healthz_answers_ok(connector: Running) -> None:
    response = await fetch(connector, "GET", "/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_answers_ok_while_the_database_answers(connector: Running) -> None:
    response = await fetch(connector, "GET", "/readyz")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"]) == ("ok", "ok")


@pytest.fixture
def orphaned_connector(
    connector_factory: ConnectorFactory, migrated_database_url: str, postgres_server: str
) -> Iterator[Connector]:
    """A connector on PostgreSQL whose database has been dropped under it after it started."""
    with connector_factory(database_url=migrated_database_url) as connector:
        drop_database(postgres_server, migrated_database_url)
        yield connector


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_readyz_is_503_with_a_sentence_when_the_database_is_gone(
    orphaned_connector: Running, migrated_database_url: str
) -> None:
    response = await fetch(orphaned_connector, "GET", "/readyz")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"]) == ("unavailable", "unreachable")
    assert body["error"].startswith("The database is not answering")
    assert make_url(migrated_database_url).database not in response.text


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_a_decision_page_is_503_with_a_sentence_when_the_database_is_gone(
    orphaned_connector: Running,
) -> None:
    url = signer_for(orphaned_connector).task_url("some-task", Action.ACCEPT, ALICE)

    for method in ("GET", "POST"):
        page = assert_error_page(await fetch(orphaned_connector, method, relative(url)), 503)
        assert "database is not available" in page


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_healthz_still_answers_when_the_database_is_gone(orphaned_connector: Connector) -> None:
    response = await fetch(orphaned_connector, "GET", "/healthz")

    assert response.status_code == 200


def sample_value(metrics: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_callbacks_and_decisions(connector: Running) -> None:
    before = (await fetch(connector, "GET", "/metrics")).text
    task = await held_task(connector)
    await fetch(connector, "POST", "/callback", content=b"nonsense")
    await fetch(connector, "POST", relative(signer_for(connector).task_url(task, Action.ACCEPT, ALICE)))

    response = await fetch(connector, "GET", "/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    for name, labels in [
        ("awf_callbacks_total", 'outcome="stored"'),
        ("awf_callbacks_total", 'outcome="refused"'),
        ("awf_decisions_total", 'channel="email",decision="accepted"'),
    ]:
        assert sample_value(after, name, labels) == sample_value(before, name, labels) + 1, (name, labels)


# --- 404, 405 and 500 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/page", "/accept/more", "/static/missing.css", "/api/v2/tasks"])
async def test_an_unknown_route_is_a_404_sentence_in_json(connector: Running, path: str) -> None:
    response = await fetch(connector, "GET", path)

    assert path in assert_sentence_json(response, 404)


async def test_a_wrong_method_on_a_page_route_is_a_405_page_naming_the_methods(connector: Running) -> None:
    response = await fetch(connector, "DELETE", "/accept")

    assert "DELETE is not allowed on /accept" in assert_error_page(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


async def _crash(request: Request) -> Response:
    raise RuntimeError("internal detail that must stay in the log")


@pytest.fixture
def crashing_server(tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox) -> Iterator[str]:
    """The real app, with one extra route that raises, at a page path and at a JSON path.

    Starlette renders an unhandled exception outside every middleware, so the app's 500 answers need
    checking on their own; no route of the app fails this way on purpose (LinkSigner.verify does on a
    signed token with an odd expiry, a bug reported against links.py), hence the extra route."""
    port = free_port()
    settings = build_settings(
        {
            "server": {"bind": f"127.0.0.1:{port}", "secret_key": TEST_SECRET_KEY},
            "database": {"url": f"sqlite:///{tmp_path / 'crashing.db'}"},
            "abiquo": {"api_url": simulator.api_url},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp_inbox.port},
        },
        environ={},
    )
    app = create_app(settings, lifespan=web_lifespan(settings))
    app.router.routes[0:0] = [Route("/multiple", _crash), Route("/crash", _crash)]
    with BackgroundServer(app, port=port) as server:
        yield server.url


async def test_an_unexpected_error_on_a_page_route_is_a_500_page_with_a_sentence(
    crashing_server: str,
) -> None:
    response = await fetch(crashing_server, "GET", "/multiple")

    page = assert_error_page(response, 500)
    assert "Something went wrong on our side" in page
    assert "internal detail" not in page
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_an_unexpected_error_elsewhere_is_a_500_sentence_in_json(crashing_server: str) -> None:
    response = await fetch(crashing_server, "GET", "/crash")

    message = assert_sentence_json(response, 500)
    assert "internal detail" not in message
    assert response.headers["referrer-policy"] == "no-referrer"


# --- names from Abiquo, cleaned and capped on the decision pages (display.py) ----------------------------


def spoofed(name: str) -> str:
    """`name` with a right-to-left override and zero-width characters in it, padded to 5,000 characters."""
    return f"{name[:2]}\u202e{name[2:]}\u200b\u200d\ufeff".ljust(5000, "x")


def shown_as(name: str) -> str:
    """What a page shows for `spoofed(name)`: `name` and its padding, without them, capped with "…"."""
    return (name + "x" * display.NAME_LIMIT)[: display.NAME_LIMIT - 1] + "…"


def format_characters(text: str) -> list[str]:
    return [char for char in text if unicodedata.category(char) == "Cf"]


def rename_vm(connector: Running, vm_id: int, name: str) -> None:
    world = connector.simulator.simulator.world
    world.vms[vm_id] = dataclasses.replace(world.vms[vm_id], name=name)


async def triaged_task(connector: Running, vm_id: int = 1) -> str:
    """A held deploy of `vm_id`, once triage has stored what Abiquo says about it (the emails are out)."""
    result = await connector.request(action="deploy", vm=vm_id)
    await connector.inbox.wait_for(1)
    return str(result["tasks"][0]["task_id"])


async def confirmation_page(connector: Running, task: str) -> str:
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
    response = await fetch(connector, "GET", relative(url))
    assert response.status_code == 200, response.text
    return response.text


async def test_a_spoofed_vm_name_is_cleaned_and_capped_on_the_confirmation_page(connector: Running) -> None:
    rename_vm(connector, 1, spoofed("web-01"))

    page = await confirmation_page(connector, await triaged_task(connector))

    assert f'<td class="name" data-label="Virtual machine">{shown_as("web-01")}</td>' in page
    assert f"Accept the deploy of {shown_as('web-01')}?" in page
    assert "x" * display.NAME_LIMIT not in page
    assert format_characters(page) == []


async def test_a_spoofed_requester_and_vapp_are_cleaned_and_capped_on_the_confirmation_page(
    connector: Running,
) -> None:
    world = connector.simulator.simulator.world
    world.users[20] = dataclasses.replace(world.users[20], name=spoofed("John"))
    world.vapps[1] = dataclasses.replace(world.vapps[1], name=spoofed("Web tier"))

    page = await confirmation_page(connector, await triaged_task(connector))

    assert f"Requested by <strong>{shown_as('John')}</strong>" in page
    assert f" › {shown_as('Web tier')}" in page
    assert format_characters(page) == []


async def test_a_capped_name_with_a_script_is_still_escaped_on_the_confirmation_page(
    connector: Running,
) -> None:
    rename_vm(connector, 1, spoofed("<script>alert(1)</script>"))

    page = await confirmation_page(connector, await triaged_task(connector))

    assert '<td class="name" data-label="Virtual machine">&lt;script&gt;alert(1)&lt;/script&gt;xxx' in page
    assert "<script" not in page


async def test_a_spoofed_approver_is_cleaned_and_capped_in_the_decided_status(connector: Running) -> None:
    approver = f"{spoofed('Alice')} <alice.smith@acme.example>"
    url = signer_for(connector).task_url(await triaged_task(connector), Action.ACCEPT, approver)

    response = await fetch(connector, "POST", relative(url))

    assert response.status_code == 200, response.text
    assert f"Accepted by {shown_as('Alice')} on " in response.text
    assert format_characters(response.text) == []


# --- what the decision pages say: counts, accepted or declined, the reason, what to do next ----------------


async def held_vapp(connector: Running) -> list[str]:
    """vApp 1's three tasks, held and triaged (the approval emails are out)."""
    result = await connector.request(action="deploy", vapp=1)
    await connector.inbox.wait_for(3)
    return [str(task["task_id"]) for task in result["tasks"]]


async def decide(connector: Running, url: str, reason: str | None = None) -> httpx2.Response:
    """POST a link as its confirmation page's form does, with a reason when given."""
    return await fetch(connector, "POST", relative(url), data={"reason": reason} if reason else None)


async def test_accepted_and_declined_pages_look_and_read_differently(connector: Running) -> None:
    first, second, _ = await held_vapp(connector)
    signer = signer_for(connector)

    accepted = await decide(connector, signer.task_url(first, Action.ACCEPT, ALICE), "Fine by me")
    declined = await decide(connector, signer.task_url(second, Action.DECLINE, ALICE), "Too big <really>")

    assert accepted.status_code == declined.status_code == 200
    assert '<main class="tone-accepted">' in accepted.text and "<h1>Accepted</h1>" in accepted.text
    assert '<main class="tone-declined">' in declined.text and "<h1>Declined</h1>" in declined.text
    assert '<div class="notice accepted">' in accepted.text
    assert '<div class="notice declined">' in declined.text
    assert "Accepted 1 task. " in accepted.text and "Declined 1 task. " in declined.text
    assert "“Fine by me”" in accepted.text and "“Too big &lt;really&gt;”" in declined.text
    assert "(s)" not in accepted.text + declined.text


async def test_deciding_the_rest_counts_in_words_and_shows_every_reason(connector: Running) -> None:
    tasks = await held_vapp(connector)
    signer = signer_for(connector)
    await decide(connector, signer.task_url(tasks[0], Action.DECLINE, BOB), "Not this quarter")
    url = signer.multiple_url(tasks, Action.ACCEPT, ALICE)

    confirmation = await fetch(connector, "GET", relative(url))
    done = await decide(connector, url, "Checked")

    assert "1 of these tasks was already decided and is left as it is." in confirmation.text
    assert "Accept all 2 tasks" in confirmation.text
    assert "Accepted 2 tasks. " in done.text
    assert "1 other task had already been decided and was left as it was." in done.text
    # The reason just given is said once, above the table; the earlier decision's reason on its row.
    assert done.text.count("Checked") == 1
    assert "Reason: “Not this quarter”" in done.text
    assert "(s)" not in confirmation.text + done.text


async def test_the_410_page_says_who_decided_why_and_that_nothing_is_left_to_do(connector: Running) -> None:
    task = await held_task(connector)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
    await decide(connector, url, "Capacity checked")

    again = await fetch(connector, "GET", relative(url))

    assert again.status_code == 410
    assert '<main class="tone-gone">' in again.text
    assert "Accepted by Alice Smith on " in again.text
    assert "This task was already decided, so nothing was changed." in again.text
    assert "Reason given: “Capacity checked”" in again.text
    assert '<p class="next">Nothing is left for you to decide here.' in again.text


async def test_every_refusal_page_says_what_to_do_next(connector: Running) -> None:
    task = await held_task(connector)
    signer = signer_for(connector)
    decided = signer.task_url(task, Action.ACCEPT, ALICE)
    await decide(connector, decided)
    asked = {
        400: ("GET", "/accept"),
        403: ("GET", f"/accept?task={task}&token=forged"),
        404: ("GET", relative(signer.task_url("no-such-task", Action.ACCEPT, ALICE))),
        410: ("POST", relative(decided)),
    }

    for status, (method, path) in asked.items():
        response = await fetch(connector, method, path)
        assert response.status_code == status, response.text
        [next_step] = re.findall(r'<p class="next">(.*?)</p>', response.text, re.DOTALL)
        assert len(next_step) > 40, (status, next_step)


async def test_a_refusal_that_already_says_what_to_do_adds_nothing(connector: Running) -> None:
    task = await held_task(connector)
    expired = signer_for(connector).token([task], Action.ACCEPT, ALICE, now=0)

    response = await fetch(connector, "GET", "/accept", params={"task": task, "token": expired})

    assert response.status_code == 403
    assert "Ask for the request to be sent again, or decide in Abiquo." in response.text
    assert '<p class="next">' not in response.text


# --- in a real browser ----------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_chromium_renders_the_confirmation_page_under_the_csp_and_its_button_decides(
    served: Connector, chromium_browser: Browser
) -> None:
    connector = served
    task = await held_task(connector)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
    page = await chromium_browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        response = await page.goto(url)
        assert response is not None and response.status == 200

        button = page.locator("form button[type=submit]")
        assert await button.is_visible()
        # #1f7a4d (button.accept in style.css): the stylesheet loaded and applied under the CSP.
        colour = await button.evaluate("element => getComputedStyle(element).backgroundColor")
        assert colour == "rgb(31, 122, 77)"

        await page.fill("textarea[name=reason]", "Fine by me")
        async with page.expect_navigation():
            await button.click()
        assert await page.locator("h1").inner_text() == "Accepted"
        assert "Accepted by Alice Smith" in await page.locator("table").inner_text()
    finally:
        await page.close()
    assert not [line for line in console if "Content Security Policy" in line], console


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_chromium_shows_a_hostile_vm_name_as_text(served: Connector, chromium_browser: Browser) -> None:
    connector = served
    result = await connector.request(action="deploy", vm=2)
    await connector.inbox.wait_for(1)  # triage has stored the VM's name from Abiquo
    url = signer_for(connector).task_url(result["tasks"][0]["task_id"], Action.ACCEPT, ALICE)
    page = await chromium_browser.new_page()
    try:
        await page.goto(url)
        cell = page.locator("tbody td").first
        assert await cell.inner_text() == 'db <primary> & "co"'
        assert await page.locator("primary").count() == 0
    finally:
        await page.close()
