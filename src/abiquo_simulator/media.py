"""Content negotiation the way Abiquo does it: the media type in `Accept` picks format and representation.

A resource offers one or more Abiquo media type names ("kinds"), e.g. the users list offers `users` and
`userswithroles`. `Accept` may name one of them (`application/vnd.abiquo.users+xml; version=3.10`), or ask
generically (`application/json`, `application/xml`, `*/*`), or be absent. A `version` parameter must look
like `X.Y`, otherwise the answer is 406 "Invalid version parameter for 'Accept' header" (docs/protocol.md
§8.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .rendering import Format, media_type

_VERSION = re.compile(r"^\d+\.\d+$")
_ABIQUO_TYPE = re.compile(r"^application/vnd\.abiquo\.([a-z0-9]+)\+(json|xml)$")
_GENERIC: dict[str, Format | Literal["default"]] = {
    "application/json": "json",
    "text/json": "json",
    "application/xml": "xml",
    "text/xml": "xml",
    "*/*": "default",
    "application/*": "default",
}


class NotAcceptable(Exception):
    """406: `Accept` names nothing this resource can produce, or carries a bad version."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Negotiated:
    kind: str
    fmt: Format
    version: str | None

    @property
    def content_type(self) -> str:
        return media_type(self.kind, self.fmt, self.version)


@dataclass(frozen=True, slots=True)
class _Range:
    media: str
    version: str | None
    quality: float


def _parse_accept(accept: str) -> list[_Range]:
    ranges: list[_Range] = []
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if not media:
            continue
        version: str | None = None
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "version":
                version = value
            elif name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append(_Range(media.lower(), version, quality))
    # Highest quality first; the order given breaks ties (sorted() is stable).
    return sorted((r for r in ranges if r.quality > 0), key=lambda r: -r.quality)


def negotiate(accept: str | None, kinds: tuple[str, ...], default_fmt: Format) -> Negotiated:
    """Pick the representation for `accept` among `kinds` (the first is the default one)."""
    if not accept or not accept.strip():
        return Negotiated(kinds[0], default_fmt, None)
    for r in _parse_accept(accept):
        if r.version is not None and not _VERSION.match(r.version):
            raise NotAcceptable("406-NOT ACCEPTABLE", "Invalid version parameter for 'Accept' header")
        specific = _ABIQUO_TYPE.match(r.media)
        if specific:
            kind, fmt = specific.group(1), specific.group(2)
            if kind in kinds:
                return Negotiated(kind, "json" if fmt == "json" else "xml", r.version)
            continue
        generic = _GENERIC.get(r.media)
        if generic is not None:
            return Negotiated(kinds[0], default_fmt if generic == "default" else generic, r.version)
    raise NotAcceptable(
        "406-NOT ACCEPTABLE",
        f"The resource does not accept the requested media type; it offers {', '.join(kinds)} as JSON or XML",
    )


def error_format(accept: str | None, default_fmt: Format) -> Format:
    """The format for an error body: the first of JSON or XML that `Accept` names, else the default."""
    for r in _parse_accept(accept or ""):
        if r.media.endswith("xml"):
            return "xml"
        if r.media.endswith("json"):
            return "json"
    return default_fmt
