"""Where the store's "now" comes from: the wall clock, or a clock a test moves to skip waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: Returns the current time, timezone-aware. Tests pass their own to move time without sleeping.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
