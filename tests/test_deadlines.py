"""Deadlines, reminders and escalation, end to end against the simulator and the SMTP inbox, on a clock
the test moves (`MovableClock`: the store and the approvals take "now" from it, so the timer jobs fall
due without sleeping): the deadline's cancel and accept, delivered and told to everyone; a click before
it wins and the deadline then does nothing; reminders once each and never to who answered; escalation
with links that decide. Then time itself: a deadline passed while the connector was down is acted on
once when it comes back, two replicas past a deadline decide it once, and one real `serve` process
cancels a task at a 3-second deadline."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx2
import pytest

from abiquo_workflow.domain import DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import Clock, utc_now
from abiquo_workflow.store.records import JobRecord, TaskRecord
from tests.cli_support import WAIT, CliProcess, free_port, wait_until_answers, write_toml
from tests.conftest import CLIENT_TLS, TEST_SECRET_KEY, AppFactory, ConnectorFactory, MovableClock, Running
from tests.loop_support import confirm, open_store, task_link, to, wait_for_calls, wait_until, wait_until_idle

HOUR = 3600
DAY = 24 * HOUR
JOHN = "john.doe@acme.example"
ACME_APPROVERS = ["alice.smith@acme.example", "bob.jones@acme.example", "zoe.zimmermann@acme.example"]
BOSS = "boss@acme.example"


async def settled(running: Running, task_id: str, clock: Clock = utc_now) -> tuple[TaskRecord, list[str]]:
    """Once the connector (on `clock`) is idle: the task and the actions of its audit trail."""
    async with open_store(running) as store:
        await wait_until_idle(store, clock)
        task = await store.get_task(task_id)
        audit = await store.audit_log(task_id=task_id)
    assert task is not None
    return task, [line.action for line in audit]


async def asked(running: Running, count: int = 3) -> str:
    """Hold one VM's deploy and wait for the approval emails; the task's id."""
    held = await running.request(action="deploy", vm=1)
    await running.inbox.wait_for(count)
    return str(held["tasks"][0]["task_id"])


@pytest.mark.parametrize(("at_deadline", "action"), [("cancel", "cancel"), ("accept", "continue")])
async def test_at_the_deadline_the_pending_task_is_decided_delivered_and_everyone_told(
    app_factory: AppFactory, at_deadline: str, action: str
) -> None:
    clock = MovableClock()
    async with app_factory(clock=clock, policy={"deadline": "4h", "at_deadline": at_deadline}) as app:
        task_id = await asked(app)
        outcome = "accepted" if at_deadline == "accept" else "cancelled"
        assert f"it will be {outcome}." in (app.inbox.messages[0].text() or "")

        clock.advance(4 * HOUR + 1)
        [call] = await wait_for_calls(app, 1)
        task, actions = await settled(app, task_id)
        messages = await app.inbox.wait_for(7)  # 3 approvals, 3 "settled", 1 outcome

    assert (call["task_id"], call["action"]) == (task_id, action)
    assert (task.decided_by, task.actor, task.delivery) == (
        DecidedBy.DEADLINE,
        "policy.deadline",
        DeliveryState.DELIVERED,
    )
    assert task.reason is not None and task.reason.startswith("nobody decided by ")
    assert actions.count("decided") == 1
    assert sorted(m.rcpt_tos[0] for m in messages[3:] if m.rcpt_tos[0] != JOHN) == ACME_APPROVERS
    [outcome] = to(messages, JOHN)
    assert "nobody decided by" in (outcome.text() or "")


async def test_a_click_before_the_deadline_wins_and_the_deadline_then_does_nothing(
    app_factory: AppFactory,
) -> None:
    clock = MovableClock()
    async with app_factory(clock=clock, policy={"deadline": "1h"}) as app:
        task_id = await asked(app)
        async with app.client() as client:
            await confirm(client, task_link(app.inbox.messages[0], "/accept", task_id))
        await wait_for_calls(app, 1)

        clock.advance(2 * HOUR)
        async with open_store(app) as store:

            async def deadline_ran() -> bool:
                jobs = [j for j in await store.list_jobs(limit=100) if j.kind == "deadline"]
                return bool(jobs) and all(j.status == "done" for j in jobs)

            await wait_until(deadline_ran, "the deadline job to have run")
        task, actions = await settled(app, task_id)

    assert (task.decided_by, task.decision) == (DecidedBy.APPROVER, DecisionState.ACCEPTED)
    assert actions.count("decided") == 1
    assert [c["action"] for c in app.decision_calls()] == ["continue"]


async def test_each_reminder_goes_once_to_each_approver_who_has_not_answered(app_factory: AppFactory) -> None:
    clock = MovableClock()
    policy = {"approvals_needed": 2, "deadline": "3d", "reminders": ["1d", "2d"]}
    async with app_factory(clock=clock, policy=policy) as app:
        task_id = await asked(app)
        [alice] = to(app.inbox.messages, ACME_APPROVERS[0])
        async with app.client() as client:
            await confirm(client, task_link(alice, "/accept", task_id))  # 1 of 2: Alice has answered

        clock.advance(DAY + 1)
        first = (await app.inbox.wait_for(5))[3:]
        clock.advance(DAY)
        second = (await app.inbox.wait_for(7))[5:]
        clock.advance(HOUR)  # nothing more falls due before the deadline
        async with open_store(app) as store:
            await wait_until_idle(store, clock)
        messages = list(app.inbox.messages)

    assert sorted(m.rcpt_tos[0] for m in first) == ACME_APPROVERS[1:]
    assert sorted(m.rcpt_tos[0] for m in second) == ACME_APPROVERS[1:]
    assert len(messages) == 7
    for reminder in first + second:
        assert reminder.subject.startswith("Reminder: Approve deploy of")
        text = reminder.text() or ""
        assert "This is a reminder" in text
        assert "1 of 2 approvals, from Alice Smith" in text
        assert "it will be cancelled" in text
    [bob] = to(second, ACME_APPROVERS[1])
    assert task_link(bob, "/accept", task_id).params["task"] == task_id  # a reminder has its own links


async def test_escalation_emails_the_escalate_to_address_whose_link_decides(app_factory: AppFactory) -> None:
    clock = MovableClock()
    policy = {"deadline": "1d", "escalate_after": "4h", "escalate_to": [f"The Boss <{BOSS}>"]}
    async with app_factory(clock=clock, policy=policy) as app:
        task_id = await asked(app)

        clock.advance(4 * HOUR + 1)
        [escalated] = to(await app.inbox.wait_for(4), BOSS)
        async with app.client() as client:
            decided = await confirm(client, task_link(escalated, "/accept", task_id))
        [call] = await wait_for_calls(app, 1)
        task, actions = await settled(app, task_id, clock)

    assert "Hello The Boss" in (escalated.text() or "")
    assert decided.status_code == 200, decided.text
    assert call["action"] == "continue"
    assert (task.decided_by, task.actor) == (DecidedBy.APPROVER, f"The Boss <{BOSS}>")
    assert "decided" in actions


@pytest.mark.slow
async def test_a_deadline_passed_while_the_connector_was_down_is_acted_on_once_when_it_is_back(
    connector_factory: ConnectorFactory, migrated_database_url: str
) -> None:
    policy = {"deadline": "1h"}
    with connector_factory(database_url=migrated_database_url, policy=policy) as connector:
        task_id = await asked(connector)
    assert connector.decision_calls() == []  # stopped before the deadline

    later = MovableClock()
    later.advance(HOUR + 60)  # the hour passed while nothing ran
    with connector_factory(database_url=migrated_database_url, clock=later, policy=policy) as connector:
        [call] = await wait_for_calls(connector, 1)
        task, actions = await settled(connector, task_id, later)
    with connector_factory(database_url=migrated_database_url, clock=later, policy=policy) as connector:
        task_again, actions_again = await settled(connector, task_id, later)

    assert call["action"] == "cancel"
    assert task.decided_by is DecidedBy.DEADLINE and task.delivery is DeliveryState.DELIVERED
    assert actions.count("decided") == 1 and actions_again.count("decided") == 1
    assert task_again.decided_at == task.decided_at
    assert len(connector.decision_calls()) == 1


@pytest.mark.slow
def test_a_real_serve_process_cancels_at_a_three_second_deadline(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox
) -> None:
    port = free_port()
    config = write_toml(
        tmp_path / "abiquo-workflow.toml",
        {
            "server": {"bind": f"127.0.0.1:{port}", "secret_key": TEST_SECRET_KEY},
            "database": {"url": f"sqlite:///{tmp_path / 'serve.db'}"},
            "abiquo": {"api_url": simulator.api_url, "retries": 1, "timeout": 5},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp_inbox.port, "timeout": 5},
            "policy": {"deadline": "3s"},
        },
    )
    url = f"http://127.0.0.1:{port}"
    simulator.simulator.update_settings({"callback_url": f"{url}/callback"})
    serve = CliProcess(tmp_path / "serve", "--config", str(config), "serve")
    try:
        wait_until_answers(f"{url}/healthz", serve)
        held = httpx2.post(
            f"{simulator.url}/_sim/requests",
            json={"action": "deploy", "vm": 1},
            timeout=WAIT,
            verify=CLIENT_TLS,
        )
        task_id = held.json()["tasks"][0]["task_id"]
        smtp_inbox.wait_for_sync(3, timeout=WAIT)
        asked_at = time.monotonic()
        assert [c for c in simulator.simulator.decision_calls() if c.task_id == task_id] == []

        deadline = time.monotonic() + WAIT
        while not (calls := [c for c in simulator.simulator.decision_calls() if c.task_id == task_id]):
            assert time.monotonic() < deadline, f"no cancel within {WAIT} s:\n{serve.output()}"
            time.sleep(0.1)
        waited = time.monotonic() - asked_at
        ended = serve.stop(signal.SIGTERM)
    finally:
        serve.kill()

    assert [(c.action, c.status) for c in calls] == [("cancel", 204)]
    assert waited < 3 + 5  # the deadline, plus at most a few of the worker's one-second polls
    assert "deadline" in ended.stderr
    assert "Traceback" not in ended.stderr


@pytest.mark.slow
async def test_two_replicas_past_the_deadline_decide_it_once(
    app_factory: AppFactory, migrated_database_url: str
) -> None:
    clock = MovableClock()
    policy = {"deadline": "1h"}
    async with (
        app_factory(database_url=migrated_database_url, clock=clock, policy=policy) as one,
        app_factory(database_url=migrated_database_url, clock=clock, policy=policy) as other,
    ):
        task_id = await asked(one)

        clock.advance(HOUR + 1)  # both workers now find the deadline due
        [call] = await wait_for_calls(one, 1)
        task, actions = await settled(other, task_id)
        deadline_jobs = [j for j in await _jobs(other) if j.kind == "deadline"]

    assert call["action"] == "cancel" and len(one.decision_calls()) == 1
    assert task.decided_by is DecidedBy.DEADLINE and actions.count("decided") == 1
    assert [(j.status, j.attempts) for j in deadline_jobs] == [("done", 1)]


async def _jobs(running: Running) -> list[JobRecord]:
    async with open_store(running) as store:
        return list(await store.list_jobs(limit=1000))
