"""Injected faults: the next N matching /api calls fail, slow down, or lose their connection."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


class FaultError(ValueError):
    """A fault description that makes no sense; the message says why."""


@dataclass(slots=True)
class Fault:
    """One armed fault. Exactly one of `status`, `latency` or `drop` is set."""

    count: int
    status: int | None = None
    latency: float | None = None
    drop: bool = False
    match: str | None = None  # substring of the request path; None matches every /api call

    def matches(self, path: str) -> bool:
        return self.match is None or self.match in path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_fault(data: object) -> Fault:
    """Build a fault from its JSON description, or raise FaultError with a sentence."""
    if not isinstance(data, dict):
        raise FaultError('A fault is a JSON object such as {"count": 2, "status": 503}.')
    unknown = set(data) - {"count", "status", "latency", "drop", "match"}
    if unknown:
        raise FaultError(f"Unknown fault field(s): {', '.join(sorted(unknown))}.")
    count = data.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FaultError("'count' must be a whole number of calls, 1 or more.")
    status, latency, drop, match = (
        data.get("status"),
        data.get("latency"),
        data.get("drop", False),
        data.get("match"),
    )
    kinds = [status is not None, latency is not None, drop is True]
    if sum(kinds) != 1:
        raise FaultError(
            "Give exactly one of 'status' (an HTTP error code), 'latency' (seconds) or 'drop': true."
        )
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599
    ):
        raise FaultError("'status' must be an HTTP error status between 400 and 599.")
    if latency is not None and (
        isinstance(latency, bool)
        or not isinstance(latency, int | float)
        or not math.isfinite(latency)
        or latency <= 0
    ):
        raise FaultError("'latency' must be a positive number of seconds.")
    if not isinstance(drop, bool):
        raise FaultError("'drop' must be true or false.")
    if match is not None and (not isinstance(match, str) or not match):
        raise FaultError(
            "'match' must be a non-empty piece of the request path, such as \"/action/continue\"."
        )
    return Fault(count, status, float(latency) if latency is not None else None, drop, match)


class FaultQueue:
    """Armed faults, applied in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def pending(self) -> list[Fault]:
        return list(self._faults)

    def take(self, path: str) -> Fault | None:
        """The first fault that matches `path`, used up by one call (it disappears after `count` calls)."""
        for fault in self._faults:
            if fault.matches(path):
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
                return fault
        return None
