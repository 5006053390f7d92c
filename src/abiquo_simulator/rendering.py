"""One neutral shape for every Abiquo representation, written out as JSON or as XML.

Abiquo's JSON and XML carry the same words (docs/protocol.md §3.6): links first (`<link …/>` elements or a
`links` array), then scalar fields; a collection is `{"links", "totalSize", "collection"}` in JSON and a
root element holding links, `<totalSize>` and the items in XML. Building both from one `Entity` /
`Collection` keeps the two formats from drifting apart. XML is built with ElementTree, so every value is
escaped by the library.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["json", "xml"]


def media_type(kind: str, fmt: Format, version: str | None = None) -> str:
    """`application/vnd.abiquo.<kind>+<fmt>`, with `; version=X.Y` when a version was asked for."""
    base = f"application/vnd.abiquo.{kind}+{fmt}"
    return f"{base}; version={version}" if version else base


@dataclass(frozen=True, slots=True)
class Link:
    rel: str
    href: str
    kind: str | None = None  # the Abiquo media type name of the target, e.g. "user"
    title: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # further attributes, e.g. ("length", "20480") on disk links


@dataclass(frozen=True, slots=True)
class Entity:
    tag: str  # the XML element name when this entity is a root or a collection item
    fields: tuple[tuple[str, Value], ...]
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class Collection:
    tag: str  # the XML root element
    items: tuple[Entity, ...]
    links: tuple[Link, ...] = ()
    total_size: int | None = None


Value = str | int | bool | None | Entity | Collection
Representation = Entity | Collection


# --- JSON -------------------------------------------------------------------------------------------


def _link_json(link: Link, fmt: Format) -> dict[str, str]:
    out = {"rel": link.rel, "href": link.href}
    if link.kind:
        out["type"] = media_type(link.kind, fmt)
    if link.title is not None:
        out["title"] = link.title
    out.update(link.extra)
    return out


def to_json_value(rep: Representation) -> dict[str, Any]:
    if isinstance(rep, Collection):
        out: dict[str, Any] = {"links": [_link_json(link, "json") for link in rep.links]}
        if rep.total_size is not None:
            out["totalSize"] = rep.total_size
        out["collection"] = [to_json_value(item) for item in rep.items]
        return out
    out = {}
    for name, value in rep.fields:
        if value is None:
            continue
        out[name] = to_json_value(value) if isinstance(value, Entity | Collection) else value
    out["links"] = [_link_json(link, "json") for link in rep.links]
    return out


def to_json(rep: Representation) -> bytes:
    return json.dumps(to_json_value(rep), ensure_ascii=False).encode("utf-8")


# --- XML --------------------------------------------------------------------------------------------


def _scalar_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _add_links(parent: ET.Element, links: tuple[Link, ...]) -> None:
    for link in links:
        ET.SubElement(parent, "link", _link_json(link, "xml"))


def _fill(element: ET.Element, rep: Representation) -> ET.Element:
    _add_links(element, rep.links)
    if isinstance(rep, Collection):
        if rep.total_size is not None:
            ET.SubElement(element, "totalSize").text = str(rep.total_size)
        for item in rep.items:
            _fill(ET.SubElement(element, item.tag), item)
        return element
    for name, value in rep.fields:
        if value is None:
            continue
        child = ET.SubElement(element, name)
        if isinstance(value, Entity | Collection):
            _fill(child, value)
        else:
            child.text = _scalar_text(value)
    return element


def to_xml_element(rep: Representation) -> ET.Element:
    return _fill(ET.Element(rep.tag), rep)


def to_xml(rep: Representation) -> bytes:
    xml: bytes = ET.tostring(to_xml_element(rep), encoding="utf-8", xml_declaration=True)
    return xml


def render(rep: Representation, fmt: Format) -> bytes:
    return to_json(rep) if fmt == "json" else to_xml(rep)
