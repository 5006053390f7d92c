"""The simulator's seeded world: datacenters, roles, enterprises, users, VDCs, vApps and VMs.

Pure data and lookups, no I/O. The ids, names and sizes here are the ground truth every test of the
connector is written against (see the project brief), so change them only on purpose.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field, replace

#: The seeded connector account is admin / xabiquo (Abiquo's demo default); everyone else's password is
#: their nick. Public test fixtures, not secrets.
CONNECTOR_PASSWORD = "xabiquo"  # noqa: S105

#: Namespace for the VMs' and disks' stable UUIDs (uuid5), so a VM keeps its uuid across resets.
_UUID_NAMESPACE = uuid.UUID("6f1d1c0e-2b7a-4c55-9a43-0b8e6c1d2f30")


@dataclass(frozen=True, slots=True)
class Datacenter:
    id: int
    name: str
    location: str


@dataclass(frozen=True, slots=True)
class Privilege:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class Role:
    id: int
    name: str
    blocked: bool
    privileges: tuple[Privilege, ...]

    def has(self, privilege: str) -> bool:
        return any(p.name == privilege for p in self.privileges)


@dataclass(frozen=True, slots=True)
class Enterprise:
    id: int
    name: str
    workflow: bool


@dataclass(frozen=True, slots=True)
class User:
    id: int
    enterprise_id: int
    role_id: int
    nick: str
    name: str
    surname: str
    email: str | None
    password: str = field(repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.name} {self.surname}"


@dataclass(frozen=True, slots=True)
class VirtualDatacenter:
    id: int
    name: str
    enterprise_id: int
    datacenter_id: int
    hypervisor_type: str


@dataclass(frozen=True, slots=True)
class VirtualAppliance:
    id: int
    name: str
    vdc_id: int


@dataclass(frozen=True, slots=True)
class Disk:
    id: int
    sequence: int
    size_mb: int
    label: str
    controller: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Volume:
    id: int
    name: str
    size_mb: int
    sequence: int
    tier: str


@dataclass(frozen=True, slots=True)
class VirtualMachine:
    id: int
    name: str
    vapp_id: int
    owner_id: int
    cpu: int
    ram_mb: int
    uuid: str
    disks: tuple[Disk, ...]
    volumes: tuple[Volume, ...] = ()


def resized(vm: VirtualMachine, cpu: int, ram_mb: int, disks_mb: tuple[int, ...]) -> VirtualMachine:
    """The VM with other CPU, RAM and disks (sizes by sequence): a disk kept keeps its id and uuid, a
    disk added gets new ones, and disks beyond `disks_mb` are gone. Volumes are kept."""
    disks = tuple(
        replace(vm.disks[seq], size_mb=size)
        if seq < len(vm.disks)
        else Disk(
            id=900_000 + vm.id * 100 + seq,
            sequence=seq,
            size_mb=size,
            label=f"Data {seq}",
            controller="SCSI",
            uuid=str(uuid.uuid5(_UUID_NAMESPACE, f"disk-{vm.id}-{seq}")),
        )
        for seq, size in enumerate(disks_mb)
    )
    return replace(vm, cpu=cpu, ram_mb=ram_mb, disks=disks)


def collation_key(text: str) -> str:
    """Sort key like MySQL's case- and accent-insensitive collation, which Abiquo sorts with.

    Without it "Émile" would sort after "Zoë" (É is U+00C9, after Z), and Zoë would not be last.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class World:
    """The seeded entities, indexed by id, plus the one thing that changes: each VM's state."""

    def __init__(
        self,
        datacenters: list[Datacenter],
        roles: list[Role],
        enterprises: list[Enterprise],
        users: list[User],
        vdcs: list[VirtualDatacenter],
        vapps: list[VirtualAppliance],
        vms: list[VirtualMachine],
    ) -> None:
        self.datacenters = {d.id: d for d in datacenters}
        self.roles = {r.id: r for r in roles}
        self.enterprises = {e.id: e for e in enterprises}
        self.users = {u.id: u for u in users}
        self.vdcs = {v.id: v for v in vdcs}
        self.vapps = {a.id: a for a in vapps}
        self.vms = {m.id: m for m in vms}
        self.vm_states: dict[int, str] = {m.id: "NOT_ALLOCATED" for m in vms}

    def copy(self) -> World:
        """A world of its own with the same entities: they are immutable, so they are shared, and what a
        world changes (which VM an id names, each VM's state) is copied."""
        twin = World(
            list(self.datacenters.values()),
            list(self.roles.values()),
            list(self.enterprises.values()),
            list(self.users.values()),
            list(self.vdcs.values()),
            list(self.vapps.values()),
            list(self.vms.values()),
        )
        twin.vm_states = dict(self.vm_states)
        return twin

    def user_by_nick(self, nick: str) -> User | None:
        return next((u for u in self.users.values() if u.nick == nick), None)

    def users_of(self, enterprise_id: int | None) -> list[User]:
        """The users of one enterprise (or of all when None), in id order."""
        return [u for u in self.users.values() if enterprise_id is None or u.enterprise_id == enterprise_id]

    def vapps_of(self, vdc_id: int) -> list[VirtualAppliance]:
        return [a for a in self.vapps.values() if a.vdc_id == vdc_id]

    def vms_of(self, vapp_id: int) -> list[VirtualMachine]:
        return [m for m in self.vms.values() if m.vapp_id == vapp_id]

    def vapp_of(self, vm: VirtualMachine) -> VirtualAppliance:
        return self.vapps[vm.vapp_id]

    def vdc_of(self, vm: VirtualMachine) -> VirtualDatacenter:
        return self.vdcs[self.vapps[vm.vapp_id].vdc_id]

    def enterprise_of(self, vm: VirtualMachine) -> Enterprise:
        return self.enterprises[self.vdc_of(vm).enterprise_id]

    def vapp_state(self, vapp_id: int) -> str:
        states = {self.vm_states[m.id] for m in self.vms_of(vapp_id)}
        if states <= {"NOT_ALLOCATED"}:
            return "NOT_DEPLOYED"
        if states == {"ON"}:
            return "DEPLOYED"
        return "NEEDS_SYNC"


