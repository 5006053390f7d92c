"""Gather what approvers are shown about a request, with as few Abiquo calls as possible.

For one callback: the requester, then every VM at once (each with its disks and volumes), then the
resources the VMs share, fetched once for the whole request and concurrently with each other: the
virtual datacenter, the virtual appliance, the enterprise and its users (for the approvers); then the
VDC's datacenter. A 100-VM vApp therefore costs one round of VM reads plus three short rounds, not
100 sequential ones; the client bounds how many requests are in flight (`abiquo.max_connections`).

Across requests. The shared resources (the enterprise, its users, the VDC, the datacenter, the vApp) are
read with `cached=True`: within `abiquo.cache_ttl` seconds (30 by default) the next request of the same
enterprise takes them from the client's cache (abiquo/cache.py), and concurrent triages share one read.
A burst of N single-VM callbacks of one enterprise therefore costs N times the per-request reads (the
requester, the VM, its disks and volumes) plus one read of each shared resource. The requester and the
VMs are always read live: a requester's role can decide a request on its own (policy rule 2), and a VM's
sizes are what the approver is asked about. How old an approver list may be, and why that is safe: the
README (Security).

A reconfigure is compared with the past (docs/protocol.md §7.11). Abiquo's held task names only its target,
and the VM read there already shows the requested CPU, RAM and disks; what the VM was before is not in
Abiquo's API. So when `history` (the store) is given, each reconfigured VM is looked up in the snapshots
of earlier requests (`Reader.seen_before`, matched on Abiquo's own target href of a verified task) and
the latest read of it is kept as `VmDetails.last_seen`, for the emails and pages to show "was → now".
An earlier reconfigure counts only once it was accepted and delivered (one declined or still undecided
shows sizes the VM never got). Nothing of it comes from a callback: every snapshot is a triage's read
from Abiquo with our credentials.

A VM or shared resource that Abiquo says does not exist (404) is shown as unknown; the email still
goes out. Abiquo being unreachable raises, so the triage job is retried later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.domain import (
    Datacenter,
    DecisionState,
    DeliveryState,
    Enterprise,
    RequestDetails,
    User,
    VirtualMachine,
    VmDetails,
)
from abiquo_workflow.exceptions import AbiquoNotFound
from abiquo_workflow.store.reads import Reader, SeenBefore
from abiquo_workflow.store.records import TaskRecord

T = TypeVar("T")

_details_json = TypeAdapter(RequestDetails)


@dataclass(frozen=True, slots=True)
class Enriched:
    details: RequestDetails
    #: Every user of the VMs' enterprise, for the policy to pick approvers from; empty when not asked.
    enterprise_users: tuple[User, ...]
    #: What could not be read (each a sentence); the request goes ahead without it.
    problems: tuple[str, ...]


async def _optional(read: Awaitable[T] | None, what: str, problems: list[str]) -> T | None:
    """The result of `read`; None (noted) when there is nothing to read or Abiquo has no such thing."""
    if read is None:
        return None
    try:
        return await read
    except AbiquoNotFound:
        problems.append(f"{what} was not found in Abiquo")
        return None


def _requester_href(task: TaskRecord) -> str | None:
    if task.user_href:
        return task.user_href
    # `_` stands for "any enterprise" in Abiquo's user URLs (docs/protocol.md §7.1).
    return f"admin/enterprises/_/users/{task.user_id}" if task.user_id else None


async def _vm_details(client: AbiquoClient, task: TaskRecord, history: Reader | None) -> VmDetails:
    if not task.target_href:
        return VmDetails(task.task_id, task.task_type, None, "the task names no virtual machine")
    try:
        vm = await client.get_vm(task.target_href)
    except AbiquoNotFound:
        return VmDetails(task.task_id, task.task_type, None, "the virtual machine was not found in Abiquo")
    details = VmDetails(task.task_id, task.task_type, vm)
    if history is None or task.task_type.upper() != "RECONFIGURE":
        return details
    seen = await last_seen(history, task, vm)
    return replace(details, last_seen=seen[0], last_seen_at=seen[1]) if seen else details


async def last_seen(
    history: Reader, task: TaskRecord, vm: VirtualMachine
) -> tuple[VirtualMachine, datetime] | None:
    """The VM of `task` as the latest earlier request's triage read it, and when; None if never read.

    Matched on the task's target (Abiquo's href, the task being verified) or the VM's own href. Only
    the latest few readings are looked at (`Reader.seen_before`'s limit): past five reconfigures that
    did not go through in a row, the VM counts as never seen.
    """
    hrefs = [href for href in (task.target_href, vm.href) if href]
    for seen in await history.seen_before(hrefs, besides=task.request_id):
        if not _shows_the_vm_as_it_became(seen.task):
            continue
        earlier = _vm_in(seen)
        if earlier is not None:
            return earlier, seen.seen_at
    return None


def _shows_the_vm_as_it_became(task: TaskRecord) -> bool:
    """Whether a snapshot taken for `task` shows sizes the VM really got: a deploy's or undeploy's
    always; a reconfigure's only once it was accepted and Abiquo told (cancelled, Abiquo puts the old
    sizes back; undecided, they may never apply)."""
    if task.task_type.upper() != "RECONFIGURE":
        return True
    return task.decision is DecisionState.ACCEPTED and task.delivery is DeliveryState.DELIVERED


def _vm_in(seen: SeenBefore) -> VirtualMachine | None:
    """The snapshot's reading of the VM of `seen.task`; None if it could not be read then or now."""
    try:
        details = _details_json.validate_python(seen.details)
    except (ValidationError, ValueError):
        return None  # a snapshot another version wrote: look further back
    return next((vm.vm for vm in details.vms if vm.task_id == seen.task.task_id and vm.vm is not None), None)


