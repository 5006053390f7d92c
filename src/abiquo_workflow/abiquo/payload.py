"""Abiquo's workflow callback body (XML or JSON) turned into a `Callback` of `HeldTask` values.

This is the only module that reads XML from Abiquo (docs/design.md: "nothing else knows XML"). It follows
docs/protocol.md §3, §9 and §10 rule 1, and is liberal in what it accepts:

- Dialect. The Content-Type is read without its parameters (`; version=3.10`) and case-insensitively.
  Abiquo's own task media types (`application/vnd.abiquo.task[s]+xml|json`) are binding: a body that
  plainly looks like the other dialect is refused (400). Generic types (`application/xml`, `text/xml`,
  `application/json`, any other `+xml`/`+json`) only hint: the first non-blank character of the body
  decides (`<` is XML, `{` or `[` is JSON) and the hint is used only when that character decides
  nothing. No type, `text/plain`, `application/octet-stream`, `*/*`, a value that is not a media type,
  and `application/x-www-form-urlencoded` (what `curl -d` sends when an operator replays a payload by
  hand) mean "sniff". Any other type (`image/png`, `multipart/form-data`, `text/html`, …) is 415.
- Text. The body must be UTF-8 (a BOM is allowed). An XML declaration naming another encoding is
  ignored: Abiquo is Java and sends UTF-8.
- Shape. The root is either a collection (`<tasks>` / an object with `collection`) or one task
  (`<task>` / a task object, as Abiquo sends for a reconfigure); `Callback.single_root` records which.
  The media type's `task` vs `tasks` is not checked against the root. An empty collection is refused.
- Tasks. `taskId`, `type`, and the `continue` and `cancel` links are required; everything else is
  optional. A task id must look like one of Abiquo's (a UUID): letters, digits, `.`, `_` and `-`, at most
  64 characters. Anything else (a comma, which would blur a list of ids, whitespace, control characters, a
  5,000-character id) is refused, because ids travel in links and audit lines. `type` is upper-cased;
  `userId`/`ownerId` may be numbers or strings and are kept as text; timestamps may be numbers or numeric
  strings, and anything else (or a value outside a signed 64-bit integer) counts as missing. Unknown
  elements and keys are ignored; every link with a `rel` and an `href` is kept in `HeldTask.links`, and
  the first link of each relation wins. Hrefs are kept as received, relative or absolute (the Abiquo
  client resolves them, docs/protocol.md §3.7). Jobs without an `id` or a `type` are skipped: jobs are
  informational only.
- Duplicates. When a callback repeats a `taskId`, the first task wins and the later ones are dropped.
- Safety. The size is checked before anything is parsed (413), and the number of tasks before any task
  is read (413 above `max_tasks`). XML goes through defusedxml with DTDs, entities and external
  references forbidden. Deep JSON nesting, integers longer than 100 digits, NUL characters and unpaired
  surrogates anywhere in the body (which no database column can hold, nor any answer quote) are refused.
  Received text quoted back in an error message is shortened and its unprintable characters escaped.

Every refusal is a `PayloadError` whose message is a sentence naming the problem and whose `status` is
the HTTP status to answer with (400, 413 or 415).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException

from abiquo_workflow.domain import Callback, HeldTask, Link, PayloadFormat, TaskJob
from abiquo_workflow.exceptions import PayloadError

if TYPE_CHECKING:
    # Only the type: every document is parsed through defusedxml.
    from xml.etree.ElementTree import Element

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_TASKS",
    "is_task_id",
    "parse_callback",
    "parse_task_json",
    "parse_task_xml",
]

#: The largest body accepted unless the caller says otherwise (the default of `server.max_body`).
DEFAULT_MAX_BYTES = 1_048_576
#: The most tasks one callback may hold unless the caller says otherwise (the default of
#: `server.max_tasks`). Abiquo sends one task per VM of a virtual appliance.
DEFAULT_MAX_TASKS = 1_000

#: What an Abiquo task id looks like: a UUID in practice; letters, digits, `.`, `_`, `-` in general.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A `\uD800`–`\uDFFF` escape in JSON text: only then can the decoded text hold an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: Abiquo's task media types: when one of them is declared, the body must be in that dialect.
_ABIQUO_TASK_TYPES: Mapping[str, PayloadFormat] = {
    "application/vnd.abiquo.tasks+xml": PayloadFormat.XML,
    "application/vnd.abiquo.task+xml": PayloadFormat.XML,
    "application/vnd.abiquo.tasks+json": PayloadFormat.JSON,
    "application/vnd.abiquo.task+json": PayloadFormat.JSON,
}
_GENERIC_XML_TYPES = frozenset({"application/xml", "text/xml"})
_GENERIC_JSON_TYPES = frozenset({"application/json", "text/json"})
#: Types that say nothing about the dialect, so the body is sniffed.
_SNIFFED_TYPES = frozenset(
    {"", "text/plain", "application/octet-stream", "*/*", "application/x-www-form-urlencoded"}
)

#: Longest integer literal read from JSON. Python refuses more than 4,300 digits with an obscure message,
#: and no Abiquo number comes close to this.
_MAX_JSON_INT_DIGITS = 100
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMERIC_TEXT = re.compile(r"[+-]?\d{1,19}(?:\.\d*)?")
#: Longest piece of received text quoted back in an error message.
_QUOTE_LIMIT = 60


@dataclass(frozen=True, slots=True)
class _DeclaredType:
    """What the Content-Type says about the dialect."""

    media_type: str
    format: PayloadFormat | None
    #: True for Abiquo's own task media types; generic types only hint.
    binding: bool = False


class _IntegerTooLong(ValueError):
    """A JSON integer literal with more than `_MAX_JSON_INT_DIGITS` digits."""


def is_task_id(text: str) -> bool:
    """Whether `text` has the shape of an Abiquo task id (see the module docstring)."""
    return _TASK_ID.fullmatch(text) is not None


def parse_callback(
    body: bytes,
    content_type: str | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_tasks: int = DEFAULT_MAX_TASKS,
) -> Callback:
    """Read one workflow callback from Abiquo.

    Parameters
    ----------
    body:
        The raw request body.
    content_type:
        The request's Content-Type header, or None when it had none.
    max_bytes:
        The largest body accepted; a longer one is refused with 413 before any parsing.
    max_tasks:
        The most tasks accepted; a callback with more is refused with 413 before any task is read.

    Raises `PayloadError` (and nothing else) for every body it cannot accept.
    """
    if len(body) > max_bytes:
        raise PayloadError(f"the body is {len(body):,} bytes; the limit is {max_bytes:,}", status=413)
    declared = _declared_type(content_type)
    text = _decode(body)
    if not text.strip():
        raise PayloadError("the body is empty")
    payload_format = _choose_format(text, declared)
    if payload_format is PayloadFormat.XML:
        tasks, single_root = _tasks_from_xml(text, max_tasks)
    else:
        tasks, single_root = _tasks_from_json(text, max_tasks)
    return Callback(tasks=_first_of_each_id(tasks), format=payload_format, single_root=single_root)


def parse_task_json(obj: Mapping[str, Any], *, index: int | None = None) -> HeldTask:
    """Read one task object, as found in a callback or in a pending-tasks listing (docs/protocol.md §6,
    §11.7).

    `obj` is the decoded JSON object of one task. `index` is its 1-based position in a collection, used
    only to name the task in an error message while its `taskId` is unknown. Raises `PayloadError`
    (status 400) when a required field is missing; the Abiquo client turns that into its own error.
    """
    links = _links_from_json(obj.get("links"))
    jobs = _jobs_from_json(obj.get("jobs"))
    return _build_task(obj, links, jobs, index)


def parse_task_xml(element: Element, *, index: int | None = None) -> HeldTask:
    """Read one `<task>` element, as found in a callback or in a pending-tasks listing.

    `element` must come from a document parsed with defusedxml (DTDs and entities forbidden); a default
    namespace on the tags is tolerated. `index` is as for `parse_task_json`. Raises `PayloadError`
    (status 400) when a required field is missing.
    """
    fields: dict[str, str | None] = {}
    links: list[Link] = []
    jobs: tuple[TaskJob, ...] = ()
    seen_jobs = False
    for child in element:
        name = _local_name(child.tag)
        if name == "link":
            link = _link(_local_attributes(child))
            if link is not None:
                links.append(link)
        elif name == "jobs" and not seen_jobs:
            seen_jobs = True
            jobs = tuple(job for job in map(_job_from_xml, _children_named(child, "job")) if job is not None)
        else:
            fields.setdefault(name, child.text)
    return _build_task(fields, tuple(links), jobs, index)


# --- Content-Type and text --------------------------------------------------------------------------


def _declared_type(content_type: str | None) -> _DeclaredType:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _ABIQUO_TASK_TYPES:
        return _DeclaredType(media_type, _ABIQUO_TASK_TYPES[media_type], binding=True)
    if media_type in _GENERIC_XML_TYPES or media_type.endswith("+xml"):
        return _DeclaredType(media_type, PayloadFormat.XML)
    if media_type in _GENERIC_JSON_TYPES or media_type.endswith("+json"):
        return _DeclaredType(media_type, PayloadFormat.JSON)
    if media_type in _SNIFFED_TYPES or "/" not in media_type:
        return _DeclaredType(media_type, None)
    raise PayloadError(
        f"the Content-Type {_quote(media_type)} is neither XML nor JSON; Abiquo sends "
        "application/vnd.abiquo.tasks+xml or application/vnd.abiquo.tasks+json",
        status=415,
    )


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"the body is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset {exc.start:,})"
        ) from exc


def _sniff(text: str) -> PayloadFormat | None:
    first = text.lstrip()[:1]
    if first == "<":
        return PayloadFormat.XML
    if first in ("{", "["):
        return PayloadFormat.JSON
    return None


def _choose_format(text: str, declared: _DeclaredType) -> PayloadFormat:
    sniffed = _sniff(text)
    if declared.binding and declared.format is not None:
        if sniffed is not None and sniffed is not declared.format:
            raise PayloadError(
                f"the Content-Type {declared.media_type} says {declared.format.name}, "
                f"but the body looks like {sniffed.name}"
            )
        return declared.format
    chosen = sniffed or declared.format
    if chosen is None:
        raise PayloadError("the body is neither XML nor JSON")
    return chosen


# --- XML --------------------------------------------------------------------------------------------


def _tasks_from_xml(text: str, max_tasks: int) -> tuple[list[HeldTask], bool]:
    root = _parse_xml(text)
    root_name = _local_name(root.tag)
    if root_name == "task":
        return [parse_task_xml(root)], True
    if root_name != "tasks":
        raise PayloadError(f"the XML root is <{_quote(root_name, marks=False)}>; expected <tasks> or <task>")
    elements = list(_children_named(root, "task"))
    if not elements:
        raise PayloadError("the collection is empty: <tasks> holds no <task>")
    _check_count(len(elements), max_tasks)
    return [parse_task_xml(child, index=i) for i, child in enumerate(elements, 1)], False


def _parse_xml(text: str) -> Element:
    # expat refuses whitespace before an XML declaration; strip it, but keep error line numbers true.
    stripped = text.lstrip()
    skipped_lines = text[: len(text) - len(stripped)].count("\n")
    try:
        return safe_xml.fromstring(stripped, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PayloadError("DTDs and entity declarations are refused") from exc
    except safe_xml.ParseError as exc:
        line, column = exc.position
        # ParseError reads "mismatched tag: line 3, column 5" or "not well-formed (invalid token): …".
        reason = str(exc).partition(": line ")[0]
        if reason.startswith("not well-formed ("):
            reason = reason.removeprefix("not well-formed (").removesuffix(")")
        where = f"line {line + skipped_lines}, column {column + 1}"
        raise PayloadError(f"the XML is not well-formed ({where}: {reason})") from exc


def _local_name(tag: str) -> str:
    """`{namespace}name` → `name`: a default namespace on Abiquo's elements is tolerated."""
    return tag.rpartition("}")[2]


