"""Deciding the same task more than once: a double click, and two approvers answering at the same
moment. Exactly one decision is taken and delivered; the other answer is 410 and says who decided."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest

from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.mail import words
from abiquo_workflow.mail.inbox import ReceivedMessage
from abiquo_workflow.store import Store
from tests.conftest import CLIENT_TLS, FAST, Connector, ConnectorFactory
from tests.loop_support import (
    open_confirmation,
    open_store,
    page_text,
    submit,
    task_link,
    to,
    wait_for_calls,
    wait_until,
    wait_until_idle,
)

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
JOHN = "john.doe@acme.example"


@pytest.fixture
def connector_on(connector_factory: ConnectorFactory, migrated_database_url: str) -> Iterator[Connector]:
    """A connector on each database: SQLite, and PostgreSQL when AWF_TEST_POSTGRES_URL is set."""
    with connector_factory(database_url=migrated_database_url) as running:
        yield running


async def approval_emails(connector: Connector, task_id: str) -> dict[str, ReceivedMessage]:
    """The approval emails about `task_id`, by recipient, once all three have arrived."""

    def about_task() -> dict[str, ReceivedMessage] | None:
        found = {
            m.rcpt_tos[0]: m
            for m in connector.inbox.messages
            if f"task={task_id}" in (m.text() or "") and m.rcpt_tos[0] != JOHN
        }
        return found if len(found) == 3 else None

    return await wait_until(about_task, f"the approval emails about task {task_id}")


async def test_a_second_click_on_the_same_button_decides_nothing_and_says_who_decided(
    connector: Connector,
) -> None:
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    alice = (await approval_emails(connector, task_id))[ALICE]
    link = task_link(alice, "/accept", task_id)

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        _, form = await open_confirmation(browser, link)
        first = await submit(browser, link.url, form, reason="first click")
        second = await submit(browser, link.url, form, reason="second click")
        await wait_for_calls(connector, 1)
        await connector.inbox.wait_for(6)  # the requester's email, and Bob's and Zoë's "settled" ones
        await wait_until_idle(store)
        task = await store.get_task(task_id)

    assert first.status_code == 200
    assert second.status_code == 410
    assert task is not None and task.decided_at is not None
    assert task.reason == "first click" and task.delivery is DeliveryState.DELIVERED
    said = page_text(second.text)
    assert "Already decided" in said
    assert f"Accepted by Alice Smith on {words.moment_words(task.decided_at)}." in said
    assert "This task was already decided, so nothing was changed." in said
    assert "Reason given: “first click”" in said
    [call] = connector.decision_calls()
    assert (call["action"], call["status"]) == ("continue", 204) and "first click" in call["body"]
    assert len(to(connector.inbox.messages, JOHN)) == 1


async def race_accept_against_decline(connector: Connector, store: Store) -> None:
    """One request; Alice accepts and Bob declines its task at the same moment, each from their email."""
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    emails = await approval_emails(connector, task_id)
    accept = task_link(emails[ALICE], "/accept", task_id)
    decline = task_link(emails[BOB], "/decline", task_id)
    told_before = len(to(connector.inbox.messages, JOHN))
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as alice, httpx2.AsyncClient(verify=CLIENT_TLS) as bob:
        (_, accept_form), (_, decline_form) = await asyncio.gather(
            open_confirmation(alice, accept), open_confirmation(bob, decline)
        )
        accepted, declined = await asyncio.gather(
            submit(alice, accept.url, accept_form, reason="yes"),
            submit(bob, decline.url, decline_form, reason="no"),
        )

    assert sorted([accepted.status_code, declined.status_code]) == [200, 410]
    alice_won = accepted.status_code == 200
    winner = "Alice Smith <alice.smith@acme.example>" if alice_won else "Bob Jones <bob.jones@acme.example>"
    verdict = "Accepted by Alice Smith on" if alice_won else "Declined by Bob Jones on"
    loser_page = page_text((declined if alice_won else accepted).text)
    assert verdict in loser_page and "This task was already decided" in loser_page

    await wait_until(
        lambda: to(connector.inbox.messages, JOHN)[told_before:], "the requester's email about the race"
    )
    await wait_until_idle(store)
    task = await store.get_task(task_id)
    calls = [c for c in connector.decision_calls() if c["task_id"] == task_id]

    assert task is not None and task.actor == winner
    assert task.decision is (DecisionState.ACCEPTED if alice_won else DecisionState.DECLINED)
    assert task.delivery is DeliveryState.DELIVERED
    assert [(c["action"], c["status"]) for c in calls] == [("continue" if alice_won else "cancel", 204)]
    assert len(to(connector.inbox.messages, JOHN)) == told_before + 1


#: Each attempt races twice, on a connector of its own; in `make test-fast`, one attempt.
ATTEMPTS = 1 if FAST else 5


@pytest.mark.parametrize("attempt", range(ATTEMPTS))
async def test_concurrent_accept_and_decline_make_exactly_one_decision(
    connector_on: Connector, attempt: int
) -> None:
    async with open_store(connector_on) as store:
        await race_accept_against_decline(connector_on, store)
        await race_accept_against_decline(connector_on, store)
    assert len(connector_on.decision_calls()) == 2
