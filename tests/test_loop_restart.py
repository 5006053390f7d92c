"""A connector process killed (SIGKILL) at the worst moments, then started again on the same database:
the decision it had taken still reaches Abiquo, exactly once.

These run the real `abiquo-workflow serve` command as a subprocess, configured only through
`AWF_…` environment variables, against the simulator and the SMTP inbox of the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx2
import pytest

from abiquo_workflow.config import build_settings
from abiquo_workflow.domain import DeliveryState
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.servers import BackgroundServer
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.web.app import create_app
from tests.conftest import CLIENT_TLS, TEST_SECRET_KEY, Connector, free_port
from tests.loop_support import (
    confirm,
    open_store,
    task_link,
    to,
    wait_for_calls,
    wait_for_task,
    wait_until,
    wait_until_idle,
)

COMMAND = str(Path(sys.executable).with_name("abiquo-workflow"))
ALICE = "alice.smith@acme.example"
JOHN = "john.doe@acme.example"
READY_TIMEOUT = 30.0

#: Every test here runs the command line in subprocesses.
pytestmark = pytest.mark.slow


@pytest.fixture
def environment(tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox) -> dict[str, str]:
    """The settings of every connector process of a test: one port, one SQLite file, short leases."""
    port = free_port()
    simulator.simulator.update_settings({"callback_url": f"http://127.0.0.1:{port}/callback"})
    inherited = {k: v for k, v in os.environ.items() if not (k.startswith("AWF_") and "__" in k)}
    return {
        **inherited,
        "AWF_SERVER__BIND": f"127.0.0.1:{port}",
        "AWF_RECONCILE__INTERVAL": "0",  # off: tests/test_loop_reconcile.py turns it on
        "AWF_SERVER__SECRET_KEY": TEST_SECRET_KEY,
        "AWF_DATABASE__URL": f"sqlite:///{tmp_path / 'restart.db'}",
        "AWF_ABIQUO__API_URL": simulator.api_url,
        "AWF_ABIQUO__RETRIES": "0",  # retries are the worker's here (stamina would sleep in a subprocess)
        "AWF_MAIL__SMTP_HOST": "127.0.0.1",
        "AWF_MAIL__SMTP_PORT": str(smtp_inbox.port),
        "AWF_WORKER__LEASE": "1",
        "AWF_WORKER__RETRY_BASE_DELAY": "0.05",
        "AWF_WORKER__RETRY_MAX_DELAY": "0.3",
    }


def connector_of(environment: Mapping[str, str], simulator: SimulatorServer, inbox: Inbox) -> Connector:
    """A handle on the connector the environment describes (its URL, settings, simulator, inbox)."""
    settings = build_settings({}, environ=environment)
    return Connector(f"http://{settings.server.bind}", settings, simulator, inbox)


@contextlib.contextmanager
def serving(environment: Mapping[str, str], log: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `abiquo-workflow serve [options]` until it answers /readyz (/healthz with `--no-worker`, whose
    /readyz is 503 while no worker runs); stop it (if still alive) at the end."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [COMMAND, "serve", *options],
            env=dict(environment),
            cwd=log.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = "healthz" if "--no-worker" in options else "readyz"
        ready_url = f"http://{environment['AWF_SERVER__BIND']}/{ready}"
        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`serve {' '.join(options)}` did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=1, verify=CLIENT_TLS).status_code == 200
    except httpx2.TransportError:
        return False


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no shutdown, no draining, whatever was in flight is cut off."""
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL


async def test_a_decision_taken_just_before_a_crash_is_delivered_after_restart_once(
    environment: dict[str, str], simulator: SimulatorServer, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    connector = connector_of(environment, simulator, smtp_inbox)
    log = tmp_path / "serve.log"
    # The approval emails come from the same connector served in this process (a start saved).
    async with BackgroundServer(
        create_app(connector.settings, lifespan=web_lifespan(connector.settings)),
        port=connector.settings.server.port,
    ):
        held = await connector.request(action="deploy", vm=1)
        task_id = held["tasks"][0]["task_id"]
        approvals = await smtp_inbox.wait_for(3)
    accept = task_link(to(approvals, ALICE)[0], "/accept", task_id)

    # A process without a worker takes the decision (and queues its delivery), then dies.
    with serving(environment, log, "--no-worker") as web_only:
        async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser:
            assert (await confirm(browser, accept, reason="before the crash")).status_code == 200
        kill(web_only)
    async with open_store(connector) as store:
        decided = await store.get_task(task_id)
    assert decided is not None and decided.delivery is DeliveryState.QUEUED
    assert connector.decision_calls() == []

    with serving(environment, log):
        [call] = await wait_for_calls(connector, 1)
        async with open_store(connector) as store:
            task = await wait_for_task(
                store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
            )
            await smtp_inbox.wait_for(4)
            await wait_until_idle(store)

    assert (call["task_id"], call["action"], call["status"]) == (task_id, "continue", 204)
    assert "before the crash" in call["body"]
    assert len(connector.decision_calls()) == 1
    assert task.delivery_attempts == 1
    assert len(to(smtp_inbox.messages, JOHN)) == 1


async def test_a_crash_while_abiquo_is_answering_a_continue_delivers_it_exactly_once(
    environment: dict[str, str], simulator: SimulatorServer, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    environment["AWF_ABIQUO__TIMEOUT"] = "60"  # the first POST is still waiting when the process dies
    connector = connector_of(environment, simulator, smtp_inbox)
    log = tmp_path / "serve.log"
    with serving(environment, log) as first:
        held = await connector.request(action="deploy", vm=1)
        task_id = held["tasks"][0]["task_id"]
        approvals = await smtp_inbox.wait_for(3)
        accept = task_link(to(approvals, ALICE)[0], "/accept", task_id)
        async with httpx2.AsyncClient(verify=CLIENT_TLS) as client:
            slow = await client.post(
                f"{simulator.url}/_sim/faults", json={"count": 1, "latency": 5, "match": "/action/continue"}
            )
            assert slow.status_code == 201, slow.text
            assert (await confirm(client, accept)).status_code == 200
        # The fault is used up when the POST arrives: it is in flight now.
        await wait_until(lambda: not simulator.simulator.faults(), "the continue to reach Abiquo")
        kill(first)

    with serving(environment, log):
        async with open_store(connector) as store:
            task = await wait_for_task(
                store, task_id, lambda t: t.delivery is DeliveryState.DELIVERED, "delivered"
            )
            await smtp_inbox.wait_for(4)
            await wait_until_idle(store)

    calls = connector.decision_calls()
    assert [c["status"] for c in calls if c["status"] == 204] == [204]  # exactly one continue got through
    assert {(c["action"], c["status"]) for c in calls} <= {("continue", 204), ("continue", 409)}
    assert simulator.simulator.task(task_id).state.value == "FINISHED_SUCCESSFULLY"
    assert task.delivery_detail is not None
    if any(c["status"] == 409 for c in calls):
        # The cut-off POST got through after all, and the repeat was refused: still "delivered".
        assert "TASK-2" in task.delivery_detail and "already shows" in task.delivery_detail
    else:
        assert task.delivery_detail == "Abiquo continued the task"
    assert len(to(smtp_inbox.messages, JOHN)) == 1
