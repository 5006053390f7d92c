"""Everyone is told when a request is settled: once every task of it is decided, each approver who was
emailed about it and decided none of it gets one short "settled" email saying who settled it, when,
how and why; whoever decided gets none, and a request the policy decided (nobody asked) sends none.
A link of an approval email opened afterwards (410) tells the same story.

Real servers throughout, as in test_loop_approval.py; the 410 pages use the in-process app."""

from __future__ import annotations

import html
from collections.abc import Iterator

import httpx2
import pytest

from abiquo_workflow.domain import Action
from abiquo_workflow.mail import words
from abiquo_workflow.mail.inbox import ReceivedMessage
from abiquo_workflow.store.records import NotificationStatus
from tests.conftest import CLIENT_TLS, App, Connector, ConnectorFactory
from tests.loop_support import (
    all_link,
    confirm,
    open_store,
    page_text,
    task_link,
    to,
    wait_for_calls,
    wait_until_idle,
)
from tests.test_web_decisions import assert_page, fetch, hold, path_of, settled, signer_for

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
ZOE = "zoe.zimmermann@acme.example"
JOHN = "john.doe@acme.example"
PETER = "peter.user@initech.example"


@pytest.fixture
def connector_on(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector on each database: SQLite, and PostgreSQL when AWF_TEST_POSTGRES_URL is set."""
    with connector_factory(database_url=migrated_database_url) as running:
        yield running


def settled_emails(connector: Connector) -> list[ReceivedMessage]:
    return [m for m in connector.inbox.messages if m.subject.startswith("Settled: ")]


async def test_the_other_approvers_get_one_settled_email_each_and_the_decider_none(
    connector: Connector,
) -> None:
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    alice = to(await connector.inbox.wait_for(3), ALICE)[0]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        answer = await confirm(browser, task_link(alice, "/accept", task_id), reason="Capacity checked")
        assert answer.status_code == 200
        await wait_for_calls(connector, 1)
        await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        task = await store.get_task(task_id)
        assert task is not None and task.decided_at is not None
        notifications = await store.notifications(task.request_id)

    told = settled_emails(connector)
    assert sorted(address for m in told for address in m.rcpt_tos) == [BOB, ZOE]
    assert to(told, ALICE) == [] and to(told, JOHN) == []
    [bob] = to(told, BOB)
    assert bob.subject == 'Settled: deploy of "web-01" for John Doe'
    text = bob.text() or ""
    assert f"Accepted by Alice Smith on {words.moment_words(task.decided_at)}." in text
    assert "Reason given: “Capacity checked”" in text
    assert "/accept" not in text and "/accept" not in (bob.html() or "")  # nothing left to act on
    assert "Accepted by Alice Smith" in page_text(bob.html() or "")
    settled_rows = [n for n in notifications if n.kind == "settled"]
    assert sorted(n.recipient for n in settled_rows) == [BOB, ZOE]
    assert all(n.status is NotificationStatus.SENT for n in settled_rows)


async def test_accept_all_tells_each_other_approver_once_and_the_decider_never(
    connector_on: Connector,
) -> None:
    # Three deliveries settle at once; each sees the request decided and tries to tell the others.
    connector = connector_on
    held = await connector.request(action="deploy", vapp=1)
    assert len(held["tasks"]) == 3
    bob = to(await connector.inbox.wait_for(3), BOB)[0]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, all_link(bob, "accept"), reason="all three")).status_code == 200
        await wait_for_calls(connector, 3)
        await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        [task] = await store.get_tasks([held["tasks"][0]["task_id"]])
        decided_at = max(t.decided_at for t in await store.tasks_of_request(task.request_id) if t.decided_at)

    told = settled_emails(connector)
    assert sorted(address for m in told for address in m.rcpt_tos) == [ALICE, ZOE]
    assert len(connector.inbox.messages) == 6  # 3 approvals, 2 settled, the requester's outcome
    [alice] = to(told, ALICE)
    assert alice.subject == 'Settled: deploy of "Web tier & cache" (3 VMs) for John Doe'
    text = alice.text() or ""
    assert f"Settled by Bob Jones on {words.moment_words(decided_at)} — accepted 3 of 3." in text
    assert "Reason given: “all three”" in text


async def test_every_approver_who_decided_part_of_a_request_is_left_out_and_named(
    connector: Connector,
) -> None:
    held = await connector.request(action="deploy", vapp=1)
    first, second, third = (t["task_id"] for t in held["tasks"])
    approvals = await connector.inbox.wait_for(3)
    alice, zoe = to(approvals, ALICE)[0], to(approvals, ZOE)[0]

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        assert (await confirm(browser, task_link(alice, "/accept", first))).status_code == 200
        declined = await confirm(browser, task_link(zoe, "/decline", second), reason="no DB this quarter")
        assert declined.status_code == 200
        await wait_for_calls(connector, 2)
        await wait_until_idle(store)
        assert settled_emails(connector) == []  # one task is still waiting: nothing is settled
        assert (await confirm(browser, task_link(alice, "/accept", third))).status_code == 200
        await wait_for_calls(connector, 3)
        await connector.inbox.wait_for(5)
        await wait_until_idle(store)

    [told] = settled_emails(connector)
    assert told.rcpt_tos == (BOB,)
    text = told.text() or ""
    assert "— accepted 2 of 3, declined 1 (Alice Smith accepted 2, Zoë Zimmermann declined 1)." in text
    assert "Reason given by Zoë Zimmermann: “no DB this quarter”" in text


async def test_a_request_decided_by_policy_sends_no_settled_email(connector: Connector) -> None:
    held = await connector.request(action="deploy", vm=7)  # Initech has no approver: cancelled at once
    task_id = held["tasks"][0]["task_id"]

    async with open_store(connector) as store:
        await wait_for_calls(connector, 1)
        [outcome] = await connector.inbox.wait_for(1)
        await wait_until_idle(store)
        task = await store.get_task(task_id)
        assert task is not None
        notifications = await store.notifications(task.request_id)
        audit = await store.audit_log(request_id=task.request_id)

    assert outcome.rcpt_tos == (PETER,)
    assert connector.inbox.messages == [outcome]
    assert [n.kind for n in notifications] == ["outcome"]
    assert "settled" not in [line.action for line in audit]


# --- the pages a stale link opens ----------------------------------------------------------------------


async def test_the_410_page_after_settlement_names_the_decider_the_time_the_outcome_and_the_reason(
    app: App,
) -> None:
    tasks = await hold(app, vapp=1)
    signer = signer_for(app)
    bob = "Bob Jones <bob.jones@acme.example>"
    decided = await fetch(
        app,
        "POST",
        path_of(signer.multiple_url(tasks, Action.ACCEPT, bob)),
        data={"reason": "Budget approved"},
    )
    assert decided.status_code == 200
    await settled(app)
    async with open_store(app) as store:
        decided_at = max(t.decided_at for t in await store.get_tasks(tasks) if t.decided_at)
    alice = "Alice Smith <alice.smith@acme.example>"

    whole = html.unescape(
        assert_page(await fetch(app, "GET", path_of(signer.multiple_url(tasks, Action.DECLINE, alice))), 410)
    )
    one = html.unescape(
        assert_page(await fetch(app, "GET", path_of(signer.task_url(tasks[1], Action.ACCEPT, alice))), 410)
    )

    when = words.moment_words(decided_at)
    assert f"Settled by Bob Jones on {when} — accepted 3 of 3." in page_text(whole)
    assert "Reason given: “Budget approved”" in page_text(whole)
    assert f"Accepted by Bob Jones on {when}." in page_text(one)
    assert "Reason given: “Budget approved”" in page_text(one)
    assert page_text(whole).count("Budget approved") == 1  # said once, not again on every row
