"""Read an Abiquo answer, JSON (3.x and later) or XML (2.x), through one small view.

Both dialects carry the same words (docs/protocol.md §3.6): a JSON key is an XML child element, a JSON `links`
array is a run of `<link rel href type title/>` elements, and a JSON `collection` is the repeated children
of an XML list root (`<usersWithRoles><userWithRole>…`). `Representation` answers the few questions the
client asks in the same way for both, so the code that builds domain values never looks at the format.

Everything here raises `ValueError` for an answer it cannot read; the client adds the URL and turns it
into `AbiquoProtocolError`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import ElementTree as SafeElementTree

from abiquo_workflow.domain import Link, PayloadFormat

#: XML children of a list root that are not items of the list.
_XML_LIST_METADATA = frozenset({"link", "totalSize"})


class Representation(ABC):
    """One Abiquo object (or list) as read from the wire."""

    @abstractmethod
    def links(self) -> tuple[Link, ...]:
        """The object's links, in document order; malformed ones (no rel or href) are skipped."""

    @abstractmethod
    def text(self, name: str) -> str | None:
        """A scalar field as text, or None when it is absent, null or not a scalar."""

    @abstractmethod
    def child(self, name: str) -> Representation | None:
        """An embedded object, such as the `role` of a user in `userswithroles`."""

    @abstractmethod
    def items(self) -> list[Representation]:
        """The members of a list answer (JSON `collection`, XML children other than links)."""

    def link(self, rel: str) -> Link | None:
        return next((link for link in self.links() if link.rel == rel), None)

    def total(self) -> int | None:
        """How many members a list answer says it has over all its pages (`totalSize`), if it says.

        Pending-task listings link no `next` page, so this count is what tells the client to read on.
        JSON carries it as a key, XML as a `<totalSize>` child of the list root: both are a field here.
        """
        return self.integer("totalSize")

    def integer(self, name: str) -> int | None:
        value = self.text(name)
        if value is None or not value.strip():
            return None
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"field {name!r} should be a whole number, got {value!r}") from None

    def boolean(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None or not value.strip():
            return None
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"field {name!r} should be true or false, got {value!r}")


class JsonRepresentation(Representation):
    def __init__(self, data: dict[str, Any]) -> None:
        #: The decoded JSON object, for readers that take it whole (the task parser).
        self.data = data

    def links(self) -> tuple[Link, ...]:
        raw = self.data.get("links")
        if not isinstance(raw, list):
            return ()
        links = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            rel, href = item.get("rel"), item.get("href")
            if isinstance(rel, str) and isinstance(href, str) and rel and href:
                links.append(Link(rel, href, _str_or_none(item.get("type")), _str_or_none(item.get("title"))))
        return tuple(links)

    def text(self, name: str) -> str | None:
        value = self.data.get(name)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        return None

    def child(self, name: str) -> Representation | None:
        value = self.data.get(name)
        return JsonRepresentation(value) if isinstance(value, dict) else None

    def items(self) -> list[Representation]:
        collection = self.data.get("collection")
        if not isinstance(collection, list):
            raise ValueError("expected a list answer with a 'collection' array")
        if not all(isinstance(item, dict) for item in collection):
            raise ValueError("every member of 'collection' should be an object")
        return [JsonRepresentation(item) for item in collection]


class XmlRepresentation(Representation):
    def __init__(self, element: Element) -> None:
        #: The element, parsed by defusedxml, for readers that take it whole (the task parser).
        self.element = element

    def links(self) -> tuple[Link, ...]:
        links = []
        for child in self.element:
            if _local(child.tag) != "link":
                continue
            rel, href = child.get("rel"), child.get("href")
            if rel and href:
                links.append(Link(rel, href, child.get("type"), child.get("title")))
        return tuple(links)

    def text(self, name: str) -> str | None:
        element = self._find(name)
        if element is None or len(element):
            return None
        return element.text or ""

    def child(self, name: str) -> Representation | None:
        element = self._find(name)
        return XmlRepresentation(element) if element is not None else None

    def items(self) -> list[Representation]:
        return [
            XmlRepresentation(child) for child in self.element if _local(child.tag) not in _XML_LIST_METADATA
        ]

    def _find(self, name: str) -> Element | None:
        return next((child for child in self.element if _local(child.tag) == name), None)


def format_of(content: bytes, content_type: str | None) -> PayloadFormat:
    """JSON or XML, from the media type (`…+json`, `…/xml`, parameters ignored), else from the first byte."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.endswith(("+json", "/json")):
        return PayloadFormat.JSON
    if media.endswith(("+xml", "/xml")):
        return PayloadFormat.XML
    start = content.lstrip()[:1]
    if start == b"<":
        return PayloadFormat.XML
    if start in (b"{", b"["):
        return PayloadFormat.JSON
    raise ValueError(f"the answer is neither JSON nor XML (Content-Type {content_type or 'missing'})")


def parse(content: bytes, content_type: str | None) -> Representation:
    """Parse an answer body; XML goes through defusedxml with DTDs and entities refused."""
    if not content.strip():
        raise ValueError("the answer is empty")
    if format_of(content, content_type) is PayloadFormat.JSON:
        try:
            data = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the JSON answer is malformed ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("the JSON answer is not an object")
        return JsonRepresentation(data)
    try:
        root = SafeElementTree.fromstring(content, forbid_dtd=True)
    except ParseError as exc:
        raise ValueError(f"the XML answer is malformed ({exc})") from None
    # defusedxml's own errors (DTDForbidden, EntitiesForbidden…) are ValueErrors already.
    return XmlRepresentation(root)


def error_of(content: bytes, content_type: str | None) -> tuple[str | None, str | None]:
    """Abiquo's error code and message from an error body, or (None, None) when there is none to read.

    JSON: `{"collection": [{"code": "TASK-2", "message": "…"}]}`; XML: `<errors><error><code>…`.
    """
    try:
        answer = parse(content, content_type)
    except ValueError:
        return None, None
    try:
        candidates = [*answer.items()[:1], answer]
    except ValueError:  # a JSON error object without a collection
        candidates = [answer]
    for candidate in candidates:
        code, message = candidate.text("code"), candidate.text("message")
        if code or message:
            return code, message
    return None, None


def _local(tag: str) -> str:
    """An element's name without any `{namespace}` prefix."""
    return tag.rpartition("}")[2]


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
