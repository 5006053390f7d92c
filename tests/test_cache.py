"""Reads shared across requests (abiquo/cache.py), against the simulator: what a burst of triages of one
enterprise reads, what is never cached, and the approver check that keeps its own, live, list.

Time is a `Clock` the tests move by hand; nothing sleeps. Abiquo's side is counted from the simulator's
own log of API calls (`simulator.simulator.api_calls()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import httpx2
import pytest
import stamina

from abiquo_workflow.abiquo.cache import ReadCache
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.config import AbiquoSettings, PolicySettings, build_settings
from abiquo_workflow.directory import ApproverDirectory
from abiquo_workflow.domain import HeldTask
from abiquo_workflow.enrichment import enrich
from abiquo_workflow.exceptions import AbiquoNotFound, AbiquoUnavailable, ConfigError
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store.records import TaskRecord
from abiquo_workflow.verification import verify
from tests.conftest import CLIENT_TLS

ACME = "admin/enterprises/2"
USERS = "/api/admin/enterprises/2/users"  # 40 users: two pages
ALICE = "Alice Smith <alice.smith@acme.example>"
#: Single VMs of Acme's "Big batch" vApp: one VDC, one datacenter, one vApp, one requester (John Doe).
BATCH = range(101, 106)
RETRIES = 2
TTL = 30.0


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def retries_without_sleeping() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings_for(simulator: SimulatorServer, **changes: object) -> AbiquoSettings:
    return AbiquoSettings.model_validate({"api_url": simulator.api_url, "retries": RETRIES, **changes})


@pytest.fixture
async def client(simulator: SimulatorServer, clock: Clock) -> AsyncIterator[AbiquoClient]:
    """A client whose cache keeps answers `TTL` seconds of `clock`."""
    async with AbiquoClient(settings_for(simulator), cache=ReadCache(TTL, clock=clock)) as opened:
        yield opened


def reads_of(simulator: SimulatorServer, path: str) -> int:
    """How many GETs of exactly `path` (every page of a list counts) the simulator answered."""
    return sum(1 for call in simulator.simulator.api_calls() if call.method == "GET" and call.path == path)


def record_of(task: HeldTask, position: int) -> TaskRecord:
    """A pending task as the store would hand it to triage."""
    return TaskRecord.arrived(task, request_id="r1", position=position, created_at=datetime.now(UTC))


async def hold(
    simulator: SimulatorServer, *, vm: int | None = None, vapp: int | None = None
) -> list[TaskRecord]:
    """The simulator holds a deploy and POSTs its callback; the callback's tasks, as triage gets them."""
    posted: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        posted.append(request)
        return httpx2.Response(200)

    await simulator.simulator.request(
        "deploy",
        vm=vm,
        vapp=vapp,
        callback_url="http://connector.test/callback",
        transport=httpx2.MockTransport(answer),
    )
    [request] = posted
    callback = parse_callback(request.content, request.headers.get("content-type"))
    return [record_of(task, n) for n, task in enumerate(callback.tasks)]


async def burst(simulator: SimulatorServer) -> list[list[TaskRecord]]:
    """One single-VM request per VM of `BATCH`, all of one enterprise."""
    return [await hold(simulator, vm=vm) for vm in BATCH]


async def arm_fault(simulator: SimulatorServer, **fault: object) -> None:
    async with httpx2.AsyncClient(verify=CLIENT_TLS) as control:
        response = await control.post(f"{simulator.url}/_sim/faults", json=fault)
    assert response.status_code == 201, response.text


# --- A burst of triages of one enterprise ---------------------------------------------------------------


async def test_enrichments_of_one_enterprise_read_its_users_once_within_the_ttl(
    simulator: SimulatorServer,
) -> None:
    requests = await burst(simulator)
    async with AbiquoClient(settings_for(simulator)) as built_from_settings:  # abiquo.cache_ttl: 30 s
        enriched = [await enrich(built_from_settings, tasks, with_users=True) for tasks in requests]

    assert [len(each.enterprise_users) for each in enriched] == [40] * len(requests)
    assert reads_of(simulator, USERS) == 2  # one read of its two pages


