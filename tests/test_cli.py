"""The `abiquo-workflow` command: help, version, settings errors, `send-test-email`, `tasks …` in-process
(typer's CliRunner); `simulate`, `serve` and `worker` as real subprocesses, stopped by signals."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import stamina
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from abiquo_workflow.abiquo.payload import parse_callback
from abiquo_workflow.cli import parse_duration
from abiquo_workflow.domain import (
    Callback,
    Channel,
    DecidedBy,
    DecisionState,
    DeliveryState,
    HeldTask,
    PayloadFormat,
)
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.servers import BackgroundServer
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store import JobStatus, Store
from tests.cli_support import WAIT, CliProcess, free_port, invoke, wait_until_answers, write_toml
from tests.conftest import CLIENT_TLS

SECRET_KEY = "cli-test-secret-key-2291-not-for-production"

COMMANDS = (
    *("serve", "worker", "migrate", "check", "send-test-email", "tasks", "policy", "simulate", "demo"),
    "api-token",
    "version",
)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty folder, so no ./abiquo-workflow.toml or database of the developer's is read."""
    monkeypatch.chdir(tmp_path)
    stamina.set_testing(True, attempts=1)
    yield
    stamina.set_testing(False)


def listed_commands(help_text: str) -> set[str]:
    """Command names in a --help screen's command table (`│ name   description │`)."""
    return set(re.findall(r"^│ ([a-z][a-z-]*) ", help_text, flags=re.MULTILINE))


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- help, version ---------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = invoke("--help")

    assert result.exit_code == 0
    assert listed_commands(result.stdout) == set(COMMANDS)


def test_tasks_help_lists_list_show_and_retry() -> None:
    result = invoke("tasks", "--help")

    assert result.exit_code == 0
    assert listed_commands(result.stdout) == {"list", "show", "retry"}


def test_version_prints_the_package_version() -> None:
    result = invoke("version")

    assert result.exit_code == 0
    assert result.stdout.strip() == importlib.metadata.version("abiquo-workflow")


# --- settings errors -------------------------------------------------------------------------------


def test_an_invalid_config_file_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[mail]\nsmtp_port = "lots"\ncolour = "red"\n', encoding="utf-8")

    result = invoke("--config", str(config), "migrate")

    assert result.exit_code == 2
    lines = stderr_lines(result.stderr)
    assert [line for line in lines if "mail.smtp_port" in line] == [
        "  mail.smtp_port: Input should be a valid integer, unable to parse string as an integer (got 'lots')"
    ]
    assert [line for line in lines if "mail.colour" in line] == ["  mail.colour: unknown key"]
    assert "Traceback" not in result.output


def test_a_bad_environment_override_exits_2_naming_the_key() -> None:
    result = invoke("migrate", env={"AWF_WORKER__CONCURRENCY": "zero"})

    assert result.exit_code == 2
    assert [line for line in stderr_lines(result.stderr) if "worker.concurrency" in line] == [
        "  worker.concurrency: Input should be a valid integer, unable to parse string as an integer "
        "(got 'zero')"
    ]


def test_a_bad_secret_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "bad.toml", {"abiquo": {"password": 12345678}})

    result = invoke("--config", str(config), "migrate")

    assert result.exit_code == 2
    assert "abiquo.password" in result.stderr
    assert "12345678" not in result.output


def test_a_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    result = invoke("--config", str(tmp_path / "nowhere.toml"), "migrate")

    assert result.exit_code == 2
    assert "nowhere.toml: cannot read config file" in result.stderr


def test_a_legacy_workflow_cfg_prints_a_warning_naming_each_toml_key(tmp_path: Path) -> None:
    legacy = tmp_path / "workflow.cfg"
    legacy.write_text(
        "[server]\nbind_address = 127.0.0.1\nbind_port = 9000\n"
        "[abiquo]\napi_location = http://abiquo.example/api\napi_approve_role = VDC_APPROVER\n"
        "[mail]\nfrom = workflow@example.com\n",
        encoding="utf-8",
    )

    result = invoke(
        "--legacy-config",
        str(legacy),
        "migrate",
        env={"AWF_DATABASE__URL": f"sqlite:///{tmp_path / 'legacy.db'}"},
    )

    assert result.exit_code == 0, result.output
    warnings = [line for line in stderr_lines(result.stderr) if line.startswith("warning:")]
    assert warnings == [
        f"warning: {legacy}: [server] bind_address is deprecated; set server.bind in the TOML file",
        f"warning: {legacy}: [server] bind_port is deprecated; set server.bind in the TOML file",
        f"warning: {legacy}: [abiquo] api_location is deprecated; set abiquo.api_url in the TOML file",
        f"warning: {legacy}: [abiquo] api_approve_role is deprecated; "
        "set policy.approver_role in the TOML file",
        f"warning: {legacy}: [mail] from is deprecated; set mail.sender in the TOML file",
    ]