def _enterprise_href(vm: VirtualMachine | None, requester: User | None) -> str | None:
    if vm is not None and vm.enterprise_href:
        return vm.enterprise_href
    if requester is not None and requester.enterprise_id:
        return f"admin/enterprises/{requester.enterprise_id}"
    return None


async def enrich(
    client: AbiquoClient,
    tasks: Sequence[TaskRecord],
    *,
    with_users: bool,
    history: Reader | None = None,
) -> Enriched:
    """Read everything the approval email shows about `tasks` (the tasks of one callback).

    `with_users` also reads the enterprise's users, which the policy needs to choose approvers.
    `history` (the store) gives each reconfigured VM the reading of it to compare with (`last_seen`).
    """
    problems: list[str] = []
    first = tasks[0]
    requester_href = _requester_href(first)
    requester_read = client.get_user(requester_href) if requester_href else None
    requester, vms = await asyncio.gather(
        _optional(requester_read, "the requester", problems),
        asyncio.gather(*(_vm_details(client, task, history) for task in tasks)),
    )
    problems.extend(f"{vm.task_id}: {vm.error}" for vm in vms if vm.error)
    known = next((vm.vm for vm in vms if vm.vm is not None), None)
    enterprise_href = _enterprise_href(known, requester)

    async def users() -> tuple[User, ...]:
        if not with_users or enterprise_href is None:
            return ()
        return tuple(await client.enterprise_users(enterprise_href, cached=True))

    vdc_href = known.vdc_href if known else None
    vapp_href = known.vapp_href if known else None
    vdc_read = client.get_vdc(vdc_href, cached=True) if vdc_href else None
    vapp_read = client.get_vapp(vapp_href, cached=True) if vapp_href else None
    enterprise_read = client.get_enterprise(enterprise_href, cached=True) if enterprise_href else None
    vdc, vapp, enterprise, enterprise_users = await asyncio.gather(
        _optional(vdc_read, "the virtual datacenter", problems),
        _optional(vapp_read, "the virtual appliance", problems),
        _optional(enterprise_read, "the enterprise", problems),
        users(),
    )
    datacenter: Datacenter | None = None
    if vdc is not None and vdc.datacenter_href:
        datacenter_read = client.get_datacenter(vdc.datacenter_href, cached=True)
        datacenter = await _optional(datacenter_read, "the datacenter", problems)
    details = RequestDetails(
        requester=requester,
        enterprise=enterprise or _enterprise_from_names(known, requester),
        vdc=vdc,
        datacenter=datacenter,
        vapp=vapp,
        vms=tuple(vms),
    )
    return Enriched(details, enterprise_users, tuple(problems))


def _enterprise_from_names(vm: VirtualMachine | None, requester: User | None) -> Enterprise | None:
    """A stand-in when the enterprise itself could not be read but a link title named it."""
    if vm is not None and vm.enterprise_name:
        return Enterprise(id="", name=vm.enterprise_name, href=vm.enterprise_href)
    if requester is not None and requester.enterprise_name:
        return Enterprise(id=requester.enterprise_id or "", name=requester.enterprise_name)
    return None
