"""Two replicas on one PostgreSQL database, as the README promises: two real `abiquo-workflow serve`
processes, each with its worker, woken by LISTEN/NOTIFY, claiming jobs with FOR UPDATE SKIP LOCKED.

Clicks spread over both give one decision and one `continue` per task; a replica killed (SIGKILL) in
the middle of deliveries leaves them to the other once their leases run out; a burst of callbacks
spread over both is triaged once per request. PostgreSQL only (SQLite serves one instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import pytest

from abiquo_workflow.domain import DecisionState, DeliveryState
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import Store
from tests.conftest import CLIENT_TLS, TEST_SECRET_KEY, free_port
from tests.loop_support import (
    Link,
    all_link,
    open_confirmation,
    post_form,
    submit,
    task_link,
    wait_until,
)

COMMAND = str(Path(sys.executable).with_name("abiquo-workflow"))
READY_TIMEOUT = 30.0
ALICE = "alice.smith@acme.example"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True),
]


@dataclass
class Replica:
    """One `serve` process (web and worker) of the pair."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def environment(database_url: str, port: int, simulator: SimulatorServer, inbox: Inbox) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not (k.startswith("AWF_") and "__" in k)}
    return {
        **inherited,
        "AWF_SERVER__BIND": f"127.0.0.1:{port}",
        "AWF_RECONCILE__INTERVAL": "0",  # off: tests/test_loop_reconcile.py turns it on
        "AWF_SERVER__SECRET_KEY": TEST_SECRET_KEY,  # shared: a link made by one works on the other
        "AWF_DATABASE__URL": database_url,
        "AWF_ABIQUO__API_URL": simulator.api_url,
        "AWF_ABIQUO__RETRIES": "0",
        "AWF_MAIL__SMTP_HOST": "127.0.0.1",
        "AWF_MAIL__SMTP_PORT": str(inbox.port),
        "AWF_WORKER__LEASE": "2",
        "AWF_WORKER__RETRY_BASE_DELAY": "0.05",
        "AWF_WORKER__RETRY_MAX_DELAY": "0.3",
    }


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/readyz", timeout=1, verify=CLIENT_TLS).status_code == 200
    except httpx2.TransportError:
        return False


@contextlib.contextmanager
def replicas(
    database_url: str, simulator: SimulatorServer, inbox: Inbox, folder: Path, count: int = 2
) -> Iterator[list[Replica]]:
    """`count` serve processes on one database, started together, stopped (if alive) at the end."""
    started: list[Replica] = []
    try:
        for n in range(count):
            port = free_port()
            log = folder / f"serve-{n}.log"
            with log.open("ab") as output:
                process = subprocess.Popen(
                    [COMMAND, "serve"],
                    env=environment(database_url, port, simulator, inbox),
                    cwd=folder,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            started.append(Replica(f"http://127.0.0.1:{port}", process, log))
        deadline = time.monotonic() + READY_TIMEOUT
        for replica in started:
            while not _ready(replica.url):
                if replica.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"a replica did not start:\n{replica.log.read_text()}")
                time.sleep(0.05)
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.terminate()
        for replica in started:
            try:
                replica.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()


@pytest.fixture
def database(migrated_database_url: str) -> str:
    """A migrated PostgreSQL database of the test's own (skipped without AWF_TEST_POSTGRES_URL)."""
    return migrated_database_url


async def hold(simulator: SimulatorServer, replica: Replica, **target: Any) -> list[str]:
    """The simulator holds tasks and POSTs the callback to `replica`; their ids."""
    async with httpx2.AsyncClient(verify=CLIENT_TLS, timeout=30) as client:
        response = await client.post(
            f"{simulator.url}/_sim/requests",
            json={"action": "deploy", **target, "callback_url": f"{replica.url}/callback"},
        )
    result: dict[str, Any] = response.json()
    assert response.status_code == 201 and result["callback"]["status"] == 200, result
    return [task["task_id"] for task in result["tasks"]]


def on(replica: Replica, link: Link) -> Link:
    """The same link, opened on another replica (the token is signed with the shared secret)."""
    parts = urlsplit(link.url)
    moved = urlunsplit(parts._replace(netloc=urlsplit(replica.url).netloc))
    return Link(moved, link.path, link.params)


def successful_continues(simulator: SimulatorServer, task_id: str) -> int:
    return sum(
        1
        for call in simulator.simulator.decision_calls()
        if call.task_id == task_id and call.action == "continue" and call.status == 204
    )