def test_commands_print_no_library_chatter_on_stderr(tmp_path: Path) -> None:
    result = invoke("migrate", env={"AWF_DATABASE__URL": f"sqlite:///{tmp_path / 'quiet.db'}"})

    assert result.exit_code == 0
    assert result.stdout == "database schema is up to date\n"
    assert result.stderr == ""


# --- send-test-email -------------------------------------------------------------------------------


def mail_env(inbox: Inbox) -> dict[str, str]:
    return {
        "AWF_MAIL__SMTP_HOST": "127.0.0.1",
        "AWF_MAIL__SMTP_PORT": str(inbox.port),
        "AWF_MAIL__TIMEOUT": "5",
    }


def test_send_test_email_delivers_to_the_relay(smtp_inbox: Inbox) -> None:
    result = invoke("send-test-email", "ops@example.com", env=mail_env(smtp_inbox))

    assert result.exit_code == 0, result.output
    assert f"sent a test message to ops@example.com through 127.0.0.1:{smtp_inbox.port}" in result.stdout
    (message,) = smtp_inbox.messages
    assert message.rcpt_tos == ("ops@example.com",)


def test_send_test_email_through_a_refusing_relay_exits_1_with_a_sentence(smtp_inbox: Inbox) -> None:
    smtp_inbox.refuse = True

    result = invoke("send-test-email", "ops@example.com", env=mail_env(smtp_inbox))

    assert result.exit_code == 1
    (line,) = stderr_lines(result.stderr)
    assert line.startswith(f"abiquo-workflow: the SMTP relay at 127.0.0.1:{smtp_inbox.port} refused")
    assert "451" in line
    assert smtp_inbox.messages == []


# --- tasks list | show | retry ---------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def held(task_id: str) -> HeldTask:
    return HeldTask(
        task_id=task_id,
        task_type="DEPLOY",
        user_id="20",
        owner_id="20",
        state="QUEUEING",
        continue_href=f"cloud/tasks/{task_id}/action/continue",
        cancel_href=f"cloud/tasks/{task_id}/action/cancel",
    )


def snapshot(nick: str, user_id: str, enterprise_id: str, enterprise: str) -> dict[str, Any]:
    """A request's triage snapshot (RequestDetails as JSON) as far as the listing reads it: who asked."""
    return {
        "requester": {"id": user_id, "nick": nick, "name": "", "surname": "", "email": None},
        "enterprise": {"id": enterprise_id, "name": enterprise},
        "vdc": None,
        "datacenter": None,
        "vapp": None,
        "vms": [],
    }


JOHN_OF_ACME = snapshot("john.doe", "20", "2", "Acme & Söhne <Ltd>")
GRACE_OF_GLOBEX = snapshot("grace", "31", "3", "Globex")


async def receive_one(store: Store, task_id: str, vm: str, details: dict[str, Any] | None = None) -> None:
    """Store a callback of one task, triaged: its VM named and, when given, its requester known."""
    async with store.transaction() as tx:
        request_id = await tx.insert_request(
            Callback((held(task_id),), PayloadFormat.JSON), body="{}", content_type=None, source=None
        )
        await tx.insert_tasks(request_id, [held(task_id)])
        await tx.save_triage(request_id, details, [], {task_id: vm})
        await tx.audit("received", channel=Channel.ABIQUO, request_id=request_id, task_id=task_id)


