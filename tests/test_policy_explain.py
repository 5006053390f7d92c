"""`abiquo-workflow policy explain`: for every sample payload and for stored tasks, against the
simulator: which rule applies, why not the earlier ones, who would be asked or what decided; and
that it decides, stores and sends nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from abiquo_workflow.config import Settings
from abiquo_workflow.policy_explain import NOTHING_DONE, explain_task
from abiquo_workflow.simulation import SimulatorServer
from tests.cli_support import invoke
from tests.conftest import App, AppFactory
from tests.loop_support import open_store, wait_until_idle

PAYLOADS = sorted((Path(__file__).parent / "payloads").iterdir())
RECONFIGURES = {"protocol_11_3_vm_reconfigure.json", "protocol_11_3_vm_reconfigure.xml"}

RULES_TOML = """
[[policy.rules]]
name = "reconfigures"
task_types = ["RECONFIGURE"]
decide = "accept"

[[policy.rules]]
name = "globex"
enterprise = "Globex"
decide = "cancel"
"""


def config_file(tmp_path: Path, simulator: SimulatorServer, extra: str = RULES_TOML) -> Path:
    """Settings wired to the simulator, with a database that does not exist (and must stay so)."""
    path = tmp_path / "abiquo-workflow.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "never.db"}"\n'
        f'[abiquo]\napi_url = "{simulator.api_url}"\nretries = 0\n{extra}',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.name for p in PAYLOADS])
def test_explain_answers_for_every_sample_payload(
    tmp_path: Path, simulator: SimulatorServer, payload: Path
) -> None:
    result = invoke(
        "--config", str(config_file(tmp_path, simulator)), "policy", "explain", "--payload", str(payload)
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    tasks = "3 tasks" if "vapp" in payload.name else "1 task"
    assert lines[0].startswith(f"Callback in {payload}: {tasks} (")
    # The samples' tasks are not held by the simulator: triage would reject them, and says why.
    assert any("triage would reject it: " in line for line in lines)
    assert "Rules, in order:" in lines
    if payload.name in RECONFIGURES:
        assert "  rule 'reconfigures': matches" in lines
        assert "Applies: rule 'reconfigures'." in lines
        assert any(
            line.startswith("Would accept at once, asking nobody") and "'policy: reconfigures'" in line
            for line in lines
        )
    else:
        assert "  rule 'reconfigures': DEPLOY is not in task_types [\"RECONFIGURE\"]" in lines
        assert any(
            line.startswith("  rule 'globex': ") and 'not in enterprise ["Globex"]' in line for line in lines
        )
        assert "  (none matches)" in lines and any(
            line.startswith("Applies: the default rule") for line in lines
        )
        assert any(line.startswith(("Would ask ", "Would cancel at once")) for line in lines)
    assert lines[-1] == NOTHING_DONE
    # Abiquo was only read, and no database was made.
    assert simulator.simulator.decision_calls() == []
    assert not (tmp_path / "never.db").exists()


def test_explain_takes_one_of_a_task_or_a_payload(tmp_path: Path, simulator: SimulatorServer) -> None:
    config = str(config_file(tmp_path, simulator))
    for args in ([], ["some-task", "--payload", str(PAYLOADS[0])]):
        result = invoke("--config", config, "policy", "explain", *args)
        assert result.exit_code == 2
        assert "policy explain takes a task id or --payload FILE" in result.stderr


def test_explain_of_a_file_that_is_not_a_callback_exits_1_naming_it(
    tmp_path: Path, simulator: SimulatorServer
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"collection": "nope"}', encoding="utf-8")

    result = invoke(
        "--config", str(config_file(tmp_path, simulator)), "policy", "explain", "--payload", str(bad)
    )

    assert result.exit_code == 1
    assert result.stderr.startswith(f"abiquo-workflow: {bad}: not a callback the connector would take")


def test_explain_of_a_task_without_a_database_exits_1(tmp_path: Path, simulator: SimulatorServer) -> None:
    result = invoke("--config", str(config_file(tmp_path, simulator)), "policy", "explain", "0b6c1f2e")
    assert result.exit_code == 1 and "there is no database at" in result.stderr


# --- a stored task ---------------------------------------------------------------------------------

FINANCE: dict[str, Any] = {
    "rules": [
        {"name": "globex", "enterprise": "Globex", "decide": "accept"},
        {
            "name": "finance",
            "enterprise": 2,
            "approver_roles": [],
            "approvers": ["Carla Finance <carla@finance.example>"],
        },
    ]
}


async def everything_stored(app: App, request_id: str) -> tuple[Any, ...]:
    async with open_store(app) as store:
        return (
            await store.get_request(request_id),
            await store.tasks_of_request(request_id),
            await store.audit_log(request_id=request_id),
            await store.notifications(request_id),
            await store.list_jobs(limit=10_000),
        )


def cli_settings(app: App) -> dict[str, str]:
    """The environment that points the command line at the app's database and Abiquo."""
    return {
        "AWF_DATABASE__URL": app.settings.database.url,
        "AWF_ABIQUO__API_URL": app.settings.abiquo.base_url,
        "AWF_POLICY__APPROVER_ROLE": "ENTERPRISE_ADMIN",
    }


