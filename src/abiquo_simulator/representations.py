"""Abiquo's representations of the seeded world and of tasks, errors included (docs/protocol.md §7, §11).

`Hrefs` knows every resource's path. Its base is either the absolute API root (`http://host:port/api/`, what
the API itself returns) or empty, for the relative hrefs Abiquo puts in the callback (no leading slash, no
`api/`, docs/protocol.md §3.7). `Representer` turns world objects into `rendering.Entity` / `Collection`
values; `mode` is "3.x" or "2.6" and decides the few fields and links that differ (§9).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from .rendering import Collection, Entity, Format, Link, Value
from .tasks import Job, Task, TaskState
from .world import (
    Datacenter,
    Disk,
    Enterprise,
    Role,
    User,
    VirtualAppliance,
    VirtualDatacenter,
    VirtualMachine,
    Volume,
    World,
)

_VM_STATE_IDS = {"NOT_ALLOCATED": 1, "ALLOCATED": 2, "CONFIGURED": 3, "ON": 4, "PAUSED": 5, "OFF": 6}


class Hrefs:
    def __init__(self, world: World, base: str) -> None:
        self.world = world
        self.base = base

    def _h(self, path: str) -> str:
        return self.base + path

    def enterprise(self, enterprise_id: int) -> str:
        return self._h(f"admin/enterprises/{enterprise_id}")

    def users(self, enterprise_id: int) -> str:
        return self._h(f"admin/enterprises/{enterprise_id}/users")

    def user(self, user: User) -> str:
        return self._h(f"admin/enterprises/{user.enterprise_id}/users/{user.id}")

    def enterprise_pending(self, enterprise_id: int) -> str:
        return self._h(f"admin/enterprises/{enterprise_id}/action/pendingtasks")

    def user_pending(self, user: User) -> str:
        return self._h(f"admin/enterprises/{user.enterprise_id}/users/{user.id}/action/pendingtasks")

    def role(self, role_id: int) -> str:
        return self._h(f"admin/roles/{role_id}")

    def role_privileges(self, role_id: int) -> str:
        return self._h(f"admin/roles/{role_id}/action/privileges")

    def location(self, datacenter_id: int) -> str:
        return self._h(f"cloud/locations/{datacenter_id}")

    def datacenter(self, datacenter_id: int) -> str:
        return self._h(f"admin/datacenters/{datacenter_id}")

    def vdc(self, vdc_id: int) -> str:
        return self._h(f"cloud/virtualdatacenters/{vdc_id}")

    def vapps(self, vdc_id: int) -> str:
        return self.vdc(vdc_id) + "/virtualappliances"

    def vapp(self, vapp: VirtualAppliance) -> str:
        return f"{self.vapps(vapp.vdc_id)}/{vapp.id}"

    def vms(self, vapp: VirtualAppliance) -> str:
        return self.vapp(vapp) + "/virtualmachines"

    def vm(self, vm: VirtualMachine) -> str:
        return f"{self.vms(self.world.vapp_of(vm))}/{vm.id}"

    def disks(self, vm: VirtualMachine) -> str:
        return self.vm(vm) + "/storage/disks"

    def volumes(self, vm: VirtualMachine) -> str:
        return self.vm(vm) + "/storage/volumes"

    def vdc_disk(self, vm: VirtualMachine, disk: Disk) -> str:
        return f"{self.vdc(self.world.vdc_of(vm).id)}/disks/{disk.id}"

    def vdc_volume(self, vm: VirtualMachine, volume: Volume) -> str:
        return f"{self.vdc(self.world.vdc_of(vm).id)}/volumes/{volume.id}"

    def tasks(self, vm: VirtualMachine) -> str:
        return self.vm(vm) + "/tasks"

    def task(self, task: Task) -> str:
        return f"{self.tasks(self.world.vms[task.vm_id])}/{task.task_id}"


def error_body(code: str, message: str, fmt: Format) -> bytes:
    """Abiquo's error list: `{"collection": [{"code", "message"}]}` or `<errors><error>…</error></errors>`."""
    if fmt == "json":
        return json.dumps({"collection": [{"code": code, "message": message}]}, ensure_ascii=False).encode()
    root = ET.Element("errors")
    error = ET.SubElement(root, "error")
    ET.SubElement(error, "code").text = code
    ET.SubElement(error, "message").text = message
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