async def build_known_tasks(url: str) -> None:
    """Three tasks, received a minute apart: one pending and one declined whose delivery failed, both
    asked for by John Doe of Acme; one accepted and delivered, asked for by Grace of Globex."""
    now = [T0]
    async with await Store.open(url, clock=lambda: now[0]) as store:
        for minute, (task_id, vm, details) in enumerate(
            [
                ("task-pending", "web-01", JOHN_OF_ACME),
                ("task-delivered", "cache-03", GRACE_OF_GLOBEX),
                ("task-failed", "wiki-ß-01", JOHN_OF_ACME),
            ]
        ):
            now[0] = T0 + timedelta(minutes=minute)
            await receive_one(store, task_id, vm, details)
        async with store.transaction() as tx:
            await tx.decide(
                ["task-delivered"],
                DecisionState.ACCEPTED,
                decided_by=DecidedBy.APPROVER,
                actor="alice.smith@acme.example",
                reason=None,
                channel=Channel.EMAIL,
            )
            await tx.audit("decided", actor="alice.smith@acme.example", task_id="task-delivered")
            await tx.set_delivery("task-delivered", DeliveryState.DELIVERED, detail="Abiquo answered 204")
            await tx.decide(
                ["task-failed"],
                DecisionState.DECLINED,
                decided_by=DecidedBy.APPROVER,
                actor="bob.jones@acme.example",
                reason="not this week",
                channel=Channel.EMAIL,
            )
            await tx.set_delivery(
                "task-failed", DeliveryState.FAILED, detail="Abiquo could not be reached after 8 attempts"
            )
            await tx.audit("delivery_failed", task_id="task-failed", detail="Abiquo could not be reached")


@pytest.fixture
def tasks_env(migrated_database_url: str) -> dict[str, str]:
    """Settings (by environment) pointing at a database holding the three known tasks."""
    asyncio.run(build_known_tasks(migrated_database_url))
    return {"AWF_DATABASE__URL": migrated_database_url}


async def build_tasks_received(url: str, ago: dict[str, timedelta]) -> None:
    """One pending task per id, received that long before now (the wall clock: `--older-than` counts
    back from it)."""
    now = [datetime.now(UTC)]
    async with await Store.open(url, clock=lambda: now[0]) as store:
        for task_id, age in ago.items():
            now[0] = datetime.now(UTC) - age
            await receive_one(store, task_id, "web-01")


@pytest.fixture
def aged_tasks_env(migrated_database_url: str) -> dict[str, str]:
    """Settings pointing at a database of three tasks received 3 days, 3 hours and 1 minute ago."""
    ago = {
        "three-days": timedelta(days=3),
        "three-hours": timedelta(hours=3),
        "a-minute": timedelta(minutes=1),
    }
    asyncio.run(build_tasks_received(migrated_database_url, ago))
    return {"AWF_DATABASE__URL": migrated_database_url}


@pytest.fixture
def lookalike_env(migrated_database_url: str) -> dict[str, str]:
    """Settings pointing at a database of three tasks whose ids share their first 6 characters."""

    async def build() -> None:
        async with await Store.open(migrated_database_url) as store:
            for task_id in ("3f2a91", "3f2a91-aaa", "3f2a91-bbb"):
                await receive_one(store, task_id, "web-01")

    asyncio.run(build())
    return {"AWF_DATABASE__URL": migrated_database_url}


def table(stdout: str) -> list[list[str]]:
    """`tasks list` rows, split into cells (columns are two or more spaces apart; a cell holds one)."""
    return [re.split(r" {2,}", line) for line in stdout.splitlines()]


def listed_task_ids(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:]]


def test_tasks_list_shows_every_task_newest_first_with_who_asked_and_who_decided(
    tasks_env: dict[str, str],
) -> None:
    result = invoke("tasks", "list", env=tasks_env)

    assert result.exit_code == 0, result.output
    header, *rows = table(result.stdout)
    assert (
        " | ".join(header)
        == "TASK | TYPE | VM | REQUESTER | CREATED (UTC) | DECISION | DECIDED BY | DELIVERY"
    )
    assert rows == [
        ["task-failed", "DEPLOY", "wiki-ß-01", "john.doe", "2026-03-02 09:02", "declined",
         "bob.jones@acme.example", "failed"],
        ["task-delivered", "DEPLOY", "cache-03", "grace", "2026-03-02 09:01", "accepted",
         "alice.smith@acme.example", "delivered"],
        ["task-pending", "DEPLOY", "web-01", "john.doe", "2026-03-02 09:00", "pending", "-", "-"],
    ]  # fmt: skip
    assert result.stderr == ""