def _local_attributes(element: Element) -> dict[str, str]:
    return {_local_name(name): value for name, value in element.attrib.items()}


def _children_named(element: Element, name: str) -> Iterator[Element]:
    return (child for child in element if _local_name(child.tag) == name)


def _link(attributes: Mapping[str, object]) -> Link | None:
    """A link from its XML attributes or its JSON object; one without a rel or an href is dropped."""
    rel, href = _as_text(attributes.get("rel")), _as_text(attributes.get("href"))
    if rel is None or href is None:
        return None
    return Link(
        rel=rel, href=href, type=_as_text(attributes.get("type")), title=_as_text(attributes.get("title"))
    )


def _job_from_xml(element: Element) -> TaskJob | None:
    fields: dict[str, str | None] = {}
    for child in element:
        fields.setdefault(_local_name(child.tag), child.text)
    return _build_job(fields)


# --- JSON -------------------------------------------------------------------------------------------


def _check_count(count: int, max_tasks: int) -> None:
    if count > max_tasks:
        raise PayloadError(
            f"the callback holds {count:,} tasks; at most {max_tasks:,} are accepted in one callback",
            status=413,
        )


def _tasks_from_json(text: str, max_tasks: int) -> tuple[list[HeldTask], bool]:
    root = _parse_json(text)
    if not isinstance(root, dict):
        raise PayloadError("the JSON root must be an object")
    if "collection" not in root:
        if "taskId" not in root:
            raise PayloadError(
                "the JSON object is neither a task collection (no collection) nor a task (no taskId)"
            )
        return [parse_task_json(root)], True
    collection = root["collection"]
    if not isinstance(collection, list):
        raise PayloadError("the collection must be a JSON array of tasks")
    if not collection:
        raise PayloadError("the collection is empty")
    _check_count(len(collection), max_tasks)
    tasks = []
    for i, item in enumerate(collection, 1):
        if not isinstance(item, dict):
            raise PayloadError(f"task {i} of the collection is not a JSON object")
        tasks.append(parse_task_json(item, index=i))
    return tasks, False


