"""Pure wording for emails: sizes, task types, outcomes, and text made safe to show.

No I/O and no markup here: the templates escape, these functions only choose words. Every name and
reason from Abiquo that they put into words goes through `display` (format characters removed, length
capped), so the emails and the decision pages, which reuse these words, show the same cleaned text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr

from abiquo_workflow import display
from abiquo_workflow.domain import DecidedBy, DecisionState, DeliveryState, VirtualMachine
from abiquo_workflow.mail.model import TaskResult

UNKNOWN = "unknown"
#: Joins a number to its unit in HTML ("20 GB" never splits over two lines); plain text keeps a space.
NO_BREAK_SPACE = "\u00a0"

_TASK_WORDS = {"DEPLOY": "Deploy", "UNDEPLOY": "Undeploy", "RECONFIGURE": "Reconfigure"}

# Bidirectional overrides and isolates let a name display in another order than it is written
# ("gpj.exe" shown as "exe.jpg"); they have no business in a VM or user name.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SPACES = re.compile(r"\s+")
#: The space between a number and the unit or noun counted after it ("20 GB", "3 VMs", "1 CPU"), and
#: between a size and what it measures ("4 GB RAM", "20 GB disk"), and either side of the arrow of a
#: change ("2 → 4 CPUs", mail/changes.py).
_NUMBER_AND_UNIT = re.compile(
    r"(?<=\d) (?=(?:[KMGTP]B|CPUs?|VMs?|tasks?)\b)|(?<=\d [KMGTP]B) (?=(?:RAM|disk)\b)"
    r"|(?<=[\dB]) (?=\u2192 )|(?<=\u2192) (?=\d)"
)


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


def disk_sizes(vm: VirtualMachine) -> tuple[int, ...]:
    """A VM's disk sizes in MB by sequence; on Abiquo 2.x only the primary disk, from `hdInBytes`."""
    sizes = tuple(disk.size_mb for disk in sorted(vm.disks, key=lambda disk: disk.sequence))
    if not sizes and vm.hd_in_bytes is not None:
        sizes = (vm.hd_in_bytes // (1024 * 1024),)
    return sizes


def disk_words(vm: VirtualMachine) -> tuple[str, ...]:
    """A VM's disks by sequence, in words ("20 GB"); on Abiquo 2.x only the primary disk, from `hdInBytes`."""
    return tuple(size_words(size) for size in disk_sizes(vm))


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`count` and the noun it counts, agreeing: "1 task", "3 tasks", "0 VMs", "1,024 CPUs"."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count:,} {noun}"


def cpu_words(cpu: int | None) -> str:
    """2 → "2 CPUs", 1 → "1 CPU", None → "unknown CPUs"."""
    return counted(cpu, "CPU") if cpu is not None else f"{UNKNOWN} CPUs"


def spec_words(vm: VirtualMachine, *, volumes: bool = True) -> str:
    """A VM's size on one line: "2 CPUs · 4 GB RAM · 20 GB disk", then its volumes when it has any
    ("… · disks 20 GB + 50 GB · volume db-data (100 GB)"). Without `volumes`, the size alone, which is
    what VMs made from the same template share."""
    disks = disk_words(vm)
    if not disks:
        disk = "no disk"
    elif len(disks) == 1:
        disk = f"{disks[0]} disk"
    else:
        disk = "disks " + " + ".join(disks)
    parts = [cpu_words(vm.cpu), f"{size_words(vm.ram_mb)} RAM", disk]
    shown_volumes = volume_words(vm) if volumes else ()
    if shown_volumes:
        parts.append(("volume " if len(shown_volumes) == 1 else "volumes ") + ", ".join(shown_volumes))
    return " · ".join(parts)


def keep_units(text: object) -> str:
    """`text` with a no-break space between each number and its unit ("20\u00a0GB", "4\u00a0GB\u00a0RAM"),
    for HTML, where a narrow column would otherwise end one line with "20" and start the next with "GB"."""
    return _NUMBER_AND_UNIT.sub(NO_BREAK_SPACE, str(text))


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


def deadline_sentence(deadline_at: datetime | None, at_deadline: str | None) -> str | None:
    """ "If nobody decides by 5 Dec 2026, 14:00 UTC, it will be cancelled." (None: no deadline)."""
    if deadline_at is None:
        return None
    outcome = "accepted" if at_deadline == "accept" else "cancelled"
    return f"If nobody decides by {moment_words(deadline_at)}, it will be {outcome}."


def quorum_sentence(needed: int, approved_by: Sequence[str], waiting_for: Sequence[str] = ()) -> str | None:
    """ "1 of 2 approvals, from Alice Smith; still waiting for Bob Jones or Zoë Zimmermann." (None when one
    approval decides). A decline by anyone cancels, so only accepts are counted."""
    if needed <= 1:
        return None
    given = min(len(approved_by), needed)
    sentence = f"{given} of {needed} approvals"
    if approved_by:
        sentence += f", from {join_words([person_name(a) for a in approved_by])}"
    if given < needed and waiting_for:
        sentence += f"; still waiting for {_or_words([person_name(w) for w in waiting_for])}"
    return sentence + ". One decline cancels it."


def _or_words(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def overall_outcome(results: Sequence[TaskResult]) -> str:
    """ "accepted", "declined" or "partly accepted" (or "pending" while nothing is decided)."""
    accepted = sum(1 for r in results if r.decision is DecisionState.ACCEPTED)
    declined = sum(1 for r in results if r.decision is DecisionState.DECLINED)
    if accepted and accepted == len(results):
        return "accepted"
    if accepted:
        return "partly accepted"
    return "declined" if declined else "pending"


def outcome_sentence(accepted: int, declined: int, total: int) -> str:
    """How a request ended, in one sentence that agrees with its numbers.

    "3 of 3 tasks of your request were accepted.", "1 of 3 tasks of your request was accepted.",
    "None of the 2 tasks of your request were accepted.", and for a single task "Your request was
    accepted." (never "0 of 1 task … were accepted").
    """
    pending = total - accepted - declined
    if total == 1:
        if accepted:
            return "Your request was accepted."
        return "Your request was declined." if declined else "Your request is still waiting for a decision."
    if accepted == 0 and pending == 0:
        return f"None of the {counted(total, 'task')} of your request were accepted."
    verb = "was" if accepted == 1 else "were"
    sentence = f"{accepted:,} of {counted(total, 'task')} of your request {verb} accepted"
    if pending:
        sentence += f"; {counted(pending, 'task')} still {'waits' if pending == 1 else 'wait'} for a decision"
    return sentence + "."


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
    """A sentence when the decision did not simply reach Abiquo (none for a decision taken in Abiquo
    itself: there was nothing to pass on)."""
    if result.decided_by is DecidedBy.EXTERNAL:
        return None
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


#: At most this many reasons are listed where a request's settlement is told; the rest are counted.
REASONS_SHOWN = 5
#: Who an automatic decision (a policy rule, the no-approver default, a deadline) is told as.
_AUTOMATIC = frozenset({DecidedBy.POLICY, DecidedBy.NO_APPROVER, DecidedBy.DEADLINE, DecidedBy.VERIFICATION})


#: Who a decision taken in Abiquo itself (found by reconciliation) is told as.
_EXTERNAL = "Abiquo"


def person_name(actor: str | None) -> str:
    """Who an approver is, for a sentence: "Bob Jones" out of "Bob Jones <bob.jones@acme.example>",
    the address when the name is empty, cleaned by `display`."""
    name, email = parseaddr(actor or "")
    return display.name(name) or display.name(email) or display.name(actor)


def decider_words(result: TaskResult) -> str:
    """Who decided a task, as the settlement names them: the approver's name, "Abiquo" for a decision
    taken there, "automatically" for the policy's."""
    if result.decided_by in _AUTOMATIC:
        return "automatically"
    if result.decided_by is DecidedBy.EXTERNAL:
        return _EXTERNAL
    return person_name(result.actor) or "an approver"


@dataclass(frozen=True, slots=True)
class GivenReason:
    """A reason given with a decision. `by` names who gave it when several people decided, else None."""

    by: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a request's tasks were decided, told in one sentence: the settled email and the page a
    stale link opens say the same."""

    #: "Settled by Bob Jones on 4 Mar 2025, 10:42 UTC — accepted 3 of 3" (no full stop).
    sentence: str
    #: The reasons given (each once, at most `REASONS_SHOWN`).
    reasons: tuple[GivenReason, ...]
    #: Reasons beyond `REASONS_SHOWN`, not listed.
    more_reasons: int
    #: "accepted", "declined" or "partly accepted".
    outcome: str
    accepted: int
    declined: int
    total: int


def _tally(accepted: int, declined: int, total: int) -> str:
    """ "accepted 3 of 3", "declined 2 of 2", "accepted 2 of 3, declined 1"."""
    if declined == total:
        return f"declined {declined:,} of {total:,}"
    tally = f"accepted {accepted:,} of {total:,}"
    return f"{tally}, declined {declined:,}" if declined else tally


def _what_each_did(groups: Mapping[str, Mapping[bool, int]]) -> str:
    """ "Alice Smith accepted 2, Bob Jones declined 1", "Bob Jones accepted 2, 1 accepted automatically"."""
    parts = []
    for who, counts in groups.items():
        verbs = [(verb, counts[accepted]) for accepted, verb in ((True, "accepted"), (False, "declined"))]
        done = [(verb, n) for verb, n in verbs if n]
        if who == "automatically":
            parts.append(" and ".join(f"{n:,} {verb} automatically" for verb, n in done))
        else:
            parts.append(f"{who} " + " and ".join(f"{verb} {n:,}" for verb, n in done))
    return ", ".join(parts)


def settlement(results: Sequence[TaskResult]) -> Settlement | None:
    """Who settled these tasks, when (the last decision), what they decided and why; None unless every
    one of them is accepted or declined.

    One decider: "Settled by Bob Jones on 4 Mar 2025, 10:42 UTC — accepted 3 of 3" (one task: "Accepted
    by Bob Jones on …"). Several: "Settled on … — accepted 2 of 3 (Alice Smith accepted 2, Bob Jones
    declined 1)". Automatic decisions are "automatically"; rejected tasks are left to the caller.
    """
    decided = [r for r in results if r.decision in (DecisionState.ACCEPTED, DecisionState.DECLINED)]
    if not decided or len(decided) != len(results):
        return None
    groups: dict[str, dict[bool, int]] = {}
    for result in decided:
        counts = groups.setdefault(decider_words(result), {True: 0, False: 0})
        counts[result.decision is DecisionState.ACCEPTED] += 1
    accepted = sum(counts[True] for counts in groups.values())
    total = len(decided)
    declined = total - accepted
    moments = [r.decided_at for r in decided if r.decided_at is not None]
    when = f" on {moment_words(max(moments))}" if moments else ""
    only = next(iter(groups)) if len(groups) == 1 else None
    if only == "automatically":
        by = "automatically"
    elif only == _EXTERNAL:
        by = "in Abiquo"
    else:
        by = f"by {only}"
    if total == 1 and only == _EXTERNAL:  # continued or cancelled there: "declined" was nobody's word
        sentence = f"{'Accepted' if accepted else 'Cancelled'} {by}{when}"
    elif total == 1:
        sentence = f"{'Accepted' if accepted else 'Declined'} {by}{when}"
    elif only is not None:
        sentence = f"Settled {by}{when} \u2014 {_tally(accepted, declined, total)}"
    else:
        sentence = f"Settled{when} \u2014 {_tally(accepted, declined, total)} ({_what_each_did(groups)})"
    # A person's own words; an automatic decision's reason is a clause about the policy, not one.
    given: dict[GivenReason, None] = {}
    for result in decided:
        text = display.reason(result.reason)
        if text and result.decided_by not in _AUTOMATIC:
            given[GivenReason(None if only else decider_words(result), text)] = None
    reasons = tuple(given)
    return Settlement(
        sentence=sentence,
        reasons=reasons[:REASONS_SHOWN],
        more_reasons=max(0, len(reasons) - REASONS_SHOWN),
        outcome=overall_outcome(decided),
        accepted=accepted,
        declined=declined,
        total=total,
    )


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