def test_tasks_list_says_on_stderr_how_many_more_there_are_and_how_to_see_them(
    tasks_env: dict[str, str],
) -> None:
    result = invoke("tasks", "list", "--limit", "1", env=tasks_env)

    assert result.exit_code == 0, result.output
    assert listed_task_ids(result.stdout) == ["task-failed"]
    assert result.stderr == "… 2 more; the next page: --after task-failed\n"


def test_tasks_list_after_the_last_task_shown_lists_the_next_page(tasks_env: dict[str, str]) -> None:
    second = invoke("tasks", "list", "--limit", "1", "--after", "task-failed", env=tasks_env)
    third = invoke("tasks", "list", "--limit", "1", "--after", "task-delivered", env=tasks_env)

    assert (second.exit_code, third.exit_code) == (0, 0), second.output + third.output
    assert listed_task_ids(second.stdout) == ["task-delivered"]
    assert second.stderr == "… 1 more; the next page: --after task-delivered\n"
    assert listed_task_ids(third.stdout) == ["task-pending"]
    assert third.stderr == ""


def test_tasks_list_counts_only_the_matching_tasks_as_more(tasks_env: dict[str, str]) -> None:
    result = invoke("tasks", "list", "--requester", "john.doe", "--limit", "1", env=tasks_env)

    assert listed_task_ids(result.stdout) == ["task-failed"]
    assert result.stderr == "… 1 more; the next page: --after task-failed\n"


def test_tasks_list_after_an_unknown_task_exits_1(tasks_env: dict[str, str]) -> None:
    result = invoke("tasks", "list", "--after", "no-such-task", env=tasks_env)

    assert result.exit_code == 1
    assert stderr_lines(result.stderr) == ["abiquo-workflow: no task no-such-task is stored here"]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--decision", "pending"], ["task-pending"]),
        (["--decision", "accepted"], ["task-delivered"]),
        (["--delivery", "failed"], ["task-failed"]),
        (["--decision", "declined", "--delivery", "delivered"], []),
    ],
)
def test_tasks_list_filters_by_decision_and_delivery(
    tasks_env: dict[str, str], option: list[str], expected: list[str]
) -> None:
    result = invoke("tasks", "list", *option, env=tasks_env)

    assert result.exit_code == 0, result.output
    if expected:
        assert listed_task_ids(result.stdout) == expected
    else:
        assert result.stdout == "no tasks\n"


@pytest.mark.parametrize(
    ("enterprise", "expected"),
    [
        ("Globex", ["task-delivered"]),
        ("acme & söhne <ltd>", ["task-failed", "task-pending"]),
        ("3", ["task-delivered"]),
    ],
    ids=["name", "name-in-other-case", "id"],
)
def test_tasks_list_filters_by_enterprise_name_or_id(
    tasks_env: dict[str, str], enterprise: str, expected: list[str]
) -> None:
    result = invoke("tasks", "list", "--enterprise", enterprise, env=tasks_env)

    assert result.exit_code == 0, result.output
    assert listed_task_ids(result.stdout) == expected


@pytest.mark.parametrize(
    ("requester", "expected"),
    [("grace", ["task-delivered"]), ("20", ["task-failed", "task-pending"])],
    ids=["nick", "id"],
)
def test_tasks_list_filters_by_requester_nick_or_id(
    tasks_env: dict[str, str], requester: str, expected: list[str]
) -> None:
    result = invoke("tasks", "list", "--requester", requester, env=tasks_env)

    assert result.exit_code == 0, result.output
    assert listed_task_ids(result.stdout) == expected


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--older-than", "2h"], ["three-hours", "three-days"]),
        (["--newer-than", "4h"], ["a-minute", "three-hours"]),
        (["--older-than", "30m", "--newer-than", "1d"], ["three-hours"]),
        (["--older-than", "1d12h"], ["three-days"]),
    ],
    ids=["older", "newer", "between", "compound"],
)
def test_tasks_list_filters_by_how_long_ago_the_task_was_received(
    aged_tasks_env: dict[str, str], option: list[str], expected: list[str]
) -> None:
    result = invoke("tasks", "list", *option, env=aged_tasks_env)

    assert result.exit_code == 0, result.output
    assert listed_task_ids(result.stdout) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("4h", 14_400), ("3d", 259_200), ("2w", 1_209_600), ("1d12h", 129_600)],
)
def test_a_duration_is_read_in_seconds_minutes_hours_days_weeks_or_a_sum_of_them(
    text: str, seconds: int
) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "option",
    [
        ["--decision", "maybe"],
        ["--delivery", "lost"],
        ["--limit", "0"],
        ["--older-than", "soon"],
        ["--newer-than", "4"],
        ["--older-than", "999999999d"],
    ],
    ids=str,
)
def test_tasks_list_rejects_an_invalid_filter_with_exit_2(option: list[str]) -> None:
    result = invoke("tasks", "list", *option)

    assert result.exit_code == 2
    assert option[0] in result.stderr


