"""The approval loop end to end, as people live it: Abiquo holds a deploy, the approvers get an email,
one of them follows a link, confirms on the page, Abiquo is told, the requester is told.

Real servers throughout: the connector (uvicorn + its worker), the simulator as Abiquo, aiosmtpd as
the mail relay. Links come out of the received emails and are followed the way a browser does.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.store.records import NotificationStatus
from tests.conftest import CLIENT_TLS, Connector, ConnectorFactory
from tests.loop_support import (
    all_link,
    confirm,
    html_links,
    open_confirmation,
    open_store,
    page_text,
    recipients,
    submit,
    task_link,
    text_links,
    to,
    wait_for_calls,
    wait_for_task,
    wait_until_idle,
)

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
ZOE = "zoe.zimmermann@acme.example"
DAN = "dan.custom@acme.example"
JOHN = "john.doe@acme.example"
ACME_APPROVERS = sorted([ALICE, BOB, ZOE])

#: Abiquo's two callback dialects, each with the API generation that sends it.
DIALECTS = [
    pytest.param("json", "3.x", id="json-3.x"),
    pytest.param("xml", "2.6", id="xml-2.6"),
]


@pytest.fixture
def connector_on(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector on each database: SQLite, and PostgreSQL when AWF_TEST_POSTGRES_URL is set."""
    with connector_factory(database_url=migrated_database_url) as running:
        yield running


def speak(connector: Connector, mode: str) -> None:
    """Make the simulator imitate one API generation (the callback dialect is chosen per request)."""
    connector.simulator.simulator.update_settings({"mode": mode})


@pytest.mark.parametrize(("style", "mode"), DIALECTS)
async def test_vm_deploy_is_approved_by_email_and_continued_once(
    connector_on: Connector, style: str, mode: str
) -> None:
    connector = connector_on
    speak(connector, mode)
    held = await connector.request(action="deploy", vm=1, style=style)
    task_id = held["tasks"][0]["task_id"]

    # Every ENTERPRISE_ADMIN with an email gets one email, Zoë from the users list's second page
    # included; Carol (no email), Dan (another role) and the requester get none.
    approvals = await connector.inbox.wait_for(3)
    assert recipients(approvals) == ACME_APPROVERS
    assert DAN not in recipients(approvals) and JOHN not in recipients(approvals)

    alice = to(approvals, ALICE)[0]
    text = alice.text() or ""
    assert "Hello Alice Smith" in text
    assert "John Doe (jdoe) <john.doe@acme.example>" in text
    assert "Enterprise:          Acme & Söhne <Ltd>" in text
    assert "Virtual datacenter:  Production <EU> (Barcelona DC)" in text
    assert "Virtual appliance:   Web tier & cache" in text
    assert "* web-01 (Deploy)" in text
    assert "CPU: 2   RAM: 4 GB" in text
    assert "Disks: 20 GB" in text
    assert "Volumes: none" in text
    html = alice.html() or ""
    assert "Acme &amp; Söhne &lt;Ltd&gt;" in html and "Production &lt;EU&gt; (Barcelona DC)" in html
    shown = page_text(html)
    assert "John Doe (jdoe)" in shown and "web-01" in shown and "4 GB" in shown and "20 GB" in shown
    # The HTML buttons and the text part carry the same two links: accept and decline this task.
    assert [link.url for link in html_links(alice)] == [link.url for link in text_links(alice)]
    assert [(link.path, link.params["task"]) for link in html_links(alice)] == [
        ("/accept", task_id),
        ("/decline", task_id),
    ]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        link = task_link(alice, "/accept", task_id)
        page, form = await open_confirmation(browser, link)
        assert "Accept the deploy of web-01?" in page_text(page.text)
        assert "Waiting for a decision" in page_text(page.text)
        # Opening the link decided nothing.
        pending = await store.get_task(task_id)
        assert pending is not None and pending.decision is DecisionState.PENDING and pending.delivery is None
        assert connector.decision_calls() == []

        done = await submit(browser, link.url, form, reason="Capacity checked — go ahead")
        assert done.status_code == 200
        assert "Accepted 1 task." in page_text(done.text)

        [call] = await wait_for_calls(connector, 1)
        # The requester's outcome, and the two other approvers' "settled" emails (test_loop_settled.py).
        [outcome] = to(await connector.inbox.wait_for(6), JOHN)
        await wait_until_idle(store)
        task = await store.get_task(task_id)
        request = await store.get_request(task.request_id) if task else None

    assert request is not None and sorted(request.approvers or ()) == ACME_APPROVERS
    assert call["task_id"] == task_id and call["action"] == "continue" and call["status"] == 204
    assert call["content_type"] == "text/plain; charset=utf-8"
    assert "Capacity checked — go ahead" in call["body"]
    assert "Alice Smith <alice.smith@acme.example>" in call["body"]
    assert connector.decision_calls() == [call]
    abiquo_task = connector.simulator.simulator.task(task_id)
    assert abiquo_task.state.value == "FINISHED_SUCCESSFULLY"

    assert task is not None
    assert task.decision is DecisionState.ACCEPTED and task.decided_by is DecidedBy.APPROVER
    assert task.actor == "Alice Smith <alice.smith@acme.example>" and task.channel is Channel.EMAIL
    assert task.reason == "Capacity checked — go ahead"
    assert task.delivery is DeliveryState.DELIVERED and task.delivery_attempts == 1

    # The requester gets one email: accepted, by whom, and why; Bob and Zoë are told it is settled.
    assert outcome.rcpt_tos == (JOHN,)
    assert "accepted" in outcome.subject
    outcome_text = outcome.text() or ""
    assert "* web-01 (Deploy): Accepted by Alice Smith <alice.smith@acme.example>" in outcome_text
    assert "Reason: Capacity checked — go ahead" in outcome_text
    assert recipients(connector.inbox.messages) == sorted([*ACME_APPROVERS, BOB, JOHN, ZOE])


