"""`/accept`, `/decline` and `/multiple`: the pages behind the links in approval emails (web/decisions.py).

Links are made here with a `LinkSigner` holding the test secret, exactly as the emails make them, and bound
to Alice. Tasks are held by the simulator, which POSTs a real callback to the connector's web app; the app
runs in-process (the `app` fixture: its real store, worker and Abiquo client, no server in front). Nothing
decides without a token that verifies for exactly the tasks and the action; GET and HEAD never decide.
"""

from __future__ import annotations

import asyncio
import html
import sqlite3
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
import pytest_asyncio
from itsdangerous import URLSafeSerializer
from sqlalchemy.engine import make_url

from abiquo_workflow import links
from abiquo_workflow.domain import Action, DecisionState
from abiquo_workflow.links import LinkSigner
from abiquo_workflow.mail import words
from abiquo_workflow.store import Store
from abiquo_workflow.store.records import JobStatus, TaskRecord
from tests.conftest import CLIENT_TLS, TEST_SECRET_KEY, App, AppFactory

ALICE = "Alice Smith <alice.smith@acme.example>"
BOB = "Bob Jones <bob.jones@acme.example>"
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")


def signer_for(connector: App) -> LinkSigner:
    return LinkSigner(TEST_SECRET_KEY, connector.settings.server.base_url, ttl=3600)


def path_of(url: str) -> str:
    """`http://host/accept?task=…` → `/accept?task=…`, to request against `connector.url`."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def params_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


async def hold(connector: App, **request: Any) -> list[str]:
    """Held task ids, one per VM: `await hold(connector, vm=1)`, `await hold(connector, vapp=1)`.

    Returns once triage has checked the tasks with Abiquo, as before any real approval email: a
    link decides only tasks Abiquo confirmed, for an approver Abiquo still shows."""
    result = await connector.request(action="deploy", **request)
    task_ids = [task["task_id"] for task in result["tasks"]]
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        for _ in range(400):
            tasks = await store.get_tasks(task_ids)
            if all(t.verified_at is not None for t in tasks):
                return task_ids
            await asyncio.sleep(0.05)
    raise AssertionError(f"tasks {task_ids} not verified after 20 s")


async def tasks_in_store(connector: App, task_ids: list[str]) -> list[TaskRecord]:
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        return await store.get_tasks(task_ids)


async def decisions(connector: App, task_ids: list[str]) -> list[DecisionState]:
    return [task.decision for task in await tasks_in_store(connector, task_ids)]


async def settled(connector: App) -> None:
    """Wait until the worker has run every job it has (triage, emails, deliveries): after this, a
    decision that was made has reached the simulator, and one that was not never will."""
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        for _ in range(400):
            busy = await store.list_jobs(status=JobStatus.QUEUED) + await store.list_jobs(
                status=JobStatus.RUNNING
            )
            if not busy:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"jobs still waiting after 20 s: {busy}")


async def fetch(connector: App, method: str, path: str, **kw: Any) -> httpx2.Response:
    async with connector.client() as client:
        return await client.request(method, path, **kw)


def assert_page(response: httpx2.Response, status: int) -> str:
    """An HTML page with this status and no traceback; its text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert not any(marker in response.text for marker in TRACEBACK_MARKERS), response.text
    return response.text