def test_tasks_show_prints_the_decision_the_delivery_and_the_audit_trail(tasks_env: dict[str, str]) -> None:
    result = invoke("tasks", "show", "task-failed", env=tasks_env)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "task       task-failed (DEPLOY) on wiki-ß-01"
    assert "decision   declined by bob.jones@acme.example (approver) via email" in lines
    assert "reason     not this week" in lines
    assert "delivery   failed after 1 attempt(s)" in lines
    audit = lines[lines.index("audit") + 1 :]
    assert [line.split()[2] for line in audit] == ["received", "delivery_failed"]
    assert audit[0].startswith("  2026-03-02 09:02:00  received")


def test_tasks_show_takes_a_unique_prefix_of_the_task_id(tasks_env: dict[str, str]) -> None:
    result = invoke("tasks", "show", "task-f", env=tasks_env)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "task       task-failed (DEPLOY) on wiki-ß-01"


def test_tasks_show_of_a_whole_id_that_also_begins_other_ids_shows_that_task(
    lookalike_env: dict[str, str],
) -> None:
    result = invoke("tasks", "show", "3f2a91", env=lookalike_env)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "task       3f2a91 (DEPLOY) on web-01"


@pytest.mark.parametrize("command", ["show", "retry"])
def test_tasks_show_or_retry_of_an_ambiguous_prefix_exits_1_listing_the_candidates(
    lookalike_env: dict[str, str], command: str
) -> None:
    result = invoke("tasks", command, "3f2a91-", env=lookalike_env)

    assert result.exit_code == 1
    assert stderr_lines(result.stderr) == [
        "abiquo-workflow: 3f2a91- is the start of more than one task id; give more of it:",
        "  3f2a91-aaa",
        "  3f2a91-bbb",
    ]


def test_tasks_show_of_a_prefix_shorter_than_6_characters_exits_1_saying_so(
    tasks_env: dict[str, str],
) -> None:
    result = invoke("tasks", "show", "task-", env=tasks_env)

    assert result.exit_code == 1
    assert stderr_lines(result.stderr) == [
        "abiquo-workflow: no task task- is stored here (a shortened task id needs at least 6 characters)"
    ]


def test_tasks_retry_queues_a_failed_delivery_again(
    tasks_env: dict[str, str], migrated_database_url: str
) -> None:
    result = invoke("tasks", "retry", "task-failed", env=tasks_env)

    assert result.exit_code == 0, result.output
    assert result.stdout == "task task-failed is queued for delivery again\n"

    async def stored() -> tuple[DeliveryState | None, list[str]]:
        async with await Store.open(migrated_database_url, migrate=False) as store:
            task = await store.get_task("task-failed")
            jobs = await store.list_jobs(status=JobStatus.QUEUED)
        assert task is not None
        return task.delivery, [job.kind for job in jobs if job.payload.get("task_id") == "task-failed"]

    delivery, kinds = asyncio.run(stored())
    assert delivery is DeliveryState.QUEUED
    assert kinds == ["deliver"]
    shown = invoke("tasks", "show", "task-failed", env=tasks_env)
    assert "retried" in shown.stdout.split("audit", 1)[1]


def test_tasks_retry_takes_a_unique_prefix_and_names_the_whole_id(tasks_env: dict[str, str]) -> None:
    result = invoke("tasks", "retry", "task-fa", env=tasks_env)

    assert result.exit_code == 0, result.output
    assert result.stdout == "task task-failed is queued for delivery again\n"