async def test_a_burst_costs_its_requests_own_reads_plus_one_read_of_what_they_share(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    requests = await burst(simulator)
    for tasks in requests:
        await enrich(client, tasks, with_users=True)

    calls = [call.path for call in simulator.simulator.api_calls() if call.method == "GET"]
    vm = "/api/cloud/virtualdatacenters/1/virtualappliances/2/virtualmachines/{}"
    own = [  # read by each request: its requester, its VM, the VM's disks and volumes
        path
        for n in BATCH
        for path in (
            "/api/admin/enterprises/2/users/20",
            vm.format(n),
            vm.format(n) + "/storage/disks",
            vm.format(n) + "/storage/volumes",
        )
    ]
    shared = [  # read once for the whole burst
        "/api/admin/enterprises/2",
        USERS,
        USERS,  # its second page
        "/api/cloud/virtualdatacenters/1",
        "/api/cloud/virtualdatacenters/1/virtualappliances/2",
        "/api/cloud/locations/1",
    ]
    assert sorted(calls) == sorted(own + shared)


async def test_concurrent_enrichments_share_one_in_flight_read(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    requests = await burst(simulator)
    simulator.simulator.update_settings({"latency": 0.02})  # every read overlaps the others

    enriched = await asyncio.gather(*(enrich(client, tasks, with_users=True) for tasks in requests))

    assert all(len(each.enterprise_users) == 40 for each in enriched)
    assert reads_of(simulator, USERS) == 2
    assert reads_of(simulator, "/api/admin/enterprises/2") == 1


async def test_three_hundred_concurrent_reads_of_the_users_are_one_read(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    lists = await asyncio.gather(*(client.enterprise_users(ACME, cached=True) for _ in range(300)))

    assert {len(users) for users in lists} == {40}
    assert reads_of(simulator, USERS) == 2


async def test_after_the_ttl_the_users_are_read_again(
    simulator: SimulatorServer, client: AbiquoClient, clock: Clock
) -> None:
    [first, second] = [await hold(simulator, vm=vm) for vm in (101, 102)]
    await enrich(client, first, with_users=True)
    clock.advance(TTL)

    await enrich(client, second, with_users=True)

    assert reads_of(simulator, USERS) == 4


async def test_a_list_younger_than_the_ttl_is_not_read_again(
    simulator: SimulatorServer, client: AbiquoClient, clock: Clock
) -> None:
    await client.enterprise_users(ACME, cached=True)
    clock.advance(TTL - 0.1)

    await client.enterprise_users(ACME, cached=True)

    assert reads_of(simulator, USERS) == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"count": 1, "status": 404}, AbiquoNotFound),
        ({"count": RETRIES + 1, "status": 503}, AbiquoUnavailable),  # an outage: every attempt fails
    ],
    ids=["404", "outage"],
)
async def test_a_failed_read_is_not_cached(
    simulator: SimulatorServer, client: AbiquoClient, fault: dict[str, object], error: type[Exception]
) -> None:
    await arm_fault(simulator, match="/enterprises/2/users", **fault)
    with pytest.raises(error):
        await client.enterprise_users(ACME, cached=True)

    users = await client.enterprise_users(ACME, cached=True)  # no time has passed

    assert len(users) == 40
    assert reads_of(simulator, USERS) == int(str(fault["count"])) + 2


async def test_a_cache_of_ttl_0_reads_every_time(simulator: SimulatorServer) -> None:
    requests = await burst(simulator)
    async with AbiquoClient(settings_for(simulator, cache_ttl=0)) as uncached:
        for tasks in requests:
            await enrich(uncached, tasks, with_users=True)

    assert reads_of(simulator, USERS) == 2 * len(requests)
    assert reads_of(simulator, "/api/cloud/virtualdatacenters/1") == len(requests)