@pytest.mark.parametrize(("style", "mode"), DIALECTS)
async def test_accept_all_continues_every_vm_of_a_vapp_once(
    connector_on: Connector, style: str, mode: str
) -> None:
    # On PostgreSQL the three deliveries used to settle at once, each seeing the others still queued,
    # and the requester was never told.
    connector = connector_on
    speak(connector, mode)
    held = await connector.request(action="deploy", vapp=1, style=style)
    task_ids = [t["task_id"] for t in held["tasks"]]
    assert len(task_ids) == 3

    approvals = await connector.inbox.wait_for(3)
    bob = to(approvals, BOB)[0]
    # One email per approver for the whole vApp: a pair of links per VM, and one pair for all of them.
    assert sorted(link.params["task"] for link in html_links(bob) if link.path == "/accept") == sorted(
        task_ids
    )
    accept_all = all_link(bob, "accept")
    # It names the email, whose three tasks the store keeps, not the tasks: short for any vApp.
    assert set(accept_all.params) == {"action", "notice", "token"} and len(accept_all.url) < 300

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        page, form = await open_confirmation(browser, accept_all)
        assert "Accept the deploy of 3 virtual machines?" in page_text(page.text)
        done = await submit(browser, accept_all.url, form, reason="all three")
        assert done.status_code == 200
        assert "Accepted 3 tasks." in page_text(done.text)

        calls = await wait_for_calls(connector, 3)
        messages = await connector.inbox.wait_for(6)  # and Alice's and Zoë's "settled" emails
        await wait_until_idle(store)
        tasks = [await store.get_task(t) for t in task_ids]

    assert sorted(c["task_id"] for c in calls) == sorted(task_ids)
    assert {(c["action"], c["status"]) for c in calls} == {("continue", 204)}
    assert len(connector.decision_calls()) == 3
    assert all(t is not None and t.delivery is DeliveryState.DELIVERED for t in tasks)
    assert all(t is not None and t.actor == "Bob Jones <bob.jones@acme.example>" for t in tasks)

    [outcome] = to(messages, JOHN)
    assert len(connector.inbox.messages) == 6
    text = outcome.text() or ""
    assert "3 of 3 tasks of your request were accepted." in text
    for name in ("web-01", 'db <primary> & "co"', "cache-03"):
        assert f"* {name} (Deploy): Accepted by Bob Jones <bob.jones@acme.example>" in text