class Representer:
    def __init__(self, world: World, base: str, mode: str) -> None:
        self.world = world
        self.hrefs = Hrefs(world, base)
        self.legacy = mode == "2.6"

    # --- People -------------------------------------------------------------------------------------

    def _user_fields(self, user: User) -> tuple[tuple[str, Value], ...]:
        return (
            ("id", user.id),
            ("nick", user.nick),
            ("name", user.name),
            ("surname", user.surname),
            ("email", user.email),
            ("locale", "en_US"),
            ("authType", "ABIQUO"),
            ("active", True),
            ("locked", False),
            ("firstLogin", False),
        )

    def _user_links(self, user: User) -> tuple[Link, ...]:
        h = self.hrefs
        enterprise = self.world.enterprises[user.enterprise_id]
        role = self.world.roles[user.role_id]
        return (
            Link("enterprise", h.enterprise(enterprise.id), "enterprise", enterprise.name),
            Link("role", h.role(role.id), "role", role.name),
            Link("edit", h.user(user), "user", user.nick),
            Link("pendingtasks", h.user_pending(user), "tasks", "pending tasks"),
        )

    def user(self, user: User) -> Entity:
        return Entity("user", self._user_fields(user), self._user_links(user))

    def user_with_role(self, user: User) -> Entity:
        role = self.world.roles[user.role_id]
        enterprise = self.world.enterprises[user.enterprise_id]
        fields = (
            *self._user_fields(user),
            ("role", self._embedded_role(role)),
            ("enterprise", Entity("enterprise", self._enterprise_fields(enterprise))),
        )
        return Entity("userWithRole", fields, self._user_links(user))

    def users(self, users: list[User], links: tuple[Link, ...], total: int, with_roles: bool) -> Collection:
        if with_roles:
            return Collection("usersWithRoles", tuple(self.user_with_role(u) for u in users), links, total)
        return Collection("users", tuple(self.user(u) for u in users), links, total)

    def _privileges(self, role: Role) -> Collection:
        return Collection(
            "privileges",
            tuple(Entity("privilege", (("id", p.id), ("name", p.name))) for p in role.privileges),
        )

    def _embedded_role(self, role: Role) -> Entity:
        fields: tuple[tuple[str, Value], ...] = (
            ("id", role.id),
            ("name", role.name),
            ("blocked", role.blocked),
            ("privileges", self._privileges(role)),
        )
        return Entity("role", fields)

    def role(self, role: Role) -> Entity:
        h = self.hrefs
        links = (
            Link("edit", h.role(role.id), "role", role.name),
            Link("privileges", h.role_privileges(role.id), "privileges", "privileges"),
        )
        return Entity("role", (("id", role.id), ("name", role.name), ("blocked", role.blocked)), links)

    def roles(self, roles: list[Role], links: tuple[Link, ...], total: int) -> Collection:
        return Collection("roles", tuple(self.role(r) for r in roles), links, total)

    def privileges(self, role: Role) -> Collection:
        privileges = self._privileges(role)
        links = (Link("self", self.hrefs.role_privileges(role.id), "privileges"),)
        return Collection("privileges", privileges.items, links, len(privileges.items))

    def _enterprise_fields(self, enterprise: Enterprise) -> tuple[tuple[str, Value], ...]:
        return (
            ("id", enterprise.id),
            ("name", enterprise.name),
            ("workflow", enterprise.workflow),
            ("isReservationRestricted", False),
            ("twoFactorAuthenticationMandatory", False),
        )

    def enterprise(self, enterprise: Enterprise) -> Entity:
        h = self.hrefs
        links = (
            Link("edit", h.enterprise(enterprise.id), "enterprise", enterprise.name),
            Link("users", h.users(enterprise.id), "users", "users"),
            Link("pendingtasks", h.enterprise_pending(enterprise.id), "tasks", "pending tasks"),
        )
        return Entity("enterprise", self._enterprise_fields(enterprise), links)

    def enterprises(self, enterprises: list[Enterprise], links: tuple[Link, ...], total: int) -> Collection:
        return Collection("enterprises", tuple(self.enterprise(e) for e in enterprises), links, total)

    # --- Places ---------------------------------------------------------------------------------------

    def location(self, dc: Datacenter) -> Entity:
        """The tenant's view of a datacenter. Real Abiquo links a datacenter to itself as `edit`; the
        `self` link of docs/protocol.md §11.13 is kept beside it."""
        href = self.hrefs.location(dc.id)
        links = (Link("edit", href, "datacenter", dc.name), Link("self", href, "datacenter", dc.name))
        return Entity("datacenter", (("id", dc.id), ("name", dc.name), ("location", dc.location)), links)

    def datacenter(self, dc: Datacenter) -> Entity:
        links = (
            Link("edit", self.hrefs.datacenter(dc.id), "datacenter", dc.name),
            Link("location", self.hrefs.location(dc.id), "datacenter", dc.name),
        )
        return Entity("datacenter", (("id", dc.id), ("name", dc.name), ("location", dc.location)), links)

    def vdc(self, vdc: VirtualDatacenter) -> Entity:
        h = self.hrefs
        enterprise = self.world.enterprises[vdc.enterprise_id]
        dc = self.world.datacenters[vdc.datacenter_id]
        # 3.x points at the tenant's view of the datacenter; 2.x at the admin one (docs/protocol.md §7.6).
        place = (
            Link("datacenter", h.datacenter(dc.id), "datacenter", dc.name)
            if self.legacy
            else Link("location", h.location(dc.id), "datacenter", dc.name)
        )
        links = (
            Link("edit", h.vdc(vdc.id), "virtualdatacenter", vdc.name),
            Link("enterprise", h.enterprise(enterprise.id), "enterprise", enterprise.name),
            place,
            Link("virtualappliances", h.vapps(vdc.id), "virtualappliances", "virtual appliances"),
        )
        return Entity(
            "virtualDatacenter",
            (("id", vdc.id), ("name", vdc.name), ("hypervisorType", vdc.hypervisor_type)),
            links,
        )

    def vapp(self, vapp: VirtualAppliance) -> Entity:
        h = self.hrefs
        vdc = self.world.vdcs[vapp.vdc_id]
        enterprise = self.world.enterprises[vdc.enterprise_id]
        links = (
            Link("edit", h.vapp(vapp), "virtualappliance", vapp.name),
            Link("virtualdatacenter", h.vdc(vdc.id), "virtualdatacenter", vdc.name),
            Link("enterprise", h.enterprise(enterprise.id), "enterprise", enterprise.name),
            Link("virtualmachines", h.vms(vapp), "virtualmachines", "virtual machines"),
        )
        fields: tuple[tuple[str, Value], ...] = (
            ("id", vapp.id),
            ("name", vapp.name),
            ("state", self.world.vapp_state(vapp.id)),
            ("error", 0),
            ("publicApp", 0),
            ("highDisponibility", 0),
        )
        return Entity("virtualAppliance", fields, links)

    def vapps(self, vapps: list[VirtualAppliance], links: tuple[Link, ...], total: int) -> Collection:
        return Collection("virtualAppliances", tuple(self.vapp(a) for a in vapps), links, total)

    # --- Machines -------------------------------------------------------------------------------------

    def vm(self, vm: VirtualMachine) -> Entity:
        h = self.hrefs
        vapp = self.world.vapp_of(vm)
        vdc = self.world.vdc_of(vm)
        enterprise = self.world.enterprise_of(vm)
        owner = self.world.users[vm.owner_id]
        state = self.world.vm_states[vm.id]
        links = [
            Link("edit", h.vm(vm), "virtualmachine", vm.name),
            Link("enterprise", h.enterprise(enterprise.id), "enterprise", enterprise.name),
            Link("user", h.user(owner), "user", owner.full_name),
            Link("virtualdatacenter", h.vdc(vdc.id), "virtualdatacenter", vdc.name),
            Link("virtualappliance", h.vapp(vapp), "virtualappliance", vapp.name),
            # 2.x named the link to the disks collection `disks`; 3.x names it `harddisks`.
            Link("disks" if self.legacy else "harddisks", h.disks(vm), "harddisks", "disks"),
            Link("volumes", h.volumes(vm), "volumes", "volumes"),
        ]
        links += [
            Link(
                f"disk{disk.sequence}",
                h.vdc_disk(vm, disk),
                "harddisk",
                disk.uuid,
                (("length", str(disk.size_mb)), ("diskControllerType", disk.controller)),
            )
            for disk in vm.disks
        ]
        links.append(Link("tasks", h.tasks(vm), "tasks", "tasks"))
        fields: list[tuple[str, Value]] = [
            ("id", vm.id),
            ("uuid", vm.uuid),
            ("name", vm.name),
            ("cpu", vm.cpu),
            ("ram", vm.ram_mb),
        ]
        if self.legacy:
            # 2.x only: the primary disk's size in bytes (docs/protocol.md §7.5); gone by 3.4.
            fields.append(("hdInBytes", vm.disks[0].size_mb * 1024 * 1024))
        fields += [
            ("state", state),
            ("idState", _VM_STATE_IDS.get(state, 0)),
            ("type", "MANAGED"),
            ("highDisponibility", 0),
            ("vdrpEnabled", True),
            ("vdrpPort", 0),
            ("monitored", False),
            ("protected", False),
        ]
        return Entity("virtualMachine", tuple(fields), tuple(links))

    def vms(self, vms: list[VirtualMachine], links: tuple[Link, ...], total: int) -> Collection:
        return Collection("virtualMachines", tuple(self.vm(m) for m in vms), links, total)

    def disk(self, vm: VirtualMachine, disk: Disk) -> Entity:
        fields: tuple[tuple[str, Value], ...] = (
            ("id", disk.id),
            ("sequence", disk.sequence),
            ("sizeInMb", disk.size_mb),
            ("label", disk.label),
            ("bootable", disk.sequence == 0),
            ("diskFormatType", "VMDK_STREAM_OPTIMIZED"),
            ("diskControllerType", disk.controller),
            ("uuid", disk.uuid),
        )
        links = (
            Link("edit", f"{self.hrefs.disks(vm)}/{disk.id}", "harddisk", disk.label),
            Link("virtualmachine", self.hrefs.vm(vm), "virtualmachine", vm.name),
        )
        return Entity("disk", fields, links)

    def disks(self, vm: VirtualMachine) -> Collection:
        links = (Link("self", self.hrefs.disks(vm), "harddisks"),)
        return Collection("disks", tuple(self.disk(vm, d) for d in vm.disks), links, len(vm.disks))

    def volume(self, vm: VirtualMachine, volume: Volume) -> Entity:
        fields: tuple[tuple[str, Value], ...] = (
            ("id", volume.id),
            ("name", volume.name),
            ("state", "ATTACHED"),
            ("sizeInMB", volume.size_mb),
            ("sequence", volume.sequence),
            ("allowResize", True),
            ("bootable", False),
            ("diskControllerType", "SCSI"),
        )
        links = (
            Link("edit", self.hrefs.vdc_volume(vm, volume), "volume", volume.name),
            Link("virtualmachine", self.hrefs.vm(vm), "virtualmachine", vm.name),
        )
        return Entity("volume", fields, links)

    def volumes(self, vm: VirtualMachine) -> Collection:
        links = (Link("self", self.hrefs.volumes(vm), "volumes"),)
        return Collection("volumes", tuple(self.volume(vm, v) for v in vm.volumes), links, len(vm.volumes))

    # --- Tasks ----------------------------------------------------------------------------------------

    def _job(self, task: Task, job: Job, with_creation: bool) -> Entity:
        fields: list[tuple[str, Value]] = [
            ("id", job.id),
            ("parentTaskId", task.task_id),
            ("type", job.type),
            ("description", job.description),
            ("state", job.state),
            ("rollbackState", job.rollback_state),
        ]
        if with_creation:
            fields.append(("creationTimestamp", task.created_at))
        fields.append(("timestamp", task.timestamp))
        return Entity("job", tuple(fields))

    def task(self, task: Task, *, listing: bool, with_creation: bool | None = None) -> Entity:
        """One task. `listing` gives the links of pending-task listings and callbacks (parent = the VM);
        otherwise those of `GET task` (parent = the VM's tasks, plus a `virtualmachine` link).
        `with_creation` (default: 3.x mode) adds `creationTimestamp`, which 2.6 did not send."""
        if with_creation is None:
            with_creation = not self.legacy
        h = self.hrefs
        vm = self.world.vms[task.vm_id]
        requester = self.world.users[task.requester_id]
        links = [
            Link("self", h.task(task), "task"),
            Link("parent", h.vm(vm) if listing else h.tasks(vm), "virtualmachine" if listing else "tasks"),
            Link("target", h.vm(vm), "virtualmachine", vm.name),
            Link("user", h.user(requester), "user", requester.nick),
        ]
        if task.state is TaskState.QUEUEING:
            links += [
                Link("continue", h.task(task) + "/action/continue"),
                Link("cancel", h.task(task) + "/action/cancel"),
            ]
        if not listing:
            links.append(Link("virtualmachine", h.vm(vm), "virtualmachine", vm.name))
        fields: list[tuple[str, Value]] = [
            ("taskId", task.task_id),
            ("userId", str(task.requester_id)),
            ("ownerId", str(task.vm_id)),
            ("type", task.type.value),
            ("state", task.state.value),
        ]
        if with_creation:
            fields.append(("creationTimestamp", task.created_at))
        fields += [
            ("timestamp", task.timestamp),
            ("jobs", Collection("jobs", tuple(self._job(task, j, with_creation) for j in task.jobs))),
        ]
        return Entity("task", tuple(fields), tuple(links))

    def tasks(
        self,
        tasks: list[Task],
        links: tuple[Link, ...],
        total: int | None,
        *,
        listing: bool,
        with_creation: bool | None = None,
    ) -> Collection:
        items = tuple(self.task(t, listing=listing, with_creation=with_creation) for t in tasks)
        return Collection("tasks", items, links, total)