class Forms(HTMLParser):
    """The forms of a page: method, action and the hidden fields of each."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(
                {"method": attributes.get("method"), "action": attributes.get("action"), "hidden": {}}
            )
        elif tag == "input" and attributes.get("type") == "hidden" and self.forms:
            self.forms[-1]["hidden"][attributes["name"]] = attributes.get("value", "")


@pytest.fixture
def connector(app: App) -> App:
    """The app, under the name the loop tests give a running connector."""
    return app


# --- GET and HEAD ask; they never decide ------------------------------------------------------------------


@pytest.mark.parametrize("action", [Action.ACCEPT, Action.DECLINE])
async def test_get_shows_a_confirmation_page_and_decides_nothing(connector: App, action: Action) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, action, ALICE)

    page = assert_page(await fetch(connector, "GET", path_of(url)), 200)

    assert "Nothing has been decided yet" in page
    await settled(connector)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]
    assert connector.decision_calls() == []


async def test_head_decides_nothing(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    response = await fetch(connector, "HEAD", path_of(url))

    assert response.status_code == 200
    assert response.content == b""
    await settled(connector)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]
    assert connector.decision_calls() == []


async def test_get_on_multiple_decides_nothing(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    url = signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)

    assert_page(await fetch(connector, "GET", path_of(url)), 200)

    await settled(connector)
    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3
    assert connector.decision_calls() == []


@pytest.mark.parametrize(
    ("action", "make_url", "route"),
    [
        pytest.param(Action.ACCEPT, "task_url", "/accept", id="accept"),
        pytest.param(Action.DECLINE, "task_url", "/decline", id="decline"),
        pytest.param(Action.ACCEPT, "multiple_url", "/multiple", id="multiple"),
    ],
)
async def test_the_confirmation_form_posts_the_links_fields_to_the_same_path(
    connector: App, action: Action, make_url: str, route: str
) -> None:
    tasks = await hold(connector, vm=1)
    signer = signer_for(connector)
    url = (
        signer.task_url(tasks[0], action, ALICE)
        if make_url == "task_url"
        else signer.multiple_url(tasks, action, ALICE)
    )

    [form] = Forms(assert_page(await fetch(connector, "GET", path_of(url)), 200)).forms

    assert form["method"] == "post"
    assert form["action"] == route
    assert form["hidden"] == params_of(url)


async def test_posting_the_confirmation_form_decides(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
    [form] = Forms(assert_page(await fetch(connector, "GET", path_of(url)), 200)).forms

    response = await fetch(connector, "POST", form["action"], data={**form["hidden"], "reason": "Looks fine"})

    assert "Accepted" in assert_page(response, 200)
    [stored] = await tasks_in_store(connector, [task])
    assert (stored.decision, stored.actor, stored.reason) == (DecisionState.ACCEPTED, ALICE, "Looks fine")


# --- POST decides ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "decision", "abiquo_action"),
    [
        pytest.param(Action.ACCEPT, DecisionState.ACCEPTED, "continue", id="accept"),
        pytest.param(Action.DECLINE, DecisionState.DECLINED, "cancel", id="decline"),
    ],
)
async def test_post_decides_and_abiquo_is_told(
    connector: App, action: Action, decision: DecisionState, abiquo_action: str
) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, action, ALICE)

    response = await fetch(connector, "POST", path_of(url), data={"reason": "Budget approved"})

    assert_page(response, 200)
    assert await decisions(connector, [task]) == [decision]
    await settled(connector)
    [call] = connector.decision_calls()
    assert (call["task_id"], call["action"]) == (task, abiquo_action)
    assert "Budget approved" in call["body"]


async def test_a_second_post_is_410_naming_who_decided_and_when(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    signer = signer_for(connector)
    await fetch(connector, "POST", path_of(signer.task_url(task, Action.ACCEPT, ALICE)))

    again = await fetch(connector, "POST", path_of(signer.task_url(task, Action.DECLINE, BOB)))

    page = html.unescape(assert_page(again, 410))
    [stored] = await tasks_in_store(connector, [task])
    assert stored.decided_at is not None
    assert f"Accepted by {ALICE} on {words.moment_words(stored.decided_at)}" in page
    assert await decisions(connector, [task]) == [DecisionState.ACCEPTED]


async def test_opening_a_link_of_a_decided_task_is_410(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    signer = signer_for(connector)
    await fetch(connector, "POST", path_of(signer.task_url(task, Action.DECLINE, ALICE)))

    page = html.unescape(
        assert_page(await fetch(connector, "GET", path_of(signer.task_url(task, Action.ACCEPT, BOB))), 410)
    )

    assert f"Declined by {ALICE}" in page
    assert "<form" not in page


async def test_an_unknown_task_with_a_valid_token_is_404(connector: App) -> None:
    url = signer_for(connector).task_url("no-such-task", Action.ACCEPT, ALICE)

    for method in ("GET", "POST"):
        assert "Unknown task" in assert_page(await fetch(connector, method, path_of(url)), 404)


# --- tokens ---------------------------------------------------------------------------------------------


def forged(connector: App, task: str) -> str:
    return LinkSigner("another-installation's-key", connector.settings.server.base_url, 3600).token(
        [task], Action.ACCEPT, ALICE
    )


def altered(connector: App, task: str) -> str:
    token = signer_for(connector).token([task], Action.ACCEPT, ALICE)
    return token[:-2] + ("AA" if not token.endswith("AA") else "BB")


BAD_TOKENS = {
    "missing": lambda connector, task: None,
    "empty": lambda connector, task: "",
    "garbage": lambda connector, task: "not-a-token",
    "forged": forged,
    "altered": altered,
    "expired": lambda connector, task: signer_for(connector).token(
        [task], Action.ACCEPT, ALICE, now=time.time() - 7200
    ),
    "other-task": lambda connector, task: signer_for(connector).token(["another-task"], Action.ACCEPT, ALICE),
    "other-action": lambda connector, task: signer_for(connector).token([task], Action.DECLINE, ALICE),
}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_a_bad_token_is_403_and_decides_nothing(connector: App, kind: str, method: str) -> None:
    [task] = await hold(connector, vm=1)
    token = BAD_TOKENS[kind](connector, task)
    params = {"task": task} if token is None else {"task": task, "token": token}

    response = await fetch(connector, method, "/accept", params=params)

    page = assert_page(response, 403)
    assert "This link cannot be used" in page
    assert "<form" not in page
    await settled(connector)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]
    assert connector.decision_calls() == []


async def test_an_expired_link_says_when_it_expired(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    token = BAD_TOKENS["expired"](connector, task)

    page = assert_page(await fetch(connector, "POST", "/accept", params={"task": task, "token": token}), 403)

    assert "expired on" in page


async def test_a_multiple_token_does_not_cover_more_tasks(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    url = signer_for(connector).multiple_url(tasks[:2], Action.ACCEPT, ALICE)
    params = {**params_of(url), "tasks": ",".join(tasks)}

    assert_page(await fetch(connector, "POST", "/multiple", params=params), 403)

    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3


async def test_a_single_task_token_does_not_open_another_route(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    accept = params_of(signer_for(connector).task_url(task, Action.ACCEPT, ALICE))

    assert_page(await fetch(connector, "POST", "/decline", params=accept), 403)

    assert await decisions(connector, [task]) == [DecisionState.PENDING]


def oddly_signed(task: str, expiry: object) -> str:
    """A token signed with the right key and salt whose expiry is not a number: only a bug could make
    one, but `verify` must still refuse it with a sentence."""
    serializer = URLSafeSerializer(TEST_SECRET_KEY, salt=links._SALT)
    return str(serializer.dumps({"h": links._digest([task]), "a": "accept", "p": ALICE, "e": expiry}))


ODD_EXPIRIES = [
    pytest.param("tomorrow", id="word"),
    pytest.param("1900000000", id="digits-as-text"),
    pytest.param(None, id="null"),
    pytest.param(10**20, id="beyond-any-date"),
]


@pytest.mark.parametrize("expiry", ODD_EXPIRIES)
async def test_a_signed_token_with_an_odd_expiry_is_403_and_decides_nothing(
    connector: App, expiry: object
) -> None:
    [task] = await hold(connector, vm=1)

    response = await fetch(
        connector, "POST", "/accept", params={"task": task, "token": oddly_signed(task, expiry)}
    )

    assert "This link cannot be used" in assert_page(response, 403)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


# --- /multiple ----------------------------------------------------------------------------------------


async def test_multiple_decides_every_pending_task(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    url = signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)

    page = assert_page(await fetch(connector, "POST", path_of(url)), 200)

    assert "Accepted 3 tasks." in page
    assert await decisions(connector, tasks) == [DecisionState.ACCEPTED] * 3


async def test_multiple_decides_the_rest_and_lists_those_already_decided(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    signer = signer_for(connector)
    await fetch(connector, "POST", path_of(signer.task_url(tasks[0], Action.DECLINE, BOB)))

    response = await fetch(connector, "POST", path_of(signer.multiple_url(tasks, Action.ACCEPT, ALICE)))

    page = html.unescape(assert_page(response, 200))
    assert "Accepted 2 tasks." in page
    assert "1 other task had already been decided" in page
    assert f"Declined by {BOB}" in page
    assert await decisions(connector, tasks) == [
        DecisionState.DECLINED,
        DecisionState.ACCEPTED,
        DecisionState.ACCEPTED,
    ]


async def test_multiple_with_every_task_decided_is_410(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    url = signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)
    await fetch(connector, "POST", path_of(url))

    again = await fetch(connector, "POST", path_of(url))

    assert "already decided" in assert_page(again, 410)


async def test_multiple_lists_unknown_task_ids(connector: App) -> None:
    tasks = await hold(connector, vm=1) + ["no-such-task"]
    url = signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)

    page = assert_page(await fetch(connector, "POST", path_of(url)), 200)

    assert "Unknown task id, ignored: no-such-task" in page
    assert await decisions(connector, tasks[:1]) == [DecisionState.ACCEPTED]


# --- /multiple?notice=: the "accept all" of an approval email ---------------------------------------------


async def approval_email_of(connector: App, tasks: list[str], recipient: str) -> int:
    """The id of the approval email triage queued for `recipient` about these tasks (its notification)."""
    [request_id] = {task.request_id for task in await tasks_in_store(connector, tasks)}
    async with await Store.open(connector.settings.database.url, migrate=False) as store:
        for _ in range(400):
            sent = await store.notifications(request_id)
            if found := [n.id for n in sent if n.kind == "approval" and n.recipient == recipient]:
                [email] = found
                return email
            await asyncio.sleep(0.05)
    raise AssertionError(f"no approval email for {recipient} after 20 s")


async def test_an_emails_accept_all_link_decides_every_task_of_that_email(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    email = await approval_email_of(connector, tasks, "alice.smith@acme.example")
    url = signer_for(connector).notice_url(email, Action.ACCEPT, ALICE)

    page = assert_page(await fetch(connector, "POST", path_of(url)), 200)

    assert "Accepted 3 tasks." in page
    assert await decisions(connector, tasks) == [DecisionState.ACCEPTED] * 3


async def test_an_emails_accept_all_link_asks_first_and_its_form_carries_the_email(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    email = await approval_email_of(connector, tasks, "alice.smith@acme.example")
    url = signer_for(connector).notice_url(email, Action.DECLINE, ALICE)

    [form] = Forms(assert_page(await fetch(connector, "GET", path_of(url)), 200)).forms
    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3
    response = await fetch(connector, "POST", form["action"], data=form["hidden"])

    assert form["hidden"]["notice"] == str(email) and "tasks" not in form["hidden"]
    assert "Declined 3 tasks." in assert_page(response, 200)


async def test_an_accept_all_link_made_for_another_approvers_email_is_403(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    bobs = await approval_email_of(connector, tasks, "bob.jones@acme.example")
    url = signer_for(connector).notice_url(bobs, Action.ACCEPT, ALICE)

    assert "another person" in assert_page(await fetch(connector, "POST", path_of(url)), 403)
    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3


async def test_an_accept_all_link_for_another_email_does_not_verify(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    email = await approval_email_of(connector, tasks, "alice.smith@acme.example")
    params = params_of(signer_for(connector).notice_url(email, Action.ACCEPT, ALICE))

    response = await fetch(connector, "POST", "/multiple", params={**params, "notice": str(email + 1)})

    assert "other tasks" in assert_page(response, 403)
    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3


async def test_a_task_links_token_does_not_open_an_emails_accept_all(connector: App) -> None:
    tasks = await hold(connector, vapp=1)
    email = await approval_email_of(connector, tasks, "alice.smith@acme.example")
    token = signer_for(connector).token(tasks, Action.ACCEPT, ALICE)

    response = await fetch(
        connector, "POST", "/multiple", params={"action": "accept", "notice": str(email), "token": token}
    )

    assert "other tasks" in assert_page(response, 403)
    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3


async def test_an_accept_all_link_of_an_email_we_never_sent_is_404(connector: App) -> None:
    url = signer_for(connector).notice_url(999_999, Action.ACCEPT, ALICE)

    assert "no record of the email" in assert_page(await fetch(connector, "GET", path_of(url)), 404)


@pytest.mark.parametrize("notice", ["", "abc", "-1", "1e3", "\u0661", "9" * 19])
async def test_an_accept_all_link_whose_email_is_not_a_number_is_400(connector: App, notice: str) -> None:
    params = {"action": "accept", "notice": notice, "token": "x"}

    assert "cannot be read" in assert_page(await fetch(connector, "GET", "/multiple", params=params), 400)


@pytest.mark.parametrize("word", ["cancel", "decline", "CANCEL"])
async def test_multiple_cancel_and_decline_both_decline(connector: App, word: str) -> None:
    tasks = await hold(connector, vapp=1)
    params = {**params_of(signer_for(connector).multiple_url(tasks, Action.DECLINE, ALICE)), "action": word}

    assert "Declined 3 tasks." in assert_page(await fetch(connector, "POST", "/multiple", params=params), 200)

    assert await decisions(connector, tasks) == [DecisionState.DECLINED] * 3


@pytest.mark.parametrize("word", ["approve", "", "continue"])
async def test_multiple_with_an_unknown_action_is_400(connector: App, word: str) -> None:
    tasks = await hold(connector, vapp=1)
    params = {**params_of(signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)), "action": word}

    assert "accept or cancel" in assert_page(await fetch(connector, "POST", "/multiple", params=params), 400)

    assert await decisions(connector, tasks) == [DecisionState.PENDING] * 3


@pytest.mark.parametrize(
    ("route", "params"),
    [
        pytest.param("/accept", {}, id="accept-without-task"),
        pytest.param("/decline", {"task": "  ", "token": "x"}, id="decline-with-blank-task"),
        pytest.param(
            "/multiple", {"action": "accept", "tasks": ",,", "token": "x"}, id="multiple-without-tasks"
        ),
    ],
)
async def test_a_link_naming_no_task_is_400(connector: App, route: str, params: dict[str, str]) -> None:
    assert "names no task" in assert_page(await fetch(connector, "GET", route, params=params), 400)


# --- links.one_click -------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def one_click_connector(app_factory: AppFactory, migrated_database_url: str) -> AsyncIterator[App]:
    async with app_factory(database_url=migrated_database_url, links={"one_click": True}) as running:
        yield running


async def test_with_one_click_get_decides_at_once(one_click_connector: App) -> None:
    [task] = await hold(one_click_connector, vm=1)
    url = signer_for(one_click_connector).task_url(task, Action.DECLINE, ALICE)

    assert "Declined" in assert_page(await fetch(one_click_connector, "GET", path_of(url)), 200)

    assert await decisions(one_click_connector, [task]) == [DecisionState.DECLINED]


async def test_with_one_click_a_bad_token_still_decides_nothing(one_click_connector: App) -> None:
    [task] = await hold(one_click_connector, vm=1)

    assert_page(await fetch(one_click_connector, "GET", "/accept", params={"task": task, "token": "x"}), 403)

    assert await decisions(one_click_connector, [task]) == [DecisionState.PENDING]


async def test_with_one_click_head_decides_nothing(one_click_connector: App) -> None:
    [task] = await hold(one_click_connector, vm=1)
    url = signer_for(one_click_connector).task_url(task, Action.ACCEPT, ALICE)

    assert (await fetch(one_click_connector, "HEAD", path_of(url))).status_code == 200

    assert await decisions(one_click_connector, [task]) == [DecisionState.PENDING]


# --- another site cannot make an approver's browser decide ----------------------------------------------


@pytest_asyncio.fixture
async def attacked(app_factory: AppFactory, migrated_database_url: str) -> AsyncIterator[App]:
    """The app in the default configuration on each database: every attack is tried on both."""
    async with app_factory(database_url=migrated_database_url) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},  # a form on another site, posted by a modern browser
        {"sec-fetch-site": "same-site"},  # another host of the same site is still not this one
        {"origin": "https://attacker.example"},  # a browser that sends Origin but not Sec-Fetch-Site
    ],
    ids=["cross-site", "same-site", "foreign-origin"],
)
async def test_a_cross_site_post_is_403_and_decides_nothing(attacked: App, headers: dict[str, str]) -> None:
    [task] = await hold(attacked, vm=1)
    url = signer_for(attacked).task_url(task, Action.ACCEPT, ALICE)

    response = await fetch(attacked, "POST", path_of(url), headers=headers)

    assert "another web site" in assert_page(response, 403)
    assert await decisions(attacked, [task]) == [DecisionState.PENDING]


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "same-origin", "origin": "null"},  # our own form under no-referrer
        {"sec-fetch-site": "none"},  # a URL typed or pasted into the browser
        {},  # a client that sends neither header
    ],
    ids=["own-form", "typed", "no-headers"],
)
async def test_a_post_from_our_own_page_decides(connector: App, headers: dict[str, str]) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    assert_page(await fetch(connector, "POST", path_of(url), headers=headers), 200)
    assert await decisions(connector, [task]) == [DecisionState.ACCEPTED]


# --- an approver who no longer approves ---------------------------------------------------------------------


async def test_an_approver_who_lost_the_role_cannot_decide_with_their_link(attacked: App) -> None:
    [task] = await hold(attacked, vm=1)
    url = signer_for(attacked).task_url(task, Action.ACCEPT, ALICE)
    attacked.simulator.simulator.change_role(10, "USER")  # Alice, in Abiquo's Users view

    text = assert_page(await fetch(attacked, "POST", path_of(url)), 403)

    assert "no longer an approver" in text and "ENTERPRISE_ADMIN" in text
    assert await decisions(attacked, [task]) == [DecisionState.PENDING]
    await settled(attacked)
    assert attacked.decision_calls() == []


async def test_another_approver_still_decides_after_one_lost_the_role(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    connector.simulator.simulator.change_role(10, "USER")
    url = signer_for(connector).task_url(task, Action.ACCEPT, BOB)

    assert_page(await fetch(connector, "POST", path_of(url)), 200)
    assert await decisions(connector, [task]) == [DecisionState.ACCEPTED]


async def test_a_decision_while_abiquo_cannot_confirm_the_approver_is_503_and_decides_nothing(
    connector: App,
) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
        fault = {"count": 100, "status": 503, "match": "/users"}
        assert (await client.post(f"{connector.simulator.url}/_sim/faults", json=fault)).status_code == 201

    text = assert_page(await fetch(connector, "POST", path_of(url)), 503)

    assert "Abiquo cannot be reached" in text
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


# --- the reason --------------------------------------------------------------------------------------------


async def test_a_reason_at_the_textareas_limit_is_kept_whole(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    # Browsers count a line break as one character against maxlength but send it as CRLF.
    reason = ("x" * 99 + "\r\n") * 10
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    assert_page(await fetch(connector, "POST", path_of(url), data={"reason": reason}), 200)

    [stored] = await tasks_in_store(connector, [task])
    assert stored.reason == reason.replace("\r\n", "\n").strip()


async def test_a_reason_longer_than_the_textarea_allows_is_400_and_decides_nothing(
    connector: App,
) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    response = await fetch(connector, "POST", path_of(url), data={"reason": "x" * 1001})

    assert "1,000 characters" in assert_page(response, 400)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


# --- the form body --------------------------------------------------------------------------------------


async def test_a_form_body_over_64_kib_is_413_and_decides_nothing(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    response = await fetch(connector, "POST", path_of(url), data={"padding": "x" * 70_000})

    assert "more than 64 KiB" in assert_page(response, 413)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


async def test_a_chunked_form_body_over_64_kib_is_413_and_decides_nothing(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"reason="
        for _ in range(100):
            yield b"x" * 1024

    response = await fetch(
        connector,
        "POST",
        path_of(url),
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert "content-length" not in response.request.headers
    assert_page(response, 413)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


async def test_a_multipart_post_is_415_and_decides_nothing(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    fields = params_of(signer_for(connector).task_url(task, Action.ACCEPT, ALICE))

    response = await fetch(connector, "POST", "/accept", files={"reason": (None, "ok")}, data=fields)

    assert "application/x-www-form-urlencoded" in assert_page(response, 415)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


async def test_a_form_with_many_fields_is_400_and_decides_nothing(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    response = await fetch(connector, "POST", path_of(url), data={f"f{n}": "x" for n in range(50)})

    assert_page(response, 400)
    assert await decisions(connector, [task]) == [DecisionState.PENDING]


# --- escaping ------------------------------------------------------------------------------------------


async def triaged(connector: App, **request: Any) -> list[str]:
    """Held tasks whose request triage has enriched (so pages show the VMs' names from Abiquo)."""
    tasks = await hold(connector, **request)
    await connector.inbox.wait_for(1)
    return tasks


RAW_NAME = 'db <primary> & "co"'


def assert_name_escaped(page: str) -> None:
    assert "db &lt;primary&gt; &amp; &#34;co&#34;" in page
    assert "<primary>" not in page


async def test_the_confirmation_page_escapes_a_vm_name(connector: App) -> None:
    [task] = await triaged(connector, vm=2)
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    assert_name_escaped(assert_page(await fetch(connector, "GET", path_of(url)), 200))


async def test_the_done_and_already_decided_pages_escape_a_vm_name(connector: App) -> None:
    [task] = await triaged(connector, vm=2)
    url = signer_for(connector).task_url(task, Action.DECLINE, ALICE)

    assert_name_escaped(assert_page(await fetch(connector, "POST", path_of(url)), 200))
    assert_name_escaped(assert_page(await fetch(connector, "POST", path_of(url)), 410))


async def test_the_multiple_pages_escape_a_vm_name(connector: App) -> None:
    tasks = await triaged(connector, vapp=1)
    url = signer_for(connector).multiple_url(tasks, Action.ACCEPT, ALICE)

    assert_name_escaped(assert_page(await fetch(connector, "GET", path_of(url)), 200))
    assert_name_escaped(assert_page(await fetch(connector, "POST", path_of(url)), 200))


async def test_the_approver_is_escaped_on_the_confirmation_page(connector: App) -> None:
    [task] = await hold(connector, vm=1)
    url = signer_for(connector).task_url(task, Action.ACCEPT, '<img src=x onerror="alert(1)">')

    page = assert_page(await fetch(connector, "GET", path_of(url)), 200)

    assert "<img" not in page
    assert "&lt;img src=x" in page


SCRIPT = "<script>alert(1)</script>"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    ("route", "params"),
    [
        pytest.param("/accept", {"task": SCRIPT, "token": "x"}, id="accept-task-bad-token"),
        pytest.param("/decline", {"task": SCRIPT}, id="decline-task-no-token"),
        pytest.param(
            "/multiple", {"action": "accept", "tasks": f"a,{SCRIPT}", "token": SCRIPT}, id="multiple-tasks"
        ),
        pytest.param("/multiple", {"action": SCRIPT, "tasks": "a", "token": "x"}, id="multiple-action"),
    ],
)
async def test_a_script_in_a_parameter_is_never_reflected_raw(
    connector: App, route: str, params: dict[str, str], method: str
) -> None:
    response = await fetch(connector, method, route, params=params)

    assert response.status_code in {400, 403}
    assert "<script" not in response.text.lower()


