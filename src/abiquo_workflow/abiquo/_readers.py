"""Build domain values from Abiquo representations (docs/protocol.md §7).

Each function reads one kind of object and raises `ValueError` when a field it cannot do without is
missing or malformed. Optional fields are read tolerantly: Abiquo versions differ (§9), and both spellings
of a disk size (`sizeInMb` on disks, `sizeInMB` on volumes) are accepted on either.
"""

from __future__ import annotations

from typing import TypedDict

from abiquo_workflow.abiquo._representation import Representation
from abiquo_workflow.domain import (
    AbiquoTaskState,
    Datacenter,
    Disk,
    Enterprise,
    Link,
    User,
    VirtualAppliance,
    VirtualDatacenter,
    VirtualMachine,
    Volume,
)

_BYTES_PER_MB = 1024 * 1024


def user_from(rep: Representation, href: str | None = None) -> User:
    """A user from `user`, `users` or `userswithroles` answers.

    The role name is the embedded role's `name` (`userswithroles`) or the `role` link's title (`user`);
    the enterprise is the embedded enterprise or the `enterprise` link (id from its href, name from its
    title).
    """
    role = rep.child("role")
    role_link = rep.link("role")
    role_name = (role.text("name") if role is not None else None) or _title(role_link)
    enterprise = rep.child("enterprise")
    enterprise_link = rep.link("enterprise")
    if enterprise is not None and enterprise.text("id"):
        enterprise_id, enterprise_name = enterprise.text("id"), enterprise.text("name")
    else:
        enterprise_id = _last_segment(enterprise_link.href) if enterprise_link else None
        enterprise_name = _title(enterprise_link)
    own_href = _own_href(rep, href)
    return User(
        id=_id(rep, own_href, "user"),
        nick=_required(rep, "nick", "user"),
        name=rep.text("name") or "",
        surname=rep.text("surname") or "",
        email=(rep.text("email") or "").strip() or None,
        role=role_name,
        enterprise_id=enterprise_id,
        enterprise_name=enterprise_name,
        href=own_href,
        active=rep.boolean("active") is not False,
    )


def enterprise_from(rep: Representation, href: str | None = None) -> Enterprise:
    return Enterprise(
        **_named(rep, href, "enterprise"),
        users_href=_href(rep.link("users")),
        pendingtasks_href=_href(rep.link("pendingtasks")),
        workflow=rep.boolean("workflow"),
    )


def vm_from(rep: Representation, href: str | None = None) -> VirtualMachine:
    """A VM without its disks and volumes, behind its `harddisks` (2.x: `disks`) and `volumes` links."""
    enterprise, vdc, vapp = (
        rep.link("enterprise"),
        rep.link("virtualdatacenter"),
        rep.link("virtualappliance"),
    )
    return VirtualMachine(
        **_named(rep, href, "virtual machine"),
        cpu=rep.integer("cpu"),
        ram_mb=rep.integer("ram"),
        state=rep.text("state"),
        enterprise_href=_href(enterprise),
        enterprise_name=_title(enterprise),
        vdc_href=_href(vdc),
        vdc_name=_title(vdc),
        vapp_href=_href(vapp),
        vapp_name=_title(vapp),
        harddisks_href=_href(_disks_link(rep)),
        volumes_href=_href(rep.link("volumes")),
        hd_in_bytes=rep.integer("hdInBytes"),
    )


def _disks_link(rep: Representation) -> Link | None:
    """The VM's link to its disks collection: `harddisks` (3.x), else `disks` (what Abiquo 2.x names it).

    Only these exact rels name the collection; the `disk0…diskN` links of 3.x each lead to one disk.
    """
    return rep.link("harddisks") or rep.link("disks")


def disk_from(rep: Representation) -> Disk:
    return Disk(
        id=_required(rep, "id", "hard disk"),
        sequence=rep.integer("sequence") or 0,
        size_mb=_size_mb(rep, "hard disk", "sizeInMb", "sizeInMB"),
        label=rep.text("label"),
    )


