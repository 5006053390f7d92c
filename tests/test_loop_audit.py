"""What operators can read afterwards: the audit trail of a request (arrival, triage, every email, every
delivery attempt, in order; `tasks show` prints it) and the log at its default level (each step of the
loop once, with the request's and task's ids, and never a secret or a link's token)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from abiquo_workflow.domain import DeliveryState
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store.records import AuditRecord
from abiquo_workflow.task_commands import show_task
from tests.cli_support import WAIT, CliProcess, free_port, wait_until_answers, write_toml
from tests.conftest import CLIENT_TLS, TEST_SECRET_KEY, Connector, ConnectorFactory
from tests.loop_support import confirm, open_store, task_link, to, wait_for_calls, wait_until_idle

ALICE = "alice.smith@acme.example"
BOB = "bob.jones@acme.example"
ZOE = "zoe.zimmermann@acme.example"
JOHN = "john.doe@acme.example"


@pytest.fixture
def connector_without_client_retries(connector_factory: ConnectorFactory) -> Iterator[Connector]:
    """A connector whose Abiquo client tries each request once: one 5xx fails a delivery's attempt, and
    the worker retries the job."""
    with connector_factory(abiquo={"retries": 0}) as running:
        yield running


def ordered(trail: list[AuditRecord], *wanted: tuple[str, str]) -> list[int]:
    """The position in `trail` of the first line of each (action, text in its detail or actor) wanted."""
    found = []
    for action, text in wanted:
        matches = [
            n
            for n, line in enumerate(trail)
            if line.action == action and text in f"{line.actor or ''} {line.detail or ''}"
        ]
        assert matches, f"no {action} line about {text!r} in {[(a.action, a.detail) for a in trail]}"
        found.append(matches[0])
    return found


async def test_the_audit_of_a_decided_and_delivered_request_lists_every_step_and_attempt_in_order(
    connector_without_client_retries: Connector,
) -> None:
    connector = connector_without_client_retries
    held = await connector.request(action="deploy", vm=1)
    task_id = held["tasks"][0]["task_id"]
    alice = to(await connector.inbox.wait_for(3), ALICE)[0]
    async with httpx2.AsyncClient(
        verify=CLIENT_TLS
    ) as client:  # Abiquo refuses the first continue with a 503
        armed = await client.post(
            f"{connector.simulator.url}/_sim/faults",
            json={"count": 1, "status": 503, "match": "/action/continue"},
        )
    assert armed.status_code == 201, armed.text

    async with httpx2.AsyncClient(verify=CLIENT_TLS) as browser, open_store(connector) as store:
        answer = await confirm(browser, task_link(alice, "/accept", task_id), reason="go ahead")
        assert answer.status_code == 200
        await wait_for_calls(connector, 1)
        await connector.inbox.wait_for(6)
        await wait_until_idle(store)
        task = await store.get_task(task_id)
        assert task is not None
        trail = await store.audit_log(request_id=task.request_id)
    shown = await show_task(connector.settings, task_id)

    assert task.delivery is DeliveryState.DELIVERED and task.delivery_attempts == 2
    steps = ordered(
        trail,
        ("received", "1 task(s)"),
        ("verified", "Abiquo holds 1 task"),
        ("triaged", "asked"),
        ("emailed", "approval email"),
        ("decided", "accepted (approver): go ahead"),
        ("delivery_retry", "attempt 1 failed"),
        ("delivered", "attempt 2, HTTP 204"),
        ("emailed", "outcome email"),
    )
    assert steps == sorted(steps)
    actions = [line.action for line in trail]
    assert actions.count("received") == actions.count("triaged") == actions.count("decided") == 1
    assert actions.count("delivery_retry") == actions.count("delivered") == 1
    [retry] = [line for line in trail if line.action == "delivery_retry"]
    assert retry.task_id == task_id and retry.detail is not None and "503" in retry.detail
    emailed = sorted((line.detail, line.actor) for line in trail if line.action == "emailed")
    assert emailed == [
        ("approval email", ALICE),
        ("approval email", BOB),
        ("approval email", ZOE),
        ("outcome email", JOHN),
        ("settled email", BOB),
        ("settled email", ZOE),
    ]
    [settled] = [line for line in trail if line.action == "settled"]
    assert settled.detail is not None and f"telling {BOB}, {ZOE}" in settled.detail
    assert trail.index(settled) > steps[4]  # told once it was decided
    # `tasks show` prints the same trail: the request's lines with the task's own, in order.
    printed = [line.split()[2] for line in shown[shown.index("audit") + 1 :]]
    assert printed == actions
    assert any("delivery_retry" in line and "attempt 1 failed" in line for line in shown)


# --- the log at its default level, as `serve` writes it ------------------------------------------------


def write_config(folder: Path, simulator: SimulatorServer, inbox: Inbox) -> tuple[Path, str]:
    port = free_port()
    config = write_toml(
        folder / "abiquo-workflow.toml",
        {
            "server": {"bind": f"127.0.0.1:{port}", "secret_key": TEST_SECRET_KEY},
            "database": {"url": f"sqlite:///{folder / 'serve.db'}"},
            "abiquo": {"api_url": simulator.api_url, "retries": 1, "timeout": 5},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": inbox.port, "timeout": 5},
            "worker": {"retry_base_delay": 0.05, "retry_max_delay": 0.5},
        },
    )
    return config, f"http://127.0.0.1:{port}"


def lines_of(log: str, event: str) -> list[str]:
    return [line for line in log.splitlines() if event in line]


@pytest.mark.slow
def test_the_log_at_its_default_level_shows_each_step_of_the_loop_once_with_its_ids_and_no_secret(
    tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox
) -> None:
    config, url = write_config(tmp_path, simulator, smtp_inbox)
    simulator.simulator.update_settings({"callback_url": f"{url}/callback"})
    serve = CliProcess(tmp_path / "serve", "--config", str(config), "serve")
    try:
        wait_until_answers(f"{url}/healthz", serve)
        held: dict[str, Any] = httpx2.post(
            f"{simulator.url}/_sim/requests",
            json={"action": "deploy", "vm": 1},
            timeout=WAIT,
            verify=CLIENT_TLS,
        ).json()
        assert held["callback"]["status"] == 200, held
        task_id = held["tasks"][0]["task_id"]
        approvals = smtp_inbox.wait_for_sync(3, timeout=WAIT)
        link = task_link(to(approvals, ALICE)[0], "/accept", task_id)
        assert httpx2.get(link.url, timeout=WAIT, verify=CLIENT_TLS).status_code == 200
        assert httpx2.post(link.url, timeout=WAIT, verify=CLIENT_TLS).status_code == 200
        smtp_inbox.wait_for_sync(6, timeout=WAIT)  # the requester's email and the two settled ones
        wait_until_sync(lambda: lines_of(serve.stderr, "task.delivered"), "the delivery's log line")
        ended = serve.stop(signal.SIGTERM)
    finally:
        serve.kill()

    log = ended.stderr
    assert ended.returncode == 0, log
    [received] = lines_of(log, "callback.received")
    request_id = request_id_in(received)
    assert task_id in received
    [triaged] = lines_of(log, "request.triaged")
    assert request_id in triaged and task_id in triaged
    assert all(address in triaged for address in (ALICE, BOB, ZOE))
    sent = lines_of(log, "email.sent")
    assert len(sent) == 6 and all(request_id in line for line in sent)
    emails = [(ALICE, "approval"), (BOB, "approval"), (ZOE, "approval"), (JOHN, "outcome")]
    for address, kind in [*emails, (BOB, "settled"), (ZOE, "settled")]:
        assert len([line for line in sent if address in line and kind in line]) == 1, (address, kind)
    [decided] = lines_of(log, "decision.made")
    assert request_id in decided and task_id in decided and "Alice Smith" in decided and "email" in decided
    [delivered] = lines_of(log, "task.delivered")
    assert request_id in delivered and task_id in delivered and "204" in delivered
    assert lines_of(log, "debug") == [] and lines_of(log, "abiquo.request") == []
    # Nothing that lets a reader decide or call Abiquo: the link's token, the signing key, passwords.
    for secret in (link.params["token"], TEST_SECRET_KEY, "xabiquo"):
        assert secret not in log


def request_id_in(line: str) -> str:
    """The request id a log line names (a JSON or a console line): the UUID after `request_id`."""
    found = re.search(r"request_id\W+([0-9a-f-]{36})", line)
    assert found is not None, line
    return found[1]


def wait_until_sync(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT:g} s")
        time.sleep(0.05)
    return found
