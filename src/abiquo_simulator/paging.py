"""Abiquo's paging (docs/protocol.md §8.1): `startwith` (default 0), `limit` (default 25), `by`, `asc`, `has`.

A page carries `totalSize` and the links `first`, `last`, and when there is one, `previous` and `next`,
each an absolute href with the query string. A listing may leave these links out, as real Abiquo's
pending-task listings do (they link only `self` and `parent`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from .rendering import Link

T = TypeVar("T")

DEFAULT_LIMIT = 25


class PagingError(ValueError):
    """A paging parameter Abiquo would refuse; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    links: tuple[Link, ...]


def _whole(params: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PagingError(f"Parameter '{name}' must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise PagingError(f"Parameter '{name}' must be {minimum} or more")
    return value


def paginate(
    items: Sequence[T],
    href: str,
    params: Mapping[str, str],
    *,
    sort_keys: Mapping[str, Callable[[T], Any]] | None = None,
    default_by: str = "name",
    matches: Callable[[T, str], bool] | None = None,
    kind: str | None = None,
) -> Page[T]:
    """One page of `items`, filtered by `has` (when `matches` is given) and sorted by `by` (when
    `sort_keys` is given); the links repeat `by`, `asc` and `has` so following them keeps the order."""
    start = _whole(params, "startwith", 0, 0)
    limit = _whole(params, "limit", DEFAULT_LIMIT, 1)
    kept: list[T] = list(items)
    extra: dict[str, str] = {}
    has = params.get("has")
    if matches is not None and has:
        kept = [item for item in kept if matches(item, has.casefold())]
        extra["has"] = has
    if sort_keys is not None:
        by = params.get("by") or default_by
        if by not in sort_keys:
            raise PagingError(f"Parameter 'by' must be one of {', '.join(sorted(sort_keys))}, not {by!r}")
        ascending = params.get("asc", "true").lower() != "false"
        kept.sort(key=sort_keys[by], reverse=not ascending)
        extra["by"] = by
        if not ascending:
            extra["asc"] = "false"

    total = len(kept)

    def link(rel: str, startwith: int) -> Link:
        return Link(rel, f"{href}?{urlencode({'startwith': startwith, 'limit': limit, **extra})}", kind)

    last_start = max(0, (total - 1) // limit * limit)
    links = [link("first", 0)]
    if start > 0:
        links.append(link("previous", max(0, start - limit)))
    if start + limit < total:
        links.append(link("next", start + limit))
    links.append(link("last", last_start))
    return Page(kept[start : start + limit], total, tuple(links))