@pytest.mark.parametrize("route", ["/accept", "/multiple"])
async def test_a_script_in_a_validly_signed_task_id_is_never_reflected_raw(
    connector: App, route: str
) -> None:
    signer = signer_for(connector)
    [task] = await hold(connector, vm=1)
    if route == "/accept":
        url = signer.task_url(SCRIPT, Action.ACCEPT, ALICE)
    else:
        url = signer.multiple_url([task, SCRIPT], Action.ACCEPT, ALICE)

    for method in ("GET", "POST"):
        response = await fetch(connector, method, path_of(url))
        assert response.status_code in {200, 404}, response.text
        assert "<script" not in response.text.lower()


# --- the store in trouble ---------------------------------------------------------------------------------


def sqlite_path(connector: App) -> str:
    path = make_url(connector.settings.database.url).database
    assert path is not None
    return path


async def test_a_snapshot_the_page_cannot_read_still_lets_the_approver_decide(connector: App) -> None:
    [task] = await triaged(connector, vm=1)
    await settled(connector)
    with sqlite3.connect(sqlite_path(connector)) as db:  # as an older or newer version might have left it
        db.execute("UPDATE requests SET details = ?", ('{"written_by": "another version"}',))
    url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)

    assert "web-01" in assert_page(await fetch(connector, "GET", path_of(url)), 200)
    assert_page(await fetch(connector, "POST", path_of(url)), 200)
    assert await decisions(connector, [task]) == [DecisionState.ACCEPTED]


async def test_a_decision_while_another_process_locks_the_database_is_503_and_decides_nothing(
    app_factory: AppFactory,
) -> None:
    async with app_factory(database={"busy_timeout": 0.3}) as connector:  # waits that long, then 503
        [task] = await hold(connector, vm=1)
        await settled(connector)
        url = signer_for(connector).task_url(task, Action.ACCEPT, ALICE)
        holder = sqlite3.connect(sqlite_path(connector), isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            response = await fetch(connector, "POST", path_of(url))
        finally:
            holder.close()

        page = assert_page(response, 503)
        assert "database is not available" in page
        assert sqlite_path(connector) not in page
        assert await decisions(connector, [task]) == [DecisionState.PENDING]