@pytest.mark.parametrize(("style", "mode"), DIALECTS)
async def test_per_vm_decisions_reach_abiquo_and_the_requester_hears_once_all_are_made(
    connector: Connector, style: str, mode: str
) -> None:
    speak(connector, mode)
    held = await connector.request(action="deploy", vapp=1, style=style)
    first, second, third = (t["task_id"] for t in held["tasks"])
    approvals = await connector.inbox.wait_for(3)
    alice, zoe = to(approvals, ALICE)[0], to(approvals, ZOE)[0]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, task_link(alice, "/accept", first))).status_code == 200
        declined = await confirm(browser, task_link(zoe, "/decline", second), reason="no DB this quarter")
        assert declined.status_code == 200
        assert "Declined 1 task." in page_text(declined.text)
        await wait_for_calls(connector, 2)
        await wait_until_idle(store)
        # Two of three decided and delivered: the requester is not told anything yet.
        assert len(connector.inbox.messages) == 3
        [request_id] = {t.request_id for t in await store.get_tasks([first])}
        assert [n.kind for n in await store.notifications(request_id)] == ["approval"] * 3

        assert (await confirm(browser, task_link(alice, "/accept", third))).status_code == 200
        calls = await wait_for_calls(connector, 3)
        messages = await connector.inbox.wait_for(5)  # and Bob's "settled" email: he decided none
        await wait_until_idle(store)
        tasks = {t.task_id: t for t in await store.tasks_of_request(request_id)}

    by_task = {c["task_id"]: c for c in calls}
    assert len(connector.decision_calls()) == 3
    assert by_task[first]["action"] == "continue" and by_task[third]["action"] == "continue"
    assert by_task[second]["action"] == "cancel" and by_task[second]["status"] == 204
    assert "no DB this quarter" in by_task[second]["body"]
    assert connector.simulator.simulator.task(second).state.value == "CANCELLED"
    assert tasks[second].decision is DecisionState.DECLINED and tasks[second].reason == "no DB this quarter"
    assert all(t.delivery is DeliveryState.DELIVERED for t in tasks.values())

    [outcome] = to(messages, JOHN)
    assert len(connector.inbox.messages) == 5
    assert "partly accepted" in outcome.subject
    text = outcome.text() or ""
    assert "2 of 3 tasks of your request were accepted." in text
    assert "* web-01 (Deploy): Accepted by Alice Smith <alice.smith@acme.example>" in text
    assert '* db <primary> & "co" (Deploy): Declined by Zoë Zimmermann <zoe.zimmermann@acme.example>' in text
    assert "Reason: no DB this quarter" in text
    assert "* cache-03 (Deploy): Accepted by Alice Smith <alice.smith@acme.example>" in text


@pytest.mark.parametrize(("style", "mode"), DIALECTS)
async def test_a_callback_sent_twice_is_stored_once_and_emailed_once(
    connector: Connector, style: str, mode: str
) -> None:
    speak(connector, mode)
    held = await connector.request(action="deploy", vm=1, style=style)
    task_id = held["tasks"][0]["task_id"]
    await connector.inbox.wait_for(3)

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as client, open_store(connector) as store:
        task = await store.get_task(task_id)
        assert task is not None
        request = await store.get_request(task.request_id)
        assert request is not None
        again = await client.post(
            f"{connector.url}/callback",
            content=request.body.encode("utf-8"),
            headers={"content-type": request.content_type or ""},
        )
        assert again.status_code == 200
        assert again.json() == {"request_id": None, "tasks": [], "already_known": [task_id]}
        await wait_until_idle(store)
        stored = await store.list_tasks()
        notifications = await store.notifications(task.request_id)
        received = [a for a in await store.audit_log() if a.action == "received"]

    assert [t.task_id for t in stored] == [task_id]
    assert len(received) == 1
    assert sorted(n.recipient for n in notifications) == ACME_APPROVERS
    assert all(n.status is NotificationStatus.SENT for n in notifications)
    assert recipients(connector.inbox.messages) == ACME_APPROVERS