def _parse_json(text: str) -> object:
    try:
        parsed = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"the JSON is not valid ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except _IntegerTooLong as exc:
        raise PayloadError(f"the JSON holds a number longer than {_MAX_JSON_INT_DIGITS} digits") from exc
    except RecursionError as exc:
        raise PayloadError("the JSON is nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(text) and not _encodable(parsed):
        raise PayloadError(
            "the JSON holds an unpaired surrogate (a \\uD800–\\uDFFF escape), which is not text"
        )
    return parsed


def _encodable(value: object) -> bool:
    """Whether every string in a decoded JSON value is valid Unicode (no unpaired surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_JSON_INT_DIGITS:
        raise _IntegerTooLong(literal[:20])
    return int(literal)


def _links_from_json(value: object) -> tuple[Link, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return ()
    links = (_link(item) for item in value if isinstance(item, Mapping))
    return tuple(link for link in links if link is not None)


def _jobs_from_json(value: object) -> tuple[TaskJob, ...]:
    # Abiquo nests jobs as {"links": [], "collection": [...]}; a bare array is accepted too.
    items = value.get("collection") if isinstance(value, Mapping) else value
    if not isinstance(items, Sequence) or isinstance(items, str):
        return ()
    jobs = (_build_job(item) for item in items if isinstance(item, Mapping))
    return tuple(job for job in jobs if job is not None)


# --- Both dialects ----------------------------------------------------------------------------------


def _build_task(
    fields: Mapping[str, object], links: tuple[Link, ...], jobs: tuple[TaskJob, ...], index: int | None
) -> HeldTask:
    task_id = _as_id(fields.get("taskId"))
    if task_id is None:
        raise PayloadError(f"{_task_label(None, index)} has no taskId")
    if not is_task_id(task_id):
        raise PayloadError(
            f"{_task_label(None, index)} has the taskId {_quote(task_id)}, which is not an Abiquo task id: "
            "task ids are letters, digits, '.', '_' and '-', at most 64 characters"
        )
    label = _task_label(task_id, index)
    task_type = _as_text(fields.get("type"))
    if task_type is None:
        raise PayloadError(f"{label} has no type (DEPLOY, UNDEPLOY or RECONFIGURE)")
    hrefs: dict[str, str] = {}
    for link in links:
        hrefs.setdefault(link.rel.lower(), link.href)
    for required in ("continue", "cancel"):
        if required not in hrefs:
            raise PayloadError(f"{label} has no {required} link")
    task = HeldTask(
        task_id=task_id,
        task_type=task_type.upper(),
        user_id=_as_id(fields.get("userId")),
        owner_id=_as_id(fields.get("ownerId")),
        state=_as_text(fields.get("state")),
        continue_href=hrefs["continue"],
        cancel_href=hrefs["cancel"],
        target_href=hrefs.get("target"),
        user_href=hrefs.get("user"),
        self_href=hrefs.get("self"),
        timestamp=_as_timestamp(fields.get("timestamp")),
        creation_timestamp=_as_timestamp(fields.get("creationTimestamp")),
        jobs=jobs,
        links=links,
    )
    if not all(_storable(text) for text in _texts_of(task)):
        raise PayloadError(f"{label} holds a NUL character or an unpaired surrogate, which cannot be stored")
    return task


def _build_job(fields: Mapping[str, object]) -> TaskJob | None:
    job_id, job_type = _as_id(fields.get("id")), _as_text(fields.get("type"))
    if job_id is None or job_type is None:
        return None
    return TaskJob(
        id=job_id,
        type=job_type,
        description=_as_text(fields.get("description")),
        state=_as_text(fields.get("state")),
    )


def _first_of_each_id(tasks: list[HeldTask]) -> tuple[HeldTask, ...]:
    seen: set[str] = set()
    kept = []
    for task in tasks:
        if task.task_id not in seen:
            seen.add(task.task_id)
            kept.append(task)
    return tuple(kept)


def _as_text(value: object) -> str | None:
    """A non-blank string, stripped; anything else is missing."""
    if isinstance(value, str):
        return value.strip() or None
    return None


def _as_id(value: object) -> str | None:
    """An id Abiquo may send as a string or a number (`"42"` or `42`), as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _as_text(value)


def _as_timestamp(value: object) -> int | None:
    """Seconds since the epoch from a number or a numeric string; anything else is missing."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value.strip()):
        number = int(value.strip().partition(".")[0])
    if number is None or not _INT64_MIN <= number <= _INT64_MAX:
        return None
    return number


def _texts_of(task: HeldTask) -> Iterator[str]:
    yield from (
        text
        for text in (
            task.task_id,
            task.task_type,
            task.user_id,
            task.owner_id,
            task.state,
        )
        if text is not None
    )
    for link in task.links:
        yield from (text for text in (link.rel, link.href, link.type, link.title) if text is not None)
    for job in task.jobs:
        yield from (text for text in (job.id, job.type, job.description, job.state) if text is not None)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _task_label(task_id: str | None, index: int | None) -> str:
    if task_id is not None:
        return f"task {_quote(task_id, marks=False)}"
    return f"task {index}" if index is not None else "the task"


def _quote(text: str, *, marks: bool = True) -> str:
    """Received text, shortened and with unprintable characters escaped, for an error message."""
    short = text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"
    shown = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in short)
    return f"'{shown}'" if marks else shown