async def test_explain_of_a_stored_pending_task_decides_stores_and_sends_nothing(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    async with app_factory(policy=FINANCE) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        await app.inbox.wait_for(1)
        async with open_store(app) as store:
            await wait_until_idle(store)
            request_id = (await store.get_tasks([task_id]))[0].request_id
        before = await everything_stored(app, request_id)
        emails = len(app.inbox.messages)

        lines = await explain_task(app.settings, task_id[:8])

        assert await everything_stored(app, request_id) == before
        await asyncio.sleep(0.2)  # a job queued by mistake would have run by now
        assert await everything_stored(app, request_id) == before
        assert len(app.inbox.messages) == emails and app.decision_calls() == []
        settings: Settings = app.settings

    assert lines[0].startswith(f"Request {request_id}, received ")
    assert lines[1].startswith(f"  {task_id} DEPLOY on web-01: pending")
    assert any(line.startswith("Triage on ") and line.endswith("applied rule 'finance'.") for line in lines)
    assert "Abiquo holds the task for review as described." in lines
    assert "Requester: John Doe (jdoe), role USER" in lines
    assert 'Enterprise: "Acme & Söhne <Ltd>" (id 2); datacenter: "Barcelona DC" (id 1)' in lines
    assert "Gated tasks: DEPLOY; 1 VM, 2 CPUs, 4,096 MB RAM, 20,480 MB disk and volumes" in lines
    assert (
        '  rule \'globex\': enterprise "Acme & Söhne <Ltd>" (id 2) is not in enterprise ["Globex"]' in lines
    )
    assert "  rule 'finance': matches" in lines and "Applies: rule 'finance'." in lines
    assert "Would ask 1 approver (one email each; the first to decide a task decides it):" in lines
    assert "  Carla Finance <carla@finance.example> (named by the rule)" in lines
    assert lines[-1] == NOTHING_DONE

    # The command line says the same, with the whole id; the configuration now has no rules.
    result = await asyncio.to_thread(
        invoke,
        "policy",
        "explain",
        task_id,
        env=cli_settings(app) | {"AWF_SERVER__BIND": settings.server.bind},
    )
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert any(line.endswith("applied rule 'finance'.") for line in out)  # what triage did then
    assert "Rules: none configured (policy.rules)." in out  # and what the rules say now
    assert "Would ask 3 approvers (one email each; the first to decide a task decides it):" in out
    assert "  Alice Smith <alice.smith@acme.example> (role ENTERPRISE_ADMIN)" in out


async def test_explain_of_a_task_the_policy_decided_says_how_and_what_abiquo_shows_now(
    app_factory: AppFactory,
) -> None:
    async with app_factory(policy={"rules": [{"name": "small", "max_vms": 1, "decide": "accept"}]}) as app:
        held = await app.request(vm=1)
        task_id = held["tasks"][0]["task_id"]
        await app.inbox.wait_for(1)  # the requester's email: decided and delivered
        async with open_store(app) as store:
            await wait_until_idle(store)

        lines = await explain_task(app.settings, task_id)

    assert lines[1] == f"  {task_id} DEPLOY on web-01: accepted by policy: small (policy)"
    assert any(line.endswith("applied rule 'small'.") for line in lines)
    # Abiquo went ahead with it, so it is no longer held: triage would not act on it now.
    assert any(
        line.startswith(f"Task {task_id}: triage would reject it: Abiquo does not hold the task")
        for line in lines
    )
    assert "Applies: rule 'small'." in lines
    assert (
        "Would accept at once, asking nobody (recorded as decided by policy, 'policy: small'): the request "
        "matches policy rule 'small'."
    ) in lines
