"""Quorums (`approvals_needed`): distinct approvers, a decline vetoes, the N-th accept decides, once,
also when the last two accepts race (in the store, on SQLite and PostgreSQL, from two "replicas"), and
end to end: the page of an approval that does not decide yet, the decision and its one delivery, and
each `when_requester_is_approver` mode with a quorum."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.store import Store
from tests.conftest import AppFactory
from tests.loop_support import (
    confirm,
    open_store,
    page_text,
    task_link,
    to,
    wait_for_calls,
    wait_until_idle,
)
from tests.test_store import held, receive

ALICE = "Alice Smith <alice.smith@acme.example>"
BOB = "Bob Jones <bob.jones@acme.example>"
ZOE = "Zoë Zimmermann <zoe.zimmermann@acme.example>"
ACME_APPROVERS = ["alice.smith@acme.example", "bob.jones@acme.example", "zoe.zimmermann@acme.example"]
TWO_NEEDED: dict[str, Any] = {"approvals_needed": 2}


async def answer(store: Store, task_id: str, actor: str, state: DecisionState, needed: int = 2) -> Any:
    async with store.transaction() as tx:
        return await tx.approve(
            [task_id],
            state,
            approver=actor.rpartition("<")[2].rstrip(">").lower(),
            actor=actor,
            reason=None,
            channel=Channel.EMAIL,
            needed=needed,
        )


# --- in the store ---------------------------------------------------------------------------------------


async def test_an_accept_short_of_the_quorum_is_counted_and_decides_nothing(store: Store) -> None:
    await receive(store, held("q-1"))

    first = await answer(store, "q-1", ALICE, DecisionState.ACCEPTED)

    assert (first.decided, first.waiting, first.repeated) == ([], ["q-1"], [])
    task = await store.get_task("q-1")
    assert task is not None and task.decision is DecisionState.PENDING
    [recorded] = await store.approvals_of(["q-1"])
    assert (recorded.approver, recorded.actor, recorded.action) == (
        "alice.smith@acme.example",
        ALICE,
        "accept",
    )


async def test_a_second_click_by_the_same_approver_does_not_count_twice(store: Store) -> None:
    await receive(store, held("q-2"))
    await answer(store, "q-2", ALICE, DecisionState.ACCEPTED)

    again = await answer(store, "q-2", ALICE, DecisionState.ACCEPTED)

    assert (again.decided, again.repeated) == ([], ["q-2"])
    assert len(await store.approvals_of(["q-2"])) == 1
    task = await store.get_task("q-2")
    assert task is not None and task.decision is DecisionState.PENDING


async def test_the_nth_distinct_accept_decides(store: Store) -> None:
    await receive(store, held("q-3"))
    await answer(store, "q-3", ALICE, DecisionState.ACCEPTED)

    second = await answer(store, "q-3", BOB, DecisionState.ACCEPTED)

    [task] = second.decided
    assert (task.decision, task.decided_by, task.actor, task.delivery) == (
        DecisionState.ACCEPTED,
        DecidedBy.APPROVER,
        BOB,
        DeliveryState.QUEUED,
    )


async def test_one_decline_vetoes_whatever_was_accepted_before(store: Store) -> None:
    await receive(store, held("q-4"))
    await answer(store, "q-4", ALICE, DecisionState.ACCEPTED, needed=3)
    await answer(store, "q-4", BOB, DecisionState.ACCEPTED, needed=3)

    veto = await answer(store, "q-4", ZOE, DecisionState.DECLINED, needed=3)

    assert [(t.decision, t.actor) for t in veto.decided] == [(DecisionState.DECLINED, ZOE)]
    late = await answer(store, "q-4", "Dan <dan.custom@acme.example>", DecisionState.ACCEPTED, needed=3)
    assert (late.decided, late.waiting, late.repeated) == ([], [], [])


async def test_two_concurrent_last_accepts_from_two_replicas_make_exactly_one_decision(
    migrated_database_url: str,
) -> None:
    async with (
        await Store.open(migrated_database_url) as one,
        await Store.open(migrated_database_url) as other,
    ):
        await receive(one, held("q-5"))
        await answer(one, "q-5", ALICE, DecisionState.ACCEPTED, needed=3)

        results = await asyncio.gather(
            answer(one, "q-5", BOB, DecisionState.ACCEPTED, needed=3),
            answer(other, "q-5", ZOE, DecisionState.ACCEPTED, needed=3),
        )

        assert sorted(len(r.decided) for r in results) == [0, 1]
        assert len(await one.approvals_of(["q-5"])) == 3
        task = await one.get_task("q-5")
    assert task is not None and task.decision is DecisionState.ACCEPTED


async def test_two_concurrent_first_accepts_of_a_quorum_of_two_together_decide(
    migrated_database_url: str,
) -> None:
    """Neither is enough alone: each must see the other's, or the request would wait for ever."""
    async with (
        await Store.open(migrated_database_url) as one,
        await Store.open(migrated_database_url) as other,
    ):
        await receive(one, held("q-6"))

        results = await asyncio.gather(
            answer(one, "q-6", ALICE, DecisionState.ACCEPTED),
            answer(other, "q-6", BOB, DecisionState.ACCEPTED),
        )

        assert sorted(len(r.decided) for r in results) == [0, 1]
        task = await one.get_task("q-6")
    assert task is not None and task.decision is DecisionState.ACCEPTED


# --- end to end -----------------------------------------------------------------------------------------