# --- The seed ------------------------------------------------------------------------------------------

_PRIVILEGES = {
    p.name: p
    for p in (
        Privilege(1, "ENTERPRISE_ENUMERATE"),
        Privilege(2, "USERS_VIEW"),
        Privilege(3, "USERS_MANAGE_OTHER_ENTERPRISES"),
        Privilege(4, "VDC_ENUMERATE"),
        Privilege(5, "VAPP_DEPLOY_UNDEPLOY"),
        Privilege(6, "VAPP_CUSTOMISE_SETTINGS"),
        Privilege(7, "PHYS_DC_ENUMERATE"),
        Privilege(61, "WORKFLOW_OVERRIDE"),
    )
}


def _privileges(*names: str) -> tuple[Privilege, ...]:
    return tuple(_PRIVILEGES[n] for n in names)


def _user(
    id: int, enterprise_id: int, role_id: int, nick: str, name: str, surname: str, email: str | None
) -> User:
    return User(id, enterprise_id, role_id, nick, name, surname, email, password=nick)


def _vm(
    id: int,
    name: str,
    vapp_id: int,
    owner_id: int,
    cpu: int,
    ram_mb: int,
    extra_disks_mb: tuple[int, ...] = (),
    volumes: tuple[tuple[int, str, int], ...] = (),
) -> VirtualMachine:
    sizes = (20480, *extra_disks_mb)
    disks = tuple(
        Disk(
            id=1000 + id * 10 + seq,
            sequence=seq,
            size_mb=size,
            label="System" if seq == 0 else f"Data {seq}",
            controller="IDE" if seq == 0 else "SCSI",
            uuid=str(uuid.uuid5(_UUID_NAMESPACE, f"disk-{id}-{seq}")),
        )
        for seq, size in enumerate(sizes)
    )
    vols = tuple(
        Volume(id=vol_id, name=vol_name, size_mb=size, sequence=len(sizes) + i, tier="Gold")
        for i, (vol_id, vol_name, size) in enumerate(volumes)
    )
    return VirtualMachine(
        id, name, vapp_id, owner_id, cpu, ram_mb, str(uuid.uuid5(_UUID_NAMESPACE, f"vm-{id}")), disks, vols
    )


def seed_world() -> World:
    """A fresh copy of the seeded world described in the project brief (each reset makes one: copying
    takes microseconds, building it milliseconds)."""
    return _SEEDED.copy()