async def test_accept_all_after_one_vm_was_declined_accepts_only_the_rest(connector: Connector) -> None:
    held = await connector.request(action="deploy", vapp=1)
    first, second, third = (t["task_id"] for t in held["tasks"])
    approvals = await connector.inbox.wait_for(3)
    alice, bob = to(approvals, ALICE)[0], to(approvals, BOB)[0]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (
            await confirm(browser, task_link(bob, "/decline", second), reason="too big")
        ).status_code == 200
        page, form = await open_confirmation(browser, all_link(alice, "accept"))
        assert "Accept the deploy of 2 virtual machines?" in page_text(page.text)
        assert "1 of these tasks was already decided" in page_text(page.text)
        done = await submit(browser, all_link(alice, "accept").url, form)
        assert done.status_code == 200
        assert "Accepted 2 tasks." in page_text(done.text)
        assert "1 other task had already been decided" in page_text(done.text)

        calls = await wait_for_calls(connector, 3)
        messages = await connector.inbox.wait_for(5)  # and Zoë's "settled" email
        await wait_until_idle(store)
        tasks = {t.task_id: t for t in await store.get_tasks([first, second, third])}

    assert sorted((c["task_id"], c["action"]) for c in calls) == sorted(
        [(first, "continue"), (second, "cancel"), (third, "continue")]
    )
    assert len(connector.decision_calls()) == 3
    assert tasks[second].decision is DecisionState.DECLINED and tasks[second].actor == (
        "Bob Jones <bob.jones@acme.example>"
    )
    assert tasks[first].actor == tasks[third].actor == "Alice Smith <alice.smith@acme.example>"
    [outcome] = to(messages, JOHN)
    assert "2 of 3 tasks of your request were accepted." in (outcome.text() or "")
    assert len(connector.inbox.messages) == 5


async def test_a_requester_without_an_email_address_is_not_emailed_and_the_audit_says_so(
    connector: Connector,
) -> None:
    held = await connector.request(action="deploy", vm=1, user=21)  # Émile Zoëga has no email
    task_id = held["tasks"][0]["task_id"]
    approvals = await connector.inbox.wait_for(3)
    assert "Émile Zoëga (emile)" in (approvals[0].text() or "")

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, task_link(approvals[0], "/accept", task_id))).status_code == 200
        await wait_for_calls(connector, 1)
        task = await wait_for_task(
            store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
        )
        await wait_until_idle(store)
        audit = await store.audit_log(request_id=task.request_id)
        notifications = await store.notifications(task.request_id)

    assert [a.action for a in audit].count("requester_not_told") == 1
    assert [n.kind for n in notifications] == ["approval"] * 3 + ["settled"] * 2
    # The approvers: asked, and then (but the one who decided) told it is settled; the requester never.
    others = [a for a in ACME_APPROVERS if a not in approvals[0].rcpt_tos]
    assert recipients(connector.inbox.messages) == sorted([*ACME_APPROVERS, *others])


async def test_every_job_of_the_loop_gets_the_configured_number_of_attempts(connector: Connector) -> None:
    held = await connector.request(action="deploy", vm=1)
    [approval, *_] = await connector.inbox.wait_for(3)
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        accept = next(link for link in html_links(approval) if link.path == "/accept")
        _, form = await open_confirmation(browser, accept)
        await submit(browser, accept.url, form, reason="ok")
        await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        jobs = await store.list_jobs(limit=100)

    assert held["tasks"]
    assert {job.kind for job in jobs} == {
        "triage",
        "send_approval",
        "deliver",
        "notify_requester",
        "notify_settled",
    }
    assert {job.max_attempts for job in jobs} == {connector.settings.worker.max_attempts}
