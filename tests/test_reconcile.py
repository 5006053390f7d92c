"""Reconciliation (reconcile.py) against the real simulator and a real store, SQLite and PostgreSQL:
held tasks whose callback was lost are found and triaged, tasks settled in Abiquo are closed as decided
`external` without a word to Abiquo, every page of a long listing is read, and the chain of jobs runs
one reconciliation at a time. The whole loop through `serve` is in test_loop_reconcile.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from abiquo_simulator.faults import parse_fault
from abiquo_workflow.domain import Action, Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.exceptions import AbiquoUnavailable
from abiquo_workflow.jobs import Reconcile
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.runtime import Runtime
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store.records import JobRecord, JobStatus, TaskRecord
from abiquo_workflow.task_commands import show_task
from tests.conftest import RuntimeFactory
from tests.loop_support import wait_until

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
ZOE = "zoe.zimmermann@acme.example"
JOHN = "john.doe@acme.example"
APPROVERS = sorted([ALICE, BOB, ZOE])


async def hold_lost(simulator: SimulatorServer, held_for: float = 120, **target: Any) -> list[str]:
    """Tasks the simulator holds whose callback never reached us (the connector was down): their ids."""
    result = await simulator.simulator.request(
        str(target.pop("action", "deploy")), lost_callback=True, held_for=held_for, **target
    )
    assert result.callback.status is None
    return [task.task_id for task in result.tasks]


async def found_and_triaged(runtime: Runtime, simulator: SimulatorServer, **target: Any) -> TaskRecord:
    """A lost task found by a run and triaged (confirmed with Abiquo, its approvers emailed)."""
    [task_id] = await hold_lost(simulator, **target)
    [request_id] = (await runtime.reconciler.reconcile()).received

    async def triaged() -> bool:
        request = await runtime.store.get_request(request_id)
        return request is not None and request.triaged_at is not None

    await wait_until(triaged, "the found request's triage")
    task = await runtime.store.get_task(task_id)
    assert task is not None and task.verified_at is not None
    return task


def pending_listing_calls(simulator: SimulatorServer) -> list[str]:
    return [
        f"{c.path}?{c.query}" for c in simulator.simulator.api_calls() if c.path.endswith("/pendingtasks")
    ]


# --- A: held tasks we never received ----------------------------------------------------------------


async def test_a_held_task_whose_callback_was_lost_becomes_a_request_found_by_reconciliation(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    [task_id] = await hold_lost(simulator, vm=1)

    outcome = await runtime.reconciler.reconcile()

    [request_id] = outcome.received
    request = await runtime.store.get_request(request_id)
    assert request is not None and request.source == "reconciliation"
    [received] = [
        line for line in await runtime.store.audit_log(request_id=request_id) if line.action == "received"
    ]
    assert (received.actor, received.channel) == ("reconciliation", Channel.ABIQUO)
    assert task_id in (received.detail or "")


async def test_a_found_task_is_triaged_as_usual_and_its_approvers_emailed(
    runtime: Runtime, simulator: SimulatorServer, smtp_inbox: Inbox
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)

    emails = await smtp_inbox.wait_for(3)
    assert sorted(address for m in emails for address in m.rcpt_tos) == APPROVERS
    assert task.decision is DecisionState.PENDING


async def test_a_second_run_creates_nothing_again(runtime: Runtime, simulator: SimulatorServer) -> None:
    await hold_lost(simulator, vapp=1)
    first = await runtime.reconciler.reconcile()

    again = await runtime.reconciler.reconcile()

    assert len(first.received) == 1
    assert again.received == ()
    assert again.held == 3


async def test_a_vapps_lost_tasks_make_one_request_as_its_callback_would_have(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    task_ids = await hold_lost(simulator, vapp=1)

    [request_id] = (await runtime.reconciler.reconcile()).received

    assert sorted(t.task_id for t in await runtime.store.tasks_of_request(request_id)) == sorted(task_ids)


async def test_every_page_of_a_listing_longer_than_a_page_is_read(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    task_ids = await hold_lost(simulator, vapp=2)  # 100 VMs: four pages of Abiquo's 25
    assert len(task_ids) == 100

    outcome = await runtime.reconciler.reconcile()

    [request_id] = outcome.received
    assert sorted(t.task_id for t in await runtime.store.tasks_of_request(request_id)) == sorted(task_ids)
    listing = [call for call in pending_listing_calls(simulator) if "/enterprises/2/" in call]
    assert [call.partition("?")[2] for call in listing] == [
        "",
        "startwith=25&limit=25",
        "startwith=50&limit=25",
        "startwith=75&limit=25",
    ]


async def test_a_task_just_held_is_left_to_its_callback(runtime: Runtime, simulator: SimulatorServer) -> None:
    await hold_lost(simulator, held_for=0, vm=1)

    outcome = await runtime.reconciler.reconcile()

    assert outcome.held == 1
    assert outcome.received == ()


async def test_enterprises_without_workflow_are_not_read(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    outcome = await runtime.reconciler.reconcile()

    read = {call.split("/")[4] for call in pending_listing_calls(simulator)}
    assert read == {"2", "3", "4"}  # Acme, Globex, Initech; not "Abiquo" (enterprise 1, workflow off)
    assert outcome.enterprises == 3


# --- B: our pending tasks that Abiquo no longer holds -----------------------------------------------


@pytest.mark.parametrize(
    ("settle", "decision", "story"),
    [
        (
            "requester",
            DecisionState.DECLINED,
            "cancelled in Abiquo, by its requester or in Abiquo's Workflow tasks tab",
        ),
        (
            "ui-cancel",
            DecisionState.DECLINED,
            "cancelled in Abiquo, by its requester or in Abiquo's Workflow tasks tab",
        ),
        ("ui-continue", DecisionState.ACCEPTED, "continued in Abiquo, not through abiquo-workflow"),
        ("gone", DecisionState.DECLINED, "the task no longer exists in Abiquo"),
    ],
)
async def test_a_task_settled_in_abiquo_is_closed_as_decided_externally_with_what_abiquo_shows(
    runtime: Runtime, simulator: SimulatorServer, settle: str, decision: DecisionState, story: str
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    sim = simulator.simulator
    match settle:
        case "requester":
            sim.cancel_as_requester(task.task_id, "changed my mind")
        case "ui-cancel":
            sim.decide_in_ui(task.task_id, "cancel")
        case "ui-continue":
            sim.decide_in_ui(task.task_id, "continue")
        case "gone":
            sim.forget_task(task.task_id)

    outcome = await runtime.reconciler.reconcile()

    closed = await runtime.store.get_task(task.task_id)
    assert closed is not None and outcome.closed == (task.task_id,)
    assert (closed.decision, closed.decided_by, closed.channel) == (
        decision,
        DecidedBy.EXTERNAL,
        Channel.ABIQUO,
    )
    assert closed.delivery is DeliveryState.SUPERSEDED and closed.delivery_attempts == 0
    assert closed.reason is not None and closed.reason.startswith(story)


async def test_nothing_is_sent_to_abiquo_for_a_task_closed_by_reconciliation(
    runtime: Runtime, simulator: SimulatorServer, smtp_inbox: Inbox
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    simulator.simulator.cancel_as_requester(task.task_id)

    await runtime.reconciler.reconcile()

    await wait_until(
        lambda: len([m for m in smtp_inbox.messages if m.subject.startswith("Settled: ")]) == 3,
        "the settled emails",
    )
    assert simulator.simulator.decision_calls() == []
    jobs = await runtime.store.list_jobs(limit=1000)
    assert "deliver" not in {job.kind for job in jobs}


async def test_the_approvers_are_told_it_is_settled_and_the_requester_its_outcome(
    runtime: Runtime, simulator: SimulatorServer, smtp_inbox: Inbox
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    await smtp_inbox.wait_for(3)  # the approval emails
    simulator.simulator.decide_in_ui(task.task_id, "cancel")

    await runtime.reconciler.reconcile()

    emails = await smtp_inbox.wait_for(7)
    settled = [m for m in emails if m.subject.startswith("Settled: ")]
    assert sorted(address for m in settled for address in m.rcpt_tos) == APPROVERS
    assert "Cancelled in Abiquo on " in (settled[0].text() or "")
    [outcome] = [m for m in emails if JOHN in m.rcpt_tos]
    assert "Cancelled in Abiquo" in (outcome.text() or "")
    assert "did not apply" not in (outcome.text() or "")  # nothing was ours to deliver


async def test_tasks_show_says_the_task_was_found_and_closed_by_reconciliation(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    simulator.simulator.cancel_as_requester(task.task_id)
    await runtime.reconciler.reconcile()

    shown = "\n".join(await show_task(runtime.settings, task.task_id))

    assert "decision   declined by Abiquo (external) via abiquo" in shown
    assert "delivery   superseded after 0 attempt(s)" in shown
    assert re.search(r"received\s+reconciliation 1 task\(s\): DEPLOY", shown)
    assert re.search(
        r"decided\s+reconciliation declined \(external\), found by reconciliation: cancelled", shown
    )


async def test_a_task_still_held_is_left_pending(runtime: Runtime, simulator: SimulatorServer) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)

    outcome = await runtime.reconciler.reconcile()

    assert outcome.closed == ()
    still = await runtime.store.get_task(task.task_id)
    assert still is not None and still.decision is DecisionState.PENDING


async def test_a_task_we_decided_and_are_delivering_is_left_alone(
    runtime: Runtime, simulator: SimulatorServer
) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    simulator.simulator.add_fault(parse_fault({"status": 503, "count": 1000, "match": "/action/continue"}))
    await runtime.approvals.decide(
        [task.task_id], Action.ACCEPT, actor=ALICE, reason=None, channel=Channel.WEB
    )
    simulator.simulator.cancel_as_requester(task.task_id)  # meanwhile, in Abiquo

    outcome = await runtime.reconciler.reconcile()

    assert outcome.closed == ()
    ours = await runtime.store.get_task(task.task_id)
    assert ours is not None and (ours.decision, ours.decided_by) == (
        DecisionState.ACCEPTED,
        DecidedBy.APPROVER,
    )


async def test_abiquo_down_during_a_run_changes_nothing(runtime: Runtime, simulator: SimulatorServer) -> None:
    task = await found_and_triaged(runtime, simulator, vm=1)
    simulator.simulator.cancel_as_requester(task.task_id)
    await hold_lost(simulator, vm=2)
    simulator.simulator.add_fault(parse_fault({"status": 503, "count": 1000, "match": "/pendingtasks"}))

    with pytest.raises(AbiquoUnavailable):
        await runtime.reconciler.reconcile()

    still = await runtime.store.get_task(task.task_id)
    assert still is not None and still.decision is DecisionState.PENDING
    assert len(await runtime.store.list_tasks(limit=10)) == 1


# --- the chain of jobs ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def chained(runtime_factory: RuntimeFactory) -> AsyncIterator[Runtime]:
    """Reconciliation every 5 minutes, no worker: the test claims and runs the jobs itself."""
    async with runtime_factory(start_worker=False, reconcile={"interval": "5m"}) as opened:
        yield opened


async def claim_run(runtime: Runtime) -> JobRecord:
    [claimed] = await runtime.store.queue.claim("test", limit=1, lease=60, kinds=(Reconcile.kind,))
    return claimed


async def test_a_starting_process_queues_a_run_only_when_none_waits(chained: Runtime) -> None:
    first = await chained.reconciler.schedule()
    again = await chained.reconciler.schedule()

    assert first is not None and again is None
    job = await chained.store.latest_job(Reconcile.kind)
    assert job is not None and job.id == first and job.dedupe_key == "reconcile:after:0"


async def test_two_processes_starting_at_once_queue_one_run(
    chained: Runtime, runtime_factory: RuntimeFactory
) -> None:
    async with runtime_factory(start_worker=False, reconcile={"interval": "5m"}) as replica:
        queued = await asyncio.gather(chained.reconciler.schedule(), replica.reconciler.schedule())

    assert len([job_id for job_id in queued if job_id is not None]) == 1
    assert len(await chained.store.list_jobs(limit=100)) == 1


async def test_each_run_queues_the_next_an_interval_later(chained: Runtime) -> None:
    await chained.reconciler.schedule()
    claimed = await claim_run(chained)

    await chained.reconciler.run_job(claimed)

    following = await chained.store.latest_job(Reconcile.kind)
    assert following is not None and following.dedupe_key == f"reconcile:after:{claimed.id}"
    assert following.status is JobStatus.QUEUED
    due_in = following.run_after - chained.store.queue.now()
    assert timedelta(minutes=4) < due_in <= timedelta(minutes=5)
    assert await chained.reconciler.schedule() is None  # a restart now queues no second chain


async def test_a_run_repeated_after_a_crash_queues_its_follower_once(chained: Runtime) -> None:
    await chained.reconciler.schedule()
    claimed = await claim_run(chained)

    await chained.reconciler.run_job(claimed)
    await chained.reconciler.run_job(claimed)  # the same job again: its lease ran out before it was done

    assert len([j for j in await chained.store.list_jobs(limit=100) if j.kind == Reconcile.kind]) == 2


async def test_abiquo_down_is_logged_and_the_next_run_still_queued(
    chained: Runtime, simulator: SimulatorServer
) -> None:
    await chained.reconciler.schedule()
    claimed = await claim_run(chained)
    simulator.simulator.add_fault(parse_fault({"status": 503, "count": 1000, "match": "/admin/enterprises"}))

    await chained.reconciler.run_job(claimed)  # does not raise: the next run is the retry

    following = await chained.store.latest_job(Reconcile.kind)
    assert following is not None and following.dedupe_key == f"reconcile:after:{claimed.id}"


async def test_a_run_that_fails_for_good_leaves_its_follower_queued(
    chained: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await chained.reconciler.schedule()
    claimed = await claim_run(chained)

    async def broken() -> None:
        raise RuntimeError("a fault of ours, not Abiquo's")

    monkeypatch.setattr(chained.reconciler, "reconcile", broken)
    with pytest.raises(RuntimeError):
        await chained.reconciler.run_job(claimed)  # the worker retries it, and may give up on it

    following = await chained.store.latest_job(Reconcile.kind)
    assert following is not None and following.dedupe_key == f"reconcile:after:{claimed.id}"
    assert following.status is JobStatus.QUEUED


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_runs_and_what_they_mend_are_counted_in_the_metrics(
    chained: Runtime, simulator: SimulatorServer
) -> None:
    before = {
        "done": counted("awf_reconcile_runs_total", outcome="done"),
        "failed": counted("awf_reconcile_runs_total", outcome="failed"),
        "received": counted("awf_reconciled_tasks_total", action="received"),
    }
    await hold_lost(simulator, vapp=1)  # three VMs
    await chained.reconciler.schedule()
    await chained.reconciler.run_job(await claim_run(chained))
    simulator.simulator.add_fault(parse_fault({"status": 503, "count": 1000, "match": "/admin/enterprises"}))
    follower = await chained.store.latest_job(Reconcile.kind)
    assert follower is not None
    await chained.reconciler.run_job(follower)  # Abiquo down: logged and counted, not raised

    assert counted("awf_reconcile_runs_total", outcome="done") - before["done"] == 1
    assert counted("awf_reconcile_runs_total", outcome="failed") - before["failed"] == 1
    assert counted("awf_reconciled_tasks_total", action="received") - before["received"] == 3


async def test_a_run_queued_before_interval_zero_does_nothing_and_queues_no_other(
    chained: Runtime, runtime_factory: RuntimeFactory, simulator: SimulatorServer
) -> None:
    await chained.reconciler.schedule()
    claimed = await claim_run(chained)

    async with runtime_factory(start_worker=False) as off:  # the same database, reconcile.interval = 0
        assert await off.reconciler.schedule() is None
        await off.reconciler.run_job(claimed)

    latest = await chained.store.latest_job(Reconcile.kind)
    assert latest is not None and latest.id == claimed.id
    assert pending_listing_calls(simulator) == []
