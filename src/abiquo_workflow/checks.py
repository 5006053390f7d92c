"""`abiquo-workflow check`: is each dependency reachable and set up as the connector needs it?

Each check returns OK or a sentence saying what is wrong; none of them changes anything (an SQLite
database that does not exist yet is reported, not created: `serve` creates it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from abiquo_workflow import display
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.config import Settings
from abiquo_workflow.exceptions import AbiquoWorkflowError, ConfigError
from abiquo_workflow.mail.send import Mailer
from abiquo_workflow.reconcile import enterprise_href
from abiquo_workflow.runtime import link_signer, sqlite_file
from abiquo_workflow.store import Store
from abiquo_workflow.store.urls import display_url


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


async def check_config(settings: Settings) -> CheckResult:
    try:
        link_signer(settings)
    except ConfigError as exc:
        return CheckResult("config", False, "; ".join(exc.problems))
    return CheckResult("config", True, f"valid; links point to {settings.server.base_url}")


async def check_database(settings: Settings) -> CheckResult:
    url = settings.database.url
    shown = display_url(url)
    path = sqlite_file(url)
    if path is not None and not path.exists():
        if path.parent.exists():
            return CheckResult("database", True, f"{shown} does not exist yet; `serve` will create it")
        return CheckResult("database", False, f"{shown}: the folder {path.parent} does not exist")
    try:
        store = await Store.open(url, migrate=False, busy_timeout=settings.database.busy_timeout)
    except AbiquoWorkflowError as exc:
        return CheckResult("database", False, str(exc))
    await store.close()
    return CheckResult("database", True, f"{shown} answers; the schema is up to date")


def named_roles(settings: Settings) -> dict[str, str]:
    """Every Abiquo role the policy names, with the first key naming it: `policy.approver_role`, then
    each rule's `approver_roles` and `requester_role` (a misspelt role would never approve or match)."""
    roles = {settings.policy.approver_role: "policy.approver_role"}
    for index, rule in enumerate(settings.policy.rules):
        for key in ("approver_roles", "requester_role"):
            for role in getattr(rule, key) or ():
                roles.setdefault(role, f"policy.rules[{index}] ({rule.name!r}).{key}")
    return roles


async def check_abiquo(settings: Settings) -> CheckResult:
    role = settings.policy.approver_role
    reconciling = ""
    try:
        async with AbiquoClient(settings.abiquo) as client:
            version = await client.version()
            for name, key in named_roles(settings).items():
                if not await client.role_exists(name):
                    return CheckResult(
                        "abiquo", False, f"Abiquo {version} answers, but has no role named {name} ({key})"
                    )
            if settings.reconcile.interval.total_seconds() > 0:
                try:
                    reconciling = await _pending_tasks_readable(client)
                except AbiquoWorkflowError as exc:
                    return CheckResult(
                        "abiquo",
                        False,
                        f"Abiquo {version} answers, but reconciliation cannot read the enterprises' pending "
                        f"tasks ({exc}); the connector's user must see every enterprise, or set "
                        "reconcile.interval = 0 to turn reconciliation off",
                    )
    except AbiquoWorkflowError as exc:
        return CheckResult("abiquo", False, str(exc))
    others = len(named_roles(settings)) - 1
    more = f" (and the {others} other role(s) the policy rules name)" if others else ""
    return CheckResult(
        "abiquo",
        True,
        f"{settings.abiquo.base_url}: Abiquo {version}, credentials work, role {role} exists{more}"
        + reconciling,
    )


async def _pending_tasks_readable(client: AbiquoClient) -> str:
    """Read what reconciliation reads: every enterprise, and the pending tasks of the first with workflow
    on (one listing proves the permission). Said as a clause of the check's line."""
    enterprises = await client.enterprises()
    gated = [e for e in enterprises if e.workflow is not False]
    if not gated:
        return (
            f"; none of its {len(enterprises)} enterprise(s) has workflow on, so Abiquo holds nothing for us"
        )
    held = await client.pending_tasks(enterprise_href(gated[0]))
    return (
        f"; reconciliation reads pending tasks ({len(gated)} of {len(enterprises)} enterprise(s) with "
        f"workflow on; {display.name(gated[0].name)}: {len(held)} held)"
    )


async def check_smtp(settings: Settings) -> CheckResult:
    mailer = Mailer(settings.mail)
    try:
        await mailer.check()
    except AbiquoWorkflowError as exc:
        return CheckResult("smtp", False, str(exc))
    login = " and accepts the login" if settings.mail.smtp_user else ""
    return CheckResult("smtp", True, f"{mailer.relay} answers{login}")


async def run_checks(settings: Settings) -> list[CheckResult]:
    """Every check, concurrently, in a fixed order."""
    return list(
        await asyncio.gather(
            check_config(settings), check_database(settings), check_abiquo(settings), check_smtp(settings)
        )
    )
