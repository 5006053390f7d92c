"""A short-lived cache of API reads that many requests share, with one read in flight per key.

Why. Within a burst of callbacks from one enterprise, every triage reads the same enterprise, its users
(two pages for 40 users), virtual datacenter, datacenter and virtual appliance. Kept for a few seconds
(`abiquo.cache_ttl`), they are read once per burst instead of once per request, so a burst of N
single-VM callbacks costs about N VM reads plus a constant.

How.
- An answer is kept for `ttl` seconds, counted from when its read was *sent*, so that no answer is
  served as younger than it is. `ttl = 0` turns the cache off: every call reads.
- Concurrent misses for one key share a single read (no thundering herd): the first starts it as a
  task of its own and every caller awaits that task. A caller that is cancelled (its job stopped) stops
  waiting without cancelling the read the others are waiting for.
- Only answers are kept, never errors: a 404 or an outage is read again by the next caller. Callers
  that were waiting on the failed read all get its error, as if each had made it.
- At most `max_entries` answers are kept. Entries are kept in the order they were stored, which is
  (but for a slow read) the order of their age: each store drops expired ones from the front, then the
  oldest while there are too many. Memory is thus bounded by `max_entries`, and in practice by what was
  read in the last `ttl` seconds.

What is cached is the caller's choice (`AbiquoClient` decides per method, see its docstring); values must
be immutable, because every caller gets the same object.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, TypeVar, cast

__all__ = ["DEFAULT_MAX_ENTRIES", "ReadCache"]

T = TypeVar("T")

#: Answers kept at most: a burst touches a few enterprises, their VDCs, datacenters and vApps.
DEFAULT_MAX_ENTRIES: Final = 512


class ReadCache:
    """Answers by key, each kept `ttl` seconds; see the module docstring.

    Parameters
    ----------
    ttl:
        Seconds an answer is served before it is read again; 0 reads every time.
    max_entries:
        Answers kept at most; the oldest go first.
    clock:
        Monotonic seconds; tests pass their own instead of sleeping.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be 0 or more seconds, not {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        self.ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()
        self._in_flight: dict[Hashable, asyncio.Task[object]] = {}

    def __len__(self) -> int:
        """How many answers are kept now (expired ones included until they are dropped)."""
        return len(self._entries)

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """The answer kept for `key`, or `await read()` (shared with concurrent callers) when there is
        none younger than `ttl`. Raises whatever `read` raises; nothing is kept then."""
        if self.ttl <= 0:
            return await read()
        now = self._clock()
        kept = self._entries.get(key)
        if kept is not None:
            if now - kept[0] < self.ttl:
                return cast(T, kept[1])
            del self._entries[key]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fill(key, read, now))
            task.add_done_callback(_retrieve)
            self._in_flight[key] = task
        # shield: a cancelled caller stops waiting, the read goes on for the others (and the cache).
        return cast(T, await asyncio.shield(task))

    def clear(self) -> None:
        """Forget every answer and cancel the reads in flight (the client is closing)."""
        self._entries.clear()
        for task in self._in_flight.values():
            task.cancel()
        self._in_flight.clear()

    async def _fill(self, key: Hashable, read: Callable[[], Awaitable[object]], sent_at: float) -> object:
        try:
            value = await read()
        finally:
            if self._in_flight.get(key) is asyncio.current_task():
                del self._in_flight[key]
        self._store(key, sent_at, value)
        return value

    def _store(self, key: Hashable, sent_at: float, value: object) -> None:
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (sent_at, value)
        now = self._clock()
        while entries:
            oldest_key, (oldest_at, _) = next(iter(entries.items()))
            if now - oldest_at < self.ttl and len(entries) <= self._max_entries:
                break
            del entries[oldest_key]


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a shared read's error as seen, so that a read whose every caller was cancelled does not
    log "Task exception was never retrieved"; the callers that waited have raised it already."""
    if not task.cancelled():
        task.exception()
