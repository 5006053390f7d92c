"""The README's worked example config, read from the README itself so that it cannot rot: it loads with
`load_settings`, and `policy explain` answers for it against the simulator as the README says (a small
request accepted by `small`; a three-VM production request asking four approvers, two of whom must
accept within three days, with its reminders and escalation)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from abiquo_workflow.config import load_settings
from abiquo_workflow.policy_explain import explain_task
from tests.conftest import AppFactory
from tests.loop_support import open_store, wait_until_idle

README = Path(__file__).parent.parent / "README.md"


def worked_example() -> str:
    """The TOML block that follows the README's `<!-- worked-example -->` marker."""
    found = re.search(r"<!-- worked-example -->\n```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert found is not None, "the README lost its worked example"
    return found.group(1)


@pytest.fixture
def example_policy(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "example.toml"
    path.write_text(worked_example(), encoding="utf-8")
    settings = load_settings(path, environ={}).settings
    assert [rule.name for rule in settings.policy.rules] == ["small", "production"]
    production = settings.policy.timing(settings.policy.rules[1])
    assert (production.approvals_needed, production.deadline, production.at_deadline) == (
        2,
        3 * 86400,
        "cancel",
    )
    policy: dict[str, Any] = tomllib.loads(worked_example())["policy"]
    return policy


async def explained(app_factory: AppFactory, policy: dict[str, Any], **target: Any) -> list[str]:
    async with app_factory(policy=policy) as app:
        held = await app.request(**target)
        async with open_store(app) as store:
            await wait_until_idle(store)
        return await explain_task(app.settings, held["tasks"][0]["task_id"])


async def test_the_worked_example_accepts_a_small_request_by_rule_small(
    app_factory: AppFactory, example_policy: dict[str, Any]
) -> None:
    lines = await explained(app_factory, example_policy, vm=1)

    assert "  rule 'small': matches" in lines and "Applies: rule 'small'." in lines
    assert any(line.startswith("Would accept at once, asking nobody") for line in lines)


async def test_the_worked_example_asks_production_for_two_approvals_within_three_days(
    app_factory: AppFactory, example_policy: dict[str, Any]
) -> None:
    lines = await explained(app_factory, example_policy, vapp=1)

    assert "  rule 'small': 3 VMs is more than max_vms 2" in lines
    assert "Applies: rule 'production'." in lines
    assert "Approvals needed: 2." in lines
    assert (
        "Deadline: 3d after triage; then what is still pending is cancelled (at_deadline = cancel)." in lines
    )
    assert (
        "Reminders: 1d, 2d after the approval email, each once to every approver who has not answered."
        in lines
    )
    assert (
        "Escalation: after 2d12h, Head of IT <cio@acme.example> asked too, with links of their own." in lines
    )
    assert (
        "Would ask 4 approvers (one email each; 2 distinct accepts decide a task, and one decline "
        "cancels it):" in lines
    )