@pytest.mark.parametrize("task_id", ["task-pending", "task-delivered"])
def test_tasks_retry_of_a_delivery_that_did_not_fail_exits_1_with_a_sentence(
    tasks_env: dict[str, str], task_id: str
) -> None:
    result = invoke("tasks", "retry", task_id, env=tasks_env)

    assert result.exit_code == 1
    (line,) = stderr_lines(result.stderr)
    assert line.startswith(f"abiquo-workflow: task {task_id} has not failed")
    assert line.endswith("nothing to retry")


@pytest.mark.parametrize("command", ["show", "retry"])
def test_tasks_show_or_retry_of_an_unknown_task_exits_1(tasks_env: dict[str, str], command: str) -> None:
    result = invoke("tasks", command, "no-such-task", env=tasks_env)

    assert result.exit_code == 1
    assert stderr_lines(result.stderr) == ["abiquo-workflow: no task no-such-task is stored here"]


def test_tasks_list_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"

    result = invoke("tasks", "list", env={"AWF_DATABASE__URL": f"sqlite:///{missing}"})

    assert result.exit_code == 1
    assert "there is no database at" in result.stderr
    assert not missing.exists()


# --- simulate (the "Done when" check: a real subprocess) -----------------------------------


class CallbackReceiver:
    """A tiny web server that records what is POSTed to /callback."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, bytes]] = []

        async def callback(request: Request) -> Response:
            self.received.append((request.headers.get("content-type"), await request.body()))
            return Response(status_code=200)

        self.app = Starlette(routes=[Route("/callback", callback, methods=["POST"])])


@pytest.mark.slow
def test_simulate_posts_a_held_task_to_the_callback_url_and_stops_on_sigint(tmp_path: Path) -> None:
    receiver = CallbackReceiver()
    port = free_port()
    with BackgroundServer(receiver.app) as callback_server:
        simulate = CliProcess(
            tmp_path / "simulate",
            "simulate",
            "--port",
            str(port),
            "--callback-url",
            f"{callback_server.url}/callback",
        )
        try:
            wait_until_answers(f"http://127.0.0.1:{port}/_sim/settings", simulate)
            answer = httpx2.post(
                f"http://127.0.0.1:{port}/_sim/requests",
                json={"action": "deploy", "vm": 1},
                timeout=WAIT,
                verify=CLIENT_TLS,
            )
            ended = simulate.stop(signal.SIGINT, timeout=10)
        finally:
            simulate.kill()

    assert answer.status_code == 201, answer.text
    ((content_type, body),) = receiver.received
    assert content_type is not None and content_type.startswith("application/")
    assert "json" in content_type
    callback = parse_callback(body, content_type)
    assert [task.task_id for task in callback.tasks] == [answer.json()["tasks"][0]["task_id"]]
    assert callback.tasks[0].task_type == "DEPLOY"
    assert ended.returncode == 0, ended.stderr
    assert "Traceback" not in ended.stderr


# --- serve and worker ------------------------------------------------------------------------------


@pytest.fixture
def serve_config(tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox) -> Callable[..., Path]:
    """Write a TOML file for a connector on a free port, wired to the simulator and the inbox."""

    def write(database_url: str | None = None, **server: Any) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "server": {"bind": f"127.0.0.1:{free_port()}", "secret_key": SECRET_KEY, **server},
            "database": {"url": database_url or f"sqlite:///{tmp_path / 'serve.db'}"},
            "abiquo": {"api_url": simulator.api_url, "retries": 1, "timeout": 5},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp_inbox.port, "timeout": 5},
            "worker": {"retry_base_delay": 0.05, "retry_max_delay": 0.5},
        }
        sections["server"] = {k: v for k, v in sections["server"].items() if v is not None}
        return write_toml(tmp_path / "abiquo-workflow.toml", sections)

    return write


def base_url(config: Path) -> str:
    bind = re.search(r'^bind = "([^"]+)"', config.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert bind is not None
    return f"http://{bind[1]}"


@pytest.mark.slow
def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(
    tmp_path: Path, serve_config: Callable[..., Path]
) -> None:
    config = serve_config()
    serve = CliProcess(tmp_path / "serve", "--config", str(config), "serve")
    try:
        health = wait_until_answers(f"{base_url(config)}/healthz", serve)
        ended = serve.stop(signal.SIGTERM)
    finally:
        serve.kill()

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ended.returncode == 0, ended.stderr
    assert "worker.stopped" in ended.stderr  # the worker drained before the process ended
    assert "Traceback" not in ended.stderr


def test_serve_without_a_secret_key_exits_2_naming_the_key(serve_config: Callable[..., Path]) -> None:
    config = serve_config(secret_key=None)

    ended = invoke("--config", str(config), "serve")  # it stops before serving anything

    assert ended.exit_code == 2
    assert "server.secret_key: required to sign the links in approval emails" in ended.stderr
    assert "Traceback" not in ended.stderr


@pytest.mark.parametrize(
    ("secret_key", "says"),
    [
        ("a", "1 characters is too short"),  # the key an attacker tried first
        ("ab" * 20, "only 2 different characters"),  # long, but typed by hand
    ],
)
def test_serve_with_a_weak_secret_key_exits_2_saying_how_to_make_one(
    serve_config: Callable[..., Path], secret_key: str, says: str
) -> None:
    config = serve_config(secret_key=secret_key)

    ended = invoke("--config", str(config), "serve")  # it stops before serving anything

    assert ended.exit_code == 2
    assert says in ended.stderr
    assert "secrets.token_urlsafe(32)" in ended.stderr


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_serve_on_an_unmigrated_database_exits_1_saying_to_migrate(
    serve_config: Callable[..., Path], database_url: str
) -> None:
    config = serve_config(database_url)

    ended = invoke("--config", str(config), "serve")  # it stops before serving anything

    assert ended.exit_code == 1
    assert "run `abiquo-workflow migrate`" in ended.stderr
    assert "Traceback" not in ended.stderr


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return found


def accept_link(text: str) -> str:
    found = re.search(r"Accept:\s+(\S+)", text)
    assert found is not None, text
    return found[1]


@pytest.mark.slow
def test_a_worker_process_runs_the_jobs_a_serve_no_worker_process_queued(
    tmp_path: Path,
    serve_config: Callable[..., Path],
    database_url: str,
    simulator: SimulatorServer,
    smtp_inbox: Inbox,
) -> None:
    config = serve_config(database_url)
    url = base_url(config)
    if database_url.startswith("postgresql"):
        assert invoke("--config", str(config), "migrate").exit_code == 0
    simulator.simulator.update_settings({"callback_url": f"{url}/callback"})
    # Both start at once (each takes seconds to import); serve's jobs can only be run by the worker.
    serve = CliProcess(tmp_path / "serve", "--config", str(config), "serve", "--no-worker")
    worker = CliProcess(tmp_path / "worker", "--config", str(config), "worker")
    try:
        wait_until_answers(f"{url}/healthz", serve)
        held_task = httpx2.post(
            f"{simulator.url}/_sim/requests",
            json={"action": "deploy", "vm": 1},
            timeout=WAIT,
            verify=CLIENT_TLS,
        ).json()
        assert held_task["callback"]["status"] == 200, held_task
        task_id = held_task["tasks"][0]["task_id"]

        (approval, *_) = smtp_inbox.wait_for_sync(1, timeout=WAIT)
        link = accept_link(approval.text() or "")
        assert httpx2.get(link, timeout=WAIT, verify=CLIENT_TLS).status_code == 200
        assert httpx2.post(link, timeout=WAIT, verify=CLIENT_TLS).status_code == 200
        calls = wait_for(
            lambda: [c for c in simulator.simulator.decision_calls() if c.task_id == task_id],
            "the continue call",
        )
        stopped_worker = worker.stop(signal.SIGTERM)
        stopped_serve = serve.stop(signal.SIGTERM)
    finally:
        serve.kill()
        worker.kill()

    assert [(c.action, c.status) for c in calls] == [("continue", 204)]
    assert stopped_worker.returncode == 0, stopped_worker.stderr
    assert "worker.stopped" in stopped_worker.stderr
    assert "Traceback" not in stopped_worker.stderr
    assert stopped_serve.returncode == 0, stopped_serve.stderr
    assert "worker.started" not in stopped_serve.stderr
