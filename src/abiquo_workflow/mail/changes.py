"""What a reconfigure changes, in words: the VM as Abiquo shows it now against the VM as we last saw it.

Abiquo's held reconfigure names only its target, the VM, and the VM read there already carries the
requested CPU, RAM and disks; the sizes it had before are kept out of the API (docs/protocol.md §7.11).
So "was" can only be the VM as an earlier request's triage read it (`VmDetails.last_seen`, filled by
enrichment.py), and "now" the VM this request's triage read. Three cases, each said in one sentence
before the sizes:

- we saw the VM before and its sizes differ: each difference as "was → now" ("2 → 4 CPUs", "4 → 8 GB");
- we saw it before and nothing differs: the sizes are said to be as we last saw them, not new ones;
- we never saw it: one line, "Abiquo does not say what this reconfigure changes; the sizes below are
  the VM's current ones."

Pure wording, shared by the approval email (render.py) and the decision pages (web/views.py). Disks are
compared by their order (sequence), volumes by their id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from abiquo_workflow.domain import VirtualMachine, VmDetails, Volume
from abiquo_workflow.mail import words

ARROW = "\u2192"

#: Said before the sizes of a reconfigured VM we have never seen: Abiquo says nothing of the change.
UNKNOWN_CHANGE = (
    "Abiquo does not say what this reconfigure changes; the sizes below are the VM's current ones."
)


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a size on one line ("2 → 4 CPUs"), and whether it is a change."""

    text: str
    changed: bool


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """How one reconfigured VM is shown: a sentence, then its sizes, changed ones as "was → now"."""

    #: What the sizes are compared with, or why they cannot be (one sentence or two, said before them).
    note: str
    #: True when a size differs from the VM as we last saw it.
    changed: bool
    #: "2 → 4", or "4" when unchanged or not comparable.
    cpu: str
    #: "4 → 8 GB", "512 MB → 1 GB", or "8 GB".
    ram: str
    #: By sequence: "20 GB", "50 → 100 GB", "20 GB (new)", "50 GB (removed)".
    disks: tuple[str, ...]
    #: "db-data (100 GB)", "db-data (100 → 200 GB)", "logs (50 GB, attached)", "old (20 GB, detached)".
    volumes: tuple[str, ...]
    #: The size on one line, part by part: "2 → 4 CPUs", "4 → 8 GB RAM", "20 GB disk", "volume …".
    parts: tuple[Part, ...]

    @property
    def spec(self) -> str:
        return " · ".join(part.text for part in self.parts)


def from_to(was_mb: int | None, now_mb: int | None) -> str:
    """A size that changed: "4 → 8 GB" (one unit), "512 MB → 1 GB"; the new size alone when equal."""
    was, now = words.size_words(was_mb), words.size_words(now_mb)
    if was == now or was_mb is None:
        return now
    number, _, unit = was.partition(" ")
    return f"{number} {ARROW} {now}" if now.endswith(f" {unit}") else f"{was} {ARROW} {now}"


def reconfigure(vm_details: VmDetails) -> Reconfigure | None:
    """How a reconfigured VM is shown; None for another task type or a VM that could not be read."""
    vm = vm_details.vm
    if vm is None or (vm_details.task_type or "").upper() != "RECONFIGURE":
        return None
    was = vm_details.last_seen
    if was is None:
        return _as_is(vm, UNKNOWN_CHANGE)
    when = f"on {words.moment_words(vm_details.last_seen_at)}" if vm_details.last_seen_at else "earlier"
    cpu_changed = was.cpu is not None and vm.cpu is not None and was.cpu != vm.cpu
    ram_changed = was.ram_mb is not None and vm.ram_mb is not None and was.ram_mb != vm.ram_mb
    disks, disks_changed = _disks(words.disk_sizes(was), words.disk_sizes(vm))
    volumes, volumes_changed = _volumes(was.volumes, vm.volumes)
    if not (cpu_changed or ram_changed or disks_changed or volumes_changed):
        return _as_is(vm, f"CPU, RAM, disks and volumes are as we last saw them, {when}. {UNKNOWN_CHANGE}")
    cpu = f"{was.cpu} {ARROW} {vm.cpu}" if cpu_changed else _cpu(vm)
    cpus = f"{was.cpu} {ARROW} {words.cpu_words(vm.cpu)}" if cpu_changed else words.cpu_words(vm.cpu)
    ram = from_to(was.ram_mb, vm.ram_mb) if ram_changed else words.size_words(vm.ram_mb)
    parts = [Part(cpus, cpu_changed), Part(f"{ram} RAM", ram_changed), Part(_disk_part(disks), disks_changed)]
    if volumes:
        parts.append(Part(_volume_part(volumes), volumes_changed))
    return Reconfigure(
        note=f"Changed since we last saw this VM, {when}:",
        changed=True,
        cpu=cpu,
        ram=ram,
        disks=disks,
        volumes=volumes,
        parts=tuple(parts),
    )


def _as_is(vm: VirtualMachine, note: str) -> Reconfigure:
    """The VM's sizes as Abiquo shows them, none marked as a change, after `note`."""
    disks = words.disk_words(vm)
    volumes = words.volume_words(vm)
    parts = [Part(words.cpu_words(vm.cpu), False), Part(f"{words.size_words(vm.ram_mb)} RAM", False)]
    parts.append(Part(_disk_part(disks), False))
    if volumes:
        parts.append(Part(_volume_part(volumes), False))
    return Reconfigure(note, False, _cpu(vm), words.size_words(vm.ram_mb), disks, volumes, tuple(parts))


def _cpu(vm: VirtualMachine) -> str:
    return str(vm.cpu) if vm.cpu is not None else words.UNKNOWN


def _disks(was: Sequence[int], now: Sequence[int]) -> tuple[tuple[str, ...], bool]:
    """Each disk by sequence in words, with what changed, and whether any did."""
    shown: list[str] = []
    for index in range(max(len(was), len(now))):
        if index >= len(was):
            shown.append(f"{words.size_words(now[index])} (new)")
        elif index >= len(now):
            shown.append(f"{words.size_words(was[index])} (removed)")
        else:
            shown.append(from_to(was[index], now[index]))
    return tuple(shown), tuple(was) != tuple(now)


def _disk_part(disks: Sequence[str]) -> str:
    """Disks on one line, as `words.spec_words` says them: "20 GB disk", "disks 20 GB + 50 GB"."""
    if not disks:
        return "no disk"
    if len(disks) == 1 and "(" not in disks[0]:
        return f"{disks[0]} disk"
    return "disks " + " + ".join(disks)


def _volume_part(volumes: Sequence[str]) -> str:
    return ("volume " if len(volumes) == 1 else "volumes ") + ", ".join(volumes)


def _volumes(was: Sequence[Volume], now: Sequence[Volume]) -> tuple[tuple[str, ...], bool]:
    """Each volume in words, attached and detached ones said so, and whether any changed."""
    before = {volume.id: volume for volume in was}
    after = {volume.id for volume in now}
    shown: list[str] = []
    changed = False
    for volume in now:
        name = words.or_unknown(volume.name)
        old = before.get(volume.id)
        if old is None:
            shown.append(f"{name} ({words.size_words(volume.size_mb)}, attached)")
            changed = True
        else:
            shown.append(f"{name} ({from_to(old.size_mb, volume.size_mb)})")
            changed = changed or old.size_mb != volume.size_mb
    for volume in was:
        if volume.id not in after:
            shown.append(f"{words.or_unknown(volume.name)} ({words.size_words(volume.size_mb)}, detached)")
            changed = True
    return tuple(shown), changed