async def test_clicks_spread_over_two_replicas_make_one_decision_and_one_continue_per_task(
    database: str, simulator: SimulatorServer, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    with replicas(database, simulator, smtp_inbox, tmp_path) as (first, second):
        task_ids = await hold(simulator, first, vapp=1)
        messages = await smtp_inbox.wait_for(3)
        [alice] = [m for m in messages if ALICE in m.rcpt_tos]

        async def click(replica: Replica, link: Link) -> int:
            """The status of the confirmation page, when another click decided before it opened
            (410), or else of pressing its button."""
            async with httpx2.AsyncClient(verify=CLIENT_TLS, timeout=30) as browser:
                page = await browser.get(on(replica, link).url)
                if page.status_code == 410:
                    return 410
                assert page.status_code == 200, page.text
                return (await submit(browser, str(page.url), post_form(page.text))).status_code

        # Each task accepted on one replica and declined on the other at once, and accepted again by
        # "accept all" on the first: three clicks race for every task.
        clicks = [click(first, all_link(alice, "accept"))]
        for task_id in task_ids:
            clicks.append(click(first, task_link(alice, "/accept", task_id)))
            clicks.append(click(second, task_link(alice, "/decline", task_id)))
        statuses = await asyncio.gather(*clicks)
        assert set(statuses) <= {200, 410}

        async with await Store.open(database, migrate=False) as store:

            async def delivered() -> bool:
                tasks = await store.get_tasks(task_ids)
                return all(t.delivery is DeliveryState.DELIVERED for t in tasks)

            await wait_until(delivered, "every task delivered", seconds=30)
            tasks = await store.get_tasks(task_ids)

    assert all(t.decision in (DecisionState.ACCEPTED, DecisionState.DECLINED) for t in tasks)
    for task in tasks:
        calls = [c for c in simulator.simulator.decision_calls() if c.task_id == task.task_id]
        assert [c.status for c in calls] == [204], calls  # one call, the one that decided


async def test_a_replica_killed_during_deliveries_leaves_them_to_the_other(
    database: str, simulator: SimulatorServer, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    with replicas(database, simulator, smtp_inbox, tmp_path) as (first, second):
        task_ids = await hold(simulator, first, vapp=1)
        messages = await smtp_inbox.wait_for(3)
        [alice] = [m for m in messages if ALICE in m.rcpt_tos]
        # Abiquo takes its time over the continues: they are in flight when the first replica dies.
        async with httpx2.AsyncClient(verify=CLIENT_TLS) as control:
            slow = {"count": 3, "latency": 1.5, "match": "/action/continue"}
            assert (await control.post(f"{simulator.url}/_sim/faults", json=slow)).status_code == 201
            async with httpx2.AsyncClient(verify=CLIENT_TLS, timeout=30) as browser:
                page, form = await open_confirmation(browser, on(first, all_link(alice, "accept")))
                assert (await submit(browser, str(page.url), form)).status_code == 200
        await asyncio.sleep(0.5)
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=10) == -signal.SIGKILL

        async with await Store.open(database, migrate=False) as store:

            async def delivered() -> bool:
                tasks = await store.get_tasks(task_ids)
                return all(t.delivery is DeliveryState.DELIVERED for t in tasks)

            await wait_until(delivered, "the survivor to deliver every task", seconds=30)

    assert second.process.poll() is None or second.process.returncode == 0
    for task_id in task_ids:
        # Abiquo continued each task once: a repeat by the survivor met TASK-2 and was recognised.
        assert successful_continues(simulator, task_id) == 1


async def test_a_burst_spread_over_two_replicas_is_triaged_once_per_request(
    database: str, simulator: SimulatorServer, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    with replicas(database, simulator, smtp_inbox, tmp_path) as pair:
        vms = list(range(101, 113))  # twelve VMs of Acme's "Big batch", one request each, alternating
        held = await asyncio.gather(*(hold(simulator, pair[n % 2], vm=vm) for n, vm in enumerate(vms)))
        await smtp_inbox.wait_for(3 * len(vms), timeout=60)

        async with await Store.open(database, migrate=False) as store:
            task_ids = [task_id for ids in held for task_id in ids]
            tasks = await store.get_tasks(task_ids)
            triaged = [
                [line.action for line in await store.audit_log(request_id=request_id)].count("triaged")
                for request_id in {t.request_id for t in tasks}
            ]

    assert len(tasks) == len(vms)
    assert triaged == [1] * len(vms)
    await asyncio.sleep(0.5)  # nothing more arrives: each approver got one email per request
    assert len(smtp_inbox.messages) == 3 * len(vms)
