"""Who is looking and what they may do (access.py): sign-in against the simulator's real `/login`, roles
mapped to what a person sees and decides, API tokens."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.access import Authenticator, Role, Viewer, token_digest
from abiquo_workflow.config import Settings, build_settings
from abiquo_workflow.domain import DecisionState
from abiquo_workflow.simulation import SimulatorServer
from abiquo_workflow.store.listing import Scope
from tests.cli_support import invoke


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def authenticator(simulator: SimulatorServer) -> AsyncIterator[tuple[Authenticator, Clock]]:
    settings = settings_for(
        simulator,
        api={"tokens": [{"name": "ci", "scope": "read", "sha256": token_digest("awf_secret")}]},
        access={"login_ttl": 60},
    )
    clock = Clock()
    async with AbiquoClient(settings.abiquo) as client:
        yield Authenticator(client, settings, clock=clock), clock


def settings_for(simulator: SimulatorServer, **sections: Any) -> Settings:
    return build_settings({"abiquo": {"api_url": simulator.api_url}, **sections}, environ={})


@dataclasses.dataclass(frozen=True)
class Task:
    decision: DecisionState = DecisionState.PENDING


@dataclasses.dataclass(frozen=True)
class Row:
    """A listing row as `Viewer.sees` reads one (`RequestSummary`, `ListedTask`…)."""

    enterprise_id: str | None
    requester_id: str | None
    task: Task = Task()


def owned(enterprise_id: str | None, requester_id: str | None) -> Row:
    return Row(enterprise_id, requester_id)


async def test_a_cloud_administrator_sees_and_decides_everything(
    authenticator: tuple[Authenticator, Clock],
) -> None:
    viewer = await authenticator[0].sign_in("admin", "xabiquo")

    assert viewer is not None
    assert (viewer.role, viewer.can_decide, viewer.scope) == (Role.ADMIN, True, Scope())
    assert viewer.sees(owned("3", "100"))


async def test_an_approver_sees_and_decides_their_enterprise_only(
    authenticator: tuple[Authenticator, Clock],
) -> None:
    viewer = await authenticator[0].sign_in("asmith", "asmith")

    assert viewer is not None
    assert viewer.role is Role.APPROVER
    assert viewer.actor == "Alice Smith <alice.smith@acme.example>"
    assert viewer.enterprise_hrefs == frozenset({"admin/enterprises/2"})
    assert viewer.may_decide(owned("2", "20"))
    assert not viewer.sees(owned("3", "101"))


async def test_an_approver_role_without_an_email_is_read_only(
    authenticator: tuple[Authenticator, Clock],
) -> None:
    viewer = await authenticator[0].sign_in("cnomail", "cnomail")

    assert viewer is not None
    assert (viewer.role, viewer.can_decide) == (Role.REQUESTER, False)


async def test_a_requester_sees_their_own_requests_and_decides_none(
    authenticator: tuple[Authenticator, Clock],
) -> None:
    viewer = await authenticator[0].sign_in("jdoe", "jdoe")

    assert viewer is not None
    assert viewer.role is Role.REQUESTER
    assert viewer.scope == Scope(enterprise_ids=frozenset({"2"}), requester_id="20")
    assert viewer.sees(owned("2", "20"))
    assert not viewer.sees(owned("2", "21"))
    assert not viewer.may_decide(owned("2", "20"))


async def test_wrong_credentials_sign_nobody_in(authenticator: tuple[Authenticator, Clock]) -> None:
    assert await authenticator[0].sign_in("asmith", "wrong") is None
    assert await authenticator[0].sign_in("", "") is None


async def test_a_sign_in_is_trusted_for_login_ttl_then_asked_again(
    authenticator: tuple[Authenticator, Clock], simulator: SimulatorServer
) -> None:
    auth, clock = authenticator
    await auth.sign_in("asmith", "asmith")
    world = simulator.simulator.world
    world.users[10] = dataclasses.replace(world.users[10], password="changed")

    cached = await auth.sign_in("asmith", "asmith")
    clock.now += 61
    asked_again = await auth.sign_in("asmith", "asmith")

    assert cached is not None
    assert asked_again is None


async def test_a_configured_token_is_a_read_only_viewer_of_everything(
    authenticator: tuple[Authenticator, Clock],
) -> None:
    viewer = authenticator[0].token_viewer("awf_secret")

    assert viewer == Viewer(actor="token:ci", role=Role.ADMIN, can_decide=False)
    assert authenticator[0].token_viewer("awf_other") is None


def test_a_viewer_rebuilt_from_a_session_equals_the_original() -> None:
    viewer = Viewer(actor="A <a@x>", role=Role.APPROVER, enterprise_hrefs=frozenset({"admin/enterprises/2"}))

    rebuilt = Viewer(actor="A <a@x>", role="approver", enterprise_hrefs=("admin/enterprises/2",))  # type: ignore[arg-type]

    assert rebuilt == viewer
    assert rebuilt.enterprise_ids == frozenset({"2"})


def test_a_decided_task_is_not_decidable_even_by_an_administrator() -> None:
    admin = Viewer(actor="Cloud Admin <admin@abiquo.example>", role=Role.ADMIN, can_decide=True)

    assert not admin.may_decide(Row("2", "20", Task(DecisionState.ACCEPTED)))


def test_the_api_token_command_prints_a_token_and_the_lines_that_let_it_in(
    simulator: SimulatorServer,
) -> None:
    result = invoke("api-token", "deploy-bot", "--scope", "decide")
    token = result.stdout.splitlines()[0].removeprefix("token: ")
    config = tomllib.loads(result.stdout.split("# add to the configuration file:", 1)[1])

    viewer = Authenticator(
        AbiquoClient(settings_for(simulator).abiquo), settings_for(simulator, **config)
    ).token_viewer(token)

    assert result.exit_code == 0
    assert (
        token not in result.stdout.split("token: ", 1)[1].split("\n", 1)[1]
    )  # shown once, never in the config
    assert viewer == Viewer(actor="token:deploy-bot", role=Role.ADMIN, can_decide=True)


def test_the_api_token_command_refuses_an_unknown_scope() -> None:
    result = invoke("api-token", "x", "--scope", "admin")

    assert result.exit_code == 2 and "--scope must be read or decide" in result.stderr
