"""The store: requests and tasks as received, atomic decisions, delivery, triage, notifications, audit.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from abiquo_workflow.domain import (
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryState,
    HeldTask,
    PayloadFormat,
)
from abiquo_workflow.exceptions import AbiquoWorkflowError, StoreError
from abiquo_workflow.store import JobQueue, NotificationStatus, Reader, Store, UnitOfWork
from abiquo_workflow.store.reads import ListedTask, TaskFilter
from tests.conftest import T0, ClockedStore

VM_HREF = "cloud/virtualdatacenters/1/virtualappliances/1/virtualmachines/{}"


def held(task_id: str, *, vm: int = 1, user_id: str = "20") -> HeldTask:
    return HeldTask(
        task_id=task_id,
        task_type="DEPLOY",
        user_id=user_id,
        owner_id="2",
        state="QUEUEING",
        continue_href=f"{VM_HREF.format(vm)}/tasks/{task_id}/action/continue",
        cancel_href=f"{VM_HREF.format(vm)}/tasks/{task_id}/action/cancel",
        target_href=VM_HREF.format(vm),
        user_href=f"admin/enterprises/2/users/{user_id}",
        self_href=f"{VM_HREF.format(vm)}/tasks/{task_id}",
    )


async def receive(store: Store, *tasks: HeldTask) -> tuple[str, list[str]]:
    """Store one callback with these tasks, as the approvals layer does; return (request id, inserted)."""
    callback = Callback(tasks=tasks, format=PayloadFormat.XML)
    async with store.transaction() as work:
        request_id = await work.insert_request(
            callback, body="<tasks/>", content_type="application/xml", source="10.0.0.5"
        )
        inserted = await work.insert_tasks(request_id, tasks)
    return request_id, inserted


async def decide(
    store: Store, task_ids: list[str], state: DecisionState, actor: str = "alice.smith@acme.example"
) -> list[str]:
    async with store.transaction() as work:
        changed = await work.decide(
            task_ids, state, decided_by=DecidedBy.APPROVER, actor=actor, reason=None, channel=Channel.WEB
        )
    return [task.task_id for task in changed]


# --- requests and tasks as received --------------------------------------------------------------------


async def test_a_request_is_stored_as_received_with_the_first_tasks_user_as_requester(store: Store) -> None:
    request_id, _ = await receive(store, held("t1", user_id="20"), held("t2", user_id="21"))

    request = await store.get_request(request_id)

    assert request is not None
    assert (request.format, request.single_root, request.body) == (PayloadFormat.XML, False, "<tasks/>")
    assert (request.content_type, request.source) == ("application/xml", "10.0.0.5")
    assert (request.requester_id, request.requester_href) == ("20", "admin/enterprises/2/users/20")
    assert (request.details, request.approvers, request.triaged_at) == (None, None, None)


async def test_a_requests_tasks_come_back_in_the_order_abiquo_sent_them(store: Store) -> None:
    request_id, inserted = await receive(store, held("c", vm=3), held("a", vm=1), held("b", vm=2))

    tasks = await store.tasks_of_request(request_id)

    assert inserted == ["c", "a", "b"]
    assert [task.task_id for task in tasks] == ["c", "a", "b"]
    assert tasks[0].continue_href == f"{VM_HREF.format(3)}/tasks/c/action/continue"
    assert all(task.decision is DecisionState.PENDING and task.delivery is None for task in tasks)


async def test_the_same_task_id_arriving_twice_is_stored_once(store: Store) -> None:
    first_request, _ = await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)

    second_request, inserted = await receive(store, held("t1"), held("t2"))

    task = await store.get_task("t1")
    assert inserted == ["t2"]
    assert task is not None
    assert (task.request_id, task.decision) == (first_request, DecisionState.ACCEPTED)
    assert [t.task_id for t in await store.tasks_of_request(second_request)] == ["t2"]


async def test_a_task_repeated_within_one_callback_is_stored_once(store: Store) -> None:
    request_id, inserted = await receive(store, held("t1"), held("t1"))

    assert inserted == ["t1"]
    assert len(await store.tasks_of_request(request_id)) == 1


async def test_unknown_task_ids_are_left_out_of_reads(store: Store) -> None:
    await receive(store, held("t1"), held("t2"))

    assert [task.task_id for task in await store.get_tasks(["t2", "nope", "t1"])] == ["t2", "t1"]
    assert await store.get_task("nope") is None
    assert await store.get_request("00000000-0000-0000-0000-000000000000") is None


async def test_list_tasks_filters_by_decision_and_delivery(store: Store) -> None:
    await receive(store, held("t1"), held("t2"), held("t3"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)
    await decide(store, ["t2"], DecisionState.DECLINED)

    pending = await store.list_tasks(decision=DecisionState.PENDING)
    queued = await store.list_tasks(delivery=DeliveryState.QUEUED)

    assert [task.task_id for task in pending] == ["t3"]
    assert sorted(task.task_id for task in queued) == ["t1", "t2"]


# --- the operator's listing: filters, keyset pages, counts, id prefixes -----------------------------------


def snapshot(nick: str, user_id: str, enterprise_id: str, enterprise: str) -> dict[str, Any]:
    """A triage snapshot as approvals.py saves it (RequestDetails as JSON), reduced to who asked."""
    requester = {"id": user_id, "nick": nick, "name": nick.title(), "surname": "", "email": None}
    return {
        "requester": {**requester, "enterprise_id": enterprise_id, "enterprise_name": enterprise},
        "enterprise": {"id": enterprise_id, "name": enterprise},
        "vdc": None,
        "datacenter": None,
        "vapp": None,
        "vms": [],
    }


async def receive_at(
    clocked: ClockedStore, at: datetime, *tasks: HeldTask, details: dict[str, Any] | None = None
) -> str:
    """Store one callback received at `at`, triaged with `details` when given; return its request id."""
    clocked.clock.now = at
    request_id, _ = await receive(clocked.store, *tasks)
    if details is not None:
        async with clocked.store.transaction() as work:
            await work.save_triage(request_id, details, [], {})
    return request_id


ACME = snapshot("john.doe", "20", "2", "Acme & Söhne <Ltd>")
GLOBEX = snapshot("grace", "31", "3", "Globex")


async def three_requests(clocked: ClockedStore) -> None:
    """a1, a2 (John Doe of Acme, a vApp) at T0; b1 (Grace of Globex) an hour later; c1 (user 20, not
    triaged yet) two hours later."""
    await receive_at(clocked, T0, held("a1", vm=1), held("a2", vm=2), details=ACME)
    await receive_at(clocked, T0 + timedelta(hours=1), held("b1", user_id="31"), details=GLOBEX)
    await receive_at(clocked, T0 + timedelta(hours=2), held("c1", user_id="20"))


def ids(listed: list[ListedTask]) -> list[str]:
    return [entry.task.task_id for entry in listed]


async def test_find_tasks_lists_newest_first_and_a_requests_tasks_in_abiquos_order(
    clocked: ClockedStore,
) -> None:
    await three_requests(clocked)
    await receive_at(clocked, T0 - timedelta(hours=1), held("z2"), held("z1"))

    assert ids(await clocked.store.find_tasks()) == ["c1", "b1", "a1", "a2", "z2", "z1"]


async def test_find_tasks_shows_the_requester_and_enterprise_from_the_triage_snapshot(
    clocked: ClockedStore,
) -> None:
    await three_requests(clocked)

    listed = await clocked.store.find_tasks()

    who = [(e.requester_nick, e.requester_id, e.enterprise_id, e.enterprise_name) for e in listed]
    assert who == [
        (None, "20", None, None),  # not triaged: only the task's user id is known
        ("grace", "31", "3", "Globex"),
        ("john.doe", "20", "2", "Acme & Söhne <Ltd>"),
        ("john.doe", "20", "2", "Acme & Söhne <Ltd>"),
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("2", ["a1", "a2"]), ("Globex", ["b1"]), ("ACME & Söhne <LTD>", ["a1", "a2"]), ("Acme", [])],
    ids=["id", "name", "name-in-other-case", "part-of-a-name"],
)
async def test_find_tasks_filters_by_enterprise_id_or_whole_name_ignoring_ascii_case(
    clocked: ClockedStore, given: str, expected: list[str]
) -> None:
    await three_requests(clocked)

    listed = await clocked.store.find_tasks(TaskFilter(enterprise=given))

    assert ids(listed) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("31", ["b1"]), ("grace", ["b1"]), ("John.Doe", ["a1", "a2"]), ("20", ["c1", "a1", "a2"]), ("gr", [])],
    ids=["id", "nick", "nick-in-other-case", "id-before-triage-too", "part-of-a-nick"],
)
async def test_find_tasks_filters_by_requester_id_or_nick(
    clocked: ClockedStore, given: str, expected: list[str]
) -> None:
    await three_requests(clocked)

    listed = await clocked.store.find_tasks(TaskFilter(requester=given))

    assert ids(listed) == expected


async def test_find_tasks_filters_by_when_the_task_was_received(clocked: ClockedStore) -> None:
    await three_requests(clocked)
    one_hour_in = T0 + timedelta(hours=1)

    before = await clocked.store.find_tasks(TaskFilter(created_before=one_hour_in))
    since = await clocked.store.find_tasks(TaskFilter(created_since=one_hour_in))

    assert (ids(before), ids(since)) == (["a1", "a2"], ["c1", "b1"])


async def test_find_tasks_combines_the_snapshot_filters_with_the_state_filters(clocked: ClockedStore) -> None:
    await three_requests(clocked)
    await decide(clocked.store, ["a2"], DecisionState.DECLINED)

    listed = await clocked.store.find_tasks(TaskFilter(enterprise="2", decision=DecisionState.PENDING))

    assert ids(listed) == ["a1"]


async def test_find_tasks_after_a_task_continues_the_listing_with_no_task_twice(
    clocked: ClockedStore,
) -> None:
    await three_requests(clocked)
    await receive_at(clocked, T0, held("a3", vm=3), held("a4", vm=4))  # same time as a1, a2

    pages: list[list[str]] = []
    last = None
    while page := await clocked.store.find_tasks(limit=2, after=last):
        pages.append(ids(page))
        last = page[-1].task

    assert [task for page in pages for task in page] == ids(await clocked.store.find_tasks())
    assert [len(page) for page in pages] == [2, 2, 2]


async def test_find_tasks_after_a_task_the_filters_leave_out_still_starts_after_it(
    clocked: ClockedStore,
) -> None:
    await three_requests(clocked)
    b1 = await clocked.store.get_task("b1")

    listed = await clocked.store.find_tasks(TaskFilter(requester="20"), after=b1)

    assert ids(listed) == ["a1", "a2"]


async def test_count_tasks_counts_the_matching_tasks_after_a_page(clocked: ClockedStore) -> None:
    await three_requests(clocked)
    (first,) = await clocked.store.find_tasks(TaskFilter(requester="20"), limit=1)

    total = await clocked.store.count_tasks(TaskFilter(requester="20"))
    left = await clocked.store.count_tasks(TaskFilter(requester="20"), after=first.task)

    assert (total, left) == (3, 2)


async def test_task_ids_starting_with_a_prefix_are_matched_literally_and_case_sensitively(
    store: Store,
) -> None:
    await receive(store, held("3f2a91_x"), held("3f2a91-y"), held("3f2a91zz"), held("3F2A91_W"))

    assert await store.task_ids_starting_with("3f2a91") == ["3f2a91-y", "3f2a91_x", "3f2a91zz"]
    assert await store.task_ids_starting_with("3f2a91_") == ["3f2a91_x"]
    assert await store.task_ids_starting_with("3f2a91", limit=2) == ["3f2a91-y", "3f2a91_x"]
    assert await store.task_ids_starting_with("nothing") == []


# --- decisions -----------------------------------------------------------------------------------------


async def test_decide_records_who_how_and_why_and_queues_the_delivery(store: Store) -> None:
    await receive(store, held("t1"))

    async with store.transaction() as work:
        [task] = await work.decide(
            ["t1"],
            DecisionState.DECLINED,
            decided_by=DecidedBy.POLICY,
            actor="when_no_approver",
            reason="no approver has an email address",
            channel=Channel.POLICY,
        )

    assert (task.decision, task.decided_by, task.actor) == (
        DecisionState.DECLINED,
        DecidedBy.POLICY,
        "when_no_approver",
    )
    assert (task.reason, task.channel, task.delivery) == (
        "no approver has an email address",
        Channel.POLICY,
        DeliveryState.QUEUED,
    )
    assert task.decided_at is not None
    assert await store.get_task("t1") == task


async def test_decide_changes_pending_tasks_only_and_returns_only_what_it_changed(store: Store) -> None:
    await receive(store, held("t1"), held("t2"))
    await decide(store, ["t1"], DecisionState.ACCEPTED, actor="alice.smith@acme.example")

    changed = await decide(
        store, ["t1", "t2", "unknown"], DecisionState.DECLINED, actor="bob.jones@acme.example"
    )

    t1 = await store.get_task("t1")
    assert changed == ["t2"]
    assert t1 is not None
    assert (t1.decision, t1.actor) == (DecisionState.ACCEPTED, "alice.smith@acme.example")


async def test_deciding_an_already_decided_task_again_changes_nothing(store: Store) -> None:
    await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)
    before = await store.get_task("t1")

    assert await decide(store, ["t1"], DecisionState.ACCEPTED) == []
    assert await store.get_task("t1") == before


# --- verification with Abiquo ----------------------------------------------------------------------------

ABIQUO = "https://abiquo.example.com/api/"


def as_abiquo_shows(task_id: str, *, task_type: str = "RECONFIGURE", user_id: str = "42") -> HeldTask:
    vm = f"{ABIQUO}{VM_HREF.format(9)}"
    return HeldTask(
        task_id=task_id,
        task_type=task_type,
        user_id=user_id,
        owner_id="9",
        state="QUEUEING",
        continue_href=f"{vm}/tasks/{task_id}/action/continue",
        cancel_href=f"{vm}/tasks/{task_id}/action/cancel",
        target_href=vm,
        user_href=f"{ABIQUO}admin/enterprises/7/users/{user_id}",
        self_href=f"{vm}/tasks/{task_id}",
    )


async def test_confirming_a_task_replaces_what_the_callback_said_with_what_abiquo_says(store: Store) -> None:
    await receive(store, held("t1"))
    shown = as_abiquo_shows("t1")

    async with store.transaction() as work:
        [task] = await work.confirm_tasks([shown])

    assert (task.task_type, task.user_id, task.owner_id) == ("RECONFIGURE", "42", "9")
    assert (task.continue_href, task.cancel_href) == (shown.continue_href, shown.cancel_href)
    assert (task.self_href, task.target_href, task.user_href) == (
        shown.self_href,
        shown.target_href,
        shown.user_href,
    )
    assert task.verified_at is not None and task.decision is DecisionState.PENDING
    assert await store.get_task("t1") == task


async def test_confirming_leaves_a_task_decided_meanwhile_as_it_was_decided(store: Store) -> None:
    await receive(store, held("t1"), held("t2"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)
    before = await store.get_task("t1")

    async with store.transaction() as work:
        confirmed = await work.confirm_tasks([as_abiquo_shows("t1"), as_abiquo_shows("t2")])

    assert [task.task_id for task in confirmed] == ["t2"]
    assert await store.get_task("t1") == before


async def test_a_rejected_task_is_not_pending_and_has_nothing_to_deliver(store: Store) -> None:
    await receive(store, held("t1"), held("t2"))

    async with store.transaction() as work:
        [task] = await work.reject(["t1", "unknown"], "Abiquo has no such task")

    assert (task.decision, task.decided_by, task.channel) == (
        DecisionState.REJECTED,
        DecidedBy.VERIFICATION,
        Channel.SYSTEM,
    )
    assert (task.reason, task.delivery, task.verified_at) == ("Abiquo has no such task", None, None)
    assert await decide(store, ["t1"], DecisionState.ACCEPTED) == []  # nobody can decide it afterwards
    t2 = await store.get_task("t2")
    assert t2 is not None and t2.decision is DecisionState.PENDING


async def test_rejecting_a_decided_task_changes_nothing(store: Store) -> None:
    await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.DECLINED)

    async with store.transaction() as work:
        assert await work.reject(["t1"], "Abiquo has no such task") == []


async def test_an_external_decision_can_skip_delivery(store: Store) -> None:
    await receive(store, held("t1"))

    async with store.transaction() as work:
        [task] = await work.decide(
            ["t1"],
            DecisionState.DECLINED,
            decided_by=DecidedBy.EXTERNAL,
            actor="abiquo",
            reason="cancelled in Abiquo",
            channel=Channel.ABIQUO,
            delivery=DeliveryState.SUPERSEDED,
        )

    assert task.delivery is DeliveryState.SUPERSEDED


async def test_pending_is_not_a_decision(store: Store) -> None:
    await receive(store, held("t1"))

    with pytest.raises(ValueError, match="not pending"):
        async with store.transaction() as work:
            await work.decide(
                ["t1"],
                DecisionState.PENDING,
                decided_by=DecidedBy.APPROVER,
                actor="x",
                reason=None,
                channel=Channel.WEB,
            )


async def test_twenty_concurrent_decisions_on_one_task_yield_exactly_one(store: Store) -> None:
    await receive(store, held("t1"))

    async def attempt(n: int) -> tuple[DecisionState, list[str]]:
        state = DecisionState.ACCEPTED if n % 2 else DecisionState.DECLINED
        return state, await decide(store, ["t1"], state, actor=f"approver{n}@acme.example")

    results = await asyncio.gather(*(attempt(n) for n in range(20)))

    winners = [state for state, changed in results if changed]
    task = await store.get_task("t1")
    assert len(winners) == 1
    assert task is not None
    assert task.decision is winners[0]


async def test_two_hundred_concurrent_callbacks_are_all_stored_with_their_jobs(store: Store) -> None:
    async def store_callback(n: int) -> str:
        callback = Callback(tasks=(held(f"t{n}"),), format=PayloadFormat.XML)
        async with store.transaction() as work:
            request_id = await work.insert_request(callback, body="<tasks/>", content_type=None, source=None)
            await asyncio.sleep(0)  # let the others run: every transaction is open at once
            await work.insert_tasks(request_id, callback.tasks)
            await asyncio.sleep(0)
            await work.enqueue("triage", {"request_id": request_id}, dedupe_key=f"triage:{request_id}")
        return request_id

    request_ids = await asyncio.gather(*(store_callback(n) for n in range(200)))

    jobs = await store.list_jobs(limit=1000)
    assert len(set(request_ids)) == 200
    assert len(await store.list_tasks(limit=1000)) == 200
    assert sorted(job.payload["request_id"] for job in jobs) == sorted(request_ids)


async def test_a_decision_and_its_job_roll_back_together_when_the_block_raises(store: Store) -> None:
    await receive(store, held("t1"))

    with pytest.raises(RuntimeError, match="mail relay exploded"):
        async with store.transaction() as work:
            await work.decide(
                ["t1"],
                DecisionState.ACCEPTED,
                decided_by=DecidedBy.APPROVER,
                actor="a",
                reason=None,
                channel=Channel.WEB,
            )
            await work.enqueue("deliver", {"task_id": "t1"})
            await work.audit("decided", task_id="t1")
            raise RuntimeError("mail relay exploded")

    task = await store.get_task("t1")
    assert task is not None
    assert (task.decision, task.delivery) == (DecisionState.PENDING, None)
    assert await store.list_jobs() == []
    assert await store.audit_log(task_id="t1") == []


# --- delivery ------------------------------------------------------------------------------------------


async def test_set_delivery_with_expect_changes_the_task_once(store: Store) -> None:
    await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)

    async with store.transaction() as work:
        first = await work.set_delivery(
            "t1", DeliveryState.DELIVERED, detail="Abiquo answered 204", expect=DeliveryState.QUEUED
        )
        second = await work.set_delivery(
            "t1", DeliveryState.SUPERSEDED, detail="TASK-2", expect=DeliveryState.QUEUED
        )

    assert first is not None
    assert second is None
    assert (first.delivery, first.delivery_detail, first.delivery_attempts) == (
        DeliveryState.DELIVERED,
        "Abiquo answered 204",
        1,
    )
    assert first.delivered_at is not None


async def test_set_delivery_records_what_abiquo_reported(store: Store) -> None:
    await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.DECLINED)

    async with store.transaction() as work:
        task = await work.set_delivery(
            "t1",
            DeliveryState.SUPERSEDED,
            detail="TASK-2: the task is not held",
            abiquo_state="FINISHED_SUCCESSFULLY",
        )

    assert task is not None
    assert (task.delivery, task.abiquo_state, task.delivered_at) == (
        DeliveryState.SUPERSEDED,
        "FINISHED_SUCCESSFULLY",
        None,
    )


async def test_requeueing_a_failed_delivery_by_hand_is_not_counted_as_an_attempt(store: Store) -> None:
    await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)
    async with store.transaction() as work:
        await work.set_delivery("t1", DeliveryState.FAILED, detail="Abiquo unreachable")

    async with store.transaction() as work:
        task = await work.set_delivery(
            "t1",
            DeliveryState.QUEUED,
            detail="retried by admin",
            expect=DeliveryState.FAILED,
            attempted=False,
        )

    assert task is not None
    assert (task.delivery, task.delivery_attempts) == (DeliveryState.QUEUED, 1)


async def test_a_pending_task_gets_no_delivery_state(store: Store) -> None:
    await receive(store, held("t1"))

    async with store.transaction() as work:
        assert await work.set_delivery("t1", DeliveryState.DELIVERED, detail="?") is None

    task = await store.get_task("t1")
    assert task is not None
    assert task.delivery is None


# --- triage, notifications, audit ---------------------------------------------------------------------


async def test_save_triage_keeps_details_approvers_and_vm_names(store: Store) -> None:
    request_id, _ = await receive(store, held("t1", vm=1), held("t2", vm=2))
    details = {"requester": {"nick": "jdoe"}, "vms": [{"name": 'db <primary> & "co"'}]}

    async with store.transaction() as work:
        saved = await work.save_triage(
            request_id,
            details,
            ["alice.smith@acme.example", "zoe.zimmermann@acme.example"],
            {"t1": "web-01", "t2": 'db <primary> & "co"'},
            error="VM 3 could not be read",
        )

    request = await store.get_request(request_id)
    assert saved == request
    assert request is not None
    assert request.details == details
    assert request.approvers == ("alice.smith@acme.example", "zoe.zimmermann@acme.example")
    assert (request.triage_error, request.triaged_at is not None) == ("VM 3 could not be read", True)
    assert [task.vm_name for task in await store.tasks_of_request(request_id)] == [
        "web-01",
        'db <primary> & "co"',
    ]


async def test_a_notification_records_each_send_attempt(store: Store) -> None:
    request_id, _ = await receive(store, held("t1"), held("t2"))
    async with store.transaction() as work:
        notification_id = await work.add_notification(
            request_id, kind="approval", recipient="alice.smith@acme.example", task_ids=["t1", "t2"]
        )

    async with store.transaction() as work:
        await work.set_notification(notification_id, NotificationStatus.QUEUED, error="451 try again later")
    async with store.transaction() as work:
        await work.set_notification(notification_id, NotificationStatus.SENT)

    [notification] = await store.notifications(request_id)
    assert notification.id == notification_id
    assert (notification.kind, notification.recipient, notification.task_ids) == (
        "approval",
        "alice.smith@acme.example",
        ("t1", "t2"),
    )
    assert (notification.status, notification.attempts, notification.last_error) == (
        NotificationStatus.SENT,
        2,
        "451 try again later",
    )
    assert notification.sent_at is not None


async def test_audit_lines_come_back_in_the_order_they_were_written(store: Store) -> None:
    request_id, _ = await receive(store, held("t1"), held("t2"))
    actions = ["received", "triaged", "emailed", "decided", "delivered"]
    for action in actions:
        async with store.transaction() as work:
            await work.audit(
                action, actor="system", channel=Channel.SYSTEM, request_id=request_id, task_id="t1"
            )
    async with store.transaction() as work:
        await work.audit("decided", actor="bob", channel=Channel.EMAIL, request_id=request_id, task_id="t2")

    about_t1 = await store.audit_log(task_id="t1")
    about_request = await store.audit_log(request_id=request_id)

    assert [line.action for line in about_t1] == actions
    assert [line.task_id for line in about_request] == ["t1"] * 5 + ["t2"]
    assert [line.id for line in about_request] == sorted(line.id for line in about_request)


def test_the_audit_log_can_only_be_appended_to_and_read() -> None:
    """No method changes or removes audit lines, whatever its name: the store's code builds no UPDATE or
    DELETE on the audit table, and the only methods about the audit append (in a transaction) or read."""

    def audit_methods(cls: type) -> set[str]:
        return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if "audit" in name}

    def changes_audit(node: ast.AST) -> bool:
        match node:
            case ast.Call(func=ast.Name(id="update" | "delete"), args=[ast.Name(id="audit"), *_]):
                return True
            case ast.Call(func=ast.Attribute(value=ast.Name(id="audit"), attr="update" | "delete")):
                return True
        return False

    sources = {path.name: path.read_text() for path in Path(inspect.getfile(Store)).parent.glob("*.py")}
    assert "store.py" in sources and "reads.py" in sources
    for name, source in sources.items():
        assert not [ast.unparse(node) for node in ast.walk(ast.parse(source)) if changes_audit(node)], name
        assert "update audit" not in source.lower() and "delete from audit" not in source.lower(), name
    assert audit_methods(Reader) == {"audit_log"}
    assert audit_methods(UnitOfWork) == {"audit", "audit_each", "audit_log"}
    assert audit_methods(Store) == {"audit_log"}
    assert audit_methods(JobQueue) == set()


# --- time ----------------------------------------------------------------------------------------------


async def test_datetimes_come_back_timezone_aware_in_utc(store: Store) -> None:
    request_id, _ = await receive(store, held("t1"))
    await decide(store, ["t1"], DecisionState.ACCEPTED)
    in_zurich = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    async with store.transaction() as work:
        job_id = await work.enqueue("remind", {}, run_after=in_zurich)
    assert job_id is not None

    request = await store.get_request(request_id)
    task = await store.get_task("t1")
    job = await store.get_job(job_id)

    assert request is not None and task is not None and job is not None
    for moment in (request.received_at, task.created_at, task.decided_at, job.created_at, job.run_after):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)
    assert job.run_after == in_zurich
    assert job.run_after.tzinfo is UTC


async def test_a_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="naive datetime"):
        async with store.transaction() as work:
            await work.enqueue("remind", {}, run_after=datetime(2026, 3, 1, 9, 30))


# --- errors at the boundary ----------------------------------------------------------------------------


async def test_a_database_never_migrated_asks_for_migrate(database_url: str) -> None:
    with pytest.raises(StoreError, match=r"older than this version.*run `abiquo-workflow migrate`"):
        await Store.open(database_url, migrate=False)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-directory/abiquo-workflow.db",  # a folder that does not exist
        "postgresql://postgres@127.0.0.1:1/test",  # nothing listens on port 1
    ],
)
async def test_an_unreachable_database_is_reported_in_a_sentence(url: str) -> None:
    with pytest.raises(StoreError, match="is not reachable") as raised:
        await Store.open(url)

    assert isinstance(raised.value, AbiquoWorkflowError)
    assert raised.value.__cause__ is not None


async def test_a_password_never_appears_in_errors() -> None:
    with pytest.raises(StoreError) as raised:
        await Store.open("postgresql://awf:s3cret-pw@127.0.0.1:1/test")

    assert "s3cret-pw" not in str(raised.value)
    assert "***" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/awf", "unsupported database URL scheme 'mysql'"),
        ("sqlite://", "in-memory SQLite database cannot be shared"),
        ("not a url", "is not a database URL"),
    ],
)
async def test_an_unusable_url_is_refused_in_a_sentence(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        await Store.open(url)


async def test_ping_answers_on_a_live_database(store: Store) -> None:
    await store.ping()