async def test_an_approval_short_of_the_quorum_shows_who_is_still_awaited_and_delivers_nothing(
    app_factory: AppFactory,
) -> None:
    async with app_factory(policy=TWO_NEEDED) as app:
        held_tasks = await app.request(vm=1)
        task_id = held_tasks["tasks"][0]["task_id"]
        messages = await app.inbox.wait_for(3)
        [alice_email] = to(messages, "alice.smith@acme.example")
        assert "0 of 2 approvals" in (alice_email.text() or "")

        async with app.client() as client:
            page = await confirm(client, task_link(alice_email, "/accept", task_id))
        async with open_store(app) as store:
            await wait_until_idle(store)
            task = await store.get_task(task_id)

    assert page.status_code == 200, page.text
    text = page_text(page.text)
    assert "Approval recorded" in text
    assert "1 of 2 approvals, from Alice Smith; still waiting for Bob Jones or Zoë Zimmermann" in text
    assert task is not None and task.decision is DecisionState.PENDING
    assert app.decision_calls() == []


async def test_the_second_distinct_approval_decides_and_is_delivered_once(app_factory: AppFactory) -> None:
    async with app_factory(policy=TWO_NEEDED) as app:
        held_tasks = await app.request(vm=1)
        task_id = held_tasks["tasks"][0]["task_id"]
        messages = await app.inbox.wait_for(3)
        [alice_email] = to(messages, "alice.smith@acme.example")
        [bob_email] = to(messages, "bob.jones@acme.example")

        async with app.client() as client:
            await confirm(client, task_link(alice_email, "/accept", task_id))
            again = await confirm(client, task_link(alice_email, "/accept", task_id))
            assert "1 of 2 approvals" in page_text(again.text)  # a second click counts once
            assert app.decision_calls() == []
            decided = await confirm(client, task_link(bob_email, "/accept", task_id))
        [call] = await wait_for_calls(app, 1)
        async with open_store(app) as store:
            await wait_until_idle(store)
            task = await store.get_task(task_id)
            audit = await store.audit_log(task_id=task_id)

    assert decided.status_code == 200 and "Accepted 1 task" in page_text(decided.text)
    assert (call["task_id"], call["action"]) == (task_id, "continue")
    assert task is not None and (task.decision, task.actor) == (DecisionState.ACCEPTED, BOB)
    assert [a.actor for a in audit if a.action == "approved"] == [ALICE]
    assert len(app.decision_calls()) == 1


async def test_fewer_approvers_than_the_quorum_falls_to_when_no_approver_and_says_why(
    app_factory: AppFactory,
) -> None:
    policy = {"rules": [{"name": "four", "enterprise": 2, "approvals_needed": 4}]}
    async with app_factory(policy=policy) as app:
        held_tasks = await app.request(vm=1)
        [call] = await wait_for_calls(app, 1)
        async with open_store(app) as store:
            await wait_until_idle(store)
            task = await store.get_task(held_tasks["tasks"][0]["task_id"])
            audit = await store.audit_log(request_id=task.request_id if task else None)

    assert call["action"] == "cancel"
    assert task is not None and (task.decided_by, task.actor) == (DecidedBy.NO_APPROVER, "policy: four")
    assert task.reason == "only 3 approver(s) can be asked, and 4 approvals are needed (policy rule 'four')"
    [triaged] = [a.detail for a in audit if a.action == "triaged"]
    assert triaged is not None and "only 3 approver(s) can be asked" in triaged


@pytest.mark.parametrize("mode", ["ask", "accept", "cancel"])
async def test_each_when_requester_is_approver_mode_with_a_quorum(app_factory: AppFactory, mode: str) -> None:
    """Alice, an approver, asks: `ask` leaves Bob and Zoë, both needed; the others decide at once."""
    policy = {"approvals_needed": 2, "when_requester_is_approver": mode}
    async with app_factory(policy=policy) as app:
        held_tasks = await app.request(vm=1, user=10)
        task_id = held_tasks["tasks"][0]["task_id"]
        if mode == "ask":
            messages = await app.inbox.wait_for(2)
            assert sorted(m.rcpt_tos[0] for m in messages) == ACME_APPROVERS[1:]
            async with app.client() as client:
                for message in messages:
                    await confirm(client, task_link(message, "/accept", task_id))
        [call] = await wait_for_calls(app, 1)
        async with open_store(app) as store:
            await wait_until_idle(store)
            task = await store.get_task(task_id)

    assert task is not None
    expected = {"ask": "continue", "accept": "continue", "cancel": "cancel"}[mode]
    assert call["action"] == expected
    if mode == "ask":
        assert task.decided_by is DecidedBy.APPROVER and task.actor in (BOB, ZOE)
    else:
        assert (task.decided_by, task.actor) == (DecidedBy.POLICY, "policy.when_requester_is_approver")


async def test_ask_with_too_few_others_for_the_quorum_falls_to_when_no_approver(
    app_factory: AppFactory,
) -> None:
    """Alice asks under a quorum of 3: only Bob and Zoë are left, so nobody can reach it."""
    async with app_factory(policy={"approvals_needed": 3, "when_no_approver": "accept"}) as app:
        held_tasks = await app.request(vm=1, user=10)
        [call] = await wait_for_calls(app, 1)
        async with open_store(app) as store:
            await wait_until_idle(store)
            task = await store.get_task(held_tasks["tasks"][0]["task_id"])

    assert call["action"] == "continue"
    assert task is not None and task.decided_by is DecidedBy.NO_APPROVER
    assert task.reason == "only 2 approver(s) can be asked, and 3 approvals are needed"