def boot_disk_from_bytes(hd_in_bytes: int) -> Disk:
    """The 2.x primary disk, known only from the VM's `hdInBytes` (docs/protocol.md §7.5)."""
    return Disk(id="0", sequence=0, size_mb=hd_in_bytes // _BYTES_PER_MB)


def volume_from(rep: Representation) -> Volume:
    return Volume(
        id=_required(rep, "id", "volume"),
        name=rep.text("name") or "",
        size_mb=_size_mb(rep, "volume", "sizeInMB", "sizeInMb"),
        state=rep.text("state"),
    )


def vdc_from(rep: Representation, href: str | None = None) -> VirtualDatacenter:
    """The datacenter is the `location` link (3.x), else the `datacenter` link (2.x), named by its title."""
    datacenter = rep.link("location") or rep.link("datacenter")
    return VirtualDatacenter(
        **_named(rep, href, "virtual datacenter"),
        datacenter_href=_href(datacenter),
        datacenter_name=_title(datacenter),
    )


def datacenter_from(rep: Representation, href: str | None = None) -> Datacenter:
    return Datacenter(
        id=_id(rep, _own_href(rep, href), "datacenter"),
        name=_required(rep, "name", "datacenter"),
        location=rep.text("location") or None,
    )


def vapp_from(rep: Representation, href: str | None = None) -> VirtualAppliance:
    return VirtualAppliance(**_named(rep, href, "virtual appliance"), state=rep.text("state"))


def task_state_from(rep: Representation, href: str | None = None) -> AbiquoTaskState:
    """A task (`GET {self}`, or one of a pending-tasks listing) with the links Abiquo gives it."""
    task_type = rep.text("type")
    return AbiquoTaskState(
        task_id=_required(rep, "taskId", "task"),
        state=rep.text("state") or None,
        task_type=task_type.strip().upper() if task_type else None,
        user_id=(rep.text("userId") or "").strip() or None,
        owner_id=(rep.text("ownerId") or "").strip() or None,
        self_href=_href(rep.link("self")) or href,
        target_href=_href(rep.link("target")),
        user_href=_href(rep.link("user")),
        continue_href=_href(rep.link("continue")),
        cancel_href=_href(rep.link("cancel")),
    )


def role_name_from(rep: Representation) -> str:
    return _required(rep, "name", "role")


class _Named(TypedDict):
    """The id, name and href every named object (enterprise, VDC, vApp, VM) is read with."""

    id: str
    name: str
    href: str | None


def _named(rep: Representation, href: str | None, what: str) -> _Named:
    """The object's id, name (both required) and own href, read alike for every kind (`what`)."""
    own_href = _own_href(rep, href)
    return _Named(id=_id(rep, own_href, what), name=_required(rep, "name", what), href=own_href)


def _own_href(rep: Representation, fallback: str | None) -> str | None:
    """Where the object says it lives (`edit`, else `self`), else the URL it was read from."""
    return _href(rep.link("edit") or rep.link("self")) or fallback


def _id(rep: Representation, href: str | None, what: str) -> str:
    """The `id` field, else the last segment of the object's href."""
    value = (rep.text("id") or "").strip()
    if value:
        return value
    if href:
        return _last_segment(href)
    raise ValueError(f"the {what} has no id")


def _required(rep: Representation, name: str, what: str) -> str:
    value = rep.text(name)
    if value is None or not value.strip():
        raise ValueError(f"the {what} has no {name!r}")
    return value


def _size_mb(rep: Representation, what: str, *names: str) -> int:
    for name in names:
        size = rep.integer(name)
        if size is not None:
            return size
    raise ValueError(f"the {what} has no size ({' or '.join(names)})")


def _last_segment(href: str) -> str:
    return href.split("?", 1)[0].rstrip("/").rpartition("/")[2]


def _href(link: Link | None) -> str | None:
    return link.href if link is not None else None


def _title(link: Link | None) -> str | None:
    if link is None or not link.title:
        return None
    return link.title
