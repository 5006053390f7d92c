"""Pure wording for emails: sizes, task types, outcomes, and text made safe to show.

No I/O and no markup here: the templates escape, these functions only choose words. Every name and
reason from Abiquo that they put into words goes through `display` (format characters removed, length
capped), so the emails and the decision pages, which reuse these words, show the same cleaned text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from abiquo_workflow import display
from abiquo_workflow.domain import DecidedBy, DecisionState, DeliveryState, VirtualMachine
from abiquo_workflow.mail.model import TaskResult

UNKNOWN = "unknown"

_TASK_WORDS = {"DEPLOY": "Deploy", "UNDEPLOY": "Undeploy", "RECONFIGURE": "Reconfigure"}

# Bidirectional overrides and isolates let a name display in another order than it is written
# ("gpj.exe" shown as "exe.jpg"); they have no business in a VM or user name.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SPACES = re.compile(r"\s+")


def one_line(text: str | None) -> str:
    """`text` on one line: control characters, line breaks and bidi overrides become spaces.

    In a header a line break would start a new header, so every header value is flattened here (names
    shown to people are also cleaned and capped by `display`; this keeps headers safe whatever else
    reaches them, such as the configured sender or subject).
    """
    if not text:
        return ""
    kept = (
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS else ch for ch in text
    )
    return _SPACES.sub(" ", "".join(kept)).strip()


def or_unknown(text: str | None) -> str:
    """A name as shown to people (see `display.name`), or "unknown" when nothing of it is left."""
    return display.name(text) or UNKNOWN


def size_words(megabytes: int | float | None) -> str:
    """4096 → "4 GB", 1536 → "1.5 GB", 512 → "512 MB", None → "unknown" (binary units, as Abiquo shows)."""
    if megabytes is None or megabytes < 0:
        return UNKNOWN
    for unit, scale in (("TB", 1024 * 1024), ("GB", 1024)):
        if megabytes >= scale:
            value = round(megabytes / scale, 1)
            return f"{value:g} {unit}"
    return f"{megabytes:g} MB"


def disk_words(vm: VirtualMachine) -> tuple[str, ...]:
    """A VM's disks by sequence, in words ("20 GB"); on Abiquo 2.x only the primary disk, from `hdInBytes`."""
    sizes = [disk.size_mb for disk in sorted(vm.disks, key=lambda disk: disk.sequence)]
    if not sizes and vm.hd_in_bytes is not None:
        sizes = [vm.hd_in_bytes // (1024 * 1024)]
    return tuple(size_words(size) for size in sizes)


def volume_words(vm: VirtualMachine) -> tuple[str, ...]:
    """A VM's volumes in words: "db-data (100 GB)"."""
    return tuple(f"{or_unknown(v.name)} ({size_words(v.size_mb)})" for v in vm.volumes)


def task_word(task_type: str | None) -> str:
    """DEPLOY → "Deploy"; an unexpected type such as POWER_OFF → "Power off"."""
    if not task_type:
        return UNKNOWN
    known = _TASK_WORDS.get(task_type.upper())
    return known or display.name(task_type.replace("_", " ")).capitalize() or UNKNOWN


def task_words(task_types: Iterable[str | None]) -> str:
    """The distinct task types in order, in words: "Deploy", "Deploy and Undeploy", "A, B and C"."""
    words = list(dict.fromkeys(task_word(t) for t in task_types))
    return join_words(words) or UNKNOWN


def join_words(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"


def moment_words(moment: datetime) -> str:
    """A time as "4 Mar 2025, 14:05 UTC". Naive datetimes are taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def overall_outcome(results: Sequence[TaskResult]) -> str:
    """ "accepted", "declined" or "partly accepted" (or "pending" while nothing is decided)."""
    accepted = sum(1 for r in results if r.decision is DecisionState.ACCEPTED)
    declined = sum(1 for r in results if r.decision is DecisionState.DECLINED)
    if accepted and accepted == len(results):
        return "accepted"
    if accepted:
        return "partly accepted"
    return "declined" if declined else "pending"


def _automatic(accepted: bool, because: str) -> str:
    return f"{'Accepted automatically' if accepted else 'Cancelled'} because {because}"


def verdict(result: TaskResult) -> tuple[str, str | None]:
    """What happened to one task in words, and the reason when it is not already part of them.

    Policy, deadline and no-approver reasons are clauses ("the requester holds the … role") that read
    after "because"; an approver's reason is their own comment and is shown beside the verdict.
    """
    reason = display.reason(result.reason) or None
    if result.decision is DecisionState.PENDING:
        return "Still waiting for a decision", reason
    accepted = result.decision is DecisionState.ACCEPTED
    match result.decided_by:
        case DecidedBy.APPROVER:
            actor = display.name(result.actor) or "an approver"
            return f"{'Accepted' if accepted else 'Declined'} by {actor}", reason
        case DecidedBy.POLICY:
            if reason:
                return _automatic(accepted, reason), None
            return f"{'Accepted' if accepted else 'Cancelled'} automatically by policy", None
        case DecidedBy.DEADLINE:
            return _automatic(accepted, reason or "nobody decided before the deadline"), None
        case DecidedBy.NO_APPROVER:
            return _automatic(accepted, reason or "no approver could be found"), None
        case DecidedBy.EXTERNAL:
            return f"{'Accepted' if accepted else 'Cancelled'} in Abiquo", reason
        case _:
            return ("Accepted" if accepted else "Declined"), reason


def delivery_note(result: TaskResult) -> str | None:
    """A sentence when the decision did not simply reach Abiquo."""
    if result.delivery is DeliveryState.SUPERSEDED:
        state = display.name(result.abiquo_state)
        shown = f" (Abiquo shows it as {state})" if state else ""
        return (
            f"Abiquo reported that this task had already been decided elsewhere{shown}, "
            "so this decision did not apply."
        )
    if result.delivery is DeliveryState.FAILED:
        return "This decision could not be passed on to Abiquo; an administrator can retry it."
    return None


def format_subject(template: str, values: Mapping[str, object]) -> str:
    """`template` with the known `{fields}` filled in; anything else in it is left as written.

    Subjects come from configuration, so a typo such as `{vm}` or a lone `{` must not stop emails.
    """
    try:
        return template.format_map(_KeepUnknown(values))
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        # A stray brace, "{}", "{0}", "{x.y}" or a bad format spec: replace only plain known fields.
        return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m[1], m[0])), template)


class _KeepUnknown(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
