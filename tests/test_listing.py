"""The people's lists (store/listing.py): filters, scope, keyset pages, one request with its timeline.

Every test runs on SQLite and on PostgreSQL (the `clocked` fixture).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from abiquo_workflow.domain import Channel, DecidedBy, DecisionState, DeliveryState
from abiquo_workflow.store.listing import InvalidCursor, ListingFilter, RequestState, Scope
from tests.conftest import T0, ClockedStore
from tests.test_store import ACME, GLOBEX, held, receive_at


async def decide(clocked: ClockedStore, *task_ids: str) -> None:
    async with clocked.store.transaction() as work:
        await work.decide(
            task_ids,
            DecisionState.ACCEPTED,
            decided_by=DecidedBy.APPROVER,
            actor="Alice <alice@example.com>",
            reason=None,
            channel=Channel.API,
        )


async def fail_delivery(clocked: ClockedStore, task_id: str) -> None:
    async with clocked.store.transaction() as work:
        await work.set_delivery(task_id, DeliveryState.FAILED, detail="Abiquo said 500")


async def four_requests(clocked: ClockedStore) -> list[str]:
    """Newest last: r0 Acme vApp (v1, v2), r1 Globex (b1, decided), r2 Acme (c1, delivery failed),
    r3 Acme not triaged (d1)."""
    ids = [
        await receive_at(clocked, T0, held("v1", vm=1), held("v2", vm=2), details=ACME),
        await receive_at(clocked, T0 + timedelta(minutes=1), held("b1", user_id="31"), details=GLOBEX),
        await receive_at(clocked, T0 + timedelta(minutes=2), held("c1", vm=3), details=ACME),
        await receive_at(clocked, T0 + timedelta(minutes=3), held("d1", vm=4)),
    ]
    await decide(clocked, "b1", "c1")
    await fail_delivery(clocked, "c1")
    return ids


async def test_requests_are_listed_newest_first_with_their_tasks_counted(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)

    page = await clocked.store.request_page()

    assert [s.request.id for s in page.items] == ids[::-1]
    vapp = page.items[-1]
    assert (vapp.tasks, vapp.pending, vapp.state, vapp.task_types) == (
        2,
        2,
        RequestState.PENDING,
        ("DEPLOY",),
    )
    assert (vapp.requester_nick, vapp.enterprise_name, vapp.enterprise_id) == (
        "john.doe",
        "Acme & Söhne <Ltd>",
        "2",
    )
    assert page.next_cursor is None


@pytest.mark.parametrize(("state", "expected"), [("pending", [3, 0]), ("decided", [2, 1]), ("failed", [2])])
async def test_requests_filter_by_state(clocked: ClockedStore, state: str, expected: list[int]) -> None:
    ids = await four_requests(clocked)

    page = await clocked.store.request_page(ListingFilter(state=RequestState(state)))

    assert [s.request.id for s in page.items] == [ids[i] for i in expected]


async def test_requests_of_an_approvers_scope_are_their_enterprises_only(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)

    page = await clocked.store.request_page(scope=Scope(enterprise_ids=frozenset({"3"})))

    assert [s.request.id for s in page.items] == [ids[1]]


async def test_a_requesters_scope_is_their_own_requests_in_their_enterprise(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)

    mine = await clocked.store.request_page(scope=Scope(enterprise_ids=frozenset({"2"}), requester_id="20"))
    elsewhere = await clocked.store.request_page(
        scope=Scope(enterprise_ids=frozenset({"3"}), requester_id="20")
    )

    assert [s.request.id for s in mine.items] == [ids[2], ids[0]]  # d1 is not triaged: no enterprise yet
    assert elsewhere.items == []


async def test_an_empty_scope_shows_nothing(clocked: ClockedStore) -> None:
    await four_requests(clocked)

    page = await clocked.store.request_page(scope=Scope(enterprise_ids=frozenset()))

    assert page.items == []


async def test_text_finds_requests_by_task_id_prefix_and_requester_nick(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)

    # "v2", not a hex digit: the text matches the start of request ids too, and those are random UUIDs.
    by_task = await clocked.store.request_page(ListingFilter(text="v2"))
    by_nick = await clocked.store.request_page(ListingFilter(text="GRAC"))

    assert [s.request.id for s in by_task.items] == [ids[0]]
    assert [s.request.id for s in by_nick.items] == [ids[1]]


async def test_a_like_wildcard_in_the_text_matches_only_itself(clocked: ClockedStore) -> None:
    await four_requests(clocked)

    page = await clocked.store.request_page(ListingFilter(text="%"))

    assert page.items == []


async def test_requests_filter_by_enterprise_task_type_and_age(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)

    acme = await clocked.store.request_page(ListingFilter(enterprise_id="2"))
    undeploys = await clocked.store.request_page(ListingFilter(task_type="undeploy"))
    recent = await clocked.store.request_page(ListingFilter(since=T0 + timedelta(minutes=2)))
    older = await clocked.store.request_page(ListingFilter(before=T0 + timedelta(minutes=1)))

    assert [s.request.id for s in acme.items] == [ids[2], ids[0]]
    assert undeploys.items == []
    assert [s.request.id for s in recent.items] == [ids[3], ids[2]]
    assert [s.request.id for s in older.items] == [ids[0]]


async def test_request_pages_follow_their_cursor_to_the_end(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)
    seen: list[str] = []
    cursor = None

    for _ in range(3):
        page = await clocked.store.request_page(limit=2, cursor=cursor)
        seen += [s.request.id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == ids[::-1]


async def test_tasks_are_listed_newest_first_in_keyset_pages(clocked: ClockedStore) -> None:
    await four_requests(clocked)

    first = await clocked.store.task_page(limit=3)
    rest = await clocked.store.task_page(limit=3, cursor=first.next_cursor)

    assert [t.task.task_id for t in first.items] == ["d1", "c1", "b1"]
    assert [t.task.task_id for t in rest.items] == ["v2", "v1"]
    assert rest.next_cursor is None


async def test_tasks_filter_by_state_and_scope(clocked: ClockedStore) -> None:
    await four_requests(clocked)

    failed = await clocked.store.task_page(ListingFilter(state=RequestState.FAILED))
    pending_acme = await clocked.store.task_page(
        ListingFilter(state=RequestState.PENDING), scope=Scope(enterprise_ids=frozenset({"2"}))
    )

    assert [t.task.task_id for t in failed.items] == ["c1"]
    assert [t.task.task_id for t in pending_acme.items] == ["v2", "v1"]
    assert pending_acme.items[0].enterprise_id == "2"


async def test_a_cursor_of_the_other_list_is_refused(clocked: ClockedStore) -> None:
    await four_requests(clocked)
    page = await clocked.store.task_page(limit=1)
    assert page.next_cursor is not None

    with pytest.raises(InvalidCursor):
        await clocked.store.request_page(cursor=page.next_cursor)
    with pytest.raises(InvalidCursor):
        await clocked.store.request_page(cursor="not a cursor")


async def test_a_request_is_read_with_its_tasks_and_audit_timeline(clocked: ClockedStore) -> None:
    ids = await four_requests(clocked)
    async with clocked.store.transaction() as work:
        await work.audit("decided", actor="Alice", channel=Channel.API, request_id=ids[2], task_id="c1")

    timeline = await clocked.store.request_timeline(ids[2])

    assert timeline is not None
    assert [t.task_id for t in timeline.tasks] == ["c1"]
    assert [line.action for line in timeline.audit] == ["decided"]
    assert timeline.state is RequestState.FAILED
    assert (timeline.enterprise_id, timeline.requester_nick) == ("2", "john.doe")
    assert await clocked.store.request_timeline("no-such-request") is None