async def test_shared_resources_are_read_live_unless_cached_is_asked_for(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    for _ in range(2):
        await client.enterprise_users(ACME)
        await client.get_enterprise(ACME)
        await client.get_vdc("cloud/virtualdatacenters/1")

    assert reads_of(simulator, USERS) == 4
    assert reads_of(simulator, "/api/admin/enterprises/2") == 2
    assert reads_of(simulator, "/api/cloud/virtualdatacenters/1") == 2


async def test_relative_and_absolute_hrefs_of_one_resource_share_an_entry(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    await client.get_vdc("cloud/virtualdatacenters/1", cached=True)

    await client.get_vdc(f"{simulator.api_url}/cloud/virtualdatacenters/1", cached=True)

    assert reads_of(simulator, "/api/cloud/virtualdatacenters/1") == 1


# --- What must be live ----------------------------------------------------------------------------------


async def test_verification_reads_each_task_every_time(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    tasks = await hold(simulator, vapp=1)  # three VMs, three tasks

    for _ in range(3):
        outcome = await verify(client, tasks)
        assert len(outcome.confirmed) == 3

    for task in tasks:
        assert task.self_href is not None
        assert reads_of(simulator, f"/api/{task.self_href}") == 3


async def test_a_task_decided_meanwhile_is_seen_at_once(
    simulator: SimulatorServer, client: AbiquoClient
) -> None:
    [task] = await hold(simulator, vm=1)
    assert (await verify(client, [task])).confirmed
    simulator.simulator.cancel_as_requester(task.task_id, "changed my mind")

    outcome = await verify(client, [task])

    assert [rejection.kind for rejection in outcome.rejected] == ["not_held"]


LiveRead = Callable[[AbiquoClient, TaskRecord], Awaitable[object]]
LIVE_READS: dict[str, tuple[LiveRead, str]] = {
    "task": (lambda c, t: c.get_task(t.self_href or ""), "/tasks/"),
    "vm": (lambda c, t: c.get_vm(t.target_href or ""), "/virtualmachines/1"),
    "requester": (lambda c, t: c.get_user(t.user_href or ""), "/users/20"),
    "pending tasks": (lambda c, _t: c.pending_tasks(ACME), "/action/pendingtasks"),
    "login": (lambda c, _t: c.login("jdoe", "jdoe"), "/api/login"),
}


@pytest.mark.parametrize("what", LIVE_READS)
async def test_what_must_be_live_is_read_every_time(
    simulator: SimulatorServer, client: AbiquoClient, what: str
) -> None:
    [task] = await hold(simulator, vm=1)
    read, path_part = LIVE_READS[what]

    await read(client, task)
    await read(client, task)

    def matches(path: str) -> bool:
        return path.endswith(path_part) if path_part != "/tasks/" else "/tasks/" in path

    assert sum(1 for call in simulator.simulator.api_calls() if matches(call.path)) == 2


# --- The decision-time approver check keeps its own, live, list -----------------------------------------


async def test_the_approver_check_asks_abiquo_even_right_after_triage_read_the_users(
    simulator: SimulatorServer, client: AbiquoClient, clock: Clock
) -> None:
    [tasks] = [await hold(simulator, vm=1)]
    enriched = await enrich(client, tasks, with_users=True)
    assert "alice.smith@acme.example" in {user.email for user in enriched.enterprise_users}
    simulator.simulator.change_role(10, "USER")  # Alice stops approving just after her email went out
    directory = ApproverDirectory(client, PolicySettings(), clock=clock)

    assert not await directory.is_approver(ACME, ALICE)


async def test_the_approver_check_reads_once_per_its_ttl(
    simulator: SimulatorServer, client: AbiquoClient, clock: Clock
) -> None:
    directory = ApproverDirectory(client, PolicySettings(), ttl=60, clock=clock)
    await directory.is_approver(ACME, ALICE)
    clock.advance(59.9)
    await directory.is_approver(ACME, ALICE)
    assert reads_of(simulator, USERS) == 2

    clock.advance(0.1)
    await directory.is_approver(ACME, ALICE)

    assert reads_of(simulator, USERS) == 4


async def test_concurrent_approver_checks_share_one_read(
    simulator: SimulatorServer, client: AbiquoClient, clock: Clock
) -> None:
    directory = ApproverDirectory(client, PolicySettings(), clock=clock)
    simulator.simulator.update_settings({"latency": 0.02})

    answers = await asyncio.gather(*(directory.is_approver(ACME, ALICE) for _ in range(20)))

    assert answers == [True] * 20
    assert reads_of(simulator, USERS) == 2


# --- The cache itself -----------------------------------------------------------------------------------


def counting(value: str) -> tuple[list[str], Callable[[], Awaitable[str]]]:
    """A read that returns `value` and notes each time it is made."""
    made: list[str] = []

    async def read() -> str:
        made.append(value)
        await asyncio.sleep(0)
        return value

    return made, read


async def test_the_cache_keeps_at_most_max_entries_and_drops_the_oldest(clock: Clock) -> None:
    cache = ReadCache(TTL, max_entries=2, clock=clock)
    made, read = counting("a")
    for key in ("a", "b", "c"):
        await cache.get(key, read)

    await cache.get("b", read)
    await cache.get("a", read)  # "a" was the oldest: it went

    assert len(cache) == 2
    assert len(made) == 4


async def test_expired_answers_are_dropped_when_another_is_kept(clock: Clock) -> None:
    cache = ReadCache(TTL, clock=clock)
    _, read = counting("x")
    for key in range(10):
        await cache.get(key, read)
    clock.advance(TTL)

    await cache.get("new", read)

    assert len(cache) == 1


async def test_a_cancelled_caller_does_not_cancel_the_read_others_wait_for(clock: Clock) -> None:
    cache = ReadCache(TTL, clock=clock)
    release = asyncio.Event()
    made: list[int] = []

    async def slow() -> str:
        made.append(1)
        await release.wait()
        return "users"

    impatient = asyncio.create_task(cache.get("k", slow))
    patient = asyncio.create_task(cache.get("k", slow))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()

    assert await patient == "users"
    assert impatient.cancelled()
    assert made == [1]


async def test_every_caller_waiting_on_a_failed_read_gets_its_error(clock: Clock) -> None:
    cache = ReadCache(TTL, clock=clock)

    async def failing() -> str:
        await asyncio.sleep(0)
        raise AbiquoUnavailable("Abiquo is down.")

    outcomes = await asyncio.gather(*(cache.get("k", failing) for _ in range(3)), return_exceptions=True)

    assert [type(outcome) for outcome in outcomes] == [AbiquoUnavailable] * 3
    assert len(cache) == 0


async def test_an_answer_is_as_old_as_the_moment_its_read_was_sent(clock: Clock) -> None:
    cache = ReadCache(TTL, clock=clock)
    made: list[int] = []

    async def slow() -> int:
        made.append(1)
        clock.advance(TTL)  # the answer took the whole ttl to arrive
        return 1

    await cache.get("k", slow)
    await cache.get("k", slow)

    assert made == [1, 1]


def test_a_negative_cache_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"abiquo\.cache_ttl"):
        build_settings({"abiquo": {"cache_ttl": -1}}, environ={})
