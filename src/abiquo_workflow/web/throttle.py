"""A brake on guessing passwords at the dashboard's sign-in: failures counted per user name and per
address over a sliding window, in this process's memory.

After `limit` wrong passwords for one user name, or four times as many from one address, within `WINDOW`
seconds, sign-in for that name (or from that address) is refused until the oldest of those failures is
`WINDOW` old, whatever password is given: a person who mistyped waits a few minutes; a script that
tries thousands of passwords gets a handful per quarter hour. A good password does not clear the
count of the address (it may be shared), only of the name.

Each replica counts on its own, so N replicas allow N times as many; Abiquo's own lockout (if
configured) still applies behind it, since every attempt that passes is checked at Abiquo's `/login`.
"""

from __future__ import annotations

import time
from collections import deque

#: Seconds over which failures count.
WINDOW = 15 * 60
#: An address may fail this many times more than one user name (several people behind one NAT).
ADDRESS_FACTOR = 4
#: Keys remembered at most (the oldest are forgotten first), so a flood of made-up names cannot
#: make the process hold unbounded memory.
MAX_KEYS = 10_000


class SignInThrottle:
    def __init__(self, limit: int, *, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def wait(self, username: str, address: str, *, now: float | None = None) -> float:
        """Seconds until `username` may try again from `address`; 0 when it may now."""
        now = time.monotonic() if now is None else now
        waits = [0.0]
        for key, limit in ((_name(username), self.limit), (_addr(address), self.limit * ADDRESS_FACTOR)):
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[len(times) - limit] + self.window - now)
        return max(waits)

    def failed(self, username: str, address: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in (_name(username), _addr(address)):
            if key not in self._failures and len(self._failures) >= MAX_KEYS:
                del self._failures[next(iter(self._failures))]
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(_name(username), None)


def _name(username: str) -> str:
    return "name:" + username.strip().casefold()


def _addr(address: str) -> str:
    return "addr:" + address