def _build_seeded_world() -> World:
    datacenters = [Datacenter(1, "Barcelona DC", "Barcelona, ES"), Datacenter(2, "Zürich DC", "Zürich, CH")]
    roles = [
        Role(
            1,
            "CLOUD_ADMIN",
            True,
            _privileges(
                "ENTERPRISE_ENUMERATE",
                "USERS_VIEW",
                "USERS_MANAGE_OTHER_ENTERPRISES",
                "VDC_ENUMERATE",
                "VAPP_DEPLOY_UNDEPLOY",
                "VAPP_CUSTOMISE_SETTINGS",
                "PHYS_DC_ENUMERATE",
                "WORKFLOW_OVERRIDE",
            ),
        ),
        Role(
            2,
            "ENTERPRISE_ADMIN",
            False,
            _privileges(
                "USERS_VIEW",
                "VDC_ENUMERATE",
                "VAPP_DEPLOY_UNDEPLOY",
                "VAPP_CUSTOMISE_SETTINGS",
                "WORKFLOW_OVERRIDE",
            ),
        ),
        Role(
            3, "USER", False, _privileges("VDC_ENUMERATE", "VAPP_DEPLOY_UNDEPLOY", "VAPP_CUSTOMISE_SETTINGS")
        ),
        Role(4, "VDC_APPROVER", False, _privileges("VDC_ENUMERATE", "WORKFLOW_OVERRIDE")),
    ]
    enterprises = [
        Enterprise(1, "Abiquo", workflow=False),
        Enterprise(2, "Acme & Söhne <Ltd>", workflow=True),
        Enterprise(3, "Globex", workflow=True),
        Enterprise(4, "Initech", workflow=True),
    ]
    users = [
        User(1, 1, 1, "admin", "Cloud", "Admin", "admin@abiquo.example", password=CONNECTOR_PASSWORD),
        _user(10, 2, 2, "asmith", "Alice", "Smith", "alice.smith@acme.example"),
        _user(11, 2, 2, "bjones", "Bob", "Jones", "bob.jones@acme.example"),
        _user(12, 2, 2, "cnomail", "Carol", "Nomail", None),
        _user(13, 2, 4, "dcustom", "Dan", "Custom", "dan.custom@acme.example"),
        _user(20, 2, 3, "jdoe", "John", "Doe", "john.doe@acme.example"),
        _user(21, 2, 3, "emile", "Émile", "Zoëga", None),
        *(_user(n, 2, 3, f"user{n}", "Filler", str(n), f"user{n}@acme.example") for n in range(22, 55)),
        _user(55, 2, 2, "zzimmer", "Zoë", "Zimmermann", "zoe.zimmermann@acme.example"),
        _user(100, 3, 2, "gadmin", "Grace", "Admin", "grace.admin@globex.example"),
        _user(101, 3, 3, "guser", "Gus", "User", "gus.user@globex.example"),
        _user(200, 4, 3, "puser", "Peter", "User", "peter.user@initech.example"),
        _user(201, 4, 2, "mnomail", "Milton", "Nomail", None),
    ]
    vdcs = [
        VirtualDatacenter(1, "Production <EU>", 2, 1, "VMX_04"),
        VirtualDatacenter(2, "Staging", 2, 2, "KVM"),
        VirtualDatacenter(3, "Globex VDC", 3, 1, "VMX_04"),
        VirtualDatacenter(4, "Initech VDC", 4, 2, "KVM"),
    ]
    vapps = [
        VirtualAppliance(1, "Web tier & cache", 1),
        VirtualAppliance(2, "Big batch", 1),
        VirtualAppliance(3, "Wiki", 2),
        VirtualAppliance(4, "Globex app", 3),
        VirtualAppliance(5, "TPS reports", 4),
    ]
    vms = [
        _vm(1, "web-01", 1, 20, cpu=2, ram_mb=4096),
        _vm(2, 'db <primary> & "co"', 1, 20, 4, 8192, (51200,), ((77, "db-data", 102400),)),
        _vm(3, "cache-03", 1, 20, cpu=2, ram_mb=2048),
        *(_vm(100 + n, f"batch-{n:03d}", 2, 20, cpu=1, ram_mb=1024) for n in range(1, 101)),
        _vm(4, "wiki-ß-01", 3, 20, 1, 2048, volumes=((78, "wiki-data", 10240),)),
        _vm(5, "gx-app-01", 4, 101, cpu=2, ram_mb=4096),
        _vm(6, "gx-app-02", 4, 101, 2, 4096, (10240,)),
        _vm(7, "tps-01", 5, 200, cpu=1, ram_mb=1024),
    ]
    return World(datacenters, roles, enterprises, users, vdcs, vapps, vms)


_SEEDED = _build_seeded_world()
